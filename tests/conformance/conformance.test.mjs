// The official Durable Streams conformance suite against the Sluice at DS_URL (a base URL such as
// http://127.0.0.1:8080/ds). run.mjs starts vitest on this file.
import { runConformanceTests } from "@durable-streams/server-conformance-tests"

const baseUrl = process.env.DS_URL
if (!baseUrl) throw new Error("DS_URL is not set")

runConformanceTests({
  baseUrl,
  // Only the vitest timeout of the long-poll tests; the server's own timeout is set by run.mjs.
  longPollTimeoutMs: 2000,
  // The reserved __ds subscription APIs (webhooks and pull-wake); run.mjs fails if any is skipped.
  subscriptions: true,
})
