//! Test guest: runs a JSON list of `cache` operations and reports the result
//! of each, so `tests/suite/cache.rs` can drive every cache call and pattern
//! against a counting origin.
//!
//! Input: a JSON array of operations. Output: a JSON array with one entry per
//! operation, `{"ok": <value>}` or `{"err": {"kind", "message"}}`.
//!
//! Policy fields (every op that takes a policy): `fresh_ms` (default 60000),
//! `stale_ms` (0), `negative_ms` (none), `tags` ([]), `lease_ms` (10000),
//! `wait_ms` (5000), `beta` (0), `near` (true: the lookup may use the
//! host's near cache).
//!
//! | op | fields | `ok` value |
//! |---|---|---|
//! | `lookup` | `key`, policy, `as`? (remember the lease under this name) | `{"kind": "fresh"/"stale"/"miss"/"filling", "value", "lease": bool}` |
//! | `fill` | `key`, `lease` (a name), `value` (string or null), policy | bool: stored |
//! | `abandon` | `key`, `lease` | bool |
//! | `set` | `key`, `value` (string or null), policy | null |
//! | `invalidate` | `key` | bool |
//! | `invalidate_tag` | `tag` | null |
//! | `fetch` | `key`, `origin` (URL; 404 = not found), policy | `{"value", "source"}` |
//! | `write_through` | `key`, `value`, `origin` (URL, POSTed the value), policy | null |
//! | `write_around` | `key`, `value`, `origin` (URL, POSTed the value) | null |
//! | `fetch_json` | `key`, `origin` (URL answering a [`User`] as JSON), policy | the `User` (`Cache::get_or_fill_json`) |
//! | `fetch_optional_json` | `key`, `origin` (URL; 404 = not found), policy | the `User` or null (`Cache::get_or_fill_optional_json`) |
//! | `write_through_json` | `key`, `user` (a `User`), `origin` (URL, POSTed its JSON), policy | null (`Cache::write_through_json`) |
//! | `sleep` | `ms` | null |
//! | `incr` | `key` (a `kv` key) | the new value (`kv::increment` by 1): tells the test this step was reached |
//! | `await_key` | `key` (a `kv` key), `timeout_ms`? (default 60000) | true once `key` exists (polled every 10 ms); a `timeout` error if it never does: holds the invocation until the test says so |
//! | `set_range` | `key` (a prefix), `n`, `value`, policy | null: `set` of `KEY0` … `KEY{n-1}` |
//! | `lookup_range` | `key` (a prefix), `n`, policy | how many of `KEY0` … `KEY{n-1}` were fresh hits |
//! | `trap` | | — (the instance traps) |
//!
//! `value` may be replaced by `repeat` (`{"value": "x", "repeat": n}` is
//! "x" n times).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use redloom_sdk::cache::{self, Cache, Lease, Lookup, Policy};
use redloom_sdk::{Error, Invoke, Result, http, kv};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// The typed value of the `*_json` ops.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct User {
    id: u64,
    name: String,
    teams: Vec<String>,
}

struct CacheProbe;

impl Invoke for CacheProbe {
    fn invoke(input: Vec<u8>) -> Result<Vec<u8>> {
        probe_kit::run_program(&input, HashMap::new(), |op, leases| Ok(run(op, leases)?))
    }
}

redloom_sdk::export!(CacheProbe => [invoke]);

fn str_field<'a>(op: &'a Value, name: &str) -> Result<&'a str> {
    op[name]
        .as_str()
        .ok_or_else(|| Error::invalid(format!("`{name}` missing in {op}")))
}

fn ms_field(op: &Value, name: &str, default: u64) -> Duration {
    Duration::from_millis(op[name].as_u64().unwrap_or(default))
}

fn policy(op: &Value) -> Policy {
    let mut p = Policy::ttl(ms_field(op, "fresh_ms", 60_000))
        .stale(ms_field(op, "stale_ms", 0))
        .lease(ms_field(op, "lease_ms", 10_000))
        .wait(ms_field(op, "wait_ms", 5_000))
        .early_refresh(op["beta"].as_f64().unwrap_or(0.0))
        .near_cache(op["near"].as_bool().unwrap_or(true));
    if let Some(n) = op["negative_ms"].as_u64() {
        p = p.negative(Duration::from_millis(n));
    }
    for t in op["tags"].as_array().into_iter().flatten() {
        p = p.tag(t.as_str().unwrap_or_default());
    }
    p
}

fn value(op: &Value) -> Option<Vec<u8>> {
    let v = op["value"].as_str()?;
    let n = op["repeat"].as_u64().unwrap_or(1) as usize;
    Some(v.repeat(n).into_bytes())
}

fn text(v: Option<Vec<u8>>) -> Value {
    v.map_or(Value::Null, |b| {
        Value::String(String::from_utf8_lossy(&b).into_owned())
    })
}

fn lease(leases: &HashMap<String, Lease>, op: &Value) -> Result<Lease> {
    let name = str_field(op, "lease")?;
    leases
        .get(name)
        .cloned()
        .ok_or_else(|| Error::invalid(format!("no lease named `{name}`")))
}

/// GET `url`: the body, or `None` on 404.
fn origin_get(url: &str) -> Result<Option<Vec<u8>>> {
    let r = http::get(url)?;
    match r.status {
        200 => Ok(Some(r.body)),
        404 => Ok(None),
        s => Err(Error::other(format!("origin answered {s}"))),
    }
}

fn origin_post(url: &str, body: &[u8]) -> Result<()> {
    let r = http::send(http::OutgoingRequest::new("POST", url).body(body.to_vec()))?;
    if r.status >= 300 {
        return Err(Error::other(format!("origin answered {}", r.status)));
    }
    Ok(())
}

/// GET `url` as a [`User`]: `None` on 404.
fn origin_user(url: &str) -> Result<Option<User>> {
    origin_get(url)?
        .map(|b| {
            serde_json::from_slice(&b)
                .map_err(|e| Error::other(format!("origin sent no User: {e}")))
        })
        .transpose()
}

/// Polls `key` every 10 ms until it exists, for at most `timeout`.
fn await_key(key: &str, timeout: Duration) -> Result<()> {
    let started = Instant::now();
    while !kv::exists(key)? {
        if started.elapsed() >= timeout {
            return Err(Error::Timeout(format!(
                "`{key}` did not appear within {} ms",
                timeout.as_millis()
            )));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

fn to_json<T: Serialize>(v: &T) -> Result<Value> {
    serde_json::to_value(v).map_err(|e| Error::other(format!("encoding: {e}")))
}

fn run(op: &Value, leases: &mut HashMap<String, Lease>) -> Result<Value> {
    let key = op["key"].as_str().unwrap_or_default();
    match str_field(op, "op")? {
        "lookup" => {
            let (kind, hit_value, lease) = match cache::lookup(key, &policy(op))? {
                Lookup::Fresh(h) => ("fresh", text(h.value), h.refresh),
                Lookup::Stale(h) => ("stale", text(h.value), h.refresh),
                Lookup::Miss(l) => ("miss", Value::Null, Some(l)),
                Lookup::Filling => ("filling", Value::Null, None),
            };
            let has = lease.is_some();
            if let (Some(l), Some(name)) = (lease, op["as"].as_str()) {
                leases.insert(name.to_string(), l);
            }
            Ok(json!({ "kind": kind, "value": hit_value, "lease": has }))
        }
        "fill" => {
            let l = lease(leases, op)?;
            Ok(json!(cache::fill(
                key,
                l,
                value(op).as_deref(),
                &policy(op)
            )?))
        }
        "abandon" => Ok(json!(cache::abandon(key, lease(leases, op)?)?)),
        "set" => {
            cache::set(key, value(op).as_deref(), &policy(op))?;
            Ok(Value::Null)
        }
        "invalidate" => Ok(json!(cache::invalidate(key)?)),
        "invalidate_tag" => {
            cache::invalidate_tag(str_field(op, "tag")?)?;
            Ok(Value::Null)
        }
        "fetch" => {
            let url = str_field(op, "origin")?;
            let got = Cache::fetch(key, &policy(op), || origin_get(url))?;
            Ok(json!({ "value": text(got.value), "source": got.source.as_str() }))
        }
        "write_through" => {
            let url = str_field(op, "origin")?;
            let v = value(op).unwrap_or_default();
            Cache::write_through(key, &v, &policy(op), || origin_post(url, &v))?;
            Ok(Value::Null)
        }
        "write_around" => {
            let url = str_field(op, "origin")?;
            let v = value(op).unwrap_or_default();
            Cache::write_around(key, || origin_post(url, &v))?;
            Ok(Value::Null)
        }
        "fetch_json" => {
            let url = str_field(op, "origin")?;
            let user: User = Cache::get_or_fill_json(key, &policy(op), || {
                origin_user(url)?.ok_or_else(|| Error::other(format!("{url} answered 404")))
            })?;
            to_json(&user)
        }
        "fetch_optional_json" => {
            let url = str_field(op, "origin")?;
            let user: Option<User> =
                Cache::get_or_fill_optional_json(key, &policy(op), || origin_user(url))?;
            to_json(&user)
        }
        "write_through_json" => {
            let url = str_field(op, "origin")?;
            let user: User = serde_json::from_value(op["user"].clone())
                .map_err(|e| Error::invalid(format!("`user` is not a User: {e}")))?;
            let body = serde_json::to_vec(&user)?;
            Cache::write_through_json(key, &user, &policy(op), || origin_post(url, &body))?;
            Ok(Value::Null)
        }
        "sleep" => {
            std::thread::sleep(ms_field(op, "ms", 0));
            Ok(Value::Null)
        }
        "incr" => Ok(json!(kv::increment(str_field(op, "key")?, 1)?)),
        "await_key" => {
            await_key(str_field(op, "key")?, ms_field(op, "timeout_ms", 60_000))?;
            Ok(json!(true))
        }
        "set_range" => {
            let v = value(op);
            for i in 0..op["n"].as_u64().unwrap_or(0) {
                cache::set(&format!("{key}{i}"), v.as_deref(), &policy(op))?;
            }
            Ok(Value::Null)
        }
        "lookup_range" => {
            let p = policy(op);
            let mut fresh = 0;
            for i in 0..op["n"].as_u64().unwrap_or(0) {
                match cache::lookup(&format!("{key}{i}"), &p)? {
                    Lookup::Fresh(_) => fresh += 1,
                    Lookup::Miss(l) => {
                        cache::abandon(&format!("{key}{i}"), l)?;
                    }
                    _ => {}
                }
            }
            Ok(json!(fresh))
        }
        "trap" => panic!("cache-probe: trap requested"),
        other => Err(Error::invalid(format!("unknown op `{other}`"))),
    }
}
