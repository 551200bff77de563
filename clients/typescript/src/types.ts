/** The lifecycle states of the `{service}:{action}:v{N}:{state}` event type grammar. */
export const EVENT_STATES = [
  "requested",
  "started",
  "stream",
  "heartbeat",
  "success",
  "failed",
  "timeout",
  "cancelled",
] as const;

/** Where an event sits in a stream's lifecycle. */
export type EventState = (typeof EVENT_STATES)[number];

/** The states that end a stream. */
export type TerminalState = "success" | "failed" | "timeout" | "cancelled";

/** An event type: `{service}:{action}:v{N}:{state}`, such as `demo:stream_ticks:v1:stream`. */
export type EventType<S extends EventState = EventState> = `${string}:${string}:v${number}:${S}`;

/** The type a client sends to ask for a stream, such as `demo:stream_ticks:v1:requested`. */
export type RequestType = EventType<"requested">;

/** A parsed event type. */
export interface ParsedEventType {
  /** The service part, such as `demo`. */
  service: string;
  /** The action part, such as `stream_ticks`. */
  action: string;
  /** The `N` of `vN`. */
  version: number;
  /** The lifecycle state. */
  state: EventState;
  /** `service:action`, the key Sluice's handler registry uses. */
  kind: `${string}:${string}`;
}

const NAME = /^[a-z][a-z0-9_]*$/;
const VERSION = /^v[1-9][0-9]*$/;
const MAX_VERSION = 0xffff_ffff;

function isState(s: string): s is EventState {
  return (EVENT_STATES as readonly string[]).includes(s);
}

/**
 * Parses and validates an event type against Sluice's grammar: service and action match
 * `[a-z][a-z0-9_]*`, the version is `v` and a positive integer without leading zeros, the state
 * is one of {@link EVENT_STATES}. Throws a `TypeError` naming the offending part.
 */
export function parseEventType(type: string): ParsedEventType {
  const parts = type.split(":");
  if (parts.length !== 4) {
    throw new TypeError(`event type ${JSON.stringify(type)} must look like service:action:vN:state`);
  }
  const [service, action, version, state] = parts as [string, string, string, string];
  for (const [part, value] of [
    ["service", service],
    ["action", action],
  ] as const) {
    if (!NAME.test(value)) {
      throw new TypeError(`${part} ${JSON.stringify(value)} must match [a-z][a-z0-9_]*`);
    }
  }
  const n = VERSION.test(version) ? Number(version.slice(1)) : NaN;
  if (!Number.isSafeInteger(n) || n > MAX_VERSION) {
    throw new TypeError(`version ${JSON.stringify(version)} must be v followed by a positive integer`);
  }
  if (!isState(state)) {
    throw new TypeError(
      `state ${JSON.stringify(state)} is not one of ${EVENT_STATES.join(", ")}`,
    );
  }
  return { service, action, version: n, state, kind: `${service}:${action}` };
}

/** Whether `type` is a valid event type (in state `state`, when given). */
export function isEventType<S extends EventState = EventState>(
  type: string,
  state?: S,
): type is EventType<S> {
  try {
    const parsed = parseEventType(type);
    return state === undefined || parsed.state === state;
  } catch {
    return false;
  }
}

/** Builds an event type from its parts, validating them. */
export function formatEventType<S extends EventState>(
  service: string,
  action: string,
  version: number,
  state: S,
): EventType<S> {
  const type = `${service}:${action}:v${version}:${state}` as const;
  parseEventType(type);
  return type as EventType<S>;
}

/** Free-form metadata, echoed from the request on every event. */
export type Metadata = Record<string, unknown>;

/** Payload of `started`. */
export interface StartedPayload {
  /** The run's attempt number, from 1. */
  attempt: number;
}

/** Payload of `heartbeat`. */
export interface HeartbeatPayload {
  /** Chunks written so far. */
  chunks: number;
  /** Milliseconds since the run started. */
  elapsed_ms: number;
}

/** Payload of `success`. */
export interface SuccessPayload {
  /** How many chunks the stream holds. */
  chunks: number;
  /** How long the run took. */
  duration_ms: number;
}

/** Payload of `failed`. */
export interface FailedPayload {
  /** A failure code such as `demo_failure`, `handler_panic` or `resume_exhausted`. */
  code: string;
  /** A human-readable explanation. */
  message: string;
  /** Chunks written before the failure. */
  chunks: number;
}

/** Payload of `timeout`. */
export interface TimeoutPayload {
  /** The timeout the stream ran past. */
  timeout_ms: number;
  /** Chunks written before the timeout. */
  chunks: number;
}

/** Payload of `cancelled`. */
export interface CancelledPayload {
  /** Why the stream was cancelled, such as `client`. */
  reason: string;
  /** Chunks written before the cancellation. */
  chunks: number;
}

/** Payload of the `sluice:history_lost` notice. */
export interface HistoryLostPayload {
  /** The resume point the client asked for. */
  requested_id: number;
  /** The earliest event id still retained; replay starts there. */
  earliest_id: number;
}

/** Fields every stored event carries. */
interface StoredEvent<K extends string, S extends EventState, P> {
  /** The discriminant. */
  kind: K;
  /** The full event type, such as `demo:stream_ticks:v1:stream`. */
  type: EventType<S>;
  /** The stream the event belongs to. */
  streamId: string;
  /** The event id (its offset in the stream topic): the resume point to pass as `lastEventId`. */
  id: number;
  /** Position in the stream: 0 for `started`, 1..N for chunks, N+1 for the terminal event. */
  seq: number;
  /** The event's data. */
  payload: P;
  /** Metadata from the request, if it had any. */
  metadata: Metadata | undefined;
  /** When the event was created (RFC 3339). */
  time: string | undefined;
}

/** The stream's first event (`seq` 0). */
export type StartedEvent = StoredEvent<"started", "started", StartedPayload>;
/** One chunk of data (`seq` 1..N). */
export type ChunkEvent<T = unknown> = StoredEvent<"chunk", "stream", T>;
/** The stream finished normally. */
export type SuccessEvent = StoredEvent<"success", "success", SuccessPayload>;
/** The stream's handler failed. */
export type FailedEvent = StoredEvent<"failed", "failed", FailedPayload>;
/** The stream ran past its timeout. */
export type TimeoutEvent = StoredEvent<"timeout", "timeout", TimeoutPayload>;
/** A client cancelled the stream. */
export type CancelledEvent = StoredEvent<"cancelled", "cancelled", CancelledPayload>;

/** A liveness signal sent to live subscribers; never stored, so it has no `id` and no `seq`. */
export interface HeartbeatEvent {
  kind: "heartbeat";
  type: EventType<"heartbeat">;
  streamId: string;
  id: undefined;
  seq: undefined;
  payload: HeartbeatPayload;
  metadata: Metadata | undefined;
  time: string | undefined;
}

/**
 * The resume point is older than the retained history: events from `requested_id` up to
 * `earliest_id` are gone and replay continues at `earliest_id`.
 */
export interface HistoryLostEvent {
  kind: "history_lost";
  type: "sluice:history_lost";
  streamId: string;
  id: undefined;
  seq: undefined;
  payload: HistoryLostPayload;
  metadata: undefined;
  time: undefined;
}

/** An event that ends a stream. */
export type TerminalEvent = SuccessEvent | FailedEvent | TimeoutEvent | CancelledEvent;

/** Anything a subscription yields; `T` is the chunk payload type. */
export type StreamEvent<T = unknown> =
  | StartedEvent
  | ChunkEvent<T>
  | HeartbeatEvent
  | HistoryLostEvent
  | TerminalEvent;

/** The `kind` of every terminal event. */
export const TERMINAL_KINDS: readonly TerminalEvent["kind"][] = [
  "success",
  "failed",
  "timeout",
  "cancelled",
];

/** Whether `event` ends its stream. */
export function isTerminal<T>(event: StreamEvent<T>): event is TerminalEvent {
  return (TERMINAL_KINDS as readonly string[]).includes(event.kind);
}

/** A chunk of the built-in `demo:stream_ticks` handler. */
export interface DemoTick {
  /** The chunk number, from 1. */
  n: number;
  /** When it was produced, in microseconds since the Unix epoch. */
  at: number;
}

/** The payload of `demo:stream_ticks:v1:requested` (every field optional). */
export interface DemoTicksRequest {
  count?: number;
  interval_ms?: number;
  fail_at?: number | null;
  panic_at?: number | null;
  checkpoint_every?: number;
  pad_bytes?: number;
}

/** A stream's recorded state. */
export type StreamState = "pending" | "running" | "success" | "failed" | "timeout" | "cancelled";

/** URLs of a stream's resources, relative to the server. */
export interface StreamLinks {
  status: string;
  events: string;
  websocket: string;
}

/** What `POST /v1/streams` answered. */
export interface RequestResult {
  /** The stream's id: the one given, or one Sluice assigned. */
  streamId: string;
  /** True when a stream with that id already existed (nothing new was started). */
  existing: boolean;
  /** URLs of the stream's resources. */
  links: StreamLinks;
}

/** What `GET /v1/streams/{id}` answered. */
export interface StreamStatus {
  streamId: string;
  /** The requested type, such as `demo:stream_ticks:v1:requested`. */
  type: RequestType;
  state: StreamState;
  /** Chunks written so far. */
  chunks: number;
  /** The id of the latest stored event, or null if none yet. */
  lastEventId: number | null;
  /** Runs so far (more than 1 after a resume). */
  attempts: number;
  /** The handler's last checkpoint, if any. */
  cursor: unknown;
  /** Whether the stream is running on the instance that answered. */
  runningHere: boolean;
  /** RFC 3339 timestamps. */
  createdAt: string;
  updatedAt: string;
  finishedAt: string | null;
  links: StreamLinks;
}
