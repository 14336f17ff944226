//! Tracing set-up shared by both binaries: logs to stderr and, with
//! `OTEL_EXPORTER_OTLP_ENDPOINT` set, OpenTelemetry traces over OTLP/HTTP
//! (protobuf) to `{endpoint}/v1/traces` (SPEC §15). The service is
//! `OTEL_SERVICE_NAME`, or the binary's name. Unset, no exporter, no
//! OpenTelemetry layer: spans cost what they cost before.
//!
//! Every span is exported (no sampling here): the volume is one trace per
//! request, and sampling is the collector's or Datadog's to decide, where
//! it can keep whole traces. `LOG_FORMAT=json` lines written inside a span
//! carry its `trace_id` and `span_id`, so logs join their trace.

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::LogFormat;

/// Whether spans are exported: spans that only tracing would see (one per
/// event fanned out, one per attempt) are not made otherwise.
static EXPORTING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

pub fn exporting_traces() -> bool {
    EXPORTING.load(std::sync::atomic::Ordering::Relaxed)
}

/// The exporting provider, for `flush` (Lambda, before it is frozen).
static PROVIDER: std::sync::OnceLock<SdkTracerProvider> = std::sync::OnceLock::new();

/// Sends the spans buffered so far: a Lambda function is frozen between
/// invocations, so it flushes at the end of each.
pub fn flush() {
    if let Some(provider) = PROVIDER.get() {
        if let Err(e) = provider.force_flush() {
            tracing::warn!(error = %e, "exporting traces failed");
        }
    }
}

/// Keeps the exporter; `shutdown` sends what is still buffered.
#[must_use]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports the spans still buffered (at most a few seconds).
    pub fn shutdown(self) {
        if let Some(provider) = self.provider {
            if let Err(e) = provider.shutdown() {
                eprintln!("exporting the last traces failed: {e}");
            }
        }
    }
}

/// Logs to stderr (`RUST_LOG` overrides the default levels) and, when
/// configured, traces; `service` names this binary in them.
pub fn init(format: LogFormat, service: &str) -> Telemetry {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,tower_http=info"));
    let provider = exporting(service);
    // Spans are exported whatever `RUST_LOG` says (it filters the logs
    // only): this crate's spans, at info and above.
    let otel = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("mechanica"))
            .with_tracked_inactivity(false)
            .with_filter(Targets::new().with_target("mechanica", tracing::Level::INFO))
    });
    let logs = match format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .fmt_fields(JsonFields::new())
            .event_format(WithTraceIds(
                tracing_subscriber::fmt::format()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true),
            ))
            .with_writer(std::io::stderr)
            .boxed(),
        // Colours for a terminal only: in a file or a collector's pipe they
        // are noise in every line.
        LogFormat::Pretty => tracing_subscriber::fmt::layer()
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_writer(std::io::stderr)
            .boxed(),
    }
    .with_filter(filter);
    // Already set (tests start several apps in one process): keep the first.
    let _ = tracing_subscriber::registry()
        .with(otel)
        .with(logs)
        .try_init();
    Telemetry { provider }
}

/// The tracer provider, if `OTEL_EXPORTER_OTLP_ENDPOINT` asks for one.
fn exporting(service: &str) -> Option<SdkTracerProvider> {
    std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT")
        .ok()
        .filter(|e| !e.trim().is_empty())?;
    // The exporter reads the endpoint (and OTEL_EXPORTER_OTLP_HEADERS,
    // _TIMEOUT) itself, adding `/v1/traces`.
    let exporter = match opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()
    {
        Ok(exporter) => exporter,
        Err(e) => {
            eprintln!("OTEL_EXPORTER_OTLP_ENDPOINT: no trace exporter: {e}");
            return None;
        }
    };
    let name = std::env::var("OTEL_SERVICE_NAME")
        .ok()
        .filter(|n| !n.trim().is_empty())
        .unwrap_or_else(|| service.to_string());
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name(name)
                .build(),
        )
        .build();
    let _ = PROVIDER.set(provider.clone());
    EXPORTING.store(true, std::sync::atomic::Ordering::Relaxed);
    Some(provider)
}

/// The W3C `traceparent` of the current span, if a trace is being recorded.
pub fn current_traceparent() -> Option<String> {
    if !exporting_traces() {
        return None;
    }
    traceparent_of(&tracing::Span::current())
}

/// The W3C `traceparent` of `span`, if a trace is being recorded.
pub fn traceparent_of(span: &tracing::Span) -> Option<String> {
    let context = span.context();
    if !context.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = Carrier::default();
    TraceContextPropagator::new().inject_context(&context, &mut carrier);
    carrier.traceparent
}

/// Makes the span a child of the trace `traceparent` names (a malformed
/// or absent one leaves it where it is).
pub fn continue_trace(span: &tracing::Span, traceparent: Option<&str>) {
    let Some(traceparent) = traceparent.filter(|_| exporting_traces()) else {
        return;
    };
    let carrier = Carrier {
        traceparent: Some(traceparent.to_string()),
    };
    let context = TraceContextPropagator::new().extract(&carrier);
    if context.span().span_context().is_valid() {
        let _ = span.set_parent(context);
    }
}

/// Links the span to the traces `traceparents` name: a batch that serves
/// many requests (the relay's publish) belongs to none of them.
pub fn link_traces<'a>(span: &tracing::Span, traceparents: impl IntoIterator<Item = &'a str>) {
    for traceparent in traceparents {
        let carrier = Carrier {
            traceparent: Some(traceparent.to_string()),
        };
        let context = TraceContextPropagator::new().extract(&carrier);
        let linked = context.span().span_context().clone();
        if linked.is_valid() {
            span.add_link(linked);
        }
    }
}

/// Names the span's exported counterpart (`otel.name` recorded after the
/// span started is not applied).
pub fn rename(span: &tracing::Span, name: String) {
    span.context().span().update_name(name);
}

/// The `traceparent` header of a request, for `continue_trace`.
pub fn traceparent_header(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .filter(|v| v.len() <= 128)
}

/// Holds the one field the W3C propagator reads and writes.
#[derive(Default)]
struct Carrier {
    traceparent: Option<String>,
}

impl Injector for Carrier {
    fn set(&mut self, key: &str, value: String) {
        if key == "traceparent" {
            self.traceparent = Some(value);
        }
    }
}

impl Extractor for Carrier {
    fn get(&self, key: &str) -> Option<&str> {
        (key == "traceparent")
            .then_some(self.traceparent.as_deref())
            .flatten()
    }

    fn keys(&self) -> Vec<&str> {
        vec!["traceparent"]
    }
}

/// The JSON line of an event, with the current span's `trace_id` and
/// `span_id` at its top level when a trace is being recorded.
struct WithTraceIds<F>(F);

impl<S, N, F> FormatEvent<S, N> for WithTraceIds<F>
where
    F: FormatEvent<S, N>,
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let mut line = String::new();
        self.0.format_event(ctx, Writer::new(&mut line), event)?;
        let span = tracing::Span::current();
        let ids = (!span.is_none())
            .then(|| span.context().span().span_context().clone())
            .filter(|c| c.is_valid());
        let parsed = ids.as_ref().and_then(|_| {
            serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(line.trim_end()).ok()
        });
        match (ids, parsed) {
            (Some(ids), Some(mut fields)) => {
                fields.insert("trace_id".into(), ids.trace_id().to_string().into());
                fields.insert("span_id".into(), ids.span_id().to_string().into());
                writeln!(writer, "{}", serde_json::Value::Object(fields))
            }
            _ => writer.write_str(&line),
        }
    }
}
