//! The matcher: every enabled detector (built-in and custom) compiled into one
//! multi-pattern `regex_automata::meta::Regex`, so a string is scanned once whatever the
//! number of detectors; the match reports which pattern fired.
//!
//! Before it, [`Engine::screen`] tells which strings hold any match at all, with a forward
//! lazy DFA of the same patterns walked by hand over four strings at once (a DFA walk is
//! bound by the latency of one table lookup per byte; four independent walks overlap
//! theirs). Most strings hold nothing and are never searched.
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

use regex_automata::hybrid::dfa::{Cache as DfaCache, DFA};
use regex_automata::hybrid::LazyStateID;
use regex_automata::meta::{self, Regex};
use regex_automata::util::pool::Pool;
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

type NewCache = Box<dyn Fn() -> DfaCache + Send + Sync + std::panic::UnwindSafe + std::panic::RefUnwindSafe>;
type CachePool = Pool<DfaCache, NewCache>;

/// A forward lazy DFA of the same patterns, used only to ask "is there any match in this
/// text at all?" — one table lookup per byte, no match bookkeeping, no reverse search.
/// Most selected text holds no candidate; only text where it says yes is searched by the
/// full engine. It is exact: the forward DFA enters a match state iff some pattern
/// matches somewhere in the text (before the first match, no thread has been dropped).
struct Prescreen {
    dfa: DFA,
    caches: CachePool,
}

impl std::fmt::Debug for Prescreen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Prescreen")
    }
}

impl Prescreen {
    fn build(sources: &[&str]) -> Option<Self> {
        Self::with_capacity(sources, 4 * 1024 * 1024)
    }

    /// `capacity`: the lazy DFA's cache, per pooled cache. Past it the cache is cleared
    /// and refilled (never given up on: the screen has no slower engine to fall back to,
    /// the search does).
    fn with_capacity(sources: &[&str], capacity: usize) -> Option<Self> {
        let dfa = DFA::builder()
            .syntax(syntax_config())
            .configure(
                DFA::config()
                    .cache_capacity(capacity)
                    .skip_cache_capacity_check(true)
                    .minimum_cache_clear_count(None)
                    // A custom pattern with a Unicode `\b` quits on non-ASCII bytes: that
                    // text is then simply searched by the full engine.
                    .unicode_word_boundary(true),
            )
            .build_many(sources)
            .ok()?;
        let for_pool = dfa.clone();
        let create: NewCache = Box::new(move || for_pool.create_cache());
        Some(Prescreen { dfa, caches: Pool::new(create) })
    }
}

/// A run of selected spans screened as one text: `src[start..end]` covers `spans[first..last]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Unit {
    pub start: usize,
    pub end: usize,
    pub first: usize,
    pub last: usize,
}

/// Walks screened at once by [`Engine::screen`].
pub(super) const LANES: usize = 4;

/// One walk of [`Lanes`]: where it is in which unit, and its DFA state there.
#[derive(Debug, Clone, Copy)]
struct Lane {
    /// Index into the units; `None` when the lane is idle.
    unit: Option<usize>,
    /// Start of the text the DFA was started on (a span start), for the look-behind.
    from: usize,
    pos: usize,
    sid: LazyStateID,
}

/// The state of one [`Engine::screen`] call.
struct Lanes<'a> {
    prescreen: &'a Prescreen,
    src: &'a [u8],
    units: &'a [Unit],
    spans: &'a [(usize, usize)],
    flags: &'a mut [bool],
    next_unit: usize,
}

impl Lanes<'_> {
    /// Screens every unit. A cache clear (rare: the cache holds megabytes of states)
    /// invalidates the states of the other lanes; the screen then stops and flags every
    /// span not screened to the end, which only costs searches.
    fn run(&mut self, cache: &mut DfaCache) {
        let clears = cache.clear_count();
        let mut lanes = [Lane { unit: None, from: 0, pos: 0, sid: LazyStateID::default() }; LANES];
        for lane in &mut lanes {
            self.take_unit(cache, lane);
        }
        loop {
            if cache.clear_count() != clears {
                return self.give_up(&lanes);
            }
            let busy = lanes.iter().filter(|l| l.unit.is_some()).count();
            if busy == 0 {
                return;
            }
            if busy == LANES {
                self.lockstep(cache, &mut lanes);
            }
            for lane in &mut lanes {
                if busy < LANES {
                    self.solo(cache, lane);
                }
                self.step(cache, lane);
                if cache.clear_count() != clears {
                    return self.give_up(&lanes);
                }
            }
        }
    }

    /// Flags every span of the units in progress and of those not started.
    fn give_up(&mut self, lanes: &[Lane; LANES]) {
        let pending = lanes.iter().filter_map(|l| l.unit).chain(self.next_unit..self.units.len());
        for u in pending {
            if let Some(unit) = self.units.get(u) {
                self.flags.get_mut(unit.first..unit.last).into_iter().flatten().for_each(|f| *f = true);
            }
        }
        self.next_unit = self.units.len();
    }

    /// The end of the text `lane` walks (its unit's end), or its position when idle.
    fn end_of(&self, lane: &Lane) -> usize {
        lane.unit.and_then(|u| self.units.get(u)).map_or(lane.pos, |u| u.end)
    }

    /// Advances all lanes together while every transition is cached and untagged.
    fn lockstep(&self, cache: &DfaCache, lanes: &mut [Lane; LANES]) {
        if lanes.iter().any(|l| l.sid.is_tagged()) {
            return;
        }
        let dfa = &self.prescreen.dfa;
        let n = lanes.iter().map(|l| self.end_of(l).saturating_sub(l.pos)).min().unwrap_or(0);
        let text = |l: &Lane| self.src.get(l.pos..l.pos + n).unwrap_or_default();
        let (t0, t1, t2, t3) = (text(&lanes[0]), text(&lanes[1]), text(&lanes[2]), text(&lanes[3]));
        let (mut s0, mut s1, mut s2, mut s3) = (lanes[0].sid, lanes[1].sid, lanes[2].sid, lanes[3].sid);
        let mut done = 0;
        for (((&b0, &b1), &b2), &b3) in t0.iter().zip(t1).zip(t2).zip(t3) {
            let n0 = dfa.next_state_untagged(cache, s0, b0);
            let n1 = dfa.next_state_untagged(cache, s1, b1);
            let n2 = dfa.next_state_untagged(cache, s2, b2);
            let n3 = dfa.next_state_untagged(cache, s3, b3);
            if n0.is_tagged() | n1.is_tagged() | n2.is_tagged() | n3.is_tagged() {
                break;
            }
            (s0, s1, s2, s3) = (n0, n1, n2, n3);
            done += 1;
        }
        for (lane, sid) in lanes.iter_mut().zip([s0, s1, s2, s3]) {
            lane.sid = sid;
            lane.pos += done;
        }
    }

    /// Advances one lane alone while every transition is cached and untagged.
    fn solo(&self, cache: &DfaCache, lane: &mut Lane) {
        if lane.unit.is_none() || lane.sid.is_tagged() {
            return;
        }
        let dfa = &self.prescreen.dfa;
        let text = self.src.get(lane.pos..self.end_of(lane)).unwrap_or_default();
        let mut sid = lane.sid;
        let mut done = 0;
        for &byte in text {
            let next = dfa.next_state_untagged(cache, sid, byte);
            if next.is_tagged() {
                break;
            }
            sid = next;
            done += 1;
        }
        lane.sid = sid;
        lane.pos += done;
    }

    /// One byte of one lane, or the end of its unit, computing the transition if needed.
    fn step(&mut self, cache: &mut DfaCache, lane: &mut Lane) {
        let Some(u) = lane.unit else { return };
        let Some(unit) = self.units.get(u).copied() else {
            lane.unit = None;
            return;
        };
        let dfa = &self.prescreen.dfa;
        let at = lane.pos;
        let next = match self.src.get(at) {
            Some(&byte) if at < unit.end => dfa.next_state(cache, lane.sid, byte),
            _ => dfa.next_eoi_state(cache, lane.sid),
        };
        lane.pos += 1;
        match next {
            // Matches are reported one byte late: this one ends at `at`.
            Ok(sid) if sid.is_match() => self.hit(cache, lane, u, unit, at),
            Ok(_) if at >= unit.end => self.take_unit(cache, lane),
            Ok(sid) if !sid.is_dead() && !sid.is_quit() => lane.sid = sid,
            // The DFA gave up (a Unicode word boundary on non-ASCII, an error) or died:
            // the spans from here on are searched.
            _ => {
                self.flag_from(unit, at);
                self.take_unit(cache, lane);
            }
        }
    }

    /// Flags the spans of `unit` that end after `at`.
    fn flag_from(&mut self, unit: Unit, at: usize) {
        let spans = self.spans.get(unit.first..unit.last).unwrap_or_default();
        let first = unit.first + spans.partition_point(|&(_, e)| e <= at);
        self.flags.get_mut(first..unit.last).into_iter().flatten().for_each(|f| *f = true);
    }

    /// A match ends at `end`: flag its span and restart at the next span of the unit.
    fn hit(&mut self, cache: &mut DfaCache, lane: &mut Lane, u: usize, unit: Unit, end: usize) {
        if end <= lane.from {
            // An empty match (a custom pattern like `x*`): search the rest of the unit.
            self.flag_from(unit, lane.from);
            return self.take_unit(cache, lane);
        }
        // Not empty: it covers `end - 1`, inside the first span ending at or after `end`
        // when that span starts before `end`, else between spans (in a key).
        let spans = self.spans.get(unit.first..unit.last).unwrap_or_default();
        let i = spans.partition_point(|&(_, e)| e < end);
        let resume = match spans.get(i) {
            Some(&(s, _)) if s < end => {
                if let Some(f) = self.flags.get_mut(unit.first + i) {
                    *f = true;
                }
                spans.get(i + 1).map(|&(s, _)| s)
            }
            Some(&(s, _)) => Some(s),
            None => None,
        };
        match resume {
            Some(from) => self.restart(cache, lane, u, from),
            None => self.take_unit(cache, lane),
        }
    }

    /// Starts `lane` on the next unit, or leaves it idle.
    fn take_unit(&mut self, cache: &mut DfaCache, lane: &mut Lane) {
        lane.unit = None;
        while let Some(unit) = self.units.get(self.next_unit).copied() {
            let u = self.next_unit;
            self.next_unit += 1;
            if unit.start < unit.end {
                return self.restart(cache, lane, u, unit.start);
            }
        }
    }

    /// Starts the DFA of `lane` at `from` inside unit `u`; the unit's text is the
    /// haystack, so its start and end look like the start and end of a text.
    fn restart(&mut self, cache: &mut DfaCache, lane: &mut Lane, u: usize, from: usize) {
        let Some(unit) = self.units.get(u).copied() else { return };
        let text = self.src.get(unit.start..unit.end).unwrap_or_default();
        let input = Input::new(text).span(from.saturating_sub(unit.start).min(text.len())..text.len());
        match self.prescreen.dfa.start_state_forward(cache, &input) {
            Ok(sid) => *lane = Lane { unit: Some(u), from, pos: from, sid },
            Err(_) => {
                self.flag_from(unit, from);
                self.take_unit(cache, lane);
            }
        }
    }
}

/// The compiled matcher. Pattern ids are indexes into `patterns`; lower ids win ties.
#[derive(Debug)]
pub(super) struct Engine {
    regex: Option<Regex>,
    /// `None` when the patterns cannot be built as a lazy DFA alone: every text is searched.
    prescreen: Option<Prescreen>,
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
        Engine { regex: None, prescreen: None, patterns: Vec::new(), first_bytes: Vec::new(), min_len: usize::MAX }
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
            prescreen: Prescreen::build(&sources),
            patterns: patterns.into_iter().map(|(p, _)| p).collect(),
            first_bytes: first,
            min_len: min_len.max(1),
        })
    }

    pub fn patterns(&self) -> &[Pattern] {
        &self.patterns
    }

    /// Marks which selected spans may hold a match: `flags[i]` is set for every span
    /// `spans[i]` (ranges of `src`, in order, not overlapping) that holds a match of any
    /// pattern (candidates the validators later refuse included). Most spans of real text
    /// hold none and stay unmarked, so [`Self::scan`] runs only where it can find something.
    ///
    /// `units` cut the spans into runs screened independently (each a range of `src` from
    /// its first span's start to its last span's end, with the range of `spans` it covers);
    /// up to [`LANES`] units are screened at once, interleaved, because one DFA walk is
    /// bound by the latency of its table lookups, not by the work per byte.
    ///
    /// Exact because no pattern can match the separators between spans (the caller's
    /// contract: spans are separated by JSON structure or escapes, see [`SEPARATORS`]), so
    /// a match lies inside one span, and what surrounds a span (a quote, an escape's
    /// letter replaced by the character it stands for) looks to a word boundary just like
    /// the start or end of a text. After a hit the walk restarts at the next span.
    pub fn screen(&self, src: &[u8], units: &[Unit], spans: &[(usize, usize)], flags: &mut [bool]) {
        let Some(prescreen) = &self.prescreen else {
            flags.iter_mut().for_each(|f| *f = true);
            return;
        };
        let mut cache = prescreen.caches.get();
        let mut lanes = Lanes { prescreen, src, units, spans, flags, next_unit: 0 };
        lanes.run(&mut cache);
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

    fn accept(
        &self,
        hay: &[u8],
        start: usize,
        end: usize,
        pattern: usize,
        enabled: &dyn Fn(usize) -> bool,
    ) -> Option<Found> {
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
    use proptest::prelude::*;

    fn builtin(d: Detector) -> (Pattern, String) {
        let pattern =
            Pattern { kind: Kind::Builtin(d), name: d.name().into(), label: d.label().into(), separator_safe: false };
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

    /// Spans as the rewriter gathers them: `"span"` separated by JSON structure (numbers
    /// that look like cards, keys that look like e-mails) — all to be ignored.
    fn document(spans: &[String], gaps: &[usize]) -> (String, Vec<(usize, usize)>) {
        const GAPS: [&str; 5] = [",", ":", ",\"id\":", ", 4111111111111111, ", ",\"a@b.co\":"];
        let mut src = String::new();
        let mut ranges = Vec::new();
        for (i, span) in spans.iter().enumerate() {
            src.push('"');
            ranges.push((src.len(), src.len() + span.len()));
            src.push_str(span);
            src.push('"');
            src.push_str(GAPS[gaps.get(i).copied().unwrap_or(0) % GAPS.len()]);
        }
        (src, ranges)
    }

    fn units_of(spans: &[(usize, usize)], cuts: &[bool]) -> Vec<Unit> {
        let mut units: Vec<Unit> = Vec::new();
        for (i, &(start, end)) in spans.iter().enumerate() {
            match units.last_mut() {
                Some(u) if !cuts.get(i).copied().unwrap_or(true) => {
                    u.end = end;
                    u.last = i + 1;
                }
                _ => units.push(Unit { start, end, first: i, last: i + 1 }),
            }
        }
        units
    }

    fn span_text() -> impl Strategy<Value = String> {
        const SAMPLES: [&str; 12] = [
            "jane.doe@example.com",
            "4111 1111 1111 1111",
            "123-45-6789",
            "+44 20 7946 0958",
            "(415) 555-0132",
            "10.0.1.4",
            "fe80::1",
            "AKIAIOSFODNN7EXAMPLE",
            "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjMifQ.c2ln",
            "Bearer 8f14e45fceea167a5a36",
            "DE89 3704 0044 0532 0130 00",
            "ORD-2024-000123 v1.2.3 12:30 Müller",
        ];
        let piece =
            prop_oneof![proptest::sample::select(&SAMPLES[..]).prop_map(str::to_string), "[a-z0-9 .@:+()-]{0,12}"];
        proptest::collection::vec(piece, 0..6).prop_map(|v| v.join(" "))
    }

    fn screened(engine: &Engine, src: &str, units: &[Unit], spans: &[(usize, usize)]) -> Vec<bool> {
        let mut flags = vec![false; spans.len()];
        engine.screen(src.as_bytes(), units, spans, &mut flags);
        flags
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// The screen flags exactly the spans in which a search finds something, however
        /// the spans are grouped into units, whatever the structure between them holds.
        #[test]
        fn screen_flags_exactly_the_spans_holding_a_match(
            spans in proptest::collection::vec(span_text(), 1..24),
            gaps in proptest::collection::vec(0usize..5, 24),
            cuts in proptest::collection::vec(proptest::bool::weighted(0.3), 24),
        ) {
            let engine = all();
            let (src, ranges) = document(&spans, &gaps);
            let units = units_of(&ranges, &cuts);
            let regex = engine.regex.as_ref().unwrap();
            let expected: Vec<bool> = ranges.iter().map(|&(s, e)| regex.is_match(&src.as_bytes()[s..e])).collect();
            prop_assert_eq!(screened(&engine, &src, &units, &ranges), expected);
        }

        /// With a cache far too small, clears interrupt the lanes: the screen then flags
        /// more spans (they are searched), never fewer.
        #[test]
        fn a_cleared_cache_only_flags_more(
            spans in proptest::collection::vec(span_text(), 1..24),
            gaps in proptest::collection::vec(0usize..5, 24),
            cuts in proptest::collection::vec(proptest::bool::weighted(0.3), 24),
        ) {
            let mut engine = all();
            let sources: Vec<&str> = Detector::ALL.iter().map(|d| d.pattern()).collect();
            engine.prescreen = Prescreen::with_capacity(&sources, 1);
            let (src, ranges) = document(&spans, &gaps);
            let units = units_of(&ranges, &cuts);
            let regex = engine.regex.as_ref().unwrap();
            let flags = screened(&engine, &src, &units, &ranges);
            for (i, &(s, e)) in ranges.iter().enumerate() {
                prop_assert!(flags[i] || !regex.is_match(&src.as_bytes()[s..e]), "span {} missed", i);
            }
        }
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
