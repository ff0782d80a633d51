//! The Lua scripts in `lua/`, embedded at build time.
//!
//! Each script is hashed once (at first use of [`Scripts::get`]) and invoked
//! with `EVALSHA`; redis-rs falls back to loading it on `NOSCRIPT` (after a
//! Redis restart or failover). [`Scripts::load_all`] loads every script at
//! start-up so pipelined invocations, which redis-rs does not reload, work too.

use std::sync::OnceLock;

use redis::Script;
use redis::aio::ConnectionLike;

/// Declares the scripts: a field of [`Scripts`] and an entry of
/// [`SOURCES`] per name, each embedding `lua/<name>.lua`. Adding a script
/// is its file and one name in the list below (and its KEYS in the
/// one-slot test).
macro_rules! scripts {
    ($($name:ident),* $(,)?) => {
        /// One field per file in `lua/`.
        pub struct Scripts {
            $(
                #[doc = concat!("`lua/", stringify!($name), ".lua`")]
                pub $name: Script,
            )*
        }

        /// `(file name, source)` for every script, for loading and for
        /// tests that check every script in `lua/`.
        pub const SOURCES: &[(&str, &str)] = &[
            $(
                (
                    concat!(stringify!($name), ".lua"),
                    include_str!(concat!("../../../lua/", stringify!($name), ".lua")),
                ),
            )*
        ];

        impl Scripts {
            fn hash_all() -> Scripts {
                Scripts {
                    $(
                        $name: Script::new(include_str!(concat!(
                            "../../../lua/",
                            stringify!($name),
                            ".lua"
                        ))),
                    )*
                }
            }
        }
    };
}

scripts![
    queue_enqueue,
    queue_promote,
    queue_ack,
    queue_fail,
    queue_replay,
    queue_defer,
    queue_reclaim,
    queue_prune_consumers,
    kv_cas,
    lock_acquire,
    lock_release,
    lock_extend,
    limiter_gcra,
    limiter_token_bucket,
    limiter_sliding_window,
    limiter_fixed_window,
    limiter_concurrency,
    cache_lookup,
    cache_fill,
    cache_set,
    cache_abandon,
    cache_invalidate,
];

impl Scripts {
    /// The process-wide scripts, hashed once.
    pub fn get() -> &'static Scripts {
        static SCRIPTS: OnceLock<Scripts> = OnceLock::new();
        SCRIPTS.get_or_init(Scripts::hash_all)
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
