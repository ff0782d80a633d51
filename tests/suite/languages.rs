//! Plugins in JavaScript, Python and C, built with their real toolchains
//! (componentize-js, componentize-py, clang + wasi-libc + wit-bindgen C),
//! run through the host against Redis; heavy runtimes under quotas and
//! instance reuse; the compiled cache; `redloom new` for every language.
//!
//! Non-Rust plugins are built here, once per test process, by their own
//! `build` scripts (`plugins/*/build`, `tests/guests/lang-probe-*/build`).
//! A build is kept in `target/lang-plugins/` under a hash of its inputs, and
//! compiled components in the shared cache `target/lang-plugins/data/cache`,
//! so a second test run rebuilds and recompiles nothing that did not change
//! (the key is the inputs, not the output: componentize-js and
//! componentize-py builds are not bit-for-bit reproducible).
//! `scripts/setup` installs the toolchains (the tests run it once, a no-op
//! when all is there); a build script also installs its own when run alone.

use std::collections::{BTreeMap, HashMap};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use redis::AsyncCommands;
use redloom::bindings::types::Error as GuestError;
use redloom::engine::CacheOutcome;
use redloom::host::{Host, HostInvokeError};
use redloom::limiter::{Limits, Policies, Rate};
use redloom::namespace::PluginName;
use redloom::plugin::{InvokeError, Plugin, PluginSpec};
use redloom_tests::{
    RedisServer, host_options, nested_cargo, redloom_bin, run_with_timeout, spec, target_dir,
    workspace_root,
};
use serde_json::{Value, json};

/// Every test body here runs under this deadline: a cold run compiles
/// SpiderMonkey and CPython components, ≈ 30–60 s each in a debug build.
const TEST_TIMEOUT: Duration = Duration::from_secs(900);

async fn with_timeout<F: std::future::Future<Output = ()>>(f: F) {
    redloom_tests::with_timeout_of(TEST_TIMEOUT, f).await
}

/// Where built components, the shared compile cache and scaffolded
/// projects' state live between test runs.
fn lang_dir() -> PathBuf {
    target_dir().join("lang-plugins")
}

/// A non-Rust plugin and what its build reads.
struct LangPlugin {
    /// Folder (relative to the workspace root) with an executable `build OUT`.
    dir: &'static str,
    /// Further inputs of the build: toolchain pins and shared build code.
    inputs: &'static [&'static str],
}

const JS_TOOLS: &str = "plugins/rate-limited-api/package-lock.json";
const PY_TOOLS: &str = "plugins/product-cache/requirements.txt";

const RATE_LIMITED_API: LangPlugin = LangPlugin {
    dir: "plugins/rate-limited-api",
    inputs: &[],
};
const PRODUCT_CACHE: LangPlugin = LangPlugin {
    dir: "plugins/product-cache",
    inputs: &[],
};
const HIT_COUNTER: LangPlugin = LangPlugin {
    dir: "plugins/hit-counter",
    inputs: &["xtask", "host/templates/c/tools/c_plugin.rs"],
};
const PROBE_JS: LangPlugin = LangPlugin {
    dir: "tests/guests/lang-probe-js",
    inputs: &[JS_TOOLS],
};
const PROBE_PY: LangPlugin = LangPlugin {
    dir: "tests/guests/lang-probe-py",
    inputs: &[PY_TOOLS],
};

/// Hashes every file under `path` (name and contents), skipping installed
/// toolchains and build outputs.
fn hash_tree(path: &Path, h: &mut DefaultHasher) {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    if matches!(name, "node_modules" | ".venv" | "__pycache__" | "target")
        || name.ends_with(".wasm")
    {
        return;
    }
    if path.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for e in entries {
            hash_tree(&e, h);
        }
    } else {
        path.strip_prefix(workspace_root()).unwrap().hash(h);
        std::fs::read(path).unwrap().hash(h);
    }
}

/// Runs `scripts/setup` once per process (a no-op when everything is
/// installed), so no two builds install the same toolchain at once.
fn toolchains() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let out = run_with_timeout(
            &mut Command::new(workspace_root().join("scripts/setup")),
            Duration::from_secs(900),
        );
        assert!(
            out.status.success(),
            "scripts/setup failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    });
}

/// Builds `p` (at most once per process, and not at all when a build of the
/// same inputs exists) and returns the component's path.
fn build(p: &LangPlugin) -> PathBuf {
    /// One cell per plugin folder: concurrent tests wait for one build.
    type Cells = Mutex<HashMap<&'static str, Arc<OnceLock<PathBuf>>>>;
    static BUILT: OnceLock<Cells> = OnceLock::new();
    let cell = BUILT
        .get_or_init(Default::default)
        .lock()
        .unwrap()
        .entry(p.dir)
        .or_default()
        .clone();
    cell.get_or_init(|| {
        toolchains();
        let root = workspace_root();
        let mut h = DefaultHasher::new();
        hash_tree(&root.join(p.dir), &mut h);
        hash_tree(&root.join("wit"), &mut h);
        for input in p.inputs {
            hash_tree(&root.join(input), &mut h);
        }
        let name = Path::new(p.dir).file_name().unwrap().to_str().unwrap();
        let out = lang_dir().join(format!("{name}-{:016x}.wasm", h.finish()));
        if out.exists() {
            return out;
        }
        let tmp = out.with_extension("wasm.tmp");
        let started = Instant::now();
        let built = run_with_timeout(
            nested_cargo(
                Command::new(root.join(p.dir).join("build"))
                    .arg(&tmp)
                    .current_dir(&root)
                    .env("CARGO", env!("CARGO")),
            ),
            Duration::from_secs(900),
        );
        assert!(
            built.status.success(),
            "{}/build failed:\n{}",
            p.dir,
            String::from_utf8_lossy(&built.stderr)
        );
        std::fs::rename(&tmp, &out).unwrap();
        prune_older_builds(name, &out);
        eprintln!(
            "[timing] built {name}: {} bytes in {:.1?}",
            std::fs::metadata(&out).unwrap().len(),
            started.elapsed()
        );
        out
    })
    .clone()
}

/// Removes the builds of `name` other than `keep`, and what the shared
/// compile cache holds for them (JS and Python builds are not reproducible,
/// so nothing else would ever load those artifacts again).
fn prune_older_builds(name: &str, keep: &Path) {
    use sha2::{Digest, Sha256};
    let caches: Vec<PathBuf> = std::fs::read_dir(lang_dir().join("data/cache"))
        .map(|dirs| dirs.filter_map(|d| d.ok()).map(|d| d.path()).collect())
        .unwrap_or_default();
    for e in std::fs::read_dir(lang_dir()).unwrap() {
        let path = e.unwrap().path();
        let file = path.file_name().unwrap().to_str().unwrap_or("");
        if path == keep || !file.starts_with(&format!("{name}-")) || !file.ends_with(".wasm") {
            continue;
        }
        if let Ok(bytes) = std::fs::read(&path) {
            let hex: String = Sha256::digest(&bytes)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            for cache in &caches {
                let _ = std::fs::remove_file(cache.join(format!("{hex}.cwasm")));
            }
        }
        let _ = std::fs::remove_file(&path);
    }
}

/// A spec for the component built from `p`, named `name`, default quotas.
fn lang_spec(name: &str, p: &LangPlugin) -> PluginSpec {
    let mut s = PluginSpec::from_path(&build(p));
    s.name = PluginName::parse(name).unwrap();
    s
}

/// A host on `redis` whose compile cache is the shared one in
/// `target/lang-plugins/data/cache` (Redis comes from the URL, so nothing
/// else is kept there).
async fn lang_host(redis: &RedisServer) -> Host {
    let data = lang_dir().join("data");
    std::fs::create_dir_all(&data).unwrap();
    Host::start(host_options(redis, &data))
        .await
        .expect("host starts")
}

/// Loads `spec`, one load per component at a time in this process, so
/// tests that share a component compile it once and the others hit the
/// cache.
async fn load(host: &Host, spec: PluginSpec) -> Arc<Plugin> {
    static LOADING: OnceLock<Mutex<HashMap<PathBuf, Arc<tokio::sync::Mutex<()>>>>> =
        OnceLock::new();
    let lock = LOADING
        .get_or_init(Default::default)
        .lock()
        .unwrap()
        .entry(spec.wasm.clone())
        .or_default()
        .clone();
    let _guard = lock.lock().await;
    let wasm = spec.wasm.clone();
    let started = Instant::now();
    let p = host
        .load(spec)
        .await
        .unwrap_or_else(|e| panic!("loading {}: {e}", wasm.display()));
    eprintln!(
        "[timing] loaded {} ({:?} cache): {:.1?}, compile/deserialize {:.1?}",
        p.name(),
        p.report().cache,
        started.elapsed(),
        p.report().compile_time
    );
    p
}

async fn invoke_json(host: &Host, p: &Plugin, input: Value) -> Value {
    let out = host
        .invoke(p.name(), input.to_string().as_bytes())
        .await
        .unwrap_or_else(|e| panic!("{} failed on {input}: {e}", p.name()));
    serde_json::from_slice(&out).unwrap_or_else(|e| {
        panic!(
            "{}: not JSON ({e}): {}",
            p.name(),
            String::from_utf8_lossy(&out)
        )
    })
}

fn settings(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn invalid_argument(e: &HostInvokeError) -> bool {
    matches!(
        e,
        HostInvokeError::Invoke(InvokeError::Guest {
            error: GuestError::InvalidArgument(_),
            ..
        })
    )
}

/// Every key in Redis belongs to `plugin`'s namespace.
async fn all_keys_namespaced(redis: &RedisServer, plugin: &str) {
    let mut conn = redis.client().await;
    let all: Vec<String> = conn.keys("*").await.unwrap();
    let prefix = format!("rl:{plugin}:");
    assert!(all.iter().all(|k| k.starts_with(&prefix)), "{all:?}");
}

/// The JavaScript example (componentize-js, SpiderMonkey): the seed's
/// rate-limited API — a per-client GCRA limit from the `limiter` capability
/// in front of an API that counts what it served in `kv`; the component
/// imports redloom's interfaces and nothing from WASI.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn javascript_rate_limited_api() {
    with_timeout(async {
        let redis = RedisServer::start().await;
        let host = lang_host(&redis).await;
        let mut s = lang_spec("api", &RATE_LIMITED_API);
        let mut policies = Policies::default();
        // Three at once, then one per hour: the fourth request is refused.
        let limits = Limits::Gcra {
            rate: Rate::new(1, Duration::from_secs(3600)),
            burst: 3,
        };
        policies.insert("api", limits).unwrap();
        s.limiters = policies;
        let p = load(&host, s).await;

        let imports = &p.report().imports;
        assert!(
            imports.iter().all(|i| i.starts_with("redloom:plugin/")),
            "only redloom's interfaces: {imports:?}"
        );
        assert!(
            imports
                .iter()
                .any(|i| i.starts_with("redloom:plugin/limiter@"))
        );
        assert_eq!(p.report().exports, ["redloom:plugin/invoke@0.2.0"]);

        let alice = json!({"client": "alice", "path": "/items"});
        let mut replies = Vec::new();
        for _ in 0..4 {
            replies.push(invoke_json(&host, &p, alice.clone()).await);
        }
        for (i, r) in replies[..3].iter().enumerate() {
            assert_eq!(r["status"], 200, "{r}");
            assert_eq!(r["headers"]["RateLimit-Limit"], "3", "{r}");
            assert_eq!(
                r["headers"]["RateLimit-Remaining"],
                (2 - i).to_string(),
                "{r}"
            );
            assert_eq!(r["body"]["served"], i + 1, "{r}");
        }
        let refused = &replies[3];
        assert_eq!(refused["status"], 429, "{refused}");
        assert_eq!(refused["headers"]["RateLimit-Remaining"], "0", "{refused}");
        let retry: u64 = refused["headers"]["Retry-After"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(retry > 0 && retry <= 3600, "{refused}");
        assert!(refused.get("body").is_none(), "{refused}");
        assert_eq!(refused["refusals"], 1, "{refused}");
        // Another client has its own limit.
        let bob = invoke_json(&host, &p, json!({"client": "bob", "path": "/items"})).await;
        assert_eq!(bob["status"], 200, "{bob}");
        assert_eq!(bob["body"]["served"], 4, "{bob}");

        // In Redis: the limiter's state per client, in the plugin's
        // namespace; the API counted only what it served.
        let mut conn = redis.client().await;
        let refusals: f64 = conn.zscore("rl:api:kv:refused", "alice").await.unwrap();
        assert_eq!(refusals, 1.0, "the JS plugin's sorted set");
        let state: bool = conn
            .exists("rl:api:limiter:{api/api/alice}:gcra")
            .await
            .unwrap();
        assert!(state, "alice's GCRA state");
        let served: i64 = conn.get("rl:api:kv:served:/items").await.unwrap();
        assert_eq!(served, 4);
        all_keys_namespaced(&redis, "api").await;

        let e = host.invoke(p.name(), b"not json").await.unwrap_err();
        assert!(invalid_argument(&e), "{e}");
        // An unknown policy is the limiter's typed error, passed through.
        let mut s = lang_spec("api-typo", &RATE_LIMITED_API);
        s.settings = settings(&[("policy", "nope")]);
        let typo = load(&host, s).await;
        let e = host
            .invoke(typo.name(), alice.to_string().as_bytes())
            .await
            .unwrap_err();
        assert!(invalid_argument(&e), "{e}");
    })
    .await;
}

/// The Python example (componentize-py, CPython): cache-aside with a fill
/// lease — a miss loads from the origin and fills the cache with a TTL, a
/// hit does not touch the origin, invalidation drops the entry, and a miss
/// while another invocation holds the lease answers without writing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_product_cache() {
    with_timeout(async {
        let redis = RedisServer::start().await;
        let host = lang_host(&redis).await;
        let mut s = lang_spec("products", &PRODUCT_CACHE);
        s.settings = settings(&[("ttl-ms", "30000")]);
        let p = load(&host, s).await;
        let mut conn = redis.client().await;

        let first = invoke_json(&host, &p, json!({"product": "42"})).await;
        assert_eq!(first["source"], "origin", "{first}");
        assert_eq!(first["filled"], true, "{first}");
        assert_eq!(first["value"]["id"], "42", "{first}");
        let second = invoke_json(&host, &p, json!({"product": "42"})).await;
        assert_eq!(second["source"], "cache", "{second}");
        assert_eq!(second["value"], first["value"]);

        let stored: String = conn.get("rl:products:kv:product:42").await.unwrap();
        let stored: Value = serde_json::from_str(&stored).unwrap();
        assert_eq!(stored, first["value"]);
        let ttl: i64 = conn.pttl("rl:products:kv:product:42").await.unwrap();
        assert!(ttl > 0 && ttl <= 30_000, "TTL {ttl}");
        let loads: i64 = conn.get("rl:products:kv:origin-loads").await.unwrap();
        assert_eq!(loads, 1, "the hit did not load from the origin");
        let per_product: i64 = conn
            .hget("rl:products:kv:loads-by-product", "42")
            .await
            .unwrap();
        assert_eq!(per_product, 1, "the Python plugin's hash");
        let lease: bool = conn.exists("rl:products:kv:lease:42").await.unwrap();
        assert!(!lease, "the fill lease is released");

        let dropped = invoke_json(&host, &p, json!({"product": "42", "invalidate": true})).await;
        assert_eq!(dropped["invalidated"], true, "{dropped}");
        let exists: bool = conn.exists("rl:products:kv:product:42").await.unwrap();
        assert!(!exists);

        // Someone else holds the fill lease: answer from the origin, leave
        // the filling to them.
        let _: () = conn
            .set_ex("rl:products:kv:lease:7", "1", 30)
            .await
            .unwrap();
        let r = invoke_json(&host, &p, json!({"product": "7"})).await;
        assert_eq!(r["source"], "origin", "{r}");
        assert_eq!(r["filled"], false, "{r}");
        let exists: bool = conn.exists("rl:products:kv:product:7").await.unwrap();
        assert!(!exists, "only the lease holder fills");
        let loads: i64 = conn.get("rl:products:kv:origin-loads").await.unwrap();
        assert_eq!(loads, 2);
        all_keys_namespaced(&redis, "products").await;

        let e = host.invoke(p.name(), b"{}").await.unwrap_err();
        assert!(invalid_argument(&e), "{e}");
    })
    .await;
}

/// The C example (clang + wasi-libc, wit-bindgen C, preview1 reactor
/// adapter): a hit counter with a configurable step and period.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c_hit_counter() {
    with_timeout(async {
        let redis = RedisServer::start().await;
        let host = lang_host(&redis).await;
        let mut s = lang_spec("hits", &HIT_COUNTER);
        s.settings = settings(&[("step", "2"), ("ttl-ms", "60000")]);
        let p = load(&host, s).await;
        assert!(
            p.report()
                .imports
                .iter()
                .any(|i| i.starts_with("redloom:plugin/kv@")),
            "{:?}",
            p.report().imports
        );

        for want in [2, 4, 6] {
            let out = host.invoke(p.name(), b"home").await.unwrap();
            let r: Value = serde_json::from_slice(&out).unwrap();
            assert_eq!(r, json!({"counter": "home", "hits": want, "rank": 1}));
        }
        // The board of counters, a sorted set written from C.
        let out = host.invoke(p.name(), b"away").await.unwrap();
        let r: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(r, json!({"counter": "away", "hits": 2, "rank": 2}));
        let mut conn = redis.client().await;
        let hits: i64 = conn.get("rl:hits:kv:hits:home").await.unwrap();
        assert_eq!(hits, 6);
        let ttl: i64 = conn.pttl("rl:hits:kv:hits:home").await.unwrap();
        assert!(ttl > 0 && ttl <= 60_000, "the period's TTL: {ttl}");
        all_keys_namespaced(&redis, "hits").await;

        for bad in [&b""[..], b"no spaces", b"quote\""] {
            let e = host.invoke(p.name(), bad).await.unwrap_err();
            assert!(invalid_argument(&e), "{e}");
        }
    })
    .await;
}

/// A JavaScript and a Python plugin stuck in an infinite loop are stopped
/// at their wall-time deadline; the host and the plugin keep serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_runtimes_stop_at_wall_time() {
    with_timeout(async {
        let redis = RedisServer::start().await;
        let host = lang_host(&redis).await;
        for (name, probe) in [("spin-js", &PROBE_JS), ("spin-py", &PROBE_PY)] {
            let mut s = lang_spec(name, probe);
            // Below the CPU quota, so the wall clock is what ends it; and
            // long enough for the calls after it, which start on the
            // low-priority threads (the spin made the plugin heavy), to
            // instantiate a fresh interpreter beside CPU hogs.
            s.quotas.cpu = Duration::from_secs(60);
            s.quotas.wall_time = Duration::from_secs(5);
            s.isolation = redloom::config::Isolation::pooled(4);
            let p = load(&host, s).await;

            let started = Instant::now();
            let e = host.invoke(p.name(), b"spin").await.unwrap_err();
            let took = started.elapsed();
            assert!(
                matches!(
                    &e,
                    HostInvokeError::Invoke(e) if e.quota().is_some_and(|q| matches!(q, redloom::quota::Quota::WallTime))
                ),
                "{name}: {e}"
            );
            assert!(took < Duration::from_secs(30), "{name}: stopped after {took:?}");
            eprintln!("[timing] {name}: infinite loop stopped after {took:.1?} (wall-time 5s)");
            assert_eq!(host.invoke(p.name(), b"ping").await.unwrap(), b"ping");
            assert_eq!(
                host.invoke(p.name(), b"count").await.unwrap(),
                b"2",
                "{name}: the stopped instance was discarded"
            );
        }
    })
    .await;
}

/// Instance reuse with heavy runtimes: module globals survive between the
/// invocations one instance serves (at most N), and any error discards the
/// instance. A capability's typed error reaches JS and Python code as the
/// WIT variant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_runtime_reuse_and_typed_errors() {
    with_timeout(async {
        let redis = RedisServer::start().await;
        let host = lang_host(&redis).await;
        for (name, probe) in [("reuse-js", &PROBE_JS), ("reuse-py", &PROBE_PY)] {
            let mut s = lang_spec(name, probe);
            s.isolation = redloom::config::Isolation::pooled(3);
            let p = load(&host, s).await;
            let mut seen = Vec::new();
            for _ in 0..4 {
                seen.push(String::from_utf8(host.invoke(p.name(), b"count").await.unwrap()).unwrap());
            }
            assert_eq!(seen, ["1", "2", "3", "1"], "{name}: at most 3 per instance");
            let e = host.invoke(p.name(), b"error").await.unwrap_err();
            assert!(
                matches!(
                    &e,
                    HostInvokeError::Invoke(InvokeError::Guest { error: GuestError::Other(m), .. }) if m == "deliberate error"
                ),
                "{name}: {e}"
            );
            assert_eq!(
                host.invoke(p.name(), b"count").await.unwrap(),
                b"1",
                "{name}: an error discards the instance"
            );
            if name.ends_with("js") {
                // An uncaught TypeError arrives with its message, not as a
                // bare trap.
                let e = host.invoke(p.name(), b"bug").await.unwrap_err();
                assert!(
                    matches!(
                        &e,
                        HostInvokeError::Invoke(InvokeError::Guest { error: GuestError::Other(m), .. })
                            if m.starts_with("uncaught exception: TypeError")
                    ),
                    "{name}: {e}"
                );
            }

            let out = host.invoke(p.name(), b"bad-key").await.unwrap();
            let r: Value = serde_json::from_slice(&out).unwrap();
            if name.ends_with("js") {
                assert_eq!(r["payload"]["tag"], "invalid-argument", "{r}");
            } else {
                assert_eq!(r["type"], "Error_InvalidArgument", "{r}");
            }
        }
        // Per-call: every invocation gets a fresh instance.
        let mut s = lang_spec("fresh-js", &PROBE_JS);
        s.isolation = redloom::config::Isolation::PerCall;
        let p = load(&host, s).await;
        for _ in 0..2 {
            assert_eq!(host.invoke(p.name(), b"count").await.unwrap(), b"1");
        }
    })
    .await;
}

/// The second load of a SpiderMonkey or CPython component comes from the
/// compiled cache: milliseconds instead of a compilation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_components_load_from_the_compiled_cache() {
    with_timeout(async {
        let redis = RedisServer::start().await;
        for (name, p) in [
            ("cached-js", &RATE_LIMITED_API),
            ("cached-py", &PRODUCT_CACHE),
        ] {
            let first = lang_host(&redis).await;
            let loaded = load(&first, lang_spec(name, p)).await;
            let compiled = loaded.report().compile_time;
            let outcome = loaded.report().cache;
            drop(loaded);
            first.shutdown().await;

            let second = lang_host(&redis).await;
            let started = Instant::now();
            let loaded = load(&second, lang_spec(name, p)).await;
            let took = started.elapsed();
            assert_eq!(loaded.report().cache, CacheOutcome::Hit, "{name}");
            // A hit deserializes instead of compiling: far cheaper than the
            // compilation measured in the same run (when there was one).
            if outcome == CacheOutcome::Miss {
                assert!(
                    loaded.report().compile_time * 5 < compiled,
                    "{name}: loading from the cache took {:?}, compiling {compiled:?}",
                    loaded.report().compile_time
                );
            }
            eprintln!(
                "[timing] {name} ({} bytes): first load {outcome:?} {compiled:.1?}; \
                 second load Hit: deserialize {:.1?}, whole load with probe {took:.1?}",
                loaded.report().size,
                loaded.report().compile_time,
            );
            second.shutdown().await;
        }
    })
    .await;
}

/// Per-invocation cost with a fresh instance each time and with reuse, for
/// each runtime (printed for the report; only correctness is asserted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instance_reuse_costs() {
    with_timeout(async {
        const N: u32 = 200;
        let redis = RedisServer::start().await;
        let host = lang_host(&redis).await;
        let cases: Vec<(&str, PluginSpec, &[u8])> = vec![
            ("rust", spec("cost-rust", "trap"), b"ping"),
            ("c", lang_spec("cost-c", &HIT_COUNTER), b"bench"),
            ("js", lang_spec("cost-js", &PROBE_JS), b"ping"),
            ("python", lang_spec("cost-py", &PROBE_PY), b"ping"),
        ];
        for (lang, base, input) in cases {
            let mut line = format!("[timing] {lang:>6} per invocation (mean of {N}):");
            for reuse in [0, 16] {
                let mut s = base.clone();
                s.name = PluginName::parse(&format!("{}-{reuse}", base.name)).unwrap();
                s.isolation = if reuse > 1 {
                    redloom::config::Isolation::pooled(reuse)
                } else {
                    redloom::config::Isolation::PerCall
                };
                let p = load(&host, s).await;
                // Warm up (first instance, page faults).
                host.invoke(p.name(), input).await.unwrap();
                let started = Instant::now();
                for _ in 0..N {
                    host.invoke(p.name(), input).await.unwrap();
                }
                let mean = started.elapsed() / N;
                line.push_str(&format!(" reuse {reuse:>2}: {mean:>8.1?}"));
            }
            eprintln!("{line}");
        }
    })
    .await;
}

/// Runs `redloom new NAME --lang LANG` and then the project's own `./test`,
/// which builds it and runs it in redloom against a private Redis.
fn new_project_passes_its_test(lang: &str) {
    // The project is created afresh (its private Redis and compiled cache
    // in its own .redloom/ with it); only the Rust and C build targets are
    // kept between runs, under target/lang-plugins/new-<lang>/.
    let state = lang_dir().join(format!("new-{lang}"));
    let name = format!("hello-{lang}");
    let dir = state.join(&name);
    for old in [&dir, &state.join("data")] {
        if old.exists() {
            std::fs::remove_dir_all(old).unwrap();
        }
    }
    std::fs::create_dir_all(&state).unwrap();
    let bin = redloom_bin();
    let out = run_with_timeout(
        Command::new(&bin)
            .args(["new", &name, "--lang", lang])
            .current_dir(&state),
        Duration::from_secs(60),
    );
    assert!(
        out.status.success(),
        "redloom new: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(summary.contains("./test"), "{summary}");
    let mut test = Command::new(dir.join("test"));
    nested_cargo(&mut test)
        .current_dir(&dir)
        .env("REDLOOM", &bin)
        .env("CARGO_TARGET_DIR", state.join("cargo-target"))
        // The project installs its own componentize-js (`npm ci` from its
        // lock file) or componentize-py (a .venv), as a user's would; the
        // package caches the examples' installs filled keep that quick.
        .env_remove("COMPONENTIZE_JS")
        .env_remove("COMPONENTIZE_PY");
    toolchains();
    let started = Instant::now();
    let out = run_with_timeout(&mut test, Duration::from_secs(900));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("3 passed, 0 failed"),
        "{lang} project's ./test failed ({}):\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!(
        "[timing] redloom new --lang {lang}: ./test passed in {:.1?}",
        started.elapsed()
    );
}

/// `redloom new --lang rust` builds with cargo and passes its own test.
#[test]
fn new_rust_project_passes_its_test() {
    new_project_passes_its_test("rust");
}

/// `redloom new --lang js` builds with componentize-js and passes its own test.
#[test]
fn new_js_project_passes_its_test() {
    new_project_passes_its_test("js");
}

/// `redloom new --lang python` builds with componentize-py and passes its own test.
#[test]
fn new_python_project_passes_its_test() {
    new_project_passes_its_test("python");
}

/// `redloom new --lang c` builds with its own tools/ crate and passes its own test.
#[test]
fn new_c_project_passes_its_test() {
    new_project_passes_its_test("c");
}
