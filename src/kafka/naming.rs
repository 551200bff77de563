//! Stream topic names: an injective map from stream ids to Kafka topic names.
//!
//! Kafka treats `.` and `_` as the same character when it checks a new topic against existing
//! ones (their metric names would collide), so ids `a.b` and `a_b` must not map to `a.b` and
//! `a_b`. A topic is the stream topic prefix followed by the id with `_` written `_5f` and `.`
//! written `_2e`; every other character an id may hold (`[A-Za-z0-9-]`) stands for itself. The
//! suffix therefore has no `.`, and every `_` in it starts an escape, so two ids never give the
//! same name, nor two names that Kafka takes for one. An id whose escaped form would not fit
//! Kafka's 249-character limit is named by its SHA-256 instead (`_h` and 64 hex digits, a form no
//! escape produces). Ids of letters, digits and `-` keep the name they always had.
//!
//! Records written before this naming hold no topic; their streams keep the name they were
//! created with, the prefix followed by the raw id ([`legacy`]).

use ring::digest::{digest, SHA256};

use crate::event::StreamId;

/// Kafka's longest topic name.
pub const MAX_TOPIC_LEN: usize = 249;

/// The topic of stream `id` under `prefix`.
pub fn stream_topic(prefix: &str, id: &StreamId) -> String {
    let mut name = String::with_capacity(prefix.len() + id.as_str().len());
    name.push_str(prefix);
    for c in id.as_str().chars() {
        match c {
            '_' => name.push_str("_5f"),
            '.' => name.push_str("_2e"),
            c => name.push(c),
        }
    }
    if name.len() <= MAX_TOPIC_LEN {
        return name;
    }
    let hash = digest(&SHA256, id.as_str().as_bytes());
    let hex: String = hash.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("{prefix}_h{hex}")
}

/// The name a stream created before [`stream_topic`] has: the prefix and the raw id.
pub fn legacy(prefix: &str, id: &StreamId) -> String {
    format!("{prefix}{id}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn id(s: &str) -> StreamId {
        StreamId::parse(s).unwrap()
    }

    /// What Kafka compares when it checks a new topic for a collision.
    fn kafka_key(topic: &str) -> String {
        topic.replace('.', "_")
    }

    #[test]
    fn plain_ids_keep_their_names_and_dots_and_underscores_are_escaped() {
        assert_eq!(
            stream_topic("sluice.stream.", &id("chat-1")),
            "sluice.stream.chat-1"
        );
        assert_eq!(stream_topic("p.", &id("a.b")), "p.a_2eb");
        assert_eq!(stream_topic("p.", &id("a_b")), "p.a_5fb");
        assert_eq!(legacy("p.", &id("a.b")), "p.a.b");
    }

    #[test]
    fn no_two_ids_collide_in_kafka() {
        let alphabet = ['a', 'Z', '0', '-', '.', '_', '2', 'e', '5', 'f', 'h'];
        let mut ids = vec![String::new()];
        for _ in 0..4 {
            ids = ids
                .iter()
                .flat_map(|s| alphabet.iter().map(move |c| format!("{s}{c}")))
                .collect();
        }
        ids.extend([
            "ds-x".into(),
            "x".repeat(200),
            format!("{}a", ".".repeat(199)),
        ]);
        let mut seen: HashMap<String, String> = HashMap::new();
        for raw in ids {
            let Ok(stream) = StreamId::parse(&raw) else {
                continue;
            };
            let topic = stream_topic("sluice.stream.", &stream);
            assert!(topic.len() <= MAX_TOPIC_LEN, "{raw}: {} chars", topic.len());
            assert!(
                topic
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')),
                "{topic}"
            );
            if let Some(other) = seen.insert(kafka_key(&topic), raw.clone()) {
                panic!("{raw:?} and {other:?} collide as {topic}");
            }
        }
    }

    #[test]
    fn ids_too_long_to_escape_are_named_by_their_hash() {
        let dots = format!("a{}", ".".repeat(150));
        let topic = stream_topic("sluice.stream.", &id(&dots));
        assert!(
            topic.starts_with("sluice.stream._h") && topic.len() == 14 + 2 + 64,
            "{topic}"
        );
        let other = format!("b{}", ".".repeat(150));
        assert_ne!(topic, stream_topic("sluice.stream.", &id(&other)));
    }
}
