//! `redloom:plugin/limiter`: distributed per-key rate limits, in the
//! plugin's namespace.
//!
//! # A check
//!
//! The policy comes from the plugin's manifest ([`crate::limiter::Policies`]
//! on the [`PluginContext`](crate::caps::PluginContext)); the key is mapped
//! through [`Namespace::limiter`](crate::namespace::Namespace::limiter) (one
//! hash tag per limited key). One `EVALSHA` of the algorithm's script
//! (`lua/limiter_*.lua`) reads the key's override, reads Redis `TIME`,
//! decides and writes, atomically: a check is one Redis command, counted
//! through [`Caps::admit`] like any other.
//!
//! # Concurrency slots
//!
//! Every acquisition gets a fresh lease id (`<process id>-<sequence>`,
//! unique across hosts); its slots are sorted-set members scored by the
//! lease's expiry. Before the script is sent, a release of those members is
//! registered on the invocation's [`Cleanup`]: when the invocation ends —
//! returned, failed, trapped or cancelled at its deadline — the host releases
//! whatever is still held, at once. The registration is cancelled when the
//! acquisition is denied, or when the guest releases (or drops) its
//! [`Lease`] handle. If the host itself dies, the slots free themselves when
//! the lease runs out (the script drops expired members before counting).
//!
//! # Guardrails
//!
//! Parameters (manifest and overrides) are checked by
//! [`crate::limiter::Limits::validate`]; keys are at most 1024 bytes; an
//! instance holds at most [`MAX_LEASES`] lease handles. Releases are sent
//! even when the invocation's Redis quotas are exhausted (they only free
//! what the plugin holds, and follow an admitted acquire), and still counted.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use wasmtime::component::Resource;

use super::common::{R, invalid, unique_id};
use super::{Caps, Cleanup, CleanupAction};
use crate::bindings::limiter::{
    Acquisition, ConcurrencyLimits, Decision, GcraLimits, Host, HostLease, Lease,
    Limits as WitLimits, Rate as WitRate, TokenBucketLimits, WindowLimits,
};
use crate::bindings::types::Error;
use crate::limiter::{Algorithm, Limits, Rate};
use crate::namespace::LimiterKeys;
use crate::redis::{CommandError, LimiterReply, Redis};

/// Lease handles one instance may own at once (released ones count until
/// the guest drops them), so a guest cannot grow the host's table without
/// bound.
pub const MAX_LEASES: usize = 64;

/// The instance's concurrency leases: the host side of the guest's `lease`
/// handles, by resource rep.
#[derive(Default)]
pub struct Leases {
    next: u32,
    held: HashMap<u32, LeaseEntry>,
}

impl Leases {
    /// No `lease` handle is alive in the instance.
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }
}

/// The host side of one guest `lease` handle.
struct LeaseEntry {
    policy: String,
    key: String,
    slots: Arc<HeldSlots>,
    /// The invocation's cleanup registry, and this lease's entry in it.
    cleanup: Arc<Cleanup>,
    cleanup_id: u64,
}

/// Slots taken by one acquisition, shared by its handle (if any) and its
/// cleanup action.
struct HeldSlots {
    keys: LimiterKeys,
    lease: String,
    count: u64,
    /// Released by the guest, or by the end of the invocation.
    released: AtomicBool,
}

impl HeldSlots {
    async fn release(&self, redis: &Redis) -> Result<bool, CommandError> {
        let held = redis
            .limiter_release(&self.keys, &self.lease, self.count)
            .await?;
        self.released.store(true, Ordering::Relaxed);
        Ok(held)
    }
}

/// The cleanup action of `slots`: release them in Redis.
fn release_at_end(slots: Arc<HeldSlots>) -> CleanupAction {
    Box::new(move |redis: Redis| {
        Box::pin(async move {
            if slots.released.load(Ordering::Relaxed) {
                return;
            }
            match slots.release(&redis).await {
                Ok(true) => tracing::debug!(
                    key = %slots.keys.state,
                    "released concurrency slots the invocation still held when it ended"
                ),
                Ok(false) => {}
                Err(e) => tracing::warn!(
                    key = %slots.keys.state,
                    "cannot release concurrency slots at the end of the invocation (they free themselves when the lease runs out): {e}"
                ),
            }
        })
    })
}

/// A duration in whole milliseconds, rounded up (as the SDK sends them).
fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX)
}

fn wit_rate(r: Rate) -> WitRate {
    WitRate {
        count: r.count,
        period_ms: ms(r.period),
    }
}

fn rate(r: WitRate) -> Rate {
    Rate::new(r.count, Duration::from_millis(r.period_ms))
}

/// The WIT form of a policy's parameters (durations in milliseconds).
fn to_wit(l: &Limits) -> WitLimits {
    match *l {
        Limits::Gcra { rate, burst } => WitLimits::Gcra(GcraLimits {
            rate: wit_rate(rate),
            burst,
        }),
        Limits::TokenBucket { capacity, refill } => WitLimits::TokenBucket(TokenBucketLimits {
            capacity,
            refill: wit_rate(refill),
        }),
        Limits::SlidingWindow { limit, window } => WitLimits::SlidingWindow(WindowLimits {
            limit,
            window_ms: ms(window),
        }),
        Limits::FixedWindow { limit, window } => WitLimits::FixedWindow(WindowLimits {
            limit,
            window_ms: ms(window),
        }),
        Limits::Concurrency { slots, lease } => WitLimits::Concurrency(ConcurrencyLimits {
            slots,
            lease_ms: ms(lease),
        }),
    }
}

fn from_wit(l: WitLimits) -> Limits {
    match l {
        WitLimits::Gcra(g) => Limits::Gcra {
            rate: rate(g.rate),
            burst: g.burst,
        },
        WitLimits::TokenBucket(t) => Limits::TokenBucket {
            capacity: t.capacity,
            refill: rate(t.refill),
        },
        WitLimits::SlidingWindow(w) => Limits::SlidingWindow {
            limit: w.limit,
            window: Duration::from_millis(w.window_ms),
        },
        WitLimits::FixedWindow(w) => Limits::FixedWindow {
            limit: w.limit,
            window: Duration::from_millis(w.window_ms),
        },
        WitLimits::Concurrency(c) => Limits::Concurrency {
            slots: c.slots,
            lease: Duration::from_millis(c.lease_ms),
        },
    }
}

/// Turns a script reply into the guest's decision or error.
fn decision(reply: LimiterReply, policy: &str, cost: u64) -> Result<Decision, Error> {
    match reply {
        LimiterReply::Decision {
            allowed,
            limit,
            remaining,
            retry_after_ms,
            reset_after_ms,
        } => Ok(Decision {
            allowed,
            limit,
            remaining,
            retry_after_ms,
            reset_after_ms,
        }),
        LimiterReply::CostOverLimit { limit } => Err(invalid(format!(
            "cost {cost} is over the limit of {limit} of policy `{policy}` for this key, so it could never be allowed"
        ))),
        LimiterReply::BadOverride => Err(Error::Other(format!(
            "the override of policy `{policy}` for this key is malformed in Redis; set or clear it again"
        ))),
    }
}

impl Caps {
    /// The manifest's policy `name`.
    fn limiter_policy(&self, name: &str) -> Result<Limits, Error> {
        self.plugin.limiters.get(name).copied().ok_or_else(|| {
            invalid(format!(
                "no limiter policy `{name}`; the manifest defines {} (add [plugins.{}.limiters.{name}])",
                self.plugin.limiters.names(),
                self.plugin.name,
            ))
        })
    }

    fn limiter_keys(
        &self,
        policy: &str,
        algorithm: Algorithm,
        key: &str,
    ) -> Result<LimiterKeys, Error> {
        self.plugin
            .namespace
            .limiter(policy, algorithm.code(), key)
            .map_err(|e| invalid(format!("limiter key: {e}")))
    }

    async fn limiter_check(
        &mut self,
        policy: &str,
        key: &str,
        cost: u64,
    ) -> Result<Decision, Error> {
        let limits = self.limiter_policy(policy)?;
        let keys = self.limiter_keys(policy, limits.algorithm(), key)?;
        if limits.algorithm() == Algorithm::Concurrency && cost > 0 {
            // Held until the invocation ends: the cleanup registration is
            // the only owner.
            let (decision, _) = self.acquire_slots(policy, &limits, keys, cost).await?;
            return Ok(decision);
        }
        let reply = self
            .admit()
            .await?
            .limiter_check(
                limits.algorithm(),
                &keys,
                limits.script_params(),
                cost,
                None,
            )
            .await?;
        decision(reply, policy, cost)
    }

    /// Runs the concurrency script for a fresh lease of `cost` slots, with
    /// its release registered for the invocation's end while it may be held.
    /// Returns the decision and, when allowed, the held slots and their
    /// cleanup registration.
    async fn acquire_slots(
        &mut self,
        policy: &str,
        limits: &Limits,
        keys: LimiterKeys,
        cost: u64,
    ) -> Result<(Decision, Option<(Arc<HeldSlots>, u64)>), Error> {
        let redis = self.admit().await?;
        let slots = Arc::new(HeldSlots {
            keys,
            lease: unique_id(),
            count: cost,
            released: AtomicBool::new(false),
        });
        // Registered before the script is sent: if the invocation ends while
        // it is in flight, the slots (if taken) are released.
        let cleanup = self.cleanup.clone();
        let cleanup_id = cleanup.register(release_at_end(slots.clone()));
        let reply = redis
            .limiter_check(
                Algorithm::Concurrency,
                &slots.keys,
                limits.script_params(),
                cost,
                Some(&slots.lease),
            )
            .await;
        let reply = match reply {
            Ok(reply) => reply,
            Err(e) => {
                // After a timeout or a lost connection the script may have
                // run: keep the release registered for the invocation's end.
                if matches!(e, CommandError::Rejected(_)) {
                    cleanup.cancel(cleanup_id);
                }
                return Err(e.into());
            }
        };
        match decision(reply, policy, cost) {
            Ok(d) if d.allowed => Ok((d, Some((slots, cleanup_id)))),
            other => {
                cleanup.cancel(cleanup_id);
                other.map(|d| (d, None))
            }
        }
    }

    async fn limiter_acquire(
        &mut self,
        policy: String,
        key: String,
        count: u64,
    ) -> Result<Acquisition, Error> {
        let limits = self.limiter_policy(&policy)?;
        if limits.algorithm() != Algorithm::Concurrency {
            return Err(invalid(format!(
                "policy `{policy}` is a {} policy; only concurrency policies hand out leases (use check)",
                limits.algorithm()
            )));
        }
        let keys = self.limiter_keys(&policy, Algorithm::Concurrency, &key)?;
        if count == 0 {
            let reply = self
                .admit()
                .await?
                .limiter_check(
                    Algorithm::Concurrency,
                    &keys,
                    limits.script_params(),
                    0,
                    None,
                )
                .await?;
            return Ok(Acquisition {
                decision: decision(reply, &policy, 0)?,
                lease: None,
            });
        }
        if self.leases.held.len() >= MAX_LEASES {
            return Err(invalid(format!(
                "an instance may own at most {MAX_LEASES} lease handles; drop the ones you are done with"
            )));
        }
        let (decision, held) = self.acquire_slots(&policy, &limits, keys, count).await?;
        let Some((slots, cleanup_id)) = held else {
            return Ok(Acquisition {
                decision,
                lease: None,
            });
        };
        self.leases.next = self.leases.next.wrapping_add(1);
        let rep = self.leases.next;
        self.leases.held.insert(
            rep,
            LeaseEntry {
                policy,
                key,
                slots,
                cleanup: self.cleanup.clone(),
                cleanup_id,
            },
        );
        Ok(Acquisition {
            decision,
            lease: Some(Resource::new_own(rep)),
        })
    }

    /// The connection for a release: admitted (and counted) like any
    /// command while the quotas allow, sent anyway (and counted) when they
    /// do not.
    async fn admit_slot_release(&mut self) -> Result<Redis, Error> {
        if self.breach.is_none()
            && self.redis_ops < self.plugin.quotas.redis_ops
            && let Ok(redis) = self.admit().await
        {
            return Ok(redis);
        }
        self.release_connection()
    }

    fn lease_entry(&self, handle: &Resource<Lease>) -> wasmtime::Result<&LeaseEntry> {
        self.leases
            .held
            .get(&handle.rep())
            .ok_or_else(|| wasmtime::format_err!("unknown lease handle {}", handle.rep()))
    }

    /// Releases the slots of `handle` (once); the registration at the
    /// invocation's end is cancelled once Redis has answered.
    async fn lease_release(
        &mut self,
        handle: &Resource<Lease>,
    ) -> wasmtime::Result<Result<bool, Error>> {
        let entry = self.lease_entry(handle)?;
        if entry.slots.released.load(Ordering::Relaxed) {
            return Ok(Err(invalid(format!(
                "the lease of policy `{}` for key {:?} was already released",
                entry.policy, entry.key
            ))));
        }
        let (slots, cleanup, id) = (entry.slots.clone(), entry.cleanup.clone(), entry.cleanup_id);
        let result = async {
            let redis = self.admit_slot_release().await?;
            let held = slots.release(&redis).await?;
            cleanup.cancel(id);
            Ok(held)
        }
        .await;
        Ok(result)
    }

    async fn limiter_set_override(
        &mut self,
        policy: &str,
        key: &str,
        limits: WitLimits,
    ) -> Result<(), Error> {
        let base = self.limiter_policy(policy)?;
        let limits = from_wit(limits);
        if limits.algorithm() != base.algorithm() {
            return Err(invalid(format!(
                "policy `{policy}` is a {} policy; an override must be {0} too, not {}",
                base.algorithm(),
                limits.algorithm()
            )));
        }
        limits
            .validate()
            .map_err(|e| invalid(format!("override for policy `{policy}`: {e}")))?;
        let keys = self.limiter_keys(policy, base.algorithm(), key)?;
        Ok(self
            .admit()
            .await?
            .limiter_set_override(&keys, &limits)
            .await?)
    }

    async fn limiter_get_override(
        &mut self,
        policy: &str,
        key: &str,
    ) -> Result<Option<WitLimits>, Error> {
        let base = self.limiter_policy(policy)?;
        let keys = self.limiter_keys(policy, base.algorithm(), key)?;
        let found = self.admit().await?.limiter_get_override(&keys).await?;
        Ok(found.as_ref().map(to_wit))
    }

    async fn limiter_clear_override(&mut self, policy: &str, key: &str) -> Result<bool, Error> {
        let base = self.limiter_policy(policy)?;
        let keys = self.limiter_keys(policy, base.algorithm(), key)?;
        Ok(self.admit().await?.limiter_clear_override(&keys).await?)
    }

    async fn limiter_reset(&mut self, policy: &str, key: &str) -> Result<bool, Error> {
        let base = self.limiter_policy(policy)?;
        let keys = self.limiter_keys(policy, base.algorithm(), key)?;
        Ok(self.admit().await?.limiter_reset(&keys).await?)
    }
}

impl Host for Caps {
    async fn check(&mut self, policy: String, key: String, cost: u64) -> R<Decision> {
        let decision = traced!("limiter", "check", self.limiter_check(&policy, &key, cost));
        // A peek (cost 0) decides nothing.
        if let Ok(d) = &decision
            && cost > 0
        {
            self.plugin.stats.limiter_decision(d.allowed);
        }
        Ok(decision)
    }

    async fn acquire(&mut self, policy: String, key: String, slots: u64) -> R<Acquisition> {
        let acquisition = traced!(
            "limiter",
            "acquire",
            self.limiter_acquire(policy, key, slots)
        );
        if let Ok(a) = &acquisition {
            self.plugin.stats.limiter_decision(a.decision.allowed);
        }
        Ok(acquisition)
    }

    async fn policy_limits(&mut self, name: String) -> wasmtime::Result<Option<WitLimits>> {
        Ok(self.plugin.limiters.get(&name).map(to_wit))
    }

    async fn policies(&mut self) -> wasmtime::Result<Vec<String>> {
        Ok(self
            .plugin
            .limiters
            .iter()
            .map(|(n, _)| n.to_string())
            .collect())
    }

    async fn set_override(&mut self, policy: String, key: String, limits: WitLimits) -> R<()> {
        Ok(traced!(
            "limiter",
            "set-override",
            self.limiter_set_override(&policy, &key, limits)
        ))
    }

    async fn get_override(&mut self, policy: String, key: String) -> R<Option<WitLimits>> {
        Ok(traced!(
            "limiter",
            "get-override",
            self.limiter_get_override(&policy, &key)
        ))
    }

    async fn clear_override(&mut self, policy: String, key: String) -> R<bool> {
        Ok(traced!(
            "limiter",
            "clear-override",
            self.limiter_clear_override(&policy, &key)
        ))
    }

    async fn reset(&mut self, policy: String, key: String) -> R<bool> {
        Ok(traced!(
            "limiter",
            "reset",
            self.limiter_reset(&policy, &key)
        ))
    }
}

impl HostLease for Caps {
    async fn policy(&mut self, handle: Resource<Lease>) -> wasmtime::Result<String> {
        Ok(self.lease_entry(&handle)?.policy.clone())
    }

    async fn key(&mut self, handle: Resource<Lease>) -> wasmtime::Result<String> {
        Ok(self.lease_entry(&handle)?.key.clone())
    }

    async fn slots(&mut self, handle: Resource<Lease>) -> wasmtime::Result<u64> {
        Ok(self.lease_entry(&handle)?.slots.count)
    }

    async fn release(&mut self, handle: Resource<Lease>) -> R<bool> {
        self.lease_release(&handle).await
    }

    /// The guest dropped its handle: release the slots if still held. A
    /// failed release is left to the invocation's cleanup; it never traps.
    async fn drop(&mut self, handle: Resource<Lease>) -> wasmtime::Result<()> {
        let held = !self
            .lease_entry(&handle)?
            .slots
            .released
            .load(Ordering::Relaxed);
        if held && let Ok(Err(e)) = self.lease_release(&handle).await {
            tracing::debug!(
                plugin = %self.plugin.name,
                "releasing dropped concurrency slots failed; retrying when the invocation ends: {}",
                super::describe(&e)
            );
        }
        self.leases.held.remove(&handle.rep());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every policy survives the round trip through its WIT form.
    #[test]
    fn limits_round_trip_through_wit() {
        let s = Duration::from_secs(1);
        let all = [
            Limits::Gcra {
                rate: Rate::new(100, 60 * s),
                burst: 20,
            },
            Limits::TokenBucket {
                capacity: 5,
                refill: Rate::new(10, 3 * s),
            },
            Limits::SlidingWindow {
                limit: 10,
                window: s,
            },
            Limits::FixedWindow {
                limit: 10,
                window: s,
            },
            Limits::Concurrency {
                slots: 2,
                lease: 30 * s,
            },
        ];
        for l in all {
            assert_eq!(from_wit(to_wit(&l)), l);
        }
    }
}
