use super::*;

fn ok(uri: &str) -> String {
    match canonical(uri) {
        Ok(c) => c.into_owned(),
        Err(e) => panic!("{uri}: {e}"),
    }
}

#[test]
fn canonical_uris_are_borrowed_unchanged() {
    for uri in [
        "file:///srv/public/a.txt",
        "file:///srv/public/",
        "crm://customers/42",
        "crm://stats",
        "https://example.com:8443/a?b=c#d",
        "urn:isbn:0451450523",
        "file:///srv/public/my%20file.txt",
        "file:///srv/public/caf%C3%A9",
        "file:///srv/public/a?next=http://x",
        "https://[::1]/x",
        "https://[::1]:8443/x",
        "data:text/plain,hi",
    ] {
        assert!(matches!(canonical(uri), Ok(Cow::Borrowed(_))), "{uri}: {:?}", canonical(uri));
    }
}

#[test]
fn equivalent_spellings_become_one() {
    let cases = [
        ("FILE:///srv/public/a", "file:///srv/public/a"),
        ("File://LocalHost/srv/public/a", "file:///srv/public/a"),
        ("file://localhost/srv/public/a", "file:///srv/public/a"),
        ("file:/srv/public/a", "file:///srv/public/a"),
        ("file:///srv/%70ublic/%61", "file:///srv/public/a"),
        ("file:///srv/public/%7e%5F%2D", "file:///srv/public/~_-"),
        ("file:///srv/public/a%2ab", "file:///srv/public/a%2Ab"),
        ("file:///srv/public/café", "file:///srv/public/caf%C3%A9"),
        ("file:///srv/public/a\"b", "file:///srv/public/a%22b"),
        ("crm://CUSTOMERS/42", "crm://customers/42"),
        ("crm://%63ustomers/42", "crm://customers/42"),
        ("HTTPS://Example.COM:443/A", "https://example.com/A"),
        ("http://example.com:80/", "http://example.com/"),
        ("http://example.com:0080/", "http://example.com/"),
        ("http://example.com:08080/", "http://example.com:8080/"),
        ("crm://customers/{id}", "crm://customers/%7Bid%7D"),
    ];
    for (uri, want) in cases {
        assert_eq!(ok(uri), want, "{uri}");
        // Idempotent: the canonical form is its own canonical form, borrowed.
        assert!(matches!(canonical(want), Ok(Cow::Borrowed(_))), "{want}");
    }
}

#[test]
fn reader_dependent_forms_are_refused() {
    let cases: &[(&str, UriError)] = &[
        ("", UriError::Empty),
        ("/srv/private/x", UriError::NoScheme),
        ("srv/private", UriError::NoScheme),
        ("1x:/a", UriError::NoScheme),
        ("file:///srv/public/../private/x", UriError::DotSegment),
        ("file:///srv/public/./x", UriError::DotSegment),
        ("file:///srv/public/..", UriError::DotSegment),
        ("file:///srv/public/%2e%2e/private/x", UriError::DotSegment),
        ("file:///srv/public/%2E%2E/private/x", UriError::DotSegment),
        ("file:///srv/public/.%2e/private/x", UriError::DotSegment),
        ("file:///srv/public/..;x/private", UriError::DotSegment),
        ("file:///srv/public/a?x=/../../private", UriError::DotSegment),
        ("file:///srv/public/a#/../../private", UriError::DotSegment),
        ("crm://../customers/1", UriError::DotSegment),
        ("file:///srv/public//../private/x", UriError::DotSegment),
        ("file:///srv/public//x", UriError::EmptySegment),
        ("file:////srv/private/x", UriError::EmptySegment),
        ("urn:a//b", UriError::EmptySegment),
        ("file:///srv/public/..%2fprivate/x", UriError::EncodedDelimiter("slash (%2F)")),
        ("file:///srv/public/..%2Fprivate/x", UriError::EncodedDelimiter("slash (%2F)")),
        ("file:///srv/public/..%5cprivate/x", UriError::EncodedDelimiter("backslash (%5C)")),
        ("file:///srv/public/%252e%252e/x", UriError::EncodedDelimiter("percent sign (%25)")),
        ("file:///srv/public/a%00", UriError::EncodedDelimiter("control character")),
        ("file:///srv/public/a%0a", UriError::EncodedDelimiter("control character")),
        ("file:///srv/public/..\\private\\x", UriError::Character("a backslash")),
        ("file:///srv/public/.\t./private", UriError::Character("whitespace")),
        (" file:///srv/private/x", UriError::Character("whitespace")),
        ("file:///srv/private/x\u{85}", UriError::Character("whitespace")),
        ("file:///srv/private/x\u{7f}", UriError::Character("a control character")),
        ("file:///srv/public/%zz", UriError::BadEscape),
        ("file:///srv/public/%2", UriError::BadEscape),
        ("https://user@example.com/x", UriError::Userinfo),
        ("https://example.com:/x", UriError::Port),
        ("https://example.com:x/x", UriError::Port),
        ("https://example.com:65536/x", UriError::Port),
        ("https://exämple.com/x", UriError::Character("a non-ASCII host")),
        ("file:srv/private/x", UriError::FileForm),
    ];
    for (uri, want) in cases {
        assert_eq!(canonical(uri).as_ref().map_err(Clone::clone), Err(want.clone()), "{uri}");
    }
}

#[test]
fn patterns_are_canonical_or_kept_and_dead_ones_refused() {
    assert_eq!(canonical_pattern("file:///srv/public/*").unwrap(), "file:///srv/public/*");
    assert_eq!(canonical_pattern("FILE:///srv/Public/*").unwrap(), "file:///srv/Public/*");
    assert_eq!(canonical_pattern("crm://Customers/*").unwrap(), "crm://customers/*");
    assert_eq!(canonical_pattern("*").unwrap(), "*");
    assert_eq!(canonical_pattern("*://stats").unwrap(), "*://stats");
    assert_eq!(canonical_pattern("file:///srv/public/?.txt").unwrap(), "file:///srv/public/?.txt");
    assert_eq!(canonical_pattern("file:///srv/public/../private/*"), Err(UriError::DotSegment));
    assert_eq!(canonical_pattern("file:///srv//*"), Err(UriError::EmptySegment));
}

proptest::proptest! {
    /// Canonicalisation is idempotent, and no accepted URI has a dot or empty segment
    /// however its escapes are decoded once more (what a decoding reader sees).
    #[test]
    fn accepted_uris_cannot_climb(uri in "(file|FILE|crm)://(localhost|CUSTOMERS|)(/(\\.|\\.\\.|%2e|%2E|%2f|%5c|%25|a|%41|b~|;|)){0,6}(\\?x=/\\.\\.|#f|)") {
        if let Ok(c) = canonical(&uri) {
            let again = canonical(&c).map(Cow::into_owned);
            proptest::prop_assert_eq!(again.as_deref(), Ok(c.as_ref()), "{}", uri);
            let decoded = c.replace("%2E", ".").replace("%2e", ".");
            let after_scheme = decoded.split_once("://").map_or("", |(_, r)| r);
            let path = after_scheme.split_once('/').map_or("", |(_, p)| p);
            for segment in path.split('/') {
                proptest::prop_assert!(segment != "." && segment != "..", "{} -> {}", uri, c);
            }
            proptest::prop_assert!(!c.contains("%2F") && !c.contains("%5C") && !c.contains("%25"), "{} -> {}", uri, c);
        }
    }
}
