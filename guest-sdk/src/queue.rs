//! Work queues: enqueue messages; consume them with the queue handler
//! ([`crate::OnJob`]).
//!
//! ```no_run
//! use std::time::Duration;
//! use redloom_sdk::queue::{self, EnqueueOptions};
//! # fn main() -> redloom_sdk::Result<()> {
//! let id = queue::enqueue("video:ingest", b"s3://bucket/cat.mp4", EnqueueOptions::default())?;
//! // At most one message per upload, run in a minute, 3 attempts.
//! queue::enqueue(
//!     "video:ingest",
//!     b"s3://bucket/dog.mp4",
//!     EnqueueOptions::default()
//!         .dedupe_id("upload-42")
//!         .delay(Duration::from_secs(60))
//!         .max_attempts(3),
//! )?;
//! # let _ = id;
//! # Ok(())
//! # }
//! ```

use std::time::Duration;

use crate::__private::bindings::redloom::plugin::queue as wit;
use crate::{Error, Result};

/// Options for [`enqueue`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EnqueueOptions {
    pub delay: Option<Duration>,
    pub dedupe_id: Option<String>,
    pub dedupe_window: Option<Duration>,
    pub max_attempts: Option<u32>,
    pub headers: Vec<(String, String)>,
}

impl EnqueueOptions {
    /// Deliver no earlier than `delay` from now.
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = Some(delay);
        self
    }

    /// A second enqueue with this id inside the dedupe window adds nothing
    /// and returns the first message's id.
    pub fn dedupe_id(mut self, id: impl Into<String>) -> Self {
        self.dedupe_id = Some(id.into());
        self
    }

    /// How long the dedupe id is remembered (default 24 hours).
    pub fn dedupe_window(mut self, window: Duration) -> Self {
        self.dedupe_window = Some(window);
        self
    }

    /// Attempts before the dead letters (default: the consumer's `max-attempts`).
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = Some(n);
        self
    }

    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Adds a message to `queue` and returns its id. Fails with
/// `QuotaExceeded(Payload)` when the queue is full (`queue-max-length`).
pub fn enqueue(queue: &str, payload: impl AsRef<[u8]>, options: EnqueueOptions) -> Result<String> {
    let o = wit::EnqueueOptions {
        delay_ms: options.delay.map(millis),
        dedupe_id: options.dedupe_id,
        dedupe_window_ms: options.dedupe_window.map(millis),
        max_attempts: options.max_attempts,
        headers: options.headers,
    };
    wit::enqueue(queue, payload.as_ref(), &o).map_err(Error::from)
}

/// A message delivered to the queue handler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    /// The queue, as the plugin names it.
    pub queue: String,
    /// The message id, stable across retries.
    pub id: String,
    pub payload: Vec<u8>,
    pub headers: Vec<(String, String)>,
    /// 1 for the first delivery.
    pub attempt: u32,
    /// When it was enqueued, milliseconds since the Unix epoch.
    pub enqueued_ms: u64,
}
