// A Sluice stream followed through the Durable Streams read API with the official client
// (@durable-streams/client), live by long-poll and by SSE at once, while the stream runs: each
// read gets every event of the stream exactly once, in order, and ends when the stream ends.
import { test } from "node:test"
import assert from "node:assert/strict"
import { stream } from "@durable-streams/client"

const base = process.env.SLUICE_URL
if (!base) throw new Error("SLUICE_URL is not set (run it through scripts/with-sluice.sh)")

const COUNT = 20

test("the official client follows a running Sluice stream to its end, live", async () => {
  const res = await fetch(`${base}/v1/streams`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({
      type: "demo:stream_ticks:v1:requested",
      payload: { count: COUNT, interval_ms: 50 },
    }),
  })
  assert.equal(res.status, 202, await res.clone().text())
  const { stream_id } = await res.json()
  const url = `${base}/ds/v1/sluice/${stream_id}`
  // Every item until the stream closes (json() would stop at the first up-to-date batch).
  const follow = async (live) => {
    const r = await stream({ url, offset: "-1", live })
    const events = []
    for await (const item of r.jsonStream()) events.push(item)
    return { events, closed: r.streamClosed }
  }
  const runs = await Promise.all([follow("long-poll"), follow("sse")])
  for (const [i, { events, closed }] of runs.entries()) {
    const mode = i === 0 ? "long-poll" : "sse"
    assert.equal(closed, true, `${mode}: the read ends closed`)
    const states = events.map((e) => e.type.split(":").pop())
    assert.deepEqual(
      states,
      ["started", ...Array(COUNT).fill("stream"), "success"],
      `${mode}: every event once, in order`,
    )
    assert.deepEqual(
      events.map((e) => e.seq),
      [...Array(COUNT + 2).keys()],
      `${mode}: seqs without gap or repeat`,
    )
    const ids = events.map((e) => e.id)
    assert.ok(ids.every((id, k) => k === 0 || id > ids[k - 1]), `${mode}: ids increase`)
    assert.ok(events.every((e) => e.stream_id === stream_id))
  }
})
