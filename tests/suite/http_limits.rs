//! Slow and silent clients against both listeners of `redloom serve`
//! (slowloris): header-read, idle and body-read timeouts, and
//! `max-connections`. Clients here speak raw TCP, so a test controls exactly
//! which bytes arrive when.
//!
//! Timing: every wait is bounded and generous; what is asserted about time
//! is a lower bound (a connection is not closed before its timeout, measured
//! from before the server could have started the timer) or an absence while
//! a condition holds (no answer while every connection slot is taken).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use redloom::config::Config;
use redloom_tests::{RedisServer, ServeProcess, host_options, plugin, with_timeout};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Longest wait for something that must happen (a close, an answer).
const WAIT: Duration = Duration::from_secs(45);

/// A `serve` in this process on a Redis and a folder of its own.
struct Served {
    served: redloom_tests::Served,
    _redis: RedisServer,
    _dir: tempfile::TempDir,
}

impl Served {
    async fn start(http: &str, admin: &str) -> Served {
        let redis = RedisServer::start().await;
        let dir = tempfile::tempdir().unwrap();
        let config = Config::parse(&config_text(http, admin), &dir.path().join("redloom.toml"))
            .expect("valid config");
        Served {
            served: redloom_tests::Served::start(host_options(&redis, dir.path()), config).await,
            _redis: redis,
            _dir: dir,
        }
    }

    async fn shutdown(self) {
        let host = self.served.host.clone();
        self.served.shutdown().await;
        host.shutdown().await;
    }
}

/// The http-probe plugin on `/version` and `/echo`, both listeners on free
/// ports, with `http` and `admin` added to their tables.
fn config_text(http: &str, admin: &str) -> String {
    format!(
        r#"
[http]
listen = "127.0.0.1:0"
{http}
[admin]
listen = "127.0.0.1:0"
{admin}

[plugins.probe]
wasm = {probe:?}
[plugins.probe.quotas]
max-input = "1KiB"

[[routes]]
method = "GET"
path = "/version"
plugin = "probe"
[[routes]]
path = "/echo"
plugin = "probe"
"#,
        probe = plugin("http-probe").display().to_string(),
    )
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nhost: localhost\r\n\r\n")
}

/// Reads one response (head and `content-length` body) from `stream`;
/// returns its status line, or `None` if the connection closed first.
async fn read_response<R: AsyncRead + Unpin>(stream: &mut R) -> Option<String> {
    let mut data = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&data[..end]).to_string();
            let length: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            if data.len() >= end + 4 + length {
                return Some(head.lines().next().unwrap_or_default().to_string());
            }
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => data.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Sends a request on a new connection and reads its response: the
/// connection then stays open, kept alive.
async fn kept_alive(addr: SocketAddr, path: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(get(path).as_bytes()).await.unwrap();
    let status = tokio::time::timeout(WAIT, read_response(&mut s))
        .await
        .expect("answered in time")
        .expect("answered");
    assert!(status.ends_with("200 OK"), "{status}");
    s
}

/// Waits (up to [`WAIT`]) until the server closes `stream`, discarding what
/// it sends, and returns when; with `trickle`, sends it one byte every
/// 200 ms meanwhile, so the connection is never idle.
async fn closed_at(stream: &mut TcpStream, trickle: Option<u8>) -> Instant {
    let deadline = Instant::now() + WAIT;
    let mut chunk = [0u8; 1024];
    loop {
        assert!(Instant::now() < deadline, "still open after {WAIT:?}");
        if let Some(byte) = trickle
            && stream.write_all(&[byte]).await.is_err()
        {
            return Instant::now();
        }
        let read = tokio::time::timeout(Duration::from_millis(200), stream.read(&mut chunk));
        if let Ok(Ok(0) | Err(_)) = read.await {
            return Instant::now();
        }
    }
}

/// A client that sends part of its headers and then trickles one more
/// header byte at a time is closed after `header-read-timeout` (not before),
/// on both listeners; so is a client silent from the start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_headers_are_closed_after_the_header_timeout() {
    with_timeout(async {
        let limits = "header-read-timeout = \"1s\"\nidle-timeout = \"1h\"\n";
        let s = Served::start(limits, limits).await;
        for addr in [s.served.addr, s.served.admin] {
            let started = Instant::now();
            let mut slow = TcpStream::connect(addr).await.unwrap();
            slow.write_all(b"GET /version HTTP/1.1\r\nhost: localhost\r\nx-slow: ")
                .await
                .unwrap();
            let closed = closed_at(&mut slow, Some(b'a')).await;
            assert!(
                closed - started >= Duration::from_secs(1),
                "{addr}: closed after {:?}, before header-read-timeout",
                closed - started
            );

            let started = Instant::now();
            let mut silent = TcpStream::connect(addr).await.unwrap();
            let closed = closed_at(&mut silent, None).await;
            assert!(closed - started >= Duration::from_secs(1), "{addr}");
        }
        s.shutdown().await;
    })
    .await;
}

/// A kept-alive connection that sends nothing after its response is closed
/// after `idle-timeout` (not before), on both listeners, while
/// `header-read-timeout` is far away; so is a connection that never sends
/// anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_after_the_idle_timeout() {
    with_timeout(async {
        let limits = "header-read-timeout = \"1h\"\nidle-timeout = \"1s\"\n";
        let s = Served::start(limits, limits).await;
        for (addr, path) in [(s.served.addr, "/version"), (s.served.admin, "/healthz")] {
            // The server's idle timer starts after the response, which is
            // after `started`.
            let started = Instant::now();
            let mut idle = kept_alive(addr, path).await;
            let closed = closed_at(&mut idle, None).await;
            assert!(
                closed - started >= Duration::from_secs(1),
                "{addr}: closed after {:?}, before idle-timeout",
                closed - started
            );

            let started = Instant::now();
            let mut silent = TcpStream::connect(addr).await.unwrap();
            let closed = closed_at(&mut silent, None).await;
            assert!(closed - started >= Duration::from_secs(1), "{addr}");
        }
        s.shutdown().await;
    })
    .await;
}

/// A request body trickled byte by byte is answered 408 once
/// `body-read-timeout` has passed since its headers (not before), and the
/// plugin never runs; a body that arrives in time still works, and one over
/// `max-input` is still 413.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trickled_body_is_refused_after_the_body_timeout() {
    with_timeout(async {
        let limits = "body-read-timeout = \"1s\"\nidle-timeout = \"1h\"\n";
        let s = Served::start(limits, "").await;
        let started = Instant::now();
        let mut slow = TcpStream::connect(s.served.addr).await.unwrap();
        slow.write_all(b"POST /echo HTTP/1.1\r\nhost: localhost\r\ncontent-length: 500\r\n\r\nab")
            .await
            .unwrap();
        let status = tokio::time::timeout(WAIT, async {
            let (mut read, mut write) = slow.split();
            let trickle = async {
                loop {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    if write.write_all(b"c").await.is_err() {
                        std::future::pending::<()>().await;
                    }
                }
            };
            tokio::select! {
                status = read_response(&mut read) => status,
                () = trickle => unreachable!(),
            }
        })
        .await
        .expect("answered before WAIT");
        assert_eq!(status.as_deref(), Some("HTTP/1.1 408 Request Timeout"));
        assert!(started.elapsed() >= Duration::from_secs(1));
        assert_eq!(
            s.served.host.plugin_infos()[0].stats.invocations,
            0,
            "the plugin ran for a request whose body never came"
        );

        let c = reqwest::Client::new();
        let ok = c
            .post(format!("http://{}/echo", s.served.addr))
            .body("hello")
            .send()
            .await
            .unwrap();
        assert_eq!(ok.status(), 200);
        assert!(ok.text().await.unwrap().contains("body 5"));
        let big = c
            .post(format!("http://{}/echo", s.served.addr))
            .body(vec![b'x'; 2048])
            .send()
            .await
            .unwrap();
        assert_eq!(big.status(), 413);
        s.shutdown().await;
    })
    .await;
}

/// With `max-connections` connections open, a new client is not served
/// (it waits, connected, in the accept queue); as soon as one of them
/// closes, it is. The same on the admin listener, and `/metrics` counts
/// the open connections and the times the limit was reached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_connections_clients_wait_for_a_free_connection() {
    with_timeout(async {
        let limits = "max-connections = 3\nidle-timeout = \"1h\"\nheader-read-timeout = \"1h\"\n";
        let s = Served::start(limits, limits).await;
        for (addr, path) in [(s.served.addr, "/version"), (s.served.admin, "/healthz")] {
            let mut held = Vec::new();
            for _ in 0..3 {
                held.push(kept_alive(addr, path).await);
            }
            let mut waiting = TcpStream::connect(addr).await.unwrap();
            waiting.write_all(get(path).as_bytes()).await.unwrap();
            let early =
                tokio::time::timeout(Duration::from_secs(2), read_response(&mut waiting)).await;
            assert!(
                early.is_err(),
                "{addr}: served while max-connections were open: {early:?}"
            );
            if path == "/version" {
                let metrics = reqwest::get(format!("http://{}/metrics", s.served.admin))
                    .await
                    .unwrap()
                    .text()
                    .await
                    .unwrap();
                assert!(
                    metrics.contains("redloom_connections{listener=\"http\"} 3"),
                    "{metrics}"
                );
                let reached = metrics
                    .lines()
                    .find(|l| {
                        l.starts_with("redloom_connection_limit_reached_total{listener=\"http\"}")
                    })
                    .and_then(|l| l.rsplit(' ').next())
                    .and_then(|v| v.parse::<f64>().ok())
                    .expect("redloom_connection_limit_reached_total for http");
                assert!(reached >= 1.0, "{metrics}");
            }
            drop(held.pop());
            let status = tokio::time::timeout(WAIT, read_response(&mut waiting))
                .await
                .expect("served once a connection closed")
                .expect("answered");
            assert!(status.ends_with("200 OK"), "{status}");
        }
        s.shutdown().await;
    })
    .await;
}

/// The attack as reported: a process whose open-file limit is lower than
/// the number of slow clients (here 512 descriptors, 600 clients, half
/// sending partial headers, half nothing). Before, the clients took every
/// descriptor, `accept` failed and no route answered for as long as they
/// stayed; now `max-connections` keeps descriptors free and the timeouts
/// recycle the slow connections, so a normal request is answered on both
/// listeners while every slow client is still connected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_past_the_open_file_limit_leaves_routes_reachable() {
    // Built outside the test's time limit: a cold build can take minutes.
    tokio::task::spawn_blocking(redloom_tests::redloom_bin)
        .await
        .unwrap();
    with_timeout(async {
        let redis = RedisServer::start().await;
        let dir = tempfile::tempdir().unwrap();
        let limits = "max-connections = 64\nheader-read-timeout = \"1s\"\nidle-timeout = \"1s\"\n";
        let admin_limits =
            "max-connections = 16\nheader-read-timeout = \"1s\"\nidle-timeout = \"1s\"\n";
        let text = format!(
            "{}{}",
            redis.config_table(),
            config_text(limits, admin_limits)
        );
        let serve = ServeProcess::start_with(&dir.path().join("serve"), &text, |command| {
            open_files_limit(command, 512)
        })
        .await;
        let http: SocketAddr = serve.http.parse().unwrap();
        let admin: SocketAddr = serve.admin.parse().unwrap();
        let mut slow = Vec::new();
        for i in 0..600 {
            let addr = if i % 10 == 0 { admin } else { http };
            let mut s = TcpStream::connect(addr).await.unwrap();
            if i % 2 == 0 {
                s.write_all(b"GET /version HTTP/1.1\r\nhost: localhost\r\nx-slow: ")
                    .await
                    .unwrap();
            }
            slow.push(s);
        }
        for (addr, path) in [(http, "/version"), (admin, "/healthz")] {
            let mut normal = TcpStream::connect(addr).await.unwrap();
            normal.write_all(get(path).as_bytes()).await.unwrap();
            let status = tokio::time::timeout(Duration::from_secs(90), read_response(&mut normal))
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "{addr}{path}: no answer during the attack:\n{}",
                        serve.log_text()
                    )
                })
                .expect("answered");
            assert!(status.ends_with("200 OK"), "{status}");
        }
        drop(slow);
        serve.stop().await;
    })
    .await;
}

/// Sets the child's open-file limit (soft and hard) to `n`.
fn open_files_limit(command: &mut std::process::Command, n: u64) {
    use std::os::unix::process::CommandExt;
    // SAFETY: setrlimit is async-signal-safe and changes only the child's
    // own limit.
    unsafe {
        command.pre_exec(move || {
            let limit = libc::rlimit {
                rlim_cur: n as libc::rlim_t,
                rlim_max: n as libc::rlim_t,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// `serve` refuses to start, with exit code 5 and a line saying what to
/// change, when both listeners' `max-connections` (and the descriptors kept
/// for everything else) do not fit in its open-file limit: otherwise
/// clients could take the descriptors Redis and plugins need.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_over_the_open_file_limit_is_refused() {
    let bin = tokio::task::spawn_blocking(redloom_tests::redloom_bin)
        .await
        .unwrap();
    with_timeout(async {
        let redis = RedisServer::start().await;
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "{}{}",
            redis.config_table(),
            config_text("max-connections = 400", "")
        );
        std::fs::write(dir.path().join("redloom.toml"), text).unwrap();
        let mut command = std::process::Command::new(bin);
        command.current_dir(dir.path()).arg("serve");
        open_files_limit(&mut command, 512);
        let out = tokio::task::spawn_blocking(move || {
            redloom_tests::run_with_timeout(&mut command, Duration::from_secs(120))
        })
        .await
        .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(5), "{stderr}");
        assert!(
            stderr.contains(
                "[http] max-connections (400) and [admin] max-connections (64), with 256 open \
                 files kept for Redis, plugins and files, need 720 open files, but this process \
                 may open only 512"
            ) && stderr.contains("lower max-connections or raise the limit"),
            "{stderr}"
        );
    })
    .await;
}
