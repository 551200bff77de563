//! Authorisation: what an authenticated caller may do with a stream or a type.
//!
//! A caller reads or cancels a stream it owns (the record's `owner` is the `sub` that requested
//! it) or one its `streams` patterns match; it requests types its `types` patterns match;
//! administrators do anything. A stream that does not exist and a stream the caller may not see
//! get the same `403 forbidden`, so ids cannot be probed. Streams requested through this instance
//! but not yet recorded by intake are remembered briefly (bounded), so a client can subscribe
//! straight after its request.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Mutex;

use super::auth::Identity;
use super::{ApiError, Shared};
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

/// Streams requested through this instance, by id, with their owner; the oldest are forgotten
/// past `PENDING_OWNERS`.
#[derive(Default)]
pub struct PendingOwners {
    inner: Mutex<(HashMap<String, String>, VecDeque<String>)>,
}

impl PendingOwners {
    /// Remembers that `owner` requested `id`.
    pub fn insert(&self, id: &StreamId, owner: &str) {
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let (map, order) = &mut *guard;
        if map.insert(id.to_string(), owner.to_owned()).is_none() {
            order.push_back(id.to_string());
        }
        while order.len() > PENDING_OWNERS {
            if let Some(old) = order.pop_front() {
                map.remove(&old);
            }
        }
    }

    /// The owner of a stream requested here, if remembered.
    pub fn owner(&self, id: &StreamId) -> Option<String> {
        let guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        guard.0.get(id.as_str()).cloned()
    }
}

/// The refusal for a stream the caller may not see, worded the same whether it exists or not.
pub(crate) fn forbidden(id: &StreamId) -> ApiError {
    ApiError::Forbidden(format!(
        "stream {id} does not exist or this token does not grant it"
    ))
}

/// Checks that `who` may read or cancel stream `id`.
pub async fn authorize(state: &Shared, who: &Identity, id: &StreamId) -> Result<(), ApiError> {
    if who.may_access_by_pattern(id.as_str()) {
        return Ok(());
    }
    if who.subject().is_none() {
        return Err(forbidden(id));
    }
    let owner = match state.store.get(id.as_str()).await {
        Ok(Some(record)) => record.request.owner,
        Ok(None) => state.pending.owner(id),
        Err(crate::store::Error::Corrupt { .. }) => None,
        Err(e) => return Err(e.into()),
    };
    if who.may_access(id.as_str(), owner.as_deref()) {
        Ok(())
    } else {
        Err(forbidden(id))
    }
}

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

    #[test]
    fn pending_owners_are_bounded() {
        let p = PendingOwners::default();
        for i in 0..PENDING_OWNERS + 10 {
            p.insert(&StreamId::parse(&format!("s{i}")).unwrap(), "alice");
        }
        assert_eq!(
            p.owner(&StreamId::parse("s0").unwrap()),
            None,
            "oldest forgotten"
        );
        let last = format!("s{}", PENDING_OWNERS + 9);
        assert_eq!(
            p.owner(&StreamId::parse(&last).unwrap()).as_deref(),
            Some("alice")
        );
        assert_eq!(p.inner.lock().unwrap().0.len(), PENDING_OWNERS);
    }
}
