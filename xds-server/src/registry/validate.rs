//! [`RawRegistry`] → [`Registry`]: every check, every problem collected.
//!
//! Checks that belong to the filter (glob syntax, key hashes, claim names, limits...) are
//! not repeated here: the derived filter configuration goes through the filter's own
//! `FilterConfig::compile`. What is checked here is what only the registry knows (servers,
//! URLs, timeouts, files, the environment meshgate runs in) plus cross-references that give
//! clearer messages with a registry path (roles used by API keys and anonymous access).

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use meshgate_core::config::{is_valid_server_name, FilterConfig, RawJwtProvider, RawQuotaScope, SecretSource};
use meshgate_core::origin::{HostPattern, OriginPattern};
use meshgate_core::quota::QuotaScope;

use crate::ratelimit::redis::RedisAddress;

use super::error::RegistryError;
use super::filter::{self, FilterPath};
use super::lines::LineIndex;
use super::raw::{
    RawCatalog, RawCircuitBreakers, RawCors, RawCredentials, RawEnvoy, RawHealthCheck, RawJwtIssuer, RawListener,
    RawOutlierDetection, RawRateLimitService, RawRegistry, RawServer, RawTls, RawTool,
};
use super::{
    defaults, CatalogSettings, CircuitBreakers, Cors, CredentialSource, Credentials, EnvoySettings, FailureMode,
    GlobalRule, HealthCheck, HealthTiming, LogLevel, OutlierDetection, RateLimitService, Registry, Runtime, Scheme,
    SecretValue, Server, TokenExchange, Tool, Trust, Upstream, UpstreamHost, UpstreamTls, VerifyName,
    DEFAULT_CONCURRENCY, MAX_CONCURRENCY,
};

/// Where JWKS members that only private keys carry live (RFC 7518 §6).
const PRIVATE_JWK_MEMBERS: [&str; 8] = ["d", "p", "q", "dp", "dq", "qi", "oth", "k"];

/// The default listener address when `listener.address` is omitted.
const DEFAULT_LISTENER_ADDRESS: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

/// A registry on its way to validation, with what validation needs to look at.
pub(crate) struct Unvalidated<'a, S> {
    pub raw: RawRegistry,
    /// The registry file, for [`Registry::source`].
    pub file: &'a Path,
    /// Relative `jwks_file` paths resolve against this folder.
    pub base_dir: &'a Path,
    pub secrets: &'a S,
    pub index: &'a LineIndex,
    /// Whether the pin lockfile is read.
    pub lockfile: super::LockfileUse,
}

/// One problem at a registry path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Problem {
    pub path: String,
    pub error: RegistryError,
}

#[derive(Default)]
struct Problems(Vec<Problem>);

impl Problems {
    fn push(&mut self, path: impl Into<String>, error: RegistryError) {
        self.0.push(Problem { path: path.into(), error });
    }

    /// True when `path` overlaps (equals, contains or is inside) an already reported path.
    fn overlaps(&self, path: &str) -> bool {
        self.0.iter().any(|p| is_within(&p.path, path) || is_within(path, &p.path))
    }
}

fn is_within(inner: &str, outer: &str) -> bool {
    inner == outer
        || outer.is_empty()
        || (inner.starts_with(outer) && matches!(inner.as_bytes().get(outer.len()), Some(b'.' | b'[')))
}

impl<S: SecretSource> TryFrom<Unvalidated<'_, S>> for Registry {
    type Error = Vec<Problem>;

    fn try_from(input: Unvalidated<'_, S>) -> Result<Self, Self::Error> {
        let Unvalidated { raw, file, base_dir, secrets, index, lockfile } = input;
        let mut problems = Problems::default();

        let listener_ip = match raw.listener.address.as_deref() {
            None => DEFAULT_LISTENER_ADDRESS,
            Some(value) => value.parse().unwrap_or_else(|_| {
                problems.push("listener.address", RegistryError::InvalidListenerAddress { value: value.to_string() });
                DEFAULT_LISTENER_ADDRESS
            }),
        };
        let listener_port = port(&mut problems, "listener.port", raw.listener.port);
        let admin_port = match &raw.admin {
            Some(admin) => port(&mut problems, "admin.port", admin.port),
            None => 0,
        };
        if admin_port != 0 && admin_port == listener_port {
            problems.push("admin.port", RegistryError::PortClash { port: admin_port });
        }

        listener_patterns(&mut problems, &raw.listener);
        let cors = raw.listener.cors.as_ref().and_then(|c| cors(&mut problems, "listener.cors", c));
        let servers = servers(&mut problems, &raw.servers, &ServerContext { index, base_dir, secrets });
        let scopes = scopes(&mut problems, &raw.auth.scopes);
        let jwt = jwt_providers(&mut problems, &raw.auth.jwt, base_dir, secrets);
        check_role_references(&mut problems, &raw);
        let envoy = envoy_settings(&mut problems, &raw.envoy);
        let runtime = match raw.filter.runtime.as_deref() {
            None => Runtime::default(),
            Some(value) => Runtime::parse(value).unwrap_or_else(|| {
                problems.push("filter.runtime", RegistryError::InvalidRuntime { value: value.to_string() });
                Runtime::default()
            }),
        };
        let observability = super::observability::validate(&raw.observability, base_dir).unwrap_or_else(|found| {
            found.into_iter().for_each(|(path, e)| problems.push(path, e));
            Default::default()
        });

        let rate_limit_service =
            raw.rate_limit_service.as_ref().and_then(|r| rate_limit_service(&mut problems, r, secrets));
        let raw_edge = super::edge::RawEdge {
            tls: raw.listener.tls.as_ref(),
            use_remote_address: raw.listener.use_remote_address,
            xff_num_trusted_hops: raw.listener.xff_num_trusted_hops,
            admin_address: raw.admin.as_ref().and_then(|a| a.address.as_deref()),
            admin_port,
            listener_port,
            stats: raw.stats.as_ref(),
            has_mtls_identities: !raw.auth.mtls.is_empty(),
        };
        let edge = super::edge::validate(&raw_edge, base_dir).unwrap_or_else(|found| {
            found.into_iter().for_each(|(path, e)| problems.push(path, RegistryError::Edge(e)));
            Default::default()
        });

        let mut filter = filter::make_filter_config(&raw, jwt, &observability, listener_ip.is_loopback());
        if !raw.virtual_servers.is_empty() {
            // The discovery callouts of virtual servers reach each server as its route does.
            filter.upstreams = servers
                .iter()
                .map(|server| {
                    let upstream = meshgate_core::virtual_server::Upstream {
                        cluster: crate::translate::cluster_name(server),
                        path: server.upstream.path.clone(),
                        authority: server.upstream.authority(),
                        credentials: server.credentials.is_some() || server.exchange.is_some(),
                    };
                    (server.name.clone(), upstream)
                })
                .collect();
        }
        let catalog = catalog(&mut problems, raw.catalog.as_ref());
        filter.token_exchanges = servers
            .iter()
            .filter_map(|server| {
                let x = server.exchange.as_ref()?;
                let raw = meshgate_core::upstream_token::RawTokenExchange {
                    cluster: crate::translate::token_cluster_name(server),
                    path: x.endpoint.path.clone(),
                    authority: x.endpoint.authority(),
                    audience: x.audience.clone(),
                    resources: x.resources.clone(),
                    scope: x.scope.clone(),
                    subject_token_type: x.subject_token_type.clone(),
                    timeout_ms: u64::try_from(x.timeout.as_millis()).unwrap_or(u64::MAX),
                    refresh_skew_secs: x.refresh_skew.as_secs(),
                    cache_entries: x.cache_entries,
                    no_subject_token: x.no_subject_token,
                };
                Some((server.name.clone(), raw))
            })
            .collect();
        let pinning = pinning(&mut problems, &raw, file, lockfile);
        if let Some(pinning) = &pinning {
            for (server, mode) in &pinning.modes {
                if let Some(pins) = pinning.pins.filter_pins(server, *mode, pinning.scan) {
                    filter.pinning.insert(server.clone(), pins);
                }
            }
        }
        // The filter's own validator, exactly as the filter runs it in Envoy. When it points
        // at something already reported, the registry's message is the clearer one.
        let (global_rules, virtual_servers) = match FilterConfig::compile(&filter, secrets) {
            Err(e) => {
                let FilterPath { path, message } = filter::locate(&e, &raw);
                if !problems.overlaps(&path) {
                    let message = super::virtual_servers::cite_lines(&message, file, index);
                    problems.push(path, RegistryError::Filter(message));
                }
                (Vec::new(), Vec::new())
            }
            Ok(compiled) => (
                compiled
                    .quotas
                    .iter()
                    .filter(|rule| rule.scope == QuotaScope::Global)
                    .map(|rule| GlobalRule { name: rule.name.clone(), limit: rule.limit })
                    .collect(),
                super::virtual_servers::in_registry_order(&raw, &compiled.virtual_servers),
            ),
        };
        if raw.rate_limit_service.is_none() {
            // Point at the first global rule's `scope` line.
            if let Some((i, rule)) = raw.quotas.iter().enumerate().find(|(_, q)| q.scope == RawQuotaScope::Global) {
                problems.push(
                    format!("quotas[{i}].scope"),
                    RegistryError::GlobalWithoutService {
                        rule: rule.name.clone().unwrap_or_else(|| format!("quota-{i}")),
                    },
                );
            }
        }

        let approval_page_url = raw.approval_page.as_ref().and_then(|page| page.url.clone());
        if let Some(url) = &approval_page_url {
            // An absolute http(s) URL without query or fragment (the id is appended as `?id=`).
            let parsed = url.parse::<http::Uri>().ok().filter(|u| {
                matches!(u.scheme_str(), Some("http" | "https"))
                    && u.host().is_some_and(|h| !h.is_empty())
                    && u.query().is_none()
                    && !url.contains('#')
                    && !u.authority().is_some_and(|a| a.as_str().contains('@'))
            });
            if parsed.is_none() {
                problems.push("approval_page.url", RegistryError::InvalidApprovalPageUrl { value: url.clone() });
            }
        }

        if !problems.0.is_empty() {
            return Err(problems.0);
        }
        Ok(Registry {
            source: file.to_path_buf(),
            listener: SocketAddr::new(listener_ip, listener_port),
            admin_port,
            servers,
            filter,
            scopes,
            envoy,
            rate_limit_service,
            global_rules,
            observability,
            cors,
            runtime,
            edge,
            virtual_servers,
            pinning,
            catalog,
            approval_page_url,
        })
    }
}

/// `catalog`: discovery on by default, the interval within its bounds.
fn catalog(problems: &mut Problems, raw: Option<&RawCatalog>) -> CatalogSettings {
    let Some(raw) = raw else { return CatalogSettings::default() };
    let interval =
        positive_duration(problems, "catalog.interval", raw.interval.as_deref(), CatalogSettings::DEFAULT_INTERVAL);
    let (min, max) = (CatalogSettings::MIN_INTERVAL, CatalogSettings::MAX_INTERVAL);
    let interval = if (min..=max).contains(&interval) {
        interval
    } else {
        problems.push(
            "catalog.interval",
            RegistryError::DurationOutOfRange {
                value: raw.interval.clone().unwrap_or_default(),
                min: "5s",
                max: "24h",
            },
        );
        CatalogSettings::DEFAULT_INTERVAL
    };
    CatalogSettings { discover: raw.discover.unwrap_or(true), interval }
}

/// `pinning` and `servers[].pinning`: the modes, the lockfile (read unless `use_lockfile` is
/// `Skip`), and an entry in it for every pinned server.
fn pinning(
    problems: &mut Problems,
    raw: &RawRegistry,
    file: &Path,
    use_lockfile: super::LockfileUse,
) -> Option<super::Pinning> {
    use meshgate_core::pinning::PinMode;
    let mut modes = Vec::new();
    for (i, server) in raw.servers.iter().enumerate() {
        let Some(value) = server.pinning.as_deref() else { continue };
        let mode = match value {
            "observe" => PinMode::Observe,
            "enforce" => PinMode::Enforce,
            other => {
                problems
                    .push(format!("servers[{i}].pinning"), RegistryError::InvalidPinMode { value: other.to_string() });
                continue;
            }
        };
        modes.push((server.name.clone(), mode));
    }
    if raw.pinning.is_none() && modes.is_empty() {
        return None;
    }
    let section = raw.pinning.clone().unwrap_or_default();
    let lockfile = super::lockfile_path(file, section.lockfile.as_deref());
    let mut pins = super::lockfile::Lockfile::default();
    if use_lockfile == super::LockfileUse::Read && !modes.is_empty() {
        match super::lockfile::Lockfile::load(&lockfile) {
            Ok(loaded) => pins = loaded,
            Err(e) => {
                let at = if section.lockfile.is_some() { "pinning.lockfile" } else { "servers" };
                problems.push(at, RegistryError::Lockfile(e.to_string()));
                return None;
            }
        }
        for (i, server) in raw.servers.iter().enumerate() {
            if server.pinning.is_some() && !pins.servers.contains_key(&server.name) {
                problems.push(
                    format!("servers[{i}].pinning"),
                    RegistryError::NotPinned { server: server.name.clone(), lockfile: lockfile.display().to_string() },
                );
            }
        }
    }
    Some(super::Pinning { lockfile, scan: section.scan.unwrap_or(false), modes, pins })
}

/// `rate_limit_service`: the Redis URL (inline or from meshgate's environment), the failure
/// mode and Envoy's timeout.
fn rate_limit_service<S: SecretSource>(
    problems: &mut Problems,
    raw: &RawRateLimitService,
    secrets: &S,
) -> Option<RateLimitService> {
    let at = "rate_limit_service";
    let before = problems.0.len();
    let failure_mode = match raw.failure_mode.as_deref() {
        None | Some("deny") => FailureMode::Deny,
        Some("allow") => FailureMode::Allow,
        Some(other) => {
            problems.push(format!("{at}.failure_mode"), RegistryError::InvalidFailureMode { value: other.to_string() });
            FailureMode::Deny
        }
    };
    let timeout =
        positive_duration(problems, &format!("{at}.timeout"), raw.timeout.as_deref(), defaults::RATE_LIMIT_TIMEOUT);
    let (url_path, url, redis_source) = match (&raw.redis_url, &raw.redis_url_env) {
        (Some(url), None) => (format!("{at}.redis_url"), url.clone(), "redis_url".to_string()),
        (None, Some(name)) => {
            let path = format!("{at}.redis_url_env");
            if !is_env_name(name) {
                problems.push(path, RegistryError::InvalidEnvName { name: name.clone() });
                return None;
            }
            match secrets.secret(name) {
                Some(url) => (path, url.trim().to_string(), format!("redis_url_env {name}")),
                None => {
                    problems.push(path, RegistryError::RedisUrlEnvUnset { name: name.clone() });
                    return None;
                }
            }
        }
        _ => {
            problems.push(at, RegistryError::RedisUrlSourceCount);
            return None;
        }
    };
    let redis = match RedisAddress::parse(&url) {
        Ok(redis) => redis,
        Err(e) => {
            problems.push(url_path, RegistryError::InvalidRedisUrl(e.to_string()));
            return None;
        }
    };
    (problems.0.len() == before).then_some(RateLimitService { redis, redis_source, failure_mode, timeout })
}

fn port(problems: &mut Problems, path: &str, value: u64) -> u16 {
    u16::try_from(value).unwrap_or_else(|_| {
        problems.push(path, RegistryError::PortOutOfRange { value });
        0
    })
}

fn servers<S: SecretSource>(problems: &mut Problems, raw: &[RawServer], context: &ServerContext<'_, S>) -> Vec<Server> {
    if raw.is_empty() {
        problems.push("servers", RegistryError::NoServers);
    }
    let mut seen: HashMap<&str, usize> = HashMap::new();
    let mut servers = Vec::with_capacity(raw.len());
    for (i, server) in raw.iter().enumerate() {
        let at = format!("servers[{i}]");
        let name_path = format!("{at}.name");
        let before = problems.0.len();
        if !is_valid_server_name(&server.name) {
            problems.push(&name_path, RegistryError::InvalidServerName { name: server.name.clone() });
        } else if let Some(first) = seen.get(server.name.as_str()) {
            let first_line = context.index.line_of(&format!("servers[{first}].name")).unwrap_or(0);
            problems.push(&name_path, RegistryError::DuplicateServer { name: server.name.clone(), first_line });
        } else {
            seen.insert(&server.name, i);
        }
        let built = server_settings(problems, &at, server, context);
        if let (true, Some(built)) = (problems.0.len() == before, built) {
            servers.push(built);
        }
    }
    servers
}

/// What validating one server needs besides the server itself.
struct ServerContext<'a, S> {
    index: &'a LineIndex,
    base_dir: &'a Path,
    secrets: &'a S,
}

/// Everything of one server but its name; `None` when something is wrong (and reported).
fn server_settings<S: SecretSource>(
    problems: &mut Problems,
    at: &str,
    server: &RawServer,
    context: &ServerContext<'_, S>,
) -> Option<Server> {
    let before = problems.0.len();
    let upstreams = endpoints(problems, at, server);
    let timeout = match &server.timeout {
        None => Duration::ZERO,
        Some(value) => parse_duration(value).map_err(|e| problems.push(format!("{at}.timeout"), e)).unwrap_or_default(),
    };
    let connect_timeout = positive_duration(
        problems,
        &format!("{at}.connect_timeout"),
        server.connect_timeout.as_deref(),
        defaults::CONNECT_TIMEOUT,
    );
    let tls = match (&upstreams, &server.tls) {
        (Some((first, _)), tls) if first.scheme == Scheme::Https => {
            upstream_tls(problems, at, first, tls.as_ref(), context.base_dir)
        }
        (Some(_), Some(_)) => {
            problems.push(format!("{at}.tls"), RegistryError::TlsWithoutHttps);
            None
        }
        _ => None,
    };
    let health_check = health_check(problems, at, server.health_check.as_ref());
    let outlier_detection = outlier_detection(problems, at, server.outlier_detection.as_ref());
    let circuit_breakers = circuit_breakers(problems, at, server.circuit_breakers.as_ref());
    let (credentials, exchange) = match &server.credentials {
        None => (None, None),
        Some(raw) if raw.exchange.is_some() => {
            exchange_credentials(problems, &format!("{at}.credentials"), raw, context)
        }
        Some(raw) => {
            (credentials(problems, &format!("{at}.credentials"), raw, context.base_dir, context.secrets), None)
        }
    };
    let tools = tools(problems, at, &server.tools);
    let cors = server.cors.as_ref().and_then(|raw| cors(problems, &format!("{at}.cors"), raw));

    let (upstream, more_upstreams) = upstreams?;
    if problems.0.len() != before {
        return None;
    }
    let mut control_plane_keys = Vec::new();
    for (key, set) in [
        ("urls", server.urls.is_some()),
        ("connect_timeout", server.connect_timeout.is_some()),
        ("tls", server.tls.is_some() || upstream.scheme == Scheme::Https),
        ("health_check", server.health_check.is_some()),
        ("outlier_detection", server.outlier_detection.is_some()),
        ("circuit_breakers", server.circuit_breakers.is_some()),
        ("credentials", server.credentials.is_some()),
        ("cors", server.cors.is_some()),
    ] {
        if set {
            control_plane_keys.push(key);
        }
    }
    Some(Server {
        name: server.name.clone(),
        upstream,
        more_upstreams,
        timeout,
        connect_timeout,
        tls,
        health_check,
        outlier_detection,
        circuit_breakers,
        credentials,
        exchange,
        tools,
        control_plane_keys,
        cors,
    })
}

/// `listener.cors` / `servers[].cors`: origins in the filter's pattern syntax (the regexes
/// Envoy matches come from the same parser), a positive `max_age`, and no credentials for
/// `*` (any site could then make credentialed calls).
fn cors(problems: &mut Problems, at: &str, raw: &RawCors) -> Option<Cors> {
    let before = problems.0.len();
    if raw.allow_origins.is_empty() {
        problems.push(format!("{at}.allow_origins"), RegistryError::NoCorsOrigins);
    }
    let mut origin_regexes = Vec::with_capacity(raw.allow_origins.len());
    for (i, pattern) in raw.allow_origins.iter().enumerate() {
        match OriginPattern::parse(pattern) {
            Ok(compiled) => origin_regexes.push(compiled.regex()),
            Err(reason) => problems.push(format!("{at}.allow_origins[{i}]"), RegistryError::InvalidOrigin { reason }),
        }
    }
    let allow_credentials = raw.allow_credentials.unwrap_or(false);
    if allow_credentials && raw.allow_origins.iter().any(|o| o.trim() == "*") {
        problems.push(format!("{at}.allow_credentials"), RegistryError::CorsCredentialsForAnyOrigin);
    }
    let max_age = positive_duration(problems, &format!("{at}.max_age"), raw.max_age.as_deref(), defaults::CORS_MAX_AGE);
    (problems.0.len() == before).then(|| Cors {
        allow_origins: raw.allow_origins.clone(),
        origin_regexes,
        allow_credentials,
        max_age,
        allow_private_network_access: raw.allow_private_network_access.unwrap_or(false),
    })
}

/// `listener.allowed_hosts` / `listener.allowed_origins`: each pattern valid (the filter's
/// validator checks them again; this points at the registry line).
fn listener_patterns(problems: &mut Problems, raw: &RawListener) {
    if let Some(hosts) = &raw.allowed_hosts {
        if hosts.is_empty() {
            problems.push("listener.allowed_hosts", RegistryError::NoAllowedHosts);
        }
        for (i, pattern) in hosts.iter().enumerate() {
            if let Err(reason) = HostPattern::parse(pattern) {
                problems.push(format!("listener.allowed_hosts[{i}]"), RegistryError::InvalidHost { reason });
            }
        }
    }
    for (i, pattern) in raw.allowed_origins.iter().flatten().enumerate() {
        if let Err(reason) = OriginPattern::parse(pattern) {
            problems.push(format!("listener.allowed_origins[{i}]"), RegistryError::InvalidOrigin { reason });
        }
    }
}

/// `url` or `urls`: the first endpoint and the others, which must share scheme and path.
fn endpoints(problems: &mut Problems, at: &str, server: &RawServer) -> Option<(Upstream, Vec<Upstream>)> {
    let urls: Vec<(String, &str)> = match (&server.url, &server.urls) {
        (Some(url), None) => vec![(format!("{at}.url"), url.as_str())],
        (None, Some(urls)) if urls.is_empty() => {
            problems.push(format!("{at}.urls"), RegistryError::EmptyUrls);
            return None;
        }
        (None, Some(urls)) => {
            urls.iter().enumerate().map(|(j, url)| (format!("{at}.urls[{j}]"), url.as_str())).collect()
        }
        (Some(_), Some(_)) => {
            problems.push(format!("{at}.urls"), RegistryError::UrlAndUrls);
            return None;
        }
        (None, None) => {
            problems.push(at, RegistryError::NoUrl);
            return None;
        }
    };
    let mut parsed = Vec::with_capacity(urls.len());
    let mut ok = true;
    for (path, url) in &urls {
        match parse_upstream(url) {
            Ok(upstream) => parsed.push((path, url, upstream)),
            Err(e) => {
                problems.push(path.as_str(), e);
                ok = false;
            }
        }
    }
    let mut parsed = parsed.into_iter();
    let (_, first_url, first) = parsed.next()?;
    let mut more = Vec::new();
    for (path, url, upstream) in parsed {
        let differs = if upstream.scheme != first.scheme {
            Some("scheme")
        } else if upstream.path != first.path {
            Some("path")
        } else {
            None
        };
        if let Some(what) = differs {
            problems.push(
                path.as_str(),
                RegistryError::MixedEndpoints { url: (*url).to_string(), first: (*first_url).to_string(), what },
            );
            ok = false;
        } else if upstream.scheme == Scheme::Https && upstream.host != first.host {
            problems.push(
                path.as_str(),
                RegistryError::HttpsHostsDiffer { host: upstream.host.to_string(), first: first.host.to_string() },
            );
            ok = false;
        }
        more.push(upstream);
    }
    ok.then_some((first, more))
}

fn upstream_tls(
    problems: &mut Problems,
    at: &str,
    first: &Upstream,
    raw: Option<&RawTls>,
    base_dir: &Path,
) -> Option<UpstreamTls> {
    let raw = raw.cloned().unwrap_or_default();
    let sni = match (&raw.sni, &first.host) {
        (Some(sni), _) => {
            let lower = sni.to_ascii_lowercase();
            if !is_dns_name(&lower) {
                problems.push(format!("{at}.tls.sni"), RegistryError::InvalidSni { value: sni.clone() });
                return None;
            }
            Some(lower)
        }
        (None, UpstreamHost::Dns(name)) => Some(name.clone()),
        // SNI cannot carry an IP address; the certificate must then name the IP.
        (None, UpstreamHost::Ip(_)) => None,
    };
    let trust = match &raw.ca_file {
        None => Trust::System,
        Some(name) => {
            let file = base_dir.join(name);
            let path = format!("{at}.tls.ca_file");
            match std::fs::read_to_string(&file) {
                Err(e) => {
                    problems
                        .push(path, RegistryError::CaRead { file, error: super::file_read_error(name, base_dir, &e) });
                    return None;
                }
                Ok(pem) if !pem.contains("-----BEGIN CERTIFICATE-----") => {
                    problems.push(path, RegistryError::CaInvalid { file });
                    return None;
                }
                Ok(pem) => Trust::CaFile { file, pem },
            }
        }
    };
    let verify = match (&sni, &first.host) {
        (Some(name), _) => VerifyName::Dns(name.clone()),
        (None, UpstreamHost::Ip(ip)) => VerifyName::Ip(*ip),
        (None, UpstreamHost::Dns(name)) => VerifyName::Dns(name.clone()),
    };
    Some(UpstreamTls { sni, verify, trust })
}

fn is_dns_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}

/// A duration that must be longer than zero; `default` when absent.
fn positive_duration(problems: &mut Problems, path: &str, value: Option<&str>, default: Duration) -> Duration {
    let Some(value) = value else { return default };
    match parse_duration(value) {
        Ok(d) if d.is_zero() => {
            problems.push(path, RegistryError::ZeroDuration);
            default
        }
        Ok(d) => d,
        Err(e) => {
            problems.push(path, e);
            default
        }
    }
}

/// `value` within `min..=max` (as `u32`), `default` when absent.
fn number(problems: &mut Problems, path: &str, value: Option<u64>, (min, max): (u32, u32), default: u32) -> u32 {
    let Some(value) = value else { return default };
    match u32::try_from(value) {
        Ok(n) if (min..=max).contains(&n) => n,
        _ => {
            problems.push(path, RegistryError::NumberOutOfRange { value, min: min.into(), max: max.into() });
            default
        }
    }
}

/// Thresholds above this are typos.
const MAX_THRESHOLD: u32 = 1_000;

fn health_check(problems: &mut Problems, at: &str, raw: Option<&RawHealthCheck>) -> HealthCheck {
    let Some(raw) = raw else {
        return HealthCheck::default();
    };
    let at = format!("{at}.health_check");
    let timing = HealthTiming {
        interval: positive_duration(
            problems,
            &format!("{at}.interval"),
            raw.interval.as_deref(),
            defaults::HEALTH_INTERVAL,
        ),
        timeout: positive_duration(
            problems,
            &format!("{at}.timeout"),
            raw.timeout.as_deref(),
            defaults::HEALTH_TIMEOUT,
        ),
        healthy_threshold: number(
            problems,
            &format!("{at}.healthy_threshold"),
            raw.healthy_threshold,
            (1, MAX_THRESHOLD),
            defaults::HEALTHY_THRESHOLD,
        ),
        unhealthy_threshold: number(
            problems,
            &format!("{at}.unhealthy_threshold"),
            raw.unhealthy_threshold,
            (1, MAX_THRESHOLD),
            defaults::UNHEALTHY_THRESHOLD,
        ),
    };
    match raw.kind.as_deref() {
        None | Some("tcp") => HealthCheck::Tcp(timing),
        Some("http") => HealthCheck::Http(timing),
        Some("none") => HealthCheck::None,
        Some(other) => {
            problems.push(format!("{at}.type"), RegistryError::InvalidHealthCheckType { value: other.to_string() });
            HealthCheck::default()
        }
    }
}

fn outlier_detection(problems: &mut Problems, at: &str, raw: Option<&RawOutlierDetection>) -> Option<OutlierDetection> {
    let Some(raw) = raw else {
        return Some(OutlierDetection::default());
    };
    let at = format!("{at}.outlier_detection");
    let detection = OutlierDetection {
        consecutive_5xx: number(
            problems,
            &format!("{at}.consecutive_5xx"),
            raw.consecutive_5xx,
            (1, MAX_THRESHOLD),
            defaults::CONSECUTIVE_5XX,
        ),
        consecutive_gateway_failure: number(
            problems,
            &format!("{at}.consecutive_gateway_failure"),
            raw.consecutive_gateway_failure,
            (1, MAX_THRESHOLD),
            defaults::CONSECUTIVE_GATEWAY_FAILURE,
        ),
        interval: positive_duration(
            problems,
            &format!("{at}.interval"),
            raw.interval.as_deref(),
            defaults::OUTLIER_INTERVAL,
        ),
        base_ejection_time: positive_duration(
            problems,
            &format!("{at}.base_ejection_time"),
            raw.base_ejection_time.as_deref(),
            defaults::BASE_EJECTION_TIME,
        ),
        max_ejection_percent: number(
            problems,
            &format!("{at}.max_ejection_percent"),
            raw.max_ejection_percent,
            (0, 100),
            defaults::MAX_EJECTION_PERCENT,
        ),
    };
    raw.enabled.unwrap_or(true).then_some(detection)
}

fn circuit_breakers(problems: &mut Problems, at: &str, raw: Option<&RawCircuitBreakers>) -> CircuitBreakers {
    let Some(raw) = raw else {
        return CircuitBreakers::default();
    };
    let at = format!("{at}.circuit_breakers");
    let mut limit = |key: &str, value: Option<u64>, default: u32| {
        number(problems, &format!("{at}.{key}"), value, (1, u32::MAX), default)
    };
    CircuitBreakers {
        max_connections: limit("max_connections", raw.max_connections, defaults::MAX_CONNECTIONS),
        max_pending_requests: limit("max_pending_requests", raw.max_pending_requests, defaults::MAX_PENDING_REQUESTS),
        max_requests: limit("max_requests", raw.max_requests, defaults::MAX_REQUESTS),
    }
}

/// Headers whose meaning belongs to HTTP, Envoy or MCP: a credential must not replace them.
const FORBIDDEN_CREDENTIAL_HEADERS: [&str; 14] = [
    "host",
    "content-length",
    "content-type",
    "content-encoding",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "te",
    "upgrade",
    "accept",
    "mcp-session-id",
    "mcp-protocol-version",
    "mcp-method",
    "mcp-name",
];

fn credentials<S: SecretSource>(
    problems: &mut Problems,
    at: &str,
    raw: &RawCredentials,
    base_dir: &Path,
    secrets: &S,
) -> Option<Credentials> {
    let header = raw.header.as_deref().unwrap_or(defaults::CREDENTIAL_HEADER).to_ascii_lowercase();
    let header_path = format!("{at}.header");
    if !is_header_name(&header) {
        problems.push(header_path, RegistryError::InvalidHeaderName { name: raw.header.clone().unwrap_or_default() });
        return None;
    }
    if FORBIDDEN_CREDENTIAL_HEADERS.contains(&header.as_str()) || header.starts_with("x-envoy-") {
        problems.push(header_path, RegistryError::ForbiddenHeader { name: header });
        return None;
    }
    let prefix = raw.prefix.clone().unwrap_or_default();
    if !is_header_value(&prefix) {
        problems.push(format!("{at}.prefix"), RegistryError::InvalidPrefix);
        return None;
    }
    let (source, value) = secret_value(
        problems,
        at,
        ("value_env", raw.value_env.as_deref()),
        ("value_file", raw.value_file.as_deref()),
        (secrets, base_dir),
        "a header value",
    )?;
    Some(Credentials { header, prefix, source, value })
}

/// `servers[].credentials` with `exchange`: the token exchange, and the static credential
/// that serves consumers without a bearer token when `api_key_consumers: static`.
fn exchange_credentials<S: SecretSource>(
    problems: &mut Problems,
    at: &str,
    raw: &RawCredentials,
    context: &ServerContext<'_, S>,
) -> (Option<Credentials>, Option<TokenExchange>) {
    use meshgate_core::upstream_token::{self as ut, NoSubjectToken};
    let Some(x) = &raw.exchange else {
        return (None, None);
    };
    let xat = format!("{at}.exchange");
    let before = problems.0.len();
    let no_subject_token = match x.api_key_consumers.as_deref() {
        None | Some("refuse") => NoSubjectToken::Refuse,
        Some("static") => NoSubjectToken::Static,
        Some(other) => {
            problems.push(
                format!("{xat}.api_key_consumers"),
                RegistryError::ExchangeInvalid { value: other.to_string(), reason: "use refuse or static" },
            );
            NoSubjectToken::Refuse
        }
    };
    let credentials = match no_subject_token {
        NoSubjectToken::Static => {
            if raw.header.as_deref().is_some_and(|h| !h.eq_ignore_ascii_case(defaults::CREDENTIAL_HEADER)) {
                problems.push(
                    format!("{at}.header"),
                    RegistryError::ExchangeInvalid {
                        value: raw.header.clone().unwrap_or_default(),
                        reason: "the fallback credential of a server with token exchange goes in authorization",
                    },
                );
            }
            if raw.value_env.is_none() && raw.value_file.is_none() {
                problems.push(format!("{xat}.api_key_consumers"), RegistryError::ExchangeStaticMissing);
                None
            } else {
                credentials(problems, at, raw, context.base_dir, context.secrets)
            }
        }
        NoSubjectToken::Refuse => {
            for (key, set) in [
                ("value_env", raw.value_env.is_some()),
                ("value_file", raw.value_file.is_some()),
                ("header", raw.header.is_some()),
                ("prefix", raw.prefix.is_some()),
            ] {
                if set {
                    problems.push(format!("{at}.{key}"), RegistryError::ExchangeStaticKey { key });
                }
            }
            None
        }
    };
    let endpoint_path = format!("{xat}.token_endpoint");
    let endpoint = match parse_upstream(&x.token_endpoint) {
        Ok(endpoint) => {
            let loopback = match &endpoint.host {
                UpstreamHost::Ip(ip) => ip.is_loopback(),
                UpstreamHost::Dns(name) => name == "localhost",
            };
            if endpoint.scheme == Scheme::Http && !loopback {
                problems.push(&endpoint_path, RegistryError::ExchangeEndpointNotTls { url: x.token_endpoint.clone() });
            }
            Some(endpoint)
        }
        Err(e) => {
            problems.push(&endpoint_path, e);
            None
        }
    };
    let tls = match (&endpoint, &x.tls) {
        (Some(endpoint), tls) if endpoint.scheme == Scheme::Https => {
            upstream_tls(problems, &xat, endpoint, tls.as_ref(), context.base_dir)
        }
        (Some(_), Some(_)) => {
            problems.push(format!("{xat}.tls"), RegistryError::TlsWithoutHttps);
            None
        }
        _ => None,
    };
    let auth_at = format!("{xat}.client_auth");
    match x.client_auth.method.as_deref() {
        None | Some("client_secret_basic") => {}
        Some("client_secret_post") => problems.push(
            format!("{auth_at}.method"),
            RegistryError::ExchangeUnsupported {
                what: "client_secret_post".to_string(),
                reason: "the secret would have to travel in the filter's configuration; use client_secret_basic \
                         (Envoy injects it from an SDS secret)",
            },
        ),
        Some("private_key_jwt") => problems.push(
            format!("{auth_at}.method"),
            RegistryError::ExchangeUnsupported {
                what: "private_key_jwt".to_string(),
                reason: "client assertions are not signed by meshgate yet; use client_secret_basic",
            },
        ),
        Some(other) => problems.push(
            format!("{auth_at}.method"),
            RegistryError::ExchangeInvalid { value: other.to_string(), reason: "use client_secret_basic" },
        ),
    }
    let client_id = x.client_auth.client_id.clone();
    if client_id.is_empty() || !is_header_value(&client_id) {
        problems.push(
            format!("{auth_at}.client_id"),
            RegistryError::ExchangeInvalid { value: client_id.clone(), reason: "must be one non-empty line" },
        );
    }
    let secret = client_secret(problems, &auth_at, &x.client_auth, context);
    if x.actor_token.is_some() {
        problems.push(
            format!("{xat}.actor_token"),
            RegistryError::ExchangeUnsupported {
                what: "actor_token".to_string(),
                reason: "meshgate does not send an actor token yet (delegation); leave it out",
            },
        );
    }
    let audience = x.audience.clone();
    if audience.as_deref().is_some_and(|a| a.trim().is_empty() || !is_header_value(a)) {
        problems.push(
            format!("{xat}.audience"),
            RegistryError::ExchangeInvalid {
                value: audience.clone().unwrap_or_default(),
                reason: "must be one non-empty line",
            },
        );
    }
    let resources = x.resource.clone();
    for resource in &resources {
        let absolute = resource.parse::<http::Uri>().is_ok_and(|u| u.scheme().is_some() && u.host().is_some());
        if !absolute || resource.contains('#') {
            problems.push(
                format!("{xat}.resource"),
                RegistryError::ExchangeInvalid {
                    value: resource.clone(),
                    reason: "RFC 8707 wants an absolute URI without a fragment",
                },
            );
        }
    }
    let scope = x.scope.clone();
    if let Some(scope) = &scope {
        // RFC 6749 §3.3: scope tokens of %x21 / %x23-5B / %x5D-7E, separated by spaces.
        let token = |t: &str| {
            !t.is_empty() && t.bytes().all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b))
        };
        if !scope.split(' ').all(token) {
            problems.push(
                format!("{xat}.scope"),
                RegistryError::ExchangeInvalid {
                    value: scope.clone(),
                    reason: "scopes are RFC 6749 scope tokens separated by one space",
                },
            );
        }
    }
    let subject_token_type = match x.subject_token_type.as_deref() {
        None | Some("access_token") => ut::TOKEN_TYPE_ACCESS_TOKEN.to_string(),
        Some("jwt") => ut::TOKEN_TYPE_JWT.to_string(),
        Some("id_token") => ut::TOKEN_TYPE_ID_TOKEN.to_string(),
        Some(uri) if ut::SUBJECT_TOKEN_TYPES.contains(&uri) => uri.to_string(),
        Some(other) => {
            problems.push(
                format!("{xat}.subject_token_type"),
                RegistryError::ExchangeInvalid {
                    value: other.to_string(),
                    reason: "use access_token, jwt or id_token",
                },
            );
            String::new()
        }
    };
    let timeout_path = format!("{xat}.timeout");
    let timeout = positive_duration(problems, &timeout_path, x.timeout.as_deref(), defaults::EXCHANGE_TIMEOUT);
    if timeout > Duration::from_millis(ut::MAX_TIMEOUT_MS) {
        problems.push(
            &timeout_path,
            RegistryError::ExchangeInvalid {
                value: x.timeout.clone().unwrap_or_default(),
                reason: "at most 30s (a call waits for it)",
            },
        );
    }
    let refresh_skew = match x.refresh_skew.as_deref() {
        None => defaults::EXCHANGE_REFRESH_SKEW,
        Some(value) => {
            parse_duration(value).map_err(|e| problems.push(format!("{xat}.refresh_skew"), e)).unwrap_or_default()
        }
    };
    let cache_entries = x.cache_entries.unwrap_or(defaults::EXCHANGE_CACHE_ENTRIES);
    if !(1..=1_000_000).contains(&cache_entries) {
        problems.push(
            format!("{xat}.cache_entries"),
            RegistryError::NumberOutOfRange { value: cache_entries, min: 1, max: 1_000_000 },
        );
    }
    let (Some(endpoint), Some((secret_source, client_secret)), true) = (endpoint, secret, problems.0.len() == before)
    else {
        return (None, None);
    };
    let exchange = TokenExchange {
        endpoint,
        tls,
        client_id,
        secret_source,
        client_secret,
        audience,
        resources,
        scope,
        subject_token_type,
        timeout,
        refresh_skew,
        cache_entries,
        no_subject_token,
    };
    (credentials, Some(exchange))
}

/// The client secret of a token exchange (`secret_env` or `secret_file`, exactly one).
fn client_secret<S: SecretSource>(
    problems: &mut Problems,
    at: &str,
    raw: &super::raw::RawClientAuth,
    context: &ServerContext<'_, S>,
) -> Option<(CredentialSource, SecretValue)> {
    secret_value(
        problems,
        at,
        ("secret_env", raw.secret_env.as_deref()),
        ("secret_file", raw.secret_file.as_deref()),
        (context.secrets, context.base_dir),
        "a client secret",
    )
}

/// A one-line secret named by exactly one of an environment variable (`env`) and a file
/// relative to the registry's folder (`file`), each given as (its key under `at`, its value).
/// A file's final newline is not part of the value. Refused, with the key's path: an invalid
/// variable name, an unset variable, an unreadable file, neither or both given, an empty
/// value or one with control characters (`what` the value is, for the message).
fn secret_value<S: SecretSource>(
    problems: &mut Problems,
    at: &str,
    (env_key, env): (&str, Option<&str>),
    (file_key, file): (&str, Option<&str>),
    (secrets, base_dir): (&S, &Path),
    what: &str,
) -> Option<(CredentialSource, SecretValue)> {
    let (source, value, path) = match (env, file) {
        (Some(name), None) => {
            let path = format!("{at}.{env_key}");
            if !is_env_name(name) {
                problems.push(path, RegistryError::InvalidEnvName { name: name.to_string() });
                return None;
            }
            let Some(value) = secrets.secret(name) else {
                problems.push(path, RegistryError::CredentialEnvUnset { name: name.to_string() });
                return None;
            };
            (CredentialSource::Env(name.to_string()), value, path)
        }
        (None, Some(name)) => {
            let path = format!("{at}.{file_key}");
            let file = base_dir.join(name);
            match std::fs::read_to_string(&file) {
                Ok(text) => {
                    // Editors and `echo` end files with a newline; it is not part of the value.
                    let value =
                        text.strip_suffix('\n').map(|v| v.strip_suffix('\r').unwrap_or(v)).unwrap_or(&text).to_string();
                    (CredentialSource::File(file), value, path)
                }
                Err(e) => {
                    let error = super::file_read_error(name, base_dir, &e);
                    problems.push(path, RegistryError::CredentialRead { file, error });
                    return None;
                }
            }
        }
        _ => {
            problems.push(at, RegistryError::CredentialSourceCount);
            return None;
        }
    };
    let unusable = if value.is_empty() {
        Some("it is empty".to_string())
    } else if !is_header_value(&value) {
        Some(format!("it contains control characters ({what} is one line)"))
    } else {
        None
    };
    if let Some(reason) = unusable {
        problems.push(path, RegistryError::CredentialInvalid { origin: source.to_string(), reason });
        return None;
    }
    Some((source, SecretValue::new(value)))
}

/// An HTTP token (RFC 9110 `tchar`s).
fn is_header_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Visible ASCII, spaces and tabs (no CR/LF/NUL, nothing that needs encoding).
fn is_header_value(value: &str) -> bool {
    value.bytes().all(|b| b == b'\t' || (b' '..=b'~').contains(&b))
}

fn tools(problems: &mut Problems, at: &str, raw: &[RawTool]) -> Vec<Tool> {
    let mut seen = BTreeSet::new();
    let mut tools = Vec::with_capacity(raw.len());
    for (j, tool) in raw.iter().enumerate() {
        let path = format!("{at}.tools[{j}].name");
        if tool.name.trim().is_empty() {
            problems.push(path, RegistryError::EmptyToolName);
        } else if !seen.insert(tool.name.as_str()) {
            problems.push(path, RegistryError::DuplicateTool { name: tool.name.clone() });
        } else {
            tools.push(Tool { name: tool.name.clone(), description: tool.description.clone() });
        }
    }
    tools
}

/// Parses an upstream MCP endpoint: `http://` or `https://`, no userinfo, query or fragment.
pub(crate) fn parse_upstream(url: &str) -> Result<Upstream, RegistryError> {
    let invalid = |reason: &str| RegistryError::InvalidUrl { url: url.to_string(), reason: reason.to_string() };
    let uri: http::Uri = url.parse().map_err(|e: http::uri::InvalidUri| invalid(&e.to_string()))?;
    let scheme = uri.scheme_str().ok_or_else(|| invalid("missing scheme (expected http://host:port/path)"))?;
    let scheme = if scheme.eq_ignore_ascii_case("http") {
        Scheme::Http
    } else if scheme.eq_ignore_ascii_case("https") {
        Scheme::Https
    } else {
        return Err(RegistryError::UnsupportedScheme { url: url.to_string(), scheme: scheme.to_string() });
    };
    let authority = uri.authority().ok_or_else(|| invalid("missing host"))?;
    if authority.as_str().contains('@') {
        return Err(invalid("credentials in the URL are not supported"));
    }
    if uri.query().is_some() || url.contains('#') {
        return Err(invalid("query strings and fragments are not supported"));
    }
    let host = authority.host();
    let host = if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        UpstreamHost::Ip(IpAddr::V6(v6.parse().map_err(|_| invalid("bad IPv6 address"))?))
    } else if let Ok(ip) = host.parse::<IpAddr>() {
        UpstreamHost::Ip(ip)
    } else if host.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.') && !host.is_empty() {
        UpstreamHost::Dns(host.to_ascii_lowercase())
    } else {
        return Err(invalid("bad host name"));
    };
    let port = match authority.port_u16() {
        Some(0) => return Err(invalid("port 0")),
        Some(port) => port,
        None if authority.as_str().ends_with(':') => return Err(invalid("empty port")),
        None => scheme.default_port(),
    };
    let path = match uri.path() {
        "" => "/".to_string(),
        path => path.to_string(),
    };
    Ok(Upstream { scheme, host, port, path })
}

/// `<digits><unit>` with unit `ms`, `s`, `m` or `h`: `300s`, `5m`, `0s`.
pub(crate) fn parse_duration(value: &str) -> Result<Duration, RegistryError> {
    let invalid = |reason| RegistryError::InvalidDuration { value: value.to_string(), reason };
    let digits_end = value.find(|c: char| !c.is_ascii_digit()).unwrap_or(value.len());
    let (digits, unit) = value.split_at(digits_end);
    if digits.is_empty() {
        return Err(invalid("expected a number followed by ms, s, m or h (e.g. 300s, 5m)"));
    }
    let n: u64 = digits.parse().map_err(|_| invalid("number too large"))?;
    let millis_per_unit = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "" => return Err(invalid("missing unit: use ms, s, m or h (e.g. 300s)")),
        _ => return Err(invalid("unknown unit: use ms, s, m or h (e.g. 300s)")),
    };
    // Envoy caps durations near 10,000 years; a year is plenty for a route timeout.
    const MAX_MILLIS: u64 = 366 * 24 * 3_600_000;
    match n.checked_mul(millis_per_unit) {
        Some(ms) if ms <= MAX_MILLIS => Ok(Duration::from_millis(ms)),
        _ => Err(invalid("longer than a year")),
    }
}

fn jwt_providers<S: SecretSource>(
    problems: &mut Problems,
    raw: &[RawJwtIssuer],
    base_dir: &Path,
    secrets: &S,
) -> Vec<RawJwtProvider> {
    raw.iter()
        .enumerate()
        .map(|(i, issuer)| {
            let at = format!("auth.jwt[{i}]");
            let mut jwks = None;
            match (&issuer.jwks_file, &issuer.hs256_secret_env) {
                (Some(_), Some(_)) => {
                    problems.push(&at, RegistryError::BothKeySources { issuer: issuer.issuer.clone() })
                }
                (None, None) => problems.push(&at, RegistryError::NoKeySource { issuer: issuer.issuer.clone() }),
                (Some(file), None) => {
                    jwks = read_jwks(file, base_dir).map_err(|e| problems.push(format!("{at}.jwks_file"), e)).ok();
                }
                (None, Some(name)) => {
                    let path = format!("{at}.hs256_secret_env");
                    if !is_env_name(name) {
                        problems.push(path, RegistryError::InvalidEnvName { name: name.clone() });
                    } else if secrets.secret(name).is_none_or(|v| v.is_empty()) {
                        problems.push(path, RegistryError::SecretEnvUnset { name: name.clone() });
                    }
                }
            }
            filter::make_jwt_provider(issuer, jwks)
        })
        .collect()
}

fn is_env_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Reads a JWKS document and makes sure it carries public keys only: it ends up in the
/// filter configuration, which Envoy shows to anyone with admin access (`/config_dump`).
fn read_jwks(written: &str, base_dir: &Path) -> Result<serde_json::Value, RegistryError> {
    let file = &base_dir.join(written);
    let text = std::fs::read_to_string(file).map_err(|e| RegistryError::JwksRead {
        file: file.to_path_buf(),
        error: super::file_read_error(written, base_dir, &e),
    })?;
    let invalid = |reason: String| RegistryError::JwksInvalid { file: file.to_path_buf(), reason };
    let jwks: serde_json::Value = serde_json::from_str(&text).map_err(|e| invalid(format!("bad JSON: {e}")))?;
    let keys = jwks
        .get("keys")
        .and_then(|k| k.as_array())
        .ok_or_else(|| invalid("expected an object with a \"keys\" array".to_string()))?;
    if keys.is_empty() {
        return Err(invalid("\"keys\" is empty".to_string()));
    }
    for (index, key) in keys.iter().enumerate() {
        let key = key.as_object().ok_or_else(|| invalid(format!("key {index} is not an object")))?;
        if let Some(member) = PRIVATE_JWK_MEMBERS.iter().find(|m| key.contains_key(**m)) {
            return Err(RegistryError::JwksPrivateKey {
                file: file.to_path_buf(),
                index,
                member: (*member).to_string(),
            });
        }
    }
    Ok(jwks)
}

/// API keys and anonymous access name roles statically; a typo there would silently grant
/// nothing, so it is an error. (JWT roles come from tokens and cannot be checked here.)
fn check_role_references(problems: &mut Problems, raw: &RawRegistry) {
    let defined: BTreeSet<&str> = raw.policy.roles.keys().map(String::as_str).collect();
    let mut check = |path: String, role: &str| {
        if !defined.contains(role) {
            problems.push(path, RegistryError::UnknownRole { role: role.to_string() });
        }
    };
    for (i, key) in raw.auth.api_keys.iter().enumerate() {
        for (j, role) in key.roles.iter().enumerate() {
            check(format!("auth.api_keys[{i}].roles[{j}]"), role);
        }
    }
    if let Some(anonymous) = &raw.auth.anonymous {
        for (j, role) in anonymous.roles.iter().enumerate() {
            check(format!("auth.anonymous.roles[{j}]"), role);
        }
    }
}

fn envoy_settings(problems: &mut Problems, raw: &RawEnvoy) -> EnvoySettings {
    let concurrency = match raw.concurrency {
        None => DEFAULT_CONCURRENCY,
        Some(value) => u32::try_from(value).ok().filter(|n| (1..=MAX_CONCURRENCY).contains(n)).unwrap_or_else(|| {
            problems.push("envoy.concurrency", RegistryError::InvalidConcurrency { value });
            DEFAULT_CONCURRENCY
        }),
    };
    let log_level = match raw.log_level.as_deref() {
        None => LogLevel::default(),
        Some(value) => LogLevel::parse(value).unwrap_or_else(|| {
            problems.push("envoy.log_level", RegistryError::InvalidLogLevel { value: value.to_string() });
            LogLevel::default()
        }),
    };
    let system_ca_file = match &raw.system_ca_file {
        None => defaults::SYSTEM_CA_FILE.to_string(),
        Some(value) if value.starts_with('/') => value.clone(),
        Some(value) => {
            problems.push("envoy.system_ca_file", RegistryError::InvalidCaPath { value: value.clone() });
            defaults::SYSTEM_CA_FILE.to_string()
        }
    };
    EnvoySettings { concurrency, log_level, system_ca_file }
}

fn scopes(problems: &mut Problems, raw: &[String]) -> Vec<String> {
    for (i, scope) in raw.iter().enumerate() {
        let bad =
            scope.is_empty() || scope.chars().any(|c| c.is_whitespace() || c.is_control() || c == '"' || c == '\\');
        if bad {
            problems.push(format!("auth.scopes[{i}]"), RegistryError::InvalidScope { value: scope.clone() });
        }
    }
    raw.to_vec()
}
