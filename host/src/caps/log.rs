//! `redloom:plugin/log`: guest log records into the host's `tracing` log,
//! tagged with the plugin's name; the guest's stdout and stderr lines go
//! the same way (`store.rs`).
//!
//! Everything a plugin logs is hostile input to the host's log:
//! - control characters are escaped (`\n` becomes the two characters
//!   `\` `n`), so a message is always one line and cannot forge another
//!   line, another plugin's name, or terminal escapes;
//! - a message is cut at [`MAX_MESSAGE_BYTES`];
//! - an invocation may log at most `max-log` bytes, and the plugin as a
//!   whole `log-rate` bytes per second; what is over is dropped and counted
//!   (`redloom_log_dropped_total`), with one warning per plugin per
//!   [`DROP_WARNING_EVERY`].

use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::{Caps, PluginContext};
use crate::bindings::log::{Host, Level};

/// Longest message logged; the rest is cut (at a character boundary).
pub const MAX_MESSAGE_BYTES: usize = 8 << 10;

/// How often, at most, the host warns that a plugin's log output is dropped.
pub const DROP_WARNING_EVERY: Duration = Duration::from_secs(60);

/// `text` with every control character except tab escaped: `\n`, `\r`, and
/// `\u{..}` for the rest (escape sequences, NUL, ...).
pub fn escape_controls(text: &str) -> Cow<'_, str> {
    if !text.chars().any(|c| c.is_control() && c != '\t') {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\t' => out.push('\t'),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => out.push_str(&c.escape_unicode().to_string()),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// Whether `bytes` more may be logged by the current invocation (which has
/// logged `used` so far) and the plugin; charges them if so, counts a drop
/// if not.
pub fn admit(plugin: &PluginContext, used: &AtomicU64, bytes: usize) -> bool {
    let bytes = bytes as u64;
    let within_invocation = used.load(Ordering::Relaxed) + bytes <= plugin.quotas.max_log;
    let admitted = within_invocation
        && plugin
            .log_rate
            .lock()
            .expect("log bucket poisoned")
            .try_take(bytes);
    if admitted {
        used.fetch_add(bytes, Ordering::Relaxed);
    } else {
        plugin.stats.dropped_log();
        plugin.warn_log_dropped();
    }
    admitted
}

/// Logs one record of `plugin` at `level`, if its budgets allow.
pub fn emit(plugin: &PluginContext, used: &AtomicU64, level: Level, message: &str, stream: &str) {
    let mut end = message.len().min(MAX_MESSAGE_BYTES);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    let msg = &message[..end];
    if !admit(plugin, used, msg.len()) {
        return;
    }
    let msg = escape_controls(msg);
    let name = plugin.name.as_str();
    match level {
        Level::Trace => tracing::trace!(target: "redloom::plugin", plugin = name, stream, "{msg}"),
        Level::Debug => tracing::debug!(target: "redloom::plugin", plugin = name, stream, "{msg}"),
        Level::Info => tracing::info!(target: "redloom::plugin", plugin = name, stream, "{msg}"),
        Level::Warn => tracing::warn!(target: "redloom::plugin", plugin = name, stream, "{msg}"),
        Level::Error => tracing::error!(target: "redloom::plugin", plugin = name, stream, "{msg}"),
    }
}

impl Host for Caps {
    async fn log(&mut self, level: Level, message: String) -> wasmtime::Result<()> {
        emit(&self.plugin, &self.log_used, level, &message, "log");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A newline cannot start a new log line; escapes and NUL are shown,
    /// tabs and other text pass unchanged.
    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(escape_controls("plain\ttext é"), "plain\ttext é");
        assert!(matches!(escape_controls("plain"), Cow::Borrowed(_)));
        assert_eq!(
            escape_controls("ok\n2026-01-01 INFO plugin=other: forged\r"),
            "ok\\n2026-01-01 INFO plugin=other: forged\\r"
        );
        assert_eq!(escape_controls("\u{1b}[31mred\0"), "\\u{1b}[31mred\\u{0}");
        assert_eq!(escape_controls("\u{85}"), "\\u{85}");
    }
}
