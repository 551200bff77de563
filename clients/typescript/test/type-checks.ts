// Compile-time checks of the public types, run by `tsc --noEmit` in `npm test`. Never executed.
import type { EventType, RequestType, SluiceClient, StreamEvent } from "../src/index.js";

export function typeChecks(sluice: SluiceClient, event: StreamEvent<{ n: number }>): void {
  const ok: RequestType = "demo:stream_ticks:v1:requested";
  const chunkType: EventType<"stream"> = "demo:stream_ticks:v2:stream";
  void [ok, chunkType];
  // @ts-expect-error: a request type must be in the requested state
  const started: RequestType = "demo:stream_ticks:v1:started";
  // @ts-expect-error: the version must be v<number>
  const noVersion: RequestType = "demo:stream_ticks:requested";
  // @ts-expect-error: not a state of the grammar
  const badState: EventType = "demo:stream_ticks:v1:done";
  void [started, noVersion, badState];
  // @ts-expect-error: request() takes a request type only
  void sluice.request("demo:stream_ticks:v1:stream", {});

  if (event.kind === "chunk") {
    const n: number = event.payload.n;
    const id: number = event.id;
    void [n, id];
  }
  if (event.kind === "heartbeat") {
    // @ts-expect-error: heartbeats carry no id
    const id: number = event.id;
    void id;
  }
  if (event.kind === "failed") {
    const code: string = event.payload.code;
    void code;
  }
}
