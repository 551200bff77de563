import {
  ConnectionError,
  ProtocolError,
  SluiceError,
  errorFromResponse,
} from "./errors.js";
import { SseParser, type SseMessage } from "./sse.js";
import {
  parseEventType,
  type HistoryLostPayload,
  type Metadata,
  type RequestResult,
  type RequestType,
  type StreamEvent,
  type StreamLinks,
  type StreamState,
  type StreamStatus,
} from "./types.js";

/** A fetch implementation: the platform's, or any compatible one. */
export type FetchLike = (input: string, init?: RequestInit) => Promise<Response>;

/** How the client is set up. */
export interface SluiceClientOptions {
  /** Where Sluice listens, such as `http://localhost:8080` (a path prefix is kept). */
  baseUrl: string | URL;
  /**
   * The bearer token sent as `Authorization: Bearer <token>`. A function is called before every
   * request and reconnect, so a token may be refreshed.
   */
  token?: string | (() => string | Promise<string>) | undefined;
  /** A fetch implementation; the platform's `fetch` by default. */
  fetch?: FetchLike | undefined;
  /**
   * The base reconnect delay of a subscription until the server sends its own (`retry:`), in
   * milliseconds. Each further attempt without progress doubles it. Default 1000.
   */
  reconnectDelayMs?: number | undefined;
  /** The cap on one reconnect delay, in milliseconds. Default 30000. */
  maxReconnectDelayMs?: number | undefined;
  /**
   * How many reconnects in a row a subscription may make without receiving a new event before it
   * gives up and throws the last error. Any new event resets the count. Default 10.
   */
  maxReconnects?: number | undefined;
  /**
   * Treat a subscription connection that delivered no bytes at all (not even a keep-alive) for
   * this many milliseconds as dropped, and reconnect. Sluice sends keep-alives every
   * `edge.keepalive_interval` (15 s by default). 0 (the default) turns this off.
   */
  idleTimeoutMs?: number | undefined;
  /** Extra headers sent with every request. */
  headers?: Record<string, string> | undefined;
}

/** Options of {@link SluiceClient.request}. */
export interface RequestOptions {
  /** An idempotency key: 1–200 characters of `[A-Za-z0-9._-]`. Sluice assigns a UUID otherwise. */
  streamId?: string | undefined;
  /** Free-form metadata, echoed on every event of the stream. */
  metadata?: Metadata | undefined;
  /** Aborts the call. */
  signal?: AbortSignal | undefined;
}

/** Options of {@link SluiceClient.subscribe}. */
export interface SubscribeOptions {
  /** Start after this event id (exclusive): the `id` of the last event already seen. */
  lastEventId?: number | string | undefined;
  /** Aborts the subscription: the iteration throws the signal's reason. */
  signal?: AbortSignal | undefined;
}

/** Options of calls that only take a signal. */
export interface CallOptions {
  /** Aborts the call. */
  signal?: AbortSignal | undefined;
}

const DEFAULT_RECONNECT_DELAY_MS = 1000;
const DEFAULT_MAX_RECONNECT_DELAY_MS = 30_000;
const DEFAULT_MAX_RECONNECTS = 10;
const HISTORY_LOST = "sluice:history_lost";

/** Statuses worth retrying on a subscription: the server or something before it is unwell. */
function retryableStatus(status: number): boolean {
  return status >= 500 || status === 429 || status === 408;
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

/** Sleeps `ms`, or rejects with the signal's reason once it aborts. */
function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal.aborted) {
      reject(signal.reason);
      return;
    }
    const onAbort = (): void => {
      clearTimeout(timer);
      reject(signal.reason);
    };
    const timer = setTimeout(() => {
      signal.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    signal.addEventListener("abort", onAbort, { once: true });
  });
}

/** Marks a connection aborted because it went quiet, as opposed to the caller aborting. */
class IdleTimeout extends Error {
  override name = "IdleTimeout";
}

/** The result of one SSE connection. */
type Outcome =
  | { kind: "ended" } // terminal event seen, or 204: the subscription is over
  | { kind: "dropped"; error: SluiceError }; // reconnect

/**
 * A client of one Sluice server: request streams, read their status, cancel them, and follow
 * their events over SSE with automatic resume.
 */
export class SluiceClient {
  readonly baseUrl: string;
  readonly #token: SluiceClientOptions["token"];
  readonly #fetch: FetchLike;
  readonly #reconnectDelayMs: number;
  readonly #maxReconnectDelayMs: number;
  readonly #maxReconnects: number;
  readonly #idleTimeoutMs: number;
  readonly #headers: Record<string, string>;

  constructor(options: SluiceClientOptions) {
    this.baseUrl = String(options.baseUrl).replace(/\/+$/, "");
    this.#token = options.token;
    const platformFetch: FetchLike | undefined =
      typeof globalThis.fetch === "function" ? globalThis.fetch.bind(globalThis) : undefined;
    const f = options.fetch ?? platformFetch;
    if (!f) throw new TypeError("no fetch implementation: pass options.fetch");
    this.#fetch = f;
    this.#reconnectDelayMs = options.reconnectDelayMs ?? DEFAULT_RECONNECT_DELAY_MS;
    this.#maxReconnectDelayMs = options.maxReconnectDelayMs ?? DEFAULT_MAX_RECONNECT_DELAY_MS;
    this.#maxReconnects = options.maxReconnects ?? DEFAULT_MAX_RECONNECTS;
    this.#idleTimeoutMs = options.idleTimeoutMs ?? 0;
    this.#headers = { ...options.headers };
  }

  /**
   * Asks for a stream. Resolves once Sluice accepted the request (202), or found a stream with
   * the given `streamId` already (200, `existing: true`).
   */
  async request<P = unknown>(
    type: RequestType,
    payload: P,
    options: RequestOptions = {},
  ): Promise<RequestResult> {
    const body: Record<string, unknown> = { type, payload };
    if (options.streamId !== undefined) body["stream_id"] = options.streamId;
    if (options.metadata !== undefined) body["metadata"] = options.metadata;
    const res = await this.#call("POST", "/v1/streams", {
      body: JSON.stringify(body),
      signal: options.signal,
    });
    const json = await this.#json(res);
    const streamId = json["stream_id"];
    if (typeof streamId !== "string") {
      throw new ProtocolError(res.status, "protocol_error", "the answer has no stream_id");
    }
    return {
      streamId,
      existing: json["existing"] === true,
      links: json["links"] as StreamLinks,
    };
  }

  /** A stream's recorded state. */
  async status(streamId: string, options: CallOptions = {}): Promise<StreamStatus> {
    const res = await this.#call("GET", this.#streamPath(streamId), { signal: options.signal });
    const j = await this.#json(res);
    return {
      streamId: j["stream_id"] as string,
      type: j["type"] as RequestType,
      state: j["state"] as StreamState,
      chunks: j["chunks"] as number,
      lastEventId: (j["last_event_id"] ?? null) as number | null,
      attempts: j["attempts"] as number,
      cursor: j["cursor"] ?? null,
      runningHere: j["running_here"] === true,
      createdAt: j["created_at"] as string,
      updatedAt: j["updated_at"] as string,
      finishedAt: (j["finished_at"] ?? null) as string | null,
      links: j["links"] as StreamLinks,
    };
  }

  /**
   * Asks a running stream to cancel; it then ends with a `cancelled` event. Throws a
   * `ConflictError` (`already_finished`, `not_running_here`) or `NotFoundError`.
   */
  async cancel(streamId: string, options: CallOptions = {}): Promise<void> {
    const res = await this.#call("DELETE", this.#streamPath(streamId), { signal: options.signal });
    await res.body?.cancel();
  }

  /**
   * Follows a stream's events: everything after `lastEventId` (or from the start), then live,
   * until the terminal event. A dropped connection is resumed from the last event received,
   * waiting the server's `retry:` delay (doubling while attempts make no progress), so every
   * event is yielded exactly once and in order. Ends without error on `204 No Content`, Sluice's
   * answer to a resume point at or past a finished stream's terminal event. Throws a
   * {@link SluiceError} when the server refuses (4xx), or when `maxReconnects` reconnects in a
   * row made no progress. Breaking out of the loop closes the connection.
   *
   * `T` is the chunk payload type, such as `DemoTick`.
   */
  subscribe<T = unknown>(
    streamId: string,
    options: SubscribeOptions = {},
  ): AsyncGenerator<StreamEvent<T>, void, undefined> {
    // Checked now, not at the first `next()`, so a bad resume point throws where it is passed.
    const lastId = parseResumeId(options.lastEventId);
    return this.#subscribe<T>(streamId, lastId, options.signal);
  }

  async *#subscribe<T>(
    streamId: string,
    lastId: bigint | undefined,
    userSignal: AbortSignal | undefined,
  ): AsyncGenerator<StreamEvent<T>, void, undefined> {
    const outer = new AbortController();
    const onUserAbort = (): void => outer.abort(userSignal?.reason);
    if (userSignal) {
      if (userSignal.aborted) throw userSignal.reason;
      userSignal.addEventListener("abort", onUserAbort, { once: true });
    }
    const state: ResumeState = {
      lastId,
      lastSeq: undefined,
      progressed: false,
    };
    const parser = new SseParser();
    const url = `${this.baseUrl}${this.#streamPath(streamId)}/events`;
    let failures = 0;
    try {
      for (;;) {
        state.progressed = false;
        let outcome: Outcome;
        const conn = new AbortController();
        const forward = (): void => conn.abort(outer.signal.reason);
        outer.signal.addEventListener("abort", forward, { once: true });
        try {
          outcome = yield* this.#connect<T>(url, streamId, state, parser, conn);
        } catch (e) {
          if (outer.signal.aborted) throw outer.signal.reason;
          throw e;
        } finally {
          outer.signal.removeEventListener("abort", forward);
          conn.abort();
        }
        if (outcome.kind === "ended") return;
        if (state.progressed) failures = 0;
        failures += 1;
        if (failures > this.#maxReconnects) throw outcome.error;
        const base = parser.retry ?? this.#reconnectDelayMs;
        const delay = Math.min(base * 2 ** (failures - 1), Math.max(this.#maxReconnectDelayMs, base));
        await sleep(delay, outer.signal);
      }
    } finally {
      userSignal?.removeEventListener("abort", onUserAbort);
      outer.abort();
    }
  }

  /** One SSE connection: yields new events, and says whether to reconnect. */
  async *#connect<T>(
    url: string,
    streamId: string,
    state: ResumeState,
    parser: SseParser,
    conn: AbortController,
  ): AsyncGenerator<StreamEvent<T>, Outcome, undefined> {
    const headers = await this.#requestHeaders();
    headers["Accept"] = "text/event-stream";
    if (state.lastId !== undefined) headers["Last-Event-ID"] = state.lastId.toString();
    let idleTimer: ReturnType<typeof setTimeout> | undefined;
    const arm = (): void => {
      if (this.#idleTimeoutMs <= 0) return;
      clearTimeout(idleTimer);
      idleTimer = setTimeout(() => conn.abort(new IdleTimeout("connection idle")), this.#idleTimeoutMs);
    };
    const dropped = (e: unknown): Outcome => ({
      kind: "dropped",
      error:
        e instanceof SluiceError
          ? e
          : new ConnectionError(0, "network_error", `connection to ${url} failed: ${describe(e)}`, {
              cause: e,
            }),
    });
    try {
      arm();
      let res: Response;
      try {
        res = await this.#fetch(url, { method: "GET", headers, signal: conn.signal, cache: "no-store" });
      } catch (e) {
        if (conn.signal.aborted && !(conn.signal.reason instanceof IdleTimeout)) throw e;
        return dropped(e);
      }
      if (res.status === 204) {
        await res.body?.cancel().catch(() => {});
        return { kind: "ended" };
      }
      if (!res.ok) {
        const err = await errorFromResponse(res);
        if (retryableStatus(res.status)) return dropped(err);
        throw err;
      }
      const contentType = res.headers.get("content-type") ?? "";
      if (!contentType.toLowerCase().startsWith("text/event-stream")) {
        await res.body?.cancel().catch(() => {});
        throw new ProtocolError(
          res.status,
          "protocol_error",
          `expected text/event-stream from ${url}, got ${contentType || "no content type"}`,
        );
      }
      if (!res.body) {
        throw new ProtocolError(res.status, "protocol_error", "the event stream has no body");
      }
      const reader = res.body.getReader();
      const decoder = new TextDecoder();
      parser.end();
      try {
        for (;;) {
          let chunk: ReadableStreamReadResult<Uint8Array>;
          try {
            chunk = await reader.read();
          } catch (e) {
            if (conn.signal.aborted && !(conn.signal.reason instanceof IdleTimeout)) throw e;
            return dropped(e);
          }
          arm();
          const text = chunk.done ? decoder.decode() : decoder.decode(chunk.value, { stream: true });
          for (const message of parser.push(text)) {
            const event = toEvent<T>(message, streamId);
            if (event === undefined) continue;
            if (!accept(event, message, state)) continue;
            yield event;
            if (isTerminalKind(event.kind)) return { kind: "ended" };
          }
          if (chunk.done) {
            return dropped(
              new ConnectionError(0, "network_error", "the event stream ended before the stream did"),
            );
          }
        }
      } finally {
        // Closes the body (and so the connection) however the loop was left.
        reader.cancel().catch(() => {});
      }
    } finally {
      clearTimeout(idleTimer);
    }
  }

  #streamPath(streamId: string): string {
    return `/v1/streams/${encodeURIComponent(streamId)}`;
  }

  async #requestHeaders(): Promise<Record<string, string>> {
    const headers: Record<string, string> = { ...this.#headers };
    const token = typeof this.#token === "function" ? await this.#token() : this.#token;
    if (token !== undefined && token !== "") headers["Authorization"] = `Bearer ${token}`;
    return headers;
  }

  /** Sends a request; answers refused with a status of 400 or more throw typed errors. */
  async #call(
    method: string,
    path: string,
    init: { body?: string; signal?: AbortSignal | undefined },
  ): Promise<Response> {
    const headers = await this.#requestHeaders();
    headers["Accept"] = "application/json";
    const requestInit: RequestInit = { method, headers };
    if (init.body !== undefined) {
      headers["Content-Type"] = "application/json";
      requestInit.body = init.body;
    }
    if (init.signal) requestInit.signal = init.signal;
    const url = `${this.baseUrl}${path}`;
    let res: Response;
    try {
      res = await this.#fetch(url, requestInit);
    } catch (e) {
      if (init.signal?.aborted) throw e;
      throw new ConnectionError(0, "network_error", `${method} ${url} failed: ${describe(e)}`, {
        cause: e,
      });
    }
    if (res.status >= 400) throw await errorFromResponse(res);
    return res;
  }

  async #json(res: Response): Promise<Record<string, unknown>> {
    let body: unknown;
    try {
      body = await res.json();
    } catch (e) {
      throw new ProtocolError(res.status, "protocol_error", `the answer is not JSON: ${describe(e)}`, {
        cause: e,
      });
    }
    if (!isRecord(body)) {
      throw new ProtocolError(res.status, "protocol_error", "the answer is not a JSON object");
    }
    return body;
  }
}

/** Where a subscription stands: what it yielded last. */
interface ResumeState {
  /** The id of the last event yielded (or the caller's resume point). */
  lastId: bigint | undefined;
  /** The seq of the last stored event yielded. */
  lastSeq: number | undefined;
  /** Whether the current connection yielded a new event. */
  progressed: boolean;
}

function parseResumeId(id: number | string | undefined): bigint | undefined {
  if (id === undefined) return undefined;
  const text = String(id).trim();
  if (!/^[0-9]+$/.test(text)) {
    throw new TypeError(`lastEventId ${JSON.stringify(String(id))} must be a non-negative integer`);
  }
  return BigInt(text);
}

function isTerminalKind(kind: StreamEvent["kind"]): boolean {
  return kind === "success" || kind === "failed" || kind === "timeout" || kind === "cancelled";
}

/**
 * Decides whether an event is new, and records it as the resume point if so. Stored events at or
 * before the resume point (by id or by seq) were yielded already and are dropped.
 */
function accept<T>(event: StreamEvent<T>, message: SseMessage, state: ResumeState): boolean {
  if (event.id === undefined) {
    // Heartbeats and notices carry no id: always news.
    return true;
  }
  const wireId = message.id !== undefined && /^[0-9]+$/.test(message.id) ? BigInt(message.id) : BigInt(event.id);
  if (state.lastId !== undefined && wireId <= state.lastId) return false;
  if (state.lastSeq !== undefined && event.seq <= state.lastSeq) return false;
  state.lastId = wireId;
  state.lastSeq = event.seq;
  state.progressed = true;
  return true;
}

/** Turns an SSE message into a typed event; undefined for messages this client does not know. */
function toEvent<T>(message: SseMessage, streamId: string): StreamEvent<T> | undefined {
  let data: unknown;
  try {
    data = JSON.parse(message.data);
  } catch (e) {
    throw new ProtocolError(
      200,
      "protocol_error",
      `event ${JSON.stringify(message.event)} has data that is not JSON: ${describe(e)}`,
      { cause: e },
    );
  }
  if (!isRecord(data)) {
    throw new ProtocolError(200, "protocol_error", `event ${JSON.stringify(message.event)} is not an object`);
  }
  if (message.event === HISTORY_LOST) {
    return {
      kind: "history_lost",
      type: HISTORY_LOST,
      streamId,
      id: undefined,
      seq: undefined,
      payload: data as unknown as HistoryLostPayload,
      metadata: undefined,
      time: undefined,
    };
  }
  const type = typeof data["type"] === "string" ? data["type"] : message.event;
  let state;
  try {
    state = parseEventType(type).state;
  } catch {
    return undefined; // not an event of the grammar: something newer than this client
  }
  const common = {
    streamId: typeof data["stream_id"] === "string" ? data["stream_id"] : streamId,
    metadata: isRecord(data["metadata"]) ? (data["metadata"] as Metadata) : undefined,
    time: typeof data["time"] === "string" ? data["time"] : undefined,
  };
  if (state === "heartbeat") {
    return {
      kind: "heartbeat",
      type,
      id: undefined,
      seq: undefined,
      payload: data["payload"],
      ...common,
    } as StreamEvent<T>;
  }
  if (state === "requested") return undefined;
  const id =
    typeof data["id"] === "number"
      ? data["id"]
      : message.id !== undefined && /^[0-9]+$/.test(message.id)
        ? Number(message.id)
        : undefined;
  const seq = data["seq"];
  if (id === undefined || typeof seq !== "number") {
    throw new ProtocolError(200, "protocol_error", `${type} event has no id or no seq`);
  }
  const kind = state === "stream" ? "chunk" : state;
  return {
    kind,
    type,
    id,
    seq,
    payload: data["payload"],
    ...common,
  } as StreamEvent<T>;
}

function describe(e: unknown): string {
  if (e instanceof Error) {
    const cause = (e as { cause?: unknown }).cause;
    return cause instanceof Error ? `${e.message} (${cause.message})` : e.message;
  }
  return String(e);
}
