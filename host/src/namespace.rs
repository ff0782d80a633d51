//! Plugin names and the key namespace each plugin's data lives in.
//!
//! Every Redis key of plugin `p` starts with `rl:p:` followed by the
//! capability (`kv:` for the kv interface, `lock:` for locks, `limiter:`
//! for rate limits). Plugin names
//! cannot contain `:`, so `rl:NAME:` prefixes are prefix-free: no key of one
//! plugin can equal or start another plugin's prefix, whatever bytes the
//! plugin puts in its keys (`:`, `{`, `}`, empty keys). Hash tags inside a
//! user key only choose a Cluster slot; they cannot move the key out of the
//! prefix.

use std::fmt;

/// Longest key (in bytes) a plugin may name; longer keys are rejected with
/// `invalid-argument` rather than sent to Redis.
pub const MAX_KEY_BYTES: usize = 1024;

/// Prefix of channels shared between plugins (`shared-channels`).
pub const SHARED_CHANNEL_PREFIX: &str = "rl::ch:";

/// Shared queues' keys start with this (no plugin name; see [`Namespace::queue`]).
pub const SHARED_QUEUE_PREFIX: &str = "rl::q:";

/// Whether the manifest's `shared-channels` make `name` shared: an entry
/// equals it, or an entry ending in `*` is a prefix of it (`room:*` shares
/// `room:1`, and the pattern subscription `room:*` too).
pub fn is_shared<'a>(shared: impl IntoIterator<Item = &'a String>, name: &str) -> bool {
    shared
        .into_iter()
        .any(|entry| match entry.strip_suffix('*') {
            Some(prefix) => name.starts_with(prefix),
            None => entry == name,
        })
}

/// Redis ACL patterns (`&channel`, `~key`) that let a plugin's own ACL user
/// reach the channels and queues it shares: each entry of `shared-channels`
/// / `shared-queues`, a name or a `prefix*`, as the key layout of
/// [`Namespace::channel`] and [`Namespace::queue`] spells it, with glob
/// characters in names escaped.
pub fn shared_acl_patterns(channels: &[String], queues: &[String]) -> Vec<String> {
    fn glob_escape(s: &str) -> String {
        s.chars()
            .flat_map(|c| {
                let escape = matches!(c, '*' | '?' | '[' | ']' | '\\');
                escape.then_some('\\').into_iter().chain([c])
            })
            .collect()
    }
    let channel = channels.iter().map(|entry| match entry.strip_suffix('*') {
        Some(prefix) => format!("&{SHARED_CHANNEL_PREFIX}{}*", glob_escape(prefix)),
        None => format!("&{SHARED_CHANNEL_PREFIX}{}", glob_escape(entry)),
    });
    let queue = queues.iter().map(|entry| match entry.strip_suffix('*') {
        Some(prefix) => format!("~{SHARED_QUEUE_PREFIX}{{/{}*", glob_escape(prefix)),
        None => format!("~{SHARED_QUEUE_PREFIX}{{/{}}}:*", glob_escape(entry)),
    });
    channel.chain(queue).collect()
}

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

/// The Redis keys of one named lock; see [`Namespace::lock`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockKeys {
    /// A hash `{owner, token}` with the lock's time to live; absent when free.
    pub lock: String,
    /// The fencing counter: the last token handed out for this name. No TTL.
    pub fence: String,
}

/// The Redis keys of one limited key of one rate-limit policy; see
/// [`Namespace::limiter`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimiterKeys {
    /// The algorithm's state (a string, hash or sorted set, with a TTL).
    pub state: String,
    /// The key's override: a hash `{algorithm, limit, period-us, burst}`,
    /// absent when the key follows its policy. No TTL.
    pub overrides: String,
}

/// The keys of one queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueKeys {
    /// The stream of messages to process (acknowledged ones are deleted).
    pub stream: String,
    /// Delayed messages and retries, scored by due time.
    pub delayed: String,
    /// Counter for message ids.
    pub seq: String,
    /// Dead letters.
    pub dead: String,
    /// `dedupe:<id>` keys.
    pub dedupe_prefix: String,
}

/// The Redis keys of one cache entry; see [`Namespace::cache`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheKeys {
    /// The entry: a hash `{v, neg, tags, fresh, stale, delta}` expiring at
    /// the end of its stale time.
    pub entry: String,
    /// The entry's fill/refresh lease: a string (the lease id) with the
    /// lease's time to live.
    pub lease: String,
    /// The entry's waiter flag: set while some host waits for another's
    /// fill, so the fill publishes a wake-up on [`CacheKeys::filled`].
    pub waiting: String,
    /// The plugin's cache wake-up channel (see
    /// [`Namespace::cache_filled_channel`]); not a key.
    pub filled: String,
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

    /// The Redis keys of the lock named `name`: `rl:NAME:lock:{NAME/LOCK}`
    /// (the lock) and the same followed by `:fence` (its fencing counter).
    ///
    /// Both keys carry the same hash tag, so they live in one Cluster slot and
    /// one script may touch both. The tag starts with the plugin name and a
    /// `/`, so it is never empty, whatever the lock name (`""`, `}`, `{x}`);
    /// the prefix before the tag has no braces (plugin names cannot contain
    /// them), so the tag is always the one added here. Names over 1024 bytes
    /// are refused.
    pub fn lock(&self, name: &str) -> Result<LockKeys, KeyTooLong> {
        if name.len() > MAX_KEY_BYTES {
            return Err(KeyTooLong { len: name.len() });
        }
        let plugin = self.plugin();
        let lock = format!("{}lock:{{{plugin}/{name}}}", self.prefix);
        Ok(LockKeys {
            fence: format!("{lock}:fence"),
            lock,
        })
    }

    /// The Redis keys of `key` under the rate-limit policy `policy`, whose
    /// algorithm's short code is `code` (`gcra`, `tb`, `sw`, `fw`, `cc`):
    /// `rl:NAME:limiter:{NAME/POLICY/KEY}:CODE` (state) and
    /// `rl:NAME:limiter:{NAME/POLICY/KEY}:override`.
    ///
    /// One hash tag per limited key, so a check touches one Cluster slot and
    /// different keys spread over the cluster. The tag is never empty and is
    /// always the one added here (the prefix has no braces). Policy names
    /// have no `/`, `{` or `}` (see [`crate::limiter::check_policy_name`]),
    /// so `NAME/POLICY/KEY` names one (policy, key) pair; the suffixes after
    /// the tag contain no `}`, so no key (whatever its braces) can make one
    /// pair's key equal another's. Keys over 1024 bytes are refused.
    pub fn limiter(&self, policy: &str, code: &str, key: &str) -> Result<LimiterKeys, KeyTooLong> {
        debug_assert!(
            crate::limiter::check_policy_name(policy).is_ok(),
            "{policy:?}"
        );
        debug_assert!(!code.contains('}'), "{code:?}");
        if key.len() > MAX_KEY_BYTES {
            return Err(KeyTooLong { len: key.len() });
        }
        let plugin = self.plugin();
        let base = format!("{}limiter:{{{plugin}/{policy}/{key}}}", self.prefix);
        Ok(LimiterKeys {
            state: format!("{base}:{code}"),
            overrides: format!("{base}:override"),
        })
    }

    /// The Redis channel for the plugin's channel `name`: `rl:NAME:ch:<name>`,
    /// or `rl::ch:<name>` for a shared channel (no plugin name is empty, so
    /// no plugin's private channel can equal a shared one).
    pub fn channel(&self, name: &str, shared: bool) -> Result<String, KeyTooLong> {
        if name.len() > MAX_KEY_BYTES {
            return Err(KeyTooLong { len: name.len() });
        }
        Ok(if shared {
            format!("{SHARED_CHANNEL_PREFIX}{name}")
        } else {
            format!("{}ch:{name}", self.prefix)
        })
    }

    /// The Redis keys of the plugin's queue `name` (or of the shared queue
    /// `name`): one non-empty hash tag per queue (`{<plugin>/<name>}`, or
    /// `{/<name>}` when shared), so every queue script runs on one Cluster
    /// slot whatever braces the name holds.
    pub fn queue(&self, name: &str, shared: bool) -> Result<QueueKeys, KeyTooLong> {
        if name.len() > MAX_KEY_BYTES {
            return Err(KeyTooLong { len: name.len() });
        }
        let base = if shared {
            format!("{SHARED_QUEUE_PREFIX}{{/{name}}}:")
        } else {
            let plugin = self.plugin();
            format!("{}q:{{{plugin}/{name}}}:", self.prefix)
        };
        Ok(QueueKeys {
            stream: format!("{base}stream"),
            delayed: format!("{base}delayed"),
            seq: format!("{base}seq"),
            dead: format!("{base}dead"),
            dedupe_prefix: format!("{base}dedupe:"),
        })
    }

    /// The Redis keys of cache key `key`: `rl:NAME:cache:{NAME/KEY}` (the
    /// entry), the same followed by `:lease` and by `:waiting` (the waiter
    /// flag), plus the plugin's wake-up channel.
    ///
    /// All three keys share one hash tag, so every cache script touches one
    /// Cluster slot. Entry keys end with `}`, lease keys with `:lease` and
    /// flags with `:waiting`, so no key (whatever its braces) makes one
    /// entry's key equal another's lease or flag. Keys over 1024 bytes are
    /// refused.
    pub fn cache(&self, key: &str) -> Result<CacheKeys, KeyTooLong> {
        if key.len() > MAX_KEY_BYTES {
            return Err(KeyTooLong { len: key.len() });
        }
        let plugin = self.plugin();
        let entry = format!("{}cache:{{{plugin}/{key}}}", self.prefix);
        Ok(CacheKeys {
            lease: format!("{entry}:lease"),
            waiting: format!("{entry}:waiting"),
            filled: self.cache_filled_channel(),
            entry,
        })
    }

    /// The channel cache fills publish on when a host waits for them:
    /// `rl:NAME:cache-filled`, the payload being the entry's key. Plugin
    /// channels are `rl:NAME:ch:*`, so no plugin can publish on it; it is
    /// under the plugin's prefix, so its ACL user may subscribe to it.
    pub fn cache_filled_channel(&self) -> String {
        format!("{}cache-filled", self.prefix)
    }

    /// The key prefixes of the plugin's cache entries (with their leases
    /// and waiter flags) and of its tag counters, for broadcast tracking
    /// (`redis::tracking`): neither is a prefix of the other, nor of any
    /// other plugin's (plugin names have no `:`).
    pub fn cache_tracking_prefixes(&self) -> Vec<String> {
        vec![
            format!("{}cache:", self.prefix),
            format!("{}cache-tag:", self.prefix),
        ]
    }

    /// The version counter of cache tag `tag`:
    /// `rl:NAME:cache-tag:{NAME/TAG}` (an integer; absent means 0). Its own
    /// hash tag: it is only read and incremented by single-key commands.
    pub fn cache_tag(&self, tag: &str) -> Result<String, KeyTooLong> {
        if tag.len() > MAX_KEY_BYTES {
            return Err(KeyTooLong { len: tag.len() });
        }
        let plugin = self.plugin();
        Ok(format!("{}cache-tag:{{{plugin}/{tag}}}", self.prefix))
    }

    /// The prefix of the plugin's private channels.
    pub fn channel_prefix(&self) -> String {
        format!("{}ch:", self.prefix)
    }

    /// The prefix every key of this plugin starts with (for ACL patterns and tests).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The plugin's name (the prefix without `rl:` and `:`), which starts
    /// every hash tag so no tag is ever empty.
    fn plugin(&self) -> &str {
        &self.prefix["rl:".len()..self.prefix.len() - 1]
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

    /// The Cluster hash tag of a key, as Redis computes it: the text between
    /// the first `{` and the first `}` after it, if that is not empty.
    fn hash_tag(key: &str) -> Option<&str> {
        let open = key.find('{')?;
        let close = key[open + 1..].find('}')? + open + 1;
        (close > open + 1).then(|| &key[open + 1..close])
    }

    /// A lock and its fencing counter share one non-empty hash tag for every
    /// name, lock keys are disjoint from kv keys and from each other's
    /// counters, and over-long names are refused.
    #[test]
    fn lock_keys_share_a_slot() {
        let a = Namespace::new(&PluginName::parse("a").unwrap());
        let names = [
            "", "}", "{", "{x}", "x}y", "jobs", "a/b", ":fence", "x:fence",
        ];
        let mut all = Vec::new();
        for name in names {
            let keys = a.lock(name).unwrap();
            assert!(keys.lock.starts_with("rl:a:lock:{a/"), "{keys:?}");
            let tag = hash_tag(&keys.lock).expect("a hash tag");
            assert!(tag.starts_with("a/"), "{tag}");
            assert_eq!(hash_tag(&keys.fence), Some(tag), "{keys:?}");
            for k in hostile_kv_keys() {
                assert_ne!(a.kv(k).unwrap(), keys.lock);
            }
            all.push(keys.lock);
            all.push(keys.fence);
        }
        let n = all.len();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), n, "two names share a key: {all:?}");
        assert_eq!(
            a.lock(&"x".repeat(MAX_KEY_BYTES + 1)),
            Err(KeyTooLong {
                len: MAX_KEY_BYTES + 1
            })
        );
        assert_eq!(hash_tag("rl:a:lock:{a/x}y}:fence"), Some("a/x"));
    }

    /// A limited key's state and override share one non-empty hash tag,
    /// and no two (policy, key, algorithm) triples share a Redis key, even
    /// with hostile keys; limiter keys never equal kv or lock keys.
    #[test]
    fn limiter_keys_share_a_slot_and_never_collide() {
        let a = Namespace::new(&PluginName::parse("a").unwrap());
        let keys = [
            "",
            "}",
            "{",
            "{x}",
            "x}y",
            "x}:gcra",
            "x}:override",
            "x",
            "p/x",
            ":override",
        ];
        let mut all = Vec::new();
        for policy in ["p", "p-2"] {
            for key in keys {
                for code in ["gcra", "tb", "sw", "fw", "cc"] {
                    let k = a.limiter(policy, code, key).unwrap();
                    let tag = hash_tag(&k.state).expect("a hash tag");
                    assert!(tag.starts_with(&format!("a/{policy}/")), "{k:?}");
                    assert_eq!(hash_tag(&k.overrides), Some(tag), "{k:?}");
                    assert!(k.state.starts_with("rl:a:limiter:{a/"), "{k:?}");
                    all.push(k.state);
                }
                all.push(a.limiter(policy, "gcra", key).unwrap().overrides);
                assert_ne!(
                    a.kv(key).unwrap(),
                    a.limiter(policy, "gcra", key).unwrap().state
                );
                assert_ne!(
                    a.lock(key).unwrap().lock,
                    a.limiter(policy, "gcra", key).unwrap().state
                );
            }
        }
        let n = all.len();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), n, "two limited keys share a Redis key");
        assert_eq!(
            a.limiter("p", "gcra", &"x".repeat(MAX_KEY_BYTES + 1)),
            Err(KeyTooLong {
                len: MAX_KEY_BYTES + 1
            })
        );
    }

    /// A cache entry and its lease share one non-empty hash tag; no two
    /// keys (hostile braces included) share a Redis key, and cache keys
    /// never equal kv, lock or tag keys.
    #[test]
    fn cache_keys_share_a_slot_and_never_collide() {
        let a = Namespace::new(&PluginName::parse("a").unwrap());
        let keys = ["", "}", "{", "{x}", "x}:lease", "x", "x:lease", "x}"];
        let mut all = Vec::new();
        for key in keys {
            let k = a.cache(key).unwrap();
            let tag = hash_tag(&k.entry).expect("a hash tag");
            assert!(tag.starts_with("a/"), "{k:?}");
            assert_eq!(hash_tag(&k.lease), Some(tag), "{k:?}");
            assert_eq!(hash_tag(&k.waiting), Some(tag), "{k:?}");
            assert_ne!(a.channel(key, false).unwrap(), k.filled);
            assert_ne!(a.kv(key).unwrap(), k.entry);
            assert_ne!(a.lock(key).unwrap().lock, k.entry);
            all.push(k.entry);
            all.push(k.lease);
            all.push(k.waiting);
            all.push(a.cache_tag(key).unwrap());
        }
        let n = all.len();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), n, "two cache keys share a Redis key: {all:?}");
        assert!(a.cache(&"x".repeat(MAX_KEY_BYTES + 1)).is_err());
        assert!(a.cache_tag(&"x".repeat(MAX_KEY_BYTES + 1)).is_err());
    }

    fn hostile_kv_keys() -> [&'static str; 4] {
        ["", "lock:{a/}", ":lock:{a/jobs}", "{a/jobs}"]
    }
}
