//! Glob patterns over names: `*` matches any run of characters (including `/`), `?` exactly
//! one character; everything else is literal. `[`, `]`, `{`, `}` and `\` are reserved so
//! that a richer syntax can come later without silently changing what existing patterns mean.
//!
//! Patterns are compiled once at configure time into the cheapest matcher that fits
//! (exact, prefix, suffix, anything, or the general backtracking walk), because matching
//! runs on every governed request.

use thiserror::Error;

/// Characters reserved for future glob syntax.
const RESERVED: &[char] = &['[', ']', '{', '}', '\\'];

/// Why a pattern could not be compiled.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum GlobError {
    #[error("empty glob pattern")]
    Empty,
    #[error("unsupported glob syntax '{ch}' in \"{pattern}\" (only * and ? are special)")]
    Reserved { pattern: String, ch: char },
}

/// A compiled glob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob {
    source: String,
    matcher: Matcher,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Matcher {
    Any,
    Exact(String),
    Prefix(String),
    Suffix(String),
    General(Vec<char>),
}

impl Glob {
    /// Compiles `pattern`. Must not be empty nor contain reserved characters.
    pub fn new(pattern: &str) -> Result<Self, GlobError> {
        if pattern.is_empty() {
            return Err(GlobError::Empty);
        }
        if let Some(ch) = pattern.chars().find(|c| RESERVED.contains(c)) {
            return Err(GlobError::Reserved { pattern: pattern.to_string(), ch });
        }
        let stars = pattern.matches('*').count();
        let has_question = pattern.contains('?');
        let matcher = if pattern.chars().all(|c| c == '*') {
            Matcher::Any
        } else if stars == 0 && !has_question {
            Matcher::Exact(pattern.to_string())
        } else if stars == 1 && !has_question && pattern.ends_with('*') {
            Matcher::Prefix(pattern[..pattern.len() - 1].to_string())
        } else if stars == 1 && !has_question && pattern.starts_with('*') {
            Matcher::Suffix(pattern[1..].to_string())
        } else {
            Matcher::General(pattern.chars().collect())
        };
        Ok(Self { source: pattern.to_string(), matcher })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// True when the pattern is a plain literal (no `*` or `?`).
    pub fn is_literal(&self) -> bool {
        matches!(self.matcher, Matcher::Exact(_))
    }

    /// True when the pattern matches every text (it is all `*`).
    pub fn matches_everything(&self) -> bool {
        matches!(self.matcher, Matcher::Any)
    }

    /// Whether `text` matches the whole pattern.
    pub fn matches(&self, text: &str) -> bool {
        match &self.matcher {
            Matcher::Any => true,
            Matcher::Exact(s) => text == s,
            Matcher::Prefix(p) => text.starts_with(p.as_str()),
            Matcher::Suffix(s) => text.ends_with(s.as_str()),
            Matcher::General(p) => wildcard_match(p, text),
        }
    }
}

/// Iterative wildcard match with single-star backtracking: O(len(p) * len(t)) worst case,
/// no recursion, no allocation (the text is walked by byte offset, one `char` at a time).
fn wildcard_match(pattern: &[char], text: &str) -> bool {
    let (mut p, mut t) = (0usize, 0usize);
    // The last `*` seen and the text offset it is currently assumed to stop at.
    let mut star: Option<(usize, usize)> = None;
    while let Some(c) = text.get(t..).and_then(|rest| rest.chars().next()) {
        match pattern.get(p) {
            Some('*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(pc) if *pc == '?' || *pc == c => {
                p += 1;
                t += c.len_utf8();
            }
            _ => match star {
                Some((sp, st)) => {
                    // Let the star swallow one more character and retry after it.
                    let swallowed = text.get(st..).and_then(|rest| rest.chars().next()).map_or(1, char::len_utf8);
                    p = sp + 1;
                    t = st + swallowed;
                    star = Some((sp, t));
                }
                None => return false,
            },
        }
    }
    pattern.get(p..).is_some_and(|rest| rest.iter().all(|c| *c == '*'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn m(p: &str, t: &str) -> bool {
        Glob::new(p).map(|g| g.matches(t)).unwrap_or(false)
    }

    #[test]
    fn table() {
        let cases = [
            ("*", "", true),
            ("*", "anything/at/all", true),
            ("get_*", "get_customer", true),
            ("get_*", "xget_customer", false),
            ("*_customer", "delete_customer", true),
            ("*_customer", "delete_customers", false),
            ("get_customer", "get_customer", true),
            ("get_customer", "get_customerx", false),
            ("g?t_*", "get_x", true),
            ("g?t_*", "gt_x", false),
            ("a*b*c", "abc", true),
            ("a*b*c", "aXbYc", true),
            ("a*b*c", "aXbYcZ", false),
            ("*a*", "banana", true),
            ("file:///docs/*.md", "file:///docs/x/y.md", true),
            ("é?", "éü", true),
        ];
        for (p, t, want) in cases {
            assert_eq!(m(p, t), want, "pattern {p:?} text {t:?}");
        }
    }

    #[test]
    fn rejects_reserved_and_empty() {
        assert_eq!(Glob::new(""), Err(GlobError::Empty));
        assert!(matches!(Glob::new("crm/[a]"), Err(GlobError::Reserved { ch: '[', .. })));
        assert!(matches!(Glob::new("{a,b}"), Err(GlobError::Reserved { ch: '{', .. })));
    }

    /// Reference implementation: a regex-free recursive matcher.
    fn reference(p: &[char], t: &[char]) -> bool {
        match p.first() {
            None => t.is_empty(),
            Some('*') => (0..=t.len()).any(|i| reference(&p[1..], &t[i..])),
            Some('?') => !t.is_empty() && reference(&p[1..], &t[1..]),
            Some(c) => t.first() == Some(c) && reference(&p[1..], &t[1..]),
        }
    }

    proptest! {
        #[test]
        fn agrees_with_reference(p in "[ab\u{e9}*?/]{1,8}", t in "[ab\u{e9}\u{1F600}/]{0,10}") {
            let pc: Vec<char> = p.chars().collect();
            let tc: Vec<char> = t.chars().collect();
            prop_assert_eq!(m(&p, &t), reference(&pc, &tc));
        }
    }
}
