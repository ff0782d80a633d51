//! Distributed, per-key rate limits in Redis, in the plugin's own namespace.
//!
//! Policies are named in the plugin's manifest entry, one algorithm each:
//!
//! ```toml
//! [plugins.api.limiters.api]          # GCRA: 100 per minute, 20 at once
//! algorithm = "gcra"
//! rate = "100/min"
//! burst = 20
//!
//! [plugins.api.limiters.uploads]      # token bucket: 20 tokens, 5 more per second
//! algorithm = "token-bucket"
//! rate = "5/s"
//! capacity = 20
//!
//! [plugins.api.limiters.search]       # at most 100 in any minute (exact)
//! algorithm = "sliding-window"
//! rate = "100/min"
//!
//! [plugins.api.limiters.login]        # 5 per 15-minute window
//! algorithm = "fixed-window"
//! rate = "5/15min"
//!
//! [plugins.api.limiters.exports]      # 2 at a time; a lost holder's slot frees after 30 s
//! algorithm = "concurrency"
//! slots = 2
//! lease = "30s"
//! ```
//!
//! A plugin then checks keys against them — a client id, an IP, a tenant —
//! and every host on the same Redis shares each key's state:
//!
//! ```no_run
//! use redloom_sdk::{limiter, Result};
//!
//! # fn handle(client: &str) -> Result<String> {
//! let d = limiter::check("api", client)?;
//! if !d.allowed {
//!     // An HTTP handler answers 429 with these headers.
//!     return Ok(format!("slow down: retry in {} s", d.retry_after_secs()));
//! }
//! # Ok(String::new())
//! # }
//! ```
//!
//! [`check_cost`] takes more than one unit (bytes, tokens of work); a cost
//! of 0 ([`peek`]) takes nothing and reports whether one unit would be
//! allowed. A cost above the policy's limit can never be allowed and is an
//! [`Error::InvalidArgument`].
//!
//! # Concurrency policies
//!
//! [`acquire`] holds slots under a [`Lease`] that dropping releases; the end
//! of the invocation releases whatever is still held, however it ends. A
//! [`check`] on a concurrency policy holds its slot until the invocation
//! ends. If the host dies, the slots free themselves after the lease.
//!
//! # Per-key overrides
//!
//! [`set_override`] gives one key other parameters of the same algorithm (a
//! tenant with a bigger quota). Overrides live in Redis, so every host uses
//! them from the next check on, until [`clear_override`].
//!
//! Durations are sent in whole milliseconds (rounded up).

use std::time::Duration;

use crate::__private::bindings::redloom::plugin::limiter as wit;
use crate::millis as ms;
use crate::{Error, Result};

/// The outcome of a check, with the fields redis-cell made standard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Decision {
    /// Whether the cost was taken (for a peek: whether a cost of 1 would be).
    pub allowed: bool,
    /// The policy's (or the key's override's) burst, capacity, window limit
    /// or slots.
    pub limit: u64,
    /// Units that could still be taken right after this check.
    pub remaining: u64,
    /// Zero when allowed; otherwise how long until the same check would be
    /// allowed (for concurrency: until enough leases expire).
    pub retry_after: Duration,
    /// How long until the key is back to its full limit.
    pub reset_after: Duration,
}

impl Decision {
    fn from_wit(d: wit::Decision) -> Self {
        Decision {
            allowed: d.allowed,
            limit: d.limit,
            remaining: d.remaining,
            retry_after: Duration::from_millis(d.retry_after_ms),
            reset_after: Duration::from_millis(d.reset_after_ms),
        }
    }

    /// [`retry_after`](Decision::retry_after) in whole seconds, rounded up:
    /// 0 when allowed, at least 1 when denied (HTTP `Retry-After`).
    pub fn retry_after_secs(&self) -> u64 {
        if self.allowed {
            return 0;
        }
        secs_up(self.retry_after).max(1)
    }

    /// [`reset_after`](Decision::reset_after) in whole seconds, rounded up.
    pub fn reset_after_secs(&self) -> u64 {
        secs_up(self.reset_after)
    }

    /// The HTTP headers a response carries for this decision:
    /// `RateLimit-Limit`, `RateLimit-Remaining`, `RateLimit-Reset` (seconds)
    /// and, when denied, `Retry-After` (seconds). A denied request gets
    /// status 429 with these.
    ///
    /// ```
    /// use std::time::Duration;
    /// use redloom_sdk::limiter::Decision;
    ///
    /// let d = Decision {
    ///     allowed: false,
    ///     limit: 20,
    ///     remaining: 0,
    ///     retry_after: Duration::from_millis(1200),
    ///     reset_after: Duration::from_secs(12),
    /// };
    /// assert_eq!(
    ///     d.headers(),
    ///     [
    ///         ("RateLimit-Limit", "20".to_string()),
    ///         ("RateLimit-Remaining", "0".to_string()),
    ///         ("RateLimit-Reset", "12".to_string()),
    ///         ("Retry-After", "2".to_string()),
    ///     ]
    /// );
    /// ```
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        let mut h = vec![
            ("RateLimit-Limit", self.limit.to_string()),
            ("RateLimit-Remaining", self.remaining.to_string()),
            ("RateLimit-Reset", self.reset_after_secs().to_string()),
        ];
        if !self.allowed {
            h.push(("Retry-After", self.retry_after_secs().to_string()));
        }
        h
    }
}

fn secs_up(d: Duration) -> u64 {
    u64::try_from(d.as_nanos().div_ceil(1_000_000_000)).unwrap_or(u64::MAX)
}

/// `count` units per `period`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rate {
    pub count: u64,
    pub period: Duration,
}

impl Rate {
    pub fn new(count: u64, period: Duration) -> Self {
        Rate { count, period }
    }

    /// `count` per second.
    pub fn per_second(count: u64) -> Self {
        Rate::new(count, Duration::from_secs(1))
    }

    /// `count` per minute.
    pub fn per_minute(count: u64) -> Self {
        Rate::new(count, Duration::from_secs(60))
    }

    /// `count` per hour.
    pub fn per_hour(count: u64) -> Self {
        Rate::new(count, Duration::from_secs(3600))
    }

    fn from_wit(r: wit::Rate) -> Self {
        Rate::new(r.count, Duration::from_millis(r.period_ms))
    }

    fn into_wit(self) -> wit::Rate {
        wit::Rate {
            count: self.count,
            period_ms: ms(self.period),
        }
    }
}

/// A policy's parameters, or a per-key override's. The README's "Rate
/// limits" section compares the algorithms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Limits {
    /// GCRA (redis-cell's `CL.THROTTLE`): `rate` sustained, up to `burst`
    /// units at once.
    Gcra { rate: Rate, burst: u64 },
    /// A bucket of `capacity` tokens refilled continuously at `refill`.
    TokenBucket { capacity: u64, refill: Rate },
    /// At most `limit` units in any interval of length `window` (exact).
    SlidingWindow { limit: u64, window: Duration },
    /// At most `limit` units per window aligned to the Unix epoch.
    FixedWindow { limit: u64, window: Duration },
    /// At most `slots` held at once, each freed after `lease` at the latest.
    Concurrency { slots: u64, lease: Duration },
}

impl Limits {
    fn from_wit(l: wit::Limits) -> Self {
        match l {
            wit::Limits::Gcra(g) => Limits::Gcra {
                rate: Rate::from_wit(g.rate),
                burst: g.burst,
            },
            wit::Limits::TokenBucket(t) => Limits::TokenBucket {
                capacity: t.capacity,
                refill: Rate::from_wit(t.refill),
            },
            wit::Limits::SlidingWindow(w) => Limits::SlidingWindow {
                limit: w.limit,
                window: Duration::from_millis(w.window_ms),
            },
            wit::Limits::FixedWindow(w) => Limits::FixedWindow {
                limit: w.limit,
                window: Duration::from_millis(w.window_ms),
            },
            wit::Limits::Concurrency(c) => Limits::Concurrency {
                slots: c.slots,
                lease: Duration::from_millis(c.lease_ms),
            },
        }
    }

    fn into_wit(self) -> wit::Limits {
        match self {
            Limits::Gcra { rate, burst } => wit::Limits::Gcra(wit::GcraLimits {
                rate: rate.into_wit(),
                burst,
            }),
            Limits::TokenBucket { capacity, refill } => {
                wit::Limits::TokenBucket(wit::TokenBucketLimits {
                    capacity,
                    refill: refill.into_wit(),
                })
            }
            Limits::SlidingWindow { limit, window } => {
                wit::Limits::SlidingWindow(wit::WindowLimits {
                    limit,
                    window_ms: ms(window),
                })
            }
            Limits::FixedWindow { limit, window } => wit::Limits::FixedWindow(wit::WindowLimits {
                limit,
                window_ms: ms(window),
            }),
            Limits::Concurrency { slots, lease } => {
                wit::Limits::Concurrency(wit::ConcurrencyLimits {
                    slots,
                    lease_ms: ms(lease),
                })
            }
        }
    }
}

/// Slots of a concurrency policy. Dropping it releases them.
///
/// The lease belongs to the invocation that acquired it: when the invocation
/// ends, the host releases the slots even if the lease was leaked.
#[derive(Debug)]
#[must_use = "dropping the lease releases its slots at once"]
pub struct Lease {
    handle: wit::Lease,
}

impl Lease {
    /// The policy the slots belong to.
    pub fn policy(&self) -> String {
        self.handle.policy()
    }

    /// The key the slots were acquired for.
    pub fn key(&self) -> String {
        self.handle.key()
    }

    /// How many slots this lease holds.
    pub fn slots(&self) -> u64 {
        self.handle.slots()
    }

    /// Releases the slots; `false` if the lease had already expired.
    pub fn release(self) -> Result<bool> {
        self.handle.release().map_err(Error::from_wit)
    }
}

/// What [`acquire`] got: the decision, and the slots when it allowed them.
#[derive(Debug)]
pub struct Acquisition {
    pub decision: Decision,
    /// `Some` when the decision allowed the slots (and more than 0 were
    /// asked for).
    pub lease: Option<Lease>,
}

/// Checks `key` against `policy` and takes one unit if allowed.
pub fn check(policy: &str, key: &str) -> Result<Decision> {
    check_cost(policy, key, 1)
}

/// Checks `key` against `policy` and takes `cost` units if allowed (all or
/// nothing). A cost of 0 is a [`peek`].
pub fn check_cost(policy: &str, key: &str, cost: u64) -> Result<Decision> {
    wit::check(policy, key, cost)
        .map(Decision::from_wit)
        .map_err(Error::from_wit)
}

/// Reports `key`'s state under `policy` without taking anything: `allowed`
/// says whether one unit would be allowed now.
pub fn peek(policy: &str, key: &str) -> Result<Decision> {
    check_cost(policy, key, 0)
}

/// Acquires `slots` slots of the concurrency policy `policy` for `key`.
///
/// ```no_run
/// use redloom_sdk::{limiter, Result};
///
/// # fn main() -> Result<()> {
/// let got = limiter::acquire("exports", "tenant-7", 1)?;
/// let Some(lease) = got.lease else {
///     return Ok(()); // busy: got.decision.retry_after says for how long at most
/// };
/// // ... the work ...
/// drop(lease);
/// # Ok(())
/// # }
/// ```
pub fn acquire(policy: &str, key: &str, slots: u64) -> Result<Acquisition> {
    let a = wit::acquire(policy, key, slots).map_err(Error::from_wit)?;
    Ok(Acquisition {
        decision: Decision::from_wit(a.decision),
        lease: a.lease.map(|handle| Lease { handle }),
    })
}

/// The manifest's parameters of the policy `name`, or `None`.
pub fn policy(name: &str) -> Option<Limits> {
    wit::policy_limits(name).map(Limits::from_wit)
}

/// The names of the manifest's policies, sorted.
pub fn policies() -> Vec<String> {
    wit::policies()
}

/// Gives `key` other parameters of `policy`'s algorithm, on every host, from
/// the next check on.
pub fn set_override(policy: &str, key: &str, limits: Limits) -> Result<()> {
    wit::set_override(policy, key, limits.into_wit()).map_err(Error::from_wit)
}

/// `key`'s override of `policy`, if any.
pub fn get_override(policy: &str, key: &str) -> Result<Option<Limits>> {
    wit::get_override(policy, key)
        .map(|o| o.map(Limits::from_wit))
        .map_err(Error::from_wit)
}

/// Removes `key`'s override of `policy`; `true` if there was one.
pub fn clear_override(policy: &str, key: &str) -> Result<bool> {
    wit::clear_override(policy, key).map_err(Error::from_wit)
}

/// Forgets `key`'s state under `policy` (not its override): the next check
/// starts from the full limit. For a concurrency policy this frees every
/// slot held for the key.
pub fn reset(policy: &str, key: &str) -> Result<bool> {
    wit::reset(policy, key).map_err(Error::from_wit)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Limits survive the round trip through the WIT type.
    #[test]
    fn limits_round_trip_through_wit() {
        let s = Duration::from_secs(1);
        for l in [
            Limits::Gcra {
                rate: Rate::per_minute(100),
                burst: 20,
            },
            Limits::TokenBucket {
                capacity: 5,
                refill: Rate::new(10, 3 * s),
            },
            Limits::SlidingWindow {
                limit: 10,
                window: s,
            },
            Limits::FixedWindow {
                limit: 10,
                window: 15 * 60 * s,
            },
            Limits::Concurrency {
                slots: 2,
                lease: 30 * s,
            },
        ] {
            assert_eq!(Limits::from_wit(l.into_wit()), l);
        }
    }

    /// Allowed decisions carry no Retry-After; seconds round up.
    #[test]
    fn headers() {
        let d = Decision {
            allowed: true,
            limit: 5,
            remaining: 4,
            retry_after: Duration::ZERO,
            reset_after: Duration::from_millis(1),
        };
        assert_eq!(d.retry_after_secs(), 0);
        assert_eq!(d.headers().len(), 3);
        assert_eq!(d.headers()[2], ("RateLimit-Reset", "1".to_string()));
        let denied = Decision {
            allowed: false,
            retry_after: Duration::from_millis(1),
            ..d
        };
        assert_eq!(denied.retry_after_secs(), 1);
        assert_eq!(denied.headers()[3], ("Retry-After", "1".to_string()));
    }
}
