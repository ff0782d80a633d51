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
    with: { "redloom:plugin/lock.lock": crate::caps::lock::LockHandle },
});

pub use self::exports::redloom::plugin::invoke as invoke_handler;
pub use self::exports::redloom::plugin::{
    http_handler, message_handler, queue_handler, timer_handler,
};
pub use self::redloom::plugin::{
    config, http_types, kv, limiter, lock, log, outbound_http, pubsub, queue, types,
};

/// The export name of the `invoke` handler interface.
pub const INVOKE_EXPORT: &str = "redloom:plugin/invoke@0.2.0";

/// The export name of the `http-handler` interface.
pub const HTTP_EXPORT: &str = "redloom:plugin/http-handler@0.2.0";

/// The export name of the `message-handler` interface.
pub const MESSAGE_EXPORT: &str = "redloom:plugin/message-handler@0.2.0";

/// The export name of the `timer-handler` interface.
pub const TIMER_EXPORT: &str = "redloom:plugin/timer-handler@0.2.0";

/// The export name of the `queue-handler` interface.
pub const QUEUE_EXPORT: &str = "redloom:plugin/queue-handler@0.2.0";

/// The WIT package the host speaks, as it appears in import and export names.
pub const WIT_PACKAGE: &str = "redloom:plugin@0.2.0";
