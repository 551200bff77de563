// The Durable Streams reference server (@durable-streams/server, file-backed) for the durable
// benchmark: serves on 127.0.0.1 at a free port with its data in the directory given, prints
// {"url": ...} once it listens, and stops on SIGTERM.
import { DurableStreamTestServer } from "@durable-streams/server"

const dataDir = process.argv[2]
if (!dataDir) throw new Error("usage: node reference.mjs <data dir>")
const server = new DurableStreamTestServer({ port: 0, host: "127.0.0.1", dataDir, longPollTimeout: 20000 })
await server.start()
console.log(JSON.stringify({ url: server.url }))
process.on("SIGTERM", async () => {
  await server.stop()
  process.exit(0)
})
