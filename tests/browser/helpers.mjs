// Shared helpers of the browser tests: environment, Chromium, the API from Node, waiting.
import { existsSync } from 'node:fs';
import { chromium } from 'playwright-core';

export const CHROMIUM = '/usr/bin/chromium';
export const TOKEN_KEY = 'sluice.console.token';
export const DEMO = 'demo:stream_ticks:v1:requested';

function required(name) {
  const v = process.env[name];
  if (!v) {
    throw new Error(`${name} is not set: run the suite through scripts/with-sluice.sh, ` +
      'e.g. scripts/with-sluice.sh npm --prefix tests/browser test');
  }
  return v;
}

export const SLUICE_URL = required('SLUICE_URL').replace(/\/+$/, '');
export const SLUICE_TOKEN = required('SLUICE_TOKEN');
/** The server's `edge.sse_retry` in ms (scripts/with-sluice.sh sets 250ms). */
export const RETRY_MS = Number(process.env.SLUICE_SSE_RETRY_MS || 250);

export async function launch() {
  if (!existsSync(CHROMIUM)) {
    throw new Error(`${CHROMIUM} is missing: install Debian's chromium (apt-get install -y chromium); ` +
      'these tests never download a browser');
  }
  return chromium.launch({
    executablePath: CHROMIUM,
    args: ['--headless=new', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
}

/** A browser context whose pages start with the token in sessionStorage (as if entered once). */
export async function contextWithToken(browser, options = {}) {
  const context = await browser.newContext({ viewport: { width: 1440, height: 900 }, ...options });
  await context.addInitScript(([key, token]) => {
    try {
      if (location.protocol.startsWith('http') && !sessionStorage.getItem(key)) sessionStorage.setItem(key, token);
    } catch { /* no storage on this document */ }
  }, [TOKEN_KEY, SLUICE_TOKEN]);
  return context;
}

/** Calls the API from Node with the token; returns {status, body}. */
export async function api(method, path, body) {
  const headers = { Authorization: `Bearer ${SLUICE_TOKEN}` };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const res = await fetch(`${SLUICE_URL}${path}`, {
    method, headers, body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  let json = null;
  try { json = text ? JSON.parse(text) : null; } catch { json = text; }
  return { status: res.status, body: json };
}

export async function requestStream(payload, type = DEMO) {
  const { status, body } = await api('POST', '/v1/streams', { type, payload });
  if (status !== 202) throw new Error(`POST /v1/streams answered ${status}: ${JSON.stringify(body)}`);
  return body.stream_id;
}

export const TERMINAL = ['success', 'failed', 'timeout', 'cancelled'];

/** Polls until fn() returns a truthy value; returns it. */
export async function waitFor(fn, { timeout = 20000, interval = 100, what = 'condition' } = {}) {
  const end = Date.now() + timeout;
  let last;
  for (;;) {
    try {
      last = await fn();
      if (last) return last;
    } catch (e) {
      last = e;
    }
    if (Date.now() > end) throw new Error(`timed out after ${timeout} ms waiting for ${what} (last: ${last})`);
    await new Promise((r) => setTimeout(r, interval));
  }
}

export async function waitForState(id, states, timeout = 20000) {
  return waitFor(async () => {
    const { status, body } = await api('GET', `/v1/streams/${id}`);
    return status === 200 && states.includes(body.state) ? body : null;
  }, { timeout, what: `stream ${id} to reach ${states.join('/')}` });
}

export const range = (from, to) => Array.from({ length: to - from + 1 }, (_, i) => from + i);

/** The event lines of the console's stream view, in display order. */
export async function logLines(page) {
  return page.$$eval('[data-testid="event-log"] [data-testid="event"]', (els) => els.map((e) => ({
    id: Number(e.dataset.id),
    seq: Number(e.dataset.seq),
    state: e.dataset.state,
    restored: e.dataset.restored === 'true',
    anomaly: e.dataset.anomaly || null,
  })));
}

/** The stream id in the console's URL hash. */
export function openStreamId(page) {
  const m = /#\/streams\/([^/?#]+)$/.exec(page.url());
  return m ? decodeURIComponent(m[1]) : null;
}

/** Fills the request form and submits it; returns the new stream's id from the URL hash. */
export async function requestFromForm(page, payload) {
  await page.fill('[data-testid="request-type"]', DEMO);
  await page.fill('[data-testid="request-payload"]', JSON.stringify(payload));
  await page.click('[data-testid="request-submit"]');
  await page.waitForURL(/#\/streams\/[^/]+$/, { timeout: 10000 });
  return openStreamId(page);
}
