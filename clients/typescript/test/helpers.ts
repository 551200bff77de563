import assert from "node:assert/strict";
import net from "node:net";

import { SluiceClient, type SluiceClientOptions, type StreamEvent } from "../src/index.js";

/** The live server under test, from SLUICE_URL and SLUICE_TOKEN. Throws when they are unset. */
export function liveServer(): { url: string; token: string } {
  const url = process.env["SLUICE_URL"];
  const token = process.env["SLUICE_TOKEN"];
  if (!url || !token) {
    throw new Error(
      "SLUICE_URL and SLUICE_TOKEN must point at a running Sluice; the live tests do not skip. " +
        "Run them with: scripts/with-sluice.sh npm --prefix clients/typescript test",
    );
  }
  return { url, token };
}

/** A client of the live server, with fast reconnects. */
export function liveClient(overrides: Partial<SluiceClientOptions> = {}): SluiceClient {
  const { url, token } = liveServer();
  return new SluiceClient({ baseUrl: url, token, reconnectDelayMs: 100, ...overrides });
}

/** Collects every event of an iteration, calling `onEvent` on each (it may break the loop by returning true). */
export async function collect<T>(
  events: AsyncIterable<StreamEvent<T>>,
  onEvent?: (event: StreamEvent<T>, all: StreamEvent<T>[]) => boolean | void | Promise<boolean | void>,
): Promise<StreamEvent<T>[]> {
  const all: StreamEvent<T>[] = [];
  for await (const event of events) {
    all.push(event);
    if (onEvent && (await onEvent(event, all))) break;
  }
  return all;
}

/** The stored events (everything with an id): started, chunks, terminal. */
export function stored<T>(events: StreamEvent<T>[]): Extract<StreamEvent<T>, { id: number }>[] {
  return events.filter((e): e is Extract<StreamEvent<T>, { id: number }> => e.id !== undefined);
}

/**
 * Asserts a complete stream of `count` chunks ending in `terminal`: seq 0..count+1 each exactly
 * once and in order, ids strictly increasing, exactly one terminal event and nothing after it.
 */
export function assertComplete<T>(
  events: StreamEvent<T>[],
  count: number,
  terminal: "success" | "failed" | "timeout" | "cancelled" = "success",
): void {
  const s = stored(events);
  assert.deepEqual(
    s.map((e) => e.seq),
    Array.from({ length: count + 2 }, (_, i) => i),
    "seq must run 0..N+1 with no gap and no duplicate",
  );
  for (let i = 1; i < s.length; i++) {
    assert.ok(s[i]!.id > s[i - 1]!.id, `ids must increase strictly: ${s[i - 1]!.id} then ${s[i]!.id}`);
  }
  assert.equal(s[0]!.kind, "started");
  for (const e of s.slice(1, -1)) assert.equal(e.kind, "chunk");
  const terminals = events.filter((e) => ["success", "failed", "timeout", "cancelled"].includes(e.kind));
  assert.equal(terminals.length, 1, "exactly one terminal event");
  assert.equal(events.at(-1)!.kind, terminal, "the terminal event is the last one yielded");
}

/** One TCP connection seen by the proxy. */
export interface ProxiedConnection {
  /** The HTTP request heads sent on it, in order. */
  heads: string[];
  /** Whether the client side closed. */
  closed: boolean;
}

/** A TCP proxy in front of Sluice that can cut every connection at once. */
export interface Proxy {
  url: string;
  connections: ProxiedConnection[];
  /** Destroys every open proxied socket, both sides. */
  dropAll(): void;
  close(): Promise<void>;
}

/** Starts a TCP proxy to the server at `target` (an http URL). */
export async function startProxy(target: string): Promise<Proxy> {
  const { hostname, port } = new URL(target);
  const sockets = new Set<net.Socket>();
  const connections: ProxiedConnection[] = [];
  const server = net.createServer((client) => {
    const seen: ProxiedConnection = { heads: [], closed: false };
    connections.push(seen);
    const upstream = net.connect(Number(port), hostname);
    sockets.add(client);
    sockets.add(upstream);
    let pending = "";
    client.on("data", (data: Buffer) => {
      // Only bodiless GETs pass through this proxy, so every header block is a request head.
      pending += data.toString("latin1");
      let end: number;
      while ((end = pending.indexOf("\r\n\r\n")) >= 0) {
        seen.heads.push(pending.slice(0, end));
        pending = pending.slice(end + 4);
      }
    });
    client.pipe(upstream);
    upstream.pipe(client);
    const finish = (): void => {
      seen.closed = true;
      client.destroy();
      upstream.destroy();
      sockets.delete(client);
      sockets.delete(upstream);
    };
    client.on("close", finish);
    upstream.on("close", finish);
    client.on("error", finish);
    upstream.on("error", finish);
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const address = server.address() as net.AddressInfo;
  return {
    url: `http://127.0.0.1:${address.port}`,
    connections,
    dropAll() {
      for (const s of sockets) s.destroy();
      sockets.clear();
    },
    async close() {
      for (const s of sockets) s.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

/** The value of a header in a raw request head, or undefined. */
export function headerOf(head: string, name: string): string | undefined {
  for (const line of head.split("\r\n").slice(1)) {
    const colon = line.indexOf(":");
    if (colon > 0 && line.slice(0, colon).trim().toLowerCase() === name.toLowerCase()) {
      return line.slice(colon + 1).trim();
    }
  }
  return undefined;
}

/** A unique stream id for a test. */
export function testStreamId(name: string): string {
  return `ts-${name}-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 8)}`;
}

/** The URL of a local port nothing listens on (one just bound and released). */
export async function closedPortUrl(): Promise<string> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as net.AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return `http://127.0.0.1:${port}`;
}
