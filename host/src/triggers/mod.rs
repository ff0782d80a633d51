//! Triggers that run in the background of `redloom serve`: pub/sub
//! subscriptions and keyspace events ([`pubsub`]) and timers ([`timer`]).
//! The HTTP trigger lives in [`crate::serve`].
//!
//! Each trigger calls the plugin through [`Host::call`](crate::host::Host::call),
//! so quotas, counters and instance handling are the same as for every other
//! call; a failed call is logged and counted, never retried (pub/sub is at
//! most once, a tick runs at most once).

pub mod pubsub;
pub mod queue;
pub mod timer;

use std::sync::Arc;

use crate::config::Config;
use crate::host::Host;
use crate::namespace::PluginName;

/// Which handler each configured trigger needs, for the load-time check:
/// `(plugin, handler, what binds it)`.
pub fn required_handlers(config: &Config) -> Vec<(PluginName, &'static str, String)> {
    let mut out = Vec::new();
    for r in &config.routes {
        if let Ok(n) = PluginName::parse(&r.plugin) {
            out.push((n, "http", format!("the route {}", r.path)));
        }
    }
    for (name, p) in &config.plugins {
        if !p.triggers.subscriptions.is_empty() {
            out.push((name.clone(), "message", "its subscriptions".to_string()));
        }
        if !p.triggers.keyspace_events.is_empty() {
            out.push((name.clone(), "message", "its keyspace-events".to_string()));
        }
        if !p.triggers.timers.is_empty() {
            out.push((name.clone(), "timer", "its timers".to_string()));
        }
        if !p.triggers.consumers.is_empty() {
            out.push((name.clone(), "queue", "its consumers".to_string()));
        }
    }
    out
}

/// The export a handler name stands for, for messages.
pub fn export_of(handler: &str) -> &'static str {
    match handler {
        "http" => crate::bindings::HTTP_EXPORT,
        "message" => crate::bindings::MESSAGE_EXPORT,
        "timer" => crate::bindings::TIMER_EXPORT,
        "queue" => crate::bindings::QUEUE_EXPORT,
        _ => crate::bindings::INVOKE_EXPORT,
    }
}

/// Background trigger tasks; dropping (or [`Triggers::stop`]) ends them.
pub struct Triggers {
    tasks: Vec<tokio::task::JoinHandle<()>>,
    consumers: Vec<queue::Consumer>,
}

impl Triggers {
    /// Starts the subscriber (if any plugin subscribes) and every timer.
    pub async fn start(host: Arc<Host>, config: &Config) -> anyhow::Result<Triggers> {
        let mut tasks = Vec::new();
        if let Some(t) = pubsub::start(host.clone(), config).await? {
            tasks.extend(t);
        }
        tasks.extend(timer::start(host.clone(), config));
        let consumers = queue::start(host, config).await?;
        Ok(Triggers { tasks, consumers })
    }

    /// Graceful stop: queue consumers stop reading and finish (or hand back)
    /// the messages they hold within `deadline`; then every other trigger
    /// task is stopped.
    pub async fn stop(mut self, deadline: std::time::Duration) {
        let consumers = std::mem::take(&mut self.consumers);
        queue::stop(consumers, deadline).await;
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Drop for Triggers {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}
