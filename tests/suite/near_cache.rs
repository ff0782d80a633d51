//! The cache capability's near cache against real Redis (standalone, or a
//! Cluster with `REDLOOM_TEST_REDIS=cluster`): writes by a plain client and
//! by another host invalidate near entries; a killed tracking connection and
//! a Redis restart never leave stale entries served; the byte bound holds
//! under a million keys; per-plugin and per-lookup opt-out; ACL plugins
//! keep their ACL; counters and `/metrics`.
//!
//! Staleness checks use a plugin whose `near-cache-max-age` is an hour and
//! entries fresh for an hour: only an invalidation (or a flush) can end a
//! near entry within the test, so a missing one makes the test fail after
//! [`PATIENCE`] instead of passing by expiry. Each check polls for the
//! write to become visible (the documented bound is the invalidation's
//! delivery time, which a loaded machine may stretch; the time seen is
//! printed), then asserts that the stale value is never served again.

use std::path::Path;
use std::time::{Duration, Instant};

use redis::AsyncCommands;
use redloom::config::Config;
use redloom::host::Host;
use redloom::namespace::{Namespace, PluginName};
use redloom::near_cache::NearStats;
use redloom::plugin::PluginSpec;
use redloom_tests::PATIENCE;
use redloom_tests::{RedisServer, plugin, unique, with_timeout};
use redloom_tests::{probe, shared_host};
use serde_json::{Value, json};

/// Lookups after the write became visible that must all be fresh.
const AFTERWARDS: usize = 20;

/// Entries live an hour: only invalidations end them during a test.
const HOUR_MS: u64 = 3_600_000;

/// The cache probe as plugin `name` with `extra` manifest lines (near-cache
/// settings); its near entries live up to an hour unless `extra` says
/// otherwise.
fn spec(name: &str, extra: &str) -> PluginSpec {
    let wasm = plugin("cache-probe");
    let toml = format!(
        "[plugins.{name}]\nwasm = {:?}\nnear-cache-max-age = \"1h\"\n{extra}\n",
        wasm.display().to_string()
    );
    let config = Config::parse(&toml, Path::new("redloom.toml")).expect("test config parses");
    let name = PluginName::parse(name).unwrap();
    let mut s = PluginSpec::from_config(name.clone(), &config.plugins[&name]);
    s.quotas.wall_time = Duration::from_secs(120);
    s.quotas.cpu = Duration::from_secs(60);
    s.quotas.redis_ops = 1_000_000;
    s.quotas.redis_rate = 0;
    s.quotas.concurrency = 32;
    s
}

/// One `lookup` of `key` (fresh for an hour, with `extra` policy fields):
/// `{"ok": {"kind", "value", "lease"}}` or `{"err": ...}`.
async fn lookup(host: &Host, plugin: &str, key: &str, extra: Value) -> Value {
    let mut op = json!({"op": "lookup", "key": key, "fresh_ms": HOUR_MS, "wait_ms": 0});
    for (k, v) in extra.as_object().into_iter().flatten() {
        op[k] = v.clone();
    }
    probe(host, plugin, json!([op])).await.remove(0)
}

/// `set` of `key` to `value` with `tags`, fresh for an hour.
async fn set(host: &Host, plugin: &str, key: &str, value: &str, tags: &[&str]) {
    let r = probe(
        host,
        plugin,
        json!([{"op": "set", "key": key, "value": value, "fresh_ms": HOUR_MS, "tags": tags}]),
    )
    .await;
    assert!(r[0].get("ok").is_some(), "set failed: {}", r[0]);
}

fn near(host: &Host, plugin: &str) -> NearStats {
    host.plugin(&PluginName::parse(plugin).unwrap())
        .expect("plugin loaded")
        .stats()
        .near_cache
}

/// Whether a lookup result is `value` served fresh.
fn is_fresh(result: &Value, value: &str) -> bool {
    result["ok"]["kind"] == "fresh" && result["ok"]["value"] == value
}

/// Looks `key` up until one lookup is answered from the near cache with
/// `value` (tracking is up and the entry is kept); fails after [`PATIENCE`].
async fn warm(host: &Host, plugin: &str, key: &str, value: &str, tags: &[&str]) {
    let started = Instant::now();
    loop {
        let before = near(host, plugin).hits;
        let r = lookup(host, plugin, key, json!({"tags": tags})).await;
        assert!(is_fresh(&r, value), "warming {key}: {r}");
        if near(host, plugin).hits > before {
            return;
        }
        assert!(
            started.elapsed() < PATIENCE,
            "{key} never came from the near cache within {PATIENCE:?}: {:?}",
            near(host, plugin)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// After a write of `key` that ended `stale` (acknowledged before this is
/// called): polls until a lookup no longer serves `stale` fresh, then
/// checks that [`AFTERWARDS`] more lookups never do. Returns how long the
/// stale value stayed visible.
async fn stale_ends(host: &Host, plugin: &str, key: &str, stale: &str, tags: &[&str]) -> Duration {
    let acked = Instant::now();
    let visible = loop {
        let r = lookup(host, plugin, key, json!({"tags": tags})).await;
        if !is_fresh(&r, stale) {
            break acked.elapsed();
        }
        assert!(
            acked.elapsed() < PATIENCE,
            "{key}: the stale value {stale:?} was still served {PATIENCE:?} after the write: {:?}",
            near(host, plugin)
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    for i in 0..AFTERWARDS {
        let r = lookup(host, plugin, key, json!({"tags": tags})).await;
        assert!(
            !is_fresh(&r, stale),
            "{key}: the stale value {stale:?} came back at lookup {i} after the write was seen: {r}"
        );
    }
    visible
}

/// After a loss of the tracking connection (`lost_before`: the plugin's
/// `tracking_lost` count before it): waits, looking up another key, until
/// the loss was noticed and tracking is up again, then looks `key` up
/// [`AFTERWARDS`] times and fails if `stale` is served — it would be if the
/// near cache kept its entries through the loss. (Lookups of `key` itself
/// while waiting could miss and write its lease, whose invalidation would
/// hide a kept entry.)
async fn never_stale_after_reconnect(
    host: &Host,
    plugin: &str,
    key: &str,
    stale: &str,
    lost_before: u64,
) {
    let started = Instant::now();
    let canary = unique("canary");
    loop {
        let s = near(host, plugin);
        if s.tracking_lost > lost_before && s.serving {
            break;
        }
        assert!(
            started.elapsed() < PATIENCE,
            "tracking was not lost and back within {PATIENCE:?}: {s:?}"
        );
        lookup(host, plugin, &canary, json!({})).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for i in 0..AFTERWARDS {
        let r = lookup(host, plugin, key, json!({})).await;
        assert!(
            !is_fresh(&r, stale),
            "{key}: the stale value {stale:?} was served at lookup {i} after tracking came back: {r}"
        );
    }
}

fn ns(plugin: &str) -> Namespace {
    Namespace::new(&PluginName::parse(plugin).unwrap())
}

/// The plain connection to the node serving `key` (the server when
/// standalone), for commands a Cluster client would not route (`CLIENT`).
async fn node_for(redis: &RedisServer, key: &str) -> redis::aio::MultiplexedConnection {
    let url = if redis.node_urls().len() == 1 {
        redis.url().to_string()
    } else {
        redis.node_urls()[redis.primary_for(key).await].clone()
    };
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// `CLIENT LIST` lines of `conn`'s node whose name is the near-cache
/// tracking connection of `plugin`.
async fn tracking_clients(
    conn: &mut redis::aio::MultiplexedConnection,
    plugin: &str,
) -> Vec<String> {
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(conn)
        .await
        .unwrap();
    let name = format!("name=redloom-near-cache:{plugin} ");
    list.lines()
        .filter(|l| l.contains(&name))
        .map(str::to_string)
        .collect()
}

/// Every way another client can end an entry — a plain client's `HSET`,
/// `DEL` and `SET` of the entry and `INCR` of its tag; another host's
/// `set`, `invalidate` and `invalidate-tag` — stops host A from serving the
/// old value from its near cache, and it never comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_by_other_clients_and_hosts_invalidate_near_entries() {
    with_timeout(async {
        let redis = RedisServer::start().await;
        let mut conn = redis.client().await;
        let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
        let a = shared_host(&redis, dirs[0].path(), 64).await;
        let b = shared_host(&redis, dirs[1].path(), 64).await;
        let p = "near";
        for h in [&a, &b] {
            h.load(spec(p, "")).await.unwrap();
        }
        let cases = [
            "hset",
            "del",
            "set",
            "incr-tag",
            "host-set",
            "host-invalidate",
            "host-invalidate-tag",
        ];
        for case in cases {
            let key = unique(case);
            let tag = unique("tag");
            let tags = [tag.as_str()];
            set(&b, p, &key, "v1", &tags).await;
            warm(&a, p, &key, "v1", &tags).await;
            let invalidations = near(&a, p).invalidations;
            let entry = ns(p).cache(&key).unwrap().entry;
            match case {
                "hset" => {
                    let _: () = conn.hset(&entry, "v", "v2").await.unwrap();
                }
                "del" => {
                    let _: () = conn.del(&entry).await.unwrap();
                }
                "set" => {
                    let _: () = conn.set(&entry, "not a hash").await.unwrap();
                }
                "incr-tag" => {
                    let _: () = conn.incr(ns(p).cache_tag(&tag).unwrap(), 1).await.unwrap();
                }
                "host-set" => set(&b, p, &key, "v2", &tags).await,
                "host-invalidate" => {
                    probe(&b, p, json!([{"op": "invalidate", "key": key}])).await;
                }
                "host-invalidate-tag" => {
                    probe(&b, p, json!([{"op": "invalidate_tag", "tag": tag}])).await;
                }
                _ => unreachable!(),
            }
            let took = stale_ends(&a, p, &key, "v1", &tags).await;
            eprintln!("near cache: {case}: the stale value was visible for {took:?}");
            assert!(
                near(&a, p).invalidations > invalidations,
                "{case}: no invalidation counted: {:?}",
                near(&a, p)
            );
            if case == "hset" || case == "host-set" {
                let r = lookup(&a, p, &key, json!({"tags": tags})).await;
                assert!(is_fresh(&r, "v2"), "{case}: {r}");
            }
        }
    })
    .await;
}

/// Killing host A's tracking connection (`CLIENT KILL`) and writing right
/// after: A stops serving the old value (its near cache was flushed when
/// the connection dropped), tracking comes back, and a write after that is
/// seen too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_tracking_connection_never_serves_stale_data() {
    with_timeout(async {
        let redis = RedisServer::start().await;
        let mut conn = redis.client().await;
        let dir = tempfile::tempdir().unwrap();
        let a = shared_host(&redis, dir.path(), 64).await;
        let p = "nearkill";
        a.load(spec(p, "")).await.unwrap();
        let key = unique("k");
        let entry = ns(p).cache(&key).unwrap().entry;
        set(&a, p, &key, "v1", &[]).await;
        warm(&a, p, &key, "v1", &[]).await;
        let lost = near(&a, p).tracking_lost;

        let mut node = node_for(&redis, &entry).await;
        let tracking = tracking_clients(&mut node, p).await;
        assert_eq!(
            tracking.len(),
            1,
            "one tracking connection per node: {tracking:?}"
        );
        let id = tracking[0]
            .split_whitespace()
            .find_map(|f| f.strip_prefix("id="))
            .unwrap()
            .to_string();
        let killed: i64 = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("ID")
            .arg(&id)
            .query_async(&mut node)
            .await
            .unwrap();
        assert_eq!(killed, 1);
        // Written while nothing tracks it (the connection is gone).
        let _: () = conn.hset(&entry, "v", "v2").await.unwrap();
        let took = stale_ends(&a, p, &key, "v1", &[]).await;
        eprintln!("near cache: CLIENT KILL: the stale value was visible for {took:?}");
        never_stale_after_reconnect(&a, p, &key, "v1", lost).await;

        // Tracking is back: entries are kept again, and invalidated again.
        warm(&a, p, &key, "v2", &[]).await;
        let tracking = tracking_clients(&mut node, p).await;
        assert_eq!(tracking.len(), 1, "{tracking:?}");
        assert!(
            !tracking[0].contains(&format!("id={id} ")),
            "a new connection"
        );
        let _: () = conn.hset(&entry, "v", "v3").await.unwrap();
        stale_ends(&a, p, &key, "v2", &[]).await;
        let r = lookup(&a, p, &key, json!({})).await;
        assert!(is_fresh(&r, "v3"), "{r}");
    })
    .await;
}

/// A Redis restart (every node, empty afterwards) flushes the near cache:
/// the old value is never served once tracking is back, and the near
/// cache serves again afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_flushes_the_near_cache() {
    with_timeout(async {
        let mut redis = RedisServer::start().await;
        let dir = tempfile::tempdir().unwrap();
        let a = shared_host(&redis, dir.path(), 64).await;
        let p = "nearrestart";
        a.load(spec(p, "")).await.unwrap();
        let key = unique("k");
        set(&a, p, &key, "v1", &[]).await;
        warm(&a, p, &key, "v1", &[]).await;
        let lost = near(&a, p).tracking_lost;
        let restarted = Instant::now();
        redis.restart().await;
        // The restarted Redis is empty: once tracking is back, lookups
        // miss (a near entry kept through the loss would answer `v1`).
        never_stale_after_reconnect(&a, p, &key, "v1", lost).await;
        eprintln!(
            "near cache: restart: tracking back {:?} after the restart began",
            restarted.elapsed()
        );
        let started = Instant::now();
        loop {
            let r = probe(
                &a,
                p,
                json!([{"op": "set", "key": key, "value": "v2", "fresh_ms": HOUR_MS}]),
            )
            .await;
            if r[0].get("ok").is_some() {
                break;
            }
            assert!(
                started.elapsed() < PATIENCE,
                "set after the restart: {}",
                r[0]
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        warm(&a, p, &key, "v2", &[]).await;
    })
    .await;
}

/// The near cache stays within `near-cache-max-bytes`: through the guest
/// (3000 keys of 200 bytes into 64 KiB), and through the near cache's own
/// keep path with a million distinct keys into 1 MiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_bound_holds_under_a_million_keys() {
    with_timeout(async {
        let redis = RedisServer::start().await;
        let dir = tempfile::tempdir().unwrap();
        let a = shared_host(&redis, dir.path(), 64).await;

        let small = "nearsmall";
        let bound = 64 << 10;
        a.load(spec(small, &format!("near-cache-max-bytes = {bound}")))
            .await
            .unwrap();
        let prefix = unique("k");
        set(&a, small, &format!("{prefix}0"), "x", &[]).await;
        warm(&a, small, &format!("{prefix}0"), "x", &[]).await;
        let r = probe(
            &a,
            small,
            json!([{"op": "set_range", "key": prefix, "n": 3000, "value": "v", "repeat": 200,
                    "fresh_ms": HOUR_MS}]),
        )
        .await;
        assert!(r[0].get("ok").is_some(), "{}", r[0]);
        for _ in 0..2 {
            let r = probe(
                &a,
                small,
                json!([{"op": "lookup_range", "key": prefix, "n": 3000, "fresh_ms": HOUR_MS}]),
            )
            .await;
            assert_eq!(r[0]["ok"], 3000, "{}", r[0]);
            let s = near(&a, small);
            assert!(s.bytes <= bound, "{s:?}");
        }
        let s = near(&a, small);
        assert!(s.evictions > 0 && s.entries > 0, "{s:?}");
        assert!(s.hits > 0, "{s:?}");

        let big = "nearbig";
        let bound = 1 << 20;
        a.load(spec(big, &format!("near-cache-max-bytes = {bound}")))
            .await
            .unwrap();
        set(&a, big, "warm", "x", &[]).await;
        warm(&a, big, "warm", "x", &[]).await;
        let plugin = a.plugin(&PluginName::parse(big).unwrap()).unwrap();
        let cache = plugin.near_cache();
        let names = ns(big);
        let value = [b'v'; 100];
        let mut kept = 0u64;
        for i in 0..1_000_000u32 {
            let entry = names.cache(&format!("k{i}")).unwrap().entry;
            if let Some(p) = cache.begin(&entry, &[]) {
                kept += u64::from(p.keep(Some(&value), &[], HOUR_MS, 0));
            }
            if i % 10_000 == 0 {
                let s = cache.stats();
                assert!(s.bytes <= bound, "after {i} keys: {s:?}");
            }
        }
        let s = cache.stats();
        assert!(s.bytes <= bound, "{s:?}");
        assert!(kept > 900_000, "kept {kept} of a million: {s:?}");
        assert!(s.evictions >= kept - s.entries, "{s:?}");
        eprintln!("near cache: a million keys into {bound} bytes: {s:?}");
    })
    .await;
}

/// `near-cache = false` turns the near cache off for a plugin (every
/// lookup is a script call), and `near: false` on a lookup reads Redis even
/// when the plugin's near cache holds the key — so it sees a plain
/// client's write at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opt_out_per_plugin_and_per_lookup() {
    with_timeout(async {
        let redis = RedisServer::start().await;
        let mut conn = redis.client().await;
        let dir = tempfile::tempdir().unwrap();
        let a = shared_host(&redis, dir.path(), 64).await;

        let off = "nearoff";
        a.load(spec(off, "near-cache = false")).await.unwrap();
        let key = unique("k");
        set(&a, off, &key, "v1", &[]).await;
        let before = redis.script_calls().await;
        for _ in 0..5 {
            let r = lookup(&a, off, &key, json!({})).await;
            assert!(is_fresh(&r, "v1"), "{r}");
        }
        assert!(
            redis.script_calls().await - before >= 5,
            "each lookup ran its script"
        );
        assert_eq!(
            near(&a, off),
            NearStats::default(),
            "nothing kept or counted"
        );
        let plugin = a.plugin(&PluginName::parse(off).unwrap()).unwrap();
        assert!(plugin.near_cache().begin("any", &[]).is_none());

        let on = "nearon";
        a.load(spec(on, "")).await.unwrap();
        let key = unique("k");
        set(&a, on, &key, "v1", &[]).await;
        warm(&a, on, &key, "v1", &[]).await;
        let hits = near(&a, on).hits;
        let before = redis.script_calls().await;
        let r = lookup(&a, on, &key, json!({"near": false})).await;
        assert!(is_fresh(&r, "v1"), "{r}");
        assert!(redis.script_calls().await > before, "went to Redis");
        let entry = ns(on).cache(&key).unwrap().entry;
        let _: () = conn.hset(&entry, "v", "v2").await.unwrap();
        let r = lookup(&a, on, &key, json!({"near": false})).await;
        assert!(
            is_fresh(&r, "v2"),
            "a lookup without the near cache sees the write at once: {r}"
        );
        assert_eq!(near(&a, on).hits, hits, "no near hit for near: false");
    })
    .await;
}

/// A near entry is kept only while fresh: once its fresh time is over the
/// lookup goes to Redis and gets the stale hit with the refresh lease
/// (stale-while-revalidate still works).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_hits_come_from_redis_with_their_lease() {
    with_timeout(async {
        let redis = RedisServer::start().await;
        let dir = tempfile::tempdir().unwrap();
        let a = shared_host(&redis, dir.path(), 64).await;
        let p = "nearstale";
        a.load(spec(p, "")).await.unwrap();
        let key = unique("k");
        let fresh = json!({"fresh_ms": 1_000, "stale_ms": HOUR_MS});
        // Warm the tracking first (on another key), so the entry below is
        // kept by its first lookup.
        set(&a, p, "w", "x", &[]).await;
        warm(&a, p, "w", "x", &[]).await;
        let r = probe(
            &a,
            p,
            json!([{"op": "set", "key": key, "value": "v1", "fresh_ms": 1_000, "stale_ms": HOUR_MS}]),
        )
        .await;
        assert!(r[0].get("ok").is_some(), "{}", r[0]);
        let set_at = Instant::now();
        let r = lookup(&a, p, &key, fresh.clone()).await;
        if set_at.elapsed() < Duration::from_millis(900) {
            assert!(is_fresh(&r, "v1"), "{r}");
        }
        // Past the fresh time (a lower bound on elapsed time).
        tokio::time::sleep(Duration::from_millis(1_100).saturating_sub(set_at.elapsed())).await;
        let r = lookup(&a, p, &key, fresh).await;
        assert_eq!(r["ok"]["kind"], "stale", "{r}");
        assert_eq!(r["ok"]["lease"], true, "the refresh lease: {r}");
    })
    .await;
}

/// An `acl = true` plugin's near cache works, its tracking connection runs
/// as the host's user (not the plugin's), and the plugin's ACL user still
/// may not `CLIENT TRACKING` (Redis does not check broadcast prefixes
/// against key patterns, so granting it would expose other plugins' key
/// names). Two plugins' near caches hold only their own keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_plugins_keep_their_acl_and_plugins_stay_apart() {
    with_timeout(async {
        let redis = RedisServer::start().await;
        let dir = tempfile::tempdir().unwrap();
        let a = shared_host(&redis, dir.path(), 64).await;
        let p = "nearacl";
        a.load(spec(p, "acl = true")).await.unwrap();
        let other = "nearother";
        a.load(spec(other, "")).await.unwrap();
        let key = unique("k");
        set(&a, p, &key, "mine", &[]).await;
        set(&a, other, &key, "theirs", &[]).await;
        warm(&a, p, &key, "mine", &[]).await;
        warm(&a, other, &key, "theirs", &[]).await;
        // Another plugin's write of the same cache key leaves this one's
        // entry alone.
        let before = near(&a, p);
        set(&a, other, &key, "theirs2", &[]).await;
        warm(&a, other, &key, "theirs2", &[]).await;
        let r = lookup(&a, p, &key, json!({})).await;
        assert!(is_fresh(&r, "mine"), "{r}");
        assert!(near(&a, p).hits > before.hits, "still from the near cache");

        let entry = ns(p).cache(&key).unwrap().entry;
        let mut node = node_for(&redis, &entry).await;
        let tracking = tracking_clients(&mut node, p).await;
        assert_eq!(tracking.len(), 1, "{tracking:?}");
        assert!(tracking[0].contains(" user=default "), "{}", tracking[0]);
        let dry: redis::RedisResult<String> = redis::cmd("ACL")
            .arg("DRYRUN")
            .arg(format!("redloom-{p}"))
            .arg("CLIENT")
            .arg("TRACKING")
            .arg("ON")
            .arg("BCAST")
            .query_async(&mut node)
            .await;
        let dry = format!("{dry:?}");
        assert!(
            !dry.contains("Ok(\"OK\")") && dry.contains("no permissions"),
            "the plugin's ACL user must not be allowed CLIENT TRACKING: {dry}"
        );
    })
    .await;
}

/// Near-cache hits, misses, invalidations, evictions and bytes appear in
/// the plugin's counters and on `/metrics`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_reach_metrics() {
    with_timeout(async {
        let redis = RedisServer::start().await;
        let dir = tempfile::tempdir().unwrap();
        let wasm = plugin("cache-probe");
        let text = format!(
            "[http]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\nauth = \"none\"\n\
             [plugins.nearm]\nwasm = {:?}\nnear-cache-max-bytes = 2048\n",
            wasm.display().to_string()
        );
        let config = Config::parse(&text, &dir.path().join("redloom.toml")).unwrap();
        let served =
            redloom_tests::Served::start(redloom_tests::host_options(&redis, dir.path()), config)
                .await;
        let h = served.host.clone();
        let p = "nearm";
        let prefix = unique("k");
        set(&h, p, &format!("{prefix}0"), "x", &[]).await;
        warm(&h, p, &format!("{prefix}0"), "x", &[]).await;
        probe(
            &h,
            p,
            json!([{"op": "set_range", "key": prefix, "n": 40, "value": "v", "repeat": 100,
                    "fresh_ms": HOUR_MS},
                   {"op": "lookup_range", "key": prefix, "n": 40, "fresh_ms": HOUR_MS},
                   {"op": "invalidate", "key": format!("{prefix}39")}]),
        )
        .await;
        let s = near(&h, p);
        assert!(
            s.hits > 0 && s.misses > 0 && s.invalidations > 0 && s.evictions > 0 && s.bytes > 0,
            "{s:?}"
        );
        assert!(s.bytes <= 2048, "{s:?}");
        let metrics = reqwest::get(format!("http://{}/metrics", served.admin))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        for (name, want) in [
            ("redloom_near_cache_hits_total", s.hits),
            ("redloom_near_cache_invalidations_total", s.invalidations),
            ("redloom_near_cache_evictions_total", s.evictions),
        ] {
            let got = redloom_tests::metric_counter(&metrics, name, p);
            assert!(got >= want as f64, "{name} = {got}, want ≥ {want}");
        }
        assert!(
            redloom_tests::metric_counter(&metrics, "redloom_near_cache_misses_total", p) > 0.0
        );
        assert!(
            metrics.contains(&format!("redloom_near_cache_bytes{{plugin=\"{p}\"}}")),
            "{metrics}"
        );
        served.shutdown().await;
    })
    .await;
}

/// On a Cluster (always, whatever `REDLOOM_TEST_REDIS` says): killing the
/// primary that holds a near entry's key loses that node's tracking
/// connection, tracking moves to the promoted replica, and a write through
/// the new primary invalidates the entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracking_follows_a_cluster_failover() {
    with_timeout(async {
        let mut redis = RedisServer::start_cluster_for_failover().await;
        let mut conn = redis.client().await;
        let dir = tempfile::tempdir().unwrap();
        let a = shared_host(&redis, dir.path(), 64).await;
        let p = "nearfailover";
        a.load(spec(p, "")).await.unwrap();
        let key = unique("k");
        let entry = ns(p).cache(&key).unwrap().entry;
        set(&a, p, &key, "v1", &[]).await;
        warm(&a, p, &key, "v1", &[]).await;
        let victim = redis.primary_for(&entry).await;
        let mut old = node_for(&redis, &entry).await;
        assert_eq!(tracking_clients(&mut old, p).await.len(), 1);
        drop(old);
        let lost = near(&a, p).tracking_lost;
        redis.kill_node(victim);

        // Tracking is lost, then back on the new set of primaries.
        let started = Instant::now();
        let canary = unique("canary");
        loop {
            let s = near(&a, p);
            if s.tracking_lost > lost && s.serving {
                break;
            }
            assert!(
                started.elapsed() < PATIENCE,
                "tracking did not move to the new primaries within {PATIENCE:?}: {s:?}"
            );
            lookup(&a, p, &canary, json!({})).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        redis.wait_cluster_ready(PATIENCE).await;
        let promoted = redis.primary_for(&entry).await;
        assert_ne!(promoted, victim);
        let mut new = node_for(&redis, &entry).await;
        let started = Instant::now();
        while tracking_clients(&mut new, p).await.len() != 1 {
            assert!(
                started.elapsed() < PATIENCE,
                "no tracking connection on the promoted primary"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        // Kept again (stored again if the failover lost the write), then
        // invalidated by a write through the new primary.
        let started = Instant::now();
        loop {
            let before = near(&a, p).hits;
            let r = lookup(&a, p, &key, json!({})).await;
            if is_fresh(&r, "v1") && near(&a, p).hits > before {
                break;
            }
            if r["ok"]["kind"] == "miss" {
                set(&a, p, &key, "v1", &[]).await;
            }
            assert!(
                started.elapsed() < PATIENCE,
                "never a near hit after the failover: {r}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _: () = conn.hset(&entry, "v", "v2").await.unwrap();
        let took = stale_ends(&a, p, &key, "v1", &[]).await;
        eprintln!("near cache: after a failover: the stale value was visible for {took:?}");
        let r = lookup(&a, p, &key, json!({})).await;
        assert!(is_fresh(&r, "v2"), "{r}");
    })
    .await;
}
