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
pub use self::redloom::plugin::{config, kv, log, types};

/// The export name of the `invoke` handler interface.
pub const INVOKE_EXPORT: &str = "redloom:plugin/invoke@0.1.0";

/// The WIT package the host speaks, as it appears in import and export names.
pub const WIT_PACKAGE: &str = "redloom:plugin@0.1.0";
