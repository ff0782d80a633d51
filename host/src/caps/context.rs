//! The state capabilities work with: [`PluginContext`], what every
//! instance of one plugin shares (its name, namespace, quotas, counters and
//! the capabilities' per-plugin state), and [`Caps`], one instance's side
//! (its Redis connection, per-invocation accounting, handles and
//! [`Cleanup`]). `store.rs` puts [`Caps`] into the wasmtime store.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use crate::caps::outbound_http::Origin;
use crate::namespace::{Namespace, PluginName};
use crate::quota::{Admission, QuotaTrap, Quotas, TokenBucket};
use crate::redis::Redis;
use crate::stats::PluginStats;

/// What every instance of one plugin shares.
#[derive(Debug)]
pub struct PluginContext {
    pub name: PluginName,
    pub namespace: Namespace,
    pub settings: BTreeMap<String, String>,
    pub quotas: Quotas,
    pub stats: PluginStats,
    /// The plugin's `redis-rate` bucket, shared by all its invocations.
    pub redis_rate: Mutex<TokenBucket>,
    /// Where the plugin's invocations start (see `plugin::Placed`).
    pub placement: crate::quota::Placement,
    /// Redis memory the plugin's keys use (the `storage` quota).
    pub storage: crate::quota::StorageMeter,
    /// The plugin's `log-rate` bucket (bytes), shared by all its invocations.
    pub log_rate: Mutex<TokenBucket>,
    /// When the host last warned that this plugin's log output is dropped
    /// (milliseconds since the Unix epoch; see `caps::log`).
    log_drop_warned_ms: std::sync::atomic::AtomicU64,
    pub admission: Admission,
    pub outbound: OutboundPolicy,
    /// Named rate-limit policies from the manifest (see `caps::limiter`).
    pub limiters: crate::limiter::Policies,
    /// Channel names shared with other plugins (`shared-channels`).
    pub shared_channels: std::collections::BTreeSet<String>,
    /// In-process single flights of cache lookups (see `caps::cache`).
    pub cache_flights: Arc<crate::caps::cache::Flights>,
    /// Fresh cache hits kept in host memory (see `caps::near_cache`).
    pub near_cache: crate::near_cache::NearCache,
    pub queues: QueuePolicy,
    /// The host's own connection, for `keys.scan`: a plugin under its own
    /// ACL user may not `SCAN`, and the host confines the pattern to the
    /// plugin's prefix itself (see `caps::data::keys`). Unset: the
    /// plugin's connection scans.
    pub key_scanner: std::sync::OnceLock<Redis>,
    /// The plugin's own Lua scripts (`[plugins.NAME.scripts]`).
    pub scripts: crate::caps::data::PluginScripts,
    /// Redis connections of its own the plugin may open per second
    /// (transactions, blocking pops; see `caps::data::OWN_CONNECTION_RATE`).
    pub own_connections: Mutex<TokenBucket>,
}

/// Which queues are shared and how long they may grow.
#[derive(Debug, Clone)]
pub struct QueuePolicy {
    /// Queue names (or `prefix*`) shared with other plugins (`shared-queues`).
    pub shared: Vec<String>,
    /// Messages a queue may hold (unacknowledged plus delayed) before
    /// `enqueue` is refused (`queue-max-length`).
    pub max_length: u64,
}

impl Default for QueuePolicy {
    fn default() -> Self {
        QueuePolicy {
            shared: Vec::new(),
            max_length: 100_000,
        }
    }
}

/// Where and how long a plugin may make outbound HTTP requests.
#[derive(Debug, Clone, Default)]
pub struct OutboundPolicy {
    /// Origins from `allowed-outbound-hosts`; empty: none.
    pub allowed: Vec<Origin>,
    /// Deadline of one request (`quotas.outbound-timeout`).
    pub timeout: std::time::Duration,
}

impl PluginContext {
    pub fn new(
        name: PluginName,
        settings: BTreeMap<String, String>,
        quotas: Quotas,
        allowed_outbound: Vec<Origin>,
    ) -> PluginContext {
        let near_cache = crate::near_cache::NearCache::new(
            Default::default(),
            Namespace::new(&name).cache_tracking_prefixes(),
            name.as_str(),
        );
        PluginContext {
            namespace: Namespace::new(&name),
            name,
            settings,
            stats: PluginStats::default(),
            redis_rate: Mutex::new(TokenBucket::new(quotas.redis_rate)),
            log_rate: Mutex::new(TokenBucket::new(quotas.log_rate)),
            storage: Default::default(),
            placement: Default::default(),
            log_drop_warned_ms: Default::default(),
            admission: Admission::new(&quotas),
            shared_channels: Default::default(),
            cache_flights: Default::default(),
            near_cache,
            key_scanner: std::sync::OnceLock::new(),
            scripts: Default::default(),
            own_connections: Mutex::new(TokenBucket::new(crate::caps::data::OWN_CONNECTION_RATE)),
            queues: QueuePolicy::default(),
            outbound: OutboundPolicy {
                allowed: allowed_outbound,
                timeout: quotas.outbound_timeout,
            },
            quotas,
            limiters: Default::default(),
        }
    }

    /// Warns that the plugin's log output is being dropped, at most once per
    /// [`DROP_WARNING_EVERY`](crate::caps::log::DROP_WARNING_EVERY).
    pub fn warn_log_dropped(&self) {
        use std::sync::atomic::Ordering;
        let now = crate::units::unix_ms();
        let last = self.log_drop_warned_ms.load(Ordering::Relaxed);
        let every = crate::caps::log::DROP_WARNING_EVERY.as_millis() as u64;
        if now.saturating_sub(last) >= every
            && self
                .log_drop_warned_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                plugin = %self.name,
                max_log = self.quotas.max_log,
                log_rate = self.quotas.log_rate,
                "dropping log output over the plugin's max-log or log-rate quota (counted in redloom_log_dropped_total)"
            );
        }
    }

    /// The same context with the manifest's near-cache settings.
    pub fn with_near_cache(mut self, config: crate::near_cache::NearConfig) -> PluginContext {
        self.near_cache = crate::near_cache::NearCache::new(
            config,
            self.namespace.cache_tracking_prefixes(),
            self.name.as_str(),
        );
        self
    }

    /// The same context with the manifest's queue settings.
    pub fn with_queues(mut self, queues: QueuePolicy) -> PluginContext {
        self.queues = queues;
        self
    }

    /// The same context with the manifest's shared channel names.
    pub fn with_shared_channels(mut self, names: &[String]) -> PluginContext {
        self.shared_channels = names.iter().cloned().collect();
        self
    }

    /// The same context with the manifest's rate-limit policies.
    pub fn with_scripts(mut self, scripts: crate::caps::data::PluginScripts) -> PluginContext {
        self.scripts = scripts;
        self
    }

    pub fn with_limiters(mut self, limiters: crate::limiter::Policies) -> PluginContext {
        self.limiters = limiters;
        self
    }
}

/// The capability side of an instance: who the plugin is and how to reach Redis.
pub struct Caps {
    pub(crate) plugin: Arc<PluginContext>,
    /// `None` only while `redloom check` probes a plugin without Redis.
    pub(crate) redis: Option<Redis>,
    /// Redis commands sent during the current invocation.
    pub(crate) redis_ops: u64,
    /// Work to do when the current invocation ends, however it ends.
    pub(crate) cleanup: Arc<Cleanup>,
    /// The first quota the current invocation broke inside a capability
    /// call; the invocation fails with it whatever the guest returns.
    pub(crate) breach: Option<QuotaTrap>,
    /// The instance's `lock` handles (see `caps::lock`).
    pub(crate) locks: crate::caps::lock::Locks,
    /// Open optimistic transactions (`batch.transaction`).
    pub(crate) transactions: crate::caps::data::Transactions,
    /// The instance's concurrency `lease` handles (see `caps::limiter`).
    pub(crate) leases: crate::caps::limiter::Leases,
    /// Log bytes of the current invocation (the `log` capability, stdout and
    /// stderr together; see `caps::log`).
    pub(crate) log_used: Arc<std::sync::atomic::AtomicU64>,
}

impl Caps {
    /// One instance's capability state: plugin `plugin`, sending on
    /// `redis`. `store::State` makes one per instance; a test can make one
    /// to drive a capability's host implementation (the WIT `Host` traits
    /// in `crate::bindings`) against a real Redis without a guest.
    pub fn new(plugin: Arc<PluginContext>, redis: Option<Redis>) -> Caps {
        Caps {
            plugin,
            redis,
            redis_ops: 0,
            cleanup: Arc::default(),
            breach: None,
            locks: Default::default(),
            transactions: Default::default(),
            leases: Default::default(),
            log_used: Arc::default(),
        }
    }

    /// Redis commands sent so far (what the `redis-ops` quota counts).
    pub fn redis_ops(&self) -> u64 {
        self.redis_ops
    }

    /// The first quota broken in a capability call, if any: the invocation
    /// would fail with it whatever the guest returned.
    pub fn broken_quota(&self) -> Option<&QuotaTrap> {
        self.breach.as_ref()
    }

    /// Runs what the invocation left to clean up (held locks and slots),
    /// as the host does when an invocation ends.
    pub async fn finish(&self) {
        self.cleanup.run_all(self.redis.as_ref()).await;
    }
}

/// A deferred action: given the Redis handle, a future that undoes something.
pub type CleanupAction = Box<dyn FnOnce(Redis) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

/// Actions the host runs when an invocation ends: on success, on a guest
/// error, on a trap, and when the invocation is cancelled at its deadline.
///
/// Capabilities that hand out something that must not outlive the
/// invocation (a held lock, a concurrency slot) register its release here
/// and cancel the registration when the guest releases it itself. The
/// registry lives outside the `Store`, so it survives the store being
/// dropped mid-call.
#[derive(Default)]
pub struct Cleanup {
    actions: Mutex<BTreeMap<u64, CleanupAction>>,
    next: std::sync::atomic::AtomicU64,
}

impl Cleanup {
    /// Registers `action`; the returned id cancels it.
    pub fn register(&self, action: CleanupAction) -> u64 {
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.actions
            .lock()
            .expect("cleanup poisoned")
            .insert(id, action);
        id
    }

    /// Forgets the action `id` (the guest undid it itself).
    pub fn cancel(&self, id: u64) {
        self.actions.lock().expect("cleanup poisoned").remove(&id);
    }

    /// Runs every registered action, in registration order.
    pub async fn run_all(&self, redis: Option<&Redis>) {
        let actions = std::mem::take(&mut *self.actions.lock().expect("cleanup poisoned"));
        let Some(redis) = redis else { return };
        for (_, action) in actions {
            action(redis.clone()).await;
        }
    }
}
