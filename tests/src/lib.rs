//! Test harness: private `redis-server` processes, plugins built once per
//! test run, and the `redloom` binary.
//!
//! Every server listens on a random free port in its own temporary folder
//! and is killed when its handle is dropped; nothing here touches port 6379
//! or a fixed key name.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use redloom::config::Config;
use redloom::host::{Host, HostInvokeError, HostOptions};
use redloom::namespace::PluginName;
use redloom::plugin::PluginSpec;
use redloom::redis::server::{PrivateRedis, ServerOptions};
use redloom::redis::{Redis, RedisOptions, RedisTarget};
use redloom::serve::Server;
use redloom::store::{Caps, PluginContext};

/// Environment variable choosing the Redis the capability suites run
/// against: unset or `standalone` for one server, `cluster` for a 6-node
/// loopback Redis Cluster (`scripts/test` runs those suites both ways).
pub const BACKEND_ENV: &str = "REDLOOM_TEST_REDIS";

/// Whether [`RedisServer::start`] starts a Cluster in this test process.
pub fn cluster_backend() -> bool {
    match std::env::var(BACKEND_ENV).as_deref() {
        Ok("cluster") => true,
        Ok("standalone") | Err(_) => false,
        Ok(other) => panic!("{BACKEND_ENV}={other}: expected `standalone` or `cluster`"),
    }
}

/// A private Redis: one `redis-server`, or a loopback Redis Cluster of
/// three primaries with one replica each. Every node is killed (and the
/// folder removed) on drop.
pub struct RedisServer {
    /// One node, or six (the first three created as primaries).
    nodes: Vec<Option<PrivateRedis>>,
    ports: Vec<u16>,
    /// The first node's URL.
    url: String,
    cluster: bool,
    /// The Cluster nodes' `--cluster-node-timeout` (0 when standalone).
    node_timeout_ms: u32,
    dir: tempfile::TempDir,
}

/// `--cluster-node-timeout` of [`RedisServer::start_cluster`]: long enough
/// that a node slowed down by a loaded test machine is not failed over.
/// With 1 s, a busy CI run saw a primary marked failed mid-test (CLUSTERDOWN
/// in a test that kills nothing); with 5 s, `scripts/stress-test` still
/// did, twice in six runs (CLUSTERDOWN, and scripts counted on a node that
/// had become a replica). Only the failover tests kill nodes, and they use
/// [`FAILOVER_NODE_TIMEOUT_MS`].
const STEADY_NODE_TIMEOUT_MS: u32 = 30_000;

/// `--cluster-node-timeout` of [`RedisServer::start_cluster_for_failover`]:
/// a failover takes ≈ 2–3 s instead of ≈ 6–7 s.
const FAILOVER_NODE_TIMEOUT_MS: u32 = 1_000;

/// `redis-server` arguments of a Cluster node; diskless sync without delay
/// lets replicas catch up at once.
fn cluster_args(node_timeout_ms: u32) -> Vec<String> {
    [
        "--cluster-enabled",
        "yes",
        "--cluster-config-file",
        "nodes.conf",
        "--cluster-node-timeout",
        &node_timeout_ms.to_string(),
        "--repl-diskless-sync",
        "yes",
        "--repl-diskless-sync-delay",
        "0",
    ]
    .map(String::from)
    .to_vec()
}

impl RedisServer {
    /// Starts what [`BACKEND_ENV`] asks for: by default a standalone server
    /// without persistence.
    pub async fn start() -> RedisServer {
        if cluster_backend() {
            RedisServer::start_cluster().await
        } else {
            RedisServer::start_standalone().await
        }
    }

    /// Starts a standalone server without persistence.
    pub async fn start_standalone() -> RedisServer {
        RedisServer::start_standalone_with(Vec::new()).await
    }

    async fn start_standalone_with(args: Vec<String>) -> RedisServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let server = start_node(&dir.path().join("redis"), None, args).await;
        RedisServer {
            ports: vec![server.port()],
            url: server.url(),
            nodes: vec![Some(server)],
            cluster: false,
            node_timeout_ms: 0,
            dir,
        }
    }

    /// Starts a standalone server that also listens with TLS on the
    /// returned port, with `certs`' server certificate, and requires a
    /// client certificate signed by `certs`' CA there (mutual TLS). Its
    /// plain port stays open for the test's own checks ([`Self::client`]).
    pub async fn start_standalone_tls(certs: &TestCerts) -> (RedisServer, u16) {
        let tls_port = free_port();
        let redis = RedisServer::start_standalone_with(tls_args(certs, tls_port)).await;
        (redis, tls_port)
    }

    /// Starts a 6-node Cluster (3 primaries, 3 replicas) and waits until
    /// every slot is served, every node agrees, and every replica's link
    /// to its primary is up (a replica whose link is down refuses to take
    /// over).
    pub async fn start_cluster() -> RedisServer {
        RedisServer::start_cluster_with(STEADY_NODE_TIMEOUT_MS, None)
            .await
            .0
    }

    /// Like [`RedisServer::start_cluster`], with a 1 s node timeout so that
    /// a test that kills a node sees the failover quickly.
    pub async fn start_cluster_for_failover() -> RedisServer {
        RedisServer::start_cluster_with(FAILOVER_NODE_TIMEOUT_MS, None)
            .await
            .0
    }

    /// Like [`RedisServer::start_cluster`], with every node also listening
    /// with TLS (mutual TLS, as in [`Self::start_standalone_tls`]) on the
    /// returned ports, and the cluster bus and replication over TLS. A
    /// client on a TLS port is told the nodes' TLS ports; one on a plain
    /// port (the test's own checks) the plain ones.
    pub async fn start_cluster_tls(certs: &TestCerts) -> (RedisServer, Vec<u16>) {
        RedisServer::start_cluster_with(STEADY_NODE_TIMEOUT_MS, Some(certs)).await
    }

    async fn start_cluster_with(
        node_timeout_ms: u32,
        certs: Option<&TestCerts>,
    ) -> (RedisServer, Vec<u16>) {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut tls_ports = Vec::new();
        let starting: Vec<_> = (0..6)
            .map(|i| {
                let folder = dir.path().join(format!("node-{i}"));
                let mut args = cluster_args(node_timeout_ms);
                if let Some(certs) = certs {
                    let port = free_port();
                    tls_ports.push(port);
                    args.extend(tls_args(certs, port));
                    // The bus port is then the TLS port + 10000 unless named.
                    args.extend([
                        "--tls-cluster".into(),
                        "yes".into(),
                        "--tls-replication".into(),
                        "yes".into(),
                        "--cluster-port".into(),
                        free_port().to_string(),
                    ]);
                }
                tokio::spawn(async move { start_cluster_node(&folder, args).await })
            })
            .collect();
        let mut nodes = Vec::new();
        for s in starting {
            nodes.push(s.await.expect("node start task"));
        }
        let ports: Vec<u16> = nodes.iter().map(PrivateRedis::port).collect();
        let mut cmd = Command::new("redis-cli");
        let create_ports = match certs {
            // The nodes meet on their TLS ports, whose bus is TLS.
            Some(certs) => {
                cmd.arg("--tls")
                    .arg("--cacert")
                    .arg(&certs.ca)
                    .arg("--cert")
                    .arg(&certs.client_cert)
                    .arg("--key")
                    .arg(&certs.client_key);
                &tls_ports
            }
            None => &ports,
        };
        cmd.arg("--cluster").arg("create");
        cmd.args(create_ports.iter().map(|p| format!("127.0.0.1:{p}")));
        cmd.args(["--cluster-replicas", "1", "--cluster-yes"]);
        let out = tokio::task::spawn_blocking(move || {
            run_with_timeout(&mut cmd, Duration::from_secs(60))
        })
        .await
        .unwrap();
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let server = RedisServer {
            url: format!("redis://127.0.0.1:{}", ports[0]),
            nodes: nodes.into_iter().map(Some).collect(),
            ports,
            cluster: true,
            node_timeout_ms,
            dir,
        };
        server.wait_cluster_ready(Duration::from_secs(60)).await;
        (server, tls_ports)
    }

    /// Where a host should connect.
    pub fn target(&self) -> RedisTarget {
        if self.cluster {
            RedisTarget::Cluster(self.node_urls())
        } else {
            RedisTarget::Single(self.url().to_string())
        }
    }

    /// The `redloom` command-line arguments that select this Redis.
    pub fn cli_args(&self) -> Vec<String> {
        if self.cluster {
            vec!["--redis-cluster".into(), self.node_urls().join(",")]
        } else {
            vec!["--redis-url".into(), self.url.clone()]
        }
    }

    /// The `[redis]` table of a `redloom.toml` for this Redis.
    pub fn config_table(&self) -> String {
        match self.target() {
            RedisTarget::Single(url) => format!("[redis]\nurl = {url:?}\n"),
            RedisTarget::Cluster(seeds) => format!("[redis]\ncluster = {seeds:?}\n"),
        }
    }

    /// The URL of the (first) node. On a Cluster, prefer [`Self::target`],
    /// [`Self::cli_args`] or [`Self::config_table`].
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Every node's URL.
    pub fn node_urls(&self) -> Vec<String> {
        self.ports
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect()
    }

    /// A plain redis-rs connection, to look at what plugins wrote (a
    /// Cluster connection on a Cluster).
    pub async fn client(&self) -> TestConnection {
        if self.cluster {
            let client = redis::cluster::ClusterClientBuilder::new(self.node_urls())
                .retries(10)
                .build()
                .unwrap();
            TestConnection::Cluster(
                client
                    .get_async_connection()
                    .await
                    .expect("connect to test cluster"),
            )
        } else {
            TestConnection::Single(
                redis::Client::open(self.url())
                    .unwrap()
                    .get_multiplexed_async_connection()
                    .await
                    .expect("connect to test redis"),
            )
        }
    }

    /// Kills every node at once, to simulate an outage.
    pub fn kill(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut s) = node.take() {
                s.kill();
            }
        }
    }

    /// Kills node `i` (SIGKILL), e.g. a primary to force a failover.
    pub fn kill_node(&mut self, i: usize) {
        if let Some(mut s) = self.nodes[i].take() {
            s.kill();
        }
    }

    /// `EVAL`/`EVALSHA` calls (read-only forms too) since start (or
    /// `CONFIG RESETSTAT`), summed over every node, primaries and replicas.
    /// Redis replicates a script as its effects, never as the call, so each
    /// call counts once, on the node that ran it — even when a failover on a
    /// loaded machine has since made that node a replica, which
    /// [`RedisServer::command_calls`] would skip.
    pub async fn script_calls(&self) -> u64 {
        let mut calls = 0;
        for (i, node) in self.nodes.iter().enumerate() {
            if node.is_none() {
                continue;
            }
            let info: String = node_query(self.ports[i], &["INFO", "commandstats"])
                .await
                .unwrap();
            for line in info.lines() {
                let Some((name, rest)) = line
                    .strip_prefix("cmdstat_")
                    .and_then(|l| l.split_once(':'))
                else {
                    continue;
                };
                if !name.starts_with("eval") {
                    continue;
                }
                calls += rest
                    .strip_prefix("calls=")
                    .and_then(|r| r.split(',').next())
                    .and_then(|n| n.parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
        calls
    }

    /// Calls of each data command since start (or `CONFIG RESETSTAT`),
    /// summed over the primaries (`INFO commandstats`): what clients sent,
    /// not what replicas replayed, and not [`housekeeping`].
    pub async fn command_calls(&self) -> std::collections::HashMap<String, u64> {
        let mut calls = std::collections::HashMap::new();
        for (i, node) in self.nodes.iter().enumerate() {
            if node.is_none() {
                continue;
            }
            let port = self.ports[i];
            let role: String = node_query(port, &["INFO", "replication"]).await.unwrap();
            if !role.contains("role:master") {
                continue;
            }
            let info: String = node_query(port, &["INFO", "commandstats"]).await.unwrap();
            for line in info.lines() {
                let parsed = line
                    .strip_prefix("cmdstat_")
                    .and_then(|l| l.split_once(':'))
                    .and_then(|(name, rest)| {
                        let n: u64 = rest
                            .strip_prefix("calls=")?
                            .split(',')
                            .next()?
                            .parse()
                            .ok()?;
                        Some((name.to_string(), n))
                    });
                if let Some((name, n)) = parsed.filter(|(name, _)| !housekeeping(name)) {
                    *calls.entry(name).or_insert(0) += n;
                }
            }
        }
        calls
    }

    /// `CLIENT LIST` of the server that holds `key` (its primary, on a
    /// Cluster): the connections that could be blocked reading it.
    pub async fn client_list_for(&self, key: &str) -> String {
        let port = if self.cluster {
            self.ports[self.primary_for(key).await]
        } else {
            self.ports[0]
        };
        node_query(port, &["CLIENT", "LIST"]).await.unwrap()
    }

    /// The live nodes with a client whose `CLIENT LIST` line contains
    /// every one of `needles` (e.g. `sub=1` and a user name).
    pub async fn nodes_with_client(&self, needles: &[&str]) -> Vec<usize> {
        let mut found = Vec::new();
        for (i, port) in self.ports.iter().enumerate() {
            if self.nodes[i].is_none() {
                continue;
            }
            let Ok(list) = node_query::<String>(*port, &["CLIENT", "LIST"]).await else {
                continue;
            };
            if list.lines().any(|l| needles.iter().all(|n| l.contains(n))) {
                found.push(i);
            }
        }
        found
    }

    /// The index of the node that serves `key`'s slot as primary now.
    pub async fn primary_for(&self, key: &str) -> usize {
        let live = self.ports[self
            .nodes
            .iter()
            .position(Option::is_some)
            .expect("a live node")];
        let slot: u16 = node_query(live, &["CLUSTER", "KEYSLOT", key])
            .await
            .unwrap();
        let text = self.cluster_nodes().await;
        for line in text
            .lines()
            .filter(|l| l.contains("master") && !l.contains("fail"))
        {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let serves = fields.iter().skip(8).any(|range| {
                let (lo, hi) = range.split_once('-').unwrap_or((range, range));
                matches!((lo.parse::<u16>(), hi.parse::<u16>()), (Ok(lo), Ok(hi)) if (lo..=hi).contains(&slot))
            });
            if serves {
                let port: u16 = fields[1].split([':', '@']).nth(1).unwrap().parse().unwrap();
                return self.ports.iter().position(|p| *p == port).unwrap();
            }
        }
        panic!("no primary serves slot {slot} of {key:?}:\n{text}");
    }

    async fn cluster_nodes(&self) -> String {
        for (i, node) in self.nodes.iter().enumerate() {
            if node.is_none() {
                continue;
            }
            if let Ok(text) = node_query::<String>(self.ports[i], &["CLUSTER", "NODES"]).await {
                return text;
            }
        }
        panic!("no live cluster node answers CLUSTER NODES");
    }

    /// Kills every node and starts new, empty ones on the same ports. A
    /// Cluster comes back from its `nodes.conf` files with the same slots.
    pub async fn restart(&mut self) {
        self.kill();
        for i in 0..self.nodes.len() {
            self.start_again(i).await;
        }
        if self.cluster {
            self.wait_cluster_ready(Duration::from_secs(60)).await;
        }
    }

    /// Starts killed Cluster node `i` again, empty, on its port: its
    /// `nodes.conf` makes it rejoin, as a replica of whichever node took
    /// its slots over. Waits until the Cluster is ready again.
    pub async fn restart_node(&mut self, i: usize) {
        assert!(self.cluster, "restart_node is for Cluster nodes");
        self.start_again(i).await;
        self.wait_cluster_ready(Duration::from_secs(60)).await;
    }

    async fn start_again(&mut self, i: usize) {
        let (folder, args) = if self.cluster {
            (
                self.dir.path().join(format!("node-{i}")),
                cluster_args(self.node_timeout_ms),
            )
        } else {
            (self.dir.path().join("redis"), Vec::new())
        };
        let port = self.ports[i];
        let started = tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                // The old process may still hold the port for a moment.
                let mut options = ServerOptions::new(&folder);
                options.persistence = false;
                options.port = Some(port);
                options.extra_args = args.clone();
                match PrivateRedis::start(options).await {
                    Ok(s) => return s,
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        })
        .await
        .expect("redis-server restarts on its port");
        self.nodes[i] = Some(started);
    }

    /// Waits until every live node says `cluster_state:ok` with all slots
    /// assigned and the same number of known nodes, and every replica's
    /// link to its primary is up.
    pub async fn wait_cluster_ready(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let last = match self.cluster_ready().await {
                Ok(()) => return,
                Err(why) => why,
            };
            assert!(
                Instant::now() < deadline,
                "the cluster was not ready within {timeout:?}: {last}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn cluster_ready(&self) -> Result<(), String> {
        let live: Vec<u16> = self
            .nodes
            .iter()
            .zip(&self.ports)
            .filter(|(n, _)| n.is_some())
            .map(|(_, p)| *p)
            .collect();
        for port in &live {
            let info: String = node_query(*port, &["CLUSTER", "INFO"])
                .await
                .map_err(|e| format!("{port}: {e}"))?;
            for want in [
                "cluster_state:ok",
                "cluster_slots_assigned:16384",
                "cluster_slots_ok:16384",
            ] {
                if !info.contains(want) {
                    return Err(format!("{port}: no {want}"));
                }
            }
            let repl: String = node_query(*port, &["INFO", "replication"])
                .await
                .map_err(|e| format!("{port}: {e}"))?;
            if repl.contains("role:slave") && !repl.contains("master_link_status:up") {
                return Err(format!("{port}: replica link down"));
            }
        }
        Ok(())
    }
}

/// Commands clients send to manage connections and servers (the harness's
/// `INFO`, a Cluster client's topology refreshes), and that replicas send
/// their primary (`REPLCONF ACK` every second: a count taken over more than
/// a second, as on a busy machine, would include them), not to touch data.
fn housekeeping(command: &str) -> bool {
    let family = command.split('|').next().unwrap_or(command);
    matches!(
        family,
        "info"
            | "config"
            | "cluster"
            | "ping"
            | "client"
            | "hello"
            | "readonly"
            | "auth"
            | "select"
            | "replconf"
            | "psync"
            | "sync"
    )
}

/// Sends one command to the node on `port`, with a short timeout.
async fn node_query<T: redis::FromRedisValue>(port: u16, args: &[&str]) -> Result<T, String> {
    let client =
        redis::Client::open(format!("redis://127.0.0.1:{port}")).map_err(|e| e.to_string())?;
    tokio::time::timeout(Duration::from_secs(2), async {
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .map_err(|e| e.to_string())?;
        redis::cmd(args[0])
            .arg(&args[1..])
            .query_async::<T>(&mut conn)
            .await
            .map_err(|e| e.to_string())
    })
    .await
    .map_err(|_| "timed out".to_string())?
}

async fn start_node(folder: &Path, port: Option<u16>, extra_args: Vec<String>) -> PrivateRedis {
    let mut options = ServerOptions::new(folder);
    options.persistence = false;
    options.port = port;
    options.extra_args = extra_args;
    PrivateRedis::start(options)
        .await
        .expect("start redis-server (is it installed? see README)")
}

/// A cluster node on a port of its own ([`free_port`]), trying another
/// port if the one it got was taken before the server bound it.
async fn start_cluster_node(folder: &Path, extra_args: Vec<String>) -> PrivateRedis {
    let mut last = String::new();
    for _ in 0..5 {
        let mut options = ServerOptions::new(folder);
        options.persistence = false;
        options.port = Some(free_port());
        options.extra_args = extra_args.clone();
        match PrivateRedis::start(options).await {
            Ok(node) => return node,
            Err(e) => last = e.to_string(),
        }
    }
    panic!("start a cluster node (is redis-server installed? see README): {last}");
}

/// A free loopback port at or below 55535 (a Cluster node's bus listens
/// 10000 above its port unless told otherwise, and redis-server refuses a
/// higher one) whose bus port is free too, and that this test process has
/// never handed out before, nor as a bus port.
///
/// Never twice: when a test kills a Cluster node for good, the rest of its
/// cluster keeps calling the dead node's bus port; a new cluster of another
/// test that got the same port would be called by strangers while its
/// nodes meet (a `redis-cli --cluster create` was seen waiting forever for
/// its nodes to join, with a node of another test in their view).
fn free_port() -> u16 {
    static HANDED_OUT: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    for _ in 0..1000 {
        let port = redloom::redis::server::free_port().expect("a free port");
        if port > 55_535 {
            continue;
        }
        let bus = port + 10_000;
        let mut handed_out = HANDED_OUT.lock().expect("ports poisoned");
        if handed_out.contains(&port)
            || handed_out.contains(&bus)
            || std::net::TcpListener::bind(("127.0.0.1", bus)).is_err()
        {
            continue;
        }
        handed_out.insert(port);
        handed_out.insert(bus);
        return port;
    }
    panic!("no free port at or below 55535");
}

/// `redis-server` arguments for a TLS port with `certs`' server
/// certificate, requiring client certificates signed by their CA.
fn tls_args(certs: &TestCerts, tls_port: u16) -> Vec<String> {
    let path = |p: &Path| p.display().to_string();
    vec![
        "--tls-port".into(),
        tls_port.to_string(),
        "--tls-cert-file".into(),
        path(&certs.server_cert),
        "--tls-key-file".into(),
        path(&certs.server_key),
        "--tls-ca-cert-file".into(),
        path(&certs.ca),
        "--tls-auth-clients".into(),
        "yes".into(),
    ]
}

/// A private CA, a server certificate for `127.0.0.1` and `localhost`, and
/// a client certificate, all signed by the CA: PEM files in one folder.
pub struct TestCerts {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl TestCerts {
    /// Generates fresh keys and certificates into `dir`.
    pub fn generate(dir: &Path) -> TestCerts {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
        std::fs::create_dir_all(dir).unwrap();
        let write = |name: &str, pem: String| {
            let path = dir.join(name);
            std::fs::write(&path, pem).unwrap();
            path
        };
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "redloom test CA");
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let leaf = |names: Vec<String>| {
            let key = KeyPair::generate().unwrap();
            let cert = CertificateParams::new(names)
                .unwrap()
                .signed_by(&key, &ca, &ca_key)
                .unwrap();
            (cert.pem(), key.serialize_pem())
        };
        let (server_cert, server_key) = leaf(vec!["127.0.0.1".into(), "localhost".into()]);
        let (client_cert, client_key) = leaf(vec!["redloom-test-client".into()]);
        TestCerts {
            ca: write("ca.pem", ca.pem()),
            server_cert: write("server.pem", server_cert),
            server_key: write("server.key", server_key),
            client_cert: write("client.pem", client_cert),
            client_key: write("client.key", client_key),
        }
    }
}

/// A connection for checks in tests: to one server or to a Cluster.
#[derive(Clone)]
pub enum TestConnection {
    Single(redis::aio::MultiplexedConnection),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl redis::aio::ConnectionLike for TestConnection {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            TestConnection::Single(c) => c.req_packed_command(cmd),
            TestConnection::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            TestConnection::Single(c) => c.req_packed_commands(pipeline, offset, count),
            TestConnection::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            TestConnection::Single(c) => c.get_db(),
            TestConnection::Cluster(c) => c.get_db(),
        }
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
        let out = run_with_timeout(nested_cargo(&mut cmd), Duration::from_secs(900));
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
            nested_cargo(
                Command::new(env!("CARGO"))
                    .current_dir(workspace_root())
                    // `--workspace`: the same feature resolution as `cargo
                    // test --workspace`, so this does not rebuild redis,
                    // rustls and the host library in another configuration
                    // (and the next test build does not rebuild them back).
                    .args(["build", "--quiet", "--workspace", "--bin", "redloom"]),
            ),
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

/// Prepares `cmd`, which runs cargo (directly or through a build script), to
/// build as a top-level `cargo` would: without the variables cargo sets for
/// the test process (`CARGO_PKG_*`, `CARGO_MANIFEST_*`, `CARGO_CRATE_NAME`,
/// …).
///
/// ring's build script tracks `CARGO_PKG_NAME` and `CARGO_MANIFEST_DIR`: a
/// nested build that inherits the test's values reruns it (and rebuilds
/// rustls, redis and the host after it), and the next `cargo test` or
/// `cargo clippy` rebuilds them back — about 20 s of every warm
/// `scripts/test`, twice. Variables the user set (`CARGO_HOME`,
/// `CARGO_TARGET_DIR`, `CARGO_BUILD_*`, …) are kept.
pub fn nested_cargo(cmd: &mut Command) -> &mut Command {
    const SET_FOR_TESTS: [&str; 8] = [
        "CARGO_PKG_",
        "CARGO_MANIFEST_",
        "CARGO_CRATE_NAME",
        "CARGO_BIN_",
        "CARGO_PRIMARY_PACKAGE",
        "CARGO_TARGET_TMPDIR",
        "CARGO_RUSTC_CURRENT_DIR",
        "CARGO_CFG_",
    ];
    for (name, _) in std::env::vars_os() {
        let Some(name) = name.to_str() else { continue };
        if SET_FOR_TESTS.iter().any(|p| name.starts_with(p)) {
            cmd.env_remove(name);
        }
    }
    cmd
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

/// Longest one async test may run before it fails as timed out. Generous,
/// so a test slowed down by a loaded 2-core machine is not cut off, yet
/// every test stops by itself.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(300);

/// Runs a test body, failing the test if it takes over [`TEST_TIMEOUT`].
pub async fn with_timeout<F: std::future::Future<Output = ()>>(f: F) {
    with_timeout_of(TEST_TIMEOUT, f).await
}

/// Runs a test body, failing the test if it takes over `limit`.
pub async fn with_timeout_of<F: std::future::Future<Output = ()>>(limit: Duration, f: F) {
    if tokio::time::timeout(limit, f).await.is_err() {
        panic!("test timed out after {limit:?}");
    }
}

/// How long a test waits for a state it brought about (a guest reaching a
/// step, a lock taken, a lease appearing or expiring): far longer than it
/// takes even on a loaded machine, so only a real failure runs into it.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// Polls `check` every 5 ms until it returns `Ok`, for at most
/// [`PATIENCE`]; then fails naming `what` and the last state `check`
/// reported as `Err`.
pub async fn until<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let started = Instant::now();
    loop {
        match check().await {
            Ok(v) => return v,
            Err(state) => assert!(
                started.elapsed() < PATIENCE,
                "{what}: still not after {PATIENCE:?} (last seen: {state})"
            ),
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Runs a probe guest's program (`tests/guests/*-probe`: a JSON list of
/// operations in, one JSON result per operation out) on plugin `plugin`.
pub async fn run_probe(
    host: &Host,
    plugin: &str,
    ops: serde_json::Value,
) -> Result<Vec<serde_json::Value>, HostInvokeError> {
    let out = host
        .invoke(
            &PluginName::parse(plugin).unwrap(),
            ops.to_string().as_bytes(),
        )
        .await?;
    Ok(serde_json::from_slice(&out).expect("a probe's output is JSON"))
}

/// [`run_probe`], failing the test if the invocation fails.
pub async fn probe(host: &Host, plugin: &str, ops: serde_json::Value) -> Vec<serde_json::Value> {
    run_probe(host, plugin, ops)
        .await
        .unwrap_or_else(|e| panic!("probe {plugin} failed: {e}"))
}

/// The value of a probe result `{"ok": …}`; fails on anything else.
pub fn ok(v: &serde_json::Value) -> &serde_json::Value {
    v.get("ok")
        .unwrap_or_else(|| panic!("expected ok, got {v}"))
}

/// The error kind of a probe result `{"err": {"kind": …}}`; fails on
/// anything else.
pub fn err_kind(v: &serde_json::Value) -> &str {
    v["err"]["kind"]
        .as_str()
        .unwrap_or_else(|| panic!("expected err, got {v}"))
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
    options.redis_target = Some(redis.target());
    options.data_dir = data.to_path_buf();
    options.oci_lock = data.join(redloom::oci::LOCK_FILE);
    options.runtime.max_instances = 32;
    options
}

/// One instance's capability state for a plugin called `name` with
/// `quotas`, on its own connection to `redis`: drives a capability's host
/// implementation (the WIT `Host` traits of `redloom::bindings`) without a
/// guest (`suite/caps.rs`).
pub async fn caps(redis: &RedisServer, name: &str, quotas: redloom::config::Quotas) -> Caps {
    let conn = connect(redis).await;
    Caps::new(Arc::new(plugin_context(name, quotas)), Some(conn))
}

/// The host's own connection to `redis` (generous timeouts).
pub async fn connect(redis: &RedisServer) -> Redis {
    let options = RedisOptions::new(Duration::from_secs(10), Duration::from_secs(30));
    Redis::connect_to(&redis.target(), options)
        .await
        .expect("connects to the test Redis")
}

/// What the instances of a plugin `name` with `quotas` share (no settings,
/// no outbound hosts), to build a `Caps` from.
pub fn plugin_context(name: &str, quotas: redloom::config::Quotas) -> PluginContext {
    PluginContext::new(
        PluginName::parse(name).unwrap(),
        Default::default(),
        quotas,
        Vec::new(),
    )
}

/// A connection as the plugin `name`'s own ACL user (`acl = true`),
/// created through `host`.
pub async fn acl_user(host: &Redis, name: &str) -> Redis {
    let namespace = redloom::namespace::Namespace::new(&PluginName::parse(name).unwrap());
    host.for_acl_user(&format!("redloom-{name}"), namespace.prefix(), &[])
        .await
        .expect("an ACL user")
}

/// A host on `redis` with [`host_options`] but room for `max_instances`
/// invocations at once, shared (several hosts, or a host kept by tasks).
pub async fn shared_host(redis: &RedisServer, data: &Path, max_instances: u32) -> Arc<Host> {
    let mut options = host_options(redis, data);
    options.runtime.max_instances = max_instances;
    Arc::new(Host::start(options).await.expect("host starts"))
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

/// An HTTP client for the tests' requests to `serve`, with a 30 s timeout
/// so no request outlives its test.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("an HTTP client")
}

/// `redloom serve` in this test process: a host started with `options`,
/// with the plugins, triggers and listeners of `config`. Send on `stop` (or
/// drop it) to shut it down; `done` ends when the shutdown is complete.
pub struct Served {
    pub host: Arc<Host>,
    /// The HTTP listener's address.
    pub addr: std::net::SocketAddr,
    /// The admin listener's address.
    pub admin: std::net::SocketAddr,
    pub stop: tokio::sync::oneshot::Sender<()>,
    pub done: tokio::task::JoinHandle<()>,
}

impl Served {
    pub async fn start(options: HostOptions, config: Config) -> Served {
        let host = Arc::new(Host::start(options).await.expect("host starts"));
        let server = Server::bind(host.clone(), config)
            .await
            .expect("serve binds");
        let (addr, admin) = (server.http_addr(), server.admin_addr());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let done = tokio::spawn(server.run(async move {
            let _ = stopped.await;
        }));
        Served {
            host,
            addr,
            admin,
            stop,
            done,
        }
    }

    /// Stops it and waits (at most 30 s) until the shutdown is complete.
    pub async fn shutdown(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(30), self.done)
            .await
            .expect("serve stops within 30 s")
            .expect("serve's task");
    }
}

/// A `redloom serve` process on a config file of its own, its log in a
/// file; killed (`kill -9`) on drop unless it was stopped.
pub struct ServeProcess {
    child: std::process::Child,
    log: std::path::PathBuf,
    /// The admin API's address, from the "serving" log line.
    pub admin: String,
    /// The HTTP listener's address, from the same line.
    pub http: String,
}

impl ServeProcess {
    /// Starts `redloom serve` in `dir` with `text` as its `redloom.toml`
    /// and waits (bounded) until it serves.
    pub async fn start(dir: &std::path::Path, text: &str) -> ServeProcess {
        ServeProcess::start_with(dir, text, |_| {}).await
    }

    /// [`ServeProcess::start`], with `configure` applied to the command
    /// first (e.g. to set resource limits for the child).
    pub async fn start_with(
        dir: &std::path::Path,
        text: &str,
        configure: impl FnOnce(&mut Command),
    ) -> ServeProcess {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("redloom.toml"), text).unwrap();
        let log = dir.join("serve.log");
        let mut command = Command::new(redloom_bin());
        command
            .current_dir(dir)
            .arg("serve")
            .env_remove("REDIS_URL")
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        configure(&mut command);
        let child = command.spawn().unwrap();
        let mut p = ServeProcess {
            child,
            log,
            admin: String::new(),
            http: String::new(),
        };
        let start = Instant::now();
        (p.admin, p.http) = loop {
            let text = p.log_text();
            // `admin=ADDR` in the text format, `"admin":"ADDR"` in JSON.
            let field = |name: &str| {
                text.split_whitespace()
                    .find_map(|w| w.strip_prefix(&format!("{name}=")))
                    .or_else(|| {
                        let (_, rest) = text.split_once(&format!("\"{name}\":\""))?;
                        rest.split('"').next()
                    })
                    .map(str::to_string)
            };
            if let (Some(admin), Some(http)) = (field("admin"), field("http")) {
                break (admin, http);
            }
            assert!(
                p.child.try_wait().unwrap().is_none(),
                "redloom serve exited:\n{text}"
            );
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "redloom serve did not start:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        p
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The counter `name` of `plugin` on this process's `/metrics`.
    pub async fn counter(&self, plugin: &str, name: &str) -> f64 {
        let text = reqwest::get(format!("http://{}/metrics", self.admin))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        metric_counter(&text, name, plugin)
    }

    /// SIGTERM, then waits (bounded) for a clean exit.
    pub async fn stop(mut self) {
        let pid = self.child.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
        let start = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "redloom serve did not stop:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert!(status.success(), "{status}:\n{}", self.log_text());
    }
}

/// Dropping it without [`ServeProcess::stop`] kills it (SIGKILL), as a crash
/// would.
impl Drop for ServeProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The value of counter `name` for `plugin` in Prometheus text (a
/// `/metrics` page).
pub fn metric_counter(text: &str, name: &str, plugin: &str) -> f64 {
    let lines = text.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("valid Prometheus text");
    scrape
        .samples
        .iter()
        .find(|s| s.metric == name && s.labels.get("plugin") == Some(plugin))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v) => v,
            ref other => panic!("{name} is {other:?}"),
        })
        .unwrap_or_else(|| panic!("{name}{{plugin={plugin:?}}} not in:\n{text}"))
}

/// The integer at `key` (0 when missing).
pub async fn get_i64(conn: &mut TestConnection, key: &str) -> i64 {
    redis::AsyncCommands::get::<_, Option<i64>>(conn, key)
        .await
        .unwrap()
        .unwrap_or(0)
}

/// Polls `key` until it reaches `want` (or `within` passes) and returns the
/// last value.
pub async fn wait_for(conn: &mut TestConnection, key: &str, want: i64, within: Duration) -> i64 {
    let start = Instant::now();
    loop {
        let v = get_i64(conn, key).await;
        if v >= want || start.elapsed() > within {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A private Prometheus (Debian's `prometheus`, installed by
/// `scripts/setup`): scrapes `target`'s `/metrics` every second, evaluates
/// `rules` every second, listens on a free loopback port, keeps its data in
/// a temporary folder; killed on drop.
pub struct Prometheus {
    child: std::process::Child,
    /// `http://127.0.0.1:PORT`
    pub url: String,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    pub async fn start(target: std::net::SocketAddr, rules: &Path) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 rule_files: [{rules:?}]\n\
                 scrape_configs:\n  - job_name: redloom\n    static_configs:\n      - targets: [\"{target}\"]\n"
            ),
        )
        .unwrap();
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start prometheus ({e}); scripts/setup installs it (Debian's `prometheus`)")
            });
        let p = Prometheus {
            child,
            url: format!("http://127.0.0.1:{port}"),
            _dir: dir,
        };
        until("prometheus answers", || async {
            match reqwest::get(format!("{}/-/ready", p.url)).await {
                Ok(r) if r.status().is_success() => Ok(()),
                Ok(r) => Err(r.status().to_string()),
                Err(e) => Err(format!("{e}; log:\n{}", p.log())),
            }
        })
        .await;
        p
    }

    /// Prometheus's own log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// `GET /api/v1/<path>` with `query`: the answer's `data`; fails the
    /// test on an error answer (a bad expression) with Prometheus's reason.
    pub async fn api(&self, path: &str, query: &[(&str, &str)]) -> serde_json::Value {
        let answer: serde_json::Value = reqwest::Client::new()
            .get(format!("{}/api/v1/{path}", self.url))
            .query(query)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(answer["status"], "success", "{path} {query:?}: {answer}");
        answer["data"].clone()
    }

    /// The instant vector `expr` evaluates to now.
    pub async fn query(&self, expr: &str) -> Vec<serde_json::Value> {
        let data = self.api("query", &[("query", expr)]).await;
        data["result"].as_array().cloned().unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A private OCI registry (Debian's `docker-registry`, installed by
/// `scripts/setup`) on a free loopback port, its storage in a temporary
/// folder; with `user` set, it wants that user's password
/// ([`Registry::PASSWORD`]) by HTTP basic authentication. Killed on drop.
pub struct Registry {
    child: std::process::Child,
    /// `127.0.0.1:PORT`
    pub addr: String,
    dir: tempfile::TempDir,
}

impl Registry {
    /// The password of the test user.
    pub const PASSWORD: &'static str = "redloom-test-password";
    /// bcrypt (cost 4) of [`Registry::PASSWORD`], for the registry's htpasswd.
    const PASSWORD_BCRYPT: &'static str =
        "$2b$04$lsBywOgt0KM2G8Ewp/H8H.T0.SyzMj42qerRqMY7X6brpW7x9TRRi";

    pub async fn start(user: Option<&str>) -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut config = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {:?}\n\
             http:\n  addr: 127.0.0.1:{port}\n",
            dir.path().join("data")
        );
        if let Some(user) = user {
            let htpasswd = dir.path().join("htpasswd");
            std::fs::write(&htpasswd, format!("{user}:{}\n", Self::PASSWORD_BCRYPT)).unwrap();
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: redloom-test\n    path: {htpasswd:?}\n"
            ));
        }
        let file = dir.path().join("config.yml");
        std::fs::write(&file, config).unwrap();
        let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&file)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start docker-registry ({e}); scripts/setup installs it (Debian's `docker-registry`)")
            });
        let r = Registry {
            child,
            addr: format!("127.0.0.1:{port}"),
            dir,
        };
        until("the registry answers", || async {
            // 200, or 401 when it wants a password: either way it serves.
            match reqwest::get(format!("http://{}/v2/", r.addr)).await {
                Ok(resp) if resp.status().as_u16() == 200 || resp.status().as_u16() == 401 => {
                    Ok(())
                }
                Ok(resp) => Err(resp.status().to_string()),
                Err(e) => Err(format!(
                    "{e}; log:\n{}",
                    std::fs::read_to_string(r.dir.path().join("registry.log")).unwrap_or_default()
                )),
            }
        })
        .await;
        r
    }

    /// A Docker configuration folder (for `DOCKER_CONFIG`) holding `user`'s
    /// credentials for this registry, as `docker login` writes them.
    pub fn docker_config(&self, user: &str) -> PathBuf {
        use base64::Engine as _;
        let folder = self.dir.path().join("docker");
        std::fs::create_dir_all(&folder).unwrap();
        let auth =
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{}", Self::PASSWORD));
        std::fs::write(
            folder.join("config.json"),
            serde_json::json!({"auths": {self.addr.clone(): {"auth": auth}}}).to_string(),
        )
        .unwrap();
        folder
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An OTLP/HTTP trace receiver on a free loopback port: takes
/// `POST /v1/traces` in the JSON encoding (`OTEL_EXPORTER_OTLP_PROTOCOL=
/// http/json`) and keeps every span it is sent.
pub struct OtlpReceiver {
    /// `http://127.0.0.1:PORT`, for `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub endpoint: String,
    spans: Arc<std::sync::Mutex<Vec<ReceivedSpan>>>,
    task: tokio::task::JoinHandle<()>,
}

/// One span as an OTLP receiver decoded it.
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    /// The resource's `service.name`.
    pub service: String,
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    pub name: String,
    /// String-valued attributes.
    pub attributes: std::collections::BTreeMap<String, String>,
}

impl OtlpReceiver {
    pub async fn start() -> OtlpReceiver {
        let spans: Arc<std::sync::Mutex<Vec<ReceivedSpan>>> = Arc::default();
        let kept = spans.clone();
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |body: axum::body::Bytes| {
                let kept = kept.clone();
                async move {
                    let request: serde_json::Value =
                        serde_json::from_slice(&body).expect("an OTLP/JSON trace request");
                    kept.lock().unwrap().extend(decode_spans(&request));
                    axum::Json(serde_json::json!({}))
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        OtlpReceiver {
            endpoint,
            spans,
            task,
        }
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.spans.lock().unwrap().clone()
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The spans of an `ExportTraceServiceRequest` in OTLP's JSON encoding.
fn decode_spans(request: &serde_json::Value) -> Vec<ReceivedSpan> {
    let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
    let attributes = |v: &serde_json::Value| -> std::collections::BTreeMap<String, String> {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| {
                Some((
                    text(&a["key"]),
                    a["value"]["stringValue"].as_str()?.to_string(),
                ))
            })
            .collect()
    };
    let mut out = Vec::new();
    for resource in request["resourceSpans"].as_array().into_iter().flatten() {
        let service = attributes(&resource["resource"]["attributes"])
            .remove("service.name")
            .unwrap_or_default();
        for scope in resource["scopeSpans"].as_array().into_iter().flatten() {
            for span in scope["spans"].as_array().into_iter().flatten() {
                out.push(ReceivedSpan {
                    service: service.clone(),
                    trace_id: text(&span["traceId"]),
                    span_id: text(&span["spanId"]),
                    parent_span_id: text(&span["parentSpanId"]),
                    name: text(&span["name"]),
                    attributes: attributes(&span["attributes"]),
                });
            }
        }
    }
    out
}
