//! Who may do what with a Durable Stream or a subscription.
//!
//! A stream is owned by the `sub` of the token that created it (none for an administrator's
//! token without one, or a stream saved before streams had owners). Claims name Durable Streams
//! as `streams` patterns over `ds:<path>` (`ds:rooms/42/*`; `*` matches any run of characters,
//! slashes included):
//!
//! * **read** (`GET`, `HEAD`, SSE, long-poll, forking it): its owner, a matching pattern or an
//!   administrator; a fork is read only by whoever may also read its source, and its source's;
//! * **write** (`POST`, `DELETE`, a `PUT` that re-confirms it): its owner or an administrator;
//! * **create**: a token with a `sub` (which becomes the owner) or an administrator.
//!
//! A subscription is owned the same way, and only its owner or an administrator manages or claims
//! it. It sees (links, lists, wakes for) the streams its owner owns, every stream for one an
//! administrator created; a token's patterns do not extend it.
//!
//! A stream the caller may not reach is answered exactly as a missing one. This module decides;
//! the handlers answer.

use crate::edge::auth::Identity;
use serde::{Deserialize, Serialize};

use super::state::DsStream;

/// What a request does to a stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verb {
    /// Reads it (or forks it).
    Read,
    /// Appends to it, closes, deletes or re-confirms it.
    Write,
}

/// The name `streams` patterns match a stream by: `ds:` and its path below `/v1/stream/`.
pub fn claim_name(path: &str) -> String {
    let rel = path.strip_prefix("/v1/stream/").unwrap_or(path);
    format!("ds:{}", rel.trim_matches('/'))
}

/// Whether `who` may do `verb` to `stream`.
pub fn allows(who: &Identity, stream: &DsStream, verb: Verb) -> bool {
    if who.is_admin() {
        return true;
    }
    match verb {
        Verb::Write => owns(who, stream.owner()),
        Verb::Read => stream
            .lineage()
            .all(|(path, owner)| who.may_access(&claim_name(path), owner)),
    }
}

/// Whether `who` is the owner `owner` names (never for an unowned thing).
fn owns(who: &Identity, owner: Option<&str>) -> bool {
    who.subject().is_some() && who.subject() == owner
}

/// A token that may create nothing: no `sub`, and not an administrator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoSubject;

/// The owner a thing `who` creates gets, or [`NoSubject`].
pub fn creator(who: &Identity) -> Result<Option<String>, NoSubject> {
    match who.subject() {
        Some(sub) => Ok(Some(sub.to_owned())),
        None if who.is_admin() => Ok(None),
        None => Err(NoSubject),
    }
}

/// A subscription's owner, and what it sees.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubOwner {
    /// The `sub` that created it.
    pub owner: Option<String>,
    /// Created by an administrator: it sees every stream.
    pub admin: bool,
}

impl SubOwner {
    /// The owner of a subscription `who` creates; `Err` when `who` may not create one.
    pub fn of(who: &Identity) -> Result<SubOwner, NoSubject> {
        Ok(SubOwner {
            owner: creator(who)?,
            admin: who.is_admin(),
        })
    }

    /// Whether `who` may read, claim or delete the subscription.
    pub fn managed_by(&self, who: &Identity) -> bool {
        who.is_admin() || owns(who, self.owner.as_deref())
    }

    /// Whether the subscription may append its wake events to `stream`.
    pub fn may_write(&self, stream: &DsStream) -> bool {
        self.admin || stream.owner() == self.owner.as_deref()
    }

    /// Whether the subscription sees `stream`: an administrator's sees all; another sees the
    /// streams (and forks' sources) owned by its owner. A subscription saved before owners
    /// existed has none and sees the unowned streams, as before.
    pub fn sees(&self, stream: &DsStream) -> bool {
        self.admin
            || stream
                .lineage()
                .all(|(_, owner)| owner == self.owner.as_deref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claim_names_are_ds_and_the_path_below_the_stream_root() {
        assert_eq!(claim_name("/v1/stream/rooms/42/a"), "ds:rooms/42/a");
        assert_eq!(claim_name("/v1/stream/x/"), "ds:x");
    }
}
