//! Poison messages and dead consumers: a message whose consumer dies
//! during every delivery stops after its `max-attempts` in the dead
//! letters; the consumers of dead processes leave the group (but never one
//! that still holds pending messages); a full queue fails the HTTP request.

use std::path::Path;
use std::time::{Duration, Instant};

use redloom::config::Config;
use redloom::host::Host;
use redloom::namespace::{Namespace, PluginName, QueueKeys};
use redloom::redis::queue::QueueStats;
use redloom::triggers::queue::dead_consumer_idle;
use redloom_tests::{
    RedisServer, ServeProcess, Served, get_i64, host_options, plugin, spec, unique, with_timeout_of,
};
use serde_json::json;

/// The consumer's visibility timeout in these tests: short, so a lost
/// delivery is reclaimed soon.
const VISIBILITY: Duration = Duration::from_secs(1);

/// The bound on every wait for something the consumers do.
const WAIT: Duration = Duration::from_secs(60);

fn keys(queue: &str) -> QueueKeys {
    Namespace::new(&PluginName::parse("worker").unwrap())
        .queue(queue, false)
        .unwrap()
}

/// A `redloom.toml` for a `serve` process consuming `queue` with the
/// queue-probe plugin: one message at a time, [`VISIBILITY`], a default of
/// 10 attempts (messages may set fewer).
fn serve_config(redis: &RedisServer, data: &Path, queue: &str) -> String {
    format!(
        r#"data-dir = {data:?}
{redis_table}
[http]
listen = "127.0.0.1:0"
[admin]
listen = "127.0.0.1:0"
[plugins.worker]
wasm = {wasm:?}
[plugins.worker.quotas]
wall-time = "60s"
[plugins.worker.consumers.{queue:?}]
concurrency = 1
visibility-timeout = "{visibility}ms"
max-attempts = 10
backoff = "50ms"
"#,
        data = data.display().to_string(),
        redis_table = redis.config_table(),
        wasm = plugin("queue-probe").display().to_string(),
        visibility = VISIBILITY.as_millis(),
    )
}

/// Polls `stats` of `queue` until `done` holds, at most [`WAIT`]; panics
/// with the last stats and `context()` if it never does.
async fn wait_for_stats(
    host: &Host,
    queue: &str,
    what: &str,
    done: impl Fn(&QueueStats) -> bool,
    context: impl Fn() -> String,
) -> QueueStats {
    let k = keys(queue);
    let start = Instant::now();
    loop {
        let stats = host.redis().queue_stats(&k, "workers").await.unwrap();
        if done(&stats) {
            return stats;
        }
        assert!(
            start.elapsed() < WAIT,
            "{what}: not within {WAIT:?}: {stats:?}\n{}",
            context()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A message with `max-attempts = 3` whose consumer process is killed
/// (`kill -9`) during every delivery: after three deliveries, the next
/// consumer moves it to the dead letters without running it again, saying
/// why; the handler ran exactly three times; and the consumers of the three
/// dead processes leave the group once idle past the bound, leaving only
/// the live one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_killed_during_every_delivery_dead_letters_after_max_attempts() {
    with_timeout_of(Duration::from_secs(400), async {
        let redis = RedisServer::start().await;
        let dir = tempfile::tempdir().unwrap();
        let queue = unique("poison");
        // Enqueue through a plain in-process host (it has no consumers);
        // its compiled-plugin cache is the processes' too, so they start fast.
        let data = dir.path().join("data");
        let producer = Host::start(host_options(&redis, &data)).await.unwrap();
        producer.load(spec("worker", "queue-probe")).await.unwrap();
        let out = producer
            .invoke(
                &PluginName::parse("worker").unwrap(),
                json!({"queue": queue, "payloads": ["sleep-120000"], "max_attempts": 3})
                    .to_string()
                    .as_bytes(),
            )
            .await
            .expect("enqueues");
        let ids: Vec<String> = serde_json::from_slice(&out).unwrap();
        let id = ids[0].clone();
        let attempts_key = format!("rl:worker:kv:attempts:{id}");
        let text = serve_config(&redis, &data, &queue);
        let mut conn = redis.client().await;
        let mut last_spawned = Instant::now();
        for attempt in 1..=3 {
            last_spawned = Instant::now();
            let p = ServeProcess::start(&dir.path().join(format!("p{attempt}")), &text).await;
            // The handler has started this attempt (it counts first, then
            // sleeps): kill the process in the middle of it.
            let start = Instant::now();
            while get_i64(&mut conn, &attempts_key).await < attempt {
                assert!(
                    start.elapsed() < WAIT,
                    "attempt {attempt} never started:\n{}",
                    p.log_text()
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            drop(p); // SIGKILL
            assert_eq!(get_i64(&mut conn, &attempts_key).await, attempt);
        }
        let last = ServeProcess::start(&dir.path().join("p4"), &text).await;
        let stats = wait_for_stats(
            &producer,
            &queue,
            "the message never reached the dead letters",
            |s| s.dead_letters == 1,
            || last.log_text(),
        )
        .await;
        assert_eq!(
            (
                stats.dead_letters,
                stats.length,
                stats.pending,
                stats.scheduled
            ),
            (1, 0, 0, 0),
            "{stats:?}"
        );
        assert_eq!(
            get_i64(&mut conn, &attempts_key).await,
            3,
            "the handler ran more than max-attempts times:\n{}",
            last.log_text()
        );
        let dead = producer
            .redis()
            .queue_dead_letters(&keys(&queue), 10)
            .await
            .unwrap();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].id, id);
        assert_eq!(dead[0].attempts, 3);
        assert_eq!(dead[0].payload, b"sleep-120000");
        assert!(
            dead[0].error.contains("died or stalled")
                && dead[0].error.contains("attempts 1 to 3 of 3"),
            "the dead letter does not say why: {}",
            dead[0].error
        );

        // The three dead processes' consumers (each joined under a name of
        // its own) leave the group once idle past the bound; the live one
        // stays.
        let stats = wait_for_stats(
            &producer,
            &queue,
            "the dead consumers were not removed",
            |s| s.consumers <= 1,
            || last.log_text(),
        )
        .await;
        assert_eq!(stats.consumers, 1, "the live consumer left the group");
        // Not before the bound: the third process's consumer last touched
        // the group after that process was started.
        let bound = dead_consumer_idle(VISIBILITY);
        assert!(
            last_spawned.elapsed() >= bound,
            "a consumer was removed within {:?} of joining; the bound is {bound:?}",
            last_spawned.elapsed()
        );
        assert_eq!(get_i64(&mut conn, &attempts_key).await, 3);
        last.stop().await;
    })
    .await;
}

/// Removing dead consumers never removes one holding pending messages (its
/// messages would be lost to the group): it goes only after another
/// consumer has reclaimed them. A consumer idle for less than the bound,
/// and the caller itself, stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_dead_consumers_keeps_pending_messages() {
    with_timeout_of(Duration::from_secs(120), async {
        let redis = RedisServer::start().await;
        let dir = tempfile::tempdir().unwrap();
        let host = redloom_tests::host(&redis, dir.path()).await;
        let r = host.redis();
        let k = keys(&unique("jobs"));
        r.queue_ensure_group(&k, "workers").await.unwrap();
        r.queue_enqueue(&k, None, b"m", "{}", 0, 1, 0, 100)
            .await
            .unwrap();
        // `crashed` takes the message and dies holding it; `idle` joined
        // and never got anything.
        let got = r
            .queue_read(&k, "workers", "crashed", 10, 100)
            .await
            .unwrap();
        assert_eq!(got.len(), 1);
        let mut conn = redis.client().await;
        let () = redis::cmd("XGROUP")
            .arg("CREATECONSUMER")
            .arg(&k.stream)
            .arg("workers")
            .arg("idle")
            .query_async(&mut conn)
            .await
            .unwrap();
        let stats = r.queue_stats(&k, "workers").await.unwrap();
        assert_eq!((stats.consumers, stats.pending), (2, 1));

        // Not idle for an hour: nobody goes.
        let removed = r
            .queue_prune_consumers(&k, "workers", "live", 3_600_000)
            .await
            .unwrap();
        assert!(removed.is_empty(), "{removed:?}");
        // Any idle time: `idle` goes, `crashed` holds a message and stays.
        let removed = r
            .queue_prune_consumers(&k, "workers", "live", 0)
            .await
            .unwrap();
        assert_eq!(removed, vec!["idle".to_string()]);
        let stats = r.queue_stats(&k, "workers").await.unwrap();
        assert_eq!((stats.consumers, stats.pending), (1, 1));

        // `live` reclaims the message (its second delivery); now `crashed`
        // holds nothing and goes, and `live`, the caller, stays although it
        // holds the message.
        let taken = r.queue_reclaim(&k, "workers", "live", 0, 10).await.unwrap();
        assert_eq!(taken.len(), 1);
        assert_eq!(taken[0].1, 2, "deliveries");
        assert_eq!(taken[0].0.payload, b"m");
        let removed = r
            .queue_prune_consumers(&k, "workers", "live", 0)
            .await
            .unwrap();
        assert_eq!(removed, vec!["crashed".to_string()]);
        let stats = r.queue_stats(&k, "workers").await.unwrap();
        assert_eq!((stats.consumers, stats.pending, stats.length), (1, 1, 1));
        // Another consumer's call does not remove `live` while it holds it.
        let removed = r
            .queue_prune_consumers(&k, "workers", "other", 0)
            .await
            .unwrap();
        assert!(removed.is_empty(), "{removed:?}");

        // No group (a Redis that lost its data): nothing to do, no error.
        let gone = keys(&unique("never"));
        assert!(
            r.queue_prune_consumers(&gone, "workers", "live", 0)
                .await
                .unwrap()
                .is_empty()
        );
    })
    .await;
}

/// A full queue fails the HTTP request with 503 and `Retry-After`, even
/// though the plugin swallows the enqueue error and answers 200: its answer
/// would tell the client a refused message was accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_fails_the_http_request_with_503() {
    with_timeout_of(Duration::from_secs(120), async {
        let redis = RedisServer::start().await;
        let dir = tempfile::tempdir().unwrap();
        let queue = unique("full");
        let text = format!(
            r#"
[http]
listen = "127.0.0.1:0"
[admin]
listen = "127.0.0.1:0"
[plugins.worker]
wasm = {wasm:?}
queue-max-length = 1
[[routes]]
method = "POST"
path = "/enqueue/:queue"
plugin = "worker"
"#,
            wasm = plugin("queue-probe").display().to_string(),
        );
        let config = Config::parse(&text, &dir.path().join("redloom.toml")).expect("valid config");
        let served = Served::start(host_options(&redis, dir.path()), config).await;
        let url = format!("http://{}/enqueue/{queue}", served.addr);
        let c = reqwest::Client::new();
        let first = c.post(&url).body("one").send().await.unwrap();
        assert_eq!(first.status(), 200);
        let first_id = first.text().await.unwrap();
        assert!(!first_id.starts_with("refused"), "{first_id}");

        let full = c.post(&url).body("two").send().await.unwrap();
        assert_eq!(full.status(), 503);
        let retry_after = full
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_string());
        assert!(
            retry_after.is_some_and(|v| v.parse::<u64>().is_ok_and(|s| s >= 1)),
            "{:?}",
            full.headers()
        );
        let body = full.text().await.unwrap();
        assert!(
            !body.contains("refused"),
            "the plugin's answer went out: {body}"
        );

        // One message queued: the first; the second was not added.
        let stats = served
            .host
            .redis()
            .queue_stats(&keys(&queue), "workers")
            .await
            .unwrap();
        assert_eq!(stats.length, 1, "{stats:?}");
        let host = served.host.clone();
        served.shutdown().await;
        host.shutdown().await;
    })
    .await;
}

/// A Redis that comes back empty (scripts, group and consumers gone): the
/// consumer's reclaim and dead-consumer scripts are loaded again, the group
/// is created again, and a message enqueued after the restart is
/// processed. (A guard for the scripts this module's fixes added.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_recovers_after_an_empty_redis_restart() {
    with_timeout_of(Duration::from_secs(240), async {
        let mut redis = RedisServer::start().await;
        let dir = tempfile::tempdir().unwrap();
        let queue = unique("restart");
        let data = dir.path().join("data");
        let producer = Host::start(host_options(&redis, &data)).await.unwrap();
        producer.load(spec("worker", "queue-probe")).await.unwrap();
        let consumer =
            ServeProcess::start(&dir.path().join("c"), &serve_config(&redis, &data, &queue)).await;
        let worker = PluginName::parse("worker").unwrap();
        let input = json!({"queue": queue, "payloads": ["ok"]}).to_string();
        // Enqueues one message, retrying while the connection comes back.
        let enqueue = || async {
            let start = Instant::now();
            loop {
                match producer.invoke(&worker, input.as_bytes()).await {
                    Ok(out) => {
                        break serde_json::from_slice::<Vec<String>>(&out).unwrap()[0].clone();
                    }
                    Err(e) => {
                        assert!(start.elapsed() < WAIT, "cannot enqueue: {e}");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        };
        let done = |id: &str| format!("rl:worker:kv:done:{id}");
        let before = enqueue().await;
        let mut conn = redis.client().await;
        assert_eq!(
            redloom_tests::wait_for(&mut conn, &done(&before), 1, WAIT).await,
            1,
            "{}",
            consumer.log_text()
        );

        redis.restart().await;
        let after = enqueue().await;
        let mut conn = redis.client().await;
        assert_eq!(
            redloom_tests::wait_for(&mut conn, &done(&after), 1, WAIT).await,
            1,
            "the consumer did not come back:\n{}",
            consumer.log_text()
        );
        let stats = wait_for_stats(
            &producer,
            &queue,
            "the processed message was not acknowledged",
            |s| s.length == 0 && s.pending == 0,
            || consumer.log_text(),
        )
        .await;
        assert_eq!((stats.dead_letters, stats.scheduled), (0, 0), "{stats:?}");
        consumer.stop().await;
    })
    .await;
}

/// The source of `lua/NAME` as the host embeds it.
fn script(name: &str) -> redis::Script {
    let (_, src) = redloom::redis::scripts::SOURCES
        .iter()
        .find(|(n, _)| *n == name)
        .unwrap_or_else(|| panic!("no lua/{name}"));
    redis::Script::new(src)
}

/// `queue_fail` and `queue_defer` check everything that could make them
/// fail before their first write: an argument they cannot use fails the
/// call with the message still pending in the stream (to be reclaimed),
/// not acknowledged and deleted with nowhere to go; and a message missing
/// fields still moves whole to the dead letters instead of failing halfway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_scripts_fail_before_their_first_write() {
    with_timeout_of(Duration::from_secs(120), async {
        let redis = RedisServer::start().await;
        let dir = tempfile::tempdir().unwrap();
        let host = redloom_tests::host(&redis, dir.path()).await;
        let r = host.redis();
        let queue = unique("jobs");
        let k = keys(&queue);
        r.queue_ensure_group(&k, "workers").await.unwrap();
        r.queue_enqueue(&k, None, b"m", "{}", 0, 1, 0, 100)
            .await
            .unwrap();
        let got = r.queue_read(&k, "workers", "c", 10, 100).await.unwrap();
        assert_eq!(got.len(), 1);
        let entry_id = got[0].entry_id.clone();
        let mut conn = redis.client().await;
        let fail_script = script("queue_fail.lua");
        let fail = |backoff: &str, default_max: &str| {
            let mut inv = fail_script.prepare_invoke();
            inv.key(&k.stream)
                .key(&k.delayed)
                .key(&k.dead)
                .arg("workers")
                .arg(&entry_id)
                .arg(backoff)
                .arg("boom")
                .arg(default_max)
                .arg(1);
            inv
        };
        let untouched = |stats: QueueStats| {
            assert_eq!(
                (
                    stats.length,
                    stats.pending,
                    stats.scheduled,
                    stats.dead_letters
                ),
                (1, 1, 0, 0),
                "the message moved or was lost: {stats:?}"
            );
        };
        for (backoff, max) in [("soon", "5"), ("100", "many")] {
            let e = fail(backoff, max)
                .invoke_async::<String>(&mut conn)
                .await
                .expect_err("a bad argument fails");
            untouched(r.queue_stats(&k, "workers").await.unwrap());
            assert!(e.to_string().contains("must be numbers"), "{e}");
        }
        let e = script("queue_defer.lua")
            .key(&k.stream)
            .key(&k.delayed)
            .arg("workers")
            .arg(&entry_id)
            .arg("later")
            .arg(1)
            .invoke_async::<String>(&mut conn)
            .await
            .expect_err("a bad delay fails");
        untouched(r.queue_stats(&k, "workers").await.unwrap());
        assert!(e.to_string().contains("must be a number"), "{e}");
        // With good arguments it still works.
        let outcome: String = fail("100", "5").invoke_async(&mut conn).await.unwrap();
        assert_eq!(outcome, "retry");

        // An entry with nothing but an id, on its last attempt: dead, whole.
        let bare: String = redis::cmd("XADD")
            .arg(&k.stream)
            .arg("*")
            .arg("id")
            .arg("bare")
            .query_async(&mut conn)
            .await
            .unwrap();
        let got = r.queue_read(&k, "workers", "c", 10, 100).await.unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].entry_id, bare);
        let outcome = r
            .queue_fail(&k, "workers", &bare, 100, "broken", 1, 1)
            .await
            .unwrap();
        assert_eq!(outcome, "dead");
        let dead = r.queue_dead_letters(&k, 10).await.unwrap();
        assert_eq!(dead.len(), 1);
        assert_eq!(
            (dead[0].id.as_str(), dead[0].error.as_str()),
            ("bare", "broken")
        );
        let stats = r.queue_stats(&k, "workers").await.unwrap();
        assert_eq!((stats.length, stats.pending, stats.scheduled), (0, 0, 1));
    })
    .await;
}
