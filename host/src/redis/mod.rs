//! Everything that talks to Redis.
//!
//! **Architecture Invariant:** no other module sends Redis commands. Capability
//! modules call the typed methods here with keys already mapped into the
//! plugin's namespace, so this module never sees an un-namespaced plugin key.
//!
//! One shared connection serves all invocations: for a standalone Redis a
//! [`ConnectionManager`] (a multiplexed connection that reconnects by
//! itself), for Redis Cluster a cluster connection (one multiplexed
//! connection per node; redis-rs follows `MOVED`/`ASK` and refreshes the
//! slot map after a failover). Clones are cheap and concurrent commands are
//! pipelined. Blocking reads and subscriptions get connections of their own.
//! Every command has a response timeout; a timed-out or failed command
//! surfaces as an error to the one invocation that sent it.
//!
//! **Cluster discipline:** every Lua script and every `MULTI` touches keys
//! of one hash tag (see `namespace.rs`), so it runs on one slot.

pub mod acl;
pub mod cache;
pub mod info;
mod limiter;
mod lock;
pub mod queue;
pub mod scripts;
pub mod server;
pub mod storage;
pub mod tracking;

pub use limiter::LimiterReply;
pub use lock::{AcquireReply, LockHolder};

use std::path::Path;
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{
    AsyncCommands, Cmd, ErrorKind, Pipeline, RedisError, RedisFuture, ServerErrorKind, Value,
};

use scripts::Scripts;

/// Connection settings.
#[derive(Debug, Clone)]
pub struct RedisOptions {
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    /// Replicas that must have a queue message or a fencing token before
    /// the plugin is told it was written (`WAIT`); 0: do not wait.
    pub wait_replicas: u32,
    /// How long `WAIT` may take.
    pub wait_timeout: Duration,
    /// Certificates for `rediss://` servers beyond the public CAs: a private
    /// CA, and a client certificate for mutual TLS. `None`: the public
    /// (webpki) roots only.
    pub tls: Option<TlsFiles>,
}

impl RedisOptions {
    /// Timeouts as given, no waiting for replicas, public CAs.
    pub fn new(connect_timeout: Duration, response_timeout: Duration) -> RedisOptions {
        RedisOptions {
            connect_timeout,
            response_timeout,
            wait_replicas: 0,
            wait_timeout: Duration::from_millis(500),
            tls: None,
        }
    }
}

/// TLS certificates read from PEM files (`[redis] tls-ca-file`,
/// `tls-cert-file`, `tls-key-file`).
#[derive(Debug, Clone)]
pub struct TlsFiles {
    certs: redis::TlsCertificates,
}

impl TlsFiles {
    /// Reads the files; `cert` and `key` come together or not at all. An
    /// error names the file and what is wrong with it.
    pub fn read(
        ca: Option<&Path>,
        cert: Option<&Path>,
        key: Option<&Path>,
    ) -> anyhow::Result<TlsFiles> {
        fn pem(path: &Path, what: &str, marker: &str) -> anyhow::Result<Vec<u8>> {
            let bytes = crate::files::read_bounded(path, crate::files::MAX_PEM_BYTES)
                .map_err(|e| anyhow::anyhow!("cannot read the {what} {}: {e}", path.display()))?;
            if !String::from_utf8_lossy(&bytes).contains(marker) {
                anyhow::bail!(
                    "the {what} {} is not PEM: it has no `{marker}` block",
                    path.display()
                );
            }
            Ok(bytes)
        }
        let client_tls = match (cert, key) {
            (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
                client_cert: pem(cert, "client certificate", "-----BEGIN CERTIFICATE-----")?,
                client_key: pem(key, "client key", "PRIVATE KEY-----")?,
            }),
            (None, None) => None,
            _ => anyhow::bail!("a client certificate needs both tls-cert-file and tls-key-file"),
        };
        let root_cert = ca
            .map(|ca| pem(ca, "CA certificate", "-----BEGIN CERTIFICATE-----"))
            .transpose()?;
        let certs = redis::TlsCertificates {
            client_tls,
            root_cert,
        };
        // The same check redis-rs makes when it connects, here with the file names.
        redis::Client::build_with_tls("rediss://localhost", certs.clone()).map_err(|e| {
            anyhow::anyhow!(
                "unusable TLS files ({}): {e}",
                [ca, cert, key]
                    .into_iter()
                    .flatten()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })?;
        Ok(TlsFiles { certs })
    }

    /// `info` with these certificates; refused unless it is a `rediss://` URL.
    fn apply(
        &self,
        info: redis::ConnectionInfo,
        shown: &str,
    ) -> anyhow::Result<redis::ConnectionInfo> {
        redis::Client::build_with_tls(info, self.certs.clone())
            .map(|c| c.get_connection_info().clone())
            .map_err(|e| {
                anyhow::anyhow!(
                    "`{shown}`: TLS certificates are configured (tls-ca-file, tls-cert-file), so the URL must be rediss://: {e}"
                )
            })
    }
}

/// A failed Redis command, classified for the plugin.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CommandError {
    /// The command got no reply in time.
    #[error("Redis did not answer within the response timeout")]
    Timeout,
    /// The connection is down or Redis cannot serve (loading, failing over).
    #[error("Redis is unavailable: {0}")]
    Unavailable(String),
    /// Redis rejected the command because of the data (wrong type, not an integer).
    #[error("Redis rejected the command: {0}")]
    Rejected(String),
    /// The connection's ACL user may not run the command or touch the key
    /// (`NOPERM`): the plugin's ACL boundary at work.
    #[error("Redis refused the command to this ACL user: {0}")]
    Denied(String),
}

impl From<RedisError> for CommandError {
    fn from(e: RedisError) -> Self {
        if e.is_timeout() {
            return CommandError::Timeout;
        }
        // Inside a script Redis 7.0 reports an ACL refusal as a plain ERR
        // with this text (later versions: NOPERM).
        let acl_in_script = e
            .detail()
            .is_some_and(|d| d.contains("can't access at least one of the keys"));
        if e.code() == Some("NOPERM")
            || e.kind() == ErrorKind::Server(ServerErrorKind::NoPerm)
            || acl_in_script
        {
            return CommandError::Denied(e.detail().unwrap_or("no permission").to_string());
        }
        if e.code() == Some("WRONGTYPE") {
            return CommandError::Rejected("the key holds a value of another type".into());
        }
        match e.kind() {
            ErrorKind::Server(ServerErrorKind::ResponseError | ServerErrorKind::ExecAbort) => {
                CommandError::Rejected(e.detail().unwrap_or("error").to_string())
            }
            _ => CommandError::Unavailable(e.to_string()),
        }
    }
}

pub type CommandResult<T> = Result<T, CommandError>;

/// How often the Cluster client retries a command that met a moving slot
/// or a failed node, with waits from 50 ms up to 1 s between tries.
const CLUSTER_RETRIES: u32 = 6;

/// `template` (credentials, TLS settings) for the node at `host:port`.
fn at_address(template: &redis::ConnectionInfo, host: &str, port: u16) -> redis::ConnectionInfo {
    let addr = match template.addr() {
        redis::ConnectionAddr::TcpTls {
            insecure,
            tls_params,
            ..
        } => redis::ConnectionAddr::TcpTls {
            host: host.to_string(),
            port,
            insecure: *insecure,
            tls_params: tls_params.clone(),
        },
        _ => redis::ConnectionAddr::Tcp(host.to_string(), port),
    };
    template.clone().set_addr(addr)
}

/// Sends `commands` as one `MULTI`/`EXEC` on `conn` and returns each
/// command's reply (a failed command's is a `Value::ServerError`; the
/// others ran, as in Redis), or `None` when a `WATCH`ed key changed and
/// nothing ran. On a shared multiplexed connection the whole transaction
/// is written at once, so no other command lands inside it.
pub async fn exec_atomic<C: ConnectionLike>(
    conn: &mut C,
    commands: Vec<Cmd>,
) -> CommandResult<Option<Vec<Value>>> {
    let mut pipe = redis::pipe();
    pipe.atomic().ignore_errors();
    for cmd in commands {
        pipe.add_command(cmd);
    }
    match pipe.query_async::<Value>(conn).await? {
        Value::Nil => Ok(None),
        Value::Array(replies) => Ok(Some(replies)),
        other => Err(CommandError::Rejected(format!(
            "unexpected reply to EXEC: {other:?}"
        ))),
    }
}

/// One range of `CLUSTER SLOTS`: slots `start..=end` and their primary.
struct SlotRange {
    start: u16,
    end: u16,
    host: String,
    port: u16,
    /// The primary's node id.
    id: String,
}

/// Where [`Redis::scan_page`] keeps a Cluster node's position in the
/// cursor: the top 16 bits; a node's own `SCAN` cursor stays below 2^48
/// (it is less than the size of the node's hash table).
const SCAN_NODE_SHIFT: u32 = 48;
const SCAN_NODE_CURSOR: u64 = (1 << SCAN_NODE_SHIFT) - 1;

/// When a `SET` may write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetCondition {
    Always,
    IfAbsent,
    IfPresent,
}

/// Where Redis is: one server, or the seed nodes of a Cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisTarget {
    /// A standalone (or managed, proxied) Redis.
    Single(String),
    /// Seed nodes of a Redis Cluster; the rest is discovered.
    Cluster(Vec<String>),
}

/// The shared connection: to one server or to a Cluster.
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// How the shared connection was made, to open others like it (ACL users,
/// blocking reads, subscriptions).
#[derive(Clone)]
enum Info {
    Single(Box<redis::ConnectionInfo>),
    Cluster(Vec<redis::ConnectionInfo>),
}

/// The shared connection to one Redis or one Cluster, plus the loaded scripts.
#[derive(Clone)]
pub struct Redis {
    conn: Conn,
    /// With `wait-replicas`: the connection for writes that `WAIT`.
    durable: Option<Conn>,
    scripts: &'static Scripts,
    url: String,
    info: Info,
    options: RedisOptions,
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl Redis {
    /// Connects to `url` and loads every script in `lua/`. Fails with a
    /// message naming the (password-redacted) URL when Redis is unreachable.
    pub async fn connect(url: &str, options: RedisOptions) -> anyhow::Result<Redis> {
        Redis::connect_to(&RedisTarget::Single(url.to_string()), options).await
    }

    /// Connects to a standalone Redis or a Cluster and loads every script
    /// in `lua/` (into every node of a Cluster).
    pub async fn connect_to(target: &RedisTarget, options: RedisOptions) -> anyhow::Result<Redis> {
        let parse = |url: &str| {
            let info = redis::IntoConnectionInfo::into_connection_info(url)
                .map_err(|e| anyhow::anyhow!("invalid Redis URL `{}`: {e}", redact(url)))?;
            match &options.tls {
                Some(tls) => tls.apply(info, &redact(url)),
                None => Ok(info),
            }
        };
        match target {
            RedisTarget::Single(url) => {
                Redis::connect_with(Info::Single(Box::new(parse(url)?)), redact(url), options).await
            }
            RedisTarget::Cluster(seeds) => {
                let infos = seeds
                    .iter()
                    .map(|u| parse(u))
                    .collect::<anyhow::Result<_>>()?;
                let shown = format!(
                    "cluster {}",
                    seeds
                        .iter()
                        .map(|u| redact(u))
                        .collect::<Vec<_>>()
                        .join(",")
                );
                Redis::connect_with(Info::Cluster(infos), shown, options).await
            }
        }
    }

    async fn connect_with(
        info: Info,
        shown: String,
        options: RedisOptions,
    ) -> anyhow::Result<Redis> {
        let conn = open(&info, &shown, options.response_timeout, &options).await?;
        // WAIT blocks the connection it is sent on: writes that wait for
        // replicas get a connection of their own, so a slow or failing
        // WAIT never stalls other invocations' commands.
        let durable = if options.wait_replicas > 0 {
            let timeout = options.response_timeout + options.wait_timeout;
            Some(open(&info, &shown, timeout, &options).await?)
        } else {
            None
        };
        let redis = Redis {
            conn,
            durable,
            scripts: Scripts::get(),
            url: shown,
            info,
            options,
        };
        redis
            .scripts
            .load_all(&mut redis.conn.clone())
            .await
            .map_err(|e| anyhow::anyhow!("cannot load scripts into Redis at {}: {e}", redis.url))?;
        Ok(redis)
    }

    /// With `wait-replicas` set: `WAIT`s until that many replicas have
    /// every write this host sent to the node holding `key` (the write just
    /// made included). A failover promotes a replica, so a write that
    /// reached one survives it; one that did not may be lost, so fewer
    /// acknowledgements within the timeout are an error (the write itself
    /// happened on the primary). `WAIT` must go over the same connection as
    /// the write: the one connection to a standalone server, or the
    /// Cluster client's connection to the key's primary.
    async fn wait_for_replicas(&self, conn: &Conn, key: &str) -> CommandResult<()> {
        let want = self.options.wait_replicas;
        if want == 0 {
            return Ok(());
        }
        let mut cmd = redis::cmd("WAIT");
        cmd.arg(want)
            .arg(self.options.wait_timeout.as_millis() as u64);
        let reply = match conn {
            Conn::Single(c) => cmd.query_async(&mut c.clone()).await?,
            Conn::Cluster(c) => {
                use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
                let route =
                    SingleNodeRoutingInfo::SpecificNode(Route::with_key(key, SlotAddr::Master));
                c.clone()
                    .route_command(cmd, RoutingInfo::SingleNode(route))
                    .await?
            }
        };
        let got: u64 =
            redis::from_redis_value(reply).map_err(|e| CommandError::Rejected(e.to_string()))?;
        if got < u64::from(want) {
            return Err(CommandError::Unavailable(format!(
                "the write reached {got} of {want} replicas within {:?} (wait-replicas); it may not survive a failover",
                self.options.wait_timeout
            )));
        }
        Ok(())
    }

    /// The connection for a write followed by [`Self::wait_for_replicas`]
    /// (the same one must carry both).
    fn durable_conn(&self) -> Conn {
        self.durable.clone().unwrap_or_else(|| self.conn.clone())
    }

    /// On a Cluster: every reachable node, primaries and replicas, as
    /// connection settings with the host's credentials (from `CLUSTER
    /// NODES`). `None` for a standalone Redis.
    pub(crate) async fn cluster_nodes(
        &self,
    ) -> redis::RedisResult<Option<Vec<redis::ConnectionInfo>>> {
        self.cluster_nodes_where(|flags| !flags.contains("fail"))
            .await
    }

    /// A connection of its own to one Cluster node (from
    /// [`Self::cluster_primaries`]), with the host's timeouts: for commands
    /// that must reach every primary (`INFO`, the storage sampler's `SCAN`).
    pub(crate) async fn node_connection(
        &self,
        node: redis::ConnectionInfo,
    ) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
        self.connect_node(node, self.options.response_timeout).await
    }

    /// A connection of its own to `node`, with the host's connect timeout
    /// and `response_timeout`.
    async fn connect_node(
        &self,
        node: redis::ConnectionInfo,
        response_timeout: Duration,
    ) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.options.connect_timeout))
            .set_response_timeout(Some(response_timeout));
        redis::Client::open(node)?
            .get_multiplexed_async_connection_with_config(&config)
            .await
    }

    /// [`Self::cluster_nodes`], only the primaries.
    pub(crate) async fn cluster_primaries(
        &self,
    ) -> redis::RedisResult<Option<Vec<redis::ConnectionInfo>>> {
        self.cluster_nodes_where(|flags| {
            !flags.contains("fail") && flags.split(',').any(|f| f == "master")
        })
        .await
    }

    /// [`Self::cluster_primaries`], including primaries only suspected to
    /// have failed (`fail?`): near-cache tracking must cover every node
    /// that may still take writes, so it waits for them rather than
    /// leaving them out (see `tracking`).
    pub(crate) async fn cluster_primaries_not_failed(
        &self,
    ) -> redis::RedisResult<Option<Vec<redis::ConnectionInfo>>> {
        self.cluster_nodes_where(|flags| {
            let flags: Vec<&str> = flags.split(',').collect();
            flags.contains(&"master") && !flags.contains(&"fail")
        })
        .await
    }

    async fn cluster_nodes_where(
        &self,
        keep: impl Fn(&str) -> bool,
    ) -> redis::RedisResult<Option<Vec<redis::ConnectionInfo>>> {
        let Info::Cluster(seeds) = &self.info else {
            return Ok(None);
        };
        let text: String = redis::cmd("CLUSTER")
            .arg("NODES")
            .query_async(&mut self.conn.clone())
            .await?;
        let template = &seeds[0];
        let mut nodes = Vec::new();
        for line in text.lines() {
            let mut fields = line.split_whitespace();
            let (Some(addr), Some(flags)) = (fields.nth(1), fields.next()) else {
                continue;
            };
            // `keep` decides about `fail` and `fail?`.
            if flags.contains("noaddr") || flags.contains("handshake") || !keep(flags) {
                continue;
            }
            // `ip:port@cport[,hostname]`
            let Some((host, port)) = addr
                .split(['@', ','])
                .next()
                .and_then(|a| a.rsplit_once(':'))
            else {
                continue;
            };
            let Ok(port) = port.parse::<u16>() else {
                continue;
            };
            nodes.push(at_address(template, host, port));
        }
        Ok(Some(nodes))
    }

    /// Whether this is a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self.info, Info::Cluster(_))
    }

    /// The URL with any password replaced by `***`.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub async fn ping(&self) -> CommandResult<()> {
        let _: String = redis::cmd("PING")
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(())
    }

    pub async fn get(&self, key: &str) -> CommandResult<Option<Vec<u8>>> {
        Ok(self.conn.clone().get(key).await?)
    }

    /// `SET key value [PX ttl] [NX|XX]`; returns whether it wrote.
    pub async fn set(
        &self,
        key: &str,
        value: &[u8],
        ttl_ms: Option<u64>,
        condition: SetCondition,
    ) -> CommandResult<bool> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(key).arg(value);
        if let Some(ms) = ttl_ms {
            cmd.arg("PX").arg(ms);
        }
        match condition {
            SetCondition::Always => {}
            SetCondition::IfAbsent => {
                cmd.arg("NX");
            }
            SetCondition::IfPresent => {
                cmd.arg("XX");
            }
        }
        // SET replies OK when it wrote and nil when NX/XX stopped it.
        let reply: Option<String> = cmd.query_async(&mut self.conn.clone()).await?;
        Ok(reply.is_some())
    }

    pub async fn delete(&self, key: &str) -> CommandResult<bool> {
        let n: u64 = self.conn.clone().del(key).await?;
        Ok(n > 0)
    }

    pub async fn exists(&self, key: &str) -> CommandResult<bool> {
        Ok(self.conn.clone().exists(key).await?)
    }

    pub async fn increment(&self, key: &str, delta: i64) -> CommandResult<i64> {
        Ok(self.conn.clone().incr(key, delta).await?)
    }

    pub async fn expire_ms(&self, key: &str, ttl_ms: u64) -> CommandResult<bool> {
        let ms = i64::try_from(ttl_ms).unwrap_or(i64::MAX);
        Ok(self.conn.clone().pexpire(key, ms).await?)
    }

    /// `MGET`; an empty key list makes no round trip.
    pub async fn get_many(&self, keys: &[String]) -> CommandResult<Vec<Option<Vec<u8>>>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        Ok(redis::cmd("MGET")
            .arg(keys)
            .query_async(&mut self.conn.clone())
            .await?)
    }

    /// Sends one command a capability built (the data-structure
    /// capabilities, `caps::data`: one command each, on keys already in the
    /// plugin's namespace) and returns the reply as it came.
    pub async fn command(&self, cmd: &Cmd) -> CommandResult<Value> {
        Ok(cmd.query_async(&mut self.conn.clone()).await?)
    }

    /// One page of `SCAN cursor MATCH pattern COUNT count`. On a Cluster
    /// the scan walks the primaries one after another (ordered by the
    /// lowest slot each serves, from `CLUSTER SLOTS`):
    /// the node's position is kept in the cursor's top 16 bits and the
    /// node's own cursor in the rest, so the caller sees one cursor that is
    /// 0 only when every primary is done. A failover during a scan may
    /// repeat or miss keys, as for any `SCAN`.
    pub async fn scan_page(
        &self,
        cursor: u64,
        pattern: &str,
        count: u32,
    ) -> CommandResult<(u64, Vec<Vec<u8>>)> {
        let scan = |node_cursor: u64| {
            let mut cmd = redis::cmd("SCAN");
            cmd.arg(node_cursor)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(count);
            cmd
        };
        let Conn::Cluster(conn) = &self.conn else {
            return Ok(scan(cursor).query_async(&mut self.conn.clone()).await?);
        };
        // Each primary is named by the lowest slot it serves: commands
        // routed to that slot reach it over the Cluster client's own
        // connections.
        let mut lowest: std::collections::BTreeMap<String, u16> = Default::default();
        for range in self.slot_ranges().await? {
            lowest
                .entry(range.id)
                .and_modify(|s| *s = (*s).min(range.start))
                .or_insert(range.start);
        }
        let mut nodes: Vec<u16> = lowest.into_values().collect();
        nodes.sort();
        let index = (cursor >> SCAN_NODE_SHIFT) as usize;
        let Some(&slot) = nodes.get(index) else {
            // The Cluster shrank under the scan: it is over.
            return Ok((0, Vec::new()));
        };
        use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
        let route = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(Route::new(
            slot,
            SlotAddr::Master,
        )));
        let reply = conn
            .clone()
            .route_command(scan(cursor & SCAN_NODE_CURSOR), route)
            .await?;
        // A routed command's server error comes back as a value.
        let (next, keys): (u64, Vec<Vec<u8>>) = redis::from_redis_value(reply.extract_error()?)
            .map_err(|e| CommandError::Rejected(e.to_string()))?;
        let next = if next != 0 {
            ((index as u64) << SCAN_NODE_SHIFT) | next
        } else if index + 1 < nodes.len() {
            ((index + 1) as u64) << SCAN_NODE_SHIFT
        } else {
            0
        };
        Ok((next, keys))
    }

    /// [`exec_atomic`] on the shared connection (on a Cluster, the client
    /// sends it to the node of its keys, which the caller keeps in one slot).
    pub async fn transaction(&self, commands: Vec<Cmd>) -> CommandResult<Vec<Value>> {
        exec_atomic(&mut self.conn.clone(), commands)
            .await?
            .ok_or_else(|| CommandError::Rejected("a transaction without WATCH was aborted".into()))
    }

    /// A connection of its own, with this connection's credentials, to the
    /// node that holds `key`: the server, or on a Cluster the primary of the
    /// key's slot. For commands that keep state on their connection
    /// (`WATCH`) or block it (`BLPOP`: `blocking` is added to the response
    /// timeout); the caller drops it when done.
    pub async fn connection_for_key(
        &self,
        key: &str,
        blocking: Duration,
    ) -> CommandResult<redis::aio::MultiplexedConnection> {
        let info = match &self.info {
            Info::Single(info) => (**info).clone(),
            Info::Cluster(seeds) => {
                let slot: i64 = redis::cmd("CLUSTER")
                    .arg("KEYSLOT")
                    .arg(key)
                    .query_async(&mut self.conn.clone())
                    .await?;
                let node = self
                    .slot_ranges()
                    .await?
                    .into_iter()
                    .find(|r| (i64::from(r.start)..=i64::from(r.end)).contains(&slot))
                    .map(|r| (r.host, r.port));
                let (host, port) = node.ok_or_else(|| {
                    CommandError::Unavailable(format!("no Cluster node serves slot {slot}"))
                })?;
                at_address(&seeds[0], &host, port)
            }
        };
        Ok(self
            .connect_node(info, self.options.response_timeout + blocking)
            .await?)
    }

    /// The Cluster's slot ranges and the primary serving each
    /// (`CLUSTER SLOTS`); ranges that cannot be read are left out.
    async fn slot_ranges(&self) -> CommandResult<Vec<SlotRange>> {
        let ranges: Vec<Vec<Value>> = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query_async(&mut self.conn.clone())
            .await?;
        let text = |v: Option<&Value>| redis::from_redis_value::<String>(v?.clone()).ok();
        Ok(ranges
            .iter()
            .filter_map(|r| match (r.first(), r.get(1), r.get(2)) {
                (Some(Value::Int(start)), Some(Value::Int(end)), Some(Value::Array(node))) => {
                    Some(SlotRange {
                        start: u16::try_from(*start).ok()?,
                        end: u16::try_from(*end).ok()?,
                        host: text(node.first())?,
                        port: redis::from_redis_value(node.get(1)?.clone()).ok()?,
                        id: text(node.get(2))?,
                    })
                }
                _ => None,
            })
            .collect())
    }

    /// Runs a plugin's own script by SHA (loading it on `NOSCRIPT`), with
    /// `keys` already in the plugin's namespace.
    pub async fn run_script(
        &self,
        script: &redis::Script,
        keys: &[String],
        args: &[Vec<u8>],
    ) -> CommandResult<Value> {
        let mut invocation = script.prepare_invoke();
        for k in keys {
            invocation.key(k);
        }
        for a in args {
            invocation.arg(a.as_slice());
        }
        Ok(invocation.invoke_async(&mut self.conn.clone()).await?)
    }

    /// `SCRIPT LOAD`s `source` (on every primary of a Cluster); a script
    /// that does not compile is refused here, naming Redis's reason.
    pub async fn load_script(&self, source: &str) -> CommandResult<()> {
        let _: Value = redis::cmd("SCRIPT")
            .arg("LOAD")
            .arg(source)
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(())
    }

    /// `PUBLISH`; returns how many subscriptions received the message.
    pub async fn publish(&self, channel: &str, payload: &[u8]) -> CommandResult<u64> {
        Ok(self.conn.clone().publish(channel, payload).await?)
    }

    /// The client a subscription (which cannot share the multiplexed
    /// connection) uses on its `attempt`-th try, with this connection's
    /// credentials and TLS: the server; on a Cluster, the nodes that
    /// `CLUSTER NODES` lists as live now, in turn (a Cluster forwards every
    /// `PUBLISH` to all its nodes, so any node will do), or the seeds while
    /// that cannot be read. So a subscription moves on when its node fails,
    /// even when that node was the only seed.
    pub async fn subscriber_client(&self, attempt: usize) -> redis::RedisResult<redis::Client> {
        let infos = match &self.info {
            Info::Single(info) => vec![(**info).clone()],
            Info::Cluster(seeds) => match self.cluster_nodes().await {
                Ok(Some(mut nodes)) if !nodes.is_empty() => {
                    // Each node lists the others in its own order; sorted,
                    // successive attempts go round the nodes.
                    nodes.sort_by_key(|n| n.addr().to_string());
                    nodes
                }
                _ => seeds.clone(),
            },
        };
        redis::Client::open(infos[attempt % infos.len()].clone())
    }

    /// `SET key value PX ttl NX`: whether this caller claimed `key`.
    pub async fn claim(&self, key: &str, ttl_ms: u64) -> CommandResult<bool> {
        self.set(key, b"1", Some(ttl_ms.max(1)), SetCondition::IfAbsent)
            .await
    }

    /// Adds `flags` to `notify-keyspace-events` (keeping what is set), so
    /// keyspace notifications reach subscribers. Needs `CONFIG` permission.
    pub async fn enable_keyspace_events(&self, flags: &str) -> CommandResult<String> {
        let mut conn = self.conn.clone();
        let current: Vec<String> = redis::cmd("CONFIG")
            .arg("GET")
            .arg("notify-keyspace-events")
            .query_async(&mut conn)
            .await?;
        let mut value = current.get(1).cloned().unwrap_or_default();
        for f in flags.chars().chain(['K']) {
            // `A` already stands for every event class.
            let covered_by_all = f != 'K' && value.contains('A') && "g$lshzxetd".contains(f);
            if !value.contains(f) && !covered_by_all {
                value.push(f);
            }
        }
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg("notify-keyspace-events")
            .arg(&value)
            .query_async(&mut conn)
            .await?;
        Ok(value)
    }

    /// The database number of this connection (for keyspace channel names;
    /// always 0 on a Cluster).
    pub fn db(&self) -> i64 {
        match &self.info {
            Info::Single(info) => info.redis_settings().db(),
            Info::Cluster(_) => 0,
        }
    }

    /// Credentials for another user: the same servers, as `user`.
    fn as_user(&self, user: &str, password: &str) -> Info {
        let with = |info: &redis::ConnectionInfo| {
            info.clone().set_redis_settings(
                info.redis_settings()
                    .clone()
                    .set_username(user)
                    .set_password(password),
            )
        };
        match &self.info {
            Info::Single(info) => Info::Single(Box::new(with(info))),
            Info::Cluster(seeds) => Info::Cluster(seeds.iter().map(with).collect()),
        }
    }

    /// Runs `lua/kv_cas.lua`.
    pub async fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        new: &[u8],
        ttl_ms: Option<u64>,
    ) -> CommandResult<bool> {
        let swapped: i64 = self
            .scripts
            .kv_cas
            .key(key)
            .arg(if expected.is_some() { "1" } else { "0" })
            .arg(expected.unwrap_or_default())
            .arg(new)
            .arg(ttl_ms.unwrap_or(0))
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(swapped == 1)
    }
}

/// Opens a shared (multiplexed, reconnecting) connection to a server or a
/// Cluster, failing with a message naming `shown` (the redacted URL).
async fn open(
    info: &Info,
    shown: &str,
    response_timeout: Duration,
    options: &RedisOptions,
) -> anyhow::Result<Conn> {
    let deadline = options.connect_timeout * 3 + Duration::from_secs(1);
    Ok(match info {
        Info::Single(info) => {
            let client = redis::Client::open((**info).clone())
                .map_err(|e| anyhow::anyhow!("invalid Redis URL `{shown}`: {e}"))?;
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(options.connect_timeout))
                .set_response_timeout(Some(response_timeout))
                .set_number_of_retries(2)
                .set_max_delay(Duration::from_secs(2));
            let conn =
                tokio::time::timeout(deadline, ConnectionManager::new_with_config(client, config))
                    .await
                    .map_err(|_| anyhow::anyhow!("cannot connect to Redis at {shown}: timed out"))?
                    .map_err(|e| anyhow::anyhow!("cannot connect to Redis at {shown}: {e}"))?;
            Conn::Single(conn)
        }
        Info::Cluster(seeds) => {
            // A few quick retries ride out a failover (≈ node timeout +
            // election) without holding an invocation past its deadline:
            // the response timeout bounds each attempt.
            let mut builder = ClusterClientBuilder::new(seeds.clone());
            if let Some(tls) = &options.tls {
                // Nodes found through the seeds get the certificates from here.
                builder = builder.certs(tls.certs.clone());
            }
            let client = builder
                .connection_timeout(options.connect_timeout)
                .response_timeout(response_timeout)
                .retries(CLUSTER_RETRIES)
                .min_retry_wait(50)
                .max_retry_wait(1_000)
                .build()
                .map_err(|e| anyhow::anyhow!("invalid Redis Cluster seeds `{shown}`: {e}"))?;
            let conn = tokio::time::timeout(deadline, client.get_async_connection())
                .await
                .map_err(|_| anyhow::anyhow!("cannot connect to Redis {shown}: timed out"))?
                .map_err(|e| anyhow::anyhow!("cannot connect to Redis {shown}: {e}"))?;
            Conn::Cluster(conn)
        }
    })
}

/// `url` with the password (if any) replaced by `***`.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    match rest.split_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
            None => format!("{scheme}://***@{host}"),
        },
        None => url.to_string(),
    }
}

/// A subscription connection on `client` (from
/// [`Redis::subscriber_client`]), subscribed to `channels` and `patterns`;
/// connecting may take up to `connect_timeout`.
pub async fn subscribe(
    client: &redis::Client,
    channels: &[&str],
    patterns: &[&str],
    connect_timeout: Duration,
) -> anyhow::Result<redis::aio::PubSub> {
    let mut pubsub = tokio::time::timeout(connect_timeout, client.get_async_pubsub())
        .await
        .map_err(|_| anyhow::anyhow!("no connection within {connect_timeout:?}"))??;
    if !channels.is_empty() {
        pubsub.subscribe(channels).await?;
    }
    if !patterns.is_empty() {
        pubsub.psubscribe(patterns).await?;
    }
    Ok(pubsub)
}

/// What a kept-up subscription ([`keep_subscribed`]) reports.
pub enum Subscription {
    /// Subscribed. `unsubscribed`: on a re-subscription, how long there was
    /// no subscription (from the loss of the last connection until now);
    /// messages published in that window were missed. `None` the first time.
    Up { unsubscribed: Option<Duration> },
    /// A message arrived.
    Message(redis::Msg),
    /// The connection was lost; it is being made again.
    Down,
}

/// Keeps a subscription up until the task is dropped: `connect` subscribes
/// on the client [`Redis::subscriber_client`] gives for each attempt (so on
/// a Cluster it moves to the next live node after a failure), and `event`
/// hears it come up, each message, and its loss. A failed attempt or a lost
/// connection is followed by a pause (100 ms, doubling to 5 s; back to
/// 100 ms once subscribed). `what` names the subscription in the log; a
/// re-subscription is logged as a warning with the window it was down
/// (Redis pub/sub keeps nothing, so what was published then is lost).
pub async fn keep_subscribed<F>(
    redis: &Redis,
    what: &str,
    mut connect: impl FnMut(redis::Client) -> F,
    mut event: impl FnMut(Subscription),
) where
    F: std::future::Future<Output = anyhow::Result<redis::aio::PubSub>>,
{
    use tokio_stream::StreamExt;
    let mut backoff = Duration::from_millis(100);
    // When the last connection was lost (None before the first one).
    let mut lost: Option<std::time::Instant> = None;
    for attempt in 0.. {
        let subscribed = match redis.subscriber_client(attempt).await {
            Ok(client) => connect(client).await,
            Err(e) => Err(e.into()),
        };
        match subscribed {
            Ok(mut pubsub) => {
                backoff = Duration::from_millis(100);
                let unsubscribed = lost.take().map(|t| t.elapsed());
                if let Some(gap) = unsubscribed {
                    tracing::warn!(
                        unsubscribed_ms = gap.as_millis() as u64,
                        "{what}: subscribed again after {gap:.3?} without a subscription; \
                         messages published in that window were missed"
                    );
                }
                event(Subscription::Up { unsubscribed });
                let mut messages = pubsub.on_message();
                while let Some(msg) = messages.next().await {
                    event(Subscription::Message(msg));
                }
                lost = Some(std::time::Instant::now());
                event(Subscription::Down);
                tracing::warn!("{what}: subscription connection lost; reconnecting");
            }
            Err(e) => tracing::warn!("{what}: cannot subscribe: {e:#}; retrying in {backoff:?}"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Passwords never reach messages.
    #[test]
    fn redacts_passwords() {
        assert_eq!(redact("redis://u:secret@h:1/0"), "redis://u:***@h:1/0");
        assert_eq!(redact("rediss://secret@h"), "rediss://***@h");
        assert_eq!(redact("redis://h:1"), "redis://h:1");
    }
}
