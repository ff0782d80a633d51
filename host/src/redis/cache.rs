//! Typed commands behind the `cache` capability: the `lua/cache_*.lua`
//! scripts, tag versions and invalidation.
//!
//! Keys come from [`crate::namespace::Namespace::cache`]: an entry, its
//! lease and its waiter flag share one hash tag, so each script touches one
//! Cluster slot. Scripts that end a lease (fill, abandon, set, invalidate)
//! `PUBLISH` the entry's key on the plugin's `cache-filled` channel when the
//! waiter flag was set (see `caps::cache`). Tag
//! version counters have their own hash tags and are only read (`GET`) and
//! bumped (`INCR`) by single-key commands; their values reach the scripts as
//! an opaque snapshot in ARGV, never as keys. Entry times are Redis's
//! (`TIME` inside the scripts).

use redis::{Script, ScriptInvocation};

use crate::namespace::CacheKeys;

use super::{CommandResult, Redis};

/// What `lua/cache_lookup.lua` found.
#[derive(Debug, Clone, PartialEq)]
pub enum CacheLookup {
    /// A value inside its fresh time to live; `granted`: XFetch chose this
    /// caller for an early refresh and it holds the lease since `now_ms`.
    /// `fresh_left_ms`: how much of its fresh time was left when read;
    /// `delta_ms`: how long its last fill took (for the near cache).
    Fresh {
        value: Option<Vec<u8>>,
        granted: bool,
        now_ms: u64,
        fresh_left_ms: u64,
        delta_ms: u64,
    },
    /// A value inside its stale time to live; `granted`: this caller holds
    /// the refresh lease since `now_ms`.
    Stale {
        value: Option<Vec<u8>>,
        granted: bool,
        now_ms: u64,
    },
    /// No value; this caller holds the fill lease since `now_ms`.
    Miss { now_ms: u64 },
    /// No value; someone else holds the lease for `lease_ttl_ms` more
    /// milliseconds (`None`: unknown). With `will_wait` the entry's waiter
    /// flag is set, so the fill publishes a wake-up.
    Filling { lease_ttl_ms: Option<u64> },
}

/// A value to store: the bytes (`None`: a negative entry), times to live
/// and the tag snapshot.
pub struct CacheValue<'a> {
    pub value: Option<&'a [u8]>,
    pub fresh_ms: u64,
    pub stale_ms: u64,
    pub tags: &'a str,
}

impl Redis {
    /// The current versions of the tag counters `keys` (0 for a missing
    /// counter), with one `MGET` (which a Cluster connection splits by
    /// slot: tags live in different slots). No keys: no round trip.
    pub async fn cache_tag_versions(&self, keys: &[String]) -> CommandResult<Vec<u64>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let versions: Vec<Option<u64>> = redis::cmd("MGET")
            .arg(keys)
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(versions.into_iter().map(|v| v.unwrap_or(0)).collect())
    }

    /// `INCR` of one tag counter: every entry stored with an older version
    /// stops matching.
    pub async fn cache_invalidate_tag(&self, key: &str) -> CommandResult<()> {
        let _: i64 = redis::cmd("INCR")
            .arg(key)
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(())
    }

    /// Runs `lua/cache_lookup.lua`. With `will_wait`, finding someone
    /// else's lease sets the entry's waiter flag.
    #[allow(clippy::too_many_arguments)]
    pub async fn cache_lookup(
        &self,
        keys: &CacheKeys,
        tags: &str,
        lease_id: &str,
        lease_ttl_ms: u64,
        beta: f64,
        random: f64,
        will_wait: bool,
    ) -> CommandResult<CacheLookup> {
        #[allow(clippy::type_complexity)]
        let (kind, value, negative, granted, n, fresh_left, delta): (
            i64,
            Vec<u8>,
            i64,
            i64,
            i64,
            i64,
            i64,
        ) = entry_script(&self.scripts.cache_lookup, keys)
            .arg(tags)
            .arg(lease_id)
            .arg(lease_ttl_ms)
            .arg(beta.to_string())
            .arg(random.to_string())
            .arg(if will_wait { "1" } else { "0" })
            .invoke_async(&mut self.conn.clone())
            .await?;
        let value = (negative == 0).then_some(value);
        let now_ms = u64::try_from(n).unwrap_or(0);
        Ok(match kind {
            1 => CacheLookup::Fresh {
                value,
                granted: granted == 1,
                now_ms,
                fresh_left_ms: u64::try_from(fresh_left).unwrap_or(0),
                delta_ms: u64::try_from(delta).unwrap_or(0),
            },
            2 => CacheLookup::Stale {
                value,
                granted: granted == 1,
                now_ms,
            },
            3 => CacheLookup::Miss { now_ms },
            _ => CacheLookup::Filling {
                lease_ttl_ms: u64::try_from(n).ok(),
            },
        })
    }

    /// Runs `lua/cache_fill.lua`: stores `value` if `lease_id` still holds
    /// the lease. Returns whether it did.
    pub async fn cache_fill(
        &self,
        keys: &CacheKeys,
        lease_id: &str,
        granted_ms: u64,
        value: &CacheValue<'_>,
    ) -> CommandResult<bool> {
        let stored: i64 = entry_script(&self.scripts.cache_fill, keys)
            .arg(lease_id)
            .arg(value.value.unwrap_or_default())
            .arg(if value.value.is_some() { 0 } else { 1 })
            .arg(value.fresh_ms)
            .arg(value.stale_ms)
            .arg(value.tags)
            .arg(granted_ms)
            .arg(&keys.filled)
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(stored == 1)
    }

    /// Runs `lua/cache_set.lua`: stores `value` and supersedes any lease.
    pub async fn cache_set(&self, keys: &CacheKeys, value: &CacheValue<'_>) -> CommandResult<()> {
        let _: i64 = entry_script(&self.scripts.cache_set, keys)
            .arg(value.value.unwrap_or_default())
            .arg(if value.value.is_some() { 0 } else { 1 })
            .arg(value.fresh_ms)
            .arg(value.stale_ms)
            .arg(value.tags)
            .arg(&keys.filled)
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(())
    }

    /// Runs `lua/cache_abandon.lua`: frees the lease if `lease_id` holds it.
    pub async fn cache_abandon(&self, keys: &CacheKeys, lease_id: &str) -> CommandResult<bool> {
        let freed: i64 = entry_script(&self.scripts.cache_abandon, keys)
            .arg(lease_id)
            .arg(&keys.filled)
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(freed == 1)
    }

    /// Runs `lua/cache_invalidate.lua`: deletes the entry and its lease
    /// (superseding any fill in flight). Returns whether the entry existed.
    pub async fn cache_invalidate(&self, keys: &CacheKeys) -> CommandResult<bool> {
        let existed: i64 = entry_script(&self.scripts.cache_invalidate, keys)
            .arg(&keys.filled)
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(existed == 1)
    }
}

/// `script` called with an entry's keys, in the order every `lua/cache_*`
/// script takes them: the entry, its lease, its waiter flag.
fn entry_script<'a>(script: &'a Script, keys: &CacheKeys) -> ScriptInvocation<'a> {
    let mut invocation = script.key(&keys.entry);
    invocation.key(&keys.lease).key(&keys.waiting);
    invocation
}
