//! What several capabilities share: the host-call result type, the
//! `invalid-argument` shorthand, random numbers, unique ids and a jittered
//! backoff. (Admission and charging live on [`Caps`](crate::caps::Caps) in
//! `caps/mod.rs`.)

use std::hash::{BuildHasher, RandomState};
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::bindings::types::Error;

/// What a capability's host function returns: a trap (outer) or the
/// guest's typed result (inner).
pub(crate) type R<T> = wasmtime::Result<Result<T, Error>>;

/// `invalid-argument(message)`.
pub(crate) fn invalid(message: impl Into<String>) -> Error {
    Error::InvalidArgument(message.into())
}

/// 64 random bits from the standard library's per-process random keys.
pub(crate) fn random_u64() -> u64 {
    static N: AtomicU64 = AtomicU64::new(0);
    RandomState::new().hash_one(N.fetch_add(1, Ordering::Relaxed))
}

/// A uniform random number in (0, 1].
pub(crate) fn random_unit() -> f64 {
    ((random_u64() >> 11) as f64 + 1.0) / (1u64 << 53) as f64
}

/// An id unique across hosts and time: this process's 128 random bits and
/// a sequence number (lock owners, cache leases, limiter leases).
pub(crate) fn unique_id() -> String {
    static PROCESS: LazyLock<String> = LazyLock::new(|| {
        let mut bytes = [0u8; 16];
        if getrandom::getrandom(&mut bytes).is_err() {
            // Fall back to the standard library's per-process random keys.
            bytes[..8].copy_from_slice(&random_u64().to_le_bytes());
            bytes[8..].copy_from_slice(&random_u64().to_le_bytes());
        }
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    });
    static SEQ: AtomicU64 = AtomicU64::new(0);
    format!("{}-{}", *PROCESS, SEQ.fetch_add(1, Ordering::Relaxed))
}

/// Jittered exponential backoff: each pause is drawn from the upper half of
/// a cap that doubles from the first pause up to the `max` of each call.
pub(crate) struct Backoff {
    cap: Duration,
}

impl Backoff {
    /// A backoff whose first pause is at most `first`.
    pub(crate) fn new(first: Duration) -> Backoff {
        Backoff { cap: first }
    }

    /// The next pause, at most `max` (which may change between calls: the
    /// cache waits less once wake-ups arrive).
    pub(crate) fn next_pause(&mut self, max: Duration) -> Duration {
        let cap = self.cap.min(max);
        let half = cap / 2;
        let span = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
        let pause = half + Duration::from_nanos(random_u64() % (span + 1));
        self.cap = (cap * 2).min(max);
        pause
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pauses start within the first cap, double up to `max`, and always
    /// stay in the upper half of the cap in force.
    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let (first, max) = (Duration::from_millis(2), Duration::from_millis(50));
        let mut b = Backoff::new(first);
        let p = b.next_pause(max);
        assert!(p >= first / 2 && p <= first, "{p:?}");
        for _ in 0..10 {
            assert!(b.next_pause(max) <= max);
        }
        assert!(b.next_pause(max) >= max / 2);
        // A smaller cap applies at once.
        let small = Duration::from_millis(4);
        let p = b.next_pause(small);
        assert!(p >= small / 2 && p <= small, "{p:?}");
    }

    /// Ids differ within a process and share its random part.
    #[test]
    fn unique_ids_are_unique() {
        let (a, b) = (unique_id(), unique_id());
        assert_ne!(a, b);
        let (pa, _) = a.split_once('-').unwrap();
        let (pb, _) = b.split_once('-').unwrap();
        assert_eq!(pa, pb);
        assert_eq!(pa.len(), 32);
    }

    /// Random units are in (0, 1] and not all alike.
    #[test]
    fn random_units() {
        let draws: Vec<f64> = (0..1000).map(|_| random_unit()).collect();
        assert!(draws.iter().all(|r| *r > 0.0 && *r <= 1.0));
        assert!(draws.iter().any(|r| *r < 0.5) && draws.iter().any(|r| *r > 0.5));
    }
}
