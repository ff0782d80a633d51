//! Redis sets in the plugin's key space: unordered unique members.
//!
//! [`inter`], [`union`] and [`diff`] name several keys, which must be in
//! one slot group: start them with the same `{group}` (see
//! [`keys`](crate::keys)).
//!
//! ```no_run
//! use redloom_sdk::set;
//!
//! # fn main() -> redloom_sdk::Result<()> {
//! set::add("{tags}post:1", &["rust", "redis"])?;
//! set::add("{tags}post:2", &["redis", "wasm"])?;
//! let both = set::inter(&["{tags}post:1", "{tags}post:2"])?;
//! assert_eq!(both, ["redis"]);
//! # Ok(())
//! # }
//! ```

use crate::__private::bindings::redloom::plugin::set as wit;
use crate::strings;
use crate::{Error, Result};

/// Adds members; returns how many were new.
pub fn add<M: AsRef<str>>(key: &str, members: &[M]) -> Result<u32> {
    wit::add(key, &strings(members)).map_err(Error::from_wit)
}

/// Removes members; returns how many were there.
pub fn remove<M: AsRef<str>>(key: &str, members: &[M]) -> Result<u32> {
    wit::remove(key, &strings(members)).map_err(Error::from_wit)
}

/// Whether `member` is in the set.
pub fn contains(key: &str, member: &str) -> Result<bool> {
    wit::contains(key, member).map_err(Error::from_wit)
}

/// Every member (bounded by `max-reply`; use [`scan`] for big sets).
pub fn members(key: &str) -> Result<Vec<String>> {
    wit::members(key).map_err(Error::from_wit)
}

/// The number of members (0 for a missing key).
pub fn cardinality(key: &str) -> Result<u64> {
    wit::cardinality(key).map_err(Error::from_wit)
}

/// Every member, a page of about `count` (1–1000) at a time.
pub fn scan(key: &str, count: u32) -> impl Iterator<Item = Result<String>> {
    let key = key.to_owned();
    crate::keys::paged(move |cursor| {
        wit::scan(&key, cursor, count)
            .map(|p| (p.cursor, p.members))
            .map_err(Error::from_wit)
    })
}

/// Up to `count` distinct random members, left in the set.
pub fn random_members(key: &str, count: u32) -> Result<Vec<String>> {
    wit::random_members(key, count).map_err(Error::from_wit)
}

/// Removes and returns up to `count` random members.
pub fn pop(key: &str, count: u32) -> Result<Vec<String>> {
    wit::pop(key, count).map_err(Error::from_wit)
}

/// The members in every one of `keys` (one slot group).
pub fn inter<K: AsRef<str>>(keys: &[K]) -> Result<Vec<String>> {
    wit::inter(&strings(keys)).map_err(Error::from_wit)
}

/// The members in any of `keys` (one slot group).
pub fn union<K: AsRef<str>>(keys: &[K]) -> Result<Vec<String>> {
    wit::union(&strings(keys)).map_err(Error::from_wit)
}

/// The members of the first key that are in none of the others (one slot group).
pub fn diff<K: AsRef<str>>(keys: &[K]) -> Result<Vec<String>> {
    wit::diff(&strings(keys)).map_err(Error::from_wit)
}
