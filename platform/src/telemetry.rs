//! Structured logging with `tracing`, and the OpenTelemetry layer when traces are exported
//! ([`crate::trace`]). `RUST_LOG` filters the log; `ORDERFLOW_LOG_FORMAT=json` switches to
//! one JSON object per line for log shippers. A line logged inside a traced span carries
//! `trace_id` and `span_id` (text: at the end of the line; JSON: as fields), so a log search
//! finds the trace and the trace viewer finds the log.

use opentelemetry::trace::TraceContextExt;
use tracing::Subscriber;
use tracing_subscriber::fmt::format::{DefaultFields, Format, JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::{LookupSpan, Registry};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{filter, EnvFilter, Layer};

use crate::trace::{self, Tracing, TracingSettings};

fn log_filter() -> EnvFilter {
    EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,rdkafka=warn,sqlx=warn"))
}

/// Logging only, no trace export (commands that never touch the log; tests' children).
pub fn init() {
    let _ = start(&TracingSettings::default(), "");
}

/// Logging, plus trace export when `tracing` turns it on (`components` name what this process
/// runs). Returns the provider to shut down before exit so the last spans are sent. A second
/// call (tests) keeps the first subscriber. Must run inside a tokio runtime when export is on.
pub fn start(
    tracing: &TracingSettings,
    components: &str,
) -> Result<Option<Tracing>, trace::TraceError> {
    let json = std::env::var("ORDERFLOW_LOG_FORMAT").is_ok_and(|v| v == "json");
    let log = if json {
        tracing_subscriber::fmt::layer()
            .event_format(WithTraceIds(Format::default().json(), Kind::Json))
            .fmt_fields(JsonFields::new())
            .with_writer(std::io::stderr)
            .with_filter(log_filter())
            .boxed()
    } else {
        tracing_subscriber::fmt::layer()
            .event_format(WithTraceIds(Format::default(), Kind::Text))
            .fmt_fields(DefaultFields::new())
            .with_writer(std::io::stderr)
            .with_filter(log_filter())
            .boxed()
    };
    let Some(started) = trace::Tracing::start(tracing, components)? else {
        let _ = tracing_subscriber::registry().with(log).try_init();
        return Ok(None);
    };
    // Only this crate's trace spans, and warnings inside them (as span events), are exported.
    let exported = filter::filter_fn(|meta| {
        if meta.is_span() {
            meta.target() == trace::TARGET
        } else {
            *meta.level() <= tracing::Level::WARN
        }
    });
    let otel = tracing_opentelemetry::layer()
        .with_tracer(started.tracer)
        .with_location(false)
        .with_threads(false)
        .with_filter(exported);
    let _ = tracing_subscriber::registry()
        .with(log)
        .with(otel)
        .try_init();
    Ok(Some(started.tracing))
}

/// Logging for tests: captured per test by the test harness, shown only when a test fails.
pub fn init_for_tests() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(log_filter())
        .with_test_writer()
        .try_init();
}

#[derive(Clone, Copy)]
enum Kind {
    Text,
    Json,
}

/// A log format that adds the trace and span ids of the innermost traced span.
struct WithTraceIds<F>(F, Kind);

/// The trace and span ids of the innermost span (from the current one outwards) that has an
/// OpenTelemetry context; `None` when export is off or no traced span is active. Read from the
/// registry itself: trace spans are filtered out of the log layer, so its own view of the
/// current scope never holds them.
fn trace_ids() -> Option<(String, String)> {
    if !trace::enabled() {
        return None;
    }
    tracing::dispatcher::get_default(|dispatch| {
        let current = dispatch.current_span();
        let registry = dispatch.downcast_ref::<Registry>()?;
        let traced: Vec<tracing::span::Id> = registry
            .span(current.id()?)?
            .scope()
            .filter(|span| span.metadata().target() == trace::TARGET)
            .map(|span| span.id())
            .collect();
        traced.iter().find_map(|id| {
            let context = tracing_opentelemetry::get_otel_context(id, dispatch)?;
            let otel = context.span();
            let ids = otel.span_context();
            ids.is_valid()
                .then(|| (ids.trace_id().to_string(), ids.span_id().to_string()))
        })
    })
}

impl<S, N, F> FormatEvent<S, N> for WithTraceIds<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let Some((trace_id, span_id)) = trace_ids() else {
            return self.0.format_event(ctx, writer, event);
        };
        let mut line = String::new();
        self.0.format_event(ctx, Writer::new(&mut line), event)?;
        let body = line.trim_end_matches('\n');
        match self.1 {
            Kind::Text => writeln!(writer, "{body} trace_id={trace_id} span_id={span_id}"),
            Kind::Json => match body.strip_prefix('{') {
                Some(rest) => writeln!(
                    writer,
                    "{{\"trace_id\":\"{trace_id}\",\"span_id\":\"{span_id}\",{rest}"
                ),
                None => writeln!(writer, "{body}"),
            },
        }
    }
}
