//! What `/metrics` shows of Redis itself (`INFO`): memory, its limit and
//! eviction policy, evictions, keyspace hits and misses — summed over the
//! primaries of a Cluster.

use super::{CommandResult, Info, Redis};

/// Redis's own figures at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerInfo {
    /// `used_memory`, bytes.
    pub used_memory: u64,
    /// `maxmemory`, bytes; 0 when any node has no limit.
    pub maxmemory: u64,
    /// `maxmemory_policy` (of the first node; a Cluster's nodes normally
    /// agree).
    pub maxmemory_policy: String,
    /// `evicted_keys`: keys Redis dropped to stay under `maxmemory`.
    pub evicted_keys: u64,
    /// `keyspace_hits` / `keyspace_misses`: lookups that found / did not
    /// find their key.
    pub keyspace_hits: u64,
    pub keyspace_misses: u64,
}

impl ServerInfo {
    /// Adds one node's `INFO` text.
    fn add(&mut self, text: &str, first: bool) {
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .map(str::trim)
        };
        let number = |name: &str| field(name).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        self.used_memory += number("used_memory");
        let max = number("maxmemory");
        self.maxmemory = if first || (self.maxmemory > 0 && max > 0) {
            self.maxmemory + max
        } else {
            0
        };
        if first {
            self.maxmemory_policy = field("maxmemory_policy").unwrap_or_default().to_string();
        }
        self.evicted_keys += number("evicted_keys");
        self.keyspace_hits += number("keyspace_hits");
        self.keyspace_misses += number("keyspace_misses");
    }
}

impl Redis {
    /// `INFO memory` and `INFO stats` of the server, or of every primary
    /// of a Cluster (one connection each, as the storage sampler makes).
    pub async fn server_info(&self) -> CommandResult<ServerInfo> {
        let mut out = ServerInfo::default();
        match &self.info {
            Info::Single(_) => {
                let text = info_text(&mut self.conn.clone()).await?;
                out.add(&text, true);
            }
            Info::Cluster(_) => {
                let nodes = self.cluster_primaries().await?.unwrap_or_default();
                for (i, node) in nodes.into_iter().enumerate() {
                    let mut conn = self.node_connection(node).await?;
                    out.add(&info_text(&mut conn).await?, i == 0);
                }
            }
        }
        Ok(out)
    }
}

async fn info_text<C: redis::aio::ConnectionLike>(conn: &mut C) -> CommandResult<String> {
    let memory: String = redis::cmd("INFO").arg("memory").query_async(conn).await?;
    let stats: String = redis::cmd("INFO").arg("stats").query_async(conn).await?;
    Ok(format!("{memory}\n{stats}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fields are read by exact name (`used_memory`, not
    /// `used_memory_rss`), summed over nodes, and one node without a limit
    /// makes the whole unlimited.
    #[test]
    fn info_fields_are_read_and_summed() {
        let node = |used: u64, max: u64| {
            format!(
                "# Memory\r\nused_memory:{used}\r\nused_memory_rss:999999\r\nmaxmemory:{max}\r\n\
                 maxmemory_policy:allkeys-lru\r\n# Stats\r\nevicted_keys:2\r\nkeyspace_hits:10\r\n\
                 keyspace_misses:3\r\n"
            )
        };
        let mut info = ServerInfo::default();
        info.add(&node(100, 1000), true);
        info.add(&node(50, 500), false);
        assert_eq!(
            info,
            ServerInfo {
                used_memory: 150,
                maxmemory: 1500,
                maxmemory_policy: "allkeys-lru".into(),
                evicted_keys: 4,
                keyspace_hits: 20,
                keyspace_misses: 6,
            }
        );
        info.add(&node(1, 0), false);
        assert_eq!(info.maxmemory, 0);
        assert_eq!(info.used_memory, 151);
    }
}
