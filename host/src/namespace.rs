//! Plugin names and the key namespace each plugin's data lives in.
//!
//! Every Redis key of plugin `p` starts with `rl:p:` followed by the
//! capability (`kv:` for the kv interface). Plugin names cannot contain `:`, so
//! `rl:NAME:` prefixes are prefix-free: no key of one plugin can equal or start
//! another plugin's prefix, whatever bytes the plugin puts in its keys
//! (`:`, `{`, `}`, empty keys). Hash tags inside a user key only choose a
//! Cluster slot; they cannot move the key out of the prefix.

use std::fmt;

/// Longest key (in bytes) a plugin may name; longer keys are rejected with
/// `invalid-argument` rather than sent to Redis.
pub const MAX_KEY_BYTES: usize = 1024;

/// Longest plugin name.
pub const MAX_NAME_BYTES: usize = 64;

/// A validated plugin name: 1–64 characters of `a-z`, `0-9`, `-` and `_`,
/// starting with a letter or digit.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PluginName(String);

/// Why a string is not a valid plugin name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid plugin name `{name}`: {why}")]
pub struct NameError {
    name: String,
    why: &'static str,
}

impl PluginName {
    pub fn parse(name: &str) -> Result<PluginName, NameError> {
        let err = |why| {
            Err(NameError {
                name: name.to_string(),
                why,
            })
        };
        if name.is_empty() {
            return err("it is empty");
        }
        if name.len() > MAX_NAME_BYTES {
            return err("it is longer than 64 characters");
        }
        if !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        {
            return err("use only lowercase letters, digits, `-` and `_`");
        }
        if !name.as_bytes()[0].is_ascii_alphanumeric() {
            return err("it must start with a letter or digit");
        }
        Ok(PluginName(name.to_string()))
    }

    /// A valid name derived from a file stem: lowercased, other characters replaced by `-`.
    pub fn from_file_stem(stem: &str) -> PluginName {
        let mut s: String = stem
            .chars()
            .map(|c| match c.to_ascii_lowercase() {
                c @ ('a'..='z' | '0'..='9' | '-' | '_') => c,
                _ => '-',
            })
            .take(MAX_NAME_BYTES)
            .collect();
        if !s.starts_with(|c: char| c.is_ascii_alphanumeric()) {
            s.insert(0, 'p');
            s.truncate(MAX_NAME_BYTES);
        }
        PluginName(s)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PluginName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A key a plugin passed that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("key is {len} bytes long; the limit is {MAX_KEY_BYTES}")]
pub struct KeyTooLong {
    pub len: usize,
}

/// Maps a plugin's keys into its namespace.
#[derive(Debug, Clone)]
pub struct Namespace {
    /// `rl:NAME:`
    prefix: String,
}

impl Namespace {
    pub fn new(plugin: &PluginName) -> Namespace {
        Namespace {
            prefix: format!("rl:{plugin}:"),
        }
    }

    /// The Redis key for the kv key `key`: `rl:NAME:kv:KEY`.
    pub fn kv(&self, key: &str) -> Result<String, KeyTooLong> {
        if key.len() > MAX_KEY_BYTES {
            return Err(KeyTooLong { len: key.len() });
        }
        Ok(format!("{}kv:{key}", self.prefix))
    }

    /// The prefix every key of this plugin starts with (for ACL patterns and tests).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Names are validated and file stems are turned into valid names.
    #[test]
    fn plugin_names() {
        assert!(PluginName::parse("visit-counter_2").is_ok());
        for bad in ["", "A", "a:b", "a{b}", "-a", "a b", &"a".repeat(65)] {
            assert!(PluginName::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(
            PluginName::from_file_stem("Visit_Counter.v2").as_str(),
            "visit_counter-v2"
        );
        assert_eq!(PluginName::from_file_stem("_x").as_str(), "p_x");
        assert!(PluginName::parse(PluginName::from_file_stem(&"é".repeat(80)).as_str()).is_ok());
    }

    /// No key of one plugin maps onto a key of another, even with hostile keys.
    #[test]
    fn namespaces_are_disjoint() {
        let a = Namespace::new(&PluginName::parse("a").unwrap());
        let ab = Namespace::new(&PluginName::parse("a-b").unwrap());
        let hostile = [
            "",
            ":",
            "}",
            "{",
            "{a}",
            "b:kv:x",
            "../x",
            "\0",
            "rl:a-b:kv:x",
        ];
        for k in hostile {
            let ka = a.kv(k).unwrap();
            assert!(ka.starts_with("rl:a:kv:"));
            for k2 in hostile {
                assert_ne!(ka, ab.kv(k2).unwrap());
                assert!(!ka.starts_with(ab.prefix()));
            }
        }
        assert_eq!(
            a.kv(&"x".repeat(MAX_KEY_BYTES)).unwrap().len(),
            MAX_KEY_BYTES + 8
        );
        assert_eq!(
            a.kv(&"x".repeat(MAX_KEY_BYTES + 1)),
            Err(KeyTooLong {
                len: MAX_KEY_BYTES + 1
            })
        );
    }
}
