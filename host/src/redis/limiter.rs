//! Typed commands behind the `limiter` capability: one `lua/limiter_*.lua`
//! script per algorithm, concurrency releases, and per-key overrides.
//!
//! Keys come from [`crate::namespace::Namespace::limiter`]: a limited key's
//! state and its override share one hash tag, so every command here touches
//! one Cluster slot. Time is always Redis's (`TIME` inside the scripts).

use crate::limiter::{Algorithm, Limits, ScriptParams};
use crate::namespace::LimiterKeys;

use super::{CommandError, CommandResult, Redis};

/// What a check script answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimiterReply {
    /// The decision (see the script headers for each field).
    Decision {
        allowed: bool,
        limit: u64,
        remaining: u64,
        retry_after_ms: u64,
        reset_after_ms: u64,
    },
    /// The cost is over the effective limit (the key's override's, or else
    /// the policy's): such a check could never be allowed.
    CostOverLimit { limit: u64 },
    /// The key's override hash does not hold valid parameters.
    BadOverride,
}

/// Fields of an override hash, in the order the scripts read them.
const OVERRIDE_FIELDS: [&str; 4] = ["algorithm", "limit", "period-us", "burst"];

impl Redis {
    /// Runs the check script of `algorithm` on `keys` with the policy's
    /// `params` (the script uses the key's override instead if it has one
    /// for the same algorithm). `lease` is the lease id, for concurrency
    /// policies only.
    pub async fn limiter_check(
        &self,
        algorithm: Algorithm,
        keys: &LimiterKeys,
        params: ScriptParams,
        cost: u64,
        lease: Option<&str>,
    ) -> CommandResult<LimiterReply> {
        let script = match algorithm {
            Algorithm::Gcra => &self.scripts.limiter_gcra,
            Algorithm::TokenBucket => &self.scripts.limiter_token_bucket,
            Algorithm::SlidingWindow => &self.scripts.limiter_sliding_window,
            Algorithm::FixedWindow => &self.scripts.limiter_fixed_window,
            Algorithm::Concurrency => &self.scripts.limiter_concurrency,
        };
        let mut invocation = script.key(&keys.state);
        invocation
            .key(&keys.overrides)
            .arg(cost)
            .arg(params.limit)
            .arg(params.period_us);
        match algorithm {
            Algorithm::Gcra | Algorithm::TokenBucket => {
                invocation.arg(params.burst);
            }
            Algorithm::Concurrency => {
                invocation.arg(lease.unwrap_or_default());
            }
            Algorithm::SlidingWindow | Algorithm::FixedWindow => {}
        }
        let (status, allowed, limit, remaining, retry, reset): (i64, i64, i64, i64, i64, i64) =
            invocation.invoke_async(&mut self.conn.clone()).await?;
        let n = |v: i64| u64::try_from(v).unwrap_or(0);
        Ok(match status {
            0 => LimiterReply::Decision {
                allowed: allowed == 1,
                limit: n(limit),
                remaining: n(remaining),
                retry_after_ms: n(retry),
                reset_after_ms: n(reset),
            },
            1 => LimiterReply::CostOverLimit { limit: n(limit) },
            _ => LimiterReply::BadOverride,
        })
    }

    /// Releases the `slots` slots of concurrency lease `lease` (`ZREM` of
    /// its members). Returns whether any was still held.
    pub async fn limiter_release(
        &self,
        keys: &LimiterKeys,
        lease: &str,
        slots: u64,
    ) -> CommandResult<bool> {
        let members: Vec<String> = (1..=slots).map(|i| format!("{lease}#{i}")).collect();
        if members.is_empty() {
            return Ok(false);
        }
        let removed: u64 = redis::cmd("ZREM")
            .arg(&keys.state)
            .arg(&members)
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(removed > 0)
    }

    /// Replaces the key's override with `limits`, in one `MULTI` on one key.
    pub async fn limiter_set_override(
        &self,
        keys: &LimiterKeys,
        limits: &Limits,
    ) -> CommandResult<()> {
        let p = limits.script_params();
        let () = redis::pipe()
            .atomic()
            .cmd("DEL")
            .arg(&keys.overrides)
            .ignore()
            .cmd("HSET")
            .arg(&keys.overrides)
            .arg(OVERRIDE_FIELDS[0])
            .arg(limits.algorithm().code())
            .arg(OVERRIDE_FIELDS[1])
            .arg(p.limit)
            .arg(OVERRIDE_FIELDS[2])
            .arg(p.period_us)
            .arg(OVERRIDE_FIELDS[3])
            .arg(p.burst)
            .ignore()
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(())
    }

    /// The key's override, if it has one. An override that does not parse
    /// (written by hand, say) is a `Rejected` error naming the key.
    pub async fn limiter_get_override(&self, keys: &LimiterKeys) -> CommandResult<Option<Limits>> {
        let fields: Vec<Option<String>> = redis::cmd("HMGET")
            .arg(&keys.overrides)
            .arg(&OVERRIDE_FIELDS[..])
            .query_async(&mut self.conn.clone())
            .await?;
        let [code, limit, period_us, burst] =
            <[Option<String>; 4]>::try_from(fields).map_err(|_| {
                CommandError::Rejected("HMGET returned the wrong number of fields".into())
            })?;
        let Some(code) = code else { return Ok(None) };
        let num = |v: Option<String>| v.and_then(|s| s.parse::<u64>().ok());
        let parsed = Algorithm::from_code(&code).and_then(|a| {
            let params = ScriptParams {
                limit: num(limit)?,
                period_us: num(period_us)?,
                burst: num(burst).unwrap_or(0),
            };
            Some(Limits::from_script_params(a, params))
        });
        parsed.map(Some).ok_or_else(|| {
            CommandError::Rejected(format!(
                "the override at {} is malformed (fields: algorithm, limit, period-us, burst)",
                keys.overrides
            ))
        })
    }

    /// Deletes the key's override. Returns whether it had one.
    pub async fn limiter_clear_override(&self, keys: &LimiterKeys) -> CommandResult<bool> {
        let n: u64 = redis::cmd("DEL")
            .arg(&keys.overrides)
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(n > 0)
    }

    /// Deletes the key's state (not its override): the key starts afresh.
    /// Returns whether there was any.
    pub async fn limiter_reset(&self, keys: &LimiterKeys) -> CommandResult<bool> {
        let n: u64 = redis::cmd("DEL")
            .arg(&keys.state)
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(n > 0)
    }
}
