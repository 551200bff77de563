//! Authorisation: what an authenticated caller may do with a stream or a type.
//!
//! A caller reads or cancels a stream it owns (the record's `owner` is the `sub` that requested
//! it) or one its `streams` patterns match; it requests types its `types` patterns match;
//! administrators do anything. A stream that does not exist and a stream the caller may not see
//! get the same `403 forbidden`, so ids cannot be probed.
//!
//! Streams requested through this instance but not yet recorded by intake are claimed here
//! (bounded, for `PENDING_TTL`): the first request for an id claims it, atomically, and a later
//! one by anyone who may not read the claimant's streams is refused. A claim alone never grants a
//! read: the claimant is let through only once the record exists and names it as the owner
//! ([`authorize_within`] waits for it), because intake, not this table, decides which of two
//! requests for one id made on different instances registers it.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::auth::Identity;
use super::{ApiError, EdgeState};
use crate::event::{EventType, StreamId};

/// Owners of streams requested here whose records intake has not written yet.
pub const PENDING_OWNERS: usize = 65_536;

/// The authenticated caller of one request, connection or RPC.
#[derive(Clone, Debug)]
pub struct Caller {
    /// What the caller's token grants.
    pub identity: Identity,
    /// The key its request rate is counted under: its subject, else its address.
    pub rate_key: String,
}

impl Caller {
    /// The caller presenting `identity` from `peer`.
    pub fn new(identity: Identity, peer: Option<SocketAddr>) -> Caller {
        let rate_key = match identity.subject() {
            Some(sub) => format!("sub:{sub}"),
            None => format!(
                "ip:{}",
                peer.map_or("unknown".into(), |p| p.ip().to_string())
            ),
        };
        Caller { identity, rate_key }
    }
}

/// How long a claim lasts without a record: a request intake refused (the DLQ) frees its id.
pub const PENDING_TTL: Duration = Duration::from_secs(60);

/// What claiming a stream id found.
#[derive(Debug, PartialEq, Eq)]
pub enum Claim {
    /// The id was free: the caller holds it now and should produce its request.
    New,
    /// Somebody (perhaps the caller) claimed it first; their subject, empty for none.
    Held(String),
}

/// Stream ids requested through this instance and not yet recorded, with the subject that asked
/// first; the oldest are forgotten past `PENDING_OWNERS`, and any after `PENDING_TTL`.
#[derive(Default)]
pub struct PendingOwners {
    inner: Mutex<Pending>,
}

#[derive(Default)]
struct Pending {
    owners: HashMap<String, (String, Instant)>,
    order: VecDeque<String>,
}

impl PendingOwners {
    /// Claims `id` for `owner` unless a live claim holds it: first come, first served.
    pub fn claim(&self, id: &StreamId, owner: &str) -> Claim {
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let pending = &mut *guard;
        let now = Instant::now();
        if let Some((held, at)) = pending.owners.get(id.as_str()) {
            if now.duration_since(*at) < PENDING_TTL {
                return Claim::Held(held.clone());
            }
        }
        if pending
            .owners
            .insert(id.to_string(), (owner.to_owned(), now))
            .is_none()
        {
            pending.order.push_back(id.to_string());
        }
        while pending.order.len() > PENDING_OWNERS {
            if let Some(old) = pending.order.pop_front() {
                pending.owners.remove(&old);
            }
        }
        Claim::New
    }

    /// Gives up a claim whose request was never produced.
    pub fn release(&self, id: &StreamId) {
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        guard.owners.remove(id.as_str());
        guard.order.retain(|k| k != id.as_str());
    }

    /// The subject holding a live claim on `id`.
    pub fn owner(&self, id: &StreamId) -> Option<String> {
        let guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        guard
            .owners
            .get(id.as_str())
            .filter(|(_, at)| at.elapsed() < PENDING_TTL)
            .map(|(owner, _)| owner.clone())
    }
}

/// The refusal for a stream the caller may not see, worded the same whether it exists or not.
pub(crate) fn forbidden(id: &StreamId) -> ApiError {
    ApiError::Forbidden(format!(
        "stream {id} does not exist or this token does not grant it"
    ))
}

/// Checks that `who` may read or cancel stream `id`, waiting up to `edge.early_connect_wait` for
/// the record of a stream the caller just requested here.
pub async fn authorize(state: &EdgeState, who: &Identity, id: &StreamId) -> Result<(), ApiError> {
    authorize_within(state, who, id, state.edge.early_connect_wait).await
}

/// [`authorize`], waiting up to `wait` for the record of a stream the caller claimed here. A claim
/// is not a grant: only the record says who owns the stream, so the claimant is let through once
/// the record names it, refused if it names someone else, and told the stream is not found if no
/// record appears in time.
pub async fn authorize_within(
    state: &EdgeState,
    who: &Identity,
    id: &StreamId,
    wait: Duration,
) -> Result<(), ApiError> {
    if who.may_access_by_pattern(id.as_str()) {
        return Ok(());
    }
    let Some(sub) = who.subject() else {
        return Err(forbidden(id));
    };
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let owner = match state.store.get(id.as_str()).await {
            Ok(Some(record)) => record.request.owner,
            Ok(None) if state.pending.owner(id).as_deref() == Some(sub) => {
                if tokio::time::Instant::now() >= deadline {
                    return Err(ApiError::NotFound(format!("stream {id} not found")));
                }
                tokio::time::sleep(SETTLE_POLL).await;
                continue;
            }
            Ok(None) | Err(crate::store::Error::Corrupt { .. }) => None,
            Err(e) => return Err(e.into()),
        };
        return if who.may_access(id.as_str(), owner.as_deref()) {
            Ok(())
        } else {
            Err(forbidden(id))
        };
    }
}

/// How often a claimant's wait looks for the record.
const SETTLE_POLL: Duration = Duration::from_millis(20);

/// Checks that `who` may request streams of `event_type`.
pub fn authorize_type(who: &Identity, event_type: &EventType) -> Result<(), ApiError> {
    let kind = event_type.kind();
    if who.may_request(&kind) {
        Ok(())
    } else {
        Err(ApiError::Forbidden(format!(
            "this token may not request {kind} streams"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> StreamId {
        StreamId::parse(s).unwrap()
    }

    #[test]
    fn pending_owners_are_bounded() {
        let p = PendingOwners::default();
        for i in 0..PENDING_OWNERS + 10 {
            assert_eq!(p.claim(&id(&format!("s{i}")), "alice"), Claim::New);
        }
        assert_eq!(p.owner(&id("s0")), None, "oldest forgotten");
        let last = format!("s{}", PENDING_OWNERS + 9);
        assert_eq!(p.owner(&id(&last)).as_deref(), Some("alice"));
        assert_eq!(p.inner.lock().unwrap().owners.len(), PENDING_OWNERS);
    }

    #[test]
    fn the_first_claim_wins_until_released() {
        let p = PendingOwners::default();
        assert_eq!(p.claim(&id("x"), "alice"), Claim::New);
        assert_eq!(p.claim(&id("x"), "bob"), Claim::Held("alice".into()));
        assert_eq!(p.claim(&id("x"), "alice"), Claim::Held("alice".into()));
        assert_eq!(
            p.owner(&id("x")).as_deref(),
            Some("alice"),
            "not overwritten"
        );
        p.release(&id("x"));
        assert_eq!(p.claim(&id("x"), "bob"), Claim::New);
        assert_eq!(p.owner(&id("x")).as_deref(), Some("bob"));
    }
}
