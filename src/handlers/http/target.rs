//! The upstream URL of an HTTP source, safe against request forgery.
//!
//! Scheme, host and port come from configuration alone: a template there is a configuration error.
//! Templates may fill only the path and the query, and every value is percent-encoded (all but
//! ASCII letters, digits, `-` and `_`), so a value cannot add a segment, a query parameter or a
//! fragment. The rendered URL is parsed again and must keep the configured origin and the rendered
//! path exactly; a value such as `..` that a URL parser would resolve is refused.

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use reqwest::Url;
use serde_json::Value;

use crate::handlers::template::Template;
use crate::handlers::HandlerError;

/// Everything but ASCII alphanumerics, `-` and `_`.
const VALUE: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_');

/// A parsed upstream URL.
#[derive(Clone, Debug)]
pub struct Target {
    origin: Url,
    rest: Template,
}

impl Target {
    /// Parses a configured URL such as `http://search.internal:8080/stream/{query_id}?q={q}`.
    pub fn parse(url: &str) -> Result<Target, String> {
        let (scheme, after) = url
            .split_once("://")
            .ok_or_else(|| format!("{url:?} is not an absolute http(s) URL"))?;
        let split = after.find(['/', '?', '#']).unwrap_or(after.len());
        let (authority, rest) = after.split_at(split);
        if authority.contains(['{', '}']) || scheme.contains(['{', '}']) {
            return Err(
                "scheme, host and port cannot be templated; template only the path and query"
                    .into(),
            );
        }
        if rest.contains('#') {
            return Err("the URL must not have a fragment".into());
        }
        let origin =
            Url::parse(&format!("{scheme}://{authority}/")).map_err(|e| format!("{url:?}: {e}"))?;
        if !matches!(origin.scheme(), "http" | "https") || origin.host().is_none() {
            return Err(format!("{url:?} must be an http or https URL with a host"));
        }
        if !origin.username().is_empty() || origin.password().is_some() {
            return Err("credentials do not belong in the URL; use headers".into());
        }
        let rest = if rest.is_empty() { "/" } else { rest };
        let rest = Template::parse(rest).map_err(|e| e.to_string())?;
        Ok(Target { origin, rest })
    }

    /// The URL for one request's payload.
    pub fn render(&self, payload: &Value) -> Result<Url, HandlerError> {
        let rest = self
            .rest
            .render(payload, |v| utf8_percent_encode(v, VALUE).to_string())?;
        let url = self
            .origin
            .join(&rest)
            .map_err(|e| refused(format!("the rendered URL is invalid: {e}")))?;
        let (path, query) = rest.split_once('?').unwrap_or((&rest, ""));
        let same_origin = url.scheme() == self.origin.scheme()
            && url.host() == self.origin.host()
            && url.port_or_known_default() == self.origin.port_or_known_default();
        if !same_origin || url.path() != path || url.query().unwrap_or("") != query {
            return Err(refused(
                "a payload value would change the upstream URL beyond its own segment".into(),
            ));
        }
        Ok(url)
    }
}

fn refused(message: String) -> HandlerError {
    HandlerError::new("invalid_payload", message)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn values_stay_inside_their_segment_and_the_host_is_fixed() {
        let t = Target::parse("http://search.internal:8080/v1/{q}/results?page={page}").unwrap();
        let url = t.render(&json!({"q": "cats & dogs/1", "page": 2})).unwrap();
        assert_eq!(url.host_str(), Some("search.internal"));
        assert_eq!(url.port(), Some(8080));
        assert_eq!(url.path(), "/v1/cats%20%26%20dogs%2F1/results");
        assert_eq!(url.query(), Some("page=2"));
        for evil in [
            "../../admin",
            "evil.com/",
            "@evil.com",
            "x?admin=1",
            "x#frag",
            "//evil.com",
        ] {
            let url = t.render(&json!({"q": evil, "page": 1})).unwrap();
            assert_eq!(url.host_str(), Some("search.internal"), "{evil}");
            assert_eq!(url.path_segments().unwrap().count(), 3, "{evil}: {url}");
            assert!(
                url.path().starts_with("/v1/") && url.path().ends_with("/results"),
                "{url}"
            );
            assert_eq!(url.query(), Some("page=1"), "{evil}");
            assert!(url.fragment().is_none());
        }
        for dots in ["..", "."] {
            let err = t.render(&json!({"q": dots, "page": 1})).unwrap_err();
            assert_eq!(err.code, "invalid_payload", "{dots}");
        }
    }

    #[test]
    fn templated_origins_and_odd_urls_are_configuration_errors() {
        for bad in [
            "http://{host}/x",
            "http://h:{port}/x",
            "{scheme}://h/x",
            "ftp://h/x",
            "h/x",
            "http://u:p@h/x",
            "http://h/x#{f}",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
        assert!(Target::parse("https://h").is_ok());
    }
}
