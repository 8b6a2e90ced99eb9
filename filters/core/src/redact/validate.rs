//! Validators: the second half of every built-in detector. They run only on candidates the
//! combined pattern proposed, so they may be as careful as they like.
//!
//! [`validate`] takes the whole haystack and the candidate's span (so it can look at the
//! context: a number glued to other digits by `-` or `.` is part of a longer identifier)
//! and returns the span to redact, which may be shorter than the candidate (a card number
//! followed by another group of digits, an IBAN followed by a word) or `None`.
//!
//! Every check works on ASCII bytes; nothing here allocates except the JWT header decode.

use std::net::Ipv6Addr;
use std::str::FromStr;

use super::detector::Detector;

/// The span of `hay[start..end]` to redact, or `None` when the candidate is not a real
/// instance of `detector`.
pub(super) fn validate(detector: Detector, hay: &[u8], start: usize, end: usize) -> Option<(usize, usize)> {
    match detector {
        Detector::Email => email(hay, start, end),
        Detector::Phone => phone(hay, start, end),
        Detector::CreditCard => credit_card(hay, start, end),
        Detector::Ssn => ssn(hay, start, end),
        Detector::Iban => iban(hay, start, end),
        Detector::Ip => ip(hay, start, end),
        Detector::Jwt => jwt(hay, start, end),
        Detector::BearerToken => bearer_token(hay, start, end),
        Detector::AwsKey => Some((start, end)),
        Detector::ApiKey => api_key(hay, start, end),
    }
}

/// `-` or `.` then an alphanumeric right before `start`: the candidate continues an
/// identifier (`ORD-123-45-6789`, `1.10.0.0.1`).
fn glued_before(hay: &[u8], start: usize) -> bool {
    start >= 2 && matches!(hay[start - 1], b'-' | b'.') && hay[start - 2].is_ascii_alphanumeric()
}

/// `-` or `.` then an alphanumeric right after `end`.
fn glued_after(hay: &[u8], end: usize) -> bool {
    matches!(hay.get(end), Some(b'-' | b'.')) && hay.get(end + 1).is_some_and(u8::is_ascii_alphanumeric)
}

fn is_word(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// File extensions that follow `@` in asset names (`icon@2x.png`): never e-mail domains here.
const NOT_EMAIL_TLDS: &[&str] = &[
    "avif", "bmp", "css", "gif", "heic", "ico", "jpeg", "jpg", "js", "json", "map", "png", "svg", "tif", "tiff", "ttf",
    "txt", "webp", "woff", "woff2",
];

fn email(hay: &[u8], start: usize, end: usize) -> Option<(usize, usize)> {
    let text = &hay[start..end];
    let at = text.iter().position(|&b| b == b'@')?;
    let (local, domain) = (&text[..at], &text[at + 1..]);
    if local.ends_with(b".") || local.windows(2).any(|w| w == b"..") {
        return None;
    }
    let mut labels = domain.split(|&b| b == b'.');
    if labels.any(|l| l.is_empty() || l.starts_with(b"-") || l.ends_with(b"-")) {
        return None;
    }
    let tld = domain.rsplit(|&b| b == b'.').next()?;
    if NOT_EMAIL_TLDS.iter().any(|t| t.as_bytes().eq_ignore_ascii_case(tld)) {
        return None;
    }
    Some((start, end))
}

/// Assigned ITU country calling codes, ascending (prefix-free, so a prefix match is exact).
const COUNTRY_CODES: &[u16] = &[
    1, 7, 20, 27, 30, 31, 32, 33, 34, 36, 39, 40, 41, 43, 44, 45, 46, 47, 48, 49, 51, 52, 53, 54, 55, 56, 57, 58, 60,
    61, 62, 63, 64, 65, 66, 81, 82, 84, 86, 90, 91, 92, 93, 94, 95, 98, 211, 212, 213, 216, 218, 220, 221, 222, 223,
    224, 225, 226, 227, 228, 229, 230, 231, 232, 233, 234, 235, 236, 237, 238, 239, 240, 241, 242, 243, 244, 245, 246,
    248, 249, 250, 251, 252, 253, 254, 255, 256, 257, 258, 260, 261, 262, 263, 264, 265, 266, 267, 268, 269, 290, 291,
    297, 298, 299, 350, 351, 352, 353, 354, 355, 356, 357, 358, 359, 370, 371, 372, 373, 374, 375, 376, 377, 378, 379,
    380, 381, 382, 383, 385, 386, 387, 389, 420, 421, 423, 500, 501, 502, 503, 504, 505, 506, 507, 508, 509, 590, 591,
    592, 593, 594, 595, 596, 597, 598, 599, 670, 672, 673, 674, 675, 676, 677, 678, 679, 680, 681, 682, 683, 685, 686,
    687, 688, 689, 690, 691, 692, 850, 852, 853, 855, 856, 880, 886, 960, 961, 962, 963, 964, 965, 966, 967, 968, 970,
    971, 972, 973, 974, 975, 976, 977, 992, 993, 994, 995, 996, 998,
];

fn phone(hay: &[u8], start: usize, end: usize) -> Option<(usize, usize)> {
    if hay[start] != b'+' {
        // US national forms: the pattern already enforces NANP area and exchange digits.
        return (!glued_before(hay, start) && !glued_after(hay, end)).then_some((start, end));
    }
    if start > 0 && is_word(hay[start - 1]) {
        return None;
    }
    // The pattern is greedy: a number followed by more digit groups ("+1 415 555 0132 2024")
    // is cut back at a separator until it is a plausible number.
    let mut cut = end;
    loop {
        if !glued_after(hay, cut) && international_digits_ok(&hay[start..cut]) {
            return Some((start, cut));
        }
        // The previous separator that follows a digit or ')'.
        cut = (start + 2..cut)
            .rev()
            .find(|&i| matches!(hay[i], b' ' | b'.' | b'-') && (hay[i - 1].is_ascii_digit() || hay[i - 1] == b')'))?;
    }
}

fn international_digits_ok(text: &[u8]) -> bool {
    let mut digits = [0u8; 16];
    let mut n = 0;
    let mut i = 0;
    while i < text.len() {
        if text[i..].starts_with(b"(0)") {
            i += 3; // national trunk prefix, not dialled from abroad
            continue;
        }
        if text[i].is_ascii_digit() {
            if n == digits.len() {
                return false;
            }
            digits[n] = text[i];
            n += 1;
        }
        i += 1;
    }
    let digits = &digits[..n];
    if digits.first() == Some(&b'1') {
        // NANP: +1, then a 10-digit number whose area code and exchange start with 2-9.
        return n == 11 && digits[1] >= b'2' && digits[4] >= b'2';
    }
    let prefix = |len: usize| digits[..len].iter().fold(0u16, |acc, d| acc * 10 + u16::from(d - b'0'));
    (8..=15).contains(&n) && (1..=3).any(|len| COUNTRY_CODES.binary_search(&prefix(len)).is_ok())
}

fn luhn(digits: &[u8]) -> bool {
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, d)| {
            let d = u32::from(d - b'0');
            if i % 2 == 1 {
                let x = d * 2;
                if x > 9 {
                    x - 9
                } else {
                    x
                }
            } else {
                d
            }
        })
        .sum();
    // (Not `is_multiple_of`: the workspace supports Rust 1.85.)
    let check_digit_residue = sum % 10;
    check_digit_residue == 0
}

/// A known issuer prefix with one of its lengths. Without this, 10% of all 13-19 digit
/// numbers (millisecond epochs, order numbers) would pass Luhn.
fn card_issuer_ok(digits: &[u8]) -> bool {
    let n = digits.len();
    let two = (digits[0] - b'0') * 10 + (digits[1] - b'0');
    let four = digits[..4].iter().fold(0u32, |acc, d| acc * 10 + u32::from(d - b'0'));
    match digits[0] {
        b'4' => matches!(n, 13 | 16 | 19),                                  // Visa
        b'5' => (51..=55).contains(&two) && n == 16,                        // Mastercard
        b'2' => (2221..=2720).contains(&four) && n == 16,                   // Mastercard 2-series
        b'3' if two == 34 || two == 37 => n == 15,                          // American Express
        b'3' if two == 35 => (16..=19).contains(&n),                        // JCB
        b'3' if matches!(two, 30 | 36 | 38 | 39) => (14..=19).contains(&n), // Diners Club
        b'6' => (16..=19).contains(&n),                                     // Discover, UnionPay, Maestro
        _ => false,
    }
}

fn credit_card(hay: &[u8], start: usize, end: usize) -> Option<(usize, usize)> {
    if glued_before(hay, start) {
        return None;
    }
    // "4111 1111 1111 1111 123" may be a 16-digit card followed by a number: try 19, then 16.
    let grouped19 = end - start == 23;
    let ends: &[usize] = if grouped19 { &[end, start + 19] } else { &[end] };
    ends.iter().copied().find_map(|cut| {
        let mut digits = [0u8; 19];
        let mut n = 0;
        for &b in hay[start..cut].iter().filter(|b| b.is_ascii_digit()) {
            *digits.get_mut(n)? = b;
            n += 1;
        }
        let digits = &digits[..n];
        (n >= 13 && card_issuer_ok(digits) && luhn(digits) && !glued_after(hay, cut)).then_some((start, cut))
    })
}

fn ssn(hay: &[u8], start: usize, end: usize) -> Option<(usize, usize)> {
    let t = &hay[start..end];
    if t.len() != 11 {
        return None;
    }
    let area = &t[0..3];
    let ok = area != b"000"
        && area != b"666"
        && area[0] != b'9'
        && &t[4..6] != b"00"
        && &t[7..11] != b"0000"
        && !glued_before(hay, start)
        && !glued_after(hay, end);
    ok.then_some((start, end))
}

/// IBAN lengths by country (SWIFT IBAN registry).
const IBAN_LENGTHS: &[(&[u8; 2], usize)] = &[
    (b"AD", 24),
    (b"AE", 23),
    (b"AL", 28),
    (b"AT", 20),
    (b"AZ", 28),
    (b"BA", 20),
    (b"BE", 16),
    (b"BG", 22),
    (b"BH", 22),
    (b"BI", 27),
    (b"BR", 29),
    (b"BY", 28),
    (b"CH", 21),
    (b"CR", 22),
    (b"CY", 28),
    (b"CZ", 24),
    (b"DE", 22),
    (b"DJ", 27),
    (b"DK", 18),
    (b"DO", 28),
    (b"EE", 20),
    (b"EG", 29),
    (b"ES", 24),
    (b"FI", 18),
    (b"FK", 18),
    (b"FO", 18),
    (b"FR", 27),
    (b"GB", 22),
    (b"GE", 22),
    (b"GI", 23),
    (b"GL", 18),
    (b"GR", 27),
    (b"GT", 28),
    (b"HN", 28),
    (b"HR", 21),
    (b"HU", 28),
    (b"IE", 22),
    (b"IL", 23),
    (b"IQ", 23),
    (b"IS", 26),
    (b"IT", 27),
    (b"JO", 30),
    (b"KW", 30),
    (b"KZ", 20),
    (b"LB", 28),
    (b"LC", 32),
    (b"LI", 21),
    (b"LT", 20),
    (b"LU", 20),
    (b"LV", 21),
    (b"LY", 25),
    (b"MC", 27),
    (b"MD", 24),
    (b"ME", 22),
    (b"MK", 19),
    (b"MN", 20),
    (b"MR", 27),
    (b"MT", 31),
    (b"MU", 30),
    (b"NI", 28),
    (b"NL", 18),
    (b"NO", 15),
    (b"OM", 23),
    (b"PK", 24),
    (b"PL", 28),
    (b"PS", 29),
    (b"PT", 25),
    (b"QA", 29),
    (b"RO", 24),
    (b"RS", 22),
    (b"RU", 33),
    (b"SA", 24),
    (b"SC", 31),
    (b"SD", 18),
    (b"SE", 24),
    (b"SI", 19),
    (b"SK", 24),
    (b"SM", 27),
    (b"SO", 23),
    (b"ST", 25),
    (b"SV", 28),
    (b"TL", 23),
    (b"TN", 24),
    (b"TR", 26),
    (b"UA", 29),
    (b"VA", 22),
    (b"VG", 24),
    (b"XK", 20),
    (b"YE", 30),
];

fn iban(hay: &[u8], start: usize, end: usize) -> Option<(usize, usize)> {
    let t = &hay[start..end];
    let want = IBAN_LENGTHS.iter().find(|(cc, _)| cc[..] == t[..2]).map(|(_, len)| *len)?;
    // Take exactly `want` characters (spaces between groups skipped): the candidate may have
    // swallowed a following group or word.
    let mut seen = 0;
    let cut = t.iter().position(|&b| {
        if b != b' ' {
            seen += 1;
        }
        seen == want
    })? + 1;
    if cut != t.len() && t[cut] != b' ' {
        return None;
    }
    // mod-97 over the rearranged string (country + check digits moved to the end).
    let mut rem: u32 = 0;
    for &b in t[4..cut].iter().chain(&t[..4]).filter(|&&b| b != b' ') {
        rem = match b {
            b'0'..=b'9' => (rem * 10 + u32::from(b - b'0')) % 97,
            b'A'..=b'Z' => (rem * 100 + u32::from(b - b'A' + 10)) % 97,
            _ => return None,
        };
    }
    (rem == 1).then_some((start, start + cut))
}

fn ip(hay: &[u8], start: usize, end: usize) -> Option<(usize, usize)> {
    let t = &hay[start..end];
    if t.contains(&b':') {
        return ipv6(hay, start, end);
    }
    // A dotted quad inside a longer dotted run is a version or an OID, not an address.
    let dotted_digit_before = start >= 2 && hay[start - 1] == b'.' && hay[start - 2].is_ascii_digit();
    let dotted_digit_after = hay.get(end) == Some(&b'.') && hay.get(end + 1).is_some_and(u8::is_ascii_digit);
    if dotted_digit_before || dotted_digit_after {
        return None;
    }
    let octets_ok = t.split(|&b| b == b'.').all(|o| {
        if o.is_empty() || o.len() > 3 || !o.iter().all(u8::is_ascii_digit) {
            return false;
        }
        let leading_zero = o.len() > 1 && o[0] == b'0';
        let value = o.iter().fold(0u32, |acc, d| acc * 10 + u32::from(d - b'0'));
        !leading_zero && value <= 255
    });
    octets_ok.then_some((start, end))
}

fn ipv6(hay: &[u8], start: usize, end: usize) -> Option<(usize, usize)> {
    let t = &hay[start..end];
    if hay.get(end).is_some_and(|&b| is_word(b)) {
        return None;
    }
    let text = std::str::from_utf8(t).ok()?;
    Ipv6Addr::from_str(text).ok()?;
    // "a::b" and "::1" are as likely to be code ("Foo::bar") or loopback as an address:
    // require two groups and a decimal digit.
    let groups = text.split([':', '.']).filter(|g| !g.is_empty()).count();
    (groups >= 2 && t.iter().any(u8::is_ascii_digit)).then_some((start, end))
}

fn jwt(hay: &[u8], start: usize, end: usize) -> Option<(usize, usize)> {
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    use base64::Engine as _;
    const B64URL: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::URL_SAFE,
        GeneralPurposeConfig::new()
            .with_decode_padding_mode(DecodePaddingMode::Indifferent)
            .with_decode_allow_trailing_bits(true),
    );
    let t = &hay[start..end];
    let header = t.split(|&b| b == b'.').next()?;
    let decoded = B64URL.decode(header).ok()?;
    serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&decoded).ok()?;
    Some((start, end))
}

fn bearer_token(hay: &[u8], start: usize, end: usize) -> Option<(usize, usize)> {
    // "Bearer" is 6 bytes, then spaces: only the credential is redacted.
    let token_start = start + 6 + hay.get(start + 6..end)?.iter().take_while(|&&b| b == b' ').count();
    let token = &hay[token_start..end];
    let len = token.iter().take_while(|&&b| b != b'=').count();
    // Prose ("Bearer authentication") and placeholders ("Bearer YOUR_TOKEN") are not tokens.
    let plausible = (len >= 12 && token.iter().any(u8::is_ascii_digit)) || len >= 32;
    plausible.then_some((token_start, end))
}

fn api_key(hay: &[u8], start: usize, end: usize) -> Option<(usize, usize)> {
    let t = &hay[start..end];
    // "sk-" is also how kebab-case words start ("sk-learn-..."): real keys carry digits.
    if t.starts_with(b"sk-") && !t[3..].iter().any(u8::is_ascii_digit) {
        return None;
    }
    Some((start, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(d: Detector, s: &str) -> Option<String> {
        validate(d, s.as_bytes(), 0, s.len()).map(|(a, b)| s[a..b].to_string())
    }

    #[test]
    fn luhn_and_issuers() {
        for good in [
            "4111111111111111",
            "4012888888881881",
            "4222222222222",
            "5555555555554444",
            "5105105105105100",
            "2223003122003222",
            "378282246310005",
            "371449635398431",
            "6011111111111117",
            "3530111333300000",
            "30569309025904",
            "4111 1111 1111 1111",
            "4111-1111-1111-1111",
            "3782 822463 10005",
        ] {
            assert_eq!(v(Detector::CreditCard, good).as_deref(), Some(good), "{good}");
        }
        for bad in [
            "4111111111111112", // Luhn
            "1714566600123",    // millisecond epoch: Luhn may pass, issuer never does
            "9111111111111111",
            "5011111111111111",
            "37828224631000", // Amex with 14 digits
        ] {
            assert_eq!(v(Detector::CreditCard, bad), None, "{bad}");
        }
    }

    #[test]
    fn card_followed_by_a_group_is_cut_back() {
        let s = "4111 1111 1111 1111 123";
        assert_eq!(validate(Detector::CreditCard, s.as_bytes(), 0, s.len()), Some((0, 19)));
    }

    #[test]
    fn ssn_ranges() {
        assert_eq!(v(Detector::Ssn, "123-45-6789").as_deref(), Some("123-45-6789"));
        assert_eq!(v(Detector::Ssn, "078-05-1120").as_deref(), Some("078-05-1120"));
        for bad in ["000-12-3456", "666-12-3456", "900-12-3456", "999-99-9999", "123-00-4567", "123-45-0000"] {
            assert_eq!(v(Detector::Ssn, bad), None, "{bad}");
        }
        let glued = "ID-123-45-6789";
        assert_eq!(validate(Detector::Ssn, glued.as_bytes(), 3, glued.len()), None);
    }

    #[test]
    fn iban_checksums() {
        for good in [
            "DE89370400440532013000",
            "DE89 3704 0044 0532 0130 00",
            "GB82WEST12345698765432",
            "GB82 WEST 1234 5698 7654 32",
            "FR1420041010050500013M02606",
            "NL91ABNA0417164300",
            "CH9300762011623852957",
            "NO9386011117947",
            "BE68539007547034",
            "ES9121000418450200051332",
            "IT60X0542811101000000123456",
        ] {
            assert_eq!(v(Detector::Iban, good).as_deref(), Some(good), "{good}");
        }
        for bad in ["DE89370400440532013001", "XX89370400440532013000", "DE8937040044053201300"] {
            assert_eq!(v(Detector::Iban, bad), None, "{bad}");
        }
        let s = "DE89 3704 0044 0532 0130 00 EUR";
        assert_eq!(validate(Detector::Iban, s.as_bytes(), 0, s.len()), Some((0, 27)));
    }

    #[test]
    fn ip_addresses() {
        for good in ["10.0.0.1", "255.255.255.255", "0.0.0.0", "fe80::1", "2001:db8::8a2e:370:7334", "::ffff:192.0.2.1"]
        {
            assert_eq!(v(Detector::Ip, good).as_deref(), Some(good), "{good}");
        }
        for bad in ["256.1.1.1", "01.2.3.4", "12:30:00", "00:1A:2B:3C:4D:5E", "dead::beef", "::1", "a::b"] {
            assert_eq!(v(Detector::Ip, bad), None, "{bad}");
        }
        let five = "1.2.3.4.5";
        assert_eq!(validate(Detector::Ip, five.as_bytes(), 0, 7), None);
        assert_eq!(validate(Detector::Ip, five.as_bytes(), 2, 9), None);
    }

    #[test]
    fn phones() {
        for good in [
            "+14155550132",
            "+1 415 555 0132",
            "+1 (415) 555-0132",
            "+44 20 7946 0958",
            "+44 (0)20 7946 0958",
            "+49 30 12345678",
            "+33 1 23 45 67 89",
            "(415) 555-0132",
            "415-555-0132",
        ] {
            assert_eq!(v(Detector::Phone, good).as_deref(), Some(good), "{good}");
        }
        for bad in ["+1 2024", "+100 200 300 400", "+1 115 555 0132", "+12345"] {
            assert_eq!(v(Detector::Phone, bad), None, "{bad}");
        }
        assert_eq!(v(Detector::Phone, "+1 415 555 0132 2024").as_deref(), Some("+1 415 555 0132"));
    }

    #[test]
    fn tokens() {
        let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjMifQ.c2lnbmF0dXJl";
        assert_eq!(v(Detector::Jwt, jwt).as_deref(), Some(jwt));
        assert_eq!(v(Detector::Jwt, "eyJub3Rqc29u.eyJhYmMi.x"), None);
        assert_eq!(v(Detector::BearerToken, "Bearer abc123def456ghi").as_deref(), Some("abc123def456ghi"));
        assert_eq!(v(Detector::BearerToken, "Bearer authentication"), None);
        assert_eq!(v(Detector::ApiKey, "sk-learn-preprocessing-pipelines"), None);
        assert_eq!(v(Detector::Email, "icon@2x.png"), None);
        assert_eq!(v(Detector::Email, "john.@example.com"), None);
    }
}
