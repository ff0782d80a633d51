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
//! - [`plugin`]: loading and checking a component; running one invocation.
//! - [`store`]: what a wasmtime `Store` holds for one instance.
//! - [`bindings`]: the one `bindgen!` site for `wit/`.
//! - `caps`: host implementations of the capability interfaces, one module
//!   per WIT interface.
//! - [`namespace`]: plugin names and the key namespace each plugin lives in.
//! - [`redis`]: the only module that talks to Redis; Lua scripts from `lua/`;
//!   the private `redis-server`.

pub mod bindings;
mod caps;
pub mod cli;
pub mod config;
pub mod engine;
pub mod host;
pub mod namespace;
pub mod plugin;
pub mod redis;
pub mod store;
