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

/// Glue for the `http` handler: converts the request, runs the plugin's
/// [`crate::Http`] impl, converts the response and lowers its error.
pub fn http<T: crate::Http + ?Sized>(
    request: bindings::redloom::plugin::http_types::Request,
) -> Result<bindings::redloom::plugin::http_types::Response, WitError> {
    T::handle(crate::http::Request::from_wit(request))
        .map(crate::http::Response::into_wit)
        .map_err(Error::into_wit)
}

/// Glue for the `message` handler.
pub fn on_message<T: crate::OnMessage + ?Sized>(
    channel: String,
    pattern: Option<String>,
    payload: Vec<u8>,
) -> Result<(), WitError> {
    T::on_message(crate::pubsub::Message {
        channel,
        pattern,
        payload,
    })
    .map_err(Error::into_wit)
}

/// Glue for the `timer` handler.
pub fn on_tick<T: crate::OnTick + ?Sized>(
    timer: String,
    scheduled_ms: u64,
) -> Result<(), WitError> {
    T::on_tick(crate::pubsub::Tick {
        timer,
        scheduled_ms,
    })
    .map_err(Error::into_wit)
}

/// Glue for the `queue` handler.
pub fn on_job<T: crate::OnJob + ?Sized>(job: crate::queue::Job) -> Result<(), WitError> {
    T::on_job(job).map_err(Error::into_wit)
}
