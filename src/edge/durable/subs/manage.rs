//! Managing subscriptions: create or re-confirm (`PUT`), read (`GET`), delete, and explicit
//! stream links. A new subscription links the streams its pattern matches at their current
//! tails, so it starts with no history to process. Creating needs a token with a `sub` (the
//! owner) or an administrator; everything else needs the owner or an administrator, and a
//! subscription someone else owns is answered as a missing one.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::http::StatusCode;
use serde_json::{json, Value};

use super::config::{self, Config, Kind, Rules};
use super::{glob, now_ms, saved, Durable, Link, Refusal, Sub, SubOwner, STREAM_ROOT};
use crate::edge::auth::Identity;

impl Durable {
    fn rules(&self) -> Rules {
        Rules {
            allow_localhost: self.settings.webhook_allow_localhost,
            max_streams: self.settings.max_subscription_streams,
        }
    }

    /// The relative paths of every stream a subscription of `access` sees.
    fn stream_paths(&self, access: &SubOwner) -> Vec<String> {
        self.paths()
            .into_iter()
            .filter_map(|p| super::relative(&p).map(str::to_owned))
            .filter(|rel| self.sub_sees(access, rel))
            .collect()
    }

    /// `PUT`: creates `id` (true) or re-confirms it (false); answers its view.
    pub(super) async fn sub_put(
        self: &Arc<Self>,
        id: &str,
        who: &Identity,
        body: &[u8],
    ) -> Result<(bool, Value), Refusal> {
        let access = SubOwner::of(who)
            .map_err(|_| Refusal::forbidden("creating a subscription needs a token with a sub"))?;
        let config = config::parse(body, &self.rules())?;
        let mut table = self.subs.table.lock().await;
        if let Some(sub) = table.get(id) {
            if !sub.access.managed_by(who) {
                return Err(Refusal {
                    status: StatusCode::CONFLICT,
                    code: "SUBSCRIPTION_ALREADY_EXISTS",
                    message: "subscription id is taken".into(),
                    extra: None,
                });
            }
            if sub.config != config {
                return Err(Refusal {
                    status: StatusCode::CONFLICT,
                    code: "SUBSCRIPTION_ALREADY_EXISTS",
                    message: "subscription exists with a different configuration".into(),
                    extra: None,
                });
            }
            return Ok((false, self.view(sub).await));
        }
        if table.len() >= self.settings.max_subscriptions {
            return Err(Refusal {
                status: StatusCode::SERVICE_UNAVAILABLE,
                code: "INVALID_REQUEST",
                message: "too many subscriptions (durable.max_subscriptions)".into(),
                extra: None,
            });
        }
        let cap = self.settings.max_subscriptions_per_owner;
        if access.owner.is_some() && !access.admin {
            let held = table
                .values()
                .filter(|s| s.access.owner == access.owner)
                .count();
            if held >= cap {
                let message = format!(
                    "this owner holds {cap} subscriptions, the most one owner may (durable.max_subscriptions_per_owner)"
                );
                self.metrics
                    .edge_rejected("ds_owner_quota", &format!("durable: {message}"));
                return Err(Refusal {
                    status: StatusCode::INSUFFICIENT_STORAGE,
                    code: "QUOTA_EXCEEDED",
                    message,
                    extra: None,
                });
            }
        }
        // Counted before the streams are listed, so an append racing this creation is noted
        // for it either way: in the listing, or as a touched path.
        self.subs.count.fetch_add(1, Ordering::AcqRel);
        let mut links = BTreeMap::new();
        for path in &config.streams {
            let acked = self.sub_tail(&access, path).await;
            links.insert(
                path.clone(),
                Link {
                    explicit: true,
                    glob: false,
                    acked,
                },
            );
        }
        if let Some(pattern) = &config.pattern {
            for path in self.stream_paths(&access) {
                if glob::matches(pattern, &path) {
                    let acked = self.sub_tail(&access, &path).await;
                    links
                        .entry(path)
                        .or_insert(Link {
                            explicit: false,
                            glob: true,
                            acked,
                        })
                        .glob = true;
                }
            }
        }
        let sub = Sub {
            id: id.to_owned(),
            config,
            access,
            created_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            links,
            generation: 0,
            wake: None,
            retries: 0,
            retry_at: None,
        };
        let doc = saved::doc(&sub);
        let view = self.view(&sub).await;
        table.insert(id.to_owned(), sub);
        drop(table);
        self.save_subs(vec![doc]).await;
        tracing::info!(subscription = id, "subscription created");
        Ok((true, view))
    }

    /// `GET`: the subscription's view.
    pub(super) async fn sub_get(&self, id: &str, who: &Identity) -> Result<Value, Refusal> {
        let table = self.subs.table.lock().await;
        let sub = table
            .get(id)
            .filter(|s| s.access.managed_by(who))
            .ok_or_else(Refusal::not_found)?;
        Ok(self.view(sub).await)
    }

    /// `DELETE`: forgets it; requests for its wake fail from now on. Someone else's is left as it
    /// is, answered as a missing one (204 both).
    pub(super) async fn sub_delete(&self, id: &str, who: &Identity) {
        let removed = {
            let mut table = self.subs.table.lock().await;
            let mine = table.get(id).is_some_and(|s| s.access.managed_by(who));
            if mine {
                table.remove(id)
            } else {
                None
            }
        };
        if removed.is_some() {
            self.subs.count.fetch_sub(1, Ordering::AcqRel);
            self.save_subs(vec![(id.to_owned(), None)]).await;
            tracing::info!(subscription = id, "subscription deleted");
        }
    }

    /// Links explicit streams at their tails (already linked ones stay as they are).
    pub(super) async fn sub_add_streams(
        &self,
        id: &str,
        who: &Identity,
        body: &[u8],
    ) -> Result<(), Refusal> {
        #[derive(serde::Deserialize)]
        struct Add {
            streams: Vec<String>,
        }
        let add: Add = serde_json::from_slice(body)
            .map_err(|_| Refusal::invalid("body must be {\"streams\": [paths]}"))?;
        let paths = add
            .streams
            .iter()
            .map(|s| config::stream_path(s))
            .collect::<Result<Vec<_>, _>>()?;
        let mut table = self.subs.table.lock().await;
        let sub = table
            .get_mut(id)
            .filter(|s| s.access.managed_by(who))
            .ok_or_else(Refusal::not_found)?;
        let explicit = sub.links.values().filter(|l| l.explicit).count();
        if explicit + paths.len() > self.settings.max_subscription_streams {
            return Err(Refusal::invalid(
                "too many streams (durable.max_subscription_streams)",
            ));
        }
        for path in paths {
            match sub.links.get_mut(&path) {
                Some(link) => link.explicit = true,
                None => {
                    let acked = self.sub_tail(&sub.access, &path).await;
                    let link = Link {
                        explicit: true,
                        glob: false,
                        acked,
                    };
                    sub.links.insert(path, link);
                }
            }
        }
        let doc = saved::doc(sub);
        drop(table);
        self.save_subs(vec![doc]).await;
        Ok(())
    }

    /// Removes an explicit link; a glob link to the same stream stays.
    pub(super) async fn sub_remove_stream(
        &self,
        id: &str,
        who: &Identity,
        path: &str,
    ) -> Result<(), Refusal> {
        let path = config::normalise(path);
        let mut table = self.subs.table.lock().await;
        let sub = table
            .get_mut(id)
            .filter(|s| s.access.managed_by(who))
            .ok_or_else(Refusal::not_found)?;
        if let Some(link) = sub.links.get_mut(&path) {
            link.explicit = false;
            if !link.glob {
                sub.links.remove(&path);
            }
        }
        let doc = saved::doc(sub);
        drop(table);
        self.save_subs(vec![doc]).await;
        Ok(())
    }

    /// A subscription as `GET` shows it.
    async fn view(&self, sub: &Sub) -> Value {
        let origin = self.public_origin();
        let streams: Vec<Value> = self
            .infos(sub)
            .await
            .iter()
            .map(|i| i.json(false))
            .collect();
        let c: &Config = &sub.config;
        let failed = sub.retries > 0;
        let webhook = c.webhook_url.as_ref().map(|url| {
            json!({"url": url, "signing": {
                "alg": "ed25519",
                "kid": self.subs.keys().kid(),
                "jwks_url": format!("{origin}{STREAM_ROOT}__ds/jwks.json"),
            }})
        });
        let mut v = json!({
            "id": sub.id,
            "subscription_id": sub.id,
            "type": if c.kind == Kind::Webhook { "webhook" } else { "pull-wake" },
            "streams": streams,
            "wake_stream": c.wake_stream,
            "lease_ttl_ms": c.lease_ttl_ms,
            "created_at": sub.created_at,
            "status": if failed { "failed" } else { "active" },
        });
        if let Some(p) = &c.pattern {
            v["pattern"] = json!(p);
        }
        if let Some(w) = webhook {
            v["webhook"] = w;
        }
        if let Some(d) = &c.description {
            v["description"] = json!(d);
        }
        if let Some(at) = sub.retry_at {
            v["next_attempt_at"] = json!(at.max(now_ms()));
        }
        v
    }
}
