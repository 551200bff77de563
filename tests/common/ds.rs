//! Durable Streams with authentication on: two JWT owners, a token without `sub`, a `ds:`
//! pattern reader and the static administrator, and calls on streams and subscriptions as each.

use jsonwebtoken::{encode, EncodingKey, Header};
use reqwest::Method;
use serde_json::{json, Value};

use super::{start, TestApp};

pub const SECRET: &[u8] = b"durable-owner-secret";
pub const ADMIN: &str = "durable-admin-token";
pub const ISSUER: &str = "https://issuer.test";
pub const NOT_FOUND: &str = "stream not found";
pub const NOT_YOURS: &str = "this token may not create or change a stream at this path";

pub fn jwt(claims: Value) -> String {
    let mut c =
        json!({"exp": chrono::Utc::now().timestamp() + 600, "iss": ISSUER, "aud": "sluice"});
    for (k, v) in claims.as_object().unwrap() {
        c[k] = v.clone();
    }
    encode(&Header::default(), &c, &EncodingKey::from_secret(SECRET)).unwrap()
}

/// The callers: two owners, a token with no `sub` and no grants, a reader of `ds:shared/*`.
pub struct Tokens {
    pub alice: String,
    pub bob: String,
    pub nosub: String,
    pub reader: String,
}

pub fn tokens() -> Tokens {
    Tokens {
        alice: jwt(json!({"sub": "alice"})),
        bob: jwt(json!({"sub": "bob"})),
        nosub: jwt(json!({"types": []})),
        reader: jwt(json!({"sub": "carol", "streams": ["ds:shared/*"]})),
    }
}

pub async fn start_secured(tweak: impl FnOnce(&mut sluice::Settings)) -> TestApp {
    start(|s| {
        s.edge.api_tokens = vec![ADMIN.into()];
        s.auth.jwt_secret = String::from_utf8(SECRET.to_vec()).unwrap();
        s.auth.issuers = vec![ISSUER.into()];
        s.auth.audiences = vec!["sluice".into()];
        s.durable.webhook_allow_localhost = true;
        tweak(s);
    })
    .await
}

pub fn ds(app: &TestApp, rest: &str) -> String {
    app.url(&format!("/ds/v1/stream/{rest}"))
}

/// `method` on `rest` below the stream root as `token`, with a text body.
pub async fn call(
    app: &TestApp,
    method: Method,
    rest: &str,
    token: &str,
    body: &str,
) -> (u16, String) {
    let mut req = app
        .http
        .request(method.clone(), ds(app, rest))
        .bearer_auth(token);
    if method == Method::PUT || method == Method::POST {
        req = req
            .header("content-type", "text/plain")
            .body(body.to_owned());
    }
    let res = req.send().await.unwrap();
    (res.status().as_u16(), res.text().await.unwrap())
}

pub async fn sub_call(
    app: &TestApp,
    method: Method,
    rest: &str,
    token: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = app
        .http
        .request(method, ds(app, &format!("__ds/subscriptions/{rest}")))
        .bearer_auth(token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}
