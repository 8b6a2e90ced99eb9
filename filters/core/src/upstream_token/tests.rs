use super::*;

fn raw() -> RawTokenExchange {
    RawTokenExchange {
        cluster: "meshgate_token_crm".to_string(),
        path: "/oauth/token".to_string(),
        authority: "idp.example:443".to_string(),
        audience: Some("crm".to_string()),
        resources: vec!["https://crm.example/mcp".to_string()],
        scope: Some("crm.read crm.write".to_string()),
        subject_token_type: TOKEN_TYPE_ACCESS_TOKEN.to_string(),
        timeout_ms: 2000,
        refresh_skew_secs: 30,
        cache_entries: 16,
        no_subject_token: NoSubjectToken::Refuse,
    }
}

fn compiled() -> TokenExchange {
    let servers: HashSet<String> = ["crm".to_string()].into();
    let all = TokenExchanges::compile(&[("crm".to_string(), raw())].into(), &servers).unwrap();
    all.get("crm").unwrap().clone()
}

#[test]
fn the_request_is_rfc_8693_and_carries_no_client_secret() {
    let request = compiled().request("ey.J&=+ x");
    let body = String::from_utf8(request.body).unwrap();
    assert_eq!(
        body,
        "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange\
         &subject_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Aaccess_token\
         &requested_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Aaccess_token\
         &audience=crm&resource=https%3A%2F%2Fcrm.example%2Fmcp&scope=crm.read+crm.write\
         &subject_token=ey.J%26%3D%2B+x"
    );
    assert_eq!(request.cluster, "meshgate_token_crm");
    assert!(request.headers.iter().all(|(k, _)| k != "authorization"));
    assert!(request.headers.contains(&(":path".to_string(), "/oauth/token".to_string())));
}

#[test]
fn bad_configurations_are_refused_with_their_path() {
    let servers: HashSet<String> = ["crm".to_string()].into();
    for (change, key) in [
        (Box::new(|r: &mut RawTokenExchange| r.timeout_ms = 0) as Box<dyn Fn(&mut RawTokenExchange)>, "timeout_ms"),
        (Box::new(|r: &mut RawTokenExchange| r.timeout_ms = MAX_TIMEOUT_MS + 1), "timeout_ms"),
        (Box::new(|r: &mut RawTokenExchange| r.subject_token_type = "urn:x".to_string()), "subject_token_type"),
        (Box::new(|r: &mut RawTokenExchange| r.path = "token".to_string()), "path"),
        (Box::new(|r: &mut RawTokenExchange| r.cache_entries = 0), "cache_entries"),
    ] {
        let mut r = raw();
        change(&mut r);
        let e = TokenExchanges::compile(&[("crm".to_string(), r)].into(), &servers).unwrap_err();
        assert!(e.to_string().contains(&format!("token_exchanges.crm.{key}")), "{e}");
    }
    let e = TokenExchanges::compile(&[("nope".to_string(), raw())].into(), &servers).unwrap_err();
    assert!(e.to_string().contains("no such server"), "{e}");
}

#[test]
fn answers_are_read_with_the_skew_and_errors_name_only_the_code() {
    let x = compiled();
    let now = 1_000_000_000_000;
    let (token, until) =
        x.read_answer(200, br#"{"access_token":"abc","token_type":"Bearer","expires_in":300}"#, now).unwrap();
    assert_eq!(token, "abc");
    assert_eq!(until, now + 270 * 1_000_000_000);
    let (_, until) =
        x.read_answer(200, br#"{"access_token":"abc","token_type":"bearer","expires_in":10}"#, now).unwrap();
    assert_eq!(until, now + 5 * 1_000_000_000, "a lifetime under the skew is used for half of it");
    let e = x.read_answer(400, br#"{"error":"invalid_grant","error_description":"secret ey123"}"#, now).unwrap_err();
    assert_eq!(e, "the token endpoint refused the exchange (invalid_grant)");
    let e = x.read_answer(400, br#"{"error":"<script>"}"#, now).unwrap_err();
    assert_eq!(e, "the token endpoint answered HTTP 400");
    assert!(x.read_answer(503, b"down", now).unwrap_err().contains("HTTP 503"));
    assert!(x.read_answer(200, br#"{"access_token":"a b","token_type":"Bearer"}"#, now).is_err());
    assert!(x.read_answer(200, br#"{"access_token":"ab","token_type":"N_A"}"#, now).is_err());
    assert!(x.read_answer(200, br#"{"access_token":"ab","token_type":"Bearer","expires_in":"9"}"#, now).is_err());
}

#[test]
fn slots_round_trip() {
    for slot in [
        Slot::Token { identity: "a\u{0}crm\u{0}s", until_ns: 7, token: "tok" },
        Slot::Lease { identity: "b", deadline_ns: 9 },
        Slot::Failed { identity: "c", at_ns: 11 },
    ] {
        assert_eq!(Slot::decode(Some(&slot.encode())), slot);
    }
    assert_eq!(Slot::decode(Some(b"T1")), Slot::Vacant);
    assert_eq!(Slot::decode(None), Slot::Vacant);
}

#[test]
fn one_exchange_per_identity_and_waiters_share_its_outcome() {
    let (first, write) = look(None, "alice", 100, 5_000, None);
    assert_eq!(first, Lookup::Lead);
    let leased = write.unwrap();
    // A concurrent miss waits; another identity colliding in the slot leads (and takes it).
    assert_eq!(look(Some(&leased), "alice", 200, 6_000, None), (Lookup::Wait, None));
    assert_eq!(look(Some(&leased), "bob", 200, 6_000, None).0, Lookup::Lead);
    // Settled with a token: every look is a hit until it is due.
    let stored = settle(Some(&leased), "alice", 5_000, Ok(("tok", 1_000)), 300).unwrap();
    assert_eq!(look(Some(&stored), "alice", 999, 0, Some(200)), (Lookup::Hit("tok".to_string()), None));
    assert_eq!(look(Some(&stored), "alice", 1_000, 9_000, None).0, Lookup::Lead, "due: a new exchange");
    assert_eq!(look(Some(&stored), "bob", 500, 9_000, None).0, Lookup::Lead, "never another user's token");
    // Settled with a failure: the waiters of that exchange fail; a later request tries again.
    let failed = settle(Some(&leased), "alice", 5_000, Err(()), 300).unwrap();
    assert_eq!(look(Some(&failed), "alice", 301, 0, Some(200)), (Lookup::Failed, None));
    assert_eq!(look(Some(&failed), "alice", 301, 9_000, None).0, Lookup::Lead);
    // A lease whose holder vanished expires.
    assert_eq!(look(Some(&leased), "alice", 5_000, 9_000, Some(200)).0, Lookup::Lead);
    // A stale holder never overwrites a newer lease.
    let newer = Slot::Lease { identity: "alice", deadline_ns: 9_000 }.encode();
    assert_eq!(settle(Some(&newer), "alice", 5_000, Ok(("old", 1)), 300), None);
}

#[test]
fn slot_keys_are_bounded_and_deterministic() {
    let x = compiled();
    let keys: HashSet<String> = (0..1000).map(|i| x.slot_key(&x.identity(&format!("user{i}")))).collect();
    assert!(keys.len() <= 16);
    assert_eq!(x.slot_key(&x.identity("alice")), x.slot_key(&x.identity("alice")));
    assert_ne!(x.identity("alice"), x.identity("bob"));
    // Asked for another audience (same scope): another identity, never the old token.
    let servers: HashSet<String> = ["crm".to_string()].into();
    let mut other = raw();
    other.audience = Some("billing".to_string());
    let other = TokenExchanges::compile(&[("crm".to_string(), other)].into(), &servers).unwrap();
    assert_ne!(other.get("crm").unwrap().identity("alice"), x.identity("alice"));
}
