// Sluice console: streams list, request form and a live stream view.
//
// Plain script, no dependencies. It talks to the API on its own origin with the bearer token the
// operator enters once per browser tab (sessionStorage). Events are read with fetch() streaming
// and parsed here, so every frame is seen whatever its event name, the Authorization header is
// sent, and the status of every (re)connection is known (401, 404, 204 at the end).
//
// Resume across a reload: every stored event is written to sessionStorage together with its id
// before it is shown, in the same task. A reload therefore restores exactly the events the page
// had processed and reconnects with Last-Event-ID set to the last of them: no gap, no repeat.
'use strict';

(function () {
  const TOKEN_KEY = 'sluice.console.token';
  const STREAM_PREFIX = 'sluice.console.stream.';
  const PAGE = 50; // rows per page; the list's data-page-size overrides it
  const LIST_REFRESH_MS = 2000;
  const STATUS_REFRESH_MS = 2000;
  const DEFAULT_RETRY_MS = 1000;
  const MAX_RETRY_MS = 15000;
  const BLOCK = 50; // stored events per sessionStorage block
  const KEEP_BLOCKS = 40; // blocks kept per stream (2,000 events); older ones are dropped
  const MAX_LOG_LINES = 5000;
  const SPARK_SECONDS = 30; // sparkline window
  const SPARK_POINTS = 60; // one point per half second
  const PAYLOAD_CHARS = 400;
  const TERMINAL = new Set(['success', 'failed', 'timeout', 'cancelled']);
  const HISTORY_LOST = 'sluice:history_lost';

  const byId = (id) => document.querySelector(`[data-testid="${id}"]`);
  const el = (tag, attrs, ...children) => {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === 'class') node.className = v;
      else if (k === 'text') node.textContent = v;
      else node.setAttribute(k, v === true ? '' : String(v));
    }
    for (const c of children) if (c !== null && c !== undefined) node.append(c);
    return node;
  };
  const sleep = (ms, signal) =>
    new Promise((resolve) => {
      const t = setTimeout(resolve, ms);
      if (signal) signal.addEventListener('abort', () => { clearTimeout(t); resolve(); }, { once: true });
    });
  const stateOf = (type) => (typeof type === 'string' && type.includes(':') ? type.slice(type.lastIndexOf(':') + 1) : '');
  const show = (node, text) => { node.textContent = text || ''; node.hidden = !text; };

  function age(iso) {
    const t = Date.parse(iso);
    if (!Number.isFinite(t)) return '–';
    const s = Math.max(0, (Date.now() - t) / 1000);
    if (s < 60) return `${Math.floor(s)}s`;
    if (s < 3600) return `${Math.floor(s / 60)}m`;
    if (s < 86400) return `${Math.floor(s / 3600)}h`;
    return `${Math.floor(s / 86400)}d`;
  }

  function clock(ms) {
    const d = new Date(ms);
    if (Number.isNaN(d.getTime())) return '';
    const p = (n, w = 2) => String(n).padStart(w, '0');
    return `${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}.${p(d.getMilliseconds(), 3)}`;
  }

  // ---------------------------------------------------------------------------------------------
  // Storage (sessionStorage: per browser tab, survives a reload)

  const store = {
    get(key) {
      try { return sessionStorage.getItem(key); } catch { return null; }
    },
    set(key, value) {
      try { sessionStorage.setItem(key, value); return true; } catch { return false; }
    },
    remove(key) {
      try { sessionStorage.removeItem(key); } catch { /* ignore */ }
    },
    keys() {
      const out = [];
      try { for (let i = 0; i < sessionStorage.length; i++) out.push(sessionStorage.key(i)); } catch { /* ignore */ }
      return out;
    },
  };

  // ---------------------------------------------------------------------------------------------
  // Token and API

  const auth = {
    token: store.get(TOKEN_KEY) || '',
    dismissed: false, // "Not now": background requests stop asking until a token is set
    waiting: [], // callbacks run once a token is entered
  };

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  function authHeaders(extra) {
    const h = Object.assign({}, extra);
    if (auth.token) h.Authorization = `Bearer ${auth.token}`;
    return h;
  }

  async function errorOf(res) {
    let text = '';
    try { text = await res.text(); } catch { /* ignore */ }
    let code = `http_${res.status}`;
    let message = text.slice(0, 300) || res.statusText || 'request failed';
    try {
      const body = JSON.parse(text);
      if (body && body.error) {
        code = body.error.code || code;
        message = body.error.message || message;
      }
    } catch { /* not JSON */ }
    return new ApiError(res.status, code, message);
  }

  // `interactive`: the operator asked for this request, so a 401 asks for the token even after
  // the prompt was dismissed.
  async function api(method, path, body, interactive = false) {
    const init = { method, headers: authHeaders({ Accept: 'application/json' }), cache: 'no-store' };
    if (body !== undefined) {
      init.headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    let res;
    try {
      res = await fetch(path, init);
    } catch (e) {
      throw new ApiError(0, 'network', `network error: ${e.message}`);
    }
    if (!res.ok) {
      const err = await errorOf(res);
      if (res.status === 401) askToken(refusedMessage(), interactive);
      throw err;
    }
    const text = await res.text();
    return { status: res.status, data: text ? JSON.parse(text) : null };
  }

  function renderAuth() {
    byId('token-state').textContent = auth.token ? 'token set' : 'no token';
    byId('token-state').dataset.set = auth.token ? 'true' : 'false';
    byId('token-change').textContent = auth.token ? 'Change token' : 'Set token';
    byId('token-forget').hidden = !auth.token;
  }

  function refusedMessage() {
    return auth.token ? 'The token was refused. Enter a valid token.' : null;
  }

  function askToken(message, force) {
    if (auth.dismissed && !force) return;
    const dialog = byId('token-prompt');
    byId('token-message').textContent = message || 'This Sluice asks for a bearer token.';
    if (!dialog.open) {
      byId('token-input').value = '';
      dialog.showModal();
    }
    byId('token-input').focus();
  }

  function whenToken(fn) {
    auth.waiting.push(fn);
  }

  function setToken(token) {
    auth.token = token;
    auth.dismissed = false;
    if (token) store.set(TOKEN_KEY, token);
    else store.remove(TOKEN_KEY);
    renderAuth();
    const waiting = auth.waiting.splice(0);
    for (const fn of waiting) fn();
    refreshList({ reset: true });
  }

  function initAuth() {
    const dialog = byId('token-prompt');
    byId('token-form').addEventListener('submit', (e) => {
      e.preventDefault();
      const value = byId('token-input').value.trim();
      if (!value) {
        byId('token-message').textContent = 'Enter a token.';
        return;
      }
      dialog.close();
      setToken(value);
    });
    byId('token-cancel').addEventListener('click', () => {
      auth.dismissed = true;
      dialog.close();
    });
    dialog.addEventListener('cancel', () => { auth.dismissed = true; }); // Escape
    byId('token-change').addEventListener('click', () => askToken('Enter the API token for this Sluice.', true));
    byId('token-forget').addEventListener('click', () => setToken(''));
    renderAuth();
  }

  // ---------------------------------------------------------------------------------------------
  // Request form

  function initForm() {
    const form = byId('request-form');
    const type = byId('request-type');
    const payload = byId('request-payload');
    const payloadError = byId('payload-error');
    const requestError = byId('request-error');
    const result = byId('request-result');

    const parsePayload = () => {
      const text = payload.value.trim();
      if (!text) return { value: {} };
      try {
        const value = JSON.parse(text);
        if (value === null || typeof value !== 'object' || Array.isArray(value)) {
          return { error: 'Payload must be a JSON object, like {"count": 10}.' };
        }
        return { value };
      } catch (e) {
        return { error: `Invalid JSON: ${e.message}` };
      }
    };
    const check = () => {
      const p = parsePayload();
      show(payloadError, p.error);
      payload.setAttribute('aria-invalid', p.error ? 'true' : 'false');
      return p;
    };
    // Re-checked while typing once an error shows (not on blur: a check that moves the button
    // between mousedown and mouseup would swallow the click on it).
    payload.addEventListener('input', () => {
      if (!payloadError.hidden) check();
    });

    form.addEventListener('submit', async (e) => {
      e.preventDefault();
      show(requestError, '');
      result.textContent = '';
      const p = check();
      if (p.error) {
        payload.focus();
        return;
      }
      const button = byId('request-submit');
      button.disabled = true;
      try {
        const { data } = await api('POST', '/v1/streams', { type: type.value.trim(), payload: p.value }, true);
        result.textContent = data.existing ? 'already exists' : 'requested';
        location.hash = `#/streams/${encodeURIComponent(data.stream_id)}`;
        refreshList({});
      } catch (err) {
        show(requestError, `${err.code}: ${err.message}`);
        requestError.dataset.code = err.code;
      } finally {
        button.disabled = false;
      }
    });
  }

  // ---------------------------------------------------------------------------------------------
  // Streams list

  const list = {
    rows: [],
    nextCursor: null,
    query: '', // the filters the rows shown were listed with
    generation: 0,
    busy: false,
    typeTimer: 0,
  };

  function pageSize() {
    const n = Number(byId('streams-table').dataset.pageSize);
    return Number.isInteger(n) && n >= 1 && n <= 500 ? n : PAGE;
  }

  function listParams() {
    const q = new URLSearchParams();
    const state = byId('filter-state').value;
    const type = byId('filter-type').value.trim();
    const created = Number(byId('filter-created').value);
    if (state) q.set('state', state);
    if (type) q.set('type', type);
    if (created > 0) q.set('created_after', new Date(Date.now() - created * 1000).toISOString());
    return q;
  }

  async function refreshList({ reset }) {
    if (reset) {
      list.rows = [];
      list.nextCursor = null;
    }
    const gen = ++list.generation;
    const q = listParams();
    const filters = q.toString().replace(/&?created_after=[^&]*/, '');
    q.set('limit', String(Math.min(500, Math.max(pageSize(), list.rows.length))));
    list.busy = true;
    try {
      const { data } = await api('GET', `/v1/streams?${q}`);
      if (gen !== list.generation) return;
      list.rows = data.streams || [];
      list.nextCursor = data.next_cursor || null;
      list.query = filters;
      show(byId('streams-error'), '');
      byId('streams-updated').textContent = `updated ${clock(Date.now())}`;
      renderList();
    } catch (err) {
      if (gen !== list.generation) return;
      show(byId('streams-error'), `${err.code}: ${err.message}`);
    } finally {
      if (gen === list.generation) list.busy = false;
    }
  }

  async function loadMore() {
    if (!list.nextCursor) return;
    const gen = ++list.generation;
    const q = listParams();
    q.set('limit', String(pageSize()));
    q.set('cursor', list.nextCursor);
    list.busy = true;
    try {
      const { data } = await api('GET', `/v1/streams?${q}`);
      if (gen !== list.generation) return;
      const seen = new Set(list.rows.map((r) => r.stream_id));
      for (const r of data.streams || []) if (!seen.has(r.stream_id)) list.rows.push(r);
      list.nextCursor = data.next_cursor || null;
      renderList();
    } catch (err) {
      if (gen === list.generation) show(byId('streams-error'), `${err.code}: ${err.message}`);
    } finally {
      if (gen === list.generation) list.busy = false;
    }
  }

  function renderList() {
    const body = byId('streams-body');
    const open = view.session && view.session.id;
    const rows = list.rows.map((r) => {
      const state = String(r.state || '');
      const tr = el('tr', {
        'data-testid': 'stream-row',
        'data-stream-id': r.stream_id,
        'data-state': state,
        tabindex: 0,
        class: r.stream_id === open ? 'selected' : '',
      },
      el('td', {}, el('span', { class: `badge badge-${state}`, 'data-testid': 'row-state', text: state })),
      el('td', { class: 'type', 'data-testid': 'row-type', title: r.type, text: String(r.type || '').replace(/:requested$/, '') }),
      el('td', { class: 'num', 'data-testid': 'row-chunks', text: String(r.chunks ?? '–') }),
      el('td', { class: 'num', title: r.created_at, 'data-testid': 'row-age', text: age(r.created_at) }),
      el('td', { class: 'id' }, el('code', { title: r.stream_id, text: r.stream_id.slice(0, 8) }),
        r.running_here ? el('span', { class: 'here', title: 'running on this instance', text: '●' }) : null));
      return tr;
    });
    body.replaceChildren(...rows);
    byId('streams-table').dataset.filters = list.query || '';
    byId('streams-empty').hidden = list.rows.length > 0;
    byId('load-more').hidden = !list.nextCursor;
  }

  function initList() {
    const body = byId('streams-body');
    const openRow = (target) => {
      const tr = target.closest('tr[data-stream-id]');
      if (tr) location.hash = `#/streams/${encodeURIComponent(tr.dataset.streamId)}`;
    };
    body.addEventListener('click', (e) => openRow(e.target));
    body.addEventListener('keydown', (e) => {
      if (e.key === 'Enter') openRow(e.target);
    });
    byId('filter-state').addEventListener('change', () => refreshList({ reset: true }));
    byId('filter-created').addEventListener('change', () => refreshList({ reset: true }));
    byId('filter-type').addEventListener('input', () => {
      clearTimeout(list.typeTimer);
      list.typeTimer = setTimeout(() => {
        list.typeTimer = 0;
        refreshList({ reset: true });
      }, 250);
    });
    byId('load-more').addEventListener('click', loadMore);
    setInterval(() => {
      // Not while a typed filter waits to apply: it would list with the new filter ahead of it.
      if (!byId('auto-refresh').checked || document.hidden || list.busy || list.typeTimer) return;
      if (byId('token-prompt').open) return;
      refreshList({});
    }, LIST_REFRESH_MS);
    refreshList({ reset: true });
  }

  // ---------------------------------------------------------------------------------------------
  // SSE over fetch

  // Reads an SSE body and calls onFrame({event, data, id}) per dispatched event (id is null when the
  // frame had no id line) and onRetry(ms) per retry field. Resolves when the body ends.
  async function readSse(body, signal, onFrame, onRetry) {
    const reader = body.getReader();
    const decoder = new TextDecoder();
    let buf = '';
    let data = [];
    let event = '';
    let id = null;
    const line = (text) => {
      if (text === '') {
        if (data.length) onFrame({ event: event || 'message', data: data.join('\n'), id });
        data = [];
        event = '';
        id = null;
        return;
      }
      if (text[0] === ':') return;
      const colon = text.indexOf(':');
      const field = colon < 0 ? text : text.slice(0, colon);
      let value = colon < 0 ? '' : text.slice(colon + 1);
      if (value[0] === ' ') value = value.slice(1);
      if (field === 'data') data.push(value);
      else if (field === 'event') event = value;
      else if (field === 'id') { if (!value.includes('\0')) id = value; }
      else if (field === 'retry') { if (/^\d+$/.test(value)) onRetry(Number(value)); }
    };
    const onAbort = () => reader.cancel().catch(() => {});
    signal.addEventListener('abort', onAbort, { once: true });
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done || signal.aborted) break;
        buf += decoder.decode(value, { stream: true });
        let start = 0;
        for (let i = 0; i < buf.length; i++) {
          const c = buf[i];
          if (c !== '\n' && c !== '\r') continue;
          if (c === '\r' && i + 1 === buf.length) break; // maybe \r\n split across chunks
          line(buf.slice(start, i));
          if (c === '\r' && buf[i + 1] === '\n') i++;
          start = i + 1;
        }
        buf = buf.slice(start);
      }
    } finally {
      signal.removeEventListener('abort', onAbort);
    }
  }

  // ---------------------------------------------------------------------------------------------
  // Per-stream persistence: a small meta record and the events in blocks of BLOCK.

  function streamKey(id) { return STREAM_PREFIX + id; }

  function loadStream(id) {
    let meta = null;
    try { meta = JSON.parse(store.get(streamKey(id)) || 'null'); } catch { meta = null; }
    if (!meta || meta.v !== 1) return null;
    const events = [];
    let last = [];
    for (let b = meta.firstBlock; b <= meta.lastBlock; b++) {
      let block = [];
      try { block = JSON.parse(store.get(`${streamKey(id)}.${b}`) || '[]'); } catch { /* shows as a gap */ }
      events.push(...block);
      if (b === meta.lastBlock) last = block;
    }
    return { meta, events, last };
  }

  function clearStream(id) {
    const prefix = streamKey(id);
    for (const k of store.keys()) if (k === prefix || k.startsWith(`${prefix}.`)) store.remove(k);
  }

  // Frees space taken by the logs of other streams, oldest first (their resume ids stay).
  function freeSpace(keepId) {
    const metas = [];
    for (const k of store.keys()) {
      if (!k.startsWith(STREAM_PREFIX) || k.slice(STREAM_PREFIX.length).includes('.')) continue;
      const id = k.slice(STREAM_PREFIX.length);
      if (id === keepId) continue;
      try { metas.push({ id, touched: JSON.parse(store.get(k)).touched || 0 }); } catch { store.remove(k); }
    }
    metas.sort((a, b) => a.touched - b.touched);
    if (!metas.length) return false;
    clearStream(metas[0].id);
    return true;
  }

  function persist(s, record) {
    const meta = s.meta;
    let block = s.block;
    if (block.length >= BLOCK) {
      meta.lastBlock += 1;
      block = s.block = [];
      while (meta.lastBlock - meta.firstBlock >= KEEP_BLOCKS) {
        store.remove(`${streamKey(s.id)}.${meta.firstBlock}`);
        meta.dropped += BLOCK;
        meta.firstBlock += 1;
      }
    }
    block.push(record);
    meta.touched = Date.now();
    const write = (k, v) => {
      for (let tries = 0; tries < 20; tries++) {
        if (store.set(k, v)) return true;
        if (!freeSpace(s.id)) break;
      }
      return false;
    };
    if (!write(`${streamKey(s.id)}.${meta.lastBlock}`, JSON.stringify(block))) meta.lost = true;
    write(streamKey(s.id), JSON.stringify(meta));
  }

  // ---------------------------------------------------------------------------------------------
  // Stream view

  const view = { session: null, tick: 0, statusTimer: 0 };

  function setConnection(s, state, text) {
    if (s !== view.session) return;
    const c = byId('connection');
    c.dataset.state = state;
    c.textContent = text || state;
  }

  function setStreamError(s, text) {
    if (s !== view.session) return;
    show(byId('stream-error'), text);
  }

  function renderState(s) {
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

  function logLine(record, restored, anomaly) {
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

  function appendLog(s, node) {
    if (s !== view.session) return;
    const log = byId('event-log');
    const stick = log.scrollHeight - log.scrollTop - log.clientHeight < 40;
    log.append(node);
    while (log.childElementCount > MAX_LOG_LINES) log.firstElementChild.remove();
    if (stick) log.scrollTop = log.scrollHeight;
  }

  function note(s, text, persistIt) {
    const record = { note: text, at: Date.now() };
    if (persistIt) persist(s, record);
    appendLog(s, logLine(record, false));
  }

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

  function heartbeat(s) {
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
  function openStream(id) {
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
    store.set(streamKey(id), JSON.stringify(fresh.meta));
    byId('event-log').replaceChildren();
    show(byId('stream-error'), '');
    if (after !== null) note(fresh, `resumed after id ${after}`, true);
    renderState(fresh);
    refreshStatus(fresh);
    connect(fresh);
  }

  function closeStream() {
    stopSession();
    byId('stream-view').hidden = true;
    byId('stream-placeholder').hidden = false;
    renderList();
  }

  function tick() {
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

  function initStreamView() {
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

  // ---------------------------------------------------------------------------------------------
  // Routing: #/streams/<id> opens a stream, anything else closes it.

  function route() {
    const m = /^#\/streams\/([^/?#]+)$/.exec(location.hash);
    const id = m ? decodeURIComponent(m[1]) : null;
    if (!id) {
      if (view.session) closeStream();
      return;
    }
    if (view.session && view.session.id === id) return;
    openStream(id);
  }

  function init() {
    initAuth();
    initForm();
    initStreamView();
    initList();
    window.addEventListener('hashchange', route);
    route();
    document.body.dataset.ready = 'true';
  }

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', init);
  else init();
})();
