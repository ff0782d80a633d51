//! Pub/sub: publish on the plugin's channels; the messages and timer ticks
//! the subscription and timer triggers deliver.
//!
//! Channel names are the plugin's own (namespaced by the host) unless the
//! manifest lists them in `shared-channels`.
//!
//! ```no_run
//! # fn main() -> redloom_sdk::Result<()> {
//! let receivers = redloom_sdk::pubsub::publish("room:42", b"hello")?;
//! redloom_sdk::log::info(&format!("{receivers} subscriptions got it"));
//! # Ok(())
//! # }
//! ```

use crate::__private::bindings::redloom::plugin::pubsub as wit;
use crate::{Error, Result};

/// Publishes `payload` on `channel`; returns how many subscriptions received
/// it (Redis's count: each subscribed host counts once per matching
/// subscription). At most once: nobody subscribed, nobody gets it.
pub fn publish(channel: &str, payload: impl AsRef<[u8]>) -> Result<u32> {
    wit::publish(channel, payload.as_ref()).map_err(Error::from)
}

/// A message delivered to the message handler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The channel as the plugin names it. For a keyspace event: the key.
    pub channel: String,
    /// The manifest's pattern that matched; `None` for a plain channel;
    /// `Some("__keyspace__")` for a keyspace event.
    pub pattern: Option<String>,
    /// The payload. For a keyspace event: the event (`set`, `expired`, ...).
    pub payload: Vec<u8>,
}

impl Message {
    /// Whether this is a keyspace event on one of the plugin's keys.
    pub fn is_keyspace_event(&self) -> bool {
        self.pattern.as_deref() == Some("__keyspace__")
    }
}

/// A timer tick delivered to the timer handler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tick {
    /// The timer's name from the manifest.
    pub timer: String,
    /// When the tick was due, in milliseconds since the Unix epoch.
    pub scheduled_ms: u64,
}
