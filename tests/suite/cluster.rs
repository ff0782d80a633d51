//! Redis Cluster: every pattern keeps working through a primary's failover
//! without losing an acknowledged queue message, and several hosts share one
//! Cluster. (The capability suites also run whole against a Cluster when
//! `REDLOOM_TEST_REDIS=cluster`; `scripts/test` does both.)

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use redloom::config::Config;
use redloom::host::{Host, HostOptions};
use redloom::namespace::{Namespace, PluginName};
use redloom_tests::PATIENCE;
use redloom_tests::with_timeout;
use redloom_tests::{
    RedisServer, ServeProcess, Served, plugin, redloom_bin, run_with_timeout, unique,
};
use serde_json::{Value, json};

/// A manifest with one plugin per pattern, on `redis`, waiting for one
/// replica on enqueues and lock acquisitions. The timeouts leave room for
/// a loaded machine: a healthy Cluster fails no call (a dead node's
/// connection fails at once, not at the timeout).
fn manifest(redis: &RedisServer) -> String {
    format!(
        r#"{redis}wait-replicas = 1
wait-timeout = "5s"
response-timeout = "5s"
[http]
listen = "127.0.0.1:0"
[admin]
listen = "127.0.0.1:0"
[plugins.cache]
wasm = {cache:?}
[plugins.limiter]
wasm = {limiter:?}
[plugins.limiter.limiters.g]
algorithm = "gcra"
rate = "100000/s"
burst = 1000
[plugins.locks]
wasm = {lock:?}
[plugins.worker]
wasm = {queue:?}
[plugins.worker.consumers.jobs]
concurrency = 4
visibility-timeout = "3s"
max-attempts = 100
backoff = "100ms"
max-backoff = "500ms"
"#,
        redis = redis.config_table(),
        cache = plugin("cache-probe").display().to_string(),
        limiter = plugin("limiter-probe").display().to_string(),
        lock = plugin("lock-probe").display().to_string(),
        queue = plugin("queue-probe").display().to_string(),
    )
}

/// `redloom serve` in this process: the plugins of `text` loaded, its
/// triggers (the queue consumer) running.
async fn serve(dir: &std::path::Path, text: &str) -> Served {
    std::fs::create_dir_all(dir).unwrap();
    let config = Config::parse(text, &dir.join("redloom.toml")).expect("valid config");
    let mut options = HostOptions::from_config(&config);
    options.data_dir = dir.to_path_buf();
    options.runtime.max_instances = 32;
    Served::start(options, config).await
}

/// Invokes `plugin` with `input`; `Err` for a failed invocation or any
/// operation that reports an error.
async fn call(host: &Host, plugin: &str, input: &Value) -> Result<Value, String> {
    let out = host
        .invoke(
            &PluginName::parse(plugin).unwrap(),
            input.to_string().as_bytes(),
        )
        .await
        .map_err(|e| e.to_string())?;
    let v: Value = serde_json::from_slice(&out).map_err(|e| e.to_string())?;
    if let Some(failed) = v
        .as_array()
        .and_then(|ops| ops.iter().find(|o| o.get("err").is_some()))
    {
        return Err(failed.to_string());
    }
    Ok(v)
}

/// One pattern's invocations during the run: when each ended and whether it
/// succeeded.
#[derive(Default)]
struct Log {
    events: Vec<(Instant, bool)>,
    errors: Vec<String>,
}

impl Log {
    fn record(&mut self, r: Result<(), String>) {
        self.events.push((Instant::now(), r.is_ok()));
        if let Err(e) = r {
            // The last few errors say why a pattern has not recovered.
            if self.errors.len() == 5 {
                self.errors.remove(0);
            }
            self.errors.push(e);
        }
    }

    fn last_failure(&self) -> Option<Instant> {
        self.events.iter().rev().find(|e| !e.1).map(|e| e.0)
    }

    /// Successes after the last failure (all of them when none failed).
    fn healthy_streak(&self) -> usize {
        self.events.iter().rev().take_while(|e| e.1).count()
    }

    fn successes_before(&self, t: Instant) -> usize {
        self.events.iter().filter(|e| e.1 && e.0 < t).count()
    }
}

/// Waits (up to [`PATIENCE`] after `since`) until each of `patterns` has
/// succeeded `streak` times in a row after `since`; returns how long after
/// `since` the last of them last failed (zero when none failed).
async fn wait_healthy(
    what: &str,
    logs: &[std::sync::Mutex<Log>; 4],
    patterns: &[usize],
    since: Instant,
    streak: usize,
) -> Duration {
    let deadline = since + PATIENCE;
    loop {
        let healthy = patterns.iter().all(|p| {
            let log = logs[*p].lock().unwrap();
            log.healthy_streak() >= streak
                && log.events.iter().rev().take(streak).all(|e| e.0 > since)
        });
        if healthy {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not {streak} successes in a row within {PATIENCE:?}; last errors: {:?}",
            patterns
                .iter()
                .map(|p| logs[*p].lock().unwrap().errors.clone())
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    patterns
        .iter()
        .filter_map(|p| logs[*p].lock().unwrap().last_failure())
        .filter(|t| *t > since)
        .map(|t| t - since)
        .max()
        .unwrap_or(Duration::ZERO)
}

/// A primary is killed while cache, limiter, lock and queue invocations run
/// steadily on one host with `wait-replicas = 1`. Its replica takes over and
/// cache and limiter calls succeed again; enqueues and lock acquisitions on
/// that shard (which has no replica left to wait for) fail cleanly until
/// the old primary rejoins as a replica, then succeed again; the host is
/// never restarted. Fencing tokens keep increasing, and every message whose
/// enqueue was acknowledged is processed. The test prints the recovery
/// times.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn primary_failover_loses_no_acknowledged_message() {
    with_timeout(async {
        let mut redis = RedisServer::start_cluster_for_failover().await;
        let dir = tempfile::tempdir().unwrap();
        let served = serve(dir.path(), &manifest(&redis)).await;
        let host = served.host.clone();
        let run = unique("fo");
        let stop = Arc::new(AtomicBool::new(false));
        let logs: Arc<[std::sync::Mutex<Log>; 4]> = Arc::new(Default::default());
        let acked = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let tokens = Arc::new(std::sync::Mutex::new(BTreeMap::<String, Vec<u64>>::new()));

        let mut load = Vec::new();
        for pattern in 0..4 {
            let (host, stop, logs, acked, tokens, run) = (
                host.clone(),
                stop.clone(),
                logs.clone(),
                acked.clone(),
                tokens.clone(),
                run.clone(),
            );
            load.push(tokio::spawn(async move {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    // 16 keys per pattern: their slots spread over all primaries.
                    let k = format!("{run}-{}", i % 16);
                    let r = match pattern {
                        0 => call(
                            &host,
                            "cache",
                            &json!([
                                {"op": "set", "key": k, "value": i.to_string()},
                                {"op": "lookup", "key": k, "wait_ms": 0}
                            ]),
                        )
                        .await
                        .and_then(|v| match v[1]["ok"]["kind"].as_str() {
                            Some("fresh") => Ok(()),
                            other => Err(format!("lookup after set: {other:?}")),
                        }),
                        1 => {
                            call(
                                &host,
                                "limiter",
                                &json!([{"op": "check", "policy": "g", "key": k}]),
                            )
                            .await
                            .and_then(|v| match v[0]["ok"]["allowed"].as_bool() {
                                Some(true) => Ok(()),
                                _ => Err(format!("denied: {v}")),
                            })
                        }
                        2 => call(
                            &host,
                            "locks",
                            &json!([
                                {"op": "try_acquire", "name": k, "ttl_ms": 5000},
                                {"op": "release", "id": k}
                            ]),
                        )
                        .await
                        .and_then(|v| {
                            let token = v[0]["ok"]
                                .as_u64()
                                .ok_or_else(|| format!("not acquired: {v}"))?;
                            tokens.lock().unwrap().entry(k).or_default().push(token);
                            Ok(())
                        }),
                        _ => call(
                            &host,
                            "worker",
                            &json!({"queue": "jobs", "payloads": ["durable"]}),
                        )
                        .await
                        .map(|v| {
                            for id in v.as_array().into_iter().flatten() {
                                acked.lock().unwrap().push(id.as_str().unwrap().to_string());
                            }
                        }),
                    };
                    logs[pattern].lock().unwrap().record(r);
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }));
        }

        // Steady state first: every pattern works on the healthy Cluster
        // (10 successes in a row each, however long that takes here).
        let names = ["cache", "limiter", "lock", "queue"];
        let all = [0, 1, 2, 3];
        wait_healthy("before the failover", &logs, &all, Instant::now(), 10).await;

        // Kill the primary of the queue's slot: the stream, its consumer
        // group and the pending entries must survive on the replica.
        let stream = Namespace::new(&PluginName::parse("worker").unwrap())
            .queue("jobs", false)
            .unwrap()
            .stream;
        let victim = redis.primary_for(&stream).await;
        let killed = Instant::now();
        redis.kill_node(victim);

        // Writes that need no replica (cache, limiter) recover once the
        // replica has taken over. Writes that wait for one (queue enqueue,
        // lock acquire) are refused on the failed shard, which has no
        // replica left, until the old primary rejoins as its replica.
        let failover_time = wait_healthy(
            "cache and limiter after the kill",
            &logs,
            &[0, 1],
            killed,
            20,
        )
        .await;
        let degraded_queue_error = logs[3].lock().unwrap().errors.join(" | ");
        assert!(
            degraded_queue_error.contains("wait-replicas")
                || degraded_queue_error.contains("timeout")
                || degraded_queue_error.contains("unavailable"),
            "an enqueue without a replica fails as unavailable: {degraded_queue_error}"
        );
        let rejoin = Instant::now();
        redis.restart_node(victim).await;
        let rejoined = rejoin.elapsed();
        let durable_time =
            wait_healthy("every pattern after the rejoin", &logs, &all, rejoin, 20).await;
        stop.store(true, Ordering::Relaxed);
        for l in load {
            l.await.unwrap();
        }

        let mut report = Vec::new();
        for (p, name) in names.iter().enumerate() {
            let log = logs[p].lock().unwrap();
            assert!(
                log.successes_before(killed) > 0,
                "{name} never ran before the kill"
            );
            report.push(format!(
                "{name}: {} failed calls",
                log.events.iter().filter(|e| !e.1 && e.0 > killed).count()
            ));
        }
        println!(
            "failover of node {victim}, without a host restart: cache and limiter recovered {} ms \
             after the kill; the old primary rejoined as a replica in {} ms, and enqueues and lock \
             acquisitions (wait-replicas = 1) succeeded again {} ms after its restart; {}",
            failover_time.as_millis(),
            rejoined.as_millis(),
            durable_time.as_millis(),
            report.join(", ")
        );

        // Fencing tokens never go backwards across the failover.
        for (name, seen) in tokens.lock().unwrap().iter() {
            assert!(
                seen.windows(2).all(|w| w[0] < w[1]),
                "lock {name}: tokens not increasing: {seen:?}"
            );
        }

        // Every acknowledged enqueue is processed: its id reaches `done-log`.
        let acked: BTreeSet<String> = acked.lock().unwrap().iter().cloned().collect();
        assert!(
            acked.len() > 20,
            "only {} enqueues acknowledged",
            acked.len()
        );
        let done_log = Namespace::new(&PluginName::parse("worker").unwrap())
            .queue("done-log", false)
            .unwrap()
            .stream;
        let mut conn = redis.client().await;
        let deadline = Instant::now() + PATIENCE;
        let missing = loop {
            let entries: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
                .arg(&done_log)
                .arg("-")
                .arg("+")
                .query_async(&mut conn)
                .await
                .unwrap();
            let done: BTreeSet<String> = entries
                .ids
                .iter()
                .filter_map(|e| e.get::<String>("payload"))
                .collect();
            let missing: Vec<&String> = acked.difference(&done).collect();
            if missing.is_empty() || Instant::now() > deadline {
                break missing.into_iter().cloned().collect::<Vec<_>>();
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        assert!(
            missing.is_empty(),
            "{} of {} acknowledged messages were never processed: {:?}",
            missing.len(),
            acked.len(),
            &missing[..missing.len().min(10)]
        );
        served.shutdown().await;
    })
    .await;
}

/// `redloom invoke PLUGIN --input INPUT` as a process of its own in `dir`
/// (which holds its `redloom.toml`); its stdout as JSON.
fn invoke_process(dir: &std::path::Path, plugin: &str, input: &Value) -> Value {
    let mut cmd = std::process::Command::new(redloom_bin());
    cmd.current_dir(dir)
        .env_remove("REDIS_URL")
        .env_remove("REDIS_CLUSTER")
        .args(["invoke", plugin, "--input", &input.to_string()]);
    let out = run_with_timeout(&mut cmd, Duration::from_secs(120));
    assert!(
        out.status.success(),
        "redloom invoke {plugin} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the plugin answers JSON")
}

/// Three host processes share one Cluster:
/// - three `redloom serve` processes consume one queue: every message is
///   processed exactly once, and every process takes part;
/// - three `redloom invoke` processes run critical sections under one lock:
///   no lost update, every fencing token unique;
/// - the same three check one sliding-window limit: exactly its limit is
///   admitted across them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_host_processes_share_one_cluster() {
    with_timeout(async {
        let redis = RedisServer::start_cluster().await;
        let dir = tempfile::tempdir().unwrap();
        // One data folder: the processes share the compiled-plugin cache.
        let text = format!(
            "data-dir = {data:?}\n{redis}[http]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
             [plugins.limiter]\nwasm = {limiter:?}\n[plugins.limiter.limiters.w]\n\
             algorithm = \"sliding-window\"\nrate = \"30/h\"\n\
             [plugins.locks]\nwasm = {locks:?}\n[plugins.locks.quotas]\nwall-time = \"60s\"\n\
             [plugins.worker]\nwasm = {worker:?}\n[plugins.worker.quotas]\nredis-rate = 0\n\
             [plugins.worker.consumers.jobs]\nconcurrency = 2\nbatch = 4\n",
            data = dir.path().join("data").display().to_string(),
            redis = redis.config_table(),
            limiter = plugin("limiter-probe").display().to_string(),
            locks = plugin("lock-probe").display().to_string(),
            worker = plugin("queue-probe").display().to_string(),
        );
        let dirs: Vec<std::path::PathBuf> =
            (0..3).map(|i| dir.path().join(format!("h{i}"))).collect();
        let mut serves = Vec::new();
        for d in &dirs {
            serves.push(ServeProcess::start(d, &text).await);
        }
        let run = unique("share");

        // Locks and limits: one `redloom invoke` process per host folder,
        // all at once.
        let mut procs = Vec::new();
        for d in dirs.clone() {
            let run = run.clone();
            procs.push(tokio::task::spawn_blocking(move || {
                let locks = invoke_process(
                    &d,
                    "locks",
                    &json!([{"op": "critical", "name": run, "key": format!("{run}-n"),
                             "n": 20, "ttl_ms": 60000, "wait_ms": 60000}]),
                );
                let limited = invoke_process(
                    &d,
                    "limiter",
                    &json!([{"op": "burst", "policy": "w", "key": run, "n": 20}]),
                );
                (locks, limited)
            }));
        }

        // The queue: 300 messages from another process.
        let payloads: Vec<String> = (0..300).map(|i| format!("ok-{i}")).collect();
        let ids = {
            let d = dirs[0].clone();
            tokio::task::spawn_blocking(move || {
                invoke_process(
                    &d,
                    "worker",
                    &json!({"queue": "jobs", "payloads": payloads}),
                )
            })
            .await
            .unwrap()
        };
        let ids: Vec<String> = ids
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect();
        assert_eq!(ids.len(), 300);

        let mut tokens = Vec::new();
        let mut admitted = 0;
        for p in procs {
            let (locks, limited) = p.await.unwrap();
            let ok = |v: &Value| v[0].get("ok").cloned().unwrap_or_else(|| panic!("{v}"));
            tokens.extend(
                ok(&locks)
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|t| t.as_u64().unwrap()),
            );
            admitted += ok(&limited)["allowed"].as_u64().unwrap();
        }
        let distinct: BTreeSet<u64> = tokens.iter().copied().collect();
        assert_eq!(distinct.len(), 60, "fencing tokens repeat: {tokens:?}");
        let locks_ns = Namespace::new(&PluginName::parse("locks").unwrap());
        let mut conn = redis.client().await;
        let n: i64 = redis::cmd("GET")
            .arg(locks_ns.kv(&format!("{run}-n")).unwrap())
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(n, 60, "a critical section lost an update");
        assert_eq!(admitted, 30, "the limit is global across host processes");

        // Every message processed exactly once, by all three processes.
        let worker = Namespace::new(&PluginName::parse("worker").unwrap());
        let start = Instant::now();
        loop {
            let done: Option<i64> = redis::cmd("GET")
                .arg(worker.kv("done-total").unwrap())
                .query_async(&mut conn)
                .await
                .unwrap();
            if done == Some(300) {
                break;
            }
            assert!(
                start.elapsed() < 2 * PATIENCE,
                "{done:?} of 300 messages processed after {:?}",
                2 * PATIENCE
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        for id in &ids {
            let runs: Option<i64> = redis::cmd("GET")
                .arg(worker.kv(&format!("done:{id}")).unwrap())
                .query_async(&mut conn)
                .await
                .unwrap();
            assert_eq!(runs, Some(1), "message {id} ran {runs:?} times");
        }
        for (i, s) in serves.iter().enumerate() {
            let handled = s.counter("worker", "redloom_invocations_total").await;
            assert!(
                handled > 0.0,
                "host process {i} processed no message:\n{}",
                s.log_text()
            );
        }
        for s in serves {
            s.stop().await;
        }
    })
    .await;
}

/// Keyspace notifications are per node on a Cluster, so a plugin asking
/// for them is refused with a message that says why, instead of silently
/// missing most events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyspace_events_are_refused_on_a_cluster() {
    with_timeout(async {
        let redis = RedisServer::start_cluster().await;
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "{}[http]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
             [plugins.watcher]\nwasm = {:?}\nkeyspace-events = [\"expired\"]\n",
            redis.config_table(),
            plugin("event-probe").display().to_string(),
        );
        let config = Config::parse(&text, &dir.path().join("redloom.toml")).expect("valid config");
        let mut options = HostOptions::from_config(&config);
        options.data_dir = dir.path().to_path_buf();
        let host = Arc::new(Host::start(options).await.expect("host starts"));
        let err = match redloom::serve::Server::bind(host, config).await {
            Ok(_) => panic!("serve accepted keyspace events on a Cluster"),
            Err(e) => format!("{e:#}"),
        };
        assert!(
            err.contains("keyspace-events") && err.contains("Cluster"),
            "{err}"
        );
    })
    .await;
}

/// Pub/sub fan-out and per-plugin ACL users on a Cluster: a message one
/// host publishes reaches the subscriber on another host, whose handler
/// writes through its own ACL user (created on every node). When the node
/// the subscriber is connected to dies, it moves to another live node
/// (found through `CLUSTER NODES`: the hosts know one seed only) and
/// messages arrive again, without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pubsub_fan_out_and_acl_users_on_a_cluster() {
    with_timeout(async {
        let mut redis = RedisServer::start_cluster_for_failover().await;
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "[redis]\ncluster = [{:?}]\n[http]\nlisten = \"127.0.0.1:0\"\n\
             [admin]\nlisten = \"127.0.0.1:0\"\n\
             [plugins.listener]\nwasm = {:?}\nacl = true\nsubscriptions = [\"news\"]\n",
            redis.node_urls()[0],
            plugin("event-probe").display().to_string(),
        );
        let subscriber = serve(&dir.path().join("a"), &text).await;
        let publisher = {
            let d = dir.path().join("b");
            std::fs::create_dir_all(&d).unwrap();
            let config = Config::parse(&text, &d.join("redloom.toml")).unwrap();
            let mut options = HostOptions::from_config(&config);
            options.data_dir = d;
            let host = Host::start(options).await.expect("host starts");
            host.load_all(&config).await.expect("plugins load");
            host
        };
        let got_key = Namespace::new(&PluginName::parse("listener").unwrap())
            .kv("got:news")
            .unwrap();
        let mut conn = redis.client().await;
        // Publishes until the subscriber has counted `want` messages: pub/sub
        // is at most once, so a message sent while it reconnects is lost.
        let mut deliver = async |want: i64| {
            let start = Instant::now();
            loop {
                // A failed publish (its node failing over) is retried too.
                let _ = publisher
                    .invoke(&PluginName::parse("listener").unwrap(), b"publish news hi")
                    .await;
                tokio::time::sleep(Duration::from_millis(200)).await;
                let got: Option<i64> = redis::cmd("GET")
                    .arg(&got_key)
                    .query_async(&mut conn)
                    .await
                    .unwrap_or(None);
                if got.unwrap_or(0) >= want {
                    return start.elapsed();
                }
                assert!(
                    start.elapsed() < PATIENCE,
                    "message {want} did not arrive within {PATIENCE:?} (got {got:?})"
                );
            }
        };
        deliver(1).await;
        let acl_users: Vec<String> = redis::cmd("ACL")
            .arg("USERS")
            .query_async(&mut redis.client().await)
            .await
            .unwrap();
        assert!(
            acl_users.iter().any(|u| u.contains("listener")),
            "{acl_users:?}"
        );
        let on = redis.nodes_with_client(&[" sub=1 "]).await;
        assert_eq!(on.len(), 1, "subscriber connections on nodes {on:?}");
        redis.kill_node(on[0]);
        let took = deliver(2).await;
        println!(
            "subscriber moved to another node; delivery resumed after {} ms",
            took.as_millis()
        );
        subscriber.shutdown().await;
    })
    .await;
}

/// A Cluster whose nodes require TLS with client certificates from a
/// private CA: from `rediss://` seeds and the `[redis] tls-*` files, a host
/// discovers the nodes on their TLS ports, writes keys in every shard
/// through a plugin's ACL user (created on each node over TLS), and
/// fans a published message out to a subscriber plugin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_cluster_with_client_certificates() {
    with_timeout(async {
        let dir = tempfile::tempdir().unwrap();
        let certs = redloom_tests::TestCerts::generate(&dir.path().join("certs"));
        let (redis, tls_ports) = RedisServer::start_cluster_tls(&certs).await;
        let text = format!(
            "[redis]\ncluster = [\"rediss://127.0.0.1:{}\"]\ntls-ca-file = {:?}\n\
             tls-cert-file = {:?}\ntls-key-file = {:?}\n\
             [http]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
             [plugins.counter]\nwasm = {:?}\nacl = true\n\
             [plugins.listener]\nwasm = {:?}\nacl = true\nsubscriptions = [\"news\"]\n",
            tls_ports[0],
            certs.ca.display().to_string(),
            certs.client_cert.display().to_string(),
            certs.client_key.display().to_string(),
            plugin("kv-probe").display().to_string(),
            plugin("event-probe").display().to_string(),
        );
        let served = serve(&dir.path().join("host"), &text).await;
        let host = served.host.clone();

        let names: Vec<String> = (0..30).map(|i| format!("n{i}")).collect();
        let ops: Vec<Value> = names
            .iter()
            .map(|k| json!({"op": "incr", "key": k, "delta": 3}))
            .collect();
        call(&host, "counter", &json!(ops)).await.unwrap();
        let ns = Namespace::new(&PluginName::parse("counter").unwrap());
        let mut conn = redis.client().await;
        let mut primaries = BTreeSet::new();
        for k in &names {
            let key = ns.kv(k).unwrap();
            assert_eq!(redloom_tests::get_i64(&mut conn, &key).await, 3, "{key}");
            primaries.insert(redis.primary_for(&key).await);
        }
        assert_eq!(primaries.len(), 3, "the keys did not reach every shard");

        let listener = PluginName::parse("listener").unwrap();
        let got = Namespace::new(&listener).kv("got:news").unwrap();
        let start = Instant::now();
        while redloom_tests::get_i64(&mut conn, &got).await < 1 {
            assert!(
                start.elapsed() < PATIENCE,
                "the message did not reach the subscriber within {PATIENCE:?}"
            );
            host.invoke(&listener, b"publish news hi").await.unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        served.shutdown().await;
    })
    .await;
}

/// `/metrics`' Redis figures on a Cluster are summed over the primaries:
/// the used memory of all three is more than any one node's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_info_sums_over_the_primaries() {
    with_timeout(async {
        let redis = RedisServer::start_cluster().await;
        let options =
            redloom::redis::RedisOptions::new(Duration::from_secs(10), Duration::from_secs(30));
        let conn = redloom::redis::Redis::connect_to(&redis.target(), options)
            .await
            .unwrap();
        let info = conn.server_info().await.unwrap();
        assert_eq!(info.maxmemory_policy, "noeviction", "{info:?}");
        // One node on its own (a standalone connection to it) reports
        // only its memory.
        let node = redloom::redis::Redis::connect(
            &redis.node_urls()[0],
            redloom::redis::RedisOptions::new(Duration::from_secs(10), Duration::from_secs(30)),
        )
        .await
        .unwrap();
        let mine = node.server_info().await.unwrap();
        assert!(
            info.used_memory > mine.used_memory && mine.used_memory > 0,
            "cluster {} vs one node {}",
            info.used_memory,
            mine.used_memory
        );
    })
    .await;
}
