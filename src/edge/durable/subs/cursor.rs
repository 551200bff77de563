//! The worker's side of a wake: a webhook's callback, a pull-wake claim, ack (which doubles as
//! the lease's heartbeat) and release. Every request but a claim carries the wake's token and
//! must name the current `wake_id` and `generation`, else it is fenced (409 `FENCED`); acks move
//! cursors forward only, never past a stream's tail.

use std::sync::Arc;

use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{json, Value};

use super::keys::TokenError;
use super::{config, now_ms, now_s, saved, Durable, Kind, Refusal, Sub, BEFORE_FIRST};
use crate::edge::auth::Identity;

/// A callback, ack or release body.
#[derive(Deserialize)]
pub(super) struct WakeReply {
    wake_id: Option<String>,
    generation: Option<u64>,
    #[serde(default)]
    acks: Vec<Ack>,
    #[serde(default)]
    done: bool,
}

#[derive(Deserialize)]
struct Ack {
    stream: Option<String>,
    path: Option<String>,
    offset: String,
}

/// Which endpoint a wake reply came to.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Via {
    /// A webhook's callback.
    Callback,
    /// A pull-wake worker's ack.
    Ack,
    /// A pull-wake worker's release.
    Release,
}

impl Durable {
    /// Checks the token and the wake a reply names against `sub`'s current wake.
    fn fence(&self, sub: &Sub, token: &str, r: &WakeReply) -> Result<(), Refusal> {
        let generation = match self.subs.keys().verify(token, &sub.id, now_s()) {
            Ok(g) => g,
            Err(TokenError::Invalid) => return Err(token_refusal("TOKEN_INVALID")),
            Err(TokenError::Expired) => return Err(token_refusal("TOKEN_EXPIRED")),
        };
        let current = sub.wake.as_ref().map(|w| w.id.as_str());
        if generation != sub.generation
            || r.generation != Some(sub.generation)
            || current.is_none()
            || r.wake_id.as_deref() != current
        {
            return Err(Refusal::fenced());
        }
        Ok(())
    }

    /// A callback, ack or release: `{ok, next_wake}` (release: `None`, answered 204).
    pub(super) async fn sub_reply(
        self: &Arc<Self>,
        id: &str,
        via: Via,
        token: &str,
        r: WakeReply,
    ) -> Result<Option<Value>, Refusal> {
        let mut table = self.subs.table.lock().await;
        let sub = table.get_mut(id).ok_or_else(Refusal::not_found)?;
        if via != Via::Callback && sub.config.kind != Kind::PullWake {
            return Err(Refusal::invalid("subscription is not pull-wake"));
        }
        self.fence(sub, token, &r)?;
        if via == Via::Release {
            self.end_wake(sub).await;
            let doc = saved::doc(sub);
            drop(table);
            self.save_subs(vec![doc]).await;
            return Ok(None);
        }
        let mut moves = Vec::with_capacity(r.acks.len());
        for ack in &r.acks {
            let path =
                config::normalise(ack.stream.as_deref().or(ack.path.as_deref()).unwrap_or(""));
            let Some(link) = sub.links.get(&path) else {
                return Err(Refusal::offset(
                    "ack names a stream the subscription does not link",
                ));
            };
            if ack.offset == BEFORE_FIRST {
                return Err(Refusal::offset("ack offset must not be -1"));
            }
            if ack.offset < link.acked {
                return Err(Refusal::offset("ack offset is behind the acknowledged one"));
            }
            if ack.offset > self.sub_tail(&sub.access, &path).await {
                return Err(Refusal::offset("ack offset is beyond the stream's tail"));
            }
            moves.push((path, ack.offset.clone()));
        }
        for (path, offset) in moves {
            if let Some(link) = sub.links.get_mut(&path) {
                link.acked = offset;
            }
        }
        let lease = sub.config.lease_ttl_ms as i64;
        if let Some(w) = sub.wake.as_mut() {
            w.lease_until = Some(now_ms() + lease);
        }
        let next_wake = r.done && self.end_wake(sub).await;
        let doc = saved::doc(sub);
        drop(table);
        self.save_subs(vec![doc]).await;
        Ok(Some(json!({"ok": true, "next_wake": next_wake})))
    }

    /// A pull-wake claim by `worker`: the wake (started now if data is pending and none is),
    /// its token, and the lease.
    pub(super) async fn sub_claim(
        self: &Arc<Self>,
        id: &str,
        who: &Identity,
        worker: &str,
    ) -> Result<Value, Refusal> {
        let mut table = self.subs.table.lock().await;
        let sub = table
            .get_mut(id)
            .filter(|s| s.access.managed_by(who))
            .ok_or_else(Refusal::not_found)?;
        if sub.config.kind != Kind::PullWake {
            return Err(Refusal::invalid("subscription is not pull-wake"));
        }
        if let Some(holder) = sub.wake.as_ref().and_then(|w| w.holder.clone()) {
            return Err(Refusal {
                status: StatusCode::CONFLICT,
                code: "ALREADY_CLAIMED",
                message: "another worker holds the lease".into(),
                extra: Some(json!({"current_holder": holder, "generation": sub.generation})),
            });
        }
        if sub.wake.is_none() && !self.maybe_wake(sub).await {
            return Err(Refusal {
                status: StatusCode::CONFLICT,
                code: "NO_PENDING_WORK",
                message: "no stream has data past its acknowledged offset".into(),
                extra: None,
            });
        }
        let lease = sub.config.lease_ttl_ms;
        let token = self.subs.keys().token(&sub.id, sub.generation, now_s());
        let infos = self.infos(sub).await;
        let Some(w) = sub.wake.as_mut() else {
            return Err(Refusal::fenced());
        };
        w.holder = Some(worker.to_owned());
        w.lease_until = Some(now_ms() + lease as i64);
        let body = json!({
            "wake_id": w.id,
            "generation": sub.generation,
            "token": token,
            "streams": infos.iter().map(|i| i.json(true)).collect::<Vec<_>>(),
            "lease_ttl_ms": lease,
        });
        let doc = saved::doc(sub);
        drop(table);
        self.save_subs(vec![doc]).await;
        Ok(body)
    }
}

fn token_refusal(code: &'static str) -> Refusal {
    Refusal {
        status: StatusCode::UNAUTHORIZED,
        code,
        message: "the wake token is not valid for this subscription".into(),
        extra: None,
    }
}
