//! Support for the code that [`export!`](crate::export) expands to in a plugin
//! crate. Nothing here is part of the SDK's API: it changes without notice.

pub use wit_bindgen;

/// Bindings generated from the `imports` world of `wit/`.
///
/// The plugin's own `generate!` (from `export!`) maps every imported interface
/// here with `with: { ... }`, so a plugin links exactly one copy of the import
/// glue and its handler signatures use these types.
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "imports",
    });
}

use crate::Error;
use bindings::redloom::plugin::types;

/// The WIT error a handler returns.
pub type WitError = types::Error;

/// Glue for the `invoke` handler: runs the plugin's [`crate::Invoke`] impl and
/// lowers its error.
pub fn invoke<T: crate::Invoke + ?Sized>(input: Vec<u8>) -> Result<Vec<u8>, WitError> {
    T::invoke(input).map_err(Error::into_wit)
}
