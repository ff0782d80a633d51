//! The `cache` capability against real Redis with a counting origin:
//! single-flight across two hosts, in-process coalescing,
//! stale-while-revalidate, lease holders that die, stale fills, tag and
//! key invalidation, write-through / write-around, negative caching, XFetch,
//! the typed JSON helpers and the value size limit.
//!
//! "Two hosts" are two [`Host`] values (each with its own runtime, Redis
//! connection and flight table) on one Redis. The origin is an in-process
//! axum server: `GET /v/KEY[?delay_ms=N]` answers the stored value (404 if
//! none) after `N` ms and counts the call; `POST /v/KEY` stores the body.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::AsyncCommands;
use redloom::config::Config;
use redloom::host::{Host, HostInvokeError, HostOptions};
use redloom::namespace::{Namespace, PluginName};
use redloom::plugin::{InvokeError, PluginSpec};
use redloom_tests::{RedisServer, plugin, unique};
use serde_json::{Value, json};

const TEST_TIMEOUT: Duration = Duration::from_secs(120);

async fn with_timeout<F: std::future::Future<Output = ()>>(f: F) {
    tokio::time::timeout(TEST_TIMEOUT, f)
        .await
        .expect("test timed out");
}

/// The counting origin.
#[derive(Default)]
struct Origin {
    values: Mutex<HashMap<String, String>>,
    gets: AtomicUsize,
}

impl Origin {
    fn set(&self, key: &str, value: &str) {
        self.values
            .lock()
            .unwrap()
            .insert(key.to_string(), value.to_string());
    }

    fn get(&self, key: &str) -> Option<String> {
        self.values.lock().unwrap().get(key).cloned()
    }

    fn gets(&self) -> usize {
        self.gets.load(Ordering::SeqCst)
    }
}

async fn origin() -> (SocketAddr, Arc<Origin>) {
    use axum::extract::{Path as P, Query};
    let state = Arc::new(Origin::default());
    let (g, p) = (state.clone(), state.clone());
    let app = axum::Router::new().route(
        "/v/{key}",
        axum::routing::get(
            move |P(key): P<String>, Query(q): Query<HashMap<String, u64>>| {
                let g = g.clone();
                async move {
                    g.gets.fetch_add(1, Ordering::SeqCst);
                    if let Some(ms) = q.get("delay_ms") {
                        tokio::time::sleep(Duration::from_millis(*ms)).await;
                    }
                    match g.get(&key) {
                        Some(v) => (axum::http::StatusCode::OK, v),
                        None => (axum::http::StatusCode::NOT_FOUND, String::new()),
                    }
                }
            },
        )
        .post(move |P(key): P<String>, body: String| {
            let p = p.clone();
            async move {
                p.set(&key, &body);
                axum::http::StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, state)
}

async fn start_host(redis: &RedisServer, data: &Path) -> Arc<Host> {
    let mut options = HostOptions::from_config(&Default::default());
    options.redis_target = Some(redis.target());
    options.data_dir = data.to_path_buf();
    options.runtime.max_instances = 128;
    Arc::new(Host::start(options).await.expect("host starts"))
}

/// Two hosts on `redis`, each with its own data folder (kept alive by the
/// returned guards) and `spec` loaded.
async fn two_hosts(
    redis: &RedisServer,
    spec: PluginSpec,
) -> ([tempfile::TempDir; 2], [Arc<Host>; 2]) {
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let hosts = [
        start_host(redis, dirs[0].path()).await,
        start_host(redis, dirs[1].path()).await,
    ];
    for h in &hosts {
        h.load(spec.clone()).await.unwrap();
    }
    (dirs, hosts)
}

/// The cache probe as plugin `name`, allowed to reach `origin`, with room
/// for 100 concurrent invocations.
fn spec(name: &str, origin: SocketAddr) -> PluginSpec {
    let wasm = plugin("cache-probe");
    let toml = format!(
        "[plugins.{name}]\nwasm = {:?}\nallowed-outbound-hosts = [\"http://{origin}\"]\n",
        wasm.display().to_string()
    );
    let config = Config::parse(&toml, Path::new("redloom.toml")).expect("test config parses");
    let name = PluginName::parse(name).unwrap();
    let mut s = PluginSpec::from_config(name.clone(), &config.plugins[&name]);
    s.quotas.wall_time = Duration::from_secs(60);
    s.quotas.redis_ops = 1_000_000;
    s.quotas.redis_rate = 0;
    s.quotas.concurrency = 100;
    s.quotas.queue = 1000;
    s.quotas.queue_wait = Duration::from_secs(60);
    s
}

async fn run(host: &Host, plugin: &str, ops: Value) -> Result<Vec<Value>, HostInvokeError> {
    let out = host
        .invoke(
            &PluginName::parse(plugin).unwrap(),
            ops.to_string().as_bytes(),
        )
        .await?;
    Ok(serde_json::from_slice(&out).expect("cache-probe output is JSON"))
}

async fn probe(host: &Host, plugin: &str, ops: Value) -> Vec<Value> {
    run(host, plugin, ops)
        .await
        .unwrap_or_else(|e| panic!("cache-probe {plugin} failed: {e}"))
}

fn ok(v: &Value) -> &Value {
    v.get("ok")
        .unwrap_or_else(|| panic!("expected ok, got {v}"))
}

fn err(v: &Value) -> (&str, &str) {
    (
        v["err"]["kind"]
            .as_str()
            .unwrap_or_else(|| panic!("expected err, got {v}")),
        v["err"]["message"].as_str().unwrap_or_default(),
    )
}

fn url(addr: SocketAddr, key: &str, delay_ms: u64) -> String {
    format!("http://{addr}/v/{key}?delay_ms={delay_ms}")
}

/// `EVAL`/`EVALSHA` calls so far (summed over a Cluster's primaries): every
/// cache lookup, fill, set, abandon and invalidate is one.
async fn script_calls(redis: &RedisServer) -> u64 {
    redis
        .command_calls()
        .await
        .iter()
        .filter(|(name, _)| name.starts_with("eval"))
        .map(|(_, n)| n)
        .sum()
}

/// 200 concurrent lookups of a cold key, 100 on each of two hosts: the
/// origin is called exactly once, every caller gets its value, and waiting
/// costs a few Redis lookups per host, not a stream of them per caller.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stampede_across_two_hosts_calls_the_origin_once() {
    with_timeout(async {
        let redis = RedisServer::start().await;
        let (addr, origin) = origin().await;
        let (_dirs, hosts) = two_hosts(&redis, spec("stampede", addr)).await;
        let key = unique("cold");
        origin.set(&key, "the value");
        let program = json!([{
            "op": "fetch", "key": key, "origin": url(addr, &key, 500),
            "fresh_ms": 60_000, "wait_ms": 30_000,
        }]);
        let scripts_before = script_calls(&redis).await;
        let started = Instant::now();
        let mut tasks = Vec::new();
        for i in 0..200 {
            let host = hosts[i % 2].clone();
            let program = program.clone();
            tasks.push(tokio::spawn(async move {
                probe(&host, "stampede", program).await
            }));
        }
        let mut sources = HashMap::<String, usize>::new();
        for t in tasks {
            let out = t.await.unwrap();
            let got = ok(&out[0]);
            assert_eq!(got["value"], "the value", "{out:?}");
            *sources
                .entry(got["source"].as_str().unwrap().to_string())
                .or_default() += 1;
        }
        let took_ms = u64::try_from(started.elapsed().as_millis()).unwrap();
        let scripts = script_calls(&redis).await - scripts_before;
        assert_eq!(origin.gets(), 1, "the origin was called more than once");
        assert_eq!(sources.get("miss"), Some(&1), "{sources:?}");
        assert_eq!(sources.get("hit"), Some(&199), "{sources:?}");
        // Redis traffic while waiting. The filling host sends one lookup and
        // one fill; its other callers wait in-process. On the other host one
        // lookup re-reads Redis per backoff pause (and once when the fill's
        // wake-up arrives) while its other callers wait in-process; pauses
        // are at least 1, 2, 4, 8, 16 ms, then at least 25 ms, so in
        // `took_ms` that is at most 6 + took_ms / 25 lookups (plus 2). Invocations that started only after the fill add one
        // lookup each (a fresh hit): 40 allowed. A lookup per round trip
        // (~0.1 ms), even a 2 ms polling loop, or one poller per waiting
        // caller (100 per host) would be far above the bound.
        let bound = 2 + 6 + 2 + took_ms / 25 + 40;
        assert!(
            scripts <= bound,
            "{scripts} cache scripts reached Redis in {took_ms} ms (bound {bound})"
        );
    })
    .await;
}

/// `PUBLISH` calls so far (summed over a Cluster's primaries; PUBLISH
/// inside a script counts too).
async fn publish_calls(redis: &RedisServer) -> u64 {
    redis
        .command_calls()
        .await
        .get("publish")
        .copied()
        .unwrap_or(0)
}

/// Host A holds a key's fill lease and reads a slow origin; waiters on host
/// B are woken by A's fill (a `PUBLISH` on the plugin's `cache-filled`
/// channel, received by B's subscription) rather than by their next poll.
/// With the subscription up, B polls with pauses of up to 500 ms, so after
/// a second of waiting a poll would see the fill 0–500 ms late; over six
/// rounds every waiter gets the value under 250 ms after the fill lands
/// (1–3 ms on loopback; the bound leaves room for a loaded CI machine,
/// and 30 polled waits would not all land that early). The plugin runs as its own ACL user
/// (`acl = true`): the scripts publish, and the host subscribes, as that
/// user. A fill nobody waits for, and a lookup that does not wait, publish
/// nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_on_another_host_are_woken_by_the_fill() {
    with_timeout(async {
        let redis = RedisServer::start().await;
        let (addr, _origin) = origin().await;
        let mut s = spec("notify", addr);
        s.acl = true;
        let (_dirs, hosts) = two_hosts(&redis, s).await;
        let ns = Namespace::new(&PluginName::parse("notify").unwrap());
        let mut conn = redis.client().await;

        // Nobody waits: no PUBLISH.
        let before = publish_calls(&redis).await;
        let key = unique("alone");
        let out = probe(
            &hosts[0],
            "notify",
            json!([
                {"op": "lookup", "key": key, "as": "l"},
                {"op": "fill", "key": key, "lease": "l", "value": "v"},
            ]),
        )
        .await;
        assert_eq!(ok(&out[0])["kind"], "miss", "{out:?}");
        assert_eq!(ok(&out[1]), true, "{out:?}");
        assert_eq!(
            publish_calls(&redis).await,
            before,
            "a fill nobody waited for published"
        );

        const ROUNDS: usize = 6;
        const WAITERS: usize = 5;
        let mut latencies = Vec::new();
        for round in 0..ROUNDS {
            let key = unique("notify");
            let keys = ns.cache(&key).unwrap();
            let filler = {
                let host = hosts[0].clone();
                let program = json!([
                    {"op": "lookup", "key": key, "lease_ms": 30_000, "as": "l"},
                    {"op": "sleep", "ms": 1200},
                    {"op": "fill", "key": key, "lease": "l", "value": "filled"},
                ]);
                tokio::spawn(async move {
                    let out = probe(&host, "notify", program).await;
                    (out, Instant::now())
                })
            };
            let seen = Instant::now();
            while !conn.exists::<_, bool>(&keys.lease).await.unwrap() {
                assert!(
                    seen.elapsed() < Duration::from_secs(10),
                    "the filler took no lease"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            if round == 0 {
                // A lookup that does not wait sets no waiter flag.
                let out = probe(
                    &hosts[1],
                    "notify",
                    json!([
                        {"op": "lookup", "key": key, "wait_ms": 0},
                    ]),
                )
                .await;
                assert_eq!(ok(&out[0])["kind"], "filling", "{out:?}");
                assert!(!conn.exists::<_, bool>(&keys.waiting).await.unwrap());
            }
            let waiters: Vec<_> = (0..WAITERS)
                .map(|_| {
                    let host = hosts[1].clone();
                    let program = json!([{"op": "lookup", "key": key, "wait_ms": 10_000}]);
                    tokio::spawn(async move {
                        let out = probe(&host, "notify", program).await;
                        (out, Instant::now())
                    })
                })
                .collect();
            let (out, filled_at) = filler.await.unwrap();
            assert_eq!(ok(&out[0])["kind"], "miss", "{out:?}");
            assert_eq!(ok(&out[2]), true, "{out:?}");
            for w in waiters {
                let (out, done) = w.await.unwrap();
                assert_eq!(
                    ok(&out[0]),
                    &json!({"kind": "fresh", "value": "filled", "lease": false}),
                    "round {round}"
                );
                latencies.push(done.saturating_duration_since(filled_at));
            }
            assert!(!conn.exists::<_, bool>(&keys.waiting).await.unwrap());
        }
        let publishes = publish_calls(&redis).await - before;
        assert_eq!(publishes, ROUNDS as u64, "one PUBLISH per awaited fill");
        let slowest = latencies.iter().max().unwrap();
        assert!(
            *slowest < Duration::from_millis(250),
            "a waiter got the value {slowest:?} after the fill (all: {latencies:?}): \
             polled, not woken"
        );
    })
    .await;
}

/// 50 concurrent lookups of a cold key in one host share one lookup and
/// one fill: a handful of scripts reach Redis, not 50.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_host_coalesces_concurrent_lookups() {
    with_timeout(async {
        let redis = RedisServer::start().await;
        let d = tempfile::tempdir().unwrap();
        let (addr, origin) = origin().await;
        let host = start_host(&redis, d.path()).await;
        host.load(spec("coalesce", addr)).await.unwrap();
        let key = unique("cold");
        origin.set(&key, "v");
        let mut conn = redis.client().await;
        let _: () = redis::cmd("CONFIG")
            .arg("RESETSTAT")
            .query_async(&mut conn)
            .await
            .unwrap();
        let program = json!([{
            "op": "fetch", "key": key, "origin": url(addr, &key, 1000), "wait_ms": 30_000,
        }]);
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                let (host, program) = (host.clone(), program.clone());
                tokio::spawn(async move { probe(&host, "coalesce", program).await })
            })
            .collect();
        for t in tasks {
            assert_eq!(ok(&t.await.unwrap()[0])["value"], "v");
        }
        assert_eq!(origin.gets(), 1);
        let calls = redis.command_calls().await;
        let scripts = calls.get("evalsha").copied().unwrap_or(0);
        // One lookup and one fill, plus lookups by invocations that started
        // after the fill (fresh hits); never one per caller.
        assert!(
            (2..=6).contains(&scripts),
            "{scripts} scripts for 50 lookups: {calls:?}"
        );
    })
    .await;
}

/// After the fresh TTL every caller gets the stale value at once while
/// exactly one refresh reaches the origin; after the stale TTL, a miss.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_while_revalidate() {
    with_timeout(async {
        let redis = RedisServer::start().await;
        let d = tempfile::tempdir().unwrap();
        let (addr, origin) = origin().await;
        let host = start_host(&redis, d.path()).await;
        host.load(spec("swr", addr)).await.unwrap();
        let key = unique("swr");
        origin.set(&key, "v1");
        let fetch = |delay| {
            json!([{
                "op": "fetch", "key": key, "origin": url(addr, &key, delay),
                "fresh_ms": 300, "stale_ms": 4000,
            }])
        };
        let out = probe(&host, "swr", fetch(0)).await;
        assert_eq!(ok(&out[0]), &json!({"value": "v1", "source": "miss"}));
        origin.set(&key, "v2");
        tokio::time::sleep(Duration::from_millis(400)).await;
        let tasks: Vec<_> = (0..10)
            .map(|_| {
                let (host, program) = (host.clone(), fetch(1000));
                tokio::spawn(async move {
                    let started = Instant::now();
                    let out = probe(&host, "swr", program).await;
                    (ok(&out[0]).clone(), started.elapsed())
                })
            })
            .collect();
        let mut refreshed = 0;
        let mut stale = 0;
        for t in tasks {
            let (got, took) = t.await.unwrap();
            match got["source"].as_str().unwrap() {
                "refresh" => {
                    refreshed += 1;
                    assert_eq!(got["value"], "v2");
                }
                "stale" => {
                    stale += 1;
                    assert_eq!(got["value"], "v1");
                    assert!(took < Duration::from_millis(900), "stale took {took:?}");
                }
                "hit" => assert_eq!(got["value"], "v2"),
                other => panic!("unexpected source {other}: {got}"),
            }
        }
        assert_eq!(refreshed, 1);
        assert!(stale >= 1);
        assert_eq!(origin.gets(), 2, "exactly one refresh reaches the origin");
        let look = json!([{"op": "lookup", "key": key, "fresh_ms": 300, "wait_ms": 0}]);
        let out = probe(&host, "swr", look.clone()).await;
        assert_eq!(ok(&out[0])["value"], "v2");
        // Past fresh + stale: a miss.
        tokio::time::sleep(Duration::from_millis(4500)).await;
        let out = probe(&host, "swr", look).await;
        assert_eq!(ok(&out[0])["kind"], "miss");
    })
    .await;
}

/// A lease held by a dead host (taken in Redis, never filled) is taken
/// over by one waiter once it expires; a waiter with a shorter deadline
/// gives up at its deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_lease_of_a_dead_host_is_taken_over() {
    with_timeout(async {
        let redis = RedisServer::start().await;
        let d = tempfile::tempdir().unwrap();
        let (addr, _origin) = origin().await;
        let host = start_host(&redis, d.path()).await;
        host.load(spec("dead", addr)).await.unwrap();
        let key = unique("dead");
        let keys = Namespace::new(&PluginName::parse("dead").unwrap())
            .cache(&key)
            .unwrap();
        let mut conn = redis.client().await;
        let _: () = conn
            .set_options(
                &keys.lease,
                "a-dead-host",
                redis::SetOptions::default().with_expiration(redis::SetExpiry::PX(1000)),
            )
            .await
            .unwrap();
        let started = Instant::now();
        let short = {
            let host = host.clone();
            let key = key.clone();
            tokio::spawn(async move {
                let out = probe(
                    &host,
                    "dead",
                    json!([{"op": "lookup", "key": key, "wait_ms": 300}]),
                )
                .await;
                (ok(&out[0]).clone(), started.elapsed())
            })
        };
        let long = {
            let host = host.clone();
            let key = key.clone();
            tokio::spawn(async move {
                let out = probe(
                    &host,
                    "dead",
                    json!([
                        {"op": "lookup", "key": key, "wait_ms": 5000, "as": "l"},
                        {"op": "fill", "key": key, "lease": "l", "value": "mine"},
                    ]),
                )
                .await;
                (out, started.elapsed())
            })
        };
        let (got, took) = short.await.unwrap();
        assert_eq!(got["kind"], "filling");
        assert!(
            took >= Duration::from_millis(250) && took < Duration::from_millis(900),
            "short waiter returned after {took:?}"
        );
        let (out, took) = long.await.unwrap();
        assert_eq!(ok(&out[0])["kind"], "miss", "{out:?}");
        assert_eq!(ok(&out[1]), true);
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_millis(3000),
            "took over after {took:?}"
        );
        let out = probe(&host, "dead", json!([{"op": "lookup", "key": key}])).await;
        assert_eq!(
            ok(&out[0]),
            &json!({"kind": "fresh", "value": "mine", "lease": false})
        );
    })
    .await;
}

/// A filler that traps, or is cancelled at its wall-time deadline, frees
/// its lease when its invocation ends: a waiter on the same host and one on
/// another host take over long before the lease's TTL, and fill.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filler_that_traps_or_times_out_is_replaced() {
    with_timeout(async {
        let redis = RedisServer::start().await;
        let (addr, origin) = origin().await;
        let mut s = spec("filler", addr);
        s.quotas.wall_time = Duration::from_secs(1);
        let (_dirs, hosts) = two_hosts(&redis, s).await;
        for (case, waiter) in [("trap", 0), ("trap", 1), ("timeout", 0), ("timeout", 1)] {
            let key = unique(case);
            origin.set(&key, "origin value");
            let dies = if case == "trap" {
                json!([{"op": "lookup", "key": key, "lease_ms": 30_000}, {"op": "sleep", "ms": 300}, {"op": "trap"}])
            } else {
                json!([{"op": "lookup", "key": key, "lease_ms": 30_000}, {"op": "sleep", "ms": 5000}])
            };
            let filler = {
                let host = hosts[0].clone();
                tokio::spawn(async move { run(&host, "filler", dies).await })
            };
            tokio::time::sleep(Duration::from_millis(100)).await;
            let started = Instant::now();
            let out = probe(&hosts[waiter], "filler", json!([{
                "op": "fetch", "key": key, "origin": url(addr, &key, 0), "wait_ms": 5000,
            }])).await;
            let took = started.elapsed();
            assert_eq!(ok(&out[0]), &json!({"value": "origin value", "source": "miss"}), "{case} {waiter}");
            // The lease lasts 30 s; the filler's end (at most 1 s of wall time) frees it.
            assert!(took < Duration::from_millis(2500), "{case}/{waiter}: took over after {took:?}");
            match filler.await.unwrap() {
                Err(HostInvokeError::Invoke(InvokeError::Trap { .. })) if case == "trap" => {}
                Err(HostInvokeError::Invoke(InvokeError::Quota { .. })) if case == "timeout" => {}
                other => panic!("{case}: the filler ended with {other:?}"),
            }
        }
    })
    .await;
}

/// 20 callers on two hosts wait for a key whose filler traps, or is
/// cancelled at its wall-time deadline: once it is dead, exactly one of
/// them calls the origin, and every one gets the value before its `wait`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_waiters_take_over_from_a_dead_filler_once() {
    with_timeout(async {
        let redis = RedisServer::start().await;
        let (addr, origin) = origin().await;
        let mut s = spec("takeover", addr);
        s.quotas.wall_time = Duration::from_secs(2);
        let (_dirs, hosts) = two_hosts(&redis, s).await;
        let ns = Namespace::new(&PluginName::parse("takeover").unwrap());
        let mut conn = redis.client().await;
        const WAIT_MS: u64 = 1800;
        for case in ["trap", "timeout"] {
            let key = unique(case);
            origin.set(&key, "origin value");
            let gets_before = origin.gets();
            // The filler holds a 30 s lease and dies after 1.5 s (trap) or
            // at its 2 s wall-time deadline.
            let dies = if case == "trap" {
                json!([{"op": "lookup", "key": key, "lease_ms": 30_000}, {"op": "sleep", "ms": 1500}, {"op": "trap"}])
            } else {
                json!([{"op": "lookup", "key": key, "lease_ms": 30_000}, {"op": "sleep", "ms": 5000}])
            };
            let filler = {
                let host = hosts[0].clone();
                tokio::spawn(async move { run(&host, "takeover", dies).await })
            };
            let lease = ns.cache(&key).unwrap().lease;
            let seen = Instant::now();
            while !conn.exists::<_, bool>(&lease).await.unwrap() {
                assert!(seen.elapsed() < Duration::from_secs(10), "{case}: the filler took no lease");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            // Start the waiters late enough that their own 2 s of wall time
            // outlast the filler.
            tokio::time::sleep(Duration::from_millis(1000)).await;
            let waiters: Vec<_> = (0..20)
                .map(|i| {
                    let host = hosts[i % 2].clone();
                    let program = json!([{
                        "op": "fetch", "key": key, "origin": url(addr, &key, 100),
                        "wait_ms": WAIT_MS,
                    }]);
                    tokio::spawn(async move {
                        let started = Instant::now();
                        let out = run(&host, "takeover", program).await;
                        (out, started.elapsed())
                    })
                })
                .collect();
            let mut sources = HashMap::<String, usize>::new();
            for w in waiters {
                let (out, took) = w.await.unwrap();
                let out = out.unwrap_or_else(|e| panic!("{case}: a waiter failed: {e}"));
                let got = ok(&out[0]);
                assert_eq!(got["value"], "origin value", "{case}: {out:?}");
                assert!(
                    took < Duration::from_millis(WAIT_MS),
                    "{case}: a waiter got the value after {took:?}, past its wait"
                );
                *sources
                    .entry(got["source"].as_str().unwrap().to_string())
                    .or_default() += 1;
            }
            assert_eq!(origin.gets() - gets_before, 1, "{case}: origin calls after the filler died");
            assert_eq!(sources.get("miss"), Some(&1), "{case}: {sources:?}");
            assert_eq!(sources.get("hit"), Some(&19), "{case}: {sources:?}");
            match filler.await.unwrap() {
                Err(HostInvokeError::Invoke(InvokeError::Trap { .. })) if case == "trap" => {}
                Err(HostInvokeError::Invoke(InvokeError::Quota { .. })) if case == "timeout" => {}
                other => panic!("{case}: the filler ended with {other:?}"),
            }
        }
    })
    .await;
}

/// A fill with an expired lease (someone else filled since) or a
/// superseded one (`set`, `invalidate`) stores nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_fills_are_rejected() {
    with_timeout(async {
        let redis = RedisServer::start().await;
        let d = tempfile::tempdir().unwrap();
        let (addr, _origin) = origin().await;
        let host = start_host(&redis, d.path()).await;
        host.load(spec("fills", addr)).await.unwrap();
        let key = unique("slow");
        let slow = {
            let (host, key) = (host.clone(), key.clone());
            tokio::spawn(async move {
                probe(
                    &host,
                    "fills",
                    json!([
                        {"op": "lookup", "key": key, "lease_ms": 200, "as": "old"},
                        {"op": "sleep", "ms": 800},
                        {"op": "fill", "key": key, "lease": "old", "value": "old"},
                    ]),
                )
                .await
            })
        };
        tokio::time::sleep(Duration::from_millis(400)).await;
        let out = probe(
            &host,
            "fills",
            json!([
                {"op": "lookup", "key": key, "as": "new", "wait_ms": 0},
                {"op": "fill", "key": key, "lease": "new", "value": "new"},
            ]),
        )
        .await;
        assert_eq!(ok(&out[0])["kind"], "miss", "{out:?}");
        assert_eq!(ok(&out[1]), true);
        let out = slow.await.unwrap();
        assert_eq!(ok(&out[0])["kind"], "miss");
        assert_eq!(
            ok(&out[2]),
            false,
            "an expired lease overwrote a newer value"
        );
        let key2 = unique("superseded");
        let out = probe(
            &host,
            "fills",
            json!([
                {"op": "lookup", "key": key, "wait_ms": 0},
                {"op": "lookup", "key": key2, "as": "a"},
                {"op": "set", "key": key2, "value": "written"},
                {"op": "fill", "key": key2, "lease": "a", "value": "older read"},
                {"op": "lookup", "key": key2},
                {"op": "invalidate", "key": key2},
                {"op": "lookup", "key": key2, "as": "b"},
                {"op": "invalidate", "key": key2},
                {"op": "fill", "key": key2, "lease": "b", "value": "older read"},
                {"op": "lookup", "key": key2, "wait_ms": 0},
                {"op": "fill", "key": key2, "lease": "garbage", "value": "x"},
            ]),
        )
        .await;
        assert_eq!(ok(&out[0])["value"], "new");
        assert_eq!(ok(&out[1])["kind"], "miss");
        assert_eq!(ok(&out[3]), false);
        assert_eq!(ok(&out[4])["value"], "written");
        assert_eq!(ok(&out[5]), true);
        assert_eq!(ok(&out[6])["kind"], "miss");
        assert_eq!(ok(&out[8]), false);
        assert_eq!(ok(&out[9])["kind"], "miss");
        assert_eq!(err(&out[10]).0, "invalid-argument");
    })
    .await;
}

/// Invalidating a tag is one Redis command however many entries carry it;
/// those entries then miss, others stay. A value read before its tag was
/// invalidated does not survive the invalidation. Key invalidation works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tag_and_key_invalidation() {
    with_timeout(async {
        let redis = RedisServer::start().await;
        let d = tempfile::tempdir().unwrap();
        let (addr, _origin) = origin().await;
        let host = start_host(&redis, d.path()).await;
        host.load(spec("tags", addr)).await.unwrap();
        let (tag, other) = (unique("t"), unique("u"));
        let keys: Vec<String> = (0..50).map(|i| unique(&format!("k{i}"))).collect();
        let mut ops: Vec<Value> = keys
            .iter()
            .map(|k| json!({"op": "set", "key": k, "value": "v", "tags": [tag, other]}))
            .collect();
        let lone = unique("lone");
        ops.push(json!({"op": "set", "key": lone, "value": "v", "tags": [other]}));
        probe(&host, "tags", Value::Array(ops)).await;
        let look =
            |k: &str, tags: Value| json!({"op": "lookup", "key": k, "tags": tags, "wait_ms": 0});
        let out = probe(&host, "tags", json!([look(&keys[0], json!([other, tag]))])).await;
        assert_eq!(ok(&out[0])["kind"], "fresh", "tag order does not matter");

        let mut conn = redis.client().await;
        let _: () = redis::cmd("CONFIG")
            .arg("RESETSTAT")
            .query_async(&mut conn)
            .await
            .unwrap();
        let out = probe(&host, "tags", json!([{"op": "invalidate_tag", "tag": tag}])).await;
        assert_eq!(ok(&out[0]), &Value::Null);
        let calls = redis.command_calls().await;
        assert_eq!(
            calls,
            HashMap::from([("incr".to_string(), 1)]),
            "one command for 50 entries"
        );

        let ops: Vec<Value> = keys.iter().map(|k| look(k, json!([tag, other]))).collect();
        for r in probe(&host, "tags", Value::Array(ops)).await {
            assert_eq!(ok(&r)["kind"], "miss", "{r}");
        }
        let out = probe(&host, "tags", json!([look(&lone, json!([other]))])).await;
        assert_eq!(ok(&out[0])["kind"], "fresh");

        // Read, then the tag is invalidated, then the fill lands: the value
        // is stored but no longer matches.
        let k = unique("race");
        let out = probe(
            &host,
            "tags",
            json!([
                {"op": "lookup", "key": k, "tags": [tag], "as": "l"},
                {"op": "invalidate_tag", "tag": tag},
                {"op": "fill", "key": k, "lease": "l", "value": "read before", "tags": [tag]},
                look(&k, json!([tag])),
            ]),
        )
        .await;
        assert_eq!(ok(&out[2]), true);
        assert_eq!(ok(&out[3])["kind"], "miss");

        let k = unique("key");
        let out = probe(
            &host,
            "tags",
            json!([
                {"op": "set", "key": k, "value": "v"},
                {"op": "invalidate", "key": k},
                {"op": "invalidate", "key": k},
                look(&k, json!([])),
            ]),
        )
        .await;
        assert_eq!(ok(&out[1]), true);
        assert_eq!(ok(&out[2]), false);
        assert_eq!(ok(&out[3])["kind"], "miss");
    })
    .await;
}

/// Write-through and write-around keep cache and origin consistent through
/// a sequence of writes and reads; negative caching remembers "not found".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_through_write_around_and_negative_caching() {
    with_timeout(async {
        let redis = RedisServer::start().await;
        let d = tempfile::tempdir().unwrap();
        let (addr, origin) = origin().await;
        let host = start_host(&redis, d.path()).await;
        host.load(spec("writes", addr)).await.unwrap();
        let k = unique("user");
        let u = url(addr, &k, 0);
        let fetch = json!({"op": "fetch", "key": k, "origin": u});
        let out = probe(&host, "writes", json!([
            {"op": "write_through", "key": k, "value": "v1", "origin": u},
            fetch,
            {"op": "write_around", "key": k, "value": "v2", "origin": u},
            fetch,
            fetch,
            {"op": "write_through", "key": k, "value": "v3", "origin": u},
            fetch,
        ])).await;
        let got: Vec<&Value> = out.iter().map(ok).collect();
        assert_eq!(got[1], &json!({"value": "v1", "source": "hit"}));
        assert_eq!(got[3], &json!({"value": "v2", "source": "miss"}));
        assert_eq!(got[4], &json!({"value": "v2", "source": "hit"}));
        assert_eq!(got[6], &json!({"value": "v3", "source": "hit"}));
        assert_eq!(origin.get(&k).as_deref(), Some("v3"));
        assert_eq!(origin.gets(), 1, "only the read after write-around reached the origin");

        let missing = unique("missing");
        let fetch = json!({"op": "fetch", "key": missing, "origin": url(addr, &missing, 0), "negative_ms": 5000});
        let out = probe(&host, "writes", json!([fetch, fetch])).await;
        assert_eq!(ok(&out[0]), &json!({"value": null, "source": "miss"}));
        assert_eq!(ok(&out[1]), &json!({"value": null, "source": "hit"}));
        assert_eq!(origin.gets(), 2, "the remembered 404 did not reach the origin");
        let missing = unique("uncached");
        let fetch = json!({"op": "fetch", "key": missing, "origin": url(addr, &missing, 0)});
        probe(&host, "writes", json!([fetch, fetch])).await;
        assert_eq!(origin.gets(), 4, "without negative-ms a 404 is not cached");
    })
    .await;
}

/// With a large XFetch beta a fresh entry whose fill took time is handed
/// out with an early-refresh lease, to one caller only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xfetch_early_refresh() {
    with_timeout(async {
        let redis = RedisServer::start().await;
        let d = tempfile::tempdir().unwrap();
        let (addr, _origin) = origin().await;
        let host = start_host(&redis, d.path()).await;
        host.load(spec("xfetch", addr)).await.unwrap();
        let k = unique("x");
        let out = probe(
            &host,
            "xfetch",
            json!([
                {"op": "lookup", "key": k, "as": "l"},
                {"op": "sleep", "ms": 50},
                {"op": "fill", "key": k, "lease": "l", "value": "v"},
                {"op": "lookup", "key": k},
                {"op": "lookup", "key": k, "beta": 1e9, "as": "early"},
                {"op": "lookup", "key": k, "beta": 1e9},
                {"op": "fill", "key": k, "lease": "early", "value": "v2"},
                {"op": "lookup", "key": k},
            ]),
        )
        .await;
        assert_eq!(
            ok(&out[3]),
            &json!({"kind": "fresh", "value": "v", "lease": false})
        );
        assert_eq!(
            ok(&out[4]),
            &json!({"kind": "fresh", "value": "v", "lease": true})
        );
        assert_eq!(
            ok(&out[5]),
            &json!({"kind": "fresh", "value": "v", "lease": false})
        );
        assert_eq!(ok(&out[6]), true);
        assert_eq!(ok(&out[7])["value"], "v2");

        // `set` measures no fill time: it keeps that of the entry it
        // replaces, and an entry only ever `set` is never refreshed early.
        let (filled, only_set) = (unique("filled"), unique("set"));
        let out = probe(
            &host,
            "xfetch",
            json!([
                {"op": "lookup", "key": filled, "as": "l"},
                {"op": "sleep", "ms": 50},
                {"op": "fill", "key": filled, "lease": "l", "value": "v"},
                {"op": "set", "key": filled, "value": "written"},
                {"op": "lookup", "key": filled, "beta": 1e9},
                {"op": "set", "key": only_set, "value": "written"},
                {"op": "lookup", "key": only_set, "beta": 1e9},
            ]),
        )
        .await;
        assert_eq!(
            ok(&out[4]),
            &json!({"kind": "fresh", "value": "written", "lease": true})
        );
        assert_eq!(
            ok(&out[6]),
            &json!({"kind": "fresh", "value": "written", "lease": false})
        );
    })
    .await;
}

/// Values over the plugin's `max-reply` are refused with a clear error, and
/// the refused fill frees its lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_over_the_size_limit_are_rejected() {
    with_timeout(async {
        let redis = RedisServer::start().await;
        let d = tempfile::tempdir().unwrap();
        let (addr, _origin) = origin().await;
        let host = start_host(&redis, d.path()).await;
        let mut s = spec("sizes", addr);
        s.quotas.max_reply = 4096;
        host.load(s).await.unwrap();
        let k = unique("big");
        let out = probe(
            &host,
            "sizes",
            json!([
                {"op": "lookup", "key": k, "as": "l"},
                {"op": "fill", "key": k, "lease": "l", "value": "x", "repeat": 5000},
                {"op": "lookup", "key": k, "wait_ms": 0, "as": "l2"},
                {"op": "set", "key": k, "value": "x", "repeat": 5000},
                {"op": "fill", "key": k, "lease": "l2", "value": "x", "repeat": 4096},
                {"op": "lookup", "key": k},
            ]),
        )
        .await;
        let (kind, message) = err(&out[1]);
        assert_eq!(kind, "invalid-argument");
        assert!(
            message.contains("5000 bytes") && message.contains("max-reply quota (4096 bytes)"),
            "{message}"
        );
        assert_eq!(
            ok(&out[2])["kind"],
            "miss",
            "the refused fill freed its lease"
        );
        assert_eq!(err(&out[3]).0, "invalid-argument");
        assert_eq!(ok(&out[4]), true);
        assert_eq!(ok(&out[5])["value"].as_str().unwrap().len(), 4096);
    })
    .await;
}

/// The typed helpers (`json` feature) store a serde value as JSON and read
/// it back: `get_or_fill_json` fills from the origin once, `write_through_json`
/// writes origin and cache, `get_or_fill_optional_json` remembers "not found",
/// and a cached value that is not the type's JSON is a clear error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_json_values_round_trip() {
    with_timeout(async {
        let redis = RedisServer::start().await;
        let d = tempfile::tempdir().unwrap();
        let (addr, origin) = origin().await;
        let host = start_host(&redis, d.path()).await;
        host.load(spec("typed", addr)).await.unwrap();
        let ns = Namespace::new(&PluginName::parse("typed").unwrap());
        let mut conn = redis.client().await;

        let ada = json!({"id": 42, "name": "Ada", "teams": ["core", "ops"]});
        let k = unique("user");
        origin.set(&k, &ada.to_string());
        let fetch = json!({"op": "fetch_json", "key": k, "origin": url(addr, &k, 0)});
        let out = probe(&host, "typed", json!([fetch, fetch])).await;
        assert_eq!(ok(&out[0]), &ada);
        assert_eq!(ok(&out[1]), &ada);
        assert_eq!(origin.gets(), 1, "the second read was a cache hit");
        let stored: String = conn.hget(ns.cache(&k).unwrap().entry, "v").await.unwrap();
        assert_eq!(
            serde_json::from_str::<Value>(&stored).unwrap(),
            ada,
            "stored as JSON"
        );

        let grace = json!({"id": 7, "name": "Grace", "teams": []});
        let k = unique("user");
        let u = url(addr, &k, 0);
        let out = probe(
            &host,
            "typed",
            json!([
                {"op": "write_through_json", "key": k, "user": grace, "origin": u},
                {"op": "fetch_json", "key": k, "origin": u},
            ]),
        )
        .await;
        assert_eq!(ok(&out[0]), &Value::Null);
        assert_eq!(ok(&out[1]), &grace);
        assert_eq!(
            serde_json::from_str::<Value>(&origin.get(&k).unwrap()).unwrap(),
            grace,
            "the origin got the JSON"
        );
        assert_eq!(
            origin.gets(),
            1,
            "the read after write-through was a cache hit"
        );

        let missing = unique("missing");
        let fetch = json!({
            "op": "fetch_optional_json", "key": missing,
            "origin": url(addr, &missing, 0), "negative_ms": 5000,
        });
        let out = probe(&host, "typed", json!([fetch, fetch])).await;
        assert_eq!(ok(&out[0]), &Value::Null);
        assert_eq!(ok(&out[1]), &Value::Null);
        assert_eq!(
            origin.gets(),
            2,
            "the remembered \"not found\" did not reach the origin"
        );

        let k = unique("raw");
        let out = probe(
            &host,
            "typed",
            json!([
                {"op": "set", "key": k, "value": "not json"},
                {"op": "fetch_json", "key": k, "origin": url(addr, &k, 0)},
            ]),
        )
        .await;
        let (kind, message) = err(&out[1]);
        assert_eq!(kind, "invalid-argument");
        assert!(message.contains("is not the expected JSON"), "{message}");
    })
    .await;
}
