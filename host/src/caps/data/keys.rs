//! `redloom:plugin/keys`: the plugin's keys themselves — scan, type, time
//! to live, rename, delete — whatever each holds.

use super::{check_scan_count, command, guest_key, positive_ttl};
use crate::bindings::keys::{Host, KeyPage, KeyTtl, KeyType};
use crate::bindings::types::Error;
use crate::caps::Caps;
use crate::caps::common::{R, invalid};
use crate::namespace::MAX_KEY_BYTES;

impl Host for Caps {
    async fn scan(&mut self, pattern: String, cursor: u64, count: u32) -> R<KeyPage> {
        Ok(traced!("keys", "scan", async {
            if pattern.len() > MAX_KEY_BYTES {
                return Err(invalid(format!(
                    "the pattern is {} bytes long; the limit is {MAX_KEY_BYTES}",
                    pattern.len()
                )));
            }
            let count = check_scan_count(count)?;
            // The prefix (`rl:NAME:kv:`: letters, digits, `-`, `_`, `:`) has
            // no glob characters, so the pattern matches inside it only.
            let prefix = self.data_key("")?;
            let admitted = self.admit().await?;
            let redis = self.plugin.key_scanner.get().cloned().unwrap_or(admitted);
            if redis.is_cluster() {
                // The primaries' addresses are one more command per page.
                self.admit().await?;
            }
            let (cursor, found) = redis
                .scan_page(cursor, &format!("{prefix}{pattern}"), count)
                .await?;
            let keys: Vec<String> = found.iter().filter_map(|k| guest_key(&prefix, k)).collect();
            self.check_reply(keys.iter().map(String::len).sum())?;
            Ok(KeyPage { cursor, keys })
        }))
    }

    async fn type_of(&mut self, key: String) -> R<KeyType> {
        Ok(traced!("keys", "type-of", async {
            let key = self.data_key(&key)?;
            let name: String = self.query(command("TYPE", key)).await?;
            Ok::<_, Error>(match name.as_str() {
                "none" => KeyType::None,
                "string" => KeyType::String,
                "list" => KeyType::List,
                "set" => KeyType::Set,
                "zset" => KeyType::SortedSet,
                "hash" => KeyType::Hash,
                "stream" => KeyType::Stream,
                _ => KeyType::Other,
            })
        }))
    }

    async fn ttl(&mut self, key: String) -> R<KeyTtl> {
        Ok(traced!("keys", "ttl", async {
            let key = self.data_key(&key)?;
            let ms: i64 = self.query(command("PTTL", key)).await?;
            Ok::<_, Error>(match ms {
                -2 => KeyTtl::Missing,
                ms if ms < 0 => KeyTtl::Persistent,
                ms => KeyTtl::ExpiresIn(ms as u64),
            })
        }))
    }

    async fn expire(&mut self, key: String, ttl_ms: u64) -> R<bool> {
        Ok(traced!("keys", "expire", async {
            let key = self.data_key(&key)?;
            let ms = i64::try_from(positive_ttl(ttl_ms)?).unwrap_or(i64::MAX);
            self.query(command("PEXPIRE", (key, ms))).await
        }))
    }

    async fn persist(&mut self, key: String) -> R<bool> {
        Ok(traced!("keys", "persist", async {
            let key = self.data_key(&key)?;
            self.query(command("PERSIST", key)).await
        }))
    }

    async fn rename(&mut self, source: String, destination: String, if_absent: bool) -> R<bool> {
        Ok(traced!("keys", "rename", async {
            let keys = self.grouped_keys(&[source, destination])?;
            if if_absent {
                self.query(command("RENAMENX", keys)).await
            } else {
                let _: () = self.query(command("RENAME", keys)).await?;
                Ok(true)
            }
        }))
    }

    async fn delete(&mut self, keys: Vec<String>) -> R<u64> {
        Ok(traced!("keys", "delete", async {
            let keys = self.grouped_keys(&keys)?;
            self.query(command("DEL", keys)).await
        }))
    }

    async fn exists(&mut self, keys: Vec<String>) -> R<u64> {
        Ok(traced!("keys", "exists", async {
            let keys = self.grouped_keys(&keys)?;
            self.query(command("EXISTS", keys)).await
        }))
    }
}
