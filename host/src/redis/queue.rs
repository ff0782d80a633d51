//! Queue commands: the Lua scripts of `lua/queue_*.lua` and the stream
//! commands of the consumer trigger and `redloom queue`.

use std::collections::HashMap;

use redis::streams::StreamReadReply;

use super::{CommandResult, Redis, RedisOptions};
use crate::namespace::QueueKeys;

/// A message as stored in the stream.
#[derive(Debug, Clone, Default)]
pub struct Entry {
    /// The stream entry id (changes on retry).
    pub entry_id: String,
    /// The message id (stable).
    pub id: String,
    pub payload: Vec<u8>,
    /// JSON object.
    pub headers: String,
    pub attempt: u32,
    /// The message's own max attempts; 0: the consumer's `max-attempts`.
    pub max_attempts: u32,
    /// The error of the attempt before (empty on a first attempt).
    pub error: String,
    pub enqueued_ms: u64,
}

impl Entry {
    fn from_map(entry_id: String, map: &HashMap<String, redis::Value>) -> Entry {
        let bytes = |k: &str| -> Vec<u8> {
            match map.get(k) {
                Some(redis::Value::BulkString(b)) => b.clone(),
                Some(redis::Value::SimpleString(s)) => s.clone().into_bytes(),
                _ => Vec::new(),
            }
        };
        let text = |k: &str| String::from_utf8_lossy(&bytes(k)).into_owned();
        Entry {
            entry_id,
            id: text("id"),
            payload: bytes("payload"),
            headers: text("headers"),
            attempt: text("attempt").parse().unwrap_or(1),
            max_attempts: text("max").parse().unwrap_or(0),
            error: text("error"),
            enqueued_ms: text("enq").parse().unwrap_or(0),
        }
    }
}

/// What `enqueue` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enqueued {
    New(String),
    Duplicate(String),
    Full,
}

/// A dead letter.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub entry_id: String,
    pub id: String,
    pub payload: Vec<u8>,
    pub attempts: u32,
    pub error: String,
    pub failed_ms: u64,
}

/// `redloom queue stats`.
#[derive(Debug, Clone, Default)]
pub struct QueueStats {
    /// Messages in the stream (not yet acknowledged).
    pub length: u64,
    /// Delivered, not yet acknowledged.
    pub pending: u64,
    pub consumers: u64,
    /// Entries not yet delivered to the group.
    pub lag: u64,
    /// Idle time of the oldest pending message, ms.
    pub oldest_pending_ms: u64,
    /// Delayed messages and scheduled retries.
    pub scheduled: u64,
    pub dead_letters: u64,
}

impl Redis {
    #[allow(clippy::too_many_arguments)]
    pub async fn queue_enqueue(
        &self,
        keys: &QueueKeys,
        dedupe_id: Option<&str>,
        payload: &[u8],
        headers: &str,
        delay_ms: u64,
        dedupe_window_ms: u64,
        max_attempts: u32,
        max_length: u64,
    ) -> CommandResult<Enqueued> {
        let dedupe_key = format!("{}{}", keys.dedupe_prefix, dedupe_id.unwrap_or(""));
        let mut conn = self.durable_conn();
        let (id, status): (String, String) = self
            .scripts
            .queue_enqueue
            .key(&keys.stream)
            .key(&keys.delayed)
            .key(&keys.seq)
            .key(&dedupe_key)
            .arg(payload)
            .arg(headers)
            .arg(delay_ms)
            .arg(if dedupe_id.is_some() {
                dedupe_window_ms.max(1)
            } else {
                0
            })
            .arg(max_attempts)
            .arg(max_length)
            .invoke_async(&mut conn)
            .await?;
        if status == "new" {
            self.wait_for_replicas(&conn, &keys.stream).await?;
        }
        Ok(match status.as_str() {
            "duplicate" => Enqueued::Duplicate(id),
            "full" => Enqueued::Full,
            _ => Enqueued::New(id),
        })
    }

    /// Moves due delayed messages into the stream.
    pub async fn queue_promote(&self, keys: &QueueKeys, max: u32) -> CommandResult<u64> {
        Ok(self
            .scripts
            .queue_promote
            .key(&keys.delayed)
            .key(&keys.stream)
            .arg(max)
            .invoke_async(&mut self.conn.clone())
            .await?)
    }

    /// Creates the consumer group (reading from the start) if missing.
    pub async fn queue_ensure_group(&self, keys: &QueueKeys, group: &str) -> CommandResult<()> {
        let r: redis::RedisResult<()> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&keys.stream)
            .arg(group)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut self.conn.clone())
            .await;
        match r {
            Ok(()) => Ok(()),
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// `XREADGROUP ... BLOCK`: must run on a connection of its own (a
    /// blocking read would stall every command pipelined behind it).
    pub async fn queue_read(
        &self,
        keys: &QueueKeys,
        group: &str,
        consumer: &str,
        count: usize,
        block_ms: u64,
    ) -> CommandResult<Vec<Entry>> {
        let reply: Option<StreamReadReply> = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(group)
            .arg(consumer)
            .arg("COUNT")
            .arg(count)
            .arg("BLOCK")
            .arg(block_ms)
            .arg("STREAMS")
            .arg(&keys.stream)
            .arg(">")
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(reply
            .into_iter()
            .flat_map(|r| r.keys)
            .flat_map(|k| k.ids)
            .map(|id| Entry::from_map(id.id, &id.map))
            .collect())
    }

    /// Takes over messages whose delivery has been idle at least
    /// `min_idle_ms` (their consumer died or hangs), each with how often it
    /// has now been delivered (`lua/queue_reclaim.lua`: `XAUTOCLAIM` and
    /// the delivery counts in one script).
    pub async fn queue_reclaim(
        &self,
        keys: &QueueKeys,
        group: &str,
        consumer: &str,
        min_idle_ms: u64,
        count: usize,
    ) -> CommandResult<Vec<(Entry, u32)>> {
        let reply: Vec<(String, Vec<Vec<u8>>, u32)> = self
            .scripts
            .queue_reclaim
            .key(&keys.stream)
            .arg(group)
            .arg(consumer)
            .arg(min_idle_ms)
            .arg(count)
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(reply
            .into_iter()
            .map(|(entry_id, fields, deliveries)| {
                let map: HashMap<String, redis::Value> = fields
                    .chunks_exact(2)
                    .map(|kv| {
                        (
                            String::from_utf8_lossy(&kv[0]).into_owned(),
                            redis::Value::BulkString(kv[1].clone()),
                        )
                    })
                    .collect();
                (Entry::from_map(entry_id, &map), deliveries.max(1))
            })
            .collect())
    }

    /// Removes the group's consumers idle at least `min_idle_ms` that hold
    /// no pending messages, except `consumer` itself
    /// (`lua/queue_prune_consumers.lua`); returns their names.
    pub async fn queue_prune_consumers(
        &self,
        keys: &QueueKeys,
        group: &str,
        consumer: &str,
        min_idle_ms: u64,
    ) -> CommandResult<Vec<String>> {
        Ok(self
            .scripts
            .queue_prune_consumers
            .key(&keys.stream)
            .arg(group)
            .arg(min_idle_ms)
            .arg(consumer)
            .invoke_async(&mut self.conn.clone())
            .await?)
    }

    pub async fn queue_ack(
        &self,
        keys: &QueueKeys,
        group: &str,
        entry_id: &str,
    ) -> CommandResult<bool> {
        let n: i64 = self
            .scripts
            .queue_ack
            .key(&keys.stream)
            .arg(group)
            .arg(entry_id)
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(n == 1)
    }

    /// Retry later or dead-letter; returns `"retry"`, `"dead"` or `"gone"`.
    #[allow(clippy::too_many_arguments)]
    pub async fn queue_fail(
        &self,
        keys: &QueueKeys,
        group: &str,
        entry_id: &str,
        backoff_ms: u64,
        error: &str,
        default_max_attempts: u32,
        attempt: u32,
    ) -> CommandResult<String> {
        Ok(self
            .scripts
            .queue_fail
            .key(&keys.stream)
            .key(&keys.delayed)
            .key(&keys.dead)
            .arg(group)
            .arg(entry_id)
            .arg(backoff_ms)
            .arg(error)
            .arg(default_max_attempts)
            .arg(attempt)
            .invoke_async(&mut self.conn.clone())
            .await?)
    }

    /// Moves dead letters (one, or up to `max`) back into the queue.
    pub async fn queue_replay(
        &self,
        keys: &QueueKeys,
        entry_id: Option<&str>,
        max: u32,
    ) -> CommandResult<u64> {
        Ok(self
            .scripts
            .queue_replay
            .key(&keys.dead)
            .key(&keys.stream)
            .arg(entry_id.unwrap_or(""))
            .arg(max)
            .invoke_async(&mut self.conn.clone())
            .await?)
    }

    pub async fn queue_dead_letters(
        &self,
        keys: &QueueKeys,
        max: usize,
    ) -> CommandResult<Vec<DeadLetter>> {
        let entries: Vec<(String, HashMap<String, redis::Value>)> = redis::cmd("XRANGE")
            .arg(&keys.dead)
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(max)
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(entries
            .into_iter()
            .map(|(entry_id, map)| {
                let e = Entry::from_map(entry_id.clone(), &map);
                let text = |k: &str| match map.get(k) {
                    Some(redis::Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
                    _ => String::new(),
                };
                DeadLetter {
                    entry_id,
                    id: e.id,
                    payload: e.payload,
                    attempts: text("attempts").parse().unwrap_or(0),
                    error: text("error"),
                    failed_ms: text("failed").parse().unwrap_or(0),
                }
            })
            .collect())
    }

    pub async fn queue_purge_dead_letters(&self, keys: &QueueKeys) -> CommandResult<bool> {
        let n: u64 = redis::cmd("DEL")
            .arg(&keys.dead)
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(n > 0)
    }

    pub async fn queue_stats(&self, keys: &QueueKeys, group: &str) -> CommandResult<QueueStats> {
        let mut conn = self.conn.clone();
        let (length, scheduled, dead_letters): (u64, u64, u64) = redis::pipe()
            .cmd("XLEN")
            .arg(&keys.stream)
            .cmd("ZCARD")
            .arg(&keys.delayed)
            .cmd("XLEN")
            .arg(&keys.dead)
            .query_async(&mut conn)
            .await?;
        let mut stats = QueueStats {
            length,
            scheduled,
            dead_letters,
            ..QueueStats::default()
        };
        let groups: redis::RedisResult<Vec<HashMap<String, redis::Value>>> = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(&keys.stream)
            .query_async(&mut conn)
            .await;
        let num = |v: Option<&redis::Value>| match v {
            Some(redis::Value::Int(n)) => *n.max(&0) as u64,
            _ => 0,
        };
        if let Ok(groups) = groups
            && let Some(g) = groups.into_iter().find(|g| {
                matches!(g.get("name"), Some(redis::Value::BulkString(n)) if n == group.as_bytes())
            })
        {
            stats.pending = num(g.get("pending"));
            stats.consumers = num(g.get("consumers"));
            stats.lag = num(g.get("lag"));
        }
        if stats.pending > 0 {
            let oldest: Vec<(String, String, u64, u32)> = redis::cmd("XPENDING")
                .arg(&keys.stream)
                .arg(group)
                .arg("-")
                .arg("+")
                .arg(1)
                .query_async(&mut conn)
                .await?;
            stats.oldest_pending_ms = oldest.first().map_or(0, |p| p.2);
        }
        Ok(stats)
    }

    /// A connection of its own, for blocking reads.
    pub async fn dedicated(&self) -> anyhow::Result<Redis> {
        // A reader never enqueues: no connection for waiting writes.
        let options = RedisOptions {
            wait_replicas: 0,
            ..self.options.clone()
        };
        Redis::connect_with(self.info.clone(), self.url.clone(), options).await
    }
}

impl Redis {
    /// A message over its consumer's rate limit: back into the delayed set,
    /// visible again after `delay_ms`, its attempt unchanged
    /// (`lua/queue_defer.lua`). Returns `"deferred"` or `"gone"`.
    pub async fn queue_defer(
        &self,
        keys: &QueueKeys,
        group: &str,
        entry_id: &str,
        delay_ms: u64,
        attempt: u32,
    ) -> CommandResult<String> {
        Ok(self
            .scripts
            .queue_defer
            .key(&keys.stream)
            .key(&keys.delayed)
            .arg(group)
            .arg(entry_id)
            .arg(delay_ms)
            .arg(attempt)
            .invoke_async(&mut self.conn.clone())
            .await?)
    }
}
