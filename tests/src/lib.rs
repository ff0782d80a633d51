//! Test harness: private `redis-server` processes, plugins built once per
//! test run, and the `redloom` binary.
//!
//! Every server listens on a random free port in its own temporary folder
//! and is killed when its handle is dropped; nothing here touches port 6379
//! or a fixed key name.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use redloom::host::{Host, HostOptions};
use redloom::namespace::PluginName;
use redloom::plugin::PluginSpec;
use redloom::redis::server::{PrivateRedis, ServerOptions};

/// A private `redis-server`, killed (and its folder removed) on drop.
pub struct RedisServer {
    server: Option<PrivateRedis>,
    url: String,
    _dir: tempfile::TempDir,
}

impl RedisServer {
    /// Starts a standalone server without persistence.
    pub async fn start() -> RedisServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut options = ServerOptions::new(dir.path().join("redis"));
        options.persistence = false;
        let server = PrivateRedis::start(options)
            .await
            .expect("start redis-server (is it installed? see README)");
        RedisServer {
            url: server.url(),
            server: Some(server),
            _dir: dir,
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// A plain redis-rs connection, to look at what plugins wrote.
    pub async fn client(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .expect("connect to test redis")
    }

    /// Kills the server at once, to simulate an outage.
    pub fn kill(&mut self) {
        if let Some(mut s) = self.server.take() {
            s.kill();
        }
    }

    /// Kills the server and starts a new, empty one on the same port.
    pub async fn restart(&mut self) {
        self.kill();
        let port: u16 = self.url.rsplit(':').next().unwrap().parse().unwrap();
        let mut options = ServerOptions::new(self._dir.path().join("redis"));
        options.persistence = false;
        options.port = Some(port);
        let started = tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                // The old process may still hold the port for a moment.
                match PrivateRedis::start(options.clone()).await {
                    Ok(s) => return s,
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        })
        .await
        .expect("redis-server restarts on its port");
        self.server = Some(started);
    }
}

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The Cargo target folder this test binary was built into.
pub fn target_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("CARGO_TARGET_DIR") {
        let dir = PathBuf::from(dir);
        return if dir.is_absolute() {
            dir
        } else {
            workspace_root().join(dir)
        };
    }
    // target/debug/deps/<test binary>
    let exe = std::env::current_exe().unwrap();
    exe.ancestors().nth(3).unwrap().to_path_buf()
}

/// Path of the built component for crate `name` (e.g. `"kv-probe"`).
///
/// The first call in a test process runs `scripts/build-plugins`, which builds
/// every crate under `plugins/` and `tests/guests/` (cargo makes concurrent
/// test processes wait for each other, and a second build is a no-op).
pub fn plugin(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let mut cmd = Command::new(workspace_root().join("scripts/build-plugins"));
        cmd.current_dir(workspace_root())
            .env("CARGO", env!("CARGO"));
        let out = run_with_timeout(&mut cmd, Duration::from_secs(900));
        assert!(
            out.status.success(),
            "scripts/build-plugins failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    });
    let path = target_dir()
        .join("wasm32-wasip2/wasm")
        .join(format!("{}.wasm", name.replace('-', "_")));
    assert!(path.exists(), "{} was not built", path.display());
    path
}

/// The `redloom` binary, built once per test process.
pub fn redloom_bin() -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let out = run_with_timeout(
            Command::new(env!("CARGO"))
                .current_dir(workspace_root())
                .args(["build", "--quiet", "-p", "redloom", "--bin", "redloom"]),
            Duration::from_secs(900),
        );
        assert!(
            out.status.success(),
            "building redloom failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    });
    target_dir().join("debug/redloom")
}

/// Runs `cmd` to completion, killing it after `timeout` (the test then fails
/// with the output so far rather than hanging).
pub fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> Output {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    // Reading both pipes in another thread means a chatty child never blocks.
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(timeout) {
        Ok(out) => out.expect("output"),
        Err(_) => {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            let out = rx.recv().expect("output after kill").expect("output");
            panic!(
                "{cmd:?} did not finish within {timeout:?}\nstdout: {}\nstderr: {}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

/// A key name unique to this call, so tests never share keys.
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Options for a host on `redis`, keeping its cache in `data`, with room for
/// 32 concurrent invocations.
pub fn host_options(redis: &RedisServer, data: &Path) -> HostOptions {
    let mut options = HostOptions::from_config(&Default::default());
    options.redis_url = Some(redis.url().to_string());
    options.data_dir = data.to_path_buf();
    options.runtime.max_instances = 32;
    options
}

/// A host on `redis` with [`host_options`].
pub async fn host(redis: &RedisServer, data: &Path) -> Host {
    Host::start(host_options(redis, data))
        .await
        .expect("host starts")
}

/// The built crate `crate_name` as a plugin called `name`, default quotas.
pub fn spec(name: &str, crate_name: &str) -> PluginSpec {
    let mut s = PluginSpec::from_path(&plugin(crate_name));
    s.name = PluginName::parse(name).unwrap();
    s
}
