//! Records in the host's log, tagged with the plugin's name.
//!
//! The functions take a ready message; the macros of the same names take
//! `format!` arguments. Messages longer than 8 KiB are truncated by the host.
//!
//! ```no_run
//! use redloom_sdk::log;
//!
//! log::info("started");
//! let hits = 3;
//! log::debug!("cache hits: {hits}");
//! log::log(log::Level::Warn, "running low on quota");
//! ```

use crate::__private::bindings::redloom::plugin::log as wit;

/// Severity of a log record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// Very detailed tracing.
    Trace,
    /// Debugging detail.
    Debug,
    /// Normal operation.
    Info,
    /// Something unexpected that the plugin handled.
    Warn,
    /// Something failed.
    Error,
}

impl Level {
    fn into_wit(self) -> wit::Level {
        match self {
            Level::Trace => wit::Level::Trace,
            Level::Debug => wit::Level::Debug,
            Level::Info => wit::Level::Info,
            Level::Warn => wit::Level::Warn,
            Level::Error => wit::Level::Error,
        }
    }
}

/// Writes `message` at `level`.
pub fn log(level: Level, message: &str) {
    wit::log(level.into_wit(), message);
}

/// Writes `message` at [`Level::Trace`].
pub fn trace(message: &str) {
    log(Level::Trace, message);
}

/// Writes `message` at [`Level::Debug`].
pub fn debug(message: &str) {
    log(Level::Debug, message);
}

/// Writes `message` at [`Level::Info`].
pub fn info(message: &str) {
    log(Level::Info, message);
}

/// Writes `message` at [`Level::Warn`].
pub fn warn(message: &str) {
    log(Level::Warn, message);
}

/// Writes `message` at [`Level::Error`].
pub fn error(message: &str) {
    log(Level::Error, message);
}

// The macros are `#[macro_export]`ed under hidden names and re-exported here,
// so plugins write `log::info!(...)` next to `log::info(...)`.

#[doc(hidden)]
#[macro_export]
macro_rules! __log_trace {
    ($($arg:tt)+) => { $crate::log::trace(&::std::format!($($arg)+)) };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __log_debug {
    ($($arg:tt)+) => { $crate::log::debug(&::std::format!($($arg)+)) };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __log_info {
    ($($arg:tt)+) => { $crate::log::info(&::std::format!($($arg)+)) };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __log_warn {
    ($($arg:tt)+) => { $crate::log::warn(&::std::format!($($arg)+)) };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __log_error {
    ($($arg:tt)+) => { $crate::log::error(&::std::format!($($arg)+)) };
}

/// Writes a `format!`-style message at [`Level::Trace`].
#[doc(inline)]
pub use crate::__log_trace as trace;

/// Writes a `format!`-style message at [`Level::Debug`].
#[doc(inline)]
pub use crate::__log_debug as debug;

/// Writes a `format!`-style message at [`Level::Info`].
#[doc(inline)]
pub use crate::__log_info as info;

/// Writes a `format!`-style message at [`Level::Warn`].
#[doc(inline)]
pub use crate::__log_warn as warn;

/// Writes a `format!`-style message at [`Level::Error`].
#[doc(inline)]
pub use crate::__log_error as error;
