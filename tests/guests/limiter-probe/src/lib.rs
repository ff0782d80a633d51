//! Test guest: runs a JSON list of `limiter` operations (and the few `kv`
//! ones a barrier or a holder count needs) and reports the result of each,
//! so host tests can drive every limiter call, hold leases across steps, and
//! end the invocation while holding slots (by returning, panicking or
//! spinning).
//!
//! Input: a JSON array of operations. Output: a JSON array with one entry per
//! operation, `{"ok": <value>}` or `{"err": {"kind": "<wit error case>",
//! "message": "..."}}`. Leases live in a table keyed by `id` until released,
//! dropped or forgotten.
//!
//! A decision is `{"allowed", "limit", "remaining", "retry_after_ms",
//! "reset_after_ms"}`. Limits are `{"algorithm": "gcra", "count",
//! "period_ms", "burst"}`, `{"algorithm": "token-bucket", "count",
//! "period_ms", "capacity"}`, `{"algorithm": "sliding-window" |
//! "fixed-window", "limit", "window_ms"}` or `{"algorithm": "concurrency",
//! "slots", "lease_ms"}`.
//!
//! | op | fields | `ok` value |
//! |---|---|---|
//! | `check` | `policy`, `key`, `cost`? (1) | decision |
//! | `burst` | `policy`, `key`, `n`, `cost`? (1) | `{"allowed": count, "last": decision}` |
//! | `pace` | `policy`, `key`, `duration_ms`, `interval_ms`, `min_checks`? (0), `min_denied`? (0), `max_ms`? (`duration_ms`) | `[[t_us, allowed, remaining, retry_after_ms, done_us], ...]`, one per check: `t_us` just before it, `done_us` just after it returned (µs since the first) |
//! | `acquire` | `policy`, `key`, `slots`, `id` | `{"decision", "held": bool}` |
//! | `release` | `id` | bool |
//! | `drop` / `forget` | `id` | null |
//! | `hold` | `policy`, `key`, `hold_ms`, `active` | `{"held": false}` or `{"held": true, "active": n}`: acquire 1 slot, `kv::increment(active)`, sleep, decrement, release |
//! | `set_override` | `policy`, `key`, `limits` | null |
//! | `get_override` | `policy`, `key` | limits or null |
//! | `clear_override` / `reset` | `policy`, `key` | bool |
//! | `policy` | `name` | limits or null |
//! | `policies` | | names |
//! | `headers` | `policy`, `key` | the `RateLimit-*` headers of a check |
//! | `incr` | `key` | the kv counter after adding 1 |
//! | `wait_for` | `key`, `value`, `timeout_ms` | the kv counter once it is ≥ `value` |
//! | `sleep` | `ms` | null |
//! | `panic` | | (traps) |
//! | `spin` | | (never returns) |

use std::collections::HashMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use probe_kit::{Fields, Step};
use redloom_sdk::limiter::{self, Decision, Lease, Limits, Rate};
use redloom_sdk::{Error, Invoke, Result, kv};
use serde_json::{Value, json};

struct LimiterProbe;

impl Invoke for LimiterProbe {
    fn invoke(input: Vec<u8>) -> Result<Vec<u8>> {
        // Handles still held drop before the reply is sent.
        probe_kit::run_program(&input, HashMap::new(), run)
    }
}

redloom_sdk::export!(LimiterProbe => [invoke]);

fn decision(d: &Decision) -> Value {
    json!({
        "allowed": d.allowed,
        "limit": d.limit,
        "remaining": d.remaining,
        "retry_after_ms": d.retry_after.as_millis() as u64,
        "reset_after_ms": d.reset_after.as_millis() as u64,
    })
}

fn limits_to_json(l: &Limits) -> Value {
    let ms = |d: Duration| d.as_millis() as u64;
    match *l {
        Limits::Gcra { rate, burst } => json!({
            "algorithm": "gcra", "count": rate.count, "period_ms": ms(rate.period), "burst": burst,
        }),
        Limits::TokenBucket { capacity, refill } => json!({
            "algorithm": "token-bucket", "count": refill.count, "period_ms": ms(refill.period),
            "capacity": capacity,
        }),
        Limits::SlidingWindow { limit, window } => json!({
            "algorithm": "sliding-window", "limit": limit, "window_ms": ms(window),
        }),
        Limits::FixedWindow { limit, window } => json!({
            "algorithm": "fixed-window", "limit": limit, "window_ms": ms(window),
        }),
        Limits::Concurrency { slots, lease } => json!({
            "algorithm": "concurrency", "slots": slots, "lease_ms": ms(lease),
        }),
    }
}

fn limits_from_json(v: &Value) -> Result<Limits, Step> {
    let f = Fields(v);
    Ok(match f.str("algorithm")? {
        "gcra" => Limits::Gcra {
            rate: Rate::new(f.u64("count")?, f.ms("period_ms")?),
            burst: f.u64("burst")?,
        },
        "token-bucket" => Limits::TokenBucket {
            capacity: f.u64("capacity")?,
            refill: Rate::new(f.u64("count")?, f.ms("period_ms")?),
        },
        "sliding-window" => Limits::SlidingWindow {
            limit: f.u64("limit")?,
            window: f.ms("window_ms")?,
        },
        "fixed-window" => Limits::FixedWindow {
            limit: f.u64("limit")?,
            window: f.ms("window_ms")?,
        },
        "concurrency" => Limits::Concurrency {
            slots: f.u64("slots")?,
            lease: f.ms("lease_ms")?,
        },
        other => return Err(Step::Bad(format!("unknown algorithm `{other}`"))),
    })
}

fn run(op: &Value, leases: &mut HashMap<String, Lease>) -> Result<Value, Step> {
    let f = Fields(op);
    Ok(match f.str("op")? {
        "check" => {
            let cost = f.opt_u64("cost")?.unwrap_or(1);
            decision(&limiter::check_cost(f.str("policy")?, f.str("key")?, cost)?)
        }
        "burst" => {
            let (policy, key) = (f.str("policy")?, f.str("key")?);
            let cost = f.opt_u64("cost")?.unwrap_or(1);
            let mut allowed = 0;
            let mut last = Value::Null;
            for _ in 0..f.u64("n")? {
                let d = limiter::check_cost(policy, key, cost)?;
                allowed += u64::from(d.allowed);
                last = decision(&d);
            }
            json!({ "allowed": allowed, "last": last })
        }
        "pace" => {
            // Checks every `interval` for at least `duration`, and on (up to
            // `max_ms`) until there were `min_checks` checks and `min_denied`
            // denials, so a slow machine still yields enough of both. Each
            // check is bracketed by clock readings: Redis decided somewhere
            // between them.
            let (policy, key) = (f.str("policy")?, f.str("key")?);
            let (duration, interval) = (f.ms("duration_ms")?, f.ms("interval_ms")?);
            let min_checks = f.opt_u64("min_checks")?.unwrap_or(0) as usize;
            let min_denied = f.opt_u64("min_denied")?.unwrap_or(0);
            let max = f
                .opt_u64("max_ms")?
                .map_or(duration, Duration::from_millis)
                .max(duration);
            let started = Instant::now();
            let mut rows = Vec::new();
            let mut denied = 0;
            loop {
                let elapsed = started.elapsed();
                let enough = rows.len() >= min_checks && denied >= min_denied;
                if elapsed >= max || (elapsed >= duration && enough) {
                    break;
                }
                let t = started.elapsed().as_micros() as u64;
                let d = limiter::check(policy, key)?;
                let done = started.elapsed().as_micros() as u64;
                denied += u64::from(!d.allowed);
                rows.push(json!([
                    t,
                    d.allowed,
                    d.remaining,
                    d.retry_after.as_millis() as u64,
                    done
                ]));
                std::thread::sleep(interval);
            }
            rows.into()
        }
        "acquire" => {
            let got = limiter::acquire(f.str("policy")?, f.str("key")?, f.u64("slots")?)?;
            let held = got.lease.is_some();
            if let Some(lease) = got.lease {
                leases.insert(f.str("id")?.to_owned(), lease);
            }
            json!({ "decision": decision(&got.decision), "held": held })
        }
        "release" => take(leases, f.str("id")?)?.release()?.into(),
        "drop" => {
            drop(take(leases, f.str("id")?)?);
            Value::Null
        }
        "forget" => {
            std::mem::forget(take(leases, f.str("id")?)?);
            Value::Null
        }
        "hold" => {
            let got = limiter::acquire(f.str("policy")?, f.str("key")?, 1)?;
            match got.lease {
                None => json!({ "held": false }),
                Some(lease) => {
                    let active = f.str("active")?;
                    let n = kv::increment(active, 1)?;
                    std::thread::sleep(f.ms("hold_ms")?);
                    kv::increment(active, -1)?;
                    if !lease.release()? {
                        return Err(Error::other("the lease expired while held").into());
                    }
                    json!({ "held": true, "active": n })
                }
            }
        }
        "set_override" => {
            let limits = limits_from_json(&op["limits"])?;
            limiter::set_override(f.str("policy")?, f.str("key")?, limits)?;
            Value::Null
        }
        "get_override" => match limiter::get_override(f.str("policy")?, f.str("key")?)? {
            Some(l) => limits_to_json(&l),
            None => Value::Null,
        },
        "clear_override" => limiter::clear_override(f.str("policy")?, f.str("key")?)?.into(),
        "reset" => limiter::reset(f.str("policy")?, f.str("key")?)?.into(),
        "policy" => match limiter::policy(f.str("name")?) {
            Some(l) => limits_to_json(&l),
            None => Value::Null,
        },
        "policies" => limiter::policies().into(),
        "headers" => {
            let d = limiter::check(f.str("policy")?, f.str("key")?)?;
            let h: serde_json::Map<String, Value> = d
                .headers()
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.into()))
                .collect();
            h.into()
        }
        "incr" => kv::increment(f.str("key")?, 1)?.into(),
        "wait_for" => {
            let (key, want) = (f.str("key")?, f.u64("value")?);
            let deadline = Instant::now() + f.ms("timeout_ms")?;
            loop {
                let n: u64 = kv::get_string(key)?
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                if n >= want {
                    break n.into();
                }
                if Instant::now() >= deadline {
                    return Err(Error::Timeout(format!("`{key}` is {n}, not {want}")).into());
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        "sleep" => {
            std::thread::sleep(f.ms("ms")?);
            Value::Null
        }
        "panic" => panic!("deliberate panic holding {} lease(s)", leases.len()),
        "spin" => {
            let mut n: u64 = 0;
            loop {
                n = black_box(n.wrapping_add(1));
            }
        }
        other => return Err(Step::Bad(format!("unknown op `{other}`"))),
    })
}

fn take(leases: &mut HashMap<String, Lease>, id: &str) -> Result<Lease, Step> {
    leases
        .remove(id)
        .ok_or_else(|| Step::Bad(format!("no lease `{id}`")))
}
