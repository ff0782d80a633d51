//! `redloom serve`: the HTTP trigger and the admin listener around a
//! [`Host`](crate::host::Host).
//!
//! - [`trigger`]: routed requests to plugins' HTTP handlers.
//! - [`routes`]: `[[routes]]` matching.
//! - [`admin`]: plugin management, metrics, health.
//! - [`metrics`]: the Prometheus collector.
//! - [`listener`]: accepting and serving connections within each
//!   listener's connection limits and timeouts.
//!
//! Graceful shutdown: when `shutdown` resolves, both listeners stop
//! accepting, requests already running get `[http] shutdown-timeout` to
//! finish, then [`Server::run`] returns.

mod admin;
mod listener;
mod metrics;
mod routes;
mod trigger;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::http::StatusCode;
use prometheus_client::registry::Registry;

pub use admin::{LoadedJson, PluginJson, PluginState};
pub use listener::{OPEN_FILES_RESERVE, raise_open_files_limit};
pub use routes::{Match, RouteTable};
pub use trigger::form_urlencoded;

use crate::config::{AdminAuth, Config};
use crate::handler::HandlerKind;
use crate::host::{Host, ReloadError};
use crate::namespace::PluginName;
use crate::plugin::{LoadError, PluginSpec};
use crate::triggers::{self, Triggers};

/// How long a `/metrics` scrape may spend reading the consumed queues'
/// state from Redis (all of them together).
pub const QUEUE_STATS_TIMEOUT: Duration = Duration::from_secs(2);

/// Shared state of both listeners.
pub struct App {
    host: Arc<Host>,
    config: Config,
    routes: RouteTable,
    admin_token: Option<String>,
    metrics: Registry,
    redis_up: Arc<AtomicBool>,
    redis_info: Arc<std::sync::Mutex<Option<crate::redis::info::ServerInfo>>>,
    queue_stats: Arc<std::sync::Mutex<Vec<metrics::QueueSample>>>,
}

impl App {
    /// Pings Redis (bounded) and records the result for `/metrics`.
    async fn check_redis(&self) -> bool {
        let up = matches!(
            tokio::time::timeout(Duration::from_secs(2), self.host.redis().ping()).await,
            Ok(Ok(()))
        );
        self.redis_up.store(up, Ordering::Relaxed);
        up
    }

    /// Reads Redis's `INFO` (bounded) for `/metrics`; `None` when it fails.
    async fn read_redis_info(&self) {
        let info =
            match tokio::time::timeout(Duration::from_secs(2), self.host.redis().server_info())
                .await
            {
                Ok(Ok(info)) => Some(info),
                Ok(Err(e)) => {
                    tracing::debug!("INFO for /metrics failed: {e}");
                    None
                }
                Err(_) => None,
            };
        *self.redis_info.lock().expect("redis info poisoned") = info;
    }

    /// Reads the state of every consumed queue (bounded: [`QUEUE_STATS_TIMEOUT`]
    /// for all of them) for `/metrics`; a queue that cannot be read is left
    /// out of this scrape.
    async fn read_queue_stats(&self) {
        let redis = self.host.redis();
        let read = async {
            let mut samples = Vec::new();
            for (plugin, p) in &self.config.plugins {
                for (queue, c) in &p.triggers.consumers {
                    let shared = crate::namespace::is_shared(&p.triggers.shared_queues, queue);
                    let Ok(keys) = crate::namespace::Namespace::new(plugin).queue(queue, shared)
                    else {
                        continue;
                    };
                    match redis.queue_stats(&keys, &c.group).await {
                        Ok(stats) => samples.push(metrics::QueueSample {
                            plugin: plugin.to_string(),
                            queue: queue.clone(),
                            stats,
                        }),
                        Err(e) => {
                            tracing::debug!(%plugin, queue, "queue stats for /metrics failed: {e}")
                        }
                    }
                }
            }
            samples
        };
        let samples = tokio::time::timeout(QUEUE_STATS_TIMEOUT, read)
            .await
            .unwrap_or_default();
        *self.queue_stats.lock().expect("queue stats poisoned") = samples;
    }

    /// Every trigger the configuration binds to `plugin` needs its handler.
    fn check_routes(&self, plugin: &PluginName, handlers: &[HandlerKind]) -> Result<(), String> {
        for (p, handler, what) in triggers::required_handlers(&self.config) {
            if &p == plugin && !handlers.contains(&handler) {
                return Err(format!(
                    "{plugin} must export {} because of {what} in the configuration \
                     (with redloom-sdk: `export!(YourPlugin => [{handler}])`)",
                    handler.export()
                ));
            }
        }
        Ok(())
    }

    /// Loads a plugin, refusing one that routes need and that lacks the HTTP
    /// handler (the previous version, if any, keeps serving).
    async fn load_checked(&self, spec: PluginSpec) -> Result<(), String> {
        let name = spec.name.clone();
        self.host
            .load_checked(spec, |p| self.check_routes(&name, &p.handlers().kinds()))
            .await
            .map(drop)
            .map_err(|e| admin_message(&e))
    }

    async fn reload_checked(
        &self,
        name: &PluginName,
        wasm: Option<PathBuf>,
        settings: Option<std::collections::BTreeMap<String, String>>,
    ) -> Result<(), (StatusCode, String)> {
        let check = |p: &crate::plugin::Plugin| self.check_routes(name, &p.handlers().kinds());
        match self.host.reload(name, wasm, settings, check).await {
            Ok(_) => Ok(()),
            Err(ReloadError::UnknownPlugin(_)) => Err((
                StatusCode::NOT_FOUND,
                format!("no plugin named {name} is loaded"),
            )),
            Err(ReloadError::Load(e)) => Err((StatusCode::UNPROCESSABLE_ENTITY, admin_message(&e))),
        }
    }
}

/// What the admin API says about a failed load. A file that is missing,
/// unreadable, not a regular file or not WebAssembly gets the same words, so
/// the API cannot be used to learn what exists on the host's file system;
/// the log has the detail.
fn admin_message(e: &LoadError) -> String {
    match e {
        LoadError::Read { path, .. } | LoadError::NotWasm { path } => {
            tracing::warn!("admin load: {e}");
            format!(
                "cannot load {}: not a readable WebAssembly file",
                path.display()
            )
        }
        other => other.to_string(),
    }
}

/// Bound listeners, ready to serve.
pub struct Server {
    app: Arc<App>,
    triggers: Triggers,
    http: tokio::net::TcpListener,
    admin: tokio::net::TcpListener,
    http_stats: Arc<listener::ListenerStats>,
    admin_stats: Arc<listener::ListenerStats>,
    shutdown_timeout: Duration,
}

/// Why `serve` could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        addr: SocketAddr,
        what: &'static str,
        source: std::io::Error,
    },
    #[error("{0}")]
    Routes(String),
    #[error("cannot start the pub/sub and timer triggers: {0:#}")]
    Triggers(anyhow::Error),
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("cannot set up the admin token: {0}")]
    AdminToken(String),
    #[error("{0}")]
    OpenFiles(String),
}

/// The admin token given by configuration or `REDLOOM_ADMIN_TOKEN`.
pub fn admin_token_from(config: &Config) -> Option<String> {
    config
        .admin
        .token
        .clone()
        .filter(|t| !t.is_empty())
        .or_else(|| {
            std::env::var("REDLOOM_ADMIN_TOKEN")
                .ok()
                .filter(|t| !t.is_empty())
        })
}

impl Server {
    /// Loads every configured plugin into `host`, checks that routed plugins
    /// export the HTTP handler, and binds both listeners.
    pub async fn bind(host: Arc<Host>, config: Config) -> Result<Server, ServeError> {
        let routes = RouteTable::new(&config.routes).map_err(ServeError::Routes)?;
        host.load_all(&config).await?;
        let admin_token = match config.admin.auth {
            AdminAuth::None => {
                tracing::warn!(
                    "[admin] auth = \"none\": anyone who can reach {} manages plugins",
                    config.admin.listen
                );
                None
            }
            AdminAuth::Token => Some(match admin_token_from(&config) {
                Some(t) => t,
                None => admin::generated_token(host.data_dir())
                    .map_err(|e| ServeError::AdminToken(format!("{e:#}")))?,
            }),
        };
        check_open_files(&config)?;
        let redis_up = Arc::new(AtomicBool::new(true));
        let http_stats = Arc::new(listener::ListenerStats::default());
        let admin_stats = Arc::new(listener::ListenerStats::default());
        let redis_info = Arc::new(std::sync::Mutex::new(None));
        let queue_stats = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut registry = metrics::HostCollector::registry(
            host.clone(),
            redis_up.clone(),
            redis_info.clone(),
            queue_stats.clone(),
        );
        registry.register_collector(Box::new(metrics::ListenerCollector {
            listeners: vec![("http", http_stats.clone()), ("admin", admin_stats.clone())],
        }));
        let app = Arc::new(App {
            metrics: registry,
            host,
            routes,
            admin_token,
            redis_up,
            redis_info,
            queue_stats,
            config: config.clone(),
        });
        if let Some(warning) = cache_eviction_warning(&app.host).await {
            tracing::warn!("{warning}");
        }
        for name in app.config.plugins.keys() {
            let handlers = app
                .host
                .plugin(name)
                .map(|p| p.handlers().kinds())
                .unwrap_or_default();
            app.check_routes(name, &handlers)
                .map_err(ServeError::Routes)?;
        }
        let bind = |addr: SocketAddr, what: &'static str| async move {
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| ServeError::Bind { addr, what, source })
        };
        let http = bind(config.http.listen, "[http] listen").await?;
        let admin = bind(config.admin.listen, "[admin] listen").await?;
        let triggers = Triggers::start(app.host.clone(), &app.config)
            .await
            .map_err(ServeError::Triggers)?;
        Ok(Server {
            http,
            admin,
            http_stats,
            admin_stats,
            triggers,
            shutdown_timeout: config.http.shutdown_timeout,
            app,
        })
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http
            .local_addr()
            .expect("bound listener has an address")
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
            .local_addr()
            .expect("bound listener has an address")
    }

    /// Serves until `shutdown` resolves, then drains for up to the
    /// configured shutdown timeout.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()> + Send + 'static) {
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let trigger = axum::Router::new()
            .fallback(trigger::handle)
            .with_state(self.app.clone());
        let http = tokio::spawn(listener::serve(
            "http",
            self.http,
            trigger,
            self.app.config.http.limits(),
            self.http_stats,
            stop_rx.clone(),
        ));
        let admin = tokio::spawn(listener::serve(
            "admin",
            self.admin,
            admin::router(self.app.clone()),
            self.app.config.admin.limits(),
            self.admin_stats,
            stop_rx,
        ));
        let triggers = self.triggers;
        shutdown.await;
        tracing::info!("shutting down: no new connections; draining running requests");
        // Stop taking messages and ticks; queue consumers and HTTP requests
        // drain in parallel.
        let shutdown_timeout = self.shutdown_timeout;
        let triggers_stopped = tokio::spawn(triggers.stop(shutdown_timeout));
        let _ = stop_tx.send(true);
        let drained = tokio::time::timeout(self.shutdown_timeout, async {
            let _ = http.await;
            let _ = admin.await;
        })
        .await;
        let _ = triggers_stopped.await;
        if drained.is_err() {
            tracing::warn!(
                "requests still running after {}; exiting anyway",
                humantime::format_duration(self.shutdown_timeout)
            );
        }
    }
}

/// Raises the open-file limit as far as allowed and checks that both
/// listeners' `max-connections`, with [`OPEN_FILES_RESERVE`] for everything
/// else, fit in it: past it `accept` fails and routes become unreachable,
/// which the connection limits exist to prevent.
fn check_open_files(config: &Config) -> Result<(), ServeError> {
    let limit = match raise_open_files_limit() {
        Ok(limit) => limit,
        Err(e) => {
            tracing::warn!(
                "cannot read the open-file limit ({e}); not checking max-connections against it"
            );
            return Ok(());
        }
    };
    let (http, admin) = (config.http.max_connections, config.admin.max_connections);
    let needed = (http as u64)
        .saturating_add(admin as u64)
        .saturating_add(OPEN_FILES_RESERVE);
    if needed > limit {
        return Err(ServeError::OpenFiles(format!(
            "[http] max-connections ({http}) and [admin] max-connections ({admin}), with \
             {OPEN_FILES_RESERVE} open files kept for Redis, plugins and files, need {needed} \
             open files, but this process may open only {limit}: lower max-connections or \
             raise the limit (`ulimit -n`, systemd `LimitNOFILE=`)"
        )));
    }
    Ok(())
}

/// The warning `serve` logs at start when a loaded plugin uses the `cache`
/// capability and Redis will not evict (`maxmemory-policy noeviction`):
/// at `maxmemory` Redis then refuses writes (OOM), so cache fills start to
/// fail instead of old entries making room. `None` when no plugin uses the
/// cache, the policy evicts, or `INFO` does not answer within 2 s.
pub async fn cache_eviction_warning(host: &Host) -> Option<String> {
    let mut users: Vec<String> = host
        .plugin_names()
        .into_iter()
        .filter(|n| {
            host.plugin(n).is_some_and(|p| {
                p.report()
                    .imports
                    .iter()
                    .any(|i| i.starts_with("redloom:plugin/cache@"))
            })
        })
        .map(|n| n.to_string())
        .collect();
    if users.is_empty() {
        return None;
    }
    users.sort();
    let info = tokio::time::timeout(Duration::from_secs(2), host.redis().server_info())
        .await
        .ok()?
        .ok()?;
    if info.maxmemory_policy != "noeviction" {
        return None;
    }
    let limit = if info.maxmemory == 0 {
        "no maxmemory is set, so Redis grows until the machine runs out of memory".to_string()
    } else {
        format!(
            "at maxmemory ({}) Redis refuses writes, so cache fills will fail instead of evicting old entries",
            bytesize::ByteSize(info.maxmemory)
        )
    };
    Some(format!(
        "plugins {} use the cache, but Redis's maxmemory-policy is noeviction: {limit}; \
         give the cache its own Redis with maxmemory and allkeys-lru, or set volatile-lru \
         here (it evicts only keys with a TTL: cache entries, but also held locks and \
         rate-limit state; for redloom's private server: [redis] private-maxmemory-policy)",
        users.join(", ")
    ))
}
