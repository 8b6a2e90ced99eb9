use super::*;
use crate::config::{RawAnonymous, RawApiKey};
use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::json;

const SECRET: &str = "0123456789abcdef0123456789abcdef-test-secret";
const NOW: u64 = 1_800_000_000;
const ISS: &str = "https://idp.example.com";

struct Env;
impl SecretSource for Env {
    fn secret(&self, name: &str) -> Option<String> {
        (name == "TEST_SECRET").then(|| SECRET.to_string())
    }
}

fn jwks() -> Value {
    serde_json::from_str(include_str!("../../testdata/jwks.json")).unwrap()
}

fn auth() -> Authenticator {
    let raw = RawAuth {
        jwt: vec![
            RawJwtProvider {
                issuer: ISS.into(),
                audiences: vec!["meshgate".into()],
                jwks: Some(jwks()),
                hs256_secret_env: None,
                consumer_claim: "sub".into(),
                roles_claim: "roles".into(),
                leeway_seconds: None,
            },
            RawJwtProvider {
                issuer: "hs-issuer".into(),
                audiences: vec!["meshgate".into(), "other".into()],
                jwks: None,
                hs256_secret_env: Some("TEST_SECRET".into()),
                consumer_claim: "email".into(),
                roles_claim: "scope".into(),
                leeway_seconds: Some(5),
            },
        ],
        api_keys: vec![RawApiKey {
            consumer: "ci-bot".into(),
            sha256: hex::encode(Sha256::digest(b"key-1")),
            roles: vec!["reader".into()],
        }],
        anonymous: None,
        resource_metadata: None,
        token_cache_entries: Some(2),
        mtls: vec![],
    };
    Authenticator::compile(&raw, &Env, &|r| r == "reader").unwrap()
}

fn claims(extra: Value) -> Value {
    let mut c = json!({"iss": ISS, "aud": "meshgate", "sub": "alice", "exp": NOW + 600, "roles": ["reader", "admin"]});
    if let (Some(c), Some(e)) = (c.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            if v.is_null() {
                c.remove(k);
            } else {
                c.insert(k.clone(), v.clone());
            }
        }
    }
    c
}

fn rs256(c: &Value) -> String {
    let key = EncodingKey::from_rsa_pem(include_bytes!("../../testdata/rsa_private.pem")).unwrap();
    let mut h = Header::new(Algorithm::RS256);
    h.kid = Some("rsa-1".into());
    encode(&h, c, &key).unwrap()
}

fn es256(c: &Value) -> String {
    let key = EncodingKey::from_ec_pem(include_bytes!("../../testdata/ec_private.pem")).unwrap();
    encode(&Header::new(Algorithm::ES256), c, &key).unwrap()
}

fn hs256(c: &Value, secret: &str) -> String {
    encode(&Header::new(Algorithm::HS256), c, &EncodingKey::from_secret(secret.as_bytes())).unwrap()
}

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

fn check(a: &Authenticator, authz: &str, now: u64) -> Result<Arc<Consumer>, AuthError> {
    let mut cache = TokenCache::new(0);
    a.authenticate(Credentials { authorization: Some(authz), api_key: None, peer_certificate: None }, now, &mut cache)
}

#[test]
fn accepts_rs256_es256_hs256() {
    let a = auth();
    let c = check(&a, &bearer(&rs256(&claims(json!({})))), NOW).unwrap();
    let alice = format!("{ISS}#alice");
    assert_eq!(
        (c.name.as_str(), c.roles.clone(), c.method),
        (alice.as_str(), vec!["reader".into(), "admin".into()], AuthMethod::Jwt)
    );
    assert_eq!(check(&a, &bearer(&es256(&claims(json!({})))), NOW).unwrap().name, alice);
    let hs = hs256(
        &claims(json!({"iss":"hs-issuer","aud":["other"],"email":"bob@example.com","scope":"reader writer"})),
        SECRET,
    );
    let c = check(&a, &format!("bearer   {hs}"), NOW).unwrap();
    assert_eq!(
        (c.name.as_str(), c.roles.clone()),
        ("hs-issuer#bob@example.com", vec!["reader".into(), "writer".into()])
    );
}

#[test]
fn consumers_of_different_issuers_never_share_a_name() {
    let a = auth();
    // The same subject from two identity providers: two consumers.
    let from_rsa = check(&a, &bearer(&rs256(&claims(json!({"sub": "carol"})))), NOW).unwrap();
    let hs = hs256(&claims(json!({"iss":"hs-issuer","email":"carol","scope":"reader"})), SECRET);
    let from_hs = check(&a, &bearer(&hs), NOW).unwrap();
    assert_ne!(from_rsa.name, from_hs.name);
    assert_eq!(from_hs.name, jwt_consumer_name("hs-issuer", "carol"));
    // A subject that itself contains the separator stays inside its issuer's namespace.
    let tricky = check(&a, &bearer(&rs256(&claims(json!({"sub": "x#y"})))), NOW).unwrap();
    assert_eq!(tricky.name.split_once(ISSUER_SEPARATOR), Some((ISS, "x#y")));
}

#[test]
fn static_consumers_cannot_take_a_jwt_consumer_name() {
    let provider = RawJwtProvider {
        issuer: "hs-issuer".into(),
        audiences: vec!["m".into()],
        jwks: None,
        hs256_secret_env: Some("TEST_SECRET".into()),
        consumer_claim: "sub".into(),
        roles_claim: "roles".into(),
        leeway_seconds: None,
    };
    let key = |consumer: &str| RawApiKey { consumer: consumer.into(), sha256: "a".repeat(64), roles: vec![] };
    let raw = RawAuth { jwt: vec![provider.clone()], api_keys: vec![key("hs-issuer#alice")], ..Default::default() };
    let err = Authenticator::compile(&raw, &Env, &|_| true).unwrap_err();
    assert_eq!(err.path(), Some("auth.api_keys[0].consumer"), "{err}");
    assert!(err.message().contains("reserved"), "{err}");
    let raw = RawAuth {
        jwt: vec![provider.clone()],
        anonymous: Some(RawAnonymous { consumer: "hs-issuer#guest".into(), roles: vec![] }),
        ..Default::default()
    };
    assert_eq!(Authenticator::compile(&raw, &Env, &|_| true).unwrap_err().path(), Some("auth.anonymous.consumer"));
    // Names with the separator but another prefix, or without it, stay valid.
    let raw = RawAuth {
        jwt: vec![provider.clone()],
        api_keys: vec![key("team#bot"), RawApiKey { sha256: "b".repeat(64), ..key("alice") }],
        ..Default::default()
    };
    assert!(Authenticator::compile(&raw, &Env, &|_| true).is_ok());
    let raw =
        RawAuth { jwt: vec![RawJwtProvider { issuer: "https://idp#x".into(), ..provider }], ..Default::default() };
    let err = Authenticator::compile(&raw, &Env, &|_| true).unwrap_err();
    assert_eq!(err.path(), Some("auth.jwt[0].issuer"), "{err}");
}

#[test]
fn refuses_bad_tokens() {
    let a = auth();
    let cases: Vec<(String, AuthError)> = vec![
        (bearer(&rs256(&claims(json!({"exp": NOW - 31})))), AuthError::Expired),
        (bearer(&rs256(&claims(json!({"nbf": NOW + 31})))), AuthError::NotYetValid),
        (
            bearer(&rs256(&claims(json!({"aud": "someone-else"})))),
            AuthError::InvalidToken("audience not accepted".into()),
        ),
        (
            bearer(&rs256(&claims(json!({"iss": "https://evil.example"})))),
            AuthError::InvalidToken("untrusted issuer".into()),
        ),
        (bearer(&rs256(&claims(json!({"iss": null})))), AuthError::InvalidToken("token has no issuer".into())),
        (
            bearer(&rs256(&claims(json!({"exp": null})))),
            AuthError::InvalidToken("token lacks a required claim (exp, iss, aud)".into()),
        ),
        (bearer(&rs256(&claims(json!({"sub": null})))), AuthError::InvalidToken("token has no \"sub\" claim".into())),
        (
            bearer(&rs256(&claims(json!({"roles": 5})))),
            AuthError::InvalidToken("\"roles\" claim must be a string or an array of strings".into()),
        ),
        (
            bearer(&hs256(&claims(json!({"iss":"hs-issuer","email":"x"})), "wrong-secret-wrong-secret-wrong-secret")),
            AuthError::InvalidToken("signature verification failed".into()),
        ),
        // An HS256 token signed with a *public* key must not verify against the RSA issuer.
        (
            bearer(&hs256(&claims(json!({})), SECRET)),
            AuthError::InvalidToken("no trusted key for the token's algorithm and key id".into()),
        ),
        ("Bearer not.a.token".into(), AuthError::InvalidToken("malformed token".into())),
        ("Basic YWxpY2U6cHc=".into(), AuthError::NotBearer),
        ("Bearer".into(), AuthError::NotBearer),
    ];
    for (authz, want) in cases {
        assert_eq!(check(&a, &authz, NOW), Err(want.clone()), "{want}");
    }
    // Tampered payload: signature no longer matches.
    let t = rs256(&claims(json!({})));
    let mut parts: Vec<&str> = t.split('.').collect();
    let forged = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(claims(json!({"sub":"root"})).to_string());
    parts[1] = &forged;
    assert_eq!(
        check(&a, &bearer(&parts.join(".")), NOW),
        Err(AuthError::InvalidToken("signature verification failed".into()))
    );
}

#[test]
fn leeway_applies() {
    let a = auth();
    assert!(check(&a, &bearer(&rs256(&claims(json!({"exp": NOW - 29})))), NOW).is_ok());
    assert!(check(&a, &bearer(&rs256(&claims(json!({"nbf": NOW + 29})))), NOW).is_ok());
}

#[test]
fn api_keys_and_anonymous() {
    let a = auth();
    let mut cache = TokenCache::new(0);
    let key = |k| {
        a.authenticate(
            Credentials { authorization: None, api_key: Some(k), peer_certificate: None },
            NOW,
            &mut TokenCache::new(0),
        )
    };
    let c = key("key-1").unwrap();
    assert_eq!((c.name.as_str(), c.method), ("ci-bot", AuthMethod::ApiKey));
    assert_eq!(key("key-2"), Err(AuthError::UnknownApiKey));
    assert_eq!(a.authenticate(Credentials::default(), NOW, &mut cache), Err(AuthError::Missing));
    assert_eq!(
        a.authenticate(
            Credentials { authorization: Some("Bearer x"), api_key: Some("key-1"), peer_certificate: None },
            NOW,
            &mut cache
        ),
        Err(AuthError::Ambiguous)
    );
    let raw =
        RawAuth { anonymous: Some(RawAnonymous { consumer: "guest".into(), roles: vec![] }), ..Default::default() };
    let anon = Authenticator::compile(&raw, &Env, &|_| true).unwrap();
    assert_eq!(anon.authenticate(Credentials::default(), NOW, &mut cache).unwrap().name, "guest");
    // Anonymous access does not excuse a bad credential.
    assert_eq!(
        anon.authenticate(
            Credentials { authorization: None, api_key: Some("nope"), peer_certificate: None },
            NOW,
            &mut cache
        ),
        Err(AuthError::UnknownApiKey)
    );
}

#[test]
fn cache_serves_verified_tokens_until_expiry_and_stays_bounded() {
    let a = auth();
    let mut cache = TokenCache::new(2);
    let t1 = rs256(&claims(json!({"exp": NOW + 10})));
    let authz = bearer(&t1);
    let creds = Credentials { authorization: Some(&authz), api_key: None, peer_certificate: None };
    assert!(a.authenticate(creds, NOW, &mut cache).is_ok());
    assert_eq!(cache.len(), 1);
    assert!(a.authenticate(creds, NOW + 5, &mut cache).is_ok());
    // Past exp + leeway the cached entry is dropped and full verification refuses it.
    assert_eq!(a.authenticate(creds, NOW + 41, &mut cache), Err(AuthError::Expired));
    assert_eq!(cache.len(), 0);
    for i in 0..5 {
        let t = bearer(&rs256(&claims(json!({"sub": format!("u{i}")}))));
        assert!(a
            .authenticate(
                Credentials { authorization: Some(&t), api_key: None, peer_certificate: None },
                NOW,
                &mut cache
            )
            .is_ok());
        assert!(cache.len() <= 2);
    }
    // Failed verifications are not cached.
    let bad = bearer(&rs256(&claims(json!({"aud": "x"}))));
    let before = cache.len();
    assert!(a
        .authenticate(Credentials { authorization: Some(&bad), api_key: None, peer_certificate: None }, NOW, &mut cache)
        .is_err());
    assert_eq!(cache.len(), before);
}

#[test]
fn config_errors_name_the_path() {
    let provider = |jwks: Option<Value>, env: Option<&str>| RawJwtProvider {
        issuer: ISS.into(),
        audiences: vec!["m".into()],
        jwks,
        hs256_secret_env: env.map(String::from),
        consumer_claim: "sub".into(),
        roles_claim: "roles".into(),
        leeway_seconds: None,
    };
    let cases: Vec<(RawAuth, &str, &str)> = vec![
        (RawAuth { jwt: vec![provider(None, None)], ..Default::default() }, "auth.jwt[0]", "exactly one of"),
        (
            RawAuth { jwt: vec![provider(None, Some("UNSET_VAR"))], ..Default::default() },
            "auth.jwt[0].hs256_secret_env",
            "UNSET_VAR is not set",
        ),
        (
            RawAuth { jwt: vec![provider(Some(json!({"keys": []})), None)], ..Default::default() },
            "auth.jwt[0].jwks_file",
            "no keys",
        ),
        (
            RawAuth { jwt: vec![provider(Some(json!([1])), None)], ..Default::default() },
            "auth.jwt[0].jwks_file",
            "not a JWKS",
        ),
        (
            RawAuth { jwt: vec![provider(Some(jwks()), None), provider(Some(jwks()), None)], ..Default::default() },
            "auth.jwt[1].issuer",
            "duplicate issuer",
        ),
        (
            RawAuth {
                api_keys: vec![RawApiKey { consumer: "c".into(), sha256: "abc".into(), roles: vec![] }],
                ..Default::default()
            },
            "auth.api_keys[0].sha256",
            "not a hex SHA-256",
        ),
        (
            RawAuth {
                api_keys: vec![RawApiKey { consumer: "c".into(), sha256: "a".repeat(64), roles: vec!["ghost".into()] }],
                ..Default::default()
            },
            "auth.api_keys[0].roles[0]",
            "unknown role \"ghost\"",
        ),
    ];
    for (raw, path, msg) in cases {
        let err = Authenticator::compile(&raw, &Env, &|r| r == "reader").unwrap_err();
        assert_eq!(err.path(), Some(path), "{err}");
        assert!(err.message().contains(msg), "{err}");
    }
}

#[test]
fn client_certificates_identify_callers_that_send_no_other_credential() {
    let raw = RawAuth {
        api_keys: vec![RawApiKey {
            consumer: "ci-bot".into(),
            sha256: hex::encode(Sha256::digest(b"key-1")),
            roles: vec!["reader".into()],
        }],
        anonymous: Some(RawAnonymous { consumer: "guest".into(), roles: vec![] }),
        mtls: vec![RawPeerIdentity {
            spiffe_id: Some("spiffe://mesh.example/agent".into()),
            dns_san: None,
            consumer: "agent".into(),
            roles: vec!["writer".into()],
        }],
        ..Default::default()
    };
    let a = Authenticator::compile(&raw, &Env, &|_| true).unwrap();
    assert!(a.uses_peer_certificates());
    let mut cache = TokenCache::new(0);
    let cert = Some("Hash=00;URI=spiffe://mesh.example/agent");
    let with = |api_key, peer_certificate| Credentials { authorization: None, api_key, peer_certificate };
    let agent = a.authenticate(with(None, cert), NOW, &mut cache).unwrap();
    assert_eq!((agent.name.as_str(), agent.method), ("agent", AuthMethod::ClientCertificate));
    // An explicit credential decides; no certificate means anonymous; an unmapped one is refused.
    assert_eq!(a.authenticate(with(Some("key-1"), cert), NOW, &mut cache).unwrap().name, "ci-bot");
    assert_eq!(a.authenticate(with(None, None), NOW, &mut cache).unwrap().name, "guest");
    let other = Some("Hash=00;URI=spiffe://mesh.example/other");
    assert_eq!(a.authenticate(with(None, other), NOW, &mut cache).unwrap_err(), AuthError::UnknownPeer);
    // Without auth.mtls the header is never consulted.
    let plain = Authenticator::compile(&RawAuth { mtls: vec![], ..raw }, &Env, &|_| true).unwrap();
    assert!(!plain.uses_peer_certificates());
    assert_eq!(plain.authenticate(with(None, cert), NOW, &mut cache).unwrap().name, "guest");
}
