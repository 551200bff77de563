// Token and API: the bearer token (kept per browser tab), api() for JSON calls, the headers and
// error decoding the event reader shares, and the token UI (top bar and prompt dialog).

import { byId, store } from './util.js';

const TOKEN_KEY = 'sluice.console.token';

const auth = {
  token: store.get(TOKEN_KEY) || '',
  dismissed: false, // "Not now": background requests stop asking until a token is set
  waiting: [], // callbacks run once a token is entered
};
let onTokenSet = () => {};

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export function authHeaders(extra) {
  const h = Object.assign({}, extra);
  if (auth.token) h.Authorization = `Bearer ${auth.token}`;
  return h;
}

export async function errorOf(res) {
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
export async function api(method, path, body, interactive = false) {
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

export function refusedMessage() {
  return auth.token ? 'The token was refused. Enter a valid token.' : null;
}

export function askToken(message, force) {
  if (auth.dismissed && !force) return;
  const dialog = byId('token-prompt');
  byId('token-message').textContent = message || 'This Sluice asks for a bearer token.';
  if (!dialog.open) {
    byId('token-input').value = '';
    dialog.showModal();
  }
  byId('token-input').focus();
}

export function whenToken(fn) {
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
  onTokenSet();
}

// `onToken` runs after every change of token (set or forgotten), after the waiting callbacks.
export function initAuth(onToken) {
  onTokenSet = onToken;
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
