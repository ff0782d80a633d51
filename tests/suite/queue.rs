//! Work queues on Redis Streams: throughput across hosts, retries, dead
//! letters and replay, delays, dedupe, crash recovery, graceful shutdown.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::AsyncCommands;
use redloom::config::Config;
use redloom::host::Host;
use redloom::namespace::{Namespace, PluginName};
use redloom::serve::Server;
use redloom_tests::{RedisServer, host_options, plugin, redloom_bin};
use serde_json::{Value, json};

const TEST_TIMEOUT: Duration = Duration::from_secs(180);

async fn with_timeout<F: std::future::Future<Output = ()>>(f: F) {
    tokio::time::timeout(TEST_TIMEOUT, f)
        .await
        .expect("test timed out");
}

fn config_text(consumer: &str, extra: &str) -> String {
    format!(
        r#"
[http]
listen = "127.0.0.1:0"
shutdown-timeout = "15s"
[admin]
listen = "127.0.0.1:0"
[plugins.worker]
wasm = {wasm:?}
{extra}
[plugins.worker.quotas]
redis-ops = 100000
redis-rate = 0
wall-time = "60s"
cpu = "30s"
concurrency = 64
[plugins.worker.consumers.jobs]
{consumer}
"#,
        wasm = plugin("queue-probe").display().to_string()
    )
}

struct Served {
    host: Arc<Host>,
    stop: tokio::sync::oneshot::Sender<()>,
    done: tokio::task::JoinHandle<()>,
}

async fn serve(redis: &RedisServer, dir: &std::path::Path, text: &str) -> Served {
    std::fs::create_dir_all(dir).unwrap();
    let config = Config::parse(text, &dir.join("redloom.toml")).expect("valid config");
    let host = Arc::new(Host::start(host_options(redis, dir)).await.unwrap());
    let server = Server::bind(host.clone(), config).await.expect("binds");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let done = tokio::spawn(server.run(async move {
        let _ = stopped.await;
    }));
    Served { host, stop, done }
}

impl Served {
    async fn shutdown(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(30), self.done)
            .await
            .expect("stops")
            .unwrap();
    }
}

async fn enqueue(host: &Host, body: Value) -> Vec<String> {
    let out = host
        .invoke(
            &PluginName::parse("worker").unwrap(),
            body.to_string().as_bytes(),
        )
        .await
        .expect("enqueues");
    serde_json::from_slice(&out).unwrap()
}

/// Enqueues and checks that every message was accepted.
async fn enqueue_all(host: &Host, body: Value) -> Vec<String> {
    let ids = enqueue(host, body).await;
    assert!(ids.iter().all(|i| i != "full"), "refused: {ids:?}");
    ids
}

async fn get_i64(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> i64 {
    conn.get::<_, Option<i64>>(key).await.unwrap().unwrap_or(0)
}

async fn wait_for(
    conn: &mut redis::aio::MultiplexedConnection,
    key: &str,
    want: i64,
    within: Duration,
) -> i64 {
    let start = Instant::now();
    loop {
        let v = get_i64(conn, key).await;
        if v >= want || start.elapsed() > within {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn keys() -> redloom::namespace::QueueKeys {
    Namespace::new(&PluginName::parse("worker").unwrap())
        .queue("jobs", false)
        .unwrap()
}

/// 10,000 messages, two hosts × 4 concurrency: every message processed
/// exactly once when nothing fails, and nothing left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_messages_two_hosts() {
    with_timeout(async {
        let redis = RedisServer::start().await;
        let dir = tempfile::tempdir().unwrap();
        let text = config_text("concurrency = 4\nbatch = 32", "");
        let a = serve(&redis, &dir.path().join("a"), &text).await;
        let b = serve(&redis, &dir.path().join("b"), &text).await;
        let mut ids = Vec::new();
        for _ in 0..10 {
            let payloads: Vec<String> = (0..1000).map(|_| "ok".to_string()).collect();
            ids.extend(enqueue_all(&a.host, json!({"queue": "jobs", "payloads": payloads})).await);
        }
        assert_eq!(ids.len(), 10_000);
        let mut conn = redis.client().await;
        let total = wait_for(
            &mut conn,
            "rl:worker:kv:done-total",
            10_000,
            Duration::from_secs(150),
        )
        .await;
        assert_eq!(total, 10_000);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            get_i64(&mut conn, "rl:worker:kv:done-total").await,
            10_000,
            "a message ran twice"
        );
        for chunk in ids.chunks(1000) {
            let keys: Vec<String> = chunk
                .iter()
                .map(|id| format!("rl:worker:kv:attempts:{id}"))
                .collect();
            let runs: Vec<Option<i64>> = conn.mget(&keys).await.unwrap();
            assert!(
                runs.iter().all(|r| *r == Some(1)),
                "handler runs per message: {runs:?}"
            );
        }
        let stats = a
            .host
            .redis()
            .queue_stats(&keys(), "workers")
            .await
            .unwrap();
        assert_eq!(
            (
                stats.length,
                stats.pending,
                stats.scheduled,
                stats.dead_letters
            ),
            (0, 0, 0, 0)
        );
        assert_eq!(stats.consumers, 2, "both hosts consumed");
        a.shutdown().await;
        b.shutdown().await;
    })
    .await;
}

/// Failing handlers are retried with growing delays; one that always fails
/// lands in the dead letters with its error, and replay brings it back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_dead_letters_and_replay() {
    with_timeout(async {
        let redis = RedisServer::start().await;
        let dir = tempfile::tempdir().unwrap();
        let s = serve(
            &redis,
            dir.path(),
            &config_text("backoff = \"100ms\"\nmax-attempts = 5", ""),
        )
        .await;
        let flaky = enqueue(&s.host, json!({"queue": "jobs", "payloads": ["fail-3"]}))
            .await
            .remove(0);
        let doomed = enqueue(
            &s.host,
            json!({"queue": "jobs", "payloads": ["always-fail"], "max_attempts": 3}),
        )
        .await
        .remove(0);
        let mut conn = redis.client().await;
        assert_eq!(
            wait_for(
                &mut conn,
                &format!("rl:worker:kv:done:{flaky}"),
                1,
                Duration::from_secs(20)
            )
            .await,
            1
        );
        assert_eq!(
            get_i64(&mut conn, &format!("rl:worker:kv:attempts:{flaky}")).await,
            4
        );
        let mut at = Vec::new();
        for a in 1..=4 {
            at.push(get_i64(&mut conn, &format!("rl:worker:kv:at:{flaky}:{a}")).await);
        }
        let gaps: Vec<i64> = at.windows(2).map(|w| w[1] - w[0]).collect();
        // backoff × 2^(n-1) × [0.5, 1.5): [50,150), [100,300), [200,600) ms,
        // plus up to one promotion period (100 ms) and a read.
        assert!(
            gaps[0] >= 45 && gaps[2] > gaps[0] && gaps[2] >= 190 && gaps[2] < 1_000,
            "gaps {gaps:?}"
        );

        let start = Instant::now();
        let dead = loop {
            let d = s
                .host
                .redis()
                .queue_dead_letters(&keys(), 10)
                .await
                .unwrap();
            if !d.is_empty() || start.elapsed() > Duration::from_secs(20) {
                break d;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].id, doomed);
        assert_eq!(dead[0].attempts, 3);
        assert!(
            dead[0].error.contains("this job always fails"),
            "{}",
            dead[0].error
        );
        assert_eq!(
            get_i64(&mut conn, &format!("rl:worker:kv:attempts:{doomed}")).await,
            3
        );

        assert_eq!(
            s.host
                .redis()
                .queue_replay(&keys(), None, 100)
                .await
                .unwrap(),
            1
        );
        assert!(
            wait_for(
                &mut conn,
                &format!("rl:worker:kv:attempts:{doomed}"),
                4,
                Duration::from_secs(10)
            )
            .await
                >= 4
        );
        s.shutdown().await;
    })
    .await;
}

/// Delayed messages wait; a dedupe id makes one message of two enqueues; a
/// full queue refuses instead of trimming.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delays_dedupe_and_bounded_length() {
    with_timeout(async {
        let redis = RedisServer::start().await;
        let dir = tempfile::tempdir().unwrap();
        let s = serve(&redis, dir.path(), &config_text("", "queue-max-length = 5")).await;
        let mut conn = redis.client().await;
        let started = Instant::now();
        let late = enqueue(&s.host, json!({"queue": "jobs", "payloads": ["ok"], "delay_ms": 800})).await.remove(0);
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(get_i64(&mut conn, &format!("rl:worker:kv:done:{late}")).await, 0, "delivered early");
        assert_eq!(wait_for(&mut conn, &format!("rl:worker:kv:done:{late}"), 1, Duration::from_secs(5)).await, 1);
        assert!(started.elapsed() >= Duration::from_millis(800));

        let first = enqueue(&s.host, json!({"queue": "jobs", "payloads": ["ok"], "dedupe": "upload-1"})).await;
        let second = enqueue(&s.host, json!({"queue": "jobs", "payloads": ["ok"], "dedupe": "upload-1"})).await;
        assert_eq!(first, second, "the second enqueue returns the first id");
        assert_eq!(wait_for(&mut conn, &format!("rl:worker:kv:done:{}", first[0]), 1, Duration::from_secs(5)).await, 1);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(get_i64(&mut conn, "rl:worker:kv:done-total").await, 2, "one message per dedupe id");

        // Six delayed messages into a queue of five: the sixth is refused.
        let ids = enqueue(
            &s.host,
            json!({"queue": "jobs", "payloads": ["ok", "ok", "ok", "ok", "ok", "ok"], "delay_ms": 60000}),
        )
        .await;
        assert_eq!(ids.iter().filter(|i| *i == "full").count(), 1, "{ids:?}");
        s.shutdown().await;
    })
    .await;
}

/// `kill -9` of a host holding unacknowledged messages: another host
/// reclaims them after the visibility timeout; none is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashed_host_messages_are_reclaimed() {
    with_timeout(async {
        let redis = RedisServer::start().await;
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "[redis]\nurl = \"{}\"\n{}",
            redis.url(),
            config_text("concurrency = 4\nvisibility-timeout = \"1s\"", "")
        );
        let a_dir = dir.path().join("a");
        std::fs::create_dir_all(&a_dir).unwrap();
        std::fs::write(a_dir.join("redloom.toml"), &text).unwrap();
        let log = a_dir.join("serve.log");
        let mut a = Command::new(redloom_bin())
            .current_dir(&a_dir)
            .arg("serve")
            .env_remove("REDIS_URL")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        // Enqueue through a plain in-process host (it has no consumers).
        let producer = Host::start(host_options(&redis, &dir.path().join("p")))
            .await
            .unwrap();
        producer
            .load(redloom_tests::spec("worker", "queue-probe"))
            .await
            .unwrap();
        let ids = enqueue_all(
            &producer,
            json!({"queue": "jobs", "payloads": ["slow-3000", "slow-3000", "slow-3000"]}),
        )
        .await;
        // Wait until process A holds all three.
        let k = keys();
        let start = Instant::now();
        loop {
            let stats = producer.redis().queue_stats(&k, "workers").await.unwrap();
            if stats.pending == 3 {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "A never took the messages: {stats:?}\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        a.kill().unwrap();
        a.wait().unwrap();

        let text_b = config_text("concurrency = 4\nvisibility-timeout = \"1s\"", "");
        let b = serve(&redis, &dir.path().join("b"), &text_b).await;
        let mut conn = redis.client().await;
        let total = wait_for(
            &mut conn,
            "rl:worker:kv:done-total",
            3,
            Duration::from_secs(60),
        )
        .await;
        assert_eq!(total, 3, "every message of the crashed host was processed");
        for id in &ids {
            assert_eq!(
                get_i64(&mut conn, &format!("rl:worker:kv:done:{id}")).await,
                1
            );
        }
        let stats = b.host.redis().queue_stats(&k, "workers").await.unwrap();
        assert_eq!((stats.length, stats.pending), (0, 0));
        b.shutdown().await;
    })
    .await;
}

/// Graceful shutdown while messages run: they finish and are acknowledged
/// once; nothing is lost and nothing acknowledged twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_running_messages() {
    with_timeout(async {
        let redis = RedisServer::start().await;
        let dir = tempfile::tempdir().unwrap();
        let s = serve(&redis, dir.path(), &config_text("concurrency = 2", "")).await;
        let ids = enqueue(
            &s.host,
            json!({"queue": "jobs", "payloads": ["slow-1000", "slow-1000", "ok", "ok"]}),
        )
        .await;
        let k = keys();
        let start = Instant::now();
        loop {
            let stats = s.host.redis().queue_stats(&k, "workers").await.unwrap();
            if stats.pending >= 2 {
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(20));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let host = s.host.clone();
        s.shutdown().await;
        let mut conn = redis.client().await;
        let done: i64 = get_i64(&mut conn, "rl:worker:kv:done-total").await;
        let stats = host.redis().queue_stats(&k, "workers").await.unwrap();
        assert_eq!(stats.pending, 0, "nothing left half-done");
        // Whatever was not started stays in the stream for the next consumer.
        assert_eq!(
            done as u64 + stats.lag,
            4,
            "done {done}, waiting {}",
            stats.lag
        );
        for id in &ids {
            assert!(get_i64(&mut conn, &format!("rl:worker:kv:done:{id}")).await <= 1);
        }
    })
    .await;
}

/// The seed's video:ingest producer and worker over a shared queue, and the
/// `redloom queue` commands on it: stats, dead letters, replay, purge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn video_ingest_example_and_queue_cli() {
    with_timeout(async {
        let redis = RedisServer::start().await;
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            r#"
[http]
listen = "127.0.0.1:0"
[admin]
listen = "127.0.0.1:0"
[plugins.video-producer]
wasm = {producer:?}
shared-queues = ["video:ingest"]
[[routes]]
method = "POST"
path = "/videos"
plugin = "video-producer"
[plugins.video-worker]
wasm = {worker:?}
shared-queues = ["video:ingest"]
[plugins.video-worker.consumers."video:ingest"]
max-attempts = 2
backoff = "50ms"
"#,
            producer = plugin("video-producer").display().to_string(),
            worker = plugin("video-worker").display().to_string(),
        );
        let config = Config::parse(&text, &dir.path().join("redloom.toml")).unwrap();
        let host = Arc::new(Host::start(host_options(&redis, dir.path())).await.unwrap());
        let server = Server::bind(host.clone(), config).await.unwrap();
        let url = format!("http://{}/videos", server.http_addr());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let done = tokio::spawn(server.run(async move {
            let _ = stopped.await;
        }));
        let c = reqwest::Client::new();
        let post = |body: &'static str, key: &'static str| {
            c.post(&url)
                .header("idempotency-key", key)
                .body(body)
                .send()
        };
        let a = post("s3://videos/cat.mp4", "upload-1").await.unwrap();
        assert_eq!(a.status(), 202);
        let a_id = a.text().await.unwrap();
        let again = post("s3://videos/cat.mp4", "upload-1")
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert_eq!(a_id, again, "a retried upload is one job");
        assert_eq!(
            post("s3://videos/broken.mp4", "upload-2")
                .await
                .unwrap()
                .status(),
            202
        );
        let mut conn = redis.client().await;
        assert_eq!(
            wait_for(
                &mut conn,
                "rl:video-worker:kv:processed",
                1,
                Duration::from_secs(10)
            )
            .await,
            1
        );
        let k = Namespace::new(&PluginName::parse("video-worker").unwrap())
            .queue("video:ingest", true)
            .unwrap();
        let start = Instant::now();
        while host
            .redis()
            .queue_stats(&k, "workers")
            .await
            .unwrap()
            .dead_letters
            == 0
        {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "the broken video never reached the dead letters"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = stop.send(());
        done.await.unwrap();

        let cli = |args: &[&str]| {
            let mut cmd = Command::new(redloom_bin());
            cmd.current_dir(dir.path())
                .args(["queue"])
                .args(args)
                .args([
                    "video:ingest",
                    "--plugin",
                    "video-worker",
                    "--shared",
                    "--redis-url",
                    redis.url(),
                ]);
            redloom_tests::run_with_timeout(&mut cmd, Duration::from_secs(60))
        };
        let out = cli(&["stats"]);
        let stats = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stats.lines().any(|l| l == "dead letters:       1"),
            "{stats}"
        );
        assert!(
            stats.lines().any(|l| l == "pending:            0"),
            "{stats}"
        );
        let out = cli(&["dead-letters"]);
        let listing = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            listing.contains("cannot transcode s3://videos/broken.mp4"),
            "{listing}"
        );
        let out = cli(&["replay", "--all"]);
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "replayed 1 message(s)"
        );
        let stats = host.redis().queue_stats(&k, "workers").await.unwrap();
        assert_eq!(
            (stats.dead_letters, stats.length),
            (0, 1),
            "back in the queue"
        );
        // Fail it again into the dead letters, by hand, then purge.
        assert_eq!(host.redis().queue_replay(&k, None, 10).await.unwrap(), 0);
        let out = cli(&["purge-dead-letters"]);
        assert!(out.status.success());
    })
    .await;
}
