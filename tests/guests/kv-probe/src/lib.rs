//! Test guest: runs a JSON list of `kv` / `config` / `log` operations and
//! reports the result of each, so host tests can drive every capability call
//! (and see every typed error) without a plugin per case.
//!
//! Input: a JSON array of operations. Output: a JSON array with one entry per
//! operation, `{"ok": <value>}` or `{"err": {"kind": "<wit error case>",
//! "message": "..."}}` (for `quota-exceeded` the message is the quota's name).
//! Values are UTF-8 strings (lossy) or `null`.
//!
//! | op | fields | `ok` value |
//! |---|---|---|
//! | `set` | `key`, `value`, `ttl_ms`?, `condition`? (`always`, `if-absent`, `if-present`), `repeat`? (value repeated n times) | bool: written |
//! | `get` | `key` | string or null |
//! | `delete` | `key` | bool: existed |
//! | `exists` | `key` | bool |
//! | `incr` | `key`, `delta`? (default 1) | integer |
//! | `expire` | `key`, `ttl_ms` | bool: exists |
//! | `get_many` | `keys` | array of string or null |
//! | `cas` | `key`, `expected` (string or null), `new`, `ttl_ms`? | bool: swapped |
//! | `config` | `key` | string or null |
//! | `config_entries` | | array of `[key, value]` |
//! | `log` | `level` (`trace`…`error`), `message` | null |
//!
//! The whole input is checked before any operation runs: input that is not a
//! JSON array of well-formed operations fails the invocation with
//! `invalid-argument` (naming the operation's index) and touches nothing.

use std::time::Duration;

use redloom_sdk::kv::{self, Condition, SetOptions};
use redloom_sdk::log::{self, Level};
use redloom_sdk::{Error, Invoke, Result, config};
use serde_json::{Map, Value, json};

struct KvProbe;

impl Invoke for KvProbe {
    fn invoke(input: Vec<u8>) -> Result<Vec<u8>> {
        let ops = parse(&input)?;
        let results: Vec<Value> = ops
            .iter()
            .map(|op| match op.run() {
                Ok(value) => json!({ "ok": value }),
                Err(e) => json!({ "err": { "kind": e.kind(), "message": e.message() } }),
            })
            .collect();
        serde_json::to_vec(&results).map_err(|e| Error::other(format!("encoding results: {e}")))
    }
}

redloom_sdk::export!(KvProbe => [invoke]);

/// One parsed operation.
enum Op {
    Set {
        key: String,
        value: Vec<u8>,
        options: SetOptions,
    },
    Get {
        key: String,
    },
    Delete {
        key: String,
    },
    Exists {
        key: String,
    },
    Incr {
        key: String,
        delta: i64,
    },
    Expire {
        key: String,
        ttl: Duration,
    },
    GetMany {
        keys: Vec<String>,
    },
    Cas {
        key: String,
        expected: Option<Vec<u8>>,
        new: Vec<u8>,
        ttl: Option<Duration>,
    },
    Config {
        key: String,
    },
    ConfigEntries,
    Log {
        level: Level,
        message: String,
    },
}

impl Op {
    fn run(&self) -> Result<Value> {
        Ok(match self {
            Op::Set {
                key,
                value,
                options,
            } => kv::set_with(key, value, *options)?.into(),
            Op::Get { key } => text(kv::get(key)?),
            Op::Delete { key } => kv::delete(key)?.into(),
            Op::Exists { key } => kv::exists(key)?.into(),
            Op::Incr { key, delta } => kv::increment(key, *delta)?.into(),
            Op::Expire { key, ttl } => kv::expire(key, *ttl)?.into(),
            Op::GetMany { keys } => kv::get_many(keys)?.into_iter().map(text).collect(),
            Op::Cas {
                key,
                expected,
                new,
                ttl,
            } => kv::compare_and_swap(key, expected.as_deref(), new, *ttl)?.into(),
            Op::Config { key } => config::get(key).into(),
            Op::ConfigEntries => config::entries()
                .into_iter()
                .map(|(k, v)| json!([k, v]))
                .collect(),
            Op::Log { level, message } => {
                log::log(*level, message);
                Value::Null
            }
        })
    }
}

fn text(value: Option<Vec<u8>>) -> Value {
    value.map_or(Value::Null, |v| {
        String::from_utf8_lossy(&v).into_owned().into()
    })
}

fn parse(input: &[u8]) -> Result<Vec<Op>> {
    let value: Value = serde_json::from_slice(input)
        .map_err(|e| Error::invalid(format!("input is not JSON: {e}")))?;
    let Value::Array(items) = value else {
        return Err(Error::invalid("input must be a JSON array of operations"));
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| parse_op(item).map_err(|m| Error::invalid(format!("operation {i}: {m}"))))
        .collect()
}

/// Parses one operation; the error is a message for `Error::invalid`.
fn parse_op(item: &Value) -> Result<Op, String> {
    let Value::Object(fields) = item else {
        return Err("must be a JSON object".into());
    };
    let f = Fields(fields);
    let op = f.str("op")?;
    Ok(match op.as_str() {
        "set" => {
            let value = f.str("value")?;
            let repeat = f.opt_u64("repeat")?.unwrap_or(1);
            let repeat = usize::try_from(repeat).map_err(|_| "`repeat` is too large")?;
            let mut options =
                SetOptions::new().condition(match f.opt_str("condition")?.as_deref() {
                    None | Some("always") => Condition::Always,
                    Some("if-absent") => Condition::IfAbsent,
                    Some("if-present") => Condition::IfPresent,
                    Some(other) => return Err(format!("unknown condition `{other}`")),
                });
            options.ttl = f.opt_u64("ttl_ms")?.map(Duration::from_millis);
            Op::Set {
                key: f.str("key")?,
                value: value.repeat(repeat).into_bytes(),
                options,
            }
        }
        "get" => Op::Get { key: f.str("key")? },
        "delete" => Op::Delete { key: f.str("key")? },
        "exists" => Op::Exists { key: f.str("key")? },
        "incr" => Op::Incr {
            key: f.str("key")?,
            delta: f.opt_i64("delta")?.unwrap_or(1),
        },
        "expire" => Op::Expire {
            key: f.str("key")?,
            ttl: Duration::from_millis(f.opt_u64("ttl_ms")?.ok_or("missing `ttl_ms`")?),
        },
        "get_many" => {
            let Some(Value::Array(keys)) = fields.get("keys") else {
                return Err("`keys` must be an array of strings".into());
            };
            let keys = keys
                .iter()
                .map(|k| {
                    k.as_str()
                        .map(str::to_owned)
                        .ok_or("`keys` must be an array of strings")
                })
                .collect::<Result<_, _>>()?;
            Op::GetMany { keys }
        }
        "cas" => Op::Cas {
            key: f.str("key")?,
            expected: match fields.get("expected") {
                Some(Value::Null) => None,
                Some(Value::String(s)) => Some(s.clone().into_bytes()),
                _ => return Err("`expected` must be a string or null".into()),
            },
            new: f.str("new")?.into_bytes(),
            ttl: f.opt_u64("ttl_ms")?.map(Duration::from_millis),
        },
        "config" => Op::Config { key: f.str("key")? },
        "config_entries" => Op::ConfigEntries,
        "log" => Op::Log {
            level: match f.str("level")?.as_str() {
                "trace" => Level::Trace,
                "debug" => Level::Debug,
                "info" => Level::Info,
                "warn" => Level::Warn,
                "error" => Level::Error,
                other => return Err(format!("unknown log level `{other}`")),
            },
            message: f.str("message")?,
        },
        other => return Err(format!("unknown op `{other}`")),
    })
}

/// Typed access to an operation's fields, with messages naming the field.
struct Fields<'a>(&'a Map<String, Value>);

impl Fields<'_> {
    fn str(&self, name: &str) -> Result<String, String> {
        self.opt_str(name)?
            .ok_or_else(|| format!("missing `{name}`"))
    }

    fn opt_str(&self, name: &str) -> Result<Option<String>, String> {
        match self.0.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(format!("`{name}` must be a string")),
        }
    }

    fn opt_u64(&self, name: &str) -> Result<Option<u64>, String> {
        match self.0.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_u64()
                .map(Some)
                .ok_or_else(|| format!("`{name}` must be a non-negative integer")),
        }
    }

    fn opt_i64(&self, name: &str) -> Result<Option<i64>, String> {
        match self.0.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_i64()
                .map(Some)
                .ok_or_else(|| format!("`{name}` must be an integer")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(s: &str) -> Result<Vec<Op>> {
        parse(s.as_bytes())
    }

    /// Every documented op parses.
    #[test]
    fn parses_every_op() {
        let ops = parse_str(
            r#"[{"op":"set","key":"k","value":"v","ttl_ms":1000,"condition":"if-absent"},
                {"op":"get","key":"k"},{"op":"delete","key":"k"},{"op":"exists","key":"k"},
                {"op":"incr","key":"c","delta":-2},{"op":"expire","key":"c","ttl_ms":5},
                {"op":"get_many","keys":["a","b"]},{"op":"cas","key":"k","expected":null,"new":"x"},
                {"op":"config","key":"name"},{"op":"config_entries"},
                {"op":"log","level":"warn","message":"m"}]"#,
        )
        .unwrap();
        assert_eq!(ops.len(), 11);
        let Op::Set { options, .. } = &ops[0] else {
            panic!("not a set")
        };
        assert_eq!(options.ttl, Some(Duration::from_millis(1000)));
        assert_eq!(options.condition, Condition::IfAbsent);
    }

    /// Bad input is an `invalid-argument` error naming the operation, never a panic.
    #[test]
    fn rejects_bad_input() {
        for bad in [
            "",
            "nope",
            "{}",
            "[1]",
            r#"[{"op":"fly"}]"#,
            r#"[{"op":"get"}]"#,
            r#"[{"op":"get","key":1}]"#,
            r#"[{"op":"incr","key":"c","delta":1.5}]"#,
            r#"[{"op":"set","key":"k","value":"v","ttl_ms":-1}]"#,
            r#"[{"op":"set","key":"k","value":"v","condition":"sometimes"}]"#,
            r#"[{"op":"get_many","keys":["a",2]}]"#,
            r#"[{"op":"cas","key":"k","new":"x"}]"#,
            r#"[{"op":"expire","key":"k"}]"#,
        ] {
            let e = parse_str(bad)
                .err()
                .unwrap_or_else(|| panic!("accepted {bad:?}"));
            assert_eq!(e.kind(), "invalid-argument", "{bad:?}: {e}");
        }
        let e = parse_str(r#"[{"op":"get","key":"k"},{"op":"get"}]"#)
            .err()
            .unwrap();
        assert!(e.message().starts_with("operation 1:"), "{e}");
    }
}
