//! Typed commands behind the `lock` capability: the `lua/lock_*.lua`
//! scripts and the diagnostics reads.
//!
//! Keys come from [`crate::namespace::Namespace::lock`]: the lock and its
//! fencing counter share one hash tag, so each script touches one Cluster
//! slot. Lock times to live are Redis's (`PEXPIRE`, `PTTL`), never a host
//! clock, so hosts with skewed clocks agree on when a lock expires.

use crate::namespace::LockKeys;

use super::{CommandResult, Redis};

/// What `lua/lock_acquire.lua` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AcquireReply {
    /// The lock was free and is now held by the caller, with this fencing token.
    Acquired { token: u64 },
    /// Someone holds the lock.
    Held {
        /// Its remaining time to live; `None` if it has none (it was not
        /// written by redloom).
        ttl_ms: Option<u64>,
        /// The holder's owner id.
        owner: String,
    },
}

/// Who holds a lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockHolder {
    pub owner: String,
    pub token: u64,
    /// Remaining time to live; `None` if the lock has none.
    pub ttl_ms: Option<u64>,
}

/// A `PTTL` reply as an optional time to live (`-1`: none, `-2`: no key).
fn ttl(pttl: i64) -> Option<u64> {
    u64::try_from(pttl).ok()
}

impl Redis {
    /// Runs `lua/lock_acquire.lua`: takes the lock for `owner` if it is free.
    pub async fn lock_acquire(
        &self,
        keys: &LockKeys,
        owner: &str,
        ttl_ms: u64,
    ) -> CommandResult<AcquireReply> {
        let mut conn = self.durable_conn();
        let (acquired, n, holder): (i64, i64, String) = self
            .scripts
            .lock_acquire
            .key(&keys.lock)
            .key(&keys.fence)
            .arg(owner)
            .arg(ttl_ms)
            .invoke_async(&mut conn)
            .await?;
        if acquired == 1
            && let Err(e) = self.wait_for_replicas(&conn, &keys.lock).await
        {
            // A token a failover could hand out again is no fence: give
            // the lock back and report the failure.
            let _ = self.lock_release(keys, owner).await;
            return Err(e);
        }
        Ok(if acquired == 1 {
            AcquireReply::Acquired {
                token: u64::try_from(n).unwrap_or(0),
            }
        } else {
            AcquireReply::Held {
                ttl_ms: ttl(n),
                owner: holder,
            }
        })
    }

    /// Runs `lua/lock_release.lua`: deletes the lock if `owner` holds it.
    /// Returns whether it did.
    pub async fn lock_release(&self, keys: &LockKeys, owner: &str) -> CommandResult<bool> {
        let released: i64 = self
            .scripts
            .lock_release
            .key(&keys.lock)
            .arg(owner)
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(released == 1)
    }

    /// Runs `lua/lock_extend.lua`: sets the lock's time to live to `ttl_ms`
    /// from now if `owner` holds it. Returns whether it did.
    pub async fn lock_extend(
        &self,
        keys: &LockKeys,
        owner: &str,
        ttl_ms: u64,
    ) -> CommandResult<bool> {
        let extended: i64 = self
            .scripts
            .lock_extend
            .key(&keys.lock)
            .arg(owner)
            .arg(ttl_ms)
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(extended == 1)
    }

    /// Who holds the lock, read in one `MULTI` (`HMGET` + `PTTL` of one key).
    pub async fn lock_holder(&self, keys: &LockKeys) -> CommandResult<Option<LockHolder>> {
        let ((owner, token), pttl): ((Option<String>, Option<u64>), i64) = redis::pipe()
            .atomic()
            .cmd("HMGET")
            .arg(&keys.lock)
            .arg("owner")
            .arg("token")
            .cmd("PTTL")
            .arg(&keys.lock)
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(owner.map(|owner| LockHolder {
            owner,
            token: token.unwrap_or(0),
            ttl_ms: ttl(pttl),
        }))
    }

    /// Whether anyone holds the lock.
    pub async fn lock_is_held(&self, keys: &LockKeys) -> CommandResult<bool> {
        let n: i64 = redis::cmd("EXISTS")
            .arg(&keys.lock)
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(n == 1)
    }
}
