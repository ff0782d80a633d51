//! Triggers that run in the background of `redloom serve`: pub/sub
//! subscriptions and keyspace events ([`pubsub`]) and timers ([`timer`]).
//! The HTTP trigger lives in [`crate::serve`].
//!
//! Each trigger calls the plugin through [`Host::call`](crate::host::Host::call),
//! so quotas, counters and instance handling are the same as for every other
//! call; a failed call is logged and counted, never retried (pub/sub is at
//! most once, a tick runs at most once).
//!
//! Shutdown ([`Triggers::stop`]) is graceful like the HTTP side's: nothing
//! new is taken, invocations already running get the same deadline as
//! running requests, and only what outlives it is aborted.

pub mod pubsub;
pub mod queue;
pub mod timer;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::config::Config;
use crate::handler::HandlerKind;
use crate::host::{Host, HostInvokeError};
use crate::namespace::PluginName;
use crate::plugin::{Call, Reply};
use crate::stats::Outcome;

/// Which handler each configured trigger needs, for the load-time check:
/// `(plugin, handler, what binds it)`.
pub fn required_handlers(config: &Config) -> Vec<(PluginName, HandlerKind, String)> {
    let mut out = Vec::new();
    for r in &config.routes {
        if let Ok(n) = PluginName::parse(&r.plugin) {
            out.push((n, HandlerKind::Http, format!("the route {}", r.path)));
        }
    }
    for (name, p) in &config.plugins {
        if !p.triggers.subscriptions.is_empty() {
            out.push((
                name.clone(),
                HandlerKind::Message,
                "its subscriptions".to_string(),
            ));
        }
        if !p.triggers.keyspace_events.is_empty() {
            out.push((
                name.clone(),
                HandlerKind::Message,
                "its keyspace-events".to_string(),
            ));
        }
        if !p.triggers.timers.is_empty() {
            out.push((name.clone(), HandlerKind::Timer, "its timers".to_string()));
        }
        if !p.triggers.consumers.is_empty() {
            out.push((
                name.clone(),
                HandlerKind::Queue,
                "its consumers".to_string(),
            ));
        }
    }
    out
}

/// Background trigger tasks; dropping them aborts every task at once,
/// [`Triggers::stop`] stops them gracefully.
pub struct Triggers {
    /// Set to `true` on stop: workers and timers take nothing new.
    stop: watch::Sender<bool>,
    subscriber: Option<pubsub::Subscriber>,
    timers: Vec<JoinHandle<()>>,
    consumers: Vec<queue::Consumer>,
    /// The `storage` sampler (not a trigger, but `serve`'s background work
    /// too).
    sampler: JoinHandle<()>,
}

impl Triggers {
    /// Starts the subscriber (if any plugin subscribes), every timer and
    /// every queue consumer.
    pub async fn start(host: Arc<Host>, config: &Config) -> anyhow::Result<Triggers> {
        let (stop, stopped) = watch::channel(false);
        let subscriber = pubsub::start(host.clone(), config, stopped.clone()).await?;
        let timers = timer::start(host.clone(), config, &stopped);
        let consumers = queue::start(host.clone(), config).await?;
        let sampler =
            crate::sampler::start(host, config.host.storage_sample_interval, stopped.clone());
        Ok(Triggers {
            stop,
            subscriber,
            timers,
            consumers,
            sampler,
        })
    }

    /// Graceful stop, all triggers at once: no new message, tick or queue
    /// read is taken; pub/sub and timer invocations already running and
    /// the queue messages consumers hold get `deadline` (the `[http]
    /// shutdown-timeout`, shared with running HTTP requests) to finish;
    /// whatever still runs then is aborted.
    pub async fn stop(mut self, deadline: Duration) {
        let until = Instant::now() + deadline;
        self.stop.send_replace(true);
        let subscriber = self.subscriber.take();
        let timers = std::mem::take(&mut self.timers);
        let consumers = std::mem::take(&mut self.consumers);
        tokio::join!(
            async {
                if let Some(s) = subscriber {
                    s.stop(until).await;
                }
            },
            async {
                let aborted = finish(timers, until).await;
                if aborted > 0 {
                    tracing::warn!(
                        aborted,
                        "timer ticks still running at the shutdown deadline were stopped"
                    );
                }
            },
            queue::stop(consumers, deadline),
        );
    }
}

impl Drop for Triggers {
    fn drop(&mut self) {
        if let Some(s) = &self.subscriber {
            s.abort();
        }
        for t in &self.timers {
            t.abort();
        }
        self.sampler.abort();
    }
}

/// Calls `plugin` for a trigger through [`Host::call`], and writes the
/// invocation's access record ([`crate::logging::invocation`]) when it
/// ends, or as `cancelled` if the call is dropped first (shutdown).
/// `source` says what triggered it.
pub async fn call(
    host: &Host,
    plugin: &PluginName,
    call: Call<'_>,
    source: &str,
) -> Result<Reply, HostInvokeError> {
    let mut access = Access {
        started: std::time::Instant::now(),
        plugin,
        handler: call.kind(),
        source,
        outcome: None,
        trace_id: crate::logging::current_trace_id(),
    };
    let result = host.call(plugin, call).await;
    access.outcome = Some(match &result {
        Ok(_) => Outcome::Ok.label(),
        Err(HostInvokeError::Invoke(e)) => e.outcome().label(),
        Err(HostInvokeError::UnknownPlugin(_)) => "not-loaded".into(),
    });
    result
}

struct Access<'a> {
    started: std::time::Instant,
    plugin: &'a PluginName,
    handler: HandlerKind,
    source: &'a str,
    outcome: Option<std::borrow::Cow<'static, str>>,
    trace_id: Option<String>,
}

impl Drop for Access<'_> {
    fn drop(&mut self) {
        let outcome = self
            .outcome
            .take()
            .unwrap_or_else(|| Outcome::Cancelled.label());
        crate::logging::invocation(
            self.plugin.as_str(),
            self.handler,
            self.source,
            &outcome,
            self.started.elapsed(),
            self.trace_id.as_deref(),
        );
    }
}

/// How long an aborted task may take to unwind (it stops at its next
/// await; a guest is interrupted at its next epoch tick).
const ABORT_WAIT: Duration = Duration::from_secs(1);

/// Waits for `tasks` until `deadline`, then aborts those still running;
/// returns how many had to be aborted.
async fn finish(tasks: Vec<JoinHandle<()>>, deadline: Instant) -> usize {
    let mut aborted = 0;
    for mut task in tasks {
        if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
            task.abort();
            aborted += 1;
            let _ = tokio::time::timeout(ABORT_WAIT, task).await;
        }
    }
    aborted
}
