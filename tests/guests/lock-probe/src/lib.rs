//! Test guest: runs a JSON list of `lock` operations (and the few `kv` ones a
//! critical section needs) and reports the result of each, so host tests can
//! drive every lock call, hold guards across steps, and end the invocation
//! while holding them (by returning, panicking or spinning).
//!
//! Input: a JSON array of operations. Output: a JSON array with one entry per
//! operation, `{"ok": <value>}` or `{"err": {"kind": "<wit error case>",
//! "message": "..."}}`. Guards live in a table keyed by `id` (default: the
//! lock's `name`) until released, dropped or forgotten.
//!
//! | op | fields | `ok` value |
//! |---|---|---|
//! | `acquire` | `name`, `ttl_ms`, `wait_ms`, `id`? | `{"token": n, "waited_ms": n}` |
//! | `try_acquire` | `name`, `ttl_ms`, `id`? | token or null |
//! | `release` | `id` | `"owner"` or `"not-owner"` |
//! | `extend` | `id`, `ttl_ms` | `"owner"` or `"not-owner"` |
//! | `auto_renew` | `id`, `enabled` | null |
//! | `drop` | `id` | null (the guard's `Drop` releases) |
//! | `forget` | `id` | null (`mem::forget`: only the host can release it now) |
//! | `holder` | `name` | `{"fencing_token", "ttl_ms", "owner"}` or null |
//! | `is_locked` | `name` | bool |
//! | `sleep` | `ms` | null |
//! | `now` | | microseconds since the Unix epoch (WASI wall clock: the host's) |
//! | `incr` | `key` (a `kv` key) | the new value (`kv::increment` by 1): tells the test this step was reached |
//! | `await_key` | `key` (a `kv` key), `timeout_ms`? (default 60000) | true once `key` exists (polled every 10 ms); a `timeout` error if it never does: holds the invocation until the test says so |
//! | `critical` | `name`, `key`, `n`, `ttl_ms`, `wait_ms` | the `n` fencing tokens, in order |
//! | `panic` | | (traps) |
//! | `spin` | | (never returns) |
//!
//! `critical` runs `n` critical sections, each: acquire `name`, `kv::get`
//! `key` as an integer (missing: 0), `kv::set` it to that plus one, release
//! (an error if the guard no longer owned the lock). The read and the write
//! are separate commands, so only the lock keeps concurrent sections from
//! losing increments.

use std::collections::HashMap;
use std::hint::black_box;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use probe_kit::{Fields, Step};
use redloom_sdk::lock::{self, LockGuard, Ownership};
use redloom_sdk::{Error, Invoke, Result, kv};
use serde_json::{Value, json};

struct LockProbe;

impl Invoke for LockProbe {
    fn invoke(input: Vec<u8>) -> Result<Vec<u8>> {
        // Handles still held drop before the reply is sent.
        probe_kit::run_program(&input, HashMap::new(), run)
    }
}

redloom_sdk::export!(LockProbe => [invoke]);

fn run(op: &Value, guards: &mut HashMap<String, LockGuard>) -> Result<Value, Step> {
    let f = Fields(op);
    Ok(match f.str("op")? {
        "acquire" => {
            let name = f.str("name")?;
            let started = Instant::now();
            let guard = lock::acquire(name, f.ms("ttl_ms")?, f.ms("wait_ms")?)?;
            let waited = started.elapsed().as_millis() as u64;
            let token = guard.fencing_token();
            guards.insert(guard_id(&f)?.to_owned(), guard);
            json!({ "token": token, "waited_ms": waited })
        }
        "try_acquire" => {
            let name = f.str("name")?;
            match lock::try_acquire(name, f.ms("ttl_ms")?)? {
                Some(guard) => {
                    let token = guard.fencing_token();
                    guards.insert(guard_id(&f)?.to_owned(), guard);
                    token.into()
                }
                None => Value::Null,
            }
        }
        "release" => ownership(take(guards, guard_id(&f)?)?.release()?),
        "extend" => ownership(get(guards, guard_id(&f)?)?.extend(f.ms("ttl_ms")?)?),
        "auto_renew" => {
            let enabled = op["enabled"]
                .as_bool()
                .ok_or_else(|| Step::Bad("`enabled` must be a boolean".into()))?;
            get(guards, guard_id(&f)?)?.auto_renew(enabled)?;
            Value::Null
        }
        "drop" => {
            drop(take(guards, guard_id(&f)?)?);
            Value::Null
        }
        "forget" => {
            std::mem::forget(take(guards, guard_id(&f)?)?);
            Value::Null
        }
        "holder" => match lock::holder(f.str("name")?)? {
            Some(h) => json!({
                "fencing_token": h.fencing_token,
                "ttl_ms": h.ttl.map(|t| t.as_millis() as u64),
                "owner": h.owner,
            }),
            None => Value::Null,
        },
        "is_locked" => lock::is_locked(f.str("name")?)?.into(),
        "sleep" => {
            std::thread::sleep(f.ms("ms")?);
            Value::Null
        }
        "now" => {
            let since = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_err(|e| Error::other(e.to_string()))?;
            (since.as_micros() as u64).into()
        }
        "incr" => kv::increment(f.str("key")?, 1)?.into(),
        "await_key" => {
            let key = f.str("key")?;
            let timeout = match op.get("timeout_ms") {
                Some(_) => f.ms("timeout_ms")?,
                None => Duration::from_secs(60),
            };
            let started = Instant::now();
            while !kv::exists(key)? {
                if started.elapsed() >= timeout {
                    return Err(Error::Timeout(format!(
                        "`{key}` did not appear within {} ms",
                        timeout.as_millis()
                    ))
                    .into());
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            true.into()
        }
        "critical" => {
            let (name, key) = (f.str("name")?, f.str("key")?);
            let (ttl, wait) = (f.ms("ttl_ms")?, f.ms("wait_ms")?);
            let n = f.u64("n")?;
            let mut tokens = Vec::new();
            for _ in 0..n {
                let guard = lock::acquire(name, ttl, wait)?;
                let value: i64 = match kv::get_string(key)? {
                    Some(s) => s
                        .parse()
                        .map_err(|e| Error::invalid(format!("`{key}` = {s:?}: {e}")))?,
                    None => 0,
                };
                kv::set(key, (value + 1).to_string())?;
                tokens.push(guard.fencing_token());
                if guard.release()? != Ownership::Owner {
                    return Err(Error::other("the lock expired inside a critical section").into());
                }
            }
            tokens.into()
        }
        "panic" => panic!("deliberate panic while holding {} lock(s)", guards.len()),
        "spin" => {
            let mut n: u64 = 0;
            loop {
                n = black_box(n.wrapping_add(1));
            }
        }
        other => return Err(Step::Bad(format!("unknown op `{other}`"))),
    })
}

fn ownership(o: Ownership) -> Value {
    match o {
        Ownership::Owner => "owner".into(),
        Ownership::NotOwner => "not-owner".into(),
    }
}

fn get<'a>(guards: &'a HashMap<String, LockGuard>, id: &str) -> Result<&'a LockGuard, Step> {
    guards
        .get(id)
        .ok_or_else(|| Step::Bad(format!("no guard `{id}`")))
}

fn take(guards: &mut HashMap<String, LockGuard>, id: &str) -> Result<LockGuard, Step> {
    guards
        .remove(id)
        .ok_or_else(|| Step::Bad(format!("no guard `{id}`")))
}

/// The guard's id: `id`, or else the lock's `name`.
fn guard_id<'a>(f: &Fields<'a>) -> Result<&'a str, Step> {
    match f.0.get("id") {
        Some(_) => f.str("id"),
        None => f.str("name"),
    }
}
