//! Hostile plugins against real Redis: each quota stops its plugin, names
//! itself, is counted, and leaves the host serving everyone else.

use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::AsyncCommands;
use redloom::bindings::types::Quota;
use redloom::host::{Host, HostInvokeError};
use redloom::namespace::PluginName;
use redloom::plugin::{InvokeError, PluginSpec};
use redloom_tests::{RedisServer, host, host_options, spec};
use serde_json::{Value, json};

const TEST_TIMEOUT: Duration = Duration::from_secs(120);

async fn with_timeout<F: std::future::Future<Output = ()>>(f: F) {
    tokio::time::timeout(TEST_TIMEOUT, f)
        .await
        .expect("test timed out");
}

fn name(s: &str) -> PluginName {
    PluginName::parse(s).unwrap()
}

/// The quota an invocation failed on, or a panic describing what happened instead.
fn quota_of(r: Result<Vec<u8>, HostInvokeError>) -> Quota {
    match r {
        Err(HostInvokeError::Invoke(e)) => e
            .quota()
            .unwrap_or_else(|| panic!("not a quota error: {e}")),
        Err(e) => panic!("not a quota error: {e}"),
        Ok(out) => panic!("succeeded: {}", String::from_utf8_lossy(&out)),
    }
}

/// The well-behaved neighbour still answers.
async fn neighbour_ok(host: &Host) {
    let out = host
        .invoke(
            &name("neighbour"),
            json!([{"op": "incr", "key": "alive"}])
                .to_string()
                .as_bytes(),
        )
        .await
        .expect("the well-behaved plugin keeps working");
    let v: Value = serde_json::from_slice(&out).unwrap();
    assert!(v[0]["ok"].is_i64(), "{v}");
}

async fn load(host: &Host, s: PluginSpec) {
    host.load(s).await.expect("loads");
}

/// CPU time counts guest code only: a guest burning CPU is stopped near its
/// limit, while a guest that spends long in host calls (here: waiting for its
/// Redis rate bucket) is not charged for that time — and the wall-time
/// deadline, which does count it, stops the same guest when set lower.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cpu_counts_guest_time_and_wall_time_counts_everything() {
    with_timeout(async {
        let redis = RedisServer::start().await;
        let data = tempfile::tempdir().unwrap();
        let host = host(&redis, data.path()).await;
        load(&host, spec("neighbour", "kv-probe")).await;

        let mut s = spec("burner", "hostile");
        s.quotas.cpu = Duration::from_millis(200);
        load(&host, s).await;
        let started = Instant::now();
        let q = quota_of(host.invoke(&name("burner"), b"burn 5000").await);
        assert_eq!(q, Quota::Cpu);
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "took {:?}",
            started.elapsed()
        );
        let stats = host.plugin(&name("burner")).unwrap().stats();
        assert_eq!(stats.rejections_of("cpu"), 1);
        assert!(
            stats.guest_cpu >= Duration::from_millis(200),
            "{:?}",
            stats.guest_cpu
        );
        neighbour_ok(&host).await;

        // 25 commands at 10/s (a burst of 10): ~1.5 s waiting in host calls.
        let ops: Vec<Value> = (0..25)
            .map(|_| json!({"op": "incr", "key": "slow"}))
            .collect();
        let input = Value::Array(ops).to_string();
        let mut s = spec("waiter", "kv-probe");
        s.quotas.cpu = Duration::from_millis(100);
        s.quotas.redis_rate = 10;
        load(&host, s).await;
        let started = Instant::now();
        host.invoke(&name("waiter"), input.as_bytes())
            .await
            .expect("time awaiting the host is not guest CPU time");
        assert!(
            started.elapsed() >= Duration::from_millis(1_000),
            "{:?}",
            started.elapsed()
        );
        let cpu = host.plugin(&name("waiter")).unwrap().stats().guest_cpu;
        assert!(cpu < Duration::from_millis(100), "charged {cpu:?} of CPU");

        let mut s = spec("impatient", "kv-probe");
        s.quotas.wall_time = Duration::from_millis(500);
        s.quotas.redis_rate = 10;
        load(&host, s).await;
        assert_eq!(
            quota_of(host.invoke(&name("impatient"), input.as_bytes()).await),
            Quota::WallTime
        );
        neighbour_ok(&host).await;
    })
    .await;
}

/// A fuel budget stops a guest after a fixed amount of work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fuel_budget() {
    with_timeout(async {
        let redis = RedisServer::start().await;
        let data = tempfile::tempdir().unwrap();
        let mut options = host_options(&redis, data.path());
        options.runtime.fuel = true;
        let host = Host::start(options).await.unwrap();
        let mut s = spec("fueled", "hostile");
        s.quotas.fuel = Some(5_000_000);
        load(&host, s).await;
        let e = host
            .invoke(&name("fueled"), b"burn 10000")
            .await
            .unwrap_err();
        assert!(e.to_string().contains("fuel budget of 5000000"), "{e}");
        assert_eq!(quota_of(Err(e)), Quota::Cpu);
        // Plenty for a small call.
        let out = host.invoke(&name("fueled"), b"burn 0").await.unwrap();
        assert_eq!(out, b"done");

        // Without fuel metering in the engine, a fuel quota is refused at load.
        let plain = Host::start(host_options(&redis, data.path()))
            .await
            .unwrap();
        let mut s = spec("fueled", "hostile");
        s.quotas.fuel = Some(1);
        let e = plain.load(s).await.err().unwrap();
        assert!(e.to_string().contains("fuel metering"), "{e}");
    })
    .await;
}

/// Redis commands per invocation: the command that would exceed the quota is
/// never sent, and the invocation fails with `redis-ops` even though the
/// guest swallowed the error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_ops_per_invocation() {
    with_timeout(async {
        let redis = RedisServer::start().await;
        let data = tempfile::tempdir().unwrap();
        let host = host(&redis, data.path()).await;
        load(&host, spec("neighbour", "kv-probe")).await;
        let mut s = spec("flooder", "hostile");
        s.quotas.redis_ops = 50;
        load(&host, s).await;
        assert_eq!(
            quota_of(host.invoke(&name("flooder"), b"flood").await),
            Quota::RedisOps
        );
        let mut conn = redis.client().await;
        let n: i64 = conn.get("rl:flooder:kv:flood").await.unwrap();
        assert_eq!(n, 50, "exactly the allowed commands reached Redis");
        let stats = host.plugin(&name("flooder")).unwrap().stats();
        assert_eq!(stats.rejections_of("redis-ops"), 1);
        assert_eq!(stats.redis_commands, 50);
        neighbour_ok(&host).await;
    })
    .await;
}

/// Redis commands per second, shared by every invocation of a plugin:
/// concurrent floods overrun the bucket and are stopped with `redis-rate`;
/// one that ends up alone is merely paced, and runs into its deadline; in
/// total no more commands reach Redis than the rate allows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_rate_per_plugin() {
    with_timeout(async {
        let redis = RedisServer::start().await;
        let data = tempfile::tempdir().unwrap();
        let host = Arc::new(host(&redis, data.path()).await);
        load(&host, spec("neighbour", "kv-probe")).await;
        let mut s = spec("flooder", "hostile");
        s.quotas.redis_ops = 1_000_000;
        s.quotas.redis_rate = 20;
        s.quotas.wall_time = Duration::from_secs(2);
        load(&host, s).await;
        let started = Instant::now();
        let tasks: Vec<_> = (0..12)
            .map(|_| {
                let host = host.clone();
                tokio::spawn(async move { host.invoke(&name("flooder"), b"flood").await })
            })
            .collect();
        let mut rate_limited = 0;
        for t in tasks {
            match quota_of(t.await.unwrap()) {
                Quota::RedisRate => rate_limited += 1,
                Quota::WallTime => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        // A command may wait up to 250 ms, so at 20/s about 5 callers can be
        // paced at once; the others must be refused.
        assert!(
            rate_limited >= 5,
            "only {rate_limited} of 12 floods hit redis-rate"
        );
        let elapsed = started.elapsed().as_secs_f64();
        let mut conn = redis.client().await;
        let n: i64 = conn.get("rl:flooder:kv:flood").await.unwrap();
        let bound = 20.0 + 20.0 * elapsed + 12.0;
        assert!((n as f64) <= bound, "{n} commands in {elapsed:.2}s at 20/s");
        neighbour_ok(&host).await;
    })
    .await;
}

/// Payload quotas: a huge output, a huge Redis reply and a huge input.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payload_limits() {
    with_timeout(async {
        let redis = RedisServer::start().await;
        let data = tempfile::tempdir().unwrap();
        let host = host(&redis, data.path()).await;
        load(&host, spec("neighbour", "kv-probe")).await;
        let mut s = spec("big", "hostile");
        s.quotas.max_output = 1 << 20;
        s.quotas.max_reply = 1 << 20;
        load(&host, s).await;
        let e = host
            .invoke(&name("big"), b"huge-output 8")
            .await
            .unwrap_err();
        assert!(e.to_string().contains("max-output"), "{e}");
        let e = host.invoke(&name("big"), b"big-reply 2").await.unwrap_err();
        assert!(e.to_string().contains("max-reply"), "{e}");
        assert_eq!(quota_of(Err(e)), Quota::Payload);
        let e = host
            .invoke(&name("big"), &vec![b' '; (1 << 20) + 1])
            .await
            .unwrap_err();
        assert!(e.to_string().contains("max-input"), "{e}");
        assert_eq!(
            host.invoke(&name("big"), b"big-reply 0").await.unwrap(),
            b"0"
        );
        let stats = host.plugin(&name("big")).unwrap().stats();
        assert_eq!(stats.rejections_of("payload"), 3);
        neighbour_ok(&host).await;
    })
    .await;
}

/// Stack overflow and a guest looping in host calls forever are contained.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recursion_and_host_call_loops() {
    with_timeout(async {
        let redis = RedisServer::start().await;
        let data = tempfile::tempdir().unwrap();
        let host = host(&redis, data.path()).await;
        load(&host, spec("neighbour", "kv-probe")).await;
        let mut s = spec("bad", "hostile");
        s.quotas.wall_time = Duration::from_millis(500);
        s.quotas.redis_ops = 1_000_000;
        s.quotas.redis_rate = 0;
        load(&host, s).await;
        let e = host.invoke(&name("bad"), b"recurse").await.unwrap_err();
        assert!(
            matches!(&e, HostInvokeError::Invoke(InvokeError::Trap { message, .. }) if message.contains("stack")),
            "{e}"
        );
        neighbour_ok(&host).await;
        let q = quota_of(host.invoke(&name("bad"), b"yield-loop").await);
        assert!(q == Quota::WallTime || q == Quota::Cpu, "{q:?}");
        neighbour_ok(&host).await;
        let stats = host.plugin(&name("bad")).unwrap().stats();
        assert_eq!(stats.errors_of("trap"), 1);
        assert_eq!(stats.invocations, 2);
    })
    .await;
}

/// No filesystem, environment, arguments or network for plugins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_escape_from_the_sandbox() {
    with_timeout(async {
        let redis = RedisServer::start().await;
        let data = tempfile::tempdir().unwrap();
        let host = host(&redis, data.path()).await;
        load(&host, spec("escapee", "hostile")).await;
        let out =
            String::from_utf8(host.invoke(&name("escapee"), b"escape").await.unwrap()).unwrap();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines,
            [
                "fs: error",
                "dir: error",
                "env: 0 vars",
                "args: 0",
                "net: error"
            ],
            "{out}"
        );
    })
    .await;
}

/// Beyond its concurrency a plugin's invocations wait in a bounded queue;
/// the rest are rejected at once, and none hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_queue_and_rejection() {
    with_timeout(async {
        let redis = RedisServer::start().await;
        let data = tempfile::tempdir().unwrap();
        let host = Arc::new(host(&redis, data.path()).await);
        let mut s = spec("busy", "hostile");
        s.quotas.concurrency = 2;
        s.quotas.queue = 2;
        s.quotas.queue_wait = Duration::from_secs(20);
        load(&host, s).await;
        let tasks: Vec<_> = (0..10)
            .map(|_| {
                let host = host.clone();
                tokio::spawn(async move {
                    let started = Instant::now();
                    let r = host.invoke(&name("busy"), b"burn 300").await;
                    (r, started.elapsed())
                })
            })
            .collect();
        let (mut ok, mut rejected) = (0, 0);
        for t in tasks {
            let (r, elapsed) = t.await.unwrap();
            match r {
                Ok(out) => {
                    assert_eq!(out, b"done");
                    ok += 1;
                }
                Err(e) => {
                    assert_eq!(quota_of(Err(e)), Quota::Concurrency);
                    assert!(
                        elapsed < Duration::from_millis(250),
                        "a rejection took {elapsed:?}"
                    );
                    rejected += 1;
                }
            }
        }
        assert_eq!(
            (ok, rejected),
            (4, 6),
            "2 ran, 2 waited then ran, 6 were turned away"
        );

        // A queue wait that runs out is a rejection too.
        let mut s = spec("short", "hostile");
        s.quotas.concurrency = 1;
        s.quotas.queue_wait = Duration::from_millis(100);
        load(&host, s).await;
        let h = host.clone();
        let long = tokio::spawn(async move { h.invoke(&name("short"), b"burn 600").await });
        tokio::time::sleep(Duration::from_millis(100)).await;
        let e = host.invoke(&name("short"), b"burn 1").await.unwrap_err();
        assert!(e.to_string().contains("queue-wait"), "{e}");
        long.await.unwrap().unwrap();
        assert_eq!(
            host.plugin(&name("short"))
                .unwrap()
                .stats()
                .rejections_of("concurrency"),
            1
        );
    })
    .await;
}

/// A CPU-bound plugin running at its concurrency limit, on a host whose
/// instance slots it fills, does not stop a light plugin's invocations from
/// completing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_plugin_does_not_starve_a_light_one() {
    with_timeout(async {
        let redis = RedisServer::start().await;
        let data = tempfile::tempdir().unwrap();
        let mut options = host_options(&redis, data.path());
        options.runtime.max_instances = 4;
        let host = Arc::new(Host::start(options).await.unwrap());
        let mut s = spec("heavy", "hostile");
        s.quotas.concurrency = 4;
        s.quotas.queue = 100;
        s.quotas.queue_wait = Duration::from_secs(60);
        load(&host, s).await;
        let mut s = spec("neighbour", "kv-probe");
        s.quotas.queue_wait = Duration::from_secs(30);
        load(&host, s).await;

        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let heavy: Vec<_> = (0..8)
            .map(|_| {
                let (host, stop) = (host.clone(), stop.clone());
                tokio::spawn(async move {
                    let mut runs = 0;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        host.invoke(&name("heavy"), b"burn 100")
                            .await
                            .expect("heavy runs");
                        runs += 1;
                    }
                    runs
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(300)).await;
        for _ in 0..10 {
            tokio::time::timeout(Duration::from_secs(20), neighbour_ok(&host))
                .await
                .expect("the light plugin completes while the heavy one saturates the host");
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut heavy_runs = 0;
        for h in heavy {
            heavy_runs += h.await.unwrap();
        }
        assert!(heavy_runs >= 8, "the heavy plugin ran too ({heavy_runs})");
    })
    .await;
}

/// `acl = true`: the plugin's commands run as its own Redis ACL user, which
/// Redis itself confines to the plugin's keys, scripts included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_user_per_plugin() {
    with_timeout(async {
        let redis = RedisServer::start().await;
        let data = tempfile::tempdir().unwrap();
        let host = host(&redis, data.path()).await;
        let mut s = spec("locked", "kv-probe");
        s.acl = true;
        // Shared names are the exception to the plugin's own prefix.
        s.triggers.shared_channels = vec!["lobby".into(), "room:*".into()];
        s.triggers.shared_queues = vec!["jobs".into(), "a*b".into()];
        load(&host, s).await;
        let mut admin = redis.client().await;
        // Scripts must reload as the plugin user after a flush (NOSCRIPT).
        let _: () = redis::cmd("SCRIPT")
            .arg("FLUSH")
            .query_async(&mut admin)
            .await
            .unwrap();
        let ops = json!([
            {"op": "set", "key": "k", "value": "v"},
            {"op": "get", "key": "k"},
            {"op": "cas", "key": "k", "expected": "v", "new": "w"},
            {"op": "incr", "key": "n"},
        ]);
        let out = host
            .invoke(&name("locked"), ops.to_string().as_bytes())
            .await
            .unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            v,
            json!([{"ok": true}, {"ok": "v"}, {"ok": true}, {"ok": 1}])
        );

        let clients: String = redis::cmd("CLIENT")
            .arg("LIST")
            .query_async(&mut admin)
            .await
            .unwrap();
        assert!(clients.contains("user=redloom-locked"), "{clients}");

        let dry = |args: &[&str]| {
            let mut c = redis::cmd("ACL");
            c.arg("DRYRUN").arg("redloom-locked").arg(args);
            c
        };
        for allowed in [
            vec!["GET", "rl:locked:kv:k"],
            vec!["PUBLISH", "rl:locked:ch:news", "x"],
            vec!["PUBLISH", "rl::ch:lobby", "x"],
            vec!["PUBLISH", "rl::ch:room:7", "x"],
            vec!["XLEN", "rl::q:{/jobs}:stream"],
            vec!["XLEN", "rl::q:{/a*b}:stream"],
        ] {
            let r: String = dry(&allowed).query_async(&mut admin).await.unwrap();
            assert_eq!(r, "OK", "{allowed:?}");
        }
        for denied in [
            vec!["GET", "rl:other:kv:k"],
            vec!["SET", "plain", "x"],
            vec![
                "EVALSHA",
                "0000000000000000000000000000000000000000",
                "1",
                "rl:other:kv:k",
            ],
            vec!["KEYS", "*"],
            vec!["SCAN", "0"],
            vec!["FLUSHALL"],
            vec!["CONFIG", "GET", "*"],
            vec!["SCRIPT", "FLUSH"],
            vec!["PUBLISH", "elsewhere", "x"],
            vec!["PUBLISH", "rl::ch:lobby2", "x"],
            vec!["XLEN", "rl::q:{/other}:stream"],
            vec!["XLEN", "rl::q:{/jobs2}:stream"],
            // `*` in a shared queue's name is the name, not a wildcard.
            vec!["XLEN", "rl::q:{/axb}:stream"],
        ] {
            let r: redis::RedisResult<String> = dry(&denied).query_async(&mut admin).await;
            match r {
                Ok(s) => assert!(s.contains("no permissions"), "{denied:?} allowed: {s}"),
                Err(e) => panic!("{denied:?}: {e}"),
            }
        }
    })
    .await;
}
