//! The `lock` capability against real Redis: mutual exclusion across two
//! hosts, fencing tokens, compare-and-delete release, extend and auto-renew,
//! release when an invocation ends however it ends, waiting with wake-up and
//! deadline, diagnostics, and the example plugin's fenced writes.
//!
//! "Two hosts" are two [`Host`] values (each with its own runtime and Redis
//! connection) on one Redis.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::AsyncCommands;
use redloom::bindings::types::Error as GuestError;
use redloom::host::{Host, HostInvokeError, HostOptions};
use redloom::namespace::{Namespace, PluginName};
use redloom::plugin::{InvokeError, PluginSpec};
use redloom_tests::{RedisServer, plugin, unique};
use serde_json::{Value, json};

/// Every test body runs under this deadline.
const TEST_TIMEOUT: Duration = Duration::from_secs(120);

async fn with_timeout<F: std::future::Future<Output = ()>>(f: F) {
    tokio::time::timeout(TEST_TIMEOUT, f)
        .await
        .expect("test timed out");
}

async fn start_host(redis: &RedisServer, data: &Path) -> Arc<Host> {
    let mut options = HostOptions::from_config(&Default::default());
    options.redis_target = Some(redis.target());
    options.data_dir = data.to_path_buf();
    options.runtime.max_instances = 40;
    Arc::new(Host::start(options).await.expect("host starts"))
}

/// `crate_name` loaded as `name`, with room for 32 concurrent invocations
/// that each send many Redis commands.
fn spec(name: &str, crate_name: &str) -> PluginSpec {
    let mut s = PluginSpec::from_path(&plugin(crate_name));
    s.name = PluginName::parse(name).unwrap();
    s.quotas.wall_time = Duration::from_secs(60);
    s.quotas.redis_ops = 1_000_000;
    s.quotas.redis_rate = 0;
    s.quotas.concurrency = 32;
    s
}

/// Runs a lock-probe program and returns its per-operation results.
async fn probe(host: &Host, plugin: &str, ops: Value) -> Vec<Value> {
    let out = host
        .invoke(
            &PluginName::parse(plugin).unwrap(),
            ops.to_string().as_bytes(),
        )
        .await
        .unwrap_or_else(|e| panic!("lock-probe {plugin} failed: {e}"));
    serde_json::from_slice(&out).expect("lock-probe output is JSON")
}

fn ok(v: &Value) -> &Value {
    v.get("ok")
        .unwrap_or_else(|| panic!("expected ok, got {v}"))
}

fn err_kind(v: &Value) -> &str {
    v["err"]["kind"]
        .as_str()
        .unwrap_or_else(|| panic!("expected err, got {v}"))
}

/// The Redis key of lock `name` of plugin `plugin`.
fn lock_key(plugin: &str, name: &str) -> String {
    Namespace::new(&PluginName::parse(plugin).unwrap())
        .lock(name)
        .unwrap()
        .lock
}

/// Polls (every 5 ms, for at most 10 s) until the lock key exists.
async fn until_locked(conn: &mut redloom_tests::TestConnection, key: &str) {
    let started = Instant::now();
    while !conn.exists::<_, bool>(key).await.unwrap() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{key} never got locked"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// 32 concurrent invocations, 16 on each of two hosts, each run 50 critical
/// sections of GET-then-SET under one lock: no increment is lost, and the
/// 1600 fencing tokens are exactly 1..=1600, increasing within each
/// invocation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_exclusion_across_two_hosts() {
    with_timeout(async {
        let redis = RedisServer::start().await;
        let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let hosts = [
            start_host(&redis, d1.path()).await,
            start_host(&redis, d2.path()).await,
        ];
        for h in &hosts {
            h.load(spec("counter", "lock-probe")).await.unwrap();
        }
        let (name, key) = (unique("mutex"), unique("counter"));
        let program = json!([{
            "op": "critical", "name": name, "key": key, "n": 50,
            "ttl_ms": 10_000, "wait_ms": 50_000,
        }]);
        let started = Instant::now();
        let mut tasks = Vec::new();
        for i in 0..32 {
            let host = hosts[i % 2].clone();
            let program = program.clone();
            tasks.push(tokio::spawn(async move {
                probe(&host, "counter", program).await
            }));
        }
        let mut tokens: Vec<u64> = Vec::new();
        for t in tasks {
            let r = t.await.unwrap();
            let mine: Vec<u64> = ok(&r[0])
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t.as_u64().unwrap())
                .collect();
            assert_eq!(mine.len(), 50);
            assert!(mine.windows(2).all(|w| w[0] < w[1]), "{mine:?}");
            tokens.extend(mine);
        }
        let elapsed = started.elapsed();

        let mut conn = redis.client().await;
        let value: String = conn.get(format!("rl:counter:kv:{key}")).await.unwrap();
        assert_eq!(value, "1600", "lost increments");
        tokens.sort_unstable();
        assert_eq!(tokens, (1..=1600).collect::<Vec<u64>>());
        assert!(
            !conn
                .exists::<_, bool>(lock_key("counter", &name))
                .await
                .unwrap(),
            "the lock is free at the end"
        );
        eprintln!("1600 critical sections across two hosts took {elapsed:?}");
    })
    .await;
}

/// Fencing tokens strictly increase across hosts and acquisitions, also
/// when a lock expires while held and is taken again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fencing_tokens_increase_across_hosts() {
    with_timeout(async {
        let redis = RedisServer::start().await;
        let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let hosts = [
            start_host(&redis, d1.path()).await,
            start_host(&redis, d2.path()).await,
        ];
        for h in &hosts {
            h.load(spec("fenced", "lock-probe")).await.unwrap();
        }
        let name = unique("fence");
        let mut tokens = Vec::new();
        for i in 0..10 {
            let host = &hosts[i % 2];
            if i % 3 == 2 {
                // The first acquisition expires while held; a second one in
                // the same invocation gets a newer token, and the first can
                // no longer release.
                let r = probe(
                    host,
                    "fenced",
                    json!([
                        {"op": "acquire", "name": name, "ttl_ms": 100, "wait_ms": 0, "id": "a"},
                        {"op": "sleep", "ms": 250},
                        {"op": "try_acquire", "name": name, "ttl_ms": 5000, "id": "b"},
                        {"op": "release", "id": "a"},
                        {"op": "release", "id": "b"},
                    ]),
                )
                .await;
                tokens.push(ok(&r[0])["token"].as_u64().unwrap());
                tokens.push(ok(&r[2]).as_u64().unwrap_or_else(|| panic!("{r:?}")));
                assert_eq!(ok(&r[3]), &json!("not-owner"));
                assert_eq!(ok(&r[4]), &json!("owner"));
            } else {
                let r = probe(
                    host,
                    "fenced",
                    json!([
                        {"op": "acquire", "name": name, "ttl_ms": 5000, "wait_ms": 5000},
                        {"op": "holder", "name": name},
                        {"op": "release", "id": name},
                    ]),
                )
                .await;
                let token = ok(&r[0])["token"].as_u64().unwrap();
                assert_eq!(ok(&r[1])["fencing_token"], json!(token), "{r:?}");
                assert_eq!(ok(&r[2]), &json!("owner"));
                tokens.push(token);
            }
        }
        assert!(tokens.windows(2).all(|w| w[0] < w[1]), "{tokens:?}");
        assert_eq!(tokens[0], 1);

        // The counter survives releases; the lock key does not.
        let keys = Namespace::new(&PluginName::parse("fenced").unwrap())
            .lock(&name)
            .unwrap();
        let mut conn = redis.client().await;
        let fence: u64 = conn.get(&keys.fence).await.unwrap();
        assert_eq!(fence, *tokens.last().unwrap());
    })
    .await;
}

/// A holder whose lock expired cannot release or extend it: both report
/// `not-owner`, and the new holder's lock (on the other host) is untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_holder_cannot_release_or_extend() {
    with_timeout(async {
        let redis = RedisServer::start().await;
        let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (a, b) = (
            start_host(&redis, d1.path()).await,
            start_host(&redis, d2.path()).await,
        );
        a.load(spec("expiry", "lock-probe")).await.unwrap();
        b.load(spec("expiry", "lock-probe")).await.unwrap();
        let name = unique("expire");
        let key = lock_key("expiry", &name);
        let mut conn = redis.client().await;

        // A takes the lock for 300 ms and stalls for 900 ms.
        let first = tokio::spawn({
            let (a, name) = (a.clone(), name.clone());
            async move {
                probe(
                    &a,
                    "expiry",
                    json!([
                        {"op": "acquire", "name": name, "ttl_ms": 300, "wait_ms": 0},
                        {"op": "sleep", "ms": 900},
                        {"op": "extend", "id": name, "ttl_ms": 5000},
                        {"op": "release", "id": name},
                    ]),
                )
                .await
            }
        });
        until_locked(&mut conn, &key).await;
        // B waits for it, gets it when it expires, and holds it past A's
        // late extend and release.
        let second = probe(
            &b,
            "expiry",
            json!([
                {"op": "acquire", "name": name, "ttl_ms": 60_000, "wait_ms": 5000},
                {"op": "sleep", "ms": 1200},
                {"op": "holder", "name": name},
                {"op": "release", "id": name},
            ]),
        )
        .await;
        let first = first.await.unwrap();

        let token_a = ok(&first[0])["token"].as_u64().unwrap();
        let token_b = ok(&second[0])["token"].as_u64().unwrap();
        assert!(token_b > token_a);
        assert_eq!(ok(&first[2]), &json!("not-owner"), "late extend: {first:?}");
        assert_eq!(
            ok(&first[3]),
            &json!("not-owner"),
            "late release: {first:?}"
        );
        let holder = ok(&second[2]);
        assert_eq!(holder["fencing_token"], json!(token_b), "{second:?}");
        let ttl = holder["ttl_ms"].as_u64().unwrap();
        assert!(
            ttl > 50_000,
            "A's extend did not touch B's lock's TTL: {ttl}"
        );
        assert_eq!(ok(&second[3]), &json!("owner"), "B still owned its lock");
        assert!(!conn.exists::<_, bool>(&key).await.unwrap());
    })
    .await;
}

/// A lock is free as soon as the invocation holding it ends: by a trap, by
/// the wall-time quota, by returning with a leaked guard, or by dropping
/// the guard — never only after its (one minute) TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locks_are_released_when_the_invocation_ends() {
    with_timeout(async {
        let redis = RedisServer::start().await;
        let data = tempfile::tempdir().unwrap();
        let host = start_host(&redis, data.path()).await;
        let mut s = spec("ender", "lock-probe");
        s.quotas.wall_time = Duration::from_millis(500);
        let p = host.load(s).await.unwrap();
        let mut conn = redis.client().await;

        // A trap while holding two locks, one renewed every 100 ms.
        let (l1, l2) = (unique("trap"), unique("trap"));
        let program = json!([
            {"op": "acquire", "name": l1, "ttl_ms": 60_000, "wait_ms": 0},
            {"op": "acquire", "name": l2, "ttl_ms": 300, "wait_ms": 0},
            {"op": "auto_renew", "id": l2, "enabled": true},
            {"op": "sleep", "ms": 250},
            {"op": "panic"},
        ]);
        let e = host
            .invoke(p.name(), program.to_string().as_bytes())
            .await
            .unwrap_err();
        assert!(
            matches!(e, HostInvokeError::Invoke(InvokeError::Trap { .. })),
            "{e}"
        );
        for l in [&l1, &l2] {
            assert!(
                !conn.exists::<_, bool>(lock_key("ender", l)).await.unwrap(),
                "{l} is still locked after the trap"
            );
        }
        // ...and its renewal stopped with it: no more scripts run.
        let calls = evalsha_calls(&redis).await;
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(
            evalsha_calls(&redis).await,
            calls,
            "auto-renew kept running after the trap"
        );

        // The wall-time quota while holding a lock.
        let l3 = unique("spin");
        let program = json!([
            {"op": "acquire", "name": l3, "ttl_ms": 60_000, "wait_ms": 0},
            {"op": "spin"},
        ]);
        let started = Instant::now();
        let e = host
            .invoke(p.name(), program.to_string().as_bytes())
            .await
            .unwrap_err();
        assert!(e.to_string().contains("wall-time quota"), "{e}");
        assert!(started.elapsed() < Duration::from_secs(10));
        assert!(
            !conn
                .exists::<_, bool>(lock_key("ender", &l3))
                .await
                .unwrap(),
            "still locked after the wall-time quota"
        );

        // The wall-time quota while waiting for a lock someone else holds:
        // the waiter's registration is cleaned up and the holder keeps it.
        let l4 = unique("held");
        let k4 = lock_key("ender", &l4);
        let _: () = redis::cmd("HSET")
            .arg(&k4)
            .arg("owner")
            .arg("someone-else")
            .arg("token")
            .arg(7)
            .query_async(&mut conn)
            .await
            .unwrap();
        let _: bool = conn.pexpire(&k4, 60_000).await.unwrap();
        let program = json!([{"op": "acquire", "name": l4, "ttl_ms": 1000, "wait_ms": 30_000}]);
        let e = host
            .invoke(p.name(), program.to_string().as_bytes())
            .await
            .unwrap_err();
        assert!(e.to_string().contains("wall-time quota"), "{e}");
        let owner: String = conn.hget(&k4, "owner").await.unwrap();
        assert_eq!(
            owner, "someone-else",
            "another owner's lock is never deleted"
        );

        // A leaked (forgotten) guard of an invocation that returns normally,
        // and a dropped guard.
        let (l5, l6) = (unique("leak"), unique("drop"));
        let r = probe(
            &host,
            "ender",
            json!([
                {"op": "acquire", "name": l5, "ttl_ms": 60_000, "wait_ms": 0},
                {"op": "forget", "id": l5},
                {"op": "acquire", "name": l6, "ttl_ms": 60_000, "wait_ms": 0},
                {"op": "is_locked", "name": l6},
                {"op": "drop", "id": l6},
                {"op": "is_locked", "name": l6},
                {"op": "is_locked", "name": l5},
            ]),
        )
        .await;
        assert_eq!(ok(&r[3]), &json!(true));
        assert_eq!(ok(&r[5]), &json!(false), "dropping the guard releases");
        assert_eq!(
            ok(&r[6]),
            &json!(true),
            "a forgotten guard holds until the end"
        );
        assert!(
            !conn
                .exists::<_, bool>(lock_key("ender", &l5))
                .await
                .unwrap(),
            "a leaked guard is released when the invocation ends"
        );

        let keys: Vec<String> = conn.keys("rl:ender:lock:*").await.unwrap();
        let keys: Vec<&String> = keys.iter().filter(|k| !k.ends_with(":fence")).collect();
        assert_eq!(keys, vec![&k4], "only the other owner's lock remains");
    })
    .await;
}

/// A waiting acquire gets the lock soon after a release — through this
/// host's wake-up, and through backoff when another process releases — and
/// gives up with `timeout` at its deadline otherwise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_acquire_wakes_on_release_and_gives_up_at_deadline() {
    with_timeout(async {
        let redis = RedisServer::start().await;
        let data = tempfile::tempdir().unwrap();
        let host = start_host(&redis, data.path()).await;
        host.load(spec("waiter", "lock-probe")).await.unwrap();
        let mut conn = redis.client().await;

        // Released through this host after 500 ms.
        let name = unique("wake");
        let key = lock_key("waiter", &name);
        let holder = tokio::spawn({
            let (host, name) = (host.clone(), name.clone());
            async move {
                let r = probe(
                    &host,
                    "waiter",
                    json!([
                        {"op": "acquire", "name": name, "ttl_ms": 60_000, "wait_ms": 0},
                        {"op": "sleep", "ms": 500},
                        {"op": "release", "id": name},
                    ]),
                )
                .await;
                (r, Instant::now())
            }
        });
        until_locked(&mut conn, &key).await;
        let r = probe(
            &host,
            "waiter",
            json!([{"op": "acquire", "name": name, "ttl_ms": 60_000, "wait_ms": 10_000}]),
        )
        .await;
        let got_it = Instant::now();
        let (held, released) = holder.await.unwrap();
        assert_eq!(ok(&held[2]), &json!("owner"));
        let waited = ok(&r[0])["waited_ms"].as_u64().unwrap();
        assert!(waited >= 300, "it did wait: {waited} ms");
        let late = got_it.saturating_duration_since(released);
        assert!(
            late < Duration::from_secs(1),
            "acquired {late:?} after the release"
        );

        // Held by another process (a plain client): released by deleting it.
        let name = unique("foreign");
        let key = lock_key("waiter", &name);
        hold_elsewhere(&mut conn, &key, 60_000).await;
        let waiter = tokio::spawn({
            let (host, name) = (host.clone(), name.clone());
            async move {
                let r = probe(
                    &host,
                    "waiter",
                    json!([{"op": "acquire", "name": name, "ttl_ms": 60_000, "wait_ms": 10_000}]),
                )
                .await;
                (r, Instant::now())
            }
        });
        tokio::time::sleep(Duration::from_millis(400)).await;
        let _: i64 = conn.del(&key).await.unwrap();
        let deleted = Instant::now();
        let (r, got_it) = waiter.await.unwrap();
        assert!(ok(&r[0])["waited_ms"].as_u64().unwrap() >= 300, "{r:?}");
        let late = got_it.saturating_duration_since(deleted);
        assert!(
            late < Duration::from_secs(1),
            "acquired {late:?} after another process released"
        );

        // Never released: the waiter gives up at its deadline.
        let name = unique("stuck");
        let key = lock_key("waiter", &name);
        hold_elsewhere(&mut conn, &key, 60_000).await;
        let started = Instant::now();
        let r = probe(
            &host,
            "waiter",
            json!([
                {"op": "acquire", "name": name, "ttl_ms": 1000, "wait_ms": 300},
                {"op": "acquire", "name": name, "ttl_ms": 1000, "wait_ms": 0},
                {"op": "try_acquire", "name": name, "ttl_ms": 1000},
            ]),
        )
        .await;
        let elapsed = started.elapsed();
        assert_eq!(err_kind(&r[0]), "timeout", "{r:?}");
        assert!(
            r[0]["err"]["message"].as_str().unwrap().contains(&name),
            "{r:?}"
        );
        assert_eq!(err_kind(&r[1]), "timeout", "{r:?}");
        assert_eq!(ok(&r[2]), &Value::Null);
        assert!(
            elapsed >= Duration::from_millis(300) && elapsed < Duration::from_secs(2),
            "gave up after {elapsed:?}"
        );
        let owner: String = conn.hget(&key, "owner").await.unwrap();
        assert_eq!(owner, "elsewhere");

        // Expiry of a lock whose holder vanished is noticed too.
        let name = unique("expiring");
        hold_elsewhere(&mut conn, &lock_key("waiter", &name), 400).await;
        let r = probe(
            &host,
            "waiter",
            json!([{"op": "acquire", "name": name, "ttl_ms": 1000, "wait_ms": 5000}]),
        )
        .await;
        let waited = ok(&r[0])["waited_ms"].as_u64().unwrap();
        assert!((200..1500).contains(&waited), "waited {waited} ms");
    })
    .await;
}

/// How many scripts Redis has run (`EVALSHA` calls).
async fn evalsha_calls(redis: &RedisServer) -> u64 {
    redis
        .command_calls()
        .await
        .get("evalsha")
        .copied()
        .unwrap_or(0)
}

/// Writes a lock as another process would: owner `elsewhere`, `ttl_ms`.
async fn hold_elsewhere(conn: &mut redloom_tests::TestConnection, key: &str, ttl_ms: i64) {
    let _: () = redis::cmd("HSET")
        .arg(key)
        .arg("owner")
        .arg("elsewhere")
        .arg("token")
        .arg(1)
        .query_async(conn)
        .await
        .unwrap();
    let _: bool = conn.pexpire(key, ttl_ms).await.unwrap();
}

/// Extend and auto-renew keep a lock alive past its TTL only for its owner;
/// without them it expires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extend_and_auto_renew() {
    with_timeout(async {
        let redis = RedisServer::start().await;
        let data = tempfile::tempdir().unwrap();
        let host = start_host(&redis, data.path()).await;
        host.load(spec("renew", "lock-probe")).await.unwrap();
        let (a, b, c) = (unique("renewed"), unique("extended"), unique("lapsed"));
        let r = probe(
            &host,
            "renew",
            json!([
                {"op": "acquire", "name": a, "ttl_ms": 200, "wait_ms": 0},
                {"op": "auto_renew", "id": a, "enabled": true},
                {"op": "acquire", "name": b, "ttl_ms": 200, "wait_ms": 0},
                {"op": "extend", "id": b, "ttl_ms": 5000},
                {"op": "acquire", "name": c, "ttl_ms": 200, "wait_ms": 0},
                {"op": "sleep", "ms": 700},
                {"op": "is_locked", "name": a},
                {"op": "is_locked", "name": b},
                {"op": "is_locked", "name": c},
                {"op": "auto_renew", "id": a, "enabled": false},
                {"op": "release", "id": a},
                {"op": "release", "id": b},
                {"op": "release", "id": c},
                {"op": "acquire", "name": c, "ttl_ms": 50, "wait_ms": 0, "id": "short"},
                {"op": "auto_renew", "id": "short", "enabled": true},
                {"op": "extend", "id": "short", "ttl_ms": 0},
            ]),
        )
        .await;
        assert_eq!(ok(&r[3]), &json!("owner"));
        assert_eq!(ok(&r[6]), &json!(true), "auto-renew kept it: {r:?}");
        assert_eq!(ok(&r[7]), &json!(true), "extend kept it");
        assert_eq!(ok(&r[8]), &json!(false), "without either it lapsed");
        assert_eq!(ok(&r[10]), &json!("owner"));
        assert_eq!(ok(&r[11]), &json!("owner"));
        assert_eq!(ok(&r[12]), &json!("not-owner"));
        assert_eq!(err_kind(&r[14]), "invalid-argument", "auto-renew on 50 ms");
        assert_eq!(err_kind(&r[15]), "invalid-argument", "ttl 0");
    })
    .await;
}

/// Diagnostics, argument checks, re-entrancy, double release, isolation
/// between plugins, and the key layout in Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diagnostics_and_errors() {
    with_timeout(async {
        let redis = RedisServer::start().await;
        let data = tempfile::tempdir().unwrap();
        let host = start_host(&redis, data.path()).await;
        host.load(spec("diag", "lock-probe")).await.unwrap();
        host.load(spec("diag-b", "lock-probe")).await.unwrap();
        let name = "jobs";
        let long = "x".repeat(1025);
        let started = Instant::now();
        let r = probe(
            &host,
            "diag",
            json!([
                {"op": "holder", "name": name},
                {"op": "is_locked", "name": name},
                {"op": "acquire", "name": name, "ttl_ms": 5000, "wait_ms": 0},
                {"op": "holder", "name": name},
                {"op": "is_locked", "name": name},
                {"op": "acquire", "name": name, "ttl_ms": 5000, "wait_ms": 10_000, "id": "again"},
                {"op": "try_acquire", "name": name, "ttl_ms": 5000, "id": "again"},
                {"op": "release", "id": name},
                {"op": "holder", "name": name},
                {"op": "is_locked", "name": name},
                {"op": "acquire", "name": "t", "ttl_ms": 0, "wait_ms": 0},
                {"op": "acquire", "name": "t", "ttl_ms": 3_600_001, "wait_ms": 0},
                {"op": "acquire", "name": long, "ttl_ms": 1000, "wait_ms": 0},
                {"op": "acquire", "name": "", "ttl_ms": 1000, "wait_ms": 0},
                {"op": "acquire", "name": "}{", "ttl_ms": 1000, "wait_ms": 0},
            ]),
        )
        .await;
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "re-entrant acquire failed fast"
        );
        assert_eq!(ok(&r[0]), &Value::Null);
        assert_eq!(ok(&r[1]), &json!(false));
        let token = ok(&r[2])["token"].as_u64().unwrap();
        let holder = ok(&r[3]);
        assert_eq!(holder["fencing_token"], json!(token));
        let ttl = holder["ttl_ms"].as_u64().unwrap();
        assert!(ttl > 0 && ttl <= 5000, "{ttl}");
        assert!(!holder["owner"].as_str().unwrap().is_empty());
        assert_eq!(ok(&r[4]), &json!(true));
        assert_eq!(err_kind(&r[5]), "invalid-argument", "re-entrant: {r:?}");
        assert!(
            r[5]["err"]["message"]
                .as_str()
                .unwrap()
                .contains("re-entrant")
        );
        assert_eq!(err_kind(&r[6]), "invalid-argument", "re-entrant try: {r:?}");
        assert_eq!(ok(&r[7]), &json!("owner"));
        assert_eq!(ok(&r[8]), &Value::Null);
        assert_eq!(ok(&r[9]), &json!(false));
        for v in &r[10..=12] {
            assert_eq!(err_kind(v), "invalid-argument", "{v}");
        }
        assert!(ok(&r[13])["token"].is_u64(), "the empty name is a name");
        assert!(ok(&r[14])["token"].is_u64(), "braces are just characters");

        // The same name in another plugin is another lock.
        let r = probe(
            &host,
            "diag",
            json!([
                {"op": "acquire", "name": "shared", "ttl_ms": 60_000, "wait_ms": 0},
                {"op": "forget", "id": "shared"},
            ]),
        )
        .await;
        assert!(ok(&r[0])["token"].is_u64());
        let r = probe(
            &host,
            "diag-b",
            json!([
                {"op": "is_locked", "name": "shared"},
                {"op": "try_acquire", "name": "shared", "ttl_ms": 60_000},
                {"op": "release", "id": "shared"},
                {"op": "release", "id": "shared"},
            ]),
        )
        .await;
        assert_eq!(ok(&r[0]), &json!(false));
        assert_eq!(ok(&r[1]), &json!(1), "diag-b's counter starts at 1");
        assert_eq!(ok(&r[2]), &json!("owner"));
        assert_eq!(r[3]["err"]["kind"], "bad-op", "the guard is gone");

        // Only fencing counters remain, one per name, under the plugins'
        // prefixes, each sharing its hash tag with its lock.
        let mut conn = redis.client().await;
        let mut keys: Vec<String> = conn.keys("*").await.unwrap();
        keys.sort();
        assert_eq!(
            keys,
            [
                "rl:diag-b:lock:{diag-b/shared}:fence",
                "rl:diag:lock:{diag/jobs}:fence",
                "rl:diag:lock:{diag/shared}:fence",
                "rl:diag:lock:{diag/}:fence",
                "rl:diag:lock:{diag/}{}:fence",
            ]
        );
    })
    .await;
}

/// The example plugin: concurrent reservations on two hosts never oversell,
/// and a write with a stale fencing token is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reserve_inventory_fences_its_writes() {
    with_timeout(async {
        let redis = RedisServer::start().await;
        let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let hosts = [
            start_host(&redis, d1.path()).await,
            start_host(&redis, d2.path()).await,
        ];
        for h in &hosts {
            h.load(spec("inventory", "reserve-inventory"))
                .await
                .unwrap();
        }
        let name = PluginName::parse("inventory").unwrap();
        let sku = unique("sku");
        let call = |host: Arc<Host>, input: Value| {
            let name = name.clone();
            async move {
                host.invoke(&name, input.to_string().as_bytes())
                    .await
                    .map(|out| serde_json::from_slice::<Value>(&out).unwrap())
            }
        };
        let restocked = call(hosts[0].clone(), json!({"sku": sku, "restock": 10}))
            .await
            .unwrap();
        assert_eq!(restocked["available"], json!(10));

        let tasks: Vec<_> = (0..20)
            .map(|i| {
                let input = json!({"sku": sku, "reserve": 1, "order": format!("o-{i}")});
                tokio::spawn(call(hosts[i % 2].clone(), input))
            })
            .collect();
        let mut reserved = 0;
        let mut last_token = 0;
        for t in tasks {
            let reply = t.await.unwrap().unwrap();
            if reply["reserved"] == json!(true) {
                reserved += 1;
                last_token = last_token.max(reply["fencing_token"].as_u64().unwrap());
            }
        }
        assert_eq!(reserved, 10, "exactly the stock was reserved");

        let mut conn = redis.client().await;
        let record_key = format!("rl:inventory:kv:stock:{sku}");
        let record: String = conn.get(&record_key).await.unwrap();
        let record: Value = serde_json::from_str(&record).unwrap();
        assert_eq!(record["available"], json!(0));
        assert_eq!(record["fence"], json!(last_token));

        // A newer holder (token 1,000,000) wrote the record: this holder's
        // token is lower, so its write is refused and the record kept.
        let forged = json!({"available": 5, "fence": 1_000_000}).to_string();
        let _: () = conn.set(&record_key, &forged).await.unwrap();
        let e = call(
            hosts[1].clone(),
            json!({"sku": sku, "reserve": 1, "order": "late"}),
        )
        .await
        .unwrap_err();
        match e {
            HostInvokeError::Invoke(InvokeError::Guest {
                error: GuestError::Other(m),
                ..
            }) => assert!(m.contains("stale lock holder"), "{m}"),
            other => panic!("expected the stale-holder error, got {other}"),
        }
        let record: String = conn.get(&record_key).await.unwrap();
        assert_eq!(record, forged);
        assert!(
            !conn
                .exists::<_, bool>(lock_key("inventory", &format!("sku:{sku}")))
                .await
                .unwrap(),
            "the failed invocation's lock was released"
        );
    })
    .await;
}

/// A release through this host wakes a waiter at once, rather than at its
/// next backoff step: over 7 hand-offs (the waiter's backoff is at its
/// 50–100 ms cap by then) the median time from release to acquisition, by
/// the host's wall clock as the guests read it, is far below what backoff
/// alone gives (a median around 40–70 ms).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_wakes_a_waiter_at_once() {
    with_timeout(async {
        let redis = RedisServer::start().await;
        let data = tempfile::tempdir().unwrap();
        let host = start_host(&redis, data.path()).await;
        host.load(spec("handoff", "lock-probe")).await.unwrap();
        let mut conn = redis.client().await;
        let mut latencies = Vec::new();
        for _ in 0..7 {
            let name = unique("handoff");
            let holder = tokio::spawn({
                let (host, name) = (host.clone(), name.clone());
                async move {
                    probe(
                        &host,
                        "handoff",
                        json!([
                            {"op": "acquire", "name": name, "ttl_ms": 60_000, "wait_ms": 0},
                            {"op": "sleep", "ms": 400},
                            {"op": "release", "id": name},
                            {"op": "now"},
                        ]),
                    )
                    .await
                }
            });
            until_locked(&mut conn, &lock_key("handoff", &name)).await;
            let waiter = probe(
                &host,
                "handoff",
                json!([
                    {"op": "acquire", "name": name, "ttl_ms": 60_000, "wait_ms": 10_000},
                    {"op": "now"},
                ]),
            )
            .await;
            let holder = holder.await.unwrap();
            let released = ok(&holder[3]).as_i64().unwrap();
            let acquired = ok(&waiter[1]).as_i64().unwrap();
            latencies.push(Duration::from_micros((acquired - released).max(0) as u64));
        }
        latencies.sort();
        assert!(
            latencies[3] < Duration::from_millis(30),
            "median hand-off took {:?}: {latencies:?}",
            latencies[3]
        );
    })
    .await;
}
