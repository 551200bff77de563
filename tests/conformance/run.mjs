// Runs the conformance suite against $SLUICE_URL (set by scripts/with-sluice.sh) and compares the
// outcome with expected-failures.txt: the run fails if any other test fails, and also if a test
// listed there passes (the list must shrink with the fixes). Prints the pass count.
import { spawnSync } from "node:child_process"
import { readFileSync, existsSync, mkdtempSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"

const base = process.env.SLUICE_URL
if (!base) {
  console.error("run.mjs: SLUICE_URL is not set (run it through scripts/with-sluice.sh)")
  process.exit(2)
}
const out = join(mkdtempSync(join(tmpdir(), "ds-conformance-")), "report.json")
const run = spawnSync(
  "npx",
  ["vitest", "run", "conformance.test.mjs", "--reporter=json", `--outputFile=${out}`, "--reporter=dot"],
  { stdio: "inherit", env: { ...process.env, DS_URL: `${base}/ds` }, timeout: 15 * 60 * 1000 },
)
if (!existsSync(out)) {
  console.error(`run.mjs: vitest wrote no report (status ${run.status}, signal ${run.signal})`)
  process.exit(1)
}
const report = JSON.parse(readFileSync(out, "utf8"))
const results = report.testResults.flatMap((f) => f.assertionResults)
const name = (r) => [...r.ancestorTitles, r.title].join(" > ")
const failed = new Set(results.filter((r) => r.status === "failed").map(name))
const passed = results.filter((r) => r.status === "passed").map(name)
const expected = new Set(
  readFileSync(new URL("./expected-failures.txt", import.meta.url), "utf8")
    .split("\n")
    .map((l) => l.trim())
    .filter((l) => l && !l.startsWith("#")),
)
const skipped = results.filter((r) => r.status !== "passed" && r.status !== "failed").map(name)
const unexpected = [...failed].filter((n) => !expected.has(n))
const fixed = passed.filter((n) => expected.has(n))
console.log(
  `conformance: ${passed.length} passed, ${failed.size} failed, ${skipped.length} skipped, ${results.length} in all`,
)
for (const n of skipped) console.log(`  SKIPPED: ${n}`)
for (const n of unexpected) console.log(`  UNEXPECTED FAILURE: ${n}`)
for (const n of fixed) console.log(`  NOW PASSING (remove from expected-failures.txt): ${n}`)
if (results.length === 0 || skipped.length || unexpected.length || fixed.length) process.exit(1)

// The bridge: a Sluice stream followed with the official client.
const bridge = spawnSync("node", ["--test", "--test-reporter=spec", "bridge.test.mjs"], {
  stdio: "inherit",
  timeout: 5 * 60 * 1000,
})
if (bridge.status !== 0) {
  console.error(`run.mjs: the bridge test failed (status ${bridge.status})`)
  process.exit(1)
}
