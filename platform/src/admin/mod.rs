//! The admin listener of a long-running process (`admin.listen`, default `127.0.0.1:9464`,
//! `off` to disable; separate from any public API port): `/metrics` (Prometheus text from
//! [`crate::metrics`]), `/healthz` (the runtime answers) and `/readyz` (the verdict of
//! [`readiness`], recomputed every second by a background task).
//!
//! [`start`] installs the metrics recorder, binds, and spawns the server and the probe task;
//! the returned [`Admin`] stops both when dropped. One-shot commands start none. Nothing here
//! knows about orders; components report only whether they hold their partitions.

pub mod process;
pub mod readiness;

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use readiness::{Probes, Readiness, Verdict};

/// The `[admin]` section.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AdminSettings {
    /// `HOST:PORT` to serve `/metrics`, `/healthz` and `/readyz` on (an IP address; port 0
    /// picks a free port, logged at start), or `off`.
    pub listen: String,
    /// How often the status collector reads the facts behind the database and broker gauges
    /// (lag, outbox, parked, dead letters, saga, freshness, archive lag); `0` never. It runs
    /// only while the listener is on: nobody could scrape what it sets otherwise.
    #[serde(default = "default_collect_interval_ms")]
    pub collect_interval_ms: u64,
}

fn default_collect_interval_ms() -> u64 {
    5_000
}

impl Default for AdminSettings {
    fn default() -> Self {
        AdminSettings {
            listen: DEFAULT_LISTEN.into(),
            collect_interval_ms: default_collect_interval_ms(),
        }
    }
}

/// Where the admin listener listens unless told otherwise: loopback only, on 9464 (the port
/// OpenTelemetry's Prometheus exporter uses by default, free of Kafka's and Postgres's).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9464";

impl AdminSettings {
    /// The address to listen on, or `None` when the listener is `off`.
    pub fn address(&self) -> Result<Option<SocketAddr>, AdminError> {
        let value = self.listen.trim();
        if value.eq_ignore_ascii_case("off") {
            return Ok(None);
        }
        value
            .parse::<SocketAddr>()
            .map(Some)
            .map_err(|_| AdminError::Invalid(self.listen.clone()))
    }
}

/// Why the admin listener did not start. The process stops: it was asked to be observable.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// `admin.listen` is not an address (a configuration mistake: fix the setting).
    #[error(
        "admin.listen = {0:?} is neither an IP address with a port nor `off`: give HOST:PORT \
         (for example 127.0.0.1:9464, 0.0.0.0:9464 for every interface, or port 0 for a free \
         one) or `off`, in the [admin] section or ORDERFLOW_ADMIN__LISTEN"
    )]
    Invalid(String),
    /// Another process holds the port (typically a second orderflow process on the host).
    #[error(
        "admin.listen {0}: the address is already in use (another orderflow process on this \
         host?). Give each process its own port with admin.listen or ORDERFLOW_ADMIN__LISTEN \
         (port 0 picks a free one), or turn the listener off with `off`"
    )]
    InUse(SocketAddr),
    /// Any other failure to bind (an address of another host, a privileged port).
    #[error(
        "admin.listen {addr}: cannot listen there ({source}). Set admin.listen or \
         ORDERFLOW_ADMIN__LISTEN to an address of this host, or `off`"
    )]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// The error of binding `addr` failing with `error`.
pub fn bind_error(addr: SocketAddr, error: std::io::Error) -> AdminError {
    if error.kind() == std::io::ErrorKind::AddrInUse {
        AdminError::InUse(addr)
    } else {
        AdminError::Bind {
            addr,
            source: error,
        }
    }
}

/// A running admin listener. Dropping it stops the server and the probe task.
#[derive(Debug)]
pub struct Admin {
    addr: SocketAddr,
    tasks: Vec<JoinHandle<()>>,
}

impl Admin {
    /// The address it listens on (the real port when `admin.listen` asked for port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Admin {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// How often readiness is probed and the process and pool gauges sampled.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// Start the admin listener as `settings` say (`None` when `off`): install the metrics
/// recorder, bind, serve, and probe readiness every [`PROBE_INTERVAL`] with `probes` until the
/// returned [`Admin`] is dropped. `draining` is the process's shutdown signal: once it is
/// cancelled `/readyz` answers 503 (the process is finishing its batches). Must run inside a
/// tokio runtime.
pub async fn start(
    settings: &AdminSettings,
    readiness: Readiness,
    probes: Probes,
    draining: CancellationToken,
) -> Result<Option<Admin>, AdminError> {
    let Some(wanted) = settings.address()? else {
        tracing::info!("admin listener off (admin.listen = off): no /metrics, /healthz, /readyz");
        return Ok(None);
    };
    crate::metrics::recorder();
    let listener = tokio::net::TcpListener::bind(wanted)
        .await
        .map_err(|e| bind_error(wanted, e))?;
    let addr = listener.local_addr().map_err(|e| bind_error(wanted, e))?;
    let app = router(readiness.clone());
    let server = tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, app).await {
            tracing::error!(%error, "admin listener stopped");
        }
    });
    let probe = tokio::spawn(readiness::run(readiness, probes, draining));
    tracing::info!(listen = %addr, "admin listener on http://{addr} (/metrics, /healthz, /readyz)");
    Ok(Some(Admin {
        addr,
        tasks: vec![server, probe],
    }))
}

/// The routes, over the shared readiness verdict.
fn router(readiness: Readiness) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(readiness)
}

/// The content type of the Prometheus text exposition format.
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

async fn metrics() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, PROMETHEUS_TEXT)],
        crate::metrics::render(),
    )
}

/// Answering at all is the point: the runtime schedules this handler.
async fn healthz() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        "ok\n",
    )
}

async fn readyz(State(readiness): State<Readiness>) -> impl IntoResponse {
    let verdict = readiness.current();
    let status = if verdict.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        verdict.to_json(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(listen: &str) -> AdminSettings {
        AdminSettings {
            listen: listen.into(),
            ..AdminSettings::default()
        }
    }

    #[test]
    fn listen_is_an_address_or_off() {
        assert_eq!(
            AdminSettings::default().address().unwrap(),
            Some("127.0.0.1:9464".parse().unwrap())
        );
        assert_eq!(settings("OFF").address().unwrap(), None);
        assert_eq!(settings(" off ").address().unwrap(), None);
        assert_eq!(
            settings("0.0.0.0:0").address().unwrap(),
            Some("0.0.0.0:0".parse().unwrap())
        );
        assert_eq!(
            settings("[::1]:9464").address().unwrap(),
            Some("[::1]:9464".parse().unwrap())
        );
        for bad in ["", "9464", "localhost:9464", "127.0.0.1", "no"] {
            let error = settings(bad).address().unwrap_err().to_string();
            assert!(error.contains("admin.listen"), "{bad:?}: {error}");
            assert!(
                error.contains("ORDERFLOW_ADMIN__LISTEN"),
                "{bad:?}: {error}"
            );
            assert!(error.contains("`off`"), "{bad:?}: {error}");
        }
    }

    #[test]
    fn an_address_in_use_names_the_setting_and_what_to_do() {
        let addr: SocketAddr = "127.0.0.1:9464".parse().unwrap();
        let in_use = bind_error(addr, std::io::ErrorKind::AddrInUse.into()).to_string();
        for needle in [
            "admin.listen 127.0.0.1:9464",
            "already in use",
            "ORDERFLOW_ADMIN__LISTEN",
            "port 0",
            "`off`",
        ] {
            assert!(in_use.contains(needle), "{needle:?} missing: {in_use}");
        }
        let denied = bind_error(addr, std::io::ErrorKind::PermissionDenied.into()).to_string();
        assert!(denied.contains("cannot listen there"), "{denied}");
        assert!(!denied.contains("already in use"), "{denied}");
    }

    /// A plain HTTP/1.1 GET: (status, content type, body).
    async fn get(addr: SocketAddr, path: &str) -> (u16, String, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.expect("send");
        let mut response = String::new();
        stream.read_to_string(&mut response).await.expect("read");
        let (head, body) = response.split_once("\r\n\r\n").expect("a head");
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("status");
        let content_type = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-type: ")
                    .map(str::to_string)
            })
            .unwrap_or_default();
        (status, content_type, body.to_string())
    }

    #[tokio::test]
    async fn the_routes_answer_metrics_health_and_readiness() {
        let readiness = Readiness::default();
        let draining = CancellationToken::new();
        let admin = start(
            &settings("127.0.0.1:0"),
            readiness.clone(),
            Probes::default(),
            draining.clone(),
        )
        .await
        .expect("a free port")
        .expect("on");
        let addr = admin.addr();
        let (status, content_type, body) = get(addr, "/healthz").await;
        assert_eq!((status, body.as_str()), (200, "ok\n"));
        assert!(content_type.starts_with("text/plain"), "{content_type}");

        metrics::counter!(crate::metrics::names::RECORDS_CONSUMED, "component" => "admin_test")
            .increment(2);
        let (status, content_type, body) = get(addr, "/metrics").await;
        assert_eq!(status, 200);
        assert!(
            content_type.starts_with("text/plain; version=0.0.4"),
            "{content_type}"
        );
        assert!(
            body.contains("orderflow_records_consumed_total{component=\"admin_test\"} 2"),
            "{body}"
        );

        // Nothing to probe and nothing tracked: ready after the first tick, until draining.
        let assignment = crate::kafka_stats::Assignment::default();
        readiness.track("inventory", assignment.clone());
        let steps = [
            ("unassigned", 503, r#""check":"inventory""#),
            ("assigned", 200, r#"{"ready":true}"#),
            ("draining", 503, r#""check":"draining""#),
        ];
        for (step, want, needle) in steps {
            match step {
                "assigned" => assignment.set(true),
                "draining" => draining.cancel(),
                _ => {}
            }
            // The verdict is recomputed every second: poll, bounded.
            let mut last = (0, String::new(), String::new());
            for _ in 0..50 {
                last = get(addr, "/readyz").await;
                if last.0 == want && last.2.contains(needle) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            assert_eq!(last.0, want, "{step}: {}", last.2);
            assert!(last.2.contains(needle), "{step}: {}", last.2);
            assert_eq!(last.1, "application/json", "{step}");
        }
        let (status, _, body) = get(addr, "/metrics").await;
        assert_eq!(status, 200);
        assert!(body.contains("orderflow_ready 0"), "{body}");
        assert!(
            body.contains("orderflow_process_resident_memory_bytes "),
            "{body}"
        );
        assert_eq!(get(addr, "/nothing").await.0, 404);
    }

    #[tokio::test]
    async fn a_second_listener_on_the_same_port_fails_with_the_in_use_error() {
        let first = start(
            &settings("127.0.0.1:0"),
            Readiness::default(),
            Probes::default(),
            CancellationToken::new(),
        )
        .await
        .expect("a free port")
        .expect("on");
        let taken = first.addr().to_string();
        let second = start(
            &settings(&taken),
            Readiness::default(),
            Probes::default(),
            CancellationToken::new(),
        )
        .await
        .unwrap_err();
        assert!(
            matches!(second, AdminError::InUse(a) if a == first.addr()),
            "{second}"
        );
        let off = start(
            &settings("off"),
            Readiness::default(),
            Probes::default(),
            CancellationToken::new(),
        )
        .await
        .expect("off is fine");
        assert!(off.is_none());
    }
}
