// Request form: checks the JSON payload, posts the request and opens the stream it names.

import { byId, show } from './util.js';
import { api } from './api.js';
import { refreshList } from './list.js';

export function initForm() {
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
