//! The web console at `/console`: a static page, its ES modules and stylesheet, embedded in the
//! binary. The page itself needs no token; everything it shows comes from the authenticated API,
//! with the token the operator enters once per browser tab.

use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

const INDEX: &str = include_str!("console/index.html");

/// Every asset: its path, content type and body. `app.js` is the entry point; it imports the other
/// modules by relative path, so each one is served next to it under `/console/`.
const ASSETS: &[(&str, &str, &str)] = &[
    ("/console", HTML, INDEX),
    ("/console/", HTML, INDEX),
    ("/console/app.css", CSS, include_str!("console/app.css")),
    ("/console/app.js", JS, include_str!("console/app.js")),
    ("/console/api.js", JS, include_str!("console/api.js")),
    ("/console/form.js", JS, include_str!("console/form.js")),
    (
        "/console/history.js",
        JS,
        include_str!("console/history.js"),
    ),
    ("/console/list.js", JS, include_str!("console/list.js")),
    ("/console/sse.js", JS, include_str!("console/sse.js")),
    ("/console/state.js", JS, include_str!("console/state.js")),
    ("/console/stream.js", JS, include_str!("console/stream.js")),
    ("/console/util.js", JS, include_str!("console/util.js")),
    ("/console/view.js", JS, include_str!("console/view.js")),
];

/// A strict policy: the console loads only its own assets and talks only to its own origin.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

/// The console's routes: one per asset.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    ASSETS
        .iter()
        .fold(Router::new(), |router, &(path, content_type, body)| {
            router.route(path, get(move || async move { asset(content_type, body) }))
        })
}
