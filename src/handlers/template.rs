//! Templates over a request's payload: `"{conversation_id}"`, `"/v1/{query_id}/results?page={page}"`.
//!
//! A template is parsed once from configuration (an empty or unclosed placeholder is a
//! configuration error) and rendered per request. A payload that lacks a named field, or holds an
//! object or array there, is an `invalid_payload` failure naming the field. Rendering never
//! interprets the values: callers choose how to encode them (raw for Kafka keys, percent-encoded
//! for URLs).

use serde_json::Value;

use super::HandlerError;

/// One piece of a template.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    Literal(String),
    Field(String),
}

/// A parsed template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

/// Why a template string is not valid.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TemplateError {
    /// `{` without a matching `}`.
    #[error("unclosed '{{' at byte {0}")]
    Unclosed(usize),
    /// `{}` or a name that is not `[A-Za-z0-9_]+`.
    #[error("placeholder {0:?} must name a payload field of [A-Za-z0-9_]")]
    BadName(String),
    /// `}` with no opening brace.
    #[error("unmatched '}}' at byte {0}")]
    Unmatched(usize),
}

impl Template {
    /// Parses `text`; `{name}` is a placeholder for the payload field `name`.
    pub fn parse(text: &str) -> Result<Template, TemplateError> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut rest = text;
        let mut at = 0;
        while let Some(i) = rest.find(['{', '}']) {
            if rest.as_bytes()[i] == b'}' {
                return Err(TemplateError::Unmatched(at + i));
            }
            literal.push_str(&rest[..i]);
            let close = rest[i..].find('}').ok_or(TemplateError::Unclosed(at + i))?;
            let name = &rest[i + 1..i + close];
            let valid =
                !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if !valid {
                return Err(TemplateError::BadName(name.to_owned()));
            }
            if !literal.is_empty() {
                parts.push(Part::Literal(std::mem::take(&mut literal)));
            }
            parts.push(Part::Field(name.to_owned()));
            at += i + close + 1;
            rest = &rest[i + close + 1..];
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            parts.push(Part::Literal(literal));
        }
        Ok(Template { parts })
    }

    /// The payload fields the template names.
    pub fn fields(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Field(f) => Some(f.as_str()),
            Part::Literal(_) => None,
        })
    }

    /// Renders the template, passing each field's text through `encode`.
    pub fn render(
        &self,
        payload: &Value,
        encode: impl Fn(&str) -> String,
    ) -> Result<String, HandlerError> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Literal(l) => out.push_str(l),
                Part::Field(f) => out.push_str(&encode(&field_text(payload, f)?)),
            }
        }
        Ok(out)
    }
}

/// A payload field as text: strings as they are, numbers and booleans in JSON form.
fn field_text(payload: &Value, field: &str) -> Result<String, HandlerError> {
    match payload.get(field) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(v @ (Value::Number(_) | Value::Bool(_))) => Ok(v.to_string()),
        Some(_) => Err(HandlerError::new(
            "invalid_payload",
            format!("payload field {field:?} must be a string, number or boolean"),
        )),
        None => Err(HandlerError::new(
            "invalid_payload",
            format!("payload field {field:?} is required"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn renders_fields_and_names_the_missing_one() {
        let t = Template::parse("conv-{conversation_id}/{n}").unwrap();
        assert_eq!(t.fields().collect::<Vec<_>>(), vec!["conversation_id", "n"]);
        let out = t
            .render(&json!({"conversation_id": "c1", "n": 7}), str::to_owned)
            .unwrap();
        assert_eq!(out, "conv-c1/7");
        let err = t.render(&json!({"n": 7}), str::to_owned).unwrap_err();
        assert_eq!(err.code, "invalid_payload");
        assert!(err.message.contains("conversation_id"), "{err}");
        let err = t
            .render(&json!({"conversation_id": {"a": 1}, "n": 1}), str::to_owned)
            .unwrap_err();
        assert!(err.message.contains("conversation_id"), "{err}");
    }

    #[test]
    fn malformed_templates_are_refused() {
        assert_eq!(Template::parse("{a"), Err(TemplateError::Unclosed(0)));
        assert_eq!(Template::parse("x}"), Err(TemplateError::Unmatched(1)));
        assert!(matches!(
            Template::parse("{}"),
            Err(TemplateError::BadName(_))
        ));
        assert!(matches!(
            Template::parse("{a.b}"),
            Err(TemplateError::BadName(_))
        ));
        assert_eq!(Template::parse("plain").unwrap().fields().count(), 0);
    }
}
