//! The HTTP API (`orderflow serve`, crate `api`) on an ephemeral port against the real broker
//! and Postgres: orders POSTed become completed and visible, idempotent repeats and `409`,
//! accepted while the broker is unreachable and published when it is back, `304` and
//! `Prefer: wait`, pagination without gaps or repeats, and problem+json for each kind of bad
//! input.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use orderflow::components::Component;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::support::TestEnv;

/// A response as the test sees it.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

/// One HTTP/1.1 request on its own connection (`Connection: close`), read to the end.
async fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Answer {
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to the API");
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || method == "POST" {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await.expect("send head");
    stream.write_all(body).await.expect("send body");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.expect("read answer");
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete head");
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let body = raw[split + 4..].to_vec();
    Answer {
        status,
        headers,
        body,
    }
}

async fn post_json(addr: SocketAddr, path: &str, body: &Value, extra: &[(&str, &str)]) -> Answer {
    let mut headers = vec![("Content-Type", "application/json")];
    headers.extend_from_slice(extra);
    call(addr, "POST", path, &headers, body.to_string().as_bytes()).await
}

async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Answer {
    call(addr, "GET", path, headers, b"").await
}

fn document(order_id: Option<&str>, customer: &str, quantity: i64) -> Value {
    let mut doc = json!({
        "customer_id": customer,
        "currency": "EUR",
        "lines": [{"sku": "SKU-A", "quantity": quantity, "unit_price_minor": 1250}],
        "shipping_address": {"name": "Ada", "line1": "1 Main St", "city": "Berlin", "postal_code": "10115", "country": "DE"}
    });
    if let Some(id) = order_id {
        doc["order_id"] = json!(id);
    }
    doc
}

/// An API on a free port for `env`'s database and topic, as `role`, relaying to `brokers`.
async fn serve(
    env: &TestEnv,
    brokers: Option<&str>,
    shutdown: &CancellationToken,
) -> (SocketAddr, tokio::task::JoinHandle<anyhow::Result<()>>) {
    let mut settings = env.settings.clone();
    settings.api.listen = "127.0.0.1:0".into();
    settings.api.insecure_dev_principal = Some("service".into());
    settings.api.relay_interval_ms = 200;
    if let Some(brokers) = brokers {
        settings.kafka.brokers = brokers.into();
        settings.kafka.delivery_timeout_ms = 2_000;
    }
    let api = api::start(
        &settings.api,
        &settings.kafka,
        env.pool.clone(),
        shutdown.clone(),
    )
    .await
    .expect("the API starts");
    let address = api.address;
    (address, tokio::spawn(api.wait()))
}

/// [`serve`] as `orderflow serve` starts it: sealing personal fields with the test master key.
async fn serve_sealing(
    env: &TestEnv,
    shutdown: &CancellationToken,
) -> (SocketAddr, tokio::task::JoinHandle<anyhow::Result<()>>) {
    let mut settings = env.settings.clone();
    settings.api.listen = "127.0.0.1:0".into();
    settings.api.insecure_dev_principal = Some("service".into());
    let ring = settings.privacy.key_ring().expect("the test master key");
    let api = api::start_sealing(
        &settings.api,
        &settings.kafka,
        env.pool.clone(),
        std::sync::Arc::new(api::operations::NoSteps),
        Some(ring),
        shutdown.clone(),
    )
    .await
    .expect("the API starts");
    let address = api.address;
    (address, tokio::spawn(api.wait()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_order_posted_is_sealed_before_it_is_written_anywhere() {
    let env = TestEnv::new().await;
    let shutdown = CancellationToken::new();
    let (addr, server) = serve_sealing(&env, &shutdown).await;
    let mut doc = document(Some("sealed-1"), "c-sealed", 1);
    doc["shipping_address"]["line2"] = json!("Hinterhaus");
    doc["contact"] = json!({"email": "ada@example.com", "phone": "+49 30 1234"});
    let first = post_json(addr, "/v1/orders", &doc, &[]).await;
    assert_eq!(
        first.status,
        202,
        "{}",
        String::from_utf8_lossy(&first.body)
    );
    // A repeat is recognised by the whole document, personal fields included.
    assert_eq!(post_json(addr, "/v1/orders", &doc, &[]).await.status, 202);
    let mut other = doc.clone();
    other["contact"]["email"] = json!("grace@example.com");
    assert_eq!(post_json(addr, "/v1/orders", &other, &[]).await.status, 409);
    other["order_id"] = json!("sealed-2");
    assert_eq!(post_json(addr, "/v1/orders", &other, &[]).await.status, 202);

    // What the outbox holds is sealed: placeholders in clear, the rest under the key.
    let payloads: Vec<(String, Vec<u8>)> = sqlx::query_as(
        "SELECT order_id, payload FROM pipeline.outbox
         WHERE step = 'api' AND event_type = 'OrderCreated' ORDER BY order_id",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    assert_eq!(payloads.len(), 2);
    let ring = env.settings.privacy.key_ring().unwrap();
    let mut conn = env.pool.acquire().await.unwrap();
    let keys = ring.live(&mut conn, &["c-sealed"]).await.unwrap();
    let key = keys.get("c-sealed").expect("one live key for the customer");
    let key_rows: i64 = sqlx::query_scalar("SELECT count(*) FROM privacy.data_keys")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(key_rows, 1, "both orders of the customer share its key");
    for (order_id, payload) in &payloads {
        for secret in [
            "Ada",
            "Main St",
            "Berlin",
            "10115",
            "Hinterhaus",
            "@example.com",
            "1234",
        ] {
            assert!(
                !payload
                    .windows(secret.len())
                    .any(|w| w == secret.as_bytes()),
                "{order_id}: {secret} in clear in the outbox"
            );
        }
        let event = events::decode(payload).expect("decodes");
        let events::EventBody::OrderCreated(order) = &event.body else {
            panic!("{order_id}: not an OrderCreated");
        };
        assert_eq!(order.shipping_address.name, privacy::personal::PLACEHOLDER);
        assert_eq!(
            order.shipping_address.country, "DE",
            "the country stays in clear"
        );
        let personal = privacy::unseal(order, order_id, key).expect("opens with the key");
        assert_eq!(personal.name, "Ada");
        assert_eq!(personal.line2.as_deref(), Some("Hinterhaus"));
        let email = if order_id == "sealed-1" {
            "ada@example.com"
        } else {
            "grace@example.com"
        };
        assert_eq!(personal.email.as_deref(), Some(email));
    }
    // The idempotency record keeps no personal field either.
    let stored: Vec<String> =
        sqlx::query_scalar("SELECT request::text FROM api.idempotency ORDER BY order_id")
            .fetch_all(&env.pool)
            .await
            .unwrap();
    assert_eq!(stored.len(), 2);
    for request in stored {
        assert!(
            !request.contains("Ada") && !request.contains("example.com"),
            "{request}"
        );
        assert!(
            request.contains("c-sealed") && request.contains("SKU-A"),
            "{request}"
        );
    }
    shutdown.cancel();
    server.await.unwrap().unwrap();
    env.finish().await;
}

async fn wait_status(addr: SocketAddr, order_id: &str, want: &str) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    let mut etag = String::new();
    loop {
        let mut headers = vec![("Prefer", "wait=5")];
        if !etag.is_empty() {
            headers.push(("If-None-Match", etag.as_str()));
        }
        let answer = get(addr, &format!("/v1/orders/{order_id}"), &headers).await;
        if answer.status == 200 {
            let body = answer.json();
            if body["status"] == want {
                return body;
            }
            etag = answer.header("etag").expect("an ETag").to_string();
        } else {
            assert_eq!(answer.status, 304, "{answer:?}");
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{order_id} never {want}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_order_posted_is_accepted_once_completed_and_readable_with_conditional_requests() {
    let mut env = TestEnv::new().await;
    env.start_all();
    let shutdown = CancellationToken::new();
    let (addr, server) = serve(&env, None, &shutdown).await;

    // Accepted: 202, Location, a small body; the same request again is the same answer.
    let doc = document(Some("http-1"), "c-http", 2);
    let first = post_json(addr, "/v1/orders", &doc, &[("X-Request-Id", "req-http-1")]).await;
    assert_eq!(
        first.status,
        202,
        "{}",
        String::from_utf8_lossy(&first.body)
    );
    assert_eq!(first.header("location"), Some("/v1/orders/http-1"));
    assert_eq!(first.header("x-request-id"), Some("req-http-1"));
    let accepted = first.json();
    assert_eq!(accepted["order_id"], "http-1");
    assert_eq!(accepted["status"], "accepted");
    let again = post_json(addr, "/v1/orders", &doc, &[]).await;
    assert_eq!(
        (again.status, again.json()),
        (202, accepted.clone()),
        "a repeat gets the first answer"
    );
    // The same key with another body is a conflict, never a second order.
    let changed = post_json(
        addr,
        "/v1/orders",
        &document(Some("http-1"), "c-http", 3),
        &[],
    )
    .await;
    assert_eq!(changed.status, 409);
    assert_eq!(
        changed.header("content-type"),
        Some("application/problem+json")
    );
    assert_eq!(
        changed.json()["type"],
        "urn:orderflow:problem:idempotency-conflict"
    );

    // Readable at once (accepted or further), then waited on until it changes.
    let now = get(addr, "/v1/orders/http-1", &[]).await;
    assert_eq!(now.status, 200);
    assert_eq!(now.header("cache-control"), Some("private, no-cache"));
    let etag = now.header("etag").expect("an ETag").to_string();
    let unchanged = get(addr, "/v1/orders/http-1", &[("If-None-Match", &etag)]).await;
    if now.json()["status"] != "completed" {
        // Conditional GET with a wait: answered as soon as the order changes.
        let waited = get(
            addr,
            "/v1/orders/http-1",
            &[("If-None-Match", &etag), ("Prefer", "wait=10")],
        )
        .await;
        assert_eq!(waited.header("preference-applied"), Some("wait=10"));
        if waited.status == 200 {
            assert_ne!(
                waited.header("etag"),
                Some(etag.as_str()),
                "answered early only for a change"
            );
        }
    }
    assert!(
        unchanged.status == 304 || unchanged.header("etag") != Some(etag.as_str()),
        "{unchanged:?}"
    );

    let done = wait_status(addr, "http-1", "completed").await;
    assert_eq!(done["total_minor"], 2500);
    assert_eq!(done["lines"][0]["sku"], "SKU-A");
    assert!(done["completed_at"].is_string());
    let current = get(addr, "/v1/orders/http-1", &[]).await;
    let etag = current.header("etag").expect("an ETag").to_string();
    assert!(
        current.header("orderflow-watermark").is_some(),
        "{current:?}"
    );
    let not_modified = get(addr, "/v1/orders/http-1", &[("If-None-Match", &etag)]).await;
    assert_eq!(not_modified.status, 304);
    assert!(not_modified.body.is_empty());
    assert_eq!(not_modified.header("etag"), Some(etag.as_str()));

    // The timeline, with the request id as the correlation id of the order's first event.
    let timeline = get(addr, "/v1/orders/http-1/events", &[]).await.json();
    let types: Vec<&str> = timeline["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event_type"].as_str().unwrap())
        .collect();
    assert_eq!(types.first(), Some(&"OrderCreated"));
    assert_eq!(types.last(), Some(&"OrderCompleted"));
    let correlation = timeline["events"][0]["correlation_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        correlation,
        uuid::Uuid::new_v5(
            &uuid::Uuid::from_u128(0x6f72_6465_7266_6c6f_772d_7265_7169_6400),
            b"req-http-1"
        )
        .to_string()
    );

    // An order sent without an id: derived from the Idempotency-Key, the same key the same order.
    let keyed = post_json(
        addr,
        "/v1/orders",
        &document(None, "c-http", 1),
        &[("Idempotency-Key", "key-7")],
    )
    .await;
    assert_eq!(keyed.status, 202);
    let keyed_id = keyed.json()["order_id"].as_str().unwrap().to_string();
    let repeat = post_json(
        addr,
        "/v1/orders",
        &document(None, "c-http", 1),
        &[("Idempotency-Key", "key-7")],
    )
    .await;
    assert_eq!(repeat.json()["order_id"], keyed_id.as_str());
    let other = post_json(
        addr,
        "/v1/orders",
        &document(None, "c-http", 4),
        &[("Idempotency-Key", "key-7")],
    )
    .await;
    assert_eq!(other.status, 409);
    wait_status(addr, &keyed_id, "completed").await;

    // Cancelling a completed order is accepted as a request; the saga rejects it on the log.
    let cancel = post_json(
        addr,
        "/v1/orders/http-1/cancellation",
        &json!({"reason": "customer_request"}),
        &[],
    )
    .await;
    assert_eq!(
        cancel.status,
        202,
        "{}",
        String::from_utf8_lossy(&cancel.body)
    );
    env.wait_count(
        "SELECT count(*) FROM analytics.order_events WHERE order_id = 'http-1' AND event_type = 'OrderCancellationRejected'",
        1,
    )
    .await;
    let unknown = post_json(
        addr,
        "/v1/orders/nope/cancellation",
        &json!({"reason": "x"}),
        &[],
    )
    .await;
    assert_eq!(unknown.status, 404);

    // One OrderCreated per accepted order on the log, however often it was sent.
    assert_eq!(env.count("SELECT count(*) FROM pipeline.outbox WHERE step = 'api' AND event_type = 'OrderCreated'").await, 2);
    assert_eq!(
        env.count("SELECT count(*) FROM analytics.order_events WHERE event_type = 'OrderCreated'")
            .await,
        2
    );

    shutdown.cancel();
    server
        .await
        .expect("server task")
        .expect("the API stops cleanly");
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn orders_are_accepted_while_the_broker_is_unreachable_and_published_when_it_is_back() {
    let mut env = TestEnv::new().await;
    env.start_all();
    // The API's relay points at an address where no broker listens.
    let down = CancellationToken::new();
    let (addr, server) = serve(&env, Some("127.0.0.1:1"), &down).await;
    let accepted = post_json(
        addr,
        "/v1/orders",
        &document(Some("offline-1"), "c-off", 1),
        &[],
    )
    .await;
    assert_eq!(accepted.status, 202, "only Postgres is needed to accept");
    let seen = get(addr, "/v1/orders/offline-1", &[]).await;
    assert_eq!(
        seen.json()["status"],
        "accepted",
        "accepted but not projected is not 404"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        env.count(
            "SELECT count(*) FROM pipeline.outbox WHERE step = 'api' AND published_at IS NULL"
        )
        .await,
        1,
        "not published while the broker is unreachable"
    );
    down.cancel();
    server
        .await
        .expect("server task")
        .expect("the API stops cleanly");

    // Back: an API with the real broker relays what was accepted.
    let up = CancellationToken::new();
    let (addr, server) = serve(&env, None, &up).await;
    let done = wait_status(addr, "offline-1", "completed").await;
    assert_eq!(done["customer_id"], "c-off");
    assert_eq!(
        env.count(
            "SELECT count(*) FROM pipeline.outbox WHERE step = 'api' AND published_at IS NULL"
        )
        .await,
        0
    );
    up.cancel();
    server
        .await
        .expect("server task")
        .expect("the API stops cleanly");
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pages_walk_every_order_once_in_creation_order() {
    let mut env = TestEnv::new().await;
    env.start(&[Component::Projections]);
    let shutdown = CancellationToken::new();
    let (addr, server) = serve(&env, None, &shutdown).await;
    let mut want = BTreeSet::new();
    for i in 0..11 {
        let customer = if i % 3 == 0 { "c-page-a" } else { "c-page-b" };
        let id = format!("page-{i:02}");
        assert_eq!(
            post_json(addr, "/v1/orders", &document(Some(&id), customer, 1), &[])
                .await
                .status,
            202
        );
        want.insert(id);
    }
    env.wait_count("SELECT count(*) FROM analytics.orders", 11)
        .await;

    let walk = |query: &'static str| async move {
        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..20 {
            let path = match &cursor {
                None => format!("/v1/orders?{query}"),
                Some(c) => format!("/v1/orders?{query}&cursor={c}"),
            };
            let page = get(addr, &path, &[]).await;
            assert_eq!(page.status, 200, "{}", String::from_utf8_lossy(&page.body));
            let page = page.json();
            let items = page["items"].as_array().unwrap();
            assert!(items.len() <= 4);
            seen.extend(items.iter().map(|o| {
                (
                    o["created_at"].as_str().unwrap().to_string(),
                    o["order_id"].as_str().unwrap().to_string(),
                )
            }));
            match page["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_string()),
                None => return seen,
            }
        }
        panic!("more than 20 pages");
    };
    let all = walk("limit=4").await;
    let ids: BTreeSet<String> = all.iter().map(|(_, id)| id.clone()).collect();
    assert_eq!(all.len(), 11, "no repeats: {all:?}");
    assert_eq!(ids, want, "no gaps");
    let mut sorted = all.clone();
    sorted.sort();
    assert_eq!(all, sorted, "in (created_at, order_id) order");
    let of_a = walk("limit=4&customer_id=c-page-a").await;
    assert_eq!(of_a.len(), 4, "{of_a:?}");
    let none = get(addr, "/v1/orders?status=completed", &[]).await.json();
    assert_eq!(none["items"].as_array().unwrap().len(), 0);

    shutdown.cancel();
    server
        .await
        .expect("server task")
        .expect("the API stops cleanly");
    env.finish().await;
}

/// (method, path, headers, body, status, problem kind)
type BadRequest<'a> = (
    &'a str,
    String,
    Vec<(&'a str, &'a str)>,
    Vec<u8>,
    u16,
    &'a str,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_kind_of_bad_request_is_its_own_problem() {
    let env = TestEnv::new().await;
    let shutdown = CancellationToken::new();
    let (addr, server) = serve(&env, None, &shutdown).await;
    let good = document(Some("bad-1"), "c-bad", 1).to_string();
    let many_lines = {
        let mut doc = document(Some("bad-2"), "c-bad", 1);
        doc["lines"] = Value::Array(vec![doc["lines"][0].clone(); 101]);
        doc.to_string()
    };
    let json_ct = [("Content-Type", "application/json")];
    let huge = "x".repeat(70 * 1024);
    let long_header = "y".repeat(20 * 1024);
    // (method, path, headers, body, status, problem kind)
    let table: Vec<BadRequest> = vec![
        (
            "POST",
            "/v1/orders".into(),
            vec![],
            good.clone().into_bytes(),
            415,
            "unsupported-media-type",
        ),
        (
            "POST",
            "/v1/orders".into(),
            vec![("Content-Type", "text/plain")],
            good.clone().into_bytes(),
            415,
            "unsupported-media-type",
        ),
        (
            "POST",
            "/v1/orders".into(),
            json_ct.to_vec(),
            b"{\"order_id\":\"\xff\"}".to_vec(),
            400,
            "malformed-request",
        ),
        (
            "POST",
            "/v1/orders".into(),
            json_ct.to_vec(),
            b"{not json".to_vec(),
            400,
            "malformed-request",
        ),
        (
            "POST",
            "/v1/orders".into(),
            json_ct.to_vec(),
            good.replace("\"currency\"", "\"colour\":1,\"currency\"")
                .into_bytes(),
            422,
            "invalid-document",
        ),
        (
            "POST",
            "/v1/orders".into(),
            json_ct.to_vec(),
            good.replace("EUR", "XXX").into_bytes(),
            422,
            "invalid-document",
        ),
        (
            "POST",
            "/v1/orders".into(),
            json_ct.to_vec(),
            many_lines.into_bytes(),
            422,
            "invalid-document",
        ),
        (
            "POST",
            "/v1/orders".into(),
            json_ct.to_vec(),
            document(None, "c-bad", 1).to_string().into_bytes(),
            422,
            "invalid-document",
        ),
        (
            "POST",
            "/v1/orders".into(),
            json_ct.to_vec(),
            format!("{{\"pad\":\"{huge}\"}}").into_bytes(),
            413,
            "body-too-large",
        ),
        (
            "POST",
            "/v1/orders".into(),
            vec![
                ("Content-Type", "application/json"),
                ("Idempotency-Key", "has space"),
            ],
            good.clone().into_bytes(),
            400,
            "malformed-request",
        ),
        (
            "GET",
            "/v1/orders/a%20b".into(),
            vec![],
            vec![],
            400,
            "malformed-request",
        ),
        (
            "GET",
            "/v1/orders/missing".into(),
            vec![],
            vec![],
            404,
            "not-found",
        ),
        (
            "GET",
            "/v1/orders/missing".into(),
            vec![("Prefer", "wait=soon")],
            vec![],
            400,
            "malformed-request",
        ),
        (
            "GET",
            "/v1/orders?cursor=forged".into(),
            vec![],
            vec![],
            400,
            "malformed-request",
        ),
        (
            "GET",
            "/v1/orders?limit=0".into(),
            vec![],
            vec![],
            400,
            "malformed-request",
        ),
        (
            "GET",
            "/v1/orders?limit=100000".into(),
            vec![],
            vec![],
            400,
            "malformed-request",
        ),
        (
            "GET",
            "/v1/orders?colour=red".into(),
            vec![],
            vec![],
            400,
            "malformed-request",
        ),
        (
            "GET",
            "/v1/orders?created_from=yesterday".into(),
            vec![],
            vec![],
            400,
            "malformed-request",
        ),
        (
            "GET",
            "/v1/nothing".into(),
            vec![],
            vec![],
            404,
            "not-found",
        ),
        (
            "DELETE",
            "/v1/orders".into(),
            vec![],
            vec![],
            405,
            "method-not-allowed",
        ),
        (
            "GET",
            "/v1/orders".into(),
            vec![("X-Padding", long_header.as_str())],
            vec![],
            431,
            "headers-too-large",
        ),
    ];
    for (method, path, headers, body, status, kind) in table {
        let answer = call(addr, method, &path, &headers, &body).await;
        let what = format!("{method} {path} {headers:?}: {answer:?}");
        assert_eq!(answer.status, status, "{what}");
        assert_eq!(
            answer.header("content-type"),
            Some("application/problem+json"),
            "{what}"
        );
        let problem = answer.json();
        assert_eq!(
            problem["type"],
            format!("urn:orderflow:problem:{kind}"),
            "{what}"
        );
        assert_eq!(problem["status"], status, "{what}");
        let id = answer.header("x-request-id").expect("a request id");
        assert_eq!(problem["request_id"], id, "{what}");
        if kind == "invalid-document" {
            assert!(problem["errors"][0]["pointer"].is_string(), "{what}");
        }
    }
    // A client's request id comes back; an unacceptable one is replaced.
    let kept = get(addr, "/v1/orders/missing", &[("X-Request-Id", "abc-123")]).await;
    assert_eq!(kept.header("x-request-id"), Some("abc-123"));
    let replaced = get(addr, "/v1/orders/missing", &[("X-Request-Id", "<script>")]).await;
    assert_ne!(replaced.header("x-request-id"), Some("<script>"));
    // The spec and the docs page are served.
    let spec = get(addr, "/openapi.json", &[]).await;
    assert_eq!(spec.status, 200);
    assert!(spec.json()["openapi"].as_str().unwrap().starts_with("3.1"));
    let docs = get(addr, "/docs/", &[]).await;
    assert_eq!(docs.status, 200, "{:?}", docs.headers);
    // Nothing was accepted by any of them.
    assert_eq!(env.count("SELECT count(*) FROM api.idempotency").await, 0);
    shutdown.cancel();
    server
        .await
        .expect("server task")
        .expect("the API stops cleanly");
    env.finish().await;
}

#[test]
fn serve_refuses_to_start_without_authentication() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_orderflow"))
        .arg("serve")
        .env_remove("ORDERFLOW_API__INSECURE_DEV_PRINCIPAL")
        .env("ORDERFLOW_API__LISTEN", "127.0.0.1:0")
        .env("ORDERFLOW_ADMIN__LISTEN", "off")
        .output()
        .expect("run orderflow serve");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("api.insecure_dev_principal"), "{stderr}");
    assert!(stderr.contains("refusing to serve"), "{stderr}");
}
