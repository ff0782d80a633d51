//! Each pattern twice: as an invocation of the `bench-probe` plugin through
//! [`Host::invoke`] (admission, a fresh instance, the capability layer with
//! its quotas and counters, the Redis command), and as the same Redis logic
//! called directly from Rust: the same typed redis-rs calls, the same Lua
//! scripts from `lua/`, the same key layout, on a connection of its own to
//! the same Redis — only without WebAssembly and without the host around it.
//!
//! Every worker uses keys of its own, so in-process coalescing of cache
//! lookups (a plugin-side optimisation the native code does not have) never
//! kicks in and both sides send the same commands.

use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context as _, bail, ensure};
use redloom::host::Host;
use redloom::limiter::Limits;
use redloom::namespace::{Namespace, PluginName};
use redloom::redis::cache::{CacheLookup, CacheValue};
use redloom::redis::queue::Enqueued;
use redloom::redis::{AcquireReply, Redis};

use crate::measure::{Op, op};

/// The value the guest caches (`tests/guests/bench-probe`: 128 × `v`).
pub const VALUE: [u8; 128] = [b'v'; 128];
/// What the guest enqueues and publishes (64 × `p`).
pub const PAYLOAD: [u8; 64] = [b'p'; 64];
/// The guest's cache policy: fresh for 10 minutes, no stale time; the SDK's
/// default lease of 10 s.
const FRESH_MS: u64 = 600_000;
const LEASE_MS: u64 = 10_000;
/// The guest's lock TTL.
const LOCK_TTL_MS: u64 = 10_000;
/// Queue length bound for both sides (the plugin's `queue-max-length`).
pub const QUEUE_MAX_LENGTH: u64 = 100_000_000;

/// The patterns of the side-by-side table, in report order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pattern {
    CacheHit,
    /// [`Pattern::CacheHit`] with the plugin's near cache: a warm key is
    /// answered from host memory. The native side is the same Redis
    /// lookup as for `cache-hit` (there is no native near cache).
    CacheHitNear,
    CacheMissFill,
    Limiter,
    Lock,
    Enqueue,
    QueueEndToEnd,
    Publish,
}

impl Pattern {
    pub const ALL: [Pattern; 8] = [
        Pattern::CacheHit,
        Pattern::CacheHitNear,
        Pattern::CacheMissFill,
        Pattern::Limiter,
        Pattern::Lock,
        Pattern::Enqueue,
        Pattern::QueueEndToEnd,
        Pattern::Publish,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Pattern::CacheHit => "cache-hit",
            Pattern::CacheHitNear => "cache-hit-near",
            Pattern::CacheMissFill => "cache-miss-fill",
            Pattern::Limiter => "limiter-gcra",
            Pattern::Lock => "lock-acquire-release",
            Pattern::Enqueue => "queue-enqueue",
            Pattern::QueueEndToEnd => "queue-end-to-end",
            Pattern::Publish => "publish",
        }
    }

    /// What one operation is, for the report.
    pub fn describe(self) -> &'static str {
        match self {
            Pattern::CacheHit => "cache-aside lookup of a warm key (1 EVALSHA)",
            Pattern::CacheHitNear => {
                "cache-aside lookup of a warm key; plugin: from the host's near cache (no Redis command), native: 1 EVALSHA"
            }
            Pattern::CacheMissFill => "cache-aside on a new key: lookup + fill (2 EVALSHA)",
            Pattern::Limiter => "GCRA check (1 EVALSHA)",
            Pattern::Lock => "uncontended acquire + release (2 EVALSHA)",
            Pattern::Enqueue => "enqueue of 64 bytes (1 EVALSHA)",
            Pattern::QueueEndToEnd => {
                "enqueue, then wait until a consumer handled it (XREADGROUP, handler PUBLISH, ack EVALSHA)"
            }
            Pattern::Publish => "PUBLISH of 64 bytes, no subscriber",
        }
    }
}

/// What both sides share: the host with the plugin loaded, and the native
/// side's own connection and namespace.
pub struct Bench {
    pub host: Arc<Host>,
    /// The plugin running the patterns.
    pub plugin: PluginName,
    /// The native side's connection (not the host's).
    pub native: Redis,
    /// The Redis URL, for the native side's own subscriber connection.
    pub url: String,
    /// The native side's keys live in a namespace of their own.
    pub native_ns: Namespace,
    /// The `bench` limiter policy of the plugin's manifest.
    pub gcra: Limits,
    nonce: AtomicU64,
}

impl Bench {
    pub fn new(
        host: Arc<Host>,
        plugin: PluginName,
        native: Redis,
        url: String,
        gcra: Limits,
    ) -> Bench {
        let native_ns = Namespace::new(&PluginName::parse("native").expect("a valid name"));
        Bench {
            host,
            plugin,
            native,
            url,
            native_ns,
            gcra,
            nonce: AtomicU64::new(0),
        }
    }

    /// A number unique to each run, for key names that must be new.
    pub fn nonce(&self) -> u64 {
        self.nonce.fetch_add(1, Ordering::Relaxed)
    }
}

/// The plugin side of `pattern` (not [`Pattern::QueueEndToEnd`]: see
/// `crate::e2e`).
pub fn plugin_op(b: &Arc<Bench>, pattern: Pattern) -> Op {
    plugin_op_as(b, pattern, b.plugin.clone())
}

/// [`plugin_op`] through another plugin loaded from the same component
/// (`bench-per-call`: the same patterns with a fresh instance per call).
pub fn plugin_op_as(b: &Arc<Bench>, pattern: Pattern, name: PluginName) -> Op {
    let nonce = b.nonce();
    let host = b.host.clone();
    let input = move |w: usize, n: u64| -> String {
        match pattern {
            Pattern::CacheHit => format!("cache:hit-{w}"),
            Pattern::CacheHitNear => format!("cache-near:near-hit-{w}"),
            Pattern::CacheMissFill => format!("cache:miss-{nonce}-{w}-{n}"),
            Pattern::Limiter => format!("limit:k-{w}"),
            Pattern::Lock => format!("lock:l-{nonce}-{w}"),
            Pattern::Enqueue => format!("enqueue:q-{nonce}"),
            Pattern::Publish => "publish:bench".to_string(),
            Pattern::QueueEndToEnd => unreachable!("measured by crate::e2e"),
        }
    };
    op(move |w, n| {
        let host = host.clone();
        let name = name.clone();
        let input = input(w, n);
        async move {
            let out = host.invoke(&name, input.as_bytes()).await?;
            match pattern {
                Pattern::CacheHit | Pattern::CacheHitNear | Pattern::CacheMissFill => {
                    ensure!(out == VALUE, "the plugin returned another cached value")
                }
                Pattern::Limiter => ensure!(out == [1], "the plugin's limiter check was refused"),
                Pattern::Lock => ensure!(out == [1], "the plugin did not own its lock"),
                _ => {}
            }
            Ok(())
        }
    })
}

/// The native side of `pattern`: the commands the capability sends for
/// the plugin's call, sent straight from Rust.
pub fn native_op(b: &Arc<Bench>, pattern: Pattern) -> Op {
    let nonce = b.nonce();
    let b = b.clone();
    op(move |w, n| {
        let b = b.clone();
        async move {
            let redis = &b.native;
            let ns = &b.native_ns;
            match pattern {
                Pattern::CacheHit | Pattern::CacheHitNear => {
                    let v = get_or_fill(redis, ns, &format!("hit-{w}")).await?;
                    ensure!(v == VALUE, "another cached value");
                }
                Pattern::CacheMissFill => {
                    let v = get_or_fill(redis, ns, &format!("miss-{nonce}-{w}-{n}")).await?;
                    ensure!(v == VALUE, "another cached value");
                }
                Pattern::Limiter => {
                    let keys = ns.limiter("bench", b.gcra.algorithm().code(), &format!("k-{w}"))?;
                    let reply = redis
                        .limiter_check(b.gcra.algorithm(), &keys, b.gcra.script_params(), 1, None)
                        .await?;
                    match reply {
                        redloom::redis::LimiterReply::Decision { allowed: true, .. } => {}
                        other => bail!("limiter check refused: {other:?}"),
                    }
                }
                Pattern::Lock => {
                    let keys = ns.lock(&format!("l-{nonce}-{w}"))?;
                    let owner = format!("{:016x}-{w}-{n}", random_u64());
                    match redis.lock_acquire(&keys, &owner, LOCK_TTL_MS).await? {
                        AcquireReply::Acquired { .. } => {}
                        AcquireReply::Held { .. } => bail!("uncontended lock was held"),
                    }
                    ensure!(
                        redis.lock_release(&keys, &owner).await?,
                        "did not own the lock"
                    );
                }
                Pattern::Enqueue => {
                    let keys = ns.queue(&format!("q-{nonce}"), false)?;
                    enqueue(redis, &keys).await?;
                }
                Pattern::Publish => {
                    redis
                        .publish(&ns.channel("bench", false)?, &PAYLOAD)
                        .await?;
                }
                Pattern::QueueEndToEnd => unreachable!("measured by crate::e2e"),
            }
            Ok(())
        }
    })
}

/// Enqueues [`PAYLOAD`] as the `queue` capability does for
/// `enqueue(queue, payload, default options)`; returns the message id.
pub async fn enqueue(
    redis: &Redis,
    keys: &redloom::namespace::QueueKeys,
) -> anyhow::Result<String> {
    match redis
        .queue_enqueue(keys, None, &PAYLOAD, "{}", 0, 0, 0, QUEUE_MAX_LENGTH)
        .await?
    {
        Enqueued::New(id) => Ok(id),
        other => bail!("enqueue: {other:?}"),
    }
}

/// Cache-aside as the SDK's `Cache::get_or_fill` does it, against the
/// same scripts: lookup; on a miss (this caller holds the lease), fill.
async fn get_or_fill(redis: &Redis, ns: &Namespace, key: &str) -> anyhow::Result<Vec<u8>> {
    let keys = ns.cache(key)?;
    let lease = format!("{:016x}", random_u64());
    let unit = ((random_u64() >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
    match redis
        .cache_lookup(&keys, "", &lease, LEASE_MS, 0.0, unit, false)
        .await?
    {
        CacheLookup::Fresh { value, .. } | CacheLookup::Stale { value, .. } => {
            value.context("a negative entry")
        }
        CacheLookup::Miss { now_ms } => {
            let stored = redis
                .cache_fill(
                    &keys,
                    &lease,
                    now_ms,
                    &CacheValue {
                        value: Some(&VALUE),
                        fresh_ms: FRESH_MS,
                        stale_ms: 0,
                        tags: "",
                    },
                )
                .await?;
            ensure!(stored, "the fill lease was lost");
            Ok(VALUE.to_vec())
        }
        CacheLookup::Filling { .. } => bail!("someone else is filling a key only this worker uses"),
    }
}

fn random_u64() -> u64 {
    static N: AtomicU64 = AtomicU64::new(0);
    RandomState::new().hash_one(N.fetch_add(1, Ordering::Relaxed))
}
