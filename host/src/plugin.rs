//! A loaded plugin: its compiled component, which handlers it exports, and
//! how one invocation runs.
//!
//! Loading checks, in order, that the file is WebAssembly, that it is a
//! component (not a core module), that it links against the capabilities this
//! host provides, and that it exports the handlers its manifest needs; each
//! failure is a [`LoadError`] whose message says what to do.
//!
//! By default every invocation gets a fresh instance (from the pooling
//! allocator, so this is cheap). With `reuse-instances = N` an instance serves
//! up to N invocations; it is discarded after any error, trap or quota breach,
//! so one bad invocation never leaves state behind for the next.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use wasmtime::component::{Component, InstancePre};
use wasmtime::{Store, Trap, UpdateDeadline};

use crate::bindings::types::{Error as GuestError, Quota};
use crate::bindings::{INVOKE_EXPORT, WIT_PACKAGE, invoke_handler};
use crate::config::{PluginConfig, Quotas};
use crate::engine::{CacheOutcome, Runtime};
use crate::namespace::{Namespace, PluginName};
use crate::redis::Redis;
use crate::store::{Cleanup, PluginContext, State};

/// Everything needed to load one plugin.
#[derive(Debug, Clone)]
pub struct PluginSpec {
    pub name: PluginName,
    pub wasm: PathBuf,
    pub settings: BTreeMap<String, String>,
    pub reuse_instances: u32,
    pub quotas: Quotas,
}

impl PluginSpec {
    pub fn from_config(name: PluginName, c: &PluginConfig) -> PluginSpec {
        PluginSpec {
            name,
            wasm: c.wasm.clone(),
            settings: c.settings.clone(),
            reuse_instances: c.reuse_instances,
            quotas: c.quotas,
        }
    }

    /// A plugin given by path only: named after its file, default quotas.
    pub fn from_path(path: &Path) -> PluginSpec {
        let stem = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("plugin");
        PluginSpec {
            name: PluginName::from_file_stem(stem),
            wasm: path.to_path_buf(),
            settings: BTreeMap::new(),
            reuse_instances: 0,
            quotas: Quotas::default(),
        }
    }
}

/// Why a plugin could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a WebAssembly file: it does not start with the `\\0asm` magic bytes")]
    NotWasm { path: PathBuf },
    #[error(
        "{path} is a core WebAssembly module, not a component: build the plugin for the \
         wasm32-wasip2 target (`cargo build --target wasm32-wasip2`), or wrap the module with \
         `wasm-tools component new`"
    )]
    CoreModule { path: PathBuf },
    #[error("{path} is not a valid component: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error(
        "{path} cannot run in this host: {reason} (redloom provides {WIT_PACKAGE} kv, log and \
         config, and WASI clocks, random, io and cli without filesystem, environment or sockets)"
    )]
    Link { path: PathBuf, reason: String },
    #[error(
        "{path} does not export {INVOKE_EXPORT}, so it has no handler redloom can call (its \
         exports: {exports}); with redloom-sdk, add `redloom_sdk::export!(YourPlugin => [invoke]);`"
    )]
    NoHandler { path: PathBuf, exports: String },
}

/// Why an invocation failed. The plugin's own typed errors, traps and quota
/// breaches are told apart so callers (and exit codes) can react differently.
#[derive(Debug, thiserror::Error)]
pub enum InvokeError {
    #[error("plugin {plugin} returned an error: {}", describe(.error))]
    Guest {
        plugin: PluginName,
        error: GuestError,
    },
    #[error("plugin {plugin} trapped: {message}")]
    Trap { plugin: PluginName, message: String },
    #[error("plugin {plugin} exceeded its {} quota: {detail}", quota_name(*.quota))]
    Quota {
        plugin: PluginName,
        quota: Quota,
        detail: String,
    },
    #[error("plugin {plugin} has no `invoke` handler")]
    NoHandler { plugin: PluginName },
    #[error("plugin {plugin} could not be instantiated: {message}")]
    Instantiate { plugin: PluginName, message: String },
}

/// A WIT error as one line.
pub fn describe(e: &GuestError) -> String {
    match e {
        GuestError::QuotaExceeded(q) => format!("quota exceeded: {}", quota_name(*q)),
        GuestError::BackendUnavailable(m) => format!("backend unavailable: {m}"),
        GuestError::Timeout(m) => format!("timeout: {m}"),
        GuestError::InvalidArgument(m) => format!("invalid argument: {m}"),
        GuestError::Denied(m) => format!("denied: {m}"),
        GuestError::Other(m) => m.clone(),
    }
}

/// The manifest name of a quota.
pub fn quota_name(q: Quota) -> &'static str {
    match q {
        Quota::Cpu => "cpu",
        Quota::WallTime => "wall-time",
        Quota::Memory => "memory",
        Quota::RedisOps => "redis-ops",
        Quota::RedisRate => "redis-rate",
        Quota::Concurrency => "concurrency",
        Quota::Payload => "payload",
    }
}

/// Handlers a component exports, found by export name.
#[derive(Clone, Default)]
pub struct Handlers {
    pub invoke: Option<invoke_handler::GuestIndices>,
}

/// What `load` found, for `redloom check` and logs.
#[derive(Debug, Clone)]
pub struct LoadReport {
    pub size: usize,
    pub cache: CacheOutcome,
    pub compile_time: std::time::Duration,
    pub imports: Vec<String>,
    pub exports: Vec<String>,
}

/// An instance kept for reuse.
struct Warm {
    store: Store<State>,
    guest: invoke_handler::Guest,
    uses: u32,
}

/// A loaded plugin, shared by all its invocations.
pub struct Plugin {
    context: Arc<PluginContext>,
    pre: InstancePre<State>,
    handlers: Handlers,
    reuse: u32,
    warm: Mutex<Vec<Warm>>,
    report: LoadReport,
}

impl Plugin {
    /// Reads, compiles (or loads from the cache), links and checks `spec.wasm`.
    pub fn load(runtime: &Runtime, spec: PluginSpec) -> Result<Plugin, LoadError> {
        let path = spec.wasm.clone();
        let bytes = std::fs::read(&path).map_err(|source| LoadError::Read {
            path: path.clone(),
            source,
        })?;
        let (component, cache, compile_time) = compile(runtime, &path, &bytes)?;
        let engine = runtime.engine();
        let ty = component.component_type();
        let imports: Vec<String> = ty.imports(engine).map(|(n, _)| n.to_string()).collect();
        let exports: Vec<String> = ty.exports(engine).map(|(n, _)| n.to_string()).collect();

        let pre = runtime
            .linker()
            .instantiate_pre(&component)
            .map_err(|e| LoadError::Link {
                path: path.clone(),
                reason: format!("{e:#}"),
            })?;
        let handlers = Handlers {
            invoke: exports
                .iter()
                .any(|e| e == INVOKE_EXPORT)
                .then(|| invoke_handler::GuestIndices::new(&pre))
                .transpose()
                .map_err(|e| LoadError::Invalid {
                    path: path.clone(),
                    reason: format!("{e:#}"),
                })?,
        };
        if handlers.invoke.is_none() {
            return Err(LoadError::NoHandler {
                path,
                exports: if exports.is_empty() {
                    "none".into()
                } else {
                    exports.join(", ")
                },
            });
        }
        Ok(Plugin {
            context: Arc::new(PluginContext {
                namespace: Namespace::new(&spec.name),
                name: spec.name,
                settings: spec.settings,
                quotas: spec.quotas,
            }),
            pre,
            handlers,
            reuse: spec.reuse_instances,
            warm: Mutex::new(Vec::new()),
            report: LoadReport {
                size: bytes.len(),
                cache,
                compile_time,
                imports,
                exports,
            },
        })
    }

    pub fn name(&self) -> &PluginName {
        &self.context.name
    }

    pub fn namespace(&self) -> &Namespace {
        &self.context.namespace
    }

    pub fn report(&self) -> &LoadReport {
        &self.report
    }

    pub fn handlers(&self) -> &Handlers {
        &self.handlers
    }

    /// Instantiates once and type-checks every exported handler, without
    /// calling any. `redis` may be `None` (as in `redloom check`): the
    /// instance never reaches a capability during instantiation.
    pub async fn probe(&self, redis: Option<Redis>) -> Result<(), InvokeError> {
        let mut store = self.new_store(redis);
        let instance = self
            .pre
            .instantiate_async(&mut store)
            .await
            .map_err(|e| self.instantiate_error(e))?;
        if let Some(indices) = &self.handlers.invoke {
            indices
                .load(&mut store, &instance)
                .map_err(|e| self.instantiate_error(e))?;
        }
        Ok(())
    }

    /// Calls the plugin's `invoke` handler with `input`.
    pub async fn invoke(&self, redis: &Redis, input: &[u8]) -> Result<Vec<u8>, InvokeError> {
        let quotas = self.context.quotas;
        if input.len() as u64 > quotas.max_input {
            return Err(self.quota(
                Quota::Payload,
                format!(
                    "input is {} bytes; max-input is {}",
                    input.len(),
                    quotas.max_input
                ),
            ));
        }
        let indices = self
            .handlers
            .invoke
            .as_ref()
            .ok_or_else(|| InvokeError::NoHandler {
                plugin: self.name().clone(),
            })?;
        let warm = if self.reuse > 1 {
            self.warm.lock().expect("warm pool poisoned").pop()
        } else {
            None
        };

        let deadline = quotas.wall_time;
        let cleanup = Arc::new(Cleanup::default());
        let run = async {
            let mut warm = match warm {
                Some(w) => w,
                None => {
                    let mut store = self.new_store(Some(redis.clone()));
                    let instance = self
                        .pre
                        .instantiate_async(&mut store)
                        .await
                        .map_err(|e| self.instantiate_error(e))?;
                    let guest = indices
                        .load(&mut store, &instance)
                        .map_err(|e| self.instantiate_error(e))?;
                    Warm {
                        store,
                        guest,
                        uses: 0,
                    }
                }
            };
            warm.store.data_mut().caps.redis_ops = 0;
            warm.store.data_mut().caps.cleanup = cleanup.clone();
            warm.store.set_epoch_deadline(1);
            let outcome = warm.guest.call_handle(&mut warm.store, input).await;
            Ok::<_, InvokeError>((warm, outcome))
        };
        let finished = tokio::time::timeout(deadline, run).await;
        // Whatever happened, release what the invocation still holds.
        cleanup.run_all(Some(redis)).await;
        let (mut warm, outcome) = match finished {
            Err(_) => {
                return Err(self.quota(
                    Quota::WallTime,
                    format!(
                        "did not finish within {}",
                        humantime::format_duration(deadline)
                    ),
                ));
            }
            Ok(r) => r?,
        };
        let output = match outcome {
            Err(trap) => return Err(self.trap_error(trap)),
            Ok(Err(error)) => {
                return Err(InvokeError::Guest {
                    plugin: self.name().clone(),
                    error,
                });
            }
            Ok(Ok(output)) => output,
        };
        if output.len() as u64 > quotas.max_output {
            return Err(self.quota(
                Quota::Payload,
                format!(
                    "output is {} bytes; max-output is {}",
                    output.len(),
                    quotas.max_output
                ),
            ));
        }
        warm.uses += 1;
        if warm.uses < self.reuse {
            self.warm.lock().expect("warm pool poisoned").push(warm);
        }
        Ok(output)
    }

    fn new_store(&self, redis: Option<Redis>) -> Store<State> {
        let mut store = Store::new(self.pre.engine(), State::new(self.context.clone(), redis));
        store.limiter(|s| &mut s.limits);
        // At every epoch tick a running guest yields to tokio, so a busy
        // plugin shares the worker thread instead of holding it.
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(|_| {
            Ok(UpdateDeadline::YieldCustom(
                1,
                Box::pin(tokio::task::yield_now()),
            ))
        });
        store
    }

    fn quota(&self, quota: Quota, detail: String) -> InvokeError {
        InvokeError::Quota {
            plugin: self.name().clone(),
            quota,
            detail,
        }
    }

    fn instantiate_error(&self, e: wasmtime::Error) -> InvokeError {
        match self.trap_error(e) {
            InvokeError::Trap { plugin, message } => InvokeError::Instantiate { plugin, message },
            other => other,
        }
    }

    fn trap_error(&self, e: wasmtime::Error) -> InvokeError {
        let full = format!("{e:#}");
        tracing::debug!(plugin = %self.name(), "trap: {e:?}");
        // `StoreLimits` reports a refused memory.grow as a plain error (not a
        // `Trap` variant) whose message says so.
        if full.contains("forcing trap when growing memory") {
            return self.quota(
                Quota::Memory,
                format!(
                    "linear memory is capped at {} bytes",
                    self.context.quotas.memory
                ),
            );
        }
        let message = match e.downcast_ref::<Trap>() {
            Some(trap) => trap.to_string(),
            None => e.root_cause().to_string(),
        };
        InvokeError::Trap {
            plugin: self.name().clone(),
            message,
        }
    }
}

fn compile(
    runtime: &Runtime,
    path: &Path,
    bytes: &[u8],
) -> Result<(Component, CacheOutcome, std::time::Duration), LoadError> {
    if !bytes.starts_with(b"\0asm") {
        return Err(LoadError::NotWasm {
            path: path.to_path_buf(),
        });
    }
    if wasmparser::Parser::is_core_wasm(bytes) {
        return Err(LoadError::CoreModule {
            path: path.to_path_buf(),
        });
    }
    let started = Instant::now();
    let (component, cache) = runtime.compile(bytes).map_err(|e| LoadError::Invalid {
        path: path.to_path_buf(),
        reason: format!("{e:#}"),
    })?;
    Ok((component, cache, started.elapsed()))
}
