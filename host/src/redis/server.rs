//! A private `redis-server` process: the zero-config default of `redloom
//! serve` / `redloom invoke` when no Redis URL is given, and the test harness's
//! server.
//!
//! It listens on 127.0.0.1 on a free port, keeps its files in one folder and is
//! stopped when [`PrivateRedis::stop`] is called (graceful `SHUTDOWN`, which
//! flushes the AOF) or, failing that, killed when the value is dropped.

use std::io;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Environment variable naming the `redis-server` binary to run (default: from `PATH`).
pub const SERVER_BIN_ENV: &str = "REDLOOM_REDIS_SERVER";

/// How to start the server.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Folder for the server's files (AOF, log). Created if missing.
    pub dir: PathBuf,
    /// Append-only-file persistence (on for `serve`, off for tests).
    pub persistence: bool,
    /// Extra `redis-server` arguments, e.g. `["--cluster-enabled", "yes"]`.
    pub extra_args: Vec<String>,
    /// How long to wait for the server to answer `PING`.
    pub startup_timeout: Duration,
    /// Listen on this port instead of a free one (to restart a server where
    /// it was).
    pub port: Option<u16>,
}

impl ServerOptions {
    pub fn new(dir: impl Into<PathBuf>) -> ServerOptions {
        ServerOptions {
            dir: dir.into(),
            persistence: true,
            extra_args: Vec::new(),
            startup_timeout: Duration::from_secs(10),
            port: None,
        }
    }
}

/// Why the private server could not be started.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(
        "`{0}` is not installed. Install it (Debian/Ubuntu: `sudo apt-get install redis-server`), \
         or point redloom at a running Redis with --redis-url, REDIS_URL or [redis] url in redloom.toml"
    )]
    NotInstalled(String),
    #[error("cannot create the Redis data folder {0}: {1}")]
    Dir(PathBuf, io::Error),
    #[error("cannot start `{0}`: {1}")]
    Spawn(String, io::Error),
    #[error("redis-server did not start: {0}")]
    Failed(String),
}

/// A running private `redis-server`.
#[derive(Debug)]
pub struct PrivateRedis {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
}

impl PrivateRedis {
    /// Starts a server and waits until it answers `PING`.
    pub async fn start(options: ServerOptions) -> Result<PrivateRedis, StartError> {
        let bin = std::env::var(SERVER_BIN_ENV).unwrap_or_else(|_| "redis-server".to_string());
        std::fs::create_dir_all(&options.dir)
            .map_err(|e| StartError::Dir(options.dir.clone(), e))?;
        let dir = options
            .dir
            .canonicalize()
            .map_err(|e| StartError::Dir(options.dir.clone(), e))?;
        // The free port can be taken between our probe and the server's bind;
        // try a few ports before giving up.
        let mut last = String::new();
        for _ in 0..5 {
            let port = match options.port {
                Some(p) => p,
                None => {
                    free_port().map_err(|e| StartError::Failed(format!("no free port: {e}")))?
                }
            };
            let mut cmd = Command::new(&bin);
            cmd.arg("--port")
                .arg(port.to_string())
                .args([
                    "--bind",
                    "127.0.0.1",
                    "--protected-mode",
                    "yes",
                    "--daemonize",
                    "no",
                ])
                .arg("--dir")
                .arg(&dir)
                .args(["--logfile", "redis.log", "--save", ""])
                .args([
                    "--appendonly",
                    if options.persistence { "yes" } else { "no" },
                ])
                .args(&options.extra_args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            let child = match cmd.spawn() {
                Ok(c) => c,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Err(StartError::NotInstalled(bin));
                }
                Err(e) => return Err(StartError::Spawn(bin, e)),
            };
            let mut server = PrivateRedis {
                child: Some(child),
                port,
                dir: dir.clone(),
            };
            match server.wait_ready(options.startup_timeout).await {
                Ok(()) => return Ok(server),
                Err(e) => {
                    last = e;
                    server.kill();
                }
            }
        }
        Err(StartError::Failed(last))
    }

    async fn wait_ready(&mut self, timeout: Duration) -> Result<(), String> {
        let start = Instant::now();
        let client = redis::Client::open(self.url()).map_err(|e| e.to_string())?;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                return Err(format!(
                    "it exited with {status}; see {}",
                    self.log_path().display()
                ));
            }
            if let Ok(Ok(mut conn)) = tokio::time::timeout(
                Duration::from_millis(500),
                client.get_multiplexed_async_connection(),
            )
            .await
            {
                let pong: redis::RedisResult<String> =
                    redis::cmd("PING").query_async(&mut conn).await;
                if pong.is_ok() {
                    return Ok(());
                }
            }
            if start.elapsed() > timeout {
                return Err(format!(
                    "it did not answer PING within {timeout:?}; see {}",
                    self.log_path().display()
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("redis.log")
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Stops the server gracefully (`SHUTDOWN`, which writes the AOF), waiting
    /// up to five seconds before killing it.
    pub async fn stop(mut self) {
        if let Ok(client) = redis::Client::open(self.url())
            && let Ok(Ok(mut conn)) = tokio::time::timeout(
                Duration::from_secs(1),
                client.get_multiplexed_async_connection(),
            )
            .await
        {
            let _: Result<(), _> = tokio::time::timeout(
                Duration::from_secs(5),
                redis::cmd("SHUTDOWN").query_async::<()>(&mut conn),
            )
            .await
            .unwrap_or(Ok(()));
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            match self.child.as_mut().map(Child::try_wait) {
                Some(Ok(None)) => tokio::time::sleep(Duration::from_millis(20)).await,
                _ => break,
            }
        }
        self.kill();
    }

    /// Kills the server at once (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind(("127.0.0.1", 0))?.local_addr()?.port())
}
