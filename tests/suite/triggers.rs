//! Pub/sub fan-out, keyspace events and timers, against real Redis.

use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::AsyncCommands;
use redloom::config::Config;
use redloom::host::Host;
use redloom::namespace::PluginName;
use redloom::serve::Server;
use redloom_tests::{RedisServer, get_i64, host_options, plugin, wait_for};

const TEST_TIMEOUT: Duration = Duration::from_secs(120);

async fn with_timeout<F: std::future::Future<Output = ()>>(f: F) {
    tokio::time::timeout(TEST_TIMEOUT, f)
        .await
        .expect("test timed out");
}

/// A `serve` (no HTTP routes) on `redis` with `plugins` TOML; stops on drop
/// of the returned sender.
async fn serve(
    redis: &RedisServer,
    dir: &std::path::Path,
    plugins: &str,
) -> (Arc<Host>, tokio::sync::oneshot::Sender<()>) {
    let (host, stop, _) = serve_http(redis, dir, plugins).await;
    (host, stop)
}

async fn serve_http(
    redis: &RedisServer,
    dir: &std::path::Path,
    plugins: &str,
) -> (
    Arc<Host>,
    tokio::sync::oneshot::Sender<()>,
    std::net::SocketAddr,
) {
    let text =
        format!("[http]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n{plugins}");
    let config = Config::parse(&text, &dir.join("redloom.toml")).expect("valid config");
    let host = Arc::new(Host::start(host_options(redis, dir)).await.unwrap());
    let server = Server::bind(host.clone(), config).await.expect("binds");
    let addr = server.http_addr();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server.run(async move {
        let _ = stopped.await;
    }));
    (host, stop, addr)
}

fn probe(name: &str, extra: &str) -> String {
    format!(
        "[plugins.{name}]\nwasm = {:?}\n{extra}\n",
        plugin("event-probe").display().to_string()
    )
}

async fn publish(host: &Host, plugin: &str, channel: &str, payload: &str) -> u32 {
    let out = host
        .invoke(
            &PluginName::parse(plugin).unwrap(),
            format!("publish {channel} {payload}").as_bytes(),
        )
        .await
        .expect("publishes");
    String::from_utf8(out).unwrap().parse().unwrap()
}

/// A publish reaches every plugin bound to the channel or a matching
/// pattern, through one connection; another plugin's channel of the same
/// name stays separate; shared channels are shared.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_patterns_namespaces_and_shared_channels() {
    with_timeout(async {
        let redis = RedisServer::start().await;
        let dir = tempfile::tempdir().unwrap();
        let plugins = [
            probe(
                "a",
                r#"subscriptions = ["news", "room:*", "lobby"]
shared-channels = ["lobby"]"#,
            ),
            probe(
                "b",
                r#"subscriptions = ["news", "lobby"]
shared-channels = ["lobby"]"#,
            ),
            probe("c", r#"subscriptions = ["room:1"]"#),
        ]
        .concat();
        let (host, _stop) = serve(&redis, dir.path(), &plugins).await;
        let mut conn = redis.client().await;
        // One subscriber connection for all three plugins.
        let clients: String = redis::cmd("CLIENT")
            .arg("LIST")
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(
            clients
                .lines()
                .filter(|l| l.contains("sub=") && !l.contains("sub=0") || l.contains("psub=1"))
                .count(),
            1,
            "{clients}"
        );

        // a publishes on its own "news": only a hears it, b's "news" is another channel.
        assert_eq!(publish(&host, "a", "news", "hello").await, 1);
        assert_eq!(
            wait_for(&mut conn, "rl:a:kv:got:news", 1, Duration::from_secs(10)).await,
            1
        );
        let last: String = conn.get("rl:a:kv:last:news").await.unwrap();
        assert_eq!(last, "hello");
        // The pattern room:* matches a's room:1 (c's room:1 is c's own).
        assert_eq!(publish(&host, "a", "room:1", "x").await, 1);
        assert_eq!(
            wait_for(
                &mut conn,
                "rl:a:kv:got-pattern:room:*",
                1,
                Duration::from_secs(10)
            )
            .await,
            1
        );
        assert_eq!(
            wait_for(&mut conn, "rl:a:kv:got:room:1", 1, Duration::from_secs(10)).await,
            1
        );
        // The shared lobby reaches both a and b.
        assert_eq!(
            publish(&host, "b", "lobby", "hi all").await,
            1,
            "one host subscription"
        );
        assert_eq!(
            wait_for(&mut conn, "rl:a:kv:got:lobby", 1, Duration::from_secs(10)).await,
            1
        );
        assert_eq!(
            wait_for(&mut conn, "rl:b:kv:got:lobby", 1, Duration::from_secs(10)).await,
            1
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(
            get_i64(&mut conn, "rl:b:kv:got:news").await,
            0,
            "b heard a's private channel"
        );
        assert_eq!(
            get_i64(&mut conn, "rl:c:kv:got:room:1").await,
            0,
            "c heard a's private channel"
        );
    })
    .await;
}

/// After Redis restarts on the same port, subscriptions resume by themselves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_resume_after_redis_restarts() {
    with_timeout(async {
        let mut redis = RedisServer::start().await;
        let dir = tempfile::tempdir().unwrap();
        let (host, _stop) = serve(
            &redis,
            dir.path(),
            &probe("a", r#"subscriptions = ["news"]"#),
        )
        .await;
        let mut conn = redis.client().await;
        assert_eq!(publish(&host, "a", "news", "before").await, 1);
        assert_eq!(
            wait_for(&mut conn, "rl:a:kv:got:news", 1, Duration::from_secs(10)).await,
            1
        );

        redis.restart().await;
        let mut conn = redis.client().await;
        // Publish until the subscriber is back and the plugin has handled a
        // message (a fresh server: counters restart at 0). Messages published
        // while it was away are lost: pub/sub is at most once.
        let start = Instant::now();
        loop {
            let _: i64 = conn.publish("rl:a:ch:news", "after").await.unwrap();
            if wait_for(&mut conn, "rl:a:kv:got:news", 1, Duration::from_millis(200)).await >= 1 {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "the subscriber did not come back"
            );
        }
        let last: String = conn.get("rl:a:kv:last:news").await.unwrap();
        assert_eq!(last, "after");
        drop(host);
    })
    .await;
}

/// A slow subscriber does not delay a fast one; its overflow is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_subscriber_overflows_without_delaying_others() {
    with_timeout(async {
        let redis = RedisServer::start().await;
        let dir = tempfile::tempdir().unwrap();
        let plugins = [
            probe(
                "fast",
                r#"subscriptions = ["feed"]
shared-channels = ["feed"]"#,
            ),
            probe(
                "slow",
                r#"subscriptions = ["feed"]
shared-channels = ["feed"]
subscription-buffer = 2
[plugins.slow.quotas]
concurrency = 1"#,
            ),
        ]
        .concat();
        let (host, _stop) = serve(&redis, dir.path(), &plugins).await;
        let mut conn = redis.client().await;
        let started = Instant::now();
        for i in 0..20 {
            let _: i64 = conn
                .publish("rl::ch:feed", format!("slow-{i}"))
                .await
                .unwrap();
        }
        // The fast plugin's handler also burns 200 ms per "slow" message, but
        // it runs 16 at a time; the slow one runs one at a time with a
        // buffer of 2.
        let got = wait_for(
            &mut conn,
            "rl:fast:kv:got:feed",
            20,
            Duration::from_secs(20),
        )
        .await;
        assert_eq!(got, 20, "the fast plugin got every message");
        let fast_done = started.elapsed();
        let slow = host.plugin(&PluginName::parse("slow").unwrap()).unwrap();
        let dropped = slow.stats().dropped_messages;
        assert!(dropped >= 10, "only {dropped} dropped");
        tokio::time::sleep(Duration::from_millis(1_000)).await;
        let slow_got = get_i64(&mut conn, "rl:slow:kv:got:feed").await;
        assert_eq!(
            slow_got as u64 + dropped,
            20,
            "every message was handled or counted as dropped"
        );
        assert!(
            fast_done < Duration::from_secs(4),
            "the fast plugin was held up: {fast_done:?}"
        );
    })
    .await;
}

/// Keyspace events on the plugin's own keys reach its message handler.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyspace_events() {
    with_timeout(async {
        let redis = RedisServer::start().await;
        let dir = tempfile::tempdir().unwrap();
        let (_host, _stop) = serve(
            &redis,
            dir.path(),
            &probe("watcher", r#"keyspace-events = ["expired"]"#),
        )
        .await;
        let mut conn = redis.client().await;
        let flags: Vec<String> = redis::cmd("CONFIG")
            .arg("GET")
            .arg("notify-keyspace-events")
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(
            flags[1].contains('K') && flags[1].contains('x'),
            "{flags:?}"
        );
        let _: () = conn
            .set_ex("rl:watcher:kv:session:1", "v", 1)
            .await
            .unwrap();
        let _: () = conn.set("rl:other:kv:session:1", "v").await.unwrap();
        let _: () = conn.pexpire("rl:other:kv:session:1", 100).await.unwrap();
        assert_eq!(
            wait_for(
                &mut conn,
                "rl:watcher:kv:got:session:1",
                1,
                Duration::from_secs(10)
            )
            .await,
            1
        );
        let last: String = conn.get("rl:watcher:kv:last:session:1").await.unwrap();
        assert_eq!(last, "expired");
        assert_eq!(
            get_i64(&mut conn, "rl:watcher:kv:got-pattern:__keyspace__").await,
            1,
            "only its own key's event"
        );
    })
    .await;
}

/// An interval timer fires at its cadence; with two hosts and
/// `singleton = true`, each tick runs exactly once in total.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timers_cadence_and_singleton() {
    with_timeout(async {
        let redis = RedisServer::start().await;
        let dir = tempfile::tempdir().unwrap();
        let plugins = probe(
            "clock",
            "[plugins.clock.timers.fast]\nevery = \"100ms\"\nsingleton = true\n\
             [plugins.clock.timers.each]\nevery = \"250ms\"\n",
        );
        let t0 = Instant::now();
        let (_a, stop_a) = serve(&redis, &dir.path().join("a"), &plugins).await;
        let (_b, stop_b) = serve(&redis, &dir.path().join("b"), &plugins).await;
        let both = Instant::now();
        tokio::time::sleep(Duration::from_millis(2_000)).await;
        drop((stop_a, stop_b));
        let window = t0.elapsed().as_millis() as i64 + 50;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut conn = redis.client().await;
        let ticks = get_i64(&mut conn, "rl:clock:kv:ticks:fast").await;
        let _ = both;
        assert!(
            ticks >= 17 && ticks <= window / 100 + 2,
            "{ticks} ticks of a 100 ms timer in {window} ms"
        );
        let keys: Vec<String> = conn.keys("rl:clock:kv:tick:fast:*").await.unwrap();
        assert_eq!(keys.len() as i64, ticks);
        for k in keys {
            assert_eq!(get_i64(&mut conn, &k).await, 1, "{k} ran more than once");
        }
        // Without singleton, both hosts run every tick.
        let each = get_i64(&mut conn, "rl:clock:kv:ticks:each").await;
        assert!(
            each >= 14 && each <= 2 * (window / 250) + 2,
            "{each} runs of a 250 ms timer on 2 hosts in {window} ms"
        );
        let keys: Vec<String> = conn.keys("rl:clock:kv:tick:each:*").await.unwrap();
        assert!(keys.iter().all(|k| !k.is_empty()));
    })
    .await;
}

/// The examples: chat publishes what is POSTed and every host's chat plugin
/// hears it; chat-digest hears the same shared channels and aggregates the
/// count on its timer, once per tick across hosts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_examples() {
    with_timeout(async {
        let redis = RedisServer::start().await;
        let dir = tempfile::tempdir().unwrap();
        let plugins = format!(
            r#"
[plugins.chat]
wasm = {chat:?}
subscriptions = ["room:*"]
shared-channels = ["room:*"]
[[routes]]
path = "/rooms/:room"
plugin = "chat"

[plugins.chat-digest]
wasm = {digest:?}
subscriptions = ["room:*"]
shared-channels = ["room:*"]
[plugins.chat-digest.timers.digest]
every = "300ms"
singleton = true
"#,
            chat = plugin("chat").display().to_string(),
            digest = plugin("chat-digest").display().to_string(),
        );
        let (_host, _stop, addr) = serve_http(&redis, dir.path(), &plugins).await;
        let c = reqwest::Client::new();
        for text in ["one", "two", "three"] {
            let r = c
                .post(format!("http://{addr}/rooms/lobby"))
                .body(text)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 202);
            let v: serde_json::Value = r.json().await.unwrap();
            assert_eq!(
                v["receivers"], 1,
                "one subscription per host carries both plugins"
            );
        }
        let mut conn = redis.client().await;
        assert_eq!(
            wait_for(
                &mut conn,
                "rl:chat:kv:count:lobby",
                3,
                Duration::from_secs(10)
            )
            .await,
            3
        );
        let v: serde_json::Value = c
            .get(format!("http://{addr}/rooms/lobby"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(v["messages"], 3);
        assert_eq!(v["last"], "three");
        // Within a few ticks the digest has taken all three.
        let start = Instant::now();
        loop {
            let keys: Vec<String> = conn.keys("rl:chat-digest:kv:digest:*").await.unwrap();
            let mut total = 0;
            for k in &keys {
                total += get_i64(&mut conn, k).await;
            }
            if total == 3 && get_i64(&mut conn, "rl:chat-digest:kv:pending").await == 0 {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "digest total {total}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
}
