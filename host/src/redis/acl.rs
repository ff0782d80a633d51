//! Optional hardening: a Redis ACL user per plugin (`acl = true`).
//!
//! The host's key prefix is the first line of isolation; with ACL on, Redis
//! enforces it a second time, inside Lua scripts too: the plugin's commands
//! run on a connection authenticated as `redloom-<plugin>`, which may only
//! touch keys and channels matching `rl:<plugin>:*` and has no dangerous,
//! administrative or key-enumerating commands.
//!
//! What ACL does not hide: `DBSIZE` and `INFO keyspace`-style counts are
//! denied here, but Redis cannot scope them, and a user with any read access
//! can observe timing and memory effects of other tenants. Key names outside
//! the pattern cannot be read, enumerated (`KEYS`, `SCAN`, `RANDOMKEY` are
//! removed) or written.

use super::{Redis, redact};

/// The ACL rules of a plugin user. They reset everything but the user's
/// passwords (other hosts sharing the plugin may be using theirs). Order
/// matters: categories first, then the exceptions.
fn rules(prefix: &str, shared: &[String]) -> Vec<String> {
    let mut r: Vec<String> = vec![
        "resetkeys".into(),
        "resetchannels".into(),
        "-@all".into(),
        "on".into(),
        format!("~{prefix}*"),
        format!("&{prefix}*"),
    ];
    r.extend(shared.iter().cloned());
    r.extend(
        [
            "+@read",
            "+@write",
            "+@scripting",
            "+@connection",
            "+@transaction",
            // Limiter, cache and queue scripts read Redis's clock.
            "+time",
            // The pubsub capability publishes (and cache scripts publish
            // fill wake-ups); the host subscribes as the plugin to its cache
            // wake-up channel and to its pub/sub trigger's channels and
            // patterns. Channels stay confined by the `&` patterns.
            "+publish",
            "+subscribe",
            "+unsubscribe",
            "+psubscribe",
            "+punsubscribe",
            "-@dangerous",
            "-@admin",
            "-scan",
            "-randomkey",
            "-dbsize",
            "-function",
            "-script|flush",
            "-script|kill",
            // CLIENT SETINFO (7.2+) is not granted so 7.0 accepts the rules;
            // redis-rs ignores its refusal.
            "-client",
            "+client|setname",
            "+client|id",
            // A Cluster client reads the slot map, and a subscription looks
            // for a live node (topology, no keys).
            "-cluster",
            "+cluster|slots",
            "+cluster|shards",
            "+cluster|nodes",
            // Transactions and blocking pops find their key's node.
            "+cluster|keyslot",
        ]
        .map(String::from),
    );
    r
}

impl Redis {
    /// Creates (or updates) the ACL user `user` (on every node of a
    /// Cluster: ACL users are per node), restricted to keys and
    /// channels under `prefix` plus the `shared` rules (shared channels
    /// and queues, see [`crate::namespace::shared_acl_patterns`], and the
    /// patterns its pub/sub trigger subscribes to, see
    /// [`crate::subscriptions::acl_patterns`]), and returns a connection
    /// authenticated as it.
    ///
    /// The user gets a fresh random password each time; earlier passwords
    /// stay valid (hosts sharing the plugin keep their connections), until
    /// `ACL SETUSER <user> resetpass` or `ACL DELUSER <user>`.
    pub async fn for_acl_user(
        &self,
        user: &str,
        prefix: &str,
        shared: &[String],
    ) -> anyhow::Result<Redis> {
        let password = crate::files::new_secret()
            .map_err(|e| anyhow::anyhow!("cannot make an ACL password: {e}"))?;
        let mut cmd = redis::cmd("ACL");
        cmd.arg("SETUSER").arg(user);
        cmd.arg(rules(prefix, shared)).arg(format!(">{password}"));
        let failed = |e: redis::RedisError| {
            anyhow::anyhow!(
                "cannot create the ACL user {user} (does {} allow ACL SETUSER?): {e}",
                self.url
            )
        };
        match self.cluster_nodes().await.map_err(failed)? {
            None => {
                let _: () = cmd
                    .query_async(&mut self.conn.clone())
                    .await
                    .map_err(failed)?;
            }
            // The Cluster client would send ACL SETUSER to the primaries
            // only; a replica must know the user before a failover makes it
            // a primary. A node added later needs a plugin reload.
            Some(nodes) => {
                for node in nodes {
                    let client = redis::Client::open(node).map_err(failed)?;
                    let mut conn = tokio::time::timeout(
                        self.options.connect_timeout,
                        client.get_multiplexed_async_connection(),
                    )
                    .await
                    .map_err(|_| {
                        failed(redis::RedisError::from(std::io::Error::from(
                            std::io::ErrorKind::TimedOut,
                        )))
                    })?
                    .map_err(failed)?;
                    let _: () = cmd.query_async(&mut conn).await.map_err(failed)?;
                }
            }
        }
        let shown = format!("{} as ACL user {user}", redact(&self.url));
        Redis::connect_with(self.as_user(user, &password), shown, self.options.clone()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pattern is the plugin's prefix and the exceptions follow the categories.
    #[test]
    fn rules_scope_keys_and_channels() {
        let r = rules("rl:a:", &["&rl::ch:lobby".into()]);
        assert!(r.contains(&"&rl::ch:lobby".to_string()));
        assert!(r.contains(&"~rl:a:*".to_string()));
        assert!(r.contains(&"&rl:a:*".to_string()));
        let pos = |x: &str| r.iter().position(|y| y == x).unwrap();
        assert!(pos("+@read") < pos("-@dangerous"));
        assert!(pos("-client") < pos("+client|setname"));
    }
}
