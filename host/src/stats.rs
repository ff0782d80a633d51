//! Per-plugin counters: what `redloom invoke --stats` prints and what the
//! metrics endpoint exports. Plain atomics, updated once per invocation (and
//! once per Redis command), read as a [`Snapshot`].

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use crate::handler::HandlerKind;
use crate::quota::Quota;

/// Every quota, in the order counters and outputs list them.
pub const QUOTAS: [Quota; 8] = Quota::ALL;

/// Upper bounds (seconds) of the wall-time histogram buckets; the last
/// bucket, `+Inf`, is implicit.
pub const WALL_TIME_BUCKETS: [f64; 12] = [
    0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 10.0,
];

/// How an invocation ended, for the error counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// The plugin returned its own typed error.
    GuestError,
    /// The instance trapped (panic, unreachable, stack overflow...).
    Trap,
    /// A quota ended the invocation (or refused it before it started).
    Quota(Quota),
    /// The instance could not be created.
    Instantiate,
    /// The caller went away first (an HTTP client hung up, `serve` shut
    /// down): the invocation was stopped where it was.
    Cancelled,
}

impl Outcome {
    /// A short label: `ok`, `guest-error`, `trap`, `quota:<name>`,
    /// `instantiate`, `cancelled` (the access log's `outcome`).
    pub fn label(self) -> std::borrow::Cow<'static, str> {
        match self {
            Outcome::Ok => "ok".into(),
            Outcome::GuestError => "guest-error".into(),
            Outcome::Trap => "trap".into(),
            Outcome::Quota(q) => format!("quota:{}", q.name()).into(),
            Outcome::Instantiate => "instantiate".into(),
            Outcome::Cancelled => "cancelled".into(),
        }
    }
}

/// The error kinds counted, with their metric label.
pub const ERROR_KINDS: [(&str, Outcome); 4] = [
    ("guest", Outcome::GuestError),
    ("trap", Outcome::Trap),
    ("instantiate", Outcome::Instantiate),
    ("cancelled", Outcome::Cancelled),
];

/// What a cache lookup found, with its metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheResult {
    /// A fresh value (from Redis or the near cache).
    Fresh,
    /// A stale value served while it is refreshed.
    Stale,
    /// Nothing: the caller holds the fill lease.
    Miss,
    /// Nothing: another caller was filling and the wait ran out.
    Filling,
}

impl CacheResult {
    pub const ALL: [CacheResult; 4] = [
        CacheResult::Fresh,
        CacheResult::Stale,
        CacheResult::Miss,
        CacheResult::Filling,
    ];

    pub fn name(self) -> &'static str {
        match self {
            CacheResult::Fresh => "fresh",
            CacheResult::Stale => "stale",
            CacheResult::Miss => "miss",
            CacheResult::Filling => "filling",
        }
    }
}

/// Counters of one plugin.
#[derive(Debug, Default)]
pub struct PluginStats {
    invocations: AtomicU64,
    errors: [AtomicU64; ERROR_KINDS.len()],
    quota: [AtomicU64; QUOTAS.len()],
    guest_cpu_ns: AtomicU64,
    redis_commands: AtomicU64,
    outbound_requests: AtomicU64,
    dropped_messages: AtomicU64,
    pubsub_reconnects: AtomicU64,
    pubsub_unsubscribed_ns: AtomicU64,
    deferred_messages: AtomicU64,
    dropped_log: AtomicU64,
    background: AtomicU64,
    /// Per handler ([`HandlerKind::ALL`] order): wall-time histogram
    /// buckets and sum.
    wall_buckets: [[AtomicU64; 13]; HandlerKind::ALL.len()],
    wall_sum_ns: [AtomicU64; HandlerKind::ALL.len()],
    cache_lookups: [AtomicU64; CacheResult::ALL.len()],
    cache_fills: AtomicU64,
    /// Limiter checks and slot acquisitions: allowed, denied.
    limiter: [AtomicU64; 2],
    /// Lock acquisitions: taken, not taken (held elsewhere until the wait
    /// ran out).
    locks: [AtomicU64; 2],
    lock_wait_ns: AtomicU64,
}

/// A consistent-enough copy of [`PluginStats`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    pub invocations: u64,
    /// `(kind, count)` for `guest`, `trap`, `instantiate`, `cancelled`.
    pub errors: Vec<(&'static str, u64)>,
    /// `(quota name, count)` for every quota, including those never hit.
    pub quota_rejections: Vec<(&'static str, u64)>,
    pub guest_cpu: Duration,
    pub redis_commands: u64,
    pub outbound_requests: u64,
    /// Pub/sub messages dropped because the plugin's buffer was full.
    pub dropped_messages: u64,
    /// Times the plugin's pub/sub subscription connection was lost and
    /// made again.
    pub pubsub_reconnects: u64,
    /// Time without a subscription summed over those reconnects: messages
    /// published in these windows were missed.
    pub pubsub_unsubscribed: Duration,
    /// Queue messages deferred because they were over their consumer's
    /// `rate-limit` (each deferral counts; the message is not lost).
    pub deferred_messages: u64,
    /// Log records (and stdout/stderr lines) dropped over `max-log` or
    /// `log-rate`.
    pub dropped_log: u64,
    /// Invocations run on the background runtime: moved there after
    /// computing for long, or started there because the plugin recently did
    /// (see `plugin::Placed`).
    pub background: u64,
    /// Per handler that was called at least once: cumulative counts per
    /// bucket of [`WALL_TIME_BUCKETS`], then `+Inf`, and the sum.
    pub wall_time: Vec<(HandlerKind, WallTime)>,
    /// `(result, count)` for every [`CacheResult`].
    pub cache_lookups: Vec<(&'static str, u64)>,
    /// Values stored by cache fills.
    pub cache_fills: u64,
    /// `(decision, count)`: `allowed`, `denied` (limiter checks and slot
    /// acquisitions).
    pub limiter_decisions: Vec<(&'static str, u64)>,
    /// `(result, count)`: `acquired`, `busy` (not taken within the wait).
    pub lock_acquisitions: Vec<(&'static str, u64)>,
    /// Time spent in lock acquisitions, taken or not.
    pub lock_wait: Duration,
    /// The cache capability's near cache: hits, misses, invalidations,
    /// evictions and size (filled in by `Plugin::stats`).
    pub near_cache: NearStats,
}

/// One handler's wall-time histogram.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WallTime {
    /// Cumulative counts per bucket of [`WALL_TIME_BUCKETS`], then `+Inf`.
    pub buckets: Vec<u64>,
    pub sum: Duration,
}

impl WallTime {
    /// Calls counted.
    pub fn count(&self) -> u64 {
        self.buckets.last().copied().unwrap_or(0)
    }
}

fn quota_index(q: Quota) -> usize {
    QUOTAS
        .iter()
        .position(|x| *x == q)
        .expect("every quota is listed")
}

fn handler_index(h: HandlerKind) -> usize {
    HandlerKind::ALL
        .iter()
        .position(|x| *x == h)
        .expect("every handler is listed")
}

impl PluginStats {
    /// Records one finished (or refused) invocation of `handler`.
    pub fn record(
        &self,
        handler: HandlerKind,
        outcome: Outcome,
        wall: Duration,
        guest_cpu: Duration,
    ) {
        self.invocations.fetch_add(1, Relaxed);
        match outcome {
            Outcome::Ok => {}
            Outcome::Quota(q) => {
                self.quota[quota_index(q)].fetch_add(1, Relaxed);
            }
            other => {
                let i = ERROR_KINDS
                    .iter()
                    .position(|(_, o)| *o == other)
                    .expect("listed");
                self.errors[i].fetch_add(1, Relaxed);
            }
        }
        self.guest_cpu_ns
            .fetch_add(guest_cpu.as_nanos() as u64, Relaxed);
        let secs = wall.as_secs_f64();
        let bucket = WALL_TIME_BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(WALL_TIME_BUCKETS.len());
        let h = handler_index(handler);
        self.wall_buckets[h][bucket].fetch_add(1, Relaxed);
        self.wall_sum_ns[h].fetch_add(wall.as_nanos() as u64, Relaxed);
    }

    /// Counts one cache lookup by what it found.
    pub fn cache_lookup(&self, result: CacheResult) {
        // `ALL` lists the variants in declaration order.
        self.cache_lookups[result as usize].fetch_add(1, Relaxed);
    }

    /// Counts a value stored by a cache fill.
    pub fn cache_fill(&self) {
        self.cache_fills.fetch_add(1, Relaxed);
    }

    /// Counts a limiter decision.
    pub fn limiter_decision(&self, allowed: bool) {
        self.limiter[usize::from(!allowed)].fetch_add(1, Relaxed);
    }

    /// Counts a lock acquisition (taken or not) that took `waited`.
    pub fn lock_acquisition(&self, acquired: bool, waited: Duration) {
        self.locks[usize::from(!acquired)].fetch_add(1, Relaxed);
        self.lock_wait_ns
            .fetch_add(waited.as_nanos() as u64, Relaxed);
    }

    /// Counts one Redis command sent for the plugin.
    pub fn redis_command(&self) {
        self.redis_commands.fetch_add(1, Relaxed);
    }

    /// Counts a pub/sub message dropped at a full buffer.
    pub fn dropped_message(&self) {
        self.dropped_messages.fetch_add(1, Relaxed);
    }

    /// Counts a re-subscription after `unsubscribed` without one.
    pub fn resubscribed(&self, unsubscribed: Duration) {
        self.pubsub_reconnects.fetch_add(1, Relaxed);
        self.pubsub_unsubscribed_ns
            .fetch_add(unsubscribed.as_nanos() as u64, Relaxed);
    }

    /// Counts a queue message deferred by its consumer's rate limit.
    pub fn deferred_message(&self) {
        self.deferred_messages.fetch_add(1, Relaxed);
    }

    /// Counts a log record dropped over the plugin's log quotas.
    pub fn dropped_log(&self) {
        self.dropped_log.fetch_add(1, Relaxed);
    }

    /// Counts an invocation that runs on the background runtime.
    pub fn background(&self) {
        self.background.fetch_add(1, Relaxed);
    }

    /// Counts one outbound HTTP request.
    pub fn outbound_request(&self) {
        self.outbound_requests.fetch_add(1, Relaxed);
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            invocations: self.invocations.load(Relaxed),
            errors: ERROR_KINDS
                .iter()
                .zip(&self.errors)
                .map(|((k, _), c)| (*k, c.load(Relaxed)))
                .collect(),
            quota_rejections: QUOTAS
                .iter()
                .zip(&self.quota)
                .map(|(q, c)| (q.name(), c.load(Relaxed)))
                .collect(),
            guest_cpu: Duration::from_nanos(self.guest_cpu_ns.load(Relaxed)),
            redis_commands: self.redis_commands.load(Relaxed),
            outbound_requests: self.outbound_requests.load(Relaxed),
            dropped_messages: self.dropped_messages.load(Relaxed),
            pubsub_reconnects: self.pubsub_reconnects.load(Relaxed),
            pubsub_unsubscribed: Duration::from_nanos(self.pubsub_unsubscribed_ns.load(Relaxed)),
            deferred_messages: self.deferred_messages.load(Relaxed),
            dropped_log: self.dropped_log.load(Relaxed),
            background: self.background.load(Relaxed),
            wall_time: HandlerKind::ALL
                .iter()
                .zip(self.wall_buckets.iter().zip(&self.wall_sum_ns))
                .filter_map(|(kind, (buckets, sum))| {
                    let mut cumulative = 0;
                    let buckets: Vec<u64> = buckets
                        .iter()
                        .map(|b| {
                            cumulative += b.load(Relaxed);
                            cumulative
                        })
                        .collect();
                    let w = WallTime {
                        buckets,
                        sum: Duration::from_nanos(sum.load(Relaxed)),
                    };
                    (w.count() > 0).then_some((*kind, w))
                })
                .collect(),
            cache_lookups: CacheResult::ALL
                .iter()
                .zip(&self.cache_lookups)
                .map(|(r, c)| (r.name(), c.load(Relaxed)))
                .collect(),
            cache_fills: self.cache_fills.load(Relaxed),
            limiter_decisions: vec![
                ("allowed", self.limiter[0].load(Relaxed)),
                ("denied", self.limiter[1].load(Relaxed)),
            ],
            lock_acquisitions: vec![
                ("acquired", self.locks[0].load(Relaxed)),
                ("busy", self.locks[1].load(Relaxed)),
            ],
            lock_wait: Duration::from_nanos(self.lock_wait_ns.load(Relaxed)),
            near_cache: Default::default(),
        }
    }
}

impl Snapshot {
    /// Errors of `kind` (`guest`, `trap`, `instantiate`, `cancelled`).
    pub fn errors_of(&self, kind: &str) -> u64 {
        self.errors
            .iter()
            .find(|(k, _)| *k == kind)
            .map_or(0, |(_, c)| *c)
    }

    /// Rejections by the quota named `name` (`cpu`, `memory`, ...).
    pub fn rejections_of(&self, name: &str) -> u64 {
        self.quota_rejections
            .iter()
            .find(|(k, _)| *k == name)
            .map_or(0, |(_, c)| *c)
    }
}

/// Counters and sizes of one near cache.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NearStats {
    /// Lookups answered from host memory.
    pub hits: u64,
    /// Lookups that could use the near cache but went to Redis.
    pub misses: u64,
    /// Entries dropped because Redis (or this host) said their keys were
    /// written, or because tracking was lost.
    pub invalidations: u64,
    /// Entries dropped to stay within `near-cache-max-bytes`.
    pub evictions: u64,
    /// Times tracking was lost while up (each flushed the near cache).
    pub tracking_lost: u64,
    /// Bytes held now (as counted against the bound).
    pub bytes: u64,
    /// Entries held now.
    pub entries: u64,
    /// Whether tracking is up (entries are served and kept).
    pub serving: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Outcomes land in their counters and the histogram is cumulative.
    #[test]
    fn records_outcomes() {
        let s = PluginStats::default();
        s.record(
            HandlerKind::Http,
            Outcome::Ok,
            Duration::from_micros(100),
            Duration::from_micros(50),
        );
        s.record(
            HandlerKind::Http,
            Outcome::Trap,
            Duration::from_millis(3),
            Duration::ZERO,
        );
        s.record(
            HandlerKind::Queue,
            Outcome::Quota(Quota::Memory),
            Duration::from_secs(20),
            Duration::ZERO,
        );
        s.redis_command();
        let snap = s.snapshot();
        assert_eq!(snap.invocations, 3);
        assert_eq!(snap.errors_of("trap"), 1);
        assert_eq!(snap.errors_of("guest"), 0);
        assert_eq!(snap.rejections_of("memory"), 1);
        assert_eq!(snap.rejections_of("cpu"), 0);
        assert_eq!(snap.redis_commands, 1);
        assert_eq!(snap.guest_cpu, Duration::from_micros(50));
        let handlers: Vec<HandlerKind> = snap.wall_time.iter().map(|(h, _)| *h).collect();
        assert_eq!(
            handlers,
            [HandlerKind::Http, HandlerKind::Queue],
            "only handlers called"
        );
        let http = &snap.wall_time[0].1;
        assert_eq!(http.buckets[0], 1);
        assert_eq!(http.buckets[4], 2, "3 ms is under the 5 ms bound");
        assert_eq!(http.count(), 2);
        let queue = &snap.wall_time[1].1;
        assert_eq!(
            (queue.buckets[11], queue.count()),
            (0, 1),
            "20 s is over every bound"
        );
    }

    /// Pattern counters land under their labels.
    #[test]
    fn records_patterns() {
        let s = PluginStats::default();
        s.cache_lookup(CacheResult::Stale);
        s.cache_lookup(CacheResult::Stale);
        s.cache_lookup(CacheResult::Miss);
        s.cache_fill();
        s.limiter_decision(false);
        s.lock_acquisition(true, Duration::from_millis(2));
        s.lock_acquisition(false, Duration::from_millis(3));
        let snap = s.snapshot();
        assert_eq!(
            snap.cache_lookups,
            [("fresh", 0), ("stale", 2), ("miss", 1), ("filling", 0)]
        );
        assert_eq!(snap.cache_fills, 1);
        assert_eq!(snap.limiter_decisions, [("allowed", 0), ("denied", 1)]);
        assert_eq!(snap.lock_acquisitions, [("acquired", 1), ("busy", 1)]);
        assert_eq!(snap.lock_wait, Duration::from_millis(5));
    }
}
