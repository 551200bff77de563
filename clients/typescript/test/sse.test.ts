// Unit tests of the SSE parser on tricky input. No server needed.
import assert from "node:assert/strict";
import { describe, test } from "node:test";

import { SseParser, type SseMessage } from "../src/index.js";

/** Parses `pieces` in order with one parser; returns the events and the parser. */
function parse(pieces: string[]): { events: SseMessage[]; parser: SseParser } {
  const parser = new SseParser();
  const events = pieces.flatMap((p) => parser.push(p));
  return { events, parser };
}

/** Every way of cutting `text` in two, plus one char at a time. */
function splits(text: string): string[][] {
  const out: string[][] = [[text], Array.from(text)];
  for (let i = 1; i < text.length; i++) out.push([text.slice(0, i), text.slice(i)]);
  return out;
}

const SLUICE_STREAM =
  "retry: 250\n" +
  "id: 0\n" +
  "event: demo:stream_ticks:v1:started\n" +
  'data: {"type":"demo:stream_ticks:v1:started","id":0,"seq":0}\n' +
  "\n" +
  ": keep-alive\n" +
  "\n" +
  "event: demo:stream_ticks:v1:heartbeat\n" +
  'data: {"type":"demo:stream_ticks:v1:heartbeat"}\n' +
  "\n" +
  "id: 1\n" +
  "event: demo:stream_ticks:v1:stream\n" +
  'data: {"seq":1}\n' +
  "\n";

const EXPECTED: SseMessage[] = [
  {
    event: "demo:stream_ticks:v1:started",
    data: '{"type":"demo:stream_ticks:v1:started","id":0,"seq":0}',
    id: "0",
    lastEventId: "0",
  },
  {
    event: "demo:stream_ticks:v1:heartbeat",
    data: '{"type":"demo:stream_ticks:v1:heartbeat"}',
    id: undefined,
    lastEventId: "0",
  },
  { event: "demo:stream_ticks:v1:stream", data: '{"seq":1}', id: "1", lastEventId: "1" },
];

describe("SseParser", () => {
  test("a Sluice stream parses the same however it is split into chunks", () => {
    for (const pieces of splits(SLUICE_STREAM)) {
      const { events, parser } = parse(pieces);
      assert.deepEqual(events, EXPECTED, `split as ${JSON.stringify(pieces.map((p) => p.length))}`);
      assert.equal(parser.retry, 250);
      assert.equal(parser.lastEventId, "1");
    }
  });

  test("CRLF, CR and LF line ends, mixed, and split anywhere", () => {
    for (const eol of ["\r\n", "\r", "\n"]) {
      const text = SLUICE_STREAM.replaceAll("\n", eol);
      for (const pieces of splits(text)) {
        assert.deepEqual(parse(pieces).events, EXPECTED, `${JSON.stringify(eol)} split ${pieces.length}`);
      }
    }
    const mixed = "data: a\r\ndata: b\rdata: c\n\r\nevent: e\rdata: d\r\r";
    for (const pieces of splits(mixed)) {
      assert.deepEqual(
        parse(pieces).events.map((e) => [e.event, e.data]),
        [
          ["message", "a\nb\nc"],
          ["e", "d"],
        ],
      );
    }
  });

  test("a CR ending one chunk and an LF starting the next are one line end, not two", () => {
    // Read as two line ends, the empty line between would dispatch "a" and "b" apart.
    const { events } = parse(["data: a\r", "\ndata: b\r", "\n\r", "\n"]);
    assert.deepEqual(events.map((e) => e.data), ["a\nb"]);
  });

  test("multi-line data joins with LF; the colon's one following space is dropped, no more", () => {
    const { events } = parse(["data: first\ndata:second\ndata:  third\ndata\ndata: \ndata:last\n\n"]);
    assert.deepEqual(events.map((e) => e.data), ["first\nsecond\n third\n\n\nlast"]);
  });

  test("comments and unknown fields are ignored, also between data lines", () => {
    const { events } = parse([": hello\n:\ndata: a\n: keep-alive\nfoo: bar\ndata: b\n\n: bye\n\n"]);
    assert.deepEqual(events.map((e) => [e.event, e.data]), [["message", "a\nb"]]);
  });

  test("a block without data dispatches nothing, but its id still takes effect", () => {
    const { events, parser } = parse(["id: 7\nevent: x\n\ndata: y\n\n"]);
    assert.deepEqual(events, [{ event: "message", data: "y", id: undefined, lastEventId: "7" }]);
    assert.equal(parser.lastEventId, "7");
  });

  test("an empty data line dispatches an event with empty data", () => {
    assert.deepEqual(parse(["data\n\n", "data:\n\n"]).events.map((e) => e.data), ["", ""]);
  });

  test("ids persist, reset with an empty id, and ignore values holding NUL", () => {
    const { events } = parse(["id: 1\ndata: a\n\ndata: b\n\nid\ndata: c\n\nid: 2\u00003\ndata: d\n\n"]);
    assert.deepEqual(
      events.map((e) => [e.data, e.id, e.lastEventId]),
      [
        ["a", "1", "1"],
        ["b", undefined, "1"],
        ["c", "", ""],
        ["d", undefined, ""],
      ],
    );
  });

  test("retry takes only ASCII digits", () => {
    const parser = new SseParser();
    parser.push("retry: 1500\n\n");
    assert.equal(parser.retry, 1500);
    for (const bad of ["retry: 1.5\n", "retry: -3\n", "retry: abc\n", "retry: 10 \n", "retry:\n"]) {
      parser.push(bad);
      assert.equal(parser.retry, 1500, bad);
    }
    parser.push("retry:0\n");
    assert.equal(parser.retry, 0);
  });

  test("an event cut off by the end of the stream is discarded; the next connection starts clean", () => {
    const parser = new SseParser();
    assert.deepEqual(parser.push("id: 4\ndata: whole\n\nid: 5\nevent: half\ndata: par"), [
      { event: "message", data: "whole", id: "4", lastEventId: "4" },
    ]);
    parser.end();
    assert.deepEqual(parser.push("data: fresh\n\n"), [
      { event: "message", data: "fresh", id: undefined, lastEventId: "5" },
    ]);
  });

  test("a leading byte order mark is dropped, only at the start", () => {
    const { events } = parse(["\uFEFF", "data: a\n\n\uFEFFdata: b\n\n"]);
    assert.deepEqual(events.map((e) => e.data), ["a"]);
  });

  test("multi-byte UTF-8 split between network chunks survives a streaming TextDecoder", () => {
    const bytes = new TextEncoder().encode("data: héllo 🚰\n\n");
    const decoder = new TextDecoder();
    const parser = new SseParser();
    const events: SseMessage[] = [];
    for (const b of bytes) events.push(...parser.push(decoder.decode(Uint8Array.of(b), { stream: true })));
    events.push(...parser.push(decoder.decode()));
    assert.deepEqual(events.map((e) => e.data), ["héllo 🚰"]);
  });

  test("a long line arriving in many small pieces parses once", () => {
    const long = "x".repeat(100_000);
    const pieces = ["data: "];
    for (let i = 0; i < long.length; i += 7) pieces.push(long.slice(i, i + 7));
    pieces.push("\n\n");
    assert.deepEqual(parse(pieces).events.map((e) => e.data.length), [100_000]);
  });
});
