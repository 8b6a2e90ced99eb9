//! The built-in detectors: their configuration names, mask labels and candidate patterns.
//!
//! A pattern here only proposes *candidates*; [`super::validate`] decides (checksums,
//! number ranges, context). Patterns therefore stay cheap for the lazy DFA: ASCII classes,
//! ASCII word boundaries `(?-u:\b)` (a Unicode `\b` would make the DFA give up on non-ASCII
//! text), no bounded repetitions larger than needed, and no class that contains `"` or `\`
//! — so a candidate never crosses a JSON string boundary, which the raw fast path relies on.

/// A built-in detector. The configuration names them in snake case ([`Detector::name`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Detector {
    /// E-mail addresses (`jane.doe@example.com`).
    Email,
    /// Phone numbers: international (`+44 20 7946 0958`, E.164 `+14155550132`) and US
    /// national (`(415) 555-0132`, `415-555-0132`, `415.555.0132`).
    Phone,
    /// Payment card numbers: Luhn-valid, a known issuer prefix and length, digits either
    /// bare or grouped the way cards are printed.
    CreditCard,
    /// US social security numbers, dashed (`123-45-6789`), with invalid ranges refused.
    Ssn,
    /// IBANs, compact or grouped by four, with a known country length and mod-97 checksum.
    Iban,
    /// IPv4 (octets ≤ 255, no leading zeros) and IPv6 addresses.
    Ip,
    /// JSON Web Tokens (`eyJ….eyJ….sig`) whose header decodes to a JSON object.
    Jwt,
    /// The credential after `Bearer ` (the word `Bearer` itself is kept).
    BearerToken,
    /// AWS access key ids (`AKIA…`, `ASIA…`).
    AwsKey,
    /// Well-known API key shapes: OpenAI/Anthropic `sk-`, Stripe `sk_live_`, GitHub
    /// `ghp_`/`github_pat_`, Slack `xoxb-`, Google `AIza`, GitLab, Hugging Face, npm, SendGrid.
    ApiKey,
}

/// ASCII word boundary: DFA-friendly on any input.
macro_rules! wb {
    () => {
        r"(?-u:\b)"
    };
}

impl Detector {
    /// Every built-in detector, in match-priority order: when two detectors match at the same
    /// position, the earlier one is reported (custom detectors come before all of these).
    /// Specific shapes (tokens, keys) precede generic ones (numbers).
    pub const ALL: [Detector; 10] = [
        Detector::Jwt,
        Detector::BearerToken,
        Detector::AwsKey,
        Detector::ApiKey,
        Detector::Iban,
        Detector::Email,
        Detector::CreditCard,
        Detector::Ssn,
        Detector::Phone,
        Detector::Ip,
    ];

    /// The name used in configuration, counts and [`super::Blocked`].
    pub fn name(self) -> &'static str {
        match self {
            Detector::Email => "email",
            Detector::Phone => "phone",
            Detector::CreditCard => "credit_card",
            Detector::Ssn => "ssn",
            Detector::Iban => "iban",
            Detector::Ip => "ip",
            Detector::Jwt => "jwt",
            Detector::BearerToken => "bearer_token",
            Detector::AwsKey => "aws_key",
            Detector::ApiKey => "api_key",
        }
    }

    /// The label inside mask tokens (`[EMAIL]`, `[EMAIL:3f9a1c2b]`).
    pub fn label(self) -> &'static str {
        match self {
            Detector::Email => "EMAIL",
            Detector::Phone => "PHONE",
            Detector::CreditCard => "CREDIT_CARD",
            Detector::Ssn => "SSN",
            Detector::Iban => "IBAN",
            Detector::Ip => "IP",
            Detector::Jwt => "JWT",
            Detector::BearerToken => "BEARER_TOKEN",
            Detector::AwsKey => "AWS_KEY",
            Detector::ApiKey => "API_KEY",
        }
    }

    /// The detector configured as `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|d| d.name() == name)
    }

    /// The candidate pattern (`regex` syntax, Unicode mode). It only proposes candidates:
    /// the detector is this pattern *and* its validator. Public for diagnostics and for the
    /// benchmark baseline.
    pub fn pattern(self) -> &'static str {
        match self {
            Detector::Email => {
                concat!(wb!(), r"[A-Za-z0-9_%+-][A-Za-z0-9._%+-]*@(?:[A-Za-z0-9-]+\.)+[A-Za-z]{2,}", wb!())
            }
            Detector::Phone => concat!(
                // International: +country code, then digit groups with single separators and
                // an optional trunk "(0)". The validator counts digits and checks the code.
                r"\+[1-9][0-9]{0,2}(?:[ .-]?(?:\(0\)[ .-]?)?(?:\([0-9]{1,4}\)|[0-9]{1,5})){1,6}",
                wb!(),
                // US national: (415) 555-0132, 415-555-0132, 415.555.0132, 1-800-555-0199.
                r"|\([2-9][0-9]{2}\) ?[2-9][0-9]{2}[ .-][0-9]{4}",
                wb!(),
                "|",
                wb!(),
                r"(?:1-)?[2-9][0-9]{2}-[2-9][0-9]{2}-[0-9]{4}",
                wb!(),
                "|",
                wb!(),
                r"(?:1\.)?[2-9][0-9]{2}\.[2-9][0-9]{2}\.[0-9]{4}",
                wb!()
            ),
            // Issuer prefixes all start with 2-6: millisecond epochs (1…) are not candidates.
            Detector::CreditCard => concat!(
                wb!(),
                r"[2-6](?:[0-9]{3}-[0-9]{4}-[0-9]{4}-[0-9]{4}(?:-[0-9]{3})?",
                r"|[0-9]{3} [0-9]{4} [0-9]{4} [0-9]{4}(?: [0-9]{3})?",
                r"|[0-9]{3}[ -][0-9]{6}[ -][0-9]{4,5}",
                r"|[0-9]{12,18})",
                wb!()
            ),
            Detector::Ssn => concat!(wb!(), r"[0-9]{3}-[0-9]{2}-[0-9]{4}", wb!()),
            Detector::Iban => {
                concat!(wb!(), r"[A-Z]{2}[0-9]{2}(?:[A-Z0-9]{11,30}|(?: [A-Z0-9]{4}){2,7}(?: [A-Z0-9]{1,3})?)", wb!())
            }
            // IPv6: eight groups, or "::" somewhere (so times and MAC addresses are no
            // candidates); an optional dotted IPv4 tail (::ffff:192.0.2.1).
            Detector::Ip => concat!(
                wb!(),
                r"(?:[0-9]{1,3}\.){3}[0-9]{1,3}",
                wb!(),
                "|",
                wb!(),
                r"[0-9A-Fa-f]{1,4}(?::[0-9A-Fa-f]{1,4}){7}",
                wb!(),
                "|",
                wb!(),
                r"[0-9A-Fa-f]{1,4}(?::[0-9A-Fa-f]{1,4}){0,6}::(?:[0-9A-Fa-f]{1,4}(?::[0-9A-Fa-f]{1,4}){0,6})?(?:\.[0-9]{1,3}){0,3}",
                // A leading "::" must not follow a word character ("std::io").
                r"|(?-u:\B)::[0-9A-Fa-f]{1,4}(?::[0-9A-Fa-f]{1,4}){0,6}(?:\.[0-9]{1,3}){0,3}"
            ),
            Detector::Jwt => concat!(wb!(), r"eyJ[A-Za-z0-9_-]{2,}\.eyJ[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]*"),
            Detector::BearerToken => concat!(wb!(), r"[Bb]earer +[A-Za-z0-9._~+/-]{8,}=*"),
            Detector::AwsKey => concat!(wb!(), r"(?:AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16}", wb!()),
            Detector::ApiKey => concat!(
                wb!(),
                r"(?:sk-[A-Za-z0-9_-]{20,}",
                r"|[sr]k_(?:live|test)_[A-Za-z0-9]{16,}",
                r"|gh[pousr]_[A-Za-z0-9]{36,}",
                r"|github_pat_[A-Za-z0-9_]{22,}",
                r"|xox[abprs]-[A-Za-z0-9-]{10,}",
                r"|AIza[A-Za-z0-9_-]{35}",
                r"|glpat-[A-Za-z0-9_-]{20,}",
                r"|hf_[A-Za-z0-9]{30,}",
                r"|npm_[A-Za-z0-9]{36}",
                r"|SG\.[A-Za-z0-9_-]{16,}\.[A-Za-z0-9_-]{16,})"
            ),
        }
    }
}

impl std::fmt::Display for Detector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
