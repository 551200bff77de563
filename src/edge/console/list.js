// Streams list: filters, cursor pages, auto-refresh and the table of rows (a click or Enter on a
// row opens that stream).

import { byId, el, show, age, clock } from './util.js';
import { api } from './api.js';
import { view } from './state.js';

const PAGE = 50; // rows per page; the list's data-page-size overrides it
const LIST_REFRESH_MS = 2000;

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

export async function refreshList({ reset }) {
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

export function renderList() {
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

export function initList() {
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
