//! Redis streams as append-only event logs in the plugin's key space: add
//! entries, read them by id. (Work queues with consumer groups, retries
//! and dead letters are [`queue`](crate::queue).)
//!
//! ```no_run
//! use redloom_sdk::stream;
//!
//! # fn main() -> redloom_sdk::Result<()> {
//! let id = stream::add("audit", &[("user", "ada"), ("action", "login")], Some(10_000))?;
//! let newest = stream::reverse_range("audit", "+", "-", 10)?;
//! let after = stream::read_after("audit", &id, 100)?;
//! # let _ = (newest, after);
//! # Ok(())
//! # }
//! ```

use crate::__private::bindings::redloom::plugin::stream as wit;
use crate::{Error, Result};

/// One entry: its id (`<ms>-<seq>`) and fields, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub id: String,
    pub fields: Vec<(String, Vec<u8>)>,
}

impl Entry {
    /// The first value of `field`.
    pub fn field(&self, field: &str) -> Option<&[u8]> {
        self.fields
            .iter()
            .find(|(f, _)| f == field)
            .map(|(_, v)| v.as_slice())
    }
}

fn entries(v: Vec<wit::Entry>) -> Vec<Entry> {
    v.into_iter()
        .map(|e| Entry {
            id: e.id,
            fields: e.fields,
        })
        .collect()
}

/// Appends an entry; returns its id. With `max_length`, older entries
/// beyond about that many go in the same command.
pub fn add<F: AsRef<str>, V: AsRef<[u8]>>(
    key: &str,
    fields: &[(F, V)],
    max_length: Option<u64>,
) -> Result<String> {
    let fields: Vec<(String, Vec<u8>)> = fields
        .iter()
        .map(|(f, v)| (f.as_ref().to_owned(), v.as_ref().to_vec()))
        .collect();
    wit::add(key, &fields, max_length).map_err(Error::from_wit)
}

/// Up to `count` entries with ids from `start` to `end` (`-`, `+` for the
/// ends; `(id` excludes `id`).
pub fn range(key: &str, start: &str, end: &str, count: u32) -> Result<Vec<Entry>> {
    wit::range(key, start, end, count)
        .map(entries)
        .map_err(Error::from_wit)
}

/// [`range`], newest first.
pub fn reverse_range(key: &str, end: &str, start: &str, count: u32) -> Result<Vec<Entry>> {
    wit::reverse_range(key, end, start, count)
        .map(entries)
        .map_err(Error::from_wit)
}

/// Up to `count` entries after `id` (`"0"` for all), without waiting.
pub fn read_after(key: &str, id: &str, count: u32) -> Result<Vec<Entry>> {
    wit::read_after(key, id, count)
        .map(entries)
        .map_err(Error::from_wit)
}

/// The number of entries.
pub fn length(key: &str) -> Result<u64> {
    wit::length(key).map_err(Error::from_wit)
}

/// Keeps only the newest `max_length` entries; returns how many went.
pub fn trim(key: &str, max_length: u64) -> Result<u64> {
    wit::trim(key, max_length).map_err(Error::from_wit)
}

/// Deletes entries by id; returns how many existed.
pub fn delete<I: AsRef<str>>(key: &str, ids: &[I]) -> Result<u64> {
    wit::delete(key, &crate::strings(ids)).map_err(Error::from_wit)
}
