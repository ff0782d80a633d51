//! The host's log: its format (text for people, JSON lines for log
//! collectors) and the access log, one record per HTTP request and per
//! trigger invocation.
//!
//! Every record goes through `tracing`; which ones are written is decided
//! by the level filter (`-v`, `RUST_LOG`). Access records have the target
//! [`ACCESS`] at `info` level, so `serve` writes them by default and
//! `RUST_LOG=info,redloom::access=off` turns them off. Plugin `log` calls
//! have the target `redloom::plugin` and carry the plugin's name and the
//! level it asked for (`caps/log.rs`).
//!
//! Outcomes are [`crate::stats::Outcome::label`]s.
//!
//! Field values are written escaped in both formats (quoted `Debug` text,
//! JSON strings), so nothing a client or plugin sends (a path, a header, a
//! log message) can start a new line or forge a field.

use std::io::IsTerminal;
use std::time::Duration;

use crate::handler::HandlerKind;

/// The target of access records.
pub const ACCESS: &str = "redloom::access";

/// How log records are written on standard error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// One human-readable line per record (colours on a terminal).
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`, `message`
    /// and the record's fields at the top level.
    Json,
}

impl LogFormat {
    /// `text` or `json`.
    pub fn parse(s: &str) -> Result<LogFormat, String> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!(
                "log format must be `text` or `json`, not `{other}`"
            )),
        }
    }
}

/// Where traces go: OpenTelemetry over OTLP/HTTP.
#[derive(Debug, Clone, Default)]
pub struct Telemetry {
    /// The collector's base URL (`/v1/traces` is added); `None`: no traces
    /// unless `OTEL_EXPORTER_OTLP_ENDPOINT` or
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set.
    pub endpoint: Option<String>,
    /// `service.name` [default: `OTEL_SERVICE_NAME`, else redloom].
    pub service_name: Option<String>,
}

/// The target of the spans exported as traces: requests, queue and pub/sub
/// messages, invocations, capability calls (`caps::traced!`).
pub const SPANS: &str = "redloom::otel";

static TRACING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether traces are exported: spans are only made then.
pub fn tracing_on() -> bool {
    TRACING.load(std::sync::atomic::Ordering::Relaxed)
}

/// Flushes and stops the trace exporter when dropped (at exit).
pub struct TelemetryGuard(Option<opentelemetry_sdk::trace::SdkTracerProvider>);

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(p) = self.0.take()
            && let Err(e) = p.shutdown()
        {
            eprintln!("warning: flushing traces at exit: {e}");
        }
    }
}

/// Installs the global log subscriber writing to standard error in
/// `format`, filtered by `RUST_LOG` if set and by `default` otherwise, and
/// the trace exporter if `telemetry` (or the `OTEL_*` variables) name a
/// collector. Does nothing if one is installed already (tests).
pub fn init(format: LogFormat, default: &str, telemetry: &Telemetry) -> TelemetryGuard {
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = match format {
        LogFormat::Text => fmt
            .with_ansi(std::io::stderr().is_terminal())
            .with_filter(filter)
            .boxed(),
        LogFormat::Json => fmt
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_filter(filter)
            .boxed(),
    };
    let (otel, provider) = match tracer(telemetry) {
        Ok(Some((layer, provider))) => (Some(layer), Some(provider)),
        Ok(None) => (None, None),
        Err(e) => {
            eprintln!("warning: traces are off: {e}");
            (None, None)
        }
    };
    let mut layers = vec![fmt];
    layers.extend(otel);
    let installed = tracing_subscriber::registry()
        .with(layers)
        .try_init()
        .is_ok();
    if installed && provider.is_some() {
        TRACING.store(true, std::sync::atomic::Ordering::Relaxed);
        opentelemetry::global::set_text_map_propagator(
            opentelemetry_sdk::propagation::TraceContextPropagator::new(),
        );
    }
    TelemetryGuard(provider.filter(|_| installed))
}

type OtelLayer = Box<dyn tracing_subscriber::Layer<tracing_subscriber::Registry> + Send + Sync>;

/// The exporting layer, if a collector is configured: spans of [`SPANS`]
/// (requests, messages, invocations, capability calls) go to it, nothing
/// else.
fn tracer(
    telemetry: &Telemetry,
) -> Result<Option<(OtelLayer, opentelemetry_sdk::trace::SdkTracerProvider)>, String> {
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_otlp::WithExportConfig as _;
    use tracing_subscriber::Layer as _;
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let traces_endpoint = env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT");
    let base = env("OTEL_EXPORTER_OTLP_ENDPOINT").or_else(|| telemetry.endpoint.clone());
    let endpoint = match (traces_endpoint, base) {
        (Some(full), _) => full,
        (None, Some(base)) => format!("{}/v1/traces", base.trim_end_matches('/')),
        (None, None) => return Ok(None),
    };
    let protocol = match env("OTEL_EXPORTER_OTLP_PROTOCOL").as_deref() {
        None | Some("http/protobuf") => opentelemetry_otlp::Protocol::HttpBinary,
        Some("http/json") => opentelemetry_otlp::Protocol::HttpJson,
        Some(other) => {
            return Err(format!(
                "OTEL_EXPORTER_OTLP_PROTOCOL={other}: only http/protobuf and http/json are supported"
            ));
        }
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(endpoint)
        .with_protocol(protocol)
        .build()
        .map_err(|e| format!("the OTLP exporter: {e}"))?;
    let service = env("OTEL_SERVICE_NAME")
        .or_else(|| telemetry.service_name.clone())
        .unwrap_or_else(|| "redloom".to_string());
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name(service)
                .build(),
        )
        .build();
    let layer = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("redloom"))
        .with_filter(
            tracing_subscriber::filter::Targets::new().with_target(SPANS, tracing::Level::INFO),
        )
        .boxed();
    Ok(Some((layer, provider)))
}

/// The W3C `traceparent` (and `tracestate`) of the current span, as
/// headers to carry in an outbound request or a queue message; empty when
/// traces are off.
pub fn trace_headers() -> Vec<(String, String)> {
    if !tracing_on() {
        return Vec::new();
    }
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    let context = tracing::Span::current().context();
    let mut headers = Vec::new();
    opentelemetry::global::get_text_map_propagator(|p| {
        p.inject_context(&context, &mut Injector(&mut headers))
    });
    headers
}

/// Makes `span` a child of the trace named by `headers`' `traceparent`, if
/// there is one (an incoming request's, a queue message's).
pub fn continue_trace<'a>(span: &tracing::Span, headers: impl Iterator<Item = (&'a str, &'a str)>) {
    if !tracing_on() {
        return;
    }
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    let headers: Vec<(&str, &str)> = headers.collect();
    let parent =
        opentelemetry::global::get_text_map_propagator(|p| p.extract(&Extractor(&headers)));
    let _ = span.set_parent(parent);
}

/// A consumer span for a message taken from `destination` (a queue or
/// pub/sub channel), continuing the producer's trace from the message's
/// `headers` (its `traceparent`); none when traces are off.
pub fn consumer_span<'a>(
    destination: &str,
    headers: impl Iterator<Item = (&'a str, &'a str)>,
) -> tracing::Span {
    if !tracing_on() {
        return tracing::Span::none();
    }
    let span = tracing::info_span!(
        target: SPANS,
        "message",
        otel.name = format!("{destination} process"),
        otel.kind = "consumer",
        messaging.destination.name = destination,
    );
    continue_trace(&span, headers);
    span
}

/// The trace id of the current span (hex), for access records; `None`
/// when traces are off.
pub fn current_trace_id() -> Option<String> {
    if !tracing_on() {
        return None;
    }
    trace_id(&tracing::Span::current())
}

/// The trace id of `span` (hex), for access records; `None` when traces
/// are off.
pub fn trace_id(span: &tracing::Span) -> Option<String> {
    if !tracing_on() {
        return None;
    }
    use opentelemetry::trace::TraceContextExt as _;
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    let id = span.context().span().span_context().trace_id();
    (id != opentelemetry::trace::TraceId::INVALID).then(|| id.to_string())
}

/// What starts a pub/sub payload that carries a trace context: this
/// marker, the W3C `traceparent`, a NUL, then the plugin's payload. Pub/sub
/// has no headers, so with traces on a publish wraps its payload this way
/// ([`wrap_payload`]) and every subscribing host unwraps it
/// ([`unwrap_payload`]) before the plugin sees it, traces on or off.
pub const TRACE_ENVELOPE: &[u8] = b"\0redloom-trace\0";

/// `payload` wrapped with the current trace context, when traces are on.
pub fn wrap_payload(payload: &[u8]) -> Option<Vec<u8>> {
    let traceparent = trace_headers()
        .into_iter()
        .find(|(k, _)| k == "traceparent")?
        .1;
    let mut out = Vec::with_capacity(TRACE_ENVELOPE.len() + traceparent.len() + 1 + payload.len());
    out.extend_from_slice(TRACE_ENVELOPE);
    out.extend_from_slice(traceparent.as_bytes());
    out.push(0);
    out.extend_from_slice(payload);
    Some(out)
}

/// The trace context and the plugin's payload of a pub/sub payload: as is
/// when it carries no (well-formed) envelope.
pub fn unwrap_payload(bytes: &[u8]) -> (Option<&str>, &[u8]) {
    let unwrapped = bytes.strip_prefix(TRACE_ENVELOPE).and_then(|rest| {
        let end = rest.iter().take(128).position(|b| *b == 0)?;
        let traceparent = std::str::from_utf8(&rest[..end]).ok()?;
        traceparent
            .bytes()
            .all(|b| b.is_ascii_hexdigit() || b == b'-')
            .then_some((traceparent, &rest[end + 1..]))
    });
    match unwrapped {
        Some((tp, payload)) => (Some(tp), payload),
        None => (None, bytes),
    }
}

struct Injector<'a>(&'a mut Vec<(String, String)>);

impl opentelemetry::propagation::Injector for Injector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.push((key.to_string(), value));
    }
}

struct Extractor<'a>(&'a [(&'a str, &'a str)]);

impl opentelemetry::propagation::Extractor for Extractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| *v)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| *k).collect()
    }
}

/// One HTTP request answered by `serve`'s trigger listener: its method and
/// path, the status sent, the plugin routed to (`None`: no route, or not
/// loaded), how long it took, the client's address, and the trace id when
/// traces are on.
pub fn http(
    method: &str,
    path: &str,
    status: u16,
    plugin: Option<&str>,
    took: Duration,
    client: &str,
    trace_id: Option<&str>,
) {
    tracing::info!(
        target: ACCESS,
        kind = "http",
        method,
        path,
        status,
        plugin = plugin.unwrap_or("-"),
        duration_us = micros(took),
        client,
        trace_id,
        "{method} {path} {status}"
    );
}

/// One trigger invocation (a pub/sub message, a timer tick, a queue
/// message): the plugin and handler, what triggered it (`source`: the
/// channel, timer or queue and message id), how it ended (an
/// [`Outcome::label`], or `not-loaded`) and how long it took.
pub fn invocation(
    plugin: &str,
    handler: HandlerKind,
    source: &str,
    outcome: &str,
    took: Duration,
    trace_id: Option<&str>,
) {
    tracing::info!(
        target: ACCESS,
        kind = handler.name(),
        plugin,
        source,
        outcome,
        duration_us = micros(took),
        trace_id,
        "{plugin} {} {outcome}",
        handler.name()
    );
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An envelope round-trips; a payload without one, or with a broken
    /// one, is left as it is.
    #[test]
    fn envelopes_unwrap() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let mut wrapped = TRACE_ENVELOPE.to_vec();
        wrapped.extend_from_slice(tp.as_bytes());
        wrapped.push(0);
        wrapped.extend_from_slice(b"hello\0world");
        assert_eq!(unwrap_payload(&wrapped), (Some(tp), &b"hello\0world"[..]));
        assert_eq!(unwrap_payload(b"plain"), (None, &b"plain"[..]));
        let mut broken = TRACE_ENVELOPE.to_vec();
        broken.extend_from_slice(b"not hex\0x");
        assert_eq!(unwrap_payload(&broken), (None, broken.as_slice()));
        assert_eq!(wrap_payload(b"x"), None, "traces are off in unit tests");
    }

    #[test]
    fn formats_parse() {
        assert_eq!(LogFormat::parse("json"), Ok(LogFormat::Json));
        assert_eq!(LogFormat::parse("text"), Ok(LogFormat::Text));
        let e = LogFormat::parse("yaml").unwrap_err();
        assert!(e.contains("`yaml`"), "{e}");
    }
}
