use super::*;
use proptest::prelude::*;

fn servers() -> HashSet<String> {
    ["crm", "docs"].into_iter().map(String::from).collect()
}

fn policy(hosts: Option<&[&str]>, origins: &[&str], crm_origins: &[&str]) -> OriginPolicy {
    let raw = RawOriginPolicy {
        allowed_hosts: hosts.map(|h| h.iter().map(|s| s.to_string()).collect()),
        allowed_origins: origins.iter().map(|s| s.to_string()).collect(),
        server_origins: if crm_origins.is_empty() {
            BTreeMap::new()
        } else {
            BTreeMap::from([("crm".to_string(), crm_origins.iter().map(|s| s.to_string()).collect())])
        },
    };
    OriginPolicy::compile(&raw, &servers()).unwrap()
}

fn loopback() -> OriginPolicy {
    policy(Some(&LOOPBACK_HOSTS), &LOOPBACK_ORIGINS, &[])
}

fn origin_ok(p: &OriginPolicy, server: &str, values: &[&str]) -> bool {
    p.check_origin(Some(server), values.iter().copied()).is_ok()
}

#[test]
fn loopback_hosts_accept_only_loopback_names() {
    let p = loopback();
    for ok in [
        "127.0.0.1:10000",
        "localhost:8080",
        "LOCALHOST:1",
        "localhost",
        "localhost.:10000",
        "[::1]:10000",
        "[0:0::1]:5",
    ] {
        assert!(p.check_host(Some(ok)).is_ok(), "{ok}");
    }
    for bad in [
        "evil.example.com:10000",
        "evil.example.com",
        "localhost.evil.example.com",
        "127.0.0.1.nip.io:10000",
        "127.0.0.2:10000",
        "[::2]:10000",
        "::1",
        "localhost:port",
        "localhost:99999",
        "",
        "user@localhost",
        "local host",
    ] {
        let r = p.check_host(Some(bad)).unwrap_err();
        assert_eq!(
            (r.status, r.code, r.refusal),
            (421, code::FORBIDDEN, crate::reject::Refusal::ForeignOrigin),
            "{bad}"
        );
        assert_eq!(r.id, None);
    }
    assert!(p.check_host(None).is_err(), "a request without a host is refused when hosts are restricted");
}

#[test]
fn no_host_list_accepts_any_host() {
    let p = policy(None, &[], &[]);
    assert!(p.check_host(Some("evil.example.com")).is_ok());
    assert!(p.check_host(None).is_ok());
}

#[test]
fn host_patterns_with_ports_and_subdomains() {
    let p = policy(Some(&["gw.example.com:8443", "*.mesh.internal", "10.0.0.7:*"]), &[], &[]);
    assert!(p.check_host(Some("gw.example.com:8443")).is_ok());
    assert!(p.check_host(Some("gw.example.com")).is_err(), "port required by the pattern");
    assert!(p.check_host(Some("gw.example.com:443")).is_err());
    assert!(p.check_host(Some("a.mesh.internal:80")).is_ok());
    assert!(p.check_host(Some("a.b.mesh.internal")).is_ok());
    assert!(p.check_host(Some("mesh.internal")).is_err(), "*.suffix does not cover the suffix itself");
    assert!(p.check_host(Some("evilmesh.internal")).is_err());
    assert!(p.check_host(Some("10.0.0.7:1")).is_ok());
}

#[test]
fn origin_absent_passes_foreign_refused() {
    let p = loopback();
    assert!(origin_ok(&p, "crm", &[]));
    for ok in
        ["http://localhost:6274", "http://127.0.0.1:3000", "https://localhost", "http://[::1]:80", "HTTP://LocalHost:1"]
    {
        assert!(origin_ok(&p, "crm", &[ok]), "{ok}");
    }
    for bad in [
        "http://evil.example.com",
        "http://evil.example.com:10000",
        "null",
        "http://localhost.evil.example.com",
        "file://",
        "http://localhost/path",
        "http://user@localhost",
        "chrome-extension://abcdef",
        "",
    ] {
        let r = p.check_origin(Some("crm"), [bad].into_iter()).unwrap_err();
        assert_eq!((r.status, r.refusal), (403, crate::reject::Refusal::ForeignOrigin), "{bad}");
        assert!(r.message.contains("is not allowed"), "{}", r.message);
    }
    let r = p.check_origin(Some("crm"), ["http://localhost:1", "http://localhost:1"].into_iter()).unwrap_err();
    assert!(r.message.contains("repeated"), "{}", r.message);
}

#[test]
fn no_origin_list_refuses_every_origin() {
    let p = policy(None, &[], &[]);
    assert!(origin_ok(&p, "crm", &[]));
    assert!(!origin_ok(&p, "crm", &["http://localhost:3000"]));
}

#[test]
fn default_ports_and_server_origins() {
    let p = policy(None, &["https://app.example.com"], &["https://crm-ui.example.com", "http://*.dev.example.com:*"]);
    assert!(origin_ok(&p, "docs", &["https://app.example.com"]));
    assert!(origin_ok(&p, "docs", &["https://app.example.com:443"]));
    assert!(!origin_ok(&p, "docs", &["https://app.example.com:8443"]));
    assert!(!origin_ok(&p, "docs", &["http://app.example.com"]), "scheme matters");
    assert!(origin_ok(&p, "crm", &["https://crm-ui.example.com"]));
    assert!(!origin_ok(&p, "docs", &["https://crm-ui.example.com"]), "a server's CORS origins are its own");
    assert!(origin_ok(&p, "crm", &["http://a.dev.example.com:5173"]));
    assert!(!origin_ok(&p, "crm", &["http://dev.example.com:5173"]));
}

#[test]
fn invalid_patterns_are_refused_with_their_path() {
    let raw = |hosts: Option<Vec<&str>>, origins: Vec<&str>| RawOriginPolicy {
        allowed_hosts: hosts.map(|h| h.into_iter().map(String::from).collect()),
        allowed_origins: origins.into_iter().map(String::from).collect(),
        server_origins: BTreeMap::new(),
    };
    let cases = [
        (raw(Some(vec![]), vec![]), "origin_policy.allowed_hosts"),
        (raw(Some(vec!["ok.example.com", "bad host"]), vec![]), "origin_policy.allowed_hosts[1]"),
        (raw(Some(vec!["x:70000"]), vec![]), "origin_policy.allowed_hosts[0]"),
        (raw(Some(vec!["*."]), vec![]), "origin_policy.allowed_hosts[0]"),
        (raw(Some(vec!["*.*.example.com"]), vec![]), "origin_policy.allowed_hosts[0]"),
        (raw(None, vec!["app.example.com"]), "origin_policy.allowed_origins[0]"),
        (raw(None, vec!["https://app.example.com/"]), "origin_policy.allowed_origins[0]"),
        (raw(None, vec!["null"]), "origin_policy.allowed_origins[0]"),
        (raw(None, vec!["https://[::1"]), "origin_policy.allowed_origins[0]"),
    ];
    for (raw, path) in cases {
        let e = OriginPolicy::compile(&raw, &servers()).unwrap_err();
        assert_eq!(e.path(), Some(path), "{e}");
    }
    let unknown = RawOriginPolicy {
        server_origins: BTreeMap::from([("nope".to_string(), vec!["https://a.example.com".to_string()])]),
        ..Default::default()
    };
    let e = OriginPolicy::compile(&unknown, &servers()).unwrap_err();
    assert_eq!(e.path(), Some("origin_policy.server_origins.nope"));
}

#[test]
fn envoy_regexes_match_what_the_filter_accepts() {
    let cases: [(&str, &[&str], &[&str]); 5] = [
        (
            "https://app.example.com",
            &["https://app.example.com", "https://app.example.com:443"],
            &[
                "https://app.example.com:8443",
                "http://app.example.com",
                "https://app.example.com.evil.com",
                "https://appxexample.com",
            ],
        ),
        (
            "http://localhost:*",
            &["http://localhost", "http://localhost:6274"],
            &["http://localhost.evil", "https://localhost"],
        ),
        ("http://[::1]:3000", &["http://[::1]:3000"], &["http://[::1]:3001", "http://[::2]:3000"]),
        (
            "https://*.example.com",
            &["https://a.example.com", "https://a.b.example.com"],
            &["https://example.com", "https://aexample.com"],
        ),
        ("*", &["https://anything.example", "http://x:1"], &[]),
    ];
    for (pattern, yes, no) in cases {
        let compiled = OriginPattern::parse(pattern).unwrap();
        let re = regex::Regex::new(&compiled.regex()).unwrap();
        for origin in yes {
            assert!(re.is_match(origin), "{pattern} regex should accept {origin}");
            assert!(compiled.matches(&request_origin(origin).unwrap()), "{pattern} should accept {origin}");
        }
        for origin in no {
            assert!(!re.is_match(origin), "{pattern} regex should refuse {origin}");
            assert!(!request_origin(origin).is_some_and(|o| compiled.matches(&o)), "{pattern} should refuse {origin}");
        }
    }
}

proptest! {
    /// Whatever a client puts in Host or Origin, the checks answer (never panic) and refuse
    /// anything that does not name a loopback host.
    #[test]
    fn arbitrary_values_never_pass_as_loopback(value in "\\PC{0,40}") {
        let p = loopback();
        let host_ok = p.check_host(Some(&value)).is_ok();
        let origin_ok = p.check_origin(Some("crm"), [value.as_str()].into_iter()).is_ok();
        let lower = value.to_ascii_lowercase();
        let names_loopback = ["localhost", "127.0.0.1", "[::1]", "[0:0:0:0:0:0:0:1]", "[0:0::1]", "[::0:1]"]
            .iter()
            .any(|h| lower.contains(h)) || lower.contains("::");
        if host_ok || origin_ok {
            prop_assert!(names_loopback, "{value:?} passed");
        }
    }

    /// Every loopback origin a browser can send on any port passes, and its regex agrees.
    #[test]
    fn loopback_origins_on_any_port_pass(port in 1u16.., https in any::<bool>(), host in 0usize..3) {
        let scheme = if https { "https" } else { "http" };
        let origin = format!("{scheme}://{}:{port}", ["localhost", "127.0.0.1", "[::1]"][host]);
        prop_assert!(origin_ok(&loopback(), "docs", &[&origin]));
        let any_matches = LOOPBACK_ORIGINS.iter().any(|p| {
            regex::Regex::new(&OriginPattern::parse(p).unwrap().regex()).unwrap().is_match(&origin)
        });
        prop_assert!(any_matches, "{origin}");
    }
}
