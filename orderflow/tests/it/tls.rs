//! The API over TLS with client certificates, against a real server (ephemeral port, real
//! Postgres, the broker for the outbox relay). A CA, the server's certificate and the clients'
//! are made for each run (rcgen); the client is rustls. With `client_certs = "required"`: TLS
//! works, plain HTTP on the TLS port gets no HTTP answer, a client without a certificate or
//! with one from another CA is refused in the handshake, a mapped certificate is its
//! principal (service creates orders, analyst may not), an unmapped one is `401`, and
//! credentials in the headers take precedence over the certificate. With `"optional"`: a
//! client without a certificate gets through the handshake and authenticates as usual. The
//! server drains and stops on shutdown.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use api::tls::{ClientCertMode, ClientMapping, TlsSettings};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::support::TestEnv;

/// A CA and the certificates it signs, as PEM files in a folder removed on drop.
struct Pki {
    dir: PathBuf,
    ca: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

impl Pki {
    fn new(name: &str) -> Pki {
        let dir = std::env::temp_dir().join(format!("orderflow-tls-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let ca = rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap())
            .unwrap();
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        Pki { dir, ca }
    }

    /// A certificate for subject CN `cn` (and DNS name `localhost`), signed by this CA:
    /// `<cn>.pem` and `<cn>.key`.
    fn issue(&self, cn: &str) {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        std::fs::write(self.dir.join(format!("{cn}.pem")), cert.pem()).unwrap();
        std::fs::write(self.dir.join(format!("{cn}.key")), key.serialize_pem()).unwrap();
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    /// A client trusting this CA for the server, presenting `identity` (a certificate issued
    /// by `by`) when given.
    fn client(&self, identity: Option<(&Pki, &str)>) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_file(self.path("ca.pem")).unwrap())
            .unwrap();
        let builder =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots);
        let config = match identity {
            None => builder.with_no_client_auth(),
            Some((by, cn)) => builder
                .with_client_auth_cert(
                    vec![CertificateDer::from_pem_file(by.path(&format!("{cn}.pem"))).unwrap()],
                    PrivateKeyDer::from_pem_file(by.path(&format!("{cn}.key"))).unwrap(),
                )
                .unwrap(),
        };
        Arc::new(config)
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[derive(Debug)]
struct Answer {
    status: u16,
    head: String,
    body: String,
}

/// One HTTP/1.1 request over TLS; `Err` when the handshake or the exchange fails, or no
/// answer comes (a refused client certificate shows in TLS 1.3 only once the client reads).
async fn call(
    addr: SocketAddr,
    client: Arc<ClientConfig>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<Answer, String> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let connector = tokio_rustls::TlsConnector::from(client);
    let name = ServerName::try_from("localhost").unwrap();
    let mut stream = connector
        .connect(name, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if method == "POST" {
        head.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    head.push_str("\r\n");
    let mut raw = Vec::new();
    let exchange = async {
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body.as_bytes()).await?;
        stream.read_to_end(&mut raw).await
    };
    tokio::time::timeout(Duration::from_secs(30), exchange)
        .await
        .map_err(|_| "no answer within 30 s".to_string())?
        .map_err(|e| format!("exchange: {e}"))?;
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no HTTP answer: {text:?}"))?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status line: {head:?}"))?;
    Ok(Answer {
        status,
        head: head.to_ascii_lowercase(),
        body: body.to_string(),
    })
}

fn order(id: &str) -> String {
    json!({
        "order_id": id,
        "customer_id": "c-1",
        "currency": "EUR",
        "lines": [{"sku": "SKU-A", "quantity": 1, "unit_price_minor": 1250}],
        "shipping_address": {"name": "Ada", "line1": "1 Main St", "city": "Berlin", "postal_code": "10115", "country": "DE"}
    })
    .to_string()
}

struct Server {
    addr: SocketAddr,
    api: api::Api,
    shutdown: CancellationToken,
    /// An API key of role `service`.
    service_key: String,
    _pepper_dir: PepperDir,
}

struct PepperDir(PathBuf);

impl Drop for PepperDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The API over TLS with `mode`, `billing` mapped to `service` and `reports` to `analyst`,
/// and API keys (so that header credentials can be tried against certificates).
async fn serve(env: &TestEnv, pki: &Pki, mode: ClientCertMode) -> Server {
    let dir = std::env::temp_dir().join(format!("orderflow-tls-pepper-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let pepper = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    std::fs::write(dir.join("pepper"), &pepper).unwrap();
    let mut settings = env.settings.clone();
    settings.api.listen = "127.0.0.1:0".into();
    settings.api.auth.api_key_pepper_file = Some(dir.join("pepper"));
    settings.api.tls = Some(TlsSettings {
        cert_file: pki.path("localhost.pem"),
        key_file: pki.path("localhost.key"),
        client_ca_file: Some(pki.path("ca.pem")),
        client_certs: mode,
        clients: vec![
            ClientMapping {
                subject: "billing".into(),
                role: "service".into(),
            },
            ClientMapping {
                subject: "reports".into(),
                role: "analyst".into(),
            },
        ],
    });
    let shutdown = CancellationToken::new();
    let api = api::start(
        &settings.api,
        &settings.kafka,
        env.pool.clone(),
        shutdown.clone(),
    )
    .await
    .expect("the API starts over TLS");
    let keys = access::api_keys::ApiKeys::new(env.pool.clone(), access::Secret::new(pepper));
    let (service_key, _) = keys
        .create("tls-test", access::Role::Service, None)
        .await
        .expect("an API key");
    Server {
        addr: api.address,
        api,
        shutdown,
        service_key,
        _pepper_dir: PepperDir(dir),
    }
}

#[tokio::test]
async fn required_client_certificates_authenticate_mapped_services_and_refuse_the_rest() {
    let env = TestEnv::new().await;
    let pki = Pki::new("orderflow test CA");
    for cn in ["localhost", "billing", "reports", "stranger"] {
        pki.issue(cn);
    }
    let foreign = Pki::new("another CA");
    foreign.issue("billing");
    let server = serve(&env, &pki, ClientCertMode::Required).await;
    let addr = server.addr;
    let billing = pki.client(Some((&pki, "billing")));

    // Plain HTTP to the TLS port gets no HTTP answer.
    let mut plain = tokio::net::TcpStream::connect(addr).await.unwrap();
    plain
        .write_all(b"GET /v1/orders HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), plain.read_to_end(&mut raw)).await;
    assert!(
        !raw.starts_with(b"HTTP/"),
        "plain HTTP was answered: {:?}",
        String::from_utf8_lossy(&raw)
    );

    // No certificate, or one from another CA: refused in the handshake, no HTTP answer.
    for (what, client) in [
        ("no certificate", pki.client(None)),
        (
            "another CA's certificate",
            pki.client(Some((&foreign, "billing"))),
        ),
    ] {
        let answer = call(addr, client, "GET", "/v1/orders", &[], "").await;
        assert!(answer.is_err(), "{what}: {answer:?}");
    }

    // A mapped certificate is its principal: `billing` (service) lists and creates orders.
    let listed = call(addr, billing.clone(), "GET", "/v1/orders", &[], "")
        .await
        .expect("TLS with a client certificate");
    assert_eq!(listed.status, 200, "{listed:?}");
    let id = format!("tls-{}", uuid::Uuid::new_v4().simple());
    let created = call(
        addr,
        billing.clone(),
        "POST",
        "/v1/orders",
        &[],
        &order(&id),
    )
    .await
    .unwrap();
    assert_eq!(created.status, 202, "{created:?}");
    assert!(
        created.head.contains(&format!("location: /v1/orders/{id}")),
        "{created:?}"
    );
    let rows = env
        .count(&format!(
            "SELECT count(*) FROM api.idempotency WHERE principal = 'cert:billing' AND order_id = '{id}'"
        ))
        .await;
    assert_eq!(
        rows, 1,
        "the order is recorded under the certificate's principal"
    );

    // `reports` is mapped to analyst: it reads, it may not create.
    let reports = pki.client(Some((&pki, "reports")));
    let read = call(addr, reports.clone(), "GET", "/v1/orders", &[], "")
        .await
        .unwrap();
    assert_eq!(read.status, 200, "{read:?}");
    let refused = call(
        addr,
        reports.clone(),
        "POST",
        "/v1/orders",
        &[],
        &order("tls-x"),
    )
    .await
    .unwrap();
    assert_eq!(refused.status, 403, "{refused:?}");

    // A certificate of our CA that is not mapped: 401 problem+json, with the Bearer challenge.
    let stranger = pki.client(Some((&pki, "stranger")));
    let unmapped = call(addr, stranger.clone(), "GET", "/v1/orders", &[], "")
        .await
        .unwrap();
    assert_eq!(unmapped.status, 401, "{unmapped:?}");
    assert!(
        unmapped.head.contains("www-authenticate: bearer"),
        "{unmapped:?}"
    );
    assert!(
        unmapped.head.contains("application/problem+json"),
        "{unmapped:?}"
    );
    assert!(
        !unmapped.body.contains("stranger"),
        "the subject leaked: {unmapped:?}"
    );

    // Credentials in the headers take precedence over the certificate: a service API key on
    // the unmapped connection, and on the analyst's, creates; a bad token on the service's
    // connection is 401, not the certificate's principal.
    let bearer = format!("Bearer {}", server.service_key);
    for (who, client) in [("stranger", stranger), ("reports", reports)] {
        let id = format!("tls-{}", uuid::Uuid::new_v4().simple());
        let answer = call(
            addr,
            client,
            "POST",
            "/v1/orders",
            &[("Authorization", &bearer)],
            &order(&id),
        )
        .await
        .unwrap();
        assert_eq!(answer.status, 202, "{who} with a service key: {answer:?}");
    }
    let bad = call(
        addr,
        billing,
        "GET",
        "/v1/orders",
        &[("Authorization", "Bearer not-a-token")],
        "",
    )
    .await
    .unwrap();
    assert_eq!(bad.status, 401, "{bad:?}");

    // Shutdown: the server stops accepting and its task ends.
    server.shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(30), server.api.wait())
        .await
        .expect("the TLS server drains and stops")
        .expect("the TLS server stopped cleanly");
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "still accepting after shutdown"
    );
    env.finish().await;
}

#[tokio::test]
async fn optional_client_certificates_let_clients_without_one_authenticate_otherwise() {
    let env = TestEnv::new().await;
    let pki = Pki::new("orderflow test CA");
    for cn in ["localhost", "billing"] {
        pki.issue(cn);
    }
    let foreign = Pki::new("another CA");
    foreign.issue("billing");
    let server = serve(&env, &pki, ClientCertMode::Optional).await;
    let addr = server.addr;

    let anonymous = call(addr, pki.client(None), "GET", "/v1/orders", &[], "")
        .await
        .expect("TLS without a client certificate");
    assert_eq!(anonymous.status, 401, "{anonymous:?}");
    let bearer = format!("Bearer {}", server.service_key);
    let keyed = call(
        addr,
        pki.client(None),
        "GET",
        "/v1/orders",
        &[("Authorization", &bearer)],
        "",
    )
    .await
    .unwrap();
    assert_eq!(keyed.status, 200, "{keyed:?}");
    let billing = call(
        addr,
        pki.client(Some((&pki, "billing"))),
        "GET",
        "/v1/orders",
        &[],
        "",
    )
    .await
    .unwrap();
    assert_eq!(billing.status, 200, "{billing:?}");
    // A certificate that is presented must still verify.
    let foreign_answer = call(
        addr,
        pki.client(Some((&foreign, "billing"))),
        "GET",
        "/v1/orders",
        &[],
        "",
    )
    .await;
    assert!(foreign_answer.is_err(), "{foreign_answer:?}");
    server.shutdown.cancel();
    env.finish().await;
}
