//! The foundation against real Redis: plugins load, run, stay in their
//! namespace, fail cleanly, and are cached once compiled.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use redis::AsyncCommands;
use redloom::bindings::types::Error as GuestError;
use redloom::config::Isolation;
use redloom::engine::CacheOutcome;
use redloom::host::{Host, HostInvokeError};
use redloom::namespace::PluginName;
use redloom::plugin::{InvokeError, LoadError, PluginSpec};
use redloom_tests::with_timeout;
use redloom_tests::{RedisServer, host, plugin, spec, unique};
use redloom_tests::{err_kind, ok, probe};
use serde_json::{Value, json};

/// The example plugin's round trip through `invoke`, with its effect in Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn visit_counter_round_trip() {
    with_timeout(async {
        let redis = RedisServer::start().await;
        let data = tempfile::tempdir().unwrap();
        let host = host(&redis, data.path()).await;
        let p = host
            .load(spec("visit-counter", "visit-counter"))
            .await
            .unwrap();
        let page = unique("page");
        let input = json!({ "page": page, "visitor": "alice" }).to_string();
        let first: Value =
            serde_json::from_slice(&host.invoke(p.name(), input.as_bytes()).await.unwrap())
                .unwrap();
        let second: Value =
            serde_json::from_slice(&host.invoke(p.name(), input.as_bytes()).await.unwrap())
                .unwrap();
        assert_eq!(first["visits"], 1, "{first}");
        assert_eq!(second["visits"], 2, "{second}");
        assert_eq!(first["returning"], false, "{first}");
        assert_eq!(second["returning"], true, "{second}");

        // What the plugin stored is in its namespace, visible to plain Redis.
        let mut conn = redis.client().await;
        let keys: Vec<String> = conn.keys("rl:visit-counter:kv:*").await.unwrap();
        assert!(!keys.is_empty());
        let all: Vec<String> = conn.keys("*").await.unwrap();
        assert!(
            all.iter().all(|k| k.starts_with("rl:visit-counter:kv:")),
            "{all:?}"
        );
        let ttls: Vec<i64> = {
            let mut v = Vec::new();
            for k in &keys {
                v.push(conn.pttl(k).await.unwrap());
            }
            v
        };
        assert!(
            ttls.iter().any(|t| *t > 0),
            "the session key has a TTL: {keys:?} {ttls:?}"
        );
    })
    .await;
}

/// Every kv operation and its typed errors, through a real component.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_operations() {
    with_timeout(async {
        let redis = RedisServer::start().await;
        let data = tempfile::tempdir().unwrap();
        let host = host(&redis, data.path()).await;
        let mut s = spec("probe", "kv-probe");
        s.settings = BTreeMap::from([("greeting".into(), "hello".into())]);
        host.load(s).await.unwrap();
        let r = probe(
            &host,
            "probe",
            json!([
                {"op": "set", "key": "k", "value": "v1"},
                {"op": "set", "key": "k", "value": "v2", "condition": "if-absent"},
                {"op": "get", "key": "k"},
                {"op": "set", "key": "k", "value": "v3", "condition": "if-present"},
                {"op": "set", "key": "missing", "value": "x", "condition": "if-present"},
                {"op": "exists", "key": "missing"},
                {"op": "incr", "key": "n", "delta": 5},
                {"op": "incr", "key": "n", "delta": -2},
                {"op": "incr", "key": "k"},
                {"op": "get_many", "keys": ["k", "missing", "n"]},
                {"op": "cas", "key": "k", "expected": "wrong", "new": "x"},
                {"op": "cas", "key": "k", "expected": "v3", "new": "v4"},
                {"op": "cas", "key": "fresh", "expected": null, "new": "f1"},
                {"op": "cas", "key": "fresh", "expected": null, "new": "f2"},
                {"op": "set", "key": "t", "value": "x", "ttl_ms": 60000},
                {"op": "expire", "key": "k", "ttl_ms": 60000},
                {"op": "expire", "key": "missing", "ttl_ms": 60000},
                {"op": "set", "key": "z", "value": "x", "ttl_ms": 0},
                {"op": "delete", "key": "k"},
                {"op": "delete", "key": "k"},
                {"op": "config", "key": "greeting"},
                {"op": "config", "key": "absent"},
            ]),
        )
        .await;
        assert_eq!(ok(&r[0]), &json!(true));
        assert_eq!(
            ok(&r[1]),
            &json!(false),
            "NX on an existing key does not write"
        );
        assert_eq!(ok(&r[2]), &json!("v1"));
        assert_eq!(ok(&r[3]), &json!(true));
        assert_eq!(
            ok(&r[4]),
            &json!(false),
            "XX on a missing key does not write"
        );
        assert_eq!(ok(&r[5]), &json!(false));
        assert_eq!(ok(&r[6]), &json!(5));
        assert_eq!(ok(&r[7]), &json!(3));
        assert_eq!(
            err_kind(&r[8]),
            "invalid-argument",
            "incr of a non-integer: {}",
            r[8]
        );
        assert_eq!(ok(&r[9]), &json!(["v3", null, "3"]));
        assert_eq!(ok(&r[10]), &json!(false));
        assert_eq!(ok(&r[11]), &json!(true));
        assert_eq!(ok(&r[12]), &json!(true));
        assert_eq!(ok(&r[13]), &json!(false));
        assert_eq!(ok(&r[15]), &json!(true));
        assert_eq!(ok(&r[16]), &json!(false));
        assert_eq!(err_kind(&r[17]), "invalid-argument", "ttl 0: {}", r[17]);
        assert_eq!(ok(&r[18]), &json!(true));
        assert_eq!(ok(&r[19]), &json!(false));
        assert_eq!(ok(&r[20]), &json!("hello"));
        assert_eq!(ok(&r[21]), &Value::Null);

        let mut conn = redis.client().await;
        let ttl: i64 = conn.pttl("rl:probe:kv:t").await.unwrap();
        assert!(ttl > 0 && ttl <= 60_000, "ttl {ttl}");
        let fresh: String = conn.get("rl:probe:kv:fresh").await.unwrap();
        assert_eq!(fresh, "f1");
    })
    .await;
}

/// Two plugins using the same (hostile) key names never see each other's data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_are_namespaced() {
    with_timeout(async {
        let redis = RedisServer::start().await;
        let data = tempfile::tempdir().unwrap();
        let host = host(&redis, data.path()).await;
        host.load(spec("alpha", "kv-probe")).await.unwrap();
        host.load(spec("alpha-b", "kv-probe")).await.unwrap();
        let long = "k".repeat(1024);
        let hostile = [
            "",
            ":",
            "::",
            "{",
            "}",
            "{alpha}",
            "}{",
            "rl:alpha-b:kv:x",
            "b:kv:x",
            "*",
            "\\",
            "\n",
            &long,
        ];
        let sets: Vec<Value> = hostile
            .iter()
            .map(|k| json!({"op": "set", "key": k, "value": format!("alpha:{k}")}))
            .collect();
        for r in probe(&host, "alpha", Value::Array(sets)).await {
            assert_eq!(ok(&r), &json!(true));
        }
        let gets: Vec<Value> = hostile
            .iter()
            .map(|k| json!({"op": "get", "key": k}))
            .collect();
        for r in probe(&host, "alpha-b", Value::Array(gets.clone())).await {
            assert_eq!(ok(&r), &Value::Null, "alpha-b sees alpha's data");
        }
        for (k, r) in hostile
            .iter()
            .zip(probe(&host, "alpha", Value::Array(gets)).await)
        {
            assert_eq!(ok(&r), &json!(format!("alpha:{k}")));
        }
        // Only alpha's namespace holds keys, and one key per hostile name.
        let mut conn = redis.client().await;
        let all: Vec<String> = conn.keys("*").await.unwrap();
        assert_eq!(all.len(), hostile.len(), "{all:?}");
        assert!(all.iter().all(|k| k.starts_with("rl:alpha:kv:")), "{all:?}");

        // A key over the limit is refused before it reaches Redis.
        let r = probe(
            &host,
            "alpha",
            json!([{"op": "set", "key": "k".repeat(1025), "value": "x"}]),
        )
        .await;
        assert_eq!(err_kind(&r[0]), "invalid-argument");
        let n: usize = conn.keys::<_, Vec<String>>("*").await.unwrap().len();
        assert_eq!(n, hostile.len());
    })
    .await;
}

/// Malformed files, core modules and components without a handler are
/// rejected at load with messages that say what is wrong.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_plugins_are_rejected_clearly() {
    with_timeout(async {
        let redis = RedisServer::start().await;
        let data = tempfile::tempdir().unwrap();
        let host = host(&redis, data.path()).await;
        let dir = tempfile::tempdir().unwrap();

        let garbage = dir.path().join("garbage.wasm");
        std::fs::write(&garbage, b"this is not wasm").unwrap();
        let e = host
            .load(PluginSpec::from_path(&garbage))
            .await
            .err()
            .unwrap();
        assert!(matches!(e, LoadError::NotWasm { .. }), "{e}");
        assert!(e.to_string().contains("not a WebAssembly file"), "{e}");

        // The smallest valid core module: magic and version 1.
        let core = dir.path().join("core.wasm");
        std::fs::write(&core, b"\0asm\x01\0\0\0").unwrap();
        let e = host.load(PluginSpec::from_path(&core)).await.err().unwrap();
        assert!(matches!(e, LoadError::CoreModule { .. }), "{e}");
        assert!(
            e.to_string()
                .contains("core WebAssembly module, not a component"),
            "{e}"
        );
        assert!(e.to_string().contains("wasm32-wasip2"), "{e}");

        // A truncated component.
        let bytes = std::fs::read(plugin("kv-probe")).unwrap();
        let truncated = dir.path().join("truncated.wasm");
        std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
        let e = host
            .load(PluginSpec::from_path(&truncated))
            .await
            .err()
            .unwrap();
        assert!(matches!(e, LoadError::Invalid { .. }), "{e}");

        let e = host
            .load(spec("nothing", "no-handler"))
            .await
            .err()
            .unwrap();
        assert!(matches!(e, LoadError::NoHandler { .. }), "{e}");
        assert!(
            e.to_string()
                .contains("does not export redloom:plugin/invoke@0.2.0"),
            "{e}"
        );

        let missing = dir.path().join("missing.wasm");
        let e = host
            .load(PluginSpec::from_path(&missing))
            .await
            .err()
            .unwrap();
        assert!(matches!(e, LoadError::Read { .. }), "{e}");

        assert!(host.plugin_names().is_empty(), "nothing was loaded");
    })
    .await;
}

/// A plugin that panics or traps fails that invocation only; the host keeps
/// serving it and other plugins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traps_are_contained() {
    with_timeout(async {
        let redis = RedisServer::start().await;
        let data = tempfile::tempdir().unwrap();
        let host = host(&redis, data.path()).await;
        let trap = host.load(spec("trap", "trap")).await.unwrap();
        host.load(spec("probe", "kv-probe")).await.unwrap();

        for input in ["panic", "unreachable"] {
            let e = host
                .invoke(trap.name(), input.as_bytes())
                .await
                .unwrap_err();
            assert!(
                matches!(e, HostInvokeError::Invoke(InvokeError::Trap { .. })),
                "{input}: {e}"
            );
            let r = probe(&host, "probe", json!([{"op": "incr", "key": "alive"}])).await;
            assert!(ok(&r[0]).is_i64());
        }
        let e = host.invoke(trap.name(), b"error").await.unwrap_err();
        match e {
            HostInvokeError::Invoke(InvokeError::Guest {
                error: GuestError::Other(m),
                ..
            }) => {
                assert_eq!(m, "deliberate error")
            }
            other => panic!("expected the guest's typed error, got {other}"),
        }
        assert_eq!(
            host.invoke(trap.name(), b"still here").await.unwrap(),
            b"still here"
        );
    })
    .await;
}

/// The second load of a plugin comes from the compiled cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_load_uses_compiled_cache() {
    with_timeout(async {
        let redis = RedisServer::start().await;
        let data = tempfile::tempdir().unwrap();
        let first = host(&redis, data.path()).await;
        let p = first.load(spec("probe", "kv-probe")).await.unwrap();
        assert_eq!(p.report().cache, CacheOutcome::Miss);
        drop(first);

        let cached: Vec<_> = walk(&data.path().join("cache"));
        assert_eq!(cached.len(), 1, "{cached:?}");
        assert!(cached[0].extension().is_some_and(|e| e == "cwasm"));

        let second = host(&redis, data.path()).await;
        let p = second.load(spec("probe", "kv-probe")).await.unwrap();
        assert_eq!(p.report().cache, CacheOutcome::Hit);
        let r = probe(&second, "probe", json!([{"op": "incr", "key": "n"}])).await;
        assert_eq!(ok(&r[0]), &json!(1), "the cached artifact runs");

        // A corrupt artifact is ignored and replaced, not trusted.
        std::fs::write(&cached[0], b"garbage").unwrap();
        let p = second.load(spec("probe", "kv-probe")).await.unwrap();
        assert_eq!(p.report().cache, CacheOutcome::Miss);
        let p = second.load(spec("probe", "kv-probe")).await.unwrap();
        assert_eq!(p.report().cache, CacheOutcome::Hit);
    })
    .await;
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// Instance reuse: pooled is the default; a pooled instance serves up to N
/// invocations and at most its age, and is discarded after an error, a
/// panic or a quota breach; `per-call` never carries state over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instance_reuse_is_bounded_and_reset_by_errors() {
    with_timeout(async {
        let redis = RedisServer::start().await;
        let data = tempfile::tempdir().unwrap();
        let host = host(&redis, data.path()).await;
        let mut s = spec("fresh", "trap");
        s.isolation = Isolation::PerCall;
        let fresh = host.load(s).await.unwrap();
        let mut s = spec("reused", "trap");
        s.isolation = Isolation::pooled(3);
        let reused = host.load(s).await.unwrap();
        let mut s = spec("breaker", "trap");
        s.isolation = Isolation::pooled(100);
        s.quotas.cpu = Duration::from_millis(200);
        let breaker = host.load(s).await.unwrap();
        let default = host.load(spec("default", "trap")).await.unwrap();
        let mut s = spec("aged", "trap");
        s.isolation = Isolation::Pooled {
            max_uses: 1000,
            max_age: Duration::from_secs(1),
        };
        let aged = host.load(s).await.unwrap();

        let count = |name: PluginName| {
            let host = &host;
            async move { String::from_utf8(host.invoke(&name, b"count").await.unwrap()).unwrap() }
        };
        for _ in 0..3 {
            assert_eq!(count(fresh.name().clone()).await, "1");
        }
        assert_eq!(count(default.name().clone()).await, "1");
        assert_eq!(
            count(default.name().clone()).await,
            "2",
            "pooled is the default"
        );
        let seen: Vec<String> = {
            let mut v = Vec::new();
            for _ in 0..4 {
                v.push(count(reused.name().clone()).await);
            }
            v
        };
        assert_eq!(
            seen,
            ["1", "2", "3", "1"],
            "an instance serves at most 3 invocations"
        );
        // A failure discards the instance that ran it: the next call counts
        // from 1 again. (Pooled for 100 uses, so only the failure can end it.)
        assert_eq!(count(breaker.name().clone()).await, "1");
        for (failing, what) in [
            (&b"error"[..], "an error"),
            (b"panic", "a panic"),
            (b"spin", "a cpu quota breach"),
        ] {
            assert_eq!(
                count(breaker.name().clone()).await,
                "2",
                "the instance is kept before {what}"
            );
            assert!(host.invoke(breaker.name(), failing).await.is_err());
            assert_eq!(
                count(breaker.name().clone()).await,
                "1",
                "{what} discards the instance"
            );
        }

        let born = Instant::now();
        assert_eq!(count(aged.name().clone()).await, "1");
        assert_eq!(count(aged.name().clone()).await, "2");
        tokio::time::sleep(
            Duration::from_secs(1).saturating_sub(born.elapsed()) + Duration::from_millis(50),
        )
        .await;
        assert_eq!(
            count(aged.name().clone()).await,
            "1",
            "an instance older than instance-max-age is not reused"
        );
    })
    .await;
}

/// A Redis outage surfaces to the plugin as a typed error, promptly, and the
/// host survives it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_is_a_typed_error() {
    with_timeout(async {
        let mut redis = RedisServer::start().await;
        let data = tempfile::tempdir().unwrap();
        let host = host(&redis, data.path()).await;
        host.load(spec("probe", "kv-probe")).await.unwrap();
        let r = probe(
            &host,
            "probe",
            json!([{"op": "set", "key": "k", "value": "v"}]),
        )
        .await;
        assert_eq!(ok(&r[0]), &json!(true));

        redis.kill();
        let started = std::time::Instant::now();
        let r = probe(&host, "probe", json!([{"op": "get", "key": "k"}])).await;
        let kind = err_kind(&r[0]);
        assert!(
            kind == "backend-unavailable" || kind == "timeout",
            "{}",
            r[0]
        );
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "took {:?}",
            started.elapsed()
        );
        // Non-Redis work still runs.
        let trap = host.load(spec("trap", "trap")).await.unwrap();
        assert_eq!(host.invoke(trap.name(), b"echo").await.unwrap(), b"echo");
    })
    .await;
}

/// Input and output sizes are bounded by the plugin's quotas.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payload_quotas() {
    with_timeout(async {
        let redis = RedisServer::start().await;
        let data = tempfile::tempdir().unwrap();
        let host = host(&redis, data.path()).await;
        let mut s = spec("small", "trap");
        s.quotas.max_input = 16;
        s.quotas.max_output = 8;
        let p = host.load(s).await.unwrap();
        let e = host.invoke(p.name(), &[b'x'; 17]).await.unwrap_err();
        assert!(e.to_string().contains("payload quota"), "{e}");
        let e = host.invoke(p.name(), &[b'x'; 9]).await.unwrap_err();
        assert!(e.to_string().contains("max-output"), "{e}");
        assert_eq!(
            host.invoke(p.name(), b"12345678").await.unwrap(),
            b"12345678"
        );
    })
    .await;
}

/// A guest that never returns is stopped at its wall-time deadline, and a
/// guest that allocates without end at its memory cap; the host keeps
/// serving in both cases.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runaway_guests_hit_their_quotas() {
    with_timeout(async {
        let redis = RedisServer::start().await;
        let data = tempfile::tempdir().unwrap();
        let host = host(&redis, data.path()).await;
        let mut s = spec("runaway", "trap");
        s.quotas.wall_time = Duration::from_millis(300);
        s.quotas.memory = 16 << 20;
        let p = host.load(s).await.unwrap();

        let started = std::time::Instant::now();
        let e = host.invoke(p.name(), b"spin").await.unwrap_err();
        assert!(e.to_string().contains("wall-time quota"), "{e}");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "took {:?}",
            started.elapsed()
        );

        // Allocating to the memory limit within 300 ms of wall time is a
        // race a loaded machine can lose (the spin above made the plugin
        // heavy, so its next calls start on the low-priority threads): the
        // memory quota is checked on a plugin with the default wall time.
        let mut s = spec("hungry", "trap");
        s.quotas.memory = 16 << 20;
        let hungry = host.load(s).await.unwrap();
        let e = host.invoke(hungry.name(), b"alloc").await.unwrap_err();
        assert!(e.to_string().contains("memory quota"), "{e}");

        assert_eq!(host.invoke(p.name(), b"ok").await.unwrap(), b"ok");
    })
    .await;
}

/// A `rediss://` server with a private CA that requires client certificates
/// (mutual TLS): `redloom serve` reaches it with the `[redis] tls-*` files
/// (paths relative to its configuration file), for the plugin's commands, its
/// ACL user's connection and the subscription connection alike; an in-process
/// host runs kv commands through it. Each missing or wrong piece is refused
/// with an error that names it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_private_ca_and_client_certificates() {
    with_timeout(async {
        let dir = tempfile::tempdir().unwrap();
        let certs = redloom_tests::TestCerts::generate(&dir.path().join("certs"));
        let (redis, tls_port) = RedisServer::start_standalone_tls(&certs).await;
        let url = format!("rediss://127.0.0.1:{tls_port}");
        let tls = |ca: bool, client: bool| -> redloom::config::RedisSection {
            redloom::config::RedisSection {
                tls_ca_file: ca.then(|| certs.ca.clone()),
                tls_cert_file: client.then(|| certs.client_cert.clone()),
                tls_key_file: client.then(|| certs.client_key.clone()),
                ..Default::default()
            }
        };
        let start = async |target: &str, section: redloom::config::RedisSection| {
            let data = tempfile::tempdir().unwrap();
            let mut options = redloom_tests::host_options(&redis, data.path());
            options.redis_target = Some(redloom::redis::RedisTarget::Single(target.into()));
            options.redis = section;
            Host::start(options).await.map(|h| (h, data))
        };

        // In process: the plugin's kv commands go over TLS, to this server.
        let (host, _data) = start(&url, tls(true, true)).await.expect("TLS host starts");
        host.load(spec("probe", "kv-probe")).await.unwrap();
        let r = probe(
            &host,
            "probe",
            json!([{"op": "incr", "key": "n", "delta": 7}]),
        )
        .await;
        assert_eq!(ok(&r[0]), &json!(7));
        let key = redloom::namespace::Namespace::new(&PluginName::parse("probe").unwrap())
            .kv("n")
            .unwrap();
        let mut conn = redis.client().await;
        assert_eq!(redloom_tests::get_i64(&mut conn, &key).await, 7);
        let tls_clients: String = redis::cmd("CLIENT")
            .arg("LIST")
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(
            tls_clients
                .lines()
                .any(|l| l.contains(&format!("laddr=127.0.0.1:{tls_port}"))),
            "no client on the TLS port:\n{tls_clients}"
        );
        drop(host);

        // What is missing or wrong is named.
        let refused = async |target: &str, section| match start(target, section).await {
            Ok(_) => panic!("a host on {target} started"),
            Err(e) => e.to_string(),
        };
        let e = refused(&url, tls(false, true)).await;
        assert!(e.contains("certificate") && e.contains(&url), "{e}");
        let e = refused(&url, tls(true, false)).await;
        assert!(e.contains(&url), "{e}");
        let plain = redis.url().to_string();
        let e = refused(&plain, tls(true, true)).await;
        assert!(e.contains("rediss://") && e.contains(&plain), "{e}");
        let mut missing = tls(true, true);
        missing.tls_ca_file = Some(dir.path().join("no-such-ca.pem"));
        let e = refused(&url, missing).await;
        assert!(
            e.contains("no-such-ca.pem") && e.contains("CA certificate"),
            "{e}"
        );
        let mut swapped = tls(true, true);
        swapped.tls_key_file = Some(certs.client_cert.clone());
        let e = refused(&url, swapped).await;
        assert!(e.contains("client key") && e.contains("client.pem"), "{e}");
        let e = redloom::config::Config::parse(
            "[redis]\ntls-cert-file = \"c.pem\"\n",
            &dir.path().join("redloom.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("redis.tls-cert-file") && e.contains("tls-key-file"),
            "{e}"
        );

        // The command line: the same files as --redis-tls-* flags.
        let bin = redloom_tests::redloom_bin();
        let cli = |tls: &[&Path]| {
            let mut cmd = std::process::Command::new(&bin);
            cmd.current_dir(dir.path())
                .env_remove("REDIS_URL")
                .args(["invoke", "--redis-url", &url, "--input"])
                .arg(json!([{"op": "incr", "key": "cli", "delta": 2}]).to_string())
                .arg(plugin("kv-probe"));
            for (flag, file) in [
                "--redis-tls-ca-file",
                "--redis-tls-cert-file",
                "--redis-tls-key-file",
            ]
            .into_iter()
            .zip(tls)
            {
                cmd.arg(flag).arg(file);
            }
            redloom_tests::run_with_timeout(&mut cmd, Duration::from_secs(60))
        };
        let out = cli(&[&certs.ca, &certs.client_cert, &certs.client_key]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains(r#""ok":2"#),
            "{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let missing = dir.path().join("missing.pem");
        let out = cli(&[&missing, &certs.client_cert, &certs.client_key]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains("missing.pem"), "{stderr}");
        let out = cli(&[&certs.ca, &certs.client_cert]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains("--redis-tls-key-file"), "{stderr}");

        // `redloom serve` with the files named in its configuration: a message
        // published on the plugin's channel reaches its handler through the
        // subscription connection, and the handler's commands go through the
        // plugin's own ACL user, both over TLS.
        let serve_dir = dir.path().join("serve");
        let text = format!(
            "[redis]\nurl = \"{url}\"\ntls-ca-file = \"../certs/ca.pem\"\n\
             tls-cert-file = \"../certs/client.pem\"\ntls-key-file = \"../certs/client.key\"\n\
             [http]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
             [plugins.listener]\nwasm = {:?}\nacl = true\nsubscriptions = [\"news\"]\n",
            plugin("event-probe").display().to_string(),
        );
        let serve = redloom_tests::ServeProcess::start(&serve_dir, &text).await;
        let ns = redloom::namespace::Namespace::new(&PluginName::parse("listener").unwrap());
        let channel = ns.channel("news", false).unwrap();
        let got = ns.kv("got:news").unwrap();
        let started = std::time::Instant::now();
        // Publishes until the handler counted one: the subscription may
        // still be starting when the first message goes out.
        while redloom_tests::get_i64(&mut conn, &got).await < 1 {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "the message never reached the plugin:\n{}",
                serve.log_text()
            );
            let _: i64 = conn.publish(&channel, "hi").await.unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let clients: String = redis::cmd("CLIENT")
            .arg("LIST")
            .query_async(&mut conn)
            .await
            .unwrap();
        let over_tls: Vec<&str> = clients
            .lines()
            .filter(|l| l.contains(&format!("laddr=127.0.0.1:{tls_port}")))
            .collect();
        assert!(
            over_tls.iter().any(|l| l.contains("user=redloom-listener"))
                && over_tls
                    .iter()
                    .any(|l| l.contains("sub=1") || l.contains("psub=1")),
            "the ACL user's and the subscriber's connections are not on the TLS port:\n{clients}"
        );
        serve.stop().await;
    })
    .await;
}
