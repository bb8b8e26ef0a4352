//! Traces across the order log (issue 12): one OpenTelemetry trace per order, carried from
//! record to record in Kafka headers (W3C `traceparent` / `tracestate`) and exported over OTLP.
//!
//! What lives here: the `[tracing]` section ([`TracingSettings`]), the tracer provider and its
//! OTLP/HTTP exporter ([`Tracing::start`], flushed by [`Tracing::shutdown`]), the propagation
//! through record headers ([`HeaderInjector`], [`HeaderExtractor`]) and through an outbox row
//! ([`Carrier`]), and the spans every producer and consumer opens ([`event_span`],
//! [`batch_span`], [`consumer_span`]).
//!
//! Export is off unless `tracing.otlp_endpoint` is set. Off, [`enabled`] is false and every
//! helper here returns at once: no header is parsed or written, no span is built (the
//! disabled [`tracing::Span::none`] is all the hot path pays). Spans of this module use the
//! target [`TARGET`]; the OpenTelemetry layer exports only those (and warnings and errors
//! logged inside them, as span events), so library spans never reach the collector.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use rdkafka::message::{Header, Headers, OwnedHeaders};
use serde::{Deserialize, Serialize};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The `tracing` target of every span this module opens; the exporter's filter lets only
/// these spans through.
pub const TARGET: &str = "orderflow::trace";

/// The W3C Trace Context headers a record carries; nothing else is propagated.
pub const TRACEPARENT: &str = "traceparent";
pub const TRACESTATE: &str = "tracestate";

/// Most records a batch span links to: enough to jump from a batch to the orders in it, and
/// a bound on the span's size (a catch-up batch holds 10,000 records).
pub const BATCH_LINKS_MAX: usize = 32;

static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Whether this process exports traces. Every helper here checks it first, so with export
/// off the hot path neither parses headers nor builds spans.
#[inline]
pub fn enabled() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// The `[tracing]` section.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TracingSettings {
    /// Where spans go: the OTLP/HTTP base URL of a collector (`http://127.0.0.1:4318`; the
    /// path `/v1/traces` is added unless given). Empty: no export, the default.
    pub otlp_endpoint: String,
    /// The OTLP transport; only `http/protobuf` is built in.
    pub protocol: String,
    /// Share of new traces recorded, 0.0 to 1.0. The sampler is parent-based: a record whose
    /// context says sampled keeps every span after it sampled, so an order's trace is whole
    /// or absent.
    pub sampling_ratio: f64,
    /// The resource's `service.name`; the process's components go in `orderflow.components`.
    pub service_name: String,
    /// Bound on one export request (spans are exported in the background, in batches).
    pub export_timeout_ms: u64,
}

impl Default for TracingSettings {
    fn default() -> Self {
        TracingSettings {
            otlp_endpoint: String::new(),
            protocol: HTTP_PROTOBUF.into(),
            sampling_ratio: 1.0,
            service_name: "orderflow".into(),
            export_timeout_ms: 10_000,
        }
    }
}

const HTTP_PROTOBUF: &str = "http/protobuf";

/// Why tracing did not start. The process stops: it was asked to export traces.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    /// A setting is out of range (a configuration mistake: fix the setting).
    #[error("tracing.{key} = {value}: {expected} (in the [tracing] section or ORDERFLOW_TRACING__{upper})", upper = .key.to_uppercase())]
    Invalid {
        key: &'static str,
        value: String,
        expected: &'static str,
    },
    /// The exporter refused its configuration.
    #[error("tracing.otlp_endpoint = {endpoint:?}: the OTLP exporter cannot be built: {reason}")]
    Exporter { endpoint: String, reason: String },
}

impl TracingSettings {
    /// The URL spans are posted to, or `None` when export is off; checks every setting.
    pub fn traces_url(&self) -> Result<Option<String>, TraceError> {
        let endpoint = self.otlp_endpoint.trim();
        if endpoint.is_empty() {
            return Ok(None);
        }
        if !self.protocol.eq_ignore_ascii_case(HTTP_PROTOBUF) {
            return Err(TraceError::Invalid {
                key: "protocol",
                value: format!("{:?}", self.protocol),
                expected:
                    "only \"http/protobuf\" (OTLP over HTTP, port 4318 of a collector) is built in",
            });
        }
        if !(0.0..=1.0).contains(&self.sampling_ratio) {
            return Err(TraceError::Invalid {
                key: "sampling_ratio",
                value: self.sampling_ratio.to_string(),
                expected: "give a share between 0.0 (no new trace) and 1.0 (every order)",
            });
        }
        if self.service_name.trim().is_empty() {
            return Err(TraceError::Invalid {
                key: "service_name",
                value: "\"\"".into(),
                expected: "name the service spans are reported under (default \"orderflow\")",
            });
        }
        if !endpoint.starts_with("http://") {
            return Err(TraceError::Invalid {
                key: "otlp_endpoint",
                value: format!("{endpoint:?}"),
                expected: "give an http:// URL of an OTLP/HTTP receiver, such as \
                           http://127.0.0.1:4318 (TLS is not built in: run a collector beside \
                           the process), or leave it empty to turn export off",
            });
        }
        let base = endpoint.trim_end_matches('/');
        Ok(Some(if base.ends_with("/v1/traces") {
            base.to_string()
        } else {
            format!("{base}/v1/traces")
        }))
    }
}

/// The tracer provider of a process that exports traces. Keep it until the process ends and
/// call [`Tracing::shutdown`] (or drop it) so the last spans are sent.
pub struct Tracing {
    provider: SdkTracerProvider,
}

/// The pieces [`crate::telemetry`] composes into the process's subscriber.
pub struct Started {
    pub tracing: Tracing,
    pub tracer: opentelemetry_sdk::trace::Tracer,
}

impl Tracing {
    /// Build the provider when `settings` turn export on (`None` otherwise); `components` name
    /// what this process runs (the resource's `orderflow.components`). Sets the global W3C
    /// propagator. Must run inside a tokio runtime: exports are sent on it.
    pub fn start(
        settings: &TracingSettings,
        components: &str,
    ) -> Result<Option<Started>, TraceError> {
        let Some(url) = settings.traces_url()? else {
            return Ok(None);
        };
        let timeout = Duration::from_millis(settings.export_timeout_ms.max(1));
        let client = OnRuntime {
            runtime: tokio::runtime::Handle::current(),
            inner: Arc::new(
                opentelemetry_http::hyper::HyperClient::with_default_connector(timeout, None),
            ),
        };
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(url.clone())
            .with_timeout(timeout)
            .with_http_client(client)
            .build()
            .map_err(|e| TraceError::Exporter {
                endpoint: settings.otlp_endpoint.clone(),
                reason: e.to_string(),
            })?;
        let resource = Resource::builder_empty()
            .with_service_name(settings.service_name.clone())
            .with_attribute(KeyValue::new(
                "orderflow.components",
                components.to_string(),
            ))
            .build();
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                settings.sampling_ratio,
            ))))
            .with_resource(resource)
            .build();
        let tracer = provider.tracer("orderflow");
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        EXPORTING.store(true, Ordering::Relaxed);
        tracing::info!(url, ratio = settings.sampling_ratio, "exporting traces");
        Ok(Some(Started {
            tracing: Tracing { provider },
            tracer,
        }))
    }

    /// Send the spans still queued and stop the exporter. Blocks (up to the export timeout):
    /// call it outside the runtime's workers, after the components stopped.
    pub fn shutdown(self) {
        EXPORTING.store(false, Ordering::Relaxed);
        if let Err(error) = self.provider.shutdown() {
            eprintln!("warning: sending the last spans failed: {error}");
        }
    }
}

/// The SDK exports from a thread of its own that blocks on each request; the request itself
/// runs on the process's tokio runtime (hyper needs one), so that thread only waits.
#[derive(Debug)]
struct OnRuntime {
    runtime: tokio::runtime::Handle,
    inner: Arc<opentelemetry_http::hyper::HyperClient>,
}

#[async_trait]
impl HttpClient for OnRuntime {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let inner = Arc::clone(&self.inner);
        self.runtime
            .spawn(async move { inner.send_bytes(request).await })
            .await
            .map_err(|e| Box::new(e) as HttpError)?
    }
}

/// Writes trace context into record headers being built.
pub struct HeaderInjector {
    headers: Option<OwnedHeaders>,
}

impl HeaderInjector {
    pub fn new(headers: OwnedHeaders) -> Self {
        HeaderInjector {
            headers: Some(headers),
        }
    }

    pub fn into_headers(self) -> OwnedHeaders {
        self.headers.unwrap_or_default()
    }
}

impl Injector for HeaderInjector {
    fn set(&mut self, key: &str, value: String) {
        let headers = self.headers.take().unwrap_or_default();
        self.headers = Some(headers.insert(Header {
            key,
            value: Some(value.as_bytes()),
        }));
    }
}

/// Reads trace context from a record's headers (owned or borrowed). A header that is not
/// UTF-8 reads as absent.
pub struct HeaderExtractor<'a, H>(pub &'a H);

impl<H: Headers> Extractor for HeaderExtractor<'_, H> {
    fn get(&self, key: &str) -> Option<&str> {
        let value = self
            .0
            .iter()
            .find(|h| h.key.eq_ignore_ascii_case(key))
            .and_then(|h| std::str::from_utf8(h.value?).ok())?;
        // The SDK's parser accepts ids shorter than W3C's fixed widths; such a record is
        // treated as carrying no context (a new root), not as a trace of some other id.
        if key.eq_ignore_ascii_case(TRACEPARENT) && !well_formed(value) {
            return None;
        }
        Some(value)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|h| h.key).collect()
    }
}

/// `version-traceid-spanid-flags` with W3C's widths (2, 32, 16, 2) in lowercase hex; later
/// versions may append fields after the flags.
fn well_formed(traceparent: &str) -> bool {
    let mut fields = traceparent.split('-');
    [2, 32, 16, 2].iter().all(|width| {
        fields.next().is_some_and(|f| {
            f.len() == *width
                && f.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        })
    })
}

/// The context a record's headers carry; an empty context (so a new root) when they carry
/// none or garbage.
pub fn extract<H: Headers>(headers: Option<&H>) -> Context {
    match headers {
        Some(headers) => TraceContextPropagator::new().extract(&HeaderExtractor(headers)),
        None => Context::new(),
    }
}

/// `headers` plus the context of `span`, when export is on.
pub fn inject(headers: OwnedHeaders, span: &Span) -> OwnedHeaders {
    if !enabled() || span.is_disabled() {
        return headers;
    }
    let mut injector = HeaderInjector::new(headers);
    TraceContextPropagator::new().inject_context(&span.context(), &mut injector);
    injector.into_headers()
}

/// A span's context as text fields (`traceparent`, `tracestate`), kept in an outbox row
/// until the row is published, possibly by another process.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Carrier(pub HashMap<String, String>);

impl Injector for Carrier {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.to_string(), value);
    }
}

impl Carrier {
    /// The context of `span`; `None` when export is off or the span is disabled.
    pub fn of(span: &Span) -> Option<Carrier> {
        if !enabled() || span.is_disabled() {
            return None;
        }
        let mut carrier = Carrier::default();
        TraceContextPropagator::new().inject_context(&span.context(), &mut carrier);
        (!carrier.0.is_empty()).then_some(carrier)
    }

    /// The context of the current span (see [`Carrier::of`]).
    pub fn current() -> Option<Carrier> {
        if !enabled() {
            return None;
        }
        Carrier::of(&Span::current())
    }

    /// As stored in `pipeline.outbox.trace_context`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!(self.0)
    }

    /// From `pipeline.outbox.trace_context`; anything but an object of strings is no context.
    pub fn from_json(value: &serde_json::Value) -> Option<Carrier> {
        let object = value.as_object()?;
        let fields: HashMap<String, String> = object
            .iter()
            .filter(|(k, _)| *k == TRACEPARENT || *k == TRACESTATE)
            .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
            .collect();
        (!fields.is_empty()).then_some(Carrier(fields))
    }

    /// `headers` plus these fields, copied as they are (whoever reads them checks them), so a
    /// relay publishes a row with the context of the span that decided it whether or not it
    /// exports traces itself.
    pub fn write(&self, mut headers: OwnedHeaders) -> OwnedHeaders {
        // Sorted, so a record's headers do not depend on a map's order.
        let mut fields: Vec<_> = self.0.iter().collect();
        fields.sort();
        for (key, value) in fields {
            headers = headers.insert(Header {
                key: key.as_str(),
                value: Some(value.as_bytes()),
            });
        }
        headers
    }
}

/// What a span says about one record of the log.
#[derive(Debug, Clone, Copy)]
pub struct RecordFacts<'a> {
    pub order_id: &'a str,
    pub event_type: &'a str,
    pub partition: i32,
    pub offset: i64,
}

/// A producer's span for a new event (`create OrderCreated` for `orderflow publish`): a child
/// of the current span if there is one (an API request), else the root of a new trace — one
/// per order. Disabled when export is off.
pub fn event_span(action: &str, component: &str, order_id: &str, event_type: &str) -> Span {
    if !enabled() {
        return Span::none();
    }
    tracing::info_span!(
        target: TARGET,
        "produce",
        otel.name = %format!("{action} {event_type}"),
        otel.kind = "producer",
        order.id = order_id,
        "event.type" = event_type,
        orderflow.component = component,
    )
}

/// A consumer's span for one handled record: its parent is the context the record's headers
/// carry (a new root if they carry none), so the handling joins the order's trace. Linked to
/// `batch`, the batch it was handled in. Disabled when export is off.
pub fn consumer_span<H: Headers>(
    action: &str,
    component: &str,
    record: RecordFacts<'_>,
    headers: Option<&H>,
    batch: &Span,
) -> Span {
    if !enabled() {
        return Span::none();
    }
    let span = tracing::info_span!(
        target: TARGET,
        parent: None,
        "consume",
        otel.name = %format!("{action} {}", record.event_type),
        otel.kind = "consumer",
        order.id = record.order_id,
        "event.type" = record.event_type,
        orderflow.component = component,
        messaging.kafka.partition = record.partition,
        messaging.kafka.offset = record.offset,
    );
    let _ = span.set_parent(extract(headers));
    if !batch.is_disabled() {
        span.add_link(batch.context().span().span_context().clone());
    }
    span
}

/// A consumer's span for one batch, the current span while it is applied: a root of its own,
/// linked to the contexts of its first [`BATCH_LINKS_MAX`] records. Disabled when export is
/// off.
pub fn batch_span<'a, H, I>(component: &str, records: usize, headers: I) -> Span
where
    H: Headers + 'a,
    I: IntoIterator<Item = Option<&'a H>>,
{
    if !enabled() {
        return Span::none();
    }
    let span = tracing::info_span!(
        target: TARGET,
        parent: None,
        "batch",
        otel.name = %format!("{component} batch"),
        orderflow.component = component,
        messaging.batch.message_count = records,
    );
    for headers in headers.into_iter().take(BATCH_LINKS_MAX) {
        let context = extract(headers);
        let linked = context.span().span_context().clone();
        if linked.is_valid() {
            span.add_link(linked);
        }
    }
    span
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};

    fn sampled(trace: u128, span: u64) -> Context {
        Context::new().with_remote_span_context(SpanContext::new(
            TraceId::from(trace),
            SpanId::from(span),
            TraceFlags::SAMPLED,
            true,
            TraceState::from_key_value([("vendor", "x")]).expect("a valid trace state"),
        ))
    }

    fn injected(context: &Context) -> OwnedHeaders {
        let mut injector = HeaderInjector::new(OwnedHeaders::new().insert(Header {
            key: "event_type",
            value: Some("OrderCreated"),
        }));
        TraceContextPropagator::new().inject_context(context, &mut injector);
        injector.into_headers()
    }

    #[test]
    fn context_survives_a_round_trip_through_record_headers() {
        let context = sampled(0x0af7651916cd43dd8448eb211c80319c, 0xb7ad6b7169203331);
        let headers = injected(&context);
        let keys: Vec<&str> = headers.iter().map(|h| h.key).collect();
        assert_eq!(keys, ["event_type", TRACEPARENT, TRACESTATE]);
        let back = extract(Some(&headers));
        let span = back.span();
        let got = span.span_context();
        assert_eq!(
            got.trace_id(),
            TraceId::from(0x0af7651916cd43dd8448eb211c80319c)
        );
        assert_eq!(got.span_id(), SpanId::from(0xb7ad6b7169203331));
        assert!(got.is_sampled());
        assert!(got.is_remote());
        assert_eq!(got.trace_state().header(), "vendor=x");
    }

    #[test]
    fn missing_or_garbage_context_reads_as_none_so_a_new_root() {
        // (what, the headers the record carries)
        type Case<'a> = (&'a str, Vec<(&'a str, &'a [u8])>);
        let cases: Vec<Case> = vec![
            ("no headers at all", vec![]),
            ("other headers only", vec![("event_type", b"OrderCreated")]),
            ("not a traceparent", vec![(TRACEPARENT, b"hello")]),
            (
                "all-zero trace id",
                vec![(
                    TRACEPARENT,
                    b"00-00000000000000000000000000000000-b7ad6b7169203331-01",
                )],
            ),
            (
                "all-zero span id",
                vec![(
                    TRACEPARENT,
                    b"00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
                )],
            ),
            (
                "bad version",
                vec![(
                    TRACEPARENT,
                    b"ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                )],
            ),
            (
                "short trace id",
                vec![(TRACEPARENT, b"00-0af76519-b7ad6b7169203331-01")],
            ),
            ("not UTF-8", vec![(TRACEPARENT, &[0xff, 0xfe, 0x00, 0x2d])]),
            ("empty value", vec![(TRACEPARENT, b"")]),
            (
                "long span id",
                vec![(
                    TRACEPARENT,
                    b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b71692033310-01",
                )],
            ),
            (
                "upper-case hex",
                vec![(
                    TRACEPARENT,
                    b"00-0AF7651916CD43DD8448EB211C80319C-B7AD6B7169203331-01",
                )],
            ),
            (
                "no flags",
                vec![(
                    TRACEPARENT,
                    b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
                )],
            ),
        ];
        for (what, fields) in cases {
            let mut headers = OwnedHeaders::new();
            for (key, value) in fields {
                headers = headers.insert(Header {
                    key,
                    value: Some(value),
                });
            }
            let context = extract(Some(&headers));
            assert!(
                !context.span().span_context().is_valid(),
                "{what}: no valid parent"
            );
        }
        assert!(!extract::<OwnedHeaders>(None)
            .span()
            .span_context()
            .is_valid());
    }

    #[test]
    fn a_header_without_a_value_reads_as_absent() {
        let headers = OwnedHeaders::new().insert::<str>(Header {
            key: TRACEPARENT,
            value: None,
        });
        assert_eq!(HeaderExtractor(&headers).get(TRACEPARENT), None);
    }

    #[test]
    fn an_outbox_carrier_keeps_only_the_trace_fields_and_writes_them_as_headers() {
        let stored = serde_json::json!({
            "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "tracestate": "vendor=x",
            "other": "dropped",
            "number": 5,
        });
        let carrier = Carrier::from_json(&stored).expect("a context");
        assert_eq!(carrier.0.len(), 2);
        assert_eq!(
            Carrier::from_json(&carrier.to_json()),
            Some(carrier.clone())
        );
        let headers = carrier.write(OwnedHeaders::new());
        let context = extract(Some(&headers));
        assert_eq!(
            context.span().span_context().trace_id(),
            TraceId::from(0x0af7651916cd43dd8448eb211c80319c)
        );
        for garbage in [
            serde_json::json!(null),
            serde_json::json!([1, 2]),
            serde_json::json!({"a": "b"}),
        ] {
            assert_eq!(Carrier::from_json(&garbage), None, "{garbage}");
        }
    }

    #[test]
    fn with_export_off_nothing_is_built() {
        // Export is never started in unit tests.
        assert!(!enabled());
        assert!(event_span("create", "publish", "o-1", "OrderCreated").is_disabled());
        let headers = OwnedHeaders::new();
        let batch = batch_span("inventory", 1, [Some(&headers)]);
        assert!(batch.is_disabled());
        let facts = RecordFacts {
            order_id: "o-1",
            event_type: "OrderCreated",
            partition: 0,
            offset: 7,
        };
        assert!(consumer_span("reserve", "inventory", facts, Some(&headers), &batch).is_disabled());
        assert_eq!(Carrier::current(), None);
        let untouched = inject(OwnedHeaders::new(), &Span::current());
        assert_eq!(untouched.count(), 0);
    }

    #[test]
    fn settings_turn_export_on_only_when_valid() {
        let on = |endpoint: &str| TracingSettings {
            otlp_endpoint: endpoint.into(),
            ..TracingSettings::default()
        };
        assert_eq!(TracingSettings::default().traces_url().unwrap(), None);
        assert_eq!(
            on("http://127.0.0.1:4318").traces_url().unwrap().as_deref(),
            Some("http://127.0.0.1:4318/v1/traces")
        );
        assert_eq!(
            on("http://collector:4318/v1/traces/")
                .traces_url()
                .unwrap()
                .as_deref(),
            Some("http://collector:4318/v1/traces")
        );
        let refused = [
            (on("https://collector:4318"), "tracing.otlp_endpoint"),
            (on("collector:4318"), "tracing.otlp_endpoint"),
            (
                TracingSettings {
                    protocol: "grpc".into(),
                    ..on("http://c:4317")
                },
                "tracing.protocol",
            ),
            (
                TracingSettings {
                    sampling_ratio: 1.5,
                    ..on("http://c:4318")
                },
                "tracing.sampling_ratio",
            ),
            (
                TracingSettings {
                    service_name: " ".into(),
                    ..on("http://c:4318")
                },
                "tracing.service_name",
            ),
        ];
        for (settings, names) in refused {
            let error = settings.traces_url().expect_err("refused").to_string();
            assert!(error.starts_with(names), "{error}");
            assert!(error.contains("ORDERFLOW_TRACING__"), "{error}");
        }
    }
}
