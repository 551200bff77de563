// Stream view rendering: the facts, connection state, event log, heartbeat and rate sparkline of the
// open stream. Every function draws only for the session the view shows (`view.session`).

import { TERMINAL, byId, el, show, clock } from './util.js';
import { view } from './state.js';
import { persist } from './history.js';

const MAX_LOG_LINES = 5000;
const SPARK_SECONDS = 30; // sparkline window
const SPARK_POINTS = 60; // one point per half second

export function setConnection(s, state, text) {
  if (s !== view.session) return;
  const c = byId('connection');
  c.dataset.state = state;
  c.textContent = text || state;
}

export function setStreamError(s, text) {
  if (s !== view.session) return;
  show(byId('stream-error'), text);
}

export function renderState(s) {
  if (s !== view.session) return;
  const state = s.terminal || (s.status && s.status.state) || 'pending';
  const badge = byId('stream-state');
  badge.textContent = state;
  badge.className = `badge badge-${state}`;
  badge.dataset.state = state;
  byId('stream-view').dataset.state = state;
  byId('stream-type').textContent = (s.status && s.status.type) || s.type || '–';
  const chunks = s.status ? Math.max(s.status.chunks || 0, s.chunks) : s.chunks;
  byId('stream-chunks').textContent = String(chunks);
  byId('stream-last-id').textContent = s.lastId === null ? '–' : String(s.lastId);
  const cancel = byId('cancel-button');
  cancel.disabled = Boolean(s.terminal) || Boolean(s.status && TERMINAL.has(s.status.state)) || s.cancelling;
}

export function logLine(record, restored, anomaly) {
  const state = record.state || 'note';
  const li = el('li', {
    class: `ev ev-${state}${anomaly ? ' anomaly' : ''}`,
    'data-testid': record.note ? 'note' : 'event',
    'data-id': record.id,
    'data-seq': record.seq,
    'data-state': state,
    'data-restored': restored ? 'true' : null,
    'data-anomaly': anomaly || null,
  });
  if (record.note) {
    li.append(el('span', { class: 'badge badge-note', text: 'note' }), el('span', { class: 'note-text', text: record.note }));
    return li;
  }
  li.append(
    el('span', { class: `badge badge-${state}`, 'data-testid': 'badge', text: state }),
    el('span', { class: 'ev-id', title: 'event id (offset)' }, el('small', { text: 'id' }), ` ${record.id}`),
    el('span', { class: 'ev-seq', title: 'seq' }, el('small', { text: 'seq' }), ` ${record.seq}`),
    el('time', { class: 'ev-time', text: clock(Date.parse(record.time) || record.at) }),
    el('code', { class: 'ev-payload', text: record.payload }),
  );
  if (anomaly) li.append(el('span', { class: 'ev-anomaly', text: anomaly }));
  return li;
}

export function appendLog(s, node) {
  if (s !== view.session) return;
  const log = byId('event-log');
  const stick = log.scrollHeight - log.scrollTop - log.clientHeight < 40;
  log.append(node);
  while (log.childElementCount > MAX_LOG_LINES) log.firstElementChild.remove();
  if (stick) log.scrollTop = log.scrollHeight;
}

export function note(s, text, persistIt) {
  const record = { note: text, at: Date.now() };
  if (persistIt) persist(s, record);
  appendLog(s, logLine(record, false));
}

export function heartbeat(s) {
  s.lastHeartbeat = Date.now();
  s.heartbeats += 1;
  const hb = byId('heartbeat');
  hb.dataset.count = String(s.heartbeats);
  const dot = byId('heartbeat-dot');
  dot.classList.remove('pulse');
  void dot.offsetWidth; // restart the animation
  dot.classList.add('pulse');
  tick();
}

export function tick() {
  const s = view.session;
  if (!s) return;
  const now = Date.now();
  const hb = byId('heartbeat-age');
  hb.textContent = s.lastHeartbeat ? `heartbeat ${((now - s.lastHeartbeat) / 1000).toFixed(1)}s ago` : 'no heartbeat yet';
  byId('heartbeat').dataset.stale = s.lastHeartbeat && now - s.lastHeartbeat > 5000 ? 'true' : 'false';

  // chunks per second over the last SPARK_SECONDS, SPARK_POINTS points
  const horizon = now - SPARK_SECONDS * 1000;
  while (s.chunkTimes.length && s.chunkTimes[0] < horizon) s.chunkTimes.shift();
  const step = (SPARK_SECONDS * 1000) / SPARK_POINTS;
  const buckets = new Array(SPARK_POINTS).fill(0);
  for (const t of s.chunkTimes) {
    const i = SPARK_POINTS - 1 - Math.floor((now - t) / step);
    if (i >= 0 && i < SPARK_POINTS) buckets[i] += 1000 / step;
  }
  const max = Math.max(1, ...buckets);
  const w = 120;
  const h = 28;
  const pts = buckets.map((v, i) => `${((i / (SPARK_POINTS - 1)) * w).toFixed(1)},${(h - 1 - (v / max) * (h - 4)).toFixed(1)}`);
  const svg = byId('sparkline');
  svg.querySelector('.spark-line').setAttribute('points', pts.join(' '));
  svg.querySelector('.spark-area').setAttribute('points', `0,${h} ${pts.join(' ')} ${w},${h}`);
  svg.dataset.max = String(max);
  const recent = s.chunkTimes.filter((t) => now - t < 2000).length / 2;
  byId('chunk-rate').textContent = `${recent % 1 ? recent.toFixed(1) : recent} chunks/s`;
}
