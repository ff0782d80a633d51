//! Handler traits: what a plugin implements for each trigger it supports.
//!
//! Each trait pairs with one WIT handler interface and one name in
//! [`export!`](crate::export)'s list. Adding a handler means adding its trait
//! here, its glue in `__private`, and its row in the macro crate's table.

use crate::Result;

/// The generic handler, called by `redloom invoke` and the admin API.
///
/// Export it with `redloom_sdk::export!(MyPlugin => [invoke]);`.
///
/// ```no_run
/// use redloom_sdk::{Error, Invoke, Result};
///
/// struct Upper;
///
/// impl Invoke for Upper {
///     fn invoke(input: Vec<u8>) -> Result<Vec<u8>> {
///         if input.is_empty() {
///             return Err(Error::invalid("empty input"));
///         }
///         Ok(input.to_ascii_uppercase())
///     }
/// }
///
/// redloom_sdk::export!(Upper => [invoke]);
/// # fn main() {}
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` does not implement `redloom_sdk::Invoke`",
    label = "exported with the `invoke` handler here",
    note = "`export!(... => [invoke])` needs `impl redloom_sdk::Invoke for {Self}`"
)]
pub trait Invoke {
    /// Handle one invocation: `input` is the caller's bytes, `Ok` bytes are
    /// the reply, and an `Err` is passed back to the caller as a typed error.
    /// A panic traps the instance; the host reports it for this call only.
    fn invoke(input: Vec<u8>) -> Result<Vec<u8>>;
}
