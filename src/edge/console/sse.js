// SSE over fetch: the reader and parser of a text/event-stream body. Read this way rather than with
// EventSource, every frame is seen whatever its event name, the Authorization header is sent, and
// the status of every (re)connection is known to the caller (401, 404, 204 at the end).

// Reads an SSE body and calls onFrame({event, data, id}) per dispatched event (id is null when the
// frame had no id line) and onRetry(ms) per retry field. Resolves when the body ends.
export async function readSse(body, signal, onFrame, onRetry) {
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
