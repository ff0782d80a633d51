//! Host implementations of the capability interfaces, one module per WIT
//! interface. Each works on [`Caps`](crate::store::Caps): keys are mapped
//! into the plugin's namespace here, Redis is reached only through
//! [`crate::redis`], and every failure becomes a typed WIT `error`.

mod config;
mod kv;
mod log;

use crate::bindings::types::{self, Error};
use crate::redis::CommandError;
use crate::store::Caps;

impl types::Host for Caps {}

impl From<CommandError> for Error {
    fn from(e: CommandError) -> Error {
        match e {
            CommandError::Timeout => Error::Timeout(e.to_string()),
            CommandError::Unavailable(m) => Error::BackendUnavailable(m),
            CommandError::Rejected(m) => Error::InvalidArgument(m),
        }
    }
}
