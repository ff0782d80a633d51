//! `redloom:plugin/queue`: enqueue onto the plugin's queues (or the shared
//! queues its manifest lists). Consumption is the queue trigger
//! (`crate::triggers::queue`).

use super::Caps;
use super::common::invalid;
use crate::bindings::queue::{EnqueueOptions, Host};
use crate::bindings::types::Error;
use crate::quota::Quota;
use crate::quota::QuotaTrap;
use crate::redis::queue::Enqueued;

/// Default dedupe window: 24 hours.
const DEFAULT_DEDUPE_WINDOW_MS: u64 = 24 * 3600 * 1000;

/// Longest delay and dedupe window: 366 days (Redis takes far longer
/// expiries, but a larger value is a mistake, and `u64::MAX` overflows them).
pub const MAX_QUEUE_WAIT_MS: u64 = 366 * 24 * 3600 * 1000;

/// Most attempts one message may be given.
pub const MAX_ATTEMPTS: u32 = 1000;

/// Longest dedupe id, in bytes.
pub const MAX_DEDUPE_ID: usize = 256;

impl Caps {
    /// Every argument is checked before the one script that writes runs, so
    /// an `invalid-argument` error means nothing was enqueued.
    async fn enqueue(
        &mut self,
        queue: &str,
        payload: &[u8],
        options: EnqueueOptions,
    ) -> Result<String, Error> {
        let shared = crate::namespace::is_shared(&self.plugin.queues.shared, queue);
        let keys = self
            .plugin
            .namespace
            .queue(queue, shared)
            .map_err(|e| invalid(e.to_string()))?;
        if options
            .dedupe_id
            .as_deref()
            .is_some_and(|d| d.is_empty() || d.len() > MAX_DEDUPE_ID)
        {
            return Err(invalid(format!("a dedupe id is 1-{MAX_DEDUPE_ID} bytes")));
        }
        let delay_ms = options.delay_ms.unwrap_or(0);
        if delay_ms > MAX_QUEUE_WAIT_MS {
            return Err(invalid(format!(
                "delay-ms {delay_ms} is over the maximum of {MAX_QUEUE_WAIT_MS} (366 days)"
            )));
        }
        let window = options.dedupe_window_ms.unwrap_or(DEFAULT_DEDUPE_WINDOW_MS);
        if window == 0 || window > MAX_QUEUE_WAIT_MS {
            return Err(invalid(format!(
                "dedupe-window-ms {window} is not between 1 and {MAX_QUEUE_WAIT_MS} (366 days)"
            )));
        }
        let max_attempts = options.max_attempts.unwrap_or(0);
        if options.max_attempts.is_some() && !(1..=MAX_ATTEMPTS).contains(&max_attempts) {
            return Err(invalid(format!(
                "max-attempts {max_attempts} is not between 1 and {MAX_ATTEMPTS}"
            )));
        }
        let mut headers: serde_json::Map<String, serde_json::Value> = options
            .headers
            .into_iter()
            .map(|(k, v)| (k, serde_json::Value::String(v)))
            .collect();
        // With traces on, the message carries this call's trace context
        // (W3C `traceparent`), so its consumer's span joins the trace, on
        // whichever host it runs. A header the plugin set itself wins.
        for (k, v) in crate::logging::trace_headers() {
            headers.entry(k).or_insert(serde_json::Value::String(v));
        }
        let headers = serde_json::Value::Object(headers).to_string();
        self.check_write(keys.stream.len(), payload.len() + headers.len())?;
        let max_length = self.plugin.queues.max_length;
        let r = self
            .admit()
            .await?
            .queue_enqueue(
                &keys,
                options.dedupe_id.as_deref(),
                payload,
                &headers,
                delay_ms,
                window,
                max_attempts,
                max_length,
            )
            .await?;
        match r {
            Enqueued::New(id) | Enqueued::Duplicate(id) => Ok(id),
            // The queue is full: a quota of the plugin's (its
            // `queue-max-length`), so the invocation fails like at any
            // other quota (over HTTP, 503 with `Retry-After`) instead of
            // answering as if the message were on its way.
            Enqueued::Full => Err(self.breach(QuotaTrap::new(
                Quota::Storage,
                format!("queue `{queue}` holds its queue-max-length of {max_length} messages"),
            ))),
        }
    }
}

impl Host for Caps {
    async fn enqueue(
        &mut self,
        queue: String,
        payload: Vec<u8>,
        options: EnqueueOptions,
    ) -> wasmtime::Result<Result<String, Error>> {
        Ok(traced!(
            "queue",
            "enqueue",
            Caps::enqueue(self, &queue, &payload, options)
        ))
    }
}
