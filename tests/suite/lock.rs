//! The `lock` capability against real Redis: mutual exclusion across two
//! hosts, fencing tokens, compare-and-delete release, extend and auto-renew,
//! release when an invocation ends however it ends, waiting with wake-up and
//! deadline, diagnostics, and the example plugin's fenced writes.
//!
//! "Two hosts" are two [`Host`] values (each with its own runtime and Redis
//! connection) on one Redis.
//!
//! No test depends on the machine being prompt: where an order of events
//! matters, the test makes it happen (a guest holds a lock until the test
//! sets a key, the test polls Redis for the state it needs) instead of
//! sleeping and hoping; a lock that must stay held across other work has a
//! time to live of a minute or more.

use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::AsyncCommands;
use redloom::bindings::types::Error as GuestError;
use redloom::host::{Host, HostInvokeError};
use redloom::namespace::{Namespace, PluginName};
use redloom::plugin::{InvokeError, PluginSpec};
use redloom_tests::{RedisServer, TestConnection, get_i64, plugin, unique, with_timeout};
use redloom_tests::{err_kind, ok, probe, shared_host, until};
use serde_json::{Value, json};

/// `crate_name` loaded as `name`, with room for 32 concurrent invocations
/// that each send many Redis commands.
fn spec(name: &str, crate_name: &str) -> PluginSpec {
    let mut s = PluginSpec::from_path(&plugin(crate_name));
    s.name = PluginName::parse(name).unwrap();
    s.quotas.wall_time = Duration::from_secs(60);
    // Only the wall-time quota (set lower by the tests that want it to
    // strike) may end a spinning guest: a cpu quota of the same length
    // would race it on a loaded machine.
    s.quotas.cpu = Duration::from_secs(60);
    s.quotas.redis_ops = 1_000_000;
    s.quotas.redis_rate = 0;
    s.quotas.concurrency = 32;
    s
}

/// The Redis key of lock `name` of plugin `plugin`.
fn lock_key(plugin: &str, name: &str) -> String {
    Namespace::new(&PluginName::parse(plugin).unwrap())
        .lock(name)
        .unwrap()
        .lock
}

/// Polls until the lock key exists.
async fn until_locked(conn: &mut TestConnection, key: &str) {
    until(&format!("{key} gets locked"), || {
        let mut conn = conn.clone();
        async move {
            match conn.exists::<_, bool>(key).await.unwrap() {
                true => Ok(()),
                false => Err("not locked".to_string()),
            }
        }
    })
    .await
}

/// Polls until the integer at `plugin`'s `kv` key `key` is `want` (guests
/// count themselves in with the probe's `incr`).
async fn until_count(conn: &TestConnection, plugin: &str, key: &str, want: i64) {
    let key = kv_key(plugin, key);
    until(&format!("{key} reaches {want}"), || {
        let mut conn = conn.clone();
        let key = key.clone();
        async move {
            match get_i64(&mut conn, &key).await {
                n if n == want => Ok(()),
                n => Err(format!("{n}")),
            }
        }
    })
    .await
}

/// Polls until Redis has run at least `want` scripts (`EVALSHA`): a
/// waiting acquire sends one per attempt.
async fn until_evalsha(redis: &RedisServer, what: &str, want: u64) {
    until(what, || async move {
        match redis.script_calls().await {
            n if n >= want => Ok(()),
            n => Err(format!("{n} of {want} EVALSHA calls")),
        }
    })
    .await
}

/// The Redis key of `plugin`'s `kv` key `key` (what the probe's `incr` and
/// `await_key` use).
fn kv_key(plugin: &str, key: &str) -> String {
    Namespace::new(&PluginName::parse(plugin).unwrap())
        .kv(key)
        .unwrap()
}

/// Sets `plugin`'s `kv` key `key`: releases a probe waiting in `await_key`.
async fn release(conn: &TestConnection, plugin: &str, key: &str) {
    let _: () = conn.clone().set(kv_key(plugin, key), 1).await.unwrap();
}

/// 32 concurrent invocations, 16 on each of two hosts, each run 50 critical
/// sections of GET-then-SET under one lock: no increment is lost, and the
/// 1600 fencing tokens are exactly 1..=1600, increasing within each
/// invocation.
///
/// No section may outlive its lock, and no waiter may give up: the time to
/// live, the waits and the wall time are minutes, though the whole run
/// takes seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_exclusion_across_two_hosts() {
    with_timeout(async {
        let redis = RedisServer::start().await;
        let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let hosts = [
            shared_host(&redis, d1.path(), 40).await,
            shared_host(&redis, d2.path(), 40).await,
        ];
        let mut s = spec("counter", "lock-probe");
        s.quotas.wall_time = Duration::from_secs(240);
        for h in &hosts {
            h.load(s.clone()).await.unwrap();
        }
        let (name, key) = (unique("mutex"), unique("counter"));
        let program = json!([{
            "op": "critical", "name": name, "key": key, "n": 50,
            "ttl_ms": 120_000, "wait_ms": 230_000,
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
            assert_eq!(mine.len(), 50, "{mine:?}");
            assert!(mine.windows(2).all(|w| w[0] < w[1]), "{mine:?}");
            tokens.extend(mine);
        }
        let elapsed = started.elapsed();

        let mut conn = redis.client().await;
        let value: String = conn.get(format!("rl:counter:kv:{key}")).await.unwrap();
        assert_eq!(value, "1600", "lost increments");
        tokens.sort_unstable();
        assert_eq!(
            tokens,
            (1..=1600).collect::<Vec<u64>>(),
            "the fencing tokens of 1600 acquisitions"
        );
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
            shared_host(&redis, d1.path(), 40).await,
            shared_host(&redis, d2.path(), 40).await,
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
                        {"op": "try_acquire", "name": name, "ttl_ms": 60_000, "id": "b"},
                        {"op": "release", "id": "a"},
                        {"op": "release", "id": "b"},
                    ]),
                )
                .await;
                tokens.push(ok(&r[0])["token"].as_u64().unwrap());
                tokens.push(ok(&r[2]).as_u64().unwrap_or_else(|| panic!("{r:?}")));
                assert_eq!(ok(&r[3]), &json!("not-owner"), "{r:?}");
                assert_eq!(ok(&r[4]), &json!("owner"), "{r:?}");
            } else {
                let r = probe(
                    host,
                    "fenced",
                    json!([
                        {"op": "acquire", "name": name, "ttl_ms": 60_000, "wait_ms": 30_000},
                        {"op": "holder", "name": name},
                        {"op": "release", "id": name},
                    ]),
                )
                .await;
                let token = ok(&r[0])["token"].as_u64().unwrap();
                assert_eq!(ok(&r[1])["fencing_token"], json!(token), "{r:?}");
                assert_eq!(ok(&r[2]), &json!("owner"), "{r:?}");
                tokens.push(token);
            }
        }
        assert!(tokens.windows(2).all(|w| w[0] < w[1]), "{tokens:?}");
        assert_eq!(tokens[0], 1, "{tokens:?}");

        // The counter survives releases; the lock key does not.
        let keys = Namespace::new(&PluginName::parse("fenced").unwrap())
            .lock(&name)
            .unwrap();
        let mut conn = redis.client().await;
        let fence: u64 = conn.get(&keys.fence).await.unwrap();
        assert_eq!(fence, *tokens.last().unwrap(), "the counter: {tokens:?}");
    })
    .await;
}

/// A holder whose lock expired cannot release or extend it: both report
/// `not-owner`, and the new holder's lock (on the other host) is untouched.
///
/// The order is made, not hoped for: A holds its 300 ms lock until the test
/// has seen B take it over, and B holds it (for 10 minutes) until A's late
/// extend and release are done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_holder_cannot_release_or_extend() {
    with_timeout(async {
        let redis = RedisServer::start().await;
        let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (a, b) = (
            shared_host(&redis, d1.path(), 40).await,
            shared_host(&redis, d2.path(), 40).await,
        );
        a.load(spec("expiry", "lock-probe")).await.unwrap();
        b.load(spec("expiry", "lock-probe")).await.unwrap();
        let name = unique("expire");
        let key = lock_key("expiry", &name);
        let (a_has, a_go) = (unique("a-has"), unique("a-go"));
        let (b_has, b_go) = (unique("b-has"), unique("b-go"));
        let mut conn = redis.client().await;

        // A takes the lock for 300 ms and stalls until told to go on.
        let first = tokio::spawn({
            let (a, name, a_has, a_go) = (a.clone(), name.clone(), a_has.clone(), a_go.clone());
            async move {
                probe(
                    &a,
                    "expiry",
                    json!([
                        {"op": "acquire", "name": name, "ttl_ms": 300, "wait_ms": 0},
                        {"op": "incr", "key": a_has},
                        {"op": "await_key", "key": a_go},
                        {"op": "extend", "id": name, "ttl_ms": 5000},
                        {"op": "release", "id": name},
                    ]),
                )
                .await
            }
        });
        // (The lock itself may be gone again before this test looks.)
        until_count(&conn, "expiry", &a_has, 1).await;
        // B waits for it, gets it when it expires, and holds it past A's
        // late extend and release.
        let second = tokio::spawn({
            let (b, name, b_has, b_go) = (b.clone(), name.clone(), b_has.clone(), b_go.clone());
            async move {
                probe(
                    &b,
                    "expiry",
                    json!([
                        {"op": "acquire", "name": name, "ttl_ms": 600_000, "wait_ms": 60_000},
                        {"op": "incr", "key": b_has},
                        {"op": "await_key", "key": b_go},
                        {"op": "holder", "name": name},
                        {"op": "release", "id": name},
                    ]),
                )
                .await
            }
        });
        until_count(&conn, "expiry", &b_has, 1).await;
        release(&conn, "expiry", &a_go).await;
        let first = first.await.unwrap();
        release(&conn, "expiry", &b_go).await;
        let second = second.await.unwrap();

        let token_a = ok(&first[0])["token"].as_u64().unwrap();
        let token_b = ok(&second[0])["token"].as_u64().unwrap();
        assert!(token_b > token_a, "A: {first:?}, B: {second:?}");
        assert_eq!(ok(&first[3]), &json!("not-owner"), "late extend: {first:?}");
        assert_eq!(
            ok(&first[4]),
            &json!("not-owner"),
            "late release: {first:?}"
        );
        let holder = ok(&second[3]);
        assert_eq!(holder["fencing_token"], json!(token_b), "{second:?}");
        // B's 10 minutes, minus at most the test's own run: far above the
        // 5 s A's extend would have set.
        let ttl = holder["ttl_ms"].as_u64().unwrap();
        assert!(
            ttl > 60_000,
            "A's extend did not touch B's lock's TTL: {ttl} ({second:?})"
        );
        assert_eq!(
            ok(&second[4]),
            &json!("owner"),
            "B still owned its lock: {second:?}"
        );
        assert!(
            !conn.exists::<_, bool>(&key).await.unwrap(),
            "B's release left the lock"
        );
    })
    .await;
}

/// A lock is free as soon as the invocation holding it ends: by a trap, by
/// the wall-time quota, by returning with a leaked guard, or by dropping
/// the guard — never only after its (one minute) TTL.
///
/// The cases that end by the wall-time quota run as plugin `ender-quota`
/// (2 s of wall time); the others as `ender`, with a minute, so that no
/// step of theirs can run into a quota on a slow machine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locks_are_released_when_the_invocation_ends() {
    with_timeout(async {
        let redis = RedisServer::start().await;
        let data = tempfile::tempdir().unwrap();
        let host = shared_host(&redis, data.path(), 40).await;
        let p = host.load(spec("ender", "lock-probe")).await.unwrap();
        let mut s = spec("ender-quota", "lock-probe");
        s.quotas.wall_time = Duration::from_secs(2);
        let q = host.load(s).await.unwrap();
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
        // ...and its renewal stopped with it: no more scripts run. A
        // renewal every 100 ms would show up about ten times in this second
        // (and a renewal task slowed down by a loaded machine at least
        // once); nothing else sends scripts meanwhile.
        let calls = redis.script_calls().await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(
            redis.script_calls().await,
            calls,
            "auto-renew kept running after the trap"
        );

        // The wall-time quota while holding a lock (the guest counts itself
        // in once it holds it).
        let (l3, holding) = (unique("spin"), unique("holding"));
        let program = json!([
            {"op": "acquire", "name": l3, "ttl_ms": 60_000, "wait_ms": 0},
            {"op": "incr", "key": holding},
            {"op": "spin"},
        ]);
        let started = Instant::now();
        let e = host
            .invoke(q.name(), program.to_string().as_bytes())
            .await
            .unwrap_err();
        let took = started.elapsed();
        assert!(e.to_string().contains("wall-time quota"), "{e}");
        // Ended by its 2 s quota, not hanging (60 s leaves room for a
        // loaded machine).
        assert!(
            took < Duration::from_secs(60),
            "the spin ended after {took:?}"
        );
        assert_eq!(
            get_i64(&mut conn, &kv_key("ender-quota", &holding)).await,
            1,
            "the quota struck before the lock was held"
        );
        assert!(
            !conn
                .exists::<_, bool>(lock_key("ender-quota", &l3))
                .await
                .unwrap(),
            "still locked after the wall-time quota"
        );

        // The wall-time quota while waiting for a lock someone else holds:
        // the waiter's registration is cleaned up and the holder keeps it.
        let l4 = unique("held");
        let k4 = lock_key("ender-quota", &l4);
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
            .invoke(q.name(), program.to_string().as_bytes())
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
        assert_eq!(ok(&r[3]), &json!(true), "{r:?}");
        assert_eq!(
            ok(&r[5]),
            &json!(false),
            "dropping the guard releases: {r:?}"
        );
        assert_eq!(
            ok(&r[6]),
            &json!(true),
            "a forgotten guard holds until the end: {r:?}"
        );
        assert!(
            !conn
                .exists::<_, bool>(lock_key("ender", &l5))
                .await
                .unwrap(),
            "a leaked guard is released when the invocation ends"
        );

        let mut keys: Vec<String> = conn.keys("rl:ender:lock:*").await.unwrap();
        keys.extend(
            conn.keys::<_, Vec<String>>("rl:ender-quota:lock:*")
                .await
                .unwrap(),
        );
        let keys: Vec<&String> = keys.iter().filter(|k| !k.ends_with(":fence")).collect();
        assert_eq!(keys, vec![&k4], "only the other owner's lock remains");
    })
    .await;
}

/// A waiting acquire gets the lock soon after a release — through this
/// host's wake-up, and through backoff when another process releases — and
/// gives up with `timeout` at its deadline otherwise.
///
/// The lock is released only once the waiter has been seen trying (its
/// first attempt is an `EVALSHA` in Redis's statistics) and 300 ms more
/// have passed, so "it did wait" never depends on how fast it started.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_acquire_wakes_on_release_and_gives_up_at_deadline() {
    with_timeout(async {
        let redis = RedisServer::start().await;
        let data = tempfile::tempdir().unwrap();
        let host = shared_host(&redis, data.path(), 40).await;
        host.load(spec("waiter", "lock-probe")).await.unwrap();
        let mut conn = redis.client().await;

        // Released through this host when the test says so.
        let name = unique("wake");
        let key = lock_key("waiter", &name);
        let go = unique("go");
        let holder = tokio::spawn({
            let (host, name, go) = (host.clone(), name.clone(), go.clone());
            async move {
                let r = probe(
                    &host,
                    "waiter",
                    json!([
                        {"op": "acquire", "name": name, "ttl_ms": 60_000, "wait_ms": 0},
                        {"op": "await_key", "key": go},
                        {"op": "release", "id": name},
                    ]),
                )
                .await;
                (r, Instant::now())
            }
        });
        until_locked(&mut conn, &key).await;
        let tries = redis.script_calls().await;
        let waiter = tokio::spawn({
            let (host, name) = (host.clone(), name.clone());
            async move {
                let r = probe(
                    &host,
                    "waiter",
                    json!([{"op": "acquire", "name": name, "ttl_ms": 60_000, "wait_ms": 30_000}]),
                )
                .await;
                (r, Instant::now())
            }
        });
        until_evalsha(&redis, "the waiter tries the held lock", tries + 1).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        release(&conn, "waiter", &go).await;
        let (r, got_it) = waiter.await.unwrap();
        let (held, released) = holder.await.unwrap();
        assert_eq!(ok(&held[2]), &json!("owner"), "{held:?}");
        let waited = ok(&r[0])["waited_ms"].as_u64().unwrap();
        assert!(waited >= 300, "it did wait: {waited} ms");
        // Soon: 1 s is ten times the longest backoff pause, and the wake-up
        // takes a millisecond.
        let late = got_it.saturating_duration_since(released);
        assert!(
            late < Duration::from_secs(1),
            "acquired {late:?} after the release"
        );

        // Held by another process (a plain client): released by deleting it.
        let name = unique("foreign");
        let key = lock_key("waiter", &name);
        hold_elsewhere(&mut conn, &key, 60_000).await;
        let tries = redis.script_calls().await;
        let waiter = tokio::spawn({
            let (host, name) = (host.clone(), name.clone());
            async move {
                let r = probe(
                    &host,
                    "waiter",
                    json!([{"op": "acquire", "name": name, "ttl_ms": 60_000, "wait_ms": 30_000}]),
                )
                .await;
                (r, Instant::now())
            }
        });
        until_evalsha(&redis, "the waiter tries the foreign lock", tries + 1).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
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
        assert_eq!(ok(&r[2]), &Value::Null, "{r:?}");
        // At its 300 ms deadline, not at the holder's minute (3 s leaves
        // room for a loaded machine).
        assert!(
            elapsed >= Duration::from_millis(300) && elapsed < Duration::from_secs(3),
            "gave up after {elapsed:?}"
        );
        let owner: String = conn.hget(&key, "owner").await.unwrap();
        assert_eq!(owner, "elsewhere", "the holder's lock is untouched");

        // Expiry of a lock whose holder vanished is noticed too: not before
        // it expires, and soon after (by the wall clock, which the guest's
        // `now` reads too).
        let name = unique("expiring");
        let before_hold = unix_micros();
        hold_elsewhere(&mut conn, &lock_key("waiter", &name), 400).await;
        let after_hold = unix_micros();
        let r = probe(
            &host,
            "waiter",
            json!([
                {"op": "acquire", "name": name, "ttl_ms": 1000, "wait_ms": 30_000},
                {"op": "now"},
            ]),
        )
        .await;
        let acquired = ok(&r[1]).as_i64().unwrap_or_else(|| panic!("{r:?}"));
        // The lock was written after `before_hold` and expired 400 ms after
        // its PEXPIRE (Redis counts whole milliseconds).
        let since_hold_ms = (acquired - before_hold) / 1000;
        assert!(
            since_hold_ms >= 399,
            "acquired {since_hold_ms} ms after the 400 ms lock was written: {r:?}"
        );
        // Soon after: the longest backoff pause is 100 ms (3 s leaves room
        // for a loaded machine; the wait would last 30 s).
        let after_expiry_ms = (acquired - after_hold) / 1000 - 400;
        assert!(
            after_expiry_ms < 3000,
            "acquired {after_expiry_ms} ms after the lock expired: {r:?}"
        );
    })
    .await;
}

/// Microseconds since the Unix epoch (what the probe's `now` answers).
fn unix_micros() -> i64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    i64::try_from(since.as_micros()).unwrap()
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
///
/// The renewed and the extended lock live 3 s: auto-renew refreshes every
/// second, so a renewal may run 2 s late on a loaded machine, and the
/// extend may come up to 3 s after the acquire; the 4 s sleep still
/// outlasts both TTLs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extend_and_auto_renew() {
    with_timeout(async {
        let redis = RedisServer::start().await;
        let data = tempfile::tempdir().unwrap();
        let host = shared_host(&redis, data.path(), 40).await;
        host.load(spec("renew", "lock-probe")).await.unwrap();
        let (a, b, c) = (unique("renewed"), unique("extended"), unique("lapsed"));
        let r = probe(
            &host,
            "renew",
            json!([
                {"op": "acquire", "name": a, "ttl_ms": 3000, "wait_ms": 0},
                {"op": "auto_renew", "id": a, "enabled": true},
                {"op": "acquire", "name": b, "ttl_ms": 3000, "wait_ms": 0},
                {"op": "extend", "id": b, "ttl_ms": 600_000},
                {"op": "acquire", "name": c, "ttl_ms": 200, "wait_ms": 0},
                {"op": "sleep", "ms": 4000},
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
        assert_eq!(ok(&r[3]), &json!("owner"), "{r:?}");
        assert_eq!(ok(&r[6]), &json!(true), "auto-renew kept it: {r:?}");
        assert_eq!(ok(&r[7]), &json!(true), "extend kept it: {r:?}");
        assert_eq!(ok(&r[8]), &json!(false), "without either it lapsed: {r:?}");
        assert_eq!(ok(&r[10]), &json!("owner"), "{r:?}");
        assert_eq!(ok(&r[11]), &json!("owner"), "{r:?}");
        assert_eq!(ok(&r[12]), &json!("not-owner"), "{r:?}");
        assert_eq!(
            err_kind(&r[14]),
            "invalid-argument",
            "auto-renew on 50 ms: {r:?}"
        );
        assert_eq!(err_kind(&r[15]), "invalid-argument", "ttl 0: {r:?}");
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
        let host = shared_host(&redis, data.path(), 40).await;
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
                {"op": "acquire", "name": name, "ttl_ms": 600_000, "wait_ms": 0},
                {"op": "holder", "name": name},
                {"op": "is_locked", "name": name},
                {"op": "acquire", "name": name, "ttl_ms": 5000, "wait_ms": 60_000, "id": "again"},
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
        // Not after its 60 s wait (30 s leaves room for a loaded machine).
        let took = started.elapsed();
        assert!(
            took < Duration::from_secs(30),
            "re-entrant acquire failed fast: the program took {took:?}: {r:?}"
        );
        assert_eq!(ok(&r[0]), &Value::Null, "{r:?}");
        assert_eq!(ok(&r[1]), &json!(false), "{r:?}");
        let token = ok(&r[2])["token"].as_u64().unwrap();
        let holder = ok(&r[3]);
        assert_eq!(holder["fencing_token"], json!(token), "{r:?}");
        let ttl = holder["ttl_ms"].as_u64().unwrap();
        assert!(ttl > 0 && ttl <= 600_000, "{ttl}");
        assert!(!holder["owner"].as_str().unwrap().is_empty(), "{r:?}");
        assert_eq!(ok(&r[4]), &json!(true), "{r:?}");
        assert_eq!(err_kind(&r[5]), "invalid-argument", "re-entrant: {r:?}");
        assert!(
            r[5]["err"]["message"]
                .as_str()
                .unwrap()
                .contains("re-entrant"),
            "{r:?}"
        );
        assert_eq!(err_kind(&r[6]), "invalid-argument", "re-entrant try: {r:?}");
        assert_eq!(ok(&r[7]), &json!("owner"), "{r:?}");
        assert_eq!(ok(&r[8]), &Value::Null, "{r:?}");
        assert_eq!(ok(&r[9]), &json!(false), "{r:?}");
        for v in &r[10..=12] {
            assert_eq!(err_kind(v), "invalid-argument", "{v}");
        }
        assert!(
            ok(&r[13])["token"].is_u64(),
            "the empty name is a name: {r:?}"
        );
        assert!(
            ok(&r[14])["token"].is_u64(),
            "braces are just characters: {r:?}"
        );

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
        assert!(ok(&r[0])["token"].is_u64(), "{r:?}");
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
        assert_eq!(ok(&r[0]), &json!(false), "{r:?}");
        assert_eq!(ok(&r[1]), &json!(1), "diag-b's counter starts at 1: {r:?}");
        assert_eq!(ok(&r[2]), &json!("owner"), "{r:?}");
        assert_eq!(r[3]["err"]["kind"], "bad-op", "the guard is gone: {r:?}");

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
            ],
            "the keys left in Redis"
        );
    })
    .await;
}

/// The example plugin: concurrent reservations on two hosts never oversell,
/// and a write with a stale fencing token is refused.
///
/// Its lock lives and is waited for a minute (the plugin's defaults, 5 s
/// and 2 s, are for production): 20 reservations queued on a loaded
/// machine never give up, and a lock the failed call left behind could
/// not expire before the test looks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reserve_inventory_fences_its_writes() {
    with_timeout(async {
        let redis = RedisServer::start().await;
        let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let hosts = [
            shared_host(&redis, d1.path(), 40).await,
            shared_host(&redis, d2.path(), 40).await,
        ];
        let mut s = spec("inventory", "reserve-inventory");
        s.settings.insert("lock-ttl-ms".into(), "60000".into());
        s.settings.insert("lock-wait-ms".into(), "60000".into());
        for h in &hosts {
            h.load(s.clone()).await.unwrap();
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
        assert_eq!(restocked["available"], json!(10), "{restocked}");

        let tasks: Vec<_> = (0..20)
            .map(|i| {
                let input = json!({"sku": sku, "reserve": 1, "order": format!("o-{i}")});
                tokio::spawn(call(hosts[i % 2].clone(), input))
            })
            .collect();
        let mut reserved = 0;
        let mut last_token = 0;
        for t in tasks {
            let reply = t
                .await
                .unwrap()
                .unwrap_or_else(|e| panic!("a reservation failed: {e}"));
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
        assert_eq!(record["available"], json!(0), "{record}");
        assert_eq!(record["fence"], json!(last_token), "{record}");

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
        assert_eq!(record, forged, "the refused write kept the record");
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
/// next backoff step: over 7 hand-offs the median time from release to
/// acquisition, by the host's wall clock as the guests read it, is far
/// below what backoff alone gives (a median around 40–70 ms).
///
/// Each holder releases only once the waiter has made 8 attempts (8
/// `EVALSHA`s in Redis's statistics): its backoff pauses have then reached
/// their 50–100 ms cap, however slowly it started.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_wakes_a_waiter_at_once() {
    with_timeout(async {
        let redis = RedisServer::start().await;
        let data = tempfile::tempdir().unwrap();
        let host = shared_host(&redis, data.path(), 40).await;
        host.load(spec("handoff", "lock-probe")).await.unwrap();
        let mut conn = redis.client().await;
        let mut latencies = Vec::new();
        for _ in 0..7 {
            let name = unique("handoff");
            let go = unique("go");
            let holder = tokio::spawn({
                let (host, name, go) = (host.clone(), name.clone(), go.clone());
                async move {
                    probe(
                        &host,
                        "handoff",
                        json!([
                            {"op": "acquire", "name": name, "ttl_ms": 60_000, "wait_ms": 0},
                            {"op": "await_key", "key": go},
                            {"op": "release", "id": name},
                            {"op": "now"},
                        ]),
                    )
                    .await
                }
            });
            until_locked(&mut conn, &lock_key("handoff", &name)).await;
            let tries = redis.script_calls().await;
            let waiter = tokio::spawn({
                let (host, name) = (host.clone(), name.clone());
                async move {
                    probe(
                        &host,
                        "handoff",
                        json!([
                            {"op": "acquire", "name": name, "ttl_ms": 60_000, "wait_ms": 60_000},
                            {"op": "now"},
                        ]),
                    )
                    .await
                }
            });
            until_evalsha(&redis, "the waiter's backoff reaches its cap", tries + 8).await;
            release(&conn, "handoff", &go).await;
            let waiter = waiter.await.unwrap();
            let holder = holder.await.unwrap();
            assert_eq!(ok(&holder[2]), &json!("owner"), "{holder:?}");
            let released = ok(&holder[3]).as_i64().unwrap();
            let acquired = ok(&waiter[1]).as_i64().unwrap();
            latencies.push(Duration::from_micros((acquired - released).max(0) as u64));
        }
        latencies.sort();
        eprintln!("hand-offs took {latencies:?}");
        assert!(
            latencies[3] < Duration::from_millis(30),
            "median hand-off took {:?}: {latencies:?}",
            latencies[3]
        );
    })
    .await;
}
