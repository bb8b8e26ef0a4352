//! The API's guards against a real server (real Postgres, the broker or an address where none
//! listens): new orders shed with `503` + `Retry-After` while the outbox backlog passes
//! `api.outbox_backlog_max` and accepted again once it drains; the token bucket of
//! unauthenticated calls kept per client address; and the flags file reloaded on SIGHUP by an
//! `orderflow serve` process (maintenance and rate limits, without a restart).

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::support::{self, TestEnv};

pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// One HTTP/1.1 request on its own connection from the client address `from` (any address of
/// 127.0.0.0/8 reaches the loopback listener), read to the end.
pub async fn call_from(
    from: IpAddr,
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Answer {
    let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
    socket
        .bind(SocketAddr::new(from, 0))
        .unwrap_or_else(|e| panic!("bind the client to {from}: {e}"));
    let mut stream = socket.connect(addr).await.expect("connect to the API");
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
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
    stream.write_all(head.as_bytes()).await.expect("send head");
    stream.write_all(body.as_bytes()).await.expect("send body");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.expect("read answer");
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete head");
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Answer {
        status,
        headers,
        body: String::from_utf8_lossy(&raw[split + 4..]).to_string(),
    }
}

const LOCAL: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 1));

pub async fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Answer {
    call_from(LOCAL, addr, method, path, headers, body).await
}

pub fn order(id: &str) -> String {
    json!({
        "order_id": id,
        "customer_id": "c-guard",
        "currency": "EUR",
        "lines": [{"sku": "SKU-A", "quantity": 1, "unit_price_minor": 1250}],
        "shipping_address": {"name": "Ada", "line1": "1 Main St", "city": "Berlin", "postal_code": "10115", "country": "DE"}
    })
    .to_string()
}

/// A folder with an API key pepper and a flags file of `flags`, removed by the test.
fn secrets(flags: &str) -> (PathBuf, String) {
    let dir = std::env::temp_dir().join(format!("orderflow-guards-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let pepper = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    std::fs::write(dir.join("pepper"), &pepper).unwrap();
    std::fs::write(dir.join("flags.toml"), flags).unwrap();
    (dir, pepper)
}

/// A new API key of `role`, usable as `X-Api-Key`.
async fn api_key(env: &TestEnv, pepper: &str, role: access::Role) -> String {
    let keys = access::api_keys::ApiKeys::new(env.pool.clone(), access::Secret::new(pepper));
    keys.create("guards", role, None).await.unwrap().0
}

/// An API authenticating API keys with the pepper in `dir`, the flags in `dir`, relaying to
/// `brokers`, shedding past `backlog_max` unpublished outbox rows.
async fn serve(
    env: &TestEnv,
    dir: &Path,
    brokers: &str,
    backlog_max: u64,
    shutdown: &CancellationToken,
) -> SocketAddr {
    let mut settings = env.settings.clone();
    settings.api.listen = "127.0.0.1:0".into();
    settings.api.auth.api_key_pepper_file = Some(dir.join("pepper"));
    settings.api.flags_file = Some(dir.join("flags.toml"));
    settings.api.outbox_backlog_max = backlog_max;
    settings.api.relay_interval_ms = 200;
    settings.kafka.brokers = brokers.into();
    settings.kafka.delivery_timeout_ms = 2_000;
    let api = api::start(
        &settings.api,
        &settings.kafka,
        env.pool.clone(),
        shutdown.clone(),
    )
    .await
    .expect("the API starts with API key authentication");
    let addr = api.address;
    tokio::spawn(api.wait());
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_orders_are_shed_past_the_outbox_backlog_bound_and_accepted_once_it_drains() {
    let env = TestEnv::new().await;
    let (dir, pepper) = secrets("retry_after_secs = 9\n");
    let key = api_key(&env, &pepper, access::Role::Service).await;
    // No broker at this address: every accepted order stays in the outbox.
    let offline = CancellationToken::new();
    let addr = serve(&env, &dir, "127.0.0.1:1", 2, &offline).await;
    let auth = [("X-Api-Key", key.as_str())];

    // Accepted until the backlog (counted every second) passes 2 rows, then shed.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut accepted = 0;
    let shed = loop {
        let a = call(
            addr,
            "POST",
            "/v1/orders",
            &auth,
            &order(&format!("o-shed-{accepted}")),
        )
        .await;
        if a.status != 202 {
            break a;
        }
        accepted += 1;
        assert!(
            tokio::time::Instant::now() < deadline,
            "{accepted} orders accepted, never shed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(shed.status, 503, "{}", shed.body);
    assert!(accepted >= 3, "shed after {accepted} orders, bound 2");
    assert_eq!(shed.header("retry-after"), Some("9"));
    assert_eq!(
        shed.header("content-type"),
        Some("application/problem+json")
    );
    assert_eq!(shed.json()["type"], "urn:orderflow:problem:unavailable");
    assert!(
        env.count("SELECT count(*) FROM pipeline.outbox WHERE published_at IS NULL")
            .await
            > 2
    );
    // Only new orders are shed: reads go on.
    assert_eq!(call(addr, "GET", "/v1/orders", &auth, "").await.status, 200);

    // The backlog drains (a second API with the broker relays it) and orders are accepted again.
    let online = CancellationToken::new();
    serve(&env, &dir, &env.settings.kafka.brokers, 2, &online).await;
    env.wait_count(
        "SELECT count(*) FROM pipeline.outbox WHERE published_at IS NULL",
        0,
    )
    .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let a = call(addr, "POST", "/v1/orders", &auth, &order("o-shed-after")).await;
        if a.status == 202 {
            break;
        }
        assert_eq!(a.status, 503, "{}", a.body);
        assert!(
            tokio::time::Instant::now() < deadline,
            "orders never accepted again after the backlog drained"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    offline.cancel();
    online.cancel();
    let _ = std::fs::remove_dir_all(&dir);
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_calls_share_a_bucket_per_client_address() {
    let env = TestEnv::new().await;
    let (dir, pepper) = secrets("[rate_limits.unauthenticated]\nper_minute = 1\nburst = 3\n");
    let key = api_key(&env, &pepper, access::Role::Analyst).await;
    let shutdown = CancellationToken::new();
    let addr = serve(&env, &dir, &env.settings.kafka.brokers, 100_000, &shutdown).await;
    let first: IpAddr = "127.0.0.1".parse().unwrap();
    let second: IpAddr = "127.0.0.2".parse().unwrap();

    // Without credentials, then with a wrong one: both spend the address's bucket.
    let wrong = format!("ofk_0123456789abcdef_{}", "A".repeat(43));
    let mut remaining = Vec::new();
    for headers in [vec![], vec![("X-Api-Key", wrong.as_str())], vec![]] {
        let a = call_from(first, addr, "GET", "/v1/orders", &headers, "").await;
        assert_eq!(a.status, 401, "{}", a.body);
        assert_eq!(a.header("ratelimit-limit"), Some("3"));
        remaining.push(a.header("ratelimit-remaining").unwrap().to_string());
    }
    assert_eq!(remaining, ["2", "1", "0"]);
    let limited = call_from(first, addr, "GET", "/v1/orders", &[], "").await;
    assert_eq!(limited.status, 429, "{}", limited.body);
    let retry: u64 = limited
        .header("retry-after")
        .expect("429 carries Retry-After")
        .parse()
        .unwrap();
    assert!(retry >= 1);
    assert_eq!(
        limited.header("content-type"),
        Some("application/problem+json")
    );
    assert_eq!(limited.json()["type"], "urn:orderflow:problem:rate-limited");

    // Another address has its own bucket, untouched.
    let other = call_from(second, addr, "GET", "/v1/orders", &[], "").await;
    assert_eq!(other.status, 401, "{}", other.body);
    assert_eq!(other.header("ratelimit-remaining"), Some("2"));
    // An authenticated principal from the spent address counts against its own bucket.
    let analyst = call_from(first, addr, "GET", "/v1/orders", &[("X-Api-Key", &key)], "").await;
    assert_eq!(analyst.status, 200, "{}", analyst.body);
    assert_eq!(
        analyst.header("ratelimit-limit"),
        Some(
            access::flags::RateLimits::default()
                .analyst
                .burst
                .to_string()
                .as_str()
        )
    );
    shutdown.cancel();
    let _ = std::fs::remove_dir_all(&dir);
    env.finish().await;
}

/// A running `orderflow serve` child; killed when dropped.
struct ServeProcess {
    child: Child,
    addr: SocketAddr,
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ServeProcess {
    fn signal(&self, name: &str) {
        let status = std::process::Command::new("kill")
            .args([format!("-{name}"), self.child.id().to_string()])
            .status()
            .expect("the kill command");
        assert!(status.success(), "kill -{name} failed");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_flags_of_a_running_server() {
    let env = TestEnv::new().await;
    let flags = |accept: bool, retry: u32, burst: u32| {
        format!(
            "accept_orders = {accept}\nretry_after_secs = {retry}\n\
             [rate_limits.service]\nper_minute = 6000\nburst = {burst}\n"
        )
    };
    let (dir, pepper) = secrets(&flags(true, 5, 40));
    let key = api_key(&env, &pepper, access::Role::Service).await;
    let mut command = support::orderflow(&env);
    command
        .arg("serve")
        .env("ORDERFLOW_API__LISTEN", "127.0.0.1:0")
        .env(
            "ORDERFLOW_API__AUTH__API_KEY_PEPPER_FILE",
            dir.join("pepper"),
        )
        .env("ORDERFLOW_API__FLAGS_FILE", dir.join("flags.toml"))
        // Files are looked at once an hour: within this test only SIGHUP reloads them.
        .env("ORDERFLOW_API__AUTH__RELOAD_CHECK_MS", "3600000")
        .env("ORDERFLOW_KAFKA__BROKERS", &env.settings.kafka.brokers)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("start orderflow serve");
    let stderr = child.stderr.take().expect("piped stderr");
    let (found, address) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(addr) = line
                .split("HTTP API listening on http://")
                .nth(1)
                .and_then(|a| a.trim().parse::<SocketAddr>().ok())
            {
                let _ = found.send(addr);
            }
        }
    });
    let addr = address
        .recv_timeout(Duration::from_secs(60))
        .expect("orderflow serve logs its address within 60 s");
    let server = ServeProcess { child, addr };
    let auth = [("X-Api-Key", key.as_str())];

    let before = call(server.addr, "GET", "/v1/orders", &auth, "").await;
    assert_eq!(before.status, 200, "{}", before.body);
    assert_eq!(before.header("ratelimit-limit"), Some("40"));
    let first = call(server.addr, "POST", "/v1/orders", &auth, &order("o-hup-1")).await;
    assert_eq!(first.status, 202, "{}", first.body);

    // Maintenance and a smaller bucket, in force once the process is told.
    std::fs::write(dir.join("flags.toml"), flags(false, 11, 25)).unwrap();
    server.signal("HUP");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let a = call(server.addr, "GET", "/v1/orders", &auth, "").await;
        assert_eq!(a.status, 200, "{}", a.body);
        if a.header("ratelimit-limit") == Some("25") {
            break;
        }
        assert_eq!(a.header("ratelimit-limit"), Some("40"));
        assert!(
            tokio::time::Instant::now() < deadline,
            "the new rate limit never took effect after SIGHUP"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let paused = call(server.addr, "POST", "/v1/orders", &auth, &order("o-hup-2")).await;
    assert_eq!(paused.status, 503, "{}", paused.body);
    assert_eq!(paused.header("retry-after"), Some("11"));

    // And back, by the same signal, in the same process.
    std::fs::write(dir.join("flags.toml"), flags(true, 5, 40)).unwrap();
    server.signal("HUP");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let a = call(server.addr, "POST", "/v1/orders", &auth, &order("o-hup-3")).await;
        if a.status == 202 {
            break;
        }
        assert_eq!(a.status, 503, "{}", a.body);
        assert!(
            tokio::time::Instant::now() < deadline,
            "orders never accepted again after the second SIGHUP"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
    env.finish().await;
}
