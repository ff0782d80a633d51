//! The `redloom` binary: invoke, check, serve, zero-config Redis, exit codes.

use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use redloom_tests::{RedisServer, ServeProcess, plugin, redloom_bin, run_with_timeout, unique};
use serde_json::Value;

const CMD_TIMEOUT: Duration = Duration::from_secs(120);

fn redloom(dir: &Path) -> Command {
    let mut c = Command::new(redloom_bin());
    c.current_dir(dir)
        .env_remove("REDIS_URL")
        .env_remove("REDLOOM_CONFIG")
        .env_remove("RUST_LOG");
    c
}

fn run(cmd: &mut Command) -> Output {
    run_with_timeout(cmd, CMD_TIMEOUT)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn code(out: &Output) -> i32 {
    out.status.code().expect("exited normally")
}

/// `invoke` with a Redis URL prints the plugin's output and exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invoke_prints_output() {
    let redis = RedisServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let page = unique("page");
    let input = format!(r#"{{"page":"{page}","visitor":"bob"}}"#);
    let out = run(redloom(dir.path())
        .arg("invoke")
        .arg(plugin("visit-counter"))
        .args(["--redis-url", redis.url(), "--input", &input]));
    assert_eq!(code(&out), 0, "stderr: {}", text(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON output");
    assert_eq!(v["visits"], 1, "{v}");
    assert_eq!(v["page"], page.as_str());
}

/// `invoke` on a component without an `invoke` handler (an HTTP-only
/// plugin) runs nothing and exits 3, the load-error code, with the
/// `export!` line to add.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invoke_without_an_invoke_handler_is_a_load_error() {
    let redis = RedisServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let out = run(redloom(dir.path())
        .arg("invoke")
        .arg(plugin("http-probe"))
        .args(["--redis-url", redis.url(), "--input", "x"]));
    let stderr = text(&out.stderr);
    assert_eq!(code(&out), 3, "stderr: {stderr}");
    assert!(stderr.contains("has no `invoke` handler"), "{stderr}");
    assert!(
        stderr.contains("export!(YourPlugin => [invoke])"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty(), "stdout: {}", text(&out.stdout));
}

/// Without a Redis URL, `invoke` starts a private redis-server with AOF in
/// the data folder, stops it on exit, and the data survives to the next run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_config_redis_starts_persists_and_stops() {
    let dir = tempfile::tempdir().unwrap();
    let input = r#"{"page":"home","visitor":"carol"}"#;
    let mut visits = Vec::new();
    for _ in 0..2 {
        let out = run(redloom(dir.path())
            .args(["-v", "invoke"])
            .arg(plugin("visit-counter"))
            .args(["--input", input]));
        let stderr = text(&out.stderr);
        assert_eq!(code(&out), 0, "stderr: {stderr}");
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        visits.push(v["visits"].as_i64().unwrap());

        // The log names the private server's URL (password redacted);
        // after exit nothing listens there.
        let url = stderr
            .split_whitespace()
            .find_map(|w| w.strip_prefix("url=redis://:***@"))
            .unwrap_or_else(|| panic!("no private server in the log:\n{stderr}"));
        let addr = url.trim_end_matches(|c: char| !c.is_ascii_digit());
        assert!(
            TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_millis(500)).is_err(),
            "the private redis-server at {addr} is still running"
        );
    }
    assert_eq!(
        visits,
        [1, 2],
        "the count persisted across private-server restarts"
    );
    assert!(dir.path().join(".redloom/redis/appendonlydir").is_dir());
    assert!(dir.path().join(".redloom/cache").is_dir());
    // Its files are this user's alone.
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &str| {
        std::fs::metadata(dir.path().join(p))
            .unwrap_or_else(|e| panic!("{p}: {e}"))
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode(".redloom/redis"), 0o700);
    for f in ["password", "redis.conf", "redis.log"] {
        assert_eq!(mode(&format!(".redloom/redis/{f}")), 0o600, "{f}");
    }
    for aof in std::fs::read_dir(dir.path().join(".redloom/redis/appendonlydir")).unwrap() {
        let aof = aof.unwrap();
        assert_eq!(
            aof.metadata().unwrap().permissions().mode() & 0o777,
            0o600,
            "{}",
            aof.path().display()
        );
    }
}

/// With no redis-server installed and no URL, the error says how to fix it.
#[test]
fn zero_config_without_redis_server_explains() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(redloom(dir.path())
        .env("REDLOOM_REDIS_SERVER", "/nonexistent/redis-server")
        .arg("invoke")
        .arg(plugin("trap"))
        .args(["--input", "x"]));
    assert_eq!(code(&out), 4, "stderr: {}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("apt-get install redis-server"), "{stderr}");
    assert!(stderr.contains("--redis-url"), "{stderr}");
}

/// One project folder, one private Redis: a second redloom is told how to
/// share the running server instead of opening the same AOF, and a server
/// left behind by a killed redloom is shut down (its data kept) by the next.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_config_redis_is_claimed_by_one_process() {
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "[http]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         [plugins.visit-counter]\nwasm = {:?}\n",
        plugin("visit-counter").display().to_string()
    );
    let serve = ServeProcess::start(dir.path(), &config).await;
    let claim = std::fs::read_to_string(dir.path().join(".redloom/redis/redloom.lock")).unwrap();
    let fields: Vec<u32> = claim
        .split_whitespace()
        .map(|w| w.parse().unwrap())
        .collect();
    let [owner, port, server] = fields[..] else {
        panic!("claim file: {claim:?}");
    };
    assert_eq!(owner, serve.pid());
    assert!(server > 0);

    let invoke = |extra: &[&str]| {
        run(redloom(dir.path())
            .args(extra)
            .args(["-v", "invoke", "visit-counter"])
            .args(["--input", r#"{"page":"home","visitor":"dave"}"#]))
    };
    // The server wants its password, kept in the folder; nothing else gets in.
    let password_file = dir.path().join(".redloom/redis/password");
    let password = redloom::files::read_secret(&password_file).expect("a password file");
    let anonymous = redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap();
    let mut c = anonymous.get_multiplexed_async_connection().await.unwrap();
    let refused: redis::RedisResult<String> = redis::cmd("PING").query_async(&mut c).await;
    let e = refused.expect_err("PING without the password");
    assert!(e.to_string().contains("NOAUTH"), "{e}");
    let url = format!("redis://:{password}@127.0.0.1:{port}");
    let mut c = redis::Client::open(url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let memory: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("maxmemory*")
        .query_async(&mut c)
        .await
        .unwrap();
    let memory: std::collections::HashMap<_, _> = memory
        .chunks(2)
        .map(|kv| (kv[0].clone(), kv[1].clone()))
        .collect();
    assert_eq!(memory["maxmemory"], (1u64 << 30).to_string(), "{memory:?}");
    assert_eq!(memory["maxmemory-policy"], "noeviction", "{memory:?}");

    let out = invoke(&[]);
    let stderr = text(&out.stderr);
    assert_eq!(code(&out), 4, "stderr: {stderr}");
    assert!(
        stderr.contains(&format!("in use by another redloom (pid {owner})"))
            && stderr.contains(&format!(
                "--redis-url \"redis://:$(cat {})@127.0.0.1:{port}\"",
                password_file.canonicalize().unwrap().display()
            )),
        "{stderr}"
    );
    let out = invoke(&["--redis-url", &url]);
    assert_eq!(code(&out), 0, "stderr: {}", text(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["visits"], 1);

    // SIGKILL (dropping it) leaves the server running with nobody to stop it.
    drop(serve);
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    assert!(TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok());

    let out = invoke(&[]);
    let stderr = text(&out.stderr);
    assert_eq!(code(&out), 0, "stderr: {stderr}");
    assert!(stderr.contains("left running by a redloom"), "{stderr}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["visits"], 2, "the orphan's data was kept");
    assert!(
        TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_err(),
        "the orphaned redis-server on port {port} still runs"
    );
}

/// `check` reports a good plugin's exports and imports without Redis, and
/// rejects bad files with exit code 3 and a reason.
#[test]
fn check_reports_and_rejects() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(redloom(dir.path()).arg("check").arg(plugin("kv-probe")));
    let stdout = text(&out.stdout);
    assert_eq!(code(&out), 0, "stderr: {}", text(&out.stderr));
    assert!(stdout.contains("handlers:     invoke\n"), "{stdout}");
    assert!(
        stdout.contains("world:        redloom:plugin/invoke-plugin\n"),
        "{stdout}"
    );
    assert!(stdout.contains("redloom:plugin/invoke@0.2.0"), "{stdout}");

    // The handlers and world come from what the component exports.
    let out = run(redloom(dir.path()).arg("check").arg(plugin("http-probe")));
    let stdout = text(&out.stdout);
    assert_eq!(code(&out), 0, "stderr: {}", text(&out.stderr));
    assert!(stdout.contains("handlers:     http\n"), "{stdout}");
    assert!(
        stdout.contains("world:        redloom:plugin/http-plugin\n"),
        "{stdout}"
    );
    let out = run(redloom(dir.path()).arg("check").arg(plugin("event-probe")));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("handlers:     invoke, message, timer\n"),
        "{stdout}"
    );
    assert!(stdout.contains("a combination of redloom:plugin/invoke-plugin + redloom:plugin/message-plugin + redloom:plugin/timer-plugin"), "{stdout}");

    // A reader that stops early (`redloom check x.wasm | head -1`) is not a
    // crash: the closed pipe ends the report quietly with exit code 0.
    // `true` exits without reading, so every write meets a closed pipe.
    let script = r#"{ "$0" check "$1" 2>"$2"; echo "exit=$?" >>"$2"; } | true"#;
    let log = dir.path().join("check.stderr");
    let out = run(Command::new("sh")
        .current_dir(dir.path())
        .arg("-c")
        .arg(script)
        .arg(redloom_bin())
        .arg(plugin("kv-probe"))
        .arg(&log));
    assert_eq!(code(&out), 0);
    let stderr = std::fs::read_to_string(&log).unwrap();
    assert!(stderr.ends_with("exit=0\n"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        stdout.contains("capabilities: ") && stdout.contains("kv"),
        "{stdout}"
    );

    let core = dir.path().join("core.wasm");
    std::fs::write(&core, b"\0asm\x01\0\0\0").unwrap();
    let out = run(redloom(dir.path()).arg("check").arg(&core));
    assert_eq!(code(&out), 3);
    assert!(
        text(&out.stderr).starts_with("error: "),
        "{}",
        text(&out.stderr)
    );
    assert!(
        text(&out.stderr).contains("not a component"),
        "{}",
        text(&out.stderr)
    );

    let out = run(redloom(dir.path()).arg("check").arg(plugin("no-handler")));
    assert_eq!(code(&out), 3);
    assert!(text(&out.stderr).contains("does not export redloom:plugin/invoke"));
}

/// A broken config file is one line naming file, line and key; exit code 2.
#[test]
fn bad_config_is_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("redloom.toml"),
        "[plugins.counter]\nwasm = \"x.wasm\"\nreuse = 3\n",
    )
    .unwrap();
    let out = run(redloom(dir.path()).args(["invoke", "counter"]));
    assert_eq!(code(&out), 2);
    let stderr = text(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("error: redloom.toml:3: plugins.counter.reuse: unknown field `reuse`"),
        "{stderr}"
    );
}

/// A plugin error is exit code 1 with the typed error on stderr.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_failure_exit_code() {
    let redis = RedisServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let out = run(redloom(dir.path()).arg("invoke").arg(plugin("trap")).args([
        "--redis-url",
        redis.url(),
        "--input",
        "panic",
    ]));
    assert_eq!(code(&out), 1, "stderr: {}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("trapped"),
        "{}",
        text(&out.stderr)
    );
}

/// `serve` loads the configured plugins and exits 0 on SIGTERM, stopping its
/// private Redis.
#[test]
fn serve_runs_until_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("redloom.toml"),
        format!(
            "[plugins.visit-counter]\nwasm = {:?}\n",
            plugin("visit-counter").display().to_string()
        ),
    )
    .unwrap();
    let log = dir.path().join("serve.log");
    let mut child = redloom(dir.path())
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let serving = loop {
        let l = std::fs::read_to_string(&log).unwrap_or_default();
        if l.contains("serving") {
            break l;
        }
        if start.elapsed() > CMD_TIMEOUT || child.try_wait().unwrap().is_some() {
            let _ = child.kill();
            panic!("serve did not come up:\n{l}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(serving.contains("visit-counter"), "{serving}");

    // `redloom plugin list` talks to the running server's admin API.
    let admin = serving
        .split_whitespace()
        .find_map(|w| w.strip_prefix("admin="))
        .unwrap_or_else(|| panic!("no admin address in the log:\n{serving}"));
    let out =
        run(redloom(dir.path()).args(["plugin", "--admin", &format!("http://{admin}"), "list"]));
    assert_eq!(code(&out), 0, "stderr: {}", text(&out.stderr));
    let listing = text(&out.stdout);
    assert!(
        listing
            .lines()
            .any(|l| l.starts_with("visit-counter ") && l.contains("invoke")),
        "{listing}"
    );
    let out = run(redloom(dir.path()).args([
        "plugin",
        "--admin",
        &format!("http://{admin}"),
        "unload",
        "nope",
    ]));
    assert_ne!(code(&out), 0);
    assert!(
        text(&out.stderr).contains("no plugin named nope"),
        "{}",
        text(&out.stderr)
    );
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let start = Instant::now();
    let exit = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            panic!("serve did not stop on SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        exit.success(),
        "{exit:?}\n{}",
        std::fs::read_to_string(&log).unwrap()
    );
    assert!(dir.path().join(".redloom/redis/appendonlydir").is_dir());
}

/// `invoke --stats` prints the run's counters on stderr, output stays on stdout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invoke_stats() {
    let redis = RedisServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let out = run(redloom(dir.path())
        .arg("invoke")
        .arg(plugin("kv-probe"))
        .args(["--stats", "--redis-url", redis.url()])
        .args([
            "--input",
            r#"[{"op":"incr","key":"a"},{"op":"incr","key":"a"}]"#,
        ]));
    assert_eq!(code(&out), 0, "stderr: {}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(stderr.lines().any(|l| l == "invocations 1"), "{stderr}");
    assert!(stderr.lines().any(|l| l == "redis_commands 2"), "{stderr}");
    assert!(
        stderr
            .lines()
            .any(|l| l == r#"quota_rejections{quota="cpu"} 0"#),
        "{stderr}"
    );
    assert!(
        stderr.lines().any(|l| l.starts_with("guest_cpu_seconds ")),
        "{stderr}"
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[1]["ok"], 2);
}

/// `redloom plugin unload|load|reload` drive a running `redloom serve`
/// through its admin API, and each one's effect shows over HTTP; a reload
/// the server refuses fails with exit code 3 and leaves the plugin serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_commands_manage_a_running_server() {
    let redis = RedisServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    // The ip-rate-limit example answers any path with a greeting; its
    // limiter policy gets a budget this test never spends.
    let config = format!(
        "{redis}[http]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         [plugins.probe]\nwasm = {probe:?}\n\
         [plugins.probe.limiters.per-ip]\nalgorithm = \"gcra\"\nrate = \"100000/s\"\nburst = 100000\n\
         [[routes]]\nmethod = \"GET\"\npath = \"/version\"\nplugin = \"probe\"\n",
        redis = redis.config_table(),
        probe = plugin("http-probe").display().to_string(),
    );
    let serve = ServeProcess::start(&dir.path().join("serve"), &config).await;
    let log = serve.log_text();
    let http = log
        .split_whitespace()
        .find_map(|w| w.strip_prefix("http="))
        .unwrap_or_else(|| panic!("no http address in the log:\n{log}"))
        .to_string();
    let version = || async {
        let r = reqwest::get(format!("http://{http}/version"))
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    };
    // The commands run in a folder of their own: a relative --wasm is
    // resolved there, not in the server's folder.
    let cli = dir.path().join("cli");
    std::fs::create_dir_all(&cli).unwrap();
    std::fs::copy(plugin("ip-rate-limit"), cli.join("greeter.wasm")).unwrap();
    let admin = format!("http://{}", serve.admin);
    // `serve` generated the admin token in its data folder: from the
    // server's own folder `redloom plugin` finds it; elsewhere it must be
    // given, and without it the API refuses.
    let token = redloom::files::read_secret(&dir.path().join("serve/.redloom/admin-token"))
        .expect("serve wrote its admin token");
    let out = run(redloom(&dir.path().join("serve")).args(["plugin", "--admin", &admin, "list"]));
    assert_eq!(
        code(&out),
        0,
        "from the server's folder: {}",
        text(&out.stderr)
    );
    let out = run(redloom(&cli).args(["plugin", "--admin", &admin, "list"]));
    assert_ne!(code(&out), 0, "no token: {}", text(&out.stdout));
    assert!(text(&out.stderr).contains("401"), "{}", text(&out.stderr));
    let plugin_cmd = |args: &[&str]| {
        let out = run(redloom(&cli)
            .env("REDLOOM_ADMIN_TOKEN", &token)
            .args(["plugin", "--admin", &admin])
            .args(args));
        (code(&out), text(&out.stdout), text(&out.stderr))
    };
    let greeting = "hello 127.0.0.1, you asked for /version\n".to_string();

    assert_eq!(version().await, (200, "1".to_string()));
    let (status, stdout, stderr) = plugin_cmd(&["unload", "probe"]);
    assert_eq!(status, 0, "{stderr}");
    assert!(stdout.contains(r#""unloaded":"probe""#), "{stdout}");
    assert_eq!(version().await.0, 503);
    let (_, listing, _) = plugin_cmd(&["list"]);
    assert!(
        listing.lines().any(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            cols.len() > 5 && cols[..5] == ["probe", "unloaded", "-", "-", "-"]
        }),
        "{listing}"
    );

    let (status, stdout, stderr) = plugin_cmd(&["load", "probe"]);
    assert_eq!(status, 0, "{stderr}");
    assert!(stdout.contains(r#""loaded":"probe""#), "{stdout}");
    assert_eq!(version().await, (200, "1".to_string()));

    let (status, stdout, stderr) = plugin_cmd(&["reload", "probe", "--wasm", "greeter.wasm"]);
    assert_eq!(status, 0, "{stderr}");
    assert!(stdout.contains(r#""reloaded":"probe""#), "{stdout}");
    assert_eq!(version().await, (200, greeting.clone()));
    let (_, listing, _) = plugin_cmd(&["list"]);
    let line = listing
        .lines()
        .find(|l| l.starts_with("probe "))
        .unwrap_or_else(|| panic!("{listing}"));
    let cols: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(cols[..3], ["probe", "loaded", "invoke,http"], "{listing}");
    let (status, json, stderr) = plugin_cmd(&["list", "--output", "json"]);
    assert_eq!(status, 0, "{stderr}");
    let json: Value = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"));
    let probe = json
        .as_array()
        .and_then(|a| a.iter().find(|p| p["name"] == "probe"))
        .unwrap_or_else(|| panic!("{json}"));
    assert_eq!(probe["state"], "loaded", "{probe}");
    assert!(
        line.ends_with(&*cli.join("greeter.wasm").to_string_lossy()),
        "{line}"
    );

    // A component without the HTTP handler cannot serve the route.
    let (status, _, stderr) = plugin_cmd(&[
        "reload",
        "probe",
        "--wasm",
        &plugin("kv-probe").display().to_string(),
    ]);
    assert_eq!(status, 3, "{stderr}");
    assert!(stderr.contains("http-handler"), "{stderr}");
    assert_eq!(version().await, (200, greeting));

    // Without --wasm, `load` needs the plugin in the server's configuration.
    let (status, _, stderr) = plugin_cmd(&["load", "elsewhere"]);
    assert_ne!(status, 0);
    assert!(
        stderr.contains("elsewhere is not in the configuration"),
        "{stderr}"
    );
    serve.stop().await;
}

/// The access records of `serve --log-format json` in `log`: every line of
/// it must be a JSON object.
fn access_records(log: &str) -> Vec<Value> {
    log.lines()
        .map(|l| {
            serde_json::from_str::<Value>(l)
                .unwrap_or_else(|e| panic!("a log line that is not JSON ({e}): {l:?}"))
        })
        .filter(|v| v["target"] == "redloom::access")
        .collect()
}

/// `serve --log-format json` writes one JSON object per line, with an
/// access record for every HTTP request (routed or not, answered or hung
/// up: 499) and every trigger invocation; a hostile path stays a field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_writes_json_access_records() {
    let redis = RedisServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "{redis}[http]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         [plugins.probe]\nwasm = {probe:?}\n\
         [plugins.probe.quotas]\nwall-time = \"120s\"\n\
         [[routes]]\npath = \"/version\"\nplugin = \"probe\"\n\
         [[routes]]\npath = \"/hold\"\nplugin = \"probe\"\n\
         [plugins.clock]\nwasm = {clock:?}\n\
         [plugins.clock.timers.beat]\nevery = \"100ms\"\n",
        redis = redis.config_table(),
        probe = plugin("http-probe").display().to_string(),
        clock = plugin("event-probe").display().to_string(),
    );
    let serve = ServeProcess::start_with(&dir.path().join("serve"), &config, |c| {
        c.args(["--log-format", "json"]);
    })
    .await;
    let get = |path: &'static str| {
        let http = serve.http.clone();
        async move {
            reqwest::get(format!("http://{http}{path}"))
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(get("/version").await, 200);
    assert_eq!(get("/nowhere").await, 404);
    // A path that tries to end the record and forge a field of its own.
    assert_eq!(get("/x%22,%22status%22:1%7D%0A").await, 404);
    // A client that hangs up while its request runs.
    let (mark, release) = (unique("mark"), unique("release"));
    let mut conn = tokio::net::TcpStream::connect(&serve.http).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(
        &mut conn,
        format!("GET /hold?mark={mark}&release={release} HTTP/1.1\r\nhost: redloom\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut c = redis.client().await;
    let running = redloom_tests::wait_for(
        &mut c,
        &format!("rl:probe:kv:{mark}"),
        1,
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(running, 1, "the held request runs");
    drop(conn);

    let records = redloom_tests::until("the access records", || async {
        let records = access_records(&serve.log_text());
        let http = |path: &str| {
            records
                .iter()
                .any(|r| r["kind"] == "http" && r["path"] == path)
        };
        let tick = records.iter().any(|r| r["kind"] == "timer");
        if http("/version") && http("/nowhere") && http("/hold") && tick {
            Ok(records)
        } else {
            Err(format!("{records:?}"))
        }
    })
    .await;
    let find = |path: &str| {
        records
            .iter()
            .find(|r| r["kind"] == "http" && r["path"] == path)
            .unwrap_or_else(|| panic!("no record of {path}: {records:?}"))
    };
    let ok = find("/version");
    assert_eq!(ok["method"], "GET", "{ok}");
    assert_eq!(ok["status"], 200, "{ok}");
    assert_eq!(ok["plugin"], "probe", "{ok}");
    assert_eq!(ok["level"], "INFO", "{ok}");
    assert!(ok["duration_us"].as_u64().is_some(), "{ok}");
    assert!(
        ok["client"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{ok}"
    );
    let missing = find("/nowhere");
    assert_eq!(
        (&missing["status"], &missing["plugin"]),
        (&Value::from(404), &Value::from("-"))
    );
    let forged = find("/x%22,%22status%22:1%7D%0A");
    assert_eq!(forged["status"], 404, "{forged}");
    let hung_up = find("/hold");
    assert_eq!(hung_up["status"], 499, "{hung_up}");
    let tick = records.iter().find(|r| r["kind"] == "timer").unwrap();
    assert_eq!(tick["plugin"], "clock", "{tick}");
    assert_eq!(tick["source"], "timer beat", "{tick}");
    assert_eq!(tick["outcome"], "ok", "{tick}");
    serve.stop().await;
}

/// `invoke` drives every handler, not just `invoke`: an HTTP request (route
/// parameters filled from the configuration's `[[routes]]`, query, headers,
/// body; status and headers on stderr, body on stdout), a pub/sub message,
/// a timer tick and a queue job, each with the capabilities it has under
/// `serve` (their effects are read in Redis). A handler the component does
/// not export is a load error naming the `export!` to add; a malformed
/// request line is a usage error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invoke_drives_every_handler() {
    let redis = RedisServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("redloom.toml"),
        format!(
            "{redis}[plugins.probe]\nwasm = {probe:?}\n\
             [plugins.events]\nwasm = {events:?}\n\
             [plugins.worker]\nwasm = {worker:?}\n\
             [[routes]]\nmethod = \"POST\"\npath = \"/echo/:a/*rest\"\nplugin = \"probe\"\n",
            redis = redis.config_table(),
            probe = plugin("http-probe").display().to_string(),
            events = plugin("event-probe").display().to_string(),
            worker = plugin("video-worker").display().to_string(),
        ),
    )
    .unwrap();
    let invoke = |args: &[&str]| {
        let out = run(redloom(dir.path()).arg("invoke").args(args));
        (code(&out), text(&out.stdout), text(&out.stderr))
    };

    let (status, stdout, stderr) = invoke(&[
        "probe",
        "--http",
        "POST /echo/x/y/z?q=1&r=a+b",
        "-H",
        "X-Test: yes",
        "--input",
        "hello",
    ]);
    assert_eq!(status, 0, "{stderr}");
    assert_eq!(
        stdout,
        "POST /echo/x/y/z\nparam a=x\nparam rest=y/z\nquery q=1\nquery r=a b\n\
         header x-test=yes\nbody 5\n"
    );
    assert!(stderr.contains("HTTP 200\n"), "{stderr}");
    assert!(stderr.contains("x-probe: yes\n"), "{stderr}");
    // Given by hand, a parameter replaces the route's.
    let (status, stdout, stderr) =
        invoke(&["probe", "--http", "POST /echo/x/y", "--param", "a=override"]);
    assert_eq!(status, 0, "{stderr}");
    assert!(
        stdout.contains("param a=override\nparam rest=y\n"),
        "{stdout}"
    );

    let mut c = redis.client().await;
    let get = |key: &str| redis::cmd("GET").arg(format!("rl:{key}")).to_owned();
    let (status, _, stderr) = invoke(&["events", "--message", "news", "--input", "hi"]);
    assert_eq!(status, 0, "{stderr}");
    let last: Option<String> = get("events:kv:last:news")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(last.as_deref(), Some("hi"));
    let (status, _, stderr) = invoke(&["events", "--tick", "beat"]);
    assert_eq!(status, 0, "{stderr}");
    let ticks: Option<i64> = get("events:kv:ticks:beat")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(ticks, Some(1));
    let (status, _, stderr) =
        invoke(&["worker", "--job", "video:ingest", "--input", "s3://v/a.mp4"]);
    assert_eq!(status, 0, "{stderr}");
    let processed: Option<i64> = get("worker:kv:processed")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(processed, Some(1));
    // The handler's failure is the plugin's: exit 1 with its error.
    let (status, _, stderr) = invoke(&[
        "worker",
        "--job",
        "video:ingest",
        "--attempt",
        "3",
        "--input",
        "s3://v/broken.mp4",
    ]);
    assert_eq!(status, 1, "{stderr}");
    assert!(
        stderr.contains("cannot transcode s3://v/broken.mp4"),
        "{stderr}"
    );

    let (status, _, stderr) = invoke(&["worker", "--http", "GET /"]);
    assert_eq!(status, 3, "{stderr}");
    assert!(stderr.contains("export!(YourPlugin => [http])"), "{stderr}");
    let (status, _, stderr) = invoke(&["probe", "--http", "/no-method"]);
    assert_eq!(status, 2, "{stderr}");
    assert!(stderr.contains("expected METHOD PATH"), "{stderr}");
    let (status, _, stderr) = invoke(&["events", "--message", "a", "--tick", "b"]);
    assert_eq!(status, 2, "{stderr}");
    assert!(stderr.contains("cannot be used with"), "{stderr}");
}
