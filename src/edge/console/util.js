// Shared helpers: DOM lookup and building, timing and formatting, the sessionStorage wrapper, and
// the one constant several modules need. No state, no imports.

export const TERMINAL = new Set(['success', 'failed', 'timeout', 'cancelled']);

export const byId = (id) => document.querySelector(`[data-testid="${id}"]`);
export const el = (tag, attrs, ...children) => {
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
export const sleep = (ms, signal) =>
  new Promise((resolve) => {
    const t = setTimeout(resolve, ms);
    if (signal) signal.addEventListener('abort', () => { clearTimeout(t); resolve(); }, { once: true });
  });
export const stateOf = (type) => (typeof type === 'string' && type.includes(':') ? type.slice(type.lastIndexOf(':') + 1) : '');
export const show = (node, text) => { node.textContent = text || ''; node.hidden = !text; };

export function age(iso) {
  const t = Date.parse(iso);
  if (!Number.isFinite(t)) return '–';
  const s = Math.max(0, (Date.now() - t) / 1000);
  if (s < 60) return `${Math.floor(s)}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m`;
  if (s < 86400) return `${Math.floor(s / 3600)}h`;
  return `${Math.floor(s / 86400)}d`;
}

export function clock(ms) {
  const d = new Date(ms);
  if (Number.isNaN(d.getTime())) return '';
  const p = (n, w = 2) => String(n).padStart(w, '0');
  return `${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}.${p(d.getMilliseconds(), 3)}`;
}

// ---------------------------------------------------------------------------------------------
// Storage (sessionStorage: per browser tab, survives a reload)

export const store = {
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
