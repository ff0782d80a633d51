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
use wasmtime::{CallHook, Store, Trap, UpdateDeadline};

use crate::bindings::http_types::{Request as HttpRequest, Response as HttpResponse};
use crate::bindings::types::{Error as GuestError, Quota};
use crate::bindings::{
    HTTP_EXPORT, INVOKE_EXPORT, MESSAGE_EXPORT, QUEUE_EXPORT, TIMER_EXPORT, WIT_PACKAGE,
    http_handler, invoke_handler, message_handler, queue_handler, timer_handler,
};
use crate::caps::outbound_http::Origin;
use crate::config::{PluginConfig, Quotas, TriggerConfig};
use crate::engine::{CacheOutcome, Runtime};
use crate::namespace::{Namespace, PluginName};
use crate::quota::{CpuMeter, HostShare, QuotaTrap};
use crate::redis::Redis;
use crate::stats::{Outcome, Snapshot};
use crate::store::{Cleanup, PluginContext, State};

/// Everything needed to load one plugin.
#[derive(Debug, Clone)]
pub struct PluginSpec {
    pub name: PluginName,
    pub wasm: PathBuf,
    pub settings: BTreeMap<String, String>,
    pub reuse_instances: u32,
    pub quotas: Quotas,
    /// Run the plugin's Redis commands as its own ACL user.
    pub acl: bool,
    /// Origins the plugin may reach with outbound HTTP.
    pub allowed_outbound_hosts: Vec<Origin>,
    /// Named rate-limit policies (`[plugins.NAME.limiters.POLICY]`).
    pub limiters: crate::limiter::Policies,
    /// Pub/sub, keyspace and timer triggers.
    pub triggers: TriggerConfig,
}

impl PluginSpec {
    pub fn from_config(name: PluginName, c: &PluginConfig) -> PluginSpec {
        PluginSpec {
            name,
            wasm: c.wasm.clone(),
            settings: c.settings.clone(),
            reuse_instances: c.reuse_instances,
            quotas: c.quotas,
            acl: c.acl,
            allowed_outbound_hosts: c.allowed_outbound_hosts.clone(),
            limiters: c.limiters.clone(),
            triggers: c.triggers.clone(),
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
            acl: false,
            allowed_outbound_hosts: Vec::new(),
            limiters: Default::default(),
            triggers: Default::default(),
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
    #[error("{path}: {reason}")]
    Config { path: PathBuf, reason: String },
    #[error("{path} is not a valid component: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error(
        "{path} cannot run in this host: {reason} (redloom provides the {WIT_PACKAGE} interfaces \
         of world `imports` — kv, log, config, lock, limiter, cache, pubsub, queue, outbound-http \
         — and WASI clocks, random, io and cli without filesystem, environment or sockets)"
    )]
    Link { path: PathBuf, reason: String },
    #[error(
        "{path} does not export {INVOKE_EXPORT} or another redloom handler, so it has no handler \
         redloom can call (its exports: {exports}); with redloom-sdk, add \
         `redloom_sdk::export!(YourPlugin => [invoke]);`"
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
    #[error("plugin {plugin} has no `{handler}` handler")]
    NoHandler {
        plugin: PluginName,
        handler: &'static str,
    },
    #[error("plugin {plugin} could not be instantiated: {message}")]
    Instantiate { plugin: PluginName, message: String },
}

impl InvokeError {
    /// The counter this error belongs to.
    pub fn outcome(&self) -> Outcome {
        match self {
            InvokeError::Guest { .. } => Outcome::GuestError,
            InvokeError::Trap { .. } => Outcome::Trap,
            InvokeError::Quota { quota, .. } => Outcome::Quota(*quota),
            InvokeError::NoHandler { .. } | InvokeError::Instantiate { .. } => Outcome::Instantiate,
        }
    }

    /// The quota this error reports, if it is a quota error.
    pub fn quota(&self) -> Option<Quota> {
        match self {
            InvokeError::Quota { quota, .. } => Some(*quota),
            _ => None,
        }
    }
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
    pub http: Option<http_handler::GuestIndices>,
    pub message: Option<message_handler::GuestIndices>,
    pub timer: Option<timer_handler::GuestIndices>,
    pub queue: Option<queue_handler::GuestIndices>,
}

impl Handlers {
    /// The handler names (`invoke`, `http`) this component exports.
    pub fn names(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        if self.invoke.is_some() {
            v.push("invoke");
        }
        if self.http.is_some() {
            v.push("http");
        }
        if self.message.is_some() {
            v.push("message");
        }
        if self.timer.is_some() {
            v.push("timer");
        }
        if self.queue.is_some() {
            v.push("queue");
        }
        v
    }
}

/// The handlers of one instance, type-checked and ready to call.
struct Guests {
    invoke: Option<invoke_handler::Guest>,
    http: Option<http_handler::Guest>,
    message: Option<message_handler::Guest>,
    timer: Option<timer_handler::Guest>,
    queue: Option<queue_handler::Guest>,
}

/// A pub/sub message or keyspace event for the message handler.
pub type Message = message_handler::Message;
/// A timer tick for the timer handler.
pub type Tick = timer_handler::Tick;
/// A queue message for the queue handler.
pub type Job = queue_handler::Job;

/// One call into a plugin: which handler, with what.
pub enum Call<'a> {
    Invoke(&'a [u8]),
    Http(&'a HttpRequest),
    Message(&'a Message),
    Tick(&'a Tick),
    Job(&'a Job),
}

/// What a handler returned.
pub enum Reply {
    Invoke(Vec<u8>),
    Http(HttpResponse),
    /// The message and timer handlers return nothing.
    Done,
}

impl Call<'_> {
    fn handler(&self) -> &'static str {
        match self {
            Call::Invoke(_) => "invoke",
            Call::Http(_) => "http",
            Call::Message(_) => "message",
            Call::Tick(_) => "timer",
            Call::Job(_) => "queue",
        }
    }

    fn input_len(&self) -> usize {
        match self {
            Call::Invoke(i) => i.len(),
            Call::Http(r) => r.body.len(),
            Call::Message(m) => m.payload.len(),
            Call::Tick(_) => 0,
            Call::Job(j) => j.payload.len(),
        }
    }
}

impl Reply {
    fn output_len(&self) -> usize {
        match self {
            Reply::Invoke(o) => o.len(),
            Reply::Http(r) => r.body.len(),
            Reply::Done => 0,
        }
    }
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
    guests: Guests,
    uses: u32,
}

/// A loaded plugin, shared by all its invocations.
pub struct Plugin {
    context: Arc<PluginContext>,
    pre: InstancePre<State>,
    handlers: Handlers,
    reuse: u32,
    warm: Mutex<Vec<Warm>>,
    /// This plugin's share of the host-wide instance slots.
    host_slots: HostShare,
    fuel: bool,
    report: LoadReport,
}

impl Plugin {
    /// Reads, compiles (or loads from the cache), links and checks `spec.wasm`.
    pub fn load(runtime: &Runtime, spec: PluginSpec) -> Result<Plugin, LoadError> {
        let path = spec.wasm.clone();
        if spec.quotas.fuel.is_some() && !runtime.fuel() {
            return Err(LoadError::Config {
                path,
                reason: "quotas.fuel is set but this host runs without fuel metering; \
                         start it with a configuration that sets fuel for a plugin"
                    .into(),
            });
        }
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
        let invalid = |e: wasmtime::Error| LoadError::Invalid {
            path: path.clone(),
            reason: format!("{e:#}"),
        };
        let exported = |name: &str| exports.iter().any(|e| e == name);
        let handlers = Handlers {
            invoke: exported(INVOKE_EXPORT)
                .then(|| invoke_handler::GuestIndices::new(&pre))
                .transpose()
                .map_err(invalid)?,
            http: exported(HTTP_EXPORT)
                .then(|| http_handler::GuestIndices::new(&pre))
                .transpose()
                .map_err(invalid)?,
            message: exported(MESSAGE_EXPORT)
                .then(|| message_handler::GuestIndices::new(&pre))
                .transpose()
                .map_err(invalid)?,
            timer: exported(TIMER_EXPORT)
                .then(|| timer_handler::GuestIndices::new(&pre))
                .transpose()
                .map_err(invalid)?,
            queue: exported(QUEUE_EXPORT)
                .then(|| queue_handler::GuestIndices::new(&pre))
                .transpose()
                .map_err(invalid)?,
        };
        if handlers.names().is_empty() {
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
            context: Arc::new(
                PluginContext::new(
                    spec.name,
                    spec.settings,
                    spec.quotas,
                    spec.allowed_outbound_hosts,
                )
                .with_limiters(spec.limiters)
                .with_shared_channels(&spec.triggers.shared_channels)
                .with_queues(crate::store::QueuePolicy {
                    shared: spec.triggers.shared_queues.clone(),
                    max_length: spec.triggers.queue_max_length,
                }),
            ),
            pre,
            handlers,
            reuse: spec.reuse_instances,
            warm: Mutex::new(Vec::new()),
            host_slots: runtime.slots().register(),
            fuel: runtime.fuel(),
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

    pub fn quotas(&self) -> &Quotas {
        &self.context.quotas
    }

    /// Counts a pub/sub message dropped because the plugin's buffer was full.
    pub fn count_dropped_message(&self) {
        self.context.stats.dropped_message();
    }

    /// Counts a queue message deferred by its consumer's rate limit.
    pub fn count_deferred_message(&self) {
        self.context.stats.deferred_message();
    }

    /// The plugin's counters.
    pub fn stats(&self) -> Snapshot {
        self.context.stats.snapshot()
    }

    /// Instantiates once and type-checks every exported handler, without
    /// calling any. `redis` may be `None` (as in `redloom check`): the
    /// instance never reaches a capability during instantiation.
    pub async fn probe(&self, redis: Option<Redis>) -> Result<(), InvokeError> {
        let mut store = self.new_store(redis);
        store.data().cpu.start();
        let instance = self
            .pre
            .instantiate_async(&mut store)
            .await
            .map_err(|e| self.instantiate_error(e))?;
        self.load_guests(&mut store, &instance)
            .map_err(|e| self.instantiate_error(e))?;
        Ok(())
    }

    fn load_guests(
        &self,
        store: &mut Store<State>,
        instance: &wasmtime::component::Instance,
    ) -> wasmtime::Result<Guests> {
        Ok(Guests {
            invoke: self
                .handlers
                .invoke
                .as_ref()
                .map(|i| i.load(&mut *store, instance))
                .transpose()?,
            http: self
                .handlers
                .http
                .as_ref()
                .map(|i| i.load(&mut *store, instance))
                .transpose()?,
            message: self
                .handlers
                .message
                .as_ref()
                .map(|i| i.load(&mut *store, instance))
                .transpose()?,
            timer: self
                .handlers
                .timer
                .as_ref()
                .map(|i| i.load(&mut *store, instance))
                .transpose()?,
            queue: self
                .handlers
                .queue
                .as_ref()
                .map(|i| i.load(&mut *store, instance))
                .transpose()?,
        })
    }

    /// Calls the plugin's `invoke` handler with `input`.
    pub async fn invoke(&self, redis: &Redis, input: &[u8]) -> Result<Vec<u8>, InvokeError> {
        match self.call(redis, Call::Invoke(input)).await? {
            Reply::Invoke(out) => Ok(out),
            _ => unreachable!("an invoke call gets an invoke reply"),
        }
    }

    /// Calls the plugin's HTTP handler with `request`.
    pub async fn handle_http(
        &self,
        redis: &Redis,
        request: &HttpRequest,
    ) -> Result<HttpResponse, InvokeError> {
        match self.call(redis, Call::Http(request)).await? {
            Reply::Http(r) => Ok(r),
            _ => unreachable!("an http call gets an http reply"),
        }
    }

    /// Runs one handler call within the plugin's quotas and records the
    /// outcome in its counters.
    pub async fn call(&self, redis: &Redis, call: Call<'_>) -> Result<Reply, InvokeError> {
        let started = Instant::now();
        let cpu = Arc::new(CpuMeter::default());
        let result = self.call_metered(redis, call, &cpu).await;
        let outcome = match &result {
            Ok(_) => Outcome::Ok,
            Err(e) => e.outcome(),
        };
        self.context
            .stats
            .record(outcome, started.elapsed(), cpu.used());
        result
    }

    async fn call_metered(
        &self,
        redis: &Redis,
        call: Call<'_>,
        cpu: &Arc<CpuMeter>,
    ) -> Result<Reply, InvokeError> {
        let quotas = self.context.quotas;
        let input_len = call.input_len();
        if input_len as u64 > quotas.max_input {
            return Err(self.quota(
                Quota::Payload,
                format!(
                    "input is {input_len} bytes; max-input is {}",
                    quotas.max_input
                ),
            ));
        }
        let exported = match call {
            Call::Invoke(_) => self.handlers.invoke.is_some(),
            Call::Http(_) => self.handlers.http.is_some(),
            Call::Message(_) => self.handlers.message.is_some(),
            Call::Tick(_) => self.handlers.timer.is_some(),
            Call::Job(_) => self.handlers.queue.is_some(),
        };
        if !exported {
            return Err(InvokeError::NoHandler {
                plugin: self.name().clone(),
                handler: call.handler(),
            });
        }
        let _admitted = self
            .context
            .admission
            .admit(&self.host_slots)
            .await
            .map_err(|detail| self.quota(Quota::Concurrency, detail))?;
        let warm = if self.reuse > 1 {
            self.warm.lock().expect("warm pool poisoned").pop()
        } else {
            None
        };

        let cleanup = Arc::new(Cleanup::default());
        let run = async {
            let mut warm = match warm {
                Some(w) => w,
                None => {
                    let mut store = self.new_store(Some(redis.clone()));
                    store.data_mut().cpu = cpu.clone();
                    cpu.start();
                    let instance = self
                        .pre
                        .instantiate_async(&mut store)
                        .await
                        .map_err(|e| self.instantiate_error(e))?;
                    let guests = self
                        .load_guests(&mut store, &instance)
                        .map_err(|e| self.instantiate_error(e))?;
                    cpu.stop();
                    Warm {
                        store,
                        guests,
                        uses: 0,
                    }
                }
            };
            self.reset(&mut warm.store, cpu, &cleanup)
                .map_err(|e| self.trap_error(e))?;
            let store = &mut warm.store;
            let outcome = match call {
                Call::Invoke(input) => match &warm.guests.invoke {
                    Some(g) => g
                        .call_handle(store, input)
                        .await
                        .map(|r| r.map(Reply::Invoke)),
                    None => unreachable!("checked above"),
                },
                Call::Http(request) => match &warm.guests.http {
                    Some(g) => g
                        .call_handle(store, request)
                        .await
                        .map(|r| r.map(Reply::Http)),
                    None => unreachable!("checked above"),
                },
                Call::Message(message) => match &warm.guests.message {
                    Some(g) => g
                        .call_handle(store, message)
                        .await
                        .map(|r| r.map(|()| Reply::Done)),
                    None => unreachable!("checked above"),
                },
                Call::Tick(tick) => match &warm.guests.timer {
                    Some(g) => g
                        .call_handle(store, tick)
                        .await
                        .map(|r| r.map(|()| Reply::Done)),
                    None => unreachable!("checked above"),
                },
                Call::Job(job) => match &warm.guests.queue {
                    Some(g) => g
                        .call_handle(store, job)
                        .await
                        .map(|r| r.map(|()| Reply::Done)),
                    None => unreachable!("checked above"),
                },
            };
            Ok::<_, InvokeError>((warm, outcome))
        };
        let finished = tokio::time::timeout(quotas.wall_time, run).await;
        // Whatever happened, release what the invocation still holds.
        cleanup.run_all(Some(redis)).await;
        let (mut warm, outcome) = match finished {
            Err(_) => {
                return Err(self.quota(
                    Quota::WallTime,
                    format!(
                        "did not finish within {}",
                        humantime::format_duration(quotas.wall_time)
                    ),
                ));
            }
            Ok(r) => r?,
        };
        // A quota broken inside a capability call decides the outcome, even
        // if the guest carried on and returned normally.
        if let Some(b) = warm.store.data_mut().caps.breach.take() {
            return Err(self.quota(b.quota, b.detail));
        }
        let reply = match outcome {
            Err(trap) => return Err(self.trap_error(trap)),
            Ok(Err(error)) => {
                return Err(InvokeError::Guest {
                    plugin: self.name().clone(),
                    error,
                });
            }
            Ok(Ok(reply)) => reply,
        };
        let output_len = reply.output_len();
        if output_len as u64 > quotas.max_output {
            return Err(self.quota(
                Quota::Payload,
                format!(
                    "output is {output_len} bytes; max-output is {}",
                    quotas.max_output
                ),
            ));
        }
        warm.uses += 1;
        if warm.uses < self.reuse {
            let mut pool = self.warm.lock().expect("warm pool poisoned");
            if pool.len() < quotas.concurrency as usize {
                pool.push(warm);
            }
        }
        Ok(reply)
    }

    /// Prepares a store for the next invocation: fresh per-invocation
    /// accounting, fuel and epoch deadline.
    fn reset(
        &self,
        store: &mut Store<State>,
        cpu: &Arc<CpuMeter>,
        cleanup: &Arc<Cleanup>,
    ) -> wasmtime::Result<()> {
        let data = store.data_mut();
        data.cpu = cpu.clone();
        data.caps.redis_ops = 0;
        data.caps.breach = None;
        data.caps.cleanup = cleanup.clone();
        if self.fuel {
            store.set_fuel(self.context.quotas.fuel.unwrap_or(u64::MAX))?;
        }
        store.set_epoch_deadline(1);
        Ok(())
    }

    fn new_store(&self, redis: Option<Redis>) -> Store<State> {
        let mut store = Store::new(self.pre.engine(), State::new(self.context.clone(), redis));
        store.limiter(|s| &mut s.limits);
        if self.fuel {
            // Instantiation runs guest code, so fuel must be there first.
            let _ = store.set_fuel(self.context.quotas.fuel.unwrap_or(u64::MAX));
        }
        // Guest CPU time is the time between these hooks: running wasm, not
        // waiting in a host call.
        store.call_hook(|ctx, hook| {
            let data = ctx.data();
            match hook {
                CallHook::CallingWasm | CallHook::ReturningFromHost => data.cpu.start(),
                CallHook::CallingHost | CallHook::ReturningFromWasm => {
                    data.cpu.stop();
                    check_cpu(data)?;
                }
            }
            Ok(())
        });
        // At every epoch tick a running guest is charged and yields to tokio,
        // so a busy plugin shares the worker thread instead of holding it.
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(|ctx| {
            let data = ctx.data();
            data.cpu.stop();
            check_cpu(data)?;
            let cpu = data.cpu.clone();
            Ok(UpdateDeadline::YieldCustom(
                1,
                Box::pin(async move {
                    tokio::task::yield_now().await;
                    cpu.start();
                }),
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
        tracing::debug!(plugin = %self.name(), "trap: {e:?}");
        if let Some(q) = e.downcast_ref::<QuotaTrap>() {
            return self.quota(q.quota, q.detail.clone());
        }
        let message = match e.downcast_ref::<Trap>() {
            Some(Trap::OutOfFuel) => {
                return self.quota(
                    Quota::Cpu,
                    format!(
                        "used its fuel budget of {}",
                        self.context.quotas.fuel.unwrap_or(0)
                    ),
                );
            }
            Some(trap) => trap.to_string(),
            None => e.root_cause().to_string(),
        };
        InvokeError::Trap {
            plugin: self.name().clone(),
            message,
        }
    }
}

/// Traps with the `cpu` quota when the invocation's guest time is over it.
fn check_cpu(data: &State) -> wasmtime::Result<()> {
    let limit = data.caps.plugin.quotas.cpu;
    let used = data.cpu.used();
    if used > limit {
        return Err(QuotaTrap::new(
            Quota::Cpu,
            format!(
                "ran guest code for {} ms; the limit is {}",
                used.as_millis(),
                humantime::format_duration(limit)
            ),
        )
        .into());
    }
    Ok(())
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
