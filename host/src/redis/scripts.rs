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
    /// `lua/queue_defer.lua`
    pub queue_defer: Script,
    /// `lua/queue_reclaim.lua`
    pub queue_reclaim: Script,
    /// `lua/queue_prune_consumers.lua`
    pub queue_prune_consumers: Script,
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
    /// `lua/cache_invalidate.lua`
    pub cache_invalidate: Script,
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
    (
        "queue_defer.lua",
        include_str!("../../../lua/queue_defer.lua"),
    ),
    (
        "queue_reclaim.lua",
        include_str!("../../../lua/queue_reclaim.lua"),
    ),
    (
        "queue_prune_consumers.lua",
        include_str!("../../../lua/queue_prune_consumers.lua"),
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
    (
        "cache_invalidate.lua",
        include_str!("../../../lua/cache_invalidate.lua"),
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
            queue_defer: Script::new(source("queue_defer.lua")),
            queue_reclaim: Script::new(source("queue_reclaim.lua")),
            queue_prune_consumers: Script::new(source("queue_prune_consumers.lua")),
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
            cache_invalidate: Script::new(source("cache_invalidate.lua")),
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
    use crate::namespace::{Namespace, PluginName};
    use redis::cluster_routing::Slot;

    /// The KEYS the host passes to `script` (as the methods in `redis/`
    /// build them) for a plugin- or user-chosen `name`. A script missing
    /// here fails [`every_script_keeps_its_keys_in_one_slot`].
    fn keys_of(script: &str, ns: &Namespace, name: &str) -> Option<Vec<String>> {
        let limiter = |code: &str| {
            let k = ns.limiter("per-user", code, name).unwrap();
            vec![k.state, k.overrides]
        };
        let queue = |shared| ns.queue(name, shared).unwrap();
        let cache = ns.cache(name).unwrap();
        let lock = ns.lock(name).unwrap();
        Some(match script {
            "kv_cas.lua" => vec![ns.kv(name).unwrap()],
            "lock_acquire.lua" => vec![lock.lock, lock.fence],
            "lock_release.lua" | "lock_extend.lua" => vec![lock.lock],
            "limiter_gcra.lua" => limiter("gcra"),
            "limiter_token_bucket.lua" => limiter("tb"),
            "limiter_sliding_window.lua" => limiter("sw"),
            "limiter_fixed_window.lua" => limiter("fw"),
            "limiter_concurrency.lua" => limiter("cc"),
            "cache_lookup.lua"
            | "cache_fill.lua"
            | "cache_set.lua"
            | "cache_invalidate.lua"
            | "cache_abandon.lua" => vec![cache.entry, cache.lease, cache.waiting],
            "queue_enqueue.lua" => {
                let q = queue(false);
                vec![
                    q.stream,
                    q.delayed,
                    q.seq,
                    format!("{}{name}", q.dedupe_prefix),
                ]
            }
            "queue_promote.lua" => vec![queue(false).delayed, queue(false).stream],
            "queue_ack.lua" => vec![queue(false).stream],
            "queue_fail.lua" => {
                let q = queue(true);
                vec![q.stream, q.delayed, q.dead]
            }
            "queue_replay.lua" => vec![queue(false).dead, queue(false).stream],
            "queue_defer.lua" => vec![queue(true).stream, queue(true).delayed],
            "queue_reclaim.lua" | "queue_prune_consumers.lua" => vec![queue(false).stream],
            _ => return None,
        })
    }

    /// Redis Cluster runs a script only when all its keys are in one slot
    /// (else CROSSSLOT). For every script in `lua/` and names chosen to
    /// break hash tags (empty, lone or nested braces, a tag-looking
    /// suffix), the keys the host passes hash to one slot, as redis-rs's
    /// cluster router computes it; and two different names of one pattern
    /// do not all land in the same slot (the tag includes the name).
    #[test]
    fn every_script_keeps_its_keys_in_one_slot() {
        let names = [
            "", "}", "{", "{}", "}{", "{x}", "x}y", "x{y}z", "}x{", ":lease", "a/b", "jobs", "ü{ñ}",
        ];
        for plugin in ["a", "p-2"] {
            let ns = Namespace::new(&PluginName::parse(plugin).unwrap());
            for (script, _) in SOURCES {
                let mut slots_by_name = Vec::new();
                for name in names {
                    let keys = keys_of(script, &ns, name)
                        .unwrap_or_else(|| panic!("lua/{script}: add its KEYS to keys_of"));
                    let slots: Vec<Slot> = keys.iter().map(Slot::for_key).collect();
                    assert!(
                        slots.windows(2).all(|w| w[0] == w[1]),
                        "lua/{script} with name {name:?} gets keys in different slots: {keys:?}"
                    );
                    slots_by_name.push(slots[0]);
                }
                slots_by_name.dedup();
                assert!(
                    slots_by_name.len() > 1,
                    "lua/{script}: every name lands in one slot"
                );
            }
        }
    }

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
