//! The listener's production edge (`listener.tls`, `auth.mtls`, client address), rendered
//! for LDS and SDS.
//!
//! - TLS: the listener's filter chain gets a `DownstreamTlsContext` whose certificate and
//!   client CA are **SDS secrets over ADS** ([`LISTENER_CERT_SECRET`],
//!   [`LISTENER_CLIENT_CA_SECRET`]), never inline in the listener. A rotated certificate is a
//!   new secret version: Envoy uses it for new handshakes without re-creating the listener
//!   or dropping open connections. With `source: meshgate` the secret carries the PEM
//!   meshgate read (the watcher pushes every file change); with `source: envoy` it names
//!   files on the Envoy host, which Envoy watches itself.
//! - mTLS identity: with a client CA the HCM runs `forward_client_cert_details:
//!   SANITIZE_SET` with the URI and DNS SANs: Envoy drops any client-sent
//!   `x-forwarded-client-cert` and writes its own for a verified certificate (see
//!   `meshgate_core::identity::peer`). Without a client CA Envoy's default (`SANITIZE`)
//!   already drops the header, so a forged one never reaches the filter either way.
//! - Client address: `use_remote_address` and `xff_num_trusted_hops` as written (Envoy's
//!   defaults when unset).

use envoy_types::pb::envoy::config::core::v3::{data_source, transport_socket, DataSource, TransportSocket};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager::{ForwardClientCertDetails, SetCurrentClientCertDetails},
    HttpConnectionManager,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    common_tls_context::ValidationContextType, secret, CertificateValidationContext, CommonTlsContext,
    DownstreamTlsContext, SdsSecretConfig, Secret, TlsCertificate,
};
use envoy_types::pb::google::protobuf::BoolValue;

use super::{ads_config_source, pack};
use crate::registry::edge::{ListenerTls, PemFile};
use crate::registry::Registry;

/// SDS secret with the listener's certificate and key.
pub const LISTENER_CERT_SECRET: &str = "meshgate-listener-cert";
/// SDS secret with the CAs client certificates must chain to.
pub const LISTENER_CLIENT_CA_SECRET: &str = "meshgate-listener-client-ca";
const TLS_TRANSPORT_SOCKET: &str = "envoy.transport_sockets.tls";

/// The listener's SDS secrets (none without `listener.tls`).
pub fn listener_secrets(registry: &Registry) -> Vec<Secret> {
    let Some(tls) = &registry.edge.tls else {
        return Vec::new();
    };
    let key = match &tls.key_pem {
        Some(pem) => data_source::Specifier::InlineString(pem.expose().to_string()),
        None => data_source::Specifier::Filename(tls.key_path.display().to_string()),
    };
    let mut secrets = vec![Secret {
        name: LISTENER_CERT_SECRET.to_string(),
        r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
            certificate_chain: Some(pem_source(&tls.cert)),
            private_key: Some(DataSource { specifier: Some(key), ..Default::default() }),
            ..Default::default()
        })),
    }];
    if let Some(ca) = &tls.client_ca {
        secrets.push(Secret {
            name: LISTENER_CLIENT_CA_SECRET.to_string(),
            r#type: Some(secret::Type::ValidationContext(CertificateValidationContext {
                trusted_ca: Some(pem_source(ca)),
                ..Default::default()
            })),
        });
    }
    secrets
}

fn pem_source(file: &PemFile) -> DataSource {
    let specifier = match &file.pem {
        Some(pem) => data_source::Specifier::InlineString(pem.clone()),
        None => data_source::Specifier::Filename(file.path.display().to_string()),
    };
    DataSource { specifier: Some(specifier), ..Default::default() }
}

/// The listener filter chain's TLS transport socket, when `listener.tls` is set.
pub fn transport_socket(registry: &Registry) -> Option<TransportSocket> {
    let tls = registry.edge.tls.as_ref()?;
    let sds = |name: &str| SdsSecretConfig { name: name.to_string(), sds_config: Some(ads_config_source()) };
    let context = DownstreamTlsContext {
        common_tls_context: Some(CommonTlsContext {
            tls_certificate_sds_secret_configs: vec![sds(LISTENER_CERT_SECRET)],
            validation_context_type: tls
                .client_ca
                .as_ref()
                .map(|_| ValidationContextType::ValidationContextSdsSecretConfig(sds(LISTENER_CLIENT_CA_SECRET))),
            // The HCM's codec is AUTO: offer HTTP/2 and HTTP/1.1.
            alpn_protocols: vec!["h2".to_string(), "http/1.1".to_string()],
            ..Default::default()
        }),
        require_client_certificate: Some(BoolValue { value: requires_client_certificate(tls) }),
        ..Default::default()
    };
    Some(TransportSocket {
        name: TLS_TRANSPORT_SOCKET.to_string(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(pack(&context))),
    })
}

fn requires_client_certificate(tls: &ListenerTls) -> bool {
    tls.client_ca.is_some() && tls.require_client_certificate
}

/// Client address and client-certificate forwarding on the HCM.
pub fn apply(registry: &Registry, hcm: &mut HttpConnectionManager) {
    let edge = &registry.edge;
    if edge.use_remote_address {
        hcm.use_remote_address = Some(BoolValue { value: true });
    }
    hcm.xff_num_trusted_hops = edge.xff_num_trusted_hops;
    if edge.tls.as_ref().is_some_and(|tls| tls.client_ca.is_some()) {
        hcm.forward_client_cert_details = ForwardClientCertDetails::SanitizeSet as i32;
        hcm.set_current_client_cert_details =
            Some(SetCurrentClientCertDetails { uri: true, dns: true, ..Default::default() });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Registry;
    use crate::test_support::{try_registry, FakeEnv};
    use envoy_types::pb::envoy::config::listener::v3::filter;
    use prost::Message;

    const CERT: &str = "-----BEGIN CERTIFICATE-----\nMIIBAA==\n-----END CERTIFICATE-----\n";
    const KEY: &str = "-----BEGIN PRIVATE KEY-----\nMIIBAA==\n-----END PRIVATE KEY-----\n";

    fn with_tls(tls: &str, extra: &str) -> Result<Registry, crate::registry::LoadErrors> {
        let dir = tempfile::tempdir().expect("tempdir");
        for (name, text) in [("cert.pem", CERT), ("key.pem", KEY), ("ca.pem", CERT)] {
            std::fs::write(dir.path().join(name), text).expect("write");
        }
        let yaml = format!(
            "listener: {{ port: 10000, tls: {tls} }}\nservers: [{{ name: crm, url: 'http://127.0.0.1:9/mcp' }}]\n\
             policy: {{ roles: {{ reader: {{ allow: ['*'] }} }} }}\n{extra}"
        );
        Registry::parse(&yaml, &dir.path().join("registry.yaml"), &FakeEnv::default())
    }

    fn hcm(registry: &Registry) -> HttpConnectionManager {
        let listener = crate::translate::listener::make_listener(registry);
        let Some(filter::ConfigType::TypedConfig(any)) = &listener.filter_chains[0].filters[0].config_type else {
            panic!("typed config");
        };
        HttpConnectionManager::decode(any.value.as_slice()).expect("hcm")
    }

    #[test]
    fn tls_certificates_travel_by_sds_and_mtls_sanitises_xfcc() {
        let registry = with_tls(
            "{ cert_file: cert.pem, key_file: key.pem, client_ca_file: ca.pem }",
            "auth: { mtls: [{ spiffe_id: 'spiffe://mesh.example/agent', consumer: agent, roles: [reader] }] }",
        )
        .expect("valid");
        let secrets = listener_secrets(&registry);
        let names: Vec<&str> = secrets.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, [LISTENER_CERT_SECRET, LISTENER_CLIENT_CA_SECRET]);
        let Some(secret::Type::TlsCertificate(cert)) = &secrets[0].r#type else { panic!("a certificate") };
        let key = cert.private_key.as_ref().and_then(|k| k.specifier.as_ref());
        assert_eq!(key, Some(&data_source::Specifier::InlineString(KEY.to_string())));
        // The Debug of the registry never shows the key.
        assert!(!format!("{registry:?}").contains("PRIVATE KEY"));

        let listener = crate::translate::listener::make_listener(&registry);
        let socket = listener.filter_chains[0].transport_socket.as_ref().expect("tls");
        let Some(transport_socket::ConfigType::TypedConfig(any)) = &socket.config_type else { panic!("typed") };
        let context = DownstreamTlsContext::decode(any.value.as_slice()).expect("context");
        assert_eq!(context.require_client_certificate, Some(BoolValue { value: true }));
        let common = context.common_tls_context.expect("common");
        assert_eq!(common.tls_certificate_sds_secret_configs[0].name, LISTENER_CERT_SECRET);
        assert!(common.tls_certificates.is_empty(), "never inline in the listener");
        assert!(matches!(
            common.validation_context_type,
            Some(ValidationContextType::ValidationContextSdsSecretConfig(ref s)) if s.name == LISTENER_CLIENT_CA_SECRET
        ));
        let hcm = hcm(&registry);
        assert_eq!(hcm.forward_client_cert_details, ForwardClientCertDetails::SanitizeSet as i32);
        let details = hcm.set_current_client_cert_details.expect("details");
        assert!(details.uri && details.dns);
        // The filter gets the identities.
        assert_eq!(registry.filter.auth.mtls.len(), 1);
    }

    #[test]
    fn envoy_source_names_files_and_optional_client_certificates() {
        let registry = with_tls(
            "{ source: envoy, cert_file: /etc/gw/cert.pem, key_file: /etc/gw/key.pem, \
             client_ca_file: /etc/gw/ca.pem, require_client_certificate: false }",
            "listener_extra: 1",
        );
        // `listener_extra` is not a key: the fixture's extra is checked, not ignored.
        assert!(registry.is_err());
        let registry = with_tls(
            "{ source: envoy, cert_file: /etc/gw/cert.pem, key_file: /etc/gw/key.pem, \
             client_ca_file: /etc/gw/ca.pem, require_client_certificate: false }",
            "",
        )
        .expect("valid");
        let secrets = listener_secrets(&registry);
        let Some(secret::Type::TlsCertificate(cert)) = &secrets[0].r#type else { panic!("a certificate") };
        let key = cert.private_key.as_ref().and_then(|k| k.specifier.as_ref());
        assert_eq!(key, Some(&data_source::Specifier::Filename("/etc/gw/key.pem".to_string())));
        let socket = transport_socket(&registry).expect("tls");
        let Some(transport_socket::ConfigType::TypedConfig(any)) = &socket.config_type else { panic!("typed") };
        let context = DownstreamTlsContext::decode(any.value.as_slice()).expect("context");
        assert_eq!(context.require_client_certificate, Some(BoolValue { value: false }));
    }

    #[test]
    fn edge_keys_are_validated_with_their_paths() {
        let errors = |tls: &str, extra: &str| with_tls(tls, extra).expect_err("invalid").to_string();
        let e = errors("{ cert_file: cert.pem }", "");
        assert!(e.contains("listener.tls.key_file: key_file is required"), "{e}");
        let e = errors("{ cert_file: missing.pem, key_file: key.pem }", "");
        assert!(e.contains("listener.tls.cert_file: cannot read"), "{e}");
        let e = errors("{ cert_file: key.pem, key_file: cert.pem }", "");
        assert!(e.contains("holds no PEM certificate") && e.contains("holds no PEM private key"), "{e}");
        let e = errors("{ source: envoy, cert_file: cert.pem, key_file: /k.pem }", "");
        assert!(e.contains("\"cert.pem\" must be an absolute path"), "{e}");
        let e = errors("{ cert_file: cert.pem, key_file: key.pem, source: vault }", "");
        assert!(e.contains("invalid source \"vault\""), "{e}");
        let e = errors(
            "{ cert_file: cert.pem, key_file: key.pem }",
            "auth: { mtls: [{ dns_san: a.example.com, consumer: a }] }",
        );
        assert!(e.contains("auth.mtls: auth.mtls needs listener.tls.client_ca_file"), "{e}");
        let e = errors(
            "{ cert_file: cert.pem, key_file: key.pem, client_ca_file: ca.pem }",
            "auth: { mtls: [{ spiffe_id: 'https://x', consumer: a }] }",
        );
        assert!(e.contains("auth.mtls[0].spiffe_id") && e.contains("not a SPIFFE ID"), "{e}");
        let e = errors("{ cert_file: cert.pem, key_file: key.pem }", "stats: { port: 15090 }");
        assert!(e.contains("stats needs admin.port"), "{e}");
        let e = errors("{ cert_file: cert.pem, key_file: key.pem }", "admin: { port: 9901 }\nstats: { port: 9901 }");
        assert!(e.contains("stats port 9901 is also the admin port"), "{e}");
    }

    #[test]
    fn client_address_settings_and_admin_warnings() {
        let registry = try_registry(
            "listener: { port: 10000, use_remote_address: true, xff_num_trusted_hops: 2 }\n\
             admin: { port: 9901, address: 0.0.0.0 }\nstats: { address: 0.0.0.0, port: 15090 }\n\
             servers: [{ name: crm, url: 'http://127.0.0.1:9/mcp' }]\n",
        )
        .expect("valid");
        let hcm = hcm(&registry);
        assert_eq!(hcm.use_remote_address, Some(BoolValue { value: true }));
        assert_eq!(hcm.xff_num_trusted_hops, 2);
        // No client CA: Envoy's default (SANITIZE) drops any client-sent XFCC.
        assert_eq!(hcm.forward_client_cert_details, ForwardClientCertDetails::Sanitize as i32);
        let warnings = registry.edge.warnings();
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(warnings[0].contains("admin.address 0.0.0.0 is not loopback"));
        let e = try_registry(
            "listener: { port: 10000, xff_num_trusted_hops: 99 }\nservers: [{ name: crm, url: 'http://127.0.0.1:9/' }]\n",
        )
        .expect_err("invalid")
        .to_string();
        assert!(e.contains("xff_num_trusted_hops 99 is out of range"), "{e}");
        // Defaults: loopback admin, no warnings, Envoy's defaults on the HCM.
        let plain = try_registry("listener: { port: 10000 }\nservers: [{ name: crm, url: 'http://127.0.0.1:9/' }]\n")
            .expect("valid");
        assert!(plain.edge.warnings().is_empty());
        assert_eq!(hcm_of(&plain).use_remote_address, None);
        assert!(transport_socket(&plain).is_none() && listener_secrets(&plain).is_empty());
    }

    fn hcm_of(registry: &Registry) -> HttpConnectionManager {
        hcm(registry)
    }
}
