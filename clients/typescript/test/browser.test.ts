// The built package (dist/) in a real browser: headless Chromium loads a page that requests a demo
// stream and follows it through a same-origin proxy to the live Sluice, which cuts the event
// stream once mid-way; the page posts back what it saw. Skipped only when Chromium is not
// installed; SLUICE_URL and SLUICE_TOKEN must be set as for the other live tests.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import http from "node:http";
import { tmpdir } from "node:os";
import path from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";

import { liveServer } from "./helpers.js";

const CHROMIUM = process.env["CHROMIUM"] ?? "/usr/bin/chromium";
const DIST = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../dist");
const server = liveServer();

const PAGE = `<!doctype html>
<meta charset="utf-8">
<title>@sluice/client in a browser</title>
<script type="module">
import { SluiceClient, NotFoundError } from "/dist/index.js";
const token = new URLSearchParams(location.search).get("token");
const result = { kinds: [], seqs: [], ids: [] };
try {
  const sluice = new SluiceClient({ baseUrl: location.origin, token, reconnectDelayMs: 50 });
  const { streamId } = await sluice.request("demo:stream_ticks:v1:requested", { count: 15, interval_ms: 40 });
  result.streamId = streamId;
  let dropped = false;
  for await (const e of sluice.subscribe(streamId)) {
    result.kinds.push(e.kind);
    if (e.id !== undefined) { result.seqs.push(e.seq); result.ids.push(e.id); }
    if (!dropped && e.kind === "chunk" && e.seq === 4) {
      dropped = true;
      await fetch("/drop", { method: "POST" });
    }
  }
  try {
    await sluice.status("no-such-stream-" + Date.now());
  } catch (e) {
    result.error = { notFound: e instanceof NotFoundError, name: e.name, status: e.status, code: e.code };
  }
} catch (e) {
  result.failure = String(e && e.stack || e);
}
await fetch("/result", { method: "POST", body: JSON.stringify(result) });
</script>`;

interface PageResult {
  streamId?: string;
  kinds: string[];
  seqs: number[];
  ids: number[];
  error?: { notFound: boolean; name: string; status: number; code: string };
  failure?: string;
}

test(
  "the built package works in Chromium: request, subscribe, resume after a cut, typed errors",
  { timeout: 90_000 },
  async () => {
    assert.ok(existsSync(CHROMIUM), `${CHROMIUM} is required (scripts/setup.sh installs Debian's chromium)`);
    assert.ok(existsSync(path.join(DIST, "index.js")), "dist/ is built (npm run build)");
    const upstream = new URL(server.url);
    const eventRequests: { lastEventId: string | undefined; socket: import("node:net").Socket }[] = [];
    let resolveResult!: (r: PageResult) => void;
    const result = new Promise<PageResult>((resolve) => (resolveResult = resolve));

    const site = http.createServer((req, res) => {
      const url = new URL(req.url ?? "/", "http://page");
      if (url.pathname === "/") {
        res.writeHead(200, { "content-type": "text/html; charset=utf-8" }).end(PAGE);
      } else if (url.pathname.startsWith("/dist/") && /^[\w./-]+\.js$/.test(url.pathname)) {
        const file = path.join(DIST, path.basename(url.pathname));
        if (!existsSync(file)) return void res.writeHead(404).end();
        res.writeHead(200, { "content-type": "text/javascript" }).end(readFileSync(file));
      } else if (url.pathname === "/drop" && req.method === "POST") {
        for (const r of eventRequests) r.socket.destroy();
        res.writeHead(204).end();
      } else if (url.pathname === "/result" && req.method === "POST") {
        let body = "";
        req.on("data", (d: Buffer) => (body += d.toString()));
        req.on("end", () => {
          res.writeHead(204).end();
          resolveResult(JSON.parse(body) as PageResult);
        });
      } else if (url.pathname.startsWith("/v1/")) {
        if (url.pathname.endsWith("/events")) {
          const value = req.headers["last-event-id"];
          eventRequests.push({ lastEventId: Array.isArray(value) ? value[0] : value, socket: req.socket });
        }
        const proxied = http.request(
          {
            host: upstream.hostname,
            port: upstream.port,
            method: req.method,
            path: req.url,
            headers: { ...req.headers, host: upstream.host },
          },
          (up) => {
            res.writeHead(up.statusCode ?? 502, up.headers);
            up.pipe(res);
          },
        );
        proxied.on("error", () => res.destroy());
        res.on("close", () => proxied.destroy());
        req.pipe(proxied);
      } else {
        res.writeHead(404).end();
      }
    });
    await new Promise<void>((resolve) => site.listen(0, "127.0.0.1", resolve));
    const { port } = site.address() as import("node:net").AddressInfo;
    const profile = mkdtempSync(path.join(tmpdir(), "sluice-client-chromium-"));
    const browser = spawn(
      CHROMIUM,
      [
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        `--user-data-dir=${profile}`,
        `http://127.0.0.1:${port}/?token=${encodeURIComponent(server.token)}`,
      ],
      { stdio: "ignore" },
    );
    try {
      const exited = new Promise<never>((_, reject) =>
        browser.once("exit", (code) => reject(new Error(`chromium exited early (${code})`))),
      );
      exited.catch(() => {}); // it rejects again when the browser is killed below
      const r = await Promise.race([result, exited]);
      assert.equal(r.failure, undefined, r.failure);
      assert.deepEqual(r.seqs, Array.from({ length: 17 }, (_, i) => i), "every seq once, in order");
      for (let i = 1; i < r.ids.length; i++) assert.ok(r.ids[i]! > r.ids[i - 1]!);
      assert.equal(r.kinds.at(-1), "success");
      assert.ok(eventRequests.length >= 2, "the cut made the page reconnect");
      assert.equal(eventRequests[0]!.lastEventId, undefined);
      const resumedFrom = Number(eventRequests[1]!.lastEventId);
      assert.ok(r.ids.includes(resumedFrom), `the reconnect carried Last-Event-ID (${eventRequests[1]!.lastEventId})`);
      assert.ok(resumedFrom >= r.ids[r.seqs.indexOf(4)]!);
      assert.deepEqual(r.error, { notFound: true, name: "NotFoundError", status: 404, code: "not_found" });
    } finally {
      if (browser.exitCode === null && browser.signalCode === null) {
        const gone = new Promise<void>((resolve) => browser.once("exit", () => resolve()));
        browser.kill("SIGTERM");
        const killer = setTimeout(() => browser.kill("SIGKILL"), 5000);
        await gone;
        clearTimeout(killer);
      }
      site.closeAllConnections();
      await new Promise<void>((resolve) => site.close(() => resolve()));
      rmSync(profile, { recursive: true, force: true, maxRetries: 10, retryDelay: 100 });
    }
  },
);
