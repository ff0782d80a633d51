//! The `cache` capability against real Redis with a counting origin:
//! single-flight across two hosts, in-process coalescing,
//! stale-while-revalidate, lease holders that die, stale fills, tag and
//! key invalidation, write-through / write-around, negative caching, XFetch,
//! the typed JSON helpers and the value size limit.
//!
//! "Two hosts" are two [`Host`] values (each with its own runtime, Redis
//! connection and flight table) on one Redis. The origin is an in-process
//! axum server: `GET /v/KEY[?hold=1][&delay_ms=N]` answers the stored value
//! (404 if none), after the test opens the origin's gate (with `hold`) and
//! then `N` ms, and counts the call; `POST /v/KEY` stores the body.
//!
//! No test depends on the machine being prompt: where an order of events
//! matters, the test makes it happen (a guest holds until the test sets a
//! key, the origin holds until the test opens its gate, the test polls
//! Redis for the state it needs) instead of sleeping and hoping.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::AsyncCommands;
use redloom::config::Config;
use redloom::host::{Host, HostInvokeError};
use redloom::namespace::{Namespace, PluginName};
use redloom::plugin::{InvokeError, PluginSpec};
use redloom_tests::{PATIENCE, ok, probe, run_probe, shared_host, until};
use redloom_tests::{RedisServer, TestConnection, get_i64, plugin, unique, with_timeout};
use serde_json::{Value, json};

/// The counting origin.
struct Origin {
    values: Mutex<HashMap<String, String>>,
    gets: AtomicUsize,
    /// Requests with `hold` wait until this is `true`.
    gate: tokio::sync::watch::Sender<bool>,
}

impl Default for Origin {
    fn default() -> Self {
        Origin {
            values: Mutex::default(),
            gets: AtomicUsize::new(0),
            gate: tokio::sync::watch::Sender::new(false),
        }
    }
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

    /// Lets every held request (and every later one) through.
    fn open(&self) {
        self.gate.send_replace(true);
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
                    if q.contains_key("hold") {
                        let mut gate = g.gate.subscribe();
                        let _ = gate.wait_for(|open| *open).await;
                    }
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

/// Waits until `key` exists.
async fn until_exists(conn: &TestConnection, what: &str, key: &str) {
    until(what, || {
        let mut conn = conn.clone();
        let key = key.to_string();
        async move {
            match conn.exists::<_, bool>(&key).await.unwrap() {
                true => Ok(()),
                false => Err(format!("{key} absent")),
            }
        }
    })
    .await
}

/// Waits until `key` is gone (deleted or expired).
async fn until_gone(conn: &TestConnection, what: &str, key: &str) {
    until(what, || {
        let mut conn = conn.clone();
        let key = key.to_string();
        async move {
            let pttl: i64 = conn.pttl(&key).await.unwrap();
            match pttl {
                -2 => Ok(()),
                _ => Err(format!("{key} still there, PTTL {pttl}")),
            }
        }
    })
    .await
}

/// Waits until the integer at `key` is `want` (guests count themselves in
/// with the probe's `incr`).
async fn until_count(conn: &TestConnection, what: &str, key: &str, want: i64) {
    until(what, || {
        let mut conn = conn.clone();
        let key = key.to_string();
        async move {
            match get_i64(&mut conn, &key).await {
                n if n == want => Ok(()),
                n => Err(format!("{key} = {n}, want {want}")),
            }
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

/// Two hosts on `redis`, each with its own data folder (kept alive by the
/// returned guards) and `spec` loaded.
async fn two_hosts(
    redis: &RedisServer,
    spec: PluginSpec,
) -> ([tempfile::TempDir; 2], [Arc<Host>; 2]) {
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let hosts = [
        shared_host(redis, dirs[0].path(), 128).await,
        shared_host(redis, dirs[1].path(), 128).await,
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

/// Like [`url`], but the origin answers only after the test opens its gate
/// ([`Origin::open`]), then after `delay_ms`.
fn held_url(addr: SocketAddr, key: &str, delay_ms: u64) -> String {
    format!("http://{addr}/v/{key}?hold=1&delay_ms={delay_ms}")
}

/// 200 concurrent lookups of a cold key, 100 on each of two hosts: the
/// origin is called exactly once, every caller gets its value, and waiting
/// costs a few Redis lookups per host, not a stream of them per caller.
///
/// Every invocation counts itself in (`incr`) just before its lookup, and
/// the origin holds the one fill until all 200 have: however slowly a
/// loaded machine starts them, they all wait for the same fill.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stampede_across_two_hosts_calls_the_origin_once() {
    with_timeout(async {
        let redis = RedisServer::start().await;
        let conn = redis.client().await;
        let (addr, origin) = origin().await;
        let (_dirs, hosts) = two_hosts(&redis, spec("stampede", addr)).await;
        let key = unique("cold");
        let started_key = unique("started");
        origin.set(&key, "the value");
        // The lease outlives any wait for the 200 to start.
        let program = json!([
            {"op": "incr", "key": started_key},
            {
                "op": "fetch", "key": key, "origin": held_url(addr, &key, 500),
                "fresh_ms": 600_000, "wait_ms": 60_000, "lease_ms": 600_000,
            },
        ]);
        let scripts_before = redis.script_calls().await;
        let started = Instant::now();
        let mut tasks = Vec::new();
        for i in 0..200 {
            let host = hosts[i % 2].clone();
            let program = program.clone();
            tasks.push(tokio::spawn(async move {
                probe(&host, "stampede", program).await
            }));
        }
        until_count(
            &conn,
            "all 200 callers reach their lookup",
            &kv_key("stampede", &started_key),
            200,
        )
        .await;
        origin.open();
        let mut sources = HashMap::<String, usize>::new();
        for t in tasks {
            let out = t.await.unwrap();
            let got = ok(&out[1]);
            assert_eq!(got["value"], "the value", "{out:?}");
            *sources
                .entry(got["source"].as_str().unwrap().to_string())
                .or_default() += 1;
        }
        let took_ms = u64::try_from(started.elapsed().as_millis()).unwrap();
        let scripts = redis.script_calls().await - scripts_before;
        assert_eq!(
            origin.gets(),
            1,
            "the origin was called more than once: {sources:?}"
        );
        assert_eq!(sources.get("miss"), Some(&1), "{sources:?}");
        assert_eq!(sources.get("hit"), Some(&199), "{sources:?}");
        // Redis traffic while waiting. The filling host sends one lookup and
        // one fill; its other callers wait in-process. On the other host one
        // lookup re-reads Redis per backoff pause (and once when the fill's
        // wake-up arrives) while its other callers wait in-process; pauses
        // are at least 1, 2, 4, 8, 16 ms, then at least 25 ms, so in
        // `took_ms` (measured, so a slow machine only widens the bound) that
        // is at most 6 + took_ms / 25 lookups (plus 2). Each caller is
        // counted in just before its lookup, so only one that stalled in
        // that instant could look up after the fill (one fresh hit each):
        // 40 allowed. A lookup per round trip (~0.1 ms), even a 2 ms
        // polling loop, or one poller per waiting caller (100 per host)
        // would be far above the bound.
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
/// and 30 polled waits would not all land that early). The plugin runs as
/// its own ACL user (`acl = true`): the scripts publish, and the host
/// subscribes, as that user. A fill nobody waits for, and a lookup that
/// does not wait, publish nothing.
///
/// Each round's filler holds its lease until the test has seen every
/// waiter start, B's waiter flag in Redis and B's subscription in `CLIENT
/// LIST`, and has let them wait a further second (so B's backoff pauses
/// have grown to their 500 ms cap): the fill always finds them waiting.
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
            let (go, started) = (unique("go"), unique("started"));
            let filler = {
                let host = hosts[0].clone();
                let program = json!([
                    {"op": "lookup", "key": key, "lease_ms": 600_000, "as": "l"},
                    {"op": "await_key", "key": go},
                    {"op": "fill", "key": key, "lease": "l", "value": "filled"},
                ]);
                tokio::spawn(async move {
                    let out = probe(&host, "notify", program).await;
                    (out, Instant::now())
                })
            };
            until_exists(&conn, "the filler takes its lease", &keys.lease).await;
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
                assert!(
                    !conn.exists::<_, bool>(&keys.waiting).await.unwrap(),
                    "a lookup with wait-ms 0 set the waiter flag"
                );
            }
            let waiters: Vec<_> = (0..WAITERS)
                .map(|_| {
                    let host = hosts[1].clone();
                    let program = json!([
                        {"op": "incr", "key": started},
                        {"op": "lookup", "key": key, "wait_ms": 60_000},
                    ]);
                    tokio::spawn(async move {
                        let out = probe(&host, "notify", program).await;
                        (out, Instant::now())
                    })
                })
                .collect();
            until_count(
                &conn,
                &format!("round {round}: the waiters start"),
                &ns.kv(&started).unwrap(),
                WAITERS as i64,
            )
            .await;
            until_exists(
                &conn,
                &format!("round {round}: host B waits in Redis"),
                &keys.waiting,
            )
            .await;
            until(
                &format!("round {round}: host B subscribes to its wake-ups"),
                || async {
                    let nodes = redis.nodes_with_client(&[" sub=1 "]).await;
                    if nodes.is_empty() {
                        Err("no client with a subscription".to_string())
                    } else {
                        Ok(())
                    }
                },
            )
            .await;
            // Long enough that a polling waiter would pause 250–500 ms.
            tokio::time::sleep(Duration::from_secs(1)).await;
            release(&conn, "notify", &go).await;
            let (out, filled_at) = filler.await.unwrap();
            assert_eq!(ok(&out[0])["kind"], "miss", "{out:?}");
            assert_eq!(ok(&out[1]), true, "{out:?}");
            assert_eq!(ok(&out[2]), true, "{out:?}");
            for w in waiters {
                let (out, done) = w.await.unwrap();
                assert_eq!(
                    ok(&out[1]),
                    &json!({"kind": "fresh", "value": "filled", "lease": false}),
                    "round {round}: {out:?}"
                );
                latencies.push(done.saturating_duration_since(filled_at));
            }
            assert!(
                !conn.exists::<_, bool>(&keys.waiting).await.unwrap(),
                "round {round}: the fill left the waiter flag"
            );
        }
        let publishes = publish_calls(&redis).await - before;
        assert_eq!(publishes, ROUNDS as u64, "one PUBLISH per awaited fill");
        let slowest = latencies.iter().max().unwrap();
        eprintln!("waiters got the fill after {latencies:?}");
        assert!(
            *slowest < Duration::from_millis(250),
            "a waiter got the value {slowest:?} after the fill (all: {latencies:?}): \
             polled, not woken"
        );
    })
    .await;
}

/// 50 concurrent lookups of a cold key in one host share one lookup and
/// one fill: a handful of scripts reach Redis, not 50. The origin holds
/// the fill until all 50 have counted themselves in just before their
/// lookup, so they all overlap however slowly they start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_host_coalesces_concurrent_lookups() {
    with_timeout(async {
        let redis = RedisServer::start().await;
        let d = tempfile::tempdir().unwrap();
        let (addr, origin) = origin().await;
        let host = shared_host(&redis, d.path(), 128).await;
        host.load(spec("coalesce", addr)).await.unwrap();
        let key = unique("cold");
        let started_key = unique("started");
        origin.set(&key, "v");
        let mut conn = redis.client().await;
        let _: () = redis::cmd("CONFIG")
            .arg("RESETSTAT")
            .query_async(&mut conn)
            .await
            .unwrap();
        let program = json!([
            {"op": "incr", "key": started_key},
            {
                "op": "fetch", "key": key, "origin": held_url(addr, &key, 0),
                "wait_ms": 60_000, "lease_ms": 600_000,
            },
        ]);
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                let (host, program) = (host.clone(), program.clone());
                tokio::spawn(async move { probe(&host, "coalesce", program).await })
            })
            .collect();
        until_count(
            &conn,
            "all 50 callers reach their lookup",
            &kv_key("coalesce", &started_key),
            50,
        )
        .await;
        origin.open();
        for t in tasks {
            let out = t.await.unwrap();
            assert_eq!(ok(&out[1])["value"], "v", "{out:?}");
        }
        assert_eq!(origin.gets(), 1, "origin calls for 50 coalesced lookups");
        let scripts = redis.script_calls().await;
        // One lookup and one fill, plus lookups by invocations that stalled
        // between counting themselves in and looking up until after the
        // fill (fresh hits); never one per caller.
        assert!(
            (2..=6).contains(&scripts),
            "{scripts} scripts for 50 lookups: {:?}",
            redis.command_calls().await
        );
    })
    .await;
}

/// After the fresh TTL every caller gets the stale value at once while
/// exactly one refresh reaches the origin; after the stale TTL, a miss.
///
/// "At once" is proven by order, not by a stopwatch: the origin holds the
/// refresh until the nine other callers have returned the stale value. The
/// stale window is long (10 minutes) so that no delay of a loaded machine
/// can end it mid-test; the expiry is shown on an entry of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_while_revalidate() {
    with_timeout(async {
        let redis = RedisServer::start().await;
        let d = tempfile::tempdir().unwrap();
        let (addr, origin) = origin().await;
        let host = shared_host(&redis, d.path(), 128).await;
        host.load(spec("swr", addr)).await.unwrap();
        let key = unique("swr");
        origin.set(&key, "v1");
        let fetch = |origin: String| {
            json!([{
                "op": "fetch", "key": key, "origin": origin,
                "fresh_ms": 300, "stale_ms": 600_000,
            }])
        };
        let out = probe(&host, "swr", fetch(url(addr, &key, 0))).await;
        assert_eq!(
            ok(&out[0]),
            &json!({"value": "v1", "source": "miss"}),
            "{out:?}"
        );
        origin.set(&key, "v2");
        // The fill landed before the probe returned: 400 ms later the entry
        // is past its 300 ms fresh time (and 10 minutes from its stale end).
        tokio::time::sleep(Duration::from_millis(400)).await;
        let tasks: Vec<_> = (0..10)
            .map(|_| {
                let (host, program) = (host.clone(), fetch(held_url(addr, &key, 0)));
                tokio::spawn(async move {
                    let out = probe(&host, "swr", program).await;
                    ok(&out[0]).clone()
                })
            })
            .collect();
        let since = Instant::now();
        loop {
            let done = tasks.iter().filter(|t| t.is_finished()).count();
            if done >= 9 {
                break;
            }
            assert!(
                since.elapsed() < PATIENCE,
                "only {done} of 10 callers returned while the refresh was held at the \
                 origin (origin calls: {})",
                origin.gets()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        origin.open();
        let mut got = Vec::new();
        for t in tasks {
            got.push(t.await.unwrap());
        }
        let count = |source: &str, value: &str| {
            got.iter()
                .filter(|g| g["source"] == source && g["value"] == value)
                .count()
        };
        assert_eq!(count("refresh", "v2"), 1, "one refresh: {got:?}");
        assert_eq!(
            count("stale", "v1"),
            9,
            "everyone else got the stale value while the refresh was held: {got:?}"
        );
        assert_eq!(origin.gets(), 2, "exactly one refresh reaches the origin");
        let out = probe(
            &host,
            "swr",
            json!([{"op": "lookup", "key": key, "wait_ms": 0}]),
        )
        .await;
        assert_eq!(
            ok(&out[0])["value"],
            "v2",
            "the refresh was stored: {out:?}"
        );

        // Past fresh + stale: a miss. Nothing looks the entry up in between
        // (a stale lookup would take the refresh lease).
        let key = unique("expiring");
        origin.set(&key, "v");
        let out = probe(
            &host,
            "swr",
            json!([{
                "op": "fetch", "key": key, "origin": url(addr, &key, 0),
                "fresh_ms": 300, "stale_ms": 1000,
            }]),
        )
        .await;
        assert_eq!(
            ok(&out[0]),
            &json!({"value": "v", "source": "miss"}),
            "{out:?}"
        );
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let out = probe(
            &host,
            "swr",
            json!([{"op": "lookup", "key": key, "wait_ms": 0}]),
        )
        .await;
        assert_eq!(
            ok(&out[0])["kind"],
            "miss",
            "1.5 s after a 1.3 s entry: {out:?}"
        );
    })
    .await;
}

/// A lease held by a dead host (taken in Redis, never filled) is taken
/// over by one waiter once it expires; a waiter with a shorter deadline
/// gives up at its deadline.
///
/// The dead lease first lasts a minute, so the short waiter's give-up can
/// only be its deadline; once it has given up the test cuts the lease to
/// 1 s and times the takeover from there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_lease_of_a_dead_host_is_taken_over() {
    with_timeout(async {
        let redis = RedisServer::start().await;
        let d = tempfile::tempdir().unwrap();
        let (addr, _origin) = origin().await;
        let host = shared_host(&redis, d.path(), 128).await;
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
                redis::SetOptions::default().with_expiration(redis::SetExpiry::PX(60_000)),
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
                        {"op": "lookup", "key": key, "wait_ms": 60_000, "as": "l"},
                        {"op": "fill", "key": key, "lease": "l", "value": "mine"},
                    ]),
                )
                .await;
                (out, Instant::now())
            })
        };
        let (got, took) = short.await.unwrap();
        assert_eq!(got["kind"], "filling", "{got}");
        // Its 300 ms deadline, not the minute the lease lasts (5 s leaves
        // room for a loaded machine).
        assert!(
            took >= Duration::from_millis(250) && took < Duration::from_secs(5),
            "short waiter returned after {took:?}"
        );
        assert!(!long.is_finished(), "the long waiter did not wait");
        let shortened = Instant::now();
        let still: bool = conn.pexpire(&keys.lease, 1000).await.unwrap();
        assert!(still, "the dead lease vanished early");
        let (out, done) = long.await.unwrap();
        assert_eq!(ok(&out[0])["kind"], "miss", "{out:?}");
        assert_eq!(ok(&out[1]), true, "{out:?}");
        // Not before the lease expired (Redis counts whole ms), and soon
        // after: the waiter's pauses never outlast the lease's remaining
        // time to live (10 s leaves room for a loaded machine; its wait
        // would have lasted a minute).
        let took = done.saturating_duration_since(shortened);
        assert!(
            took >= Duration::from_millis(990) && took < Duration::from_secs(11),
            "took over {took:?} after the lease was cut to 1 s"
        );
        let out = probe(&host, "dead", json!([{"op": "lookup", "key": key}])).await;
        assert_eq!(
            ok(&out[0]),
            &json!({"kind": "fresh", "value": "mine", "lease": false}),
            "{out:?}"
        );
    })
    .await;
}

/// Loads the cache probe as `name` on both hosts, with `wall_time`.
async fn load_both(hosts: &[Arc<Host>; 2], name: &str, origin: SocketAddr, wall_time: Duration) {
    let mut s = spec(name, origin);
    s.quotas.wall_time = wall_time;
    for h in hosts {
        h.load(s.clone()).await.unwrap();
    }
}

/// Wall time of the plugins whose filler is cancelled at its wall-time
/// deadline ("timeout"), and how long after the filler took its lease the
/// waiters start: they then outlive the filler by at least
/// [`TIMEOUT_WAITERS_LATE`] (their own wall time runs as long), and have
/// [`TIMEOUT_WALL_TIME`] − [`TIMEOUT_WAITERS_LATE`] to start waiting before
/// it dies. Both margins are seconds, far beyond scheduling delays.
const TIMEOUT_WALL_TIME: Duration = Duration::from_secs(8);
const TIMEOUT_WAITERS_LATE: Duration = Duration::from_secs(3);

/// Sets up a filler that takes `key`'s lease (for 10 minutes) in plugin
/// `plugin` on `host` and then dies: `trap` traps once the test sets `kv`
/// key `go`; `timeout` sleeps until its wall-time quota cancels it. Returns
/// its task (its result and when it ended) and the lease id it holds, once
/// the lease is in Redis; for `timeout`, only [`TIMEOUT_WAITERS_LATE`]
/// after that.
async fn dying_filler(
    conn: &TestConnection,
    host: &Arc<Host>,
    plugin: &'static str,
    case: &str,
    key: &str,
    go: &str,
) -> (
    tokio::task::JoinHandle<(Result<Vec<Value>, HostInvokeError>, Instant)>,
    String,
) {
    let dies = if case == "trap" {
        json!([
            {"op": "lookup", "key": key, "lease_ms": 600_000},
            {"op": "await_key", "key": go},
            {"op": "trap"},
        ])
    } else {
        json!([
            {"op": "lookup", "key": key, "lease_ms": 600_000},
            {"op": "sleep", "ms": 600_000},
        ])
    };
    let filler = {
        let host = host.clone();
        tokio::spawn(async move {
            let r = run_probe(&host, plugin, dies).await;
            (r, Instant::now())
        })
    };
    let lease = Namespace::new(&PluginName::parse(plugin).unwrap())
        .cache(key)
        .unwrap()
        .lease;
    until_exists(conn, &format!("{case}: the filler takes its lease"), &lease).await;
    let id: String = conn.clone().get(&lease).await.unwrap();
    if case == "timeout" {
        tokio::time::sleep(TIMEOUT_WAITERS_LATE).await;
    }
    (filler, id)
}

/// Checks that the filler still holds lease `id` (it has not died yet, so
/// the waiters really wait for a dead filler), then makes it die.
async fn kill_filler(
    conn: &TestConnection,
    plugin: &str,
    case: &str,
    key: &str,
    id: &str,
    go: &str,
) {
    let lease = Namespace::new(&PluginName::parse(plugin).unwrap())
        .cache(key)
        .unwrap()
        .lease;
    let holder: Option<String> = conn.clone().get(&lease).await.unwrap();
    assert_eq!(
        holder.as_deref(),
        Some(id),
        "{case}: the filler's lease is gone before every waiter waited"
    );
    if case == "trap" {
        release(conn, plugin, go).await;
    }
}

/// Asserts how a dying filler ended.
fn assert_died(case: &str, result: &Result<Vec<Value>, HostInvokeError>) {
    match result {
        Err(HostInvokeError::Invoke(InvokeError::Trap { .. })) if case == "trap" => {}
        Err(HostInvokeError::Invoke(InvokeError::Quota { .. })) if case == "timeout" => {}
        other => panic!("{case}: the filler ended with {other:?}"),
    }
}

/// A filler that traps, or is cancelled at its wall-time deadline, frees
/// its lease when its invocation ends: a waiter on the same host and one on
/// another host take over long before the lease's TTL, and fill.
///
/// The waiter counts itself in just before its lookup (and the one on the
/// other host also shows in Redis as waiting) before the filler dies: the
/// trapping filler traps only when the test says so; the one cancelled by
/// its wall time was started seconds before the waiter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filler_that_traps_or_times_out_is_replaced() {
    with_timeout(async {
        let redis = RedisServer::start().await;
        let conn = redis.client().await;
        let (addr, origin) = origin().await;
        let (_dirs, hosts) = two_hosts(&redis, spec("filler", addr)).await;
        load_both(&hosts, "filler-timeout", addr, TIMEOUT_WALL_TIME).await;
        for (case, waiter) in [("trap", 0), ("trap", 1), ("timeout", 0), ("timeout", 1)] {
            let plugin = if case == "trap" {
                "filler"
            } else {
                "filler-timeout"
            };
            let key = unique(case);
            let (go, started) = (unique("go"), unique("started"));
            origin.set(&key, "origin value");
            let (filler, id) = dying_filler(&conn, &hosts[0], plugin, case, &key, &go).await;
            let waiting = {
                let host = hosts[waiter].clone();
                let program = json!([
                    {"op": "incr", "key": started},
                    {"op": "fetch", "key": key, "origin": url(addr, &key, 0), "wait_ms": 30_000},
                ]);
                tokio::spawn(async move {
                    let out = run_probe(&host, plugin, program).await;
                    (out, Instant::now())
                })
            };
            until_count(
                &conn,
                &format!("{case}/{waiter}: the waiter starts"),
                &kv_key(plugin, &started),
                1,
            )
            .await;
            if waiter == 1 {
                let flag = Namespace::new(&PluginName::parse(plugin).unwrap())
                    .cache(&key)
                    .unwrap()
                    .waiting;
                until_exists(
                    &conn,
                    &format!("{case}/{waiter}: the other host waits"),
                    &flag,
                )
                .await;
            }
            kill_filler(&conn, plugin, case, &key, &id, &go).await;
            let (result, died) = filler.await.unwrap();
            assert_died(case, &result);
            let (out, done) = waiting.await.unwrap();
            let out = out.unwrap_or_else(|e| panic!("{case}/{waiter}: the waiter failed: {e}"));
            assert_eq!(
                ok(&out[1]),
                &json!({"value": "origin value", "source": "miss"}),
                "{case}/{waiter}: {out:?}"
            );
            // The lease lasts 10 minutes; the filler's end frees it (10 s
            // leaves room for a loaded machine; the waiter's wait is 30 s).
            let after = done.saturating_duration_since(died);
            assert!(
                after < Duration::from_secs(10),
                "{case}/{waiter}: took over {after:?} after the filler ended"
            );
        }
    })
    .await;
}

/// 20 callers on two hosts wait for a key whose filler traps, or is
/// cancelled at its wall-time deadline: once it is dead, exactly one of
/// them calls the origin, and every one gets the value before its `wait`.
///
/// All 20 count themselves in just before their lookup before the filler
/// dies (as in [`filler_that_traps_or_times_out_is_replaced`]).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_waiters_take_over_from_a_dead_filler_once() {
    with_timeout(async {
        let redis = RedisServer::start().await;
        let conn = redis.client().await;
        let (addr, origin) = origin().await;
        let (_dirs, hosts) = two_hosts(&redis, spec("takeover", addr)).await;
        load_both(&hosts, "takeover-timeout", addr, TIMEOUT_WALL_TIME).await;
        for case in ["trap", "timeout"] {
            let plugin = if case == "trap" {
                "takeover"
            } else {
                "takeover-timeout"
            };
            // A waiter that is not handed the value by then gets a timeout
            // error (the timeout plugin's waiters would be cancelled at
            // their wall time first, also an error).
            let wait_ms = 30_000;
            let key = unique(case);
            let (go, started) = (unique("go"), unique("started"));
            origin.set(&key, "origin value");
            let gets_before = origin.gets();
            let (filler, id) = dying_filler(&conn, &hosts[0], plugin, case, &key, &go).await;
            let waiters: Vec<_> = (0..20)
                .map(|i| {
                    let host = hosts[i % 2].clone();
                    let program = json!([
                        {"op": "incr", "key": started},
                        {
                            "op": "fetch", "key": key, "origin": url(addr, &key, 100),
                            "wait_ms": wait_ms,
                        },
                    ]);
                    tokio::spawn(async move {
                        let out = run_probe(&host, plugin, program).await;
                        (out, Instant::now())
                    })
                })
                .collect();
            until_count(
                &conn,
                &format!("{case}: the 20 waiters start"),
                &kv_key(plugin, &started),
                20,
            )
            .await;
            kill_filler(&conn, plugin, case, &key, &id, &go).await;
            let (result, died) = filler.await.unwrap();
            assert_died(case, &result);
            let mut sources = HashMap::<String, usize>::new();
            for w in waiters {
                let (out, done) = w.await.unwrap();
                let out = out.unwrap_or_else(|e| panic!("{case}: a waiter failed: {e}"));
                let got = ok(&out[1]);
                assert_eq!(got["value"], "origin value", "{case}: {out:?}");
                // Well within its wait, counted from the filler's end (the
                // lease itself lasts 10 minutes).
                let after = done.saturating_duration_since(died);
                assert!(
                    after < Duration::from_secs(10),
                    "{case}: a waiter got the value {after:?} after the filler died"
                );
                *sources
                    .entry(got["source"].as_str().unwrap().to_string())
                    .or_default() += 1;
            }
            assert_eq!(
                origin.gets() - gets_before,
                1,
                "{case}: origin calls after the filler died: {sources:?}"
            );
            assert_eq!(sources.get("miss"), Some(&1), "{case}: {sources:?}");
            assert_eq!(sources.get("hit"), Some(&19), "{case}: {sources:?}");
        }
    })
    .await;
}

/// A fill with an expired lease (someone else filled since) or a
/// superseded one (`set`, `invalidate`) stores nothing.
///
/// The slow filler holds its 200 ms lease until the test has seen it
/// expire, looked up and filled anew, and only then lets it fill.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_fills_are_rejected() {
    with_timeout(async {
        let redis = RedisServer::start().await;
        let conn = redis.client().await;
        let d = tempfile::tempdir().unwrap();
        let (addr, _origin) = origin().await;
        let host = shared_host(&redis, d.path(), 128).await;
        host.load(spec("fills", addr)).await.unwrap();
        let key = unique("slow");
        let (looked, go) = (unique("looked"), unique("go"));
        let slow = {
            let (host, key, looked, go) = (host.clone(), key.clone(), looked.clone(), go.clone());
            tokio::spawn(async move {
                probe(
                    &host,
                    "fills",
                    json!([
                        {"op": "lookup", "key": key, "lease_ms": 200, "as": "old"},
                        {"op": "incr", "key": looked},
                        {"op": "await_key", "key": go},
                        {"op": "fill", "key": key, "lease": "old", "value": "old"},
                    ]),
                )
                .await
            })
        };
        until_count(
            &conn,
            "the slow filler takes its lease",
            &kv_key("fills", &looked),
            1,
        )
        .await;
        let lease = Namespace::new(&PluginName::parse("fills").unwrap())
            .cache(&key)
            .unwrap()
            .lease;
        until_gone(&conn, "the slow filler's 200 ms lease expires", &lease).await;
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
        assert_eq!(ok(&out[1]), true, "{out:?}");
        release(&conn, "fills", &go).await;
        let out = slow.await.unwrap();
        assert_eq!(ok(&out[0])["kind"], "miss", "{out:?}");
        assert_eq!(
            ok(&out[3]),
            false,
            "an expired lease overwrote a newer value: {out:?}"
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
        assert_eq!(ok(&out[0])["value"], "new", "{out:?}");
        assert_eq!(ok(&out[1])["kind"], "miss", "{out:?}");
        assert_eq!(ok(&out[3]), false, "{out:?}");
        assert_eq!(ok(&out[4])["value"], "written", "{out:?}");
        assert_eq!(ok(&out[5]), true, "{out:?}");
        assert_eq!(ok(&out[6])["kind"], "miss", "{out:?}");
        assert_eq!(ok(&out[8]), false, "{out:?}");
        assert_eq!(ok(&out[9])["kind"], "miss", "{out:?}");
        assert_eq!(err(&out[10]).0, "invalid-argument", "{out:?}");
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
        let host = shared_host(&redis, d.path(), 128).await;
        host.load(spec("tags", addr)).await.unwrap();
        let (tag, other) = (unique("t"), unique("u"));
        let keys: Vec<String> = (0..50).map(|i| unique(&format!("k{i}"))).collect();
        let mut ops: Vec<Value> = keys
            .iter()
            .map(|k| json!({"op": "set", "key": k, "value": "v", "tags": [tag, other], "fresh_ms": 600_000}))
            .collect();
        let lone = unique("lone");
        ops.push(json!({"op": "set", "key": lone, "value": "v", "tags": [other], "fresh_ms": 600_000}));
        probe(&host, "tags", Value::Array(ops)).await;
        let look =
            |k: &str, tags: Value| json!({"op": "lookup", "key": k, "tags": tags, "wait_ms": 0});
        let out = probe(&host, "tags", json!([look(&keys[0], json!([other, tag]))])).await;
        assert_eq!(ok(&out[0])["kind"], "fresh", "tag order does not matter: {out:?}");

        let mut conn = redis.client().await;
        let _: () = redis::cmd("CONFIG")
            .arg("RESETSTAT")
            .query_async(&mut conn)
            .await
            .unwrap();
        let out = probe(&host, "tags", json!([{"op": "invalidate_tag", "tag": tag}])).await;
        assert_eq!(ok(&out[0]), &Value::Null, "{out:?}");
        let calls = redis.command_calls().await;
        assert_eq!(
            calls,
            HashMap::from([("incr".to_string(), 1)]),
            "one command for 50 entries: {calls:?}"
        );

        let ops: Vec<Value> = keys.iter().map(|k| look(k, json!([tag, other]))).collect();
        for r in probe(&host, "tags", Value::Array(ops)).await {
            assert_eq!(ok(&r)["kind"], "miss", "{r}");
        }
        let out = probe(&host, "tags", json!([look(&lone, json!([other]))])).await;
        assert_eq!(ok(&out[0])["kind"], "fresh", "{out:?}");

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
        assert_eq!(ok(&out[2]), true, "{out:?}");
        assert_eq!(ok(&out[3])["kind"], "miss", "{out:?}");

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
        assert_eq!(ok(&out[1]), true, "{out:?}");
        assert_eq!(ok(&out[2]), false, "{out:?}");
        assert_eq!(ok(&out[3])["kind"], "miss", "{out:?}");
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
        let host = shared_host(&redis, d.path(), 128).await;
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
        assert_eq!(got[1], &json!({"value": "v1", "source": "hit"}), "{got:?}");
        assert_eq!(got[3], &json!({"value": "v2", "source": "miss"}), "{got:?}");
        assert_eq!(got[4], &json!({"value": "v2", "source": "hit"}), "{got:?}");
        assert_eq!(got[6], &json!({"value": "v3", "source": "hit"}), "{got:?}");
        assert_eq!(origin.get(&k).as_deref(), Some("v3"), "what the origin holds");
        assert_eq!(origin.gets(), 1, "only the read after write-around reached the origin");

        let missing = unique("missing");
        let fetch = json!({"op": "fetch", "key": missing, "origin": url(addr, &missing, 0), "negative_ms": 600_000});
        let out = probe(&host, "writes", json!([fetch, fetch])).await;
        assert_eq!(ok(&out[0]), &json!({"value": null, "source": "miss"}), "{out:?}");
        assert_eq!(ok(&out[1]), &json!({"value": null, "source": "hit"}), "{out:?}");
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
        let host = shared_host(&redis, d.path(), 128).await;
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
            &json!({"kind": "fresh", "value": "v", "lease": false}),
            "{out:?}"
        );
        assert_eq!(
            ok(&out[4]),
            &json!({"kind": "fresh", "value": "v", "lease": true}),
            "{out:?}"
        );
        assert_eq!(
            ok(&out[5]),
            &json!({"kind": "fresh", "value": "v", "lease": false}),
            "{out:?}"
        );
        assert_eq!(ok(&out[6]), true, "{out:?}");
        assert_eq!(ok(&out[7])["value"], "v2", "{out:?}");

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
            &json!({"kind": "fresh", "value": "written", "lease": true}),
            "{out:?}"
        );
        assert_eq!(
            ok(&out[6]),
            &json!({"kind": "fresh", "value": "written", "lease": false}),
            "{out:?}"
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
        let host = shared_host(&redis, d.path(), 128).await;
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
        assert_eq!(kind, "invalid-argument", "{out:?}");
        assert!(
            message.contains("5000 bytes") && message.contains("max-reply quota (4096 bytes)"),
            "{message}"
        );
        assert_eq!(
            ok(&out[2])["kind"],
            "miss",
            "the refused fill freed its lease: {out:?}"
        );
        assert_eq!(err(&out[3]).0, "invalid-argument", "{out:?}");
        assert_eq!(ok(&out[4]), true, "{out:?}");
        assert_eq!(
            ok(&out[5])["value"].as_str().unwrap().len(),
            4096,
            "{out:?}"
        );
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
        let host = shared_host(&redis, d.path(), 128).await;
        host.load(spec("typed", addr)).await.unwrap();
        let ns = Namespace::new(&PluginName::parse("typed").unwrap());
        let mut conn = redis.client().await;

        let ada = json!({"id": 42, "name": "Ada", "teams": ["core", "ops"]});
        let k = unique("user");
        origin.set(&k, &ada.to_string());
        let fetch = json!({"op": "fetch_json", "key": k, "origin": url(addr, &k, 0)});
        let out = probe(&host, "typed", json!([fetch, fetch])).await;
        assert_eq!(ok(&out[0]), &ada, "{out:?}");
        assert_eq!(ok(&out[1]), &ada, "{out:?}");
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
        assert_eq!(ok(&out[0]), &Value::Null, "{out:?}");
        assert_eq!(ok(&out[1]), &grace, "{out:?}");
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
            "origin": url(addr, &missing, 0), "negative_ms": 600_000,
        });
        let out = probe(&host, "typed", json!([fetch, fetch])).await;
        assert_eq!(ok(&out[0]), &Value::Null, "{out:?}");
        assert_eq!(ok(&out[1]), &Value::Null, "{out:?}");
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
        assert_eq!(kind, "invalid-argument", "{out:?}");
        assert!(message.contains("is not the expected JSON"), "{message}");
    })
    .await;
}
