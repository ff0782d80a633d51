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
    batch, config, hash, http_types, hyperloglog, keys, kv, limiter, list, lock, log,
    outbound_http, pubsub, queue, script, set, sorted_set, stream, types,
};
