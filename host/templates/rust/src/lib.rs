//! {{name}}: a redloom plugin.
//!
//! Input: a name. Reply: `<greeting>, <name> (#<n>)`, where `n` counts how
//! often that name was greeted (in Redis, through the `kv` capability) and
//! the greeting is the `greeting` setting (default `hello`).

use redloom_sdk::{Error, Invoke, Result, config, kv, log};

/// Names become part of Redis keys; the host refuses keys over 1024 bytes.
const MAX_NAME: usize = 256;

struct Plugin;

impl Invoke for Plugin {
    fn invoke(input: Vec<u8>) -> Result<Vec<u8>> {
        let name = String::from_utf8(input)?;
        let name = name.trim();
        if name.is_empty() || name.len() > MAX_NAME {
            return Err(Error::invalid(format!(
                "the input must be a name of 1 to {MAX_NAME} bytes"
            )));
        }
        let greeting = config::get("greeting").unwrap_or_else(|| "hello".to_owned());
        let n = kv::increment(&format!("greeted:{name}"), 1)?;
        log::info(&format!("greeting {name} for the {n}. time"));
        Ok(format!("{greeting}, {name} (#{n})").into_bytes())
    }
}

redloom_sdk::export!(Plugin => [invoke]);
