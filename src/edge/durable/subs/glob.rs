//! Subscription patterns: globs over stream-root-relative paths, where `*` matches one path
//! segment and `**` matches zero or more. Matching is greedy over segments, backtracking only to
//! the last `**` seen, so it takes at most about (pattern segments × path segments) steps
//! whatever the pattern; patterns (`config`) and paths (`request`) are bounded too.

/// Whether `path` matches `pattern`.
pub fn matches(pattern: &str, path: &str) -> bool {
    walk(pattern, path).0
}

/// How many `**` segments `pattern` has.
pub fn deep_wildcards(pattern: &str) -> usize {
    segments(pattern).filter(|s| *s == "**").count()
}

fn segments(s: &str) -> impl Iterator<Item = &str> {
    s.split('/').filter(|x| !x.is_empty())
}

/// Whether `path` matches `pattern`, and the steps it took.
fn walk(pattern: &str, path: &str) -> (bool, usize) {
    let p: Vec<&str> = segments(pattern).collect();
    let s: Vec<&str> = segments(path).collect();
    let (mut pi, mut si, mut steps) = (0, 0, 0);
    // After the last `**`: where the pattern resumes, and the path segment it was tried at.
    let mut deep: Option<(usize, usize)> = None;
    while si < s.len() {
        steps += 1;
        if p.get(pi) == Some(&"**") {
            deep = Some((pi + 1, si));
            pi += 1;
        } else if p.get(pi).is_some_and(|seg| *seg == "*" || *seg == s[si]) {
            pi += 1;
            si += 1;
        } else if let Some((resume, tried)) = deep {
            // The `**` takes one more segment; everything after it is matched again.
            pi = resume;
            si = tried + 1;
            deep = Some((resume, tried + 1));
        } else {
            return (false, steps);
        }
    }
    (p[pi..].iter().all(|seg| *seg == "**"), steps)
}

#[cfg(test)]
mod tests {
    use super::{matches, walk};

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
        assert!(matches("**/a/**/b/**", "x/a/y/z/b"));
        assert!(!matches("**/a/**/b/**/c", "x/a/y/z/b"));
        assert!(matches("**/*/**", "a"));
        assert!(!matches("**/*/**", ""));
        assert!(matches("a/**/**/b", "a/b"));
    }

    #[test]
    fn a_pathological_pattern_takes_linear_steps() {
        // Four `**` with literals between them, against a deep path that almost matches: the
        // old recursive matcher took about n⁴ steps here.
        let path = vec!["a"; 4_000].join("/");
        let pattern = "**/a/**/a/**/a/**/b";
        let (hit, steps) = walk(pattern, &path);
        assert!(!hit);
        let bound = 8 * 4_000 * 2;
        assert!(steps <= bound, "{steps} steps, more than {bound}");
        let (hit, steps) = walk("**/a/**/a/**/a/**/a", &path);
        assert!(hit);
        assert!(steps <= bound, "{steps} steps");
    }
}
