//! `Keyring::verify` on arbitrary token text, and on arbitrary claims signed with the configured
//! HS256 secret, against a keyring that also holds the test JWKS (RS256 and ES256 keys): never a
//! panic. Also `glob`, on a pattern and a text split from the input.
#![no_main]

use std::sync::OnceLock;

use jsonwebtoken::{encode, EncodingKey, Header};
use libfuzzer_sys::fuzz_target;
use sluice_wire::token::{glob, Keyring, Policy};

const SECRET: &[u8] = b"fuzz-secret";
const JWKS: &[u8] = include_bytes!("../../tests/fixtures/jwt/jwks.json");

fn keyring() -> &'static (Keyring, Policy) {
    static RING: OnceLock<(Keyring, Policy)> = OnceLock::new();
    RING.get_or_init(|| {
        let mut ring = Keyring::default();
        ring.add_hs256(SECRET);
        let taken = ring.add_jwks(JWKS).expect("the test JWKS loads");
        assert_eq!(taken, 2, "the test JWKS has one RSA and one P-256 key");
        let policy = Policy {
            issuers: vec!["https://issuer.example".into()],
            audiences: vec!["sluice".into()],
            leeway_secs: 5,
        };
        (ring, policy)
    })
}

fuzz_target!(|data: &[u8]| {
    let (ring, policy) = keyring();
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };

    // The input as a presented token.
    if let Ok(identity) = ring.verify(text, policy) {
        assert!(identity.subject().is_none_or(|s| !s.is_empty()));
    }
    // The input as claims, correctly signed: exercises claim validation and decoding.
    if let Ok(claims) = serde_json::from_str::<serde_json::Value>(text) {
        if let Ok(token) = encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(SECRET),
        ) {
            if let Ok(identity) = ring.verify(&token, policy) {
                assert!(
                    claims.get("exp").is_some(),
                    "a token without exp was accepted"
                );
                assert_eq!(claims["iss"], "https://issuer.example");
                assert!(identity.subject().is_none_or(|s| !s.is_empty()));
            }
        }
    }

    // glob: pattern and text split at the first newline, bounded like real patterns and ids.
    let (pattern, subject) = text.split_once('\n').unwrap_or((text, ""));
    if pattern.len() <= 1024 && subject.len() <= 1024 {
        let matched = glob(pattern, subject);
        assert!(glob(pattern, pattern), "{pattern:?} does not match itself");
        assert!(glob("*", subject));
        if !pattern.contains('*') {
            assert_eq!(matched, pattern == subject, "{pattern:?} vs {subject:?}");
        }
        if matched {
            // A matching pattern still matches with any star widened to a double star.
            assert!(glob(&pattern.replace('*', "**"), subject));
        }
    }
});
