//! Queue end to end: a worker enqueues a message and waits until a consumer
//! has handled it. The handler publishes the message id on a `done` channel
//! and the benchmark listens there, so both sides do the same Redis work
//! per message: the enqueue script, `XREADGROUP`, the handler's `PUBLISH`,
//! and the ack script (`XACK` + `XDEL`).
//!
//! - plugin: redloom's queue trigger (`redloom::triggers::queue`) consumes
//!   and calls `bench-probe`'s queue handler in a fresh instance;
//! - native: a consumer loop with the same shape (dedicated read
//!   connection, batches of up to 16, up to 32 messages at once) calls a
//!   Rust handler.
//!
//! Both enqueue natively: plugin-side enqueueing is its own row.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use redloom::config::Config;
use redloom::namespace::{Namespace, PluginName, QueueKeys};
use redloom::redis::Redis;
use redloom::triggers::queue::Consumer;
use tokio::sync::{Semaphore, oneshot, watch};
use tokio_stream::StreamExt as _;

use crate::measure::{Op, op};
use crate::patterns::{self, Bench};

/// The consuming plugin's name in the benchmark's manifest.
pub const PLUGIN: &str = "bench-queue";
/// Its queue.
pub const QUEUE: &str = "e2e";
/// The consumer group (as in the manifest).
const GROUP: &str = "workers";
/// Messages handled at once, and read per `XREADGROUP` (as in the manifest).
pub const CONCURRENCY: usize = 32;
pub const BATCH: usize = 16;
/// How long one `XREADGROUP` blocks (as in the trigger).
const BLOCK_MS: u64 = 500;
/// A message not handled by then fails the run.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Who waits for which message: `channel\nid`.
#[derive(Default)]
struct Done {
    map: Mutex<HashMap<String, Slot>>,
}

enum Slot {
    Waiting(oneshot::Sender<()>),
    /// The notice came before the worker started waiting.
    Arrived,
}

impl Done {
    fn arrived(&self, key: String) {
        let mut map = self.map.lock().expect("done map");
        match map.remove(&key) {
            Some(Slot::Waiting(tx)) => {
                let _ = tx.send(());
            }
            _ => {
                map.insert(key, Slot::Arrived);
            }
        }
    }

    async fn wait(&self, key: String) -> anyhow::Result<()> {
        let rx = {
            let mut map = self.map.lock().expect("done map");
            if let Some(Slot::Arrived) = map.remove(&key) {
                return Ok(());
            }
            let (tx, rx) = oneshot::channel();
            map.insert(key.clone(), Slot::Waiting(tx));
            rx
        };
        tokio::time::timeout(TIMEOUT, rx)
            .await
            .with_context(|| format!("message {key:?} was not handled within {TIMEOUT:?}"))?
            .context("the listener stopped")
    }
}

/// Both consumers, the listener, and what the workers need.
pub struct E2e {
    done: Arc<Done>,
    plugin_keys: QueueKeys,
    plugin_channel: String,
    native_keys: QueueKeys,
    native_channel: String,
    consumers: Vec<Consumer>,
    stop_native: watch::Sender<bool>,
    native: tokio::task::JoinHandle<()>,
    listener: tokio::task::JoinHandle<()>,
}

impl E2e {
    /// Starts the listener, the plugin's consumer (from `config`, which
    /// configures [`PLUGIN`]'s consumer of [`QUEUE`]) and the native one.
    pub async fn start(b: &Arc<Bench>, config: &Config) -> anyhow::Result<E2e> {
        let plugin_ns = Namespace::new(&PluginName::parse(PLUGIN)?);
        let plugin_keys = plugin_ns.queue(QUEUE, false)?;
        let plugin_channel = plugin_ns.channel("done", false)?;
        let native_keys = b.native_ns.queue(QUEUE, false)?;
        let native_channel = b.native_ns.channel("done", false)?;

        let done = Arc::new(Done::default());
        let mut pubsub = redis::Client::open(b.url.as_str())?
            .get_async_pubsub()
            .await?;
        pubsub
            .subscribe(&[plugin_channel.as_str(), native_channel.as_str()])
            .await?;
        let listener = {
            let done = done.clone();
            tokio::spawn(async move {
                let mut messages = pubsub.into_on_message();
                while let Some(m) = messages.next().await {
                    let id: String = m.get_payload().unwrap_or_default();
                    done.arrived(format!("{}\n{id}", m.get_channel_name()));
                }
            })
        };

        let consumers = redloom::triggers::queue::start(b.host.clone(), config).await?;

        b.native.queue_ensure_group(&native_keys, GROUP).await?;
        let reader = b.native.dedicated().await?;
        let (stop_native, stopped) = watch::channel(false);
        let native = tokio::spawn(native_consumer(
            b.native.clone(),
            reader,
            native_keys.clone(),
            native_channel.clone(),
            stopped,
        ));
        Ok(E2e {
            done,
            plugin_keys,
            plugin_channel,
            native_keys,
            native_channel,
            consumers,
            stop_native,
            native,
            listener,
        })
    }

    pub fn plugin_op(self: &Arc<Self>, b: &Arc<Bench>) -> Op {
        self.op(b, true)
    }

    pub fn native_op(self: &Arc<Self>, b: &Arc<Bench>) -> Op {
        self.op(b, false)
    }

    fn op(self: &Arc<Self>, b: &Arc<Bench>, plugin: bool) -> Op {
        let e = self.clone();
        let redis = b.native.clone();
        op(move |_, _| {
            let e = e.clone();
            let redis = redis.clone();
            async move {
                let (keys, channel) = if plugin {
                    (&e.plugin_keys, &e.plugin_channel)
                } else {
                    (&e.native_keys, &e.native_channel)
                };
                let id = patterns::enqueue(&redis, keys).await?;
                e.done.wait(format!("{channel}\n{id}")).await
            }
        })
    }

    pub async fn stop(self) {
        redloom::triggers::queue::stop(self.consumers, Duration::from_secs(5)).await;
        let _ = self.stop_native.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(5), self.native).await;
        self.listener.abort();
    }
}

/// The native consumer: read a batch on the dedicated connection when a
/// slot is free, handle each message in a task of its own (publish its id),
/// acknowledge it.
async fn native_consumer(
    redis: Redis,
    reader: Redis,
    keys: QueueKeys,
    channel: String,
    mut stopped: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(CONCURRENCY));
    let keys = Arc::new(keys);
    let channel = Arc::new(channel);
    while !*stopped.borrow() {
        let free = slots.available_permits();
        if free == 0 {
            tokio::select! {
                p = slots.acquire() => drop(p),
                _ = stopped.changed() => break,
            }
            continue;
        }
        let read = tokio::select! {
            r = reader.queue_read(&keys, GROUP, "native", free.min(BATCH), BLOCK_MS) => r,
            _ = stopped.changed() => break,
        };
        let entries = match read {
            Ok(v) => v,
            Err(e) => {
                eprintln!("native consumer: cannot read: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        for entry in entries {
            let permit = slots.clone().acquire_owned().await.expect("never closed");
            let (redis, keys, channel) = (redis.clone(), keys.clone(), channel.clone());
            tokio::spawn(async move {
                if let Err(e) = redis.publish(&channel, entry.id.as_bytes()).await {
                    eprintln!("native handler: {e}");
                } else if let Err(e) = redis.queue_ack(&keys, GROUP, &entry.entry_id).await {
                    eprintln!("native consumer: cannot acknowledge: {e}");
                }
                drop(permit);
            });
        }
    }
}
