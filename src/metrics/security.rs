//! Security metrics and logs: edge refusals (`sluice_edge_rejected_total{reason}`), logged at
//! debug each plus a warn summary at most every `SUMMARY_EVERY` so a flood of bad requests cannot
//! flood the log, and JWKS reloads (`sluice_auth_jwks_reloads_total{result}`).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use prometheus::{IntCounterVec, Opts, Registry};

use super::{names, Metrics};

/// The most often a rejection summary is logged at warn.
pub const SUMMARY_EVERY: Duration = Duration::from_secs(10);

/// Rejections counted since the last summary (none yet: the first is summarised at once).
struct Window {
    since: Option<Instant>,
    counts: BTreeMap<String, u64>,
}

/// The security metric families and the rejection summary window.
pub(super) struct SecurityMetrics {
    jwks_reloads: IntCounterVec,
    window: Mutex<Window>,
}

impl SecurityMetrics {
    pub(super) fn new(registry: &Registry) -> Result<SecurityMetrics, prometheus::Error> {
        let jwks_reloads = IntCounterVec::new(
            Opts::new(
                names::JWKS_RELOADS,
                "Reloads of auth.jwks_file after it changed, by result (ok, error).",
            ),
            &["result"],
        )?;
        registry.register(Box::new(jwks_reloads.clone()))?;
        for r in ["ok", "error"] {
            jwks_reloads.with_label_values(&[r]).inc_by(0);
        }
        Ok(SecurityMetrics {
            jwks_reloads,
            window: Mutex::new(Window {
                since: None,
                counts: BTreeMap::new(),
            }),
        })
    }
}

impl Metrics {
    /// An edge request, frame or connection was refused. `reason` must come from a fixed set.
    pub fn edge_rejected(&self, reason: &str, detail: &str) {
        tracing::debug!(reason, detail, "edge request rejected");
        self.edge_rejected.with_label_values(&[reason]).inc();
        let Ok(mut w) = self.security.window.lock() else {
            return;
        };
        if let Some(n) = w.counts.get_mut(reason) {
            *n += 1;
        } else {
            w.counts.insert(reason.to_owned(), 1);
        }
        let window = w.since.map(|s| s.elapsed());
        if window.is_none_or(|d| d >= SUMMARY_EVERY) {
            let counts = std::mem::take(&mut w.counts);
            let total: u64 = counts.values().sum();
            w.since = Some(Instant::now());
            drop(w);
            let window_s = window.map_or(0, |d| d.as_secs());
            tracing::warn!(
                total,
                ?counts,
                last_detail = detail,
                window_s,
                "edge requests rejected"
            );
        }
    }

    /// `auth.jwks_file` was re-read after a change.
    pub fn jwks_reload(&self, ok: bool, detail: &str) {
        if ok {
            tracing::info!(file = detail, "JWKS reloaded");
        } else {
            tracing::warn!(
                error = detail,
                "JWKS reload failed; keeping the previous keys"
            );
        }
        let result = if ok { "ok" } else { "error" };
        self.security
            .jwks_reloads
            .with_label_values(&[result])
            .inc();
    }
}
