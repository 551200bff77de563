// The web console at /console, driven in headless Chromium against a live Sluice.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { fileURLToPath } from 'node:url';
import {
  SLUICE_URL, SLUICE_TOKEN, TOKEN_KEY, launch, contextWithToken, api, requestStream, waitFor,
  waitForState, range, logLines, requestFromForm,
} from './helpers.mjs';

const SCREENSHOT = fileURLToPath(new URL('./console.png', import.meta.url));
let browser;

before(async () => { browser = await launch(); });
after(async () => { await browser?.close(); });

/** A console page with the token already entered in this tab; page errors fail the test. */
async function consolePage(t) {
  const context = await contextWithToken(browser);
  const page = await context.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(e.message));
  t.after(async () => {
    await context.close();
    assert.deepEqual(errors, [], 'the page threw');
  });
  await page.goto(`${SLUICE_URL}/console`);
  await page.waitForSelector('body[data-ready="true"]');
  return page;
}

/** Records navigations and the console's requests to events URLs, with their Last-Event-ID. */
function recordEventRequests(page) {
  const out = [];
  page.on('request', (req) => {
    if (req.isNavigationRequest()) { out.push({ navigation: true }); return; }
    const m = /^\/v1\/streams\/([^/]+)\/events$/.exec(new URL(req.url()).pathname);
    if (m) out.push({ stream: decodeURIComponent(m[1]), lastEventId: req.headers()['last-event-id'] ?? null });
  });
  return out;
}

const terminalLine = (state) => `[data-testid="event-log"] [data-testid="event"][data-state="${state}"]`;

test('a stream requested from the form is followed to a success badge, seq 0..31 once each', { timeout: 60000 }, async (t) => {
  const page = await consolePage(t);
  const id = await requestFromForm(page, { count: 30, interval_ms: 50 });
  assert.ok(id, 'the stream id is in the URL hash');
  await page.locator('[data-testid="stream-id"]', { hasText: id }).waitFor();
  await page.locator(terminalLine('success')).waitFor({ timeout: 30000 });
  await page.locator('[data-testid="stream-state"][data-state="success"]').waitFor({ timeout: 5000 });

  const lines = await logLines(page);
  assert.deepEqual(lines.map((l) => l.seq), range(0, 31), 'each seq shown once, in order');
  assert.deepEqual(lines.map((l) => l.state), ['started', ...Array(30).fill('stream'), 'success']);
  assert.deepEqual(lines.filter((l) => l.anomaly), []);
  const ids = lines.map((l) => l.id);
  assert.equal(new Set(ids).size, ids.length, 'event ids are unique');
  // Every line shows its id and seq.
  const first = await page.locator('[data-testid="event-log"] [data-testid="event"]').first().innerText();
  assert.match(first, /id\s+\d+/);
  assert.match(first, /seq\s+0/);
  assert.equal(await page.locator('[data-testid="stream-chunks"]').innerText(), '30');
  assert.match(await page.locator('[data-testid="connection"]').innerText(), /ended/);
});

test('a reload mid-stream resumes from the last id: seq 0..61 with no gap and no repeat', { timeout: 60000 }, async (t) => {
  const page = await consolePage(t);
  const recorded = recordEventRequests(page);
  const id = await requestFromForm(page, { count: 60, interval_ms: 100 });

  await waitFor(async () => (await logLines(page)).filter((l) => l.state === 'stream').length >= 10,
    { timeout: 20000, what: '10 chunks before the reload' });
  const beforeReload = await logLines(page);
  await page.reload();
  await page.waitForSelector('body[data-ready="true"]');
  assert.ok(page.url().endsWith(`#/streams/${id}`), 'the stream stays open across the reload');
  await page.locator(terminalLine('success')).waitFor({ timeout: 30000 });

  const lines = await logLines(page);
  const seqs = lines.map((l) => l.seq);
  assert.deepEqual(seqs, range(0, 61), `seqs shown after the reload: ${seqs}`);
  assert.deepEqual(lines.filter((l) => l.anomaly), []);

  // What was seen before the reload is restored; the rest came over the resumed connection.
  const restored = lines.filter((l) => l.restored);
  assert.ok(restored.length >= beforeReload.length, `${restored.length} lines restored, ${beforeReload.length} seen`);
  assert.deepEqual(restored.map((l) => l.seq), range(0, restored.length - 1));
  assert.ok(restored.length < lines.length, 'events arrived after the reload');

  // The first events request after the reload carried the last id seen before it.
  const requests = recorded.filter((r) => r.navigation || r.stream === id);
  const reloadAt = requests.findIndex((r) => r.navigation);
  assert.ok(reloadAt >= 0, 'the reload was recorded');
  const beforeNav = requests.slice(0, reloadAt);
  assert.equal(beforeNav[0]?.lastEventId, null, 'the first connection starts from the beginning');
  const resumed = requests.slice(reloadAt + 1).find((r) => !r.navigation);
  assert.ok(resumed, 'the console reconnected after the reload');
  const resumeId = Number(resumed.lastEventId);
  assert.ok(resumeId > 0, `resume id after the reload: ${resumed.lastEventId}`);
  assert.equal(resumeId, restored.at(-1).id, 'resumed after the last restored event');
});

test('the cancel button cancels a running stream', { timeout: 60000 }, async (t) => {
  const page = await consolePage(t);
  const id = await requestFromForm(page, { count: 300, interval_ms: 100 });
  await waitFor(async () => (await logLines(page)).filter((l) => l.state === 'stream').length >= 3,
    { timeout: 20000, what: 'a few chunks' });
  await page.click('[data-testid="cancel-button"]');
  await page.locator(terminalLine('cancelled')).waitFor({ timeout: 15000 });
  await page.locator('[data-testid="stream-state"][data-state="cancelled"]').waitFor({ timeout: 5000 });
  assert.ok(await page.locator('[data-testid="cancel-button"]').isDisabled(), 'cancel is disabled once ended');
  const status = await waitForState(id, ['cancelled', 'success', 'failed', 'timeout'], 10000);
  assert.equal(status.state, 'cancelled');
  const lines = await logLines(page);
  assert.deepEqual(lines.map((l) => l.seq), range(0, lines.length - 1));
  assert.ok(lines.length < 302, 'the stream ended before its last chunk');
});

test('invalid JSON is refused inline, server errors are shown, the list filters by state and type', { timeout: 60000 }, async (t) => {
  const page = await consolePage(t);
  const posts = [];
  page.on('request', (req) => {
    if (req.method() === 'POST' && new URL(req.url()).pathname === '/v1/streams') posts.push(req);
  });

  // Invalid JSON: an inline error, and nothing sent.
  await page.fill('[data-testid="request-payload"]', '{"count": 3,');
  await page.click('[data-testid="request-submit"]');
  const payloadError = page.locator('[data-testid="payload-error"]');
  await payloadError.waitFor();
  assert.match(await payloadError.innerText(), /invalid json/i);
  assert.equal(await page.getAttribute('[data-testid="request-payload"]', 'aria-invalid'), 'true');
  await page.waitForTimeout(300);
  assert.equal(posts.length, 0, 'an invalid payload is not sent');
  assert.ok(!page.url().includes('#/streams/'));

  // Fixed: the inline error goes away. An unknown type: the server's code and message.
  await page.fill('[data-testid="request-payload"]', '{"count": 3}');
  await page.fill('[data-testid="request-type"]', 'nosuch:thing:v1:requested');
  await page.click('[data-testid="request-submit"]');
  const requestError = page.locator('[data-testid="request-error"]');
  await requestError.waitFor();
  assert.ok(await payloadError.isHidden());
  assert.match(await requestError.innerText(), /unknown_handler: .+/);
  assert.equal(posts.length, 1);

  // Two outcomes: one success, one failure.
  const ok = await requestStream({ count: 2, interval_ms: 10 });
  const bad = await requestStream({ count: 5, interval_ms: 10, fail_at: 2 });
  await waitForState(ok, ['success']);
  await waitForState(bad, ['failed']);

  const rows = () => page.$$eval('[data-testid="streams-body"] [data-testid="stream-row"]',
    (els) => els.map((e) => ({ id: e.dataset.streamId, state: e.dataset.state })));
  await page.selectOption('[data-testid="filter-state"]', 'failed');
  const failed = await waitFor(async () => {
    const r = await rows();
    return r.some((x) => x.id === bad) ? r : null;
  }, { timeout: 10000, what: 'the failed stream in the list filtered by state' });
  assert.ok(failed.every((x) => x.state === 'failed'), JSON.stringify(failed));
  assert.ok(!failed.some((x) => x.id === ok), 'the successful stream is filtered out');

  // By type prefix, one row per page: the newest first, "load more" brings the next.
  await page.$eval('[data-testid="streams-table"]', (e) => { e.dataset.pageSize = '1'; });
  await page.selectOption('[data-testid="filter-state"]', '');
  await page.fill('[data-testid="filter-type"]', 'demo:stream_ticks');
  await page.locator('[data-testid="streams-table"][data-filters="type=demo%3Astream_ticks"]').waitFor({ timeout: 10000 });
  await waitFor(async () => {
    const r = await rows();
    return r.length === 1 && r[0].id === bad;
  }, { timeout: 10000, what: 'the newest stream alone on the first page' });
  await page.click('[data-testid="load-more"]');
  let shown = [];
  await waitFor(async () => {
    shown = await rows();
    return shown.length === 2 && shown[0].id === bad && shown[1].id === ok;
  }, { timeout: 10000, what: 'both streams under their type prefix after load more' })
    .catch((e) => { throw new Error(`${e.message}; rows ${JSON.stringify(shown)}, want ${bad}, ${ok}`); });
  await page.$eval('[data-testid="streams-table"]', (e) => { delete e.dataset.pageSize; });

  await page.fill('[data-testid="filter-type"]', 'nosuch:');
  await page.locator('[data-testid="streams-empty"]').waitFor({ timeout: 10000 });
  assert.deepEqual(await rows(), []);

  // Clicking a row opens its stream view.
  await page.fill('[data-testid="filter-type"]', '');
  await page.selectOption('[data-testid="filter-state"]', 'failed');
  await page.locator(`[data-testid="stream-row"][data-stream-id="${bad}"]`).click();
  await page.waitForURL(new RegExp(`#/streams/${bad}$`));
  await page.locator(terminalLine('failed')).waitFor({ timeout: 10000 });
});

test('the console asks for the token and keeps it across a reload in the same tab', { timeout: 60000 }, async (t) => {
  const context = await browser.newContext();
  t.after(() => context.close());
  const page = await context.newPage();
  const statuses = [];
  page.on('response', (res) => {
    if (new URL(res.url()).pathname.startsWith('/v1/')) statuses.push(res.status());
  });
  await page.goto(`${SLUICE_URL}/console`);
  const prompt = page.locator('[data-testid="token-prompt"]');
  await prompt.waitFor({ state: 'visible', timeout: 10000 });
  assert.ok(statuses.includes(401), 'the API refused the request without a token');

  // "Not now": the list's background refreshes do not bring the prompt back; "Set token" does.
  await page.click('[data-testid="token-cancel"]');
  await prompt.waitFor({ state: 'hidden' });
  const refused = statuses.length;
  await waitFor(() => statuses.length > refused, { timeout: 10000, what: 'a background refresh' });
  assert.ok(await prompt.isHidden(), 'the dismissed prompt stays closed');
  await page.locator('[data-testid="streams-error"]', { hasText: 'missing_token' }).waitFor();
  await page.click('[data-testid="token-change"]');
  await prompt.waitFor({ state: 'visible' });

  // A wrong token is refused and the prompt comes back.
  await page.fill('[data-testid="token-input"]', 'not-the-token');
  await page.click('[data-testid="token-submit"]');
  await prompt.waitFor({ state: 'visible', timeout: 10000 });
  await page.locator('[data-testid="token-message"]', { hasText: /refused/i }).waitFor({ timeout: 10000 });

  await page.fill('[data-testid="token-input"]', SLUICE_TOKEN);
  await page.click('[data-testid="token-submit"]');
  await prompt.waitFor({ state: 'hidden' });
  await page.locator('[data-testid="streams-updated"]', { hasText: /updated/ }).waitFor({ timeout: 10000 });
  assert.equal(await page.evaluate((k) => sessionStorage.getItem(k), TOKEN_KEY), SLUICE_TOKEN);

  statuses.length = 0;
  await page.reload();
  await page.waitForSelector('body[data-ready="true"]');
  await page.locator('[data-testid="streams-updated"]', { hasText: /updated/ }).waitFor({ timeout: 10000 });
  assert.ok(await prompt.isHidden(), 'no prompt after a reload');
  assert.equal(await page.locator('[data-testid="token-state"]').innerText(), 'token set');
  assert.ok(statuses.length > 0 && statuses.every((s) => s === 200), `statuses after reload: ${statuses}`);
});

test('screenshot: stream view with live events next to the streams list', { timeout: 60000 }, async (t) => {
  const page = await consolePage(t);
  await requestStream({ count: 4, interval_ms: 20, fail_at: 3 });
  const id = await requestFromForm(page, { count: 120, interval_ms: 40 });
  await waitFor(async () => (await logLines(page)).filter((l) => l.state === 'stream').length >= 60,
    { timeout: 30000, what: '60 chunks' });
  await page.locator('[data-testid="heartbeat"]:not([data-count="0"])').waitFor({ timeout: 5000 });
  await page.locator(`[data-testid="stream-row"][data-stream-id="${id}"]`).waitFor({ timeout: 5000 });
  await page.screenshot({ path: SCREENSHOT });
  await page.click('[data-testid="cancel-button"]');
  await page.locator(terminalLine('cancelled')).waitFor({ timeout: 15000 });
});
