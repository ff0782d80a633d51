//! Server-assisted invalidation (RESP3 client tracking in broadcast mode)
//! for the cache capability's near cache (`caps::near_cache`).
//!
//! [`Redis::keep_tracking`] keeps one RESP3 connection per node — the
//! server, or every primary of a Cluster — with `CLIENT TRACKING ON BCAST
//! PREFIX …` for the given prefixes, and reports what the near cache must
//! act on ([`Tracking`]): tracking is up on every node, keys were
//! written, or tracking was lost and nothing is known any more.
//!
//! Why broadcast mode and not the default mode (the server remembers
//! which keys a connection read): the near cache's reads are Lua scripts
//! (`cache_lookup`) sent on the plugin's shared connection, which is not
//! the tracking connection; default mode would need every lookup to run
//! on the tracked connection (or a `REDIRECT` per connection, which a
//! Cluster connection and a reconnecting `ConnectionManager` cannot keep
//! pointing at the right client id). Broadcast mode needs no per-read
//! bookkeeping in Redis, survives the reading connection reconnecting, and
//! covers tag counters written by anyone (`INCR` of a tag key). Its cost is
//! a message for every write under the prefixes, read or not.
//!
//! Why the host's own credentials and not the plugin's ACL user: Redis
//! (7.0) does not check `BCAST` prefixes against the user's key patterns,
//! so granting `CLIENT TRACKING` to a plugin user would let that user learn
//! any key name of any plugin. The host already holds those credentials,
//! asks only for the plugin's own prefixes, and only drops near entries on
//! what it hears; the values a near cache serves were read through the
//! plugin's own connection (its ACL user), so ACL still decides what the
//! plugin can read.
//!
//! Loss detection: a connection that closes is noticed at once (redis-rs
//! pushes a disconnection); one that stays open but silent is noticed by a
//! `PING` every [`HEARTBEAT`] that must answer within the response timeout.
//! On a Cluster the primaries are listed again at each heartbeat: a new
//! primary (failover, a node added) ends the round, so tracking restarts on
//! the new set.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, PushInfo, PushKind, Value};

use super::{Info, Redis};

/// How often each tracking connection is pinged (and, on a Cluster, the
/// primaries listed again): how late a connection that died without
/// closing (or a new primary) is noticed, plus the response timeout.
pub const HEARTBEAT: Duration = Duration::from_secs(1);

/// First pause before tracking is tried again after a failure; it doubles
/// up to [`MAX_RETRY_PAUSE`]. The near cache serves nothing meanwhile
/// (lookups read Redis), so a longer pause only costs round trips; 5 s
/// keeps a Redis that refuses tracking (a proxy, Redis < 6, a user without
/// `CLIENT TRACKING`) from being asked more than that.
const FIRST_RETRY_PAUSE: Duration = Duration::from_millis(50);
const MAX_RETRY_PAUSE: Duration = Duration::from_secs(5);

/// What tracking tells its owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tracking {
    /// Tracking is on for every node: writes from now on are reported.
    Up,
    /// These keys were written (changed, deleted, expired or evicted).
    Keys(Vec<String>),
    /// Everything may have changed (`FLUSHALL`/`FLUSHDB`).
    All,
    /// Tracking was lost (a connection closed or stopped answering, or the
    /// Cluster's primaries changed): writes may go unreported until the next
    /// [`Tracking::Up`].
    Down,
}

/// Receives [`Tracking`] events; called on redis-rs's connection tasks, so
/// it must be quick and must not block.
pub type TrackingSink = Arc<dyn Fn(Tracking) + Send + Sync>;

impl Redis {
    /// Keeps broadcast tracking of `prefixes` up on every node until the
    /// future is dropped, reporting to `sink`. `what` names it in the log;
    /// `client_name` is each tracking connection's `CLIENT SETNAME`, so an
    /// operator can find it in `CLIENT LIST`.
    pub async fn keep_tracking(
        &self,
        prefixes: Vec<String>,
        what: String,
        client_name: String,
        sink: TrackingSink,
    ) {
        // Which round of connections is current. `Up` and `Down` are sent
        // with this lock held, and a round ends (the number moves on) with
        // its first `Down`, so a disconnection of a past round can never
        // reach the sink after a later `Up`, and a round whose connection
        // died while it was being set up never reports `Up`.
        let round = Arc::new(Mutex::new(0u64));
        let mut pause = FIRST_RETRY_PAUSE;
        // Failed attempts in a row: only the first is a warning.
        let mut failures = 0u64;
        loop {
            let n = {
                let mut r = round.lock().expect("tracking round poisoned");
                *r += 1;
                *r
            };
            let lost = Arc::new(tokio::sync::Notify::new());
            match self
                .track_all(&prefixes, &client_name, n, &round, &lost, sink.clone())
                .await
            {
                Ok((conns, primaries)) => {
                    pause = FIRST_RETRY_PAUSE;
                    failures = 0;
                    let up = {
                        let r = round.lock().expect("tracking round poisoned");
                        if *r == n {
                            sink(Tracking::Up);
                        }
                        *r == n
                    };
                    let why = if up {
                        tracing::debug!("{what}: tracking on {} node(s)", conns.len());
                        self.watch(conns, primaries, &lost).await
                    } else {
                        "a tracking connection closed while starting".into()
                    };
                    end_round(&round, n, &sink);
                    tracing::warn!("{what}: tracking lost ({why}); near cache flushed, retrying");
                }
                Err(e) => {
                    end_round(&round, n, &sink);
                    failures += 1;
                    if failures == 1 {
                        tracing::warn!(
                            "{what}: cannot start tracking (lookups read Redis until it works): {e}; retrying every {MAX_RETRY_PAUSE:?} at most"
                        );
                    } else {
                        tracing::debug!(
                            "{what}: cannot start tracking: {e}; retrying in {pause:?}"
                        );
                    }
                }
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(MAX_RETRY_PAUSE);
        }
    }

    /// The nodes to track: the server, or the Cluster's primaries (sorted,
    /// so two listings compare equal).
    async fn tracked_nodes(&self) -> redis::RedisResult<Vec<redis::ConnectionInfo>> {
        match &self.info {
            Info::Single(info) => Ok(vec![(**info).clone()]),
            Info::Cluster(_) => {
                let mut nodes = self
                    .cluster_primaries_not_failed()
                    .await?
                    .unwrap_or_default();
                nodes.sort_by_key(|n| n.addr().to_string());
                if nodes.is_empty() {
                    return Err(redis::RedisError::from((
                        redis::ErrorKind::Io,
                        "the Cluster lists no live primary",
                    )));
                }
                Ok(nodes)
            }
        }
    }

    /// Opens one tracking connection per node for round `n`.
    async fn track_all(
        &self,
        prefixes: &[String],
        client_name: &str,
        n: u64,
        round: &Arc<Mutex<u64>>,
        lost: &Arc<tokio::sync::Notify>,
        sink: TrackingSink,
    ) -> redis::RedisResult<(Vec<MultiplexedConnection>, Vec<String>)> {
        let nodes = self.tracked_nodes().await?;
        let addrs = nodes.iter().map(|n| n.addr().to_string()).collect();
        let mut conns = Vec::with_capacity(nodes.len());
        for node in nodes {
            let settings = node
                .redis_settings()
                .clone()
                .set_protocol(redis::ProtocolVersion::RESP3);
            let client = redis::Client::open(node.set_redis_settings(settings))?;
            let (sink, round, lost) = (sink.clone(), round.clone(), lost.clone());
            let config = AsyncConnectionConfig::new()
                .set_connection_timeout(Some(self.options.connect_timeout))
                .set_response_timeout(Some(self.options.response_timeout))
                .set_push_sender(move |push: PushInfo| {
                    on_push(push, n, &round, &lost, &sink);
                    Ok::<(), std::convert::Infallible>(())
                });
            let mut conn = client
                .get_multiplexed_async_connection_with_config(&config)
                .await?;
            let () = redis::cmd("CLIENT")
                .arg("SETNAME")
                .arg(client_name)
                .query_async(&mut conn)
                .await?;
            let mut cmd = redis::cmd("CLIENT");
            cmd.arg("TRACKING").arg("ON").arg("BCAST");
            for p in prefixes {
                cmd.arg("PREFIX").arg(p);
            }
            let () = cmd.query_async(&mut conn).await?;
            conns.push(conn);
        }
        Ok((conns, addrs))
    }

    /// Returns (why) when a connection of the round is lost, stops
    /// answering `PING`, or the Cluster's primaries change.
    async fn watch(
        &self,
        conns: Vec<MultiplexedConnection>,
        primaries: Vec<String>,
        lost: &tokio::sync::Notify,
    ) -> String {
        let mut lost = std::pin::pin!(lost.notified());
        loop {
            tokio::select! {
                () = &mut lost => return "a tracking connection closed".into(),
                () = tokio::time::sleep(HEARTBEAT) => {}
            }
            for c in &conns {
                let (mut c, cmd) = (c.clone(), redis::cmd("PING"));
                let ping = cmd.query_async::<Value>(&mut c);
                match tokio::time::timeout(self.options.response_timeout, ping).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return format!("PING failed: {e}"),
                    Err(_) => return "PING got no answer in time".into(),
                }
            }
            if self.is_cluster() {
                match self.tracked_nodes().await {
                    Ok(nodes) => {
                        let now: Vec<String> = nodes.iter().map(|n| n.addr().to_string()).collect();
                        if now != primaries {
                            return format!("the primaries changed to {}", now.join(","));
                        }
                    }
                    Err(e) => return format!("cannot list the primaries: {e}"),
                }
            }
        }
    }
}

/// Ends round `n` with a `Down`, unless it already ended.
fn end_round(round: &Mutex<u64>, n: u64, sink: &TrackingSink) {
    let mut r = round.lock().expect("tracking round poisoned");
    if *r == n {
        *r += 1;
        sink(Tracking::Down);
    }
}

/// One push message of round `n`'s connection.
fn on_push(
    push: PushInfo,
    n: u64,
    round: &Mutex<u64>,
    lost: &tokio::sync::Notify,
    sink: &TrackingSink,
) {
    match push.kind {
        PushKind::Invalidate => match invalidated_keys(push.data) {
            Some(keys) => sink(Tracking::Keys(keys)),
            None => sink(Tracking::All),
        },
        PushKind::Disconnection => {
            // Report at once (the near cache stops serving now), then let
            // the loop reconnect.
            end_round(round, n, sink);
            lost.notify_one();
        }
        _ => {}
    }
}

/// The keys of an `invalidate` push; `None` for "everything" (a null
/// instead of the key list: `FLUSHALL`/`FLUSHDB`) or anything unexpected.
fn invalidated_keys(data: Vec<Value>) -> Option<Vec<String>> {
    let mut keys = Vec::new();
    for v in data {
        match v {
            Value::Array(items) | Value::Set(items) => {
                for item in items {
                    match item {
                        Value::BulkString(b) => keys.push(String::from_utf8_lossy(&b).into_owned()),
                        Value::SimpleString(s) => keys.push(s),
                        _ => return None,
                    }
                }
            }
            Value::BulkString(b) => keys.push(String::from_utf8_lossy(&b).into_owned()),
            _ => return None,
        }
    }
    Some(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Key lists become keys; a null (a flush) or anything odd is "all".
    #[test]
    fn invalidate_payloads() {
        let keys = invalidated_keys(vec![Value::Array(vec![
            Value::BulkString(b"a".to_vec()),
            Value::BulkString(b"b".to_vec()),
        ])]);
        assert_eq!(keys, Some(vec!["a".to_string(), "b".to_string()]));
        assert_eq!(invalidated_keys(vec![Value::Nil]), None);
        assert_eq!(invalidated_keys(vec![Value::Int(1)]), None);
    }
}
