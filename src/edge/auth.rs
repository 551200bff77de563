//! Authentication: turns a presented bearer token into an [`Identity`]. Static tokens
//! (`edge.api_tokens`) are administrators, compared in constant time over SHA-256 digests so
//! neither content nor length leaks; JWTs are verified against the `[auth]` keys, whose JWKS file
//! is re-read when it changes. With no static token and no JWT key configured, everyone is an
//! administrator (authentication is off).
//!
//! What an identity may do with a given stream is decided in `access`, not here.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use ring::digest::{digest, SHA256};
use subtle::ConstantTimeEq;
use tokio_util::sync::CancellationToken;

pub use sluice_wire::token::Identity;
use sluice_wire::token::{Keyring, Policy, TokenError};

use super::ApiError;
use crate::metrics::Metrics;
use crate::settings::{AuthSettings, EdgeSettings};

/// A key file could not be used at start-up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be read.
    #[error("{key} {path}: {source}")]
    Read {
        /// The settings key naming the file.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file holds no usable key.
    #[error("{key} {path}: {source}")]
    Key {
        /// The settings key naming the file.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: TokenError,
    },
}

type Digest = [u8; 32];

fn sha256(bytes: &[u8]) -> Digest {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest(&SHA256, bytes).as_ref());
    out
}

/// Whether `presented` equals any of `digests`: every digest is compared, in constant time.
fn matches_any(digests: &[Digest], presented: &str) -> bool {
    let d = sha256(presented.as_bytes());
    digests
        .iter()
        .fold(subtle::Choice::from(0), |acc, k| acc | k.ct_eq(&d))
        .into()
}

/// Verifies bearer tokens.
pub struct Authenticator {
    admins: Vec<Digest>,
    metrics_token: Option<Digest>,
    /// The JWT keys; replaced whole when the JWKS file changes.
    keyring: RwLock<Arc<Keyring>>,
    policy: Policy,
    settings: AuthSettings,
}

impl Authenticator {
    /// Reads every configured key; a missing or unusable key file stops start-up.
    pub fn new(edge: &EdgeSettings, auth: &AuthSettings) -> Result<Authenticator, Error> {
        Ok(Authenticator {
            admins: edge
                .api_tokens
                .iter()
                .map(|t| sha256(t.as_bytes()))
                .collect(),
            metrics_token: (!edge.metrics_token.is_empty())
                .then(|| sha256(edge.metrics_token.as_bytes())),
            keyring: RwLock::new(Arc::new(load_keys(auth, None)?)),
            policy: Policy {
                issuers: auth.issuers.clone(),
                audiences: auth.audiences.clone(),
                leeway_secs: auth.leeway.as_secs(),
            },
            settings: auth.clone(),
        })
    }

    /// Whether callers must present a token.
    pub fn required(&self) -> bool {
        self.settings.jwt_enabled() || !self.admins.is_empty()
    }

    /// The identity a presented token grants, or why it grants none.
    pub fn identify(&self, token: Option<&str>) -> Result<Identity, ApiError> {
        if !self.required() {
            return Ok(Identity::admin());
        }
        let token = token
            .filter(|t| !t.is_empty())
            .ok_or(ApiError::Unauthorized("missing_token"))?;
        if matches_any(&self.admins, token) {
            return Ok(Identity::admin());
        }
        if !self.settings.jwt_enabled() {
            return Err(ApiError::Unauthorized("invalid_token"));
        }
        let keyring = self.keyring.read().map(|k| k.clone());
        let keyring = keyring.map_err(|_| ApiError::Unauthorized("invalid_token"))?;
        keyring
            .verify(token, &self.policy)
            .map_err(|e| ApiError::Unauthorized(e.reason()))
    }

    /// Whether `token` opens `/metrics` and `/readyz` (always, when no metrics token is set).
    pub fn metrics_allowed(&self, token: Option<&str>) -> bool {
        match &self.metrics_token {
            None => true,
            Some(want) => token.is_some_and(|t| matches_any(std::slice::from_ref(want), t)),
        }
    }

    /// Re-reads `auth.jwks_file` every `auth.jwks_reload_interval` and swaps the keyring when the
    /// file's bytes change. A file that no longer parses keeps the previous keys (logged and
    /// counted), so a half-written file never locks everyone out.
    pub async fn watch(self: Arc<Self>, metrics: Arc<Metrics>, stop: CancellationToken) {
        let Some(path) = self.settings.jwks_file.clone() else {
            return;
        };
        let mut seen = std::fs::read(&path).ok();
        let mut tick = tokio::time::interval(self.settings.jwks_reload_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let bytes = match tokio::fs::read(&path).await {
                Ok(b) => b,
                Err(e) => {
                    metrics.jwks_reload(false, &format!("{}: {e}", path.display()));
                    continue;
                }
            };
            if seen.as_ref() == Some(&bytes) {
                continue;
            }
            match load_keys(&self.settings, Some(&bytes)) {
                Ok(keys) => {
                    if let Ok(mut k) = self.keyring.write() {
                        *k = Arc::new(keys);
                    }
                    metrics.jwks_reload(true, &path.display().to_string());
                }
                Err(e) => metrics.jwks_reload(false, &e.to_string()),
            }
            seen = Some(bytes);
        }
    }
}

/// Builds the keyring from every configured source; `jwks` is the JWKS file's content when the
/// caller has just read it.
fn load_keys(auth: &AuthSettings, jwks: Option<&[u8]>) -> Result<Keyring, Error> {
    let mut ring = Keyring::default();
    if !auth.jwt_secret.is_empty() {
        ring.add_hs256(auth.jwt_secret.as_bytes());
    }
    let read = |key: &'static str, path: &PathBuf| {
        std::fs::read(path).map_err(|source| Error::Read {
            key,
            path: path.clone(),
            source,
        })
    };
    for path in &auth.jwt_public_keys {
        let pem = read("auth.jwt_public_keys", path)?;
        ring.add_pem(&pem).map_err(|source| Error::Key {
            key: "auth.jwt_public_keys",
            path: path.clone(),
            source,
        })?;
    }
    if let Some(path) = &auth.jwks_file {
        let read_now;
        let json = match jwks {
            Some(bytes) => bytes,
            None => {
                read_now = read("auth.jwks_file", path)?;
                &read_now
            }
        };
        ring.add_jwks(json).map_err(|source| Error::Key {
            key: "auth.jwks_file",
            path: path.clone(),
            source,
        })?;
    }
    Ok(ring)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_tokens_match_exactly_whatever_their_length() {
        let digests = vec![sha256(b"alpha-token"), sha256(b"beta")];
        assert!(matches_any(&digests, "alpha-token"));
        assert!(matches_any(&digests, "beta"));
        for wrong in ["alpha", "alpha-token ", "bet", "", "beta\0"] {
            assert!(!matches_any(&digests, wrong), "{wrong:?}");
        }
    }

    #[test]
    fn without_any_key_everyone_is_admin_and_with_one_a_token_is_required() {
        let open = Authenticator::new(&EdgeSettings::default(), &AuthSettings::default()).unwrap();
        assert!(open.identify(None).unwrap().is_admin());
        let edge = EdgeSettings {
            api_tokens: vec!["t".into()],
            ..EdgeSettings::default()
        };
        let closed = Authenticator::new(&edge, &AuthSettings::default()).unwrap();
        assert_eq!(closed.identify(None).unwrap_err().code(), "missing_token");
        assert_eq!(
            closed.identify(Some("u")).unwrap_err().code(),
            "invalid_token"
        );
        assert!(closed.identify(Some("t")).unwrap().is_admin());
    }

    #[test]
    fn a_missing_key_file_names_its_key() {
        let auth = AuthSettings {
            jwt_public_keys: vec!["/nonexistent/key.pem".into()],
            ..AuthSettings::default()
        };
        let err = Authenticator::new(&EdgeSettings::default(), &auth)
            .err()
            .unwrap();
        assert!(err.to_string().contains("auth.jwt_public_keys"), "{err}");
    }
}
