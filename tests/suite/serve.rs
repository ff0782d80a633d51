//! `redloom serve` over real HTTP on 127.0.0.1:0: routing, limits, quotas,
//! outbound HTTP, the admin API with hot reload, metrics and shutdown.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use redloom::config::Config;
use redloom::host::Host;
use redloom::serve::{ServeError, Server};
use redloom_tests::PATIENCE;
use redloom_tests::with_timeout;
use redloom_tests::{RedisServer, host_options, http_client as client, plugin};
use reqwest::StatusCode;

/// A running `serve` on free ports; dropping `stop` shuts it down.
/// A `serve` on a Redis and a folder of its own.
struct Served {
    served: redloom_tests::Served,
    redis: RedisServer,
    _dir: tempfile::TempDir,
}

impl Served {
    /// Sends `GET /hold/<name>` to the probe in the background and waits
    /// until the plugin runs it: it then holds its concurrency slot (and
    /// keeps the request in flight) until [`Self::release`]. Returns the
    /// answer's status and body, or the error that ended the request.
    async fn hold(
        &self,
        c: &reqwest::Client,
        name: &str,
    ) -> tokio::task::JoinHandle<Result<(StatusCode, String), String>> {
        let request = tokio::spawn({
            let (c, url) = (c.clone(), self.url(&format!("/hold/{name}")));
            async move {
                let r = c.get(url).send().await.map_err(|e| e.to_string())?;
                let status = r.status();
                Ok((status, r.text().await.map_err(|e| e.to_string())?))
            }
        });
        let mut conn = self.redis.client().await;
        let started = format!("rl:probe:kv:started:{name}");
        let start = Instant::now();
        while redloom_tests::get_i64(&mut conn, &started).await == 0 {
            if request.is_finished() {
                panic!(
                    "the held request ended before the plugin ran it: {:?}",
                    request.await
                );
            }
            assert!(
                start.elapsed() < PATIENCE,
                "the held request did not reach the plugin within {PATIENCE:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        request
    }

    /// Lets the request [`Self::hold`] started for `name` finish.
    async fn release(&self, name: &str) {
        let _: () = redis::AsyncCommands::set(
            &mut self.redis.client().await,
            format!("rl:probe:kv:release:{name}"),
            "1",
        )
        .await
        .unwrap();
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.served.addr)
    }

    fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.served.admin)
    }

    /// The admin token `serve` generated in its data folder (or the
    /// configured one, which it then does not write).
    fn token(&self) -> String {
        redloom::files::read_secret(&self._dir.path().join(redloom::config::ADMIN_TOKEN_FILE))
            .unwrap_or_default()
    }

    /// Stops accepting, waits for the drain to finish, and shuts the host down.
    async fn shutdown(self) {
        let host = self.served.host.clone();
        self.served.shutdown().await;
        host.shutdown().await;
    }
}

/// Quota lines for a probe whose requests the test holds (`/hold`): room
/// to wait for the test, however slow it runs.
const HOLD_QUOTAS: &str = "wall-time = \"120s\"";

/// The http-probe plugin as `probe` (routes `/echo/*rest`, `/burn/:ms`, ...),
/// plus `extra` TOML appended to the file.
fn probe_config(extra: &str) -> String {
    format!(
        r#"
[http]
listen = "127.0.0.1:0"
shutdown-timeout = "10s"
[admin]
listen = "127.0.0.1:0"

[plugins.probe]
wasm = {probe:?}
[plugins.probe.quotas]
max-input = "1KiB"
concurrency = 1
queue = 0

[[routes]]
method = "GET"
path = "/echo/:a/*rest"
plugin = "probe"
[[routes]]
path = "/echo"
plugin = "probe"
[[routes]]
method = "GET"
path = "/burn/:ms"
plugin = "probe"
[[routes]]
method = "GET"
path = "/version"
plugin = "probe"
[[routes]]
method = "GET"
path = "/error"
plugin = "probe"
[[routes]]
method = "GET"
path = "/error/:kind"
plugin = "probe"
[[routes]]
method = "GET"
path = "/panic"
plugin = "probe"
[[routes]]
method = "GET"
path = "/fetch"
plugin = "probe"
[[routes]]
method = "GET"
path = "/hold/:name"
plugin = "probe"
{extra}
"#,
        probe = plugin("http-probe").display().to_string(),
    )
}

async fn serve(config_text: &str) -> Served {
    let redis = RedisServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config =
        Config::parse(config_text, &dir.path().join("redloom.toml")).expect("valid config");
    Served {
        served: redloom_tests::Served::start(host_options(&redis, dir.path()), config).await,
        redis,
        _dir: dir,
    }
}

/// How long the test origin's `/slow` takes to answer: far past any
/// `outbound-timeout` the tests set.
const SLOW_ORIGIN: Duration = Duration::from_secs(60);

/// A counting origin on a free port: `/users/{id}` for ids 1–3, 404 else
/// (counted in the returned hits); `/slow` answers after [`SLOW_ORIGIN`];
/// `/big/{n}` answers `n` bytes.
async fn origin() -> (SocketAddr, Arc<AtomicUsize>) {
    use axum::extract::Path as P;
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    let app = axum::Router::new()
        .route(
            "/users/{id}",
            axum::routing::get(move |P(id): P<String>| {
                let h = h.clone();
                async move {
                    h.fetch_add(1, Ordering::SeqCst);
                    if ["1", "2", "3"].contains(&id.as_str()) {
                        (axum::http::StatusCode::OK, format!(r#"{{"id":"{id}"}}"#))
                    } else {
                        (axum::http::StatusCode::NOT_FOUND, String::new())
                    }
                }
            }),
        )
        .route(
            "/slow",
            axum::routing::get(|| async {
                tokio::time::sleep(SLOW_ORIGIN).await;
                "late"
            }),
        )
        .route(
            "/big/{n}",
            axum::routing::get(|P(n): P<usize>| async move { "x".repeat(n) }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, hits)
}

/// Routes with parameters and query strings reach the plugin; no route is
/// 404, the wrong method 405.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_and_params() {
    with_timeout(async {
        let s = serve(&probe_config("")).await;
        let c = client();
        let r = c
            .get(s.url("/echo/one/two/three?x=1&x=2&y=a%20b"))
            .header("x-test", "hello")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["x-probe"], "yes");
        let body = r.text().await.unwrap();
        for line in [
            "GET /echo/one/two/three",
            "param a=one",
            "param rest=two/three",
            "query x=1",
            "query x=2",
            "query y=a b",
            "header x-test=hello",
            "body 0",
        ] {
            assert!(
                body.lines().any(|l| l == line),
                "{line:?} missing from:\n{body}"
            );
        }
        // `/echo` with any method.
        let r = c.post(s.url("/echo")).body("abc").send().await.unwrap();
        assert!(r.text().await.unwrap().contains("body 3"));
        assert_eq!(
            c.get(s.url("/nowhere")).send().await.unwrap().status(),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            c.post(s.url("/version")).send().await.unwrap().status(),
            StatusCode::METHOD_NOT_ALLOWED
        );
        s.shutdown().await;
    })
    .await;
}

/// Plugin errors and traps are 500s that reveal nothing, except a
/// backend-unavailable or timeout error (503 with Retry-After); a body
/// over the plugin's max-input is 413; beyond its concurrency, 429 with
/// Retry-After.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_limits_and_quota_statuses() {
    with_timeout(async {
        let config = probe_config("").replace("queue = 0", &format!("queue = 0\n{HOLD_QUOTAS}"));
        let s = serve(&config).await;
        let c = client();
        for path in ["/error", "/panic", "/error/invalid"] {
            let r = c.get(s.url(path)).send().await.unwrap();
            assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR, "{path}");
            let body = r.text().await.unwrap();
            assert!(!body.contains("secret"), "{path} leaked: {body}");
        }
        // A handler that gives up on a backend outage or timeout (the
        // capability's error, returned as is): 503 with Retry-After.
        for path in ["/error/backend", "/error/timeout"] {
            let r = c.get(s.url(path)).send().await.unwrap();
            assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE, "{path}");
            assert!(r.headers().contains_key("retry-after"), "{path}: {r:?}");
            let body = r.text().await.unwrap();
            assert!(!body.contains("secret"), "{path} leaked: {body}");
        }
        let r = c
            .post(s.url("/echo"))
            .body(vec![b'x'; 2048])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
        let r = c
            .post(s.url("/echo"))
            .body(vec![b'x'; 1024])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "exactly max-input is fine");

        // A request holds the plugin's one slot until released.
        let held = s.hold(&c, "busy").await;
        let r = c.get(s.url("/burn/1")).send().await.unwrap();
        assert_eq!(
            r.status(),
            StatusCode::TOO_MANY_REQUESTS,
            "a request beyond the one slot: {}",
            r.text().await.unwrap_or_default()
        );
        assert_eq!(r.headers()["retry-after"], "1");
        s.release("busy").await;
        assert_eq!(
            held.await.unwrap(),
            Ok((StatusCode::OK, "done".to_string()))
        );
        s.shutdown().await;
    })
    .await;
}

/// Outbound HTTP reaches an allowed origin and is denied elsewhere; the
/// get-user example caches what the origin returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_http_and_cache_aside() {
    with_timeout(async {
        let (allowed, hits) = origin().await;
        let (_, denied_hits) = origin().await;
        let extra = format!(
            r#"
[plugins.get-user]
wasm = {get_user:?}
allowed-outbound-hosts = ["http://{allowed}"]
settings = {{ origin = "http://{allowed}", ttl-secs = 300 }}
[[routes]]
method = "GET"
path = "/users/:id"
plugin = "get-user"
"#,
            get_user = plugin("get-user").display().to_string(),
        );
        let s = serve(&probe_config(&extra)).await;
        let c = client();
        // The `probe` plugin has no allowlist: everything is denied.
        let r = c
            .get(s.url(&format!("/fetch?url=http://{allowed}/users/1")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(
            r.text().await.unwrap(),
            format!("denied: http://{allowed} is not in this plugin's allowed-outbound-hosts")
        );
        assert_eq!(hits.load(Ordering::SeqCst), 0);

        let r = c.get(s.url("/users/1")).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["x-cache"], "miss");
        assert_eq!(r.text().await.unwrap(), r#"{"id":"1"}"#);
        let r = c.get(s.url("/users/1")).send().await.unwrap();
        assert_eq!(r.headers()["x-cache"], "hit");
        assert_eq!(
            hits.load(Ordering::SeqCst),
            1,
            "the second request was served from the cache"
        );
        assert_eq!(
            c.get(s.url("/users/9")).send().await.unwrap().status(),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            c.get(s.url("/users/a%20b")).send().await.unwrap().status(),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(denied_hits.load(Ordering::SeqCst), 0);
        s.shutdown().await;
    })
    .await;
}

/// The probe with an allowlist fetches from the allowed origin only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_allowlist() {
    with_timeout(async {
        let (allowed, hits) = origin().await;
        let (other, other_hits) = origin().await;
        let config = probe_config("").replace(
            "[plugins.probe.quotas]",
            &format!("allowed-outbound-hosts = [\"http://{allowed}\"]\n[plugins.probe.quotas]"),
        );
        let s = serve(&config).await;
        let c = client();
        let r = c
            .get(s.url(&format!("/fetch?url=http://{allowed}/users/2")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.text().await.unwrap(), r#"200 {"id":"2"}"#);
        let r = c
            .get(s.url(&format!("/fetch?url=http://{other}/users/2")))
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.text().await.unwrap(),
            format!("denied: http://{other} is not in this plugin's allowed-outbound-hosts")
        );
        assert_eq!(
            (
                hits.load(Ordering::SeqCst),
                other_hits.load(Ordering::SeqCst)
            ),
            (1, 0)
        );
        s.shutdown().await;
    })
    .await;
}

/// Hot reload under continuous requests fails none of them, and the new
/// version answers afterwards; unload stops routing; load brings it back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_reload_unload_and_load() {
    with_timeout(async {
        let config = probe_config("").replace("concurrency = 1\nqueue = 0", "concurrency = 16");
        let s = serve(&config).await;
        let c = client();
        let stop = Arc::new(AtomicBool::new(false));
        // What each client has seen so far: answers "1", answers "2".
        let seen: Arc<[[AtomicUsize; 2]; 4]> = Arc::new(Default::default());
        let workers: Vec<_> = (0..4)
            .map(|w| {
                let (c, url, stop, seen) =
                    (c.clone(), s.url("/version"), stop.clone(), seen.clone());
                tokio::spawn(async move {
                    let (mut ok, mut failed, mut versions) =
                        (0, Vec::new(), std::collections::BTreeSet::new());
                    while !stop.load(Ordering::Relaxed) {
                        match c.get(&url).send().await {
                            Ok(r) if r.status() == StatusCode::OK => {
                                let v = r.text().await.unwrap();
                                if let Some(n) = ["1", "2"].iter().position(|x| *x == v) {
                                    seen[w][n].fetch_add(1, Ordering::SeqCst);
                                }
                                versions.insert(v);
                                ok += 1;
                            }
                            Ok(r) => failed.push(format!("{}", r.status())),
                            Err(e) => failed.push(e.to_string()),
                        }
                    }
                    (ok, failed, versions)
                })
            })
            .collect();
        // Reload once every client has had answers from version 1, and
        // stop once every client has had answers from version 2 (however
        // long the requests take on this machine).
        let wait_until_each = |n: usize, min: usize, what: &'static str| {
            let seen = seen.clone();
            async move {
                let start = Instant::now();
                while !seen.iter().all(|s| s[n].load(Ordering::SeqCst) >= min) {
                    assert!(
                        start.elapsed() < PATIENCE,
                        "not every client saw {what} within {PATIENCE:?}: {seen:?}"
                    );
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        };
        wait_until_each(0, 3, "version 1").await;
        let r = c
            .post(s.admin_url("/plugins/probe/reload"))
            .bearer_auth(s.token())
            .json(&serde_json::json!({"settings": {"version": "2"}}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap());
        wait_until_each(1, 3, "version 2").await;
        stop.store(true, Ordering::Relaxed);
        let mut total = 0;
        for w in workers {
            let (ok, failed, versions) = w.await.unwrap();
            assert!(
                failed.is_empty(),
                "requests failed during the reload: {failed:?}"
            );
            assert!(versions.contains("2"), "{versions:?}");
            total += ok;
        }
        assert!(total > 10, "only {total} requests ran");
        assert_eq!(
            c.get(s.url("/version"))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap(),
            "2"
        );

        // A reload to a file without the HTTP handler is refused; v2 keeps serving.
        let r = c
            .post(s.admin_url("/plugins/probe/reload"))
            .bearer_auth(s.token())
            .json(&serde_json::json!({"wasm": plugin("kv-probe")}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert!(r.text().await.unwrap().contains("http-handler"));
        assert_eq!(
            c.get(s.url("/version"))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap(),
            "2"
        );

        let r = c
            .delete(s.admin_url("/plugins/probe"))
            .bearer_auth(s.token())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let r = c.get(s.url("/version")).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        let list: serde_json::Value = c
            .get(s.admin_url("/plugins"))
            .bearer_auth(s.token())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(
            list,
            serde_json::json!([{
                "name": "probe",
                "wasm": plugin("http-probe"),
                "state": "unloaded",
            }]),
            "an unloaded configured plugin is listed without counters"
        );
        let r = c.get(s.admin_url("/readyz")).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            r.text()
                .await
                .unwrap()
                .contains("plugin probe is not loaded")
        );

        let r = c
            .post(s.admin_url("/plugins"))
            .bearer_auth(s.token())
            .json(&serde_json::json!({"name": "probe"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
        assert_eq!(
            c.get(s.url("/version"))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap(),
            "1"
        );
        assert_eq!(
            c.get(s.admin_url("/readyz")).send().await.unwrap().status(),
            StatusCode::OK
        );
        s.shutdown().await;
    })
    .await;
}

fn counter(text: &str, name: &str, plugin: &str) -> f64 {
    redloom_tests::metric_counter(text, name, plugin)
}

/// `/metrics` parses as Prometheus text and its counters move with traffic;
/// health endpoints answer; `/plugins` needs the token when one is set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_health_and_token() {
    with_timeout(async {
        let config = probe_config("").replace(
            "[admin]\nlisten = \"127.0.0.1:0\"",
            "[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"s3cret\"",
        );
        let s = serve(&config).await;
        let c = client();
        let metrics = || async {
            c.get(s.admin_url("/metrics"))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        };
        let before = counter(&metrics().await, "redloom_invocations_total", "probe");
        for _ in 0..5 {
            assert_eq!(
                c.get(s.url("/version")).send().await.unwrap().status(),
                StatusCode::OK
            );
        }
        assert_eq!(
            c.get(s.url("/error")).send().await.unwrap().status(),
            StatusCode::INTERNAL_SERVER_ERROR
        );
        let text = metrics().await;
        assert_eq!(
            counter(&text, "redloom_invocations_total", "probe") - before,
            6.0
        );
        assert!(
            text.contains(r#"redloom_errors_total{plugin="probe",kind="guest"} 1"#),
            "{text}"
        );
        assert!(
            text.contains("redloom_invocation_duration_seconds_bucket"),
            "{text}"
        );
        assert!(text.contains("redloom_redis_up 1"), "{text}");
        // Redis's own figures, from INFO at the scrape.
        let gauge = |text: &str, name: &str| -> f64 {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
                .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
        };
        assert!(
            gauge(&text, "redloom_redis_used_memory_bytes") > 0.0,
            "{text}"
        );
        assert_eq!(gauge(&text, "redloom_redis_maxmemory_bytes"), 0.0, "{text}");
        let hits = gauge(&text, "redloom_redis_keyspace_hits_total");
        let misses = gauge(&text, "redloom_redis_keyspace_misses_total");
        let mut conn = s.redis.client().await;
        let key = redloom_tests::unique("metrics-hit");
        let _: () = redis::cmd("SET")
            .arg(&key)
            .arg(1)
            .query_async(&mut conn)
            .await
            .unwrap();
        let _: i64 = redis::cmd("GET")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        let _: Option<i64> = redis::cmd("GET")
            .arg(format!("{key}-absent"))
            .query_async(&mut conn)
            .await
            .unwrap();
        let text = metrics().await;
        assert!(
            gauge(&text, "redloom_redis_keyspace_hits_total") > hits,
            "{text}"
        );
        assert!(
            gauge(&text, "redloom_redis_keyspace_misses_total") > misses,
            "{text}"
        );
        assert!(
            text.contains("redloom_redis_evicted_keys_total 0"),
            "{text}"
        );

        assert_eq!(
            c.get(s.admin_url("/healthz"))
                .send()
                .await
                .unwrap()
                .status(),
            StatusCode::OK
        );
        assert_eq!(
            c.get(s.admin_url("/readyz")).send().await.unwrap().status(),
            StatusCode::OK
        );
        assert_eq!(
            c.get(s.admin_url("/plugins"))
                .send()
                .await
                .unwrap()
                .status(),
            StatusCode::UNAUTHORIZED
        );
        let r = c
            .get(s.admin_url("/plugins"))
            .bearer_auth("wrong")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        let list: serde_json::Value = c
            .get(s.admin_url("/plugins"))
            .bearer_auth("s3cret")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(list[0]["name"], "probe");
        assert_eq!(list[0]["state"], "loaded");
        assert_eq!(list[0]["handlers"], serde_json::json!(["http"]));
        assert!(list[0]["invocations"].as_u64().unwrap() >= 6);
        s.shutdown().await;
    })
    .await;
}

/// Shutdown stops accepting but lets a running request finish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_in_flight_requests() {
    with_timeout(async {
        let config = probe_config("")
            .replace("queue = 0", &format!("queue = 0\n{HOLD_QUOTAS}"))
            .replace("shutdown-timeout = \"10s\"", "shutdown-timeout = \"120s\"");
        let s = serve(&config).await;
        let c = client();
        let held = s.hold(&c, "in-flight").await;
        let http = s.served.addr;
        // `s` goes to the shutdown; release through a connection of our own.
        let mut conn = s.redis.client().await;
        let shutdown = tokio::spawn(s.shutdown());
        // The listener closes as the shutdown begins ...
        let start = Instant::now();
        while tokio::net::TcpStream::connect(http).await.is_ok() {
            assert!(
                start.elapsed() < PATIENCE,
                "still accepting {PATIENCE:?} after the shutdown began"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // ... but the shutdown waits for the request in flight.
        assert!(
            !shutdown.is_finished() && !held.is_finished(),
            "the shutdown did not wait for the request in flight"
        );
        let _: () = redis::AsyncCommands::set(&mut conn, "rl:probe:kv:release:in-flight", "1")
            .await
            .unwrap();
        assert_eq!(
            held.await.unwrap(),
            Ok((StatusCode::OK, "done".to_string())),
            "the request in flight at shutdown"
        );
        tokio::time::timeout(PATIENCE, shutdown)
            .await
            .expect("the shutdown ends once the request is done")
            .unwrap();
        assert!(
            client()
                .get(format!("http://{http}/version"))
                .send()
                .await
                .is_err(),
            "still accepting after shutdown"
        );
    })
    .await;
}

/// A route to a plugin without the HTTP handler is refused at start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_to_plugin_without_http_handler_is_refused() {
    with_timeout(async {
        let redis = RedisServer::start().await;
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "[http]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
             [plugins.counter]\nwasm = {:?}\n[[routes]]\npath = \"/count\"\nplugin = \"counter\"\n",
            plugin("visit-counter").display().to_string()
        );
        let config = Config::parse(&text, Path::new(&dir.path().join("redloom.toml"))).unwrap();
        let host = Arc::new(Host::start(host_options(&redis, dir.path())).await.unwrap());
        let e = Server::bind(host, config).await.err().expect("refused");
        assert!(matches!(e, ServeError::Routes(_)), "{e}");
        assert!(
            e.to_string()
                .contains("counter must export redloom:plugin/http-handler"),
            "{e}"
        );
    })
    .await;
}

/// The ip-rate-limit example routed at `GET /search`, a burst of 3 per
/// client and one more each hour, with `settings` (TOML lines).
fn ip_rate_limit_config(settings: &str) -> String {
    format!(
        r#"
[plugins.ip-rate-limit]
wasm = {wasm:?}
[plugins.ip-rate-limit.settings]
{settings}
[plugins.ip-rate-limit.limiters.per-ip]
algorithm = "gcra"
rate = "1/hour"
burst = 3
[[routes]]
method = "GET"
path = "/search"
plugin = "ip-rate-limit"
"#,
        wasm = plugin("ip-rate-limit").display().to_string()
    )
}

/// The seed's per-IP limit over HTTP: `RateLimit-*` headers on every answer,
/// 429 with `Retry-After` once a client's burst is spent; other clients and
/// the direct (proxy-less) client are counted apart, and only trusted
/// `x-forwarded-for` hops count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ip_rate_limit_over_http() {
    with_timeout(async {
        let extra = ip_rate_limit_config("trusted-proxies = 2");
        let s = serve(&probe_config(&extra)).await;
        let c = client();
        let get = |ip: Option<&'static str>| {
            let mut r = c.get(s.url("/search"));
            if let Some(ip) = ip {
                r = r.header("x-forwarded-for", format!("{ip}, 10.0.0.1"));
            }
            r.send()
        };
        let first = Instant::now();
        for remaining in ["2", "1", "0"] {
            let r = get(Some("203.0.113.7")).await.unwrap();
            assert_eq!(r.status(), StatusCode::OK);
            assert_eq!(r.headers()["ratelimit-limit"], "3");
            assert_eq!(r.headers()["ratelimit-remaining"], remaining);
            assert!(r.headers().get("retry-after").is_none());
        }
        let r = get(Some("203.0.113.7")).await.unwrap();
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        let retry: u64 = r.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        // The first unit comes back an hour after it was spent, less the
        // time these requests took (measured: a slow machine may take a
        // while), rounded up to a whole second.
        let spent = first.elapsed().as_secs();
        assert!(
            (3600 - spent - 1..=3600).contains(&retry),
            "Retry-After {retry} s, {spent} s after the first request"
        );
        assert!(r.headers().contains_key("ratelimit-reset"));
        assert_eq!(
            get(Some("198.51.100.1")).await.unwrap().status(),
            StatusCode::OK
        );
        assert_eq!(
            get(None).await.unwrap().status(),
            StatusCode::OK,
            "the direct client has its own budget"
        );
        // Only the two trusted hops count: a forged address further left
        // does not buy a client a fresh budget.
        for _ in 0..3 {
            let r = c
                .get(s.url("/search"))
                .header("x-forwarded-for", "6.6.6.6, 203.0.113.7, 10.0.0.1")
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        }
        s.shutdown().await;
    })
    .await;
}

/// The get-user-cached example routed at `/cached/users/:id`, reading
/// `origin_addr`, with a fresh TTL of `ttl_secs` and 60 s of staleness.
fn get_user_cached_config(origin_addr: std::net::SocketAddr, ttl_secs: u64) -> String {
    format!(
        r#"
[plugins.get-user-cached]
wasm = {wasm:?}
allowed-outbound-hosts = ["http://{origin_addr}"]
settings = {{ origin = "http://{origin_addr}", ttl-secs = {ttl_secs}, stale-secs = 60 }}
[plugins.get-user-cached.quotas]
concurrency = 32
queue = 64
[[routes]]
method = "GET"
path = "/cached/users/:id"
plugin = "get-user-cached"
"#,
        wasm = plugin("get-user-cached").display().to_string()
    )
}

/// The cache-capability getUser example over HTTP: concurrent requests for a
/// cold user reach the origin once; later ones are hits; unknown users are
/// cached as 404s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_user_cached_example() {
    with_timeout(async {
        let (origin_addr, hits) = origin().await;
        let extra = get_user_cached_config(origin_addr, 300);
        let s = serve(&probe_config(&extra)).await;
        let c = client();
        let requests: Vec<_> = (0..20)
            .map(|_| {
                let (c, url) = (c.clone(), s.url("/cached/users/3"));
                tokio::spawn(async move {
                    let r = c.get(url).send().await.unwrap();
                    (r.status(), r.text().await.unwrap())
                })
            })
            .collect();
        for r in requests {
            let (status, body) = r.await.unwrap();
            assert_eq!(status, StatusCode::OK);
            assert_eq!(body, r#"{"id":"3"}"#);
        }
        assert_eq!(
            hits.load(Ordering::SeqCst),
            1,
            "one origin call for 20 concurrent requests"
        );
        let r = c.get(s.url("/cached/users/3")).send().await.unwrap();
        assert_eq!(r.headers()["x-cache"], "hit");
        assert_eq!(
            c.get(s.url("/cached/users/77"))
                .send()
                .await
                .unwrap()
                .status(),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            c.get(s.url("/cached/users/77"))
                .send()
                .await
                .unwrap()
                .status(),
            StatusCode::NOT_FOUND
        );
        assert_eq!(hits.load(Ordering::SeqCst), 2, "the 404 was cached");
        s.shutdown().await;
    })
    .await;
}

/// `[plugins.probe.limiters.per-ip]` with a budget no test spends: lets the
/// probe be reloaded from the ip-rate-limit example, which answers any path
/// with `hello <client>, you asked for <path>`.
const GREETER_LIMITER: &str = r#"
[plugins.probe.limiters.per-ip]
algorithm = "gcra"
rate = "100000/s"
burst = 100000
"#;

/// Reloading a routed plugin from another component under continuous
/// requests: a slow request that started on the old component finishes
/// there, no request fails, each client sees the old answers and then only
/// the new ones, and new requests reach the new component.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_reload_to_another_component() {
    with_timeout(async {
        let config = probe_config(GREETER_LIMITER).replace(
            "concurrency = 1\nqueue = 0",
            &format!("concurrency = 16\n{HOLD_QUOTAS}"),
        );
        let s = serve(&config).await;
        let c = client();
        let is_new = |body: &str| body == "hello 127.0.0.1, you asked for /version\n";
        let stop = Arc::new(AtomicBool::new(false));
        // Answers so far, all clients together: old, new.
        let seen: Arc<[AtomicUsize; 2]> = Arc::new(Default::default());
        // Clients that have had an answer from the new component.
        let switched = Arc::new(AtomicUsize::new(0));
        let workers: Vec<_> = (0..4)
            .map(|_| {
                let (c, url, stop) = (c.clone(), s.url("/version"), stop.clone());
                let (seen, switched) = (seen.clone(), switched.clone());
                tokio::spawn(async move {
                    let (mut old, mut new, mut failed) = (0, 0, Vec::new());
                    while !stop.load(Ordering::Relaxed) {
                        let answer = match c.get(&url).send().await {
                            Ok(r) => (r.status(), r.text().await.unwrap_or_default()),
                            Err(e) => (StatusCode::IM_A_TEAPOT, e.to_string()),
                        };
                        match answer {
                            (StatusCode::OK, body) if body == "1" && new == 0 => {
                                old += 1;
                                seen[0].fetch_add(1, Ordering::SeqCst);
                            }
                            (StatusCode::OK, body) if is_new(&body) => {
                                new += 1;
                                seen[1].fetch_add(1, Ordering::SeqCst);
                                if new == 1 {
                                    switched.fetch_add(1, Ordering::SeqCst);
                                }
                            }
                            other => failed.push(other),
                        }
                    }
                    (old, new, failed)
                })
            })
            .collect();
        // Waits until `done()` holds, or fails saying what was seen.
        let wait = |what: &'static str, done: Box<dyn Fn() -> bool + Send>| {
            let (seen, switched) = (seen.clone(), switched.clone());
            async move {
                let start = Instant::now();
                while !done() {
                    assert!(
                        start.elapsed() < PATIENCE,
                        "{what} not within {PATIENCE:?}: (old, new) answers {seen:?}, \
                         {switched:?} clients switched"
                    );
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        };
        let counts = seen.clone();
        wait(
            "6 answers from the old component",
            Box::new(move || counts[0].load(Ordering::SeqCst) > 5),
        )
        .await;
        // A request on the old component, held until after the swap.
        let slow = s.hold(&c, "across-the-swap").await;
        let r = c
            .post(s.admin_url("/plugins/probe/reload"))
            .bearer_auth(s.token())
            .json(&serde_json::json!({"wasm": plugin("ip-rate-limit")}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap());
        assert!(
            !slow.is_finished(),
            "the held request ended before the swap; the test proves nothing"
        );
        let r = c.get(s.url("/version")).send().await.unwrap();
        let body = r.text().await.unwrap();
        assert!(is_new(&body), "the new component answers: {body:?}");
        let (counts, clients) = (seen.clone(), switched.clone());
        wait(
            "every client on the new component, 6 new answers",
            Box::new(move || {
                clients.load(Ordering::SeqCst) == 4 && counts[1].load(Ordering::SeqCst) > 5
            }),
        )
        .await;
        stop.store(true, Ordering::Relaxed);
        let (mut old_total, mut new_total) = (0, 0);
        for w in workers {
            let (old, new, failed) = w.await.unwrap();
            assert!(
                failed.is_empty(),
                "failed or out-of-order answers during the swap: {failed:?}"
            );
            assert!(new > 0, "a client never saw the new component");
            (old_total, new_total) = (old_total + old, new_total + new);
        }
        assert!(
            old_total > 5 && new_total > 5,
            "too few requests: {old_total} old, {new_total} new"
        );
        // The new component would have greeted; "done" is the old one's answer.
        s.release("across-the-swap").await;
        assert_eq!(
            slow.await.unwrap(),
            Ok((StatusCode::OK, "done".to_string()))
        );
        let list: serde_json::Value = c
            .get(s.admin_url("/plugins"))
            .bearer_auth(s.token())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(
            list[0]["wasm"],
            serde_json::json!(plugin("ip-rate-limit")),
            "{list}"
        );
        assert_eq!(
            list[0]["handlers"],
            serde_json::json!(["invoke", "http"]),
            "{list}"
        );
        s.shutdown().await;
    })
    .await;
}

/// The `outbound-timeout` of `outbound_timeout_and_reply_limit`: long
/// enough that the requests meant to succeed do on a loaded machine.
const OUTBOUND_TIMEOUT: Duration = Duration::from_secs(2);

/// Outbound HTTP is bounded: an origin slower than `outbound-timeout` is a
/// `timeout` error naming it, in about the timeout; a body over `max-reply`
/// fails the invocation with the payload quota (503 with `Retry-After`)
/// and a message naming the origin and the limit; a body of exactly
/// `max-reply` and a normal exchange work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_timeout_and_reply_limit() {
    with_timeout(async {
        let (o, _) = origin().await;
        let config = probe_config("").replace(
            "[plugins.probe.quotas]",
            &format!(
                "allowed-outbound-hosts = [\"http://{o}\"]\n[plugins.probe.quotas]\n\
                 outbound-timeout = \"{}ms\"\nmax-reply = \"16KiB\"\nwall-time = \"60s\"",
                OUTBOUND_TIMEOUT.as_millis()
            ),
        );
        let s = serve(&config).await;
        let c = client();
        let fetch = |url: String| {
            let c = c.clone();
            let probe = s.url(&format!("/fetch?url={url}"));
            async move {
                let r = c.get(probe).send().await.unwrap();
                let status = r.status();
                let retry = r.headers().get("retry-after").cloned();
                (status, retry, r.text().await.unwrap())
            }
        };

        let (status, _, body) = fetch(format!("http://{o}/users/1")).await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::OK, r#"200 {"id":"1"}"#)
        );
        let (status, _, body) = fetch(format!("http://{o}/big/16384")).await;
        assert_eq!(status, StatusCode::OK, "exactly max-reply is fine");
        assert_eq!(body.len(), "200 ".len() + 16384);

        let started = Instant::now();
        let (status, _, body) = fetch(format!("http://{o}/slow")).await;
        let took = started.elapsed();
        assert_eq!(status, StatusCode::BAD_GATEWAY);
        assert_eq!(body, format!("timeout: http://{o} did not answer in time"));
        // At the timeout, not before; the upper bound is 10x the timeout
        // (a slow machine adds to it) and far below the origin's delay.
        assert!(
            took >= OUTBOUND_TIMEOUT - Duration::from_millis(50) && took < OUTBOUND_TIMEOUT * 10,
            "the timeout of {OUTBOUND_TIMEOUT:?} took {took:?}"
        );

        let (status, retry, body) = fetch(format!("http://{o}/big/16385")).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert_eq!(retry.unwrap(), "1");
        // The same request straight to the host shows the error behind the 503.
        let request = redloom::bindings::http_types::Request {
            method: "GET".into(),
            path: "/fetch".into(),
            params: Vec::new(),
            query: vec![("url".into(), format!("http://{o}/big/20000"))],
            headers: Vec::new(),
            body: Vec::new(),
            client_addr: "127.0.0.1:1".into(),
        };
        let probe = redloom::namespace::PluginName::parse("probe").unwrap();
        let e = s
            .served
            .host
            .handle_http(&probe, &request)
            .await
            .err()
            .unwrap();
        assert_eq!(
            e.to_string(),
            format!(
                "plugin probe exceeded its payload quota: the response from http://{o} \
                 is over max-reply (16384 bytes)"
            )
        );
        let list: serde_json::Value = c
            .get(s.admin_url("/plugins"))
            .bearer_auth(s.token())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(list[0]["quota_rejections"]["payload"], 2, "{list}");
        s.shutdown().await;
    })
    .await;
}

/// The `wall-time` of `other_quota_rejections_have_retry_after`: long
/// enough for the requests meant to succeed on a loaded machine.
const WALL_TIME: Duration = Duration::from_secs(2);

/// Quota rejections besides concurrency: a request past its `wall-time`
/// answers 503 and one over `redis-rate` 429, both with `Retry-After`; the
/// rejections are counted per quota and the plugin keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_quota_rejections_have_retry_after() {
    with_timeout(async {
        let extra = "[[routes]]\nmethod = \"GET\"\npath = \"/incr/:n\"\nplugin = \"probe\"\n";
        let config = probe_config(extra).replace(
            "concurrency = 1\nqueue = 0",
            &format!(
                "concurrency = 1\nqueue = 0\nwall-time = \"{}ms\"\ncpu = \"60s\"\nredis-rate = 1",
                WALL_TIME.as_millis()
            ),
        );
        let s = serve(&config).await;
        let c = client();
        let key = redloom_tests::unique("incr");

        // Guest code for 30 s (the CPU quota allows it): only the wall-time
        // stops it, after WALL_TIME; the upper bound is 10x that, and a
        // third of the burn.
        let started = Instant::now();
        let r = c.get(s.url("/burn/30000")).send().await.unwrap();
        let took = started.elapsed();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()["retry-after"], "1");
        assert_eq!(r.text().await.unwrap(), "service unavailable");
        assert!(
            took >= WALL_TIME && took < WALL_TIME * 10,
            "wall-time {WALL_TIME:?} did not stop the request in time: {took:?}"
        );

        // One command a second: the first goes through, and a command that
        // would wait for the bucket longer than a command may (250 ms)
        // fails. Ten in a row: unless every one came over 0.75 s after the
        // one before, one of them has to wait too long.
        let r = c
            .get(s.url(&format!("/incr/10?key={key}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS, "{key}");
        assert_eq!(r.headers()["retry-after"], "1");

        let r = c.get(s.url("/version")).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let list: serde_json::Value = c
            .get(s.admin_url("/plugins"))
            .bearer_auth(s.token())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(list[0]["quota_rejections"]["wall-time"], 1, "{list}");
        assert_eq!(list[0]["quota_rejections"]["redis-rate"], 1, "{list}");
        s.shutdown().await;
    })
    .await;
}

/// An origin whose `/users/{id}` answers `{"id":…,"v":N}`, N counting its
/// calls, after the returned delay (milliseconds, 0 at first).
async fn versioned_origin() -> (SocketAddr, Arc<AtomicUsize>, Arc<AtomicU64>) {
    use axum::extract::Path as P;
    let (hits, delay) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicU64::new(0)));
    let (h, d) = (hits.clone(), delay.clone());
    let app = axum::Router::new().route(
        "/users/{id}",
        axum::routing::get(move |P(id): P<String>| {
            let (h, d) = (h.clone(), d.clone());
            async move {
                let n = h.fetch_add(1, Ordering::SeqCst) + 1;
                tokio::time::sleep(Duration::from_millis(d.load(Ordering::SeqCst))).await;
                format!(r#"{{"id":"{id}","v":{n}}}"#)
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, hits, delay)
}

/// Stale-while-revalidate in the get-user-cached example: past `ttl-secs`,
/// concurrent requests get the stale value at once (`x-cache: stale`) while
/// exactly one refresh reaches the (slow) origin and answers the new value
/// (`x-cache: refresh`); afterwards the new value is a fresh hit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_user_cached_stale_while_revalidate() {
    with_timeout(async {
        let (origin_addr, hits, delay) = versioned_origin().await;
        // Fresh for 3 s: room for the hit right after the miss on a slow
        // machine. The refresh lease (10 s by default) outlasts the slow
        // origin below; the plugin's own bounds do too.
        let ttl = Duration::from_secs(3);
        let extra = get_user_cached_config(origin_addr, ttl.as_secs()).replace(
            "queue = 64",
            "queue = 64\nwall-time = \"60s\"\noutbound-timeout = \"30s\"",
        );
        let s = serve(&probe_config(&extra)).await;
        let c = client();
        let get = |c: reqwest::Client, url: String| async move {
            let started = Instant::now();
            let r = c.get(url).send().await.unwrap();
            assert_eq!(r.status(), StatusCode::OK);
            let cache = r.headers()["x-cache"].to_str().unwrap().to_string();
            (cache, r.text().await.unwrap(), started.elapsed())
        };
        let url = s.url("/cached/users/1");
        let v1 = r#"{"id":"1","v":1}"#;
        let asked = Instant::now();
        let (cache, body, _) = get(c.clone(), url.clone()).await;
        let filled = Instant::now();
        assert_eq!((cache.as_str(), body.as_str()), ("miss", v1));
        let (cache, body, _) = get(c.clone(), url.clone()).await;
        assert_eq!(
            (cache.as_str(), body.as_str()),
            ("hit", v1),
            "{:?} after the miss was asked for, with a fresh time of {ttl:?}",
            asked.elapsed()
        );

        // Past the fresh time (counted from when the miss was answered, so
        // surely after the fill), with an origin that takes 4 s.
        tokio::time::sleep_until((filled + ttl + Duration::from_millis(500)).into()).await;
        let origin_time = Duration::from_secs(4);
        delay.store(origin_time.as_millis() as u64, Ordering::SeqCst);
        let requests: Vec<_> = (0..8)
            .map(|_| tokio::spawn(get(c.clone(), url.clone())))
            .collect();
        let mut answers = Vec::new();
        for r in requests {
            answers.push(r.await.unwrap());
        }
        let (refreshed, stale): (Vec<_>, Vec<_>) =
            answers.iter().partition(|(cache, _, _)| cache == "refresh");
        assert_eq!(refreshed.len(), 1, "one request refreshes: {answers:?}");
        assert_eq!(refreshed[0].1, r#"{"id":"1","v":2}"#);
        assert!(refreshed[0].2 >= origin_time, "{answers:?}");
        // A stale answer comes at once: well under half the origin's time
        // (and over 10x what it takes on a loaded machine).
        for (cache, body, took) in &stale {
            assert_eq!((cache.as_str(), body.as_str()), ("stale", v1));
            assert!(
                *took < origin_time / 2,
                "a stale answer waited for the refresh: {answers:?}"
            );
        }
        assert_eq!(hits.load(Ordering::SeqCst), 2, "exactly one refresh");

        delay.store(0, Ordering::SeqCst);
        let (cache, body, _) = get(c.clone(), url.clone()).await;
        assert_eq!(
            (cache.as_str(), body.as_str()),
            ("hit", r#"{"id":"1","v":2}"#)
        );
        assert_eq!(hits.load(Ordering::SeqCst), 2);
        s.shutdown().await;
    })
    .await;
}

/// `serve` warns at start when a plugin uses the cache on a Redis that
/// will not evict (`noeviction`, the default), naming the plugin; not when
/// the policy evicts, and not when no plugin uses the cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warns_when_the_cache_runs_on_a_redis_that_does_not_evict() {
    with_timeout(async {
        let redis = RedisServer::start().await;
        let dir = tempfile::tempdir().unwrap();
        let host = redloom_tests::host(&redis, dir.path()).await;
        host.load(redloom_tests::spec("counter", "kv-probe"))
            .await
            .unwrap();
        assert_eq!(redloom::serve::cache_eviction_warning(&host).await, None);
        host.load(redloom_tests::spec("pages", "cache-probe"))
            .await
            .unwrap();
        let warning = redloom::serve::cache_eviction_warning(&host)
            .await
            .expect("a warning on noeviction");
        assert!(
            warning.contains("plugins pages use the cache")
                && warning.contains("noeviction")
                && !warning.contains("counter"),
            "{warning}"
        );
        let mut conn = redis.client().await;
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg("maxmemory-policy")
            .arg("allkeys-lru")
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(redloom::serve::cache_eviction_warning(&host).await, None);
        host.shutdown().await;
    })
    .await;
}

/// Every query of the Grafana dashboard in `deploy/grafana/` and every
/// alert rule in `deploy/prometheus/` work against a real Prometheus
/// scraping a real `serve` that runs HTTP, cache, limiter, lock and queue
/// traffic: each dashboard query returns data (the patterns' counters
/// count what the traffic did), `promtool` accepts the rules and
/// Prometheus evaluates every one of them without an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_and_alerts_in_prometheus() {
    with_timeout(async {
        let root = redloom_tests::workspace_root();
        let rules = root.join("deploy/prometheus/redloom-alerts.yml");
        let check = redloom_tests::run_with_timeout(
            std::process::Command::new("promtool")
                .arg("check")
                .arg("rules")
                .arg(&rules),
            Duration::from_secs(60),
        );
        assert!(
            check.status.success(),
            "promtool check rules:\n{}{}",
            String::from_utf8_lossy(&check.stdout),
            String::from_utf8_lossy(&check.stderr)
        );

        let (origin_addr, _) = origin().await;
        let extra = format!(
            r#"{cached}{limited}
[plugins.reserve-inventory]
wasm = {inventory:?}
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
"#,
            cached = get_user_cached_config(origin_addr, 300),
            limited = ip_rate_limit_config(""),
            inventory = plugin("reserve-inventory").display().to_string(),
            producer = plugin("video-producer").display().to_string(),
            worker = plugin("video-worker").display().to_string(),
        );
        let s = serve(&probe_config(&extra)).await;
        let prometheus = redloom_tests::Prometheus::start(s.served.admin, &rules).await;

        // Traffic for every panel: HTTP calls, cache misses and hits, limiter
        // checks past the burst, locks taken, queue messages consumed.
        let c = client();
        for path in [
            "/version",
            "/cached/users/1",
            "/cached/users/1",
            "/cached/users/77",
        ] {
            let r = c.get(s.url(path)).send().await.unwrap();
            assert!(r.status().as_u16() < 500, "{path}: {r:?}");
        }
        let mut denied = 0;
        for _ in 0..5 {
            let r = c.get(s.url("/search")).send().await.unwrap();
            denied += usize::from(r.status() == StatusCode::TOO_MANY_REQUESTS);
        }
        assert_eq!(denied, 2, "a burst of 3");
        let inventory = redloom::namespace::PluginName::parse("reserve-inventory").unwrap();
        for input in [
            r#"{"sku":"A1","restock":10}"#,
            r#"{"sku":"A1","reserve":2,"order":"o-1"}"#,
        ] {
            s.served
                .host
                .invoke(&inventory, input.as_bytes())
                .await
                .unwrap_or_else(|e| panic!("{input}: {e}"));
        }
        for n in 0..3 {
            let r = c
                .post(s.url("/videos"))
                .header("idempotency-key", format!("upload-{n}"))
                .body(format!("s3://videos/{n}.mp4"))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::ACCEPTED, "{r:?}");
        }

        // The counters say what happened (read through Prometheus).
        let value = |v: &serde_json::Value| -> f64 { v["value"][1].as_str().unwrap().parse().unwrap() };
        for (expr, want) in [
            (r#"redloom_cache_lookups_total{plugin="get-user-cached",result="miss"}"#, 2.0),
            (r#"redloom_cache_lookups_total{plugin="get-user-cached",result="fresh"}"#, 1.0),
            (r#"redloom_limiter_decisions_total{plugin="ip-rate-limit",decision="denied"}"#, 2.0),
            (r#"redloom_lock_acquisitions_total{plugin="reserve-inventory",result="acquired"}"#, 2.0),
            (r#"redloom_invocation_duration_seconds_count{plugin="video-worker",handler="queue"}"#, 3.0),
        ] {
            redloom_tests::until(expr, || async {
                match prometheus.query(expr).await.first().map(value) {
                    Some(v) if v == want => Ok(()),
                    other => Err(format!("{other:?}, want {want}")),
                }
            })
            .await;
        }

        // Every dashboard query returns data. Grafana's variables: the rate
        // window and "all plugins".
        let dashboard: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(root.join("deploy/grafana/redloom.json")).unwrap(),
        )
        .unwrap();
        let exprs: Vec<String> = dashboard["panels"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
            .map(|t| t["expr"].as_str().unwrap().to_string())
            .collect();
        assert!(exprs.len() >= 25, "{} queries", exprs.len());
        for expr in &exprs {
            let q = expr
                .replace("$__rate_interval", "1m")
                .replace("$plugin", ".*");
            redloom_tests::until(&format!("data for {q}"), || async {
                let result = prometheus.query(&q).await;
                if result.is_empty() {
                    Err("no series".to_string())
                } else {
                    Ok(())
                }
            })
            .await;
        }

        // Every rule is loaded and evaluates without an error.
        let rule_count = std::fs::read_to_string(&rules)
            .unwrap()
            .matches("- alert:")
            .count();
        let rules = redloom_tests::until("every alert rule evaluated", || async {
            let data = prometheus.api("rules", &[]).await;
            let rules: Vec<serde_json::Value> = data["groups"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
                .collect();
            let bad: Vec<&serde_json::Value> =
                rules.iter().filter(|r| r["health"] != "ok").collect();
            if rules.len() == rule_count && bad.is_empty() {
                Ok(rules)
            } else {
                Err(format!("{} of {rule_count} loaded; not ok: {bad:?}", rules.len()))
            }
        })
        .await;
        // Each alert's expression also answers a query of its own (empty
        // unless it fires; `api` fails the test on an error answer).
        for rule in &rules {
            let expr = rule["query"].as_str().expect("a rule's query");
            prometheus.query(expr).await;
        }
        drop(prometheus);
        s.shutdown().await;
    })
    .await;
}
