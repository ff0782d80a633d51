//! What a wasmtime `Store` holds for one plugin instance: WASI state (with no
//! filesystem, environment, arguments, sockets or stdin), resource limits,
//! and [`Caps`], the state every capability implementation works with.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use wasmtime::component::ResourceTable;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use crate::caps::outbound_http::Origin;
use crate::config::Quotas;
use crate::namespace::{Namespace, PluginName};
use crate::quota::{Admission, CpuMeter, Limits, QuotaTrap, TokenBucket};
use crate::redis::Redis;
use crate::stats::PluginStats;

/// What every instance of one plugin shares.
#[derive(Debug)]
pub struct PluginContext {
    pub name: PluginName,
    pub namespace: Namespace,
    pub settings: BTreeMap<String, String>,
    pub quotas: Quotas,
    pub stats: PluginStats,
    /// The plugin's `redis-rate` bucket, shared by all its invocations.
    pub redis_rate: Mutex<TokenBucket>,
    pub admission: Admission,
    pub outbound: OutboundPolicy,
    /// Named rate-limit policies from the manifest (see `caps::limiter`).
    pub limiters: crate::limiter::Policies,
    /// Channel names shared with other plugins (`shared-channels`).
    pub shared_channels: std::collections::BTreeSet<String>,
    /// In-process single flights of cache lookups (see `caps::cache`).
    pub cache_flights: Arc<crate::caps::cache::Flights>,
    pub queues: QueuePolicy,
}

/// Which queues are shared and how long they may grow.
#[derive(Debug, Clone)]
pub struct QueuePolicy {
    /// Queue names (or `prefix*`) shared with other plugins (`shared-queues`).
    pub shared: Vec<String>,
    /// Messages a queue may hold (unacknowledged plus delayed) before
    /// `enqueue` is refused (`queue-max-length`).
    pub max_length: u64,
}

impl Default for QueuePolicy {
    fn default() -> Self {
        QueuePolicy {
            shared: Vec::new(),
            max_length: 100_000,
        }
    }
}

/// Where and how long a plugin may make outbound HTTP requests.
#[derive(Debug, Clone, Default)]
pub struct OutboundPolicy {
    /// Origins from `allowed-outbound-hosts`; empty: none.
    pub allowed: Vec<Origin>,
    /// Deadline of one request (`quotas.outbound-timeout`).
    pub timeout: std::time::Duration,
}

impl PluginContext {
    pub fn new(
        name: PluginName,
        settings: BTreeMap<String, String>,
        quotas: Quotas,
        allowed_outbound: Vec<Origin>,
    ) -> PluginContext {
        PluginContext {
            namespace: Namespace::new(&name),
            name,
            settings,
            stats: PluginStats::default(),
            redis_rate: Mutex::new(TokenBucket::new(quotas.redis_rate)),
            admission: Admission::new(&quotas),
            shared_channels: Default::default(),
            cache_flights: Default::default(),
            queues: QueuePolicy::default(),
            outbound: OutboundPolicy {
                allowed: allowed_outbound,
                timeout: quotas.outbound_timeout,
            },
            quotas,
            limiters: Default::default(),
        }
    }

    /// The same context with the manifest's queue settings.
    pub fn with_queues(mut self, queues: QueuePolicy) -> PluginContext {
        self.queues = queues;
        self
    }

    /// The same context with the manifest's shared channel names.
    pub fn with_shared_channels(mut self, names: &[String]) -> PluginContext {
        self.shared_channels = names.iter().cloned().collect();
        self
    }

    /// The same context with the manifest's rate-limit policies.
    pub fn with_limiters(mut self, limiters: crate::limiter::Policies) -> PluginContext {
        self.limiters = limiters;
        self
    }
}

/// Store data of one instance.
pub struct State {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(crate) limits: Limits,
    /// Guest CPU time of the current invocation.
    pub(crate) cpu: Arc<CpuMeter>,
    pub(crate) caps: Caps,
}

/// The capability side of an instance: who the plugin is and how to reach Redis.
pub struct Caps {
    pub(crate) plugin: Arc<PluginContext>,
    /// `None` only while `redloom check` probes a plugin without Redis.
    pub(crate) redis: Option<Redis>,
    /// Redis commands sent during the current invocation.
    pub(crate) redis_ops: u64,
    /// Work to do when the current invocation ends, however it ends.
    pub(crate) cleanup: Arc<Cleanup>,
    /// The first quota the current invocation broke inside a capability
    /// call; the invocation fails with it whatever the guest returns.
    pub(crate) breach: Option<QuotaTrap>,
    /// The instance's `lock` handles (see `caps::lock`).
    pub(crate) locks: crate::caps::lock::Locks,
    /// The instance's concurrency `lease` handles (see `caps::limiter`).
    pub(crate) leases: crate::caps::limiter::Leases,
}

/// A deferred action: given the Redis handle, a future that undoes something.
pub type CleanupAction = Box<dyn FnOnce(Redis) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

/// Actions the host runs when an invocation ends: on success, on a guest
/// error, on a trap, and when the invocation is cancelled at its deadline.
///
/// Capabilities that hand out something that must not outlive the
/// invocation (a held lock, a concurrency slot) register its release here
/// and cancel the registration when the guest releases it itself. The
/// registry lives outside the `Store`, so it survives the store being
/// dropped mid-call.
#[derive(Default)]
pub struct Cleanup {
    actions: Mutex<BTreeMap<u64, CleanupAction>>,
    next: std::sync::atomic::AtomicU64,
}

impl Cleanup {
    /// Registers `action`; the returned id cancels it.
    pub fn register(&self, action: CleanupAction) -> u64 {
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.actions
            .lock()
            .expect("cleanup poisoned")
            .insert(id, action);
        id
    }

    /// Forgets the action `id` (the guest undid it itself).
    pub fn cancel(&self, id: u64) {
        self.actions.lock().expect("cleanup poisoned").remove(&id);
    }

    /// Runs every registered action, in registration order.
    pub async fn run_all(&self, redis: Option<&Redis>) {
        let actions = std::mem::take(&mut *self.actions.lock().expect("cleanup poisoned"));
        let Some(redis) = redis else { return };
        for (_, action) in actions {
            action(redis.clone()).await;
        }
    }
}

/// Guest output logged per stream and instance; the rest is dropped so a
/// chatty plugin cannot flood the host's log.
pub const MAX_LOGGED_OUTPUT: usize = 64 << 10;

impl State {
    pub fn new(plugin: Arc<PluginContext>, redis: Option<Redis>) -> State {
        let name: Arc<str> = plugin.name.as_str().into();
        let wasi = WasiCtxBuilder::new()
            .stdout(GuestOutput::new(name.clone(), "stdout"))
            .stderr(GuestOutput::new(name, "stderr"))
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        let limits = Limits::new(&plugin.quotas);
        State {
            wasi,
            table: ResourceTable::new(),
            limits,
            cpu: Arc::default(),
            caps: Caps {
                plugin,
                redis,
                redis_ops: 0,
                cleanup: Arc::default(),
                breach: None,
                locks: Default::default(),
                leases: Default::default(),
            },
        }
    }
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// A guest's stdout or stderr: each line goes to the host log, tagged with
/// the plugin's name.
struct GuestOutput {
    plugin: Arc<str>,
    stream: &'static str,
}

impl GuestOutput {
    fn new(plugin: Arc<str>, stream: &'static str) -> GuestOutput {
        GuestOutput { plugin, stream }
    }
}

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(LineLogger {
            plugin: self.plugin.clone(),
            stream: self.stream,
            line: Vec::new(),
            logged: 0,
        })
    }
}

struct LineLogger {
    plugin: Arc<str>,
    stream: &'static str,
    line: Vec<u8>,
    logged: usize,
}

impl LineLogger {
    fn emit(&mut self) {
        if self.line.is_empty() {
            return;
        }
        let text = String::from_utf8_lossy(&self.line);
        let text = text.trim_end_matches(['\n', '\r']);
        if self.stream == "stderr" {
            tracing::warn!(target: "redloom::plugin", plugin = %self.plugin, stream = self.stream, "{text}");
        } else {
            tracing::info!(target: "redloom::plugin", plugin = %self.plugin, stream = self.stream, "{text}");
        }
        self.line.clear();
    }
}

impl tokio::io::AsyncWrite for LineLogger {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        let room = MAX_LOGGED_OUTPUT.saturating_sub(this.logged);
        let take = buf.len().min(room);
        this.logged += take;
        for &b in &buf[..take] {
            this.line.push(b);
            if b == b'\n' || this.line.len() >= 4096 {
                this.emit();
            }
        }
        // Report everything as written: the guest must not block or fail
        // because its output is being dropped.
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.emit();
        Poll::Ready(Ok(()))
    }
}

impl Drop for LineLogger {
    fn drop(&mut self) {
        self.emit();
    }
}
