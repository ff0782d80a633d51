//! A private `redis-server` process: the zero-config default of `redloom
//! serve` / `redloom invoke` when no Redis URL is given, and the test harness's
//! server.
//!
//! It listens on 127.0.0.1 on a free port, keeps its files in one folder and is
//! stopped when [`PrivateRedis::stop`] is called (graceful `SHUTDOWN`, which
//! flushes the AOF) or, failing that, killed when the value is dropped.

use std::fs::File;
use std::io::{self, Read, Seek, Write};
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
    /// Claim the folder for this process (see [`CLAIM_FILE`]): a second
    /// redloom on the same folder is refused instead of starting a second
    /// server on the same AOF, and a server left running by a redloom that was
    /// killed is shut down before a new one starts. On for the zero-config
    /// server; the test harness restarts servers in place and leaves it off.
    pub claim: bool,
    /// Require this password (`requirepass`, written to a mode-0600
    /// `redis.conf` in the folder, so it never appears on a command line).
    pub password: Option<String>,
    /// Keep every file the server writes private to this user: the folder
    /// gets mode 0700 and the server runs with umask 077 (its AOF and log are
    /// 0600).
    pub private_files: bool,
}

/// The file in the server's folder that a running redloom holds locked
/// (`flock`), naming itself, its server's port and the server's pid. The lock
/// goes away with the process, however it ends; the names stay, so the next
/// redloom can find a server its predecessor left behind.
pub const CLAIM_FILE: &str = "redloom.lock";

impl ServerOptions {
    pub fn new(dir: impl Into<PathBuf>) -> ServerOptions {
        ServerOptions {
            dir: dir.into(),
            persistence: true,
            extra_args: Vec::new(),
            startup_timeout: Duration::from_secs(10),
            port: None,
            claim: false,
            password: None,
            private_files: false,
        }
    }
}

/// The file in the zero-config server's folder holding its password.
pub const PASSWORD_FILE: &str = "password";

/// The password in `dir/password`, or a new random one written there with
/// mode 0600 (the folder is created, mode 0700).
pub fn private_password(dir: &Path) -> io::Result<String> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let path = dir.join(PASSWORD_FILE);
    if let Some(password) = crate::files::read_secret(&path) {
        return Ok(password);
    }
    let password = crate::files::new_secret()?;
    crate::files::write_private(&path, &format!("{password}\n"))?;
    Ok(password)
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
    #[error(
        "the private Redis in {dir} is in use by another redloom (pid {owner}); \
         share it with --redis-url {share}, or stop that process first"
    )]
    InUse {
        dir: PathBuf,
        owner: u32,
        /// The `--redis-url` argument that reaches it (the password read from
        /// its file by the shell, so it is never printed).
        share: String,
    },
    #[error("cannot keep the password of the private Redis in {0}: {1}")]
    Password(PathBuf, io::Error),
    #[error("cannot claim the Redis data folder {0}: {1}")]
    Claim(PathBuf, io::Error),
}

/// A running private `redis-server`.
#[derive(Debug)]
pub struct PrivateRedis {
    child: Option<Child>,
    port: u16,
    password: Option<String>,
    dir: PathBuf,
    /// The locked [`CLAIM_FILE`], held for as long as the server runs.
    claim: Option<File>,
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
        if options.private_files {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| StartError::Dir(dir.clone(), e))?;
        }
        let conf = match &options.password {
            Some(p) => Some(write_conf(&dir, p).map_err(|e| StartError::Password(dir.clone(), e))?),
            None => None,
        };
        let mut claim = if options.claim {
            Some(claim_folder(&dir, options.password.as_deref()).await?)
        } else {
            None
        };
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
            // The config file (with the password) must come first.
            if let Some(conf) = &conf {
                cmd.arg(conf);
            }
            if options.private_files {
                use std::os::unix::process::CommandExt;
                // SAFETY: umask is async-signal-safe and touches nothing but
                // the child's file-creation mask.
                unsafe {
                    cmd.pre_exec(|| {
                        libc::umask(0o077);
                        Ok(())
                    });
                }
            }
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
                password: options.password.clone(),
                dir: dir.clone(),
                claim: None,
            };
            match server.wait_ready(options.startup_timeout).await {
                Ok(()) => {
                    if let Some(mut file) = claim.take() {
                        let record = Claim {
                            owner: std::process::id(),
                            port,
                            server: server.pid().unwrap_or(0),
                        };
                        record
                            .write(&mut file)
                            .map_err(|e| StartError::Claim(dir.clone(), e))?;
                        server.claim = Some(file);
                    }
                    return Ok(server);
                }
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

    /// The URL to connect with, password included.
    pub fn url(&self) -> String {
        match &self.password {
            Some(p) => format!("redis://:{p}@127.0.0.1:{}", self.port),
            None => format!("redis://127.0.0.1:{}", self.port),
        }
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
        // The server is gone: nothing for the next redloom to clean up.
        if let Some(file) = self.claim.take() {
            let _ = file.set_len(0);
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What [`CLAIM_FILE`] says: `owner-pid port server-pid`.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Claim {
    owner: u32,
    port: u16,
    server: u32,
}

impl Claim {
    fn read(file: &mut File) -> Option<Claim> {
        let mut text = String::new();
        file.seek(io::SeekFrom::Start(0)).ok()?;
        file.read_to_string(&mut text).ok()?;
        let mut words = text.split_whitespace().map(str::parse::<u64>);
        let mut next = || words.next()?.ok();
        Some(Claim {
            owner: u32::try_from(next()?).ok()?,
            port: u16::try_from(next()?).ok()?,
            server: u32::try_from(next()?).ok()?,
        })
    }

    fn write(&self, file: &mut File) -> io::Result<()> {
        file.set_len(0)?;
        file.seek(io::SeekFrom::Start(0))?;
        writeln!(file, "{} {} {}", self.owner, self.port, self.server)?;
        file.sync_all()
    }
}

/// Locks the folder's [`CLAIM_FILE`] for this process. If another process
/// holds it, says who and how to share its server. If a server named in the
/// file still runs although nobody holds the lock, its redloom died without
/// stopping it: it is shut down (gracefully, so its AOF is complete) before
/// a new server opens the same files.
async fn claim_folder(dir: &Path, password: Option<&str>) -> Result<File, StartError> {
    let path = dir.join(CLAIM_FILE);
    let failed = |e| StartError::Claim(dir.to_path_buf(), e);
    let mut file = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(failed)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let claim = Claim::read(&mut file);
            let port = claim.map_or(0, |c| c.port);
            let share = match password {
                Some(_) => format!(
                    "\"redis://:$(cat {})@127.0.0.1:{port}\"",
                    dir.join(PASSWORD_FILE).display()
                ),
                None => format!("redis://127.0.0.1:{port}"),
            };
            return Err(StartError::InUse {
                dir: dir.to_path_buf(),
                owner: claim.map_or(0, |c| c.owner),
                share,
            });
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(failed(e)),
    }
    if let Some(orphan) = Claim::read(&mut file)
        && orphan_alive(orphan, dir)
    {
        tracing::warn!(
            pid = orphan.server,
            port = orphan.port,
            "stopping the private redis-server left running by a redloom that did not exit cleanly"
        );
        stop_orphan(orphan, dir, password).await;
    }
    Ok(file)
}

/// Whether the server `claim` names still runs: a live (not zombie)
/// `redis-server` with that pid, on that port, in this folder. Checking
/// all three keeps a reused pid, or another Redis on a
/// reused port, from being taken for the orphan.
fn orphan_alive(claim: Claim, dir: &Path) -> bool {
    if claim.server == 0 {
        return false;
    }
    let proc = Path::new("/proc").join(claim.server.to_string());
    let live = std::fs::read_to_string(proc.join("stat")).is_ok_and(|stat| {
        // The state follows the parenthesised command name: `pid (comm) S ...`.
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X")
    });
    // redis-server retitles itself `redis-server 127.0.0.1:PORT` and works in
    // its --dir.
    let title = std::fs::read(proc.join("cmdline")).unwrap_or_default();
    let title = String::from_utf8_lossy(&title);
    live && title.contains("redis-server")
        && title.contains(&format!(":{}", claim.port))
        && std::fs::read_link(proc.join("cwd")).is_ok_and(|cwd| cwd == dir)
}

/// `SHUTDOWN` (which writes the AOF) through the orphan's port, then SIGKILL
/// if it is still there after five seconds.
async fn stop_orphan(orphan: Claim, dir: &Path, password: Option<&str>) {
    let url = match password {
        Some(p) => format!("redis://:{p}@127.0.0.1:{}", orphan.port),
        None => format!("redis://127.0.0.1:{}", orphan.port),
    };
    if let Ok(client) = redis::Client::open(url)
        && let Ok(Ok(mut conn)) = tokio::time::timeout(
            Duration::from_secs(1),
            client.get_multiplexed_async_connection(),
        )
        .await
    {
        let _ = tokio::time::timeout(
            Duration::from_secs(5),
            redis::cmd("SHUTDOWN").query_async::<()>(&mut conn),
        )
        .await;
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while orphan_alive(orphan, dir) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if orphan_alive(orphan, dir) {
        let _ = Command::new("kill")
            .args(["-9", &orphan.server.to_string()])
            .status();
    }
}

/// Writes `dir/redis.conf` (mode 0600) with the password; returns its path.
fn write_conf(dir: &Path, password: &str) -> io::Result<PathBuf> {
    let path = dir.join("redis.conf");
    crate::files::write_private(
        &path,
        &format!(
            "# Written by redloom at each start of its private redis-server.\nrequirepass {password}\n"
        ),
    )?;
    Ok(path)
}

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind(("127.0.0.1", 0))?.local_addr()?.port())
}
