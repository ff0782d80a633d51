//! [`Host`]: the runtime, the Redis connection (and the private server when
//! there is no URL), and the loaded plugins. The CLI commands, and later the
//! triggers, all go through it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use crate::config::{Config, RedisSection};
use crate::engine::{Runtime, RuntimeOptions};
use crate::namespace::PluginName;
use crate::plugin::{InvokeError, LoadError, Plugin, PluginSpec};
use crate::redis::server::{PrivateRedis, ServerOptions, StartError};
use crate::redis::{Redis, RedisOptions};

/// How to start a host.
#[derive(Debug, Clone)]
pub struct HostOptions {
    /// Redis URL; `None` starts a private `redis-server` in `data_dir/redis`.
    pub redis_url: Option<String>,
    pub redis: RedisSection,
    /// Holds `redis/` (private server data) and `cache/` (compiled plugins).
    pub data_dir: PathBuf,
    /// Cache compiled plugins under `data_dir/cache`.
    pub compile_cache: bool,
    pub runtime: RuntimeOptions,
}

impl HostOptions {
    pub fn from_config(config: &Config) -> HostOptions {
        HostOptions {
            redis_url: config.redis.url.clone(),
            redis: config.redis.clone(),
            data_dir: config.data_dir.clone(),
            compile_cache: true,
            runtime: RuntimeOptions::default(),
        }
    }
}

/// Why a host could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    PrivateRedis(#[from] StartError),
    #[error("{0:#}")]
    Redis(anyhow::Error),
    #[error("cannot set up the WebAssembly runtime: {0:#}")]
    Runtime(anyhow::Error),
}

/// A running host.
pub struct Host {
    runtime: Runtime,
    redis: Redis,
    plugins: RwLock<BTreeMap<PluginName, Arc<Plugin>>>,
    private_redis: Option<PrivateRedis>,
}

impl Host {
    /// Connects to Redis (starting a private server if no URL is set) and
    /// sets up the runtime. Loads no plugin.
    pub async fn start(options: HostOptions) -> Result<Host, StartupError> {
        let mut runtime_options = options.runtime.clone();
        if options.compile_cache {
            runtime_options.cache_dir = Some(options.data_dir.join("cache"));
        }
        let runtime = Runtime::new(runtime_options).map_err(StartupError::Runtime)?;
        let (url, private_redis) = match &options.redis_url {
            Some(url) => (url.clone(), None),
            None => {
                let server =
                    PrivateRedis::start(ServerOptions::new(options.data_dir.join("redis"))).await?;
                tracing::info!(url = %server.url(), dir = %server.dir().display(), "started a private redis-server");
                (server.url(), Some(server))
            }
        };
        let redis = Redis::connect(
            &url,
            RedisOptions {
                connect_timeout: options.redis.connect_timeout,
                response_timeout: options.redis.response_timeout,
            },
        )
        .await
        .map_err(StartupError::Redis)?;
        Ok(Host {
            runtime,
            redis,
            plugins: RwLock::new(BTreeMap::new()),
            private_redis,
        })
    }

    pub fn redis(&self) -> &Redis {
        &self.redis
    }

    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    /// The private server, when this host started one.
    pub fn private_redis(&self) -> Option<&PrivateRedis> {
        self.private_redis.as_ref()
    }

    /// Loads (or replaces) a plugin and instantiates it once to check it.
    pub async fn load(&self, spec: PluginSpec) -> Result<Arc<Plugin>, LoadError> {
        let path = spec.wasm.clone();
        let plugin = Plugin::load(&self.runtime, spec)?;
        plugin
            .probe(Some(self.redis.clone()))
            .await
            .map_err(|e| LoadError::Invalid {
                path,
                reason: e.to_string(),
            })?;
        let plugin = Arc::new(plugin);
        let report = plugin.report();
        tracing::info!(
            plugin = %plugin.name(),
            cache = ?report.cache,
            compile_ms = report.compile_time.as_millis() as u64,
            "loaded plugin"
        );
        self.plugins
            .write()
            .expect("plugin table poisoned")
            .insert(plugin.name().clone(), plugin.clone());
        Ok(plugin)
    }

    /// Loads every plugin of `config`, stopping at the first that fails.
    pub async fn load_all(&self, config: &Config) -> Result<(), LoadError> {
        for (name, p) in &config.plugins {
            self.load(PluginSpec::from_config(name.clone(), p)).await?;
        }
        Ok(())
    }

    pub fn plugin(&self, name: &PluginName) -> Option<Arc<Plugin>> {
        self.plugins
            .read()
            .expect("plugin table poisoned")
            .get(name)
            .cloned()
    }

    pub fn plugin_names(&self) -> Vec<PluginName> {
        self.plugins
            .read()
            .expect("plugin table poisoned")
            .keys()
            .cloned()
            .collect()
    }

    /// Invokes a loaded plugin's `invoke` handler.
    pub async fn invoke(
        &self,
        plugin: &PluginName,
        input: &[u8],
    ) -> Result<Vec<u8>, HostInvokeError> {
        let p = self
            .plugin(plugin)
            .ok_or_else(|| HostInvokeError::UnknownPlugin(plugin.clone()))?;
        Ok(p.invoke(&self.redis, input).await?)
    }

    /// Stops the private Redis (if any) gracefully.
    pub async fn shutdown(self) {
        if let Some(server) = self.private_redis {
            server.stop().await;
        }
    }
}

/// [`Host::invoke`]'s error.
#[derive(Debug, thiserror::Error)]
pub enum HostInvokeError {
    #[error("no plugin named {0} is loaded")]
    UnknownPlugin(PluginName),
    #[error(transparent)]
    Invoke(#[from] InvokeError),
}
