//! Waking workers: a webhook delivery (a `POST` signed with the server's Ed25519 key, retried
//! with backoff from 1 s to 60 s while it fails), or a wake event appended to a pull-wake
//! subscription's `wake_stream`.
//!
//! Webhook requests never follow redirects, and host names are resolved through a resolver that
//! drops private and local addresses, so a name pointing inside the network is refused at
//! connection time as an address literal is at creation.

use std::net::SocketAddr;
use std::sync::Arc;

use serde_json::json;

use super::{config, now_ms, now_s, saved, Durable, Info, Kind, Sub};
use crate::settings::DurableSettings;

/// Most bytes of a webhook's answer read (for `{"done": true}`).
const ANSWER_LIMIT: usize = 64 * 1024;
/// Retry backoff bounds, milliseconds.
const RETRY_FIRST_MS: i64 = 1_000;
const RETRY_MAX_MS: i64 = 60_000;

/// What a webhook request came to.
enum Outcome {
    /// A 2xx answer; `done` if it said `{"done": true}`.
    Delivered { done: bool },
    /// Anything else, with why.
    Failed(String),
}

/// The HTTP client for webhooks.
pub fn client(settings: &DurableSettings) -> Result<reqwest::Client, String> {
    // No proxy: a proxy environment variable would resolve names past `PublicOnly`.
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(settings.webhook_timeout)
        .dns_resolver(Arc::new(PublicOnly {
            allow_localhost: settings.webhook_allow_localhost,
        }))
        .build()
        .map_err(|e| e.to_string())
}

/// Resolves host names to their public addresses only (`localhost` too in development).
struct PublicOnly {
    allow_localhost: bool,
}

impl reqwest::dns::Resolve for PublicOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_owned();
        let local_ok = self.allow_localhost && host.eq_ignore_ascii_case("localhost");
        Box::pin(async move {
            let all: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let ok: Vec<SocketAddr> = all
                .into_iter()
                .filter(|a| config::is_public(a.ip()) || (local_ok && a.ip().is_loopback()))
                .collect();
            if ok.is_empty() {
                return Err(format!("{host} resolves to no public address").into());
            }
            let addrs: reqwest::dns::Addrs = Box::new(ok.into_iter());
            Ok(addrs)
        })
    }
}

/// The retry delay after `n` failures in a row: doubling from 1 s to 60 s, ±20 % jitter.
fn backoff_ms(n: u32, jitter: f64) -> i64 {
    let base = (RETRY_FIRST_MS << n.saturating_sub(1).min(10)).min(RETRY_MAX_MS);
    (base as f64 * (1.0 + 0.2 * jitter.clamp(-1.0, 1.0))) as i64
}

impl Durable {
    /// Sends `sub`'s current wake to its webhook, on a task of its own.
    pub(super) fn deliver(self: &Arc<Self>, sub: &mut Sub, infos: Vec<Info>) {
        let (Some(url), Some(w)) = (sub.config.webhook_url.clone(), sub.wake.as_mut()) else {
            return;
        };
        let lease = sub.config.lease_ttl_ms as i64;
        if let Some(at) = sub.retry_at.filter(|at| *at > now_ms()) {
            // A restarted server keeps the retry schedule: the tick sends it when due.
            w.lease_until = Some(at + lease);
            return;
        }
        w.delivering = true;
        w.lease_until = Some(now_ms() + lease);
        let keys = self.subs.keys();
        let body = json!({
            "subscription_id": sub.id,
            "wake_id": w.id,
            "generation": sub.generation,
            "streams": infos.iter().map(|i| i.json(true)).collect::<Vec<_>>(),
            "callback_url": format!("{}{}", self.public_origin(), action_path(&sub.id, "callback")),
            "callback_token": keys.token(&sub.id, sub.generation, now_s()),
        })
        .to_string();
        let (id, wake) = (sub.id.clone(), w.id.clone());
        let d = self.clone();
        self.tasks.spawn(async move {
            let outcome = d.post_webhook(&url, body).await;
            d.delivered(&id, &wake, outcome).await;
        });
    }

    async fn post_webhook(&self, url: &str, body: String) -> Outcome {
        let signature = self.subs.keys().sign(&body, now_s());
        let sent = self
            .subs
            .client
            .post(url)
            .header("content-type", "application/json")
            .header("webhook-signature", signature)
            .body(body)
            .send()
            .await;
        let mut res = match sent {
            Ok(r) if r.status().is_success() => r,
            Ok(r) => return Outcome::Failed(format!("status {}", r.status())),
            Err(e) => return Outcome::Failed(e.to_string()),
        };
        let mut answer = Vec::new();
        while let Ok(Some(chunk)) = res.chunk().await {
            answer.extend_from_slice(&chunk);
            if answer.len() > ANSWER_LIMIT {
                break;
            }
        }
        let done = serde_json::from_slice::<serde_json::Value>(&answer)
            .is_ok_and(|v| v["done"] == json!(true));
        Outcome::Delivered { done }
    }

    /// Applies a webhook's outcome to the wake it was for, if that wake is still current.
    async fn delivered(self: &Arc<Self>, id: &str, wake: &str, outcome: Outcome) {
        let mut table = self.subs.table.lock().await;
        let Some(sub) = table.get_mut(id) else { return };
        let Some(w) = sub.wake.as_mut().filter(|w| w.id == wake) else {
            return;
        };
        w.delivering = false;
        match outcome {
            Outcome::Delivered { done } => {
                self.metrics.durable_webhook_delivered(id);
                sub.retries = 0;
                sub.retry_at = None;
                if done {
                    for (path, tail) in std::mem::take(&mut w.snapshot) {
                        if let Some(link) = sub.links.get_mut(&path) {
                            if tail > link.acked {
                                link.acked = tail;
                            }
                        }
                    }
                    self.end_wake(sub).await;
                }
            }
            Outcome::Failed(why) => {
                sub.retries += 1;
                let jitter = (now_ms() % 1000) as f64 / 500.0 - 1.0;
                let delay = backoff_ms(sub.retries, jitter);
                let at = now_ms() + delay;
                sub.retry_at = Some(at);
                w.lease_until = Some(at + sub.config.lease_ttl_ms as i64);
                self.metrics
                    .durable_webhook_failed(id, sub.retries, delay, &why);
            }
        }
        let doc = saved::doc(sub);
        drop(table);
        self.save_subs(vec![doc]).await;
    }

    /// Appends a wake event for `sub`'s current wake to its wake stream, on a task of its own.
    pub(super) fn write_wake_event(self: &Arc<Self>, sub: &Sub, stream: &str) {
        let Some(wake_stream) = sub.config.wake_stream.clone() else {
            return;
        };
        debug_assert_eq!(sub.config.kind, Kind::PullWake);
        let event = json!({
            "type": "wake", "subscription_id": sub.id, "stream": stream,
            "generation": sub.generation, "ts": now_ms(),
        })
        .to_string();
        let d = self.clone();
        let (id, by) = (sub.id.clone(), sub.access.clone());
        self.tasks.spawn(async move {
            let path = format!("{}{wake_stream}", super::STREAM_ROOT);
            if let Err(why) = d.append_internal(&path, &by, event.into_bytes()).await {
                d.metrics.durable_wake_unwritten(&id, &wake_stream, &why);
            }
        });
    }
}

/// What JavaScript's `encodeURIComponent` leaves as it is.
const COMPONENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'!')
    .remove(b'~')
    .remove(b'*')
    .remove(b'\'')
    .remove(b'(')
    .remove(b')');

/// A subscription action's path below the base path.
pub(super) fn action_path(id: &str, action: &str) -> String {
    let id = percent_encoding::utf8_percent_encode(id, COMPONENT);
    format!("{}__ds/subscriptions/{id}/{action}", super::STREAM_ROOT)
}

#[cfg(test)]
mod tests {
    use super::{backoff_ms, PublicOnly};
    use reqwest::dns::{Name, Resolve};
    use std::str::FromStr;

    #[tokio::test]
    async fn names_resolving_to_local_addresses_are_refused_outside_development() {
        let strict = PublicOnly {
            allow_localhost: false,
        };
        let err = strict
            .resolve(Name::from_str("localhost").unwrap())
            .await
            .err()
            .expect("localhost refused");
        assert!(err.to_string().contains("no public address"), "{err}");
        let dev = PublicOnly {
            allow_localhost: true,
        };
        let addrs: Vec<_> = dev
            .resolve(Name::from_str("localhost").unwrap())
            .await
            .expect("localhost allowed in development")
            .collect();
        assert!(addrs.iter().all(|a| a.ip().is_loopback()) && !addrs.is_empty());
    }

    #[test]
    fn retries_back_off_from_one_second_to_a_minute_with_a_fifth_of_jitter() {
        assert_eq!(backoff_ms(1, 0.0), 1_000);
        assert_eq!(backoff_ms(2, 0.0), 2_000);
        assert_eq!(backoff_ms(6, 0.0), 32_000);
        assert_eq!(backoff_ms(7, 0.0), 60_000);
        assert_eq!(backoff_ms(40, 0.0), 60_000);
        assert_eq!(backoff_ms(1, 1.0), 1_200);
        assert_eq!(backoff_ms(7, -1.0), 48_000);
    }
}
