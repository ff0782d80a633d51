//! Attacks that a hostile plugin or client once got through, each contained
//! now: response splitting through a plugin's framing headers, oversized
//! headers, protocol-switching statuses. Each test makes the attack and
//! checks what the victim (another request, another plugin, the host) sees.

use std::net::SocketAddr;
use std::time::Duration;

use redloom::config::Config;
use redloom_tests::{RedisServer, host_options, plugin, with_timeout};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A `serve` with the http-probe plugin as `probe` on `routes` (GET), and
/// `extra` TOML appended.
struct Served {
    served: redloom_tests::Served,
    _redis: RedisServer,
    _dir: tempfile::TempDir,
}

impl Served {
    async fn start(routes: &[&str], extra: &str) -> Served {
        let redis = RedisServer::start_standalone().await;
        let dir = tempfile::tempdir().unwrap();
        let mut text = format!(
            "[http]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
             [plugins.probe]\nwasm = {:?}\n",
            plugin("http-probe").display().to_string()
        );
        for r in routes {
            text.push_str(&format!(
                "[[routes]]\nmethod = \"GET\"\npath = {r:?}\nplugin = \"probe\"\n"
            ));
        }
        text.push_str(extra);
        let config = Config::parse(&text, &dir.path().join("redloom.toml")).expect("valid config");
        Served {
            served: redloom_tests::Served::start(host_options(&redis, dir.path()), config).await,
            _redis: redis,
            _dir: dir,
        }
    }

    fn addr(&self) -> SocketAddr {
        self.served.addr
    }

    async fn shutdown(self) {
        let host = self.served.host.clone();
        self.served.shutdown().await;
        host.shutdown().await;
    }
}

/// One HTTP/1.1 response as read off the wire: status, headers (names
/// lowercase) and the body that its own `content-length` frames.
#[derive(Debug)]
struct WireResponse {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl WireResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Reads one response from `conn` the way a client or proxy reusing the
/// connection does: headers up to the blank line, then exactly
/// `content-length` bytes. Bounded: 10 s and 1 MiB of headers.
async fn read_response(conn: &mut TcpStream) -> WireResponse {
    let read = async {
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut b = [0u8; 1];
            let n = conn.read(&mut b).await.expect("read");
            assert!(
                n == 1,
                "connection closed after {:?}",
                String::from_utf8_lossy(&head)
            );
            head.push(b[0]);
            assert!(head.len() < 1 << 20, "endless headers");
        }
        let text = String::from_utf8(head).expect("ASCII headers");
        let mut lines = text.split("\r\n");
        let status: u16 = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no status line in {text:?}"));
        let headers: Vec<(String, String)> = lines
            .filter(|l| !l.is_empty())
            .map(|l| {
                let (k, v) = l.split_once(':').expect("header line");
                (k.trim().to_ascii_lowercase(), v.trim().to_string())
            })
            .collect();
        let len: usize = headers
            .iter()
            .find(|(k, _)| k == "content-length")
            .map(|(_, v)| v.parse().expect("numeric content-length"))
            .unwrap_or_else(|| panic!("no content-length in {headers:?}"));
        let mut body = vec![0u8; len];
        conn.read_exact(&mut body).await.expect("body");
        WireResponse {
            status,
            headers,
            body,
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("a response within 10 s")
}

/// A plugin's `content-length: 5` on a longer body (plus
/// `transfer-encoding`, `connection`, `upgrade` and the other hop-by-hop
/// headers) does not reach the client: the host frames the whole body, so
/// the next response on the kept-alive connection is the host's own answer
/// to the next request, not the rest of the plugin's body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_framing_headers_cannot_split_responses() {
    with_timeout(async {
        let served = Served::start(&["/forge", "/echo"], "").await;
        let mut conn = TcpStream::connect(served.addr()).await.unwrap();
        // Two requests on one connection, as a reverse proxy reusing an
        // upstream connection sends them.
        conn.write_all(
            b"GET /forge HTTP/1.1\r\nhost: redloom\r\n\r\n\
              GET /echo HTTP/1.1\r\nhost: redloom\r\n\r\n",
        )
        .await
        .unwrap();
        let first = read_response(&mut conn).await;
        let body = String::from_utf8_lossy(&first.body);
        assert_eq!(first.status, 200, "{first:?}");
        assert!(
            body.starts_with("hello") && body.ends_with("forged"),
            "the first response carries the plugin's whole body: {first:?}"
        );
        for name in [
            "transfer-encoding",
            "connection",
            "keep-alive",
            "upgrade",
            "te",
            "trailer",
            "proxy-connection",
        ] {
            assert_eq!(
                first.header(name),
                None,
                "{name} reached the client: {first:?}"
            );
        }
        assert_eq!(first.header("x-kept"), Some("yes"), "{first:?}");

        let second = read_response(&mut conn).await;
        assert_eq!(
            second.header("x-forged"),
            None,
            "a forged response: {second:?}"
        );
        assert_eq!(second.header("x-probe"), Some("yes"), "{second:?}");
        assert!(
            String::from_utf8_lossy(&second.body).starts_with("GET /echo"),
            "the second response answers the second request: {second:?}"
        );
        served.shutdown().await;
    })
    .await;
}

/// Response headers count towards `max-output`: a 2 MiB header with a
/// 1 MiB limit is refused like a 2 MiB body (503, counted as a `payload`
/// quota breach), and never sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_headers_count_towards_max_output() {
    with_timeout(async {
        let served = Served::start(
            &["/big-header/:kib"],
            "[plugins.probe.quotas]\nmax-output = \"1MiB\"\n",
        )
        .await;
        let client = reqwest::Client::new();
        let url = |kib: u32| format!("http://{}/big-header/{kib}", served.addr());
        let small = client.get(url(4)).send().await.unwrap();
        assert_eq!(small.status(), 200);
        assert_eq!(small.headers()["x-big"].len(), 4 << 10);
        let big = client.get(url(2048)).send().await.unwrap();
        assert_eq!(big.status(), 503, "{big:?}");
        assert!(big.headers().get("x-big").is_none(), "{big:?}");
        let stats = served
            .served
            .host
            .plugin(&redloom::namespace::PluginName::parse("probe").unwrap())
            .unwrap()
            .stats();
        assert_eq!(stats.rejections_of("payload"), 1, "{stats:?}");
        served.shutdown().await;
    })
    .await;
}

/// A plugin cannot answer with an informational status (101 would switch
/// the connection's protocol, 1xx leave the client waiting for a final
/// answer): those are a 500.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn informational_statuses_are_refused() {
    with_timeout(async {
        let served = Served::start(&["/status/:code"], "").await;
        let client = reqwest::Client::new();
        for code in [100, 101, 103] {
            let r = client
                .get(format!("http://{}/status/{code}", served.addr()))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 500, "status {code} from the plugin: {r:?}");
        }
        let r = client
            .get(format!("http://{}/status/204", served.addr()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204);
        served.shutdown().await;
    })
    .await;
}

fn name(s: &str) -> redloom::namespace::PluginName {
    redloom::namespace::PluginName::parse(s).unwrap()
}

/// A host on a fresh standalone Redis, with its data folder.
struct Bare {
    host: std::sync::Arc<redloom::host::Host>,
    redis: RedisServer,
    _dir: tempfile::TempDir,
}

async fn bare() -> Bare {
    let redis = RedisServer::start_standalone().await;
    let dir = tempfile::tempdir().unwrap();
    let host = std::sync::Arc::new(redloom_tests::host(&redis, dir.path()).await);
    Bare {
        host,
        redis,
        _dir: dir,
    }
}

/// The quota an invocation failed on, or a panic naming what happened.
fn quota_of(r: Result<Vec<u8>, redloom::host::HostInvokeError>) -> redloom::quota::Quota {
    match r {
        Err(redloom::host::HostInvokeError::Invoke(e)) => e
            .quota()
            .unwrap_or_else(|| panic!("not a quota error: {e}")),
        Err(e) => panic!("not a quota error: {e}"),
        Ok(out) => panic!("succeeded: {}", String::from_utf8_lossy(&out)),
    }
}

/// Waits (bounded) until `done` holds, polling every 20 ms.
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(std::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A guest that loops over a host call that never waits (`config::get`)
/// spends its CPU in the host: it is charged for it and stopped by its
/// `cpu` quota, long before its wall-time deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cpu_spent_in_host_calls_is_charged() {
    use redloom::quota::Quota;
    with_timeout(async {
        let b = bare().await;
        let mut s = redloom_tests::spec("looper", "hostile");
        s.quotas.cpu = Duration::from_millis(300);
        s.quotas.wall_time = Duration::from_secs(60);
        b.host.load(s).await.unwrap();
        let started = std::time::Instant::now();
        let q = quota_of(b.host.invoke(&name("looper"), b"host-loop").await);
        let took = started.elapsed();
        assert_eq!(q, Quota::Cpu, "stopped after {took:?}");
        assert!(took < Duration::from_secs(30), "took {took:?}");
        let stats = b.host.plugin(&name("looper")).unwrap().stats();
        assert!(
            stats.guest_cpu >= Duration::from_millis(300),
            "charged {:?}",
            stats.guest_cpu
        );
    })
    .await;
}

/// An invocation whose caller goes away (the task awaiting it is dropped,
/// as when an HTTP client hangs up) is counted as `cancelled`, with the
/// CPU it used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_invocations_are_counted() {
    with_timeout(async {
        let b = bare().await;
        let mut s = redloom_tests::spec("holder", "hostile");
        s.quotas.wall_time = Duration::from_secs(120);
        b.host.load(s).await.unwrap();
        let (release, mark) = (
            redloom_tests::unique("release"),
            redloom_tests::unique("mark"),
        );
        let host = b.host.clone();
        let input = format!("hold {release} {mark}");
        let task =
            tokio::spawn(async move { host.invoke(&name("holder"), input.as_bytes()).await });
        let mut conn = b.redis.client().await;
        let running = redloom_tests::wait_for(
            &mut conn,
            &format!("rl:holder:kv:{mark}"),
            1,
            Duration::from_secs(60),
        )
        .await;
        assert_eq!(running, 1, "the invocation runs");
        task.abort();
        let plugin = b.host.plugin(&name("holder")).unwrap();
        until("the cancelled invocation is counted", || {
            plugin.stats().errors_of("cancelled") == 1
        })
        .await;
        let stats = plugin.stats();
        assert_eq!(stats.invocations, 1, "{stats:?}");
        assert!(stats.guest_cpu > Duration::ZERO, "{stats:?}");
    })
    .await;
}

/// An HTTP client that hangs up mid-request cancels the invocation, and
/// `/metrics` counts it as `cancelled`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_up_http_requests_are_counted() {
    with_timeout(async {
        let served =
            Served::start(&["/hold"], "[plugins.probe.quotas]\nwall-time = \"120s\"\n").await;
        let (mark, release) = (
            redloom_tests::unique("mark"),
            redloom_tests::unique("release"),
        );
        let mut conn = TcpStream::connect(served.addr()).await.unwrap();
        conn.write_all(
            format!("GET /hold?mark={mark}&release={release} HTTP/1.1\r\nhost: redloom\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
        let mut redis = served._redis.client().await;
        let running = redloom_tests::wait_for(
            &mut redis,
            &format!("rl:probe:kv:{mark}"),
            1,
            Duration::from_secs(60),
        )
        .await;
        assert_eq!(running, 1, "the request runs");
        drop(conn);
        let plugin = served.served.host.plugin(&name("probe")).unwrap();
        until("the hung-up request is counted", || {
            plugin.stats().errors_of("cancelled") == 1
        })
        .await;
        let metrics = reqwest::get(format!("http://{}/metrics", served.served.admin))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            metrics.contains("redloom_errors_total{plugin=\"probe\",kind=\"cancelled\"} 1"),
            "{metrics}"
        );
        served.shutdown().await;
    })
    .await;
}

/// A value over `max-write` is refused before it reaches Redis (payload
/// quota), so is a published message; values within it are charged to the
/// plugin's `storage` quota, which stops a plugin filling Redis long before
/// it holds much more than its quota; once a sample shows its keys gone,
/// it may write again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_are_bounded_per_value_and_per_plugin() {
    use redloom::quota::Quota;
    with_timeout(async {
        let b = bare().await;
        let mut s = redloom_tests::spec("filler", "hostile");
        s.quotas.storage = 8 << 20;
        s.quotas.redis_ops = 100_000;
        b.host.load(s).await.unwrap();
        let mut conn = b.redis.client().await;

        let q = quota_of(b.host.invoke(&name("filler"), b"write 2048").await);
        assert_eq!(q, Quota::Payload);
        let exists: bool = redis::cmd("EXISTS")
            .arg("rl:filler:kv:write")
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(!exists, "the refused value is not in Redis");
        let q = quota_of(b.host.invoke(&name("filler"), b"publish 2048 news").await);
        assert_eq!(q, Quota::Payload);

        // 200 × 512 KiB = 100 MiB asked for; the 8 MiB quota stops it.
        let e = quota_of(b.host.invoke(&name("filler"), b"fill 200").await);
        assert_eq!(e, Quota::Storage);
        let stored: Vec<String> = redis::cmd("KEYS")
            .arg("rl:filler:kv:fill-*")
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(
            (10..=16).contains(&stored.len()),
            "{} values of 512 KiB stored under an 8 MiB quota",
            stored.len()
        );
        let stats = b.host.plugin(&name("filler")).unwrap().stats();
        assert_eq!(stats.rejections_of("storage"), 1, "{stats:?}");
        assert_eq!(stats.rejections_of("payload"), 2, "{stats:?}");

        // Still full after a sample: the keys are there.
        redloom::sampler::pass(&b.host).await.unwrap();
        let used = b.host.plugin(&name("filler")).unwrap().storage().used();
        assert!(used >= 5 << 20, "sampled {used} bytes");
        assert_eq!(
            quota_of(b.host.invoke(&name("filler"), b"fill 1").await),
            Quota::Storage
        );
        // Gone, and sampled: room again.
        let _: () = redis::cmd("DEL")
            .arg(&stored)
            .query_async(&mut conn)
            .await
            .unwrap();
        redloom::sampler::pass(&b.host).await.unwrap();
        assert_eq!(
            b.host.invoke(&name("filler"), b"fill 4").await.unwrap(),
            b"4"
        );
        let usage: Option<u64> = redis::cmd("HGET")
            .arg("rl::storage")
            .arg("filler")
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(usage.is_some(), "the sample is kept for other hosts");
    })
    .await;
}

/// The standard error of `redloom -v ARGS invoke` of the hostile plugin's
/// log-forging program, which must succeed.
fn log_forge(args: &[&str]) -> String {
    let out = redloom_tests::run_with_timeout(
        std::process::Command::new(redloom_tests::redloom_bin())
            .arg("-v")
            .args(args)
            .arg("--data-dir")
            .arg(tempfile::tempdir().unwrap().path())
            .args(["invoke"])
            .arg(plugin("hostile"))
            .args(["--input", "log-forge"]),
        Duration::from_secs(120),
    );
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    stderr
}

/// Control characters in a plugin's log message and stdout are escaped, so
/// it cannot start a line of its own (and pretend to be another plugin's)
/// or send terminal escapes; the message stays one record.
#[test]
fn log_lines_cannot_be_forged() {
    let stderr = log_forge(&[]);
    assert!(
        !stderr
            .lines()
            .any(|l| l.starts_with("2026-12-05T00:00:00Z")),
        "a forged line:\n{stderr}"
    );
    assert!(!stderr.contains('\u{1b}'), "a terminal escape:\n{stderr:?}");
    // The log record stays one line, its newline shown as `\n`.
    let logged: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("stream=\"log\""))
        .collect();
    assert_eq!(logged.len(), 1, "{stderr}");
    assert!(
        logged[0].contains("innocent\\n2026-12-05T00:00:00Z ERROR"),
        "{}",
        logged[0]
    );
    // Standard output is line by line: each line is a record of its own,
    // behind the host's time stamp and ending with the plugin's real name.
    let printed: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("stream=\"stdout\""))
        .collect();
    assert_eq!(printed.len(), 2, "{stderr}");
    assert!(
        printed.iter().all(|l| l.contains(" INFO redloom::plugin: ")
            && l.ends_with("plugin=\"hostile\" stream=\"stdout\"")),
        "{printed:?}"
    );
}

/// With `--log-format json`, the same forgery stays inside one record's
/// `message`: every line is one JSON object, the plugin's records all name
/// it (none names the victim), and each keeps the level it asked for.
#[test]
fn json_log_records_cannot_be_forged() {
    let stderr = log_forge(&["--log-format", "json"]);
    let records: Vec<serde_json::Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}")))
        .collect();
    let plugin_records: Vec<&serde_json::Value> = records
        .iter()
        .filter(|r| r["target"] == "redloom::plugin")
        .collect();
    assert_eq!(
        plugin_records.len(),
        3,
        "one log call, two stdout lines: {stderr}"
    );
    assert!(
        plugin_records.iter().all(|r| r["plugin"] == "hostile"),
        "{plugin_records:?}"
    );
    let logged: Vec<_> = plugin_records
        .iter()
        .filter(|r| r["stream"] == "log")
        .collect();
    assert_eq!(logged.len(), 1, "{stderr}");
    assert_eq!(logged[0]["level"], "WARN", "{}", logged[0]);
    let message = logged[0]["message"].as_str().unwrap();
    assert!(
        message.starts_with("innocent\\n2026-12-05T00:00:00Z ERROR"),
        "{message}"
    );
    assert!(!stderr.contains('\u{1b}'), "a terminal escape:\n{stderr:?}");
}

/// An invocation may log `max-log` bytes and the plugin `log-rate` bytes
/// per second; what is over is dropped and counted, not written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_volume_is_bounded() {
    with_timeout(async {
        let b = bare().await;
        let mut s = redloom_tests::spec("chatty", "hostile");
        s.quotas.max_log = 16 << 10;
        s.quotas.log_rate = 0;
        b.host.load(s).await.unwrap();
        // 1,000 messages of 1 KiB: 16 fit the invocation's budget.
        b.host
            .invoke(&name("chatty"), b"log-flood 1000")
            .await
            .unwrap();
        let dropped = b.host.plugin(&name("chatty")).unwrap().stats().dropped_log;
        assert_eq!(dropped, 1000 - 16, "dropped of 1000 with max-log 16 KiB");

        let mut s = redloom_tests::spec("steady", "hostile");
        s.quotas.max_log = 1 << 20;
        s.quotas.log_rate = 8 << 10;
        b.host.load(s).await.unwrap();
        let started = std::time::Instant::now();
        b.host
            .invoke(&name("steady"), b"log-flood 1000")
            .await
            .unwrap();
        let secs = started.elapsed().as_secs_f64();
        let logged = 1000 - b.host.plugin(&name("steady")).unwrap().stats().dropped_log;
        // A second of burst plus what refilled while it ran.
        let bound = 8.0 + 8.0 * secs + 1.0;
        assert!(
            (logged as f64) <= bound && logged >= 8,
            "{logged} messages of 1 KiB logged in {secs:.2}s at 8 KiB/s"
        );
    })
    .await;
}

/// A guest that computes for long moves off the threads that serve every
/// other plugin (to the low-priority background runtime), and its plugin's
/// next invocations start there; a plugin whose calls are short never
/// moves. Quotas hold there too: the CPU quota (by the thread's own CPU
/// clock) and a cancelled call (the moved job is aborted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_invocations_move_to_the_background() {
    use redloom::quota::Quota;
    with_timeout(async {
        let b = bare().await;
        let mut s = redloom_tests::spec("heavy", "hostile");
        s.quotas.cpu = Duration::from_secs(60);
        s.quotas.wall_time = Duration::from_secs(120);
        b.host.load(s).await.unwrap();
        let mut s = redloom_tests::spec("light", "hostile");
        s.quotas.cpu = Duration::from_millis(400);
        // At nice 10 beside CPU hogs a background thread gets about a tenth
        // of a core: 400 ms of CPU may take many seconds of wall time.
        s.quotas.wall_time = Duration::from_secs(120);
        b.host.load(s).await.unwrap();
        let background = |p: &str| b.host.plugin(&name(p)).unwrap().stats().background;

        for _ in 0..20 {
            b.host.invoke(&name("light"), b"burn 0").await.unwrap();
        }
        assert_eq!(background("light"), 0, "short calls stay where they are");

        assert_eq!(
            b.host.invoke(&name("heavy"), b"burn 200").await.unwrap(),
            b"done"
        );
        assert_eq!(background("heavy"), 1, "200 ms of CPU moved");
        // Its next call starts there at once (the plugin counts as heavy
        // for a second after it moved; a loaded machine may take longer
        // than that between these calls, hence `>=` below for the count).
        b.host.invoke(&name("heavy"), b"burn 0").await.unwrap();
        assert!(background("heavy") >= 1);

        // The CPU quota is enforced there (by the thread's own CPU clock).
        let q = quota_of(b.host.invoke(&name("light"), b"spin").await);
        assert_eq!(q, Quota::Cpu);
        assert!(background("light") >= 1, "the spin moved before its quota");
        let cpu = b.host.plugin(&name("light")).unwrap().stats().guest_cpu;
        assert!(cpu >= Duration::from_millis(400), "charged {cpu:?}");

        // A cancelled call that moved is stopped, and counted.
        let (host, mark) = (b.host.clone(), redloom_tests::unique("spinning"));
        let input = format!("spin {mark}");
        let task = tokio::spawn(async move { host.invoke(&name("heavy"), input.as_bytes()).await });
        let mut conn = b.redis.client().await;
        let running = redloom_tests::wait_for(
            &mut conn,
            &format!("rl:heavy:kv:{mark}"),
            1,
            Duration::from_secs(60),
        )
        .await;
        assert_eq!(running, 1);
        let plugin = b.host.plugin(&name("heavy")).unwrap();
        until("the spin moves", || plugin.stats().background >= 2).await;
        task.abort();
        until("the cancelled spin is counted", || {
            plugin.stats().errors_of("cancelled") == 1
        })
        .await;
    })
    .await;
}
