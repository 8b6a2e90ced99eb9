//! The matcher: every enabled detector (built-in and custom) compiled into one
//! multi-pattern `regex_automata::meta::Regex`, so a string is scanned once whatever the
//! number of detectors; the match reports which pattern fired.
//!
//! Leftmost-first semantics report, at the leftmost position where anything matches, the
//! highest-priority pattern. When that candidate is refused (its validator says no, or the
//! request's plan does not enable that detector), two things could hide behind it: a
//! lower-priority pattern matching at the same position, and matches starting inside the
//! refused candidate. The scan therefore retries the lower-priority patterns anchored at
//! that position (only those whose first byte fits), then resumes one character later.
//!
//! Re-scanning inside refused candidates is what makes the scan correct, and what could
//! make it quadratic on hostile input (`eyJ-eyJ-eyJ-…`). A [`Budget`] bounds the extra
//! work to a few times the input: once it is spent, scanning resumes after refused
//! candidates instead of inside them (real text never comes close).

use std::sync::Arc;

use regex_automata::meta::{self, Regex};
use regex_automata::util::syntax;
use regex_automata::{Anchored, Input, PatternID};
use regex_syntax::hir::literal::{ExtractKind, Extractor};
use regex_syntax::hir::Hir;

use super::detector::Detector;
use super::validate::validate;

/// What a pattern detects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Builtin(Detector),
    Custom,
}

/// One pattern of the combined matcher.
#[derive(Debug, Clone)]
pub(super) struct Pattern {
    pub kind: Kind,
    /// Detector name for counts and [`super::Blocked`] (`email`, `ticket_secret`).
    pub name: Arc<str>,
    /// Label inside mask tokens (`EMAIL`, `TICKET_SECRET`).
    pub label: Arc<str>,
    /// No match can contain a [`SEPARATORS`] character (set by [`Engine::build`]).
    pub separator_safe: bool,
}

/// Characters that JSON strings delimit or escape without `\u`: `"`, `\`, and the
/// control characters of `\n`, `\t`, `\r`, `\b`, `\f`. A pattern that can match none of
/// them never crosses a string boundary nor an escape, so raw JSON text can be scanned in
/// place (see `Rewriter` in the parent module). All built-in patterns are such.
pub(super) const SEPARATORS: [char; 7] = ['"', '\\', '\n', '\t', '\r', '\u{8}', '\u{c}'];

/// Whether some match of `hir` could contain one of `chars` (conservative: a class that
/// contains one counts, reachable or not).
fn can_match_any(hir: &Hir, chars: &[char]) -> bool {
    use regex_syntax::hir::{Class, HirKind};
    match hir.kind() {
        HirKind::Empty | HirKind::Look(_) => false,
        HirKind::Literal(lit) => std::str::from_utf8(&lit.0).map_or(true, |s| s.chars().any(|c| chars.contains(&c))),
        HirKind::Class(Class::Unicode(class)) => {
            class.ranges().iter().any(|r| chars.iter().any(|&c| r.start() <= c && c <= r.end()))
        }
        HirKind::Class(Class::Bytes(class)) => class
            .ranges()
            .iter()
            .any(|r| chars.iter().any(|&c| u32::from(r.start()) <= u32::from(c) && u32::from(c) <= u32::from(r.end()))),
        HirKind::Repetition(rep) => can_match_any(&rep.sub, chars),
        HirKind::Capture(cap) => can_match_any(&cap.sub, chars),
        HirKind::Concat(subs) | HirKind::Alternation(subs) => subs.iter().any(|h| can_match_any(h, chars)),
    }
}

/// A 256-bit set of bytes.
#[derive(Debug, Clone, Copy, Default)]
struct ByteSet([u64; 4]);

impl ByteSet {
    const ALL: ByteSet = ByteSet([u64::MAX; 4]);
    fn insert(&mut self, b: u8) {
        self.0[usize::from(b >> 6)] |= 1 << (b & 63);
    }
    fn contains(&self, b: u8) -> bool {
        self.0[usize::from(b >> 6)] & (1 << (b & 63)) != 0
    }
}

/// The compiled matcher. Pattern ids are indexes into `patterns`; lower ids win ties.
#[derive(Debug)]
pub(super) struct Engine {
    regex: Option<Regex>,
    patterns: Vec<Pattern>,
    /// Bytes a match of each pattern can start with (a superset), to skip pointless retries.
    first_bytes: Vec<ByteSet>,
    /// No match of any pattern is shorter than this: shorter strings are not scanned.
    min_len: usize,
}

/// An accepted match: `hay[start..end]` is redacted as `pattern`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Found {
    pub start: usize,
    pub end: usize,
    pub pattern: usize,
}

/// Extra scanning allowed inside refused candidates, shared by all strings of a message.
#[derive(Debug)]
pub(super) struct Budget {
    left: usize,
}

impl Budget {
    /// Four times the message plus 64 KiB: never reached by real text.
    pub fn for_message(len: usize) -> Self {
        Budget { left: len.saturating_mul(4).saturating_add(64 * 1024) }
    }

    fn take(&mut self, n: usize) -> bool {
        match self.left.checked_sub(n) {
            Some(left) => {
                self.left = left;
                true
            }
            None => false,
        }
    }
}

fn syntax_config() -> syntax::Config {
    syntax::Config::new().utf8(true).unicode(true)
}

/// Parses one pattern with the engine's syntax settings.
pub(super) fn parse(pattern: &str) -> Result<Hir, String> {
    regex_syntax::ParserBuilder::new().utf8(true).unicode(true).build().parse(pattern).map_err(|e| e.to_string())
}

/// The bytes a match of `hir` can start with, or every byte when unknown.
fn first_bytes(hir: &Hir) -> ByteSet {
    let mut extractor = Extractor::new();
    extractor.kind(ExtractKind::Prefix).limit_literal_len(1).limit_class(256).limit_total(512);
    let seq = extractor.extract(hir);
    let Some(literals) = seq.literals() else { return ByteSet::ALL };
    let mut set = ByteSet::default();
    for lit in literals {
        match lit.as_bytes().first() {
            Some(&b) => set.insert(b),
            None => return ByteSet::ALL,
        }
    }
    set
}

impl Engine {
    /// A matcher that matches nothing.
    pub fn empty() -> Self {
        Engine { regex: None, patterns: Vec::new(), first_bytes: Vec::new(), min_len: usize::MAX }
    }

    /// Compiles `patterns` (sources in priority order) into one matcher.
    pub fn build(patterns: Vec<(Pattern, String)>) -> Result<Self, String> {
        if patterns.is_empty() {
            return Ok(Self::empty());
        }
        let mut first = Vec::with_capacity(patterns.len());
        let mut min_len = usize::MAX;
        let mut patterns = patterns;
        for (pattern, source) in &mut patterns {
            let hir = parse(source)?;
            first.push(first_bytes(&hir));
            min_len = min_len.min(hir.properties().minimum_len().unwrap_or(0));
            pattern.separator_safe = !can_match_any(&hir, &SEPARATORS);
        }
        let sources: Vec<&str> = patterns.iter().map(|(_, s)| s.as_str()).collect();
        let regex = Regex::builder()
            .syntax(syntax_config())
            // The lazy DFA of a dozen patterns with word boundaries needs more states than the
            // 2 MiB default before it starts thrashing on varied text.
            .configure(meta::Config::new().hybrid_cache_capacity(8 * 1024 * 1024))
            .build_many(&sources)
            .map_err(|e| e.to_string())?;
        Ok(Engine {
            regex: Some(regex),
            patterns: patterns.into_iter().map(|(p, _)| p).collect(),
            first_bytes: first,
            min_len: min_len.max(1),
        })
    }

    pub fn patterns(&self) -> &[Pattern] {
        &self.patterns
    }

    /// Calls `on_match` for each accepted match in `hay`, left to right, non-overlapping.
    /// A pattern is eligible when `enabled(pattern)`; built-in candidates must also pass
    /// their validator. Stops at the first `Err` from `on_match` and returns it.
    pub fn scan<E>(
        &self,
        hay: &[u8],
        enabled: &dyn Fn(usize) -> bool,
        budget: &mut Budget,
        on_match: &mut dyn FnMut(Found) -> Result<(), E>,
    ) -> Result<(), E> {
        let Some(regex) = &self.regex else { return Ok(()) };
        if hay.len() < self.min_len {
            return Ok(());
        }
        let mut at = 0;
        while at < hay.len() {
            let Some(m) = regex.search(&Input::new(hay).span(at..hay.len())) else { break };
            let (start, end, pattern) = (m.start(), m.end(), m.pattern().as_usize());
            if let Some(found) = self.accept(hay, start, end, pattern, enabled) {
                on_match(found)?;
                at = found.end;
                continue;
            }
            match self.retry_at(regex, hay, start, end, pattern, enabled, budget) {
                Retry::Found(found) => {
                    on_match(found)?;
                    at = found.end;
                }
                Retry::Inside => at = start + utf8_len(hay[start]),
                Retry::Skip => at = end,
            }
        }
        Ok(())
    }

    fn accept(&self, hay: &[u8], start: usize, end: usize, pattern: usize, enabled: &dyn Fn(usize) -> bool) -> Option<Found> {
        if !enabled(pattern) || end <= start {
            return None;
        }
        let (start, end) = match self.patterns.get(pattern)?.kind {
            Kind::Builtin(detector) => validate(detector, hay, start, end)?,
            Kind::Custom => (start, end),
        };
        (end > start).then_some(Found { start, end, pattern })
    }

    /// A candidate at `start` was refused: try the lower-priority patterns there.
    #[allow(clippy::too_many_arguments)]
    fn retry_at(
        &self,
        regex: &Regex,
        hay: &[u8],
        start: usize,
        end: usize,
        refused: usize,
        enabled: &dyn Fn(usize) -> bool,
        budget: &mut Budget,
    ) -> Retry {
        let len = end - start;
        let first = hay[start];
        for q in refused + 1..self.patterns.len() {
            if !enabled(q) || !self.first_bytes[q].contains(first) {
                continue;
            }
            if !budget.take(len) {
                return Retry::Skip;
            }
            let Ok(id) = PatternID::new(q) else { continue };
            let input = Input::new(hay).span(start..hay.len()).anchored(Anchored::Pattern(id));
            if let Some(m) = regex.search(&input) {
                if let Some(found) = self.accept(hay, m.start(), m.end(), q, enabled) {
                    return Retry::Found(found);
                }
            }
        }
        if budget.take(len) {
            Retry::Inside
        } else {
            Retry::Skip
        }
    }
}

enum Retry {
    Found(Found),
    /// Resume one character after the refused candidate's start.
    Inside,
    /// Budget spent: resume after the refused candidate.
    Skip,
}

/// Length of the UTF-8 sequence starting with `b` (1 for anything that is not a lead byte).
fn utf8_len(b: u8) -> usize {
    match b {
        0xC0..=0xDF => 2,
        0xE0..=0xEF => 3,
        0xF0..=0xF7 => 4,
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn builtin(d: Detector) -> (Pattern, String) {
        let pattern = Pattern { kind: Kind::Builtin(d), name: d.name().into(), label: d.label().into(), separator_safe: false };
        (pattern, d.pattern().to_string())
    }

    #[test]
    fn builtins_never_match_json_separators() {
        for p in all().patterns() {
            assert!(p.separator_safe, "{}", p.name);
        }
        let custom = |re: &str| {
            let p = Pattern { kind: Kind::Custom, name: "c".into(), label: "C".into(), separator_safe: false };
            Engine::build(vec![(p, re.to_string())]).unwrap().patterns()[0].separator_safe
        };
        assert!(custom("SEC-[0-9]{6}"));
        assert!(custom(r"(?i)secret\b[a-z]+"));
        assert!(!custom(r"SEC\s[0-9]+"));
        assert!(!custom(r"[^ ]+@corp"));
        assert!(!custom("x\"y"));
    }

    fn all() -> Engine {
        Engine::build(Detector::ALL.into_iter().map(builtin).collect()).unwrap()
    }

    fn found(engine: &Engine, text: &str, enabled: &dyn Fn(usize) -> bool) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut budget = Budget::for_message(text.len());
        let _ = engine.scan::<()>(text.as_bytes(), enabled, &mut budget, &mut |f| {
            out.push((engine.patterns()[f.pattern].name.to_string(), text[f.start..f.end].to_string()));
            Ok(())
        });
        out
    }

    #[test]
    fn builtin_patterns_compile_and_first_bytes_cover_positives() {
        let engine = all();
        let samples = [
            (Detector::Email, "jane@example.com"),
            (Detector::Phone, "+1 415 555 0132"),
            (Detector::Phone, "(415) 555-0132"),
            (Detector::Ip, "::ffff:10.0.0.1"),
            (Detector::Ip, "fe80::1"),
            (Detector::BearerToken, "bearer abcdef0123456789"),
            (Detector::ApiKey, "xoxb-1234567890-abcdef"),
        ];
        for (d, s) in samples {
            let i = Detector::ALL.iter().position(|x| *x == d).unwrap();
            assert!(engine.first_bytes[i].contains(s.as_bytes()[0]), "{d}: {s}");
        }
        let email = Detector::ALL.iter().position(|x| *x == Detector::Email).unwrap();
        assert!(!engine.first_bytes[email].contains(b' '));
    }

    #[test]
    fn a_refused_candidate_does_not_hide_a_later_pattern_at_the_same_place() {
        let engine = all();
        // Bearer disabled: the JWT it carries is still found.
        let bearer = Detector::ALL.iter().position(|x| *x == Detector::BearerToken).unwrap();
        let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjMifQ.c2lnbmF0dXJl";
        let text = format!("Authorization: Bearer {jwt}");
        assert_eq!(found(&engine, &text, &|p| p != bearer), vec![("jwt".into(), jwt.into())]);
        assert_eq!(found(&engine, &text, &|_| true), vec![("bearer_token".into(), jwt.into())]);
    }

    #[test]
    fn hostile_input_is_linear() {
        let engine = all();
        let hostile = format!("{}.eyJhYmMi.x", "eyJ-".repeat(50_000));
        let started = std::time::Instant::now();
        let mut budget = Budget::for_message(hostile.len());
        let _ = engine.scan::<()>(hostile.as_bytes(), &|_| true, &mut budget, &mut |_| Ok(()));
        assert!(started.elapsed() < std::time::Duration::from_secs(5), "{:?}", started.elapsed());
    }
}
