//! Key-value storage in Redis, in the plugin's own namespace.
//!
//! Keys are arbitrary strings of at most 1024 bytes (including the empty
//! string). The host maps every key into the calling plugin's namespace, so two
//! plugins that use the same key never see each other's data. Values are
//! arbitrary bytes; [`get_string`] and (with the `json` feature) `get_json` /
//! `set_json` decode and encode them.
//!
//! Times to live are [`Duration`]s, sent to the host in whole milliseconds
//! (rounded up, so a non-zero TTL never becomes zero). A zero TTL is an
//! [`Error::InvalidArgument`].
//!
//! ```no_run
//! use std::time::Duration;
//! use redloom_sdk::kv::{self, SetOptions};
//!
//! # fn main() -> redloom_sdk::Result<()> {
//! kv::set("greeting", "hello")?;
//! assert_eq!(kv::get_string("greeting")?.as_deref(), Some("hello"));
//!
//! // A lock-ish marker that only the first writer gets, gone after 30 s.
//! let first = kv::set_with(
//!     "marker",
//!     b"me",
//!     SetOptions::new().ttl(Duration::from_secs(30)).if_absent(),
//! )?;
//!
//! let visits = kv::increment("visits", 1)?;
//! let both = kv::get_many(&["greeting", "marker"])?;
//! # let _ = (first, visits, both);
//! # Ok(())
//! # }
//! ```

use std::time::Duration;

use crate::__private::bindings::redloom::plugin::kv as wit;
use crate::millis as ttl_ms;
use crate::{Error, Result};

/// When [`set_with`] may write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Condition {
    /// Write unconditionally.
    #[default]
    Always,
    /// Write only if the key does not exist yet (Redis `NX`).
    IfAbsent,
    /// Write only if the key already exists (Redis `XX`).
    IfPresent,
}

/// Options for [`set_with`]: a time to live and a write condition.
///
/// The default is no TTL and [`Condition::Always`]. Set the fields directly or
/// chain the builder methods:
///
/// ```
/// use std::time::Duration;
/// use redloom_sdk::kv::{Condition, SetOptions};
///
/// let a = SetOptions::new().ttl(Duration::from_secs(60)).if_absent();
/// let b = SetOptions { ttl: Some(Duration::from_secs(60)), condition: Condition::IfAbsent };
/// assert_eq!(a, b);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SetOptions {
    /// Time to live; `None` keeps the key until it is deleted.
    pub ttl: Option<Duration>,
    /// When the write may happen.
    pub condition: Condition,
}

impl SetOptions {
    /// No TTL, [`Condition::Always`].
    pub fn new() -> Self {
        Self::default()
    }

    /// Expire the key `ttl` after the write.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// Write only when `condition` holds.
    pub fn condition(mut self, condition: Condition) -> Self {
        self.condition = condition;
        self
    }

    /// Write only if the key does not exist yet.
    pub fn if_absent(self) -> Self {
        self.condition(Condition::IfAbsent)
    }

    /// Write only if the key already exists.
    pub fn if_present(self) -> Self {
        self.condition(Condition::IfPresent)
    }

    fn into_wit(self) -> wit::SetOptions {
        wit::SetOptions {
            ttl_ms: self.ttl.map(ttl_ms),
            condition: match self.condition {
                Condition::Always => wit::SetCondition::Always,
                Condition::IfAbsent => wit::SetCondition::IfAbsent,
                Condition::IfPresent => wit::SetCondition::IfPresent,
            },
        }
    }
}

/// The value stored at `key`, or `None` if there is none.
pub fn get(key: &str) -> Result<Option<Vec<u8>>> {
    wit::get(key).map_err(Error::from_wit)
}

/// The value stored at `key` as UTF-8 text, or `None` if there is none.
///
/// A value that is not UTF-8 is an [`Error::InvalidArgument`].
pub fn get_string(key: &str) -> Result<Option<String>> {
    get(key)?
        .map(|bytes| {
            String::from_utf8(bytes)
                .map_err(|e| Error::invalid(format!("value at `{key}` is not UTF-8: {e}")))
        })
        .transpose()
}

/// Stores `value` at `key`, replacing any value and TTL it had.
pub fn set(key: &str, value: impl AsRef<[u8]>) -> Result<()> {
    set_with(key, value, SetOptions::default()).map(drop)
}

/// Stores `value` at `key` with `options`. Returns whether the value was
/// written: `false` only when `options.condition` was not met.
pub fn set_with(key: &str, value: impl AsRef<[u8]>, options: SetOptions) -> Result<bool> {
    wit::set(key, value.as_ref(), options.into_wit()).map_err(Error::from_wit)
}

/// Deletes `key`. Returns whether it existed.
pub fn delete(key: &str) -> Result<bool> {
    wit::delete(key).map_err(Error::from_wit)
}

/// Whether `key` exists.
pub fn exists(key: &str) -> Result<bool> {
    wit::exists(key).map_err(Error::from_wit)
}

/// Adds `delta` to the integer stored at `key` (a missing key counts as 0) and
/// returns the new value.
///
/// A value that is not an integer is an [`Error::InvalidArgument`]. The key
/// keeps its TTL, if it has one.
pub fn increment(key: &str, delta: i64) -> Result<i64> {
    wit::increment(key, delta).map_err(Error::from_wit)
}

/// Sets the time to live of `key`. Returns whether the key exists.
pub fn expire(key: &str, ttl: Duration) -> Result<bool> {
    wit::expire(key, ttl_ms(ttl)).map_err(Error::from_wit)
}

/// The values of several keys in one round trip, in the order of `keys`.
///
/// Takes `&[&str]`, `&[String]` or anything else whose items are string-like.
pub fn get_many<K: AsRef<str>>(keys: &[K]) -> Result<Vec<Option<Vec<u8>>>> {
    let keys: Vec<String> = keys.iter().map(|k| k.as_ref().to_owned()).collect();
    wit::get_many(&keys).map_err(Error::from_wit)
}

/// Atomically replaces the value at `key` with `new` if the current value
/// equals `expected` (`None`: only if the key does not exist). `ttl` sets a
/// time to live on the new value. Returns whether the swap happened.
///
/// ```no_run
/// use redloom_sdk::kv;
///
/// # fn main() -> redloom_sdk::Result<()> {
/// // Optimistic update: retry until nobody else wrote in between.
/// loop {
///     let current = kv::get("doc")?;
///     let mut next = current.clone().unwrap_or_default();
///     next.extend_from_slice(b"!");
///     if kv::compare_and_swap("doc", current.as_deref(), &next, None)? {
///         break;
///     }
/// }
/// # Ok(())
/// # }
/// ```
pub fn compare_and_swap(
    key: &str,
    expected: Option<&[u8]>,
    new: impl AsRef<[u8]>,
    ttl: Option<Duration>,
) -> Result<bool> {
    wit::compare_and_swap(key, expected, new.as_ref(), ttl.map(ttl_ms)).map_err(Error::from_wit)
}

/// The JSON value stored at `key` decoded as a `T`, or `None` if there is none.
///
/// A value that does not decode is an [`Error::InvalidArgument`].
///
/// ```no_run
/// use redloom_sdk::kv;
///
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct Profile { name: String, visits: u32 }
///
/// # fn main() -> redloom_sdk::Result<()> {
/// kv::set_json("profile:7", &Profile { name: "Ada".into(), visits: 1 })?;
/// let p: Option<Profile> = kv::get_json("profile:7")?;
/// # let _ = p;
/// # Ok(())
/// # }
/// ```
#[cfg(feature = "json")]
pub fn get_json<T: serde::de::DeserializeOwned>(key: &str) -> Result<Option<T>> {
    get(key)?
        .map(|bytes| {
            serde_json::from_slice(&bytes).map_err(|e| {
                Error::invalid(format!("value at `{key}` is not the expected JSON: {e}"))
            })
        })
        .transpose()
}

/// Stores `value` encoded as JSON at `key`.
#[cfg(feature = "json")]
pub fn set_json<T: serde::Serialize + ?Sized>(key: &str, value: &T) -> Result<()> {
    set_json_with(key, value, SetOptions::default()).map(drop)
}

/// Stores `value` encoded as JSON at `key` with `options`; see [`set_with`].
#[cfg(feature = "json")]
pub fn set_json_with<T: serde::Serialize + ?Sized>(
    key: &str,
    value: &T,
    options: SetOptions,
) -> Result<bool> {
    let bytes = serde_json::to_vec(value)
        .map_err(|e| Error::invalid(format!("cannot encode the value for `{key}` as JSON: {e}")))?;
    set_with(key, bytes, options)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// TTLs round up to whole milliseconds and never become zero unless zero.
    #[test]
    fn ttl_rounds_up_to_milliseconds() {
        assert_eq!(ttl_ms(Duration::ZERO), 0);
        assert_eq!(ttl_ms(Duration::from_nanos(1)), 1);
        assert_eq!(ttl_ms(Duration::from_millis(1500)), 1500);
        assert_eq!(ttl_ms(Duration::from_micros(1500)), 2);
        assert_eq!(ttl_ms(Duration::MAX), u64::MAX);
    }

    /// The builder and the struct literal agree, and the default is "always, no TTL".
    #[test]
    fn set_options_builder() {
        let o = SetOptions::new();
        assert_eq!(o.ttl, None);
        assert_eq!(o.condition, Condition::Always);
        let o = SetOptions::new().if_present().ttl(Duration::from_secs(1));
        assert_eq!(o.condition, Condition::IfPresent);
        assert_eq!(o.into_wit().ttl_ms, Some(1000));
    }
}
