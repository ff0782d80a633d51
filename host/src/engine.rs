//! The wasmtime [`Engine`], its epoch ticker, the [`Linker`] with every
//! capability, and the on-disk cache of compiled plugins.
//!
//! One engine serves every plugin. It uses the pooling allocator (instances
//! are carved out of pre-reserved slots, so a fresh instance per invocation is
//! cheap) and epoch interruption: a ticker thread bumps the epoch every
//! [`EPOCH_TICK`], and a running guest yields to tokio at each tick, so a busy
//! plugin is time-sliced instead of stalling the worker thread.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context as _;
use sha2::{Digest, Sha256};
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use crate::bindings::AnyPlugin;
use crate::config::ceilings;
use crate::quota::HostSlots;
use crate::store::{Caps, State};

/// How often the epoch advances; the granularity of time slicing.
pub const EPOCH_TICK: Duration = Duration::from_millis(1);

/// Engine-wide settings.
#[derive(Debug, Clone)]
pub struct RuntimeOptions {
    /// Where compiled plugins are cached; `None` disables the cache.
    pub cache_dir: Option<PathBuf>,
    /// Invocations running at once across all plugins (`[host] max-instances`).
    pub max_instances: u32,
    /// Meter fuel (needed by any plugin with a `fuel` quota; costs some speed).
    pub fuel: bool,
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        RuntimeOptions {
            cache_dir: None,
            max_instances: 256,
            fuel: false,
        }
    }
}

/// The engine, linker and compile cache shared by every plugin.
pub struct Runtime {
    engine: Engine,
    linker: Linker<State>,
    cache: Option<CompileCache>,
    slots: Arc<HostSlots>,
    warm: Arc<WarmBudget>,
    fuel: bool,
    background: Background,
    _ticker: EpochTicker,
}

/// Instances kept warm in plugins' pools, across the host: at most
/// `max-instances`. The pooling allocator has room for twice
/// `max-instances` (plus load-time probes), so running invocations (bounded
/// by the host slots) and pooled instances together never exhaust it.
pub struct WarmBudget {
    free: Arc<std::sync::atomic::AtomicU32>,
}

/// One pooled instance's place in the [`WarmBudget`], given back on drop.
pub struct WarmSlot {
    free: Arc<std::sync::atomic::AtomicU32>,
}

impl WarmBudget {
    fn new(max: u32) -> WarmBudget {
        WarmBudget {
            free: Arc::new(std::sync::atomic::AtomicU32::new(max.max(1))),
        }
    }

    /// A place for one more pooled instance, if the budget has one.
    pub fn take(&self) -> Option<WarmSlot> {
        use std::sync::atomic::Ordering;
        self.free
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .ok()
            .map(|_| WarmSlot {
                free: self.free.clone(),
            })
    }
}

impl Drop for WarmSlot {
    fn drop(&mut self) {
        self.free.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// Niceness of the [`Background`] threads: the OS runs them when the
/// normal threads (the HTTP listener, light invocations, triggers, Redis
/// I/O) leave a core free, and preempts them as soon as a normal thread
/// has work. At nice 10 a thread gets about a tenth of a contended core.
pub const BACKGROUND_NICE: i32 = 10;

/// A second tokio runtime, at low OS priority, for CPU-heavy invocations
/// (see `plugin.rs`, "Placement"): a guest that runs long moves here, so
/// it cannot hold up short invocations of other plugins on the normal
/// threads. One worker thread per core; work-conserving (alone on the
/// machine it runs at full speed).
struct Background {
    runtime: Option<tokio::runtime::Runtime>,
}

impl Background {
    fn start() -> anyhow::Result<Background> {
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("redloom-heavy")
            .enable_all()
            .on_thread_start(|| {
                crate::quota::mark_background_thread();
                // SAFETY: plain syscalls on this thread's own id; lowering
                // one's priority needs no privilege, and a failure only
                // leaves the thread at normal priority.
                unsafe {
                    let tid = libc::gettid();
                    libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, BACKGROUND_NICE);
                }
            })
            .build()
            .context("starting the background runtime for CPU-heavy invocations")?;
        Ok(Background {
            runtime: Some(runtime),
        })
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        // A runtime must not be dropped (blocking) inside another's context.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// Whether a load found its compiled artifact in the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    /// Loaded the precompiled artifact; no compilation happened.
    Hit,
    /// Compiled, then stored the artifact for next time.
    Miss,
    /// The cache is disabled; compiled.
    Disabled,
}

impl Runtime {
    pub fn new(options: RuntimeOptions) -> anyhow::Result<Runtime> {
        let engine = Engine::new(&engine_config(&options)).map_err(anyhow_from)?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(anyhow_from)?;
        AnyPlugin::add_to_linker::<State, HasSelf<Caps>>(&mut linker, |s: &mut State| &mut s.caps)
            .map_err(anyhow_from)?;
        let cache = options.cache_dir.map(|dir| CompileCache::new(&engine, dir));
        let ticker = EpochTicker::start(engine.clone());
        Ok(Runtime {
            engine,
            linker,
            cache,
            slots: HostSlots::new(options.max_instances),
            warm: Arc::new(WarmBudget::new(options.max_instances)),
            fuel: options.fuel,
            background: Background::start()?,
            _ticker: ticker,
        })
    }

    /// The low-priority runtime CPU-heavy invocations move to.
    pub fn background(&self) -> tokio::runtime::Handle {
        self.background
            .runtime
            .as_ref()
            .expect("the background runtime lives as long as the Runtime")
            .handle()
            .clone()
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Host-wide bound on instances waiting in pools for reuse.
    pub fn warm_budget(&self) -> &Arc<WarmBudget> {
        &self.warm
    }

    /// Host-wide instance slots: one per running invocation, shared fairly.
    pub fn slots(&self) -> &Arc<HostSlots> {
        &self.slots
    }

    /// Whether the engine meters fuel.
    pub fn fuel(&self) -> bool {
        self.fuel
    }

    pub(crate) fn linker(&self) -> &Linker<State> {
        &self.linker
    }

    /// Compiles `bytes`, or loads the artifact cached for them.
    pub fn compile(&self, bytes: &[u8]) -> anyhow::Result<(Component, CacheOutcome)> {
        match &self.cache {
            Some(cache) => cache.load_or_compile(&self.engine, bytes),
            None => Ok((
                Component::new(&self.engine, bytes).map_err(anyhow_from)?,
                CacheOutcome::Disabled,
            )),
        }
    }
}

fn engine_config(options: &RuntimeOptions) -> Config {
    let mut config = Config::new();
    config.wasm_component_model(true);
    config.epoch_interruption(true);
    config.consume_fuel(options.fuel);
    // Bounds-checked memories sized to the host ceiling keep each pool slot's
    // address-space reservation small (many hosts run side by side in tests).
    config.memory_reservation(ceilings::MEMORY);
    config.memory_guard_size(64 << 10);
    config.memory_reservation_for_growth(0);

    // Running invocations, plus instances kept warm for reuse and load-time
    // probes: twice the running limit leaves room for both.
    let n = options
        .max_instances
        .max(1)
        .saturating_mul(2)
        .saturating_add(8);
    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(n)
        // A Rust component has one to a few core instances; JS and Python more.
        .total_core_instances(n.saturating_mul(8))
        .total_memories(n.saturating_mul(2))
        .total_tables(n.saturating_mul(4))
        .total_stacks(n)
        .max_memory_size(ceilings::MEMORY as usize)
        // The `table-elements` ceiling is what each pooled table can hold.
        .table_elements(ceilings::TABLE_ELEMENTS as usize)
        // Keep-resident sizes only pay off together with `pagemap_scan`:
        // without it, wasmtime resets the first `keep_resident` bytes of
        // every memory and table with `memset` when an instance is freed,
        // whether the guest touched them or not (1 MiB per invocation was a
        // third of the host's CPU in the cache-hit benchmark). With it (Linux
        // ≥ 6.7, `PAGEMAP_SCAN`), only pages the guest actually dirtied are
        // reset, and they stay mapped for the next instance (no page faults,
        // no `madvise`). On older kernels `Auto` falls back to the memset.
        .pagemap_scan(Enabled::Auto)
        .linear_memory_keep_resident(1 << 20)
        .table_keep_resident(1 << 16)
        .async_stack_keep_resident(256 << 10);
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    config
}

/// Turns a `wasmtime::Error` into an `anyhow::Error`, keeping its whole chain.
pub(crate) fn anyhow_from(e: wasmtime::Error) -> anyhow::Error {
    anyhow::anyhow!("{e:#}")
}

/// Bumps the engine's epoch every [`EPOCH_TICK`] until dropped.
struct EpochTicker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl EpochTicker {
    fn start(engine: Engine) -> EpochTicker {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("redloom-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    engine.increment_epoch();
                }
            })
            .expect("spawning the epoch thread");
        EpochTicker {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Compiled components on disk: `DIR/<engine key>/<sha256 of the wasm>.cwasm`.
///
/// The engine key hashes wasmtime's own compatibility hash (version, target,
/// every setting that affects code generation), so an artifact is only ever
/// loaded into an engine that could have produced it.
struct CompileCache {
    dir: PathBuf,
}

impl CompileCache {
    fn new(engine: &Engine, root: PathBuf) -> CompileCache {
        let mut h = DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        let key = format!("wasmtime-{}-{:016x}", env!("CARGO_PKG_VERSION"), h.finish());
        CompileCache {
            dir: root.join(key),
        }
    }

    fn path_for(&self, bytes: &[u8]) -> PathBuf {
        let digest = Sha256::digest(bytes);
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        self.dir.join(format!("{hex}.cwasm"))
    }

    fn load_or_compile(
        &self,
        engine: &Engine,
        bytes: &[u8],
    ) -> anyhow::Result<(Component, CacheOutcome)> {
        let path = self.path_for(bytes);
        // Read the artifact into memory rather than mapping the file: a mapped
        // file that someone truncates or rewrites would crash the host (SIGBUS).
        if let Ok(artifact) = std::fs::read(&path) {
            // SAFETY: `deserialize` requires bytes produced by `serialize` on a
            // compatible engine. The folder name carries the engine's
            // compatibility hash, files there are only written by `store`
            // below (atomic rename), and wasmtime checks the artifact's header
            // and rejects a mismatch or a truncated file with an error.
            match unsafe { Component::deserialize(engine, &artifact) } {
                Ok(c) => return Ok((c, CacheOutcome::Hit)),
                Err(e) => {
                    tracing::warn!(path = %path.display(), "ignoring unreadable cached artifact: {e}")
                }
            }
        }
        let component = Component::new(engine, bytes).map_err(anyhow_from)?;
        if let Err(e) = store(&component, &path) {
            tracing::warn!(path = %path.display(), "cannot cache compiled plugin: {e:#}");
        }
        Ok((component, CacheOutcome::Miss))
    }
}

fn store(component: &Component, path: &Path) -> anyhow::Result<()> {
    let dir = path.parent().context("cache path has no folder")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let bytes = component.serialize().map_err(anyhow_from)?;
    // Its temporary file is unique per process, so concurrent loads never
    // share one.
    crate::files::write_atomically(path, &bytes)
        .with_context(|| format!("writing {}", path.display()))
}
