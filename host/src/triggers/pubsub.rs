//! The subscription trigger: ONE subscriber connection per host (not one per
//! plugin) carries every plugin's channels, patterns and keyspace events.
//!
//! Delivery is at most once: a message published while the connection is
//! down is lost (Redis pub/sub keeps nothing). After a disconnect (Redis
//! restart, network), the subscriber reconnects with backoff (100 ms → 5 s)
//! and subscribes again to everything; no host restart is needed.
//!
//! Shutdown ([`Subscriber::stop`]): the connection is dropped at once (no
//! new messages), handler calls already running finish until the shutdown
//! deadline and are aborted after it; messages still buffered and not
//! started are dropped and counted like an overflow.
//!
//! Fan-out: each message goes to every plugin whose subscription matches,
//! through a bounded per-plugin buffer (`subscription-buffer`, default
//! 1000). When a plugin is slower than its messages and its buffer is full,
//! new messages for it are dropped and counted
//! (`redloom_pubsub_dropped_total`); other plugins are not delayed.
//!
//! Keyspace events (`keyspace-events`) use the same connection: the host
//! subscribes to `__keyspace@DB__:rl:<plugin>:kv:*` and, only when some
//! plugin asks for events, adds the needed flags to Redis's
//! `notify-keyspace-events` (this costs Redis CPU for every matching write,
//! cluster-wide for the database; it needs `CONFIG SET` permission). The
//! flags are set again on every reconnect, before subscribing: a restarted
//! Redis comes back with its configured value (usually none) and would
//! otherwise send no events at all.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Mutex, mpsc, watch};
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::host::Host;
use crate::namespace::{Namespace, PluginName, SHARED_CHANNEL_PREFIX};
use crate::plugin::{Call, Message};
use crate::redis::{CommandError, Subscription};

/// Where one Redis channel or pattern's messages go.
#[derive(Clone)]
struct Target {
    plugin: PluginName,
    /// The pattern as the manifest gives it; `None` for a plain channel.
    pattern: Option<String>,
    /// Strips the Redis channel back to the plugin's name for it.
    prefix: String,
    /// For keyspace subscriptions: the events the plugin wants.
    events: Option<Vec<String>>,
    queue: mpsc::Sender<Message>,
}

fn is_pattern(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

/// The running subscription trigger: the connection task and each
/// subscribed plugin's buffer and workers.
pub struct Subscriber {
    host: Arc<Host>,
    connection: JoinHandle<()>,
    plugins: Vec<PluginWorkers>,
}

struct PluginWorkers {
    plugin: PluginName,
    buffer: Buffer,
    workers: Vec<JoinHandle<()>>,
}

/// One plugin's bounded buffer, drained by its workers in turn.
type Buffer = Arc<Mutex<mpsc::Receiver<Message>>>;

/// Spawns the subscriber and one worker pool per subscribed plugin; `None`
/// when no plugin subscribes to anything. Workers take no new message once
/// `stopped` is true (see [`Subscriber::stop`]).
pub async fn start(
    host: Arc<Host>,
    config: &Config,
    stopped: watch::Receiver<bool>,
) -> anyhow::Result<Option<Subscriber>> {
    let mut channels: BTreeMap<String, Vec<Target>> = BTreeMap::new();
    let mut patterns: BTreeMap<String, Vec<Target>> = BTreeMap::new();
    let mut plugins = Vec::new();
    let mut keyspace_flags = String::new();
    let db = host.redis().db();
    for (name, p) in &config.plugins {
        let t = &p.triggers;
        if t.subscriptions.is_empty() && t.keyspace_events.is_empty() {
            continue;
        }
        let (tx, rx) = mpsc::channel::<Message>(t.subscription_buffer);
        let buffer: Buffer = Arc::new(Mutex::new(rx));
        plugins.push(PluginWorkers {
            plugin: name.clone(),
            workers: workers(
                host.clone(),
                name.clone(),
                buffer.clone(),
                p.quotas.concurrency,
                &stopped,
            ),
            buffer,
        });
        let ns = Namespace::new(name);
        for sub in &t.subscriptions {
            let shared = crate::namespace::is_shared(&t.shared_channels, sub);
            let redis_name = ns
                .channel(sub, shared)
                .map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
            let prefix = if shared {
                SHARED_CHANNEL_PREFIX.to_string()
            } else {
                ns.channel_prefix()
            };
            let pattern = is_pattern(sub);
            let target = Target {
                plugin: name.clone(),
                pattern: pattern.then(|| sub.clone()),
                prefix,
                events: None,
                queue: tx.clone(),
            };
            if pattern {
                patterns.entry(redis_name).or_default().push(target);
            } else {
                channels.entry(redis_name).or_default().push(target);
            }
        }
        if !t.keyspace_events.is_empty() {
            for e in &t.keyspace_events {
                let flag = match e.as_str() {
                    "expired" => "x",
                    "evicted" => "e",
                    "new" => "n",
                    _ => "$g",
                };
                keyspace_flags.push_str(flag);
            }
            let prefix = format!("__keyspace@{db}__:{}kv:", ns.prefix());
            patterns
                .entry(format!("{prefix}*"))
                .or_default()
                .push(Target {
                    plugin: name.clone(),
                    pattern: Some("__keyspace__".into()),
                    prefix,
                    events: Some(t.keyspace_events.clone()),
                    queue: tx.clone(),
                });
        }
    }
    if channels.is_empty() && patterns.is_empty() {
        return Ok(None);
    }
    if !keyspace_flags.is_empty() && host.redis().is_cluster() {
        anyhow::bail!(
            "keyspace-events need a standalone Redis: a Redis Cluster sends keyspace \
             notifications only to subscribers of the node that holds the key"
        );
    }
    if !keyspace_flags.is_empty() {
        let set = host
            .redis()
            .enable_keyspace_events(&keyspace_flags)
            .await
            .map_err(|e| {
                anyhow::anyhow!("cannot enable keyspace notifications (CONFIG SET): {e}")
            })?;
        tracing::info!(notify_keyspace_events = %set, "enabled keyspace notifications");
    }
    let routes = Arc::new(Routes {
        channels,
        patterns,
        keyspace_flags,
    });
    let (ready_tx, ready) = tokio::sync::oneshot::channel();
    let connection = tokio::spawn(subscriber(routes, host.clone(), ready_tx));
    // Serve only says it is serving once messages can arrive; if Redis is
    // slow to answer, the subscriber keeps trying in the background.
    if tokio::time::timeout(SUBSCRIBE_WAIT, ready).await.is_err() {
        tracing::warn!("not subscribed yet after {SUBSCRIBE_WAIT:?}; still trying");
    }
    Ok(Some(Subscriber {
        host,
        connection,
        plugins,
    }))
}

impl Subscriber {
    /// Graceful stop (the stop signal given to [`start`] is already set, so
    /// workers take no new message): drops the subscription connection,
    /// waits for handler calls already running until `deadline`, aborts
    /// what is left, and counts the messages still buffered as dropped.
    pub async fn stop(self, deadline: tokio::time::Instant) {
        self.connection.abort();
        let mut workers = Vec::new();
        let mut buffers = Vec::new();
        for p in self.plugins {
            workers.extend(p.workers);
            buffers.push((p.plugin, p.buffer));
        }
        let aborted = super::finish(workers, deadline).await;
        if aborted > 0 {
            tracing::warn!(
                aborted,
                "message handlers still running at the shutdown deadline were stopped"
            );
        }
        // Every worker has ended (or is being aborted: then its buffer may
        // still be locked for a moment and is not counted).
        for (plugin, buffer) in buffers {
            let Ok(mut rx) = buffer.try_lock() else {
                continue;
            };
            rx.close();
            let mut left = 0u64;
            while rx.try_recv().is_ok() {
                left += 1;
                if let Some(p) = self.host.plugin(&plugin) {
                    p.count_dropped_message();
                }
            }
            if left > 0 {
                tracing::info!(%plugin, left, "buffered messages not started before shutdown were dropped");
            }
        }
    }

    /// Stops everything at once (no waiting).
    pub fn abort(&self) {
        self.connection.abort();
        for p in &self.plugins {
            for w in &p.workers {
                w.abort();
            }
        }
    }
}

struct Routes {
    channels: BTreeMap<String, Vec<Target>>,
    patterns: BTreeMap<String, Vec<Target>>,
    /// The `notify-keyspace-events` flags some plugin needs ("" if none).
    keyspace_flags: String,
}

/// How long `start` waits for the first subscription.
const SUBSCRIBE_WAIT: Duration = Duration::from_secs(5);

/// Keeps one subscription connection up and routes what arrives
/// ([`crate::redis::keep_subscribed`]).
async fn subscriber(routes: Arc<Routes>, host: Arc<Host>, ready: tokio::sync::oneshot::Sender<()>) {
    let mut ready = Some(ready);
    crate::redis::keep_subscribed(
        host.redis(),
        "pub/sub trigger",
        |client| {
            let (routes, host) = (routes.clone(), host.clone());
            async move { subscribe(&client, &routes, &host).await }
        },
        |event| match event {
            Subscription::Up => {
                if let Some(r) = ready.take() {
                    let _ = r.send(());
                }
                tracing::info!(
                    channels = routes.channels.len(),
                    patterns = routes.patterns.len(),
                    "subscribed"
                );
            }
            Subscription::Message(msg) => route(&routes, &host, &msg),
            Subscription::Down => {}
        },
    )
    .await;
}

/// Connects, turns keyspace notifications on again if some plugin needs
/// them, and subscribes to every channel and pattern.
async fn subscribe(
    client: &redis::Client,
    routes: &Routes,
    host: &Host,
) -> anyhow::Result<redis::aio::PubSub> {
    // Before subscribing, so events flow as soon as the subscription is
    // up. A Redis that restarted has its configured flags back (usually
    // none): without this, keyspace events would silently stop.
    if !routes.keyspace_flags.is_empty() {
        match host
            .redis()
            .enable_keyspace_events(&routes.keyspace_flags)
            .await
        {
            Ok(set) => tracing::debug!(notify_keyspace_events = %set, "keyspace notifications on"),
            // Redis refused (e.g. CONFIG was denied since start): channels
            // still work, so subscribe anyway, loudly.
            Err(e @ CommandError::Rejected(_)) => tracing::error!(
                "cannot enable keyspace notifications again (CONFIG SET): {e}; \
                 keyspace events will not arrive"
            ),
            Err(e) => anyhow::bail!("cannot enable keyspace notifications (CONFIG SET): {e}"),
        }
    }
    let channels: Vec<&str> = routes.channels.keys().map(String::as_str).collect();
    let patterns: Vec<&str> = routes.patterns.keys().map(String::as_str).collect();
    crate::redis::subscribe(client, &channels, &patterns, CONNECT_TIMEOUT).await
}

/// How long one connection attempt of the subscriber may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

fn route(routes: &Routes, host: &Host, msg: &redis::Msg) {
    let channel = msg.get_channel_name();
    let targets = if msg.from_pattern() {
        match msg.get_pattern::<String>() {
            Ok(p) => routes.patterns.get(&p),
            Err(_) => None,
        }
    } else {
        routes.channels.get(channel)
    };
    for t in targets.into_iter().flatten() {
        let name = channel
            .strip_prefix(&t.prefix)
            .unwrap_or(channel)
            .to_string();
        let payload = msg.get_payload_bytes().to_vec();
        if let Some(events) = &t.events
            && !events.iter().any(|e| e.as_bytes() == payload.as_slice())
        {
            continue;
        }
        let message = Message {
            channel: name,
            pattern: t.pattern.clone(),
            payload,
        };
        if t.queue.try_send(message).is_err()
            && let Some(p) = host.plugin(&t.plugin)
        {
            p.count_dropped_message();
        }
    }
}

/// `n` workers draining one plugin's buffer, each calling the plugin in
/// turn. Once `stopped` is true a worker takes no further message; a call
/// that has started runs to its end (the shutdown deadline bounds it).
fn workers(
    host: Arc<Host>,
    plugin: PluginName,
    buffer: Buffer,
    n: u32,
    stopped: &watch::Receiver<bool>,
) -> Vec<JoinHandle<()>> {
    (0..n.clamp(1, 64))
        .map(|_| {
            let (host, plugin, buffer) = (host.clone(), plugin.clone(), buffer.clone());
            let mut stopped = stopped.clone();
            tokio::spawn(async move {
                loop {
                    let next = tokio::select! {
                        biased;
                        // Also ends when the sender is gone (triggers dropped).
                        _ = stopped.wait_for(|s| *s) => None,
                        m = async { buffer.lock().await.recv().await } => m,
                    };
                    let Some(message) = next else {
                        return;
                    };
                    if let Err(e) = host.call(&plugin, Call::Message(&message)).await {
                        tracing::warn!(%plugin, channel = %message.channel, "message handler failed: {e}");
                    }
                }
            })
        })
        .collect()
}
