//! The one `bindgen!` site: host-side bindings for `wit/`.
//!
//! The `any-plugin` world imports every capability and exports every handler. No
//! component exports all handlers; [`crate::plugin`] looks each handler
//! interface up on its own through its `GuestIndices`, so a component only has
//! to export the handlers its manifest binds.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "redloom:plugin/any-plugin",
    imports: { default: async | trappable },
    exports: { default: async },
});

pub use self::exports::redloom::plugin::invoke as invoke_handler;
pub use self::exports::redloom::plugin::{
    http_handler, message_handler, queue_handler, timer_handler,
};
pub use self::redloom::plugin::{
    config, http_types, kv, limiter, lock, log, outbound_http, pubsub, queue, types,
};

/// A WIT error as one line.
pub fn describe(e: &types::Error) -> String {
    match e {
        types::Error::QuotaExceeded(q) => format!("quota exceeded: {}", quota_name(*q)),
        types::Error::BackendUnavailable(m) => format!("backend unavailable: {m}"),
        types::Error::Timeout(m) => format!("timeout: {m}"),
        types::Error::InvalidArgument(m) => format!("invalid argument: {m}"),
        types::Error::Denied(m) => format!("denied: {m}"),
        types::Error::Other(m) => m.clone(),
    }
}

/// The manifest name of a quota.
pub fn quota_name(q: types::Quota) -> &'static str {
    match q {
        types::Quota::Cpu => "cpu",
        types::Quota::WallTime => "wall-time",
        types::Quota::Memory => "memory",
        types::Quota::RedisOps => "redis-ops",
        types::Quota::RedisRate => "redis-rate",
        types::Quota::Concurrency => "concurrency",
        types::Quota::Payload => "payload",
        types::Quota::Storage => "storage",
    }
}
