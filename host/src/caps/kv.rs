//! `redloom:plugin/kv`: string keys, byte values, in the plugin's namespace.
//!
//! Each WIT function is a thin wrapper around a method returning
//! `Result<T, Error>`; a trap (the outer `wasmtime::Result`) is never used
//! for a failed command, only the typed error.

use crate::bindings::kv::{Host, SetCondition, SetOptions};
use crate::bindings::types::Error;
use crate::redis::{self, CommandResult, Redis};
use crate::store::Caps;

type R<T> = wasmtime::Result<Result<T, Error>>;

impl Caps {
    fn kv_key(&self, key: &str) -> Result<String, Error> {
        self.plugin
            .namespace
            .kv(key)
            .map_err(|e| Error::InvalidArgument(e.to_string()))
    }

    fn redis(&self) -> Result<&Redis, Error> {
        self.redis
            .as_ref()
            .ok_or_else(|| Error::BackendUnavailable("this host runs without Redis".into()))
    }

    /// Counts one Redis command and converts its outcome for the guest.
    fn counted<T>(&mut self, result: CommandResult<T>) -> Result<T, Error> {
        self.redis_ops += 1;
        result.map_err(Error::from)
    }

    async fn kv_set(
        &mut self,
        key: &str,
        value: &[u8],
        options: SetOptions,
    ) -> Result<bool, Error> {
        let key = self.kv_key(key)?;
        let ttl = options.ttl_ms.map(positive_ttl).transpose()?;
        let condition = match options.condition {
            SetCondition::Always => redis::SetCondition::Always,
            SetCondition::IfAbsent => redis::SetCondition::IfAbsent,
            SetCondition::IfPresent => redis::SetCondition::IfPresent,
        };
        let r = self.redis()?.set(&key, value, ttl, condition).await;
        self.counted(r)
    }

    async fn kv_get_many(&mut self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>, Error> {
        let keys = keys
            .iter()
            .map(|k| self.kv_key(k))
            .collect::<Result<Vec<_>, _>>()?;
        let r = self.redis()?.get_many(&keys).await;
        self.counted(r)
    }

    async fn kv_cas(
        &mut self,
        key: &str,
        expected: Option<&[u8]>,
        new: &[u8],
        ttl_ms: Option<u64>,
    ) -> Result<bool, Error> {
        let key = self.kv_key(key)?;
        let ttl = ttl_ms.map(positive_ttl).transpose()?;
        let r = self
            .redis()?
            .compare_and_swap(&key, expected, new, ttl)
            .await;
        self.counted(r)
    }
}

fn positive_ttl(ttl_ms: u64) -> Result<u64, Error> {
    if ttl_ms == 0 {
        return Err(Error::InvalidArgument(
            "ttl-ms must be greater than 0".into(),
        ));
    }
    Ok(ttl_ms)
}

/// `$method` of [`crate::redis::Redis`] on the namespaced key, counted.
macro_rules! single_key {
    ($self:ident, $key:ident, $method:ident $(, $arg:expr)*) => {{
        let (key, redis) = match $self.kv_key(&$key).and_then(|k| Ok((k, $self.redis()?))) {
            Ok(p) => p,
            Err(e) => return Ok(Err(e)),
        };
        let r = redis.$method(&key $(, $arg)*).await;
        Ok($self.counted(r))
    }};
}

impl Host for Caps {
    async fn get(&mut self, key: String) -> R<Option<Vec<u8>>> {
        single_key!(self, key, get)
    }

    async fn set(&mut self, key: String, value: Vec<u8>, options: SetOptions) -> R<bool> {
        Ok(self.kv_set(&key, &value, options).await)
    }

    async fn delete(&mut self, key: String) -> R<bool> {
        single_key!(self, key, delete)
    }

    async fn exists(&mut self, key: String) -> R<bool> {
        single_key!(self, key, exists)
    }

    async fn increment(&mut self, key: String, delta: i64) -> R<i64> {
        single_key!(self, key, increment, delta)
    }

    async fn expire(&mut self, key: String, ttl_ms: u64) -> R<bool> {
        if let Err(e) = positive_ttl(ttl_ms) {
            return Ok(Err(e));
        }
        single_key!(self, key, expire_ms, ttl_ms)
    }

    async fn get_many(&mut self, keys: Vec<String>) -> R<Vec<Option<Vec<u8>>>> {
        Ok(self.kv_get_many(&keys).await)
    }

    async fn compare_and_swap(
        &mut self,
        key: String,
        expected: Option<Vec<u8>>,
        new: Vec<u8>,
        ttl_ms: Option<u64>,
    ) -> R<bool> {
        Ok(self.kv_cas(&key, expected.as_deref(), &new, ttl_ms).await)
    }
}
