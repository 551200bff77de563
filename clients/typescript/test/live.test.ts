// Tests against a live Sluice (SLUICE_URL, SLUICE_TOKEN): they fail, not skip, when it is absent.
import assert from "node:assert/strict";
import { after, describe, test } from "node:test";

import {
  BadRequestError,
  ConflictError,
  ConnectionError,
  NotFoundError,
  SluiceClient,
  SluiceError,
  UnauthorizedError,
  UnknownHandlerError,
  type DemoTick,
  type RequestType,
  type StreamEvent,
} from "../src/index.js";
import {
  assertComplete,
  collect,
  headerOf,
  liveClient,
  closedPortUrl,
  liveServer,
  startProxy,
  stored,
  testStreamId,
  type Proxy,
} from "./helpers.js";

const server = liveServer();
const client = liveClient();
const DEMO: RequestType = "demo:stream_ticks:v1:requested";

/** Asserts that `promise` rejects with exactly this error class, status and code. */
async function rejectsWith(
  promise: Promise<unknown>,
  Class: new (...args: never[]) => SluiceError,
  status: number,
  code: string,
): Promise<SluiceError> {
  let caught: unknown;
  await assert.rejects(promise, (e: unknown) => {
    caught = e;
    return true;
  });
  assert.ok(caught instanceof Class, `expected ${Class.name}, got ${String(caught)}`);
  assert.ok(caught instanceof SluiceError);
  assert.equal(caught.constructor, Class);
  assert.equal(caught.status, status);
  assert.equal(caught.code, code);
  assert.ok(caught.message.length > 0);
  return caught;
}

describe("live Sluice", { timeout: 120_000 }, () => {
  test("request and subscribe: a demo stream reaches success with every seq once, in order", async () => {
    const count = 20;
    const { streamId, existing } = await client.request(
      DEMO,
      { count, interval_ms: 20 },
      { metadata: { trace: "t1" } },
    );
    assert.equal(existing, false);
    assert.match(streamId, /^[A-Za-z0-9._-]+$/);

    const events = await collect(client.subscribe<DemoTick>(streamId));
    assertComplete(events, count, "success");
    for (const e of stored(events)) {
      assert.equal(e.streamId, streamId);
      assert.deepEqual(e.metadata, { trace: "t1" });
      assert.equal(e.type.split(":").slice(0, 3).join(":"), "demo:stream_ticks:v1");
      assert.ok(e.time && !Number.isNaN(Date.parse(e.time)), "time is RFC 3339");
    }
    const first = events.find((e) => e.kind === "started");
    assert.ok(first?.kind === "started");
    assert.equal(first.payload.attempt, 1);
    const chunks = events.filter((e) => e.kind === "chunk");
    assert.deepEqual(
      chunks.map((c) => c.payload.n),
      Array.from({ length: count }, (_, i) => i + 1),
    );
    for (const c of chunks) assert.equal(c.payload.n, c.seq);
    const last = events.at(-1);
    assert.ok(last?.kind === "success");
    assert.equal(last.payload.chunks, count);
    assert.equal(typeof last.payload.duration_ms, "number");
    for (const h of events.filter((e) => e.kind === "heartbeat")) {
      assert.equal(h.id, undefined);
      assert.equal(h.seq, undefined);
    }

    const status = await client.status(streamId);
    assert.equal(status.streamId, streamId);
    assert.equal(status.state, "success");
    assert.equal(status.type, DEMO);
    assert.equal(status.chunks, count);
    assert.equal(status.lastEventId, last.id);
    assert.ok(status.finishedAt);

    // The same stream id again is the same stream.
    const again = await client.request(DEMO, { count }, { streamId });
    assert.deepEqual([again.streamId, again.existing], [streamId, true]);
  });

  describe("through a TCP proxy that cuts connections", () => {
    let proxy: Proxy;
    after(async () => proxy?.close());

    test("a dropped connection resumes with Last-Event-ID: no gap, no duplicate, reaches success", async () => {
      proxy = await startProxy(server.url);
      const proxied = liveClient({ baseUrl: proxy.url });
      const count = 40;
      const { streamId } = await client.request(DEMO, { count, interval_ms: 40 });
      const dropAfter = new Set([5, 17]);
      const droppedAt: number[] = [];
      const events = await collect(proxied.subscribe<DemoTick>(streamId), (e) => {
        if (e.kind === "chunk" && dropAfter.has(e.seq)) {
          dropAfter.delete(e.seq);
          droppedAt.push(e.id);
          proxy.dropAll();
        }
      });
      assert.equal(droppedAt.length, 2, "both drops happened mid-stream");
      assertComplete(events, count, "success");

      const heads = proxy.connections.flatMap((c) => c.heads);
      assert.ok(proxy.connections.length >= 3, `expected 3+ connections, saw ${proxy.connections.length}`);
      assert.ok(heads.length >= 3);
      assert.match(heads[0]!, /^GET \/v1\/streams\/[^ ]+\/events HTTP\/1\.1/);
      assert.equal(headerOf(heads[0]!, "last-event-id"), undefined, "the first connect starts from the beginning");
      assert.equal(headerOf(heads[0]!, "authorization"), `Bearer ${server.token}`);
      const ids = new Set(stored(events).map((e) => e.id));
      const resumedFrom = heads.slice(1).map((h) => headerOf(h, "last-event-id"));
      for (const [i, value] of resumedFrom.entries()) {
        assert.ok(value !== undefined, `reconnect ${i + 1} must carry Last-Event-ID`);
        assert.ok(ids.has(Number(value)), `Last-Event-ID ${value} is the id of an event received`);
      }
      // Each resume point is at or after the event whose arrival triggered the drop.
      assert.ok(Number(resumedFrom[0]) >= droppedAt[0]!);
      assert.ok(Number(resumedFrom.at(-1)) >= droppedAt[1]!);
    });

    test("breaking out of the loop closes the connection", async () => {
      const proxied = liveClient({ baseUrl: proxy.url });
      const { streamId } = await client.request(DEMO, { count: 1000, interval_ms: 50 });
      const events = await collect(proxied.subscribe(streamId), (e) => e.kind === "chunk" && e.seq >= 2);
      assert.equal(events.at(-1)?.kind, "chunk");
      const conn = proxy.connections.find((c) => c.heads.some((h) => h.includes(`/${streamId}/events`)));
      assert.ok(conn, "the subscription went through the proxy");
      const deadline = Date.now() + 5000;
      while (!conn.closed && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
      assert.ok(conn.closed, "the connection is closed after break");
      await client.cancel(streamId);
    });
  });

  test("resume with an explicit lastEventId yields exactly the events after it", async () => {
    const count = 12;
    const { streamId } = await client.request(DEMO, { count, interval_ms: 10 });
    const all = stored(await collect(client.subscribe<DemoTick>(streamId)));
    assert.equal(all.length, count + 2);

    for (const from of [all[0]!, all[5]!, all[count]!]) {
      const rest = stored(await collect(client.subscribe<DemoTick>(streamId, { lastEventId: from.id })));
      const expected = all.filter((e) => e.id > from.id);
      assert.deepEqual(
        rest.map((e) => [e.id, e.seq, e.kind]),
        expected.map((e) => [e.id, e.seq, e.kind]),
        `after id ${from.id}`,
      );
      assert.deepEqual(rest, expected);
    }
    // A string id works the same.
    const fromText = stored(await collect(client.subscribe(streamId, { lastEventId: String(all[10]!.id) })));
    assert.deepEqual(fromText.map((e) => e.seq), [11, 12, 13]);
  });

  test("resume at the terminal event ends cleanly with nothing (204)", async () => {
    const { streamId } = await client.request(DEMO, { count: 3, interval_ms: 5 });
    const all = stored(await collect(client.subscribe(streamId)));
    const terminal = all.at(-1)!;
    assert.equal(terminal.kind, "success");
    const started = Date.now();
    const none = await collect(client.subscribe(streamId, { lastEventId: terminal.id }));
    assert.deepEqual(none, []);
    assert.ok(Date.now() - started < 5000, "ends at once, without retrying");
  });

  describe("errors are typed exceptions", () => {
    test("wrong or missing token: 401 invalid_token / missing_token", async () => {
      const wrong = liveClient({ token: "not-the-token" });
      await rejectsWith(wrong.request(DEMO, { count: 1 }), UnauthorizedError, 401, "invalid_token");
      await rejectsWith(wrong.status("anything"), UnauthorizedError, 401, "invalid_token");
      await rejectsWith(collect(wrong.subscribe("anything")), UnauthorizedError, 401, "invalid_token");
      const none = liveClient({ token: "" });
      await rejectsWith(none.status("anything"), UnauthorizedError, 401, "missing_token");
    });

    test("status of an unknown stream: 404 not_found", async () => {
      await rejectsWith(client.status(testStreamId("missing")), NotFoundError, 404, "not_found");
    });

    test("an invalid stream id: 400 invalid_stream_id", async () => {
      await rejectsWith(client.status("no spaces allowed"), BadRequestError, 400, "invalid_stream_id");
    });

    test("unknown handler: 422 unknown_handler", async () => {
      await rejectsWith(
        client.request("nothing:stream_x:v1:requested", {}),
        UnknownHandlerError,
        422,
        "unknown_handler",
      );
    });

    test("malformed type: 400 invalid_type; a non-requested state: 400 wrong_state", async () => {
      await rejectsWith(
        client.request("Not A Type" as RequestType, {}),
        BadRequestError,
        400,
        "invalid_type",
      );
      await rejectsWith(
        client.request("demo:stream_ticks:v1:started" as RequestType, {}),
        BadRequestError,
        400,
        "wrong_state",
      );
    });

    test("cancel of a finished stream: 409 already_finished", async () => {
      const { streamId } = await client.request(DEMO, { count: 2, interval_ms: 5 });
      await collect(client.subscribe(streamId));
      await rejectsWith(client.cancel(streamId), ConflictError, 409, "already_finished");
    });

    test("subscribe to an unknown stream: 404 not_found, not retried", async () => {
      const started = Date.now();
      await rejectsWith(collect(client.subscribe(testStreamId("nobody"))), NotFoundError, 404, "not_found");
      assert.ok(Date.now() - started < 10_000, "a 404 is not retried");
    });

    test("nothing listening: ConnectionError with status 0", async () => {
      const dead = new SluiceClient({ baseUrl: await closedPortUrl(), maxReconnects: 1, reconnectDelayMs: 10 });
      await rejectsWith(dead.status("x"), ConnectionError, 0, "network_error");
      await rejectsWith(collect(dead.subscribe("x")), ConnectionError, 0, "network_error");
    });
  });

  test("a failing handler: the subscription ends with a typed failed event", async () => {
    const { streamId } = await client.request(DEMO, { count: 10, interval_ms: 10, fail_at: 4 });
    const events = await collect(client.subscribe<DemoTick>(streamId));
    const last = events.at(-1);
    assert.ok(last?.kind === "failed", `last event is ${last?.kind}`);
    assert.equal(last.payload.code, "demo_failure");
    assert.equal(typeof last.payload.message, "string");
    const chunks = stored(events).filter((e) => e.kind === "chunk").length;
    assert.equal(last.payload.chunks, chunks);
    assert.ok(chunks < 4);
    assertComplete(events, chunks, "failed");
    assert.equal((await client.status(streamId)).state, "failed");
  });

  test("cancel a running stream: the subscription ends with a cancelled event", async () => {
    const { streamId } = await client.request(DEMO, { count: 1000, interval_ms: 50 });
    let cancelled = false;
    const events: StreamEvent<DemoTick>[] = await collect(client.subscribe<DemoTick>(streamId), async (e) => {
      if (!cancelled && e.kind === "chunk" && e.seq >= 3) {
        cancelled = true;
        await client.cancel(streamId);
      }
    });
    assert.ok(cancelled);
    const last = events.at(-1);
    assert.ok(last?.kind === "cancelled", `last event is ${last?.kind}`);
    assert.equal(last.payload.reason, "client");
    const chunks = stored(events).filter((e) => e.kind === "chunk");
    assert.equal(last.payload.chunks, chunks.length);
    assert.ok(chunks.length >= 3 && chunks.length < 1000);
    assertComplete(events, chunks.length, "cancelled");
    assert.equal((await client.status(streamId)).state, "cancelled");
  });
});
