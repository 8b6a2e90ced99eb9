//! `meshgate render`: options → [`crate::render`] → YAML on stdout.

use std::collections::BTreeMap;
use std::process::ExitCode;

use super::RenderPlatform;
use crate::admin_api::WasmModule;
use crate::locate::Search;
use crate::registry::Registry;
use crate::render::{self, envoy_gateway, istio, RenderError};
use crate::translate::RemoteWasm;

pub fn run(platform: RenderPlatform) -> ExitCode {
    let (file, rendered) = match platform {
        RenderPlatform::Istio {
            registry,
            wasm_url,
            wasm_sha256,
            wasm,
            namespace,
            name,
            selector,
            port,
            target_port,
            hosts,
            tls_credential,
            plaintext,
            service_namespace,
        } => {
            let loaded = match load(&registry) {
                Ok(loaded) => loaded,
                Err(code) => return code,
            };
            let (listener, default_port, default_target_port) = match tls_credential {
                Some(credential_name) if !plaintext => (istio::Listener::Tls { credential_name }, 443, 8443),
                _ => {
                    warn_plaintext();
                    (istio::Listener::Plaintext, 80, 8080)
                }
            };
            let options = remote_wasm(&wasm_url, wasm_sha256.as_deref(), wasm.as_deref()).and_then(|wasm| {
                for (flag, value) in
                    [("--namespace", &namespace), ("--name", &name), ("--service-namespace", &service_namespace)]
                {
                    render::check_name(flag, value)?;
                }
                Ok(istio::IstioOptions {
                    namespace,
                    name,
                    selector: labels(&selector)?,
                    port: port.unwrap_or(default_port),
                    target_port: target_port.unwrap_or(default_target_port),
                    hosts,
                    listener,
                    wasm,
                    service_namespace,
                })
            });
            note_secret_env(&loaded, "the ingress gateway's Deployment");
            (registry, options.and_then(|options| istio::render(&loaded, &options)))
        }
        RenderPlatform::EnvoyGateway {
            registry,
            namespace,
            name,
            gateway_class,
            port,
            tls_secret,
            plaintext,
            module_image,
            envoy_image,
            module_dir,
            service_namespace,
            secret_name,
        } => {
            let loaded = match load(&registry) {
                Ok(loaded) => loaded,
                Err(code) => return code,
            };
            let (listener, default_port) = match tls_secret {
                Some(secret) if !plaintext => (envoy_gateway::Listener::Tls { secret }, 443),
                _ => {
                    warn_plaintext();
                    (envoy_gateway::Listener::Plaintext, 80)
                }
            };
            let checked = [("--namespace", &namespace), ("--name", &name), ("--service-namespace", &service_namespace)]
                .into_iter()
                .try_for_each(|(flag, value)| render::check_name(flag, value));
            let options = envoy_gateway::EnvoyGatewayOptions {
                namespace,
                name,
                gateway_class,
                port: port.unwrap_or(default_port),
                listener,
                module_image,
                envoy_image,
                module_dir,
                service_namespace,
                secret_name,
            };
            (registry, checked.and_then(|()| envoy_gateway::render(&loaded, &options)))
        }
    };
    match rendered.and_then(|resources| render::to_yaml_documents(&resources)) {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("meshgate: {}: {e}", file.display());
            ExitCode::FAILURE
        }
    }
}

fn load(file: &std::path::Path) -> Result<Registry, ExitCode> {
    Registry::load(file).map_err(|errors| {
        eprintln!("{errors}");
        ExitCode::FAILURE
    })
}

fn warn_plaintext() {
    eprintln!(
        "meshgate: warning: --plaintext: the gateway serves MCP over plain HTTP; API keys and \
         tokens cross the network in clear text. Use it only behind another TLS terminator."
    );
}

/// The filter reads HS256 keys and the redaction hash key from Envoy's environment.
fn note_secret_env(registry: &Registry, place: &str) {
    let names = registry.filter.secret_env_names();
    if !names.is_empty() {
        eprintln!("meshgate: note: set {} in the environment of {place}", names.join(", "));
    }
}

/// `--wasm-url` with the module's SHA-256 (given, or of the local module).
fn remote_wasm(url: &str, sha256: Option<&str>, module: Option<&std::path::Path>) -> Result<RemoteWasm, RenderError> {
    let bad_url = |reason: String| RenderError::Option { flag: "--wasm-url", value: url.to_string(), reason };
    let uri: http::Uri = url.parse().map_err(|e| bad_url(format!("{e}")))?;
    let host = match (uri.scheme_str(), uri.host()) {
        (Some("http"), Some(host)) => host.trim_start_matches('[').trim_end_matches(']').to_string(),
        _ => return Err(bad_url("expected http://host:port/path".to_string())),
    };
    let sha256 = match sha256 {
        Some(hex) if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) => {
            hex.to_string()
        }
        Some(hex) => {
            return Err(RenderError::Option {
                flag: "--wasm-sha256",
                value: hex.to_string(),
                reason: "expected 64 lower-case hex digits".to_string(),
            })
        }
        None => {
            let path = Search::current().wasm(module).map_err(|e| RenderError::Option {
                flag: "--wasm",
                value: module.map(|p| p.display().to_string()).unwrap_or_default(),
                reason: e.to_string(),
            })?;
            WasmModule::read(&path)
                .map_err(|e| RenderError::Option {
                    flag: "--wasm",
                    value: path.display().to_string(),
                    reason: e.to_string(),
                })?
                .sha256
        }
    };
    Ok(RemoteWasm { url: url.to_string(), host, port: uri.port_u16().unwrap_or(80), sha256, tls: None })
}

/// `KEY=VALUE` pairs.
fn labels(pairs: &[String]) -> Result<BTreeMap<String, String>, RenderError> {
    pairs
        .iter()
        .map(|pair| match pair.split_once('=') {
            Some((key, value)) if !key.is_empty() => Ok((key.to_string(), value.to_string())),
            _ => Err(RenderError::Option {
                flag: "--selector",
                value: pair.clone(),
                reason: "expected KEY=VALUE".to_string(),
            }),
        })
        .collect()
}
