//! Subscription patterns: globs over stream-root-relative paths, where `*` matches one path
//! segment and `**` matches zero or more. Patterns are bounded when a subscription is created
//! (`config`), so matching stays cheap.

/// Whether `path` matches `pattern`.
pub fn matches(pattern: &str, path: &str) -> bool {
    let p: Vec<&str> = segments(pattern).collect();
    let s: Vec<&str> = segments(path).collect();
    walk(&p, &s)
}

/// How many `**` segments `pattern` has (each multiplies the matching work).
pub fn deep_wildcards(pattern: &str) -> usize {
    segments(pattern).filter(|s| *s == "**").count()
}

fn segments(s: &str) -> impl Iterator<Item = &str> {
    s.split('/').filter(|x| !x.is_empty())
}

fn walk(p: &[&str], s: &[&str]) -> bool {
    match p.split_first() {
        None => s.is_empty(),
        Some((&"**", rest)) => (0..=s.len()).any(|i| walk(rest, &s[i..])),
        Some((seg, rest)) => match s.split_first() {
            Some((head, tail)) => (*seg == "*" || seg == head) && walk(rest, tail),
            None => false,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn one_star_is_one_segment_and_two_are_any_number() {
        assert!(matches("events/*", "events/a"));
        assert!(!matches("events/*", "events/a/b"));
        assert!(!matches("events/*", "events"));
        assert!(!matches("events/*", "other/a"));
        assert!(matches("events/**", "events"));
        assert!(matches("events/**", "events/a/b/c"));
        assert!(matches("**/x", "a/b/x"));
        assert!(matches("**/x", "x"));
        assert!(!matches("**/x", "a/x/y"));
        assert!(matches("a/*/c", "a/b/c"));
        assert!(matches("/events/a/", "events/a"));
    }
}
