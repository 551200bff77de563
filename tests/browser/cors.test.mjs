// CORS from a real Chromium page on another origin. A page served from the allowed origin
// (http://127.0.0.1:<CORS_PAGE_PORT>, in edge.cors_allowed_origins) calls the API with an
// Authorization header (so Chromium sends a preflight), requests a stream with a JSON body and
// follows it with EventSource. The same page from a refused origin (http://localhost:<port>, the
// same server under another name) gets nothing: Chromium blocks every call, and the preflight
// answers carry no Access-Control-Allow-Origin. Credentials are off: no
// Access-Control-Allow-Credentials is ever sent.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import { SLUICE_URL, SLUICE_TOKEN, DEMO, launch, waitFor } from './helpers.mjs';

const PORT = Number(process.env.CORS_PAGE_PORT);
const ALLOWED = `http://127.0.0.1:${PORT}`;
const REFUSED = `http://localhost:${PORT}`;
let browser;
let server;

before(async () => {
  if (!PORT) throw new Error('CORS_PAGE_PORT is not set: scripts/test.sh sets it with the allowed origin');
  server = createServer((_, res) => {
    res.writeHead(200, { 'content-type': 'text/html' });
    res.end('<!doctype html><title>another origin</title><p>a page on another origin</p>');
  });
  await new Promise((resolve) => server.listen(PORT, '127.0.0.1', resolve));
  browser = await launch();
});
after(async () => {
  await browser?.close();
  await new Promise((resolve) => server?.close(resolve));
});

/** What a page at `origin` gets from the API: status and body of a list, a request and a stream. */
async function fromPage(origin) {
  const page = await (await browser.newContext()).newPage();
  await page.goto(`${origin}/`);
  return page.evaluate(async ({ api, token, type }) => {
    const out = {};
    const call = async (name, f) => {
      try {
        const r = await f();
        out[name] = { status: r.status, body: await r.json() };
      } catch (e) {
        out[name] = { error: String(e) };
      }
    };
    const auth = { Authorization: `Bearer ${token}` };
    await call('list', () => fetch(`${api}/v1/streams`, { headers: auth }));
    await call('request', () => fetch(`${api}/v1/streams`, {
      method: 'POST',
      headers: { ...auth, 'Content-Type': 'application/json' },
      body: JSON.stringify({ type, payload: { count: 3, interval_ms: 20 } }),
    }));
    if (out.request.status === 202) {
      const id = out.request.body.stream_id;
      out.events = await new Promise((resolve) => {
        const seen = [];
        const es = new EventSource(`${api}/v1/streams/${id}/events?access_token=${encodeURIComponent(token)}`);
        es.addEventListener('demo:stream_ticks:v1:stream', (e) => seen.push(e.lastEventId));
        es.addEventListener('demo:stream_ticks:v1:success', () => { es.close(); resolve(seen); });
        setTimeout(() => { es.close(); resolve(seen); }, 15000);
      });
    }
    return out;
  }, { api: SLUICE_URL, token: SLUICE_TOKEN, type: DEMO });
}

async function preflight(origin) {
  const res = await fetch(`${SLUICE_URL}/v1/streams`, {
    method: 'OPTIONS',
    headers: {
      Origin: origin,
      'Access-Control-Request-Method': 'POST',
      'Access-Control-Request-Headers': 'authorization,content-type',
    },
  });
  return { status: res.status, headers: Object.fromEntries(res.headers) };
}

test('a page on an allowed origin calls the API, requests a stream and follows it', { timeout: 60000 }, async () => {
  const got = await fromPage(ALLOWED);
  assert.equal(got.list.status, 200, JSON.stringify(got.list));
  assert.ok(Array.isArray(got.list.body.streams));
  assert.equal(got.request.status, 202, JSON.stringify(got.request));
  assert.equal(got.events.length, 3, `three chunks over EventSource: ${JSON.stringify(got.events)}`);
  const pre = await preflight(ALLOWED);
  assert.equal(pre.headers['access-control-allow-origin'], ALLOWED);
  assert.match(pre.headers['access-control-allow-headers'], /authorization/);
  assert.equal(pre.headers['access-control-allow-credentials'], undefined, 'credentials are off');
});

test('a page on another origin is refused by the browser', { timeout: 60000 }, async () => {
  const got = await fromPage(REFUSED);
  assert.match(got.list.error ?? '', /Failed to fetch/, JSON.stringify(got.list));
  assert.match(got.request.error ?? '', /Failed to fetch/, JSON.stringify(got.request));
  const pre = await preflight(REFUSED);
  assert.equal(pre.headers['access-control-allow-origin'], undefined, JSON.stringify(pre.headers));
  // The server itself stays healthy for everyone else.
  await waitFor(async () => (await fetch(`${SLUICE_URL}/healthz`)).ok, { what: 'healthz' });
});
