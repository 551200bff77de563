//! Per-owner budgets for Durable Streams: how many streams one owner holds, against
//! `durable.max_streams_per_owner`, and how many bytes of their own those streams hold, against
//! `durable.max_bytes_per_owner`. A stream without an owner (an administrator's) counts only
//! against the server's budgets, which `Durable` keeps.
//!
//! The table holds an entry only for an owner with a stream or a byte held, so its size is
//! bounded by `durable.max_streams`. A stream slot is a guard: a creation that fails part way
//! frees the slot when the guard drops.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::settings::DurableSettings;

/// Which of an owner's budgets a request would cross.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Over {
    /// `durable.max_streams_per_owner`.
    Streams(usize),
    /// `durable.max_bytes_per_owner`.
    Bytes(usize),
}

impl Over {
    /// A sentence for the refused caller.
    pub fn message(self) -> String {
        match self {
            Over::Streams(n) => format!(
                "this owner holds {n} streams, the most one owner may (durable.max_streams_per_owner)"
            ),
            Over::Bytes(n) => format!(
                "this owner's streams hold {n} bytes, the most one owner may (durable.max_bytes_per_owner)"
            ),
        }
    }
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Usage {
    streams: usize,
    bytes: usize,
}

type Table = Arc<Mutex<HashMap<String, Usage>>>;

/// Every owner's usage.
pub struct Quotas {
    table: Table,
    max_streams: usize,
    max_bytes: usize,
}

/// A stream slot an owner holds; dropping it frees the slot unless [`StreamSlot::keep`] was
/// called.
pub struct StreamSlot {
    table: Table,
    owner: Option<String>,
}

impl StreamSlot {
    /// The stream was created: the slot stays taken until [`Quotas::drop_stream`].
    pub fn keep(mut self) {
        self.owner = None;
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        if let Some(owner) = self.owner.take() {
            change(&self.table, &owner, |u| {
                u.streams = u.streams.saturating_sub(1)
            });
        }
    }
}

fn lock(table: &Table) -> std::sync::MutexGuard<'_, HashMap<String, Usage>> {
    table.lock().unwrap_or_else(|p| p.into_inner())
}

/// Applies `f` to `owner`'s usage, forgetting the owner once nothing is held.
fn change(table: &Table, owner: &str, f: impl FnOnce(&mut Usage)) {
    let mut t = lock(table);
    let u = t.entry(owner.to_owned()).or_default();
    f(u);
    if *u == Usage::default() {
        t.remove(owner);
    }
}

impl Quotas {
    /// The budgets `settings` name.
    pub fn new(settings: &DurableSettings) -> Quotas {
        Quotas {
            table: Table::default(),
            max_streams: settings.max_streams_per_owner,
            max_bytes: settings.max_bytes_per_owner,
        }
    }

    /// Takes a stream slot for `owner` (always, for none), or says the owner holds its most.
    pub fn admit_stream(&self, owner: Option<&str>) -> Result<StreamSlot, Over> {
        let slot = |owner: Option<String>| StreamSlot {
            table: self.table.clone(),
            owner,
        };
        let Some(owner) = owner else {
            return Ok(slot(None));
        };
        let mut t = lock(&self.table);
        if t.get(owner).is_some_and(|u| u.streams >= self.max_streams) {
            return Err(Over::Streams(self.max_streams));
        }
        t.entry(owner.to_owned()).or_default().streams += 1;
        Ok(slot(Some(owner.to_owned())))
    }

    /// Frees the slot of `owner`'s stream that was deleted or expired.
    pub fn drop_stream(&self, owner: Option<&str>) {
        if let Some(owner) = owner {
            change(&self.table, owner, |u| {
                u.streams = u.streams.saturating_sub(1)
            });
        }
    }

    /// Counts a stream restored at start-up and its bytes, even past the budgets: they are
    /// already stored.
    pub fn restored(&self, owner: Option<&str>, bytes: usize) {
        if let Some(owner) = owner {
            change(&self.table, owner, |u| {
                u.streams += 1;
                u.bytes += bytes;
            });
        }
    }

    /// Reserves `n` bytes of `owner`'s budget, or says it is spent.
    pub fn reserve(&self, owner: Option<&str>, n: usize) -> Result<(), Over> {
        let Some(owner) = owner else {
            return Ok(());
        };
        let mut t = lock(&self.table);
        let held = t.get(owner).map_or(0, |u| u.bytes);
        if held + n > self.max_bytes {
            return Err(Over::Bytes(self.max_bytes));
        }
        t.entry(owner.to_owned()).or_default().bytes += n;
        Ok(())
    }

    /// Returns `n` bytes to `owner`'s budget.
    pub fn release(&self, owner: Option<&str>, n: usize) {
        if let Some(owner) = owner {
            change(&self.table, owner, |u| u.bytes = u.bytes.saturating_sub(n));
        }
    }

    /// Owners with something held: the table's size.
    #[cfg(test)]
    pub fn owners(&self) -> usize {
        lock(&self.table).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quotas(streams: usize, bytes: usize) -> Quotas {
        Quotas::new(&DurableSettings {
            max_streams_per_owner: streams,
            max_bytes_per_owner: bytes,
            ..DurableSettings::default()
        })
    }

    #[test]
    fn an_owner_holds_at_most_its_streams_and_a_failed_creation_frees_its_slot() {
        let q = quotas(2, 100);
        let a = q.admit_stream(Some("alice")).unwrap();
        let b = q.admit_stream(Some("alice")).unwrap();
        assert_eq!(q.admit_stream(Some("alice")).err(), Some(Over::Streams(2)));
        assert!(
            q.admit_stream(Some("bob")).is_ok(),
            "another owner is unaffected"
        );
        assert!(
            q.admit_stream(None).is_ok(),
            "an unowned stream is not counted"
        );
        a.keep();
        drop(b);
        let c = q
            .admit_stream(Some("alice"))
            .expect("the dropped slot is free");
        c.keep();
        assert_eq!(q.admit_stream(Some("alice")).err(), Some(Over::Streams(2)));
        q.drop_stream(Some("alice"));
        q.drop_stream(Some("alice"));
        assert_eq!(q.owners(), 0, "no owner outlives what it holds");
    }

    #[test]
    fn an_owners_bytes_are_capped_across_its_streams() {
        let q = quotas(10, 100);
        q.restored(Some("alice"), 60);
        assert_eq!(q.reserve(Some("alice"), 41), Err(Over::Bytes(100)));
        assert_eq!(q.reserve(Some("alice"), 40), Ok(()));
        assert_eq!(q.reserve(Some("alice"), 1), Err(Over::Bytes(100)));
        assert_eq!(q.reserve(Some("bob"), 100), Ok(()));
        assert_eq!(q.reserve(None, usize::MAX / 2), Ok(()));
        q.release(Some("alice"), 100);
        q.drop_stream(Some("alice"));
        q.release(Some("bob"), 100);
        assert_eq!(q.owners(), 0);
    }
}
