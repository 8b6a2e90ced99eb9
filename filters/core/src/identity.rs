//! Identity: who is calling. JWT bearer tokens (HS256, RS256, ES256 via `jsonwebtoken`),
//! API keys (`x-api-key`, stored as SHA-256), verified client certificates (`auth.mtls`,
//! see [`peer`]), and an optional anonymous consumer.
//!
//! Precedence: a bearer token or an API key, when sent, decides (both at once are refused);
//! a request with neither is identified by its client certificate when `auth.mtls` is
//! configured and the connection presented one; otherwise it is anonymous (when enabled).
//! A certificate that maps to no entry is refused, not treated as anonymous.
//!
//! Keys are resolved once, at configure time: JWKS documents are inlined by the control
//! plane, HS256 secrets come from an environment variable. Token verification is expensive
//! in wasm (RS256 ≈ 1 ms in V8), so verified tokens are remembered per worker in a bounded
//! [`TokenCache`] until they expire. Credentials never appear in errors or logs: messages
//! say what was wrong, never the token or key.
//!
//! Consumer names are what quotas, in-flight slots and the audit key on, so two callers
//! must never share one. A JWT consumer is namespaced by its issuer,
//! `<issuer>#<claim value>` (see [`jwt_consumer_name`]): two identity providers' users
//! with the same `sub` are different consumers. The name is unambiguous because an issuer
//! may not contain `#` (OIDC and RFC 8414 issuers have no fragment), and no API-key or
//! anonymous consumer may be named `<a configured issuer>#…`.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use base64::Engine;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::config::{ConfigError, RawAuth, RawJwtProvider, SecretSource, DEFAULT_JWT_LEEWAY_SECONDS};

pub mod peer;

pub use peer::{PeerIdentities, RawPeerIdentity, XFCC_HEADER};

/// Separates the issuer from the consumer claim in a JWT consumer's name.
pub const ISSUER_SEPARATOR: char = '#';

/// The consumer name of a JWT verified for `issuer` whose consumer claim is `claim`.
pub fn jwt_consumer_name(issuer: &str, claim: &str) -> String {
    let mut name = String::with_capacity(issuer.len() + 1 + claim.len());
    name.push_str(issuer);
    name.push(ISSUER_SEPARATOR);
    name.push_str(claim);
    name
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Consumer {
    /// Stable consumer name: `<issuer>#<claim>` for a JWT ([`jwt_consumer_name`]), the
    /// entry's `consumer` for an API key, the anonymous consumer's name.
    pub name: String,
    /// Roles, as granted by the token or the API-key entry.
    pub roles: Vec<String>,
    /// How the caller authenticated.
    pub method: AuthMethod,
}

/// How a consumer authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    Jwt,
    ApiKey,
    /// A verified client certificate mapped by `auth.mtls`.
    ClientCertificate,
    Anonymous,
}

/// The credentials a request presented, as found in its headers.
#[derive(Debug, Clone, Copy, Default)]
pub struct Credentials<'a> {
    /// The raw `Authorization` header value.
    pub authorization: Option<&'a str>,
    /// The raw `x-api-key` header value.
    pub api_key: Option<&'a str>,
    /// Envoy's `x-forwarded-client-cert` for this connection (see [`peer`]); read only
    /// when [`Authenticator::uses_peer_certificates`].
    pub peer_certificate: Option<&'a str>,
}

/// Why a request is not authenticated. Messages never contain the credential.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AuthError {
    #[error("authentication required: send a bearer token or an API key")]
    Missing,
    #[error("send either a bearer token or an API key, not both")]
    Ambiguous,
    #[error("the Authorization header is not a bearer token")]
    NotBearer,
    #[error("invalid token: {0}")]
    InvalidToken(String),
    #[error("token expired")]
    Expired,
    #[error("token not yet valid")]
    NotYetValid,
    #[error("unknown API key")]
    UnknownApiKey,
    #[error("the client certificate's identity is not mapped to a consumer (auth.mtls)")]
    UnknownPeer,
    #[error("the client certificate's names map to more than one consumer (auth.mtls)")]
    AmbiguousPeer,
    #[error("the client certificate details are malformed")]
    BadPeerCertificate,
}

impl AuthError {
    /// The RFC 6750 `error` attribute for `WWW-Authenticate`, when one applies.
    pub fn bearer_error(&self) -> Option<&'static str> {
        match self {
            AuthError::Missing
            | AuthError::UnknownApiKey
            | AuthError::UnknownPeer
            | AuthError::AmbiguousPeer
            | AuthError::BadPeerCertificate => None,
            AuthError::Ambiguous | AuthError::NotBearer => Some("invalid_request"),
            AuthError::InvalidToken(_) | AuthError::Expired | AuthError::NotYetValid => Some("invalid_token"),
        }
    }
}

#[derive(Clone)]
struct VerificationKey {
    kid: Option<String>,
    algorithm: Algorithm,
    key: DecodingKey,
}

#[derive(Clone)]
struct JwtProvider {
    issuer: String,
    validation: Validation,
    keys: Vec<VerificationKey>,
    consumer_claim: String,
    roles_claim: String,
    leeway: u64,
}

/// Verifies credentials. Built once per configuration; shared read-only by all requests.
#[derive(Clone, Default)]
pub struct Authenticator {
    providers: Vec<JwtProvider>,
    /// Lowercase hex SHA-256 of the key → consumer.
    api_keys: HashMap<String, Arc<Consumer>>,
    anonymous: Option<Arc<Consumer>>,
    /// `auth.mtls`: empty when client certificates identify nobody.
    peers: PeerIdentities,
    token_cache_entries: usize,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("issuers", &self.providers.iter().map(|p| p.issuer.as_str()).collect::<Vec<_>>())
            .field("api_keys", &self.api_keys.len())
            .field("anonymous", &self.anonymous.is_some())
            .field("peer_identities", &!self.peers.is_empty())
            .finish()
    }
}

impl Authenticator {
    /// Compiles the `auth` section. `known_role` checks roles named by static entries.
    pub fn compile(
        raw: &RawAuth,
        secrets: &dyn SecretSource,
        known_role: &dyn Fn(&str) -> bool,
    ) -> Result<Self, ConfigError> {
        let mut providers = Vec::new();
        let mut issuers = HashSet::new();
        for (i, p) in raw.jwt.iter().enumerate() {
            let path = format!("auth.jwt[{i}]");
            if !issuers.insert(p.issuer.clone()) {
                return Err(ConfigError::invalid(
                    format!("{path}.issuer"),
                    format!("duplicate issuer \"{}\"", p.issuer),
                ));
            }
            if p.issuer.contains(ISSUER_SEPARATOR) {
                return Err(ConfigError::invalid(
                    format!("{path}.issuer"),
                    format!(
                        "issuer \"{}\" must not contain '{ISSUER_SEPARATOR}' (JWT consumers are named <issuer>{ISSUER_SEPARATOR}<claim>)",
                        p.issuer
                    ),
                ));
            }
            providers.push(compile_provider(p, &path, secrets)?);
        }
        let mut api_keys = HashMap::new();
        for (i, k) in raw.api_keys.iter().enumerate() {
            let path = format!("auth.api_keys[{i}]");
            let hash = k.sha256.to_ascii_lowercase();
            if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(ConfigError::invalid(
                    format!("{path}.sha256"),
                    format!("\"{}\" is not a hex SHA-256 digest (64 hex characters)", k.sha256),
                ));
            }
            check_consumer(&k.consumer, &k.roles, &path, known_role)?;
            check_not_namespaced(&k.consumer, &issuers, &path)?;
            let consumer = Consumer { name: k.consumer.clone(), roles: k.roles.clone(), method: AuthMethod::ApiKey };
            if api_keys.insert(hash, Arc::new(consumer)).is_some() {
                return Err(ConfigError::invalid(format!("{path}.sha256"), "duplicate API key digest"));
            }
        }
        let anonymous = match &raw.anonymous {
            None => None,
            Some(a) => {
                check_consumer(&a.consumer, &a.roles, "auth.anonymous", known_role)?;
                check_not_namespaced(&a.consumer, &issuers, "auth.anonymous")?;
                Some(Arc::new(Consumer {
                    name: a.consumer.clone(),
                    roles: a.roles.clone(),
                    method: AuthMethod::Anonymous,
                }))
            }
        };
        let peers = PeerIdentities::compile(&raw.mtls, &|consumer, roles, path| {
            check_consumer(consumer, roles, path, known_role)?;
            check_not_namespaced(consumer, &issuers, path)
        })?;
        let token_cache_entries = raw.token_cache_entries.unwrap_or(crate::config::DEFAULT_TOKEN_CACHE_ENTRIES);
        Ok(Self { providers, api_keys, anonymous, peers, token_cache_entries })
    }

    /// Whether client certificates identify callers (`auth.mtls` has entries): only then
    /// does the request path look at the client-certificate header.
    pub fn uses_peer_certificates(&self) -> bool {
        !self.peers.is_empty()
    }

    /// How many verified tokens a worker should remember.
    pub fn token_cache_entries(&self) -> usize {
        self.token_cache_entries
    }

    /// Authenticates a request. `now` is Unix seconds.
    pub fn authenticate(
        &self,
        creds: Credentials<'_>,
        now: u64,
        cache: &mut TokenCache,
    ) -> Result<Arc<Consumer>, AuthError> {
        match (creds.authorization, creds.api_key) {
            (Some(_), Some(_)) => Err(AuthError::Ambiguous),
            (Some(authz), None) => self.verify_bearer(authz, now, cache),
            (None, Some(key)) => self.verify_api_key(key),
            (None, None) => match creds.peer_certificate.filter(|_| self.uses_peer_certificates()) {
                Some(xfcc) => self.peers.identify(xfcc),
                None => self.anonymous.clone().ok_or(AuthError::Missing),
            },
        }
    }

    fn verify_api_key(&self, key: &str) -> Result<Arc<Consumer>, AuthError> {
        let digest = hex::encode(Sha256::digest(key.trim().as_bytes()));
        self.api_keys.get(&digest).cloned().ok_or(AuthError::UnknownApiKey)
    }

    fn verify_bearer(&self, authorization: &str, now: u64, cache: &mut TokenCache) -> Result<Arc<Consumer>, AuthError> {
        let token = bearer_token(authorization).ok_or(AuthError::NotBearer)?;
        if let Some(hit) = cache.get(token, now) {
            return Ok(hit);
        }
        let (consumer, expires_at) = self.verify_jwt(token, now)?;
        cache.insert(token, consumer.clone(), expires_at, now);
        Ok(consumer)
    }

    /// Full verification of a JWT; returns the consumer and the instant the token expires.
    fn verify_jwt(&self, token: &str, now: u64) -> Result<(Arc<Consumer>, u64), AuthError> {
        let invalid = |m: &str| AuthError::InvalidToken(m.to_string());
        if self.providers.is_empty() {
            return Err(invalid("bearer tokens are not accepted here"));
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| invalid("malformed token"))?;
        let issuer = unverified_issuer(token).ok_or_else(|| invalid("token has no issuer"))?;
        let provider = self.providers.iter().find(|p| p.issuer == issuer).ok_or_else(|| invalid("untrusted issuer"))?;
        let mut candidates = provider
            .keys
            .iter()
            .filter(|k| k.algorithm == header.alg)
            .filter(|k| match (&header.kid, &k.kid) {
                (Some(want), Some(have)) => want == have,
                (Some(_), None) | (None, _) => true,
            })
            .peekable();
        if candidates.peek().is_none() {
            return Err(invalid("no trusted key for the token's algorithm and key id"));
        }
        let mut last_error = invalid("signature verification failed");
        for key in candidates {
            let mut validation = provider.validation.clone();
            validation.algorithms = vec![key.algorithm];
            match jsonwebtoken::decode::<serde_json::Map<String, Value>>(token, &key.key, &validation) {
                Ok(data) => return provider.consumer_from_claims(&data.claims, now),
                Err(e) => last_error = describe_jwt_error(&e),
            }
        }
        Err(last_error)
    }
}

impl JwtProvider {
    fn consumer_from_claims(
        &self,
        claims: &serde_json::Map<String, Value>,
        now: u64,
    ) -> Result<(Arc<Consumer>, u64), AuthError> {
        let exp = claims
            .get("exp")
            .and_then(Value::as_u64)
            .ok_or_else(|| AuthError::InvalidToken("token has no numeric exp claim".into()))?;
        if now > exp.saturating_add(self.leeway) {
            return Err(AuthError::Expired);
        }
        if let Some(nbf) = claims.get("nbf") {
            let nbf = nbf.as_u64().ok_or_else(|| AuthError::InvalidToken("nbf claim is not a number".into()))?;
            if nbf > now.saturating_add(self.leeway) {
                return Err(AuthError::NotYetValid);
            }
        }
        let name = claims
            .get(&self.consumer_claim)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| AuthError::InvalidToken(format!("token has no \"{}\" claim", self.consumer_claim)))?;
        let roles = match claims.get(&self.roles_claim) {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::String(s)) => s.split_whitespace().map(String::from).collect(),
            Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).map(String::from).collect(),
            Some(_) => {
                return Err(AuthError::InvalidToken(format!(
                    "\"{}\" claim must be a string or an array of strings",
                    self.roles_claim
                )))
            }
        };
        let consumer = Consumer { name: jwt_consumer_name(&self.issuer, name), roles, method: AuthMethod::Jwt };
        Ok((Arc::new(consumer), exp.saturating_add(self.leeway)))
    }
}

fn describe_jwt_error(e: &jsonwebtoken::errors::Error) -> AuthError {
    use jsonwebtoken::errors::ErrorKind;
    let m = match e.kind() {
        ErrorKind::InvalidSignature => "signature verification failed",
        ErrorKind::InvalidIssuer => "untrusted issuer",
        ErrorKind::InvalidAudience => "audience not accepted",
        ErrorKind::MissingRequiredClaim(_) => "token lacks a required claim (exp, iss, aud)",
        ErrorKind::InvalidAlgorithm => "algorithm not accepted",
        ErrorKind::ExpiredSignature => return AuthError::Expired,
        ErrorKind::ImmatureSignature => return AuthError::NotYetValid,
        _ => "malformed token",
    };
    AuthError::InvalidToken(m.to_string())
}

/// The token of an `Authorization: Bearer <token>` header (scheme case-insensitive).
fn bearer_token(authorization: &str) -> Option<&str> {
    let (scheme, token) = authorization.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty() && !token.contains(' ')).then_some(token)
}

/// The `iss` claim read *without* verification, only to pick the provider whose keys then
/// verify the token (and the issuer again).
fn unverified_issuer(token: &str) -> Option<String> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let claims: serde_json::Map<String, Value> = serde_json::from_slice(&bytes).ok()?;
    claims.get("iss")?.as_str().map(String::from)
}

/// A static consumer's name must not be one a JWT consumer can have.
fn check_not_namespaced(consumer: &str, issuers: &HashSet<String>, path: &str) -> Result<(), ConfigError> {
    let taken = consumer.split_once(ISSUER_SEPARATOR).is_some_and(|(prefix, _)| issuers.contains(prefix));
    if taken {
        return Err(ConfigError::invalid(
            format!("{path}.consumer"),
            format!(
                "consumer name \"{consumer}\" is reserved: <issuer>{ISSUER_SEPARATOR}<claim> names the consumers of a configured JWT issuer"
            ),
        ));
    }
    Ok(())
}

fn check_consumer(
    consumer: &str,
    roles: &[String],
    path: &str,
    known_role: &dyn Fn(&str) -> bool,
) -> Result<(), ConfigError> {
    if consumer.trim().is_empty() {
        return Err(ConfigError::invalid(format!("{path}.consumer"), "consumer name must not be empty"));
    }
    for (i, role) in roles.iter().enumerate() {
        if !known_role(role) {
            return Err(ConfigError::invalid(format!("{path}.roles[{i}]"), format!("unknown role \"{role}\"")));
        }
    }
    Ok(())
}

fn compile_provider(p: &RawJwtProvider, path: &str, secrets: &dyn SecretSource) -> Result<JwtProvider, ConfigError> {
    if p.issuer.is_empty() {
        return Err(ConfigError::invalid(format!("{path}.issuer"), "issuer must not be empty"));
    }
    if p.audiences.is_empty() {
        return Err(ConfigError::invalid(format!("{path}.audiences"), "at least one audience is required"));
    }
    let keys = match (&p.jwks, &p.hs256_secret_env) {
        (Some(_), Some(_)) | (None, None) => {
            return Err(ConfigError::invalid(
                path.to_string(),
                "exactly one of jwks_file and hs256_secret_env is required",
            ))
        }
        (Some(jwks), None) => keys_from_jwks(jwks, &format!("{path}.jwks_file"))?,
        (None, Some(var)) => {
            let secret = secrets.secret(var).filter(|s| !s.is_empty()).ok_or_else(|| {
                ConfigError::invalid(
                    format!("{path}.hs256_secret_env"),
                    format!("environment variable {var} is not set or empty"),
                )
            })?;
            if secret.len() < 32 {
                return Err(ConfigError::invalid(
                    format!("{path}.hs256_secret_env"),
                    format!("the secret in {var} is shorter than 32 bytes"),
                ));
            }
            vec![VerificationKey {
                kid: None,
                algorithm: Algorithm::HS256,
                key: DecodingKey::from_secret(secret.as_bytes()),
            }]
        }
    };
    let leeway = p.leeway_seconds.unwrap_or(DEFAULT_JWT_LEEWAY_SECONDS);
    // exp/nbf are checked by Meshgate against the injected clock (testable, and the cache
    // needs the expiry anyway); signature, algorithm, issuer and audience by jsonwebtoken.
    let mut validation = Validation::new(Algorithm::HS256);
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.leeway = leeway;
    validation.set_issuer(&[p.issuer.as_str()]);
    validation.set_audience(&p.audiences);
    validation.set_required_spec_claims(&["exp", "iss", "aud"]);
    Ok(JwtProvider {
        issuer: p.issuer.clone(),
        validation,
        keys,
        consumer_claim: p.consumer_claim.clone(),
        roles_claim: p.roles_claim.clone(),
        leeway,
    })
}

fn keys_from_jwks(jwks: &Value, path: &str) -> Result<Vec<VerificationKey>, ConfigError> {
    let set: JwkSet = serde_json::from_value(jwks.clone())
        .map_err(|e| ConfigError::invalid(path.to_string(), format!("not a JWKS document: {e}")))?;
    let mut keys = Vec::new();
    for (i, jwk) in set.keys.iter().enumerate() {
        let algorithm = jwk_algorithm(jwk)
            .ok_or_else(|| ConfigError::invalid(path.to_string(), format!("key {i}: unsupported key type or curve")))?;
        let key =
            DecodingKey::from_jwk(jwk).map_err(|e| ConfigError::invalid(path.to_string(), format!("key {i}: {e}")))?;
        keys.push(VerificationKey { kid: jwk.common.key_id.clone(), algorithm, key });
    }
    if keys.is_empty() {
        return Err(ConfigError::invalid(path.to_string(), "the JWKS holds no keys"));
    }
    Ok(keys)
}

/// The one algorithm a JWK may verify: its declared `alg`, else the family default.
/// Symmetric (`oct`) keys are refused in a JWKS: a public key file must not hold secrets.
fn jwk_algorithm(jwk: &Jwk) -> Option<Algorithm> {
    let declared = jwk.common.key_algorithm.and_then(|a| a.to_string().parse::<Algorithm>().ok());
    let family_ok = |alg: Algorithm| match (&jwk.algorithm, alg) {
        (AlgorithmParameters::RSA(_), Algorithm::RS256 | Algorithm::RS384 | Algorithm::RS512) => true,
        (AlgorithmParameters::RSA(_), Algorithm::PS256 | Algorithm::PS384 | Algorithm::PS512) => true,
        (AlgorithmParameters::EllipticCurve(p), Algorithm::ES256) => p.curve == EllipticCurve::P256,
        (AlgorithmParameters::EllipticCurve(p), Algorithm::ES384) => p.curve == EllipticCurve::P384,
        (AlgorithmParameters::OctetKeyPair(_), Algorithm::EdDSA) => true,
        _ => false,
    };
    match declared {
        Some(alg) => family_ok(alg).then_some(alg),
        None => match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => Some(Algorithm::RS256),
            AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => Some(Algorithm::ES256),
            AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P384 => Some(Algorithm::ES384),
            AlgorithmParameters::OctetKeyPair(_) => Some(Algorithm::EdDSA),
            _ => None,
        },
    }
}

/// Verified tokens, per worker. Bounded: when full, expired entries go first, then an
/// arbitrary one. Only successfully verified tokens are cached.
#[derive(Debug, Default)]
pub struct TokenCache {
    entries: HashMap<String, CachedToken>,
    capacity: usize,
}

#[derive(Debug)]
struct CachedToken {
    consumer: Arc<Consumer>,
    /// Unix seconds after which the entry must not be used (exp + leeway).
    expires_at: u64,
}

impl TokenCache {
    /// A cache holding at most `capacity` tokens (0 disables caching).
    pub fn new(capacity: usize) -> Self {
        Self { entries: HashMap::new(), capacity }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn get(&mut self, token: &str, now: u64) -> Option<Arc<Consumer>> {
        match self.entries.get(token) {
            Some(hit) if now <= hit.expires_at => Some(hit.consumer.clone()),
            Some(_) => {
                self.entries.remove(token);
                None
            }
            None => None,
        }
    }

    fn insert(&mut self, token: &str, consumer: Arc<Consumer>, expires_at: u64, now: u64) {
        if self.capacity == 0 {
            return;
        }
        if self.entries.len() >= self.capacity {
            self.entries.retain(|_, e| now <= e.expires_at);
        }
        if self.entries.len() >= self.capacity {
            if let Some(victim) = self.entries.keys().next().cloned() {
                self.entries.remove(&victim);
            }
        }
        self.entries.insert(token.to_string(), CachedToken { consumer, expires_at });
    }
}

#[cfg(test)]
mod tests;
