//! Work queues on Redis Streams: throughput across hosts, retries, dead
//! letters and replay, delays, dedupe, crash recovery, graceful shutdown.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use redis::AsyncCommands;
use redloom::config::Config;
use redloom::host::{Host, HostInvokeError};
use redloom::namespace::{Namespace, PluginName};
use redloom::quota::Quota;
use redloom::redis::queue::QueueStats;
use redloom_tests::with_timeout;
use redloom_tests::{RedisServer, Served, get_i64, host_options, plugin, redloom_bin, wait_for};
use serde_json::{Value, json};

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

async fn serve(redis: &RedisServer, dir: &std::path::Path, text: &str) -> Served {
    std::fs::create_dir_all(dir).unwrap();
    let config = Config::parse(text, &dir.join("redloom.toml")).expect("valid config");
    Served::start(host_options(redis, dir), config).await
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

fn keys() -> redloom::namespace::QueueKeys {
    Namespace::new(&PluginName::parse("worker").unwrap())
        .queue("jobs", false)
        .unwrap()
}

/// Wall-clock ms since the epoch: the clock the probe's handler records
/// (`at:<id>:<attempt>`) and Redis TIME reads, on this one machine.
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Waits (at most 60 s) until `keys` has nothing in the stream, pending or
/// scheduled — a handler counts its message done before the ack lands, so
/// this follows any wait for a count — and returns the stats then.
async fn settled(host: &Host, keys: &redloom::namespace::QueueKeys) -> QueueStats {
    let start = Instant::now();
    loop {
        let stats = host.redis().queue_stats(keys, "workers").await.unwrap();
        let settled = stats.length == 0 && stats.pending == 0 && stats.scheduled == 0;
        if settled || start.elapsed() > Duration::from_secs(60) {
            return stats;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The probe's kv key `key` (how a test releases `hold-<key>` messages).
fn kv(key: &str) -> String {
    format!("rl:worker:kv:{key}")
}

/// 10,000 messages, two `redloom serve` processes × 4 concurrency: every
/// message processed and acknowledged exactly once when nothing fails,
/// both processes took part, and nothing is left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_messages_two_host_processes() {
    with_timeout(async {
        let redis = RedisServer::start().await;
        let dir = tempfile::tempdir().unwrap();
        // Enqueue through a plain in-process host (it has no consumers); its
        // compiled-plugin cache is the processes' too, so they start fast.
        let data = dir.path().join("data");
        let producer = Host::start(host_options(&redis, &data)).await.unwrap();
        // The consumers' quotas (see `config_text`): 1000 enqueues in one
        // invocation passed the default 10 s wall time on a loaded machine.
        let mut spec = redloom_tests::spec("worker", "queue-probe");
        spec.quotas.wall_time = Duration::from_secs(60);
        spec.quotas.cpu = Duration::from_secs(30);
        producer.load(spec).await.unwrap();
        let text = format!(
            "data-dir = {data:?}\n{}{}",
            redis.config_table(),
            config_text("concurrency = 4\nbatch = 32", ""),
            data = data.display().to_string(),
        );
        let a = redloom_tests::ServeProcess::start(&dir.path().join("a"), &text).await;
        let b = redloom_tests::ServeProcess::start(&dir.path().join("b"), &text).await;
        // Both consumers are reading before the first message arrives (a
        // consumer joins the group only once a read returns something, so
        // look for the blocked reads).
        let k = keys();
        let mut conn = redis.client().await;
        let start = Instant::now();
        loop {
            let clients = redis.client_list_for(&k.stream).await;
            if clients.matches("cmd=xreadgroup").count() >= 2 {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "the consumers never read:\n{clients}\n{}\n{}",
                a.log_text(),
                b.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut ids = Vec::new();
        for _ in 0..10 {
            let payloads: Vec<String> = (0..1000).map(|_| "ok".to_string()).collect();
            ids.extend(
                enqueue_all(&producer, json!({"queue": "jobs", "payloads": payloads})).await,
            );
        }
        assert_eq!(ids.len(), 10_000);
        let total = wait_for(
            &mut conn,
            "rl:worker:kv:done-total",
            10_000,
            Duration::from_secs(240),
        )
        .await;
        assert_eq!(total, 10_000, "{}\n{}", a.log_text(), b.log_text());
        // Acknowledged: nothing in the stream, pending, scheduled or dead.
        let stats = settled(&producer, &k).await;
        assert_eq!(
            (
                stats.length,
                stats.pending,
                stats.scheduled,
                stats.dead_letters
            ),
            (0, 0, 0, 0),
            "{stats:?}"
        );
        assert_eq!(stats.consumers, 2, "{stats:?}");
        // Handler runs, as each process counted them (every run counts
        // before its ack): one per message, and both processes took part.
        let (ran_a, ran_b) = (
            a.counter("worker", "redloom_invocations_total").await,
            b.counter("worker", "redloom_invocations_total").await,
        );
        // Graceful stops wait for any handler still running (a duplicate
        // run whose ack was not needed any more), so what the counts say
        // below is final.
        a.stop().await;
        b.stop().await;
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
        assert_eq!(ran_a + ran_b, 10_000.0, "a {ran_a}, b {ran_b}");
        assert!(ran_a > 0.0 && ran_b > 0.0, "a {ran_a}, b {ran_b}");
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
                Duration::from_secs(60)
            )
            .await,
            1,
            "the flaky message never succeeded; attempts: {}",
            get_i64(&mut conn, &format!("rl:worker:kv:attempts:{flaky}")).await
        );
        assert_eq!(
            get_i64(&mut conn, &format!("rl:worker:kv:attempts:{flaky}")).await,
            4,
            "attempts of a message that fails 3 times"
        );
        let mut at = Vec::new();
        for a in 1..=4 {
            at.push(get_i64(&mut conn, &format!("rl:worker:kv:at:{flaky}:{a}")).await);
        }
        let gaps: Vec<i64> = at.windows(2).map(|w| w[1] - w[0]).collect();
        // Retry n waits backoff × 2^(n-1) × [0.5, 1.5): [50,150), [100,300),
        // [200,600) ms. The gap between two runs is that wait plus the run,
        // up to one promotion period (100 ms) and the dispatch — all of
        // which a slow machine only lengthens — so each gap is at least its
        // shortest wait, and these minimums grow: 50, 100, 200 ms (the
        // third above the most the first wait can be). Runs are stamped in
        // whole ms of the wall clock, retries are due in whole ms of Redis
        // TIME (the same clock), so the minimums are exact. The upper bound
        // only catches waits of another order (10× the longest expected
        // gap, 700 ms).
        assert!(
            gaps[0] >= 50 && gaps[1] >= 100 && gaps[2] >= 200,
            "gaps {gaps:?} between the runs at {at:?}"
        );
        assert!(gaps.iter().all(|g| *g < 7_000), "gaps {gaps:?}");

        let start = Instant::now();
        let dead = loop {
            let d = s
                .host
                .redis()
                .queue_dead_letters(&keys(), 10)
                .await
                .unwrap();
            if !d.is_empty() || start.elapsed() > Duration::from_secs(60) {
                break d;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(dead.len(), 1, "dead letters: {dead:?}");
        assert_eq!(dead[0].id, doomed, "{dead:?}");
        assert_eq!(dead[0].attempts, 3, "{dead:?}");
        assert!(
            dead[0].error.contains("this job always fails"),
            "{}",
            dead[0].error
        );
        assert_eq!(
            get_i64(&mut conn, &format!("rl:worker:kv:attempts:{doomed}")).await,
            3,
            "handler runs of a message that died after 3 attempts"
        );

        assert_eq!(
            s.host
                .redis()
                .queue_replay(&keys(), None, 100)
                .await
                .unwrap(),
            1,
            "replayed"
        );
        let attempts = wait_for(
            &mut conn,
            &format!("rl:worker:kv:attempts:{doomed}"),
            4,
            Duration::from_secs(60),
        )
        .await;
        assert!(
            attempts >= 4,
            "the replayed message never ran: {attempts} runs"
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
        let (started, enqueued_from) = (Instant::now(), now_ms());
        let late = enqueue(&s.host, json!({"queue": "jobs", "payloads": ["ok"], "delay_ms": 800})).await.remove(0);
        assert_eq!(wait_for(&mut conn, &format!("rl:worker:kv:done:{late}"), 1, Duration::from_secs(60)).await, 1, "the delayed message never ran");
        assert!(started.elapsed() >= Duration::from_millis(800), "done after {:?}", started.elapsed());
        // Not delivered early: its handler started (wall clock, whole ms)
        // at least 800 ms after the enqueue began (it is due 800 ms after
        // the enqueue's Redis TIME, the same clock).
        let ran = get_i64(&mut conn, &format!("rl:worker:kv:at:{late}:1")).await;
        assert!(ran - enqueued_from >= 800, "delivered early: {} ms after the enqueue began", ran - enqueued_from);

        let first = enqueue(&s.host, json!({"queue": "jobs", "payloads": ["ok"], "dedupe": "upload-1"})).await;
        let second = enqueue(&s.host, json!({"queue": "jobs", "payloads": ["ok"], "dedupe": "upload-1"})).await;
        assert_eq!(first, second, "the second enqueue returns the first id");
        assert_eq!(wait_for(&mut conn, &format!("rl:worker:kv:done:{}", first[0]), 1, Duration::from_secs(60)).await, 1, "the deduplicated message never ran");
        // The handler counts before its ack and delete land: wait (bounded)
        // until the queue is empty, so the six below meet an empty queue.
        let stats = settled(&s.host, &keys()).await;
        assert_eq!((stats.length, stats.pending, stats.scheduled), (0, 0, 0), "the queue did not drain: {stats:?}");
        assert_eq!(get_i64(&mut conn, "rl:worker:kv:done-total").await, 2, "one message per dedupe id");

        // Six delayed messages into a queue of five: the sixth is refused.
        // The refusal is a storage quota breach that fails the invocation,
        // although the probe swallows the error (it answers "full" for
        // it), so no caller takes a refused message for an accepted one;
        // the five before it stay (refused, never trimmed).
        let refused = s
            .host
            .invoke(
                &PluginName::parse("worker").unwrap(),
                json!({"queue": "jobs", "payloads": ["ok", "ok", "ok", "ok", "ok", "ok"], "delay_ms": 60000})
                    .to_string()
                    .as_bytes(),
            )
            .await
            .expect_err("a full queue fails the invocation");
        match &refused {
            HostInvokeError::Invoke(e) => assert_eq!(e.quota(), Some(Quota::Storage), "{refused}"),
            other => panic!("{other}"),
        }
        assert!(refused.to_string().contains("queue-max-length of 5"), "{refused}");
        let stats = s.host.redis().queue_stats(&keys(), "workers").await.unwrap();
        assert_eq!((stats.scheduled, stats.length), (5, 0), "{stats:?}");
        s.shutdown().await;
    })
    .await;
}

/// `kill -9` of a host holding unacknowledged messages: another host
/// reclaims them after the visibility timeout; none is lost. The messages
/// hold their handlers until the test releases them, so host A is certainly
/// still running all three when it is killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashed_host_messages_are_reclaimed() {
    with_timeout(async {
        let redis = RedisServer::start().await;
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "{}{}",
            redis.config_table(),
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
        let release = redloom_tests::unique("release");
        let hold = format!("hold-{release}");
        let ids = enqueue_all(
            &producer,
            json!({"queue": "jobs", "payloads": [hold, hold, hold]}),
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
        let mut conn = redis.client().await;
        let done = get_i64(&mut conn, "rl:worker:kv:done-total").await;
        assert_eq!(done, 0, "A finished messages it was holding");
        a.kill().unwrap();
        a.wait().unwrap();
        // B's runs of them may finish.
        let _: () = conn.set(kv(&release), 1).await.unwrap();

        let text_b = config_text("concurrency = 4\nvisibility-timeout = \"1s\"", "");
        let b = serve(&redis, &dir.path().join("b"), &text_b).await;
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
                1,
                "{id} done"
            );
        }
        let stats = settled(&b.host, &k).await;
        assert_eq!((stats.length, stats.pending), (0, 0), "{stats:?}");
        b.shutdown().await;
    })
    .await;
}

/// Graceful shutdown while messages run: they finish and are acknowledged
/// once; nothing is lost and nothing acknowledged twice. The two running
/// messages hold their handlers until the test releases them, which it
/// does only once the shutdown has begun (the HTTP listener is closed), so
/// the shutdown certainly has to wait for them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_running_messages() {
    with_timeout(async {
        let redis = RedisServer::start().await;
        let dir = tempfile::tempdir().unwrap();
        // A shutdown deadline no stall of the machine reaches, so the
        // shutdown can only end by waiting for the held messages.
        let text = config_text("concurrency = 2", "")
            .replace("shutdown-timeout = \"15s\"", "shutdown-timeout = \"120s\"");
        let s = serve(&redis, dir.path(), &text).await;
        let release = redloom_tests::unique("release");
        let hold = format!("hold-{release}");
        let ids = enqueue(
            &s.host,
            json!({"queue": "jobs", "payloads": [hold, hold, "ok", "ok"]}),
        )
        .await;
        let k = keys();
        let mut conn = redis.client().await;
        let start = Instant::now();
        loop {
            let stats = s.host.redis().queue_stats(&k, "workers").await.unwrap();
            if stats.pending >= 2 {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "the consumer never took the two held messages: {stats:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let Served {
            host,
            addr,
            stop,
            done: mut serving,
            ..
        } = s;
        let _ = stop.send(());
        let start = Instant::now();
        while tokio::net::TcpStream::connect(addr).await.is_ok() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "the HTTP listener never closed"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // It cannot finish while the two messages run: one that did not
        // wait for them would be done within milliseconds of the listener
        // closing; give it half a second (a correct one never finishes here,
        // so the wait cannot fail it).
        let waited = tokio::time::timeout(Duration::from_millis(500), &mut serving).await;
        assert!(
            waited.is_err(),
            "serve finished its shutdown while two messages were still running"
        );
        let _: () = conn.set(kv(&release), 1).await.unwrap();
        tokio::time::timeout(Duration::from_secs(30), serving)
            .await
            .expect("serve stops within 30 s once the messages are released")
            .expect("serve's task");
        let done: i64 = get_i64(&mut conn, "rl:worker:kv:done-total").await;
        let stats = host.redis().queue_stats(&k, "workers").await.unwrap();
        assert_eq!(stats.pending, 0, "nothing left half-done: {stats:?}");
        // Whatever was not started stays in the stream for the next consumer.
        assert_eq!(
            done as u64 + stats.lag,
            4,
            "done {done}, waiting {}",
            stats.lag
        );
        for id in &ids[..2] {
            let runs = get_i64(&mut conn, &format!("rl:worker:kv:done:{id}")).await;
            assert_eq!(
                runs, 1,
                "{id} was running when the shutdown began, then done {runs} times"
            );
        }
        for id in &ids {
            let runs = get_i64(&mut conn, &format!("rl:worker:kv:done:{id}")).await;
            assert!(runs <= 1, "{id} ran {runs} times");
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
        let served = serve(&redis, dir.path(), &text).await;
        let host = served.host.clone();
        let url = format!("http://{}/videos", served.addr);
        let c = reqwest::Client::new();
        let post = |body: &'static str, key: &'static str| {
            c.post(&url)
                .header("idempotency-key", key)
                .body(body)
                .send()
        };
        let a = post("s3://videos/cat.mp4", "upload-1").await.unwrap();
        assert_eq!(a.status(), 202, "{a:?}");
        let a_id = a.text().await.unwrap();
        let again = post("s3://videos/cat.mp4", "upload-1")
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert_eq!(a_id, again, "a retried upload is one job");
        let broken = post("s3://videos/broken.mp4", "upload-2").await.unwrap();
        assert_eq!(broken.status(), 202, "{broken:?}");
        let mut conn = redis.client().await;
        assert_eq!(
            wait_for(
                &mut conn,
                "rl:video-worker:kv:processed",
                1,
                Duration::from_secs(60)
            )
            .await,
            1,
            "videos processed"
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
                start.elapsed() < Duration::from_secs(60),
                "the broken video never reached the dead letters: {:?}",
                host.redis().queue_stats(&k, "workers").await
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        served.shutdown().await;

        let cli = |args: &[&str]| {
            let mut cmd = Command::new(redloom_bin());
            cmd.current_dir(dir.path())
                .args(["queue"])
                .args(args)
                .args(["video:ingest", "--plugin", "video-worker", "--shared"])
                .args(redis.cli_args());
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
        let out = cli(&["dead-letters", "--output", "json"]);
        let dead: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
        assert_eq!(dead[0]["payload"], "s3://videos/broken.mp4", "{dead}");
        assert_eq!(dead[0]["attempts"], 2, "{dead}");
        let out = cli(&["stats", "--output", "json"]);
        let stats: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(
            (&stats["dead_letters"], &stats["pending"]),
            (&1.into(), &0.into()),
            "{stats}"
        );
        let out = cli(&["replay", "--all"]);
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "replayed 1 message(s)",
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stats = host.redis().queue_stats(&k, "workers").await.unwrap();
        assert_eq!(
            (stats.dead_letters, stats.length),
            (0, 1),
            "back in the queue: {stats:?}"
        );
        // Fail it again into the dead letters, by hand, then purge.
        assert_eq!(
            host.redis().queue_replay(&k, None, 10).await.unwrap(),
            0,
            "nothing left to replay"
        );
        let out = cli(&["purge-dead-letters"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    })
    .await;
}

/// When the handler ran for each of `ids` (attempt 1), in ms since the
/// epoch, sorted; and that no message ran a second attempt.
async fn first_runs(conn: &mut redloom_tests::TestConnection, ids: &[String]) -> Vec<i64> {
    let mut at = Vec::new();
    for id in ids {
        let first = get_i64(conn, &format!("rl:worker:kv:at:{id}:1")).await;
        assert!(first > 0, "{id} never ran as attempt 1");
        assert_eq!(
            get_i64(conn, &format!("rl:worker:kv:at:{id}:2")).await,
            0,
            "{id} ran a second attempt: a deferral counted as one"
        );
        assert_eq!(
            get_i64(conn, &format!("rl:worker:kv:attempts:{id}")).await,
            1,
            "{id}: handler runs"
        );
        at.push(first);
    }
    at.sort();
    at
}

/// Checks handler start times `times` (sorted, wall-clock ms) of messages
/// through a GCRA limit of `burst` at once and one more every
/// `interval_ms`, enqueued at `from` or later: the k-th start is no earlier
/// than `from + (k - burst) × interval` — never more than `burst + ⌊t /
/// interval⌋` messages started within t of the enqueue.
///
/// GCRA admits the k-th unit no earlier than the first plus `(k - burst) ×
/// interval`; nothing is admitted before the enqueue, and each handler
/// starts after its message was admitted, so the k-th start is no earlier
/// than the k-th admission. Scheduling delays only make starts later, so
/// this holds however slow the machine is (the start times are whole ms of
/// the clock Redis TIME reads, so the bound is exact to 1 ms); counting
/// starts within any one second instead would let a delayed dispatch
/// bunch them up.
fn within_the_limit(times: &[i64], from: i64, burst: usize, interval_ms: i64) {
    let after: Vec<i64> = times.iter().map(|t| t - from).collect();
    for (i, t) in after.iter().enumerate() {
        let earliest = (i + 1).saturating_sub(burst) as i64 * interval_ms;
        assert!(
            *t >= earliest - 1,
            "message {} started {t} ms after the enqueue began, but the limit admits it at {earliest} ms at the earliest; starts (ms after the enqueue): {after:?}",
            i + 1
        );
    }
}

/// `rate-limit` on a queue: 30 messages through a GCRA limit of 10/s with
/// a burst of 2 run no faster than that rate (never more than 2 + 10 × t
/// from the enqueue within t, so the last starts at least 2.8 s after it),
/// every one exactly once as its first attempt; the others were deferred
/// (counted), not failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_per_queue_caps_the_processing_rate() {
    with_timeout(async {
        let redis = RedisServer::start().await;
        let dir = tempfile::tempdir().unwrap();
        let s = serve(
            &redis,
            dir.path(),
            &config_text(
                "concurrency = 4\nrate-limit = \"per-queue\"",
                "limiters = { per-queue = { algorithm = \"gcra\", rate = \"10/s\", burst = 2 } }",
            ),
        )
        .await;
        let payloads: Vec<&str> = vec!["ok"; 30];
        let enqueued_from = now_ms();
        let ids = enqueue_all(&s.host, json!({"queue": "jobs", "payloads": payloads})).await;
        let mut conn = redis.client().await;
        let total = wait_for(
            &mut conn,
            "rl:worker:kv:done-total",
            30,
            Duration::from_secs(120),
        )
        .await;
        assert_eq!(total, 30, "every message is processed in the end");
        // Every run counted; wait for the acks too.
        let stats = settled(&s.host, &keys()).await;
        let at = first_runs(&mut conn, &ids).await;
        within_the_limit(&at, enqueued_from, 2, 100);
        assert_eq!(
            (
                stats.length,
                stats.pending,
                stats.scheduled,
                stats.dead_letters
            ),
            (0, 0, 0, 0),
            "{stats:?}"
        );
        let worker = s
            .host
            .plugin(&PluginName::parse("worker").unwrap())
            .unwrap();
        let counters = worker.stats();
        // Deferred messages come back spaced at the limit's rate, so each
        // is deferred about once (28 times in all when the machine keeps
        // up), not once per retry-after (on the order of 28²/2 = 392). A
        // pause of the machine brings several back at once, and all but the
        // burst's worth are deferred again: allow up to 5 deferrals each.
        assert!(
            (1..=140).contains(&counters.deferred_messages),
            "deferrals: {}",
            counters.deferred_messages
        );
        assert_eq!(
            counters.invocations, 31,
            "30 messages and one enqueue: {counters:?}"
        );
        s.shutdown().await;
    })
    .await;
}

/// `rate-limit-key = "header:tenant"`: a noisy tenant with a backlog over
/// its limit does not hold back another tenant's messages enqueued after
/// it, nor messages without the header (which share one key): they all
/// start while the noisy tenant, limited to 5/s with a burst of 2 (so its
/// 20 take at least 3.6 s), still has messages waiting. The noisy tenant's
/// messages all run in the end, each once, no faster than its limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_per_tenant_isolates_tenants() {
    with_timeout(async {
        let redis = RedisServer::start().await;
        let dir = tempfile::tempdir().unwrap();
        let s = serve(
            &redis,
            dir.path(),
            &config_text(
                "concurrency = 4\nrate-limit = \"per-tenant\"\nrate-limit-key = \"header:tenant\"",
                "limiters = { per-tenant = { algorithm = \"gcra\", rate = \"5/s\", burst = 2 } }",
            ),
        )
        .await;
        let noisy_from = now_ms();
        let noisy = enqueue_all(
            &s.host,
            json!({"queue": "jobs", "payloads": vec!["ok"; 20], "headers": {"tenant": "noisy"}}),
        )
        .await;
        let quiet = enqueue_all(
            &s.host,
            json!({"queue": "jobs", "payloads": vec!["ok"; 2], "headers": {"tenant": "quiet"}}),
        )
        .await;
        let anonymous =
            enqueue_all(&s.host, json!({"queue": "jobs", "payloads": vec!["ok"; 2]})).await;
        let mut conn = redis.client().await;
        let total = wait_for(
            &mut conn,
            "rl:worker:kv:done-total",
            24,
            Duration::from_secs(120),
        )
        .await;
        assert_eq!(total, 24, "every message is processed in the end");
        let stats = settled(&s.host, &keys()).await;
        let noisy_at = first_runs(&mut conn, &noisy).await;
        within_the_limit(&noisy_at, noisy_from, 2, 200);
        let others: Vec<String> = quiet.iter().chain(&anonymous).cloned().collect();
        let others_at = first_runs(&mut conn, &others).await;
        // Handler start times (wall-clock ms, one clock for all): the
        // others did not wait for the noisy backlog to drain.
        let last_other = others_at[others_at.len() - 1];
        let behind = noisy_at.iter().filter(|t| **t > last_other).count();
        assert!(
            behind > 0,
            "the other tenants waited behind the noisy one: they started at {:?}, the noisy tenant's at {:?} (ms after the first enqueue began)",
            others_at.iter().map(|t| t - noisy_from).collect::<Vec<_>>(),
            noisy_at.iter().map(|t| t - noisy_from).collect::<Vec<_>>()
        );
        assert_eq!(
            (
                stats.length,
                stats.pending,
                stats.scheduled,
                stats.dead_letters
            ),
            (0, 0, 0, 0),
            "{stats:?}"
        );
        s.shutdown().await;
    })
    .await;
}
