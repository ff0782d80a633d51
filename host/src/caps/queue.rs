//! `redloom:plugin/queue`: enqueue onto the plugin's queues (or the shared
//! queues its manifest lists). Consumption is the queue trigger
//! (`crate::triggers::queue`).

use crate::bindings::queue::{EnqueueOptions, Host};
use crate::bindings::types::{Error, Quota};
use crate::redis::queue::Enqueued;
use crate::store::Caps;

/// Default dedupe window: 24 hours.
const DEFAULT_DEDUPE_WINDOW_MS: u64 = 24 * 3600 * 1000;

impl Caps {
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
            .map_err(|e| Error::InvalidArgument(e.to_string()))?;
        if options
            .dedupe_id
            .as_deref()
            .is_some_and(|d| d.is_empty() || d.len() > 256)
        {
            return Err(Error::InvalidArgument("a dedupe id is 1-256 bytes".into()));
        }
        let headers: serde_json::Map<String, serde_json::Value> = options
            .headers
            .into_iter()
            .map(|(k, v)| (k, serde_json::Value::String(v)))
            .collect();
        let headers = serde_json::Value::Object(headers).to_string();
        let max_length = self.plugin.queues.max_length;
        let r = self
            .admit()
            .await?
            .queue_enqueue(
                &keys,
                options.dedupe_id.as_deref(),
                payload,
                &headers,
                options.delay_ms.unwrap_or(0),
                options.dedupe_window_ms.unwrap_or(DEFAULT_DEDUPE_WINDOW_MS),
                options.max_attempts.unwrap_or(0),
                max_length,
            )
            .await?;
        match r {
            Enqueued::New(id) | Enqueued::Duplicate(id) => Ok(id),
            // Not a breach of the invocation's quotas: the queue is full and
            // the caller may retry later, so the invocation goes on.
            Enqueued::Full => Err(Error::QuotaExceeded(Quota::Payload)),
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
        Ok(Caps::enqueue(self, &queue, &payload, options).await)
    }
}
