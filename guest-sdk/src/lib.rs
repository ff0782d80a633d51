//! Write redloom plugins in Rust.
//!
//! A plugin is a WebAssembly component. The host calls its *handlers* —
//! [`Invoke`] (`redloom invoke`), [`Http`] (routes of `redloom serve`),
//! [`OnMessage`] (pub/sub messages and keyspace events), [`OnTick`]
//! (timers) and [`OnJob`] (queue consumers) — and the plugin uses the
//! host's *capabilities* — Redis-backed storage ([`kv`]), caching
//! ([`cache`]), distributed locks ([`lock`]), rate limits ([`limiter`]),
//! work queues ([`queue`]), pub/sub ([`pubsub`]), outbound HTTP
//! ([`http`]), logging ([`log`]) and its own settings ([`config`]) —
//! through the functions in this crate. Every capability
//! call that can fail returns this crate's [`Error`], which tells a transient
//! backend problem from a quota, a timeout or the plugin's own mistake.
//!
//! # A plugin
//!
//! ```toml
//! # Cargo.toml
//! [lib]
//! crate-type = ["cdylib"]
//!
//! [dependencies]
//! redloom-sdk = { path = "../../guest-sdk" }
//! ```
//!
//! ```no_run
//! use redloom_sdk::{kv, log, Invoke, Result};
//!
//! struct Hello;
//!
//! impl Invoke for Hello {
//!     fn invoke(input: Vec<u8>) -> Result<Vec<u8>> {
//!         let name = String::from_utf8(input)?;
//!         let n = kv::increment(&format!("greeted:{name}"), 1)?;
//!         log::info(&format!("greeting {name} for the {n}. time"));
//!         Ok(format!("hello, {name} (#{n})").into_bytes())
//!     }
//! }
//!
//! redloom_sdk::export!(Hello => [invoke]);
//! # fn main() {}
//! ```
//!
//! Build it with `cargo build --target wasm32-wasip2`; the `.wasm` file in
//! `target/wasm32-wasip2/<profile>/` is the component the host loads.
//!
//! # Layout
//!
//! - [`export!`] turns a type into the plugin's handlers. It names the
//!   handlers to export, and the component exports exactly those.
//! - [`Invoke`], [`Http`], [`OnMessage`], [`OnTick`], [`OnJob`]: the
//!   handler traits a plugin type implements, one per handler it exports.
//! - [`kv`]: get / set (TTL, if-absent / if-present) / delete / exists /
//!   increment / expire / get-many / compare-and-swap in the plugin's own key
//!   namespace.
//! - Redis data structures in the same key space: [`hash`], [`set`],
//!   [`sorted_set`], [`list`], [`hyperloglog`], [`stream`], and [`keys`] (scan, type,
//!   time to live, rename, delete, and the slot groups of multi-key calls);
//!   [`batch`]: several of their commands atomically, or optimistically
//!   (watch, read, commit unless changed); [`script`]: the plugin's own
//!   Lua scripts from its manifest (with `acl = true`).
//! - [`lock`]: distributed locks with fencing tokens — acquire with a bounded
//!   wait, a [`lock::LockGuard`] that releases on drop, extend, auto-renew.
//! - [`limiter`]: distributed per-key rate limits — GCRA, token bucket,
//!   sliding and fixed windows, concurrency slots under a lease — with
//!   per-key overrides and the `RateLimit-*` headers of a decision.
//! - [`cache`]: cache-aside, stale-while-revalidate, write-through and
//!   write-around with single-flight fills across hosts, tags and negative
//!   caching ([`cache::Cache`], [`cache::Policy`]).
//! - [`log`]: records in the host's log, tagged with the plugin's name.
//! - [`config`]: the plugin's settings from its manifest.
//! - [`Error`], [`Quota`], [`Result`]: what every fallible call returns.
//!
//! The WIT contract behind all of this is the `redloom:plugin` package in the
//! repository's `wit/` folder; the bindings generated from it are private to
//! this crate, so a WIT revision changes this crate and not every plugin.
//!
//! # Features
//!
//! - `json`: `kv::get_json`, `kv::set_json` and `kv::set_json_with` (serde and
//!   serde_json), and `From<serde_json::Error> for Error`.

mod error;
mod handlers;

pub mod batch;
pub mod cache;
pub mod config;
pub mod hash;
pub mod http;
pub mod hyperloglog;
pub mod keys;
pub mod kv;
pub mod limiter;
pub mod list;
pub mod lock;
pub mod log;
pub mod pubsub;
pub mod queue;
pub mod script;
pub mod set;
pub mod sorted_set;
pub mod stream;

#[doc(hidden)]
#[path = "private.rs"]
pub mod __private;

pub use error::{Error, Quota, Result};

/// A duration in whole milliseconds, rounded up (so a non-zero duration
/// never becomes the zero the host refuses), saturating at `u64::MAX`.
pub(crate) fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX)
}

/// Owned copies of string-like items, for a WIT `list<string>`.
pub(crate) fn strings<S: AsRef<str>>(items: &[S]) -> Vec<String> {
    items.iter().map(|s| s.as_ref().to_owned()).collect()
}
pub use handlers::{Http, Invoke, OnJob, OnMessage, OnTick};

/// Exports a type's handlers from the plugin component.
///
/// ```text
/// redloom_sdk::export!(Type => [handler, ...]);
/// ```
///
/// `Type` is a path to a type that implements the trait of every handler named
/// in the list; the component exports exactly the handlers in the list and
/// nothing else, so the host can tell from the component which triggers the
/// plugin supports. Call it once per plugin crate, at module level.
///
/// | handler | trait | WIT export | called by |
/// |---|---|---|---|
/// | `invoke` | [`Invoke`] | `redloom:plugin/invoke@0.2.0` | `redloom invoke` |
/// | `http` | [`Http`] | `redloom:plugin/http-handler@0.2.0` | `[[routes]]` of `redloom serve` |
/// | `message` | [`OnMessage`] | `redloom:plugin/message-handler@0.2.0` | `subscriptions`, `keyspace-events` |
/// | `timer` | [`OnTick`] | `redloom:plugin/timer-handler@0.2.0` | `[plugins.NAME.timers.TIMER]` |
/// | `queue` | [`OnJob`] | `redloom:plugin/queue-handler@0.2.0` | `[plugins.NAME.consumers.QUEUE]` |
///
/// A plugin that serves HTTP and consumes a queue implements both traits
/// and names both: `export!(Shop => [http, queue])`.
///
/// ```no_run
/// use redloom_sdk::{Invoke, Result};
///
/// struct Echo;
///
/// impl Invoke for Echo {
///     fn invoke(input: Vec<u8>) -> Result<Vec<u8>> {
///         Ok(input)
///     }
/// }
///
/// redloom_sdk::export!(Echo => [invoke]);
/// # fn main() {}
/// ```
///
/// A handler that is named but not implemented is a compile error:
///
/// ```compile_fail,E0277
/// struct Nothing;
/// redloom_sdk::export!(Nothing => [invoke]);
/// # fn main() {}
/// ```
///
/// So is a handler this SDK does not know:
///
/// ```compile_fail
/// struct Echo;
/// redloom_sdk::export!(Echo => [carrier_pigeon]);
/// # fn main() {}
/// ```
pub use redloom_sdk_macros::export;
