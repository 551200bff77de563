// Per-stream persistence in sessionStorage: a small meta record and the events in blocks of BLOCK.
//
// Resume across a reload: every stored event is written here together with its id before it is
// shown, in the same task. A reload therefore restores exactly the events the page had processed
// and reconnects with Last-Event-ID set to the last of them: no gap, no repeat.

import { store } from './util.js';

const STREAM_PREFIX = 'sluice.console.stream.';
const BLOCK = 50; // stored events per sessionStorage block
const KEEP_BLOCKS = 40; // blocks kept per stream (2,000 events); older ones are dropped

function streamKey(id) { return STREAM_PREFIX + id; }

export function saveMeta(id, meta) {
  store.set(streamKey(id), JSON.stringify(meta));
}

export function loadStream(id) {
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

export function clearStream(id) {
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

export function persist(s, record) {
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
