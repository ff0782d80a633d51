//! `redloom:plugin/script`: a plugin's own Lua scripts.
//!
//! Declared in the manifest (`[plugins.NAME.scripts]`, a name per file),
//! read and hashed when the configuration is read ([`PluginScripts::resolve`]),
//! `SCRIPT LOAD`ed when the plugin loads, run by SHA with `KEYS` mapped into
//! the plugin's namespace. A script can compute key names the host never
//! sees, so only a plugin under its own Redis ACL user may have scripts:
//! Redis then refuses, inside the script, any key outside the plugin's
//! prefix (`denied`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use redis::Value;

use super::check_items;
use crate::bindings::script::{Host, Item, ScriptReply};
use crate::bindings::types::Error;
use crate::caps::Caps;
use crate::caps::common::{R, invalid};

/// Most scripts one plugin may declare.
pub const MAX_SCRIPTS: usize = 32;

/// Largest script file.
pub const MAX_SCRIPT_BYTES: u64 = 64 << 10;

/// The plugin's scripts by name, hashed.
#[derive(Debug, Clone, Default)]
pub struct PluginScripts {
    scripts: BTreeMap<String, Declared>,
}

#[derive(Debug, Clone)]
struct Declared {
    path: PathBuf,
    source: String,
    script: redis::Script,
}

impl PluginScripts {
    /// Reads the manifest's `scripts` (name → file, relative to `base`) for
    /// the plugin section `key`. Refused unless `acl` is on; every file
    /// must be a regular file of at most [`MAX_SCRIPT_BYTES`] of UTF-8.
    /// Errors are `(key, message)`.
    pub fn resolve(
        key: &str,
        raw: BTreeMap<String, PathBuf>,
        base: &Path,
        acl: bool,
    ) -> Result<PluginScripts, (String, String)> {
        let at = format!("{key}.scripts");
        if raw.is_empty() {
            return Ok(PluginScripts::default());
        }
        if !acl {
            return Err((
                at,
                "plugin scripts need `acl = true`: a script can compute key names, and only \
                 the plugin's own Redis ACL user keeps it inside the plugin's keys"
                    .into(),
            ));
        }
        if raw.len() > MAX_SCRIPTS {
            return Err((at, format!("{} scripts; at most {MAX_SCRIPTS}", raw.len())));
        }
        let mut scripts = BTreeMap::new();
        for (name, file) in raw {
            let at = format!("{at}.{name}");
            if name.is_empty()
                || name.len() > 64
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err((
                    at,
                    "a script name is 1 to 64 of a-z, A-Z, 0-9, - and _".into(),
                ));
            }
            let path = base.join(file);
            let bytes = crate::files::read_bounded(&path, MAX_SCRIPT_BYTES)
                .map_err(|e| (at.clone(), format!("cannot read {}: {e}", path.display())))?;
            let source = String::from_utf8(bytes)
                .map_err(|_| (at.clone(), format!("{} is not UTF-8 text", path.display())))?;
            let script = redis::Script::new(&source);
            scripts.insert(
                name,
                Declared {
                    path,
                    source,
                    script,
                },
            );
        }
        Ok(PluginScripts { scripts })
    }

    pub fn is_empty(&self) -> bool {
        self.scripts.is_empty()
    }

    /// Each script's name, file and source, to `SCRIPT LOAD` at plugin load.
    pub fn sources(&self) -> impl Iterator<Item = (&str, &Path, &str)> {
        self.scripts
            .iter()
            .map(|(n, d)| (n.as_str(), d.path.as_path(), d.source.as_str()))
    }
}

/// A script's reply as the guest sees it.
fn script_reply(value: Value) -> Result<ScriptReply, Error> {
    fn item(v: Value) -> Result<Item, Error> {
        Ok(match v {
            Value::Nil => Item::Nil,
            Value::Int(n) => Item::Integer(n),
            Value::Okay => Item::Bytes(b"OK".to_vec()),
            Value::BulkString(b) => Item::Bytes(b),
            Value::SimpleString(s) => Item::Bytes(s.into_bytes()),
            other => {
                return Err(Error::Other(format!(
                    "the script returned a table nested deeper than one level ({other:?})"
                )));
            }
        })
    }
    Ok(match value {
        Value::Array(items) => {
            ScriptReply::Items(items.into_iter().map(item).collect::<Result<_, _>>()?)
        }
        Value::ServerError(e) => {
            return Err(crate::redis::CommandError::from(redis::RedisError::from(e)).into());
        }
        v => match item(v)? {
            Item::Nil => ScriptReply::Nil,
            Item::Integer(n) => ScriptReply::Integer(n),
            Item::Bytes(b) => ScriptReply::Bytes(b),
        },
    })
}

impl Caps {
    async fn script_run(
        &mut self,
        name: &str,
        keys: &[String],
        args: Vec<Vec<u8>>,
    ) -> Result<ScriptReply, Error> {
        let Some(declared) = self.plugin.scripts.scripts.get(name) else {
            let known: Vec<&String> = self.plugin.scripts.scripts.keys().collect();
            return Err(invalid(format!(
                "no script `{name}`; the manifest declares {known:?} ([plugins.NAME.scripts])"
            )));
        };
        let script = declared.script.clone();
        // A script may be run without keys (one that computes none).
        let keys = if keys.is_empty() {
            Vec::new()
        } else {
            self.grouped_keys(keys)?
        };
        check_items("args", args.len())?;
        let payload: usize = args.iter().map(Vec::len).sum();
        if let Some(first) = keys.first() {
            self.check_payload(first, payload)?;
        }
        let redis = self.admit().await?;
        let value = redis.run_script(&script, &keys, &args).await?;
        self.check_reply(super::reply_bytes(&value))?;
        script_reply(value)
    }
}

impl Host for Caps {
    async fn run(&mut self, name: String, keys: Vec<String>, args: Vec<Vec<u8>>) -> R<ScriptReply> {
        Ok(traced!(
            "script",
            "run",
            self.script_run(&name, &keys, args)
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_flatten_one_level() {
        let r = script_reply(Value::Array(vec![
            Value::Int(3),
            Value::BulkString(b"x".to_vec()),
            Value::Nil,
        ]))
        .unwrap();
        assert!(matches!(&r, ScriptReply::Items(i) if i.len() == 3), "{r:?}");
        assert!(script_reply(Value::Array(vec![Value::Array(vec![])])).is_err());
        assert!(matches!(
            script_reply(Value::Nil).unwrap(),
            ScriptReply::Nil
        ));
    }

    /// More than MAX_SCRIPTS scripts, or a file over MAX_SCRIPT_BYTES, is
    /// refused with the key and the bound.
    #[test]
    fn scripts_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let raw: BTreeMap<String, PathBuf> = (0..=MAX_SCRIPTS)
            .map(|i| (format!("s{i}"), PathBuf::from("s.lua")))
            .collect();
        let (key, msg) = PluginScripts::resolve("plugins.p", raw, dir.path(), true).unwrap_err();
        assert_eq!(key, "plugins.p.scripts");
        assert!(msg.contains(&MAX_SCRIPTS.to_string()), "{msg}");
        std::fs::write(
            dir.path().join("big.lua"),
            vec![b'-'; MAX_SCRIPT_BYTES as usize + 1],
        )
        .unwrap();
        std::fs::write(dir.path().join("ok.lua"), "return 1").unwrap();
        let one = |file: &str| BTreeMap::from([("s".to_string(), PathBuf::from(file))]);
        let (key, msg) =
            PluginScripts::resolve("plugins.p", one("big.lua"), dir.path(), true).unwrap_err();
        assert_eq!(key, "plugins.p.scripts.s");
        assert!(msg.contains("big.lua"), "{msg}");
        let ok = PluginScripts::resolve("plugins.p", one("ok.lua"), dir.path(), true).unwrap();
        assert_eq!(ok.sources().count(), 1);
    }

    #[test]
    fn scripts_need_acl() {
        let raw = BTreeMap::from([("s".to_string(), PathBuf::from("s.lua"))]);
        let (key, msg) =
            PluginScripts::resolve("plugins.p", raw, Path::new("."), false).unwrap_err();
        assert_eq!(key, "plugins.p.scripts");
        assert!(msg.contains("acl = true"), "{msg}");
    }
}
