//! redloom: a host that runs sandboxed WebAssembly component plugins which
//! compose Redis-backed patterns.
//!
//! # Layout
//!
//! - [`cli`]: the `redloom` command line (the binary is a one-line `main`).
//! - [`config`]: `redloom.toml`, parsed strictly, with one-line errors.
//! - [`host`]: [`host::Host`] ties the runtime, Redis and loaded plugins together.
//! - [`engine`]: the wasmtime engine (pooling allocator, epoch ticker), the
//!   linker with every capability, and the compiled-plugin cache.
//! - [`files`]: bounded reads of regular files named by configuration,
//!   command line or admin API.
//! - [`handler`]: the handlers a plugin can export ([`handler::HandlerKind`]):
//!   names, export names, worlds.
//! - [`plugin`]: loading and checking a component; running one invocation.
//! - [`store`]: what a wasmtime `Store` holds for one instance.
//! - [`quota`]: where each per-plugin quota is enforced, and what it covers.
//! - [`stats`]: per-plugin counters.
//! - [`bindings`]: the one `bindgen!` site for `wit/`.
//! - `caps`: host implementations of the capability interfaces, one module
//!   per WIT interface; [`near_cache`] (re-exported from it): the cache
//!   capability's host-side near cache.
//! - [`serve`]: `redloom serve`'s HTTP trigger, admin API, metrics and health.
//! - [`logging`]: the log's format (text or JSON lines) and the access log
//!   of HTTP requests and trigger invocations.
//! - [`limiter`]: rate-limit policies: algorithms, parameters and their bounds,
//!   the manifest syntax.
//! - [`subscriptions`]: a manifest's pub/sub subscriptions and keyspace
//!   events as Redis channels and patterns (and the ACL rules they need).
//! - [`triggers`]: pub/sub subscriptions, keyspace events and timers.
//! - [`oci`]: plugins from OCI registries (`oci://` references, push,
//!   the lock file and the local cache).
//! - [`namespace`]: plugin names and the key namespace each plugin lives in.
//! - [`redis`]: the only module that talks to Redis; Lua scripts from `lua/`;
//!   the private `redis-server`.
//! - [`sampler`]: `serve`'s measurement of each plugin's Redis memory (the
//!   `storage` quota).
//! - [`units`]: durations and byte sizes in configuration (serde helpers).
//! - [`scaffold`]: `redloom new`, plugin projects in Rust, JavaScript, Python
//!   and C from the templates in `host/templates/`.

pub mod bindings;
mod caps;
pub use caps::{data, near_cache};
pub mod cli;
pub mod config;
pub mod engine;
pub mod files;
pub mod handler;
pub mod host;
pub mod limiter;
pub mod logging;
pub mod namespace;
pub mod oci;
pub mod plugin;
pub mod quota;
pub mod redis;
pub mod sampler;
pub mod scaffold;
pub mod serve;
pub mod stats;
pub mod store;
pub mod subscriptions;
pub mod triggers;
pub mod units;

#[cfg(test)]
mod layering;
