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
    /// `lua/kv_cas.lua`
    pub kv_cas: Script,
}

/// `(file name, source)` for every script, for loading and for tests that
/// check every script in `lua/`.
pub const SOURCES: &[(&str, &str)] = &[("kv_cas.lua", include_str!("../../../lua/kv_cas.lua"))];

impl Scripts {
    /// The process-wide scripts, hashed once.
    pub fn get() -> &'static Scripts {
        static SCRIPTS: OnceLock<Scripts> = OnceLock::new();
        SCRIPTS.get_or_init(|| Scripts {
            kv_cas: Script::new(source("kv_cas.lua")),
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
