//! Where per-plugin quotas are enforced, and exactly what each one covers.
//!
//! | quota | enforced by | covers | on breach |
//! |---|---|---|---|
//! | `cpu` | [`CpuMeter`] + the epoch callback | the time the invocation occupies a worker thread ([`Metered`]: every poll of its future): guest code, instantiation and the host's own work inside host calls; time awaiting Redis, parked at a yield or waiting for a worker is excluded | trap at the next epoch tick |
//! | `fuel` | wasmtime fuel | instructions executed | trap |
//! | `wall-time` | `tokio::time::timeout` inside the invocation's job (`plugin::Plugin::run`) | everything from instantiation to the reply, including Redis | the job's future is dropped |
//! | `memory`, `table-elements`, `instances` | [`Limits`] (a `ResourceLimiter`) | every `memory.grow` / `table.grow` and instantiation; instances, tables and memories are only created at instantiation | trap; too many instances fail instantiation, so the load-time probe refuses the plugin |
//! | `max-input`, `max-output` | `plugin.rs` | the handler's input and output | refused / output discarded |
//! | `max-reply` | capability modules | bytes a single Redis reply brings into the guest | typed error, invocation fails |
//! | `max-write` | `Caps::check_write` | one value written (kv, cache entry, queue payload and headers) or message published | typed error before anything is sent, invocation fails |
//! | `storage` | [`StorageMeter`] in `Caps::check_write` | Redis memory of all the plugin's keys: the last sample (`sampler`) plus this host's writes since | typed error before anything is sent, invocation fails |
//! | `max-log`, `log-rate` | `caps::log` | bytes logged per invocation (log, stdout, stderr) and per second by the plugin | the record is dropped and counted |
//! | `redis-ops` | `Caps::admit` | Redis commands per invocation | typed error, invocation fails |
//! | `redis-rate` | [`TokenBucket`] in `Caps::admit` | Redis commands per second, all invocations of the plugin | waits up to [`MAX_RATE_WAIT`], then typed error |
//! | `concurrency`, `queue`, `queue-wait` | [`Admission`] | invocations in flight and waiting | rejected before instantiation |
//! | `[host] max-instances` | [`HostSlots`] | invocations running at once across all plugins, shared fairly (a reserve for idle plugins, fewest-held first) | waits within `queue-wait`, then rejected as `concurrency` |
//!
//! A breach surfaces as [`QuotaTrap`] (traps) or as the guest-visible
//! `quota-exceeded` error recorded on the store (`Caps::breach`); either way
//! the invocation's result is a quota error naming the quota, the instance is
//! discarded, and the plugin's counters record it.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

/// A quota a plugin can break. The WIT `quota` the guest sees is the same
/// list; `caps` converts at its edge, so this module needs no bindings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Quota {
    Cpu,
    WallTime,
    Memory,
    RedisOps,
    RedisRate,
    Concurrency,
    Payload,
    Storage,
}

impl Quota {
    /// Every quota, in the order reports list them.
    pub const ALL: [Quota; 8] = [
        Quota::Cpu,
        Quota::WallTime,
        Quota::Memory,
        Quota::RedisOps,
        Quota::RedisRate,
        Quota::Concurrency,
        Quota::Payload,
        Quota::Storage,
    ];

    /// The quota's name in the manifest, errors and metrics labels.
    pub fn name(self) -> &'static str {
        match self {
            Quota::Cpu => "cpu",
            Quota::WallTime => "wall-time",
            Quota::Memory => "memory",
            Quota::RedisOps => "redis-ops",
            Quota::RedisRate => "redis-rate",
            Quota::Concurrency => "concurrency",
            Quota::Payload => "payload",
            Quota::Storage => "storage",
        }
    }
}

/// Per-plugin limits, from `[plugins.NAME.quotas]`. Each has a safe
/// default and a host-wide ceiling ([`crate::config::ceilings`]); the README has the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quotas {
    /// CPU time per invocation: time the invocation occupies a worker thread
    /// (guest code and the host's work inside its host calls), not time
    /// awaiting Redis or waiting for a worker thread.
    pub cpu: Duration,
    /// Wall-clock deadline per invocation, including time spent awaiting Redis.
    pub wall_time: Duration,
    /// Deterministic instruction budget per invocation (wasmtime fuel); `None`: off.
    pub fuel: Option<u64>,
    /// Linear memory per instance, in bytes.
    pub memory: u64,
    /// Table elements per table (function references).
    pub table_elements: u64,
    /// Core and component instances per plugin instance.
    pub instances: u64,
    /// Largest input accepted, in bytes.
    pub max_input: u64,
    /// Largest output returned, in bytes.
    pub max_output: u64,
    /// Most bytes one Redis reply may bring into the guest.
    pub max_reply: u64,
    /// Largest value one write may store or send: a kv value, a cache
    /// entry, a queue payload, a published message.
    pub max_write: u64,
    /// Bytes of Redis memory the plugin's keys may use in all (sampled by
    /// `serve`; see `storage`).
    pub storage: u64,
    /// Bytes the plugin may log (the `log` capability plus stdout and
    /// stderr) per invocation; the rest is dropped and counted.
    pub max_log: u64,
    /// Bytes per second the plugin as a whole may log (one second of burst);
    /// the rest is dropped and counted.
    pub log_rate: u64,
    /// Redis commands per invocation.
    pub redis_ops: u64,
    /// Redis commands per second for the plugin as a whole (token bucket; 0: unlimited).
    pub redis_rate: u64,
    /// Invocations of the plugin running at once.
    pub concurrency: u32,
    /// Invocations that may wait for a free slot; more are rejected at once.
    pub queue: u32,
    /// How long an invocation may wait for a slot before it is rejected.
    pub queue_wait: Duration,
    /// Deadline of one outbound HTTP request.
    pub outbound_timeout: Duration,
}

impl Default for Quotas {
    fn default() -> Self {
        Quotas {
            cpu: Duration::from_secs(2),
            wall_time: Duration::from_secs(10),
            fuel: None,
            memory: 64 << 20,
            table_elements: 20_000,
            instances: 64,
            max_input: 1 << 20,
            max_output: 1 << 20,
            max_reply: 1 << 20,
            max_write: 1 << 20,
            storage: 256 << 20,
            max_log: 64 << 10,
            log_rate: 256 << 10,
            redis_ops: 1_000,
            redis_rate: 10_000,
            concurrency: 16,
            queue: 64,
            queue_wait: Duration::from_secs(1),
            outbound_timeout: Duration::from_secs(5),
        }
    }
}

/// Longest a Redis command waits for the plugin's rate bucket to refill;
/// beyond that the command fails with `quota-exceeded(redis-rate)`.
pub const MAX_RATE_WAIT: Duration = Duration::from_millis(250);

/// A trap raised because a quota ran out; `plugin.rs` turns it into a
/// typed quota error.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{} quota exceeded: {detail}", .quota.name())]
pub struct QuotaTrap {
    pub quota: Quota,
    pub detail: String,
}

impl QuotaTrap {
    pub fn new(quota: Quota, detail: impl Into<String>) -> QuotaTrap {
        QuotaTrap {
            quota,
            detail: detail.into(),
        }
    }
}

/// The `ResourceLimiter` of every instance: memory, tables and instances.
///
/// Growth beyond a limit is an error (a trap naming the quota), not a
/// refused grow, so the invocation ends with a clear cause instead of a guest
/// allocator abort.
pub struct Limits {
    memory: usize,
    table_elements: usize,
    instances: usize,
}

impl Limits {
    pub fn new(q: &Quotas) -> Limits {
        Limits {
            memory: usize::try_from(q.memory).unwrap_or(usize::MAX),
            table_elements: usize::try_from(q.table_elements).unwrap_or(usize::MAX),
            instances: usize::try_from(q.instances).unwrap_or(usize::MAX),
        }
    }
}

impl wasmtime::ResourceLimiter for Limits {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory {
            return Err(QuotaTrap::new(
                Quota::Memory,
                format!(
                    "linear memory would grow to {desired} bytes; the cap is {}",
                    self.memory
                ),
            )
            .into());
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.table_elements {
            return Err(QuotaTrap::new(
                Quota::Memory,
                format!(
                    "a table would grow to {desired} elements; the cap is {}",
                    self.table_elements
                ),
            )
            .into());
        }
        Ok(true)
    }

    fn instances(&self) -> usize {
        self.instances
    }

    fn tables(&self) -> usize {
        self.instances
    }

    fn memories(&self) -> usize {
        self.instances
    }
}

/// CPU time of one invocation: the sum of the intervals during which its
/// future was being polled ([`Metered`]): guest code and the host's work in
/// host calls, not time waiting for Redis, at a yield, or for a worker.
/// The epoch callback reads it mid-poll ([`CpuMeter::used`] includes the
/// interval running now).
#[derive(Debug)]
pub struct CpuMeter {
    base: Instant,
    used_ns: AtomicU64,
    /// When the running poll started (see [`CpuMeter::now`]); `u64::MAX`
    /// while none runs.
    since_ns: AtomicU64,
    /// Whether the running poll is measured by the thread's CPU clock.
    thread_clock: std::sync::atomic::AtomicBool,
    /// Every poll is measured by the thread's CPU clock, wherever it runs.
    precise: bool,
}

impl Default for CpuMeter {
    fn default() -> Self {
        CpuMeter {
            base: Instant::now(),
            used_ns: AtomicU64::new(0),
            since_ns: AtomicU64::new(u64::MAX),
            thread_clock: Default::default(),
            precise: false,
        }
    }
}

thread_local! {
    /// Set on the threads of the engine's background runtime.
    static ON_BACKGROUND: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether the current thread is one of the background runtime's (the
/// low-priority threads heavy invocations move to, see `engine.rs`): CPU
/// there is measured by the thread's own clock.
pub fn on_background() -> bool {
    ON_BACKGROUND.with(|b| b.get())
}

/// Marks the current thread as one of the background runtime's (called by
/// the engine as each such thread starts).
pub(crate) fn mark_background_thread() {
    ON_BACKGROUND.with(|b| b.set(true));
}

/// The calling thread's CPU time in nanoseconds.
fn thread_cpu_ns() -> u64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: writes only into `t`; the clock exists on every Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

impl CpuMeter {
    /// A meter that reads the thread's CPU clock on every thread, so time
    /// the thread spends preempted is never charged. For one-off calls
    /// where a clock read costs nothing that matters: a load's trial
    /// instantiation ([`crate::plugin::Plugin::probe`]) must not fail
    /// because the machine was busy.
    pub fn precise() -> CpuMeter {
        CpuMeter {
            precise: true,
            ..CpuMeter::default()
        }
    }

    /// The clock a poll is measured with. On the normal threads, the wall
    /// clock (cheap: a poll there is short, and its thread is rarely
    /// preempted). On the background runtime's threads, the thread's own
    /// CPU clock: their low OS priority means they are preempted often, and
    /// time spent preempted is not the plugin's CPU.
    fn now(&self, thread_clock: bool) -> u64 {
        if thread_clock {
            thread_cpu_ns()
        } else {
            self.base.elapsed().as_nanos() as u64
        }
    }

    /// A poll starts (on this thread).
    pub fn start(&self) {
        let thread_clock = self.precise || on_background();
        self.thread_clock.store(thread_clock, Ordering::Relaxed);
        self.since_ns
            .store(self.now(thread_clock), Ordering::Relaxed);
    }

    /// The poll started on this thread ends.
    pub fn stop(&self) {
        let since = self.since_ns.swap(u64::MAX, Ordering::Relaxed);
        if since != u64::MAX {
            let now = self.now(self.thread_clock.load(Ordering::Relaxed));
            self.used_ns
                .fetch_add(now.saturating_sub(since), Ordering::Relaxed);
        }
    }

    /// CPU time so far; on the thread running a poll (the epoch callback),
    /// including that poll so far.
    pub fn used(&self) -> Duration {
        let mut ns = self.used_ns.load(Ordering::Relaxed);
        let since = self.since_ns.load(Ordering::Relaxed);
        let thread_clock = self.thread_clock.load(Ordering::Relaxed);
        // A thread CPU clock reads only on the thread that started it: a
        // precise meter is read mid-poll by the epoch callback, on that
        // thread; an ordinary one's thread clock runs only on background
        // threads.
        if since != u64::MAX && (!thread_clock || self.precise || on_background()) {
            ns += self.now(thread_clock).saturating_sub(since);
        }
        Duration::from_nanos(ns)
    }

    /// Back to zero, not running (a reused instance's next invocation).
    pub fn reset(&self) {
        self.used_ns.store(0, Ordering::Relaxed);
        self.since_ns.store(u64::MAX, Ordering::Relaxed);
    }
}

/// A future whose every `poll` is charged to a [`CpuMeter`]: the time the
/// call occupies a worker thread, whether running guest code or the host's
/// own work inside a host call (a guest looping over a cheap host call is
/// charged for all of it), but not the time it waits between polls (for
/// Redis, at an epoch yield, or for a free worker).
pub struct Metered<'a, F> {
    inner: std::pin::Pin<&'a mut F>,
    meter: &'a CpuMeter,
}

impl<'a, F: std::future::Future> Metered<'a, F> {
    pub fn new(inner: std::pin::Pin<&'a mut F>, meter: &'a CpuMeter) -> Self {
        Metered { inner, meter }
    }
}

impl<F: std::future::Future> std::future::Future for Metered<'_, F> {
    type Output = F::Output;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<F::Output> {
        self.meter.start();
        let r = self.inner.as_mut().poll(cx);
        self.meter.stop();
        r
    }
}

/// The `storage` quota of one plugin, as this host sees it: the Redis
/// memory its keys used at the last sample (`crate::triggers::storage`),
/// plus every byte this host has written for it since that sample began.
///
/// Deletes and expiries are only seen by the next sample, and other hosts'
/// writes too: with H hosts the plugin can pass its quota by up to what the
/// other H − 1 wrote since the last sample. Writes are then refused until a
/// sample shows usage under the quota again.
#[derive(Debug, Default)]
pub struct StorageMeter {
    sampled: AtomicU64,
    written: AtomicU64,
}

impl StorageMeter {
    /// Charges `bytes` about to be written, unless that would take usage
    /// over `limit`; then `Err(usage now)` and nothing is charged.
    pub fn charge(&self, bytes: u64, limit: u64) -> Result<(), u64> {
        let before = self.written.fetch_add(bytes, Ordering::Relaxed);
        let used = self.sampled.load(Ordering::Relaxed).saturating_add(before);
        if used.saturating_add(bytes) > limit {
            self.written.fetch_sub(bytes, Ordering::Relaxed);
            return Err(used);
        }
        Ok(())
    }

    /// Bytes in use as far as this host knows.
    pub fn used(&self) -> u64 {
        self.sampled
            .load(Ordering::Relaxed)
            .saturating_add(self.written.load(Ordering::Relaxed))
    }

    /// Marks the start of a sample: returns what was written before it.
    pub fn sample_started(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }

    /// A sample that started when [`Self::sample_started`] returned
    /// `written_before` measured `bytes`: those writes are in it now.
    pub fn sampled(&self, bytes: u64, written_before: u64) {
        self.sampled.store(bytes, Ordering::Relaxed);
        let _ = self
            .written
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |w| {
                Some(w.saturating_sub(written_before))
            });
    }
}

/// A token bucket: `rate` tokens per second, holding at most `rate` (one
/// second of burst). Callers that find it empty learn how long to wait.
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// `rate` commands per second; 0 means unlimited.
    pub fn new(rate: u64) -> TokenBucket {
        TokenBucket {
            rate: rate as f64,
            tokens: rate as f64,
            last: Instant::now(),
        }
    }

    /// Takes one token. `Ok(wait)`: the caller may proceed after `wait`
    /// (zero if a token was there). `Err(wait)`: the wait would exceed
    /// `max_wait`; nothing was taken.
    pub fn take(&mut self, max_wait: Duration) -> Result<Duration, Duration> {
        if self.rate == 0.0 {
            return Ok(Duration::ZERO);
        }
        let now = Instant::now();
        let refill = now.duration_since(self.last).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + refill).min(self.rate);
        self.last = now;
        // Tokens may go negative: that is the queue of callers already
        // promised a slot, each waiting its turn.
        let wait = Duration::from_secs_f64(((1.0 - self.tokens) / self.rate).max(0.0));
        if wait > max_wait {
            return Err(wait);
        }
        self.tokens -= 1.0;
        Ok(wait)
    }
}

impl TokenBucket {
    /// Takes `n` tokens if the bucket holds them now (never waits, never
    /// goes negative); a rate of 0 always allows.
    pub fn try_take(&mut self, n: u64) -> bool {
        if self.rate == 0.0 {
            return true;
        }
        let now = Instant::now();
        let refill = now.duration_since(self.last).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + refill).min(self.rate);
        self.last = now;
        if self.tokens < n as f64 {
            return false;
        }
        self.tokens -= n as f64;
        true
    }
}

/// Admission control for one plugin: at most `concurrency` invocations run,
/// at most `queue` wait, each for at most `queue-wait`; then a host-wide slot
/// from [`HostSlots`], within what is left of the same `queue-wait`.
#[derive(Debug)]
pub struct Admission {
    concurrency: u32,
    slots: Arc<Semaphore>,
    waiting: AtomicU32,
    queue: u32,
    wait: Duration,
}

/// Permits held for one running invocation.
pub struct Admitted {
    _plugin: OwnedSemaphorePermit,
    _host: HostPermit,
}

struct Waiting<'a>(&'a AtomicU32);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Admission {
    pub fn new(q: &Quotas) -> Admission {
        Admission {
            concurrency: q.concurrency,
            slots: Arc::new(Semaphore::new(q.concurrency as usize)),
            waiting: AtomicU32::new(0),
            queue: q.queue,
            wait: q.queue_wait,
        }
    }

    /// Waits (bounded) for a plugin slot and a host slot. The error says why
    /// the invocation was rejected.
    pub async fn admit(&self, host: &HostShare) -> Result<Admitted, String> {
        let started = Instant::now();
        let plugin = match self.slots.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                if self.waiting.fetch_add(1, Ordering::Relaxed) >= self.queue {
                    self.waiting.fetch_sub(1, Ordering::Relaxed);
                    return Err(format!(
                        "all {} slots are busy and {} invocations are already waiting",
                        self.concurrency, self.queue
                    ));
                }
                let _waiting = Waiting(&self.waiting);
                match tokio::time::timeout(self.wait, self.slots.clone().acquire_owned()).await {
                    Ok(Ok(p)) => p,
                    _ => {
                        return Err(format!(
                            "no free slot within queue-wait {}",
                            humantime::format_duration(self.wait)
                        ));
                    }
                }
            }
        };
        let host = host
            .acquire(self.wait.saturating_sub(started.elapsed()))
            .await?;
        Ok(Admitted {
            _plugin: plugin,
            _host: host,
        })
    }
}

/// The host's instance slots (`[host] max-instances`), shared fairly by the
/// loaded plugins. An invocation takes one after its plugin's own slot
/// ([`Admission`]) and gives it back when it ends, however it ends.
///
/// Invocations cannot be preempted, so fairness is decided when a slot is
/// handed out, by two rules:
///
/// 1. **Reserve.** A plugin with no invocation running may always take a
///    free slot. A plugin that already runs one or more takes a slot only
///    while more slots are free than the reserve: one per loaded plugin that
///    runs nothing, at most a quarter of the host ([`HostSlots::reserve_cap`]).
///    So busy plugins, together, never fill the host while another plugin is
///    idle: that plugin's next invocation starts at once, however long the
///    busy plugins' invocations run. A plugin alone on the host uses every
///    slot.
/// 2. **Fewest first.** A freed slot goes to the waiting invocation whose
///    plugin holds the fewest slots (oldest first among equals), not simply
///    to the oldest waiter. Under contention the slots drift to an even
///    split (max-min fairness); a plugin holding many waits behind one
///    holding few.
///
/// Waiting for a slot is bounded by the caller; a waiter that gives up
/// leaves the queue, and a slot granted to it in that instant is returned.
#[derive(Debug)]
pub struct HostSlots {
    total: u32,
    state: Mutex<SlotState>,
}

#[derive(Debug)]
struct SlotState {
    free: u32,
    next_id: u64,
    next_seq: u64,
    tenants: HashMap<u64, Tenant>,
}

/// A registered plugin: the slots it holds and its waiting invocations.
#[derive(Debug, Default)]
struct Tenant {
    held: u32,
    waiting: VecDeque<(u64, oneshot::Sender<HostPermit>)>,
}

/// One plugin's registration with [`HostSlots`]; dropping it unregisters
/// the plugin (it no longer counts towards the reserve).
#[derive(Debug)]
pub struct HostShare {
    slots: Arc<HostSlots>,
    id: u64,
}

/// One host slot, held by a running invocation; dropping it frees the slot
/// and hands it on.
#[derive(Debug)]
pub struct HostPermit {
    slots: Arc<HostSlots>,
    id: u64,
    /// False once the permit was taken back without a release (a waiter
    /// that was gone when it was granted).
    armed: bool,
}

impl Drop for HostPermit {
    fn drop(&mut self) {
        if self.armed {
            self.slots.release(self.id);
        }
    }
}

impl HostSlots {
    /// `total` slots (at least one).
    pub fn new(total: u32) -> Arc<HostSlots> {
        let total = total.max(1);
        Arc::new(HostSlots {
            total,
            state: Mutex::new(SlotState {
                free: total,
                next_id: 0,
                next_seq: 0,
                tenants: HashMap::new(),
            }),
        })
    }

    /// The most slots kept for idle plugins: a quarter of the host (rounded
    /// up), never every slot. 256 slots: 64; 4 slots: 1; 1 slot: none.
    pub fn reserve_cap(total: u32) -> u32 {
        total.div_ceil(4).min(total.saturating_sub(1))
    }

    /// Registers a plugin.
    pub fn register(self: &Arc<Self>) -> HostShare {
        let mut state = self.lock();
        let id = state.next_id;
        state.next_id += 1;
        state.tenants.insert(id, Tenant::default());
        HostShare {
            slots: self.clone(),
            id,
        }
    }

    /// Slots in use right now, across all plugins.
    pub fn in_use(&self) -> u32 {
        self.total - self.lock().free
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SlotState> {
        // Poisoning is ignored: every update under the lock is a few
        // integer steps, with no await and no call out.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn release(self: &Arc<Self>, id: u64) {
        let mut state = self.lock();
        state.free += 1;
        if let Some(t) = state.tenants.get_mut(&id) {
            t.held -= 1;
        }
        self.dispatch(&mut state);
    }

    /// Hands free slots to waiters, in order, while the rules allow.
    fn dispatch(self: &Arc<Self>, state: &mut SlotState) {
        while state.free > 0 {
            let idle = state.tenants.values().filter(|t| t.held == 0).count();
            let reserve = Self::reserve_cap(self.total).min(idle as u32);
            let next = state
                .tenants
                .iter()
                .filter_map(|(id, t)| Some(((t.held, t.waiting.front()?.0), *id)))
                .min();
            let Some(((held, _), id)) = next else { return };
            if held > 0 && state.free <= reserve {
                return;
            }
            let tenant = state.tenants.get_mut(&id).expect("just found");
            let (_, tx) = tenant.waiting.pop_front().expect("has a waiter");
            tenant.held += 1;
            state.free -= 1;
            let permit = HostPermit {
                slots: self.clone(),
                id,
                armed: true,
            };
            if let Err(mut permit) = tx.send(permit) {
                // The waiter gave up: take the slot back (a release here
                // would take the lock we hold).
                permit.armed = false;
                state.free += 1;
                state.tenants.get_mut(&id).expect("just found").held -= 1;
            }
        }
    }
}

impl HostShare {
    /// Waits up to `within` for a host slot.
    pub async fn acquire(&self, within: Duration) -> Result<HostPermit, String> {
        let (seq, rx) = {
            let mut state = self.slots.lock();
            let seq = state.next_seq;
            state.next_seq += 1;
            let (tx, rx) = oneshot::channel();
            state
                .tenants
                .get_mut(&self.id)
                .expect("registered until dropped")
                .waiting
                .push_back((seq, tx));
            self.slots.dispatch(&mut state);
            (seq, rx)
        };
        let _leave = LeaveQueue { share: self, seq };
        match tokio::time::timeout(within, rx).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => {
                let state = self.slots.lock();
                let held = state.tenants.get(&self.id).map_or(0, |t| t.held);
                Err(format!(
                    "the host's {} instance slots are all busy or kept for idle plugins \
                     (this plugin holds {held}); none was granted within queue-wait",
                    self.slots.total
                ))
            }
        }
    }

    /// Host slots this plugin holds right now.
    pub fn held(&self) -> u32 {
        self.slots
            .lock()
            .tenants
            .get(&self.id)
            .map_or(0, |t| t.held)
    }
}

impl Drop for HostShare {
    fn drop(&mut self) {
        let mut state = self.slots.lock();
        state.tenants.remove(&self.id);
        // One idle plugin fewer: the reserve may shrink.
        self.slots.dispatch(&mut state);
    }
}

/// Removes a waiter that gave up (timed out or was cancelled) from its queue.
struct LeaveQueue<'a> {
    share: &'a HostShare,
    seq: u64,
}

impl Drop for LeaveQueue<'_> {
    fn drop(&mut self) {
        let mut state = self.share.slots.lock();
        if let Some(t) = state.tenants.get_mut(&self.share.id) {
            t.waiting.retain(|(seq, _)| *seq != self.seq);
        }
    }
}

/// Where a plugin's invocations start (see `Placed` in `plugin.rs`).
#[derive(Debug)]
pub struct Placement {
    base: Instant,
    /// Milliseconds since `base` until which the plugin counts as heavy.
    heavy_until_ms: AtomicU64,
}

impl Default for Placement {
    fn default() -> Self {
        Placement {
            base: Instant::now(),
            heavy_until_ms: AtomicU64::new(0),
        }
    }
}

impl Placement {
    fn now_ms(&self) -> u64 {
        self.base.elapsed().as_millis() as u64
    }

    /// Whether the plugin's invocations start on the background runtime.
    pub(crate) fn heavy(&self) -> bool {
        self.now_ms() < self.heavy_until_ms.load(Ordering::Relaxed)
    }

    /// An invocation moved to the background runtime: the plugin's next
    /// invocations start there for `heavy_for`.
    pub(crate) fn moved(&self, heavy_for: Duration) {
        self.heavy_until_ms.store(
            self.now_ms() + heavy_for.as_millis() as u64,
            Ordering::Relaxed,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bucket admits its burst, then spaces callers by 1/rate, and
    /// refuses a wait beyond the limit without taking a token.
    #[test]
    fn token_bucket() {
        let mut b = TokenBucket::new(10);
        for _ in 0..10 {
            assert_eq!(b.take(Duration::ZERO), Ok(Duration::ZERO));
        }
        let w = b.take(Duration::from_millis(500)).unwrap();
        assert!(
            w > Duration::from_millis(90) && w <= Duration::from_millis(100),
            "{w:?}"
        );
        assert!(b.take(Duration::from_millis(250)).unwrap() > Duration::from_millis(190));
        assert!(b.take(Duration::from_millis(100)).is_err());
        assert_eq!(TokenBucket::new(0).take(Duration::ZERO), Ok(Duration::ZERO));
    }

    const NOW: Duration = Duration::ZERO;
    const LONG: Duration = Duration::from_secs(30);

    /// A plugin alone uses every host slot; with a neighbour loaded but idle
    /// it leaves one free for it, and the neighbour gets that one at once.
    #[tokio::test]
    async fn host_slots_keep_a_reserve_for_idle_plugins() {
        assert_eq!(
            [1, 2, 4, 8, 256].map(HostSlots::reserve_cap),
            [0, 1, 1, 2, 64]
        );
        let slots = HostSlots::new(4);
        let busy = slots.register();
        let alone: Vec<_> = (0..4).map(|_| busy.acquire(NOW)).collect();
        let mut held = Vec::new();
        for a in alone {
            held.push(a.await.expect("a plugin alone may fill the host"));
        }
        held.clear();
        assert_eq!(slots.in_use(), 0);

        let idle = slots.register();
        for _ in 0..3 {
            held.push(busy.acquire(NOW).await.unwrap());
        }
        let e = busy.acquire(NOW).await.unwrap_err();
        assert!(e.contains("kept for idle plugins"), "{e}");
        let light = idle
            .acquire(NOW)
            .await
            .expect("the reserve serves the idle plugin");
        assert_eq!((busy.held(), idle.held(), slots.in_use()), (3, 1, 4));
        drop(light);
        // Unloading the idle plugin releases the reserve.
        drop(idle);
        held.push(busy.acquire(NOW).await.unwrap());
        assert_eq!(slots.in_use(), 4);
        held.clear();
        assert_eq!(slots.in_use(), 0, "every permit came back");
    }

    /// A freed slot goes to the waiting plugin that holds the fewest, even
    /// when another plugin has waited longer.
    #[tokio::test]
    async fn freed_slots_go_to_the_plugin_holding_fewest() {
        let slots = HostSlots::new(4);
        let [a, b] = [(); 2].map(|_| Arc::new(slots.register()));
        let mut a_held = Vec::new();
        for _ in 0..3 {
            a_held.push(a.acquire(NOW).await.unwrap());
        }
        let b1 = b.acquire(NOW).await.unwrap();
        let wait = |s: &Arc<HostShare>| {
            let s = s.clone();
            tokio::spawn(async move { s.acquire(LONG).await })
        };
        let settle = || tokio::time::sleep(Duration::from_millis(20));
        // Queued oldest first: a, a, then b.
        let a4 = wait(&a);
        settle().await;
        let a5 = wait(&a);
        settle().await;
        let b2 = wait(&b);
        settle().await;
        assert!(!a4.is_finished() && !a5.is_finished() && !b2.is_finished());

        // a holds 2, b holds 1: b is served first.
        a_held.pop();
        let b2 = tokio::time::timeout(LONG, b2)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        settle().await;
        assert!(!a4.is_finished() && !a5.is_finished());
        // a holds 1, b holds 2: a, oldest first.
        a_held.pop();
        let a4 = tokio::time::timeout(LONG, a4)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        settle().await;
        assert!(!a5.is_finished());
        drop(b1);
        let a5 = tokio::time::timeout(LONG, a5)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!((a.held(), b.held(), slots.in_use()), (3, 1, 4));
        drop((a4, a5, b2, a_held));
        assert_eq!(slots.in_use(), 0);
    }

    /// A waiter that gives up leaves the queue and takes no slot with it.
    #[tokio::test]
    async fn a_waiter_that_gives_up_leaves_the_queue() {
        let slots = HostSlots::new(1);
        let share = slots.register();
        let held = share.acquire(NOW).await.unwrap();
        assert!(share.acquire(Duration::from_millis(20)).await.is_err());
        drop(held);
        assert_eq!(slots.in_use(), 0);
        let again = share.acquire(NOW).await.expect("the slot is free again");
        assert_eq!(share.held(), 1);
        drop(again);
        assert_eq!(slots.in_use(), 0);
    }

    /// CPU time counts only running intervals: at least the time between
    /// start and stop, and nothing of the time after.
    #[test]
    fn cpu_meter_counts_running_time_only() {
        let m = CpuMeter::default();
        let before = Instant::now();
        m.start();
        std::thread::sleep(Duration::from_millis(20));
        m.stop();
        let running = before.elapsed();
        std::thread::sleep(Duration::from_millis(50));
        let used = m.used();
        assert!(
            used >= Duration::from_millis(20) && used <= running,
            "{used:?} charged for {running:?} running"
        );
        m.reset();
        assert_eq!(m.used(), Duration::ZERO);
    }

    /// A precise meter charges the thread's CPU, not the time it is off
    /// the CPU: a poll that sleeps (as a preempted thread would) for 200 ms
    /// is charged far less, mid-poll and after it.
    #[test]
    fn precise_cpu_meter_charges_no_time_off_the_cpu() {
        let m = CpuMeter::precise();
        m.start();
        std::thread::sleep(Duration::from_millis(200));
        let mid = m.used();
        m.stop();
        let used = m.used();
        assert!(mid <= used, "{mid:?} mid-poll, then {used:?}");
        assert!(
            used < Duration::from_millis(100),
            "charged {used:?} for a poll that slept 200 ms"
        );
        // It still charges CPU actually spent.
        m.start();
        let spin = Instant::now();
        while spin.elapsed() < Duration::from_millis(30) {
            std::hint::black_box(0u64);
        }
        m.stop();
        assert!(m.used() > used, "{:?} after spinning", m.used());
    }
}
