//! The plugin's own Lua scripts, declared in its manifest:
//!
//! ```toml
//! [plugins.shop]
//! wasm = "shop.wasm"
//! acl = true                       # required: Redis confines the scripts
//! [plugins.shop.scripts]
//! reserve = "lua/reserve.lua"
//! ```
//!
//! `KEYS` are the plugin's keys (mapped into its namespace; one slot
//! group), `ARGV` goes as given. A key a script computes itself outside the
//! plugin's namespace is refused by Redis ([`Error::Denied`]); an error the
//! script raises is [`Error::InvalidArgument`] with its message.
//!
//! ```no_run
//! use redloom_sdk::script::{self, Reply};
//!
//! # fn main() -> redloom_sdk::Result<()> {
//! if let Reply::Integer(left) = script::run("reserve", &["{sku:42}stock"], &[b"1".as_slice()])? {
//!     # let _ = left;
//! }
//! # Ok(())
//! # }
//! ```

use crate::__private::bindings::redloom::plugin::script as wit;
use crate::{Error, Result};

/// One element of a table a script returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    Nil,
    Integer(i64),
    Bytes(Vec<u8>),
}

/// What a script returned (tables one level deep).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Nil,
    Integer(i64),
    /// A string or status reply.
    Bytes(Vec<u8>),
    Items(Vec<Item>),
}

/// Runs the script `name` with `keys` as `KEYS` and `args` as `ARGV`.
pub fn run<K: AsRef<str>, A: AsRef<[u8]>>(name: &str, keys: &[K], args: &[A]) -> Result<Reply> {
    let keys = crate::strings(keys);
    let args: Vec<Vec<u8>> = args.iter().map(|a| a.as_ref().to_vec()).collect();
    let reply = wit::run(name, &keys, &args).map_err(Error::from_wit)?;
    let item = |i: wit::Item| match i {
        wit::Item::Nil => Item::Nil,
        wit::Item::Integer(n) => Item::Integer(n),
        wit::Item::Bytes(b) => Item::Bytes(b),
    };
    Ok(match reply {
        wit::ScriptReply::Nil => Reply::Nil,
        wit::ScriptReply::Integer(n) => Reply::Integer(n),
        wit::ScriptReply::Bytes(b) => Reply::Bytes(b),
        wit::ScriptReply::Items(items) => Reply::Items(items.into_iter().map(item).collect()),
    })
}
