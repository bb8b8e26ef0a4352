//! One OpenTelemetry trace per order across the log: `orderflow run` and `orderflow publish`
//! export to an OTLP/HTTP sink started here (it decodes the protobuf the exporter posts), and
//! the spans of each order must form one trace whose parent links follow the causation chain:
//! create → reserve → authorize → schedule → complete → projected. An order accepted by
//! `orderflow serve` starts its trace at the API.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use axum::Router;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use prost::Message;

use crate::support::{orderflow, TestEnv};

const ORDERS: usize = 3;
const WAIT: Duration = Duration::from_secs(90);

/// A span as the sink received it.
#[derive(Debug, Clone)]
struct Received {
    trace_id: Vec<u8>,
    span_id: Vec<u8>,
    parent_span_id: Vec<u8>,
    name: String,
    attributes: HashMap<String, String>,
    service: String,
}

impl Received {
    fn attr(&self, key: &str) -> &str {
        self.attributes.get(key).map_or("", String::as_str)
    }

    /// Handled by `component` (`publish` for the producer) for an event of `event_type`.
    fn is(&self, component: &str, event_type: &str) -> bool {
        self.attr("orderflow.component") == component && self.attr("event.type") == event_type
    }
}

type Spans = Arc<Mutex<Vec<Received>>>;

async fn receive(State(spans): State<Spans>, body: Bytes) -> &'static str {
    let request = ExportTraceServiceRequest::decode(body).expect("an OTLP protobuf export");
    let mut received = spans.lock().unwrap();
    for resource in request.resource_spans {
        let service = resource
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|kv| kv.key == "service.name")
            .and_then(|kv| text(kv.value.as_ref()?.value.as_ref()?))
            .unwrap_or_default();
        for scope in resource.scope_spans {
            for span in scope.spans {
                let attributes = span
                    .attributes
                    .iter()
                    .filter_map(|kv| {
                        Some((kv.key.clone(), text(kv.value.as_ref()?.value.as_ref()?)?))
                    })
                    .collect();
                received.push(Received {
                    trace_id: span.trace_id,
                    span_id: span.span_id,
                    parent_span_id: span.parent_span_id,
                    name: span.name,
                    attributes,
                    service: service.clone(),
                });
            }
        }
    }
    ""
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::StringValue(s) => Some(s.clone()),
        Value::IntValue(i) => Some(i.to_string()),
        Value::BoolValue(b) => Some(b.to_string()),
        _ => None,
    }
}

/// An OTLP/HTTP receiver on 127.0.0.1:0.
async fn sink() -> (SocketAddr, Spans) {
    let spans: Spans = Arc::default();
    let app = Router::new()
        .route("/v1/traces", post(receive))
        .with_state(Arc::clone(&spans));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the sink");
    let address = listener.local_addr().expect("the sink's address");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (address, spans)
}

/// Whether following parent links from `from` reaches a span that `target` accepts.
fn reaches(
    by_id: &HashMap<Vec<u8>, Received>,
    from: &Received,
    target: impl Fn(&Received) -> bool,
) -> bool {
    let mut current = from.clone();
    for _ in 0..64 {
        let Some(parent) = by_id.get(&current.parent_span_id) else {
            return false;
        };
        if target(parent) {
            return true;
        }
        current = parent.clone();
    }
    false
}

fn stop(child: &mut Child) {
    // SIGTERM: the components finish their batches and the last spans are flushed.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = child.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_order_is_one_trace_whose_parents_follow_the_causation_chain() {
    let env = TestEnv::new().await;
    env.set_stock(&[("SKU-A", 100)]).await;
    let (address, spans) = sink().await;
    let endpoint = format!("http://{address}");
    let traced = |command: &mut std::process::Command| {
        command
            .env("ORDERFLOW_TRACING__OTLP_ENDPOINT", &endpoint)
            .env("ORDERFLOW_TRACING__SAMPLING_RATIO", "1.0")
            .env("ORDERFLOW_LOG_FORMAT", "json")
            // The engine's debug lines are logged inside a batch span.
            .env("RUST_LOG", "warn,consumers::engine=debug");
    };

    let mut run = orderflow(&env);
    run.arg("run")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    traced(&mut run);
    let mut run = run.spawn().expect("start orderflow run");
    let log: Arc<Mutex<Vec<String>>> = Arc::default();
    let stderr = run.stderr.take().expect("piped stderr");
    let lines = Arc::clone(&log);
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            lines.lock().unwrap().push(line);
        }
    });

    let ids: Vec<String> = (0..ORDERS).map(|i| format!("t-{i}")).collect();
    let input: String = ids
        .iter()
        .map(|id| {
            format!(
                r#"{{"order_id":"{id}","customer_id":"c-1","currency":"EUR","lines":[{{"sku":"SKU-A","quantity":1,"unit_price_minor":100}}],"shipping_address":{{"name":"A","line1":"1 Main","city":"Berlin","postal_code":"10115","country":"DE"}}}}"#
            ) + "\n"
        })
        .collect();
    let mut publish = orderflow(&env);
    publish
        .arg("publish")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    traced(&mut publish);
    let mut publish = publish.spawn().expect("start orderflow publish");
    publish
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(input.as_bytes())
        .expect("write orders");
    let published = publish.wait_with_output().expect("orderflow publish ran");
    assert!(
        published.status.success(),
        "orderflow publish failed: {}",
        String::from_utf8_lossy(&published.stderr)
    );

    // Every order's completion and its projection arrive (bounded wait).
    let deadline = tokio::time::Instant::now() + WAIT;
    let received = loop {
        let received = spans.lock().unwrap().clone();
        let whole = ids.iter().all(|id| {
            let of = |component: &str, event: &str| {
                received
                    .iter()
                    .any(|s| s.attr("order.id") == id && s.is(component, event))
            };
            of("saga", "ShipmentScheduled") && of("projections", "OrderCompleted")
        });
        if whole {
            break received;
        }
        if let Ok(Some(exit)) = run.try_wait() {
            panic!(
                "orderflow run exited ({exit}):\n{}",
                log.lock().unwrap().join("\n")
            );
        }
        if tokio::time::Instant::now() > deadline {
            stop(&mut run);
            let names: Vec<String> = received
                .iter()
                .map(|s| format!("{} {}", s.attr("order.id"), s.name))
                .collect();
            panic!("not every order's trace arrived within {WAIT:?}; got {names:?}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    stop(&mut run);

    assert!(received.iter().all(|s| s.service == "orderflow"));
    let by_id: HashMap<Vec<u8>, Received> = received
        .iter()
        .map(|s| (s.span_id.clone(), s.clone()))
        .collect();
    let mut traces = HashSet::new();
    for id in &ids {
        let of_order: Vec<&Received> = received
            .iter()
            .filter(|s| s.attr("order.id") == id)
            .collect();
        let trace_ids: HashSet<&Vec<u8>> = of_order.iter().map(|s| &s.trace_id).collect();
        assert_eq!(
            trace_ids.len(),
            1,
            "order {id}: all spans in one trace: {of_order:#?}"
        );
        let trace = (*trace_ids.iter().next().unwrap()).clone();
        assert!(
            traces.insert(trace),
            "order {id} shares its trace with another order"
        );

        let find = |component: &str, event: &str| -> &Received {
            of_order
                .iter()
                .find(|s| s.is(component, event))
                .unwrap_or_else(|| panic!("order {id}: no span of {component} for {event}"))
        };
        let create = find("publish", "OrderCreated");
        assert!(
            create.parent_span_id.is_empty(),
            "order {id}: create is the root"
        );
        let steps = [
            // (span, what its parent chain must reach)
            (
                find("inventory", "OrderCreated"),
                ("publish", "OrderCreated"),
            ),
            (
                find("payment", "InventoryReserved"),
                ("inventory", "OrderCreated"),
            ),
            (
                find("shipping", "PaymentAuthorized"),
                ("payment", "InventoryReserved"),
            ),
            (
                find("saga", "ShipmentScheduled"),
                ("shipping", "PaymentAuthorized"),
            ),
            (
                find("projections", "OrderCompleted"),
                ("saga", "ShipmentScheduled"),
            ),
            (
                find("projections", "OrderCreated"),
                ("publish", "OrderCreated"),
            ),
        ];
        for (span, (component, event)) in steps {
            assert!(
                reaches(&by_id, span, |p| p.is(component, event)
                    && p.attr("order.id") == id),
                "order {id}: {} does not descend from {component} {event}",
                span.name
            );
        }
        for span in &of_order {
            assert!(
                span.span_id == create.span_id
                    || reaches(&by_id, span, |p| p.span_id == create.span_id),
                "order {id}: {} does not descend from the order's create span",
                span.name
            );
        }
        // A consumer span says where its record was.
        let reserve = find("inventory", "OrderCreated");
        assert!(reserve
            .attr("messaging.kafka.partition")
            .parse::<i32>()
            .is_ok());
        assert!(reserve
            .attr("messaging.kafka.offset")
            .parse::<i64>()
            .is_ok());
    }

    // Batches are spans of their own, and log lines inside one carry its trace id.
    let batch_traces: HashSet<String> = received
        .iter()
        .filter(|s| s.name.ends_with(" batch"))
        .map(|s| hex(&s.trace_id))
        .collect();
    assert!(!batch_traces.is_empty(), "batch spans exported");
    let log: Vec<String> = log.lock().unwrap().clone();
    let logged: Vec<&String> = log
        .iter()
        .filter(|l| l.contains("\"trace_id\":\""))
        .collect();
    assert!(
        !logged.is_empty(),
        "no log line carries a trace id:\n{}",
        log.join("\n")
    );
    for line in logged {
        let value: serde_json::Value = serde_json::from_str(line).expect("a JSON log line");
        let trace = value["trace_id"].as_str().expect("trace_id");
        assert!(
            value["span_id"].as_str().is_some_and(|s| s.len() == 16),
            "{line}"
        );
        assert!(batch_traces.contains(trace), "{line}: not a batch's trace");
    }
    env.finish().await;
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// POST `body` as JSON to `path` of `addr` with a bare HTTP/1.1 request; the status code.
async fn post_json(addr: SocketAddr, path: &str, body: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to orderflow serve");
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.expect("read answer");
    String::from_utf8_lossy(&answer)
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {}", String::from_utf8_lossy(&answer)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_order_accepted_over_http_is_one_trace_that_starts_at_the_api() {
    let env = TestEnv::new().await;
    env.set_stock(&[("SKU-A", 100)]).await;
    let (address, spans) = sink().await;
    let endpoint = format!("http://{address}");
    let traced = |command: &mut std::process::Command| {
        command
            .env("ORDERFLOW_TRACING__OTLP_ENDPOINT", &endpoint)
            .env("ORDERFLOW_TRACING__SAMPLING_RATIO", "1.0")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
    };
    // A free port for the API: bound here, released, handed to the child.
    let api: SocketAddr = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    let mut serve = orderflow(&env);
    serve
        .arg("serve")
        .env("ORDERFLOW_API__LISTEN", api.to_string())
        .env("ORDERFLOW_API__INSECURE_DEV_PRINCIPAL", "service");
    traced(&mut serve);
    let mut serve = serve.spawn().expect("start orderflow serve");
    let mut run = orderflow(&env);
    run.arg("run");
    traced(&mut run);
    let mut run = run.spawn().expect("start orderflow run");

    let order = "h-1";
    let body = format!(
        r#"{{"order_id":"{order}","customer_id":"c-1","currency":"EUR","lines":[{{"sku":"SKU-A","quantity":1,"unit_price_minor":100}}],"shipping_address":{{"name":"A","line1":"1 Main","city":"Berlin","postal_code":"10115","country":"DE"}}}}"#
    );
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if tokio::net::TcpStream::connect(api).await.is_ok() {
            break;
        }
        if let Ok(Some(exit)) = serve.try_wait() {
            stop(&mut run);
            panic!("orderflow serve exited ({exit}) before listening on {api}");
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "serve never listened"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(post_json(api, "/v1/orders", &body).await, 202, "accepted");

    let of = |received: &[Received], component: &str, event: &str| -> Option<Received> {
        received
            .iter()
            .find(|s| s.attr("order.id") == order && s.is(component, event))
            .cloned()
    };
    let received = loop {
        let received = spans.lock().unwrap().clone();
        if of(&received, "projections", "OrderCompleted").is_some()
            && of(&received, "saga", "ShipmentScheduled").is_some()
        {
            break received;
        }
        if tokio::time::Instant::now() > deadline {
            stop(&mut serve);
            stop(&mut run);
            let names: Vec<String> = received
                .iter()
                .map(|s| format!("{} {}", s.attr("order.id"), s.name))
                .collect();
            panic!("the order's trace did not arrive within {WAIT:?}; got {names:?}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    stop(&mut serve);
    stop(&mut run);

    let of_order: Vec<&Received> = received
        .iter()
        .filter(|s| s.attr("order.id") == order)
        .collect();
    let traces: HashSet<&Vec<u8>> = of_order.iter().map(|s| &s.trace_id).collect();
    assert_eq!(traces.len(), 1, "one trace: {of_order:#?}");
    let create = of(&received, "api", "OrderCreated").expect("the API's producer span");
    let by_id: HashMap<Vec<u8>, Received> = received
        .iter()
        .map(|s| (s.span_id.clone(), s.clone()))
        .collect();
    for (component, event) in [
        ("inventory", "OrderCreated"),
        ("saga", "ShipmentScheduled"),
        ("projections", "OrderCompleted"),
    ] {
        let span = of(&received, component, event)
            .unwrap_or_else(|| panic!("no span of {component} for {event}"));
        assert!(
            reaches(&by_id, &span, |p| p.span_id == create.span_id),
            "{component} {event} does not descend from the API's create span"
        );
    }
    env.finish().await;
}
