//! Access tokens: JWTs verified against a keyring (HS256 secrets, RS256/ES256 public keys, JWKS),
//! their claims, and the identity they grant.
//!
//! A token names a subject (`sub`), the streams it may read or cancel beyond its own (`streams`,
//! patterns such as `conv456-*`), the `service:action` types it may request (`types`), and whether
//! it is an administrator (`admin`). Absent `streams` and `types` grant nothing beyond owned
//! streams: access is denied unless a claim allows it. Key files, reloading and static tokens
//! belong to the edge; this module only decides what a presented token is worth.

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

/// Longest token accepted; longer ones are refused before any decoding.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// Most patterns in one `streams` or `types` claim.
pub const MAX_PATTERNS: usize = 64;
/// Longest single pattern.
pub const MAX_PATTERN_LEN: usize = 256;

/// Why a token was refused. `reason()` is a bounded label; the client sees only "invalid token".
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// Over `MAX_TOKEN_BYTES`.
    #[error("token is over {MAX_TOKEN_BYTES} bytes")]
    TooLong,
    /// Not a JWT, or a JWT whose signature, algorithm, time or audience checks failed.
    #[error("{0}")]
    Jwt(#[from] jsonwebtoken::errors::Error),
    /// No configured key verifies the token's algorithm and key id.
    #[error("no key for algorithm {0:?}")]
    NoKey(Algorithm),
    /// The `sub`, `streams` or `types` claim is over the limits.
    #[error("claim {0} has too many or too long patterns")]
    Claims(&'static str),
}

impl TokenError {
    /// A short, bounded label for metrics and logs.
    pub fn reason(&self) -> &'static str {
        use jsonwebtoken::errors::ErrorKind as K;
        match self {
            TokenError::TooLong => "token_too_long",
            TokenError::NoKey(_) => "token_no_key",
            TokenError::Claims(_) => "token_claims",
            TokenError::Jwt(e) => match e.kind() {
                K::ExpiredSignature => "token_expired",
                K::ImmatureSignature => "token_not_yet_valid",
                K::InvalidSignature => "token_signature",
                K::InvalidAudience => "token_audience",
                K::InvalidIssuer => "token_issuer",
                K::InvalidAlgorithm => "token_algorithm",
                K::MissingRequiredClaim(_) => "token_missing_claim",
                _ => "token_malformed",
            },
        }
    }
}

/// The claims Sluice reads; `exp`, `nbf`, `iss` and `aud` are checked by the verifier.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Claims {
    /// The subject: owner of the streams this token requests.
    #[serde(default)]
    pub sub: Option<String>,
    /// Patterns of stream ids this token may read or cancel.
    #[serde(default)]
    pub streams: Vec<String>,
    /// Patterns of `service:action` types this token may request.
    #[serde(default)]
    pub types: Vec<String>,
    /// Full access.
    #[serde(default)]
    pub admin: bool,
    /// Expiry, in seconds since the epoch (required and checked by the verifier).
    #[serde(default)]
    pub exp: Option<i64>,
}

/// Who is calling and what they may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    subject: Option<String>,
    streams: Vec<String>,
    types: Vec<String>,
    admin: bool,
    expires_at: Option<i64>,
}

impl Identity {
    /// Full access: a static API token, or any caller when authentication is off.
    pub fn admin() -> Identity {
        Identity {
            subject: None,
            streams: Vec::new(),
            types: Vec::new(),
            admin: true,
            expires_at: None,
        }
    }

    /// The identity granted by verified claims, refused if a claim is over the limits.
    pub fn from_claims(claims: Claims) -> Result<Identity, TokenError> {
        let bounded = |p: &Vec<String>| {
            p.len() <= MAX_PATTERNS && p.iter().all(|s| s.len() <= MAX_PATTERN_LEN)
        };
        if !bounded(&claims.streams) {
            return Err(TokenError::Claims("streams"));
        }
        if !bounded(&claims.types) {
            return Err(TokenError::Claims("types"));
        }
        if claims
            .sub
            .as_ref()
            .is_some_and(|s| s.len() > crate::event::MAX_OWNER_LEN)
        {
            return Err(TokenError::Claims("sub"));
        }
        Ok(Identity {
            subject: claims.sub.filter(|s| !s.is_empty()),
            streams: claims.streams,
            types: claims.types,
            admin: claims.admin,
            expires_at: claims.exp,
        })
    }

    /// When the token that granted this identity stops being accepted (its `exp` plus the
    /// leeway), in seconds since the epoch; `None` for a static token or no authentication.
    pub fn expires_at(&self) -> Option<i64> {
        self.expires_at
    }

    /// The subject, recorded as the owner of streams this identity requests.
    pub fn subject(&self) -> Option<&str> {
        self.subject.as_deref()
    }

    /// Whether this identity has full access.
    pub fn is_admin(&self) -> bool {
        self.admin
    }

    /// Whether this identity may read or cancel the stream `id` owned by `owner`.
    pub fn may_access(&self, id: &str, owner: Option<&str>) -> bool {
        self.admin
            || (self.subject.is_some() && owner == self.subject.as_deref())
            || self.streams.iter().any(|p| glob(p, id))
    }

    /// Whether a stream id alone grants access, before its owner is known.
    pub fn may_access_by_pattern(&self, id: &str) -> bool {
        self.admin || self.streams.iter().any(|p| glob(p, id))
    }

    /// Whether this identity may request streams of `kind` (`service:action`).
    pub fn may_request(&self, kind: &str) -> bool {
        self.admin || self.types.iter().any(|p| glob(p, kind))
    }
}

/// Whether `text` matches `pattern`, where `*` matches any run of characters (none included) and
/// every other character matches itself. Linear backtracking, no recursion: worst case
/// O(pattern × text) on bounded inputs.
pub fn glob(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|b| *b == b'*')
}

/// What a token must satisfy besides its signature.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// Accepted `iss` values; empty: not checked.
    pub issuers: Vec<String>,
    /// Accepted `aud` values; empty: not checked.
    pub audiences: Vec<String>,
    /// Clock skew allowed on `exp` and `nbf`, in seconds.
    pub leeway_secs: u64,
}

struct Key {
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
}

/// The keys tokens are verified with.
#[derive(Default)]
pub struct Keyring {
    keys: Vec<Key>,
}

impl Keyring {
    /// Adds an HS256 shared secret.
    pub fn add_hs256(&mut self, secret: &[u8]) {
        self.keys.push(Key {
            kid: None,
            alg: Algorithm::HS256,
            key: DecodingKey::from_secret(secret),
        });
    }

    /// Adds a PEM public key: RS256 for an RSA key, ES256 for a P-256 key.
    pub fn add_pem(&mut self, pem: &[u8]) -> Result<(), TokenError> {
        let (alg, key) = match DecodingKey::from_rsa_pem(pem) {
            Ok(k) => (Algorithm::RS256, k),
            Err(_) => (Algorithm::ES256, DecodingKey::from_ec_pem(pem)?),
        };
        self.keys.push(Key {
            kid: None,
            alg,
            key,
        });
        Ok(())
    }

    /// Adds every RS256/ES256 key of a JWKS document; returns how many were taken. Keys of other
    /// kinds are skipped.
    pub fn add_jwks(&mut self, json: &[u8]) -> Result<usize, TokenError> {
        let set: JwkSet =
            serde_json::from_slice(json).map_err(jsonwebtoken::errors::Error::from)?;
        let mut taken = 0;
        for jwk in &set.keys {
            let alg = match &jwk.algorithm {
                AlgorithmParameters::RSA(_) => Algorithm::RS256,
                AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P256 => {
                    Algorithm::ES256
                }
                _ => continue,
            };
            self.keys.push(Key {
                kid: jwk.common.key_id.clone(),
                alg,
                key: DecodingKey::from_jwk(jwk)?,
            });
            taken += 1;
        }
        Ok(taken)
    }

    /// Verifies `token` and returns the identity it grants.
    pub fn verify(&self, token: &str, policy: &Policy) -> Result<Identity, TokenError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(TokenError::TooLong);
        }
        let header = jsonwebtoken::decode_header(token)?;
        let mut validation = Validation::new(header.alg);
        validation.leeway = policy.leeway_secs;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp"]);
        if policy.issuers.is_empty() {
            validation.iss = None;
        } else {
            validation.set_issuer(&policy.issuers);
            validation.required_spec_claims.insert("iss".into());
        }
        if policy.audiences.is_empty() {
            validation.validate_aud = false;
        } else {
            validation.set_audience(&policy.audiences);
            validation.required_spec_claims.insert("aud".into());
        }
        let candidates = self.keys.iter().filter(|k| {
            k.alg == header.alg
                && match (&header.kid, &k.kid) {
                    (Some(want), Some(have)) => want == have,
                    _ => true,
                }
        });
        let mut last = None;
        for key in candidates {
            match jsonwebtoken::decode::<Claims>(token, &key.key, &validation) {
                Ok(data) => {
                    let mut identity = Identity::from_claims(data.claims)?;
                    identity.expires_at = identity
                        .expires_at
                        .map(|t| t.saturating_add(policy.leeway_secs.min(i64::MAX as u64) as i64));
                    return Ok(identity);
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.map_or(TokenError::NoKey(header.alg), TokenError::Jwt))
    }
}

#[cfg(test)]
mod tests;
