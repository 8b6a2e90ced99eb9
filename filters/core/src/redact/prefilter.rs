//! Where a built-in detector can match: the *islands* of a haystack worth a DFA search.
//!
//! An island is a maximal run of bytes that some built-in pattern can match
//! ([`is_break`] is false for them): letters, digits, space and `_ % + - . @ : ( ) ~ / =`.
//! No built-in candidate contains a break byte, so every candidate lies inside one island
//! and never touches two: scanning islands one by one (with the whole haystack as context
//! for `\b`) finds exactly what scanning the whole haystack finds.
//!
//! An island is searched only when it holds an *anchor* of an enabled detector — something
//! every match of that detector contains — found with memchr-speed searches rather than by
//! the lazy DFA (which costs several cycles per byte):
//! * e-mail: `@`;
//! * phone, card, SSN, IPv4: digit runs shaped like their groups (see [`digits`]); dates,
//!   times, amounts, versions, order numbers and epochs are no anchors;
//! * IBAN: two capitals and two digits (`DE89`); IPv6: a digit next to a hex letter or a
//!   colon in a run of hex digits, `:` and `.` with `::` or 7 colons;
//! * JWT `eyJ`, bearer `earer`, AWS `AKIA ASIA ABIA ACCA`, API keys' literal prefixes.
//!
//! These are properties of the candidate patterns, except for IPv6 (its validator wants
//! a decimal digit): a candidate no validator can accept needs no search. Custom patterns have no such anchors: an engine
//! that has any is scanned whole (see [`super::engine::Engine::scan`]).

use super::detector::Detector;

/// Bytes no built-in pattern can match (checked against the patterns in the tests).
pub(super) fn is_break(b: u8) -> bool {
    !(b.is_ascii_alphanumeric() || matches!(b, b'_' | b'%' | b'+' | b'-' | b'.' | b'@' | b':' | b'(' | b')' | b'~' | b'/' | b'=' | b' '))
}

/// Bytes that join digit groups in phone, card, SSN and IPv4 candidates.
fn is_cluster_sep(b: u8) -> bool {
    matches!(b, b'+' | b' ' | b'.' | b'-' | b'(' | b')')
}

/// Which built-in detectors a scan looks for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Detectors(u16);

impl Detectors {
    pub fn insert(&mut self, d: Detector) {
        self.0 |= Self::bit(d);
    }

    fn has(self, d: Detector) -> bool {
        self.0 & Self::bit(d) != 0
    }

    fn any(self, ds: &[Detector]) -> bool {
        ds.iter().any(|&d| self.has(d))
    }

    fn bit(d: Detector) -> u16 {
        1 << (d as u16)
    }
}

/// What a byte may start or mark (see [`islands`]); 0 for most bytes.
const DIGIT: u8 = 1;
const AT: u8 = 2;
const CAPITAL: u8 = 3; // A (AKIA, AIza) and S (SG.)
const J: u8 = 4; // eyJ
const UNDERSCORE: u8 = 5;
const DASH: u8 = 6;
const B: u8 = 7; // [Bb]earer

static INTEREST: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut d = b'0';
    while d <= b'9' {
        t[d as usize] = DIGIT;
        d += 1;
    }
    t[b'@' as usize] = AT;
    t[b'A' as usize] = CAPITAL;
    t[b'S' as usize] = CAPITAL;
    t[b'J' as usize] = J;
    t[b'_' as usize] = UNDERSCORE;
    t[b'-' as usize] = DASH;
    t[b'B' as usize] = B;
    t[b'b' as usize] = B;
    t
};

/// Appends to `out` the islands of `hay` that may hold a match of one of `detectors`,
/// in order, each once. One pass: a table lookup per byte, and a closer look only at the
/// few bytes that can mark an anchor.
pub(super) fn islands(hay: &[u8], detectors: Detectors, out: &mut Vec<(usize, usize)>) {
    out.clear();
    let numbers = detectors.any(&[Detector::Phone, Detector::CreditCard, Detector::Ssn, Detector::Ip, Detector::Iban]);
    let email = detectors.has(Detector::Email);
    let (jwt, aws, api, bearer) = (
        detectors.has(Detector::Jwt),
        detectors.has(Detector::AwsKey),
        detectors.has(Detector::ApiKey),
        detectors.has(Detector::BearerToken),
    );
    let mut i = 0;
    while let Some(&byte) = hay.get(i) {
        let kind = INTEREST[usize::from(byte)];
        if kind == 0 {
            i += 1;
            continue;
        }
        let at = |lit: &[u8]| hay[i..].starts_with(lit);
        let before = &hay[..i];
        let anchor = match kind {
            DIGIT if numbers => {
                let (end, anchor) = cluster(hay, i, detectors);
                if !anchor {
                    i = end;
                    continue;
                }
                true
            }
            AT => email,
            CAPITAL => (aws && (at(b"AKIA") || at(b"ASIA") || at(b"ABIA") || at(b"ACCA"))) || (api && (at(b"AIza") || at(b"SG."))),
            J => jwt && before.ends_with(b"ey"),
            UNDERSCORE => {
                api && (before.ends_with(b"hf")
                    || before.ends_with(b"npm")
                    || before.ends_with(b"github")
                    || (i >= 3 && hay[i - 3..i - 1] == *b"gh")
                    || (i >= 2 && hay[i - 1] == b'k' && matches!(hay[i - 2], b's' | b'r')))
            }
            DASH => api && (before.ends_with(b"sk") || before.ends_with(b"glpat") || (i >= 4 && hay[i - 4..i - 1] == *b"xox")),
            B => bearer && hay.get(i + 1..).is_some_and(|rest| rest.starts_with(b"earer")),
            _ => false,
        };
        if anchor {
            let island = island(hay, i);
            out.push(island);
            i = island.1.max(i + 1);
        } else {
            i += 1;
        }
    }
}

/// The island around `hay[i]`.
fn island(hay: &[u8], i: usize) -> (usize, usize) {
    let start = hay[..i].iter().rposition(|&b| is_break(b)).map_or(0, |p| p + 1);
    let end = hay[i..].iter().position(|&b| is_break(b)).map_or(hay.len(), |p| i + p);
    (start, end)
}

/// Whether the run of hex digits, `:` and `.` around `hay[i]` holds `::` or 7 colons, as
/// every IPv6 candidate does.
fn ipv6_around(hay: &[u8], i: usize) -> bool {
    let part = |b: &u8| b.is_ascii_hexdigit() || *b == b':' || *b == b'.';
    let start = hay[..i].iter().rposition(|b| !part(b)).map_or(0, |p| p + 1);
    let end = hay[i..].iter().position(|b| !part(b)).map_or(hay.len(), |p| i + p);
    let run = &hay[start..end];
    run.windows(2).any(|w| w == b"::") || run.iter().filter(|&&b| b == b':').count() >= 7
}

/// One maximal run of digits inside a cluster.
#[derive(Clone, Copy)]
struct Run {
    start: usize,
    end: usize,
}

impl Run {
    fn len(self) -> usize {
        self.end - self.start
    }
}

/// Whether two neighbouring digit runs (`sep` between them) are shaped like the groups of
/// a candidate: card `4111 1111`, `3782 822463` (first digit 2-6); SSN `123-45`; US phone
/// `415-555`, `415.555`, `(415) 555`.
fn groups_anchor(hay: &[u8], a: Run, b: Run) -> bool {
    let sep = &hay[a.end..b.start];
    match (a.len(), sep, b.len()) {
        (4, b" " | b"-", 4 | 6) => matches!(hay[a.start], b'2'..=b'6'),
        (3, b"-", 2) => true,
        (3, b"-" | b"." | b")" | b") ", 3) => true,
        _ => false,
    }
}

/// The digit cluster (digits joined by `+ . - ( )` and spaces) at `first`: its end, and
/// whether it could hold a phone, card, SSN or IPv4 candidate, judged by the lengths of their digit runs, which the patterns fix
/// exactly (every group is bounded by `\b` or a separator): `+` before a digit; 13+ digits
/// starting with 2-6 after a non-word byte (a bare card); two runs shaped like card, SSN or
/// phone groups; four runs of 1-3 digits joined by dots, the first after a non-word byte
/// (IPv4). Dates (`2024-05-01`), times, amounts, versions, order numbers and epochs are
/// none of these.
///
/// Also `[A-Z]{2}[0-9]{2}` for IBANs, and IPv6 addresses, which the validator accepts only
/// with a decimal digit: walking from that digit towards the nearest colon meets only
/// digits and dots before a hex letter or the colon, so the digit's cluster touches one of
/// them (dots aside).
fn cluster(hay: &[u8], first: usize, detectors: Detectors) -> (usize, bool) {
    let numbers = detectors.any(&[Detector::Phone, Detector::CreditCard, Detector::Ssn, Detector::Ip]);
    let iban = detectors.has(Detector::Iban);
    let ipv6 = detectors.has(Detector::Ip);
    let hex_or_colon = |b: Option<&u8>| b.is_some_and(|&b| b == b':' || b.is_ascii_hexdigit());
    let is_digit = |j: usize| hay.get(j).is_some_and(u8::is_ascii_digit);
    let mut anchor = false;
    let mut prev: Option<Run> = None;
    let mut dotted = 0; // consecutive runs of 1-3 digits joined by single dots
    let mut j = first;
    loop {
        let start = j;
        while is_digit(j) {
            j += 1;
        }
        let run = Run { start, end: j };
        let before = start.checked_sub(1).map(|i| hay[i]);
        let word_before = before.is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_');
        if numbers {
            let bare_card = run.len() >= 13 && matches!(hay[start], b'2'..=b'6') && !word_before;
            anchor |= before == Some(b'+') || bare_card || prev.is_some_and(|p| groups_anchor(hay, p, run));
            dotted = match prev {
                Some(p) if run.len() <= 3 && dotted > 0 && &hay[p.end..start] == b"." => dotted + 1,
                _ => usize::from(run.len() <= 3 && !word_before),
            };
            anchor |= dotted >= 4;
        }
        anchor |= iban
            && run.len() >= 2
            && start >= 2
            && hay[start - 1].is_ascii_uppercase()
            && hay[start - 2].is_ascii_uppercase();
        prev = Some(run);
        while hay.get(j).is_some_and(|&b| is_cluster_sep(b)) {
            j += 1;
        }
        if !is_digit(j) {
            break;
        }
    }
    if ipv6 && !anchor {
        // The hex letter or colon the cluster touches is in the address's run.
        let left = hay[..first].iter().rposition(|&b| b != b'.');
        anchor = [left, Some(j)].into_iter().flatten().any(|p| hex_or_colon(hay.get(p)) && ipv6_around(hay, p));
    }
    (j, anchor)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> Detectors {
        let mut set = Detectors::default();
        Detector::ALL.into_iter().for_each(|d| set.insert(d));
        set
    }

    fn found(text: &str) -> Vec<&str> {
        let mut out = Vec::new();
        islands(text.as_bytes(), all(), &mut out);
        out.into_iter().map(|(a, b)| &text[a..b]).collect()
    }

    #[test]
    fn ordinary_prose_has_no_islands() {
        for text in [
            "Customer reported that the export job finished in 12.5s (run 2024-05-01T12:30:00Z",
            "Meeting moved to 14:30 CET; agenda: Q3 pipeline review",
            "Die Müller GmbH fragt, ob die Rechnung",
            "total $1,299.00 incl. VAT 19%, owner team-billing, cus_000123, \"key\":1299.5",
            "shipped via UPS; build v10.0.1.4 and serde 1.0.203, tracking 1Z999x10123456784",
            "Epoch 1714566600, counter 1714566600123, id 550e8400-e29b-41d4-a716-446655440000",
        ] {
            assert_eq!(found(text), Vec::<&str>::new(), "{text}");
        }
    }

    #[test]
    fn anchors_find_their_islands() {
        assert_eq!(found("mail jane@x.io, call +1 415 555 0132; ok"), ["mail jane@x.io", " call +1 415 555 0132"]);
        assert_eq!(found("a,ssn 123-45-6789,b"), ["ssn 123-45-6789"]);
        assert_eq!(found("x,ip 10.0.0.1!"), ["ip 10.0.0.1"]);
        assert_eq!(found("x,fe80::1,y"), ["fe80::1"]);
        assert_eq!(found("iban DE89370400440532013000."), ["iban DE89370400440532013000."]);
        assert_eq!(found("x,eyJhbGc.eyJ.x,y,AKIAIOSFODNN7EXAMPLE,z"), ["eyJhbGc.eyJ.x", "AKIAIOSFODNN7EXAMPLE"]);
        assert_eq!(found("a,Bearer xyz,ghp_abc,b"), ["Bearer xyz", "ghp_abc"]);
    }
}
