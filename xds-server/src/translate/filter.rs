//! ECDS and SDS: the wasm filter's configuration, and upstream credentials.
//!
//! Failure policy `FAIL_RELOAD`: a VM that traps fails the one request it was serving (Envoy
//! answers 503, mapped to a JSON-RPC error by [`super::local_reply`]) and the next request
//! on that worker gets a new VM, after a short backoff while it keeps failing.
//!
//! The wasm filter's configuration *is* the registry's filter config (JSON in a
//! `StringValue`), already accepted by `FilterConfig::compile`. HS256 secrets never enter
//! it: the VM reads them from Envoy's environment (`host_env_keys`). The module comes from a
//! local file or, for Envoys on other hosts, over HTTP with its SHA-256.
//!
//! Upstream credentials are generic SDS secrets: the only place a credential value exists
//! in anything meshgate builds. Envoy shows secrets as `[redacted]` in `/config_dump`.

use envoy_types::pb::envoy::config::core::v3::{
    async_data_source, data_source, http_uri, AsyncDataSource, BackoffStrategy, DataSource, HttpUri, RemoteDataSource,
    RetryPolicy, TypedExtensionConfig,
};
use envoy_types::pb::envoy::extensions::filters::http::wasm::v3::Wasm;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{secret, GenericSecret, Secret};
use envoy_types::pb::envoy::extensions::wasm::v3::{
    plugin_config, EnvironmentVariables, FailurePolicy, PluginConfig, ReloadConfig, VmConfig,
};
use envoy_types::pb::google::protobuf::{BoolValue, StringValue, UInt32Value};

use super::cluster::WASM_FETCH_TIMEOUT;
use super::{
    credential_secret_name, pack, proto_duration, TranslateError, WasmSource, WASM_FILTER_NAME, WASM_PLUGIN_NAME,
    WASM_SOURCE_CLUSTER,
};
use crate::registry::{Registry, Server};

const V8_RUNTIME: &str = "envoy.wasm.runtime.v8";
/// Remote fetch attempts before Envoy gives up on a module (then NACKs).
const WASM_FETCH_RETRIES: u32 = 5;
/// Least time between two reloads of a failed VM (Envoy backs off up to the maximum while
/// the VM keeps failing).
pub const VM_RELOAD_BACKOFF: std::time::Duration = std::time::Duration::from_millis(100);
pub const VM_RELOAD_MAX_BACKOFF: std::time::Duration = std::time::Duration::from_secs(5);

/// The ECDS resource of the Meshgate filter.
pub fn make_wasm_config(registry: &Registry, source: &WasmSource) -> Result<TypedExtensionConfig, TranslateError> {
    let configuration = serde_json::to_string(&registry.filter)?;
    let code = match source {
        WasmSource::Local { path } => async_data_source::Specifier::Local(DataSource {
            specifier: Some(data_source::Specifier::Filename(path.display().to_string())),
            ..Default::default()
        }),
        WasmSource::Remote(remote) => async_data_source::Specifier::Remote(RemoteDataSource {
            http_uri: Some(HttpUri {
                uri: remote.url.clone(),
                timeout: Some(proto_duration(WASM_FETCH_TIMEOUT)),
                http_upstream_type: Some(http_uri::HttpUpstreamType::Cluster(WASM_SOURCE_CLUSTER.to_string())),
            }),
            sha256: remote.sha256.clone(),
            retry_policy: Some(RetryPolicy {
                num_retries: Some(UInt32Value { value: WASM_FETCH_RETRIES }),
                retry_back_off: Some(BackoffStrategy {
                    base_interval: Some(proto_duration(std::time::Duration::from_millis(500))),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        }),
    };
    let env_keys = registry.filter.secret_env_names();
    let vm_config = VmConfig {
        vm_id: WASM_PLUGIN_NAME.to_string(),
        runtime: V8_RUNTIME.to_string(),
        code: Some(AsyncDataSource { specifier: Some(code) }),
        environment_variables: (!env_keys.is_empty())
            .then(|| EnvironmentVariables { host_env_keys: env_keys, ..Default::default() }),
        ..Default::default()
    };
    let wasm = Wasm {
        config: Some(PluginConfig {
            name: WASM_PLUGIN_NAME.to_string(),
            root_id: WASM_PLUGIN_NAME.to_string(),
            configuration: Some(pack(&StringValue { value: configuration })),
            // A VM that traps fails the request it was serving (fail closed: a JSON-RPC 503,
            // see `local_reply`), and the next request gets a new VM: never a worker that
            // answers 503 to everyone until Envoy restarts.
            failure_policy: FailurePolicy::FailReload as i32,
            reload_config: Some(ReloadConfig {
                backoff: Some(BackoffStrategy {
                    base_interval: Some(proto_duration(VM_RELOAD_BACKOFF)),
                    max_interval: Some(proto_duration(VM_RELOAD_MAX_BACKOFF)),
                }),
            }),
            // The filter pauses on headers to read the body first.
            allow_on_headers_stop_iteration: Some(BoolValue { value: true }),
            vm: Some(plugin_config::Vm::VmConfig(vm_config)),
            ..Default::default()
        }),
    };
    Ok(TypedExtensionConfig { name: WASM_FILTER_NAME.to_string(), typed_config: Some(pack(&wasm)) })
}

/// The SDS secret with a server's upstream credential, if it has one.
pub fn make_credential_secret(server: &Server) -> Option<Secret> {
    let credentials = server.credentials.as_ref()?;
    Some(Secret {
        name: credential_secret_name(server),
        r#type: Some(secret::Type::GenericSecret(GenericSecret {
            secret: Some(DataSource {
                specifier: Some(data_source::Specifier::InlineString(credentials.value.expose().to_string())),
                ..Default::default()
            }),
            ..Default::default()
        })),
    })
}
