//! `redloom:plugin/set`: Redis sets in the plugin's key space.

use super::{check_count, check_items, check_scan_count, command};
use crate::bindings::set::{Host, SetPage};
use crate::bindings::types::Error;
use crate::caps::Caps;
use crate::caps::common::{R, invalid};

impl Caps {
    /// `name key members…` for `add` and `remove` (at least one member).
    async fn set_members_command(
        &mut self,
        name: &str,
        key: &str,
        members: Vec<String>,
        write: bool,
    ) -> Result<u32, Error> {
        let key = self.data_key(key)?;
        if members.is_empty() {
            return Err(invalid("name at least one member"));
        }
        check_items("members", members.len())?;
        if write {
            self.check_payload(&key, members.iter().map(String::len).sum())?;
        }
        self.query(command(name, (key, members))).await
    }

    /// `SINTER`, `SUNION` or `SDIFF` over keys of one slot group.
    async fn set_combine(&mut self, name: &str, keys: &[String]) -> Result<Vec<String>, Error> {
        let keys = self.grouped_keys(keys)?;
        self.query(command(name, keys)).await
    }
}

impl Host for Caps {
    async fn add(&mut self, key: String, members: Vec<String>) -> R<u32> {
        Ok(traced!(
            "set",
            "add",
            self.set_members_command("SADD", &key, members, true)
        ))
    }

    async fn remove(&mut self, key: String, members: Vec<String>) -> R<u32> {
        Ok(traced!(
            "set",
            "remove",
            self.set_members_command("SREM", &key, members, false)
        ))
    }

    async fn contains(&mut self, key: String, member: String) -> R<bool> {
        Ok(traced!("set", "contains", async {
            let key = self.data_key(&key)?;
            self.query(command("SISMEMBER", (key, member))).await
        }))
    }

    async fn members(&mut self, key: String) -> R<Vec<String>> {
        Ok(traced!("set", "members", async {
            let key = self.data_key(&key)?;
            self.query(command("SMEMBERS", key)).await
        }))
    }

    async fn cardinality(&mut self, key: String) -> R<u64> {
        Ok(traced!("set", "cardinality", async {
            let key = self.data_key(&key)?;
            self.query(command("SCARD", key)).await
        }))
    }

    async fn scan(&mut self, key: String, cursor: u64, count: u32) -> R<SetPage> {
        Ok(traced!("set", "scan", async {
            let key = self.data_key(&key)?;
            let count = check_scan_count(count)?;
            let (cursor, members) = self
                .query(command("SSCAN", (key, cursor, "COUNT", count)))
                .await?;
            Ok::<_, Error>(SetPage { cursor, members })
        }))
    }

    async fn random_members(&mut self, key: String, count: u32) -> R<Vec<String>> {
        Ok(traced!("set", "random-members", async {
            let key = self.data_key(&key)?;
            let count = check_count(count)?;
            self.query(command("SRANDMEMBER", (key, count))).await
        }))
    }

    async fn pop(&mut self, key: String, count: u32) -> R<Vec<String>> {
        Ok(traced!("set", "pop", async {
            let key = self.data_key(&key)?;
            let count = check_count(count)?;
            self.query(command("SPOP", (key, count))).await
        }))
    }

    async fn inter(&mut self, keys: Vec<String>) -> R<Vec<String>> {
        Ok(traced!("set", "inter", self.set_combine("SINTER", &keys)))
    }

    async fn union(&mut self, keys: Vec<String>) -> R<Vec<String>> {
        Ok(traced!("set", "union", self.set_combine("SUNION", &keys)))
    }

    async fn diff(&mut self, keys: Vec<String>) -> R<Vec<String>> {
        Ok(traced!("set", "diff", self.set_combine("SDIFF", &keys)))
    }
}
