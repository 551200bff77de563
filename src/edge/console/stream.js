// Stream session: opens a stream (restoring what this tab kept of it), follows its events over
// fetch with Last-Event-ID and retries, tracks seq continuity, and handles resume and cancel.

import { TERMINAL, byId, show, sleep, stateOf } from './util.js';
import { view } from './state.js';
import { api, authHeaders, errorOf, askToken, refusedMessage, whenToken } from './api.js';
import { readSse } from './sse.js';
import { saveMeta, loadStream, clearStream, persist } from './history.js';
import { setConnection, setStreamError, renderState, logLine, appendLog, note, heartbeat, tick } from './view.js';
import { renderList } from './list.js';

const STATUS_REFRESH_MS = 2000;
const DEFAULT_RETRY_MS = 1000;
const MAX_RETRY_MS = 15000;
const PAYLOAD_CHARS = 400;
const HISTORY_LOST = 'sluice:history_lost';

// Checks seq continuity: the operator sees a gap or a repeat at once.
function anomalyOf(s, seq) {
  if (typeof seq !== 'number' || s.nextSeq === null) return null;
  if (seq > s.nextSeq) return `gap: expected seq ${s.nextSeq}`;
  if (seq < s.nextSeq) return `repeat: expected seq ${s.nextSeq}`;
  return null;
}

function onFrame(s, frame) {
  if (s !== view.session) return;
  if (frame.event === HISTORY_LOST) {
    let info = {};
    try { info = JSON.parse(frame.data); } catch { /* ignore */ }
    note(s, `history lost: asked after id ${info.requested_id}, earliest kept is ${info.earliest_id}`, true);
    s.nextSeq = null;
    return;
  }
  let env = null;
  try { env = JSON.parse(frame.data); } catch { env = null; }
  const type = (env && env.type) || frame.event;
  const state = stateOf(type);
  if (frame.id === null) {
    if (state === 'heartbeat') heartbeat(s);
    return;
  }
  const id = Number(frame.id);
  const seq = env && typeof env.seq === 'number' ? env.seq : null;
  const anomaly = anomalyOf(s, seq);
  const payload = env && env.payload !== undefined ? JSON.stringify(env.payload) : frame.data;
  const record = {
    id,
    seq,
    state,
    type,
    time: env && env.time,
    at: Date.now(),
    payload: payload.length > PAYLOAD_CHARS ? `${payload.slice(0, PAYLOAD_CHARS)}…` : payload,
  };
  if (anomaly) record.anomaly = anomaly;
  s.lastId = id;
  if (seq !== null) s.nextSeq = seq + 1;
  s.type = type;
  if (state === 'stream') {
    s.chunks += 1;
    s.chunkTimes.push(record.at);
  }
  if (TERMINAL.has(state)) s.terminal = state;
  s.meta.lastId = s.lastId;
  s.meta.nextSeq = s.nextSeq;
  s.meta.terminal = s.terminal;
  s.meta.chunks = s.chunks;
  s.meta.type = s.type;
  persist(s, record); // before it is shown: what the page shows, a reload restores
  appendLog(s, logLine(record, false, anomaly));
  renderState(s);
  if (s.terminal) refreshStatus(s);
}

async function connect(s) {
  let failures = 0;
  let missing = 0;
  while (!s.ctrl.signal.aborted && !s.terminal) {
    setConnection(s, 'connecting', s.lastId === null ? 'connecting' : `connecting after id ${s.lastId}`);
    const headers = authHeaders({ Accept: 'text/event-stream' });
    if (s.lastId !== null) headers['Last-Event-ID'] = String(s.lastId);
    let res;
    try {
      res = await fetch(`/v1/streams/${encodeURIComponent(s.id)}/events`, {
        headers, cache: 'no-store', signal: s.ctrl.signal,
      });
    } catch (e) {
      if (s.ctrl.signal.aborted) return;
      failures += 1;
      const wait = Math.min(MAX_RETRY_MS, s.retryMs * 2 ** Math.min(failures - 1, 4));
      setConnection(s, 'retrying', `network error, retrying in ${(wait / 1000).toFixed(1)}s`);
      await sleep(wait, s.ctrl.signal);
      continue;
    }
    if (res.status === 204) {
      setConnection(s, 'ended', 'ended: no further events');
      return;
    }
    if (res.status === 401) {
      setConnection(s, 'unauthorized', 'waiting for a token');
      askToken(refusedMessage());
      whenToken(() => { if (s === view.session) restart(s.lastId, false); });
      return;
    }
    if (!res.ok) {
      const err = await errorOf(res);
      const retryable = res.status >= 500 || (res.status === 404 && ++missing <= 3);
      setStreamError(s, `${err.code}: ${err.message}`);
      if (!retryable) {
        setConnection(s, 'error', `stopped: ${err.code}`);
        return;
      }
      failures += 1;
      const wait = Math.min(MAX_RETRY_MS, s.retryMs * 2 ** Math.min(failures - 1, 4));
      setConnection(s, 'retrying', `${err.code}, retrying in ${(wait / 1000).toFixed(1)}s`);
      await sleep(wait, s.ctrl.signal);
      continue;
    }
    failures = 0;
    missing = 0;
    setStreamError(s, '');
    setConnection(s, 'live', 'live');
    try {
      await readSse(res.body, s.ctrl.signal, (f) => onFrame(s, f), (ms) => { s.retryMs = ms; });
    } catch (e) {
      if (s.ctrl.signal.aborted) return;
    }
    if (s.ctrl.signal.aborted) return;
    if (s.terminal) break;
    setConnection(s, 'retrying', `reconnecting in ${(s.retryMs / 1000).toFixed(2)}s`);
    await sleep(s.retryMs, s.ctrl.signal);
  }
  if (s.terminal) setConnection(s, 'ended', `ended: ${s.terminal}`);
}

async function refreshStatus(s) {
  if (s !== view.session) return;
  try {
    const { data } = await api('GET', `/v1/streams/${encodeURIComponent(s.id)}`);
    if (s !== view.session) return;
    s.status = data;
    renderState(s);
  } catch (err) {
    if (s !== view.session) return;
    if (err.status === 404) {
      s.status = null;
      renderState(s);
    } else if (err.status === 410) {
      setStreamError(s, `${err.code}: ${err.message}`);
    }
  }
}

function newSession(id) {
  return {
    id,
    ctrl: new AbortController(),
    lastId: null,
    nextSeq: null,
    terminal: null,
    type: null,
    status: null,
    chunks: 0,
    chunkTimes: [],
    lastHeartbeat: 0,
    heartbeats: 0,
    retryMs: DEFAULT_RETRY_MS,
    cancelling: false,
    meta: { v: 1, lastId: null, nextSeq: null, terminal: null, chunks: 0, type: null, firstBlock: 0, lastBlock: 0, dropped: 0, touched: Date.now() },
    block: [],
  };
}

function stopSession() {
  const s = view.session;
  if (!s) return;
  s.ctrl.abort();
  view.session = null;
}

// Opens a stream: restores what this tab saw of it, then follows it from the last id.
export function openStream(id) {
  stopSession();
  const s = newSession(id);
  view.session = s;
  byId('stream-placeholder').hidden = true;
  byId('stream-view').hidden = false;
  byId('stream-id').textContent = id;
  byId('event-log').replaceChildren();
  show(byId('stream-error'), '');
  byId('resume-id').value = '';
  byId('heartbeat').dataset.count = '0';
  byId('heartbeat-dot').classList.remove('pulse');

  const saved = loadStream(id);
  if (saved) {
    const m = saved.meta;
    Object.assign(s.meta, m);
    s.lastId = m.lastId;
    s.nextSeq = m.nextSeq;
    s.terminal = m.terminal;
    s.chunks = m.chunks || 0;
    s.type = m.type;
    s.block = saved.last;
    if (m.dropped) note(s, `${m.dropped} earlier events are not kept in this tab`, false);
    if (m.lost) note(s, 'some events could not be kept in this tab (storage full)', false);
    const frag = document.createDocumentFragment();
    for (const r of saved.events) {
      frag.append(logLine(r, true, r.anomaly));
      if (r.state === 'stream') s.chunkTimes.push(r.at);
    }
    byId('event-log').append(frag);
    byId('event-log').scrollTop = byId('event-log').scrollHeight;
  }
  renderState(s);
  renderList();
  refreshStatus(s);
  tick();
  if (s.terminal) setConnection(s, 'ended', `ended: ${s.terminal}`);
  else connect(s);
}

// Starts over after `after` (null: from the first event), dropping what this tab kept.
function restart(after, clear) {
  const s = view.session;
  if (!s) return;
  const id = s.id;
  if (clear) clearStream(id);
  if (!clear) { openStream(id); return; }
  stopSession();
  const fresh = newSession(id);
  view.session = fresh;
  fresh.lastId = after;
  fresh.meta.lastId = after;
  saveMeta(id, fresh.meta);
  byId('event-log').replaceChildren();
  show(byId('stream-error'), '');
  if (after !== null) note(fresh, `resumed after id ${after}`, true);
  renderState(fresh);
  refreshStatus(fresh);
  connect(fresh);
}

export function closeStream() {
  stopSession();
  byId('stream-view').hidden = true;
  byId('stream-placeholder').hidden = false;
  renderList();
}

export function initStreamView() {
  byId('cancel-button').addEventListener('click', async () => {
    const s = view.session;
    if (!s) return;
    s.cancelling = true;
    renderState(s);
    setStreamError(s, '');
    try {
      await api('DELETE', `/v1/streams/${encodeURIComponent(s.id)}`, undefined, true);
      setConnection(s, s.terminal ? 'ended' : 'cancelling', s.terminal ? `ended: ${s.terminal}` : 'cancelling…');
    } catch (err) {
      s.cancelling = false;
      setStreamError(s, `${err.code}: ${err.message}`);
      renderState(s);
    }
  });
  byId('resume-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const raw = byId('resume-id').value.trim();
    if (raw !== '' && !/^\d+$/.test(raw)) {
      setStreamError(view.session, 'The resume id is a non-negative integer.');
      return;
    }
    restart(raw === '' ? null : Number(raw), true);
  });
  setInterval(tick, 250);
  setInterval(() => {
    const s = view.session;
    if (s && !document.hidden && !(s.status && TERMINAL.has(s.status.state))) refreshStatus(s);
  }, STATUS_REFRESH_MS);
}
