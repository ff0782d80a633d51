//! Pub/sub fan-out, keyspace events and timers, against real Redis.

use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::AsyncCommands;
use redloom::config::Config;
use redloom::host::Host;
use redloom::namespace::PluginName;
use redloom_tests::PATIENCE;
use redloom_tests::with_timeout;
use redloom_tests::{RedisServer, Served, TestConnection, get_i64, host_options, plugin, wait_for};

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

/// Waits (up to [`PATIENCE`]) until the counter `key` reaches `want`, then
/// asserts it is exactly `want`.
async fn expect_count(conn: &mut TestConnection, key: &str, want: i64) {
    let got = wait_for(conn, key, want, PATIENCE).await;
    assert_eq!(
        got, want,
        "{key} after waiting up to {PATIENCE:?} for it to reach {want}"
    );
}

/// Redis's `CLIENT LIST`.
async fn client_list(conn: &mut TestConnection) -> String {
    redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(conn)
        .await
        .unwrap()
}

/// Waits (up to [`PATIENCE`]) until `CLIENT LIST` shows `want` subscribed
/// connections (or more, when `want` is not 0), and returns it.
async fn wait_subscriber_connections(conn: &mut TestConnection, want: usize) -> String {
    let start = Instant::now();
    loop {
        let clients = client_list(conn).await;
        let n = subscriber_connections(&clients);
        if n == want || (want > 0 && n > want) {
            return clients;
        }
        assert!(
            start.elapsed() < PATIENCE,
            "not {want} subscribed connections after {PATIENCE:?}:\n{clients}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
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
        // traffic cannot get another's dropped); serve waits for the
        // subscriptions, but only so long: wait for them here too.
        let clients = wait_subscriber_connections(&mut conn, 3).await;
        assert_eq!(subscriber_connections(&clients), 3, "{clients}");

        // a publishes on its own "news": only a hears it, b's "news" is another channel.
        assert_eq!(publish(&host, "a", "news", "hello").await, 1, "receivers");
        expect_count(&mut conn, "rl:a:kv:got:news", 1).await;
        let last: String = conn.get("rl:a:kv:last:news").await.unwrap();
        assert_eq!(last, "hello");
        // The pattern room:* matches a's room:1 (c's room:1 is c's own).
        assert_eq!(publish(&host, "a", "room:1", "x").await, 1, "receivers");
        expect_count(&mut conn, "rl:a:kv:got-pattern:room:*", 1).await;
        expect_count(&mut conn, "rl:a:kv:got:room:1", 1).await;
        // The shared lobby reaches both a and b.
        assert_eq!(
            publish(&host, "b", "lobby", "hi all").await,
            2,
            "a's and b's subscriptions"
        );
        expect_count(&mut conn, "rl:a:kv:got:lobby", 1).await;
        expect_count(&mut conn, "rl:b:kv:got:lobby", 1).await;
        // b and c did not hear a's private channels. Sentinels instead of a
        // pause: b and c now publish on their own "news" and "room:1". A
        // plugin's subscriber connection delivers in publish order, so had
        // b's or c's connection carried a's messages, they would have come
        // before these; once the sentinels are handled, each count is one
        // (the sentinel) and the last payload is the sentinel's.
        assert_eq!(
            publish(&host, "b", "news", "b-sentinel").await,
            1,
            "receivers"
        );
        assert_eq!(
            publish(&host, "c", "room:1", "c-sentinel").await,
            1,
            "receivers"
        );
        for (plugin, channel) in [("b", "news"), ("c", "room:1")] {
            let got = wait_for(
                &mut conn,
                &format!("rl:{plugin}:kv:got:{channel}"),
                1,
                PATIENCE,
            )
            .await;
            let last: Option<String> = conn
                .get(format!("rl:{plugin}:kv:last:{channel}"))
                .await
                .unwrap();
            assert_eq!(
                (got, last.as_deref()),
                (1, Some(format!("{plugin}-sentinel").as_str())),
                "{plugin} heard a's private {channel} (messages counted, last payload)"
            );
        }
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
        wait_subscriber_connections(&mut conn, 1).await;
        assert_eq!(publish(&host, "a", "news", "before").await, 1, "receivers");
        expect_count(&mut conn, "rl:a:kv:got:news", 1).await;
        expire_soon(&mut conn, "rl:a:kv:session:before").await;
        // A keyspace event before the restart.
        expect_count(&mut conn, "rl:a:kv:got:session:before", 1).await;

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
                start.elapsed() < PATIENCE,
                "the subscriber did not come back within {PATIENCE:?}:\n{}",
                client_list(&mut conn).await
            );
        }
        let last: String = conn.get("rl:a:kv:last:news").await.unwrap();
        assert_eq!(last, "after");
        // The flags are set again before subscribing, so they are on now.
        let flags = keyspace_flags(&mut conn).await;
        assert!(flags.contains('K') && flags.contains('x'), "{flags:?}");
        expire_soon(&mut conn, "rl:a:kv:session:after").await;
        // A keyspace event after the restart.
        expect_count(&mut conn, "rl:a:kv:got:session:after", 1).await;
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

/// Messages the overflow test publishes at once, and how long each keeps
/// a handler busy (guest code, `slow:<ms>`).
const BURST: i64 = 16;
const BUSY_MS: u64 = 1_000;

/// A slow subscriber does not delay a fast one; its overflow is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_subscriber_overflows_without_delaying_others() {
    with_timeout(async {
        let redis = RedisServer::start().await;
        let dir = tempfile::tempdir().unwrap();
        let plugins = [
            probe(
                "fast",
                &format!(
                    r#"subscriptions = ["feed"]
shared-channels = ["feed"]
[plugins.fast.quotas]
concurrency = {BURST}"#
                ),
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
        wait_subscriber_connections(&mut conn, 1).await;
        // Every message in one pipeline, so they arrive together however
        // slowly this test runs: the slow plugin (one at a time, a buffer
        // of 2) can take 3 of them, the fast one takes all at once.
        let started = Instant::now();
        let mut publishes = redis::pipe();
        for _ in 0..BURST {
            publishes
                .cmd("PUBLISH")
                .arg("rl::ch:feed")
                .arg(format!("slow:{BUSY_MS}"))
                .ignore();
        }
        let _: () = publishes.query_async(&mut conn).await.unwrap();
        let got = wait_for(&mut conn, "rl:fast:kv:got:feed", BURST, PATIENCE).await;
        let fast_done = started.elapsed();
        assert_eq!(got, BURST, "the fast plugin got every message");
        let slow = host.plugin(&PluginName::parse("slow").unwrap()).unwrap();
        // Every message was routed before the fast plugin's last one, so
        // the drops are all counted by now.
        let dropped = slow.stats().dropped_messages;
        assert!(dropped >= 10, "only {dropped} of {BURST} dropped");
        // Had routing waited for room in the slow plugin's buffer, the fast
        // plugin's last message would have come after the slow one had
        // worked through BURST - 3 of them, one at a time: 13 s. Unhindered
        // the fast plugin handles all at once, in about BUSY_MS (1 s). The
        // bound lies between, 10x what the fast plugin needs.
        let held_up = Duration::from_millis(BUSY_MS * (BURST as u64 - 3));
        let bound = Duration::from_millis(BUSY_MS * 10);
        assert!(
            fast_done < bound,
            "the fast plugin was held up: {fast_done:?} (unhindered ≈ {BUSY_MS} ms, held up ≥ {held_up:?})"
        );
        // The slow plugin finishes what it took (3 × BUSY_MS): then every
        // message was handled or counted as dropped, none both.
        let start = Instant::now();
        let slow_got = loop {
            let slow_got = get_i64(&mut conn, "rl:slow:kv:got:feed").await;
            if slow_got + dropped as i64 >= BURST || start.elapsed() > PATIENCE {
                break slow_got;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(
            slow_got + dropped as i64,
            BURST,
            "every message was handled or counted as dropped: {slow_got} handled, {dropped} dropped"
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
        wait_subscriber_connections(&mut conn, 1).await;
        let flags = keyspace_flags(&mut conn).await;
        assert!(flags.contains('K') && flags.contains('x'), "{flags:?}");
        // Another plugin's key expires first. Once it is gone (EXISTS also
        // expires it, and publishes the event, if Redis has not yet), its
        // event went out on the one subscriber connection before anything
        // about the watcher's key: were it routed to the watcher, it would
        // be counted by the time the watcher's own event is.
        let _: () = conn.set("rl:other:kv:session:1", "v").await.unwrap();
        let _: () = conn.pexpire("rl:other:kv:session:1", 100).await.unwrap();
        let start = Instant::now();
        while conn
            .exists::<_, bool>("rl:other:kv:session:1")
            .await
            .unwrap()
        {
            assert!(start.elapsed() < PATIENCE, "the other key never expired");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        expire_soon(&mut conn, "rl:watcher:kv:session:1").await;
        expect_count(&mut conn, "rl:watcher:kv:got:session:1", 1).await;
        let last: String = conn.get("rl:watcher:kv:last:session:1").await.unwrap();
        assert_eq!(last, "expired");
        let keys: Vec<String> = conn.keys("rl:watcher:kv:got*").await.unwrap();
        assert_eq!(
            get_i64(&mut conn, "rl:watcher:kv:got-pattern:__keyspace__").await,
            1,
            "only its own key's event (the watcher's counters: {keys:?})"
        );
    })
    .await;
}

/// The ticks of `plugin`'s `timer` that ran, from its `tick:<timer>:<ms>`
/// keys: `(scheduled ms, how many times it ran)`, in schedule order.
async fn ticks_of(conn: &mut TestConnection, plugin: &str, timer: &str) -> Vec<(u64, i64)> {
    let keys: Vec<String> = conn
        .keys(format!("rl:{plugin}:kv:tick:{timer}:*"))
        .await
        .unwrap();
    let mut ticks = Vec::new();
    for k in keys {
        let ms = k.rsplit(':').next().unwrap().parse().unwrap();
        ticks.push((ms, get_i64(conn, &k).await));
    }
    ticks.sort_unstable();
    ticks
}

/// Asserts that ticks scheduled every `period` ms (at `phase` ms past a
/// multiple of it) came at that cadence over `(from, to]`, with room for a
/// slow scheduler on the low side only: at least half the ticks due in the
/// span ran (`missed = "skip"` drops a tick a starved host reaches too
/// late), and at least half the gaps between consecutive ticks that ran are
/// exactly one period (a timer with a slower cadence would have none). The
/// high side needs no room: `ran` holds distinct scheduled times, each
/// checked to be on the schedule, so more ticks than due cannot run.
fn assert_cadence(what: &str, ran: &[u64], period: u64, phase: u64, from: u64, to: u64) {
    let index = |t: u64| (t + period - phase) / period;
    let due = index(to) - index(from);
    let in_span: Vec<u64> = ran
        .iter()
        .copied()
        .filter(|t| (from + 1..=to).contains(t))
        .collect();
    assert!(
        in_span.len() as u64 * 2 >= due,
        "{what}: {} of the {due} ticks due in {from}..={to} ran: {ran:?}",
        in_span.len()
    );
    let gaps: Vec<u64> = in_span.windows(2).map(|w| w[1] - w[0]).collect();
    let exact = gaps.iter().filter(|g| **g == period).count();
    assert!(
        !gaps.is_empty() && exact * 2 >= gaps.len(),
        "{what}: only {exact} of the gaps between ticks are {period} ms: {gaps:?}"
    );
}

/// How many ticks of each timer `timers_cadence_and_singleton` waits for.
const FAST_TICKS: usize = 20;
const EACH_TICKS_ON_BOTH: usize = 8;

/// An interval timer fires at its cadence; with two hosts and
/// `singleton = true`, each tick runs exactly once in total; without it,
/// both hosts run every tick.
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
        let before = unix_ms();
        let a = serve_with(&redis, &dir.path().join("a"), "", &plugins).await;
        let b = serve_with(&redis, &dir.path().join("b"), "", &plugins).await;
        let both = unix_ms();
        let mut conn = redis.client().await;
        // Run for 2 s at least, and until there are enough ticks to judge
        // the cadence by (longer on a slow machine).
        let start = Instant::now();
        loop {
            let fast = ticks_of(&mut conn, "clock", "fast").await;
            let each = ticks_of(&mut conn, "clock", "each").await;
            let fast = fast.iter().filter(|(t, _)| *t > both).count();
            let on_both = each.iter().filter(|(t, n)| *t > both && *n == 2).count();
            if start.elapsed() >= Duration::from_secs(2)
                && fast >= FAST_TICKS
                && on_both >= EACH_TICKS_ON_BOTH
            {
                break;
            }
            assert!(
                start.elapsed() < PATIENCE,
                "after {PATIENCE:?}: {fast} ticks of fast, each: {each:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let stopping = unix_ms();
        // Once both have shut down, no tick runs any more: the counts are
        // final.
        tokio::join!(a.shutdown(), b.shutdown());
        let stopped = unix_ms();

        let fast = ticks_of(&mut conn, "clock", "fast").await;
        for (t, runs) in &fast {
            assert_eq!(*runs, 1, "the tick at {t} ran {runs} times: {fast:?}");
            assert!(
                t % 100 == 0 && (before + 1..=stopped).contains(t),
                "{t} is not a tick of fast in {before}..={stopped}"
            );
        }
        assert_eq!(
            get_i64(&mut conn, "rl:clock:kv:ticks:fast").await,
            fast.len() as i64,
            "ticks counted vs tick keys: {fast:?}"
        );
        let ran: Vec<u64> = fast.iter().map(|(t, _)| *t).collect();
        assert_cadence("fast (singleton)", &ran, 100, 0, both, stopping);

        // Without singleton, both hosts run every tick (once each).
        let each = ticks_of(&mut conn, "clock", "each").await;
        for (t, runs) in &each {
            assert!(
                (1..=2).contains(runs),
                "the tick at {t} ran {runs} times on 2 hosts: {each:?}"
            );
            assert!(
                t % 250 == 0 && (before + 1..=stopped).contains(t),
                "{t} is not a tick of each in {before}..={stopped}"
            );
        }
        assert_eq!(
            get_i64(&mut conn, "rl:clock:kv:ticks:each").await,
            each.iter().map(|(_, n)| n).sum::<i64>(),
            "runs counted vs tick keys: {each:?}"
        );
        let on_both: Vec<u64> = each
            .iter()
            .filter(|(_, n)| *n == 2)
            .map(|(t, _)| *t)
            .collect();
        assert_cadence("each, run by both hosts", &on_both, 250, 0, both, stopping);
    })
    .await;
}

/// How many ticks `cron_timer_fires_on_its_schedule` waits for.
const CRON_TICKS: usize = 4;

/// A cron timer (six fields, the first being seconds) fires on its
/// schedule: `1/2` in the seconds field is every odd second, which no
/// `every` can express (intervals are multiples of the period since the
/// epoch). Ticks come on odd seconds of the window only, each once, and
/// at the cadence of every odd second.
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
        let s = serve_with(&redis, dir.path(), "", &plugins).await;
        let serving = unix_ms();
        let mut conn = redis.client().await;
        // About 8 s on an idle machine.
        let start = Instant::now();
        loop {
            let odd = ticks_of(&mut conn, "cron", "odd").await;
            if odd.iter().filter(|(t, _)| *t > serving).count() >= CRON_TICKS {
                break;
            }
            assert!(start.elapsed() < PATIENCE, "after {PATIENCE:?}: {odd:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let stopping = unix_ms();
        s.shutdown().await;
        let stopped = unix_ms();

        let odd = ticks_of(&mut conn, "cron", "odd").await;
        for (t, runs) in &odd {
            assert_eq!(*runs, 1, "the tick at {t} ran {runs} times: {odd:?}");
            assert_eq!(t % 2_000, 1_000, "{t} is not on an odd second: {odd:?}");
            assert!(
                (before + 1..=stopped).contains(t),
                "{t} is outside the window {before}..={stopped}"
            );
        }
        assert_eq!(
            get_i64(&mut conn, "rl:cron:kv:ticks:odd").await,
            odd.len() as i64,
            "ticks counted vs tick keys: {odd:?}"
        );
        let ran: Vec<u64> = odd.iter().map(|(t, _)| *t).collect();
        assert_cadence("odd", &ran, 2_000, 1_000, serving, stopping);
    })
    .await;
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Quotas for a plugin whose handlers the test holds (`hold`): room to
/// wait for the test, however slow it runs.
const HOLD_QUOTAS: &str = "wall-time = \"120s\"";

/// Waits until the probe's timer `p`/`hold` has started a tick, which then
/// runs until the test sets `rl:p:kv:release:hold`. (Ticks of one timer do
/// not overlap on a host, so no other tick starts meanwhile.)
async fn catch_a_held_tick(conn: &mut TestConnection) {
    expect_count(conn, "rl:p:kv:started:hold", 1).await;
    assert_eq!(
        get_i64(conn, "rl:p:kv:ticks:hold").await,
        0,
        "the held tick did not wait for its release"
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
            &format!(
                "subscriptions = [\"news\"]\n[plugins.p.quotas]\n{HOLD_QUOTAS}\n\
                 [plugins.p.timers.hold]\nevery = \"500ms\"\n"
            ),
        );
        let s = serve_with(&redis, dir.path(), "shutdown-timeout = \"120s\"", &plugins).await;
        let mut conn = redis.client().await;
        wait_subscriber_connections(&mut conn, 1).await;
        catch_a_held_tick(&mut conn).await;
        let receivers: i64 = conn.publish("rl:p:ch:news", "hold").await.unwrap();
        assert_eq!(receivers, 1);
        expect_count(&mut conn, "rl:p:kv:started:news", 1).await;
        // Both are running now, and keep running until released.
        assert_eq!(get_i64(&mut conn, "rl:p:kv:got:news").await, 0);

        s.stop.send(()).unwrap();
        // The subscription connection goes once the stop has taken effect
        // (workers and timers take nothing new from then on)...
        wait_subscriber_connections(&mut conn, 0).await;
        let receivers: i64 = conn.publish("rl:p:ch:news", "late").await.unwrap();
        assert_eq!(receivers, 0, "still subscribed after shutdown");
        // ... while the tick and the handler still run: shutdown waits.
        assert!(
            !s.done.is_finished(),
            "shutdown finished while a tick and a message handler were running"
        );
        let _: () = conn.set("rl:p:kv:release:hold", "1").await.unwrap();
        let _: () = conn.set("rl:p:kv:release:news", "1").await.unwrap();
        let stopping = Instant::now();
        tokio::time::timeout(PATIENCE, s.done)
            .await
            .expect("shutdown ends once the running tick and handler are released")
            .unwrap();
        let took = stopping.elapsed();
        let started = get_i64(&mut conn, "rl:p:kv:started:hold").await;
        assert_eq!(started, 1, "a tick started during shutdown");
        assert_eq!(
            get_i64(&mut conn, "rl:p:kv:ticks:hold").await,
            started,
            "a tick running at shutdown was cut off (shutdown took {took:?} after the release)"
        );
        assert_eq!(
            get_i64(&mut conn, "rl:p:kv:got:news").await,
            1,
            "the message handler running at shutdown was cut off (shutdown took {took:?} after the release)"
        );
        let last: String = conn.get("rl:p:kv:last:news").await.unwrap();
        assert_eq!(last, "hold", "a message taken during shutdown");
        // No tick starts after shutdown. Negative check: 1.5 s is three
        // periods of the timer, plenty for a timer that kept running to
        // start one (its task has ended, so nothing can).
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        assert_eq!(
            get_i64(&mut conn, "rl:p:kv:started:hold").await,
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
        let plugins = probe(
            "p",
            &format!(
                "[plugins.p.quotas]\n{HOLD_QUOTAS}\n[plugins.p.timers.hold]\nevery = \"500ms\"\n"
            ),
        );
        let deadline = Duration::from_millis(200);
        let s = serve_with(&redis, dir.path(), "shutdown-timeout = \"200ms\"", &plugins).await;
        let mut conn = redis.client().await;
        catch_a_held_tick(&mut conn).await;
        let stopping = Instant::now();
        s.stop.send(()).unwrap();
        tokio::time::timeout(PATIENCE, s.done)
            .await
            .expect("shutdown ends at its deadline, not when the tick does")
            .unwrap();
        let took = stopping.elapsed();
        // The tick holds until released (or 60 s): shutdown waited for the
        // deadline, then stopped it. The upper bound is 100x the deadline
        // and far below the tick's 60 s.
        assert!(
            took >= deadline && took < Duration::from_secs(20),
            "shutdown took {took:?} with a {deadline:?} deadline"
        );
        // Released now, a tick still alive would finish within one 100 ms
        // check. Negative check: 1.5 s is 15 of them.
        let _: () = conn.set("rl:p:kv:release:hold", "1").await.unwrap();
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        let started = get_i64(&mut conn, "rl:p:kv:started:hold").await;
        let ticks = get_i64(&mut conn, "rl:p:kv:ticks:hold").await;
        assert_eq!(
            (started, ticks),
            (1, 0),
            "(started, completed) ticks: the tick running at the deadline was not aborted (shutdown took {took:?})"
        );
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
        wait_subscriber_connections(&mut conn, 1).await;
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
            expect_count(&mut conn, "rl:chat:kv:count:lobby", n).await;
        }
        let v: serde_json::Value = c
            .get(format!("http://{addr}/rooms/lobby"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(v["messages"], 3, "{v}");
        assert_eq!(v["last"], "three", "{v}");
        // Within a few ticks the digest has taken all three.
        let start = Instant::now();
        loop {
            let keys: Vec<String> = conn.keys("rl:chat-digest:kv:digest:*").await.unwrap();
            let mut total = 0;
            for k in &keys {
                total += get_i64(&mut conn, k).await;
            }
            let pending = get_i64(&mut conn, "rl:chat-digest:kv:pending").await;
            if total == 3 && pending == 0 {
                break;
            }
            assert!(
                start.elapsed() < PATIENCE,
                "after {PATIENCE:?}: digest total {total}, pending {pending}, digests {keys:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
}
