//! The `limiter` capability against real Redis: exactness under concurrency
//! across two hosts for every algorithm, GCRA and token-bucket conformance
//! over real time, the window-boundary double burst, concurrency slots under
//! contention and after traps, timeouts and a killed host, per-key overrides,
//! parameter errors, key layout, and the example plugin.
//!
//! "Two hosts" are two [`Host`] values (each with its own runtime and Redis
//! connection) on one Redis.

use std::path::Path;
use std::time::{Duration, Instant};

use redis::AsyncCommands;
use redloom::config::Config;
use redloom::host::HostInvokeError;
use redloom::limiter::{Limits, Policies, Rate};
use redloom::namespace::PluginName;
use redloom::plugin::{InvokeError, PluginSpec};
use redloom_tests::with_timeout;
use redloom_tests::{RedisServer, plugin, redloom_bin, unique};
use redloom_tests::{ok, probe, shared_host};
use serde_json::{Value, json};

const SEC: Duration = Duration::from_secs(1);

/// `crate_name` loaded as `name` with `policies`, room for `concurrency`
/// invocations at once and a queue for 2000 more. The time quotas are far
/// above what any test needs even on a loaded machine (tests that hold
/// something until told bound their own waits below them).
fn spec_of(
    name: &str,
    crate_name: &str,
    policies: &[(&str, Limits)],
    concurrency: u32,
) -> PluginSpec {
    let mut s = PluginSpec::from_path(&plugin(crate_name));
    s.name = PluginName::parse(name).unwrap();
    s.quotas.wall_time = Duration::from_secs(240);
    s.quotas.cpu = Duration::from_secs(60);
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
        shared_host(&redis, d1.path(), 64).await,
        shared_host(&redis, d2.path(), 64).await,
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
        assert_eq!(denied, 900, "{limits}: denied of 1000");
        remaining_when_allowed.sort();
        assert_eq!(
            remaining_when_allowed,
            (0..100).collect::<Vec<u64>>(),
            "{limits}: remaining as seen by the allowed checks"
        );
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
            shared_host(&redis, d1.path(), 32).await,
            shared_host(&redis, d2.path(), 32).await,
        ];
        // Each invocation waits (at most 120 s) for all 40 to have made
        // their checks; the leases (600 s) outlast that wait, so no slot
        // frees itself while another invocation is still checking.
        let policies = [("c", slots(100, 600 * SEC))];
        for h in &hosts {
            h.load(spec("slots", &policies)).await.unwrap();
        }
        let (key, barrier) = (unique("tenant"), unique("barrier"));
        let program = json!([
            {"op": "burst", "policy": "c", "key": key, "n": 25},
            {"op": "incr", "key": barrier},
            {"op": "wait_for", "key": barrier, "value": 40, "timeout_ms": 120_000},
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
        assert_eq!(allowed, 100, "slots handed out of 1,000 checks against 100");
        let r = probe(
            &hosts[0],
            "slots",
            json!([{"op": "check", "policy": "c", "key": key, "cost": 0}]),
        )
        .await;
        assert_eq!(
            u(&ok(&r[0])["remaining"]),
            100,
            "slots free after the invocations ended: {r:?}"
        );
    })
    .await;
}

/// 24 invocations on two hosts each try 8 times to hold one of 3 slots for
/// 10 ms, counting holders in a kv counter: the count never exceeds 3, and
/// some attempts are turned away. The invocations first wait (bounded) for
/// each other, so they contend however slowly the machine starts them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_never_exceeds_its_slots_under_contention() {
    with_timeout(async {
        let redis = RedisServer::start().await;
        let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let hosts = [
            shared_host(&redis, d1.path(), 32).await,
            shared_host(&redis, d2.path(), 32).await,
        ];
        let policies = [("c", slots(3, 600 * SEC))];
        for h in &hosts {
            h.load(spec("contend", &policies)).await.unwrap();
        }
        let (key, active, barrier) = (unique("job"), unique("active"), unique("barrier"));
        let hold =
            json!({"op": "hold", "policy": "c", "key": key, "hold_ms": 10, "active": active});
        let mut program = vec![
            json!({"op": "incr", "key": barrier}),
            json!({"op": "wait_for", "key": barrier, "value": 24, "timeout_ms": 120_000}),
        ];
        program.extend(vec![hold; 8]);
        let program = Value::Array(program);
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
            let r = t.await.unwrap();
            assert_eq!(u(ok(&r[1])), 24, "the barrier was not reached: {r:?}");
            for r in &r[2..] {
                let r = ok(r);
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
        assert_eq!(now, 0, "holders counted after every invocation ended");
    })
    .await;
}

/// One check of a `pace` run: when it was made, in µs after the run began
/// (read just before and just after the check: Redis decided somewhere in
/// between), and what it said.
#[derive(Debug, Clone, Copy)]
struct Paced {
    before: f64,
    after: f64,
    allowed: bool,
    remaining: u64,
    retry_ms: u64,
}

/// The checks of a `pace` run.
fn rows(r: &Value) -> Vec<Paced> {
    ok(r)
        .as_array()
        .unwrap()
        .iter()
        .map(|row| Paced {
            before: u(&row[0]) as f64,
            after: u(&row[4]) as f64,
            allowed: row[1].as_bool().unwrap(),
            remaining: u(&row[2]),
            retry_ms: u(&row[3]),
        })
        .collect()
}

/// Checks a `pace` run (unit costs, one client) of a policy that admits
/// `burst` at once and one unit every `interval_ms` after that: GCRA, or a
/// token bucket of capacity `burst` (the same decisions). Every decision is
/// compared with the reference algorithm run on the measured clock: GCRA's
/// state is its theoretical arrival time (TAT), and an allowed check at
/// time t moves it to max(TAT, t) + interval; a check at t is allowed iff
/// TAT - t <= (burst - 1) × interval, and a denied one's retry-after is
/// TAT - t - (burst - 1) × interval.
///
/// Redis's clock is only known to lie within each check's bracket, so the
/// model keeps the earliest and latest TAT those brackets allow, and each
/// decision must be one the algorithm could have made somewhere in them: an
/// allowed check must not be early even for the earliest TAT and the latest
/// time, a denied one must be justified by the latest TAT and earliest time,
/// and retry-after and remaining must lie between what the two give. A
/// slow machine widens the brackets (and may lose burst capacity to a long
/// pause, which the model follows too); it can never make a correct limiter
/// fail, while on a prompt machine the brackets are a fraction of a
/// millisecond, far tighter than one interval.
fn conforms(rows: &[Paced], burst: u64, interval_ms: f64) {
    let interval = interval_ms * 1000.0;
    let tolerance = (burst - 1) as f64 * interval;
    let show = |i: usize| {
        let from = i.saturating_sub(3);
        format!("checks {from}..={i}: {:?}", &rows[from..=i])
    };
    assert!(rows.len() >= 100, "too few checks: {}", rows.len());
    assert!(
        rows[..burst as usize].iter().all(|r| r.allowed),
        "the burst was not admitted: {:?}",
        &rows[..=burst as usize]
    );
    // The earliest and latest TAT so far; None before the first unit.
    let mut tat: Option<(f64, f64)> = None;
    let (mut denied_then_allowed, mut last_denied) = (0, false);
    for (i, r) in rows.iter().enumerate() {
        // Clock skew between the guest's and Redis's clocks: 1 ms plus
        // 0.01 % of the time since the run began.
        let slack = 1000.0 + r.after * 1e-4;
        let (lo, hi) = tat.unwrap_or((f64::NEG_INFINITY, f64::NEG_INFINITY));
        if r.allowed {
            assert!(
                lo - r.after <= tolerance + slack,
                "allowed {:.1} ms early (earliest TAT {:.1} ms, checked by {:.1} ms): {}",
                (lo - r.after - tolerance) / 1000.0,
                lo / 1000.0,
                r.after / 1000.0,
                show(i)
            );
            let (new_lo, new_hi) = (lo.max(r.before) + interval, hi.max(r.after) + interval);
            // remaining = ⌊(burst × interval - (new TAT - t)) / interval⌋.
            let most = ((burst as f64 * interval - (new_lo - r.after) + slack) / interval).floor();
            let least =
                ((burst as f64 * interval - (new_hi - r.before) - slack) / interval).floor();
            assert!(
                (least.max(0.0)..=most.min(burst as f64)).contains(&(r.remaining as f64)),
                "remaining {} after an allowed check, expected {least}..={most}: {}",
                r.remaining,
                show(i)
            );
            tat = Some((new_lo, new_hi));
            denied_then_allowed += usize::from(last_denied);
            last_denied = false;
        } else {
            assert!(
                hi - r.before > tolerance - slack,
                "denied although a unit was free (latest TAT {:.1} ms, checked from {:.1} ms): {}",
                hi / 1000.0,
                r.before / 1000.0,
                show(i)
            );
            let retry = r.retry_ms as f64 * 1000.0;
            let (earliest, latest) = (lo - r.after - tolerance, hi - r.before - tolerance);
            assert!(
                r.retry_ms > 0 && r.retry_ms as f64 <= interval_ms + 1.0,
                "denied with retry-after {} ms (the interval is {interval_ms} ms): {}",
                r.retry_ms,
                show(i)
            );
            // retry-after is rounded up to whole milliseconds.
            assert!(
                retry + slack >= earliest && retry - 1000.0 <= latest + slack,
                "retry-after {} ms, but the next unit is free in {:.1}..={:.1} ms: {}",
                r.retry_ms,
                earliest / 1000.0,
                latest / 1000.0,
                show(i)
            );
            assert_eq!(r.remaining, 0, "remaining when denied: {}", show(i));
            last_denied = true;
        }
    }
    assert!(
        denied_then_allowed > 10,
        "too few denials followed by an allowed check to test retry-after: {denied_then_allowed}"
    );
}

/// GCRA at 20/s with a burst of 5, checked every ~2 ms for 2 s (longer on a
/// slow machine, until there are enough checks): every decision, remaining
/// count and retry-after is the reference algorithm's on the measured clock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcra_conforms_over_real_time() {
    with_timeout(async {
        let redis = RedisServer::start().await;
        let data = tempfile::tempdir().unwrap();
        let host = shared_host(&redis, data.path(), 8).await;
        host.load(spec("pace", &[("g", gcra(20, SEC, 5))]))
            .await
            .unwrap();
        let key = unique("k");
        let r = probe(&host, "pace", pace("g", &key)).await;
        conforms(&rows(&r[1]), 5, 50.0);
    })
    .await;
}

/// A peek (which loads the script, so the first paced check is not slowed
/// by that), then checks every 2 ms for at least 2 s and until there were
/// 200 checks and 40 denials (at most 40 s).
fn pace(policy: &str, key: &str) -> Value {
    json!([
        {"op": "check", "policy": policy, "key": key, "cost": 0},
        {"op": "pace", "policy": policy, "key": key, "duration_ms": 2000, "interval_ms": 2,
         "min_checks": 200, "min_denied": 40, "max_ms": 40_000},
    ])
}

/// A token bucket of 5 refilled at 20/s behaves the same; one of 1 refilled
/// at 10 per 30 s refills fractionally (a third of a token a second): peeks
/// after taking its token are denied with a retry-after that shrinks with
/// the time actually elapsed, until the token is back 3 s after it was
/// taken — not before, and no later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_bucket_conforms_over_real_time() {
    with_timeout(async {
        let redis = RedisServer::start().await;
        let data = tempfile::tempdir().unwrap();
        let host = shared_host(&redis, data.path(), 8).await;
        let policies = [("t", bucket(5, 20, SEC)), ("slow", bucket(1, 10, 30 * SEC))];
        host.load(spec("pace", &policies)).await.unwrap();
        let key = unique("k");
        let r = probe(&host, "pace", pace("t", &key)).await;
        conforms(&rows(&r[1]), 5, 50.0);

        // Times are Redis TIME in µs, read before and after each
        // invocation: Redis made the check somewhere in between.
        let mut conn = redis.client().await;
        let refill: i64 = 3_000_000; // one token every 3 s
        let key = unique("k");
        let peek = json!([{"op": "check", "policy": "slow", "key": key, "cost": 0}]);
        let taken_from = redis_now_us(&mut conn).await as i64;
        let r = probe(&host, "pace", json!([{"op": "check", "policy": "slow", "key": key}])).await;
        let taken_by = redis_now_us(&mut conn).await as i64;
        assert_eq!(ok(&r[0])["allowed"], json!(true), "{r:?}");
        let mut seen = Vec::new();
        let mut midway = None;
        loop {
            let from = redis_now_us(&mut conn).await as i64;
            let r = probe(&host, "pace", peek.clone()).await;
            let by = redis_now_us(&mut conn).await as i64;
            let d = ok(&r[0]).clone();
            // How long after the take this peek was made, at least and at most.
            let (least, most) = (from - taken_by, by - taken_from);
            seen.push((least / 1000, most / 1000, d["allowed"].clone(), d["retry_after_ms"].clone()));
            if d["allowed"] == json!(true) {
                assert!(
                    most + 1000 >= refill,
                    "the token was back at most {most} µs after it was taken: {d}; peeks (ms after the take, allowed, retry-after): {seen:?}"
                );
                assert_eq!(u(&d["remaining"]), 1, "{d}");
                break;
            }
            assert!(
                least < refill + 1000,
                "still no token {least} µs after it was taken: {d}; peeks: {seen:?}"
            );
            // The missing fraction of a token, in time: refill - elapsed,
            // rounded up to whole ms.
            let retry = u(&d["retry_after_ms"]) as i64 * 1000;
            assert!(
                retry + 1000 >= refill - most && retry - 1000 <= refill - least + 1000,
                "retry-after {retry} µs, {least}..={most} µs after the take: {d}; peeks: {seen:?}"
            );
            if least >= refill / 4 && most <= refill * 3 / 4 {
                midway = Some(d);
            }
            assert!(from - taken_from < 60_000_000, "the token never came back: {seen:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let midway = midway.unwrap_or_else(|| {
            panic!("no peek was made between 0.75 s and 2.25 s after the take: {seen:?}")
        });
        assert_eq!(u(&midway["remaining"]), 0, "{midway}");
    })
    .await;
}

/// Ten requests in the last second before a window boundary and ten just
/// after it: a fixed window (10 per 3 s) admits all twenty — a double burst
/// within less than one window — while a sliding window of the same limit
/// admits none of the second ten. Redis TIME, read around each burst, shows
/// where the bursts fell; an attempt whose bursts did not fall as needed (a
/// stalled machine) proves nothing and is made again with a fresh key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sliding_window_refuses_the_double_burst_fixed_window_admits() {
    with_timeout(async {
        let redis = RedisServer::start().await;
        let data = tempfile::tempdir().unwrap();
        let host = shared_host(&redis, data.path(), 8).await;
        let window = 3 * SEC;
        let policies = [("s", sliding(10, window)), ("f", fixed(10, window))];
        host.load(spec("edges", &policies)).await.unwrap();
        let mut conn = redis.client().await;
        let w = window.as_micros() as u64;
        let mut attempts = Vec::new();
        for _attempt in 0..3 {
            let key = unique("k");
            let burst = json!([
                {"op": "burst", "policy": "s", "key": key, "n": 10},
                {"op": "burst", "policy": "f", "key": key, "n": 10},
            ]);
            // 1 s before the next boundary that is at least 1.5 s away.
            let now = redis_now_us(&mut conn).await;
            let boundary = (now + 1_500_000).div_ceil(w) * w;
            tokio::time::sleep(Duration::from_micros(boundary - 1_000_000 - now)).await;
            let first_from = redis_now_us(&mut conn).await;
            let r1 = probe(&host, "edges", burst.clone()).await;
            let first_by = redis_now_us(&mut conn).await;
            if first_by >= boundary {
                attempts.push(format!("first burst ended {} µs after the boundary", first_by - boundary));
                continue;
            }
            // Right after the boundary (by Redis's clock).
            let second_from = loop {
                let now = redis_now_us(&mut conn).await;
                if now >= boundary {
                    break now;
                }
                tokio::time::sleep(Duration::from_micros(boundary - now)).await;
            };
            let r2 = probe(&host, "edges", burst).await;
            let second_by = redis_now_us(&mut conn).await;
            if second_by - first_from >= w {
                attempts.push(format!(
                    "the bursts spanned {} µs, not less than a window",
                    second_by - first_from
                ));
                continue;
            }
            let times = format!(
                "boundary {boundary}, first burst {first_from}..{first_by}, second {second_from}..{second_by} (µs)"
            );
            assert_eq!(u(&ok(&r1[0])["allowed"]), 10, "sliding, first burst: {r1:?}; {times}");
            assert_eq!(u(&ok(&r1[1])["allowed"]), 10, "fixed, first burst: {r1:?}; {times}");
            assert_eq!(
                u(&ok(&r2[1])["allowed"]),
                10,
                "fixed window admits the double burst: {r2:?}; {times}"
            );
            assert_eq!(
                u(&ok(&r2[0])["allowed"]),
                0,
                "sliding window refuses the double burst: {r2:?}; {times}"
            );
            // The last check waits for the first unit of the first burst to
            // leave the window: first unit + window - now, in whole ms.
            let last = &ok(&r2[0])["last"];
            let retry = u(&last["retry_after_ms"]) as i64 * 1000;
            let earliest = (first_from + w) as i64 - second_by as i64;
            let latest = (first_by + w) as i64 - second_from as i64;
            assert!(
                retry + 1000 >= earliest && retry - 1000 <= latest + 1000,
                "sliding retry-after {retry} µs, expected {earliest}..={latest} µs: {last}; {times}"
            );
            return;
        }
        panic!("no attempt put its bursts either side of a boundary within one window: {attempts:?}");
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
        let host = shared_host(&redis, data.path(), 8).await;
        let policies = [
            ("gcra", gcra(3, DAY, 3)),
            ("tb", bucket(3, 3, DAY)),
            ("sw", sliding(3, 3600 * SEC)),
            ("fw", fixed(3, DAY)),
            ("cc", slots(3, 60 * SEC)),
        ];
        host.load(spec("costs", &policies)).await.unwrap();
        let mut conn = redis.client().await;
        for (policy, limits) in policies {
            // A fixed window's boundary (midnight UTC here) may fall inside
            // the run: Redis TIME around it shows that, and the run is made
            // again with a fresh key.
            let mut crossed = 0;
            let r = loop {
                let key = unique("k");
                let c =
                    |cost: u64| json!({"op": "check", "policy": policy, "key": key, "cost": cost});
                let before = redis_now_us(&mut conn).await;
                let r = probe(
                    &host,
                    "costs",
                    json!([c(0), c(2), c(2), c(1), c(1), c(0), c(0)]),
                )
                .await;
                let after = redis_now_us(&mut conn).await;
                match limits {
                    Limits::FixedWindow { window, .. }
                        if before / window.as_micros() as u64
                            != after / window.as_micros() as u64
                            && crossed < 2 =>
                    {
                        crossed += 1;
                    }
                    _ => break r,
                }
            };
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
        let host = shared_host(&redis, data.path(), 8).await;
        // A lease far longer than the test, so only the invocation's end
        // can free a slot; a wall-time quota that ends the spinning
        // invocation, yet is ample (1000×) for the others.
        let mut s = spec("holder", &[("c", slots(1, 600 * SEC))]);
        s.quotas.wall_time = Duration::from_secs(3);
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
        assert_eq!(ok(&r[0])["held"], json!(true), "{r:?}");
        assert_eq!(
            ok(&r[2])["allowed"],
            json!(false),
            "a forgotten lease holds until the end: {r:?}"
        );
        let r = probe(&host, "holder", peek(&key)).await;
        assert_eq!(
            ok(&r[0])["allowed"],
            json!(true),
            "a leaked lease outlived its invocation: {r:?}"
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
        assert_eq!(ok(&r[4]), &json!(true), "{r:?}");
        assert_eq!(err(&r[5]).0, "bad-op", "{r:?}");

        let mut conn = redis.client().await;
        let keys: Vec<String> = conn.keys("rl:holder:limiter:*").await.unwrap();
        assert!(keys.is_empty(), "slots left behind: {keys:?}");
    })
    .await;
}

/// A host killed (SIGKILL) while holding a slot cannot release it: the slot
/// stays taken until its lease (5 s) runs out, then comes back by itself.
/// The lease's end is read from Redis (the slot's expiry, in Redis time),
/// and every check is placed against it with Redis TIME read around it:
/// denied before the end, with a retry-after that points at it, allowed
/// after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_hosts_slot_comes_back_after_the_lease() {
    with_timeout(async {
        let redis = RedisServer::start().await;
        // The host here compiles the plugin into `data`, the child's
        // data-dir too, so the child starts from the compiled cache instead
        // of compiling it again (tens of seconds on a loaded machine).
        let data = tempfile::tempdir().unwrap();
        let host = shared_host(&redis, data.path(), 8).await;
        let lease = Duration::from_secs(5);
        host.load(spec("holder", &[("c", slots(1, lease))]))
            .await
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("redloom.toml"),
            format!(
                "data-dir = {:?}\n{}\n[plugins.holder]\nwasm = {:?}\n\n\
                 [plugins.holder.quotas]\nwall-time = \"240s\"\n\n\
                 [plugins.holder.limiters.c]\nalgorithm = \"concurrency\"\nslots = 1\nlease = \"5s\"\n",
                data.path().display().to_string(),
                redis.config_table(),
                plugin("limiter-probe").display().to_string()
            ),
        )
        .unwrap();
        let key = unique("crash");
        // It holds the slot until it is killed.
        let program = json!([
            {"op": "acquire", "policy": "c", "key": key, "slots": 1, "id": "a"},
            {"op": "sleep", "ms": 230_000},
        ]);
        let log = dir.path().join("invoke.log");
        let mut child = std::process::Command::new(redloom_bin())
            .current_dir(dir.path())
            .env_remove("REDIS_URL")
            .env_remove("REDLOOM_CONFIG")
            .args(["invoke", "holder", "--input", &program.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut conn = redis.client().await;
        // The held slot: its member's score is when the lease ends.
        let held = format!("rl:holder:limiter:{{holder/c/{key}}}:cc");
        let started = Instant::now();
        let ends = loop {
            let slots: Vec<(String, f64)> = conn.zrange_withscores(&held, 0, -1).await.unwrap();
            if let Some((_, score)) = slots.first() {
                break *score as i64;
            }
            assert!(
                child.try_wait().unwrap().is_none(),
                "the child exited without taking the slot:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "the child never took the slot:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        child.kill().unwrap();
        child.wait().unwrap();

        // A check in Redis time [from, by] µs.
        let peek = json!([{"op": "check", "policy": "c", "key": key, "cost": 0}]);
        let mut check = async || {
            let from = redis_now_us(&mut conn).await as i64;
            let r = probe(&host, "holder", peek.clone()).await;
            let by = redis_now_us(&mut conn).await as i64;
            (from, ok(&r[0]).clone(), by)
        };
        let (from, d, by) = check().await;
        assert!(
            by < ends,
            "the machine took over the whole {lease:?} lease from taking the slot to checking it after the kill (checked by {by}, lease ends {ends}): nothing shown"
        );
        assert_eq!(d["allowed"], json!(false), "the slot came back at once: {d}");
        // retry-after = the lease's end - now, rounded up to whole ms.
        let retry = u(&d["retry_after_ms"]) as i64 * 1000;
        assert!(
            retry + 1000 >= ends - by && retry - 1000 <= ends - from + 1000,
            "retry-after {retry} µs, checked in {from}..={by}, the lease ends at {ends}: {d}"
        );
        let mut seen = vec![(from - ends, by - ends, d)];
        loop {
            let (from, d, by) = check().await;
            if d["allowed"] == json!(true) {
                assert!(
                    by + 1000 >= ends,
                    "back {} µs before its lease ran out: {d}; earlier checks (µs from the lease's end): {seen:?}",
                    ends - by
                );
                break;
            }
            assert!(
                from < ends + 1000,
                "still held {} µs after its lease ran out: {d}; earlier checks: {seen:?}",
                from - ends
            );
            seen.push((from - ends, by - ends, d));
            assert!(
                started.elapsed() < Duration::from_secs(180),
                "the slot never came back: {seen:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
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
            shared_host(&redis, d1.path(), 8).await,
            shared_host(&redis, d2.path(), 8).await,
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
        assert_eq!(ok(&r[3])["allowed"], json!(false), "{r:?}");

        let bigger = json!({"algorithm": "gcra", "count": 6, "period_ms": 86_400_000, "burst": 6});
        let r = probe(
            &hosts[1],
            "tenants",
            json!([{"op": "set_override", "policy": "api", "key": vip, "limits": bigger}]),
        )
        .await;
        assert_eq!(ok(&r[0]), &Value::Null, "{r:?}");
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
        assert_eq!(u(&ok(&r[0])["limit"]), 6, "{r:?}");
        assert_eq!(u(&ok(&r[4])["limit"]), 3, "{r:?}");
        assert_eq!(ok(&r[8]), &bigger, "{r:?}");
        assert_eq!(ok(&r[9]), &Value::Null, "{r:?}");

        // Where overrides live, and that operators may write them by hand.
        let mut conn = redis.client().await;
        let at = format!("rl:tenants:limiter:{{tenants/api/{vip}}}:override");
        let stored: std::collections::HashMap<String, String> = conn.hgetall(&at).await.unwrap();
        assert_eq!(stored["algorithm"], "gcra", "{stored:?}");
        assert_eq!(stored["limit"], "6", "{stored:?}");
        assert_eq!(stored["period-us"], "86400000000", "{stored:?}");
        assert_eq!(stored["burst"], "6", "{stored:?}");
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
        assert_eq!(ok(&r[0]), &json!(true), "{r:?}");
        assert_eq!(ok(&r[1]), &json!(false), "{r:?}");
        assert_eq!(ok(&r[2])["allowed"], json!(false), "{r:?}");
        assert_eq!(u(&ok(&r[2])["limit"]), 3, "{r:?}");

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
        assert_eq!(u(&ok(&r[6])["limit"]), 5, "{r:?}");

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
        assert_eq!(ok(&r[4]), &json!(true), "{r:?}");
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
        let host = shared_host(&redis, data.path(), 8).await;
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

        // The manifest: one line naming the file, the line and the key.
        let file = Path::new("/srv/redloom.toml");
        let parse = |limiters: &str| {
            Config::parse(&format!("[plugins.api]\nwasm = \"a.wasm\"\n{limiters}"), file)
                .unwrap_err()
                .to_string()
        };
        let e = parse("[plugins.api.limiters.login]\nalgorithm = \"fixed-window\"\nrate = \"0/min\"\n");
        assert!(e.starts_with("/srv/redloom.toml:5: plugins.api.limiters.login.rate: "), "{e}");
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
        let host = shared_host(&redis, data.path(), 8).await;
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
                // Periods of a day or more, so no key's state expires while
                // the test looks (the fixed window's 365-day windows end at
                // one fixed instant a year).
                let l = match limits {
                    Limits::Gcra { .. } => json!({"algorithm": "gcra", "count": 4, "period_ms": 86_400_000, "burst": 4}),
                    Limits::TokenBucket { .. } => json!({"algorithm": "token-bucket", "count": 4, "period_ms": 86_400_000, "capacity": 4}),
                    Limits::SlidingWindow { .. } => json!({"algorithm": "sliding-window", "limit": 4, "window_ms": 86_400_000}),
                    Limits::FixedWindow { .. } => json!({"algorithm": "fixed-window", "limit": 4, "window_ms": 365 * 86_400_000u64}),
                    Limits::Concurrency { .. } => json!({"algorithm": "concurrency", "slots": 4, "lease_ms": 600_000}),
                };
                ops.push(json!({"op": "set_override", "policy": policy, "key": key, "limits": l}));
                ops.push(json!({"op": "check", "policy": policy, "key": key}));
            }
            // Hold the concurrency slot until the test has looked at Redis
            // (it then sets `go`).
            let go = unique("go");
            ops.push(json!({"op": "wait_for", "key": go, "value": 1, "timeout_ms": 120_000}));
            let task = {
                let host = host.clone();
                tokio::spawn(async move { probe(&host, "tags", Value::Array(ops)).await })
            };
            let held = format!("rl:tags:limiter:{{tags/cc/{key}}}:cc");
            let started = Instant::now();
            while !conn.exists::<_, bool>(&held).await.unwrap() {
                if task.is_finished() {
                    panic!("the probe ended before holding its slot: {:?}", task.await);
                }
                assert!(started.elapsed() < Duration::from_secs(60), "{held} never appeared");
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
                assert_eq!(
                    mine, want,
                    "{policy}: the keys of one limited key, in one slot; all keys: {all:?}"
                );
            }
            let _: i64 = conn.incr(format!("rl:tags:kv:{go}"), 1).await.unwrap();
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
        let host = shared_host(&redis, data.path(), 8).await;
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
        let started = Instant::now();
        for n in (0..3).rev() {
            let r = call(ip.clone()).await;
            assert_eq!(r["status"], 200, "{r}");
            assert_eq!(r["headers"]["RateLimit-Limit"], "3", "{r}");
            assert_eq!(r["headers"]["RateLimit-Remaining"], n.to_string(), "{r}");
            assert!(r["headers"].get("Retry-After").is_none(), "{r}");
            assert!(r["body"].as_str().unwrap().contains("/search"), "{r}");
        }
        let r = call(ip.clone()).await;
        let elapsed = started.elapsed();
        assert_eq!(r["status"], 429, "{r}");
        assert_eq!(r["headers"]["RateLimit-Remaining"], "0", "{r}");
        // One unit an hour: the next is free an hour after the first
        // request, less the time the four took (measured).
        let retry_ms = u(&r["decision"]["retry_after_ms"]);
        let least = 3_600_000 - elapsed.as_millis() as u64 - 1;
        assert!(
            (least..=3_600_000).contains(&retry_ms),
            "retry-after {retry_ms} ms after {elapsed:?}: {r}"
        );
        let retry: u64 = r["headers"]["Retry-After"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(
            retry,
            retry_ms.div_ceil(1000),
            "Retry-After: whole seconds, rounded up: {r}"
        );
        assert_eq!(r["decision"]["allowed"], false, "{r}");
        let r = call(unique("198.51.100.1")).await;
        assert_eq!(r["status"], 200, "{r}");
    })
    .await;
}
