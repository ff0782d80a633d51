//! Everything that talks to Redis.
//!
//! **Architecture Invariant:** no other module sends Redis commands. Capability
//! modules call the typed methods here with keys already mapped into the
//! plugin's namespace, so this module never sees an un-namespaced plugin key.
//!
//! One [`ConnectionManager`] (a multiplexed connection that reconnects by
//! itself) is shared by all invocations: clones are cheap and concurrent
//! commands are pipelined on one socket. Blocking reads and subscriptions,
//! when later triggers need them, get connections of their own. Every command
//! has a response timeout; a timed-out or failed command surfaces as an error
//! to the one invocation that sent it.

pub mod acl;
pub mod cache;
mod limiter;
mod lock;
pub mod queue;
pub mod scripts;
pub mod server;

pub use limiter::LimiterReply;
pub use lock::{AcquireReply, LockHolder};

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, ErrorKind, RedisError, ServerErrorKind};

use scripts::Scripts;

/// Connection settings.
#[derive(Debug, Clone, Copy)]
pub struct RedisOptions {
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
}

/// A failed Redis command, classified for the plugin.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CommandError {
    /// The command got no reply in time.
    #[error("Redis did not answer within the response timeout")]
    Timeout,
    /// The connection is down or Redis cannot serve (loading, failing over).
    #[error("Redis is unavailable: {0}")]
    Unavailable(String),
    /// Redis rejected the command because of the data (wrong type, not an integer).
    #[error("Redis rejected the command: {0}")]
    Rejected(String),
}

impl From<RedisError> for CommandError {
    fn from(e: RedisError) -> Self {
        if e.is_timeout() {
            return CommandError::Timeout;
        }
        if e.code() == Some("WRONGTYPE") {
            return CommandError::Rejected("the key holds a value of another type".into());
        }
        match e.kind() {
            ErrorKind::Server(ServerErrorKind::ResponseError | ServerErrorKind::ExecAbort) => {
                CommandError::Rejected(e.detail().unwrap_or("error").to_string())
            }
            _ => CommandError::Unavailable(e.to_string()),
        }
    }
}

pub type CommandResult<T> = Result<T, CommandError>;

/// When a `SET` may write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetCondition {
    Always,
    IfAbsent,
    IfPresent,
}

/// The shared connection to one Redis, plus the loaded scripts.
#[derive(Clone)]
pub struct Redis {
    conn: ConnectionManager,
    scripts: &'static Scripts,
    url: String,
    /// How this connection was made, to open others like it (ACL users).
    info: redis::ConnectionInfo,
    options: RedisOptions,
}

impl Redis {
    /// Connects to `url` and loads every script in `lua/`. Fails with a
    /// message naming the (password-redacted) URL when Redis is unreachable.
    pub async fn connect(url: &str, options: RedisOptions) -> anyhow::Result<Redis> {
        let shown = redact(url);
        let info = redis::IntoConnectionInfo::into_connection_info(url)
            .map_err(|e| anyhow::anyhow!("invalid Redis URL `{shown}`: {e}"))?;
        Redis::connect_with(info, shown, options).await
    }

    async fn connect_with(
        info: redis::ConnectionInfo,
        shown: String,
        options: RedisOptions,
    ) -> anyhow::Result<Redis> {
        let client = redis::Client::open(info.clone())
            .map_err(|e| anyhow::anyhow!("invalid Redis URL `{shown}`: {e}"))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(options.connect_timeout))
            .set_response_timeout(Some(options.response_timeout))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(2));
        let deadline = options.connect_timeout * 3 + Duration::from_secs(1);
        let conn =
            tokio::time::timeout(deadline, ConnectionManager::new_with_config(client, config))
                .await
                .map_err(|_| anyhow::anyhow!("cannot connect to Redis at {shown}: timed out"))?
                .map_err(|e| anyhow::anyhow!("cannot connect to Redis at {shown}: {e}"))?;
        let redis = Redis {
            conn,
            scripts: Scripts::get(),
            url: shown,
            info,
            options,
        };
        redis
            .scripts
            .load_all(&mut redis.conn.clone())
            .await
            .map_err(|e| anyhow::anyhow!("cannot load scripts into Redis at {}: {e}", redis.url))?;
        Ok(redis)
    }

    /// The URL with any password replaced by `***`.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub async fn ping(&self) -> CommandResult<()> {
        let _: String = redis::cmd("PING")
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(())
    }

    pub async fn get(&self, key: &str) -> CommandResult<Option<Vec<u8>>> {
        Ok(self.conn.clone().get(key).await?)
    }

    /// `SET key value [PX ttl] [NX|XX]`; returns whether it wrote.
    pub async fn set(
        &self,
        key: &str,
        value: &[u8],
        ttl_ms: Option<u64>,
        condition: SetCondition,
    ) -> CommandResult<bool> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(key).arg(value);
        if let Some(ms) = ttl_ms {
            cmd.arg("PX").arg(ms);
        }
        match condition {
            SetCondition::Always => {}
            SetCondition::IfAbsent => {
                cmd.arg("NX");
            }
            SetCondition::IfPresent => {
                cmd.arg("XX");
            }
        }
        // SET replies OK when it wrote and nil when NX/XX stopped it.
        let reply: Option<String> = cmd.query_async(&mut self.conn.clone()).await?;
        Ok(reply.is_some())
    }

    pub async fn delete(&self, key: &str) -> CommandResult<bool> {
        let n: u64 = self.conn.clone().del(key).await?;
        Ok(n > 0)
    }

    pub async fn exists(&self, key: &str) -> CommandResult<bool> {
        Ok(self.conn.clone().exists(key).await?)
    }

    pub async fn increment(&self, key: &str, delta: i64) -> CommandResult<i64> {
        Ok(self.conn.clone().incr(key, delta).await?)
    }

    pub async fn expire_ms(&self, key: &str, ttl_ms: u64) -> CommandResult<bool> {
        let ms = i64::try_from(ttl_ms).unwrap_or(i64::MAX);
        Ok(self.conn.clone().pexpire(key, ms).await?)
    }

    /// `MGET`; an empty key list makes no round trip.
    pub async fn get_many(&self, keys: &[String]) -> CommandResult<Vec<Option<Vec<u8>>>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        Ok(redis::cmd("MGET")
            .arg(keys)
            .query_async(&mut self.conn.clone())
            .await?)
    }

    /// `PUBLISH`; returns how many subscriptions received the message.
    pub async fn publish(&self, channel: &str, payload: &[u8]) -> CommandResult<u64> {
        Ok(self.conn.clone().publish(channel, payload).await?)
    }

    /// A new client for the same server and credentials, for connections
    /// that must not share the multiplexed one (subscriptions).
    pub fn client(&self) -> redis::RedisResult<redis::Client> {
        redis::Client::open(self.info.clone())
    }

    /// `SET key value PX ttl NX`: whether this caller claimed `key`.
    pub async fn claim(&self, key: &str, ttl_ms: u64) -> CommandResult<bool> {
        self.set(key, b"1", Some(ttl_ms.max(1)), SetCondition::IfAbsent)
            .await
    }

    /// Adds `flags` to `notify-keyspace-events` (keeping what is set), so
    /// keyspace notifications reach subscribers. Needs `CONFIG` permission.
    pub async fn enable_keyspace_events(&self, flags: &str) -> CommandResult<String> {
        let mut conn = self.conn.clone();
        let current: Vec<String> = redis::cmd("CONFIG")
            .arg("GET")
            .arg("notify-keyspace-events")
            .query_async(&mut conn)
            .await?;
        let mut value = current.get(1).cloned().unwrap_or_default();
        for f in flags.chars().chain(['K']) {
            // `A` already stands for every event class.
            let covered_by_all = f != 'K' && value.contains('A') && "g$lshzxetd".contains(f);
            if !value.contains(f) && !covered_by_all {
                value.push(f);
            }
        }
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg("notify-keyspace-events")
            .arg(&value)
            .query_async(&mut conn)
            .await?;
        Ok(value)
    }

    /// The database number of this connection (for keyspace channel names).
    pub fn db(&self) -> i64 {
        self.info.redis_settings().db()
    }

    /// Runs `lua/kv_cas.lua`.
    pub async fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        new: &[u8],
        ttl_ms: Option<u64>,
    ) -> CommandResult<bool> {
        let swapped: i64 = self
            .scripts
            .kv_cas
            .key(key)
            .arg(if expected.is_some() { "1" } else { "0" })
            .arg(expected.unwrap_or_default())
            .arg(new)
            .arg(ttl_ms.unwrap_or(0))
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(swapped == 1)
    }
}

/// `url` with the password (if any) replaced by `***`.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    match rest.split_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
            None => format!("{scheme}://***@{host}"),
        },
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Passwords never reach messages.
    #[test]
    fn redacts_passwords() {
        assert_eq!(redact("redis://u:secret@h:1/0"), "redis://u:***@h:1/0");
        assert_eq!(redact("rediss://secret@h"), "rediss://***@h");
        assert_eq!(redact("redis://h:1"), "redis://h:1");
    }
}
