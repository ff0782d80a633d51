//! `redloom:plugin/list`: Redis lists in the plugin's key space.

use std::time::Duration;

use super::{check_count, check_items, command};
use crate::bindings::list::{End, Host};
use crate::bindings::types::Error;
use crate::caps::Caps;
use crate::caps::common::{R, invalid};

/// `LEFT` or `RIGHT`, as `LMOVE` names the ends.
fn side(end: End) -> &'static str {
    match end {
        End::Front => "LEFT",
        End::Back => "RIGHT",
    }
}

/// The command that pushes at `end` (the `X` form: only onto a list that exists).
pub(super) fn push_command(end: End, if_exists: bool) -> &'static str {
    match (end, if_exists) {
        (End::Front, false) => "LPUSH",
        (End::Back, false) => "RPUSH",
        (End::Front, true) => "LPUSHX",
        (End::Back, true) => "RPUSHX",
    }
}

/// The command that pops from `end`.
pub(super) fn pop_command(end: End) -> &'static str {
    match end {
        End::Front => "LPOP",
        End::Back => "RPOP",
    }
}

impl Caps {
    /// `LPUSH`/`RPUSH` (or the `X` forms) of at least one value.
    async fn list_push(
        &mut self,
        key: &str,
        end: End,
        values: Vec<Vec<u8>>,
        if_exists: bool,
    ) -> Result<u64, Error> {
        let key = self.data_key(key)?;
        if values.is_empty() {
            return Err(invalid("push at least one value"));
        }
        check_items("values", values.len())?;
        self.check_payload(&key, values.iter().map(Vec::len).sum())?;
        self.query(command(push_command(end, if_exists), (key, values)))
            .await
    }
}

impl Host for Caps {
    async fn push(&mut self, key: String, end: End, values: Vec<Vec<u8>>) -> R<u64> {
        Ok(traced!(
            "list",
            "push",
            self.list_push(&key, end, values, false)
        ))
    }

    async fn push_if_exists(&mut self, key: String, end: End, values: Vec<Vec<u8>>) -> R<u64> {
        Ok(traced!(
            "list",
            "push-if-exists",
            self.list_push(&key, end, values, true)
        ))
    }

    async fn pop(&mut self, key: String, end: End, count: u32) -> R<Vec<Vec<u8>>> {
        Ok(traced!("list", "pop", async {
            let key = self.data_key(&key)?;
            let count = check_count(count)?;
            // A missing key answers nil, not an empty list.
            let popped: Option<Vec<Vec<u8>>> =
                self.query(command(pop_command(end), (key, count))).await?;
            Ok::<_, Error>(popped.unwrap_or_default())
        }))
    }

    async fn range(&mut self, key: String, start: i64, stop: i64) -> R<Vec<Vec<u8>>> {
        Ok(traced!("list", "range", async {
            let key = self.data_key(&key)?;
            self.query(command("LRANGE", (key, start, stop))).await
        }))
    }

    async fn trim(&mut self, key: String, start: i64, stop: i64) -> R<()> {
        Ok(traced!("list", "trim", async {
            let key = self.data_key(&key)?;
            self.query(command("LTRIM", (key, start, stop))).await
        }))
    }

    async fn length(&mut self, key: String) -> R<u64> {
        Ok(traced!("list", "length", async {
            let key = self.data_key(&key)?;
            self.query(command("LLEN", key)).await
        }))
    }

    async fn index(&mut self, key: String, index: i64) -> R<Option<Vec<u8>>> {
        Ok(traced!("list", "index", async {
            let key = self.data_key(&key)?;
            self.query(command("LINDEX", (key, index))).await
        }))
    }

    async fn set(&mut self, key: String, index: i64, value: Vec<u8>) -> R<()> {
        Ok(traced!("list", "set", async {
            let key = self.data_key(&key)?;
            self.check_payload(&key, value.len())?;
            self.query(command("LSET", (key, index, value))).await
        }))
    }

    async fn remove(&mut self, key: String, value: Vec<u8>, count: i64) -> R<u64> {
        Ok(traced!("list", "remove", async {
            let key = self.data_key(&key)?;
            self.query(command("LREM", (key, count, value))).await
        }))
    }

    async fn blocking_pop(
        &mut self,
        keys: Vec<String>,
        end: End,
        timeout_ms: u64,
    ) -> R<Option<(String, Vec<u8>)>> {
        Ok(traced!("list", "blocking-pop", async {
            if timeout_ms == 0 {
                return Err(invalid(
                    "timeout-ms must be at least 1 (0 would wait forever)",
                ));
            }
            let mapped = self.grouped_keys(&keys)?;
            // Never past the invocation's wall time, which ends it anyway.
            let wait = Duration::from_millis(timeout_ms).min(self.plugin.quotas.wall_time);
            self.own_connection()?;
            let redis = self.admit().await?;
            let mut conn = redis.connection_for_key(&mapped[0], wait).await?;
            let name = match end {
                End::Front => "BLPOP",
                End::Back => "BRPOP",
            };
            let mut cmd = command(name, &mapped);
            cmd.arg(format!("{:.3}", wait.as_secs_f64()));
            let popped: Option<(String, Vec<u8>)> = cmd
                .query_async(&mut conn)
                .await
                .map_err(crate::redis::CommandError::from)?;
            self.check_reply(popped.as_ref().map_or(0, |(_, v)| v.len()))?;
            let prefix = self.data_key("")?;
            Ok::<_, Error>(popped.map(|(key, value)| {
                let key = key.strip_prefix(&prefix).unwrap_or(&key).to_owned();
                (key, value)
            }))
        }))
    }

    async fn move_(
        &mut self,
        source: String,
        destination: String,
        from: End,
        to: End,
    ) -> R<Option<Vec<u8>>> {
        Ok(traced!("list", "move", async {
            let keys = self.grouped_keys(&[source, destination])?;
            let [source, destination] = <[String; 2]>::try_from(keys).expect("two keys");
            self.query(command(
                "LMOVE",
                (source, destination, side(from), side(to)),
            ))
            .await
        }))
    }
}
