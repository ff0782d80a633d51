//! The subscription trigger: one subscriber connection per subscribing
//! plugin (and host), carrying that plugin's channels, patterns and keyspace
//! events, authenticated like the plugin's own commands (as its ACL user
//! with `acl = true`).
//!
//! Why one per plugin: Redis bounds each subscriber connection's output
//! buffer (`client-output-buffer-limit pubsub`, by default 32 MB at once or
//! 8 MB for 60 s) and closes the connection past it. When every plugin
//! shared one connection, a plugin publishing big messages on its own
//! channel faster than they drained got that connection closed again and
//! again, and every other plugin missed what was published meanwhile. Now
//! only the offender's own connection is closed; it reconnects, and its
//! loss is reported like any other. The cost: one Redis connection per
//! subscribing plugin per host (on a Cluster, to one node each).
//!
//! Delivery is at most once: a message published while a plugin's
//! connection is down is lost for that plugin (Redis pub/sub keeps
//! nothing). After a disconnect (Redis restart, network, an output buffer
//! overflow), the subscriber reconnects with backoff (100 ms → 5 s) and
//! subscribes again to everything of its plugin; no host restart is
//! needed. The window without a subscription is logged as a warning naming
//! the plugin and counted (`redloom_pubsub_reconnects_total`,
//! `redloom_pubsub_unsubscribed_seconds_total`), so an operator knows
//! messages may have been missed then.
//!
//! Shutdown ([`Subscriber::stop`]): the connections are dropped at once (no
//! new messages), handler calls already running finish until the shutdown
//! deadline and are aborted after it; messages still buffered and not
//! started are dropped and counted like an overflow.
//!
//! Each plugin's messages go through a bounded buffer
//! (`subscription-buffer`, default 1000) to its workers. When a plugin is
//! slower than its messages and its buffer is full, new messages for it
//! are dropped and counted (`redloom_pubsub_dropped_total`); other plugins
//! are not delayed. A message larger than the plugin's `max-input` (which
//! the handler would refuse anyway) is dropped and counted on arrival, so
//! the buffer holds at most `subscription-buffer` × `max-input` bytes.
//!
//! ACL users: Redis matches a `PSUBSCRIBE` pattern *literally* against a
//! user's channel rules, so a plugin's `&rl:<plugin>:*` does not let it
//! subscribe to the pattern `rl:<plugin>:ch:room:*`. The plugin's ACL user
//! therefore gets one `&` rule per pattern it subscribes to
//! ([`acl_patterns`](crate::subscriptions::acl_patterns)); plain channels
//! are covered by its own and shared channel rules.
//!
//! Keyspace events (`keyspace-events`) ride the plugin's connection: the
//! host subscribes to `__keyspace@DB__:rl:<plugin>:kv:*` and, only when some
//! plugin asks for events, adds the needed flags to Redis's
//! `notify-keyspace-events` through the host's own connection (this costs
//! Redis CPU for every matching write, cluster-wide for the database; it
//! needs `CONFIG SET` permission). The flags are set again on every
//! reconnect, before subscribing: a restarted Redis comes back with its
//! configured value (usually none) and would otherwise send no events at
//! all.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Mutex, mpsc, watch};
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::host::Host;
use crate::namespace::PluginName;
use crate::plugin::{Call, Message};
use crate::redis::{CommandError, Subscription};
use crate::subscriptions::{Subscriptions, subscriptions};

/// The running subscription trigger: each subscribed plugin's connection
/// task, buffer and workers.
pub struct Subscriber {
    host: Arc<Host>,
    plugins: Vec<PluginWorkers>,
}

struct PluginWorkers {
    plugin: PluginName,
    /// Keeps the plugin's subscriber connection up.
    connection: JoinHandle<()>,
    buffer: Buffer,
    workers: Vec<JoinHandle<()>>,
}

/// One plugin's bounded buffer, drained by its workers in turn.
type Buffer = Arc<Mutex<mpsc::Receiver<Delivery>>>;

/// A message for a plugin, with the publisher's trace context if it sent one.
struct Delivery {
    message: Message,
    traceparent: Option<String>,
}

/// Spawns one subscriber connection and one worker pool per subscribed
/// plugin (every plugin must be loaded: each subscribes like the plugin's
/// own connection, its ACL user included); `None` when no plugin subscribes
/// to anything. Workers take no new message once `stopped` is true (see
/// [`Subscriber::stop`]).
pub async fn start(
    host: Arc<Host>,
    config: &Config,
    stopped: watch::Receiver<bool>,
) -> anyhow::Result<Option<Subscriber>> {
    let db = host.redis().db();
    let mut planned = Vec::new();
    let mut keyspace_flags = String::new();
    for (name, p) in &config.plugins {
        let t = &p.triggers;
        if t.subscriptions.is_empty() && t.keyspace_events.is_empty() {
            continue;
        }
        let subs = subscriptions(name, t, db)?;
        keyspace_flags.push_str(&subs.keyspace_flags);
        let redis = host
            .plugin_redis(name)
            .ok_or_else(|| anyhow::anyhow!("{name} subscribes but is not loaded"))?;
        planned.push((name, p, subs, redis));
    }
    if planned.is_empty() {
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
    let mut plugins = Vec::new();
    let mut readies = Vec::new();
    for (name, p, subs, redis) in planned {
        let (tx, rx) = mpsc::channel::<Delivery>(p.triggers.subscription_buffer);
        let buffer: Buffer = Arc::new(Mutex::new(rx));
        let routes = Arc::new(Routes {
            plugin: name.clone(),
            subs,
            queue: tx,
        });
        let (ready_tx, ready) = tokio::sync::oneshot::channel();
        readies.push((name.clone(), ready));
        plugins.push(PluginWorkers {
            plugin: name.clone(),
            connection: tokio::spawn(subscriber(routes, redis, host.clone(), ready_tx)),
            workers: workers(
                host.clone(),
                name.clone(),
                buffer.clone(),
                p.quotas.concurrency,
                &stopped,
            ),
            buffer,
        });
    }
    // Serve only says it is serving once messages can arrive; if Redis is
    // slow to answer, the subscribers keep trying in the background.
    let deadline = tokio::time::Instant::now() + SUBSCRIBE_WAIT;
    for (plugin, ready) in readies {
        if tokio::time::timeout_at(deadline, ready).await.is_err() {
            tracing::warn!(%plugin, "not subscribed yet after {SUBSCRIBE_WAIT:?}; still trying");
        }
    }
    Ok(Some(Subscriber { host, plugins }))
}

impl Subscriber {
    /// Graceful stop (the stop signal given to [`start`] is already set, so
    /// workers take no new message): drops the subscription connections,
    /// waits for handler calls already running until `deadline`, aborts
    /// what is left, and counts the messages still buffered as dropped.
    pub async fn stop(self, deadline: tokio::time::Instant) {
        for p in &self.plugins {
            p.connection.abort();
        }
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
        for p in &self.plugins {
            p.connection.abort();
            for w in &p.workers {
                w.abort();
            }
        }
    }
}

/// One plugin's subscriptions and the buffer its messages go to.
struct Routes {
    plugin: PluginName,
    subs: Subscriptions,
    queue: mpsc::Sender<Delivery>,
}

/// How long `start` waits for the first subscriptions.
const SUBSCRIBE_WAIT: Duration = Duration::from_secs(5);

/// Keeps one plugin's subscription connection up, connecting like `redis`
/// (the plugin's own connection: its ACL user if it has one), routes what
/// arrives ([`crate::redis::keep_subscribed`]) and counts each
/// re-subscription with the window it was down.
async fn subscriber(
    routes: Arc<Routes>,
    redis: crate::redis::Redis,
    host: Arc<Host>,
    ready: tokio::sync::oneshot::Sender<()>,
) {
    let mut ready = Some(ready);
    let plugin = routes.plugin.clone();
    crate::redis::keep_subscribed(
        &redis,
        &format!("pub/sub subscription of plugin {plugin}"),
        |client| {
            let (routes, host) = (routes.clone(), host.clone());
            async move { subscribe(&client, &routes, &host).await }
        },
        |event| match event {
            Subscription::Up { unsubscribed } => {
                if let Some(r) = ready.take() {
                    let _ = r.send(());
                }
                tracing::info!(
                    %plugin,
                    channels = routes.subs.channels.len(),
                    patterns = routes.subs.patterns.len(),
                    "subscribed"
                );
                if let Some(gap) = unsubscribed
                    && let Some(p) = host.plugin(&plugin)
                {
                    p.count_resubscribed(gap);
                }
            }
            Subscription::Message(msg) => route(&routes, &host, &msg),
            Subscription::Down => {}
        },
    )
    .await;
}

/// Connects, turns keyspace notifications on again if the plugin needs
/// them (through the host's connection: it may `CONFIG SET`), and
/// subscribes to every channel and pattern of the plugin.
async fn subscribe(
    client: &redis::Client,
    routes: &Routes,
    host: &Host,
) -> anyhow::Result<redis::aio::PubSub> {
    // Before subscribing, so events flow as soon as the subscription is
    // up. A Redis that restarted has its configured flags back (usually
    // none): without this, keyspace events would silently stop.
    if !routes.subs.keyspace_flags.is_empty() {
        match host
            .redis()
            .enable_keyspace_events(&routes.subs.keyspace_flags)
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
    let channels: Vec<&str> = routes.subs.channels.keys().map(String::as_str).collect();
    let patterns: Vec<&str> = routes.subs.patterns.keys().map(String::as_str).collect();
    crate::redis::subscribe(client, &channels, &patterns, CONNECT_TIMEOUT).await
}

/// How long one connection attempt of the subscriber may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

fn route(routes: &Routes, host: &Host, msg: &redis::Msg) {
    let channel = msg.get_channel_name();
    let targets = if msg.from_pattern() {
        match msg.get_pattern::<String>() {
            Ok(p) => routes.subs.patterns.get(&p),
            Err(_) => None,
        }
    } else {
        routes.subs.channels.get(channel)
    };
    let plugin = host.plugin(&routes.plugin);
    // A message the handler would refuse (over `max-input`) is dropped
    // here, before it is copied into the buffer: the buffer bounds messages
    // by count, so their size must be bounded too.
    let max = plugin.as_ref().map_or(u64::MAX, |p| p.quotas().max_input);
    let (traceparent, payload) = crate::logging::unwrap_payload(msg.get_payload_bytes());
    if payload.len() as u64 > max {
        if let Some(p) = &plugin {
            p.count_dropped_message();
        }
        return;
    }
    for t in targets.into_iter().flatten() {
        let name = channel
            .strip_prefix(&t.prefix)
            .unwrap_or(channel)
            .to_string();
        let payload = payload.to_vec();
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
        let delivery = Delivery {
            message,
            traceparent: traceparent.map(str::to_string),
        };
        if routes.queue.try_send(delivery).is_err()
            && let Some(p) = &plugin
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
                    let Some(Delivery {
                        message,
                        traceparent,
                    }) = next
                    else {
                        return;
                    };
                    let source = format!("channel {}", message.channel);
                    // The message's span continues the publisher's trace,
                    // if it sent one.
                    let span = crate::logging::consumer_span(
                        &message.channel,
                        traceparent.as_deref().map(|tp| ("traceparent", tp)).into_iter(),
                    );
                    let call = Call::Message(&message);
                    let called = {
                        use tracing::Instrument as _;
                        super::call(&host, &plugin, call, &source)
                            .instrument(span)
                            .await
                    };
                    if let Err(e) = called {
                        tracing::warn!(%plugin, channel = %message.channel, "message handler failed: {e}");
                    }
                }
            })
        })
        .collect()
}
