//! `redloom:plugin/kv`: string keys, byte values, in the plugin's namespace.
//!
//! Each WIT function is a thin wrapper around a method returning
//! `Result<T, Error>`; a failed command is never a trap, only the typed
//! error. Every command goes through [`Caps::admit`] (quotas, counters),
//! every value written through [`Caps::check_write`] (`max-write`,
//! `storage`) and every value read through [`Caps::check_reply`]
//! (`max-reply`).

use crate::bindings::kv::{Host, SetCondition, SetOptions};
use crate::bindings::types::Error;
use crate::caps::Caps;
use crate::caps::common::R;
use crate::redis;

use super::positive_ttl;

impl Caps {
    async fn kv_get(&mut self, key: &str) -> Result<Option<Vec<u8>>, Error> {
        let key = self.data_key(key)?;
        let value = self.admit().await?.get(&key).await?;
        self.check_reply(value.as_ref().map_or(0, Vec::len))?;
        Ok(value)
    }

    async fn kv_set(
        &mut self,
        key: &str,
        value: &[u8],
        options: SetOptions,
    ) -> Result<bool, Error> {
        let key = self.data_key(key)?;
        let ttl = options.ttl_ms.map(positive_ttl).transpose()?;
        self.check_write(key.len(), value.len())?;
        let condition = match options.condition {
            SetCondition::Always => redis::SetCondition::Always,
            SetCondition::IfAbsent => redis::SetCondition::IfAbsent,
            SetCondition::IfPresent => redis::SetCondition::IfPresent,
        };
        Ok(self.admit().await?.set(&key, value, ttl, condition).await?)
    }

    async fn kv_delete(&mut self, key: &str) -> Result<bool, Error> {
        let key = self.data_key(key)?;
        Ok(self.admit().await?.delete(&key).await?)
    }

    async fn kv_exists(&mut self, key: &str) -> Result<bool, Error> {
        let key = self.data_key(key)?;
        Ok(self.admit().await?.exists(&key).await?)
    }

    async fn kv_increment(&mut self, key: &str, delta: i64) -> Result<i64, Error> {
        let key = self.data_key(key)?;
        Ok(self.admit().await?.increment(&key, delta).await?)
    }

    async fn kv_expire(&mut self, key: &str, ttl_ms: u64) -> Result<bool, Error> {
        let key = self.data_key(key)?;
        let ttl = positive_ttl(ttl_ms)?;
        Ok(self.admit().await?.expire_ms(&key, ttl).await?)
    }

    async fn kv_get_many(&mut self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>, Error> {
        let keys = keys
            .iter()
            .map(|k| self.data_key(k))
            .collect::<Result<Vec<_>, _>>()?;
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let values = self.admit().await?.get_many(&keys).await?;
        self.check_reply(values.iter().flatten().map(Vec::len).sum())?;
        Ok(values)
    }

    async fn kv_cas(
        &mut self,
        key: &str,
        expected: Option<&[u8]>,
        new: &[u8],
        ttl_ms: Option<u64>,
    ) -> Result<bool, Error> {
        let key = self.data_key(key)?;
        let ttl = ttl_ms.map(positive_ttl).transpose()?;
        self.check_write(key.len(), new.len())?;
        Ok(self
            .admit()
            .await?
            .compare_and_swap(&key, expected, new, ttl)
            .await?)
    }
}

impl Host for Caps {
    async fn get(&mut self, key: String) -> R<Option<Vec<u8>>> {
        Ok(traced!("kv", "get", self.kv_get(&key)))
    }

    async fn set(&mut self, key: String, value: Vec<u8>, options: SetOptions) -> R<bool> {
        Ok(traced!("kv", "set", self.kv_set(&key, &value, options)))
    }

    async fn delete(&mut self, key: String) -> R<bool> {
        Ok(traced!("kv", "delete", self.kv_delete(&key)))
    }

    async fn exists(&mut self, key: String) -> R<bool> {
        Ok(traced!("kv", "exists", self.kv_exists(&key)))
    }

    async fn increment(&mut self, key: String, delta: i64) -> R<i64> {
        Ok(traced!("kv", "increment", self.kv_increment(&key, delta)))
    }

    async fn expire(&mut self, key: String, ttl_ms: u64) -> R<bool> {
        Ok(traced!("kv", "expire", self.kv_expire(&key, ttl_ms)))
    }

    async fn get_many(&mut self, keys: Vec<String>) -> R<Vec<Option<Vec<u8>>>> {
        Ok(traced!("kv", "get-many", self.kv_get_many(&keys)))
    }

    async fn compare_and_swap(
        &mut self,
        key: String,
        expected: Option<Vec<u8>>,
        new: Vec<u8>,
        ttl_ms: Option<u64>,
    ) -> R<bool> {
        Ok(traced!(
            "kv",
            "compare-and-swap",
            self.kv_cas(&key, expected.as_deref(), &new, ttl_ms)
        ))
    }
}
