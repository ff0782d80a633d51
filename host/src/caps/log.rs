//! `redloom:plugin/log`: guest log records into the host's `tracing` log,
//! tagged with the plugin's name.

use crate::bindings::log::{Host, Level};
use crate::store::Caps;

/// Longest message logged; the rest is cut (at a character boundary).
pub const MAX_MESSAGE_BYTES: usize = 8 << 10;

impl Host for Caps {
    async fn log(&mut self, level: Level, message: String) -> wasmtime::Result<()> {
        let mut end = message.len().min(MAX_MESSAGE_BYTES);
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        let msg = &message[..end];
        let plugin = self.plugin.name.as_str();
        match level {
            Level::Trace => tracing::trace!(target: "redloom::plugin", plugin, "{msg}"),
            Level::Debug => tracing::debug!(target: "redloom::plugin", plugin, "{msg}"),
            Level::Info => tracing::info!(target: "redloom::plugin", plugin, "{msg}"),
            Level::Warn => tracing::warn!(target: "redloom::plugin", plugin, "{msg}"),
            Level::Error => tracing::error!(target: "redloom::plugin", plugin, "{msg}"),
        }
        Ok(())
    }
}
