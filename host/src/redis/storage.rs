//! Measuring how much Redis memory each plugin's keys use, for the
//! `storage` quota: one `SCAN` pass over `rl:*` on every primary, with
//! `MEMORY USAGE` for each key found (pipelined, a page at a time), summed
//! by the plugin name in the key (`rl:NAME:...`; names cannot contain `:`).
//! The results are kept in the host-owned hash [`USAGE_KEY`], so a one-shot
//! `redloom invoke` (which does not sample) starts from the last one.

use std::collections::HashMap;

use redis::aio::ConnectionLike;

use super::{CommandResult, Info, Redis};

/// Host-owned hash: plugin name → bytes its keys used at the last sample.
/// Outside every plugin's prefix, so no plugin (nor its ACL user) can
/// write it.
pub const USAGE_KEY: &str = "rl::storage";

/// Keys per `SCAN` page (and per `MEMORY USAGE` pipeline).
const PAGE: usize = 1000;

impl Redis {
    /// Bytes of Redis memory used by each plugin's keys (`rl:NAME:*`),
    /// summed over every primary of a Cluster. Plugins without keys are
    /// absent.
    pub async fn memory_by_plugin(&self) -> CommandResult<HashMap<String, u64>> {
        let mut totals = HashMap::new();
        match &self.info {
            Info::Single(_) => sum_memory(&mut self.conn.clone(), &mut totals).await?,
            Info::Cluster(_) => {
                let nodes = self.cluster_primaries().await?.unwrap_or_default();
                for node in nodes {
                    let mut conn = self.node_connection(node).await?;
                    sum_memory(&mut conn, &mut totals).await?;
                }
            }
        }
        Ok(totals)
    }

    /// The last sample of `plugin`'s usage, if a host took one.
    pub async fn stored_usage(&self, plugin: &str) -> CommandResult<Option<u64>> {
        Ok(redis::cmd("HGET")
            .arg(USAGE_KEY)
            .arg(plugin)
            .query_async(&mut self.conn.clone())
            .await?)
    }

    /// Records a sample of `plugin`'s usage.
    pub async fn store_usage(&self, plugin: &str, bytes: u64) -> CommandResult<()> {
        Ok(redis::cmd("HSET")
            .arg(USAGE_KEY)
            .arg(plugin)
            .arg(bytes)
            .query_async(&mut self.conn.clone())
            .await?)
    }
}

/// The plugin a key belongs to: `NAME` of `rl:NAME:...`; `None` for the
/// host's own and shared keys (`rl::...`).
fn owner(key: &[u8]) -> Option<&str> {
    let rest = key.strip_prefix(b"rl:")?;
    let end = rest.iter().position(|&b| b == b':')?;
    std::str::from_utf8(&rest[..end])
        .ok()
        .filter(|n| !n.is_empty())
}

/// One `SCAN` pass of one server over `rl:*`, adding each key's `MEMORY
/// USAGE` to its plugin's total (a key gone meanwhile counts 0).
async fn sum_memory<C: ConnectionLike>(
    conn: &mut C,
    totals: &mut HashMap<String, u64>,
) -> CommandResult<()> {
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg("rl:*")
            .arg("COUNT")
            .arg(PAGE)
            .query_async(conn)
            .await?;
        let owned: Vec<(&str, &Vec<u8>)> = keys
            .iter()
            .filter_map(|k| owner(k).map(|o| (o, k)))
            .collect();
        if !owned.is_empty() {
            let mut pipe = redis::pipe();
            for (_, k) in &owned {
                pipe.cmd("MEMORY").arg("USAGE").arg(*k);
            }
            let sizes: Vec<Option<u64>> = pipe.query_async(conn).await?;
            for ((name, _), size) in owned.iter().zip(sizes) {
                *totals.entry((*name).to_string()).or_default() += size.unwrap_or(0);
            }
        }
        if next == 0 {
            return Ok(());
        }
        cursor = next;
    }
}

#[cfg(test)]
mod tests {
    /// Keys are attributed by the name between `rl:` and the next `:`.
    #[test]
    fn owner() {
        assert_eq!(super::owner(b"rl:shop:kv:x"), Some("shop"));
        assert_eq!(
            super::owner(b"rl:shop:limiter:{shop/p/k}:gcra"),
            Some("shop")
        );
        assert_eq!(super::owner(b"rl::q:{/jobs}:stream"), None);
        assert_eq!(super::owner(b"rl:nocolon"), None);
        assert_eq!(super::owner(b"other:shop:x"), None);
    }
}
