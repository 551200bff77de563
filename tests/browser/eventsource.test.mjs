// A plain browser EventSource, with no close logic of its own, must stop by itself once a stream
// has ended: the response ends after the terminal event, the browser reconnects once with
// Last-Event-ID set to the terminal id, the server answers 204 and the EventSource is CLOSED.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { SLUICE_URL, SLUICE_TOKEN, RETRY_MS, launch, api, waitFor, range } from './helpers.mjs';

const TYPE = 'demo:stream_ticks:v1';
const STATES = ['started', 'stream', 'heartbeat', 'success', 'failed', 'timeout', 'cancelled'];
let browser;

before(async () => { browser = await launch(); });
after(async () => { await browser?.close(); });

test('EventSource stops cleanly after the terminal event (one 204 reconnect, then CLOSED)', { timeout: 60000 }, async () => {
  const context = await browser.newContext();
  const page = await context.newPage();
  await page.goto(`${SLUICE_URL}/healthz`);

  const count = 5;
  const created = await page.evaluate(async ({ token, type }) => {
    const res = await fetch('/v1/streams', {
      method: 'POST',
      headers: { Authorization: `Bearer ${token}`, 'Content-Type': 'application/json' },
      body: JSON.stringify({ type: `${type}:requested`, payload: { count: 5, interval_ms: 50 } }),
    });
    return { status: res.status, body: await res.json() };
  }, { token: SLUICE_TOKEN, type: TYPE });
  assert.equal(created.status, 202, JSON.stringify(created.body));
  const id = created.body.stream_id;
  const eventsPath = `/v1/streams/${id}/events`;

  // Every request Chromium makes to the events URL, in order, with its answer.
  const requests = [];
  page.on('request', (req) => {
    if (new URL(req.url()).pathname !== eventsPath) return;
    const entry = { at: Date.now(), resourceType: req.resourceType(), headers: null, status: null };
    requests.push(entry);
    entry.done = (async () => {
      entry.headers = await req.allHeaders();
      const res = await req.response();
      entry.status = res ? res.status() : null;
    })();
  });

  await page.evaluate(({ path, token, type, states }) => {
    window.received = [];
    window.errors = 0;
    const es = new EventSource(`${path}?access_token=${encodeURIComponent(token)}`);
    window.es = es;
    for (const s of states) {
      es.addEventListener(`${type}:${s}`, (e) => window.received.push({ type: e.type, id: e.lastEventId, data: e.data }));
    }
    es.addEventListener('sluice:history_lost', (e) => window.received.push({ type: e.type, id: e.lastEventId, data: e.data }));
    es.onerror = () => { window.errors += 1; };
  }, { path: eventsPath, token: SLUICE_TOKEN, type: TYPE, states: STATES });

  const terminal = new RegExp(`^${TYPE}:(success|failed|timeout|cancelled)$`);
  await waitFor(() => page.evaluate((re) => window.received.some((e) => new RegExp(re).test(e.type)), terminal.source),
    { timeout: 20000, what: 'the terminal event' });
  // Long enough for several reconnects, had the browser kept reconnecting.
  await page.waitForTimeout(8 * RETRY_MS + 500);

  const received = await page.evaluate(() => window.received);
  const readyState = await page.evaluate(() => window.es.readyState);
  await Promise.all(requests.map((r) => r.done));

  // Every stored event (heartbeats aside) arrived exactly once, seq 0..N+1, the last one terminal.
  const stored = received.filter((e) => !e.type.endsWith(':heartbeat'));
  const seqs = stored.map((e) => JSON.parse(e.data).seq);
  assert.deepEqual(seqs, range(0, count + 1), `seqs received: ${seqs}`);
  assert.equal(stored[0].type, `${TYPE}:started`);
  assert.equal(stored.at(-1).type, `${TYPE}:success`);
  const ids = stored.map((e) => e.id);
  assert.equal(new Set(ids).size, ids.length, `event ids repeat: ${ids}`);
  const terminalId = stored.at(-1).id;
  assert.equal(terminalId, String(JSON.parse(stored.at(-1).data).id));

  // Exactly two requests: the stream, then one reconnect after the terminal id, answered 204.
  const summary = JSON.stringify(requests.map((r) => ({ status: r.status, lastEventId: r.headers['last-event-id'] ?? null, type: r.resourceType })));
  assert.equal(requests.length, 2, `requests to the events URL: ${summary}`);
  for (const r of requests) assert.equal(r.resourceType, 'eventsource');
  assert.equal(requests[0].status, 200, summary);
  assert.equal(requests[0].headers['last-event-id'], undefined, summary);
  assert.equal(requests[1].headers['last-event-id'], terminalId, summary);
  assert.equal(requests[1].status, 204, summary);
  assert.equal(readyState, 2, 'EventSource.readyState should be CLOSED');

  // ... and nothing more: the EventSource stays closed.
  await page.waitForTimeout(4 * RETRY_MS);
  assert.equal(requests.length, 2, `a further request was made: ${requests.length}`);

  const status = await api('GET', `/v1/streams/${id}`);
  assert.equal(status.body.state, 'success');
  await context.close();
});
