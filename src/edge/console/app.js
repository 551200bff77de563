// Sluice console: streams list, request form and a live stream view. This is the entry point: it
// starts each part and routes on the location hash.
//
// ES modules, no dependencies, one module per concept: util (helpers), state (shared state), api
// (token and API), form, list, sse (event-stream reader), history (sessionStorage), view and
// stream (the open stream). It talks to the API on its own origin with the bearer token the
// operator enters once per browser tab.

import { initAuth } from './api.js';
import { initForm } from './form.js';
import { initList, refreshList } from './list.js';
import { view } from './state.js';
import { openStream, closeStream, initStreamView } from './stream.js';

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
  initAuth(() => refreshList({ reset: true }));
  initForm();
  initStreamView();
  initList();
  window.addEventListener('hashchange', route);
  route();
  document.body.dataset.ready = 'true';
}

if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', init);
else init();
