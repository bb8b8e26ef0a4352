//! The operator endpoints of the HTTP API against a real server (ephemeral port), broker and
//! Postgres: stock set then read (the CLI's table holds it), a customer blocked over HTTP
//! whose next order the payment step declines and who pays again once unblocked, dead letters
//! made for real listed (paged without gaps or repeats), shown, dry-run redriven (nothing
//! changes) and redriven (the order completes; a second redrive is `409`), parked orders
//! listed with their attempts and last error, and problem+json with a precise pointer or
//! detail for each kind of bad input. The route × role matrix (auth.rs) covers the roles.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use orderflow::components::Component;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::deadletters::{start_payment, FlakyProvider};
use crate::support::{order, TestEnv};

#[derive(Debug)]
struct Answer {
    status: u16,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    /// The problem's `type`, its pointers, and that it is problem+json.
    fn problem(&self) -> (String, Vec<String>) {
        let p = self.json();
        let pointers = p["errors"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|e| e["pointer"].as_str().unwrap_or("").to_string())
                    .collect()
            })
            .unwrap_or_default();
        (p["type"].as_str().unwrap_or("").to_string(), pointers)
    }
}

/// One request on its own connection; a body is sent as `content_type`.
async fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    content_type: &str,
    body: &str,
) -> Answer {
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to the API");
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if !body.is_empty() || method == "POST" || method == "PUT" {
        head.push_str(&format!(
            "Content-Type: {content_type}\r\nContent-Length: {}\r\n",
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
    let status = head
        .split("\r\n")
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status line");
    Answer {
        status,
        body: raw[split + 4..].to_vec(),
    }
}

async fn get(addr: SocketAddr, path: &str) -> Answer {
    call(addr, "GET", path, "", "").await
}

async fn send(addr: SocketAddr, method: &str, path: &str, body: &Value) -> Answer {
    call(addr, method, path, "application/json", &body.to_string()).await
}

/// An API for `env` serving every request as an operator (the dev principal), with the
/// binary's operations.
async fn serve(env: &TestEnv, shutdown: &CancellationToken) -> SocketAddr {
    let mut settings = env.settings.clone();
    settings.api.listen = "127.0.0.1:0".into();
    settings.api.insecure_dev_principal = Some("operator".into());
    settings.api.relay_interval_ms = 100;
    let api = api::start_with(
        &settings.api,
        &settings.kafka,
        env.pool.clone(),
        orderflow::serve::StepOperations::new(&settings, &env.pool).expect("operations"),
        shutdown.clone(),
    )
    .await
    .expect("the API starts");
    let address = api.address;
    tokio::spawn(api.wait());
    address
}

/// Every item of a paged list, following `next_cursor` with pages of `limit`.
async fn walk(addr: SocketAddr, path: &str, limit: u32) -> Vec<Value> {
    let mut items = Vec::new();
    let mut cursor: Option<String> = None;
    let sep = if path.contains('?') { '&' } else { '?' };
    loop {
        let mut url = format!("{path}{sep}limit={limit}");
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let page = get(addr, &url).await;
        assert_eq!(
            page.status,
            200,
            "{url}: {}",
            String::from_utf8_lossy(&page.body)
        );
        let page = page.json();
        let got = page["items"].as_array().expect("items").clone();
        assert!(got.len() <= limit as usize);
        items.extend(got);
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => return items,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stock_and_customer_blocks_are_set_and_read_as_the_cli_does() {
    let mut env = TestEnv::new().await;
    env.start_all();
    let shutdown = CancellationToken::new();
    let addr = serve(&env, &shutdown).await;

    // Stock set over HTTP: StockAdjusted on the log, applied by the inventory step.
    let set = send(
        addr,
        "POST",
        "/v1/stock",
        &json!({"levels": [{"sku": "SKU-OPS-A", "available": 7}, {"sku": "SKU-OPS-B", "available": 3}, {"sku": "SKU-OPS-C", "available": 2}]}),
    )
    .await;
    assert_eq!(set.status, 202, "{}", String::from_utf8_lossy(&set.body));
    let events = set.json()["events"].as_array().expect("events").clone();
    assert_eq!(events.len(), 3, "{events:?}");
    assert!(events.iter().all(|e| e["event_type"] == "StockAdjusted"));
    env.wait_count(
        "SELECT count(*) FROM inventory.stock WHERE (sku, available) IN (('SKU-OPS-A', 7), ('SKU-OPS-B', 3), ('SKU-OPS-C', 2))",
        3,
    )
    .await;
    assert_eq!(env.stock("SKU-OPS-A").await, (7, 0));
    let one = get(addr, "/v1/stock/SKU-OPS-B").await;
    assert_eq!(one.status, 200);
    assert_eq!(
        (
            one.json()["available"].clone(),
            one.json()["reserved"].clone()
        ),
        (json!(3), json!(0))
    );
    assert_eq!(get(addr, "/v1/stock/SKU-NOBODY").await.status, 404);
    // Paged by one: every sku once, in order.
    let skus: Vec<String> = walk(addr, "/v1/stock", 1)
        .await
        .iter()
        .map(|s| s["sku"].as_str().unwrap().to_string())
        .collect();
    let ops: Vec<&String> = skus.iter().filter(|s| s.starts_with("SKU-OPS-")).collect();
    assert_eq!(ops, ["SKU-OPS-A", "SKU-OPS-B", "SKU-OPS-C"]);
    let mut sorted = skus.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted, skus, "in sku order, each once");
    assert_eq!(
        skus.len() as i64,
        env.count("SELECT count(*) FROM inventory.stock").await
    );

    // Blocked: visible by the CLI's table and over HTTP; the next payment is declined.
    assert_eq!(
        get(addr, "/v1/customers/c-ops/block").await.json()["blocked"],
        false
    );
    let blocked = send(
        addr,
        "PUT",
        "/v1/customers/c-ops/block",
        &json!({"note": "chargebacks"}),
    )
    .await;
    assert_eq!(
        blocked.status,
        202,
        "{}",
        String::from_utf8_lossy(&blocked.body)
    );
    assert_eq!(blocked.json()["events"][0]["event_type"], "CustomerBlocked");
    env.wait_count(
        "SELECT count(*) FROM payment.blocked_customers WHERE customer_id = 'c-ops'",
        1,
    )
    .await;
    let read = get(addr, "/v1/customers/c-ops/block").await.json();
    assert_eq!(
        (read["blocked"].clone(), read["note"].clone()),
        (json!(true), json!("chargebacks"))
    );
    assert!(read["blocked_at"].is_string());
    assert_eq!(
        env.count("SELECT count(*) FROM payment.blocked_customers WHERE customer_id = 'c-ops' AND note = 'chargebacks'")
            .await,
        1
    );
    let mut declined = order("o-ops-blocked", &[("SKU-OPS-A", 1, 100)], "DE");
    declined.customer_id = "c-ops".into();
    env.publish(&[declined]).await;
    assert_eq!(env.wait_terminal("o-ops-blocked").await.0, "cancelled");
    assert!(
        env.timeline("o-ops-blocked")
            .await
            .contains(&"PaymentDeclined".to_string()),
        "{:?}",
        env.timeline("o-ops-blocked").await
    );

    // Unblocked: the customer pays again.
    let unblocked = call(addr, "DELETE", "/v1/customers/c-ops/block", "", "").await;
    assert_eq!(unblocked.status, 202);
    assert_eq!(
        unblocked.json()["events"][0]["event_type"],
        "CustomerUnblocked"
    );
    env.wait_count(
        "SELECT count(*) FROM payment.blocked_customers WHERE customer_id = 'c-ops'",
        0,
    )
    .await;
    assert_eq!(
        get(addr, "/v1/customers/c-ops/block").await.json()["blocked"],
        false
    );
    let mut paid = order("o-ops-paid", &[("SKU-OPS-A", 1, 100)], "DE");
    paid.customer_id = "c-ops".into();
    env.publish(&[paid]).await;
    assert_eq!(env.wait_terminal("o-ops-paid").await.0, "completed");
    assert_eq!(
        env.stock("SKU-OPS-A").await.0,
        6,
        "the blocked order's unit came back"
    );

    // Forgotten over HTTP as `orderflow customers forget` does: the customer's kept addresses
    // are scrubbed in the same transaction, CustomerForgotten is appended.
    assert!(
        env.count("SELECT count(*) FROM shipping.orders WHERE customer_id = 'c-ops' AND address IS NOT NULL")
            .await
            > 0
    );
    let forgotten = call(addr, "POST", "/v1/customers/c-ops/forget", "", "").await;
    assert_eq!(
        forgotten.status,
        202,
        "{}",
        String::from_utf8_lossy(&forgotten.body)
    );
    assert_eq!(
        forgotten.json()["events"][0]["event_type"],
        "CustomerForgotten"
    );
    assert_eq!(
        env.count("SELECT count(*) FROM shipping.orders WHERE customer_id = 'c-ops' AND address IS NOT NULL")
            .await,
        0
    );
    assert_eq!(
        call(addr, "POST", "/v1/customers/%20/forget", "", "")
            .await
            .status,
        400
    );

    // Bad inputs: each a precise problem.
    /// method, path, content type, body, status, problem kind, pointers.
    type Case = (
        &'static str,
        &'static str,
        &'static str,
        &'static str,
        u16,
        &'static str,
        &'static [&'static str],
    );
    let cases: &[Case] = &[
        (
            "POST",
            "/v1/stock",
            "application/json",
            r#"{"levels":[{"sku":"A","available":1,"colour":2}]}"#,
            422,
            "invalid-document",
            &["/levels/0/colour"],
        ),
        (
            "POST",
            "/v1/stock",
            "application/json",
            r#"{"levels":[{"sku":"A","available":-1}]}"#,
            422,
            "invalid-document",
            &["/levels/0/available"],
        ),
        (
            "POST",
            "/v1/stock",
            "application/json",
            r#"{"levels":[{"sku":"A","available":1},{"sku":"A","available":2}]}"#,
            422,
            "invalid-document",
            &["/levels/1/sku"],
        ),
        (
            "POST",
            "/v1/stock",
            "application/json",
            r#"{"levels":[]}"#,
            422,
            "invalid-document",
            &["/levels"],
        ),
        (
            "POST",
            "/v1/stock",
            "application/json",
            r#"{"levels":[{"sku":"A","available":"7"}]}"#,
            422,
            "invalid-document",
            &["/levels/0/available"],
        ),
        (
            "POST",
            "/v1/stock",
            "text/plain",
            r#"{"levels":[{"sku":"A","available":1}]}"#,
            415,
            "unsupported-media-type",
            &[],
        ),
        (
            "POST",
            "/v1/stock",
            "application/json",
            r#"{"levels":"#,
            400,
            "malformed-request",
            &[],
        ),
        (
            "GET",
            "/v1/stock?limit=0",
            "",
            "",
            400,
            "malformed-request",
            &[],
        ),
        (
            "GET",
            "/v1/stock?colour=red",
            "",
            "",
            400,
            "malformed-request",
            &[],
        ),
        (
            "GET",
            "/v1/stock?cursor=bm90LW91cnM",
            "",
            "",
            400,
            "malformed-request",
            &[],
        ),
        (
            "PUT",
            "/v1/customers/c-ops/block",
            "application/json",
            r#"{"note":"x","until":"never"}"#,
            422,
            "invalid-document",
            &["/until"],
        ),
        (
            "GET",
            "/v1/customers/%20/block",
            "",
            "",
            400,
            "malformed-request",
            &[],
        ),
        (
            "PATCH",
            "/v1/customers/c-ops/block",
            "application/json",
            "{}",
            405,
            "method-not-allowed",
            &[],
        ),
    ];
    for (method, path, content_type, body, status, kind, pointers) in cases {
        let answer = call(addr, method, path, content_type, body).await;
        assert_eq!(
            answer.status,
            *status,
            "{method} {path} {body}: {}",
            String::from_utf8_lossy(&answer.body)
        );
        let (got_kind, got_pointers) = answer.problem();
        assert_eq!(
            got_kind,
            format!("urn:orderflow:problem:{kind}"),
            "{method} {path} {body}"
        );
        assert_eq!(got_pointers, *pointers, "{method} {path} {body}");
    }
    let long_note = json!({"note": "n".repeat(501)});
    let answer = send(addr, "PUT", "/v1/customers/c-ops/block", &long_note).await;
    assert_eq!(
        (answer.status, answer.problem().1),
        (422, vec!["/note".to_string()])
    );
    let many: Vec<Value> = (0..1001)
        .map(|i| json!({"sku": format!("S{i}"), "available": 1}))
        .collect();
    let answer = send(addr, "POST", "/v1/stock", &json!({"levels": many})).await;
    assert_eq!(
        (answer.status, answer.problem().1),
        (422, vec!["/levels".to_string()])
    );
    assert_eq!(
        env.count("SELECT count(*) FROM inventory.stock WHERE sku = 'A' OR sku LIKE 'S%' AND sku NOT LIKE 'SKU-%'").await,
        0,
        "no refused request set anything"
    );

    shutdown.cancel();
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dead_letters_are_listed_shown_dry_run_and_redriven() {
    let mut env = TestEnv::new().await;
    env.settings.consumer.retry_attempts_max = 3;
    env.settings.consumer.retry_delay_ms_min = 10;
    env.settings.consumer.retry_delay_ms_max = 50;
    env.start(&[
        Component::Inventory,
        Component::Shipping,
        Component::Saga,
        Component::Projections,
    ]);
    let provider = FlakyProvider::new(0, true, None);
    start_payment(&mut env, provider.clone());
    let shutdown = CancellationToken::new();
    let addr = serve(&env, &shutdown).await;

    // Two poison records (every consumer of the log gives them up: 5 × 2), and a payment
    // that runs out of retries.
    env.produce_raw("o-ops-poison-1", b"not avro at all").await;
    env.produce_raw("o-ops-poison-2", b"nor this").await;
    env.publish(&[order("o-ops-down", &[("SKU-A", 1, 100)], "DE")])
        .await;
    env.wait_count("SELECT count(*) FROM pipeline.dead_letters", 11)
        .await;
    provider.down.store(false, Ordering::SeqCst);

    // Listed: a walk by four sees each once; the consumer filter narrows it.
    let all = walk(addr, "/v1/dead-letters", 4).await;
    let ids: BTreeSet<String> = all
        .iter()
        .map(|l| l["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!((all.len(), ids.len()), (11, 11), "{all:?}");
    let payment = get(addr, "/v1/dead-letters?consumer=payment").await.json();
    let items = payment["items"].as_array().expect("items");
    assert_eq!(items.len(), 3, "{payment}");
    assert!(items.iter().all(|l| l["consumer"] == "payment"));
    let letter = items
        .iter()
        .find(|l| l["error_class"] == "retries_exhausted")
        .expect("the exhausted payment");
    assert_eq!(letter["attempts"], 3);
    let id = letter["id"].as_str().unwrap().to_string();
    let inventory_id = all
        .iter()
        .find(|l| l["consumer"] == "inventory")
        .and_then(|l| l["id"].as_str())
        .unwrap()
        .to_string();

    // Shown: history, key, what the payload holds.
    let shown = get(addr, &format!("/v1/dead-letters/{id}")).await;
    assert_eq!(shown.status, 200);
    let shown = shown.json();
    assert_eq!(shown["history"].as_array().map(Vec::len), Some(3));
    assert!(
        shown["history"][0]["error"]
            .as_str()
            .unwrap()
            .contains("503"),
        "{shown}"
    );
    assert_eq!(shown["key"], "o-ops-down");
    assert_eq!(shown["payload"]["order_id"], "o-ops-down");
    assert!(shown["payload"]["event_type"].is_string(), "{shown}");
    let poison = get(addr, &format!("/v1/dead-letters/{inventory_id}"))
        .await
        .json();
    assert!(poison["payload"]["undecodable"].is_string(), "{poison}");
    assert_eq!(
        get(addr, &format!("/v1/dead-letters/{}", uuid::Uuid::new_v4()))
            .await
            .status,
        404
    );
    assert_eq!(get(addr, "/v1/dead-letters/not-a-uuid").await.status, 400);

    // Dry run: reported, nothing changes.
    let dry = send(
        addr,
        "POST",
        "/v1/dead-letters/redrive",
        &json!({"consumer": "payment", "ids": [id], "dry_run": true}),
    )
    .await;
    assert_eq!(dry.status, 200, "{}", String::from_utf8_lossy(&dry.body));
    let dry = dry.json();
    assert_eq!(dry["dry_run"], true);
    assert_eq!(dry["items"].as_array().map(Vec::len), Some(1));
    assert_eq!(dry["items"][0]["id"], id.as_str());
    assert_eq!(dry["items"][0]["outcome"], "would_ask", "{dry}");
    assert_eq!(
        env.count("SELECT count(*) FROM payment.payments WHERE order_id = 'o-ops-down'")
            .await,
        0,
        "a dry run commits nothing"
    );
    assert_eq!(
        env.count("SELECT count(*) FROM pipeline.dead_letters WHERE redriven_at IS NULL")
            .await,
        11
    );

    // Bad redrives: precise, and nothing redriven.
    let bad: &[(Value, u16, &str, &[&str])] = &[
        (
            json!({"consumer": "projections"}),
            422,
            "invalid-document",
            &["/consumer"],
        ),
        (
            json!({"consumer": "billing"}),
            422,
            "invalid-document",
            &["/consumer"],
        ),
        (
            json!({"consumer": "payment", "ids": [inventory_id]}),
            422,
            "invalid-document",
            &["/ids/0"],
        ),
        (
            json!({"consumer": "payment", "ids": [uuid::Uuid::new_v4()]}),
            404,
            "not-found",
            &[],
        ),
        (
            json!({"consumer": "payment", "ids": ["not-a-uuid"]}),
            422,
            "invalid-document",
            &["/ids/0"],
        ),
        (
            json!({"consumer": "payment", "force": true}),
            422,
            "invalid-document",
            &["/force"],
        ),
    ];
    for (body, status, kind, pointers) in bad {
        let answer = send(addr, "POST", "/v1/dead-letters/redrive", body).await;
        assert_eq!(
            answer.status,
            *status,
            "{body}: {}",
            String::from_utf8_lossy(&answer.body)
        );
        let (got_kind, got_pointers) = answer.problem();
        assert_eq!(got_kind, format!("urn:orderflow:problem:{kind}"), "{body}");
        assert_eq!(got_pointers, *pointers, "{body}");
    }
    let ids: Vec<String> = (0..101).map(|_| uuid::Uuid::new_v4().to_string()).collect();
    let answer = send(
        addr,
        "POST",
        "/v1/dead-letters/redrive",
        &json!({"consumer": "payment", "ids": ids}),
    )
    .await;
    assert_eq!(
        (answer.status, answer.problem().1),
        (422, vec!["/ids".to_string()])
    );

    // Redriven: applied, the order completes; the letter is closed; again is 409.
    let done = send(
        addr,
        "POST",
        "/v1/dead-letters/redrive",
        &json!({"consumer": "payment", "ids": [id]}),
    )
    .await;
    assert_eq!(done.status, 200, "{}", String::from_utf8_lossy(&done.body));
    let done = done.json();
    assert_eq!(done["items"][0]["outcome"], "applied", "{done}");
    assert_eq!(done["items"][0]["replies"], json!(["PaymentAuthorized"]));
    assert!(done["items"][0]["offset"].is_i64());
    assert_eq!(env.wait_terminal("o-ops-down").await.0, "completed");
    let again = send(
        addr,
        "POST",
        "/v1/dead-letters/redrive",
        &json!({"consumer": "payment", "ids": [id]}),
    )
    .await;
    assert_eq!(
        again.status,
        409,
        "{}",
        String::from_utf8_lossy(&again.body)
    );
    assert_eq!(again.problem().0, "urn:orderflow:problem:conflict");
    let open = get(addr, "/v1/dead-letters?consumer=payment").await.json();
    assert_eq!(
        open["items"].as_array().map(Vec::len),
        Some(2),
        "only the poison is open"
    );
    let closed = get(
        addr,
        "/v1/dead-letters?consumer=payment&include_redriven=true",
    )
    .await
    .json();
    let redriven: Vec<&Value> = closed["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["redriven_at"].is_string())
        .collect();
    assert_eq!(redriven.len(), 1, "{closed}");
    assert_eq!(redriven[0]["id"], id.as_str());
    // Without ids: the step's open letters, here the poison, which fails again and stays open
    // with the attempt appended.
    let rest = send(
        addr,
        "POST",
        "/v1/dead-letters/redrive",
        &json!({"consumer": "payment"}),
    )
    .await;
    assert_eq!(rest.status, 200, "{}", String::from_utf8_lossy(&rest.body));
    let rest = rest.json();
    let outcomes: Vec<&Value> = rest["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| &i["outcome"])
        .collect();
    assert_eq!(
        outcomes,
        [&json!("failed_again"), &json!("failed_again")],
        "{rest}"
    );
    assert!(rest["items"][0]["error"].is_string(), "{rest}");
    let poison: Vec<(i32, Option<chrono::DateTime<chrono::Utc>>)> = sqlx::query_as(
        "SELECT attempts, redriven_at FROM pipeline.dead_letters WHERE consumer = 'payment' AND error_class = 'permanent'",
    )
    .fetch_all(&env.pool)
    .await
    .expect("poison letters");
    assert_eq!(
        poison,
        vec![(2, None), (2, None)],
        "still open, one attempt more"
    );
    assert_eq!(
        get(addr, "/v1/dead-letters?consumer=billing").await.status,
        400
    );

    shutdown.cancel();
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn parked_orders_are_listed_with_attempts_next_attempt_and_last_error() {
    let mut env = TestEnv::with_partitions(1).await;
    env.settings.consumer.retry_attempts_max = 10_000;
    env.settings.consumer.retry_total_ms_max = 600_000;
    env.settings.consumer.retry_delay_ms_min = 50;
    env.settings.consumer.retry_delay_ms_max = 200;
    env.start(&[
        Component::Inventory,
        Component::Shipping,
        Component::Saga,
        Component::Projections,
    ]);
    let provider = FlakyProvider::new(0, true, Some("c-ops-stuck"));
    start_payment(&mut env, provider.clone());
    let shutdown = CancellationToken::new();
    let addr = serve(&env, &shutdown).await;

    assert_eq!(get(addr, "/v1/parked").await.json()["items"], json!([]));
    let mut stuck = order("o-ops-stuck", &[("SKU-A", 1, 100)], "DE");
    stuck.customer_id = "c-ops-stuck".into();
    env.publish(&[stuck]).await;
    env.wait_count(
        "SELECT count(*) FROM pipeline.parked WHERE step = 'payment' AND order_id = 'o-ops-stuck' AND attempts >= 1",
        1,
    )
    .await;
    let page = get(addr, "/v1/parked?step=payment").await;
    assert_eq!(page.status, 200, "{}", String::from_utf8_lossy(&page.body));
    let page = page.json();
    let items = page["items"].as_array().expect("items");
    assert_eq!(items.len(), 1, "{page}");
    let parked = &items[0];
    assert_eq!(parked["order_id"], "o-ops-stuck");
    assert_eq!(parked["step"], "payment");
    assert_eq!(parked["records"], 1);
    assert!(parked["attempts"].as_i64().unwrap() >= 1, "{parked}");
    assert!(parked["next_attempt_at"].is_string(), "{parked}");
    assert!(
        parked["last_error"].as_str().unwrap_or("").contains("503"),
        "{parked}"
    );
    assert_eq!(
        get(addr, "/v1/parked?step=inventory").await.json()["items"],
        json!([])
    );
    let all = walk(addr, "/v1/parked", 1).await;
    assert_eq!(all.len(), 1);
    assert_eq!(get(addr, "/v1/parked?step=billing").await.status, 400);
    assert_eq!(get(addr, "/v1/parked?cursor=%2A").await.status, 400);

    shutdown.cancel();
    env.finish().await;
}
