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
//!   `XAUTOCLAIM`; each lost delivery counts as an attempt, and a message
//!   whose consumer died or stalled during its last allowed attempt goes to
//!   the dead letters without running again (a poison message that kills
//!   every host that runs it stops after `max-attempts`);
//! - consumers of the group idle for [`dead_consumer_idle`] and holding no
//!   pending messages (processes that died or stopped; each process joins
//!   under a name of its own) are removed from the group;
//! - delayed messages and retries move into the stream when due (checked
//!   every [`PROMOTE_EVERY`]: a delay is honoured to within that period);
//! - with `rate-limit`, each message is checked against the plugin's limiter
//!   policy before its handler runs (one key per queue, or per tenant with
//!   `rate-limit-key = "header:NAME"`); a message over the limit is
//!   deferred: moved back into the delayed set in one script, due when the
//!   limiter says it would be allowed, with its attempt count unchanged and
//!   never to the dead letters for it (see [`RateLimit`]).
//!
//! Set `visibility-timeout` above the plugin's `wall-time` quota: a message
//! still running when it expires may be taken over by another host and run
//! twice, or, if that was its last attempt, be moved to the dead letters
//! while it still runs (this host never starts a message it is already
//! running).
//!
//! Delivery is at least once: a message is acknowledged only after its
//! handler succeeded. On shutdown a consumer stops reading, waits for the
//! messages it holds up to the deadline, and leaves any still running
//! unacknowledged, for another consumer to reclaim.

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, watch};

use crate::config::{Config, ConsumerConfig, RateLimitKey};
use crate::host::Host;
use crate::limiter::Limits;
use crate::namespace::{Namespace, PluginName, QueueKeys, is_shared};
use crate::plugin::{Call, Job};
use crate::redis::queue::Entry;
use crate::redis::{LimiterReply, Redis};

/// How often due delayed messages are moved into the stream.
pub const PROMOTE_EVERY: Duration = Duration::from_millis(100);

/// How long one `XREADGROUP` blocks.
const BLOCK: Duration = Duration::from_millis(500);

/// Reads failed in a row after which a consumer opens a new read
/// connection (about 3 s of backoff). redis-rs's Cluster client may stay
/// without connections for good once it has lost every node at once (all
/// restarted): a new one starts again from the seed nodes. Standalone
/// connections reconnect by themselves; a new one costs nothing more.
const REOPEN_READER_AFTER: u32 = 5;

/// A consumer of the group idle this many visibility timeouts (and at least
/// [`MIN_DEAD_CONSUMER_IDLE`]) that holds no pending messages is removed
/// from the group by the live consumers (see [`dead_consumer_idle`]).
pub const DEAD_CONSUMER_VISIBILITY_TIMEOUTS: u32 = 10;

/// The shortest idle time after which a consumer may be removed.
pub const MIN_DEAD_CONSUMER_IDLE: Duration = Duration::from_secs(10);

/// How long a consumer of the group must have been idle, holding no
/// pending messages, before the live consumers remove it:
/// [`DEAD_CONSUMER_VISIBILITY_TIMEOUTS`] × `visibility-timeout`, at least
/// [`MIN_DEAD_CONSUMER_IDLE`].
///
/// Each `redloom serve` process joins the group under a name of its own
/// (see [`consumer_identity`]), so a restart, a crash or a retired host
/// leaves its consumer behind; without this the group would list every
/// process that ever ran. The bound is generous because it only needs to
/// tell the dead from the living: a live consumer touches the group at
/// least every [`BLOCK`] while it has a free slot, and one whose slots are
/// all busy holds their messages pending, which keeps it. A consumer with
/// pending messages is never removed (its messages are reclaimed first),
/// and removing one that was alive after all costs nothing: its next read
/// joins the group again.
pub fn dead_consumer_idle(visibility_timeout: Duration) -> Duration {
    visibility_timeout
        .saturating_mul(DEAD_CONSUMER_VISIBILITY_TIMEOUTS)
        .max(MIN_DEAD_CONSUMER_IDLE)
}

/// How often a consumer looks for dead ones: a tenth of
/// [`dead_consumer_idle`], within 1 s to 60 s.
fn prune_every(visibility_timeout: Duration) -> Duration {
    (dead_consumer_idle(visibility_timeout) / 10)
        .clamp(Duration::from_secs(1), Duration::from_secs(60))
}

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
            let limit = match &c.rate_limit {
                None => None,
                Some(policy) => {
                    let limits = p.limiters.get(policy).copied().ok_or_else(|| {
                        anyhow::anyhow!("{plugin}: queue {queue}: no limiter policy `{policy}`")
                    })?;
                    Some(RateLimit::new(
                        Namespace::new(plugin),
                        policy.clone(),
                        limits,
                        queue.clone(),
                        c.rate_limit_key.clone(),
                    ))
                }
            };
            let reader = host.redis().dedicated().await?;
            let (stop, stopped) = watch::channel(false);
            let task = tokio::spawn(run(Run {
                host: host.clone(),
                plugin: plugin.clone(),
                queue: queue.clone(),
                keys,
                config: c.clone(),
                limit,
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
///
/// A new name per process, not one kept across restarts: a name derived
/// from the machine would be shared by two processes on one machine (or
/// two containers with one hostname), and one kept in the data folder by
/// two processes sharing it, which hides one's death behind the other's
/// reads and makes "my own pending messages" ambiguous; orchestrators
/// also rename a restarted instance anyway. So names are never reused,
/// and the names of dead processes are removed instead (see
/// [`dead_consumer_idle`]). What a dead process held is taken over by
/// reclaim either way: nothing depends on a restart reusing a name.
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
    limit: Option<RateLimit>,
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
        limit: r.limit.take(),
    });
    // Delayed messages and retries are promoted on their own clock, so a
    // blocking read does not hold them back; dead consumers are removed on
    // the same clock, less often.
    let promoter = {
        let (host, keys, plugin, queue) = (
            r.host.clone(),
            r.keys.clone(),
            r.plugin.clone(),
            r.queue.clone(),
        );
        let (group, consumer) = (r.config.group.clone(), r.consumer.clone());
        let idle = dead_consumer_idle(r.config.visibility_timeout);
        let every = prune_every(r.config.visibility_timeout);
        let mut stopped = r.stopped.clone();
        tokio::spawn(async move {
            let mut last_prune: Option<Instant> = None;
            while !*stopped.borrow() {
                if let Err(e) = host.redis().queue_promote(&keys, 1000).await {
                    tracing::warn!(%plugin, %queue, "cannot move delayed messages: {e}");
                }
                if last_prune.is_none_or(|at| at.elapsed() >= every) {
                    last_prune = Some(Instant::now());
                    let idle_ms = u64::try_from(idle.as_millis()).unwrap_or(u64::MAX);
                    match host
                        .redis()
                        .queue_prune_consumers(&keys, &group, &consumer, idle_ms)
                        .await
                    {
                        Ok(removed) if !removed.is_empty() => tracing::info!(
                            %plugin, %queue, ?removed,
                            "removed consumers idle for {idle:?} with nothing pending"
                        ),
                        Ok(_) => {}
                        Err(e) => {
                            tracing::warn!(%plugin, %queue, "cannot remove dead consumers: {e}")
                        }
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(PROMOTE_EVERY) => {}
                    _ = stopped.changed() => {}
                }
            }
        })
    };
    // None: reclaim at once. (Not `now - visibility-timeout`: an `Instant`
    // before the clock's origin, e.g. a timeout longer than the machine's
    // uptime, panics.)
    let mut last_reclaim: Option<Instant> = None;
    let mut backoff = Duration::from_millis(100);
    let mut failed_reads = 0u32;
    while !*r.stopped.borrow() {
        // Wait for a free slot before taking messages off the queue: woken
        // the moment a message finishes (polling here added up to its
        // period to every message's latency once all slots were busy).
        let free = tokio::select! {
            permit = slots.acquire() => {
                drop(permit.expect("never closed"));
                slots.available_permits()
            }
            _ = r.stopped.changed() => 0,
        };
        if free == 0 {
            break;
        }
        let batch = free.min(r.config.batch as usize);
        let read = if last_reclaim.is_none_or(|at| at.elapsed() >= r.config.visibility_timeout / 4)
        {
            last_reclaim = Some(Instant::now());
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
                            // Each delivery before this one was lost (its
                            // consumer died or stalled): an attempt used.
                            let lost = deliveries.saturating_sub(1);
                            let attempt = e.attempt.saturating_add(lost);
                            (e, attempt, lost)
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
                    failed_reads = 0;
                    entries = v
                        .into_iter()
                        .map(|e| {
                            let a = e.attempt;
                            (e, a, 0)
                        })
                        .collect();
                }
                Err(e) => {
                    tracing::warn!(plugin = %r.plugin, queue = %r.queue, "cannot read: {e}; retrying in {backoff:?}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    failed_reads += 1;
                    if failed_reads.is_multiple_of(REOPEN_READER_AFTER) {
                        match r.host.redis().dedicated().await {
                            Ok(reader) => r.reader = reader,
                            Err(e) => {
                                tracing::warn!(plugin = %r.plugin, queue = %r.queue, "cannot open a new read connection: {e}")
                            }
                        }
                    }
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
        for (entry, attempt, lost) in entries {
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
                shared.process(entry, attempt, lost).await;
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
    limit: Option<RateLimit>,
}

impl Shared {
    /// Runs attempt `attempt` of a message whose previous `lost`
    /// deliveries were lost (0 unless it was reclaimed).
    async fn process(&self, entry: Entry, attempt: u32, lost: u32) {
        let max = match entry.max_attempts {
            0 => self.config.max_attempts,
            own => own,
        };
        if lost > 0 && attempt > max {
            // Its consumer died or stalled during its last allowed attempt
            // (each lost delivery counted as one): running it again would
            // pass `max-attempts`, and a message that kills every host
            // that runs it would never stop. Dead letters, not run.
            let error = lost_error(
                &entry.error,
                attempt,
                lost,
                max,
                self.config.visibility_timeout,
            );
            tracing::warn!(plugin = %self.plugin, queue = %self.queue, id = %entry.id, "{error}");
            return self
                .fail(&entry.entry_id, &entry.id, attempt - 1, error)
                .await;
        }
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
        if let Some(limit) = &self.limit {
            match limit.check(redis, &job.headers).await {
                Ok(None) => {}
                Ok(Some(delay)) => {
                    return self.defer(&entry.entry_id, &job.id, attempt, delay).await;
                }
                // The check could not be made: a failed attempt, as if the
                // handler had failed (retried with backoff, then dead letters).
                Err(error) => return self.fail(&entry.entry_id, &job.id, attempt, error).await,
            }
        }
        let source = format!("queue {} message {}", self.queue, job.id);
        // The message's span continues the producer's trace from the
        // `traceparent` it carries.
        let span = crate::logging::consumer_span(
            &self.queue,
            job.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        );
        let called = {
            use tracing::Instrument as _;
            super::call(&self.host, &self.plugin, Call::Job(&job), &source)
                .instrument(span)
                .await
        };
        match called {
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
                self.fail(&entry.entry_id, &job.id, attempt, e.to_string())
                    .await
            }
        }
    }

    /// Schedules a retry, or moves the message to the dead letters.
    async fn fail(&self, entry_id: &str, id: &str, attempt: u32, error: String) {
        let delay = self.backoff(attempt, id);
        match self
            .host
            .redis()
            .queue_fail(
                &self.keys,
                &self.config.group,
                entry_id,
                delay.as_millis() as u64,
                &error,
                self.config.max_attempts,
                attempt,
            )
            .await
        {
            Ok(outcome) => tracing::info!(
                plugin = %self.plugin, queue = %self.queue, %id, attempt, %outcome,
                "message failed: {error}"
            ),
            Err(e) => {
                tracing::warn!(plugin = %self.plugin, queue = %self.queue, %id, "cannot schedule the retry: {e}")
            }
        }
    }

    /// Moves a message over the rate limit back into the delayed set, due
    /// after `delay`; its attempt does not change.
    async fn defer(&self, entry_id: &str, id: &str, attempt: u32, delay: Duration) {
        let delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX).max(1);
        match self
            .host
            .redis()
            .queue_defer(&self.keys, &self.config.group, entry_id, delay_ms, attempt)
            .await
        {
            Ok(outcome) => {
                if outcome == "deferred"
                    && let Some(p) = self.host.plugin(&self.plugin)
                {
                    p.count_deferred_message();
                }
                tracing::debug!(
                    plugin = %self.plugin, queue = %self.queue, %id, delay_ms, %outcome,
                    "message over the rate limit"
                );
            }
            // Still pending: another consumer takes it over after the
            // visibility timeout (which counts as a delivery).
            Err(e) => {
                tracing::warn!(plugin = %self.plugin, queue = %self.queue, %id, "cannot defer a message over the rate limit: {e}")
            }
        }
    }

    /// `backoff × 2^(attempt-1)`, capped, times a jitter in [0.5, 1.5).
    fn backoff(&self, attempt: u32, id: &str) -> Duration {
        let base =
            self.config.backoff.as_secs_f64() * 2f64.powi(attempt.saturating_sub(1).min(30) as i32);
        let capped = base.min(self.config.max_backoff.as_secs_f64());
        let jitter = (RandomState::new().hash_one((id, attempt)) % 1000) as f64 / 1000.0 + 0.5;
        // `try_`: a huge `max-backoff` times the jitter overflows a Duration.
        Duration::try_from_secs_f64(capped * jitter).unwrap_or(self.config.max_backoff)
    }
}

/// The dead letter's error for a message whose last `lost` deliveries were
/// lost (attempts `attempt - lost` to `attempt - 1` of `max`); `before` is
/// the error of the attempt before those, if one failed.
fn lost_error(before: &str, attempt: u32, lost: u32, max: u32, visibility: Duration) -> String {
    let (first, last) = (attempt - lost, attempt - 1);
    let which = if first == last {
        format!("attempt {last} of {max}")
    } else {
        format!("each of attempts {first} to {last} of {max}")
    };
    let mut error = format!(
        "its consumer died or stalled during {which} (not acknowledged within the \
         visibility timeout of {visibility:?}); not run again"
    );
    if !before.is_empty() {
        error.push_str(&format!("; the attempt before failed: {before}"));
    }
    error
}

/// Most limiter keys whose deferral schedule a consumer remembers; past
/// this, schedules already due are forgotten (and, if that is not enough,
/// all of them: deferrals then only lose their spacing).
const MAX_SCHEDULED_KEYS: usize = 10_000;

/// A consumer's `rate-limit`: the policy, what it is counted per, and when
/// this consumer has deferred messages to, per limiter key.
///
/// The limiter keys are the consuming plugin's own
/// ([`Namespace::limiter`]: one hash tag per limited key): the queue's name
/// without `rate-limit-key`, else the value of the message header it names
/// (`""` when a message has none). So a plugin's own `limiter::check(policy,
/// tenant)` and its overrides share a tenant's budget with the queue.
///
/// A denied message is due again when the limiter says one unit is free
/// (`retry-after`), but if every denied message came back then, all but one
/// would be denied again, over and over. So each further message deferred
/// for the same key is due one emission interval (the policy's period /
/// count) after the previous one: a backlog over the limit comes back at
/// the limit's rate, in order, and each message is deferred about once per
/// host.
struct RateLimit {
    namespace: Namespace,
    policy: String,
    limits: Limits,
    queue: String,
    key: Option<RateLimitKey>,
    /// Per limiter key: when the next deferred message is due.
    schedule: std::sync::Mutex<HashMap<String, Instant>>,
}

impl RateLimit {
    fn new(
        namespace: Namespace,
        policy: String,
        limits: Limits,
        queue: String,
        key: Option<RateLimitKey>,
    ) -> RateLimit {
        RateLimit {
            namespace,
            policy,
            limits,
            queue,
            key,
            schedule: Default::default(),
        }
    }

    /// The limiter key of a message with `headers`.
    fn key<'a>(&'a self, headers: &'a [(String, String)]) -> &'a str {
        match &self.key {
            None => &self.queue,
            Some(RateLimitKey::Header(name)) => headers
                .iter()
                .find(|(k, _)| k == name)
                .map_or("", |(_, v)| v.as_str()),
        }
    }

    /// Takes one unit for the message: `None` when allowed, else how long
    /// to defer it. An error means the check could not be made.
    async fn check(
        &self,
        redis: &Redis,
        headers: &[(String, String)],
    ) -> Result<Option<Duration>, String> {
        let key = self.key(headers);
        let algorithm = self.limits.algorithm();
        let keys = self
            .namespace
            .limiter(&self.policy, algorithm.code(), key)
            .map_err(|e| format!("rate-limit key: {e}"))?;
        let reply = redis
            .limiter_check(algorithm, &keys, self.limits.script_params(), 1, None)
            .await
            .map_err(|e| format!("rate-limit check (policy `{}`): {e}", self.policy))?;
        match reply {
            LimiterReply::Decision { allowed: true, .. } => Ok(None),
            LimiterReply::Decision { retry_after_ms, .. } => Ok(Some(self.due_in(
                key,
                Duration::from_millis(retry_after_ms),
                Instant::now(),
            ))),
            LimiterReply::CostOverLimit { limit } => Err(format!(
                "rate-limit: the override of policy `{}` for key {key:?} allows {limit} units, so a message can never pass",
                self.policy
            )),
            LimiterReply::BadOverride => Err(format!(
                "rate-limit: the override of policy `{}` for key {key:?} is malformed in Redis; set or clear it again",
                self.policy
            )),
        }
    }

    /// When a message denied now for `key` should come back: after
    /// `retry_after`, and one emission interval after the previous message
    /// deferred for the same key.
    fn due_in(&self, key: &str, retry_after: Duration, now: Instant) -> Duration {
        let mut schedule = self.schedule.lock().expect("schedule");
        if schedule.len() >= MAX_SCHEDULED_KEYS && !schedule.contains_key(key) {
            schedule.retain(|_, due| *due > now);
            if schedule.len() >= MAX_SCHEDULED_KEYS {
                schedule.clear();
            }
        }
        let earliest = now + retry_after;
        let due = schedule
            .get(key)
            .map_or(earliest, |next| (*next).max(earliest));
        schedule.insert(key.to_string(), due + emission_interval(&self.limits));
        due - now
    }
}

/// The policy's average time per unit: period / count.
fn emission_interval(limits: &Limits) -> Duration {
    let (count, period) = match *limits {
        Limits::Gcra { rate, .. } | Limits::TokenBucket { refill: rate, .. } => {
            (rate.count, rate.period)
        }
        Limits::SlidingWindow { limit, window } | Limits::FixedWindow { limit, window } => {
            (limit, window)
        }
        // Refused by the configuration: a deferral would wait out a lease.
        Limits::Concurrency { .. } => return Duration::ZERO,
    };
    Duration::from_secs_f64(period.as_secs_f64() / count.max(1) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limiter::Rate;

    fn limit(key: Option<RateLimitKey>) -> RateLimit {
        RateLimit::new(
            Namespace::new(&PluginName::parse("w").unwrap()),
            "per-tenant".into(),
            Limits::Gcra {
                rate: Rate::new(10, Duration::from_secs(1)),
                burst: 1,
            },
            "jobs".into(),
            key,
        )
    }

    /// The key is the queue's name, or the header's value ("" without it).
    #[test]
    fn keys_per_queue_and_per_tenant() {
        let h = |v: &[(&str, &str)]| -> Vec<(String, String)> {
            v.iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect()
        };
        let q = limit(None);
        assert_eq!(q.key(&h(&[("tenant", "a")])), "jobs");
        let t = limit(Some(RateLimitKey::Header("tenant".into())));
        assert_eq!(t.key(&h(&[("x", "1"), ("tenant", "a")])), "a");
        assert_eq!(t.key(&h(&[("x", "1")])), "");
        assert_eq!(t.key(&h(&[("Tenant", "a")])), "", "names match exactly");
    }

    /// Messages denied together for one key come back one emission
    /// interval apart, never before the limiter's retry-after; other keys
    /// have their own schedule, and a schedule in the past does not delay.
    #[test]
    fn deferrals_are_spaced_by_the_emission_interval() {
        let l = limit(Some(RateLimitKey::Header("tenant".into())));
        let now = Instant::now();
        let ms = |n| Duration::from_millis(n);
        assert_eq!(l.due_in("a", ms(30), now), ms(30));
        assert_eq!(l.due_in("a", ms(30), now), ms(130));
        assert_eq!(l.due_in("a", ms(500), now), ms(500));
        assert_eq!(l.due_in("a", ms(10), now), ms(600));
        assert_eq!(l.due_in("b", ms(10), now), ms(10));
        let later = now + Duration::from_secs(5);
        assert_eq!(l.due_in("a", ms(20), later), ms(20));
    }

    /// A dead consumer is one idle ten visibility timeouts, never less
    /// than 10 s (nor overflowing); it is looked for ten times as often,
    /// within 1-60 s.
    #[test]
    fn dead_consumer_bounds() {
        let s = Duration::from_secs;
        assert_eq!(dead_consumer_idle(s(30)), s(300));
        assert_eq!(dead_consumer_idle(Duration::from_millis(100)), s(10));
        assert_eq!(dead_consumer_idle(Duration::MAX), Duration::MAX);
        assert_eq!(prune_every(s(30)), s(30));
        assert_eq!(prune_every(Duration::from_millis(100)), s(1));
        assert_eq!(prune_every(Duration::MAX), s(60));
    }

    /// The dead letter of a message whose deliveries were lost says which
    /// attempts, why, and the error before them.
    #[test]
    fn lost_deliveries_error() {
        let e = lost_error("", 4, 3, 3, Duration::from_secs(30));
        assert_eq!(
            e,
            "its consumer died or stalled during each of attempts 1 to 3 of 3 (not acknowledged \
             within the visibility timeout of 30s); not run again"
        );
        let e = lost_error("boom", 5, 1, 4, Duration::from_secs(1));
        assert!(
            e.contains("during attempt 4 of 4") && e.ends_with("; the attempt before failed: boom"),
            "{e}"
        );
    }

    /// Each rate policy's interval is its period over its count.
    #[test]
    fn emission_intervals() {
        let s = Duration::from_secs;
        assert_eq!(
            emission_interval(&Limits::TokenBucket {
                capacity: 5,
                refill: Rate::new(4, s(1))
            }),
            Duration::from_millis(250)
        );
        assert_eq!(
            emission_interval(&Limits::FixedWindow {
                limit: 60,
                window: s(60)
            }),
            s(1)
        );
    }
}
