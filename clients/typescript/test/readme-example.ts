// The README's usage example, type-checked by `npm test` (tsc --noEmit) so it stays correct.
// Not run: it is not a *.test file.
import { SluiceClient, SluiceError, parseEventType, type DemoTick } from "../src/index.js";

export async function readmeExample(): Promise<void> {
  const sluice = new SluiceClient({
    baseUrl: "http://localhost:8080",
    token: process.env["SLUICE_TOKEN"], // sent as Authorization: Bearer <token>
  });

  const { streamId, existing } = await sluice.request(
    "demo:stream_ticks:v1:requested",
    { count: 20, interval_ms: 100 },
    { streamId: "order-42-ticks", metadata: { trace: "abc" } },
  );
  console.log(existing);

  try {
    for await (const event of sluice.subscribe<DemoTick>(streamId)) {
      switch (event.kind) {
        case "started":
          console.log("attempt", event.payload.attempt);
          break;
        case "chunk":
          console.log(event.seq, event.payload.n, event.payload.at);
          break;
        case "heartbeat":
          console.log("alive,", event.payload.chunks, "chunks so far");
          break;
        case "history_lost":
          console.warn("events", event.payload.requested_id, "to", event.payload.earliest_id, "are gone");
          break;
        case "success":
          console.log("done:", event.payload.chunks, "chunks in", event.payload.duration_ms, "ms");
          break;
        case "failed":
          console.error("failed:", event.payload.code, event.payload.message);
          break;
        case "timeout":
        case "cancelled":
          console.log(event.kind, "after", event.payload.chunks, "chunks");
          break;
        default: {
          const never: never = event;
          throw new Error(`unhandled ${String(never)}`);
        }
      }
    }
  } catch (e) {
    if (e instanceof SluiceError) console.error(e.status, e.code, e.message);
    else throw e;
  }

  for await (const event of sluice.subscribe(streamId, { lastEventId: 7 })) {
    console.log(event.id);
  }

  const status = await sluice.status(streamId);
  console.log(status.state, status.chunks, status.lastEventId);
  await sluice.cancel(streamId);

  console.log(parseEventType("demo:stream_ticks:v1:stream"));

  const getFreshToken = async (): Promise<string> => "t";
  const myFetch: typeof fetch = (input, init) => fetch(input, init);
  new SluiceClient({
    baseUrl: "https://sluice.example.com",
    token: () => getFreshToken(),
    fetch: myFetch,
    reconnectDelayMs: 1000,
    maxReconnectDelayMs: 30_000,
    maxReconnects: 10,
    idleTimeoutMs: 0,
    headers: { "x-tenant": "t1" },
  });
}
