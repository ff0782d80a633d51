//! The `limiter` capability against real Redis: exactness under concurrency
//! across two hosts for every algorithm, GCRA and token-bucket conformance
//! over real time, the window-boundary double burst, concurrency slots under
//! contention and after traps, timeouts and a killed host, per-key overrides,
//! parameter errors, key layout, and the example plugin.
//!
//! "Two hosts" are two [`Host`] values (each with its own runtime and Redis
//! connection) on one Redis.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::AsyncCommands;
use redloom::config::Config;
use redloom::host::{Host, HostInvokeError, HostOptions};
use redloom::limiter::{Limits, Policies, Rate};
use redloom::namespace::PluginName;
use redloom::plugin::{InvokeError, PluginSpec};
use redloom_tests::{RedisServer, plugin, redloom_bin, unique};
use serde_json::{Value, json};

/// Every test body runs under this deadline.
const TEST_TIMEOUT: Duration = Duration::from_secs(240);

async fn with_timeout<F: std::future::Future<Output = ()>>(f: F) {
    tokio::time::timeout(TEST_TIMEOUT, f)
        .await
        .expect("test timed out");
}

const SEC: Duration = Duration::from_secs(1);

async fn start_host(redis: &RedisServer, data: &Path, max_instances: u32) -> Arc<Host> {
    let mut options = HostOptions::from_config(&Default::default());
    options.redis_target = Some(redis.target());
    options.data_dir = data.to_path_buf();
    options.runtime.max_instances = max_instances;
    Arc::new(Host::start(options).await.expect("host starts"))
}

/// `crate_name` loaded as `name` with `policies`, room for `concurrency`
/// invocations at once and a queue for 2000 more.
fn spec_of(
    name: &str,
    crate_name: &str,
    policies: &[(&str, Limits)],
    concurrency: u32,
) -> PluginSpec {
    let mut s = PluginSpec::from_path(&plugin(crate_name));
    s.name = PluginName::parse(name).unwrap();
    s.quotas.wall_time = Duration::from_secs(60);
    s.quotas.redis_ops = 1_000_000;
    s.quotas.redis_rate = 0;
    s.quotas.concurrency = concurrency;
    s.quotas.queue = 2_000;
    s.quotas.queue_wait = Duration::from_secs(120);
    let mut p = Policies::default();
    for (n, l) in policies {
        p.insert(n, *l).unwrap();
    }
    s.limiters = p;
    s
}

fn spec(name: &str, policies: &[(&str, Limits)]) -> PluginSpec {
    spec_of(name, "limiter-probe", policies, 32)
}

/// Runs a limiter-probe program and returns its per-operation results.
async fn probe(host: &Host, plugin: &str, ops: Value) -> Vec<Value> {
    let out = host
        .invoke(
            &PluginName::parse(plugin).unwrap(),
            ops.to_string().as_bytes(),
        )
        .await
        .unwrap_or_else(|e| panic!("limiter-probe {plugin} failed: {e}"));
    serde_json::from_slice(&out).expect("limiter-probe output is JSON")
}

fn ok(v: &Value) -> &Value {
    v.get("ok")
        .unwrap_or_else(|| panic!("expected ok, got {v}"))
}

/// The error of a failed operation: `(kind, message)`.
fn err(v: &Value) -> (&str, &str) {
    let kind = v["err"]["kind"]
        .as_str()
        .unwrap_or_else(|| panic!("expected err, got {v}"));
    (kind, v["err"]["message"].as_str().unwrap())
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a number: {v}"))
}

/// Redis `TIME` in microseconds.
async fn redis_now_us(conn: &mut redloom_tests::TestConnection) -> u64 {
    let (s, us): (u64, u64) = redis::cmd("TIME").query_async(conn).await.unwrap();
    s * 1_000_000 + us
}

fn gcra(count: u64, period: Duration, burst: u64) -> Limits {
    Limits::Gcra {
        rate: Rate::new(count, period),
        burst,
    }
}

fn bucket(capacity: u64, count: u64, period: Duration) -> Limits {
    Limits::TokenBucket {
        capacity,
        refill: Rate::new(count, period),
    }
}

fn sliding(limit: u64, window: Duration) -> Limits {
    Limits::SlidingWindow { limit, window }
}

fn fixed(limit: u64, window: Duration) -> Limits {
    Limits::FixedWindow { limit, window }
}

fn slots(slots: u64, lease: Duration) -> Limits {
    Limits::Concurrency { slots, lease }
}

const DAY: Duration = Duration::from_secs(86_400);

/// 1,000 invocations, 500 on each of two hosts, each make one check of
/// `limits` (a limit of 100 that does not refill during the test) at once:
/// exactly 100 are allowed, and the allowed ones saw `remaining` 99..=0,
/// each once (Redis ran the checks one at a time).
async fn exactly_the_limit_across_two_hosts(limits: Limits) {
    let redis = RedisServer::start().await;
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let hosts = [
        start_host(&redis, d1.path(), 64).await,
        start_host(&redis, d2.path(), 64).await,
    ];
    for h in &hosts {
        h.load(spec_of("exact", "limiter-probe", &[("p", limits)], 64))
            .await
            .unwrap();
    }
    let mut conn = redis.client().await;
    let window = match limits {
        Limits::FixedWindow { window, .. } => Some(window.as_micros() as u64),
        _ => None,
    };
    // A fixed window's boundary may fall inside the run (once a day here):
    // then the run proves nothing and is repeated with a fresh key.
    for _attempt in 0..2 {
        let key = unique("client");
        let program = json!([{"op": "check", "policy": "p", "key": key}]);
        let before = redis_now_us(&mut conn).await;
        let mut tasks = Vec::new();
        for i in 0..1000 {
            let host = hosts[i % 2].clone();
            let program = program.clone();
            tasks.push(tokio::spawn(
                async move { probe(&host, "exact", program).await },
            ));
        }
        let mut remaining_when_allowed = Vec::new();
        let mut denied = 0;
        for t in tasks {
            let r = t.await.unwrap();
            let d = ok(&r[0]);
            assert_eq!(u(&d["limit"]), 100, "{d}");
            if d["allowed"] == json!(true) {
                remaining_when_allowed.push(u(&d["remaining"]));
            } else {
                denied += 1;
                assert!(
                    u(&d["retry_after_ms"]) > 0,
                    "denied without retry-after: {d}"
                );
                assert_eq!(u(&d["remaining"]), 0, "{d}");
            }
        }
        let after = redis_now_us(&mut conn).await;
        if let Some(w) = window
            && before / w != after / w
        {
            continue;
        }
        assert_eq!(
            remaining_when_allowed.len(),
            100,
            "{} admitted {} of 1000 checks against a limit of 100",
            limits,
            remaining_when_allowed.len()
        );
        assert_eq!(denied, 900);
        remaining_when_allowed.sort();
        assert_eq!(remaining_when_allowed, (0..100).collect::<Vec<u64>>());
        return;
    }
    panic!("two runs in a row crossed a fixed-window boundary");
}

/// GCRA with a burst of 100 (refilling 100 a day): exactly 100 of 1,000.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcra_is_exact_across_two_hosts() {
    with_timeout(exactly_the_limit_across_two_hosts(gcra(100, DAY, 100))).await;
}

/// A token bucket of 100 (refilling 100 a day): exactly 100 of 1,000.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_bucket_is_exact_across_two_hosts() {
    with_timeout(exactly_the_limit_across_two_hosts(bucket(100, 100, DAY))).await;
}

/// A sliding window of 100 per hour: exactly 100 of 1,000.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sliding_window_is_exact_across_two_hosts() {
    with_timeout(exactly_the_limit_across_two_hosts(sliding(100, 3600 * SEC))).await;
}

/// A fixed window of 100 per day: exactly 100 of 1,000 within one window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixed_window_is_exact_across_two_hosts() {
    with_timeout(exactly_the_limit_across_two_hosts(fixed(100, DAY))).await;
}

/// 40 invocations, 20 on each of two hosts, each make 25 concurrency checks
/// (1,000 in all) against 100 slots and keep what they got until every
/// invocation has made its checks: exactly 100 slots are handed out, and
/// all of them are free again once the invocations end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_slots_are_exact_across_two_hosts() {
    with_timeout(async {
        let redis = RedisServer::start().await;
        let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let hosts = [
            start_host(&redis, d1.path(), 32).await,
            start_host(&redis, d2.path(), 32).await,
        ];
        let policies = [("c", slots(100, 60 * SEC))];
        for h in &hosts {
            h.load(spec("slots", &policies)).await.unwrap();
        }
        let (key, barrier) = (unique("tenant"), unique("barrier"));
        let program = json!([
            {"op": "burst", "policy": "c", "key": key, "n": 25},
            {"op": "incr", "key": barrier},
            {"op": "wait_for", "key": barrier, "value": 40, "timeout_ms": 50_000},
        ]);
        let mut tasks = Vec::new();
        for i in 0..40 {
            let host = hosts[i % 2].clone();
            let program = program.clone();
            tasks.push(tokio::spawn(
                async move { probe(&host, "slots", program).await },
            ));
        }
        let mut allowed = 0;
        for t in tasks {
            let r = t.await.unwrap();
            allowed += u(&ok(&r[0])["allowed"]);
            assert_eq!(u(ok(&r[2])), 40, "the barrier was not reached: {r:?}");
        }
        assert_eq!(allowed, 100, "slots handed out");
        let r = probe(
            &hosts[0],
            "slots",
            json!([{"op": "check", "policy": "c", "key": key, "cost": 0}]),
        )
        .await;
        assert_eq!(u(&ok(&r[0])["remaining"]), 100, "{r:?}");
    })
    .await;
}

/// 24 invocations on two hosts each try 8 times to hold one of 3 slots for
/// a few milliseconds, counting holders in a kv counter: the count never
/// exceeds 3, and some attempts are turned away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_never_exceeds_its_slots_under_contention() {
    with_timeout(async {
        let redis = RedisServer::start().await;
        let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let hosts = [
            start_host(&redis, d1.path(), 32).await,
            start_host(&redis, d2.path(), 32).await,
        ];
        let policies = [("c", slots(3, 30 * SEC))];
        for h in &hosts {
            h.load(spec("contend", &policies)).await.unwrap();
        }
        let (key, active) = (unique("job"), unique("active"));
        let hold = json!({"op": "hold", "policy": "c", "key": key, "hold_ms": 3, "active": active});
        let program = Value::Array(vec![hold; 8]);
        let mut tasks = Vec::new();
        for i in 0..24 {
            let host = hosts[i % 2].clone();
            let program = program.clone();
            tasks.push(tokio::spawn(async move {
                probe(&host, "contend", program).await
            }));
        }
        let (mut held, mut turned_away, mut most) = (0, 0, 0);
        for t in tasks {
            for r in t.await.unwrap() {
                let r = ok(&r);
                if r["held"] == json!(true) {
                    held += 1;
                    most = most.max(u(&r["active"]));
                } else {
                    turned_away += 1;
                }
            }
        }
        assert!(most <= 3, "{most} holders at once with 3 slots");
        assert!(
            held >= 3 && turned_away > 0,
            "held {held}, turned away {turned_away}"
        );
        let mut conn = redis.client().await;
        let now: i64 = conn.get(format!("rl:contend:kv:{active}")).await.unwrap();
        assert_eq!(now, 0);
    })
    .await;
}

/// The rows of a `pace` run: `(t_ms, allowed, retry_after_ms)`.
fn rows(r: &Value) -> Vec<(f64, bool, u64)> {
    ok(r)
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            (
                u(&row[0]) as f64 / 1000.0,
                row[1].as_bool().unwrap(),
                u(&row[3]),
            )
        })
        .collect()
}

/// Checks a `pace` run of a policy that admits `burst` at once and one
/// unit every `interval_ms` after that: the first `burst` checks are
/// allowed, the allowed count is `burst + elapsed / interval` give or take
/// one, and every retry-after is within one interval of when the next check
/// was actually allowed.
fn conforms(rows: &[(f64, bool, u64)], burst: usize, interval_ms: f64) {
    assert!(rows.len() > 100, "too few checks: {}", rows.len());
    assert!(
        rows[..burst].iter().all(|r| r.1),
        "the burst was not admitted: {:?}",
        &rows[..burst + 1]
    );
    let elapsed = rows.last().unwrap().0 - rows[0].0;
    let expected = burst as f64 + (elapsed / interval_ms).floor();
    let allowed = rows.iter().filter(|r| r.1).count() as f64;
    assert!(
        (allowed - expected).abs() <= 1.0,
        "{allowed} allowed in {elapsed:.0} ms; expected {expected} ± 1"
    );
    let mut checked = 0;
    for (i, &(t, allowed, retry)) in rows.iter().enumerate() {
        if allowed {
            continue;
        }
        assert!(
            retry > 0 && retry as f64 <= interval_ms + 1.0,
            "denied at {t:.1} ms with retry-after {retry} ms"
        );
        if let Some(next) = rows[i..].iter().find(|r| r.1) {
            let waited = next.0 - t;
            assert!(
                (waited - retry as f64).abs() <= interval_ms,
                "denied at {t:.1} ms with retry-after {retry} ms, next allowed after {waited:.1} ms"
            );
            checked += 1;
        }
    }
    assert!(
        checked > 10,
        "too few denials to check retry-after: {checked}"
    );
}

/// GCRA at 20/s with a burst of 5, checked every ~2 ms for 2 s: 5 + 40 ± 1
/// allowed, and retry-after says when the next check gets through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcra_conforms_over_real_time() {
    with_timeout(async {
        let redis = RedisServer::start().await;
        let data = tempfile::tempdir().unwrap();
        let host = start_host(&redis, data.path(), 8).await;
        host.load(spec("pace", &[("g", gcra(20, SEC, 5))]))
            .await
            .unwrap();
        let key = unique("k");
        let r = probe(
            &host,
            "pace",
            json!([{"op": "pace", "policy": "g", "key": key, "duration_ms": 2000, "interval_ms": 2}]),
        )
        .await;
        conforms(&rows(&r[0]), 5, 50.0);
    })
    .await;
}

/// A token bucket of 5 refilled at 20/s behaves the same; one refilled at
/// 10 per 3 s refills fractionally (a third of a token every 100 ms).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_bucket_conforms_over_real_time() {
    with_timeout(async {
        let redis = RedisServer::start().await;
        let data = tempfile::tempdir().unwrap();
        let host = start_host(&redis, data.path(), 8).await;
        let policies = [("t", bucket(5, 20, SEC)), ("slow", bucket(1, 10, 3 * SEC))];
        host.load(spec("pace", &policies)).await.unwrap();
        let key = unique("k");
        let r = probe(
            &host,
            "pace",
            json!([{"op": "pace", "policy": "t", "key": key, "duration_ms": 2000, "interval_ms": 2}]),
        )
        .await;
        conforms(&rows(&r[0]), 5, 50.0);

        // One token every 300 ms: half-way through, half a token is there
        // (still denied, retry-after about 150 ms); a little later, one.
        let key = unique("k");
        let r = probe(
            &host,
            "pace",
            json!([
                {"op": "check", "policy": "slow", "key": key},
                {"op": "check", "policy": "slow", "key": key, "cost": 0},
                {"op": "sleep", "ms": 150},
                {"op": "check", "policy": "slow", "key": key, "cost": 0},
                {"op": "sleep", "ms": 200},
                {"op": "check", "policy": "slow", "key": key, "cost": 0},
            ]),
        )
        .await;
        assert_eq!(ok(&r[0])["allowed"], json!(true));
        let first = ok(&r[1]);
        assert_eq!(first["allowed"], json!(false), "{first}");
        assert!((280..=300).contains(&u(&first["retry_after_ms"])), "{first}");
        let half = ok(&r[3]);
        assert_eq!(half["allowed"], json!(false), "{half}");
        assert!((100..=150).contains(&u(&half["retry_after_ms"])), "{half}");
        let full = ok(&r[5]);
        assert_eq!(full["allowed"], json!(true), "{full}");
        assert_eq!(u(&full["remaining"]), 1, "{full}");
    })
    .await;
}

/// Ten requests just before a window boundary and ten just after: a fixed
/// window (10 per 2 s) admits all twenty — a double burst within half a
/// second — while a sliding window of the same limit admits none of the
/// second ten.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sliding_window_refuses_the_double_burst_fixed_window_admits() {
    with_timeout(async {
        let redis = RedisServer::start().await;
        let data = tempfile::tempdir().unwrap();
        let host = start_host(&redis, data.path(), 8).await;
        let window = 2 * SEC;
        let policies = [("s", sliding(10, window)), ("f", fixed(10, window))];
        host.load(spec("edges", &policies)).await.unwrap();
        let mut conn = redis.client().await;
        let w = window.as_micros() as u64;
        for _attempt in 0..3 {
            let key = unique("k");
            let burst = json!([
                {"op": "burst", "policy": "s", "key": key, "n": 10},
                {"op": "burst", "policy": "f", "key": key, "n": 10},
            ]);
            // 400 ms before the next boundary that is at least 700 ms away.
            let now = redis_now_us(&mut conn).await;
            let boundary = (now + 700_000).div_ceil(w) * w;
            tokio::time::sleep(Duration::from_micros(boundary - 400_000 - now)).await;
            let r1 = probe(&host, "edges", burst.clone()).await;
            let done = redis_now_us(&mut conn).await;
            if done >= boundary {
                continue; // too slow to finish before the boundary; try again
            }
            let now = redis_now_us(&mut conn).await;
            tokio::time::sleep(Duration::from_micros(boundary + 100_000 - now)).await;
            let r2 = probe(&host, "edges", burst).await;
            let second_done = redis_now_us(&mut conn).await;
            assert!(
                second_done - (boundary - 400_000) < w,
                "the bursts were a window apart"
            );

            assert_eq!(u(&ok(&r1[0])["allowed"]), 10, "sliding, first burst");
            assert_eq!(u(&ok(&r1[1])["allowed"]), 10, "fixed, first burst");
            assert_eq!(
                u(&ok(&r2[1])["allowed"]),
                10,
                "fixed window admits the double burst"
            );
            assert_eq!(
                u(&ok(&r2[0])["allowed"]),
                0,
                "sliding window refuses the double burst"
            );
            let last = &ok(&r2[0])["last"];
            let retry = u(&last["retry_after_ms"]);
            assert!(
                (1200..=1700).contains(&retry),
                "sliding retry-after {retry}: {last}"
            );
            return;
        }
        panic!("could not finish a burst before a window boundary in three tries");
    })
    .await;
}

/// For every algorithm: a peek takes nothing; a cost above 1 takes that
/// many units (all or nothing); the check that takes the last unit says
/// allowed with 0 remaining, and only the next one says denied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn costs_peeks_and_the_last_unit() {
    with_timeout(async {
        let redis = RedisServer::start().await;
        let data = tempfile::tempdir().unwrap();
        let host = start_host(&redis, data.path(), 8).await;
        let policies = [
            ("gcra", gcra(3, DAY, 3)),
            ("tb", bucket(3, 3, DAY)),
            ("sw", sliding(3, 3600 * SEC)),
            ("fw", fixed(3, DAY)),
            ("cc", slots(3, 60 * SEC)),
        ];
        host.load(spec("costs", &policies)).await.unwrap();
        for (policy, _) in policies {
            let key = unique("k");
            let c = |cost: u64| json!({"op": "check", "policy": policy, "key": key, "cost": cost});
            let r = probe(
                &host,
                "costs",
                json!([c(0), c(2), c(2), c(1), c(1), c(0), c(0)]),
            )
            .await;
            let d: Vec<(bool, u64)> = r
                .iter()
                .map(|r| (ok(r)["allowed"] == json!(true), u(&ok(r)["remaining"])))
                .collect();
            assert_eq!(
                d,
                [
                    (true, 3),  // peek: nothing taken
                    (true, 1),  // cost 2
                    (false, 1), // cost 2 does not fit; nothing taken
                    (true, 0),  // the last unit: allowed, 0 remaining
                    (false, 0), // denied
                    (false, 0), // a peek now says no
                    (false, 0),
                ],
                "{policy}: {r:?}"
            );
            let denied = ok(&r[4]);
            assert!(u(&denied["retry_after_ms"]) > 0, "{policy}: {denied}");
            assert_eq!(u(&denied["limit"]), 3, "{policy}: {denied}");
        }
    })
    .await;
}

/// Concurrency slots come back as soon as the invocation holding them ends,
/// however it ends — a trap, the wall-time quota, returning with a leaked
/// lease — long before their lease; a dropped lease frees its slot at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slots_come_back_when_the_invocation_ends() {
    with_timeout(async {
        let redis = RedisServer::start().await;
        let data = tempfile::tempdir().unwrap();
        let host = start_host(&redis, data.path(), 8).await;
        let mut s = spec("holder", &[("c", slots(1, 60 * SEC))]);
        s.quotas.wall_time = Duration::from_millis(500);
        host.load(s).await.unwrap();
        let peek = |key: &str| json!([{"op": "check", "policy": "c", "key": key, "cost": 0}]);

        let key = unique("trap");
        let e = host
            .invoke(
                &PluginName::parse("holder").unwrap(),
                json!([
                    {"op": "acquire", "policy": "c", "key": key, "slots": 1, "id": "a"},
                    {"op": "panic"},
                ])
                .to_string()
                .as_bytes(),
            )
            .await
            .unwrap_err();
        assert!(
            matches!(e, HostInvokeError::Invoke(InvokeError::Trap { .. })),
            "{e}"
        );
        let r = probe(&host, "holder", peek(&key)).await;
        assert_eq!(
            ok(&r[0])["allowed"],
            json!(true),
            "slot still held after a trap: {r:?}"
        );

        let key = unique("spin");
        let e = host
            .invoke(
                &PluginName::parse("holder").unwrap(),
                json!([{"op": "check", "policy": "c", "key": key}, {"op": "spin"}])
                    .to_string()
                    .as_bytes(),
            )
            .await
            .unwrap_err();
        assert!(e.to_string().contains("wall-time quota"), "{e}");
        let r = probe(&host, "holder", peek(&key)).await;
        assert_eq!(
            ok(&r[0])["allowed"],
            json!(true),
            "slot still held after a timeout: {r:?}"
        );

        let key = unique("leak");
        let r = probe(
            &host,
            "holder",
            json!([
                {"op": "acquire", "policy": "c", "key": key, "slots": 1, "id": "a"},
                {"op": "forget", "id": "a"},
                {"op": "check", "policy": "c", "key": key, "cost": 0},
            ]),
        )
        .await;
        assert_eq!(ok(&r[0])["held"], json!(true));
        assert_eq!(
            ok(&r[2])["allowed"],
            json!(false),
            "a forgotten lease holds until the end"
        );
        let r = probe(&host, "holder", peek(&key)).await;
        assert_eq!(
            ok(&r[0])["allowed"],
            json!(true),
            "a leaked lease outlived its invocation"
        );

        let key = unique("drop");
        let r = probe(
            &host,
            "holder",
            json!([
                {"op": "acquire", "policy": "c", "key": key, "slots": 1, "id": "a"},
                {"op": "acquire", "policy": "c", "key": key, "slots": 1, "id": "b"},
                {"op": "drop", "id": "a"},
                {"op": "acquire", "policy": "c", "key": key, "slots": 1, "id": "b"},
                {"op": "release", "id": "b"},
                {"op": "release", "id": "b"},
            ]),
        )
        .await;
        assert_eq!(
            ok(&r[1])["held"],
            json!(false),
            "a second slot of one: {r:?}"
        );
        assert_eq!(
            ok(&r[3])["held"],
            json!(true),
            "dropping a lease frees its slot: {r:?}"
        );
        assert_eq!(ok(&r[4]), &json!(true));
        assert_eq!(err(&r[5]).0, "bad-op", "{r:?}");

        let mut conn = redis.client().await;
        let keys: Vec<String> = conn.keys("rl:holder:limiter:*").await.unwrap();
        assert!(keys.is_empty(), "slots left behind: {keys:?}");
    })
    .await;
}

/// A host killed (SIGKILL) while holding a slot cannot release it: the slot
/// stays taken until its lease (1.5 s) runs out, then comes back by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_hosts_slot_comes_back_after_the_lease() {
    with_timeout(async {
        let redis = RedisServer::start().await;
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("redloom.toml"),
            format!(
                "{}\n[plugins.holder]\nwasm = {:?}\n\n\
                 [plugins.holder.limiters.c]\nalgorithm = \"concurrency\"\nslots = 1\nlease = \"1500ms\"\n",
                redis.config_table(),
                plugin("limiter-probe").display().to_string()
            ),
        )
        .unwrap();
        let key = unique("crash");
        let program = json!([
            {"op": "acquire", "policy": "c", "key": key, "slots": 1, "id": "a"},
            {"op": "sleep", "ms": 60_000},
        ]);
        let mut child = std::process::Command::new(redloom_bin())
            .current_dir(dir.path())
            .env_remove("REDIS_URL")
            .env_remove("REDLOOM_CONFIG")
            .args(["invoke", "holder", "--input", &program.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();

        let data = tempfile::tempdir().unwrap();
        let host = start_host(&redis, data.path(), 8).await;
        host.load(spec("holder", &[("c", slots(1, Duration::from_millis(1500)))]))
            .await
            .unwrap();
        let peek = json!([{"op": "check", "policy": "c", "key": key, "cost": 0}]);
        let started = Instant::now();
        loop {
            let r = probe(&host, "holder", peek.clone()).await;
            if ok(&r[0])["allowed"] == json!(false) {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(60), "the child never took the slot");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        child.kill().unwrap();
        child.wait().unwrap();
        let killed = Instant::now();

        let r = probe(&host, "holder", peek.clone()).await;
        let d = ok(&r[0]);
        assert_eq!(d["allowed"], json!(false), "the slot came back at once: {d}");
        let retry = u(&d["retry_after_ms"]);
        assert!(retry > 0 && retry <= 1500, "{d}");
        loop {
            let r = probe(&host, "holder", peek.clone()).await;
            if ok(&r[0])["allowed"] == json!(true) {
                break;
            }
            assert!(
                killed.elapsed() < Duration::from_millis(1500 + 1000),
                "the slot did not come back after its lease"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // It came back when the lease ran out, not earlier.
        assert!(
            killed.elapsed() + Duration::from_millis(50) >= Duration::from_millis(retry),
            "back after {:?}, retry-after said {retry} ms",
            killed.elapsed()
        );
    })
    .await;
}

/// An override set through one host applies to the next check on the
/// other, for that key only, and the key keeps the units it used (even when
/// the override also changes the rate); it lives at the documented Redis
/// key, a hand-written one works too, and clearing it restores the policy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_key_overrides_apply_at_once_on_every_host() {
    with_timeout(async {
        let redis = RedisServer::start().await;
        let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let hosts = [
            start_host(&redis, d1.path(), 8).await,
            start_host(&redis, d2.path(), 8).await,
        ];
        let policies = [
            ("api", gcra(3, DAY, 3)),
            ("uploads", bucket(3, 3, DAY)),
            ("jobs", slots(1, 60 * SEC)),
        ];
        for h in &hosts {
            h.load(spec("tenants", &policies)).await.unwrap();
        }
        let (vip, other) = (unique("vip"), unique("other"));
        let check = |key: &str| json!({"op": "check", "policy": "api", "key": key});
        let r = probe(
            &hosts[0],
            "tenants",
            json!([check(&vip), check(&vip), check(&vip), check(&vip)]),
        )
        .await;
        assert_eq!(ok(&r[3])["allowed"], json!(false));

        let bigger = json!({"algorithm": "gcra", "count": 6, "period_ms": 86_400_000, "burst": 6});
        let r = probe(
            &hosts[1],
            "tenants",
            json!([{"op": "set_override", "policy": "api", "key": vip, "limits": bigger}]),
        )
        .await;
        assert_eq!(ok(&r[0]), &Value::Null);
        let r = probe(
            &hosts[0],
            "tenants",
            json!([
                check(&vip), check(&vip), check(&vip), check(&vip),
                check(&other), check(&other), check(&other), check(&other),
                {"op": "get_override", "policy": "api", "key": vip},
                {"op": "get_override", "policy": "api", "key": other},
            ]),
        )
        .await;
        let allowed: Vec<bool> = r[..8]
            .iter()
            .map(|r| ok(r)["allowed"] == json!(true))
            .collect();
        assert_eq!(
            allowed,
            [true, true, true, false, true, true, true, false],
            "{r:?}"
        );
        assert_eq!(u(&ok(&r[0])["limit"]), 6);
        assert_eq!(u(&ok(&r[4])["limit"]), 3);
        assert_eq!(ok(&r[8]), &bigger);
        assert_eq!(ok(&r[9]), &Value::Null);

        // Where overrides live, and that operators may write them by hand.
        let mut conn = redis.client().await;
        let at = format!("rl:tenants:limiter:{{tenants/api/{vip}}}:override");
        let stored: std::collections::HashMap<String, String> = conn.hgetall(&at).await.unwrap();
        assert_eq!(stored["algorithm"], "gcra");
        assert_eq!(stored["limit"], "6");
        assert_eq!(stored["period-us"], "86400000000");
        assert_eq!(stored["burst"], "6");
        let _: () = conn.hset(&at, "burst", 8).await.unwrap();
        let r = probe(
            &hosts[1],
            "tenants",
            json!([check(&vip), check(&vip), check(&vip)]),
        )
        .await;
        let allowed: Vec<bool> = r.iter().map(|r| ok(r)["allowed"] == json!(true)).collect();
        assert_eq!(allowed, [true, true, false], "{r:?}");
        let _: () = conn.hset(&at, "burst", "many").await.unwrap();
        let r = probe(&hosts[1], "tenants", json!([check(&vip)])).await;
        assert!(err(&r[0]).1.contains("malformed"), "{r:?}");

        let r = probe(
            &hosts[1],
            "tenants",
            json!([
                {"op": "clear_override", "policy": "api", "key": vip},
                {"op": "clear_override", "policy": "api", "key": vip},
                check(&vip),
            ]),
        )
        .await;
        assert_eq!(ok(&r[0]), &json!(true));
        assert_eq!(ok(&r[1]), &json!(false));
        assert_eq!(ok(&r[2])["allowed"], json!(false));
        assert_eq!(u(&ok(&r[2])["limit"]), 3);

        // A token bucket keeps the tokens a key has used: 3 of 3 used, then a
        // capacity of 5 leaves 2.
        let tenant = unique("bucket");
        let tb = json!({"op": "check", "policy": "uploads", "key": tenant});
        let r = probe(
            &hosts[0],
            "tenants",
            json!([
                tb, tb, tb, tb,
                {"op": "set_override", "policy": "uploads", "key": tenant,
                 "limits": {"algorithm": "token-bucket", "count": 3, "period_ms": 86_400_000, "capacity": 5}},
                tb, tb, tb,
            ]),
        )
        .await;
        let allowed: Vec<bool> = [0, 1, 2, 3, 5, 6, 7]
            .iter()
            .map(|&i| ok(&r[i])["allowed"] == json!(true))
            .collect();
        assert_eq!(allowed, [true, true, true, false, true, true, false], "{r:?}");
        assert_eq!(u(&ok(&r[6])["limit"]), 5);

        // Concurrency overrides: two slots for one key.
        let job = unique("job");
        let r = probe(
            &hosts[0],
            "tenants",
            json!([
                {"op": "set_override", "policy": "jobs", "key": job,
                 "limits": {"algorithm": "concurrency", "slots": 2, "lease_ms": 60_000}},
                {"op": "acquire", "policy": "jobs", "key": job, "slots": 1, "id": "a"},
                {"op": "acquire", "policy": "jobs", "key": job, "slots": 1, "id": "b"},
                {"op": "acquire", "policy": "jobs", "key": job, "slots": 1, "id": "c"},
                {"op": "reset", "policy": "jobs", "key": job},
                {"op": "acquire", "policy": "jobs", "key": job, "slots": 2, "id": "c"},
            ]),
        )
        .await;
        let held: Vec<bool> = [1, 2, 3, 5]
            .iter()
            .map(|&i| ok(&r[i])["held"] == json!(true))
            .collect();
        assert_eq!(held, [true, true, false, true], "{r:?}");
        assert_eq!(ok(&r[4]), &json!(true));
    })
    .await;
}

/// Bad parameters are refused with messages that say what is wrong: in
/// overrides (`invalid-argument`) and in the manifest (the key named).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_parameters_give_clear_errors() {
    with_timeout(async {
        let redis = RedisServer::start().await;
        let data = tempfile::tempdir().unwrap();
        let host = start_host(&redis, data.path(), 8).await;
        let policies = [("api", gcra(10, SEC, 5)), ("win", sliding(10, SEC)), ("jobs", slots(2, SEC))];
        host.load(spec("strict", &policies)).await.unwrap();
        let set = |policy: &str, limits: Value| {
            json!({"op": "set_override", "policy": policy, "key": "k", "limits": limits})
        };
        let cases = [
            (set("api", json!({"algorithm": "gcra", "count": 0, "period_ms": 1000, "burst": 5})), "rate"),
            (set("api", json!({"algorithm": "gcra", "count": 10, "period_ms": 1000, "burst": 0})), "burst: must be at least 1"),
            (set("api", json!({"algorithm": "gcra", "count": 10, "period_ms": 0, "burst": 5})), "shorter than the minimum of 1ms"),
            (set("api", json!({"algorithm": "gcra", "count": 10, "period_ms": 400 * 86_400_000u64, "burst": 5})), "365 days"),
            (set("api", json!({"algorithm": "gcra", "count": 10_000_000, "period_ms": 1000, "burst": 5})), "faster than the maximum"),
            (set("api", json!({"algorithm": "token-bucket", "count": 10, "period_ms": 1000, "capacity": 5})), "must be gcra too"),
            (set("win", json!({"algorithm": "sliding-window", "limit": 20_000, "window_ms": 1000})), "at most 10000"),
            (set("jobs", json!({"algorithm": "concurrency", "slots": 0, "lease_ms": 1000})), "slots: must be at least 1"),
            (set("jobs", json!({"algorithm": "concurrency", "slots": 1, "lease_ms": 7_200_000})), "lease"),
            (set("nope", json!({"algorithm": "gcra", "count": 1, "period_ms": 1000, "burst": 1})), "no limiter policy `nope`"),
            (json!({"op": "check", "policy": "nope", "key": "k"}), "the manifest defines `api`, `jobs`, `win`"),
            (json!({"op": "check", "policy": "api", "key": "k", "cost": 6}), "cost 6 is over the limit of 5"),
            (json!({"op": "check", "policy": "jobs", "key": "k", "cost": 3}), "cost 3 is over the limit of 2"),
            (json!({"op": "check", "policy": "api", "key": "x".repeat(1025)}), "1025 bytes"),
            (json!({"op": "acquire", "policy": "api", "key": "k", "slots": 1, "id": "a"}), "only concurrency policies"),
        ];
        let ops: Vec<Value> = cases.iter().map(|(op, _)| op.clone()).collect();
        let r = probe(&host, "strict", Value::Array(ops)).await;
        for ((op, want), got) in cases.iter().zip(&r) {
            let (kind, message) = err(got);
            assert_eq!(kind, "invalid-argument", "{op}: {got}");
            assert!(message.contains(want), "{op}: {message:?} does not say {want:?}");
        }

        // The manifest: one line naming the file and the key.
        let file = Path::new("/srv/redloom.toml");
        let parse = |limiters: &str| {
            Config::parse(&format!("[plugins.api]\nwasm = \"a.wasm\"\n{limiters}"), file)
                .unwrap_err()
                .to_string()
        };
        let e = parse("[plugins.api.limiters.login]\nalgorithm = \"fixed-window\"\nrate = \"0/min\"\n");
        assert!(e.starts_with("/srv/redloom.toml: plugins.api.limiters.login.rate: "), "{e}");
        assert!(e.contains("at least 1"), "{e}");
        let e = parse("[plugins.api.limiters.api]\nalgorithm = \"gcra\"\nrate = \"100/min\"\nburst = 0\n");
        assert!(e.contains("plugins.api.limiters.api.burst: must be at least 1"), "{e}");
        let e = parse("[plugins.api.limiters.api]\nalgorithm = \"gcra\"\nrate = \"100 per minute\"\nburst = 1\n");
        assert!(e.contains(":5: plugins.api.limiters.api.rate: expected a rate such as"), "{e}");
        let e = parse("[plugins.api.limiters.api]\nalgorithm = \"leaky\"\n");
        assert!(e.contains("plugins.api.limiters.api.algorithm: unknown variant `leaky`"), "{e}");
        let e = parse("[plugins.api.limiters.api]\nalgorithm = \"gcra\"\nrate = \"1/s\"\nburts = 3\n");
        assert!(e.contains("plugins.api.limiters.api.burts: unknown field `burts`"), "{e}");
        let e = parse("[plugins.api.limiters.api]\nalgorithm = \"concurrency\"\nslots = 2\n");
        assert!(e.contains("plugins.api.limiters.api.lease: a concurrency policy needs `lease`"), "{e}");
        let e = parse("[plugins.api.limiters.api]\nalgorithm = \"gcra\"\nrate = \"1/100y\"\nburst = 1\n");
        assert!(e.contains("plugins.api.limiters.api.rate: ") && e.contains("365 days"), "{e}");
    })
    .await;
}

/// The hash tag of a key, as Redis Cluster computes it.
fn hash_tag(key: &str) -> Option<&str> {
    let open = key.find('{')?;
    let close = key[open + 1..].find('}')? + open + 1;
    (close > open + 1).then(|| &key[open + 1..close])
}

/// Every key a limited key uses — each algorithm's state and the override —
/// carries one hash tag naming the plugin, policy and key (so one check
/// touches one Cluster slot), also for keys with braces in them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_limited_key_lives_in_one_slot() {
    with_timeout(async {
        let redis = RedisServer::start().await;
        let data = tempfile::tempdir().unwrap();
        let host = start_host(&redis, data.path(), 8).await;
        let policies = [
            ("gcra", gcra(3, DAY, 3)),
            ("tb", bucket(3, 3, DAY)),
            ("sw", sliding(3, 3600 * SEC)),
            ("fw", fixed(3, DAY)),
            ("cc", slots(3, 60 * SEC)),
        ];
        host.load(spec("tags", &policies)).await.unwrap();
        let mut conn = redis.client().await;
        let codes = ["gcra", "tb", "sw", "fw", "cc"].map(|c| (c, c));
        for key in [unique("plain"), format!("{}}}{{x}}", unique("brace"))] {
            let mut ops = Vec::new();
            for (policy, limits) in &policies {
                let l = match limits {
                    Limits::Gcra { .. } => json!({"algorithm": "gcra", "count": 4, "period_ms": 1000, "burst": 4}),
                    Limits::TokenBucket { .. } => json!({"algorithm": "token-bucket", "count": 4, "period_ms": 1000, "capacity": 4}),
                    Limits::SlidingWindow { .. } => json!({"algorithm": "sliding-window", "limit": 4, "window_ms": 1000}),
                    Limits::FixedWindow { .. } => json!({"algorithm": "fixed-window", "limit": 4, "window_ms": 1000}),
                    Limits::Concurrency { .. } => json!({"algorithm": "concurrency", "slots": 4, "lease_ms": 60_000}),
                };
                ops.push(json!({"op": "set_override", "policy": policy, "key": key, "limits": l}));
                ops.push(json!({"op": "check", "policy": policy, "key": key}));
            }
            // Hold the concurrency slot while the test looks at Redis.
            ops.push(json!({"op": "sleep", "ms": 2000}));
            let task = {
                let host = host.clone();
                tokio::spawn(async move { probe(&host, "tags", Value::Array(ops)).await })
            };
            let held = format!("rl:tags:limiter:{{tags/cc/{key}}}:cc");
            let started = Instant::now();
            while !conn.exists::<_, bool>(&held).await.unwrap() {
                assert!(started.elapsed() < Duration::from_secs(30), "{held} never appeared");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let all: Vec<String> = conn.keys("rl:tags:limiter:*").await.unwrap();
            let visible = key.split('}').next().unwrap();
            for (policy, code) in codes {
                let tag = format!("tags/{policy}/{visible}");
                let mut mine: Vec<&str> = all
                    .iter()
                    .filter(|k| hash_tag(k) == Some(tag.as_str()))
                    .map(String::as_str)
                    .collect();
                mine.sort();
                let mut want = [
                    format!("rl:tags:limiter:{{tags/{policy}/{key}}}:{code}"),
                    format!("rl:tags:limiter:{{tags/{policy}/{key}}}:override"),
                ];
                want.sort();
                assert_eq!(mine, want, "{policy}: the keys of one limited key, in one slot");
            }
            let r = task.await.unwrap();
            assert!(r.iter().all(|r| r.get("ok").is_some()), "{r:?}");
        }
        let all: Vec<String> = conn.keys("rl:tags:limiter:*").await.unwrap();
        assert!(all.iter().all(|k| hash_tag(k).is_some_and(|t| t.starts_with("tags/"))), "{all:?}");
    })
    .await;
}

/// The example plugin: 200s carrying `RateLimit-*` headers until the
/// client's burst is spent, then 429 with `Retry-After`; other clients are
/// unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ip_rate_limit_example_answers_429_with_headers() {
    with_timeout(async {
        let redis = RedisServer::start().await;
        let data = tempfile::tempdir().unwrap();
        let host = start_host(&redis, data.path(), 8).await;
        let s = spec_of(
            "ip-rate-limit",
            "ip-rate-limit",
            &[("per-ip", gcra(1, 3600 * SEC, 3))],
            8,
        );
        host.load(s).await.unwrap();
        let name = PluginName::parse("ip-rate-limit").unwrap();
        let call = |client: String| {
            let host = host.clone();
            let name = name.clone();
            async move {
                let input = json!({"client": client, "path": "/search"}).to_string();
                let out = host.invoke(&name, input.as_bytes()).await.unwrap();
                serde_json::from_slice::<Value>(&out).unwrap()
            }
        };
        let ip = unique("203.0.113.7");
        for n in (0..3).rev() {
            let r = call(ip.clone()).await;
            assert_eq!(r["status"], 200, "{r}");
            assert_eq!(r["headers"]["RateLimit-Limit"], "3", "{r}");
            assert_eq!(r["headers"]["RateLimit-Remaining"], n.to_string(), "{r}");
            assert!(r["headers"].get("Retry-After").is_none(), "{r}");
            assert!(r["body"].as_str().unwrap().contains("/search"), "{r}");
        }
        let r = call(ip.clone()).await;
        assert_eq!(r["status"], 429, "{r}");
        assert_eq!(r["headers"]["RateLimit-Remaining"], "0", "{r}");
        let retry: u64 = r["headers"]["Retry-After"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((3590..=3600).contains(&retry), "{r}");
        assert_eq!(r["decision"]["allowed"], false);
        let r = call(unique("198.51.100.1")).await;
        assert_eq!(r["status"], 200, "{r}");
    })
    .await;
}
