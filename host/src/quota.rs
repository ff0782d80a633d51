//! Where per-plugin quotas are enforced, and exactly what each one covers.
//!
//! | quota | enforced by | covers | on breach |
//! |---|---|---|---|
//! | `cpu` | [`CpuMeter`] + the epoch callback | time running guest code, measured between wasmtime call hooks; time in host calls (awaiting Redis) and time parked at a yield are excluded | trap at the next epoch tick (10 ms granularity) |
//! | `fuel` | wasmtime fuel | instructions executed | trap |
//! | `wall-time` | `tokio::time::timeout` around the call | everything from admission to the reply, including instantiation and Redis | the call's future is dropped |
//! | `memory`, `table-elements`, `instances` | [`Limits`] (a `ResourceLimiter`) | every `memory.grow` / `table.grow` and instantiation | trap |
//! | `max-input`, `max-output` | `plugin.rs` | the handler's input and output | refused / output discarded |
//! | `max-reply` | capability modules | bytes a single Redis reply brings into the guest | typed error, invocation fails |
//! | `redis-ops` | `Caps::admit` | Redis commands per invocation | typed error, invocation fails |
//! | `redis-rate` | [`TokenBucket`] in `Caps::admit` | Redis commands per second, all invocations of the plugin | waits up to [`MAX_RATE_WAIT`], then typed error |
//! | `concurrency`, `queue`, `queue-wait` | [`Admission`] | invocations in flight and waiting | rejected before instantiation |
//!
//! A breach surfaces as [`QuotaTrap`] (traps) or as the guest-visible
//! `quota-exceeded` error recorded on the store (`Caps::breach`); either way
//! the invocation's result is a quota error naming the quota, the instance is
//! discarded, and the plugin's counters record it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::bindings::types::Quota;
use crate::config::Quotas;

/// Longest a Redis command waits for the plugin's rate bucket to refill;
/// beyond that the command fails with `quota-exceeded(redis-rate)`.
pub const MAX_RATE_WAIT: Duration = Duration::from_millis(250);

/// A trap raised because a quota ran out; `plugin.rs` turns it into a
/// typed quota error.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{} quota exceeded: {detail}", crate::plugin::quota_name(*.quota))]
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

/// Guest CPU time of one invocation: the sum of the intervals between "guest
/// starts running" (wasm is called, a host call returns, a yield resumes)
/// and "guest stops running" (a host call starts, wasm returns, the epoch
/// callback fires).
///
/// Shared (`Arc`) with the future that parks a guest at an epoch yield, which
/// restarts the clock when the guest is scheduled again.
#[derive(Debug)]
pub struct CpuMeter {
    base: Instant,
    used_ns: AtomicU64,
    /// Nanoseconds since `base` when the guest last started running;
    /// `u64::MAX` while it is not running.
    since_ns: AtomicU64,
}

impl Default for CpuMeter {
    fn default() -> Self {
        CpuMeter {
            base: Instant::now(),
            used_ns: AtomicU64::new(0),
            since_ns: AtomicU64::new(u64::MAX),
        }
    }
}

impl CpuMeter {
    fn now(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64
    }

    /// The guest starts (or resumes) running.
    pub fn start(&self) {
        self.since_ns.store(self.now(), Ordering::Relaxed);
    }

    /// The guest stops running.
    pub fn stop(&self) {
        let since = self.since_ns.swap(u64::MAX, Ordering::Relaxed);
        if since != u64::MAX {
            self.used_ns
                .fetch_add(self.now().saturating_sub(since), Ordering::Relaxed);
        }
    }

    /// Guest time so far, including the interval running now.
    pub fn used(&self) -> Duration {
        let mut ns = self.used_ns.load(Ordering::Relaxed);
        let since = self.since_ns.load(Ordering::Relaxed);
        if since != u64::MAX {
            ns += self.now().saturating_sub(since);
        }
        Duration::from_nanos(ns)
    }

    /// Back to zero, not running (a reused instance's next invocation).
    pub fn reset(&self) {
        self.used_ns.store(0, Ordering::Relaxed);
        self.since_ns.store(u64::MAX, Ordering::Relaxed);
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

/// Admission control for one plugin: at most `concurrency` invocations run,
/// at most `queue` wait, each for at most `queue-wait`; then a host-wide slot.
///
/// An invocation first takes one of its plugin's slots, then one of the
/// host's. So at most `concurrency` invocations of a plugin ever compete for
/// host slots, and host slots are handed out first-come first-served (tokio's
/// semaphore is fair): a plugin at its limit can delay another by at most its
/// own `concurrency` invocations, never starve it.
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
    _host: OwnedSemaphorePermit,
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
    pub async fn admit(&self, host: &Arc<Semaphore>) -> Result<Admitted, String> {
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
        let host = match host.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                let left = self.wait.saturating_sub(started.elapsed());
                match tokio::time::timeout(left, host.clone().acquire_owned()).await {
                    Ok(Ok(p)) => p,
                    _ => return Err("the host's instance slots are all busy".to_string()),
                }
            }
        };
        Ok(Admitted {
            _plugin: plugin,
            _host: host,
        })
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

    /// CPU time counts only running intervals.
    #[test]
    fn cpu_meter_counts_running_time_only() {
        let m = CpuMeter::default();
        m.start();
        std::thread::sleep(Duration::from_millis(20));
        m.stop();
        std::thread::sleep(Duration::from_millis(50));
        let used = m.used();
        assert!(
            used >= Duration::from_millis(20) && used < Duration::from_millis(60),
            "{used:?}"
        );
        m.reset();
        assert_eq!(m.used(), Duration::ZERO);
    }
}
