use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::{json, Value};

use super::*;

/// The JWT fixtures. The crate's directory is read when the test runs, not when it was built: a
/// build reused from a checkout elsewhere (one target directory, several clones) would otherwise
/// look in that checkout.
fn fixture(name: &str) -> Vec<u8> {
    let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or(env!("CARGO_MANIFEST_DIR").into());
    std::fs::read(format!("{dir}/../../tests/fixtures/jwt/{name}")).unwrap()
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn hs(claims: Value, secret: &[u8]) -> String {
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(secret),
    )
    .unwrap()
}

fn policy() -> Policy {
    Policy {
        issuers: vec!["https://issuer.example".into()],
        audiences: vec!["sluice".into()],
        leeway_secs: 5,
    }
}

fn good(extra: Value) -> Value {
    let mut c = json!({"sub": "alice", "exp": now() + 60, "iss": "https://issuer.example",
                       "aud": "sluice", "streams": ["conv456-*"], "types": ["chat:*"]});
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    c
}

fn hs_ring() -> Keyring {
    let mut k = Keyring::default();
    k.add_hs256(b"s3cret");
    k
}

#[test]
fn a_valid_hs256_token_grants_its_claims() {
    let id = hs_ring()
        .verify(&hs(good(json!({})), b"s3cret"), &policy())
        .unwrap();
    assert_eq!(id.subject(), Some("alice"));
    assert!(!id.is_admin());
    assert!(id.may_access("conv456-a", None));
    assert!(!id.may_access("conv457-a", None));
    assert!(id.may_access("mine", Some("alice")));
    assert!(!id.may_access("theirs", Some("bob")));
    let exp = good(json!({}))["exp"].as_i64().unwrap();
    assert!(
        (exp + 4..=exp + 5).contains(&id.expires_at().unwrap()),
        "exp plus the leeway"
    );
    assert_eq!(Identity::admin().expires_at(), None);
    assert!(id.may_request("chat:stream_messages"));
    assert!(!id.may_request("billing:stream_invoices"));
}

#[test]
fn each_failed_check_has_its_own_reason() {
    let ring = hs_ring();
    let cases = [
        (
            hs(good(json!({"exp": now() - 60})), b"s3cret"),
            "token_expired",
        ),
        (
            hs(good(json!({"nbf": now() + 60})), b"s3cret"),
            "token_not_yet_valid",
        ),
        (hs(good(json!({})), b"other"), "token_signature"),
        (
            hs(good(json!({"aud": "else"})), b"s3cret"),
            "token_audience",
        ),
        (
            hs(good(json!({"iss": "https://evil.example"})), b"s3cret"),
            "token_issuer",
        ),
        ("not.a.jwt".to_owned(), "token_malformed"),
        ("x".repeat(MAX_TOKEN_BYTES + 1), "token_too_long"),
    ];
    for (token, reason) in cases {
        let err = ring.verify(&token, &policy()).unwrap_err();
        assert_eq!(err.reason(), reason, "{err}");
    }
    let no_exp = hs(
        json!({"sub": "a", "iss": "https://issuer.example", "aud": "sluice"}),
        b"s3cret",
    );
    assert_eq!(
        ring.verify(&no_exp, &policy()).unwrap_err().reason(),
        "token_missing_claim"
    );
}

#[test]
fn leeway_admits_a_token_just_expired_and_no_more() {
    let ring = hs_ring();
    let just = hs(good(json!({"exp": now() - 2})), b"s3cret");
    assert!(ring.verify(&just, &policy()).is_ok());
    let strict = Policy {
        leeway_secs: 0,
        ..policy()
    };
    assert_eq!(
        ring.verify(&just, &strict).unwrap_err().reason(),
        "token_expired"
    );
}

#[test]
fn rs256_and_es256_pem_keys_verify_their_own_tokens_only() {
    let mut ring = Keyring::default();
    ring.add_pem(&fixture("rs256-public.pem")).unwrap();
    ring.add_pem(&fixture("es256-public.pem")).unwrap();
    let rs = EncodingKey::from_rsa_pem(&fixture("rs256-private.pem")).unwrap();
    let es = EncodingKey::from_ec_pem(&fixture("es256-private.pem")).unwrap();
    let claims = good(json!({}));
    let t = encode(&Header::new(Algorithm::RS256), &claims, &rs).unwrap();
    assert_eq!(ring.verify(&t, &policy()).unwrap().subject(), Some("alice"));
    let t = encode(&Header::new(Algorithm::ES256), &claims, &es).unwrap();
    assert_eq!(ring.verify(&t, &policy()).unwrap().subject(), Some("alice"));
    // Algorithm confusion: an HS256 token keyed with the RSA public key's bytes finds no HS256 key.
    let forged = hs(claims, &fixture("rs256-public.pem"));
    assert_eq!(
        ring.verify(&forged, &policy()).unwrap_err().reason(),
        "token_no_key"
    );
}

#[test]
fn jwks_keys_are_chosen_by_kid() {
    let mut ring = Keyring::default();
    assert_eq!(
        ring.add_jwks(&fixture("jwks.json")).unwrap(),
        2,
        "the oct key is skipped"
    );
    let es = EncodingKey::from_ec_pem(&fixture("es256-private.pem")).unwrap();
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some("ec-1".into());
    let t = encode(&header, &good(json!({})), &es).unwrap();
    assert!(ring.verify(&t, &policy()).is_ok());
    header.kid = Some("rsa-1".into());
    let t = encode(&header, &good(json!({})), &es).unwrap();
    assert_eq!(
        ring.verify(&t, &policy()).unwrap_err().reason(),
        "token_no_key"
    );
}

#[test]
fn claims_over_the_limits_are_refused() {
    let many: Vec<String> = (0..=MAX_PATTERNS).map(|i| format!("s{i}-*")).collect();
    let t = hs(good(json!({"streams": many})), b"s3cret");
    assert_eq!(
        hs_ring().verify(&t, &policy()).unwrap_err().reason(),
        "token_claims"
    );
    let t = hs(
        good(json!({"sub": "s".repeat(crate::event::MAX_OWNER_LEN + 1)})),
        b"s3cret",
    );
    assert_eq!(
        hs_ring().verify(&t, &policy()).unwrap_err().reason(),
        "token_claims"
    );
    let long = "a".repeat(MAX_PATTERN_LEN + 1);
    let t = hs(good(json!({"types": [long]})), b"s3cret");
    assert_eq!(
        hs_ring().verify(&t, &policy()).unwrap_err().reason(),
        "token_claims"
    );
}

#[test]
fn admin_claim_and_absent_claims() {
    let t = hs(
        good(json!({"admin": true, "streams": [], "types": []})),
        b"s3cret",
    );
    let id = hs_ring().verify(&t, &policy()).unwrap();
    assert!(id.may_access("anything", Some("bob")) && id.may_request("x:y"));
    let t = hs(
        good(json!({"streams": null, "types": null, "sub": ""})),
        b"s3cret",
    );
    let err = hs_ring().verify(&t, &policy());
    // `null` is not a list: the claims do not decode, so the token is refused.
    assert!(err.is_err());
    let bare = hs(
        json!({"exp": now() + 60, "iss": "https://issuer.example", "aud": "sluice"}),
        b"s3cret",
    );
    let id = hs_ring().verify(&bare, &policy()).unwrap();
    assert!(!id.may_access("s", None), "no subject owns nothing");
    assert!(!id.may_request("chat:x"), "absent types grant nothing");
}

#[test]
fn glob_matches_stars_and_literals() {
    for (p, t) in [
        ("*", ""),
        ("*", "abc"),
        ("conv456-*", "conv456-"),
        ("a*c", "abbbc"),
        ("*-x-*", "1-x-2"),
        ("chat:*", "chat:stream_a"),
        ("abc", "abc"),
    ] {
        assert!(glob(p, t), "{p} {t}");
    }
    for (p, t) in [
        ("conv456-*", "conv45-1"),
        ("a*c", "abcd"),
        ("abc", "ab"),
        ("", "a"),
        ("a?c", "abc"),
        ("*x", "abc"),
    ] {
        assert!(!glob(p, t), "{p} {t}");
    }
}
