//! Distributed locks in Redis, with fencing tokens, in the plugin's own
//! namespace.
//!
//! [`acquire`] returns a [`LockGuard`]: while it lives, no other guard for
//! the same name exists on any host using the same Redis primary (until the
//! lock's time to live runs out — see below). Dropping the guard releases
//! the lock; so does the end of the invocation, however it ends (an error, a
//! panic, a quota breach), at once rather than when the time to live runs
//! out.
//!
//! ```no_run
//! use std::time::Duration;
//! use redloom_sdk::{kv, lock, Result};
//!
//! # fn main() -> Result<()> {
//! // Wait up to 2 s for the lock; hold it for at most 10 s.
//! let guard = lock::acquire("report", Duration::from_secs(10), Duration::from_secs(2))?;
//! // A read-modify-write that is not atomic by itself.
//! let runs: u64 = kv::get_string("report:runs")?.and_then(|s| s.parse().ok()).unwrap_or(0);
//! kv::set("report:runs", (runs + 1).to_string())?;
//! drop(guard); // or `guard.release()?` to learn whether it was still held
//! # Ok(())
//! # }
//! ```
//!
//! # Fencing tokens
//!
//! A lock is best-effort mutual exclusion: a holder that stalls past the time
//! to live (or a Redis failover that loses the latest write) can leave two
//! guards that both believe they hold the lock. Every acquisition therefore
//! gets a [fencing token](LockGuard::fencing_token) greater than every earlier
//! one for that name. Pass it to whatever the lock protects, and have that
//! refuse writes with a token lower than the highest it has accepted — with
//! `kv`, keep the token next to the data and write through
//! [`kv::compare_and_swap`](crate::kv::compare_and_swap):
//!
//! ```no_run
//! use std::time::Duration;
//! use redloom_sdk::{kv, lock, Error, Result};
//!
//! # fn main() -> Result<()> {
//! let guard = lock::acquire("stock:A1", Duration::from_secs(5), Duration::from_secs(1))?;
//! let token = guard.fencing_token();
//! let current = kv::get("stock:A1")?;
//! // The record is "<token> <count>": the token of its last writer.
//! let (seen, count) = match current.as_deref().map(std::str::from_utf8).transpose()? {
//!     Some(s) => {
//!         let (t, c) = s.split_once(' ').ok_or_else(|| Error::invalid("bad record"))?;
//!         (t.parse::<u64>().unwrap_or(0), c.parse::<i64>().unwrap_or(0))
//!     }
//!     None => (0, 0),
//! };
//! if seen > token {
//!     return Err(Error::other("a newer lock holder has written; not overwriting"));
//! }
//! let next = format!("{token} {}", count - 1);
//! if !kv::compare_and_swap("stock:A1", current.as_deref(), next, None)? {
//!     return Err(Error::other("the record changed under the lock: the lock was lost"));
//! }
//! guard.release()?;
//! # Ok(())
//! # }
//! ```
//!
//! Locks are not re-entrant: acquiring a lock this instance already holds
//! fails with [`Error::InvalidArgument`] instead of waiting for itself.
//! Times to live are sent in whole milliseconds (rounded up) and must be
//! from 1 ms to one hour.

use std::time::Duration;

use crate::__private::bindings::redloom::plugin::lock as wit;
use crate::millis as ms;
use crate::{Error, Result};

/// Whether [`LockGuard::release`] or [`LockGuard::extend`] found the guard
/// still owning its lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[must_use = "`NotOwner` means the lock had expired and another holder may have run at the same time"]
pub enum Ownership {
    /// The guard owned the lock, and the call took effect.
    Owner,
    /// The lock's time to live had run out (another guard may hold it now);
    /// nothing was changed.
    NotOwner,
}

impl Ownership {
    /// Whether the guard still owned the lock.
    pub fn is_owner(self) -> bool {
        self == Ownership::Owner
    }

    fn from_wit(o: wit::Ownership) -> Self {
        match o {
            wit::Ownership::Owner => Ownership::Owner,
            wit::Ownership::NotOwner => Ownership::NotOwner,
        }
    }
}

/// Who holds a lock; see [`holder`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Holder {
    /// The fencing token the holder got when it acquired the lock.
    pub fencing_token: u64,
    /// Time until the lock expires unless it is extended; `None` if it has no
    /// time to live.
    pub ttl: Option<Duration>,
    /// An opaque id of the holder's acquisition, unique across hosts.
    pub owner: String,
}

/// A held lock. Dropping it releases the lock if it is still held.
///
/// The guard belongs to the invocation that acquired it: when the invocation
/// ends, the host releases the lock even if the guard was leaked.
#[derive(Debug)]
#[must_use = "dropping the guard releases the lock at once"]
pub struct LockGuard {
    handle: wit::Lock,
    name: String,
    token: u64,
}

impl LockGuard {
    fn new(handle: wit::Lock, name: &str) -> Self {
        let token = handle.fencing_token();
        LockGuard {
            handle,
            name: name.to_owned(),
            token,
        }
    }

    /// The name the lock was acquired with.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// This acquisition's fencing token: greater than the token of every
    /// earlier acquisition of the same name, on any host.
    pub fn fencing_token(&self) -> u64 {
        self.token
    }

    /// Sets the lock's time to live to `ttl` from now, if the guard still
    /// owns it; [`Ownership::NotOwner`] changes nothing.
    pub fn extend(&self, ttl: Duration) -> Result<Ownership> {
        self.handle
            .extend(ms(ttl))
            .map(Ownership::from_wit)
            .map_err(Error::from_wit)
    }

    /// Turns automatic renewal on or off: while on, the host extends the lock
    /// by its time to live every third of that time, for as long as the
    /// invocation runs. Needs a time to live of at least 100 ms.
    pub fn auto_renew(&self, enabled: bool) -> Result<()> {
        self.handle.auto_renew(enabled).map_err(Error::from_wit)
    }

    /// Releases the lock by compare-and-delete: [`Ownership::NotOwner`] means
    /// it had expired, and a lock another guard took since then was left
    /// alone.
    pub fn release(self) -> Result<Ownership> {
        self.handle
            .release()
            .map(Ownership::from_wit)
            .map_err(Error::from_wit)
    }
}

/// Acquires the lock `name` for `ttl`, waiting up to `wait` for another
/// holder to release it or for it to expire ([`Duration::ZERO`]: try once).
///
/// Gives up with [`Error::Timeout`] when `wait` is over. A release made
/// through the same host wakes the waiter at once; other hosts' releases and
/// expiry are noticed within 100 ms.
///
/// ```no_run
/// use std::time::Duration;
/// use redloom_sdk::{lock, Error};
///
/// match lock::acquire("nightly-job", Duration::from_secs(60), Duration::ZERO) {
///     Ok(guard) => { /* run the job */ drop(guard) }
///     Err(Error::Timeout(_)) => { /* another host runs it */ }
///     Err(e) => return Err(e),
/// }
/// # Ok::<(), Error>(())
/// ```
pub fn acquire(name: &str, ttl: Duration, wait: Duration) -> Result<LockGuard> {
    let handle = wit::acquire(name, ms(ttl), ms(wait)).map_err(Error::from_wit)?;
    Ok(LockGuard::new(handle, name))
}

/// Acquires the lock `name` for `ttl` if it is free; `None` if another
/// holder has it. Never waits.
pub fn try_acquire(name: &str, ttl: Duration) -> Result<Option<LockGuard>> {
    let handle = wit::try_acquire(name, ms(ttl)).map_err(Error::from_wit)?;
    Ok(handle.map(|h| LockGuard::new(h, name)))
}

/// Who holds the lock `name`, or `None` if it is free.
pub fn holder(name: &str) -> Result<Option<Holder>> {
    let info = wit::holder(name).map_err(Error::from_wit)?;
    Ok(info.map(|h| Holder {
        fencing_token: h.fencing_token,
        ttl: h.ttl_ms.map(Duration::from_millis),
        owner: h.owner,
    }))
}

/// Whether anyone holds the lock `name`.
pub fn is_locked(name: &str) -> Result<bool> {
    wit::is_locked(name).map_err(Error::from_wit)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Durations round up to whole milliseconds and saturate.
    #[test]
    fn durations_round_up() {
        assert_eq!(ms(Duration::ZERO), 0);
        assert_eq!(ms(Duration::from_nanos(1)), 1);
        assert_eq!(ms(Duration::from_millis(250)), 250);
        assert_eq!(ms(Duration::MAX), u64::MAX);
    }

    /// Ownership maps from the WIT enum case by case.
    #[test]
    fn ownership_from_wit() {
        assert!(Ownership::from_wit(wit::Ownership::Owner).is_owner());
        assert!(!Ownership::from_wit(wit::Ownership::NotOwner).is_owner());
    }
}
