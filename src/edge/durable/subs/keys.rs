//! The keys subscriptions use: an Ed25519 key that signs webhook deliveries (published as a JWK
//! Set, kept in the store so receivers' cached keys survive restarts), and an HMAC key for the
//! callback tokens a wake hands out (scoped to one subscription and generation, valid an hour,
//! process-local: a restart issues new wakes).
//!
//! This module signs and verifies; it decides nothing about subscriptions.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{Ed25519KeyPair, KeyPair};
use ring::{digest, hmac};
use serde_json::json;

/// How long a callback token is valid, seconds.
const TOKEN_TTL_S: i64 = 3_600;

/// Why a token was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum TokenError {
    /// Not a token of this server for this subscription.
    Invalid,
    /// Past its time.
    Expired,
}

/// The webhook signing key and the token key.
pub struct Keys {
    signer: Ed25519KeyPair,
    kid: String,
    x: String,
    tokens: hmac::Key,
    rng: SystemRandom,
}

impl Keys {
    /// Keys from a saved PKCS#8 signing key, or a new one; returns the PKCS#8 bytes to save when
    /// the key is new.
    pub fn load(saved: Option<&[u8]>) -> Result<(Keys, Option<Vec<u8>>), String> {
        let rng = SystemRandom::new();
        let (pkcs8, fresh) = match saved {
            Some(b) => (b.to_vec(), false),
            None => {
                let doc = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|e| e.to_string())?;
                (doc.as_ref().to_vec(), true)
            }
        };
        let signer = Ed25519KeyPair::from_pkcs8(&pkcs8).map_err(|e| e.to_string())?;
        let x = B64.encode(signer.public_key().as_ref());
        // RFC 7638 thumbprint: the required members in lexicographic order, no spaces.
        let thumb = format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#);
        let kid = format!(
            "ds_{}",
            B64.encode(digest::digest(&digest::SHA256, thumb.as_bytes()))
        );
        let tokens = hmac::Key::generate(hmac::HMAC_SHA256, &rng).map_err(|e| e.to_string())?;
        let keys = Keys {
            signer,
            kid,
            x,
            tokens,
            rng,
        };
        Ok((keys, fresh.then_some(pkcs8)))
    }

    /// The signing key's id.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public JWK Set.
    pub fn jwks(&self) -> serde_json::Value {
        json!({"keys": [{
            "kty": "OKP", "crv": "Ed25519", "kid": self.kid, "use": "sig", "alg": "EdDSA",
            "x": self.x,
        }]})
    }

    /// The `Webhook-Signature` header for `body` sent at `now_s`.
    pub fn sign(&self, body: &str, now_s: i64) -> String {
        let sig = self.signer.sign(format!("{now_s}.{body}").as_bytes());
        format!(
            "t={now_s},kid={},ed25519={}",
            self.kid,
            B64.encode(sig.as_ref())
        )
    }

    /// Random hex, `n` bytes of it.
    pub fn random_hex(&self, n: usize) -> String {
        let mut b = vec![0u8; n];
        // The system generator does not fail on supported platforms; a zeroed id is still
        // unique enough within one wake, and tokens are signed, not random.
        let _ = self.rng.fill(&mut b);
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    /// A callback token for `sub`'s wake of `generation`.
    pub fn token(&self, sub: &str, generation: u64, now_s: i64) -> String {
        let payload = json!({
            "sub": sub, "gen": generation, "exp": now_s + TOKEN_TTL_S, "jti": self.random_hex(8),
        })
        .to_string();
        let p = B64.encode(payload);
        let tag = hmac::sign(&self.tokens, p.as_bytes());
        format!("{p}.{}", B64.encode(tag.as_ref()))
    }

    /// The generation a token for `sub` was issued for.
    pub fn verify(&self, token: &str, sub: &str, now_s: i64) -> Result<u64, TokenError> {
        let (p, tag) = token.split_once('.').ok_or(TokenError::Invalid)?;
        let tag = B64.decode(tag).map_err(|_| TokenError::Invalid)?;
        hmac::verify(&self.tokens, p.as_bytes(), &tag).map_err(|_| TokenError::Invalid)?;
        let payload = B64.decode(p).map_err(|_| TokenError::Invalid)?;
        let v: serde_json::Value =
            serde_json::from_slice(&payload).map_err(|_| TokenError::Invalid)?;
        if v["sub"].as_str() != Some(sub) {
            return Err(TokenError::Invalid);
        }
        if v["exp"].as_i64().is_none_or(|exp| exp < now_s) {
            return Err(TokenError::Expired);
        }
        v["gen"].as_u64().ok_or(TokenError::Invalid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::signature::{UnparsedPublicKey, ED25519};

    #[test]
    fn signatures_verify_with_the_published_key_and_survive_a_reload() {
        let (keys, saved) = Keys::load(None).unwrap();
        let saved = saved.expect("a new key is returned for saving");
        let header = keys.sign(r#"{"a":1}"#, 1_700_000_000);
        let (head, sig) = header.rsplit_once(",ed25519=").unwrap();
        assert_eq!(head, format!("t=1700000000,kid={}", keys.kid()));
        let x = B64
            .decode(keys.jwks()["keys"][0]["x"].as_str().unwrap())
            .unwrap();
        let public = UnparsedPublicKey::new(&ED25519, x);
        assert!(public
            .verify(br#"1700000000.{"a":1}"#, &B64.decode(sig).unwrap())
            .is_ok());
        assert!(public
            .verify(br#"1700000000.{"a":2}"#, &B64.decode(sig).unwrap())
            .is_err());
        let (again, none) = Keys::load(Some(&saved)).unwrap();
        assert!(none.is_none());
        assert_eq!(again.kid(), keys.kid());
    }

    #[test]
    fn tokens_are_scoped_to_their_subscription_and_time() {
        let (keys, _) = Keys::load(None).unwrap();
        let t = keys.token("sub-1", 7, 1_000);
        assert_eq!(keys.verify(&t, "sub-1", 1_000), Ok(7));
        assert_eq!(keys.verify(&t, "sub-2", 1_000), Err(TokenError::Invalid));
        assert_eq!(
            keys.verify(&t, "sub-1", 1_000 + TOKEN_TTL_S + 1),
            Err(TokenError::Expired)
        );
        let (other, _) = Keys::load(None).unwrap();
        assert_eq!(other.verify(&t, "sub-1", 1_000), Err(TokenError::Invalid));
        let mut forged = t.clone();
        forged.insert(3, 'x');
        assert_eq!(
            keys.verify(&forged, "sub-1", 1_000),
            Err(TokenError::Invalid)
        );
    }
}
