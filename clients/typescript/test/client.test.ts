// Unit tests of the client against a scripted fetch: reconnect policy, retry delays, 204, errors,
// aborts, and the event type helpers. No server needed.
import assert from "node:assert/strict";
import { describe, test } from "node:test";

import {
  BadRequestError,
  ConnectionError,
  NotFoundError,
  ProtocolError,
  SluiceClient,
  SluiceError,
  UnavailableError,
  formatEventType,
  isEventType,
  isTerminal,
  parseEventType,
  type FetchLike,
  type StreamEvent,
} from "../src/index.js";

/** What the scripted server does on one call. */
type Scripted =
  | { status: number; body?: string; contentType?: string }
  | { sse: string[]; then: "end" | "error" | "hang"; status?: number };

interface Call {
  url: string;
  headers: Headers;
  signal: AbortSignal | undefined;
  at: number;
}

/** A fetch that answers each call with the next script entry. */
function scriptedFetch(script: Scripted[]): { fetch: FetchLike; calls: Call[] } {
  const calls: Call[] = [];
  const fetch: FetchLike = async (url, init) => {
    const signal = init?.signal ?? undefined;
    calls.push({ url, headers: new Headers(init?.headers), signal, at: Date.now() });
    const step = script.shift();
    if (!step) throw new TypeError("fetch failed: script exhausted");
    if (signal?.aborted) throw signal.reason;
    if (!("sse" in step)) {
      return new Response(step.status === 204 ? null : (step.body ?? ""), {
        status: step.status,
        headers: { "content-type": step.contentType ?? "application/json" },
      });
    }
    const encoder = new TextEncoder();
    const pieces = [...step.sse];
    const body = new ReadableStream<Uint8Array>({
      start(controller) {
        signal?.addEventListener("abort", () => controller.error(signal.reason), { once: true });
      },
      pull(controller) {
        const next = pieces.shift();
        if (next !== undefined) {
          controller.enqueue(encoder.encode(next));
          return;
        }
        if (step.then === "end") controller.close();
        else if (step.then === "error") controller.error(new TypeError("terminated"));
        // "hang": never answers again
        return new Promise<void>(() => {});
      },
    });
    return new Response(body, { status: step.status ?? 200, headers: { "content-type": "text/event-stream" } });
  };
  return { fetch, calls };
}

/** An SSE frame of a demo event. */
function frame(id: number, seq: number, state: string, payload: unknown = {}): string {
  const type = `demo:stream_ticks:v1:${state}`;
  const data = JSON.stringify({ type, id, stream_id: "s1", seq, payload, time: "2026-01-01T00:00:00Z" });
  return `id: ${id}\nevent: ${type}\ndata: ${data}\n\n`;
}

const HEARTBEAT =
  'event: demo:stream_ticks:v1:heartbeat\ndata: {"type":"demo:stream_ticks:v1:heartbeat","stream_id":"s1","payload":{"chunks":1,"elapsed_ms":5}}\n\n';

async function drain<T>(it: AsyncIterable<StreamEvent<T>>): Promise<StreamEvent<T>[]> {
  const out: StreamEvent<T>[] = [];
  for await (const e of it) out.push(e);
  return out;
}

function client(fetch: FetchLike, extra: Partial<ConstructorParameters<typeof SluiceClient>[0]> = {}): SluiceClient {
  return new SluiceClient({ baseUrl: "http://sluice.test/", token: "tok", fetch, reconnectDelayMs: 5, ...extra });
}

describe("subscribe (scripted server)", () => {
  test("maps frames to typed events and stops after the terminal event", async () => {
    const { fetch, calls } = scriptedFetch([
      {
        sse: [
          "retry: 10\n",
          frame(0, 0, "started", { attempt: 1 }),
          HEARTBEAT,
          frame(1, 1, "stream", { n: 1, at: 5 }),
          frame(2, 2, "success", { chunks: 1, duration_ms: 3 }),
          frame(3, 3, "stream", { n: 99, at: 0 }), // after the terminal event: never yielded
        ],
        then: "end",
      },
    ]);
    const events = await drain(client(fetch).subscribe<{ n: number; at: number }>("s1"));
    assert.deepEqual(
      events.map((e) => [e.kind, e.id, e.seq]),
      [
        ["started", 0, 0],
        ["heartbeat", undefined, undefined],
        ["chunk", 1, 1],
        ["success", 2, 2],
      ],
    );
    const chunk = events[2]!;
    assert.ok(chunk.kind === "chunk");
    assert.equal(chunk.payload.n, 1);
    assert.equal(chunk.type, "demo:stream_ticks:v1:stream");
    assert.equal(chunk.streamId, "s1");
    assert.equal(chunk.time, "2026-01-01T00:00:00Z");
    assert.ok(isTerminal(events[3]!));
    assert.equal(calls.length, 1);
    assert.equal(calls[0]!.url, "http://sluice.test/v1/streams/s1/events");
    assert.equal(calls[0]!.headers.get("authorization"), "Bearer tok");
    assert.equal(calls[0]!.headers.get("accept"), "text/event-stream");
    assert.equal(calls[0]!.headers.get("last-event-id"), null);
    assert.ok(calls[0]!.signal?.aborted, "the connection is closed after the terminal event");
  });

  test("resumes after a drop with Last-Event-ID and drops replayed duplicates", async () => {
    const { fetch, calls } = scriptedFetch([
      { sse: [frame(0, 0, "started"), frame(1, 1, "stream"), "id: 2\nevent: demo:stream_ticks:v1:str"], then: "error" },
      // A server that replays too much: 0 and 1 again must not be yielded twice.
      { sse: [frame(0, 0, "started"), frame(1, 1, "stream"), frame(2, 2, "stream")], then: "end" },
      { sse: [frame(3, 3, "success", { chunks: 2, duration_ms: 1 })], then: "hang" },
    ]);
    const events = await drain(client(fetch).subscribe("s1"));
    assert.deepEqual(events.map((e) => e.seq), [0, 1, 2, 3]);
    assert.deepEqual(
      calls.map((c) => c.headers.get("last-event-id")),
      [null, "1", "2"],
    );
  });

  test("honours the server's retry: as the reconnect delay", async () => {
    const { fetch, calls } = scriptedFetch([
      { sse: ["retry: 300\n", frame(0, 0, "started")], then: "end" },
      { sse: [frame(1, 1, "success")], then: "hang" },
    ]);
    await drain(client(fetch, { reconnectDelayMs: 5 }).subscribe("s1"));
    const waited = calls[1]!.at - calls[0]!.at;
    assert.ok(waited >= 290, `waited ${waited} ms, the server asked for 300`);

    const fast = scriptedFetch([
      { sse: ["retry: 20\n", frame(0, 0, "started")], then: "end" },
      { sse: [frame(1, 1, "success")], then: "hang" },
    ]);
    await drain(client(fast.fetch, { reconnectDelayMs: 5000 }).subscribe("s1"));
    const quick = fast.calls[1]!.at - fast.calls[0]!.at;
    assert.ok(quick < 1000, `waited ${quick} ms, the server asked for 20`);
  });

  test("backs off while reconnects make no progress, and gives up after maxReconnects", async () => {
    const { fetch, calls } = scriptedFetch([
      { status: 503, body: '{"error":{"code":"unavailable","message":"kafka down"}}' },
      { status: 503, body: '{"error":{"code":"unavailable","message":"kafka down"}}' },
      { status: 503, body: '{"error":{"code":"unavailable","message":"kafka down"}}' },
      { status: 503, body: '{"error":{"code":"unavailable","message":"kafka down"}}' },
    ]);
    await assert.rejects(drain(client(fetch, { reconnectDelayMs: 20, maxReconnects: 3 }).subscribe("s1")), (e) => {
      assert.ok(e instanceof UnavailableError);
      assert.equal(e.status, 503);
      assert.equal(e.code, "unavailable");
      return true;
    });
    assert.equal(calls.length, 4, "one connect and three reconnects");
    const gaps = calls.slice(1).map((c, i) => c.at - calls[i]!.at);
    assert.ok(gaps[0]! >= 15 && gaps[1]! >= 35 && gaps[2]! >= 75, `delays double: ${gaps.join(", ")}`);
  });

  test("network errors are retried, and progress resets the count", async () => {
    const { fetch, calls } = scriptedFetch([
      { sse: [frame(0, 0, "started")], then: "error" },
      { sse: [frame(1, 1, "stream")], then: "error" },
      { sse: [frame(2, 2, "stream")], then: "error" },
      { sse: [frame(3, 3, "success")], then: "hang" },
    ]);
    const events = await drain(client(fetch, { maxReconnects: 1 }).subscribe("s1"));
    assert.deepEqual(events.map((e) => e.seq), [0, 1, 2, 3]);
    assert.equal(calls.length, 4);

    const refused = scriptedFetch([]);
    await assert.rejects(drain(client(refused.fetch, { maxReconnects: 2 }).subscribe("s1")), (e) => {
      assert.ok(e instanceof ConnectionError);
      assert.equal(e.status, 0);
      assert.equal(e.code, "network_error");
      return true;
    });
    assert.equal(refused.calls.length, 3);
  });

  test("history_lost is yielded as a typed notice, and replay goes on from the earliest id", async () => {
    const { fetch, calls } = scriptedFetch([
      {
        sse: [
          'event: sluice:history_lost\ndata: {"requested_id":3,"earliest_id":10}\n\n',
          frame(10, 6, "stream", { n: 6, at: 1 }),
          frame(11, 7, "timeout", { timeout_ms: 500, chunks: 6 }),
        ],
        then: "end",
      },
    ]);
    const events = await drain(client(fetch).subscribe("s1", { lastEventId: 3 }));
    assert.equal(calls[0]!.headers.get("last-event-id"), "3");
    const [lost, chunk, end] = events;
    assert.ok(lost?.kind === "history_lost");
    assert.deepEqual(lost.payload, { requested_id: 3, earliest_id: 10 });
    assert.equal(lost.type, "sluice:history_lost");
    assert.equal(lost.id, undefined);
    assert.deepEqual([chunk?.kind, chunk?.id], ["chunk", 10]);
    assert.ok(end?.kind === "timeout");
    assert.deepEqual(end.payload, { timeout_ms: 500, chunks: 6 });
  });

  test("204 on a reconnect ends the iteration cleanly", async () => {
    const { fetch, calls } = scriptedFetch([
      { sse: [frame(0, 0, "started"), frame(1, 1, "stream")], then: "error" },
      { status: 204 },
    ]);
    const events = await drain(client(fetch).subscribe("s1"));
    assert.deepEqual(events.map((e) => e.seq), [0, 1]);
    assert.equal(calls.length, 2);
  });

  test("4xx is thrown at once as a typed error, not retried", async () => {
    const { fetch, calls } = scriptedFetch([
      { status: 404, body: '{"error":{"code":"not_found","message":"stream s1 not found"}}' },
    ]);
    await assert.rejects(drain(client(fetch).subscribe("s1")), (e) => {
      assert.ok(e instanceof NotFoundError);
      assert.deepEqual([e.status, e.code, e.message], [404, "not_found", "stream s1 not found"]);
      return true;
    });
    assert.equal(calls.length, 1);

    const bad = scriptedFetch([
      { status: 400, body: '{"error":{"code":"last_event_id_ahead","message":"ahead"}}' },
    ]);
    await assert.rejects(drain(client(bad.fetch).subscribe("s1", { lastEventId: 99 })), (e) => {
      assert.ok(e instanceof BadRequestError);
      assert.equal(e.code, "last_event_id_ahead");
      return true;
    });
    assert.equal(bad.calls[0]!.headers.get("last-event-id"), "99");
  });

  test("an answer that is not an event stream is a ProtocolError", async () => {
    const { fetch } = scriptedFetch([{ status: 200, body: "<html>", contentType: "text/html" }]);
    await assert.rejects(drain(client(fetch).subscribe("s1")), ProtocolError);
  });

  test("breaking out of the loop aborts the fetch", async () => {
    const { fetch, calls } = scriptedFetch([
      { sse: [frame(0, 0, "started"), frame(1, 1, "stream")], then: "hang" },
    ]);
    for await (const e of client(fetch).subscribe("s1")) {
      if (e.kind === "chunk") break;
    }
    assert.equal(calls.length, 1);
    assert.ok(calls[0]!.signal?.aborted);
  });

  test("an aborted signal ends the iteration with the signal's reason", async () => {
    const { fetch, calls } = scriptedFetch([{ sse: [frame(0, 0, "started")], then: "hang" }]);
    const ac = new AbortController();
    const seen: StreamEvent[] = [];
    await assert.rejects(
      (async () => {
        for await (const e of client(fetch).subscribe("s1", { signal: ac.signal })) {
          seen.push(e);
          setTimeout(() => ac.abort(new Error("stop")), 10);
        }
      })(),
      { message: "stop" },
    );
    assert.equal(seen.length, 1);
    assert.ok(calls[0]!.signal?.aborted);
  });

  test("idleTimeoutMs: a connection that goes quiet is dropped and resumed", async () => {
    const { fetch, calls } = scriptedFetch([
      { sse: [frame(0, 0, "started"), frame(1, 1, "stream")], then: "hang" },
      { sse: [frame(2, 2, "success")], then: "hang" },
    ]);
    const events = await drain(client(fetch, { idleTimeoutMs: 100 }).subscribe("s1"));
    assert.deepEqual(events.map((e) => e.seq), [0, 1, 2]);
    assert.equal(calls[1]!.headers.get("last-event-id"), "1");
    assert.ok(calls[0]!.signal?.aborted);
  });

  test("an invalid lastEventId is refused before any request", () => {
    const { fetch } = scriptedFetch([]);
    assert.throws(() => client(fetch).subscribe("s1", { lastEventId: "-1" }), TypeError);
  });
});

describe("request, status, cancel (scripted server)", () => {
  test("request sends the envelope and maps the answer", async () => {
    let sent: unknown;
    const fetch: FetchLike = async (url, init) => {
      assert.equal(url, "http://sluice.test/v1/streams");
      assert.equal(init?.method, "POST");
      assert.equal(new Headers(init?.headers).get("content-type"), "application/json");
      sent = JSON.parse(String(init?.body));
      return new Response('{"stream_id":"abc","existing":true,"links":{"status":"/v1/streams/abc"}}', {
        status: 200,
      });
    };
    const r = await client(fetch).request("demo:stream_ticks:v1:requested", { count: 2 }, { streamId: "abc", metadata: { k: 1 } });
    assert.deepEqual(sent, { type: "demo:stream_ticks:v1:requested", payload: { count: 2 }, stream_id: "abc", metadata: { k: 1 } });
    assert.equal(r.streamId, "abc");
    assert.equal(r.existing, true);
  });

  test("status maps snake_case fields; ids are path-encoded", async () => {
    let seen = "";
    const fetch: FetchLike = async (url) => {
      seen = url;
      return new Response(
        JSON.stringify({
          stream_id: "a b",
          type: "demo:stream_ticks:v1:requested",
          state: "running",
          chunks: 3,
          last_event_id: 3,
          attempts: 1,
          cursor: null,
          running_here: true,
          created_at: "t0",
          updated_at: "t1",
          finished_at: null,
          links: {},
        }),
      );
    };
    const s = await client(fetch).status("a b");
    assert.equal(seen, "http://sluice.test/v1/streams/a%20b");
    assert.equal(s.runningHere, true);
    assert.equal(s.lastEventId, 3);
    assert.equal(s.state, "running");
    assert.equal(s.finishedAt, null);
  });

  test("a refusal without a JSON body still has a status and a code", async () => {
    const fetch: FetchLike = async () => new Response("Bad Gateway", { status: 502, statusText: "Bad Gateway" });
    await assert.rejects(client(fetch).cancel("x"), (e) => {
      assert.ok(e instanceof UnavailableError && e instanceof SluiceError);
      assert.equal(e.status, 502);
      assert.equal(e.code, "http_502");
      assert.ok(e.retryable);
      return true;
    });
  });
});

describe("event types", () => {
  test("parseEventType follows the grammar", () => {
    assert.deepEqual(parseEventType("demo:stream_ticks:v12:stream"), {
      service: "demo",
      action: "stream_ticks",
      version: 12,
      state: "stream",
      kind: "demo:stream_ticks",
    });
    for (const bad of [
      "demo:stream_ticks:v1",
      "demo:stream_ticks:v1:stream:extra",
      "Demo:stream_ticks:v1:stream",
      "demo:1ticks:v1:stream",
      "demo:stream-ticks:v1:stream",
      "demo:stream_ticks:v0:stream",
      "demo:stream_ticks:v01:stream",
      "demo:stream_ticks:1:stream",
      "demo:stream_ticks:v4294967296:stream",
      "demo:stream_ticks:v1:done",
      "",
    ]) {
      assert.throws(() => parseEventType(bad), TypeError, bad);
      assert.equal(isEventType(bad), false, bad);
    }
    assert.equal(isEventType("a:b:v1:requested", "requested"), true);
    assert.equal(isEventType("a:b:v1:started", "requested"), false);
    assert.equal(formatEventType("a", "b_c", 2, "success"), "a:b_c:v2:success");
    assert.throws(() => formatEventType("A", "b", 1, "success"), TypeError);
  });
});
