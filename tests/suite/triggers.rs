//! Pub/sub fan-out, keyspace events and timers, against real Redis.

use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::AsyncCommands;
use redloom::config::Config;
use redloom::host::Host;
use redloom::namespace::PluginName;
use redloom_tests::{RedisServer, Served, TestConnection, get_i64, host_options, plugin, wait_for};

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
    let s = serve_with(redis, dir, "", plugins).await;
    (s.host, s.stop, s.addr)
}

/// A `serve` with `http` added to its `[http]` table.
async fn serve_with(
    redis: &RedisServer,
    dir: &std::path::Path,
    http: &str,
    plugins: &str,
) -> Served {
    let text = format!(
        "[http]\nlisten = \"127.0.0.1:0\"\n{http}\n[admin]\nlisten = \"127.0.0.1:0\"\n{plugins}"
    );
    let config = Config::parse(&text, &dir.join("redloom.toml")).expect("valid config");
    Served::start(host_options(redis, dir), config).await
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

/// How many `CLIENT LIST` lines are connections subscribed to a channel
/// (`sub`) or a pattern (`psub`).
fn subscriber_connections(client_list: &str) -> usize {
    client_list
        .lines()
        .filter(|line| {
            line.split_whitespace()
                .filter_map(|field| field.split_once('='))
                .any(|(name, value)| {
                    matches!(name, "sub" | "psub") && value.parse::<u64>().is_ok_and(|n| n > 0)
                })
        })
        .count()
}

/// The parser counts subscribed connections only: `psub=0 ssub=0` on a
/// plain connection is not mistaken for a subscription, and a connection
/// with both channels and patterns counts once.
#[test]
fn subscriber_connections_are_counted_by_field() {
    let list = "id=1 addr=127.0.0.1:1 name= db=0 sub=0 psub=0 ssub=0 multi=-1 cmd=client|list\n\
                id=2 addr=127.0.0.1:2 name= db=0 sub=3 psub=1 ssub=0 multi=-1 cmd=psubscribe\n\
                id=3 addr=127.0.0.1:3 name= db=0 sub=0 psub=2 ssub=0 multi=-1 cmd=psubscribe\n";
    assert_eq!(subscriber_connections(list), 2);
    assert_eq!(subscriber_connections(list.lines().next().unwrap()), 0);
}

/// A publish reaches every plugin bound to the channel or a matching
/// pattern, each through its own subscriber connection; another plugin's
/// channel of the same name stays separate; shared channels are shared.
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
        // One subscriber connection per plugin (isolation: one plugin's
        // traffic cannot get another's dropped).
        let clients: String = redis::cmd("CLIENT")
            .arg("LIST")
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(subscriber_connections(&clients), 3, "{clients}");

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
            2,
            "a's and b's subscriptions"
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

/// After Redis restarts on the same port, subscriptions resume by
/// themselves, and keyspace events flow again: the fresh server starts with
/// `notify-keyspace-events` off, and the host turns it back on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_resume_after_redis_restarts() {
    with_timeout(async {
        let mut redis = RedisServer::start().await;
        let dir = tempfile::tempdir().unwrap();
        let (host, _stop) = serve(
            &redis,
            dir.path(),
            &probe(
                "a",
                r#"subscriptions = ["news"]
keyspace-events = ["expired"]"#,
            ),
        )
        .await;
        let mut conn = redis.client().await;
        assert_eq!(publish(&host, "a", "news", "before").await, 1);
        assert_eq!(
            wait_for(&mut conn, "rl:a:kv:got:news", 1, Duration::from_secs(10)).await,
            1
        );
        expire_soon(&mut conn, "rl:a:kv:session:before").await;
        assert_eq!(
            wait_for(
                &mut conn,
                "rl:a:kv:got:session:before",
                1,
                Duration::from_secs(10)
            )
            .await,
            1,
            "a keyspace event before the restart"
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
        // The flags are set again before subscribing, so they are on now.
        let flags = keyspace_flags(&mut conn).await;
        assert!(flags.contains('K') && flags.contains('x'), "{flags:?}");
        expire_soon(&mut conn, "rl:a:kv:session:after").await;
        assert_eq!(
            wait_for(
                &mut conn,
                "rl:a:kv:got:session:after",
                1,
                Duration::from_secs(10)
            )
            .await,
            1,
            "no keyspace event after the restart"
        );
        let last: String = conn.get("rl:a:kv:last:session:after").await.unwrap();
        assert_eq!(last, "expired");
        drop(host);
    })
    .await;
}

/// Redis's `notify-keyspace-events` setting.
async fn keyspace_flags(conn: &mut TestConnection) -> String {
    let flags: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("notify-keyspace-events")
        .query_async(conn)
        .await
        .unwrap();
    flags.get(1).cloned().unwrap_or_default()
}

/// Writes `key` to expire 100 ms from now.
async fn expire_soon(conn: &mut TestConnection, key: &str) {
    let _: () = redis::cmd("SET")
        .arg(key)
        .arg("v")
        .arg("PX")
        .arg(100)
        .query_async(conn)
        .await
        .unwrap();
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
        let flags = keyspace_flags(&mut conn).await;
        assert!(flags.contains('K') && flags.contains('x'), "{flags:?}");
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

/// A cron timer (six fields, the first being seconds) fires on its
/// schedule: `1/2` in the seconds field is every odd second, which no
/// `every` can express (intervals are multiples of the period since the
/// epoch). Each odd second of the window ticks once, and nothing else does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cron_timer_fires_on_its_schedule() {
    with_timeout(async {
        let redis = RedisServer::start().await;
        let dir = tempfile::tempdir().unwrap();
        let plugins = probe(
            "cron",
            "[plugins.cron.timers.odd]\ncron = \"1/2 * * * * *\"\n",
        );
        let before = unix_ms();
        let (_host, stop) = serve(&redis, dir.path(), &plugins).await;
        let serving = unix_ms();
        tokio::time::sleep(Duration::from_millis(6_500)).await;
        let stopping = unix_ms();
        drop(stop);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut conn = redis.client().await;
        let keys: Vec<String> = conn.keys("rl:cron:kv:tick:odd:*").await.unwrap();
        let mut ticks: Vec<u64> = keys
            .iter()
            .map(|k| k.rsplit(':').next().unwrap().parse().unwrap())
            .collect();
        ticks.sort_unstable();
        for k in &keys {
            assert_eq!(get_i64(&mut conn, k).await, 1, "{k} ran more than once");
        }
        assert_eq!(
            get_i64(&mut conn, "rl:cron:kv:ticks:odd").await,
            ticks.len() as i64
        );
        for t in &ticks {
            assert_eq!(t % 2_000, 1_000, "{t} is not on an odd second: {ticks:?}");
            assert!(
                *t > before && *t <= stopping,
                "{t} is outside the window {before}..={stopping}"
            );
        }
        // Every odd second well inside the window ran (loose at both ends:
        // the host's start and the stop are not instants).
        let must: Vec<u64> = (serving / 1_000 + 1..=(stopping - 500) / 1_000)
            .filter(|s| s % 2 == 1)
            .map(|s| s * 1_000)
            .collect();
        assert!(must.len() >= 2, "{must:?}");
        for t in &must {
            assert!(ticks.contains(t), "the tick at {t} did not run: {ticks:?}");
        }
    })
    .await;
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Waits until the probe's slow timer `p`/`slow` starts a new tick, so the
/// tick has about 1 s of guest code ahead of it.
async fn catch_a_slow_tick(conn: &mut TestConnection) {
    let before = get_i64(conn, "rl:p:kv:started:slow").await;
    assert!(
        wait_for(
            conn,
            "rl:p:kv:started:slow",
            before + 1,
            Duration::from_secs(10)
        )
        .await
            > before,
        "no slow tick started"
    );
}

/// Shutdown takes no new tick or message, but a timer tick and a message
/// handler already running when it begins finish (their effects land in
/// Redis) instead of being cut off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_running_ticks_and_messages_finish() {
    with_timeout(async {
        let redis = RedisServer::start().await;
        let dir = tempfile::tempdir().unwrap();
        let plugins = probe(
            "p",
            "subscriptions = [\"news\"]\n[plugins.p.timers.slow]\nevery = \"500ms\"\n",
        );
        let s = serve_with(&redis, dir.path(), "shutdown-timeout = \"10s\"", &plugins).await;
        let mut conn = redis.client().await;
        catch_a_slow_tick(&mut conn).await;
        let _: i64 = conn.publish("rl:p:ch:news", "slow:1000").await.unwrap();
        assert_eq!(
            wait_for(&mut conn, "rl:p:kv:started:news", 1, Duration::from_secs(5)).await,
            1
        );
        // Both are running now, each with most of its second ahead.
        assert_eq!(get_i64(&mut conn, "rl:p:kv:got:news").await, 0);
        let stopping = Instant::now();
        s.stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(9), s.done)
            .await
            .expect("shutdown within the deadline")
            .unwrap();
        let took = stopping.elapsed();
        let started = get_i64(&mut conn, "rl:p:kv:started:slow").await;
        assert_eq!(
            get_i64(&mut conn, "rl:p:kv:ticks:slow").await,
            started,
            "a tick running at shutdown was cut off (shutdown took {took:?})"
        );
        assert_eq!(
            get_i64(&mut conn, "rl:p:kv:got:news").await,
            1,
            "the message handler running at shutdown was cut off (shutdown took {took:?})"
        );
        // Nothing new is taken: the subscription is gone and no tick starts.
        let start = Instant::now();
        loop {
            let receivers: i64 = conn.publish("rl:p:ch:news", "late").await.unwrap();
            if receivers == 0 {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "still subscribed after shutdown"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(1_200)).await;
        assert_eq!(
            get_i64(&mut conn, "rl:p:kv:started:slow").await,
            started,
            "a tick started after shutdown"
        );
    })
    .await;
}

/// Shutdown waits no longer than `shutdown-timeout`: a tick still running
/// then is aborted and never completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_aborts_ticks_past_the_deadline() {
    with_timeout(async {
        let redis = RedisServer::start().await;
        let dir = tempfile::tempdir().unwrap();
        let plugins = probe("p", "[plugins.p.timers.slow]\nevery = \"500ms\"\n");
        let s = serve_with(&redis, dir.path(), "shutdown-timeout = \"200ms\"", &plugins).await;
        let mut conn = redis.client().await;
        catch_a_slow_tick(&mut conn).await;
        let stopping = Instant::now();
        s.stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), s.done)
            .await
            .expect("shutdown ends soon after its deadline")
            .unwrap();
        let took = stopping.elapsed();
        // The tick needed ≈ 1 s more; let it have had that time.
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        let started = get_i64(&mut conn, "rl:p:kv:started:slow").await;
        let ticks = get_i64(&mut conn, "rl:p:kv:ticks:slow").await;
        assert_eq!(
            ticks,
            started - 1,
            "the tick running at the deadline was not aborted (shutdown took {took:?})"
        );
        assert!(took < Duration::from_secs(2), "shutdown took {took:?}");
    })
    .await;
}

/// The examples: chat publishes what is POSTed and every host's chat plugin
/// hears it; chat-digest hears the same shared channels and aggregates the
/// count on its cron timer (every second here), once per tick across hosts.
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
cron = "* * * * * *"
singleton = true
"#,
            chat = plugin("chat").display().to_string(),
            digest = plugin("chat-digest").display().to_string(),
        );
        let (_host, _stop, addr) = serve_http(&redis, dir.path(), &plugins).await;
        let c = reqwest::Client::new();
        let mut conn = redis.client().await;
        // One message at a time: a plugin's messages may be handled
        // concurrently, so "last" is only "three" if it was sent last after
        // the others were handled.
        for (n, text) in (1..).zip(["one", "two", "three"]) {
            let r = c
                .post(format!("http://{addr}/rooms/lobby"))
                .body(text)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 202);
            let v: serde_json::Value = r.json().await.unwrap();
            assert_eq!(
                v["receivers"], 2,
                "one subscription per plugin: chat and chat-digest"
            );
            wait_for(
                &mut conn,
                "rl:chat:kv:count:lobby",
                n,
                Duration::from_secs(10),
            )
            .await;
        }
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
