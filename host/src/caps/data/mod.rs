//! The plugin's key space: `kv` (strings) and the Redis data structures
//! (`hash`, `set`, `sorted-set`, `list`, `hyperloglog`, `stream`) plus
//! `keys` (the keys themselves) and `batch` (several commands as one).
//! One folder, one key layout: every interface maps a key the guest names to `rl:NAME:kv:KEY` ([`crate::namespace::Namespace::kv`]),
//! so a key holds one type as in Redis, and `keys.scan` sees all of them.
//!
//! Each call is one Redis command built here and sent through
//! [`Caps::admit`] (quotas, counters) with [`crate::redis::Redis::command`];
//! the reply is sized against `max-reply` before it is decoded, payloads
//! are checked against `max-write` and `storage` before they are sent
//! ([`Caps::check_write`]). A command on several keys needs them in one
//! slot group ([`one_slot_group`]).
//!
//! Bounds (named here, documented in the README's data-structures section):
//! [`MAX_ITEMS`] items per call, [`MAX_SCAN_COUNT`] per scan page.

mod batch;
mod hash;
mod hyperloglog;
mod keys;
mod kv;
mod list;
mod script;
mod set;
mod sorted_set;
mod stream;

pub use batch::{MAX_TRANSACTIONS, Transactions};

use redis::{Cmd, FromRedisValue, Value};
pub use script::{MAX_SCRIPT_BYTES, MAX_SCRIPTS, PluginScripts};

use super::Caps;
use super::common::invalid;
use crate::bindings::types::Error;

/// Most items (fields, members, values, elements, keys, or a `count`) one
/// call may name or ask for.
pub const MAX_ITEMS: usize = 10_000;

/// Largest `count` hint of a scan page.
pub const MAX_SCAN_COUNT: u32 = 1_000;

/// Redis connections of its own (a transaction's, a blocking pop's) one
/// plugin may open per second, all its instances together: each is a TCP
/// connection and a handshake for Redis and a port in `TIME_WAIT` on the
/// host afterwards, so a loop of 1 ms blocking pops must not churn them at
/// the `redis-rate` of commands.
pub const OWN_CONNECTION_RATE: u64 = 20;

impl Caps {
    /// The Redis key of the guest's key `key`, in the plugin's namespace.
    pub(super) fn data_key(&self, key: &str) -> Result<String, Error> {
        self.plugin
            .namespace
            .kv(key)
            .map_err(|e| invalid(e.to_string()))
    }

    /// The Redis keys of several guest keys (at least one, at most
    /// [`MAX_ITEMS`]).
    fn data_keys(&self, keys: &[String]) -> Result<Vec<String>, Error> {
        if keys.is_empty() {
            return Err(invalid("name at least one key"));
        }
        check_items("keys", keys.len())?;
        keys.iter().map(|k| self.data_key(k)).collect()
    }

    /// [`Self::data_keys`] for a command that must run on one slot.
    fn grouped_keys(&self, keys: &[String]) -> Result<Vec<String>, Error> {
        one_slot_group(keys)?;
        self.data_keys(keys)
    }

    /// Sends `cmd` as one admitted command and checks the reply's size
    /// against `max-reply` before anything is decoded for the guest.
    async fn send_command(&mut self, cmd: Cmd) -> Result<Value, Error> {
        let reply = self.admit().await?.command(&cmd).await?;
        self.check_reply(reply_bytes(&reply))?;
        Ok(reply)
    }

    /// [`Self::send_command`], decoded as `T`.
    async fn query<T: FromRedisValue>(&mut self, cmd: Cmd) -> Result<T, Error> {
        decode(self.send_command(cmd).await?)
    }

    /// Takes one of the plugin's [`OWN_CONNECTION_RATE`] connections of
    /// this second, or fails with `quota-exceeded(redis-rate)` (recorded
    /// as the invocation's breach).
    fn own_connection(&mut self) -> Result<(), Error> {
        let taken = self
            .plugin
            .own_connections
            .lock()
            .expect("connection bucket poisoned")
            .take(std::time::Duration::ZERO);
        if taken.is_err() {
            return Err(self.breach(crate::quota::QuotaTrap::new(
                crate::quota::Quota::RedisRate,
                format!(
                    "more than {OWN_CONNECTION_RATE} Redis connections of its own per second \
                     (transactions, blocking pops)"
                ),
            )));
        }
        Ok(())
    }

    /// Checks a write of `payload` bytes to `key` (already mapped) against
    /// `max-write` and the plugin's `storage`, like a `kv.set`.
    fn check_payload(&mut self, key: &str, payload: usize) -> Result<(), Error> {
        self.check_write(key.len(), payload)
    }
}

/// The command `name` with `args` (anything redis-rs can send: strings,
/// byte vectors, numbers, tuples and lists of them, flattened in order).
fn command(name: &str, args: impl redis::ToRedisArgs) -> Cmd {
    let mut cmd = redis::cmd(name);
    cmd.arg(args);
    cmd
}

/// A reply decoded as `T`; a reply of another shape (a server that is not
/// Redis, a module changing a command) is an `other` error, not a trap.
fn decode<T: FromRedisValue>(reply: Value) -> Result<T, Error> {
    T::from_redis_value(reply)
        .map_err(|e| Error::Other(format!("unexpected reply from Redis: {e}")))
}

/// The bytes a reply brings into the guest: the sum of its strings (and a
/// few bytes per number), so `max-reply` bounds what a call can return.
fn reply_bytes(reply: &Value) -> usize {
    match reply {
        Value::BulkString(b) => b.len(),
        Value::SimpleString(s) => s.len(),
        Value::VerbatimString { text, .. } => text.len(),
        Value::Array(items) | Value::Set(items) => items.iter().map(reply_bytes).sum(),
        Value::Map(pairs) => pairs
            .iter()
            .map(|(k, v)| reply_bytes(k) + reply_bytes(v))
            .sum(),
        Value::Push { data, .. } => data.iter().map(reply_bytes).sum(),
        Value::Attribute { data, .. } => reply_bytes(data),
        _ => 8,
    }
}

/// A time to live in milliseconds: more than 0.
fn positive_ttl(ttl_ms: u64) -> Result<u64, Error> {
    if ttl_ms == 0 {
        return Err(invalid("ttl-ms must be greater than 0"));
    }
    Ok(ttl_ms)
}

/// Fails with `invalid-argument` past [`MAX_ITEMS`].
fn check_items(what: &str, n: usize) -> Result<(), Error> {
    if n > MAX_ITEMS {
        return Err(invalid(format!(
            "{n} {what} in one call; at most {MAX_ITEMS}"
        )));
    }
    Ok(())
}

/// A `count` argument: 1 to [`MAX_ITEMS`].
fn check_count(count: u32) -> Result<u32, Error> {
    if count == 0 {
        return Err(invalid("count must be at least 1"));
    }
    check_items("items asked for", count as usize)?;
    Ok(count)
}

/// A scan page's `count` hint: 1 to [`MAX_SCAN_COUNT`].
fn check_scan_count(count: u32) -> Result<u32, Error> {
    if count == 0 || count > MAX_SCAN_COUNT {
        return Err(invalid(format!(
            "count is {count}; a scan page asks for 1 to {MAX_SCAN_COUNT}"
        )));
    }
    Ok(count)
}

/// A key's slot group: its Redis hash tag (the text between its first `{`
/// and the next `}`, when not empty), or the whole key. The plugin's prefix
/// has no braces, so the tag Redis uses for the stored key is this one.
pub fn slot_group(key: &str) -> &str {
    if let Some(open) = key.find('{') {
        let rest = &key[open + 1..];
        if let Some(close) = rest.find('}')
            && close > 0
        {
            return &rest[..close];
        }
    }
    key
}

/// Fails with `invalid-argument` unless every key is in the first key's
/// slot group: a multi-key command on a Cluster must stay in one slot, and
/// the rule holds on a standalone Redis too so a plugin behaves the same on
/// both.
fn one_slot_group(keys: &[String]) -> Result<(), Error> {
    let Some(first) = keys.first() else {
        return Ok(());
    };
    let group = slot_group(first);
    if let Some(other) = keys.iter().find(|k| slot_group(k) != group) {
        return Err(invalid(format!(
            "keys `{first}` and `{other}` are in different slot groups; a command on several \
             keys needs them in one (start each key with the same `{{group}}`)"
        )));
    }
    Ok(())
}

/// The guest's key name of a Redis key found by a scan: the key without
/// the plugin's prefix; `None` for a key outside it.
fn guest_key(prefix: &str, key: &[u8]) -> Option<String> {
    let rest = key.strip_prefix(prefix.as_bytes())?;
    String::from_utf8(rest.to_vec()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_groups_follow_redis_hash_tags() {
        assert_eq!(slot_group("{board}week-1"), "board");
        assert_eq!(slot_group("a{board}b"), "board");
        assert_eq!(slot_group("{}x"), "{}x", "an empty tag is no tag");
        assert_eq!(slot_group("a{b"), "a{b");
        assert_eq!(slot_group("{a}{b}"), "a", "the first tag counts");
        assert_eq!(slot_group("plain"), "plain");
    }

    #[test]
    fn one_slot_group_names_the_keys_that_differ() {
        let keys = |k: &[&str]| k.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(one_slot_group(&keys(&["{g}a", "{g}b", "x{g}"])).is_ok());
        assert!(one_slot_group(&keys(&["same", "same"])).is_ok());
        let Err(Error::InvalidArgument(m)) = one_slot_group(&keys(&["{g}a", "{h}b"])) else {
            panic!("different groups must be refused");
        };
        assert!(m.contains("`{g}a`") && m.contains("`{h}b`"), "{m}");
        assert!(one_slot_group(&keys(&["a", "b"])).is_err());
    }

    #[test]
    fn reply_bytes_count_every_string() {
        let v = Value::Array(vec![
            Value::BulkString(vec![0; 10]),
            Value::Map(vec![(Value::BulkString(vec![0; 3]), Value::Int(1))]),
            Value::Nil,
        ]);
        assert_eq!(reply_bytes(&v), 10 + 3 + 8 + 8);
    }

    #[test]
    fn counts_are_bounded() {
        assert!(check_count(0).is_err());
        assert!(check_count(MAX_ITEMS as u32).is_ok());
        assert!(check_count(MAX_ITEMS as u32 + 1).is_err());
        assert!(check_scan_count(MAX_SCAN_COUNT + 1).is_err());
        assert!(check_scan_count(0).is_err());
    }

    #[test]
    fn guest_keys_drop_the_prefix() {
        assert_eq!(guest_key("rl:p:kv:", b"rl:p:kv:a"), Some("a".into()));
        assert_eq!(guest_key("rl:p:kv:", b"rl:q:kv:a"), None);
    }
}
