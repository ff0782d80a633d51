//! HyperLogLog: approximate distinct counts (about 0.8 % error) in at most
//! 12 KiB per key.
//!
//! ```no_run
//! use redloom_sdk::hyperloglog;
//!
//! # fn main() -> redloom_sdk::Result<()> {
//! hyperloglog::add("{visits}2026-12-06", &["visitor-1", "visitor-2"])?;
//! let today = hyperloglog::count(&["{visits}2026-12-06"])?;
//! hyperloglog::merge("{visits}week-49", &["{visits}2026-12-06"])?;
//! # let _ = today;
//! # Ok(())
//! # }
//! ```

use crate::__private::bindings::redloom::plugin::hyperloglog as wit;
use crate::strings;
use crate::{Error, Result};

/// Adds elements; returns whether the estimate changed.
pub fn add<E: AsRef<str>>(key: &str, elements: &[E]) -> Result<bool> {
    wit::add(key, &strings(elements)).map_err(Error::from_wit)
}

/// The estimated number of distinct elements in the union of `keys` (one
/// slot group).
pub fn count<K: AsRef<str>>(keys: &[K]) -> Result<u64> {
    wit::count(&strings(keys)).map_err(Error::from_wit)
}

/// Stores the union of `sources` and `destination` in `destination` (one
/// slot group).
pub fn merge<K: AsRef<str>>(destination: &str, sources: &[K]) -> Result<()> {
    wit::merge(destination, &strings(sources)).map_err(Error::from_wit)
}
