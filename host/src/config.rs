//! `redloom.toml`: which Redis to use and which plugins to load.
//!
//! Parsing is strict (`deny_unknown_fields`) and every mistake is reported as
//! one line naming the file, the line, the key and what was expected, e.g.
//! `redloom.toml:7: plugins.counter.wasm: invalid type: integer `3`, expected a string`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::caps::outbound_http::Origin;
use crate::namespace::PluginName;
use crate::units::{bytes, duration};

pub use crate::quota::Quotas;

/// The name of the configuration file `redloom` looks for in the current directory.
pub const DEFAULT_FILE: &str = "redloom.toml";

/// A parsed and validated `redloom.toml`.
#[derive(Debug, Clone, Default)]
pub struct Config {
    /// Where the file was read from; relative paths in it are relative to its folder.
    pub source: Option<PathBuf>,
    pub redis: RedisSection,
    pub host: HostSection,
    pub http: HttpSection,
    pub admin: AdminSection,
    /// `[telemetry]`: where traces go (the `OTEL_*` variables override it).
    pub telemetry: TelemetrySection,
    /// `[[routes]]`: HTTP routes to plugins, in file order.
    pub routes: Vec<Route>,
    /// Folder for the private Redis's data and the compiled-plugin cache.
    pub data_dir: PathBuf,
    /// Plugins by name, in name order.
    pub plugins: BTreeMap<PluginName, PluginConfig>,
}

/// The `[telemetry]` table: OpenTelemetry traces over OTLP/HTTP
/// ([`crate::logging`]). Off unless an endpoint is set here or in
/// `OTEL_EXPORTER_OTLP_ENDPOINT` / `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct TelemetrySection {
    /// The collector's OTLP/HTTP base URL, e.g. `http://127.0.0.1:4318`.
    pub otlp_endpoint: Option<String>,
    /// `service.name` of the traces [default: redloom].
    pub service_name: Option<String>,
}

/// The `[redis]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RedisSection {
    /// `redis://` or `rediss://` URL; none (and no `cluster`) means: start
    /// a private `redis-server`.
    #[serde(default)]
    pub url: Option<String>,
    /// Seed nodes of a Redis Cluster (`redis://` or `rediss://` URLs with
    /// the same credentials); the other nodes are discovered. Instead of `url`.
    #[serde(default)]
    pub cluster: Vec<String>,
    /// How long to wait for a connection to Redis.
    #[serde(default = "default_connect_timeout", with = "duration")]
    pub connect_timeout: Duration,
    /// How long to wait for the reply to one command.
    #[serde(default = "default_response_timeout", with = "duration")]
    pub response_timeout: Duration,
    /// Replicas that must hold a new queue message or lock fencing token
    /// before the plugin hears it was written (`WAIT`), so a failover
    /// cannot lose it; 0 (default) does not wait.
    #[serde(default)]
    pub wait_replicas: u32,
    /// How long that `WAIT` may take; an enqueue or acquire that did not
    /// reach enough replicas in time fails with "backend unavailable".
    #[serde(default = "default_wait_timeout", with = "duration")]
    pub wait_timeout: Duration,
    /// PEM file with the CA certificate(s) that signed a `rediss://`
    /// server's certificate, when that is not a public CA (relative to the
    /// configuration file's folder).
    #[serde(default)]
    pub tls_ca_file: Option<PathBuf>,
    /// PEM client certificate, for servers that require mutual TLS
    /// (`tls-auth-clients yes`); needs `tls-key-file`.
    #[serde(default)]
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of `tls-cert-file`.
    #[serde(default)]
    pub tls_key_file: Option<PathBuf>,
    /// `maxmemory` of the private `redis-server` (zero-config only).
    #[serde(
        default = "default_private_maxmemory",
        deserialize_with = "bytes::required"
    )]
    pub private_maxmemory: u64,
    /// `maxmemory-policy` of the private `redis-server`: `noeviction` (the
    /// default: locks, queues and limits must never be evicted), or any
    /// policy Redis knows.
    #[serde(default)]
    pub private_maxmemory_policy: EvictionPolicy,
}

/// Redis's `maxmemory-policy` values.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EvictionPolicy {
    #[default]
    Noeviction,
    AllkeysLru,
    AllkeysLfu,
    AllkeysRandom,
    VolatileLru,
    VolatileLfu,
    VolatileRandom,
    VolatileTtl,
}

impl EvictionPolicy {
    /// The name Redis uses.
    pub fn as_str(self) -> &'static str {
        match self {
            EvictionPolicy::Noeviction => "noeviction",
            EvictionPolicy::AllkeysLru => "allkeys-lru",
            EvictionPolicy::AllkeysLfu => "allkeys-lfu",
            EvictionPolicy::AllkeysRandom => "allkeys-random",
            EvictionPolicy::VolatileLru => "volatile-lru",
            EvictionPolicy::VolatileLfu => "volatile-lfu",
            EvictionPolicy::VolatileRandom => "volatile-random",
            EvictionPolicy::VolatileTtl => "volatile-ttl",
        }
    }
}

/// The zero-config server's `maxmemory`: 1 GiB.
pub const DEFAULT_PRIVATE_MAXMEMORY: u64 = 1 << 30;

fn default_private_maxmemory() -> u64 {
    DEFAULT_PRIVATE_MAXMEMORY
}

impl Default for RedisSection {
    fn default() -> Self {
        RedisSection {
            url: None,
            cluster: Vec::new(),
            connect_timeout: default_connect_timeout(),
            response_timeout: default_response_timeout(),
            wait_replicas: 0,
            wait_timeout: default_wait_timeout(),
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            private_maxmemory: DEFAULT_PRIVATE_MAXMEMORY,
            private_maxmemory_policy: EvictionPolicy::Noeviction,
        }
    }
}

fn default_wait_timeout() -> Duration {
    Duration::from_millis(500)
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(2)
}

fn default_response_timeout() -> Duration {
    Duration::from_secs(2)
}

/// How a plugin's invocations get their instances (see README, Instance
/// reuse).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isolation {
    /// A fresh instance for every invocation (`isolation = "per-call"`).
    PerCall,
    /// Instances reused (`isolation = "pooled"`, the default): each serves
    /// at most `max_uses` invocations and is dropped once `max_age` old, after
    /// any error, trap or quota breach, and when a lock or lease handle
    /// outlives its invocation.
    Pooled { max_uses: u32, max_age: Duration },
}

/// Invocations one pooled instance serves at most (`reuse-instances`).
pub const DEFAULT_REUSE_INSTANCES: u32 = 1000;
/// Age after which a pooled instance is dropped (`instance-max-age`), so
/// whatever its guest keeps in memory (caches, leaks) is thrown away at
/// least this often.
pub const DEFAULT_INSTANCE_MAX_AGE: Duration = Duration::from_secs(60);

impl Default for Isolation {
    fn default() -> Self {
        Isolation::Pooled {
            max_uses: DEFAULT_REUSE_INSTANCES,
            max_age: DEFAULT_INSTANCE_MAX_AGE,
        }
    }
}

impl Isolation {
    /// Pooled, `max_uses` invocations per instance, the default age.
    pub fn pooled(max_uses: u32) -> Isolation {
        Isolation::Pooled {
            max_uses,
            max_age: DEFAULT_INSTANCE_MAX_AGE,
        }
    }

    /// From the manifest's three keys; `key` names the plugin's table.
    fn resolve(
        key: &str,
        isolation: Option<&str>,
        reuse: Option<u32>,
        max_age: Option<Duration>,
    ) -> Result<Isolation, (String, String)> {
        let field = |f: &str| format!("{key}.{f}");
        if let Some(n) = reuse
            && n > ceilings::REUSE_INSTANCES
        {
            return Err((
                field("reuse-instances"),
                format!("at most {} allowed", ceilings::REUSE_INSTANCES),
            ));
        }
        if let Some(age) = max_age
            && (age.is_zero() || age > ceilings::INSTANCE_MAX_AGE)
        {
            return Err((
                field("instance-max-age"),
                format!(
                    "must be above 0 and at most {}",
                    humantime::format_duration(ceilings::INSTANCE_MAX_AGE)
                ),
            ));
        }
        let per_call = match (isolation, reuse) {
            (Some("per-call"), Some(n)) if n > 1 => {
                return Err((
                    field("reuse-instances"),
                    format!(
                        "{n} contradicts isolation = \"per-call\" (a fresh instance per invocation); remove one of them"
                    ),
                ));
            }
            (Some("per-call"), _) => true,
            (Some("pooled"), Some(n)) if n < 2 => {
                return Err((
                    field("reuse-instances"),
                    format!("must be at least 2 with isolation = \"pooled\" (found {n})"),
                ));
            }
            (Some("pooled"), _) => false,
            (Some(other), _) => {
                return Err((
                    field("isolation"),
                    format!("expected \"pooled\" or \"per-call\", found {other:?}"),
                ));
            }
            // `reuse-instances = 0` or `1` alone: a fresh instance per call.
            (None, Some(n)) => n < 2,
            (None, None) => false,
        };
        if per_call {
            if max_age.is_some() {
                return Err((
                    field("instance-max-age"),
                    "applies only to pooled instances, and this plugin gets a fresh instance per invocation".into(),
                ));
            }
            return Ok(Isolation::PerCall);
        }
        Ok(Isolation::Pooled {
            max_uses: reuse.unwrap_or(DEFAULT_REUSE_INSTANCES),
            max_age: max_age.unwrap_or(DEFAULT_INSTANCE_MAX_AGE),
        })
    }
}

/// One `[plugins.NAME]` table.
#[derive(Debug, Clone)]
pub struct PluginConfig {
    /// Path of the component (`.wasm`), resolved against the config file's folder.
    pub wasm: PathBuf,
    /// The plugin's settings, served by the `config` capability.
    pub settings: BTreeMap<String, String>,
    /// How the plugin's instances are used: `isolation`, `reuse-instances`,
    /// `instance-max-age`.
    pub isolation: Isolation,
    pub quotas: Quotas,
    /// Run the plugin's Redis commands as its own ACL user (see README, Isolation).
    pub acl: bool,
    /// Origins the plugin may reach with outbound HTTP.
    pub allowed_outbound_hosts: Vec<Origin>,
    /// Named rate-limit policies, from `[plugins.NAME.limiters.POLICY]`.
    pub limiters: crate::limiter::Policies,
    /// The plugin's own Lua scripts, from `[plugins.NAME.scripts]`.
    pub scripts: crate::caps::data::PluginScripts,
    pub triggers: TriggerConfig,
    /// The cache capability's near cache (`near-cache`,
    /// `near-cache-max-bytes`; see `near_cache`).
    pub near_cache: crate::near_cache::NearConfig,
}

/// The pub/sub, keyspace, timer and queue triggers of one plugin.
#[derive(Debug, Clone, PartialEq)]
pub struct TriggerConfig {
    /// Channel names that are shared with other plugins listing them.
    pub shared_channels: Vec<String>,
    /// Channels (or glob patterns: `*`, `?`, `[`) whose messages the plugin's
    /// message handler receives.
    pub subscriptions: Vec<String>,
    /// Messages buffered per plugin before new ones are dropped (and counted).
    pub subscription_buffer: usize,
    /// Keyspace events on the plugin's own kv keys to deliver (`set`,
    /// `del`, `expired`, `evicted`, ...).
    pub keyspace_events: Vec<String>,
    /// Timers by name.
    pub timers: BTreeMap<String, TimerConfig>,
    /// Queue names (or `prefix*`) shared with other plugins listing them.
    pub shared_queues: Vec<String>,
    /// Messages one queue may hold before `enqueue` is refused.
    pub queue_max_length: u64,
    /// Queue consumers by queue name.
    pub consumers: BTreeMap<String, ConsumerConfig>,
}

impl Default for TriggerConfig {
    fn default() -> Self {
        TriggerConfig {
            shared_channels: Vec::new(),
            subscriptions: Vec::new(),
            subscription_buffer: 1_000,
            keyspace_events: Vec::new(),
            timers: BTreeMap::new(),
            shared_queues: Vec::new(),
            queue_max_length: 100_000,
            consumers: BTreeMap::new(),
        }
    }
}

/// One `[plugins.NAME.consumers.QUEUE]` table.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ConsumerConfig {
    /// Consumer group; hosts in one group share the work.
    #[serde(default = "default_group")]
    pub group: String,
    /// Messages processed at once by this host.
    #[serde(default = "default_consumer_concurrency")]
    pub concurrency: u32,
    /// Messages read per `XREADGROUP`.
    #[serde(default = "default_batch")]
    pub batch: u32,
    /// A message delivered this long ago and not acknowledged is taken over
    /// by another consumer (its consumer crashed or hangs).
    #[serde(default = "default_visibility", with = "duration")]
    pub visibility_timeout: Duration,
    /// Attempts before a message goes to the dead-letter stream.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// Delay before the first retry; doubles each attempt, with jitter.
    #[serde(default = "default_backoff", with = "duration")]
    pub backoff: Duration,
    /// The longest retry delay.
    #[serde(default = "default_max_backoff", with = "duration")]
    pub max_backoff: Duration,
    /// `rate-limit`: a rate policy of the plugin's `limiters`, checked
    /// before each message is handled; a message over the limit is deferred
    /// (see [`crate::triggers::queue`]).
    #[serde(default)]
    pub rate_limit: Option<String>,
    /// `rate-limit-key`: what the limit is counted per. None: one key for
    /// the queue.
    #[serde(default, deserialize_with = "rate_limit_key")]
    pub rate_limit_key: Option<RateLimitKey>,
}

/// What a queue's `rate-limit` is counted per (`rate-limit-key`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RateLimitKey {
    /// `"header:NAME"`: the value of the message header `NAME` (set at
    /// enqueue, matched exactly); messages without it share one key.
    Header(String),
}

impl RateLimitKey {
    pub fn parse(text: &str) -> Result<RateLimitKey, String> {
        match text.strip_prefix("header:") {
            Some(name) if !name.is_empty() => Ok(RateLimitKey::Header(name.to_string())),
            _ => Err(format!(
                "expected \"header:NAME\" (the message header whose value is the tenant), found {text:?}"
            )),
        }
    }
}

fn rate_limit_key<'de, D: Deserializer<'de>>(d: D) -> Result<Option<RateLimitKey>, D::Error> {
    let s = String::deserialize(d)?;
    RateLimitKey::parse(&s)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

fn default_group() -> String {
    "workers".into()
}
fn default_consumer_concurrency() -> u32 {
    4
}
fn default_batch() -> u32 {
    16
}
fn default_visibility() -> Duration {
    Duration::from_secs(30)
}
fn default_max_attempts() -> u32 {
    5
}
fn default_backoff() -> Duration {
    Duration::from_secs(1)
}
fn default_max_backoff() -> Duration {
    Duration::from_secs(300)
}

/// One `[plugins.NAME.timers.TIMER]` table.
#[derive(Debug, Clone, PartialEq)]
pub struct TimerConfig {
    pub schedule: Schedule,
    /// With several hosts running the plugin, exactly one runs each tick.
    pub singleton: bool,
    pub missed: Missed,
}

/// When a timer fires.
#[derive(Debug, Clone, PartialEq)]
pub enum Schedule {
    /// At every multiple of the period since the Unix epoch (so every host
    /// agrees on the ticks).
    Every(Duration),
    /// A cron expression with seconds: `sec min hour day-of-month month day-of-week [year]`.
    Cron(String),
}

/// What to do with ticks that passed while the host could not run them
/// (it was busy, paused or down).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Missed {
    /// Drop them; run the next future tick.
    Skip,
    /// Run the most recent missed tick once, at once, then carry on.
    CatchUp,
}

/// Host-wide ceilings: no plugin's quota may exceed these.
pub mod ceilings {
    use std::time::Duration;

    pub const CPU: Duration = Duration::from_secs(60);
    pub const WALL_TIME: Duration = Duration::from_secs(300);
    pub const FUEL: u64 = 1 << 40;
    /// The pooling allocator reserves address space per slot; 1 GiB bounds it.
    pub const MEMORY: u64 = 1 << 30;
    /// What each table in the engine's instance pool can hold (`engine.rs`
    /// sizes the pool with it); a larger quota could never be reached.
    pub const TABLE_ELEMENTS: u64 = 20_000;
    pub const INSTANCES: u64 = 1_000;
    pub const PAYLOAD: u64 = 64 << 20;
    /// Redis memory one plugin's keys may use (`storage`).
    pub const STORAGE: u64 = 1 << 40;
    /// Log bytes per invocation (`max-log`) and per second (`log-rate`).
    pub const LOG: u64 = 64 << 20;
    pub const REDIS_OPS: u64 = 1_000_000;
    pub const REDIS_RATE: u64 = 1_000_000;
    pub const QUEUE: u32 = 100_000;
    pub const QUEUE_WAIT: Duration = Duration::from_secs(60);
    pub const REUSE_INSTANCES: u32 = 1_000_000;
    pub const INSTANCE_MAX_AGE: Duration = Duration::from_secs(24 * 3600);
    /// Instances alive at once across all plugins (`[host] max-instances`).
    pub const HOST_INSTANCES: u32 = 10_000;
}

/// The `[http]` table: the HTTP trigger's listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct HttpSection {
    /// Address to listen on; port 0 picks a free port.
    #[serde(default = "default_http_listen")]
    pub listen: std::net::SocketAddr,
    /// How long `serve` waits for running requests after SIGINT/SIGTERM.
    #[serde(default = "default_shutdown_timeout", with = "duration")]
    pub shutdown_timeout: Duration,
    /// See [`ConnectionLimits::header_read_timeout`].
    #[serde(default = "default_header_read_timeout", with = "duration")]
    pub header_read_timeout: Duration,
    /// See [`ConnectionLimits::idle_timeout`].
    #[serde(default = "default_idle_timeout", with = "duration")]
    pub idle_timeout: Duration,
    /// See [`ConnectionLimits::body_read_timeout`].
    #[serde(default = "default_body_read_timeout", with = "duration")]
    pub body_read_timeout: Duration,
    /// See [`ConnectionLimits::max_connections`].
    #[serde(default = "default_http_max_connections")]
    pub max_connections: usize,
}

impl Default for HttpSection {
    fn default() -> Self {
        HttpSection {
            listen: default_http_listen(),
            shutdown_timeout: default_shutdown_timeout(),
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            body_read_timeout: DEFAULT_BODY_READ_TIMEOUT,
            max_connections: DEFAULT_HTTP_MAX_CONNECTIONS,
        }
    }
}

impl HttpSection {
    pub fn limits(&self) -> ConnectionLimits {
        ConnectionLimits {
            header_read_timeout: self.header_read_timeout,
            idle_timeout: self.idle_timeout,
            body_read_timeout: self.body_read_timeout,
            max_connections: self.max_connections,
        }
    }
}

fn default_http_listen() -> std::net::SocketAddr {
    ([127, 0, 0, 1], 8080).into()
}

fn default_shutdown_timeout() -> Duration {
    Duration::from_secs(10)
}

/// How long, how idle and how many client connections one listener
/// (`[http]` or `[admin]`) allows, so that slow or silent clients
/// (slowloris) cannot hold every connection or file descriptor: see
/// `serve::listener`, which enforces them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// A client must send a request's complete headers within this time,
    /// counted from when the connection opens or the previous response on
    /// it was sent; so it also bounds how long a kept-alive connection
    /// waits for its next request.
    pub header_read_timeout: Duration,
    /// A connection with no request in progress on which nothing is
    /// received or sent for this long is closed: an unused or kept-alive
    /// connection, or a client that stopped reading its response.
    pub idle_timeout: Duration,
    /// A request's body must arrive completely within this time of its
    /// headers (else 408), so a trickled body cannot hold a connection.
    pub body_read_timeout: Duration,
    /// Connections open at once; further clients wait in the kernel's
    /// accept queue until one closes.
    pub max_connections: usize,
}

/// Default `header-read-timeout`: a real client sends its headers in one
/// packet; 10 s leaves room for slow links while a slowloris client can hold
/// a connection only that long.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Default `idle-timeout`: as long as the header timeout, which closes a
/// kept-alive connection waiting for its next request after the same time.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default `body-read-timeout`: the default `max-input` (1 MiB) takes
/// 8 s at 1 Mbit/s; 60 s is ample for it and bounds a trickled body.
pub const DEFAULT_BODY_READ_TIMEOUT: Duration = Duration::from_secs(60);
/// Default `[http] max-connections`. With the admin listener's 64 and
/// [`crate::serve::OPEN_FILES_RESERVE`] it fits a 1024 open-file limit (a
/// common hard limit: `ulimit -n 1024` sets both), so connections can never
/// take the descriptors Redis connections and plugin loads need.
pub const DEFAULT_HTTP_MAX_CONNECTIONS: usize = 512;
/// Default `[admin] max-connections`: operators and scrapers need few.
pub const DEFAULT_ADMIN_MAX_CONNECTIONS: usize = 64;
/// Shortest timeout a listener accepts: less would cut off real clients.
pub const MIN_CONNECTION_TIMEOUT: Duration = Duration::from_millis(100);
/// Longest timeout a listener accepts: longer is no bound against slow clients.
pub const MAX_CONNECTION_TIMEOUT: Duration = Duration::from_secs(3600);
/// Most `max-connections` a listener accepts; far above any real open-file
/// limit, it only keeps the number sane (`serve` also checks the limit).
pub const MAX_CONNECTIONS_CEILING: usize = 1_000_000;

fn default_header_read_timeout() -> Duration {
    DEFAULT_HEADER_READ_TIMEOUT
}

fn default_idle_timeout() -> Duration {
    DEFAULT_IDLE_TIMEOUT
}

fn default_body_read_timeout() -> Duration {
    DEFAULT_BODY_READ_TIMEOUT
}

fn default_http_max_connections() -> usize {
    DEFAULT_HTTP_MAX_CONNECTIONS
}

fn default_admin_max_connections() -> usize {
    DEFAULT_ADMIN_MAX_CONNECTIONS
}

impl ConnectionLimits {
    /// Checks every limit's range; the error names the key (within its
    /// section) and the allowed range.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        let dur = |d: Duration| humantime::format_duration(d).to_string();
        for (key, d) in [
            ("header-read-timeout", self.header_read_timeout),
            ("idle-timeout", self.idle_timeout),
            ("body-read-timeout", self.body_read_timeout),
        ] {
            if !(MIN_CONNECTION_TIMEOUT..=MAX_CONNECTION_TIMEOUT).contains(&d) {
                return Err((
                    key,
                    format!(
                        "{} is outside {}..={}: it must bound slow clients without cutting off real ones",
                        dur(d),
                        dur(MIN_CONNECTION_TIMEOUT),
                        dur(MAX_CONNECTION_TIMEOUT)
                    ),
                ));
            }
        }
        if !(1..=MAX_CONNECTIONS_CEILING).contains(&self.max_connections) {
            return Err((
                "max-connections",
                format!(
                    "{} is outside 1..={MAX_CONNECTIONS_CEILING}",
                    self.max_connections
                ),
            ));
        }
        Ok(())
    }
}

/// The `[admin]` table: the admin API, metrics and health listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct AdminSection {
    /// Address to listen on (loopback by default); port 0 picks a free port.
    #[serde(default = "default_admin_listen")]
    pub listen: std::net::SocketAddr,
    /// Bearer token required for `/plugins`; also from `REDLOOM_ADMIN_TOKEN`.
    /// Without one, `serve` generates a token and keeps it in
    /// `<data-dir>/admin-token` (mode 0600), where `redloom plugin` finds it.
    #[serde(default)]
    pub token: Option<String>,
    /// `"token"` (the default): `/plugins` needs the bearer token. `"none"`:
    /// no token at all (anyone who can reach the listener manages plugins).
    #[serde(default)]
    pub auth: AdminAuth,
    /// Host names (besides IP addresses and `localhost`) that requests may
    /// carry in their `Host` header; any other name is refused, so a web page
    /// whose name resolves to this host (DNS rebinding) cannot use the API.
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    /// See [`ConnectionLimits::header_read_timeout`].
    #[serde(default = "default_header_read_timeout", with = "duration")]
    pub header_read_timeout: Duration,
    /// See [`ConnectionLimits::idle_timeout`].
    #[serde(default = "default_idle_timeout", with = "duration")]
    pub idle_timeout: Duration,
    /// See [`ConnectionLimits::body_read_timeout`].
    #[serde(default = "default_body_read_timeout", with = "duration")]
    pub body_read_timeout: Duration,
    /// See [`ConnectionLimits::max_connections`].
    #[serde(default = "default_admin_max_connections")]
    pub max_connections: usize,
}

/// How the admin API authenticates `/plugins` requests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AdminAuth {
    #[default]
    Token,
    None,
}

impl Default for AdminSection {
    fn default() -> Self {
        AdminSection {
            listen: default_admin_listen(),
            token: None,
            auth: AdminAuth::Token,
            allowed_hosts: Vec::new(),
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            body_read_timeout: DEFAULT_BODY_READ_TIMEOUT,
            max_connections: DEFAULT_ADMIN_MAX_CONNECTIONS,
        }
    }
}

impl AdminSection {
    pub fn limits(&self) -> ConnectionLimits {
        ConnectionLimits {
            header_read_timeout: self.header_read_timeout,
            idle_timeout: self.idle_timeout,
            body_read_timeout: self.body_read_timeout,
            max_connections: self.max_connections,
        }
    }
}

/// File in the data folder holding the admin token `serve` generated.
pub const ADMIN_TOKEN_FILE: &str = "admin-token";

fn default_admin_listen() -> std::net::SocketAddr {
    ([127, 0, 0, 1], 9090).into()
}

/// One `[[routes]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Route {
    /// `GET`, `POST`, ...; omitted: any method.
    #[serde(default)]
    pub method: Option<String>,
    /// Path pattern: `/users/:id` captures `id`; `/static/*rest` captures the rest.
    pub path: String,
    /// The plugin that handles it (must export the HTTP handler).
    pub plugin: String,
    /// Where it is written (`redloom.toml:12`), for errors found when the
    /// routes are put together (`serve`); empty when not from a file.
    #[serde(skip)]
    pub at: String,
}

/// The `[host]` table: settings for the host as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostSection {
    /// Instances running at once across all plugins: the pool size, shared
    /// fairly by plugins within their own `concurrency` (a reserve for idle
    /// plugins, freed slots to the plugin holding fewest; see
    /// `quota::HostSlots`).
    pub max_instances: u32,
    /// How often `serve` measures each plugin's Redis memory for the
    /// `storage` quota (longer when a pass takes long; see `sampler`).
    pub storage_sample_interval: Duration,
}

impl Default for HostSection {
    fn default() -> Self {
        HostSection {
            max_instances: 256,
            storage_sample_interval: Duration::from_secs(30),
        }
    }
}

/// A configuration mistake, already formatted as one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let bytes = crate::files::read_bounded(path, crate::files::MAX_CONFIG_BYTES)
            .map_err(|e| ConfigError(format!("{}: cannot read: {e}", path.display())))?;
        let text = String::from_utf8(bytes)
            .map_err(|_| ConfigError(format!("{}: not UTF-8 text", path.display())))?;
        Config::parse(&text, path)
    }

    /// Parses `text` as if read from `path` (used for messages and relative paths).
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let raw: RawConfig = {
            let de =
                toml::Deserializer::parse(text).map_err(|e| toml_error(&file, text, None, &e))?;
            serde_path_to_error::deserialize(de).map_err(|e| {
                let key = e.path().to_string();
                toml_error(&file, text, Some(&key), e.inner())
            })?
        };
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        // Errors found after parsing name the line too (of the key's value,
        // or of the deepest table on its path that is in the file).
        let at = |key: &str, msg: String| {
            let line = line_of(text, key).map_or(String::new(), |l| format!(":{l}"));
            ConfigError(format!("{file}{line}: {key}: {msg}"))
        };

        let host = match raw.host {
            Some(h) => h.resolve().map_err(|(k, m)| at(&k, m))?,
            None => HostSection::default(),
        };
        let mut plugins = BTreeMap::new();
        for (name, p) in raw.plugins {
            let key = format!("plugins.{name}");
            let name = PluginName::parse(&name).map_err(|e| at(&key, e.to_string()))?;
            let quotas = p.quotas.resolve(&key, &host).map_err(|(k, m)| at(&k, m))?;
            let limiters =
                crate::limiter::resolve_manifest(&key, p.limiters).map_err(|(k, m)| at(&k, m))?;
            let scripts = crate::caps::data::PluginScripts::resolve(&key, p.scripts, &base, p.acl)
                .map_err(|(k, m)| at(&k, m))?;
            for (q, c) in &p.consumers {
                check_rate_limit(&name, &limiters, c)
                    .map_err(|(field, m)| at(&format!("{key}.consumers.{q}.{field}"), m))?;
            }
            let near_cache = crate::near_cache::NearConfig::resolve(
                p.near_cache,
                p.near_cache_max_bytes,
                p.near_cache_max_age,
            )
            .map_err(|(k, m)| at(&format!("{key}.{k}"), m))?;
            let isolation = Isolation::resolve(
                &key,
                p.isolation.as_deref(),
                p.reuse_instances,
                p.instance_max_age,
            )
            .map_err(|(k, m)| at(&k, m))?;
            let settings = p
                .settings
                .into_iter()
                .map(|(k, v)| {
                    let v = match v {
                        toml::Value::String(s) => s,
                        other => other.to_string(),
                    };
                    (k, v)
                })
                .collect();
            plugins.insert(
                name,
                PluginConfig {
                    wasm: if p.wasm.to_str().is_some_and(crate::oci::is_reference) {
                        p.wasm
                    } else {
                        base.join(p.wasm)
                    },
                    settings,
                    isolation,
                    quotas,
                    acl: p.acl,
                    near_cache,
                    limiters,
                    scripts,
                    allowed_outbound_hosts: p
                        .allowed_outbound_hosts
                        .iter()
                        .map(|o| Origin::parse(o))
                        .collect::<Result<_, _>>()
                        .map_err(|m| at(&format!("{key}.allowed-outbound-hosts"), m))?,
                    triggers: TriggerConfig {
                        shared_channels: p.shared_channels,
                        subscriptions: p.subscriptions,
                        subscription_buffer: p
                            .subscription_buffer
                            .unwrap_or(1_000)
                            .clamp(1, 1_000_000),
                        keyspace_events: {
                            if let Some(e) = p
                                .keyspace_events
                                .iter()
                                .find(|e| !KEYSPACE_EVENTS.contains(&e.as_str()))
                            {
                                return Err(at(
                                    &format!("{key}.keyspace-events"),
                                    format!(
                                        "unknown event `{e}`; known: {}",
                                        KEYSPACE_EVENTS.join(", ")
                                    ),
                                ));
                            }
                            p.keyspace_events
                        },
                        timers: p
                            .timers
                            .into_iter()
                            .map(|(n, t)| {
                                t.resolve()
                                    .map(|t| (n.clone(), t))
                                    .map_err(|m| at(&format!("{key}.timers.{n}"), m))
                            })
                            .collect::<Result<_, _>>()?,
                        shared_queues: p.shared_queues,
                        queue_max_length: p.queue_max_length.unwrap_or(100_000).max(1),
                        consumers: {
                            for (q, c) in &p.consumers {
                                let k = format!("{key}.consumers.{q}");
                                if c.concurrency == 0 || c.batch == 0 || c.max_attempts == 0 {
                                    return Err(at(&k, "concurrency, batch and max-attempts must be at least 1".into()));
                                }
                                if c.visibility_timeout < Duration::from_millis(100) || c.backoff.is_zero() {
                                    return Err(at(&k, "visibility-timeout must be at least 100ms and backoff above 0".into()));
                                }
                                if c.group.is_empty() {
                                    return Err(at(&format!("{k}.group"), "must not be empty".into()));
                                }
                            }
                            p.consumers
                        },
                    },
                },
            );
        }
        for (i, r) in raw.routes.iter().enumerate() {
            let key = format!("routes[{i}]");
            if !r.path.starts_with('/') {
                return Err(at(
                    &format!("{key}.path"),
                    format!("`{}` must start with `/`", r.path),
                ));
            }
            if let Some(m) = &r.method
                && (m.is_empty() || !m.bytes().all(|b| b.is_ascii_uppercase()))
            {
                return Err(at(
                    &format!("{key}.method"),
                    format!("`{m}` is not an uppercase HTTP method"),
                ));
            }
            let known = PluginName::parse(&r.plugin)
                .ok()
                .is_some_and(|n| plugins.contains_key(&n));
            if !known {
                return Err(at(
                    &format!("{key}.plugin"),
                    format!("`{}` is not a plugin in this file", r.plugin),
                ));
            }
        }
        for (section, limits) in [("http", raw.http.limits()), ("admin", raw.admin.limits())] {
            limits
                .check()
                .map_err(|(k, m)| at(&format!("{section}.{k}"), m))?;
        }
        if let Some(url) = &raw.redis.url {
            check_redis_url(url).map_err(|m| at("redis.url", m))?;
        }
        check_cluster_seeds(&raw.redis.cluster).map_err(|m| at("redis.cluster", m))?;
        if raw.redis.url.is_some() && !raw.redis.cluster.is_empty() {
            return Err(at(
                "redis.cluster",
                "set either `url` (one Redis) or `cluster` (seed nodes of a Redis Cluster), not both".into(),
            ));
        }
        if raw.redis.tls_cert_file.is_some() != raw.redis.tls_key_file.is_some() {
            return Err(at(
                "redis.tls-cert-file",
                "a client certificate needs both `tls-cert-file` and `tls-key-file`".into(),
            ));
        }
        let mut redis = raw.redis;
        for file in [
            &mut redis.tls_ca_file,
            &mut redis.tls_cert_file,
            &mut redis.tls_key_file,
        ]
        .into_iter()
        .flatten()
        {
            *file = base.join(&*file);
        }
        Ok(Config {
            source: Some(path.to_path_buf()),
            redis,
            host,
            http: raw.http,
            admin: raw.admin,
            telemetry: raw.telemetry,
            routes: raw
                .routes
                .into_iter()
                .enumerate()
                .map(|(i, r)| {
                    let line = line_of(text, &format!("routes[{i}].path"))
                        .map_or(String::new(), |l| format!(":{l}"));
                    Route {
                        at: format!("{file}{line}"),
                        ..r
                    }
                })
                .collect(),
            data_dir: base.join(raw.data_dir.unwrap_or_else(|| PathBuf::from(".redloom"))),
            plugins,
        })
    }
}

/// A consumer's `rate-limit` names one of the plugin's rate policies (not a
/// concurrency policy: a deferred message would wait out a whole lease), and
/// `rate-limit-key` needs a `rate-limit`. Errors name the field.
fn check_rate_limit(
    plugin: &PluginName,
    limiters: &crate::limiter::Policies,
    c: &ConsumerConfig,
) -> Result<(), (&'static str, String)> {
    let Some(policy) = &c.rate_limit else {
        if c.rate_limit_key.is_some() {
            return Err((
                "rate-limit-key",
                "needs `rate-limit` (the limiter policy to count with)".into(),
            ));
        }
        return Ok(());
    };
    let Some(limits) = limiters.get(policy) else {
        return Err((
            "rate-limit",
            format!(
                "no limiter policy `{policy}`; this plugin defines {} (add [plugins.{plugin}.limiters.{policy}])",
                limiters.names()
            ),
        ));
    };
    if limits.algorithm() == crate::limiter::Algorithm::Concurrency {
        return Err((
            "rate-limit",
            format!(
                "`{policy}` is a concurrency policy; a queue takes a rate policy (gcra, token-bucket, sliding-window or fixed-window), and `concurrency` bounds messages at once"
            ),
        ));
    }
    Ok(())
}

/// Checks Cluster seed URLs: `redis://` or `rediss://` (a Cluster announces
/// TCP addresses, so no `unix://`), one TLS mode and one set of credentials.
pub fn check_cluster_seeds(seeds: &[String]) -> Result<(), String> {
    for url in seeds {
        if url.starts_with("unix://") {
            return Err(format!(
                "`{}`: a Cluster node needs a redis:// or rediss:// URL",
                crate::redis::redact(url)
            ));
        }
        check_redis_url(url)?;
    }
    if !seeds.is_empty() {
        redis::cluster::ClusterClient::new(seeds.iter().map(String::as_str))
            .map_err(|e| format!("the seed nodes disagree: {e}"))?;
    }
    Ok(())
}

impl RedisSection {
    /// Where to connect; `None`: start a private `redis-server`.
    pub fn target(&self) -> Option<crate::redis::RedisTarget> {
        use crate::redis::RedisTarget;
        match &self.url {
            Some(url) => Some(RedisTarget::Single(url.clone())),
            None if !self.cluster.is_empty() => Some(RedisTarget::Cluster(self.cluster.clone())),
            None => None,
        }
    }
}

/// Checks that `url` is one redis-rs accepts, with a message naming the scheme problem.
pub fn check_redis_url(url: &str) -> Result<(), String> {
    if !(url.starts_with("redis://") || url.starts_with("rediss://") || url.starts_with("unix://"))
    {
        return Err(format!(
            "expected a redis://, rediss:// or unix:// URL, found `{url}`"
        ));
    }
    redis::Client::open(url)
        .map(drop)
        .map_err(|e| format!("invalid Redis URL: {e}"))
}

/// The line in `text` of the value at the dotted `key`
/// (`plugins.NAME.quotas.cpu`; an index like `routes[2]` picks an array
/// element), or of the deepest table on its path that the file has; `None`
/// if not even the first part is there (a default, not written).
fn line_of(text: &str, key: &str) -> Option<usize> {
    use toml::de::{DeTable, DeValue};
    let doc = DeTable::parse(text).ok()?;
    let line = |at: usize| text[..at.min(text.len())].matches('\n').count() + 1;
    let mut table: &DeTable = doc.get_ref();
    let mut found = None;
    for part in key.split('.') {
        let (name, index) = match part.split_once('[') {
            Some((n, i)) => (n, i.trim_end_matches(']').parse::<usize>().ok()),
            None => (part, None),
        };
        let Some((_, value)) = table.iter().find(|(k, _)| k.get_ref().as_ref() == name) else {
            break;
        };
        found = Some(value.span().start);
        let mut value = value;
        if let (Some(i), DeValue::Array(items)) = (index, value.get_ref()) {
            match items.get(i) {
                Some(item) => {
                    found = Some(item.span().start);
                    value = item;
                }
                None => break,
            }
        }
        match value.get_ref() {
            DeValue::Table(t) => table = t,
            _ => break,
        }
    }
    found.map(line)
}

fn toml_error(file: &str, text: &str, key: Option<&str>, e: &toml::de::Error) -> ConfigError {
    let line = e
        .span()
        .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
    let mut out = file.to_string();
    if let Some(line) = line {
        out.push_str(&format!(":{line}"));
    }
    match key {
        Some(k) if !k.is_empty() && k != "." => out.push_str(&format!(": {k}")),
        _ => {}
    }
    // toml's messages can span lines; keep the first, which says what was wrong.
    let msg = e.message().lines().next().unwrap_or("invalid TOML").trim();
    out.push_str(&format!(": {msg}"));
    ConfigError(out)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawConfig {
    #[serde(default)]
    redis: RedisSection,
    #[serde(default)]
    host: Option<RawHost>,
    #[serde(default)]
    http: HttpSection,
    #[serde(default)]
    admin: AdminSection,
    #[serde(default)]
    telemetry: TelemetrySection,
    #[serde(default)]
    routes: Vec<Route>,
    #[serde(default)]
    data_dir: Option<PathBuf>,
    #[serde(default)]
    plugins: BTreeMap<String, RawPlugin>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawPlugin {
    wasm: PathBuf,
    #[serde(default)]
    settings: BTreeMap<String, toml::Value>,
    #[serde(default)]
    isolation: Option<String>,
    #[serde(default)]
    reuse_instances: Option<u32>,
    #[serde(default, with = "duration::option")]
    instance_max_age: Option<Duration>,
    #[serde(default)]
    quotas: RawQuotas,
    #[serde(default)]
    acl: bool,
    #[serde(default)]
    allowed_outbound_hosts: Vec<String>,
    #[serde(default)]
    limiters: BTreeMap<String, crate::limiter::RawPolicy>,
    #[serde(default)]
    scripts: BTreeMap<String, PathBuf>,
    #[serde(default)]
    shared_channels: Vec<String>,
    #[serde(default)]
    subscriptions: Vec<String>,
    #[serde(default)]
    subscription_buffer: Option<usize>,
    #[serde(default)]
    keyspace_events: Vec<String>,
    #[serde(default)]
    timers: BTreeMap<String, RawTimer>,
    #[serde(default)]
    shared_queues: Vec<String>,
    #[serde(default)]
    queue_max_length: Option<u64>,
    #[serde(default)]
    consumers: BTreeMap<String, ConsumerConfig>,
    #[serde(default)]
    near_cache: Option<bool>,
    #[serde(default, deserialize_with = "bytes::option")]
    near_cache_max_bytes: Option<u64>,
    #[serde(default, with = "duration::option")]
    near_cache_max_age: Option<Duration>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawTimer {
    #[serde(default, with = "duration::option")]
    every: Option<Duration>,
    #[serde(default)]
    cron: Option<String>,
    #[serde(default)]
    singleton: bool,
    #[serde(default = "default_missed")]
    missed: Missed,
}

fn default_missed() -> Missed {
    Missed::Skip
}

/// Keyspace events a plugin may ask for.
pub const KEYSPACE_EVENTS: &[&str] = &[
    "set",
    "del",
    "expire",
    "expired",
    "evicted",
    "incrby",
    "rename_from",
    "rename_to",
    "new",
];

impl RawTimer {
    fn resolve(self) -> Result<TimerConfig, String> {
        let schedule = match (self.every, self.cron) {
            (Some(d), None) => {
                if d < Duration::from_millis(10) {
                    return Err("`every` must be at least 10ms".into());
                }
                Schedule::Every(d)
            }
            (None, Some(c)) => {
                <cron::Schedule as std::str::FromStr>::from_str(&c).map_err(|e| {
                    format!("`cron = {c:?}` is not a cron expression with seconds: {e}")
                })?;
                Schedule::Cron(c)
            }
            _ => return Err("give exactly one of `every` and `cron`".into()),
        };
        Ok(TimerConfig {
            schedule,
            singleton: self.singleton,
            missed: self.missed,
        })
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawQuotas {
    #[serde(default, with = "duration::option")]
    cpu: Option<Duration>,
    #[serde(default, with = "duration::option")]
    wall_time: Option<Duration>,
    #[serde(default)]
    fuel: Option<u64>,
    #[serde(default, deserialize_with = "bytes::option")]
    memory: Option<u64>,
    #[serde(default)]
    table_elements: Option<u64>,
    #[serde(default)]
    instances: Option<u64>,
    #[serde(default, deserialize_with = "bytes::option")]
    max_input: Option<u64>,
    #[serde(default, deserialize_with = "bytes::option")]
    max_output: Option<u64>,
    #[serde(default, deserialize_with = "bytes::option")]
    max_reply: Option<u64>,
    #[serde(default, deserialize_with = "bytes::option")]
    max_write: Option<u64>,
    #[serde(default, deserialize_with = "bytes::option")]
    storage: Option<u64>,
    #[serde(default, deserialize_with = "bytes::option")]
    max_log: Option<u64>,
    #[serde(default, deserialize_with = "bytes::option")]
    log_rate: Option<u64>,
    #[serde(default)]
    redis_ops: Option<u64>,
    #[serde(default)]
    redis_rate: Option<u64>,
    #[serde(default)]
    concurrency: Option<u32>,
    #[serde(default)]
    queue: Option<u32>,
    #[serde(default, with = "duration::option")]
    queue_wait: Option<Duration>,
    #[serde(default, with = "duration::option")]
    outbound_timeout: Option<Duration>,
}

impl RawQuotas {
    /// Applies defaults and checks bounds; errors name the offending key.
    fn resolve(self, plugin_key: &str, host: &HostSection) -> Result<Quotas, (String, String)> {
        let d = Quotas::default();
        let q = Quotas {
            cpu: self.cpu.unwrap_or(d.cpu),
            wall_time: self.wall_time.unwrap_or(d.wall_time),
            fuel: self.fuel,
            memory: self.memory.unwrap_or(d.memory),
            table_elements: self.table_elements.unwrap_or(d.table_elements),
            instances: self.instances.unwrap_or(d.instances),
            max_input: self.max_input.unwrap_or(d.max_input),
            max_output: self.max_output.unwrap_or(d.max_output),
            max_reply: self.max_reply.unwrap_or(d.max_reply),
            max_write: self.max_write.unwrap_or(d.max_write),
            storage: self.storage.unwrap_or(d.storage),
            max_log: self.max_log.unwrap_or(d.max_log),
            log_rate: self.log_rate.unwrap_or(d.log_rate),
            redis_ops: self.redis_ops.unwrap_or(d.redis_ops),
            redis_rate: self.redis_rate.unwrap_or(d.redis_rate),
            concurrency: self.concurrency.unwrap_or(d.concurrency),
            queue: self.queue.unwrap_or(d.queue),
            queue_wait: self.queue_wait.unwrap_or(d.queue_wait),
            outbound_timeout: self.outbound_timeout.unwrap_or(d.outbound_timeout),
        };
        q.check(host)
            .map_err(|(k, m)| (format!("{plugin_key}.quotas.{k}"), m))?;
        Ok(q)
    }
}

impl Quotas {
    /// Checks every quota against its lower bound and host ceiling; the error
    /// names the quota's manifest key.
    pub fn check(&self, host: &HostSection) -> Result<(), (&'static str, String)> {
        fn range<T: PartialOrd + fmt::Debug>(
            key: &'static str,
            v: T,
            min: T,
            max: T,
            show: impl Fn(&T) -> String,
        ) -> Result<(), (&'static str, String)> {
            if v < min {
                return Err((
                    key,
                    format!("{} is below the minimum of {}", show(&v), show(&min)),
                ));
            }
            if v > max {
                return Err((
                    key,
                    format!("{} is above the host ceiling of {}", show(&v), show(&max)),
                ));
            }
            Ok(())
        }
        let dur = |d: &Duration| humantime::format_duration(*d).to_string();
        let size = |b: &u64| bytesize::ByteSize(*b).to_string();
        let num = |n: &u64| n.to_string();
        let ms = Duration::from_millis(1);
        range("cpu", self.cpu, ms, ceilings::CPU, dur)?;
        range("wall-time", self.wall_time, ms, ceilings::WALL_TIME, dur)?;
        if let Some(f) = self.fuel {
            range("fuel", f, 1, ceilings::FUEL, num)?;
        }
        range("memory", self.memory, 1 << 16, ceilings::MEMORY, size)?;
        range(
            "table-elements",
            self.table_elements,
            1,
            ceilings::TABLE_ELEMENTS,
            num,
        )?;
        range("instances", self.instances, 1, ceilings::INSTANCES, num)?;
        range("max-input", self.max_input, 0, ceilings::PAYLOAD, size)?;
        range("max-output", self.max_output, 0, ceilings::PAYLOAD, size)?;
        range("max-reply", self.max_reply, 0, ceilings::PAYLOAD, size)?;
        range("max-write", self.max_write, 0, ceilings::PAYLOAD, size)?;
        range("storage", self.storage, 0, ceilings::STORAGE, size)?;
        range("max-log", self.max_log, 0, ceilings::LOG, size)?;
        range("log-rate", self.log_rate, 0, ceilings::LOG, size)?;
        range("redis-ops", self.redis_ops, 0, ceilings::REDIS_OPS, num)?;
        range("redis-rate", self.redis_rate, 0, ceilings::REDIS_RATE, num)?;
        range(
            "concurrency",
            u64::from(self.concurrency),
            1,
            u64::from(host.max_instances),
            num,
        )?;
        range(
            "queue",
            u64::from(self.queue),
            0,
            u64::from(ceilings::QUEUE),
            num,
        )?;
        range(
            "queue-wait",
            self.queue_wait,
            Duration::ZERO,
            ceilings::QUEUE_WAIT,
            dur,
        )?;
        range(
            "outbound-timeout",
            self.outbound_timeout,
            ms,
            ceilings::WALL_TIME,
            dur,
        )?;
        Ok(())
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawHost {
    #[serde(default)]
    max_instances: Option<u32>,
    #[serde(default, with = "duration::option")]
    storage_sample_interval: Option<Duration>,
}

impl RawHost {
    fn resolve(self) -> Result<HostSection, (String, String)> {
        let d = HostSection::default();
        let h = HostSection {
            max_instances: self.max_instances.unwrap_or(d.max_instances),
            storage_sample_interval: self
                .storage_sample_interval
                .unwrap_or(d.storage_sample_interval),
        };
        if h.storage_sample_interval < Duration::from_millis(100) {
            return Err((
                "host.storage-sample-interval".into(),
                "must be at least 100ms".into(),
            ));
        }
        if h.max_instances == 0 || h.max_instances > ceilings::HOST_INSTANCES {
            return Err((
                "host.max-instances".into(),
                format!("must be between 1 and {}", ceilings::HOST_INSTANCES),
            ));
        }
        Ok(h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/etc/redloom/redloom.toml"))
    }

    /// Errors found after parsing name the line of the key's value (or of
    /// its table, when the key itself is not written).
    #[test]
    fn checks_after_parsing_name_the_line() {
        let e = parse("[plugins.a]\nwasm = \"a.wasm\"\n\n[plugins.a.quotas]\ncpu = \"1h\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("/etc/redloom/redloom.toml:5: plugins.a.quotas.cpu: "),
            "{e}"
        );
        let e = parse("\n[plugins.a]\nwasm = \"a.wasm\"\nnear-cache-max-bytes = 0\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("/etc/redloom/redloom.toml:4: plugins.a.near-cache-max-bytes: "),
            "{e}"
        );
        assert_eq!(
            line_of(
                "[[routes]]\npath = \"/a\"\n[[routes]]\npath = \"/b\"\n",
                "routes[1].path"
            ),
            Some(4)
        );
        assert_eq!(line_of("a = 1\n", "b.c"), None);
    }

    /// Near-cache settings: on with the defaults unless set; out-of-range
    /// values name the key.
    #[test]
    fn near_cache_settings() {
        let c = parse("[plugins.a]\nwasm = \"a.wasm\"\n").unwrap();
        let a = &c.plugins[&PluginName::parse("a").unwrap()];
        assert_eq!(a.near_cache, crate::near_cache::NearConfig::default());
        assert!(a.near_cache.enabled);
        let c = parse(
            "[plugins.a]\nwasm = \"a.wasm\"\nnear-cache = false\nnear-cache-max-bytes = \"1MiB\"\nnear-cache-max-age = \"2s\"\n",
        )
        .unwrap();
        let a = &c.plugins[&PluginName::parse("a").unwrap()];
        assert!(!a.near_cache.enabled);
        assert_eq!(a.near_cache.max_bytes, 1 << 20);
        assert_eq!(a.near_cache.max_age, Duration::from_secs(2));
        let e = parse("[plugins.a]\nwasm = \"a.wasm\"\nnear-cache-max-bytes = 0\n").unwrap_err();
        assert!(
            e.to_string().contains("plugins.a.near-cache-max-bytes"),
            "{e}"
        );
        let e = parse("[plugins.a]\nwasm = \"a.wasm\"\nnear-cache-max-age = \"2h\"\n").unwrap_err();
        assert!(
            e.to_string().contains("plugins.a.near-cache-max-age"),
            "{e}"
        );
    }

    /// A full file parses, paths resolve against its folder and settings become strings.
    #[test]
    fn parses_full_file() {
        let c = parse(
            r#"
data-dir = "state"
[redis]
url = "redis://127.0.0.1:7000"
response-timeout = "750ms"

[plugins.visit-counter]
wasm = "plugins/counter.wasm"
reuse-instances = 8
settings = { greeting = "hi", ttl = 30, on = true }
[plugins.visit-counter.quotas]
memory = "16MiB"
wall-time = "2s"
"#,
        )
        .unwrap();
        assert_eq!(c.data_dir, Path::new("/etc/redloom/state"));
        assert_eq!(c.redis.response_timeout, Duration::from_millis(750));
        let p = &c.plugins[&PluginName::parse("visit-counter").unwrap()];
        assert_eq!(p.wasm, Path::new("/etc/redloom/plugins/counter.wasm"));
        assert_eq!(p.settings["ttl"], "30");
        assert_eq!(p.settings["greeting"], "hi");
        assert_eq!(p.settings["on"], "true");
        assert_eq!(p.isolation, Isolation::pooled(8));
        assert_eq!(p.quotas.memory, 16 << 20);
        assert_eq!(p.quotas.wall_time, Duration::from_secs(2));
        assert_eq!(p.quotas.max_output, Quotas::default().max_output);
    }

    /// Every mistake is one line naming file, line, key and expectation.
    #[test]
    fn isolation_defaults_to_pooled_and_checks_its_keys() {
        let iso = |extra: &str| {
            parse(&format!("[plugins.a]\nwasm = \"a.wasm\"\n{extra}"))
                .map(|c| c.plugins[&PluginName::parse("a").unwrap()].isolation)
                .map_err(|e| e.0)
        };
        assert_eq!(iso(""), Ok(Isolation::default()));
        assert_eq!(iso("isolation = \"per-call\""), Ok(Isolation::PerCall));
        assert_eq!(iso("reuse-instances = 0"), Ok(Isolation::PerCall));
        assert_eq!(iso("reuse-instances = 1"), Ok(Isolation::PerCall));
        assert_eq!(
            iso("isolation = \"pooled\"\nreuse-instances = 5\ninstance-max-age = \"2s\""),
            Ok(Isolation::Pooled {
                max_uses: 5,
                max_age: Duration::from_secs(2)
            })
        );
        for (bad, says) in [
            ("isolation = \"shared\"", "plugins.a.isolation"),
            (
                "isolation = \"per-call\"\nreuse-instances = 4",
                "contradicts",
            ),
            ("isolation = \"pooled\"\nreuse-instances = 1", "at least 2"),
            (
                "isolation = \"per-call\"\ninstance-max-age = \"1s\"",
                "only to pooled",
            ),
            ("instance-max-age = \"0s\"", "plugins.a.instance-max-age"),
            ("instance-max-age = \"2days\"", "at most 1day"),
            ("reuse-instances = 2000000", "at most 1000000"),
        ] {
            let e = iso(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn errors_name_file_line_and_key() {
        let e = parse("[plugins.a]\nwasm = 3\n").unwrap_err().0;
        assert_eq!(
            e,
            "/etc/redloom/redloom.toml:2: plugins.a.wasm: invalid type: integer `3`, expected path string"
        );
        let e = parse("[plugins.a]\nwsam = \"x.wasm\"\n").unwrap_err().0;
        assert!(
            e.starts_with("/etc/redloom/redloom.toml:2: plugins.a.wsam: unknown field `wsam`"),
            "{e}"
        );
        let e = parse("[plugins.a]\nwasm = \"a.wasm\"\nquotas = { wall-time = \"soon\" }\n")
            .unwrap_err()
            .0;
        assert!(
            e.contains("plugins.a.quotas.wall-time") && e.contains("expected a duration"),
            "{e}"
        );
        let e = parse("[plugins.\"Bad Name\"]\nwasm = \"a.wasm\"\n")
            .unwrap_err()
            .0;
        assert!(
            e.contains("plugins.Bad Name") && e.contains("lowercase"),
            "{e}"
        );
        let e = parse("[redis]\nurl = \"http://x\"\n").unwrap_err().0;
        assert!(e.contains("redis.url") && e.contains("redis://"), "{e}");
        let e = parse("[redis]\nurl = \"redis://a:1\"\ncluster = [\"redis://b:2\"]\n")
            .unwrap_err()
            .0;
        assert!(e.contains("redis.cluster") && e.contains("not both"), "{e}");
        let e = parse("[redis]\ncluster = [\"unix:///tmp/r.sock\"]\n")
            .unwrap_err()
            .0;
        assert!(
            e.contains("redis.cluster") && e.contains("rediss://"),
            "{e}"
        );
        let e = parse("[redis]\ncluster = [\"redis://a:1\", \"rediss://b:2\"]\n")
            .unwrap_err()
            .0;
        assert!(e.contains("redis.cluster") && e.contains("disagree"), "{e}");
        let c = parse("[redis]\ncluster = [\"redis://a:1\", \"redis://b:2\"]\nwait-replicas = 1\n")
            .unwrap();
        assert_eq!(
            c.redis.target(),
            Some(crate::redis::RedisTarget::Cluster(vec![
                "redis://a:1".into(),
                "redis://b:2".into()
            ]))
        );
        assert_eq!(c.redis.wait_replicas, 1);
        let e = parse("[plugins.a]\nwasm = \"a.wasm\"\nquotas = { memory = \"2GiB\" }\n")
            .unwrap_err()
            .0;
        assert!(
            e.contains("plugins.a.quotas.memory") && e.contains("ceiling"),
            "{e}"
        );
        let e = parse("[plugins.a\n").unwrap_err().0;
        assert!(e.starts_with("/etc/redloom/redloom.toml:1: "), "{e}");
        assert!(!e.contains('\n'), "{e}");
    }

    /// Both listeners have connection limits with defaults; each can be
    /// set, and one out of range is refused naming its section and key.
    #[test]
    fn listener_connection_limits() {
        let c = parse("").unwrap();
        assert_eq!(
            c.http.limits().header_read_timeout,
            DEFAULT_HEADER_READ_TIMEOUT
        );
        assert_eq!(c.http.limits().idle_timeout, DEFAULT_IDLE_TIMEOUT);
        assert_eq!(c.http.limits().body_read_timeout, DEFAULT_BODY_READ_TIMEOUT);
        assert_eq!(
            c.http.limits().max_connections,
            DEFAULT_HTTP_MAX_CONNECTIONS
        );
        assert_eq!(
            c.admin.limits().max_connections,
            DEFAULT_ADMIN_MAX_CONNECTIONS
        );
        assert_eq!(
            c.admin.limits().header_read_timeout,
            DEFAULT_HEADER_READ_TIMEOUT
        );
        let c = parse(
            "[http]\nheader-read-timeout = \"2s\"\nidle-timeout = \"3s\"\n\
             body-read-timeout = \"4s\"\nmax-connections = 7\n\
             [admin]\nheader-read-timeout = \"5s\"\nmax-connections = 2\n",
        )
        .unwrap();
        assert_eq!(
            c.http.limits(),
            ConnectionLimits {
                header_read_timeout: Duration::from_secs(2),
                idle_timeout: Duration::from_secs(3),
                body_read_timeout: Duration::from_secs(4),
                max_connections: 7,
            }
        );
        assert_eq!(c.admin.limits().header_read_timeout, Duration::from_secs(5));
        assert_eq!(c.admin.limits().idle_timeout, DEFAULT_IDLE_TIMEOUT);
        assert_eq!(c.admin.limits().max_connections, 2);
        for (text, key, says) in [
            (
                "[http]\nheader-read-timeout = \"0s\"\n",
                "http.header-read-timeout",
                "outside 100ms..=1h",
            ),
            (
                "[http]\nidle-timeout = \"2h\"\n",
                "http.idle-timeout",
                "outside 100ms..=1h",
            ),
            (
                "[admin]\nbody-read-timeout = \"10ms\"\n",
                "admin.body-read-timeout",
                "outside",
            ),
            (
                "[http]\nmax-connections = 0\n",
                "http.max-connections",
                "0 is outside 1..=1000000",
            ),
            (
                "[admin]\nmax-connections = 2000000\n",
                "admin.max-connections",
                "outside",
            ),
            (
                "[admin]\nidle-timeout = \"soon\"\n",
                "admin.idle-timeout",
                "expected a duration",
            ),
        ] {
            let e = parse(text).unwrap_err().0;
            assert!(e.contains(key) && e.contains(says), "{text}: {e}");
        }
    }

    /// `tls-*` paths are relative to the configuration file's folder, and a
    /// client certificate comes with its key.
    #[test]
    fn tls_files_are_relative_to_the_file() {
        let c = parse(
            "[redis]\nurl = \"rediss://r:6380\"\ntls-ca-file = \"certs/ca.pem\"\n\
             tls-cert-file = \"/abs/client.pem\"\ntls-key-file = \"client.key\"\n",
        )
        .unwrap();
        assert_eq!(
            c.redis.tls_ca_file.as_deref(),
            Some(Path::new("/etc/redloom/certs/ca.pem"))
        );
        assert_eq!(
            c.redis.tls_cert_file.as_deref(),
            Some(Path::new("/abs/client.pem"))
        );
        assert_eq!(
            c.redis.tls_key_file.as_deref(),
            Some(Path::new("/etc/redloom/client.key"))
        );
        let e = parse("[redis]\ntls-key-file = \"k.pem\"\n").unwrap_err().0;
        assert!(
            e.contains("redis.tls-cert-file") && e.contains("both"),
            "{e}"
        );
    }

    /// A consumer's `rate-limit` names a rate policy of the plugin, and
    /// `rate-limit-key` is `header:NAME` (with a `rate-limit`).
    #[test]
    fn consumer_rate_limits() {
        let file = |consumer: &str| {
            format!(
                "[plugins.w]\nwasm = \"w.wasm\"\n[plugins.w.limiters.jobs]\nalgorithm = \"gcra\"\nrate = \"10/s\"\nburst = 1\n[plugins.w.limiters.slots]\nalgorithm = \"concurrency\"\nslots = 2\nlease = \"1s\"\n[plugins.w.consumers.q]\n{consumer}\n"
            )
        };
        let c = parse(&file(
            "rate-limit = \"jobs\"\nrate-limit-key = \"header:tenant\"",
        ))
        .unwrap();
        let q = &c.plugins[&PluginName::parse("w").unwrap()]
            .triggers
            .consumers["q"];
        assert_eq!(q.rate_limit.as_deref(), Some("jobs"));
        assert_eq!(
            q.rate_limit_key,
            Some(RateLimitKey::Header("tenant".into()))
        );
        let c = parse(&file("")).unwrap();
        let q = &c.plugins[&PluginName::parse("w").unwrap()]
            .triggers
            .consumers["q"];
        assert_eq!(
            (q.rate_limit.as_ref(), q.rate_limit_key.as_ref()),
            (None, None)
        );

        let e = parse(&file("rate-limit = \"nope\"")).unwrap_err().0;
        assert!(
            e.contains("plugins.w.consumers.q.rate-limit: no limiter policy `nope`")
                && e.contains("`jobs`, `slots`"),
            "{e}"
        );
        let e = parse(&file("rate-limit = \"slots\"")).unwrap_err().0;
        assert!(
            e.contains("q.rate-limit: `slots` is a concurrency policy"),
            "{e}"
        );
        let e = parse(&file("rate-limit = \"jobs\"\nrate-limit-key = \"tenant\""))
            .unwrap_err()
            .0;
        assert!(
            e.contains(":13: plugins.w.consumers.q.rate-limit-key: expected \"header:NAME\""),
            "{e}"
        );
        let e = parse(&file("rate-limit = \"jobs\"\nrate-limit-key = \"header:\""))
            .unwrap_err()
            .0;
        assert!(e.contains("q.rate-limit-key: expected"), "{e}");
        let e = parse(&file("rate-limit-key = \"header:tenant\""))
            .unwrap_err()
            .0;
        assert!(e.contains("q.rate-limit-key: needs `rate-limit`"), "{e}");
    }
}
