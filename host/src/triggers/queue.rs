//! The queue consumer trigger: `[plugins.NAME.consumers.QUEUE]`.
//!
//! Each consumer reads with `XREADGROUP` on a connection of its own (a
//! blocking read never stalls the shared connection), runs up to
//! `concurrency` messages at once through the plugin's queue handler, and:
//!
//! - on success: `XACK` and `XDEL` in one script (acknowledged messages are
//!   not kept: the stream holds only work to do);
//! - on an error, trap or quota breach: a retry after `backoff × 2^(attempt-1)`
//!   (capped at `max-backoff`, ±50 % jitter), through the delayed set, or
//!   after `max-attempts` the dead-letter stream with the error, attempts and
//!   timestamps — atomically, in one script;
//! - messages delivered more than `visibility-timeout` ago and still not
//!   acknowledged (their consumer crashed or hangs) are taken over with
//!   `XAUTOCLAIM`; each lost delivery counts as an attempt, so a message that
//!   keeps crashing its consumer still ends in the dead letters;
//! - delayed messages and retries move into the stream when due (checked
//!   every [`PROMOTE_EVERY`]: a delay is honoured to within that period).
//!
//! Set `visibility-timeout` above the plugin's `wall-time` quota: a message
//! still running when it expires may be taken over by another host and run
//! twice (this host never starts a message it is already running).
//!
//! Delivery is at least once: a message is acknowledged only after its
//! handler succeeded. On shutdown a consumer stops reading, waits for the
//! messages it holds up to the deadline, and leaves any still running
//! unacknowledged, for another consumer to reclaim.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, watch};

use crate::config::{Config, ConsumerConfig};
use crate::host::Host;
use crate::namespace::{Namespace, PluginName, QueueKeys, is_shared};
use crate::plugin::{Call, Job};
use crate::redis::Redis;
use crate::redis::queue::Entry;

/// How often due delayed messages are moved into the stream.
pub const PROMOTE_EVERY: Duration = Duration::from_millis(100);

/// How long one `XREADGROUP` blocks.
const BLOCK: Duration = Duration::from_millis(500);

/// A running consumer.
pub struct Consumer {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

/// Creates the groups and starts a consumer per configured queue.
pub async fn start(host: Arc<Host>, config: &Config) -> anyhow::Result<Vec<Consumer>> {
    let mut consumers = Vec::new();
    let identity = consumer_identity();
    for (plugin, p) in &config.plugins {
        for (queue, c) in &p.triggers.consumers {
            let shared = is_shared(&p.triggers.shared_queues, queue);
            let keys = Namespace::new(plugin)
                .queue(queue, shared)
                .map_err(|e| anyhow::anyhow!("{plugin}: queue {queue}: {e}"))?;
            host.redis()
                .queue_ensure_group(&keys, &c.group)
                .await
                .map_err(|e| {
                    anyhow::anyhow!("{plugin}: queue {queue}: cannot create the group: {e}")
                })?;
            let reader = host.redis().dedicated().await?;
            let (stop, stopped) = watch::channel(false);
            let task = tokio::spawn(run(Run {
                host: host.clone(),
                plugin: plugin.clone(),
                queue: queue.clone(),
                keys,
                config: c.clone(),
                reader,
                consumer: format!("{identity}-{plugin}"),
                stopped,
            }));
            consumers.push(Consumer { stop, task });
        }
    }
    Ok(consumers)
}

/// Stops every consumer: no more reads; running messages get `deadline`.
pub async fn stop(consumers: Vec<Consumer>, deadline: Duration) {
    for c in &consumers {
        let _ = c.stop.send(true);
    }
    let started = Instant::now();
    for c in consumers {
        let left = deadline.saturating_sub(started.elapsed());
        let abort = c.task.abort_handle();
        if tokio::time::timeout(left, c.task).await.is_err() {
            tracing::warn!(
                "a queue consumer did not finish in time; its messages stay pending for another consumer"
            );
            abort.abort();
        }
    }
}

/// `<hostname>-<pid>-<n>`: unique per host (several hosts may share a
/// process, as in tests), stable while it runs.
fn consumer_identity() -> String {
    static STARTED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let host = std::fs::read_to_string("/etc/hostname").unwrap_or_else(|_| "host".into());
    let n = STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{}-{}-{n}", host.trim(), std::process::id())
}

struct Run {
    host: Arc<Host>,
    plugin: PluginName,
    queue: String,
    keys: QueueKeys,
    config: ConsumerConfig,
    reader: Redis,
    consumer: String,
    stopped: watch::Receiver<bool>,
}

async fn run(mut r: Run) {
    let slots = Arc::new(Semaphore::new(r.config.concurrency as usize));
    let shared = Arc::new(Shared {
        running: Default::default(),
        host: r.host.clone(),
        plugin: r.plugin.clone(),
        queue: r.queue.clone(),
        keys: r.keys.clone(),
        config: r.config.clone(),
    });
    // Delayed messages and retries are promoted on their own clock, so a
    // blocking read does not hold them back.
    let promoter = {
        let (host, keys, plugin, queue) = (
            r.host.clone(),
            r.keys.clone(),
            r.plugin.clone(),
            r.queue.clone(),
        );
        let mut stopped = r.stopped.clone();
        tokio::spawn(async move {
            while !*stopped.borrow() {
                if let Err(e) = host.redis().queue_promote(&keys, 1000).await {
                    tracing::warn!(%plugin, %queue, "cannot move delayed messages: {e}");
                }
                tokio::select! {
                    _ = tokio::time::sleep(PROMOTE_EVERY) => {}
                    _ = stopped.changed() => {}
                }
            }
        })
    };
    let mut last_reclaim = Instant::now() - r.config.visibility_timeout;
    let mut backoff = Duration::from_millis(100);
    while !*r.stopped.borrow() {
        // Wait for a free slot before taking messages off the queue.
        let free = loop {
            let n = slots.available_permits();
            if n > 0 {
                break n;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                _ = r.stopped.changed() => break 0,
            }
        };
        if free == 0 {
            break;
        }
        let batch = free.min(r.config.batch as usize);
        let read = if last_reclaim.elapsed() >= r.config.visibility_timeout / 4 {
            last_reclaim = Instant::now();
            r.reader
                .queue_reclaim(
                    &r.keys,
                    &r.config.group,
                    &r.consumer,
                    r.config.visibility_timeout.as_millis() as u64,
                    batch,
                )
                .await
                .map(|v| {
                    v.into_iter()
                        .map(|(e, deliveries)| {
                            let attempt = e.attempt + deliveries.saturating_sub(1);
                            (e, attempt)
                        })
                        .collect::<Vec<_>>()
                })
        } else {
            Ok(Vec::new())
        };
        let mut entries = match read {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(plugin = %r.plugin, queue = %r.queue, "cannot reclaim: {e}");
                Vec::new()
            }
        };
        if entries.is_empty() {
            let read = tokio::select! {
                read = r.reader.queue_read(&r.keys, &r.config.group, &r.consumer, batch, BLOCK.as_millis() as u64) => read,
                _ = r.stopped.changed() => break,
            };
            match read {
                Ok(v) => {
                    backoff = Duration::from_millis(100);
                    entries = v
                        .into_iter()
                        .map(|e| {
                            let a = e.attempt;
                            (e, a)
                        })
                        .collect();
                }
                Err(e) => {
                    tracing::warn!(plugin = %r.plugin, queue = %r.queue, "cannot read: {e}; retrying in {backoff:?}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    // The group may be gone (Redis restarted without data).
                    let _ = r
                        .host
                        .redis()
                        .queue_ensure_group(&r.keys, &r.config.group)
                        .await;
                    continue;
                }
            }
        }
        for (entry, attempt) in entries {
            if !shared
                .running
                .lock()
                .expect("running set")
                .insert(entry.entry_id.clone())
            {
                continue;
            }
            let permit = slots.clone().acquire_owned().await.expect("never closed");
            let shared = shared.clone();
            tokio::spawn(async move {
                let entry_id = entry.entry_id.clone();
                shared.process(entry, attempt).await;
                shared
                    .running
                    .lock()
                    .expect("running set")
                    .remove(&entry_id);
                drop(permit);
            });
        }
    }
    // Stopped: wait for the messages still running (`stop` bounds this).
    let _ = slots.acquire_many(r.config.concurrency).await;
    let _ = promoter.await;
}

struct Shared {
    /// Stream entries this consumer is running now: a reclaim that hands one
    /// of them back to us must not start it a second time.
    running: std::sync::Mutex<std::collections::HashSet<String>>,
    host: Arc<Host>,
    plugin: PluginName,
    queue: String,
    keys: QueueKeys,
    config: ConsumerConfig,
}

impl Shared {
    async fn process(&self, entry: Entry, attempt: u32) {
        let headers: Vec<(String, String)> =
            serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(&entry.headers)
                .map(|m| {
                    m.into_iter()
                        .map(|(k, v)| (k, v.as_str().unwrap_or_default().to_string()))
                        .collect()
                })
                .unwrap_or_default();
        let job = Job {
            queue: self.queue.clone(),
            id: entry.id.clone(),
            payload: entry.payload,
            headers,
            attempt,
            enqueued_ms: entry.enqueued_ms,
        };
        let redis = self.host.redis();
        match self.host.call(&self.plugin, Call::Job(&job)).await {
            Ok(_) => {
                if let Err(e) = redis
                    .queue_ack(&self.keys, &self.config.group, &entry.entry_id)
                    .await
                {
                    // Not acknowledged: it will be reclaimed and run again (at least once).
                    tracing::warn!(plugin = %self.plugin, queue = %self.queue, id = %job.id, "cannot acknowledge: {e}");
                }
            }
            Err(e) => {
                let delay = self.backoff(attempt, &job.id);
                let error = e.to_string();
                match redis
                    .queue_fail(
                        &self.keys,
                        &self.config.group,
                        &entry.entry_id,
                        delay.as_millis() as u64,
                        &error,
                        self.config.max_attempts,
                        attempt,
                    )
                    .await
                {
                    Ok(outcome) => tracing::info!(
                        plugin = %self.plugin, queue = %self.queue, id = %job.id, attempt, %outcome,
                        "message failed: {error}"
                    ),
                    Err(e) => {
                        tracing::warn!(plugin = %self.plugin, queue = %self.queue, id = %job.id, "cannot schedule the retry: {e}")
                    }
                }
            }
        }
    }

    /// `backoff × 2^(attempt-1)`, capped, times a jitter in [0.5, 1.5).
    fn backoff(&self, attempt: u32, id: &str) -> Duration {
        let base =
            self.config.backoff.as_secs_f64() * 2f64.powi(attempt.saturating_sub(1).min(30) as i32);
        let capped = base.min(self.config.max_backoff.as_secs_f64());
        let jitter = (RandomState::new().hash_one((id, attempt)) % 1000) as f64 / 1000.0 + 0.5;
        Duration::from_secs_f64(capped * jitter)
    }
}
