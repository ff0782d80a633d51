//! A loaded plugin: its compiled component, which handlers it exports, and
//! how one invocation runs.
//!
//! Loading checks, in order, that the file is WebAssembly, that it is a
//! component (not a core module), that it links against the capabilities this
//! host provides, and that it exports the handlers its manifest needs; each
//! failure is a [`LoadError`] whose message says what to do.
//!
//! By default (`isolation = "pooled"`, [`Isolation`]) an instance serves up
//! to `reuse-instances` invocations of its plugin, for at most
//! `instance-max-age`; it is discarded after any error, trap or quota
//! breach, and when a lock or lease handle outlives its invocation, so one
//! bad invocation never leaves state behind for the next. Per-invocation host
//! state (CPU and Redis accounting, log budget, cleanup actions, the epoch
//! deadline, fuel) is reset before every call ([`Plugin::reset`]). With
//! `isolation = "per-call"` every invocation gets a fresh instance (from the
//! pooling allocator, so this is cheap too).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wasmtime::component::{Component, InstancePre};
use wasmtime::{Store, Trap, UpdateDeadline};

use crate::bindings::http_types::{Request as HttpRequest, Response as HttpResponse};
use crate::bindings::types::Error as GuestError;
use crate::bindings::{
    http_handler, invoke_handler, message_handler, queue_handler, timer_handler,
};
use crate::caps::describe;
use crate::caps::outbound_http::Origin;
use crate::config::{Isolation, PluginConfig, Quotas, TriggerConfig};
use crate::engine::{CacheOutcome, Runtime};
use crate::handler::{HandlerKind, WIT_PACKAGE};
use crate::namespace::{Namespace, PluginName};
use crate::quota::{CpuMeter, HostShare, Metered, Quota, QuotaTrap};
use crate::redis::Redis;
use crate::stats::{Outcome, Snapshot};
use crate::store::{Cleanup, PluginContext, State};

/// Everything needed to load one plugin.
#[derive(Debug, Clone)]
pub struct PluginSpec {
    pub name: PluginName,
    pub wasm: PathBuf,
    pub settings: BTreeMap<String, String>,
    pub isolation: Isolation,
    pub quotas: Quotas,
    /// Run the plugin's Redis commands as its own ACL user.
    pub acl: bool,
    /// Origins the plugin may reach with outbound HTTP.
    pub allowed_outbound_hosts: Vec<Origin>,
    /// Named rate-limit policies (`[plugins.NAME.limiters.POLICY]`).
    pub limiters: crate::limiter::Policies,
    /// The plugin's own Lua scripts (`[plugins.NAME.scripts]`).
    pub scripts: crate::caps::data::PluginScripts,
    /// Pub/sub, keyspace and timer triggers.
    pub triggers: TriggerConfig,
    /// The cache capability's near cache.
    pub near_cache: crate::near_cache::NearConfig,
}

impl PluginSpec {
    pub fn from_config(name: PluginName, c: &PluginConfig) -> PluginSpec {
        PluginSpec {
            name,
            wasm: c.wasm.clone(),
            settings: c.settings.clone(),
            isolation: c.isolation,
            quotas: c.quotas,
            acl: c.acl,
            allowed_outbound_hosts: c.allowed_outbound_hosts.clone(),
            limiters: c.limiters.clone(),
            scripts: c.scripts.clone(),
            triggers: c.triggers.clone(),
            near_cache: c.near_cache,
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
            isolation: Isolation::default(),
            quotas: Quotas::default(),
            acl: false,
            allowed_outbound_hosts: Vec::new(),
            limiters: Default::default(),
            scripts: Default::default(),
            triggers: Default::default(),
            near_cache: Default::default(),
        }
    }
}

/// Why a plugin could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// An `oci://` plugin could not be pulled (see [`crate::oci`]).
    #[error("{0}")]
    Registry(String),
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: crate::files::ReadError,
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
    /// The trial instantiation at load ([`Plugin::probe`]) failed: the
    /// component is valid, but starting it trapped or broke a quota.
    #[error("{path} could not start: {source}")]
    Start { path: PathBuf, source: InvokeError },
    #[error(
        "{path} cannot run in this host: {reason} (redloom provides the {WIT_PACKAGE} interfaces \
         of world `imports` — kv, log, config, lock, limiter, cache, pubsub, queue, outbound-http \
         — and WASI clocks, random, io and cli without filesystem, environment or sockets)"
    )]
    Link { path: PathBuf, reason: String },
    #[error(
        "{path} does not export {invoke} or another redloom handler, so it has no handler \
         redloom can call (its exports: {exports}); with redloom-sdk, add \
         `redloom_sdk::export!(YourPlugin => [invoke]);`",
        invoke = HandlerKind::Invoke.export()
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
    #[error("plugin {plugin} exceeded its {} quota: {detail}", .quota.name())]
    Quota {
        plugin: PluginName,
        quota: Quota,
        detail: String,
    },
    #[error("plugin {plugin} has no `{handler}` handler")]
    NoHandler {
        plugin: PluginName,
        handler: HandlerKind,
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

/// The handlers a component exports, found by export name at load.
#[derive(Clone, Default)]
pub struct Handlers {
    /// In [`HandlerKind::ALL`] order, one per exported handler.
    exported: Vec<Indices>,
}

impl Handlers {
    /// Finds the handler interfaces among `exports` and type-checks each
    /// against what the host calls.
    fn find(pre: &InstancePre<State>, exports: &[String]) -> wasmtime::Result<Handlers> {
        let exported = HandlerKind::ALL
            .into_iter()
            .filter(|k| exports.iter().any(|e| e == k.export()))
            .map(|k| Indices::new(k, pre))
            .collect::<wasmtime::Result<_>>()?;
        Ok(Handlers { exported })
    }

    /// The handlers this component exports.
    pub fn kinds(&self) -> Vec<HandlerKind> {
        self.exported.iter().map(Indices::kind).collect()
    }

    /// Their names (`invoke`, `http`, …).
    pub fn names(&self) -> Vec<&'static str> {
        self.exported.iter().map(|i| i.kind().name()).collect()
    }

    /// Whether the component exports `kind`.
    pub fn has(&self, kind: HandlerKind) -> bool {
        self.exported.iter().any(|i| i.kind() == kind)
    }

    /// The handlers of one new instance, ready to call.
    fn load(
        &self,
        store: &mut Store<State>,
        instance: &wasmtime::component::Instance,
    ) -> wasmtime::Result<Guests> {
        let guests = self
            .exported
            .iter()
            .map(|i| i.load(&mut *store, instance))
            .collect::<wasmtime::Result<_>>()?;
        Ok(Guests(guests))
    }
}

/// Where one exported handler interface lives in the component (the
/// bindings generate a type per interface, hence one variant each).
#[derive(Clone)]
enum Indices {
    Invoke(invoke_handler::GuestIndices),
    Http(http_handler::GuestIndices),
    Message(message_handler::GuestIndices),
    Timer(timer_handler::GuestIndices),
    Queue(queue_handler::GuestIndices),
}

impl Indices {
    fn new(kind: HandlerKind, pre: &InstancePre<State>) -> wasmtime::Result<Indices> {
        Ok(match kind {
            HandlerKind::Invoke => Indices::Invoke(invoke_handler::GuestIndices::new(pre)?),
            HandlerKind::Http => Indices::Http(http_handler::GuestIndices::new(pre)?),
            HandlerKind::Message => Indices::Message(message_handler::GuestIndices::new(pre)?),
            HandlerKind::Timer => Indices::Timer(timer_handler::GuestIndices::new(pre)?),
            HandlerKind::Queue => Indices::Queue(queue_handler::GuestIndices::new(pre)?),
        })
    }

    fn kind(&self) -> HandlerKind {
        match self {
            Indices::Invoke(_) => HandlerKind::Invoke,
            Indices::Http(_) => HandlerKind::Http,
            Indices::Message(_) => HandlerKind::Message,
            Indices::Timer(_) => HandlerKind::Timer,
            Indices::Queue(_) => HandlerKind::Queue,
        }
    }

    fn load(
        &self,
        store: &mut Store<State>,
        instance: &wasmtime::component::Instance,
    ) -> wasmtime::Result<Guest> {
        Ok(match self {
            Indices::Invoke(i) => Guest::Invoke(i.load(store, instance)?),
            Indices::Http(i) => Guest::Http(i.load(store, instance)?),
            Indices::Message(i) => Guest::Message(i.load(store, instance)?),
            Indices::Timer(i) => Guest::Timer(i.load(store, instance)?),
            Indices::Queue(i) => Guest::Queue(i.load(store, instance)?),
        })
    }
}

/// One handler of one instance, type-checked and ready to call.
enum Guest {
    Invoke(invoke_handler::Guest),
    Http(http_handler::Guest),
    Message(message_handler::Guest),
    Timer(timer_handler::Guest),
    Queue(queue_handler::Guest),
}

/// The handlers of one instance, in the order of [`Handlers`].
struct Guests(Vec<Guest>);

impl Guests {
    /// Calls the handler `call` is for (checked to be exported before the
    /// instance was taken).
    async fn call(&self, store: &mut Store<State>, call: &OwnedCall) -> HandlerOutcome {
        let guest = self.0.iter().find(|g| g.kind() == call.kind());
        match (guest, call) {
            (Some(Guest::Invoke(g)), OwnedCall::Invoke(input)) => g
                .call_handle(store, input)
                .await
                .map(|r| r.map(Reply::Invoke)),
            (Some(Guest::Http(g)), OwnedCall::Http(request)) => g
                .call_handle(store, request)
                .await
                .map(|r| r.map(Reply::Http)),
            (Some(Guest::Message(g)), OwnedCall::Message(message)) => g
                .call_handle(store, message)
                .await
                .map(|r| r.map(|()| Reply::Done)),
            (Some(Guest::Timer(g)), OwnedCall::Tick(tick)) => g
                .call_handle(store, tick)
                .await
                .map(|r| r.map(|()| Reply::Done)),
            (Some(Guest::Queue(g)), OwnedCall::Job(job)) => g
                .call_handle(store, job)
                .await
                .map(|r| r.map(|()| Reply::Done)),
            _ => unreachable!("{} is exported: checked before", call.kind()),
        }
    }
}

impl Guest {
    fn kind(&self) -> HandlerKind {
        match self {
            Guest::Invoke(_) => HandlerKind::Invoke,
            Guest::Http(_) => HandlerKind::Http,
            Guest::Message(_) => HandlerKind::Message,
            Guest::Timer(_) => HandlerKind::Timer,
            Guest::Queue(_) => HandlerKind::Queue,
        }
    }
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

/// A [`Call`] that owns its input, so the invocation can move between
/// runtimes ([`Placed`]).
enum OwnedCall {
    Invoke(Vec<u8>),
    Http(HttpRequest),
    Message(Message),
    Tick(Tick),
    Job(Job),
}

impl OwnedCall {
    fn kind(&self) -> HandlerKind {
        match self {
            OwnedCall::Invoke(_) => HandlerKind::Invoke,
            OwnedCall::Http(_) => HandlerKind::Http,
            OwnedCall::Message(_) => HandlerKind::Message,
            OwnedCall::Tick(_) => HandlerKind::Timer,
            OwnedCall::Job(_) => HandlerKind::Queue,
        }
    }
}

impl Call<'_> {
    fn to_owned(&self) -> OwnedCall {
        match self {
            Call::Invoke(i) => OwnedCall::Invoke(i.to_vec()),
            Call::Http(r) => OwnedCall::Http((*r).clone()),
            Call::Message(m) => OwnedCall::Message((*m).clone()),
            Call::Tick(t) => OwnedCall::Tick((*t).clone()),
            Call::Job(j) => OwnedCall::Job((*j).clone()),
        }
    }
}

/// What a handler call came to: a trap, the guest's error, or its reply.
type HandlerOutcome = wasmtime::Result<Result<Reply, GuestError>>;

/// What a handler returned.
pub enum Reply {
    Invoke(Vec<u8>),
    Http(HttpResponse),
    /// The message and timer handlers return nothing.
    Done,
}

impl Call<'_> {
    /// The handler this call is for.
    pub fn kind(&self) -> HandlerKind {
        match self {
            Call::Invoke(_) => HandlerKind::Invoke,
            Call::Http(_) => HandlerKind::Http,
            Call::Message(_) => HandlerKind::Message,
            Call::Tick(_) => HandlerKind::Timer,
            Call::Job(_) => HandlerKind::Queue,
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
            // Headers go out too: they count like the body.
            Reply::Http(r) => {
                r.body.len()
                    + r.headers
                        .iter()
                        .map(|(k, v)| k.len() + v.len())
                        .sum::<usize>()
            }
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

/// An instance, kept for reuse between invocations when pooled.
struct Warm {
    store: Store<State>,
    guests: Guests,
    uses: u32,
    born: Instant,
    /// Held while the instance waits in a pool (see [`crate::engine::WarmBudget`]).
    pooled: Option<crate::engine::WarmSlot>,
}

/// A loaded plugin, shared by all its invocations.
pub struct Plugin {
    context: Arc<PluginContext>,
    pre: InstancePre<State>,
    handlers: Handlers,
    isolation: Isolation,
    warm: Mutex<Vec<Warm>>,
    /// Instances waiting in pools across the host, bounded.
    warm_budget: Arc<crate::engine::WarmBudget>,
    /// This plugin's share of the host-wide instance slots.
    host_slots: HostShare,
    /// The low-priority runtime heavy invocations move to ([`Placed`]).
    background: tokio::runtime::Handle,
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
        let bytes = crate::files::read_bounded(&path, crate::files::MAX_COMPONENT_BYTES).map_err(
            |source| LoadError::Read {
                path: path.clone(),
                source,
            },
        )?;
        let (component, cache, compile_time) = compile(runtime, &path, &bytes)?;
        let engine = runtime.engine();
        let ty = component.component_type();
        let imports: Vec<String> = ty.imports(engine).map(|(n, _)| n.to_string()).collect();
        let exports: Vec<String> = ty.exports(engine).map(|(n, _)| n.to_string()).collect();

        if let Some(other) = other_wit_version(imports.iter().chain(&exports)) {
            return Err(LoadError::Link {
                path,
                reason: format!(
                    "it was built against redloom:plugin@{other}, and this host provides \
                     {WIT_PACKAGE}: rebuild it with the current redloom-sdk (or the wit/ \
                     folder of this redloom)"
                ),
            });
        }
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
        let handlers = Handlers::find(&pre, &exports).map_err(invalid)?;
        if handlers.kinds().is_empty() {
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
                .with_scripts(spec.scripts)
                .with_near_cache(spec.near_cache)
                .with_shared_channels(&spec.triggers.shared_channels)
                .with_queues(crate::store::QueuePolicy {
                    shared: spec.triggers.shared_queues.clone(),
                    max_length: spec.triggers.queue_max_length,
                }),
            ),
            pre,
            handlers,
            isolation: spec.isolation,
            warm: Mutex::new(Vec::new()),
            warm_budget: runtime.warm_budget().clone(),
            host_slots: runtime.slots().register(),
            background: runtime.background(),
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

    /// The plugin's `storage` quota meter.
    pub fn storage(&self) -> &crate::quota::StorageMeter {
        &self.context.storage
    }

    /// Counts a pub/sub message dropped because the plugin's buffer was full.
    pub fn count_dropped_message(&self) {
        self.context.stats.dropped_message();
    }

    /// Counts a pub/sub re-subscription after `unsubscribed` without one.
    pub fn count_resubscribed(&self, unsubscribed: std::time::Duration) {
        self.context.stats.resubscribed(unsubscribed);
    }

    /// Counts a queue message deferred by its consumer's rate limit.
    pub fn count_deferred_message(&self) {
        self.context.stats.deferred_message();
    }

    /// The plugin's counters (the near cache's included).
    pub fn stats(&self) -> Snapshot {
        let mut s = self.context.stats.snapshot();
        s.near_cache = self.context.near_cache.stats();
        s
    }

    /// The plugin's near cache (see [`crate::near_cache`]).
    pub fn near_cache(&self) -> &crate::near_cache::NearCache {
        &self.context.near_cache
    }

    /// Scan the plugin's keys (`keys.scan`) over `redis`, the host's own
    /// connection, rather than the plugin's (which may be an ACL user
    /// without `SCAN`).
    pub fn set_key_scanner(&self, redis: Redis) {
        let _ = self.context.key_scanner.set(redis);
    }

    /// Instantiates once and type-checks every exported handler, without
    /// calling any. `redis` may be `None` (as in `redloom check`): the
    /// instance never reaches a capability during instantiation.
    ///
    /// Instantiation is charged to the `cpu` quota as in every call, by the
    /// thread's own CPU clock ([`CpuMeter::precise`]: time this thread sits
    /// preempted on a busy machine is not the plugin's) and checked once
    /// more at the end, so a plugin that cannot even start within its quota
    /// fails here and not at every call.
    pub async fn probe(&self, redis: Option<Redis>) -> Result<(), InvokeError> {
        let mut store = self.new_store(redis);
        let cpu = Arc::new(CpuMeter::precise());
        store.data_mut().cpu = cpu.clone();
        let instance = Metered::new(std::pin::pin!(self.pre.instantiate_async(&mut store)), &cpu)
            .await
            .map_err(|e| self.instantiate_error(e))?;
        self.handlers
            .load(&mut store, &instance)
            .map_err(|e| self.instantiate_error(e))?;
        check_cpu(store.data()).map_err(|e| self.instantiate_error(e))?;
        Ok(())
    }

    /// Calls the plugin's `invoke` handler with `input`.
    pub async fn invoke(
        self: &Arc<Self>,
        redis: &Redis,
        input: &[u8],
    ) -> Result<Vec<u8>, InvokeError> {
        match self.call(redis, Call::Invoke(input)).await? {
            Reply::Invoke(out) => Ok(out),
            _ => unreachable!("an invoke call gets an invoke reply"),
        }
    }

    /// Calls the plugin's HTTP handler with `request`.
    pub async fn handle_http(
        self: &Arc<Self>,
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
    ///
    /// A call whose future is dropped before it finishes (its HTTP client
    /// hung up, `serve` stopped) is recorded as `cancelled`, with the CPU it
    /// used, and what it held is released in the background.
    pub async fn call(
        self: &Arc<Self>,
        redis: &Redis,
        call: Call<'_>,
    ) -> Result<Reply, InvokeError> {
        let mut record = Record {
            context: &self.context,
            handler: call.kind(),
            started: Instant::now(),
            cpu: Arc::new(CpuMeter::default()),
            outcome: None,
        };
        // A span (exported as a trace) only when traces are on: the call
        // path stays free of span bookkeeping otherwise. Its parent is the
        // trigger's span (an HTTP request, a queue message), if any.
        let (result, span) = if crate::logging::tracing_on() {
            use tracing::Instrument as _;
            let span = tracing::info_span!(
                target: crate::logging::SPANS,
                "invocation",
                otel.name = format!("{} {}", self.name(), call.kind().name()),
                plugin = %self.name(),
                handler = call.kind().name(),
                outcome = tracing::field::Empty,
            );
            let result = self
                .call_metered(redis, call, &record.cpu)
                .instrument(span.clone())
                .await;
            (result, Some(span))
        } else {
            (self.call_metered(redis, call, &record.cpu).await, None)
        };
        let outcome = match &result {
            Ok(_) => Outcome::Ok,
            Err(e) => e.outcome(),
        };
        if let Some(span) = span {
            span.record("outcome", outcome.label().as_ref());
        }
        record.outcome = Some(outcome);
        result
    }

    async fn call_metered(
        self: &Arc<Self>,
        redis: &Redis,
        call: Call<'_>,
        cpu: &Arc<CpuMeter>,
    ) -> Result<Reply, InvokeError> {
        let quotas = self.context.quotas;
        let input_len = call.input_len();
        self.within("input", input_len, quotas.max_input)?;
        if !self.handlers.has(call.kind()) {
            return Err(InvokeError::NoHandler {
                plugin: self.name().clone(),
                handler: call.kind(),
            });
        }
        let _admitted = self
            .context
            .admission
            .admit(&self.host_slots)
            .await
            .map_err(|detail| self.quota(Quota::Concurrency, detail))?;
        let warm = self.take_warm();

        let cleanup = CleanupGuard {
            cleanup: Arc::new(Cleanup::default()),
            redis: redis.clone(),
            armed: true,
        };
        let migrate = Arc::new(AtomicBool::new(false));
        let job = Box::pin(self.clone().run(
            redis.clone(),
            call.to_owned(),
            cpu.clone(),
            cleanup.cleanup.clone(),
            migrate.clone(),
            warm,
        ));
        let finished = Placed::new(job, migrate, &self.context, &self.background).await;
        // Whatever happened, release what the invocation still holds.
        cleanup.run().await;
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
        self.within("output", reply.output_len(), quotas.max_output)?;
        warm.uses += 1;
        self.give_back(warm);
        Ok(reply)
    }

    /// A pooled instance young enough to serve, if one waits.
    fn take_warm(&self) -> Option<Warm> {
        let Isolation::Pooled { max_age, .. } = self.isolation else {
            return None;
        };
        let mut pool = self.warm.lock().expect("warm pool poisoned");
        while let Some(mut warm) = pool.pop() {
            if warm.born.elapsed() < max_age {
                warm.pooled = None;
                return Some(warm);
            }
        }
        None
    }

    /// Keeps `warm` (after a successful call) for the next invocation if it
    /// may serve again: pooled, under its use and age limits, no lock or
    /// lease handle left from the call (a guest may keep one in a global:
    /// its lock was released when the call ended, so the handle must not
    /// reach the next call), room in the plugin's pool (its `concurrency`)
    /// and in the host's ([`crate::engine::WarmBudget`]). Otherwise it is
    /// dropped here.
    fn give_back(&self, mut warm: Warm) {
        let Isolation::Pooled { max_uses, max_age } = self.isolation else {
            return;
        };
        if warm.uses >= max_uses || warm.born.elapsed() >= max_age {
            return;
        }
        let caps = &warm.store.data().caps;
        if !caps.locks.is_empty() || !caps.leases.is_empty() || !caps.transactions.is_empty() {
            return;
        }
        let mut pool = self.warm.lock().expect("warm pool poisoned");
        if pool.len() >= self.context.quotas.concurrency as usize {
            return;
        }
        let Some(slot) = self.warm_budget.take() else {
            return;
        };
        warm.pooled = Some(slot);
        pool.push(warm);
    }

    /// The invocation itself, owning all it needs so that it can move to
    /// the background runtime ([`Placed`]): an instance (warm or fresh),
    /// the handler call, within the wall-time deadline; every poll is
    /// charged to the `cpu` quota ([`Metered`]: guest code and the host's own
    /// work in its host calls, not time spent waiting for Redis, at a
    /// yield or for a worker thread).
    async fn run(
        self: Arc<Self>,
        redis: Redis,
        call: OwnedCall,
        cpu: Arc<CpuMeter>,
        cleanup: Arc<Cleanup>,
        migrate: Arc<AtomicBool>,
        warm: Option<Warm>,
    ) -> Result<Result<(Warm, HandlerOutcome), InvokeError>, tokio::time::error::Elapsed> {
        let wall = self.context.quotas.wall_time;
        let body = async {
            let mut warm = match warm {
                Some(w) => w,
                None => {
                    let mut store = self.new_store(Some(redis.clone()));
                    store.data_mut().cpu = cpu.clone();
                    store.data_mut().migrate = migrate.clone();
                    let instance = self
                        .pre
                        .instantiate_async(&mut store)
                        .await
                        .map_err(|e| self.instantiate_error(e))?;
                    let guests = self
                        .handlers
                        .load(&mut store, &instance)
                        .map_err(|e| self.instantiate_error(e))?;
                    Warm {
                        store,
                        guests,
                        uses: 0,
                        born: Instant::now(),
                        pooled: None,
                    }
                }
            };
            self.reset(&mut warm.store, &cpu, &cleanup, &migrate)
                .map_err(|e| self.trap_error(e))?;
            let store = &mut warm.store;
            let outcome = warm.guests.call(store, &call).await;
            Ok::<_, InvokeError>((warm, outcome))
        };
        tokio::time::timeout(wall, Metered::new(std::pin::pin!(body), &cpu)).await
    }

    /// Prepares a store for the next invocation: fresh per-invocation
    /// accounting, fuel and epoch deadline.
    fn reset(
        &self,
        store: &mut Store<State>,
        cpu: &Arc<CpuMeter>,
        cleanup: &Arc<Cleanup>,
        migrate: &Arc<AtomicBool>,
    ) -> wasmtime::Result<()> {
        let data = store.data_mut();
        data.cpu = cpu.clone();
        data.migrate = migrate.clone();
        data.ticks.store(0, Ordering::Relaxed);
        data.caps.redis_ops = 0;
        data.caps
            .log_used
            .store(0, std::sync::atomic::Ordering::Relaxed);
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
        // At every epoch tick a running guest is checked against its `cpu`
        // quota and yields to tokio, so a busy plugin shares the worker
        // thread instead of holding it. (Yielding ends the poll, so the
        // meter stops until tokio polls the call again.)
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(|ctx| {
            let data = ctx.data();
            check_cpu(data)?;
            // Ran long on the normal threads: ask to move to the background
            // runtime at this yield (see [`Placed`]).
            let ticks = data.ticks.fetch_add(1, Ordering::Relaxed) + 1;
            if ticks >= MIGRATE_AFTER_TICKS && !crate::quota::on_background() {
                data.migrate.store(true, Ordering::Relaxed);
            }
            Ok(UpdateDeadline::YieldCustom(
                1,
                Box::pin(tokio::task::yield_now()),
            ))
        });
        store
    }

    /// The `payload` quota: `what` (input or output) of `len` bytes against
    /// its `max-<what>` of `max`.
    fn within(&self, what: &str, len: usize, max: u64) -> Result<(), InvokeError> {
        if len as u64 > max {
            return Err(self.quota(
                Quota::Payload,
                format!("{what} is {len} bytes; max-{what} is {max}"),
            ));
        }
        Ok(())
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

/// Epoch ticks an invocation may run guest code through on the normal
/// threads; at the next one it moves to the background runtime (see
/// [`Placed`]). Counted in ticks (each one the guest was seen running at,
/// ≈ 1 ms of computing) rather than by the clock, so an invocation that was
/// only preempted by the OS on a busy machine does not count as heavy.
/// Far above what nearly all handler calls take, so they never move.
pub const MIGRATE_AFTER_TICKS: u32 = 5;

/// How long a plugin counts as heavy after one of its invocations moved:
/// its new invocations start on the background runtime directly.
pub const HEAVY_FOR: Duration = Duration::from_secs(1);

type Job_<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

/// Runs an invocation where it should run, for fair CPU between plugins.
///
/// tokio cannot preempt a task, so a guest that computes for long would
/// hold a worker thread of the normal runtime (the one serving HTTP,
/// triggers, Redis I/O and every short invocation) for each epoch tick it
/// runs, and short invocations of other plugins would queue behind it. So
/// an invocation runs on the normal runtime only while it is light: once
/// it has computed through [`MIGRATE_AFTER_TICKS`] epoch ticks, its epoch
/// callback asks to move,
/// and at that yield the invocation is handed to the background runtime,
/// whose threads run at low OS priority ([`crate::engine::BACKGROUND_NICE`]).
/// The OS then gives the normal threads the CPU whenever they have work,
/// and the heavy invocations everything left over. A plugin whose
/// invocation moved starts its next ones there for [`HEAVY_FOR`].
///
/// Dropping it (the caller went away) aborts a moved invocation too.
struct Placed<T: Send + 'static> {
    job: Option<Job_<T>>,
    migrate: Arc<AtomicBool>,
    context: Arc<PluginContext>,
    background: tokio::runtime::Handle,
    moved: Option<tokio::task::JoinHandle<T>>,
}

impl<T: Send + 'static> Placed<T> {
    fn new(
        job: Job_<T>,
        migrate: Arc<AtomicBool>,
        context: &Arc<PluginContext>,
        background: &tokio::runtime::Handle,
    ) -> Self {
        let mut placed = Placed {
            job: Some(job),
            migrate,
            context: context.clone(),
            background: background.clone(),
            moved: None,
        };
        if context.placement.heavy() && !crate::quota::on_background() {
            placed.move_to_background();
        }
        placed
    }

    fn move_to_background(&mut self) {
        if let Some(job) = self.job.take() {
            self.context.stats.background();
            self.moved = Some(self.background.spawn(job));
        }
    }
}

impl<T: Send + 'static> std::future::Future for Placed<T> {
    type Output = T;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<T> {
        use std::task::Poll;
        if let Some(job) = self.job.as_mut() {
            match job.as_mut().poll(cx) {
                Poll::Ready(out) => return Poll::Ready(out),
                Poll::Pending => {
                    if !self.migrate.load(Ordering::Relaxed) {
                        return Poll::Pending;
                    }
                    self.context.placement.moved(HEAVY_FOR);
                    self.move_to_background();
                }
            }
        }
        let moved = self.moved.as_mut().expect("a job or a moved job");
        match std::pin::Pin::new(moved).poll(cx) {
            Poll::Ready(Ok(out)) => Poll::Ready(out),
            Poll::Ready(Err(e)) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Poll::Ready(Err(e)) => panic!("the background runtime dropped an invocation: {e}"),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T: Send + 'static> Drop for Placed<T> {
    fn drop(&mut self) {
        if let Some(moved) = &self.moved {
            moved.abort();
        }
    }
}

/// Records one call in the plugin's counters when dropped: with its outcome
/// once known, as `cancelled` if the call's future was dropped first.
struct Record<'a> {
    context: &'a PluginContext,
    handler: HandlerKind,
    started: Instant,
    cpu: Arc<CpuMeter>,
    outcome: Option<Outcome>,
}

impl Drop for Record<'_> {
    fn drop(&mut self) {
        let outcome = self.outcome.unwrap_or(Outcome::Cancelled);
        self.context.stats.record(
            self.handler,
            outcome,
            self.started.elapsed(),
            self.cpu.used(),
        );
    }
}

/// The invocation's [`Cleanup`], run when the invocation ends: awaited in
/// the normal path ([`CleanupGuard::run`]), and spawned if the call's future
/// is dropped first, so a cancelled call still releases its locks and slots
/// at once rather than when their leases run out.
struct CleanupGuard {
    cleanup: Arc<Cleanup>,
    redis: Redis,
    armed: bool,
}

impl CleanupGuard {
    async fn run(mut self) {
        self.armed = false;
        self.cleanup.run_all(Some(&self.redis)).await;
    }
}

impl Drop for CleanupGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let (cleanup, redis) = (self.cleanup.clone(), self.redis.clone());
            rt.spawn(async move { cleanup.run_all(Some(&redis)).await });
        }
    }
}

/// The version of `redloom:plugin` named by one of `names` (a component's
/// imports and exports), if it is not this host's.
fn other_wit_version<'a>(names: impl Iterator<Item = &'a String>) -> Option<String> {
    let ours = WIT_PACKAGE.rsplit_once('@').map(|(_, v)| v)?;
    names
        .filter_map(|n| n.strip_prefix("redloom:plugin/"))
        .filter_map(|n| n.rsplit_once('@').map(|(_, v)| v))
        .find(|v| *v != ours)
        .map(str::to_string)
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
