//! The plugin's settings, from the `settings` table of its manifest entry.
//!
//! Values are strings: a TOML string is passed as is, any other TOML value
//! (number, boolean, array, table) as its TOML text — so `ttl = 30` reads as
//! `"30"`, ready for [`get_parsed`].
//!
//! ```no_run
//! use redloom_sdk::{config, Result};
//!
//! # fn main() -> Result<()> {
//! let greeting = config::get_or("greeting", "hello");
//! let ttl_secs: u64 = config::get_parsed_or("session-ttl-secs", 1800)?;
//! for (key, value) in config::entries() {
//!     redloom_sdk::log::debug!("setting {key} = {value}");
//! }
//! # let _ = (greeting, ttl_secs);
//! # Ok(())
//! # }
//! ```

use std::fmt::Display;
use std::str::FromStr;

use crate::__private::bindings::redloom::plugin::config as wit;
use crate::{Error, Result};

/// The setting named `key`, or `None` if the manifest does not set it.
pub fn get(key: &str) -> Option<String> {
    wit::get(key)
}

/// The setting named `key`, or `default` if the manifest does not set it.
pub fn get_or(key: &str, default: &str) -> String {
    get(key).unwrap_or_else(|| default.to_owned())
}

/// Every setting as `(key, value)` pairs, sorted by key.
pub fn entries() -> Vec<(String, String)> {
    wit::entries()
}

/// The setting named `key` parsed as a `T`, or `None` if the manifest does not
/// set it. A value that does not parse is an [`Error::InvalidArgument`] naming
/// the setting.
pub fn get_parsed<T>(key: &str) -> Result<Option<T>>
where
    T: FromStr,
    T::Err: Display,
{
    get(key)
        .map(|value| {
            value.trim().parse::<T>().map_err(|e| {
                Error::invalid(format!(
                    "setting `{key}` = {value:?} is not a valid {}: {e}",
                    std::any::type_name::<T>()
                ))
            })
        })
        .transpose()
}

/// Like [`get_parsed`], with `default` when the manifest does not set `key`.
pub fn get_parsed_or<T>(key: &str, default: T) -> Result<T>
where
    T: FromStr,
    T::Err: Display,
{
    Ok(get_parsed(key)?.unwrap_or(default))
}
