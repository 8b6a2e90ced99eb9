//! meshgate's own admin HTTP API (axum), next to the xDS port.
//!
//! | path | answer |
//! |---|---|
//! | `GET /healthz` | 200 while the process runs |
//! | `GET /readyz` | 200 once a snapshot is published, else 503 |
//! | `GET /status` | snapshot version and counts, the last registry load error, per Envoy node: streams, last ACKed version per type, last NACK (Envoy's message) and NACK count |
//! | `GET /registry` | the loaded registry; credential values are never shown (`[redacted]`), API keys show consumer and roles only |
//! | `GET /catalog` | servers, their paths and tools: discovered from the servers ([`crate::discovery`]), declared tools as overrides |
//! | `GET /pins/drift` | per pinned server: its mode and every definition it serves now that differs from the lockfile (changed, unpinned, removed) with both hashes and a line diff; meshgate asks the servers on each request, as `meshgate pin` does |
//! | `GET /metrics` | Prometheus text: global rate-limit decisions per rule, store errors, control-plane counters |
//! | `GET /approvals`, `POST /approvals/*` | the approval page ([`crate::approvals::page`]); approvers sign in with a consumer's JWT or API key, not the admin token |
//! | `GET /wasm/meshgate.wasm` | the filter module Envoys fetch (`x-sha256` header), when meshgate serves it |
//!
//! Bind it to loopback or a private network: `/status` and `/registry` describe the whole
//! deployment (without secrets). With a token (`--admin-token-file`) every path but
//! `/healthz`, `/readyz` and the module needs `Authorization: Bearer <token>` (401 otherwise);
//! see [`crate::transport_security`].

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::control::ControlPlane;
use crate::discovery::Catalog;
use crate::ratelimit::Metrics;
use crate::registry::{CredentialSource, HealthCheck, Registry, Server, Trust, VerifyName};
use crate::translate::envoy_duration;

/// Path the wasm module is served at.
pub const WASM_PATH: &str = "/wasm/meshgate.wasm";

/// The module meshgate serves, read once at start (so it always matches its hash).
#[derive(Debug, Clone)]
pub struct WasmModule {
    pub bytes: axum::body::Bytes,
    /// Lower-case hex SHA-256 of `bytes`.
    pub sha256: String,
}

impl WasmModule {
    pub fn read(path: &std::path::Path) -> std::io::Result<WasmModule> {
        use sha2::{Digest, Sha256};
        let bytes = std::fs::read(path)?;
        let sha256 = hex::encode(Sha256::digest(&bytes));
        Ok(WasmModule { bytes: bytes.into(), sha256 })
    }
}

#[derive(Debug, Clone)]
pub struct AdminState {
    pub control: Arc<ControlPlane>,
    pub wasm: Option<Arc<WasmModule>>,
    /// The rate-limit service's counters.
    pub metrics: Arc<Metrics>,
    /// When set, required on every path but the probes and the module.
    pub token: Option<crate::transport_security::AdminToken>,
    /// What the servers said their tools are (kept fresh by [`crate::discovery::keep_fresh`]).
    pub catalog: Arc<Catalog>,
    /// Human approval: the page (`/approvals`, which signs approvers in itself) and metrics.
    pub approvals: Arc<crate::approvals::Approvals>,
}

/// The admin API as a router, so tests can drive it in-process.
pub fn app(state: AdminState) -> Router {
    let protected = Router::new()
        .route("/status", get(status))
        .route("/registry", get(registry))
        .route("/catalog", get(catalog))
        .route("/metrics", get(metrics))
        .route("/pins/drift", get(pin_drift))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        // Public bytes, pinned by SHA-256 in the configuration; Envoy's fetch sends no header.
        .route(WASM_PATH, get(wasm))
        .merge(protected)
        .with_state(state.clone())
        // Approvers sign in with their own credentials, not the admin token.
        .merge(crate::approvals::page::routes(state.approvals.clone()))
}

async fn require_token(
    State(state): State<AdminState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let Some(token) = &state.token else {
        return next.run(request).await;
    };
    let authorization = request.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    if token.admits(authorization) {
        return next.run(request).await;
    }
    let mut response = (StatusCode::UNAUTHORIZED, "a bearer token is required\n").into_response();
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"meshgate-admin\""));
    response
}

async fn readyz(State(state): State<AdminState>) -> Response {
    match state.control.snapshot() {
        Some(snapshot) => (StatusCode::OK, format!("ready {}\n", snapshot.version)).into_response(),
        None => (StatusCode::SERVICE_UNAVAILABLE, "no snapshot yet\n").into_response(),
    }
}

async fn status(State(state): State<AdminState>) -> Json<Value> {
    let control = &state.control;
    let snapshot = control.snapshot();
    Json(json!({
        "version": snapshot.as_ref().map(|s| s.version.clone()),
        "resources": snapshot.as_ref().map(|s| s.counts()),
        "loaded_at": control.loaded_at(),
        "servers": control.registry().map(|r| r.servers.iter().map(|s| s.name.clone()).collect::<Vec<_>>()),
        "last_error": control.last_error(),
        "nodes": control.nodes(),
        "nacks_total": control.nacks_total(),
        "pushes_total": control.pushes_total(),
    }))
}

async fn metrics(State(state): State<AdminState>) -> Response {
    let mut out = String::new();
    state.metrics.render(&mut out);
    state.approvals.metrics.render(&mut out);
    let control = &state.control;
    for (name, help, value) in [
        ("meshgate_xds_pushes_total", "xDS responses sent to Envoys.", control.pushes_total()),
        ("meshgate_xds_nacks_total", "xDS responses Envoys rejected.", control.nacks_total()),
    ] {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}\n"));
    }
    let mut response = out.into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
    response
}

async fn registry(State(state): State<AdminState>) -> Response {
    match state.control.registry() {
        Some(registry) => Json(registry_view(&registry)).into_response(),
        None => (StatusCode::SERVICE_UNAVAILABLE, "no registry loaded\n").into_response(),
    }
}

async fn catalog(State(state): State<AdminState>) -> Response {
    match state.control.registry() {
        Some(registry) => Json(catalog_view(&registry, &state.catalog)).into_response(),
        None => (StatusCode::SERVICE_UNAVAILABLE, "no registry loaded\n").into_response(),
    }
}

async fn pin_drift(State(state): State<AdminState>) -> Response {
    match state.control.registry() {
        Some(registry) => Json(crate::pin::drift_view(&registry).await).into_response(),
        None => (StatusCode::SERVICE_UNAVAILABLE, "no registry loaded\n").into_response(),
    }
}

async fn wasm(State(state): State<AdminState>) -> Response {
    let Some(module) = state.wasm else {
        return (StatusCode::NOT_FOUND, "meshgate does not serve the module (--wasm-url not set)\n").into_response();
    };
    let mut response = module.bytes.clone().into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/wasm"));
    if let Ok(value) = HeaderValue::from_str(&module.sha256) {
        headers.insert("x-sha256", value);
    }
    response
}

/// `/catalog`: what an MCP client or a portal needs to find servers and tools. Each server's
/// tools are the ones it listed last (in its order), with a declared tool's description
/// replacing the server's; declared tools the server did not list follow. `discovery` says
/// how fresh the list is.
pub fn catalog_view(registry: &Registry, catalog: &Catalog) -> Value {
    let servers: Vec<Value> = registry
        .servers
        .iter()
        .map(|server| {
            let discovered = catalog.get(&server.name);
            let listed = discovered.as_ref().and_then(|d| d.tools.clone()).unwrap_or_default();
            let declared = |name: &str| server.tools.iter().find(|t| t.name == name);
            let mut tools: Vec<Value> = listed
                .iter()
                .map(|tool| match declared(&tool.name) {
                    Some(own) => json!({
                        "name": tool.name,
                        "description": own.description.clone().or_else(|| tool.description.clone()),
                        "source": "server, registry",
                    }),
                    None => json!({ "name": tool.name, "description": tool.description, "source": "server" }),
                })
                .collect();
            tools.extend(
                server
                    .tools
                    .iter()
                    .filter(|t| !listed.iter().any(|l| l.name == t.name))
                    .map(|t| json!({ "name": t.name, "description": t.description, "source": "registry" })),
            );
            let discovery = match &discovered {
                None if !registry.catalog.discover => json!({ "status": "off" }),
                None => json!({ "status": "pending" }),
                Some(d) => json!({
                    "status": match (&d.error, &d.tools) {
                        (None, _) => "ok",
                        (Some(_), Some(_)) => "stale",
                        (Some(_), None) => "failed",
                    },
                    "listed_at": d.listed_at,
                    "attempted_at": d.attempted_at,
                    "error": d.error,
                }),
            };
            json!({
                "name": server.name,
                "path": registry.route_path(server),
                "tools": tools,
                "discovery": discovery,
            })
        })
        .collect();
    json!({ "servers": servers })
}

/// `/registry`: the loaded registry without secrets.
/// `listener.tls` (paths only: never the key), client address, admin address, stats.
fn edge_view(edge: &crate::registry::edge::Edge) -> Value {
    let tls = edge.tls.as_ref().map(|tls| {
        json!({
            "source": match tls.source {
                crate::registry::edge::TlsSource::Meshgate => "meshgate",
                crate::registry::edge::TlsSource::Envoy => "envoy",
            },
            "cert_file": tls.cert.path.display().to_string(),
            "key_file": tls.key_path.display().to_string(),
            "client_ca_file": tls.client_ca.as_ref().map(|ca| ca.path.display().to_string()),
            "require_client_certificate": tls.require_client_certificate,
        })
    });
    json!({
        "tls": tls,
        "use_remote_address": edge.use_remote_address,
        "xff_num_trusted_hops": edge.xff_num_trusted_hops,
        "admin_address": edge.admin_address.to_string(),
        "stats": edge.stats.map(|s| s.to_string()),
    })
}

pub fn registry_view(registry: &Registry) -> Value {
    let auth = &registry.filter.auth;
    let jwt: Vec<Value> = auth
        .jwt
        .iter()
        .map(|p| {
            let keys = p.jwks.as_ref().and_then(|j| j.get("keys")).and_then(Value::as_array).map(Vec::len);
            json!({
                "issuer": p.issuer,
                "audiences": p.audiences,
                "jwks_keys": keys,
                "hs256_secret_env": p.hs256_secret_env,
                "consumer_claim": p.consumer_claim,
                "roles_claim": p.roles_claim,
                "leeway_seconds": p.leeway_seconds,
            })
        })
        .collect();
    let api_keys: Vec<Value> = auth
        .api_keys
        .iter()
        .map(|k| json!({ "consumer": k.consumer, "roles": k.roles, "sha256": "[redacted]" }))
        .collect();
    json!({
        "source": registry.source.display().to_string(),
        "listener": registry.listener.to_string(),
        "admin_port": registry.admin_port,
        "servers": registry.servers.iter().map(server_view).collect::<Vec<_>>(),
        "auth": {
            "jwt": jwt,
            "api_keys": api_keys,
            "anonymous": auth.anonymous,
            "resource_metadata": auth.resource_metadata,
            "token_cache_entries": auth.token_cache_entries,
            "scopes": registry.scopes,
            "mtls": auth.mtls,
        },
        "edge": edge_view(&registry.edge),
        "policy": registry.filter.policy,
        "limits": registry.filter.limits,
        "envoy": {
            "concurrency": registry.envoy.concurrency,
            "log_level": registry.envoy.log_level.as_str(),
            "system_ca_file": registry.envoy.system_ca_file,
        },
        // The Redis address without its password.
        "rate_limit_service": registry.rate_limit_service.as_ref().map(|r| json!({
            "redis": r.redis.to_string(),
            "redis_source": r.redis_source,
            "failure_mode": r.failure_mode.as_str(),
            "timeout": envoy_duration(r.timeout),
        })),
        "global_rules": registry.global_rules.iter().map(|r| json!({
            "name": r.name,
            "limit": r.limit.describe(),
        })).collect::<Vec<_>>(),
    })
}

fn server_view(server: &Server) -> Value {
    let health_check = match server.health_check {
        HealthCheck::None => json!({ "type": "none" }),
        HealthCheck::Tcp(t) | HealthCheck::Http(t) => json!({
            "type": if matches!(server.health_check, HealthCheck::Tcp(_)) { "tcp" } else { "http" },
            "interval": envoy_duration(t.interval),
            "timeout": envoy_duration(t.timeout),
            "healthy_threshold": t.healthy_threshold,
            "unhealthy_threshold": t.unhealthy_threshold,
        }),
    };
    let outlier_detection = match &server.outlier_detection {
        None => json!({ "enabled": false }),
        Some(o) => json!({
            "enabled": true,
            "consecutive_5xx": o.consecutive_5xx,
            "consecutive_gateway_failure": o.consecutive_gateway_failure,
            "interval": envoy_duration(o.interval),
            "base_ejection_time": envoy_duration(o.base_ejection_time),
            "max_ejection_percent": o.max_ejection_percent,
        }),
    };
    let tls = server.tls.as_ref().map(|tls| {
        json!({
            "sni": tls.sni,
            "verify": match &tls.verify {
                VerifyName::Dns(name) => name.clone(),
                VerifyName::Ip(ip) => ip.to_string(),
            },
            "ca_file": match &tls.trust {
                Trust::System => None,
                Trust::CaFile { file, .. } => Some(file.display().to_string()),
            },
        })
    });
    let credentials = server.credentials.as_ref().map(|c| {
        let source = match &c.source {
            CredentialSource::Env(name) => json!({ "value_env": name }),
            CredentialSource::File(file) => json!({ "value_file": file.display().to_string() }),
        };
        json!({ "header": c.header, "prefix": c.prefix, "source": source, "value": "[redacted]" })
    });
    json!({
        "name": server.name,
        "urls": server.upstreams().map(ToString::to_string).collect::<Vec<_>>(),
        "timeout": envoy_duration(server.timeout),
        "connect_timeout": envoy_duration(server.connect_timeout),
        "tls": tls,
        "health_check": health_check,
        "outlier_detection": outlier_detection,
        "circuit_breakers": {
            "max_connections": server.circuit_breakers.max_connections,
            "max_pending_requests": server.circuit_breakers.max_pending_requests,
            "max_requests": server.circuit_breakers.max_requests,
        },
        "credentials": credentials,
        "tools": server.tools.iter().map(|t| json!({ "name": t.name, "description": t.description })).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::registry;

    /// The probes `deploy/kubernetes/meshgate.yaml` uses: liveness says the process runs;
    /// readiness waits for a published snapshot (a replica whose registry never loaded gets
    /// no Envoys).
    #[tokio::test]
    async fn probes_live_at_once_and_ready_only_with_a_snapshot() {
        let control = crate::control::ControlPlane::new();
        let state = AdminState {
            control: control.clone(),
            wasm: None,
            metrics: Arc::new(Metrics::default()),
            token: None,
            catalog: Arc::new(Catalog::default()),
            approvals: crate::approvals::Approvals::new(control, "http://127.0.0.1:1/approvals".into(), false),
        };
        let not_ready = readyz(State(state.clone())).await;
        assert_eq!(not_ready.status(), StatusCode::SERVICE_UNAVAILABLE);
        let registry =
            Arc::new(registry("listener: { port: 0 }\nservers:\n  - { name: a, url: 'http://127.0.0.1:1/' }\n"));
        let options = crate::translate::TranslateOptions {
            wasm: crate::translate::WasmSource::Local { path: "/m.wasm".into() },
            native: crate::translate::NativeSource::SearchPath,
        };
        let resources = crate::translate::translate(&registry, &options).expect("translate");
        let snapshot = crate::snapshot::Snapshot::new(&resources).expect("consistent");
        let version = snapshot.version.clone();
        state.control.publish(registry, snapshot);
        let ready = readyz(State(state)).await;
        assert_eq!(ready.status(), StatusCode::OK);
        let body = axum::body::to_bytes(ready.into_body(), 1024).await.expect("body");
        assert_eq!(body, format!("ready {version}\n"));
    }

    #[test]
    fn registry_view_never_shows_secret_values() {
        let registry = registry(
            "listener: { port: 0 }\nservers:\n  - name: a\n    url: http://127.0.0.1:1/\n    credentials: { value_env: TEST_SECRET, prefix: 'Bearer ' }\n    tools: [{ name: t, description: d }]\n\
             auth:\n  api_keys:\n    - { consumer: c, sha256: '3f2a4fc5102d2e4887969eeae2f869f5e75546ba030a606da8a66efabf50ab5b', roles: [r] }\n\
             policy:\n  roles:\n    r: { allow: ['a/t'] }\n",
        );
        let text = registry_view(&registry).to_string();
        assert!(!text.contains("s3cret"), "{text}");
        let with_redis = crate::test_support::registry(
            "listener: { port: 0 }\nservers:\n  - { name: a, url: 'http://127.0.0.1:1/' }\n\
             quotas:\n  - { name: g, quota: 5/m, scope: global }\n\
             rate_limit_service: { redis_url: 'redis://:hunter2@cache:6379/1' }\n",
        );
        let view = registry_view(&with_redis);
        assert_eq!(view["rate_limit_service"]["redis"], "redis://cache:6379/1");
        assert_eq!(view["global_rules"][0]["limit"], "5/m quota");
        assert!(!view.to_string().contains("hunter2"), "{view}");
        assert!(!text.contains("3f2a4fc5"), "{text}");
        let edge = crate::test_support::registry(
            "listener: { port: 0, tls: { source: envoy, cert_file: /etc/gw/cert.pem, key_file: /etc/gw/key.pem } }\n\
             servers:\n  - { name: a, url: 'http://127.0.0.1:1/' }\n",
        );
        let view = registry_view(&edge);
        assert_eq!(view["edge"]["tls"]["key_file"], "/etc/gw/key.pem");
        assert_eq!(view["edge"]["tls"]["source"], "envoy");
        assert_eq!(view["edge"]["admin_address"], "127.0.0.1");
        assert!(text.contains("\"value_env\":\"TEST_SECRET\""), "{text}");
        let catalog = catalog_view(&registry, &Catalog::default());
        assert_eq!(
            catalog,
            json!({ "servers": [{
                "name": "a",
                "path": "/mcp/a",
                "tools": [{ "name": "t", "description": "d", "source": "registry" }],
                "discovery": { "status": "pending" },
            }] })
        );
    }

    #[tokio::test]
    async fn with_discovery_off_nothing_is_asked_and_the_catalog_says_off() {
        // A server that would answer: it must never be asked.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| panic!("bind: {e}"));
        let address = listener.local_addr().unwrap_or_else(|e| panic!("address: {e}"));
        let registry = registry(&format!(
            "listener: {{ port: 0 }}\nservers:\n  - name: a\n    url: 'http://{address}/mcp'\n    tools: [{{ name: t }}]\n\
             catalog: {{ discover: false }}\n"
        ));
        let registry = Arc::new(registry);
        let control = crate::control::ControlPlane::new();
        let options = crate::translate::TranslateOptions {
            wasm: crate::translate::WasmSource::Local { path: "/m.wasm".into() },
            native: crate::translate::NativeSource::SearchPath,
        };
        let resources = crate::translate::translate(&registry, &options).expect("translate");
        control.publish(registry.clone(), crate::snapshot::Snapshot::new(&resources).expect("consistent"));
        let catalog = Arc::new(Catalog::default());
        catalog.record("a", Ok(Vec::new()), 1);
        let (stop, shutdown) = tokio::sync::watch::channel(false);
        let refresher = tokio::spawn(crate::discovery::keep_fresh(catalog.clone(), control, shutdown));
        let asked = tokio::time::timeout(std::time::Duration::from_millis(500), listener.accept()).await;
        assert!(asked.is_err(), "discovery asked the server: {asked:?}");
        let view = catalog_view(&registry, &catalog);
        assert_eq!(view["servers"][0]["discovery"], json!({ "status": "off" }));
        assert_eq!(view["servers"][0]["tools"], json!([{ "name": "t", "description": null, "source": "registry" }]));
        let _ = stop.send(true);
        let _ = refresher.await;
    }

    #[test]
    fn the_catalog_lists_discovered_tools_with_declared_ones_as_overrides() {
        use crate::discovery::DiscoveredTool;
        let registry = registry(
            "listener: { port: 0 }\nservers:\n  - name: a\n    url: 'http://127.0.0.1:1/'\n    tools:\n      \
             - { name: t, description: mine }\n      - { name: only_declared }\n",
        );
        let catalog = Catalog::default();
        let listed =
            |name: &str, description: &str| DiscoveredTool { name: name.into(), description: Some(description.into()) };
        catalog.record("a", Ok(vec![listed("s", "from the server"), listed("t", "theirs")]), 100);
        catalog.record("a", Err("HTTP 503".into()), 160);
        let view = catalog_view(&registry, &catalog);
        assert_eq!(
            view["servers"][0]["tools"],
            json!([
                { "name": "s", "description": "from the server", "source": "server" },
                { "name": "t", "description": "mine", "source": "server, registry" },
                { "name": "only_declared", "description": null, "source": "registry" },
            ])
        );
        assert_eq!(
            view["servers"][0]["discovery"],
            json!({ "status": "stale", "listed_at": 100, "attempted_at": 160, "error": "HTTP 503" })
        );
    }
}
