//! Optional TLS termination of the HTTP API (`[api.tls]`) and client-certificate
//! authentication of service principals.
//!
//! Without `[api.tls]` the API is plain HTTP (behind a proxy that terminates TLS). With it, the
//! listener speaks only TLS (rustls, `ring` provider, TLS 1.2 and 1.3, ALPN `http/1.1`): the
//! certificate chain and private key are read once at start (no reload: replacing them takes a
//! restart). `client_certs = "optional" | "required"` asks clients for a certificate and
//! verifies it against `client_ca_file`; `required` refuses the handshake of a client without
//! one. A verified certificate is identified by its subject Common Name and looked up in
//! `[[api.tls.clients]]`: a listed subject is a principal of the configured role
//! ([`ClientCertificate::Mapped`]), any other is refused `401` ([`ClientCertificate::Unmapped`]).
//! Credentials in the request's headers (a bearer token, an API key) take precedence over the
//! connection's certificate: the guard ([`crate::security::guard`]) uses the certificate only
//! for requests that carry none.
//!
//! This module never logs or echoes the private key, nor its file's content: only file names.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::auth::{Principal, Role};

/// Longest a client may take to complete the TLS handshake before its connection is dropped
/// (a client that opens connections and never finishes them must not hold them forever).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The prefix of a certificate principal's id (`cert:<subject CN>`), keeping certificate
/// identities apart from token subjects and API key ids (idempotency keys are per id).
pub const PRINCIPAL_PREFIX: &str = "cert:";

/// Whether clients are asked for a certificate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientCertMode {
    /// No client certificate is asked for (TLS for confidentiality only).
    #[default]
    Off,
    /// A client may present a certificate; if it does, it must verify against the client CA.
    Optional,
    /// The handshake of a client without a certificate verified by the client CA fails.
    Required,
}

/// One entry of `[[api.tls.clients]]`: the subject CN of a client certificate and its role.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ClientMapping {
    /// The certificate's subject Common Name, exactly (case-sensitive).
    pub subject: String,
    /// `service` (the default), `operator` or `analyst`; not `customer` (a customer principal
    /// acts for one customer, which a certificate does not name).
    #[serde(default = "default_client_role")]
    pub role: String,
}

fn default_client_role() -> String {
    Role::Service.name().to_string()
}

/// The `[api.tls]` section (`ORDERFLOW_API__TLS__*`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    /// PEM file with the server's certificate chain, end-entity certificate first.
    pub cert_file: PathBuf,
    /// PEM file with the server's private key (PKCS#8, PKCS#1 or SEC1). A secret: never
    /// logged; keep it readable by the service's user only.
    pub key_file: PathBuf,
    /// PEM file with the CA certificate(s) that client certificates must chain to. Required
    /// when `client_certs` is not `off`.
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
    /// `off` (default), `optional` or `required`.
    #[serde(default)]
    pub client_certs: ClientCertMode,
    /// Which verified client certificates are which principals.
    #[serde(default)]
    pub clients: Vec<ClientMapping>,
}

/// Why the TLS listener could not be set up: a configuration mistake or an unusable file,
/// named with what to do. Fix the setting or the file and start again.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(
        "api.tls.client_certs = \"{0}\" needs api.tls.client_ca_file: name the PEM file of the CA \
         that issues the client certificates, or set client_certs = \"off\""
    )]
    NoClientCa(&'static str),
    #[error(
        "api.tls.client_ca_file or [[api.tls.clients]] is set but api.tls.client_certs = \"off\": \
         set client_certs = \"optional\" or \"required\" to authenticate clients by certificate, \
         or remove them"
    )]
    ClientsWithoutClientCerts,
    #[error("api.tls.clients[{index}]: {reason}")]
    Client { index: usize, reason: String },
    #[error(
        "api.tls.{setting} = {path}: cannot read it ({error}); check the path and its permissions"
    )]
    Unreadable {
        setting: &'static str,
        path: String,
        error: std::io::Error,
    },
    #[error("api.tls.{setting} = {path}: {problem}")]
    Invalid {
        setting: &'static str,
        path: String,
        problem: String,
    },
    #[error(
        "api.tls.key_file = {key} is not the private key of the certificate in api.tls.cert_file \
         = {cert}: point both at the same pair (the end-entity certificate must come first in \
         cert_file)"
    )]
    Mismatch { key: String, cert: String },
}

impl TlsSettings {
    /// The settings are consistent (no file is read): a client CA exactly when client
    /// certificates are asked for, and a clean client map.
    pub fn check(&self) -> Result<(), TlsError> {
        match (self.client_certs, &self.client_ca_file) {
            (ClientCertMode::Off, None) if self.clients.is_empty() => {}
            (ClientCertMode::Off, _) => return Err(TlsError::ClientsWithoutClientCerts),
            (ClientCertMode::Optional, None) => return Err(TlsError::NoClientCa("optional")),
            (ClientCertMode::Required, None) => return Err(TlsError::NoClientCa("required")),
            _ => {}
        }
        self.client_map().map(|_| ())
    }

    /// Whether verified client certificates can authenticate callers.
    pub fn authenticates_clients(&self) -> bool {
        self.client_certs != ClientCertMode::Off && !self.clients.is_empty()
    }

    /// Subject CN → role, with every entry checked.
    pub fn client_map(&self) -> Result<ClientMap, TlsError> {
        let mut roles = HashMap::new();
        for (index, client) in self.clients.iter().enumerate() {
            let bad = |reason: String| TlsError::Client { index, reason };
            let subject = client.subject.trim();
            if subject.is_empty() || subject != client.subject {
                return Err(bad(format!(
                    "subject = {:?}: give the certificate's subject Common Name exactly, without \
                     surrounding spaces",
                    client.subject
                )));
            }
            let role =
                match Role::parse(client.role.trim()) {
                    Some(Role::Customer) => return Err(bad(
                        "role = \"customer\" is not for certificates (a customer principal acts \
                         for one customer): use service, operator or analyst"
                            .into(),
                    )),
                    Some(role) => role,
                    None => {
                        return Err(bad(format!(
                            "role = {:?} is not a role: use service, operator or analyst",
                            client.role
                        )))
                    }
                };
            if roles.insert(subject.to_string(), role).is_some() {
                return Err(bad(format!(
                    "subject {subject:?} is listed twice: keep one entry per subject"
                )));
            }
        }
        Ok(ClientMap { roles })
    }

    /// Read the files and build the TLS server: everything that can be wrong with them is
    /// found here, at start, and named.
    pub fn load(&self) -> Result<ServerTls, TlsError> {
        self.check()?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let chain = read_certificates("cert_file", &self.cert_file)?;
        let key = read_private_key(&self.key_file)?;
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("the ring provider supports the default protocol versions");
        let builder = match (&self.client_ca_file, self.client_certs) {
            (Some(ca_file), ClientCertMode::Optional | ClientCertMode::Required) => {
                let mut roots = RootCertStore::empty();
                for ca in read_certificates("client_ca_file", ca_file)? {
                    roots.add(ca).map_err(|e| TlsError::Invalid {
                        setting: "client_ca_file",
                        path: ca_file.display().to_string(),
                        problem: format!(
                            "a certificate in it is not a usable CA certificate ({e})"
                        ),
                    })?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
                let verifier = if self.client_certs == ClientCertMode::Optional {
                    verifier.allow_unauthenticated()
                } else {
                    verifier
                };
                let verifier = verifier.build().map_err(|e| TlsError::Invalid {
                    setting: "client_ca_file",
                    path: ca_file.display().to_string(),
                    problem: format!("cannot verify clients with it ({e})"),
                })?;
                builder.with_client_cert_verifier(verifier)
            }
            _ => builder.with_no_client_auth(),
        };
        let mut config = builder.with_single_cert(chain, key).map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => TlsError::Mismatch {
                key: self.key_file.display().to_string(),
                cert: self.cert_file.display().to_string(),
            },
            // The key parsed as PEM but the provider cannot use it (an unsupported algorithm
            // or curve): rustls' message names the kind, never the key.
            other => TlsError::Invalid {
                setting: "key_file",
                path: self.key_file.display().to_string(),
                problem: format!(
                    "the private key cannot be used ({other}); use an RSA, ECDSA P-256/P-384 \
                     or Ed25519 key"
                ),
            },
        })?;
        // The API speaks HTTP/1.1 only (axum is built with `http1`).
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(ServerTls {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            clients: Arc::new(self.client_map()?),
            mode: self.client_certs,
        })
    }
}

fn read_certificates(
    setting: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let shown = path.display().to_string();
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| match e {
            rustls::pki_types::pem::Error::Io(error) => TlsError::Unreadable {
                setting,
                path: shown.clone(),
                error,
            },
            other => TlsError::Invalid {
                setting,
                path: shown.clone(),
                problem: format!("not valid PEM ({other}); give PEM CERTIFICATE blocks"),
            },
        })?;
    if certs.is_empty() {
        return Err(TlsError::Invalid {
            setting,
            path: shown,
            problem: "contains no PEM certificate (-----BEGIN CERTIFICATE-----); give the PEM \
                      certificate file, not the key or a DER file"
                .into(),
        });
    }
    Ok(certs)
}

fn read_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let shown = path.display().to_string();
    PrivateKeyDer::from_pem_file(path).map_err(|e| match e {
        rustls::pki_types::pem::Error::Io(error) => TlsError::Unreadable {
            setting: "key_file",
            path: shown,
            error,
        },
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::Invalid {
            setting: "key_file",
            path: shown,
            problem: "contains no PEM private key (-----BEGIN PRIVATE KEY-----, RSA PRIVATE KEY \
                      or EC PRIVATE KEY); give the key file, not the certificate"
                .into(),
        },
        // The parser's own message may quote a line of the file: a key's file is never echoed.
        _ => TlsError::Invalid {
            setting: "key_file",
            path: shown,
            problem: "is not a valid PEM private key; check the file (its content is not shown)"
                .into(),
        },
    })
}

/// Subject Common Names of client certificates and the roles they are given.
#[derive(Debug, Clone, Default)]
pub struct ClientMap {
    roles: HashMap<String, Role>,
}

/// What a connection's verified client certificate says about its caller; put into each of
/// its requests' extensions (absent when the client presented no certificate).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientCertificate {
    /// Listed in `[[api.tls.clients]]`: the caller is this principal.
    Mapped(Principal),
    /// Verified by the client CA but not listed (or without exactly one subject CN): refused
    /// `401` unless the request carries credentials of its own.
    Unmapped { subject: String },
}

impl ClientMap {
    /// The principal of a verified end-entity certificate.
    pub fn identify(&self, certificate: &CertificateDer<'_>) -> ClientCertificate {
        let Some(subject) = subject_common_name(certificate) else {
            return ClientCertificate::Unmapped {
                subject: String::new(),
            };
        };
        match self.roles.get(&subject) {
            Some(&role) => ClientCertificate::Mapped(Principal {
                id: format!("{PRINCIPAL_PREFIX}{subject}"),
                role,
                customer_id: None,
            }),
            None => ClientCertificate::Unmapped { subject },
        }
    }
}

/// The subject's Common Name of a DER certificate: `None` without exactly one, or when it is
/// not a UTF8String or PrintableString (two CNs would make the identity ambiguous).
pub fn subject_common_name(certificate: &CertificateDer<'_>) -> Option<String> {
    use x509_cert::der::asn1::{ObjectIdentifier, PrintableStringRef};
    use x509_cert::der::{Decode, Tag, Tagged};
    const COMMON_NAME: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.3");
    let parsed = x509_cert::Certificate::from_der(certificate.as_ref()).ok()?;
    let mut names = parsed
        .tbs_certificate
        .subject
        .0
        .iter()
        .flat_map(|rdn| rdn.0.iter())
        .filter(|atv| atv.oid == COMMON_NAME);
    let only = names.next()?;
    if names.next().is_some() {
        return None;
    }
    match only.value.tag() {
        Tag::Utf8String => only.value.decode_as::<String>().ok(),
        Tag::PrintableString => only
            .value
            .decode_as::<PrintableStringRef<'_>>()
            .ok()
            .map(|s| s.as_str().to_string()),
        _ => None,
    }
}

/// The name of the client-certificate scheme in the OpenAPI document.
pub const OPENAPI_SCHEME: &str = "mutual_tls";

/// The OpenAPI 3.1 `mutualTLS` security scheme: how a service authenticates by certificate
/// (listed in the document beside the bearer token and the API key, as an alternative).
pub fn openapi_scheme() -> utoipa::openapi::security::SecurityScheme {
    utoipa::openapi::security::SecurityScheme::MutualTls {
        description: Some(
            "Only when the server runs with [api.tls] and client_certs = \"optional\" or \
             \"required\": a client certificate issued by api.tls.client_ca_file whose subject \
             Common Name is listed in [[api.tls.clients]] (the principal cert:<CN> with the \
             listed role). A request carrying Authorization or X-Api-Key is authenticated by \
             that instead; an unlisted certificate is 401."
                .to_string(),
        ),
        deprecated: None,
        extensions: None,
    }
}

/// A loaded TLS configuration: the acceptor and the client map.
#[derive(Clone)]
pub struct ServerTls {
    acceptor: TlsAcceptor,
    clients: Arc<ClientMap>,
    mode: ClientCertMode,
}

impl ServerTls {
    pub fn mode(&self) -> ClientCertMode {
        self.mode
    }
}

/// Serve `app` over TLS on `listener` until `shutdown`, then stop accepting and let every
/// open connection finish its in-flight request (the same draining as `axum::serve`).
///
/// Why not `axum::serve` or `axum-server`: axum's `serve` takes only a plain listener, and
/// neither hands a connection's peer certificate to its requests without a wrapper of about
/// this size. Here each connection is accepted, its handshake bounded by
/// [`HANDSHAKE_TIMEOUT`], its certificate identified once, and hyper's HTTP/1 connection
/// serves the router with the client address and the [`ClientCertificate`] in every request's
/// extensions.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    tls: ServerTls,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    // A timer turns on hyper's header read timeout (30 s): a client that never finishes its
    // request head does not hold the connection.
    http.timer(TokioTimer::new());
    loop {
        let (tcp, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: wait a little instead of spinning.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let acceptor = tls.acceptor.clone();
        let clients = tls.clients.clone();
        let app = app.clone();
        let http = http.clone();
        // Taken before the handshake, so that shutdown also waits for handshakes under way.
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    tracing::debug!(client = %peer, error = %e, "TLS handshake refused");
                    return;
                }
                Err(_) => {
                    tracing::debug!(client = %peer, "TLS handshake timed out");
                    return;
                }
            };
            // rustls has verified the chain against the client CA: the first certificate is
            // the client's own.
            let certificate = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .map(|c| clients.identify(c));
            let service = hyper::service::service_fn(move |mut request| {
                request.extensions_mut().insert(ConnectInfo(peer));
                if let Some(certificate) = &certificate {
                    request.extensions_mut().insert(certificate.clone());
                }
                app.clone().oneshot(request)
            });
            let connection = http.serve_connection(TokioIo::new(stream), service);
            if let Err(e) = watcher.watch(connection).await {
                tracing::debug!(client = %peer, error = %e, "TLS connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(mode: ClientCertMode, ca: bool, clients: &[(&str, &str)]) -> TlsSettings {
        TlsSettings {
            cert_file: "server.pem".into(),
            key_file: "server.key".into(),
            client_ca_file: ca.then(|| "ca.pem".into()),
            client_certs: mode,
            clients: clients
                .iter()
                .map(|(subject, role)| ClientMapping {
                    subject: subject.to_string(),
                    role: role.to_string(),
                })
                .collect(),
        }
    }

    #[test]
    fn settings_are_consistent_or_named() {
        use ClientCertMode::*;
        let svc = [("billing", "service")];
        let cases: &[(TlsSettings, Option<&str>)] = &[
            (settings(Off, false, &[]), None),
            (settings(Optional, true, &[]), None),
            (settings(Required, true, &svc), None),
            (
                settings(Required, true, &[("ops", "operator"), ("bi", "analyst")]),
                None,
            ),
            (
                settings(Optional, false, &svc),
                Some("needs api.tls.client_ca_file"),
            ),
            (
                settings(Required, false, &[]),
                Some("needs api.tls.client_ca_file"),
            ),
            (settings(Off, true, &[]), Some("client_certs = \"off\"")),
            (settings(Off, false, &svc), Some("client_certs = \"off\"")),
            (
                settings(Required, true, &[("a", "customer")]),
                Some("clients[0]: role = \"customer\""),
            ),
            (
                settings(Required, true, &[("a", "root")]),
                Some("clients[0]: role = \"root\" is not a role"),
            ),
            (
                settings(Required, true, &[("", "service")]),
                Some("clients[0]: subject"),
            ),
            (
                settings(Required, true, &[(" a", "service")]),
                Some("without surrounding spaces"),
            ),
            (
                settings(Required, true, &[("a", "service"), ("a", "analyst")]),
                Some("clients[1]: subject \"a\" is listed twice"),
            ),
        ];
        for (settings, want) in cases {
            match (settings.check(), want) {
                (Ok(()), None) => {}
                (Err(e), Some(want)) => {
                    assert!(e.to_string().contains(want), "{e} lacks {want:?}")
                }
                (got, want) => panic!("{settings:?}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn the_openapi_document_offers_client_certificates() {
        let spec = serde_json::to_value(crate::openapi()).expect("the spec serializes");
        assert_eq!(
            spec["components"]["securitySchemes"][OPENAPI_SCHEME]["type"],
            "mutualTLS"
        );
        let requirements = spec["security"].as_array().expect("global security");
        assert!(
            requirements.iter().any(|r| r.get(OPENAPI_SCHEME).is_some()),
            "{requirements:?}"
        );
    }

    #[test]
    fn the_role_defaults_to_service_and_unknown_keys_are_refused() {
        let parsed: TlsSettings = toml_like(
            r#"{"cert_file": "c", "key_file": "k", "client_ca_file": "ca",
                "client_certs": "required", "clients": [{"subject": "billing"}]}"#,
        )
        .expect("a minimal mapping parses");
        assert_eq!(parsed.clients[0].role, "service");
        assert!(parsed.authenticates_clients());
        assert!(
            toml_like::<TlsSettings>(r#"{"cert_file": "c", "key_file": "k", "ca": "x"}"#).is_err()
        );
        assert!(toml_like::<TlsSettings>(
            r#"{"cert_file": "c", "key_file": "k", "client_certs": "sometimes"}"#
        )
        .is_err());
    }

    fn toml_like<T: serde::de::DeserializeOwned>(json: &str) -> Result<T, serde_json::Error> {
        serde_json::from_str(json)
    }

    /// Certificates made for the test: a CA, a server certificate and key, client
    /// certificates with the given subject CNs, all as PEM files in a fresh folder.
    struct Pki {
        dir: PathBuf,
        ca: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
    }

    impl Pki {
        fn new() -> Pki {
            let dir = std::env::temp_dir().join(format!("api-tls-{}", uuid::Uuid::new_v4()));
            std::fs::create_dir_all(&dir).unwrap();
            let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, "test CA");
            let ca =
                rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap())
                    .unwrap();
            std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
            let pki = Pki { dir, ca };
            pki.leaf("server", &["localhost".into()], &["localhost"]);
            pki
        }

        /// A certificate with these CNs and DNS names, signed by the CA: `name.pem`,
        /// `name.key`; its DER.
        fn leaf(
            &self,
            name: &str,
            cns: &[rcgen::DnValue],
            dns: &[&str],
        ) -> CertificateDer<'static> {
            let mut params = rcgen::CertificateParams::new(
                dns.iter().map(|d| d.to_string()).collect::<Vec<_>>(),
            )
            .unwrap();
            // rcgen's default subject is a CN of its own.
            params.distinguished_name = rcgen::DistinguishedName::new();
            for (i, cn) in cns.iter().enumerate() {
                // rcgen keeps one value per type: a second CN goes under the CN's OID spelled
                // as a custom type.
                let ty = if i == 0 {
                    rcgen::DnType::CommonName
                } else {
                    rcgen::DnType::CustomDnType(vec![2, 5, 4, 3])
                };
                params.distinguished_name.push(ty, cn.clone());
            }
            let key = rcgen::KeyPair::generate().unwrap();
            let cert = params.signed_by(&key, &self.ca).unwrap();
            std::fs::write(self.dir.join(format!("{name}.pem")), cert.pem()).unwrap();
            std::fs::write(self.dir.join(format!("{name}.key")), key.serialize_pem()).unwrap();
            cert.der().clone()
        }

        fn settings(&self, cert: &str, key: &str, ca: Option<&str>) -> TlsSettings {
            TlsSettings {
                cert_file: self.dir.join(cert),
                key_file: self.dir.join(key),
                client_ca_file: ca.map(|c| self.dir.join(c)),
                client_certs: if ca.is_some() {
                    ClientCertMode::Required
                } else {
                    ClientCertMode::Off
                },
                clients: vec![ClientMapping {
                    subject: "billing".into(),
                    role: "analyst".into(),
                }]
                .into_iter()
                .filter(|_| ca.is_some())
                .collect(),
            }
        }
    }

    impl Drop for Pki {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    #[test]
    fn unusable_files_are_named_at_start_and_a_key_is_never_shown() {
        let pki = Pki::new();
        pki.leaf("other", &["other".into()], &["localhost"]);
        std::fs::write(
            pki.dir.join("garbage.key"),
            "-----BEGIN PRIVATE KEY-----\nc2VjcmV0IQ==!!\n",
        )
        .unwrap();
        pki.settings("server.pem", "server.key", None)
            .load()
            .expect("a matching pair loads");
        pki.settings("server.pem", "server.key", Some("ca.pem"))
            .load()
            .expect("with a client CA too");
        let cases = [
            (
                pki.settings("missing.pem", "server.key", None),
                "api.tls.cert_file",
                "cannot read it",
            ),
            (
                pki.settings("server.pem", "missing.key", None),
                "api.tls.key_file",
                "cannot read it",
            ),
            (
                pki.settings("server.pem", "server.key", Some("missing.pem")),
                "api.tls.client_ca_file",
                "cannot read it",
            ),
            (
                pki.settings("server.key", "server.key", None),
                "api.tls.cert_file",
                "contains no PEM certificate",
            ),
            (
                pki.settings("server.pem", "server.pem", None),
                "api.tls.key_file",
                "contains no PEM private key",
            ),
            (
                pki.settings("server.pem", "garbage.key", None),
                "api.tls.key_file",
                "its content is not shown",
            ),
            (
                pki.settings("server.pem", "other.key", None),
                "is not the private key of the certificate",
                "server.pem",
            ),
            (
                pki.settings("server.pem", "server.key", Some("server.key")),
                "api.tls.client_ca_file",
                "contains no PEM certificate",
            ),
        ];
        for (settings, what, why) in cases {
            let error = match settings.load() {
                Ok(_) => panic!("{settings:?} loaded"),
                Err(e) => e.to_string(),
            };
            assert!(error.contains(what) && error.contains(why), "{error}");
            assert!(
                !error.contains("c2VjcmV0"),
                "the key file's content leaked: {error}"
            );
            assert!(!error.contains("PRIVATE KEY-----\n"), "{error}");
        }
    }

    #[test]
    fn a_client_certificate_is_its_subject_cn_s_principal() {
        let pki = Pki::new();
        let map = pki
            .settings("server.pem", "server.key", Some("ca.pem"))
            .client_map()
            .unwrap();
        let listed = pki.leaf("billing", &["billing".into()], &[]);
        assert_eq!(
            map.identify(&listed),
            ClientCertificate::Mapped(Principal {
                id: "cert:billing".into(),
                role: Role::Analyst,
                customer_id: None,
            })
        );
        let stranger = pki.leaf("stranger", &["stranger".into()], &["billing"]);
        assert_eq!(
            map.identify(&stranger),
            ClientCertificate::Unmapped {
                subject: "stranger".into()
            },
            "a SAN naming a mapped subject does not count: the subject CN does"
        );
        let printable = rcgen::DnValue::PrintableString("billing".try_into().unwrap());
        let printable = pki.leaf("printable", &[printable], &[]);
        assert_eq!(subject_common_name(&printable).as_deref(), Some("billing"));
        let two = ["billing".into(), "other".into()];
        for (name, cns) in [("none", &[][..]), ("two", &two[..])] {
            let cert = pki.leaf(name, cns, &["billing"]);
            assert_eq!(
                map.identify(&cert),
                ClientCertificate::Unmapped {
                    subject: String::new()
                },
                "{name} CN"
            );
        }
        assert_eq!(
            subject_common_name(&CertificateDer::from(vec![1, 2, 3])),
            None
        );
    }
}
