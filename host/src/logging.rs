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

/// Installs the global log subscriber writing to standard error in
/// `format`, filtered by `RUST_LOG` if set and by `default` otherwise.
/// Does nothing if one is installed already (tests).
pub fn init(format: LogFormat, default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .try_init(),
    };
}

/// One HTTP request answered by `serve`'s trigger listener: its method and
/// path, the status sent, the plugin routed to (`None`: no route, or not
/// loaded), how long it took, and the client's address.
pub fn http(
    method: &str,
    path: &str,
    status: u16,
    plugin: Option<&str>,
    took: Duration,
    client: &str,
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
        "{method} {path} {status}"
    );
}

/// One trigger invocation (a pub/sub message, a timer tick, a queue
/// message): the plugin and handler, what triggered it (`source`: the
/// channel, timer or queue and message id), how it ended (an
/// [`Outcome::label`], or `not-loaded`) and how long it took.
pub fn invocation(plugin: &str, handler: HandlerKind, source: &str, outcome: &str, took: Duration) {
    tracing::info!(
        target: ACCESS,
        kind = handler.name(),
        plugin,
        source,
        outcome,
        duration_us = micros(took),
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

    #[test]
    fn formats_parse() {
        assert_eq!(LogFormat::parse("json"), Ok(LogFormat::Json));
        assert_eq!(LogFormat::parse("text"), Ok(LogFormat::Text));
        let e = LogFormat::parse("yaml").unwrap_err();
        assert!(e.contains("`yaml`"), "{e}");
    }
}
