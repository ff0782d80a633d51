//! Redis hashes in the plugin's key space: a key holding fields with byte
//! values.
//!
//! Keys share one space with [`kv`](crate::kv) and the other data
//! structures (a key holds one type); see [`keys`](crate::keys) for slot
//! groups, scans and times to live.
//!
//! ```no_run
//! use redloom_sdk::hash;
//!
//! # fn main() -> redloom_sdk::Result<()> {
//! hash::set("session:42", "user", "ada")?;
//! hash::increment("session:42", "views", 1)?;
//! let user = hash::get_string("session:42", "user")?;
//! for entry in hash::scan("session:42", 100) {
//!     let (field, value) = entry?;
//!     # let _ = (field, value);
//! }
//! # let _ = user;
//! # Ok(())
//! # }
//! ```

use crate::__private::bindings::redloom::plugin::hash as wit;
use crate::{Error, Result, strings};

/// The value of `field`, or `None`.
pub fn get(key: &str, field: &str) -> Result<Option<Vec<u8>>> {
    wit::get(key, field).map_err(Error::from_wit)
}

/// The value of `field` as UTF-8 text, or `None`; a value that is not
/// UTF-8 is an [`Error::InvalidArgument`].
pub fn get_string(key: &str, field: &str) -> Result<Option<String>> {
    get(key, field)?
        .map(|b| {
            String::from_utf8(b).map_err(|e| {
                Error::invalid(format!("field `{field}` of `{key}` is not UTF-8: {e}"))
            })
        })
        .transpose()
}

/// Sets one field; returns whether it was new.
pub fn set(key: &str, field: &str, value: impl AsRef<[u8]>) -> Result<bool> {
    Ok(set_many(key, &[(field, value)])? == 1)
}

/// Sets several fields in one command; returns how many were new.
pub fn set_many<F: AsRef<str>, V: AsRef<[u8]>>(key: &str, entries: &[(F, V)]) -> Result<u32> {
    let entries: Vec<(String, Vec<u8>)> = entries
        .iter()
        .map(|(f, v)| (f.as_ref().to_owned(), v.as_ref().to_vec()))
        .collect();
    wit::set(key, &entries).map_err(Error::from_wit)
}

/// Sets `field` only if it does not exist; returns whether it was set.
pub fn set_if_absent(key: &str, field: &str, value: impl AsRef<[u8]>) -> Result<bool> {
    wit::set_if_absent(key, field, value.as_ref()).map_err(Error::from_wit)
}

/// The values of several fields, in the order of `fields`.
pub fn get_many<F: AsRef<str>>(key: &str, fields: &[F]) -> Result<Vec<Option<Vec<u8>>>> {
    wit::get_many(key, &strings(fields)).map_err(Error::from_wit)
}

/// Every field and value (bounded by the plugin's `max-reply`; use
/// [`scan`] for big hashes).
pub fn get_all(key: &str) -> Result<Vec<(String, Vec<u8>)>> {
    wit::get_all(key).map_err(Error::from_wit)
}

/// Deletes fields; returns how many existed.
pub fn delete<F: AsRef<str>>(key: &str, fields: &[F]) -> Result<u32> {
    wit::delete(key, &strings(fields)).map_err(Error::from_wit)
}

/// Adds `delta` to the integer in `field` (missing counts as 0); returns the
/// new value.
pub fn increment(key: &str, field: &str, delta: i64) -> Result<i64> {
    wit::increment(key, field, delta).map_err(Error::from_wit)
}

/// Adds `delta` to the number in `field` (missing counts as 0); returns the
/// new value.
pub fn increment_float(key: &str, field: &str, delta: f64) -> Result<f64> {
    wit::increment_float(key, field, delta).map_err(Error::from_wit)
}

/// Whether `field` exists.
pub fn exists(key: &str, field: &str) -> Result<bool> {
    wit::exists(key, field).map_err(Error::from_wit)
}

/// The number of fields (0 for a missing key).
pub fn length(key: &str) -> Result<u64> {
    wit::length(key).map_err(Error::from_wit)
}

/// The field names.
pub fn field_names(key: &str) -> Result<Vec<String>> {
    wit::field_names(key).map_err(Error::from_wit)
}

/// Every field and value, fetched a page of about `count` (1–1000) at a
/// time as the iterator advances. Fields written meanwhile may or may not
/// appear; an error ends the iteration.
pub fn scan(key: &str, count: u32) -> impl Iterator<Item = Result<(String, Vec<u8>)>> {
    let key = key.to_owned();
    crate::keys::paged(move |cursor| {
        wit::scan(&key, cursor, count)
            .map(|p| (p.cursor, p.entries))
            .map_err(Error::from_wit)
    })
}
