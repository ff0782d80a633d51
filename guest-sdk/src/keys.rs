//! The plugin's keys themselves, whatever they hold: scan by pattern, type,
//! time to live, rename, delete.
//!
//! [`kv`](crate::kv), [`hash`](crate::hash), [`set`](crate::set),
//! [`sorted_set`](crate::sorted_set), [`list`](crate::list) and
//! [`hyperloglog`](crate::hyperloglog) share one key space in the plugin's
//! namespace: a key holds one type, as in Redis.
//!
//! # Slot groups
//!
//! A call that names several keys ([`rename`], [`delete`], [`exists`],
//! `set::inter`, `list::move_value`, `hyperloglog::merge`, ...) needs them
//! in one Redis Cluster slot. Keys that start with the same `{group}` are
//! in one slot group; other keys are each their own group. A multi-key call
//! across groups fails with [`Error::InvalidArgument`](crate::Error) on
//! every Redis, so a plugin that works on one server works on a Cluster.
//!
//! ```no_run
//! use std::time::Duration;
//! use redloom_sdk::keys;
//!
//! # fn main() -> redloom_sdk::Result<()> {
//! for key in keys::scan("session:*", 100) {
//!     let key = key?;
//!     if keys::ttl(&key)? == keys::Ttl::Persistent {
//!         keys::expire(&key, Duration::from_secs(3600))?;
//!     }
//! }
//! keys::rename("{feed}draft", "{feed}live")?;
//! # Ok(())
//! # }
//! ```

use std::time::Duration;

use crate::__private::bindings::redloom::plugin::keys as wit;
use crate::strings;
use crate::{Error, Result};

/// What a key holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyType {
    /// No such key.
    None,
    /// A [`kv`](crate::kv) value (or a counter).
    String,
    List,
    Set,
    SortedSet,
    Hash,
    Stream,
    /// Anything else (a Redis module's type).
    Other,
}

/// A key's time to live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Ttl {
    /// No such key.
    Missing,
    /// The key does not expire.
    Persistent,
    /// Time left.
    ExpiresIn(Duration),
}

/// The plugin's keys matching the glob `pattern` (`*`, `?`, `[a-z]`, `\`
/// escapes), fetched a page at a time as the iterator advances; Redis looks
/// at about `count` (1–1000) keys per page. Keys written during the scan
/// may or may not appear; an error ends the iteration.
pub fn scan(pattern: &str, count: u32) -> impl Iterator<Item = Result<String>> {
    let pattern = pattern.to_owned();
    paged(move |cursor| {
        wit::scan(&pattern, cursor, count)
            .map(|p| (p.cursor, p.keys))
            .map_err(Error::from_wit)
    })
}

/// The type of `key`.
pub fn type_of(key: &str) -> Result<KeyType> {
    Ok(match wit::type_of(key).map_err(Error::from_wit)? {
        wit::KeyType::None => KeyType::None,
        wit::KeyType::String => KeyType::String,
        wit::KeyType::List => KeyType::List,
        wit::KeyType::Set => KeyType::Set,
        wit::KeyType::SortedSet => KeyType::SortedSet,
        wit::KeyType::Hash => KeyType::Hash,
        wit::KeyType::Stream => KeyType::Stream,
        wit::KeyType::Other => KeyType::Other,
    })
}

/// The time to live of `key`.
pub fn ttl(key: &str) -> Result<Ttl> {
    Ok(match wit::ttl(key).map_err(Error::from_wit)? {
        wit::KeyTtl::Missing => Ttl::Missing,
        wit::KeyTtl::Persistent => Ttl::Persistent,
        wit::KeyTtl::ExpiresIn(ms) => Ttl::ExpiresIn(Duration::from_millis(ms)),
    })
}

/// Sets `key` to expire after `ttl` (rounded up to whole milliseconds; zero
/// is an [`Error::InvalidArgument`]); returns whether the key exists.
pub fn expire(key: &str, ttl: Duration) -> Result<bool> {
    wit::expire(key, crate::millis(ttl)).map_err(Error::from_wit)
}

/// Removes `key`'s time to live; returns whether it had one.
pub fn persist(key: &str) -> Result<bool> {
    wit::persist(key).map_err(Error::from_wit)
}

/// Renames `source` to `destination` (one slot group), replacing it. A
/// missing `source` is an [`Error::InvalidArgument`].
pub fn rename(source: &str, destination: &str) -> Result<()> {
    wit::rename(source, destination, false)
        .map(drop)
        .map_err(Error::from_wit)
}

/// Renames `source` to `destination` unless `destination` exists; returns
/// whether it renamed.
pub fn rename_if_absent(source: &str, destination: &str) -> Result<bool> {
    wit::rename(source, destination, true).map_err(Error::from_wit)
}

/// Deletes keys (one slot group); returns how many existed.
pub fn delete<K: AsRef<str>>(keys: &[K]) -> Result<u64> {
    wit::delete(&strings(keys)).map_err(Error::from_wit)
}

/// How many of `keys` exist (one slot group).
pub fn exists<K: AsRef<str>>(keys: &[K]) -> Result<u64> {
    wit::exists(&strings(keys)).map_err(Error::from_wit)
}

/// An iterator over the items of a cursor scan: `page(cursor)` returns the
/// next cursor (0 at the end) and a page of items.
pub(crate) fn paged<T>(
    mut page: impl FnMut(u64) -> Result<(u64, Vec<T>)>,
) -> impl Iterator<Item = Result<T>> {
    let mut cursor = Some(0u64);
    let mut items = std::collections::VecDeque::new();
    std::iter::from_fn(move || {
        loop {
            if let Some(item) = items.pop_front() {
                return Some(Ok(item));
            }
            let at = cursor?;
            match page(at) {
                Ok((next, found)) => {
                    items.extend(found);
                    cursor = (next != 0).then_some(next);
                }
                Err(e) => {
                    cursor = None;
                    return Some(Err(e));
                }
            }
        }
    })
}
