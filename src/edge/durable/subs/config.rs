//! A subscription's configuration: the `PUT` body decoded, validated and normalised, so two
//! bodies meaning the same thing compare equal (the protocol's idempotent re-confirmation), and
//! webhook URLs checked against server-side request forgery.
//!
//! This module decides what is accepted; it holds no state.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};

use super::glob;
use super::Refusal;
use crate::edge::durable::request::check_path;

/// Lease bounds and default, milliseconds.
const LEASE_MIN_MS: u64 = 1_000;
const LEASE_MAX_MS: u64 = 600_000;
const LEASE_DEFAULT_MS: u64 = 30_000;
/// Bounds on the strings a body carries.
const MAX_TEXT: usize = 1_024;
const MAX_DEEP_WILDCARDS: usize = 4;

/// How a subscription wakes its worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// A signed `POST` to a URL.
    Webhook,
    /// A wake event appended to a stream that workers read and claim from.
    PullWake,
}

/// A normalised configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    pub kind: Kind,
    pub pattern: Option<String>,
    pub streams: BTreeSet<String>,
    pub webhook_url: Option<String>,
    pub wake_stream: Option<String>,
    pub lease_ttl_ms: u64,
    pub description: Option<String>,
}

#[derive(Deserialize)]
struct Body {
    #[serde(rename = "type")]
    kind: Kind,
    pattern: Option<String>,
    #[serde(default)]
    streams: Vec<String>,
    webhook: Option<Webhook>,
    wake_stream: Option<String>,
    lease_ttl_ms: Option<u64>,
    description: Option<String>,
}

#[derive(Deserialize)]
struct Webhook {
    url: String,
}

/// What the server allows, from `[durable]`.
pub struct Rules {
    pub allow_localhost: bool,
    pub max_streams: usize,
}

/// A stream path as subscriptions name it: no leading or trailing slash.
pub fn normalise(path: &str) -> String {
    path.trim_matches('/').to_owned()
}

/// Checks a stream path from a body: bounded as stream paths are, and not a reserved control
/// path.
pub fn stream_path(path: &str) -> Result<String, Refusal> {
    let p = normalise(path);
    let reserved = p == "__ds" || p.starts_with("__ds/");
    if p.is_empty() || reserved || check_path(&p).is_err() {
        return Err(Refusal::invalid(
            "stream paths must be 1-1024 bytes of at most 64 segments, outside __ds",
        ));
    }
    Ok(p)
}

/// Decodes and checks a `PUT` body.
pub fn parse(body: &[u8], rules: &Rules) -> Result<Config, Refusal> {
    let b: Body = serde_json::from_slice(body)
        .map_err(|e| Refusal::invalid(&format!("subscription body: {e}")))?;
    let pattern = b.pattern.map(|p| normalise(&p)).filter(|p| !p.is_empty());
    if let Some(p) = &pattern {
        if check_path(p).is_err() || glob::deep_wildcards(p) > MAX_DEEP_WILDCARDS {
            return Err(Refusal::invalid(
                "pattern must be at most 1024 bytes, 64 segments and 4 `**`",
            ));
        }
    }
    if b.streams.len() > rules.max_streams {
        return Err(Refusal::invalid("too many streams"));
    }
    let streams = b
        .streams
        .iter()
        .map(|s| stream_path(s))
        .collect::<Result<BTreeSet<_>, _>>()?;
    if pattern.is_none() && streams.is_empty() {
        return Err(Refusal::invalid(
            "a subscription needs a pattern or streams",
        ));
    }
    let lease_ttl_ms = b.lease_ttl_ms.unwrap_or(LEASE_DEFAULT_MS);
    if !(LEASE_MIN_MS..=LEASE_MAX_MS).contains(&lease_ttl_ms) {
        return Err(Refusal::invalid("lease_ttl_ms must be from 1000 to 600000"));
    }
    if b.description.as_ref().is_some_and(|d| d.len() > MAX_TEXT) {
        return Err(Refusal::invalid("description must be at most 1024 bytes"));
    }
    let (webhook_url, wake_stream) = match b.kind {
        Kind::Webhook => {
            let url = b
                .webhook
                .ok_or_else(|| Refusal::invalid("webhook subscriptions need webhook.url"))?
                .url;
            check_url(&url, rules.allow_localhost)?;
            (Some(url), None)
        }
        Kind::PullWake => {
            let wake = b
                .wake_stream
                .ok_or_else(|| Refusal::invalid("pull-wake subscriptions need wake_stream"))?;
            (None, Some(stream_path(&wake)?))
        }
    };
    Ok(Config {
        kind: b.kind,
        pattern,
        streams,
        webhook_url,
        wake_stream,
        lease_ttl_ms,
        description: b.description,
    })
}

/// Checks a webhook URL: `https://` to a host that is not a private, loopback or link-local
/// address; `http://localhost` and `http://127.0.0.x` only when development allows them. Host
/// names are checked again when they resolve (`deliver`).
pub fn check_url(raw: &str, allow_localhost: bool) -> Result<(), Refusal> {
    let rejected = |why: &str| Err(Refusal::url_rejected(why));
    if raw.len() > MAX_TEXT {
        return rejected("webhook.url is longer than 1024 bytes");
    }
    let Ok(url) = reqwest::Url::parse(raw) else {
        return rejected("webhook.url is not a URL");
    };
    let host = url.host();
    let local = match &host {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.octets()[..3] == [127, 0, 0],
        _ => false,
    };
    match url.scheme() {
        "http" if local && allow_localhost => Ok(()),
        "http" => rejected("webhook.url must use https (http only for localhost in development)"),
        "https" => match host {
            Some(url::Host::Domain(d)) if d.eq_ignore_ascii_case("localhost") => {
                rejected("webhook.url must not target localhost")
            }
            Some(url::Host::Domain(_)) => Ok(()),
            Some(url::Host::Ipv4(ip)) if is_public(IpAddr::V4(ip)) => Ok(()),
            Some(url::Host::Ipv6(ip)) if is_public(IpAddr::V6(ip)) => Ok(()),
            Some(_) => rejected("webhook.url must not target a private or local address"),
            None => rejected("webhook.url has no host"),
        },
        _ => rejected("webhook.url must use https"),
    }
}

/// Whether an address is on the public internet (not private, loopback, link-local, shared,
/// documentation, multicast or unspecified). An IPv6 address that carries an IPv4 one
/// (IPv4-compatible, -mapped and -translated, NAT64 `64:ff9b::/96`, 6to4 `2002::/16`) is as
/// public as the IPv4 address it carries; the local-use NAT64 prefix `64:ff9b:1::/48` and the
/// old site-local `fec0::/10` never are.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => public_v4(v4),
        IpAddr::V6(v6) => match embedded_v4(v6) {
            Some(v4) => public_v4(v4),
            None => public_v6(v6),
        },
    }
}

/// The IPv4 address an IPv6 one carries, in the forms that route to it.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let low = |hi: u16, lo: u16| {
        let [a, b] = hi.to_be_bytes();
        let [c, d] = lo.to_be_bytes();
        Some(Ipv4Addr::new(a, b, c, d))
    };
    match s {
        // `::a.b.c.d` (compatible) and `::ffff:a.b.c.d` (mapped).
        [0, 0, 0, 0, 0, 0 | 0xffff, hi, lo] => low(hi, lo),
        // `::ffff:0:a.b.c.d` (translated, RFC 2765).
        [0, 0, 0, 0, 0xffff, 0, hi, lo] => low(hi, lo),
        // NAT64 well-known prefix (RFC 6052).
        [0x64, 0xff9b, 0, 0, 0, 0, hi, lo] => low(hi, lo),
        // 6to4 (RFC 3056): `2002:AABB:CCDD::/48`.
        [0x2002, hi, lo, ..] => low(hi, lo),
        _ => None,
    }
}

fn public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    !(ip.is_private()
        || ip.is_loopback()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_documentation()
        || ip.is_multicast()
        || a == 0
        || (a == 100 && (64..128).contains(&b))
        || (a == 198 && (b == 18 || b == 19))
        || a >= 240)
}

fn public_v6(ip: Ipv6Addr) -> bool {
    let [first, second, third, ..] = ip.segments();
    !(ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || (first & 0xfe00) == 0xfc00
        || (first & 0xffc0) == 0xfe80
        || (first & 0xffc0) == 0xfec0
        || (first, second, third) == (0x64, 0xff9b, 1)
        || (first == 0x2001 && second == 0x0db8))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(allow_localhost: bool) -> Rules {
        Rules {
            allow_localhost,
            max_streams: 10,
        }
    }

    #[test]
    fn webhook_urls_to_private_or_local_hosts_are_rejected() {
        for url in [
            "http://10.0.0.1/hook",
            "https://10.0.0.1/hook",
            "https://192.168.1.4/",
            "https://172.16.0.1/",
            "https://169.254.169.254/latest",
            "https://127.0.0.1/",
            "https://[::1]/",
            "https://[fd00::1]/",
            "https://[::ffff:10.0.0.1]/",
            "https://localhost/",
            "http://example.com/",
            "ftp://example.com/",
            "http://127.0.0.1:9/hook",
        ] {
            let e = check_url(url, false).unwrap_err();
            assert_eq!(e.code, "WEBHOOK_URL_REJECTED", "{url}");
        }
        assert!(check_url("https://hooks.example.com/x", false).is_ok());
        assert!(check_url("https://8.8.8.8/x", false).is_ok());
        assert!(check_url("http://127.0.0.1:9/hook", true).is_ok());
        assert!(check_url("http://localhost:9/hook", true).is_ok());
        assert!(check_url("http://127.0.1.1:9/hook", true).is_err());
    }

    #[test]
    fn ipv6_forms_of_refused_ipv4_addresses_are_refused() {
        let refused_v4 = [
            "127.0.0.1",
            "10.1.2.3",
            "192.168.0.1",
            "172.16.5.4",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
        ];
        for v4 in refused_v4 {
            let [a, b, c, d] = v4.parse::<Ipv4Addr>().unwrap().octets();
            let (hi, lo) = (u16::from_be_bytes([a, b]), u16::from_be_bytes([c, d]));
            for form in [
                format!("::{v4}"),
                format!("::ffff:{v4}"),
                format!("::ffff:0:{v4}"),
                format!("64:ff9b::{v4}"),
                format!("2002:{hi:x}:{lo:x}::1"),
            ] {
                let ip: IpAddr = form.parse().unwrap();
                assert!(!is_public(ip), "{form} carries {v4}");
                let url = format!("https://[{form}]/hook");
                assert_eq!(
                    check_url(&url, false).unwrap_err().code,
                    "WEBHOOK_URL_REJECTED"
                );
            }
        }
        for never in [
            "64:ff9b:1::808:808",
            "fec0::1",
            "fed0::1",
            "fc00::1",
            "fe80::1",
        ] {
            assert!(!is_public(never.parse().unwrap()), "{never}");
        }
        for public in [
            "::ffff:8.8.8.8",
            "64:ff9b::8.8.8.8",
            "2002:808:808::1",
            "2606:4700::1111",
        ] {
            assert!(is_public(public.parse().unwrap()), "{public}");
        }
    }

    #[test]
    fn equal_meanings_compare_equal() {
        let a = parse(
            br#"{"type":"webhook","pattern":"/events/*/","streams":["b","a","a"],
                 "webhook":{"url":"https://h.example/x"}}"#,
            &rules(false),
        )
        .unwrap();
        let b = parse(
            br#"{"type":"webhook","pattern":"events/*","streams":["a","b"],
                 "webhook":{"url":"https://h.example/x"},"lease_ttl_ms":30000}"#,
            &rules(false),
        )
        .unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn bodies_missing_what_their_kind_needs_are_invalid() {
        for body in [
            r#"{"type":"webhook","pattern":"a/*"}"#,
            r#"{"type":"pull-wake","pattern":"a/*"}"#,
            r#"{"type":"webhook","webhook":{"url":"https://h.example/"}}"#,
            r#"{"type":"pull-wake","pattern":"a","wake_stream":"w","lease_ttl_ms":999}"#,
            r#"{"type":"pull-wake","pattern":"a","wake_stream":"__ds/x"}"#,
            r#"{"type":"other","pattern":"a"}"#,
            r#"{"type":"pull-wake","pattern":"**/**/**/**/**","wake_stream":"w"}"#,
        ] {
            let e = parse(body.as_bytes(), &rules(false)).unwrap_err();
            assert_eq!(e.code, "INVALID_REQUEST", "{body}");
        }
    }
}
