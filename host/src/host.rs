//! [`Host`]: the runtime, the Redis connection (and the private server when
//! there is no URL), and the loaded plugins. The CLI commands, and later the
//! triggers, all go through it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use crate::bindings::http_types::{Request as HttpRequest, Response as HttpResponse};
use crate::config::{Config, RedisSection};
use crate::engine::{Runtime, RuntimeOptions};
use crate::namespace::PluginName;
use crate::plugin::{Call, InvokeError, LoadError, Plugin, PluginSpec, Reply};
use crate::redis::server::{PrivateRedis, ServerOptions, StartError};
use crate::redis::{Redis, RedisOptions, RedisTarget, TlsFiles};

/// How to start a host.
#[derive(Debug, Clone)]
pub struct HostOptions {
    /// Redis or Cluster to use; `None` starts a private `redis-server` in
    /// `data_dir/redis`.
    pub redis_target: Option<RedisTarget>,
    pub redis: RedisSection,
    /// Holds `redis/` (private server data) and `cache/` (compiled plugins).
    pub data_dir: PathBuf,
    /// Cache compiled plugins under `data_dir/cache`.
    pub compile_cache: bool,
    pub runtime: RuntimeOptions,
    /// The lock file pinning `oci://` plugins to digests ([`crate::oci`]):
    /// `redloom.lock` next to the configuration file, or in `data_dir`
    /// without one.
    pub oci_lock: PathBuf,
}

impl HostOptions {
    pub fn from_config(config: &Config) -> HostOptions {
        HostOptions {
            redis_target: config.redis.target(),
            redis: config.redis.clone(),
            data_dir: config.data_dir.clone(),
            compile_cache: true,
            oci_lock: config
                .source
                .as_deref()
                .and_then(std::path::Path::parent)
                .unwrap_or(&config.data_dir)
                .join(crate::oci::LOCK_FILE),
            runtime: RuntimeOptions {
                max_instances: config.host.max_instances,
                fuel: config.plugins.values().any(|p| p.quotas.fuel.is_some()),
                ..RuntimeOptions::default()
            },
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
    /// `[redis] tls-*` files that cannot be used.
    #[error("[redis] {0:#}")]
    Tls(anyhow::Error),
}

/// A loaded plugin and the connection its commands use: the host's, or
/// one authenticated as the plugin's own ACL user. Shared (`Arc`) so that
/// looking a plugin up per call clones a pointer, not the spec.
struct Loaded {
    plugin: Arc<Plugin>,
    redis: Redis,
    /// What it was loaded from, for `reload`.
    spec: PluginSpec,
}

/// A loaded plugin as the admin API lists it.
#[derive(Debug, Clone)]
pub struct PluginInfo {
    pub name: PluginName,
    pub wasm: PathBuf,
    pub handlers: Vec<&'static str>,
    pub stats: crate::stats::Snapshot,
}

/// A running host.
pub struct Host {
    /// The data folder (compile cache, private Redis, admin token).
    data_dir: PathBuf,
    oci_lock: PathBuf,
    runtime: Runtime,
    redis: Redis,
    plugins: RwLock<BTreeMap<PluginName, Arc<Loaded>>>,
    private_redis: std::sync::Mutex<Option<PrivateRedis>>,
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
        let r = &options.redis;
        let tls =
            if r.tls_ca_file.is_some() || r.tls_cert_file.is_some() || r.tls_key_file.is_some() {
                Some(
                    TlsFiles::read(
                        r.tls_ca_file.as_deref(),
                        r.tls_cert_file.as_deref(),
                        r.tls_key_file.as_deref(),
                    )
                    .map_err(StartupError::Tls)?,
                )
            } else {
                None
            };
        if tls.is_some() {
            let urls = match &options.redis_target {
                None => Vec::new(),
                Some(RedisTarget::Single(url)) => vec![url.as_str()],
                Some(RedisTarget::Cluster(seeds)) => seeds.iter().map(String::as_str).collect(),
            };
            let plain = urls.iter().find(|u| !u.starts_with("rediss://"));
            if urls.is_empty() || plain.is_some() {
                let which = plain.map_or("the private redis-server".to_string(), |u| {
                    format!("`{}`", crate::redis::redact(u))
                });
                return Err(StartupError::Tls(anyhow::anyhow!(
                    "tls-ca-file, tls-cert-file and tls-key-file are for rediss:// servers, not {which}: \
                     use rediss:// URLs, or remove them"
                )));
            }
        }
        let (target, private_redis) = match &options.redis_target {
            Some(target) => (target.clone(), None),
            None => {
                let dir = options.data_dir.join("redis");
                let password = crate::redis::server::private_password(&dir)
                    .map_err(|e| StartError::Password(dir.clone(), e))?;
                let server = PrivateRedis::start(ServerOptions {
                    claim: true,
                    password: Some(password),
                    private_files: true,
                    extra_args: vec![
                        "--maxmemory".into(),
                        r.private_maxmemory.to_string(),
                        "--maxmemory-policy".into(),
                        r.private_maxmemory_policy.as_str().into(),
                    ],
                    ..ServerOptions::new(dir)
                })
                .await?;
                tracing::info!(url = %crate::redis::redact(&server.url()), dir = %server.dir().display(), "started a private redis-server");
                (RedisTarget::Single(server.url()), Some(server))
            }
        };
        let redis = Redis::connect_to(
            &target,
            RedisOptions {
                wait_replicas: options.redis.wait_replicas,
                wait_timeout: options.redis.wait_timeout,
                tls,
                ..RedisOptions::new(
                    options.redis.connect_timeout,
                    options.redis.response_timeout,
                )
            },
        )
        .await
        .map_err(StartupError::Redis)?;
        Ok(Host {
            data_dir: options.data_dir.clone(),
            oci_lock: options.oci_lock.clone(),
            runtime,
            redis,
            plugins: RwLock::new(BTreeMap::new()),
            private_redis: std::sync::Mutex::new(private_redis),
        })
    }

    /// The data folder: compile cache, private Redis, admin token.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub fn redis(&self) -> &Redis {
        &self.redis
    }

    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    /// The private server's URL, when this host started one.
    pub fn private_redis_url(&self) -> Option<String> {
        self.private_redis
            .lock()
            .expect("private redis poisoned")
            .as_ref()
            .map(PrivateRedis::url)
    }

    /// Loads (or replaces) a plugin and instantiates it once to check it.
    /// With `spec.acl`, creates the plugin's ACL user first.
    pub async fn load(&self, spec: PluginSpec) -> Result<Arc<Plugin>, LoadError> {
        self.load_checked(spec, |_| Ok(())).await
    }

    /// Like [`Host::load`], but `check` sees the new plugin before it
    /// replaces the old one; its error leaves the old one serving.
    pub async fn load_checked(
        &self,
        spec: PluginSpec,
        check: impl FnOnce(&Plugin) -> Result<(), String>,
    ) -> Result<Arc<Plugin>, LoadError> {
        let path = spec.wasm.clone();
        let acl = spec.acl;
        // An `oci://` plugin loads from its pulled (or cached) file; the
        // spec keeps the reference, so a reload resolves it again.
        let mut local = spec.clone();
        if let Some(reference) = path.to_str().filter(|w| crate::oci::is_reference(w)) {
            local.wasm = crate::oci::fetch(reference, &self.data_dir, &self.oci_lock)
                .await
                .map_err(|e| LoadError::Registry(e.to_string()))?;
        }
        let plugin = Plugin::load(&self.runtime, local)?;
        let redis = if acl {
            let user = format!("redloom-{}", plugin.name());
            let mut channels = crate::namespace::shared_acl_patterns(
                &spec.triggers.shared_channels,
                &spec.triggers.shared_queues,
            );
            // The pub/sub trigger subscribes as this user too.
            channels.extend(
                crate::subscriptions::acl_patterns(plugin.name(), &spec.triggers, self.redis.db())
                    .map_err(|e| LoadError::Config {
                        path: path.clone(),
                        reason: format!("{e:#}"),
                    })?,
            );
            self.redis
                .for_acl_user(&user, plugin.namespace().prefix(), &channels)
                .await
                .map_err(|e| LoadError::Config {
                    path: path.clone(),
                    reason: format!("{e:#}"),
                })?
        } else {
            self.redis.clone()
        };
        // The plugin's own scripts, loaded as its ACL user: one that does
        // not compile is a load error naming it.
        for (name, file, source) in spec.scripts.sources() {
            redis
                .load_script(source)
                .await
                .map_err(|e| LoadError::Config {
                    path: path.clone(),
                    reason: format!("script `{name}` ({}) does not load: {e}", file.display()),
                })?;
        }
        plugin
            .probe(Some(redis.clone()))
            .await
            .map_err(|source| LoadError::Start {
                path: path.clone(),
                source,
            })?;
        check(&plugin).map_err(|reason| LoadError::Config { path, reason })?;
        // Start from the last measurement of its Redis memory (`serve`
        // takes them; see `sampler`).
        if let Ok(Some(bytes)) = self.redis.stored_usage(plugin.name().as_str()).await {
            plugin.storage().sampled(bytes, 0);
        }
        // Near-cache tracking runs on the host's own connection, asking
        // only for the plugin's prefixes (see `redis::tracking`).
        plugin.near_cache().set_tracker(self.redis.clone());
        plugin.set_key_scanner(self.redis.clone());
        let plugin = Arc::new(plugin);
        let report = plugin.report();
        tracing::info!(
            plugin = %plugin.name(),
            cache = ?report.cache,
            compile_ms = report.compile_time.as_millis() as u64,
            "loaded plugin"
        );
        self.plugins.write().expect("plugin table poisoned").insert(
            plugin.name().clone(),
            Arc::new(Loaded {
                plugin: plugin.clone(),
                redis,
                spec,
            }),
        );
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
        self.loaded(name).map(|l| l.plugin.clone())
    }

    /// The connection a loaded plugin's commands use (authenticated as its
    /// ACL user with `acl = true`); its subscriptions connect the same way.
    pub fn plugin_redis(&self, name: &PluginName) -> Option<Redis> {
        self.loaded(name).map(|l| l.redis.clone())
    }

    fn loaded(&self, name: &PluginName) -> Option<Arc<Loaded>> {
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

    /// Loads `name` again from its wasm file (or `wasm`, if given; with new
    /// `settings`, if given) and swaps
    /// it in atomically: calls already running finish on the old version,
    /// calls that start after the swap use the new one, and a failed load
    /// leaves the old version serving.
    pub async fn reload(
        &self,
        name: &PluginName,
        wasm: Option<PathBuf>,
        settings: Option<BTreeMap<String, String>>,
        check: impl FnOnce(&Plugin) -> Result<(), String>,
    ) -> Result<Arc<Plugin>, ReloadError> {
        let mut spec = self
            .loaded(name)
            .ok_or_else(|| ReloadError::UnknownPlugin(name.clone()))?
            .spec
            .clone();
        if let Some(w) = wasm {
            spec.wasm = w;
        }
        if let Some(s) = settings {
            spec.settings = s;
        }
        Ok(self.load_checked(spec, check).await?)
    }

    /// Stops routing to `name`; calls already running finish. Returns
    /// whether it was loaded.
    pub fn unload(&self, name: &PluginName) -> bool {
        self.plugins
            .write()
            .expect("plugin table poisoned")
            .remove(name)
            .is_some()
    }

    /// Every loaded plugin with its counters, in name order.
    pub fn plugin_infos(&self) -> Vec<PluginInfo> {
        self.plugins
            .read()
            .expect("plugin table poisoned")
            .values()
            .map(|l| PluginInfo {
                name: l.plugin.name().clone(),
                wasm: l.spec.wasm.clone(),
                handlers: l.plugin.handlers().names(),
                stats: l.plugin.stats(),
            })
            .collect()
    }

    /// Sends an HTTP request to a loaded plugin's HTTP handler.
    pub async fn handle_http(
        &self,
        plugin: &PluginName,
        request: &HttpRequest,
    ) -> Result<HttpResponse, HostInvokeError> {
        let l = self
            .loaded(plugin)
            .ok_or_else(|| HostInvokeError::UnknownPlugin(plugin.clone()))?;
        Ok(l.plugin.handle_http(&l.redis, request).await?)
    }

    /// Runs any handler of a loaded plugin (the triggers' entry point).
    pub async fn call(
        &self,
        plugin: &PluginName,
        call: Call<'_>,
    ) -> Result<Reply, HostInvokeError> {
        let l = self
            .loaded(plugin)
            .ok_or_else(|| HostInvokeError::UnknownPlugin(plugin.clone()))?;
        Ok(l.plugin.call(&l.redis, call).await?)
    }

    /// Invokes a loaded plugin's `invoke` handler.
    pub async fn invoke(
        &self,
        plugin: &PluginName,
        input: &[u8],
    ) -> Result<Vec<u8>, HostInvokeError> {
        let l = self
            .loaded(plugin)
            .ok_or_else(|| HostInvokeError::UnknownPlugin(plugin.clone()))?;
        Ok(l.plugin.invoke(&l.redis, input).await?)
    }

    /// Stops the private Redis (if any) gracefully.
    pub async fn shutdown(&self) {
        let server = self
            .private_redis
            .lock()
            .expect("private redis poisoned")
            .take();
        if let Some(server) = server {
            server.stop().await;
        }
    }
}

/// [`Host::reload`]'s error.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("no plugin named {0} is loaded")]
    UnknownPlugin(PluginName),
    #[error(transparent)]
    Load(#[from] LoadError),
}

/// [`Host::invoke`]'s error.
#[derive(Debug, thiserror::Error)]
pub enum HostInvokeError {
    #[error("no plugin named {0} is loaded")]
    UnknownPlugin(PluginName),
    #[error(transparent)]
    Invoke(#[from] InvokeError),
}
