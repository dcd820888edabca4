//! Logs and traces. Logs go to stderr through `tracing` (filter with `RUST_LOG`). Spans
//! are also OpenTelemetry spans, and their W3C trace context (`traceparent`) travels in
//! Kafka headers, so the spans of one series in every service share one trace.

use std::collections::HashMap;

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

use crate::bus::Message;

/// Keeps the trace exporter of a service running. Dropping it exports the spans still
/// queued, so keep it until the service has stopped.
#[must_use = "dropping the guard stops the trace export"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            if let Err(e) = provider.shutdown() {
                eprintln!("Exporting the last spans failed: {e}");
            }
        }
    }
}

/// Returns the value of the first of `names` that is set and not empty.
fn env_value(names: &[&str]) -> Option<String> {
    names
        .iter()
        .find_map(|name| std::env::var(name).ok().filter(|v| !v.trim().is_empty()))
}

/// Builds the OTLP span exporter that the standard `OTEL_EXPORTER_OTLP_*` variables ask
/// for, or returns why there is none. Without an endpoint nothing is exported.
fn otlp_exporter() -> Result<Option<opentelemetry_otlp::SpanExporter>, String> {
    use opentelemetry_otlp::{Protocol, WithExportConfig};

    let disabled = env_value(&["OTEL_SDK_DISABLED"]).is_some_and(|v| v.eq_ignore_ascii_case("true"))
        || env_value(&["OTEL_TRACES_EXPORTER"]).is_some_and(|v| v.eq_ignore_ascii_case("none"));
    let endpoint = env_value(&["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"]);
    if disabled || endpoint.is_none() {
        return Ok(None);
    }
    let protocol = match env_value(&["OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"]).as_deref() {
        None | Some("http/protobuf") => Protocol::HttpBinary,
        Some("http/json") => Protocol::HttpJson,
        Some(other) => {
            return Err(format!(
                "OTLP protocol {other:?} is not supported: set OTEL_EXPORTER_OTLP_PROTOCOL to http/protobuf or http/json and the endpoint to the collector's HTTP port (usually 4318)"
            ))
        }
    };
    // The endpoint and headers come from the same variables, read by the exporter.
    opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(protocol)
        .build()
        .map(Some)
        .map_err(|e| format!("cannot build the OTLP exporter: {e}"))
}

/// Installs the log and trace subscriber for `service`. Spans are exported by OTLP over
/// HTTP when `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is
/// set, with `service.name` = `service`; otherwise they only carry the trace context
/// between services. Does nothing when a subscriber is already installed (tests).
pub fn init(service: &'static str) -> Telemetry {
    let exporter = otlp_exporter();
    let mut builder = SdkTracerProvider::builder().with_resource(
        opentelemetry_sdk::Resource::builder()
            .with_service_name(service)
            .build(),
    );
    let (exporting, failure) = match exporter {
        Ok(Some(exporter)) => {
            builder = builder.with_batch_exporter(exporter);
            (true, None)
        }
        Ok(None) => (false, None),
        Err(reason) => (false, Some(reason)),
    };
    let provider = builder.build();
    let tracer = provider.tracer(service);
    opentelemetry::global::set_tracer_provider(provider.clone());
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
        )
        .with(tracing_opentelemetry::layer().with_tracer(tracer))
        .try_init();
    if exporting {
        tracing::info!(
            endpoint = env_value(&["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"]).unwrap_or_default(),
            "Exporting traces by OTLP."
        );
    }
    if let Some(reason) = failure {
        tracing::warn!("Traces are not exported: {reason}");
    }
    Telemetry {
        provider: Some(provider),
    }
}

/// Returns the trace context of the current span as Kafka headers (`traceparent`, and
/// `tracestate` when set). The list is empty when tracing is not initialised.
pub fn current_trace_headers() -> Vec<(String, Vec<u8>)> {
    let context = tracing::Span::current().context();
    if !context.span().span_context().is_valid() {
        return Vec::new();
    }
    let mut carrier: HashMap<String, String> = HashMap::new();
    TraceContextPropagator::new().inject_context(&context, &mut carrier);
    let mut headers: Vec<(String, Vec<u8>)> = carrier.into_iter().map(|(k, v)| (k, v.into_bytes())).collect();
    headers.sort();
    headers
}

struct HeaderExtractor<'a>(&'a [(String, Vec<u8>)]);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| k.as_str()).collect()
    }
}

/// Creates a span for handling `message`, child of the trace context in its headers when
/// there is one.
pub fn message_span(service: &str, message: &Message) -> tracing::Span {
    let span = tracing::info_span!(
        "handle",
        service,
        topic = %message.topic,
        partition = message.partition,
        offset = message.offset
    );
    adopt_parent(&span, &message.headers);
    span
}

/// Makes `span` a child of the trace context in `headers`, when they carry one.
pub fn adopt_parent(span: &tracing::Span, headers: &[(String, Vec<u8>)]) {
    let parent = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
}

/// Returns the trace id of a span as 32 hex digits, when tracing is on.
pub fn trace_id(span: &tracing::Span) -> Option<String> {
    let context = span.context();
    let span_context = context.span().span_context().clone();
    span_context.is_valid().then(|| span_context.trace_id().to_string())
}

/// Current time as RFC 3339 UTC with milliseconds, the format of event timestamps.
pub fn now_rfc3339() -> String {
    format_rfc3339(time::OffsetDateTime::now_utc())
}

/// Formats a time as RFC 3339 UTC with milliseconds.
pub fn format_rfc3339(t: time::OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

/// Parses an RFC 3339 time.
pub fn parse_rfc3339(text: &str) -> Option<time::OffsetDateTime> {
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_context_travels_in_headers() {
        let _telemetry = init("test");
        let producer_span = tracing::info_span!("produce");
        let headers = producer_span.in_scope(current_trace_headers);
        let traceparent = headers.iter().find(|(k, _)| k == "traceparent").expect("a traceparent header");
        let text = String::from_utf8(traceparent.1.clone()).unwrap();
        assert_eq!(text.split('-').count(), 4, "{text}");
        let message = Message {
            topic: "t".into(),
            partition: 0,
            offset: 0,
            key: None,
            payload: Vec::new(),
            headers,
        };
        let consumer_span = message_span("test", &message);
        assert_eq!(trace_id(&consumer_span), trace_id(&producer_span));
        assert!(text.contains(&trace_id(&producer_span).unwrap()));
    }

    #[test]
    fn timestamps_round_trip() {
        let t = time::OffsetDateTime::from_unix_timestamp_nanos(1_764_914_400_123_000_000).unwrap();
        let text = format_rfc3339(t);
        assert_eq!(text, "2025-12-05T06:00:00.123Z");
        assert_eq!(parse_rfc3339(&text), Some(t));
    }
}
