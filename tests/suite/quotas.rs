//! Hostile plugins against real Redis: each quota stops its plugin, names
//! itself, is counted, and leaves the host serving everyone else.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use redis::AsyncCommands;
use redloom::config::{Config, Quotas};
use redloom::host::{Host, HostInvokeError};
use redloom::namespace::PluginName;
use redloom::plugin::{InvokeError, LoadError, PluginSpec};
use redloom::quota::Quota;
use redloom_tests::with_timeout;
use redloom_tests::{
    RedisServer, get_i64, host, host_options, spec, unique, wait_for, workspace_root,
};
use serde_json::{Value, json};

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
        // Room in wall time for 200 ms of CPU on a low-priority thread beside
        // CPU hogs. `spin` never ends by itself (`burn N` computes for N ms
        // of wall time, which a starved thread may finish within 200 ms of
        // CPU).
        s.quotas.wall_time = Duration::from_secs(120);
        load(&host, s).await;
        let q = quota_of(host.invoke(&name("burner"), b"spin").await);
        assert_eq!(q, Quota::Cpu);
        // Stopped near its limit, measured in the CPU it used (not wall
        // time: on a loaded machine 200 ms of CPU may take seconds).
        let stats = host.plugin(&name("burner")).unwrap().stats();
        assert_eq!(stats.rejections_of("cpu"), 1);
        assert!(
            stats.guest_cpu >= Duration::from_millis(200)
                && stats.guest_cpu < Duration::from_millis(1000),
            "burned {:?} of CPU against a 200 ms quota",
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
        // Room to store what is then too big to read back.
        s.quotas.max_write = 4 << 20;
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
        // Over max-write, a value is not even sent.
        let e = host.invoke(&name("big"), b"write 5120").await.unwrap_err();
        assert!(e.to_string().contains("max-write"), "{e}");
        assert_eq!(quota_of(Err(e)), Quota::Payload);
        let stats = host.plugin(&name("big")).unwrap().stats();
        assert_eq!(stats.rejections_of("payload"), 4);
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
/// the rest are rejected at once (not after the queue wait), and none hang.
/// The running invocations hold their slots until the test releases them,
/// so the outcome does not depend on how fast the machine is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_queue_and_rejection() {
    with_timeout(async {
        let redis = RedisServer::start().await;
        let data = tempfile::tempdir().unwrap();
        let host = Arc::new(host(&redis, data.path()).await);
        let mut s = spec("busy", "hostile");
        s.quotas.concurrency = 2;
        s.quotas.queue = 2;
        let queue_wait = Duration::from_secs(60);
        s.quotas.queue_wait = queue_wait;
        s.quotas.wall_time = Duration::from_secs(120);
        load(&host, s).await;
        let (release, mark) = (unique("release"), unique("running"));
        let input = format!("hold {release} {mark}");
        let tasks: Vec<_> = (0..10)
            .map(|_| {
                let (host, input) = (host.clone(), input.clone());
                tokio::spawn(async move {
                    let started = Instant::now();
                    let r = host.invoke(&name("busy"), input.as_bytes()).await;
                    (r, started.elapsed())
                })
            })
            .collect();
        // Two run (and hold), two wait in the queue, six are turned away.
        let mut conn = redis.client().await;
        let running = wait_for(
            &mut conn,
            &format!("rl:busy:kv:{mark}"),
            2,
            Duration::from_secs(60),
        )
        .await;
        assert_eq!(running, 2, "two invocations run at once");
        let deadline = Instant::now() + Duration::from_secs(60);
        while tasks.iter().filter(|t| t.is_finished()).count() < 6 {
            assert!(
                Instant::now() < deadline,
                "only {} of the 8 invocations over the limit were turned away",
                tasks.iter().filter(|t| t.is_finished()).count()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _: () = conn.set(format!("rl:busy:kv:{release}"), 1).await.unwrap();
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
                    // At once: a rejection never waits out the queue.
                    assert!(
                        elapsed < queue_wait / 4,
                        "a rejection took {elapsed:?} (queue-wait {queue_wait:?})"
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
        assert_eq!(get_i64(&mut conn, &format!("rl:busy:kv:{mark}")).await, 4);

        // A queue wait that runs out is a rejection too.
        let mut s = spec("short", "hostile");
        s.quotas.concurrency = 1;
        s.quotas.queue_wait = Duration::from_millis(100);
        s.quotas.wall_time = Duration::from_secs(120);
        load(&host, s).await;
        let (release, mark) = (unique("release"), unique("running"));
        let h = host.clone();
        let input = format!("hold {release} {mark}");
        let long = tokio::spawn(async move { h.invoke(&name("short"), input.as_bytes()).await });
        let running = wait_for(
            &mut conn,
            &format!("rl:short:kv:{mark}"),
            1,
            Duration::from_secs(60),
        )
        .await;
        assert_eq!(running, 1, "the long invocation runs");
        let started = Instant::now();
        let e = host.invoke(&name("short"), b"burn 1").await.unwrap_err();
        assert!(e.to_string().contains("queue-wait"), "{e}");
        assert!(
            started.elapsed() >= Duration::from_millis(100),
            "rejected after {:?}, before its queue-wait ran out",
            started.elapsed()
        );
        let _: () = conn.set(format!("rl:short:kv:{release}"), 1).await.unwrap();
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

/// Starts `inputs` on the hostile `plugin` at once; each must increment the
/// key `mark` when it starts running. Once all run, the well-behaved
/// neighbour must answer (within a generous timeout) while every one of them
/// is still running. Returns their results.
async fn neighbour_ok_during(
    host: &Arc<Host>,
    redis: &RedisServer,
    plugin: &str,
    inputs: &[String],
    mark: &str,
) -> Vec<Result<Vec<u8>, HostInvokeError>> {
    let hostile: Vec<_> = inputs
        .iter()
        .map(|input| {
            let (host, name, input) = (host.clone(), name(plugin), input.clone());
            tokio::spawn(async move { host.invoke(&name, input.as_bytes()).await })
        })
        .collect();
    let mut conn = redis.client().await;
    let started = wait_for(
        &mut conn,
        &format!("rl:{plugin}:kv:{mark}"),
        inputs.len() as i64,
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(started, inputs.len() as i64, "{plugin}: not all started");
    for _ in 0..3 {
        tokio::time::timeout(Duration::from_secs(20), neighbour_ok(host))
            .await
            .unwrap_or_else(|_| panic!("the neighbour did not answer during {plugin}"));
    }
    assert!(
        hostile.iter().all(|h| !h.is_finished()),
        "{plugin} ended before the neighbour was checked: this proved nothing"
    );
    let mut results = Vec::new();
    for h in hostile {
        results.push(
            tokio::time::timeout(redloom_tests::TEST_TIMEOUT, h)
                .await
                .unwrap()
                .unwrap(),
        );
    }
    results
}

/// While an infinite loop, a memory bomb and CPU-bound invocations at their
/// plugin's concurrency limit are running, a well-behaved plugin is served;
/// each hostile invocation then ends as its quota says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn neighbours_are_served_while_hostile_plugins_run() {
    with_timeout(async {
        let redis = RedisServer::start().await;
        let data = tempfile::tempdir().unwrap();
        let host = Arc::new(host(&redis, data.path()).await);
        load(&host, spec("neighbour", "kv-probe")).await;

        let mut s = spec("looper", "hostile");
        s.quotas.cpu = Duration::from_secs(3);
        s.quotas.wall_time = Duration::from_secs(4);
        load(&host, s).await;
        let mark = unique("started");
        let r =
            neighbour_ok_during(&host, &redis, "looper", &[format!("spin {mark}")], &mark).await;
        let q = quota_of(r.into_iter().next().unwrap());
        assert!(q == Quota::Cpu || q == Quota::WallTime, "{q:?}");

        // 1 MiB blocks 60 ms apart: about 2 s to reach the 32 MiB cap.
        let mut s = spec("bomber", "hostile");
        s.quotas.memory = 32 << 20;
        s.quotas.cpu = Duration::from_secs(30);
        s.quotas.wall_time = Duration::from_secs(30);
        load(&host, s).await;
        let mark = unique("started");
        let r = neighbour_ok_during(
            &host,
            &redis,
            "bomber",
            &[format!("memory-bomb 60 {mark}")],
            &mark,
        )
        .await;
        assert_eq!(quota_of(r.into_iter().next().unwrap()), Quota::Memory);

        // Twice as many CPU-bound invocations as worker threads.
        let mut s = spec("burner", "hostile");
        s.quotas.concurrency = 4;
        s.quotas.cpu = Duration::from_secs(30);
        s.quotas.wall_time = Duration::from_secs(30);
        load(&host, s).await;
        let mark = unique("started");
        let inputs = vec![format!("burn 3000 {mark}"); 4];
        for r in neighbour_ok_during(&host, &redis, "burner", &inputs, &mark).await {
            assert_eq!(r.expect("a burn within its quotas succeeds"), b"done");
        }
    })
    .await;
}

/// Busy plugins at their concurrency limit, whose invocations each last
/// longer than a neighbour's `queue-wait` (default 1 s), on a host whose
/// instance slots they could fill between them: the neighbour, with default
/// quotas, is still served, because busy plugins never take the slot kept
/// for an idle one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_plugin_does_not_starve_a_light_one() {
    with_timeout(async {
        let redis = RedisServer::start().await;
        let data = tempfile::tempdir().unwrap();
        let mut options = host_options(&redis, data.path());
        options.runtime.max_instances = 4;
        let host = Arc::new(Host::start(options).await.unwrap());
        let mark = unique("started");
        for heavy in ["heavy-a", "heavy-b"] {
            let mut s = spec(heavy, "hostile");
            s.quotas.concurrency = 4;
            s.quotas.queue = 100;
            s.quotas.queue_wait = Duration::from_secs(60);
            s.quotas.cpu = Duration::from_secs(60);
            s.quotas.wall_time = Duration::from_secs(60);
            load(&host, s).await;
        }
        load(&host, spec("neighbour", "kv-probe")).await;
        assert_eq!(Quotas::default().queue_wait, Duration::from_secs(1));

        let stop = Arc::new(AtomicBool::new(false));
        let heavy: Vec<_> = (0..8)
            .map(|i| {
                let (host, stop, mark) = (host.clone(), stop.clone(), mark.clone());
                let plugin = if i % 2 == 0 { "heavy-a" } else { "heavy-b" };
                tokio::spawn(async move {
                    let mut runs = 0;
                    while !stop.load(Ordering::Relaxed) {
                        host.invoke(&name(plugin), format!("burn 2000 {mark}").as_bytes())
                            .await
                            .expect("heavy runs");
                        runs += 1;
                    }
                    runs
                })
            })
            .collect();
        // The busy plugins hold every slot they may: all but the reserve.
        let mut conn = redis.client().await;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let running = get_i64(&mut conn, &format!("rl:heavy-a:kv:{mark}")).await
                + get_i64(&mut conn, &format!("rl:heavy-b:kv:{mark}")).await;
            if running >= 3 {
                break;
            }
            assert!(Instant::now() < deadline, "the heavy plugins never started");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for _ in 0..10 {
            tokio::time::timeout(Duration::from_secs(20), neighbour_ok(&host))
                .await
                .expect("the light plugin completes while the heavy ones saturate the host");
        }
        stop.store(true, Ordering::Relaxed);
        let mut heavy_runs = 0;
        for h in heavy {
            heavy_runs += h.await.unwrap();
        }
        assert!(heavy_runs >= 8, "the heavy plugins ran too ({heavy_runs})");
    })
    .await;
}

/// The wall-clock microseconds a `span` invocation ran between.
fn span(out: &[u8]) -> (u128, u128) {
    let text = std::str::from_utf8(out).unwrap();
    let (start, end) = text.split_once(' ').unwrap();
    (start.parse().unwrap(), end.parse().unwrap())
}

/// The most spans that ran at one instant.
fn max_overlap(spans: &[(u128, u128)]) -> usize {
    let mut events: Vec<(u128, i32)> = spans
        .iter()
        .flat_map(|&(start, end)| [(start, 1), (end, -1)])
        .collect();
    // At the same instant an end comes before a start.
    events.sort();
    let (mut running, mut most) = (0, 0);
    for (_, step) in events {
        running += step;
        most = most.max(running);
    }
    most as usize
}

/// `[host] max-instances` bounds the invocations running at once across
/// plugins: two plugins each allowed 3 at once share a host of 3 slots, and
/// never run more than 3 together (each invocation reports when it ran).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_instances_bounds_instances_across_plugins() {
    with_timeout(async {
        let redis = RedisServer::start().await;
        let data = tempfile::tempdir().unwrap();
        let mut options = host_options(&redis, data.path());
        options.runtime.max_instances = 3;
        let host = Arc::new(Host::start(options).await.unwrap());
        for plugin in ["one", "two"] {
            let mut s = spec(plugin, "hostile");
            s.quotas.concurrency = 3;
            s.quotas.queue = 10;
            s.quotas.queue_wait = Duration::from_secs(30);
            load(&host, s).await;
        }
        // Never more than 3 at once, in any round. That the host is used
        // fully (3 at once) needs the invocations to really overlap, which a
        // busy machine may stagger; rounds repeat until one does.
        let mut rounds = Vec::new();
        while rounds.len() < 10 {
            let tasks: Vec<_> = (0..8)
                .map(|i| {
                    let host = host.clone();
                    let plugin = if i % 2 == 0 { "one" } else { "two" };
                    tokio::spawn(async move { host.invoke(&name(plugin), b"span 300").await })
                })
                .collect();
            let mut spans = Vec::new();
            for t in tasks {
                spans.push(span(
                    &t.await.unwrap().expect("every invocation runs in turn"),
                ));
            }
            let most = max_overlap(&spans);
            assert!(
                most <= 3,
                "{most} ran at once, over max-instances: {spans:?}"
            );
            rounds.push(most);
            if most == 3 {
                break;
            }
        }
        assert_eq!(
            rounds.last(),
            Some(&3),
            "the host was never used fully; most at once per round: {rounds:?}"
        );
    })
    .await;
}

/// `table-elements`: a guest growing its function table past the quota is
/// stopped with a `memory` quota error, while growth within it succeeds.
/// `instances`: a component creates all its core instances when it is
/// instantiated (core wasm cannot instantiate at run time), so the limit
/// can only be crossed there; the load-time probe instantiates, so a plugin
/// needing more is refused at load with wasmtime's limiter message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn table_elements_and_instances_limits() {
    with_timeout(async {
        let redis = RedisServer::start().await;
        let data = tempfile::tempdir().unwrap();
        let host = host(&redis, data.path()).await;
        load(&host, spec("neighbour", "kv-probe")).await;
        let mut s = spec("tables", "hostile");
        s.quotas.table_elements = 10_000;
        load(&host, s).await;
        let old: u64 = String::from_utf8(
            host.invoke(&name("tables"), b"grow-table 100")
                .await
                .unwrap(),
        )
        .unwrap()
        .parse()
        .unwrap();
        assert!(old < 10_000 - 100, "initial table of {old} elements");
        let e = host
            .invoke(&name("tables"), b"grow-table 100000")
            .await
            .unwrap_err();
        assert!(e.to_string().contains("a table would grow to"), "{e}");
        assert_eq!(quota_of(Err(e)), Quota::Memory);
        assert_eq!(
            host.plugin(&name("tables"))
                .unwrap()
                .stats()
                .rejections_of("memory"),
            1
        );
        neighbour_ok(&host).await;

        let mut s = spec("few", "hostile");
        s.quotas.instances = 1;
        let e = host
            .load(s)
            .await
            .err()
            .expect("one core instance is too few");
        assert!(e.to_string().contains("instance count too high"), "{e}");
        assert!(host.plugin(&name("few")).is_none());
        let mut s = spec("few", "hostile");
        s.quotas.instances = Quotas::default().instances;
        load(&host, s).await;
        assert_eq!(host.invoke(&name("few"), b"burn 0").await.unwrap(), b"done");
    })
    .await;
}

/// Starting a plugin counts against its `cpu` quota: one that cannot even
/// be instantiated within it is refused at load, with an error that says
/// it could not start (the component is valid) and which quota it broke.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_that_cannot_start_within_its_cpu_quota_is_refused_at_load() {
    with_timeout(async {
        let redis = RedisServer::start().await;
        let data = tempfile::tempdir().unwrap();
        let host = host(&redis, data.path()).await;
        let mut s = spec("starved", "kv-probe");
        // Any instantiation takes more than a nanosecond of thread CPU.
        s.quotas.cpu = Duration::from_nanos(1);
        let e = host.load(s).await.err().expect("refused at load");
        assert!(
            matches!(
                &e,
                LoadError::Start {
                    source: InvokeError::Quota {
                        quota: Quota::Cpu,
                        ..
                    },
                    ..
                }
            ),
            "{e}"
        );
        let text = e.to_string();
        assert!(
            text.contains("could not start") && text.contains("exceeded its cpu quota"),
            "{text}"
        );
        assert!(host.plugin(&name("starved")).is_none());
        load(&host, spec("starved", "kv-probe")).await;
    })
    .await;
}

/// After loops, a memory bomb, traps and quota breaches, nothing leaked:
/// the plugin still runs exactly `concurrency` invocations at once with no
/// queue and no queue-wait (its slots and the host's came back), and the
/// host holds no more Redis connections than before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_runs_leak_no_permits_or_connections() {
    with_timeout(async {
        let redis = RedisServer::start().await;
        let data = tempfile::tempdir().unwrap();
        let mut options = host_options(&redis, data.path());
        // 4 for `bad`, and 1 kept for the idle neighbour.
        options.runtime.max_instances = 5;
        let host = Arc::new(Host::start(options).await.unwrap());
        load(&host, spec("neighbour", "kv-probe")).await;
        let mut s = spec("bad", "hostile");
        s.quotas.concurrency = 4;
        s.quotas.queue = 0;
        s.quotas.queue_wait = Duration::ZERO;
        s.quotas.cpu = Duration::from_millis(300);
        // Long enough that `flood` reaches its 51st Redis command first
        // even on a loaded machine (600 ms was not).
        s.quotas.wall_time = Duration::from_secs(10);
        s.quotas.memory = 16 << 20;
        s.quotas.redis_ops = 50;
        s.quotas.table_elements = 10_000;
        load(&host, s).await;
        neighbour_ok(&host).await;
        let connections = || async {
            let list = redis.client_list_for("any").await;
            list.lines().count()
        };
        let before = connections().await;

        // Each ends with one of these quotas, or (none listed) with a trap.
        let time: &[Quota] = &[Quota::Cpu, Quota::WallTime];
        for (input, quotas) in [
            ("spin", time),
            // Its first breach is redis-ops (the 51st call); it loops on
            // until its CPU (host calls count) or wall time runs out, and
            // the invocation reports the first breach unless the deadline
            // cut it off first.
            ("yield-loop", &[Quota::RedisOps, Quota::WallTime]),
            ("memory-bomb 0", &[Quota::Memory]),
            ("grow-table 100000", &[Quota::Memory]),
            ("flood", &[Quota::RedisOps]),
            ("huge-output 2", &[Quota::Payload]),
            ("big-reply 2", &[Quota::Payload]),
            ("recurse", &[]),
            ("panic", &[]),
        ] {
            let e = host
                .invoke(&name("bad"), input.as_bytes())
                .await
                .expect_err(input);
            if quotas.is_empty() {
                assert!(
                    matches!(e, HostInvokeError::Invoke(InvokeError::Trap { .. })),
                    "{input}: {e}"
                );
            } else {
                let q = quota_of(Err(e));
                assert!(quotas.contains(&q), "{input}: {q:?}");
            }
        }

        // All 4 at once with no queue: a leaked slot would turn one away.
        // That proves something only if the 4 really overlap, which a busy
        // machine may stagger; batches repeat (each must be admitted whole)
        // until one does.
        let mut rounds = Vec::new();
        while rounds.len() < 10 {
            let tasks: Vec<_> = (0..4)
                .map(|_| {
                    let host = host.clone();
                    tokio::spawn(async move { host.invoke(&name("bad"), b"span 200").await })
                })
                .collect();
            let mut spans = Vec::new();
            for t in tasks {
                let out = t
                    .await
                    .unwrap()
                    .expect("no slot leaked: all 4 are admitted without a queue");
                spans.push(span(&out));
            }
            rounds.push(max_overlap(&spans));
            if rounds.last() == Some(&4) {
                break;
            }
        }
        assert_eq!(
            rounds.last(),
            Some(&4),
            "4 never ran at once; most at once per round: {rounds:?}"
        );
        neighbour_ok(&host).await;

        let deadline = Instant::now() + Duration::from_secs(30);
        let mut after = connections().await;
        while after > before && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
            after = connections().await;
        }
        assert!(
            after <= before,
            "Redis connections grew from {before} to {after}"
        );
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
            // Limiter, cache and queue scripts call TIME.
            vec!["TIME"],
            vec!["PUBLISH", "rl:locked:ch:news", "x"],
            vec!["PUBLISH", "rl::ch:lobby", "x"],
            vec!["PUBLISH", "rl::ch:room:7", "x"],
            // Cache fill wake-ups: published by scripts, subscribed by the host.
            vec!["PUBLISH", "rl:locked:cache-filled", "x"],
            vec!["SUBSCRIBE", "rl:locked:cache-filled"],
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
            vec!["SUBSCRIBE", "rl:other:cache-filled"],
            vec!["PSUBSCRIBE", "*"],
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

/// The README's manifest example shows every quota key, with its default
/// (`fuel`, off by default, commented out), and parses.
#[test]
fn readme_example_shows_every_quota_with_its_default() {
    let readme = std::fs::read_to_string(workspace_root().join("README.md")).unwrap();
    let example = readme
        .split("### Configuration: `redloom.toml`")
        .nth(1)
        .and_then(|s| s.split("```toml\n").nth(1))
        .and_then(|s| s.split("```").next())
        .expect("the configuration example");
    let quotas_of = |text: &str| {
        let config = Config::parse(text, Path::new("/etc/redloom/redloom.toml"))
            .unwrap_or_else(|e| panic!("the README example does not parse: {e}"));
        config.plugins[&name("visit-counter")].quotas
    };
    assert_eq!(quotas_of(example), Quotas::default());
    let fueled = example.replace("# fuel = ", "fuel = ");
    assert_eq!(quotas_of(&fueled).fuel, Some(100_000_000));
    let table = example
        .split("[plugins.visit-counter.quotas]")
        .nth(1)
        .and_then(|s| s.split("\n[").next())
        .unwrap();
    let shown: Vec<&str> = table
        .lines()
        .filter_map(|l| l.trim_start_matches("# ").split_once(" = "))
        .map(|(key, _)| key.trim())
        .collect();
    let every = [
        "cpu",
        "wall-time",
        "fuel",
        "memory",
        "table-elements",
        "instances",
        "max-input",
        "max-output",
        "max-reply",
        "max-write",
        "storage",
        "max-log",
        "log-rate",
        "redis-ops",
        "redis-rate",
        "concurrency",
        "queue",
        "queue-wait",
        "outbound-timeout",
    ];
    assert_eq!(shown, every, "the example's quota keys");
}
