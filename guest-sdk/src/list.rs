//! Redis lists in the plugin's key space: sequences of byte values, pushed
//! and popped at either end.
//!
//! ```no_run
//! use redloom_sdk::list;
//!
//! # fn main() -> redloom_sdk::Result<()> {
//! // A capped activity feed: newest first, at most 100 entries.
//! list::push_front("feed:ada", &[b"liked a post".as_slice()])?;
//! list::trim("feed:ada", 0, 99)?;
//! let latest = list::range("feed:ada", 0, 9)?;
//! # let _ = latest;
//! # Ok(())
//! # }
//! ```

use crate::__private::bindings::redloom::plugin::list as wit;
use crate::{Error, Result};

/// One end of a list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum End {
    Front,
    Back,
}

impl End {
    fn wit(self) -> wit::End {
        match self {
            End::Front => wit::End::Front,
            End::Back => wit::End::Back,
        }
    }
}

fn values<V: AsRef<[u8]>>(values: &[V]) -> Vec<Vec<u8>> {
    values.iter().map(|v| v.as_ref().to_vec()).collect()
}

/// Pushes values at `end` in order (the last one ends up outermost);
/// returns the new length.
pub fn push<V: AsRef<[u8]>>(key: &str, end: End, vals: &[V]) -> Result<u64> {
    wit::push(key, end.wit(), &values(vals)).map_err(Error::from_wit)
}

/// [`push`] at the front.
pub fn push_front<V: AsRef<[u8]>>(key: &str, vals: &[V]) -> Result<u64> {
    push(key, End::Front, vals)
}

/// [`push`] at the back.
pub fn push_back<V: AsRef<[u8]>>(key: &str, vals: &[V]) -> Result<u64> {
    push(key, End::Back, vals)
}

/// [`push`] only if the list exists; returns its length (0: it did not).
pub fn push_if_exists<V: AsRef<[u8]>>(key: &str, end: End, vals: &[V]) -> Result<u64> {
    wit::push_if_exists(key, end.wit(), &values(vals)).map_err(Error::from_wit)
}

/// Removes and returns up to `count` values from `end`.
pub fn pop(key: &str, end: End, count: u32) -> Result<Vec<Vec<u8>>> {
    wit::pop(key, end.wit(), count).map_err(Error::from_wit)
}

/// Values from index `start` to `stop` inclusive (negative counts from the end).
pub fn range(key: &str, start: i64, stop: i64) -> Result<Vec<Vec<u8>>> {
    wit::range(key, start, stop).map_err(Error::from_wit)
}

/// Keeps only the values from `start` to `stop` inclusive.
pub fn trim(key: &str, start: i64, stop: i64) -> Result<()> {
    wit::trim(key, start, stop).map_err(Error::from_wit)
}

/// The number of values (0 for a missing key).
pub fn length(key: &str) -> Result<u64> {
    wit::length(key).map_err(Error::from_wit)
}

/// The value at `index` (negative counts from the end), or `None`.
pub fn index(key: &str, index: i64) -> Result<Option<Vec<u8>>> {
    wit::index(key, index).map_err(Error::from_wit)
}

/// Replaces the value at `index`; out of range is an [`Error::InvalidArgument`].
pub fn set(key: &str, index: i64, value: impl AsRef<[u8]>) -> Result<()> {
    wit::set(key, index, value.as_ref()).map_err(Error::from_wit)
}

/// Removes up to `count` values equal to `value` (0: all; negative: from
/// the back); returns how many.
pub fn remove(key: &str, value: impl AsRef<[u8]>, count: i64) -> Result<u64> {
    wit::remove(key, value.as_ref(), count).map_err(Error::from_wit)
}

/// Atomically pops a value from `from` of `source` and pushes it at `to` of
/// `destination` (one slot group); `None` when `source` is empty.
pub fn move_value(source: &str, destination: &str, from: End, to: End) -> Result<Option<Vec<u8>>> {
    wit::move_(source, destination, from.wit(), to.wit()).map_err(Error::from_wit)
}

/// Pops a value from `end` of the first non-empty list of `keys` (one slot
/// group), waiting up to `timeout` (at least 1 ms; never past the
/// invocation's `wall-time`) for one to arrive. Returns the list's key and
/// the value, or `None` on timeout.
pub fn blocking_pop<K: AsRef<str>>(
    keys: &[K],
    end: End,
    timeout: std::time::Duration,
) -> Result<Option<(String, Vec<u8>)>> {
    wit::blocking_pop(&crate::strings(keys), end.wit(), crate::millis(timeout))
        .map_err(Error::from_wit)
}
