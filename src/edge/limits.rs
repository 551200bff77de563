//! Abuse limits at the edge: open connections (in all and per client IP), live subscribers per
//! stream, and the stream request rate per identity. Each admission is a guard that releases its
//! slot when dropped, so a panic or an early return cannot leak a slot, and each keyed table holds
//! only keys with a live guard (or, for rates, keys active within one refill), so no client can
//! grow it without bound.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use super::ApiError;
use crate::settings::LimitsSettings;

/// Counts live holders per key, up to a cap per key.
pub struct Slots<K: Hash + Eq + Clone> {
    counts: Arc<Mutex<HashMap<K, usize>>>,
    cap: usize,
}

/// A held slot; dropping it frees the slot (and the key, at zero).
pub struct Slot<K: Hash + Eq + Clone> {
    counts: Arc<Mutex<HashMap<K, usize>>>,
    key: K,
}

impl<K: Hash + Eq + Clone> Slots<K> {
    /// At most `cap` holders per key.
    pub fn new(cap: usize) -> Slots<K> {
        Slots {
            counts: Arc::default(),
            cap,
        }
    }

    /// Takes a slot for `key`, or `None` if `cap` are held.
    pub fn take(&self, key: &K) -> Option<Slot<K>> {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let n = counts.entry(key.clone()).or_insert(0);
        if *n >= self.cap {
            return None;
        }
        *n += 1;
        Some(Slot {
            counts: self.counts.clone(),
            key: key.clone(),
        })
    }

    /// Keys with at least one holder.
    pub fn keys(&self) -> usize {
        self.counts.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

impl<K: Hash + Eq + Clone> Drop for Slot<K> {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = counts.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `limits.max_connections` are open.
    Total,
    /// `limits.max_connections_per_ip` are open from this address.
    PerIp,
}

impl Refusal {
    /// The refusal as an API error (503 or 429).
    pub fn error(self, limits: &LimitsSettings) -> ApiError {
        match self {
            Refusal::Total => ApiError::Overloaded {
                code: "too_many_connections",
                message: format!(
                    "the server holds its maximum of {} connections (limits.max_connections)",
                    limits.max_connections
                ),
            },
            Refusal::PerIp => ApiError::TooMany {
                code: "too_many_connections_per_ip",
                message: format!(
                    "this address holds its maximum of {} connections (limits.max_connections_per_ip)",
                    limits.max_connections_per_ip
                ),
                retry_after: 1,
            },
        }
    }
}

/// Admits TCP connections: at most `max_connections` in all and `max_connections_per_ip` from
/// one address. Shared by the HTTP and gRPC listeners.
pub struct Gate {
    open: Arc<AtomicUsize>,
    max: usize,
    per_ip: Slots<IpAddr>,
}

/// An admitted connection's slots.
pub struct Admitted {
    open: Arc<AtomicUsize>,
    _ip: Slot<IpAddr>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Gate {
    /// A gate with the configured caps.
    pub fn new(limits: &LimitsSettings) -> Gate {
        Gate {
            open: Arc::default(),
            max: limits.max_connections,
            per_ip: Slots::new(limits.max_connections_per_ip),
        }
    }

    /// Admits a connection from `ip`, or says which cap it would cross.
    pub fn admit(&self, ip: IpAddr) -> Result<Admitted, Refusal> {
        let n = self.open.fetch_add(1, Ordering::AcqRel);
        if n >= self.max {
            self.open.fetch_sub(1, Ordering::AcqRel);
            return Err(Refusal::Total);
        }
        match self.per_ip.take(&ip) {
            Some(slot) => Ok(Admitted {
                open: self.open.clone(),
                _ip: slot,
            }),
            None => {
                self.open.fetch_sub(1, Ordering::AcqRel);
                Err(Refusal::PerIp)
            }
        }
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }
}

/// The stream request rate per identity: a token bucket per key (`governor`).
pub struct RequestRate {
    limiter: DefaultKeyedRateLimiter<String>,
    max_keys: usize,
    rate: NonZeroU32,
}

impl RequestRate {
    /// `requests_per_second` with `request_burst`, over at most `max_tracked_identities` keys.
    pub fn new(limits: &LimitsSettings) -> RequestRate {
        let rate = NonZeroU32::new(limits.requests_per_second).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(limits.request_burst).unwrap_or(NonZeroU32::MIN);
        RequestRate {
            limiter: RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst)),
            max_keys: limits.max_tracked_identities,
            rate,
        }
    }

    /// Takes one request from `key`'s bucket, or says how long until one is available.
    pub fn check(&self, key: &str) -> Result<(), ApiError> {
        if self.limiter.len() >= self.max_keys {
            // Keys whose buckets are full again carry no state worth keeping.
            self.limiter.retain_recent();
            if self.limiter.len() >= self.max_keys {
                return Err(ApiError::Overloaded {
                    code: "rate_table_full",
                    message: "too many clients are making requests at once".into(),
                });
            }
        }
        let key = key.to_owned();
        self.limiter.check_key(&key).map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            ApiError::TooMany {
                code: "rate_limited",
                message: format!(
                    "over {} stream requests per second (limits.requests_per_second)",
                    self.rate
                ),
                retry_after: wait.as_secs_f64().ceil().max(1.0) as u64,
            }
        })
    }

    /// Forgets identities whose buckets have refilled; run periodically.
    pub fn sweep(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_free_on_drop_and_forget_empty_keys() {
        let slots = Slots::new(2);
        let a = slots.take(&"s").unwrap();
        let b = slots.take(&"s").unwrap();
        assert!(slots.take(&"s").is_none(), "a third holder crosses the cap");
        assert!(slots.take(&"t").is_some(), "other keys are unaffected");
        drop(a);
        let c = slots.take(&"s").unwrap();
        drop((b, c));
        assert_eq!(slots.keys(), 0, "no key outlives its last holder");
    }

    #[test]
    fn the_gate_caps_total_and_per_ip() {
        let limits = LimitsSettings {
            max_connections: 3,
            max_connections_per_ip: 2,
            ..LimitsSettings::default()
        };
        let gate = Gate::new(&limits);
        let (one, two): (IpAddr, IpAddr) =
            ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let a = gate.admit(one).unwrap();
        let _b = gate.admit(one).unwrap();
        assert_eq!(gate.admit(one).err(), Some(Refusal::PerIp));
        let _c = gate.admit(two).unwrap();
        assert_eq!(gate.admit(two).err(), Some(Refusal::Total));
        assert_eq!(gate.open(), 3);
        drop(a);
        assert!(gate.admit(two).is_ok());
    }

    #[test]
    fn the_rate_refuses_past_the_burst_per_identity_only() {
        let limits = LimitsSettings {
            requests_per_second: 1,
            request_burst: 2,
            ..LimitsSettings::default()
        };
        let rate = RequestRate::new(&limits);
        assert!(rate.check("a").is_ok() && rate.check("a").is_ok());
        let err = rate.check("a").unwrap_err();
        assert_eq!((err.code(), err.retry_after()), ("rate_limited", Some(1)));
        assert!(rate.check("b").is_ok(), "another identity is unaffected");
    }
}
