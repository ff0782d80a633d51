//! The Lua scripts in `lua/`, embedded at build time.
//!
//! Each script is hashed once (at first use of [`Scripts::get`]) and invoked
//! with `EVALSHA`; redis-rs falls back to loading it on `NOSCRIPT` (after a
//! Redis restart or failover). [`Scripts::load_all`] loads every script at
//! start-up so pipelined invocations, which redis-rs does not reload, work too.

use std::sync::OnceLock;

use redis::Script;
use redis::aio::ConnectionLike;

/// One field per file in `lua/`.
pub struct Scripts {
    /// `lua/queue_enqueue.lua`
    pub queue_enqueue: Script,
    /// `lua/queue_promote.lua`
    pub queue_promote: Script,
    /// `lua/queue_ack.lua`
    pub queue_ack: Script,
    /// `lua/queue_fail.lua`
    pub queue_fail: Script,
    /// `lua/queue_replay.lua`
    pub queue_replay: Script,
    /// `lua/kv_cas.lua`
    pub kv_cas: Script,
    /// `lua/lock_acquire.lua`
    pub lock_acquire: Script,
    /// `lua/lock_release.lua`
    pub lock_release: Script,
    /// `lua/lock_extend.lua`
    pub lock_extend: Script,
    /// `lua/limiter_gcra.lua`
    pub limiter_gcra: Script,
    /// `lua/limiter_token_bucket.lua`
    pub limiter_token_bucket: Script,
    /// `lua/limiter_sliding_window.lua`
    pub limiter_sliding_window: Script,
    /// `lua/limiter_fixed_window.lua`
    pub limiter_fixed_window: Script,
    /// `lua/limiter_concurrency.lua`
    pub limiter_concurrency: Script,
    /// `lua/cache_lookup.lua`
    pub cache_lookup: Script,
    /// `lua/cache_fill.lua`
    pub cache_fill: Script,
    /// `lua/cache_set.lua`
    pub cache_set: Script,
    /// `lua/cache_abandon.lua`
    pub cache_abandon: Script,
}

/// `(file name, source)` for every script, for loading and for tests that
/// check every script in `lua/`.
pub const SOURCES: &[(&str, &str)] = &[
    (
        "queue_enqueue.lua",
        include_str!("../../../lua/queue_enqueue.lua"),
    ),
    (
        "queue_promote.lua",
        include_str!("../../../lua/queue_promote.lua"),
    ),
    ("queue_ack.lua", include_str!("../../../lua/queue_ack.lua")),
    (
        "queue_fail.lua",
        include_str!("../../../lua/queue_fail.lua"),
    ),
    (
        "queue_replay.lua",
        include_str!("../../../lua/queue_replay.lua"),
    ),
    ("kv_cas.lua", include_str!("../../../lua/kv_cas.lua")),
    (
        "lock_acquire.lua",
        include_str!("../../../lua/lock_acquire.lua"),
    ),
    (
        "lock_release.lua",
        include_str!("../../../lua/lock_release.lua"),
    ),
    (
        "lock_extend.lua",
        include_str!("../../../lua/lock_extend.lua"),
    ),
    (
        "limiter_gcra.lua",
        include_str!("../../../lua/limiter_gcra.lua"),
    ),
    (
        "limiter_token_bucket.lua",
        include_str!("../../../lua/limiter_token_bucket.lua"),
    ),
    (
        "limiter_sliding_window.lua",
        include_str!("../../../lua/limiter_sliding_window.lua"),
    ),
    (
        "limiter_fixed_window.lua",
        include_str!("../../../lua/limiter_fixed_window.lua"),
    ),
    (
        "limiter_concurrency.lua",
        include_str!("../../../lua/limiter_concurrency.lua"),
    ),
    (
        "cache_lookup.lua",
        include_str!("../../../lua/cache_lookup.lua"),
    ),
    (
        "cache_fill.lua",
        include_str!("../../../lua/cache_fill.lua"),
    ),
    ("cache_set.lua", include_str!("../../../lua/cache_set.lua")),
    (
        "cache_abandon.lua",
        include_str!("../../../lua/cache_abandon.lua"),
    ),
];

impl Scripts {
    /// The process-wide scripts, hashed once.
    pub fn get() -> &'static Scripts {
        static SCRIPTS: OnceLock<Scripts> = OnceLock::new();
        SCRIPTS.get_or_init(|| Scripts {
            queue_enqueue: Script::new(source("queue_enqueue.lua")),
            queue_promote: Script::new(source("queue_promote.lua")),
            queue_ack: Script::new(source("queue_ack.lua")),
            queue_fail: Script::new(source("queue_fail.lua")),
            queue_replay: Script::new(source("queue_replay.lua")),
            kv_cas: Script::new(source("kv_cas.lua")),
            lock_acquire: Script::new(source("lock_acquire.lua")),
            lock_release: Script::new(source("lock_release.lua")),
            lock_extend: Script::new(source("lock_extend.lua")),
            limiter_gcra: Script::new(source("limiter_gcra.lua")),
            limiter_token_bucket: Script::new(source("limiter_token_bucket.lua")),
            limiter_sliding_window: Script::new(source("limiter_sliding_window.lua")),
            limiter_fixed_window: Script::new(source("limiter_fixed_window.lua")),
            limiter_concurrency: Script::new(source("limiter_concurrency.lua")),
            cache_lookup: Script::new(source("cache_lookup.lua")),
            cache_fill: Script::new(source("cache_fill.lua")),
            cache_set: Script::new(source("cache_set.lua")),
            cache_abandon: Script::new(source("cache_abandon.lua")),
        })
    }

    /// `SCRIPT LOAD`s every script.
    pub async fn load_all<C: ConnectionLike>(&self, conn: &mut C) -> redis::RedisResult<()> {
        for (_, src) in SOURCES {
            let _: String = redis::cmd("SCRIPT")
                .arg("LOAD")
                .arg(*src)
                .query_async(conn)
                .await?;
        }
        Ok(())
    }
}

fn source(name: &str) -> &'static str {
    SOURCES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, s)| *s)
        .unwrap_or_else(|| panic!("lua/{name} is not in scripts::SOURCES"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every file in `lua/` is embedded and has the documented header.
    #[test]
    fn every_lua_file_is_embedded_and_documented() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../lua");
        let mut on_disk: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(".lua"))
            .collect();
        on_disk.sort();
        let mut embedded: Vec<String> = SOURCES.iter().map(|(n, _)| n.to_string()).collect();
        embedded.sort();
        assert_eq!(on_disk, embedded);
        for (name, src) in SOURCES {
            for part in ["KEYS[1]", "ARGV[1]", "Reply:"] {
                assert!(src.contains(part), "lua/{name} header does not name {part}");
            }
        }
    }
}
