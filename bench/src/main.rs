//! `redloom-bench`: redloom's patterns as plugins vs the same logic in
//! native Rust, side by side in one run against one private Redis, plus
//! invocation overhead, instance reuse for heavy runtimes, cold start,
//! memory and scaling. Prints a table and
//! writes `report.json`, `report.md` and `throughput.svg` to `--out`.
//!
//! # Layout
//!
//! - [`measure`]: the closed-loop load generator and its statistics.
//! - [`patterns`]: each pattern as a plugin invocation and natively.
//! - [`e2e`]: queue end to end (enqueue → consumer → handler).
//! - [`fairness`]: a light plugin's HTTP latency while another plugin is
//!   flooded with CPU-bound requests (the noisy neighbour).
//! - [`reuse`]: a fresh instance per call vs `reuse-instances = 16` for
//!   the Rust no-op and the JavaScript and Python examples.
//! - [`coldstart`]: loading from source wasm vs the compiled cache.
//! - [`memory`]: resident set with plugins loaded and instances in flight,
//!   measured in a child process.
//! - [`report`]: JSON, Markdown and the SVG chart.
//!
//! `scripts/bench` builds everything in release and runs it; `--quick` is
//! the few-iteration mode the test suite runs.

mod coldstart;
mod e2e;
mod fairness;
mod measure;
mod memory;
mod patterns;
mod redis_benchmark;
mod report;
mod reuse;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use redloom::config::Config;
use redloom::host::{Host, HostOptions};
use redloom::namespace::PluginName;
use redloom::redis::server::{PrivateRedis, ServerOptions};
use redloom::redis::{Redis, RedisOptions};

use crate::coldstart::Subject;

/// The allocator the `redloom` binary ships with (see host/src/main.rs), so
/// the host measured here is the host users run.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use crate::measure::{Load, Samples, op};
use crate::patterns::{Bench, Pattern};
use crate::report::{
    Machine, Overhead, PatternRow, RedisBenchmarkRow, Report, ScalingRow, Settings, Target,
    markdown, svg,
};

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Benchmarks redloom plugins against native Rust on a private Redis"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Few iterations (seconds, not minutes): checks that every benchmark runs.
    #[arg(long)]
    quick: bool,
    /// Where report.json, report.md and throughput.svg go.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
    /// The built plugins (default: `<target>/wasm32-wasip2/wasm` next to this binary).
    #[arg(long)]
    wasm_dir: Option<PathBuf>,
    /// The JavaScript example (plugins/rate-limited-api, built) for the
    /// cold-start and instance-reuse tables.
    #[arg(long)]
    js_wasm: Option<PathBuf>,
    /// The Python example (plugins/product-cache, built) for the cold-start
    /// and instance-reuse tables.
    #[arg(long)]
    python_wasm: Option<PathBuf>,
    /// Measured time per run, overriding the mode's (milliseconds).
    #[arg(long)]
    duration_ms: Option<u64>,
    /// Alternating native/plugin runs per row, overriding the mode's.
    #[arg(long)]
    rounds: Option<usize>,
}

#[derive(Debug, clap::Args)]
struct HotArgs {
    /// The pattern (`cache-hit`, `limiter-gcra`, ...).
    #[arg(long, default_value = "cache-hit")]
    pattern: String,
    /// The native side instead of the plugin.
    #[arg(long)]
    native: bool,
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    #[arg(long, default_value_t = 10)]
    seconds: u64,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Internal: the memory measurement, in a process of its own.
    #[command(hide = true)]
    MemoryChild(memory::ChildArgs),
    /// One pattern on one side for a while (for a profiler).
    Hot(HotArgs),
    /// Only the noisy-neighbour measurement, printed as JSON.
    Fairness {
        /// Seconds of each phase (victim alone, then with the hog).
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Concurrent clients of the CPU-bound plugin.
        #[arg(long, default_value_t = fairness::HOG_CLIENTS)]
        hog_clients: usize,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Some(Command::MemoryChild(args)) => {
            let m = runtime.block_on(memory::child(args))?;
            println!("{}", serde_json::to_string(&m)?);
            Ok(())
        }
        Some(Command::Fairness {
            seconds,
            hog_clients,
        }) => runtime.block_on(async {
            let wasm_dir = match &cli.wasm_dir {
                Some(d) => d.clone(),
                None => default_wasm_dir()?,
            };
            let temp = tempfile::tempdir()?;
            let mut server_options = ServerOptions::new(temp.path().join("redis"));
            server_options.persistence = false;
            let server = PrivateRedis::start(server_options).await?;
            let row = fairness::measure(
                &std::fs::canonicalize(&wasm_dir)?,
                &server.url(),
                &temp.path().join("data"),
                Duration::from_secs(seconds),
                hog_clients,
            )
            .await?;
            println!("{}", serde_json::to_string_pretty(&row)?);
            Ok(())
        }),
        Some(Command::Hot(args)) => runtime.block_on(async {
            let wasm_dir = match &cli.wasm_dir {
                Some(d) => d.clone(),
                None => default_wasm_dir()?,
            };
            hot(&wasm_dir, args).await
        }),
        None => runtime.block_on(run(cli)),
    }
}

/// The mode's durations and counts.
struct Plan {
    load: Load,
    rounds: usize,
    in_flight: usize,
    source_runs: usize,
    cached_runs: usize,
    /// Each phase of the noisy-neighbour measurement, and its hog clients.
    fairness: Duration,
    hog_clients: usize,
}

impl Plan {
    fn new(cli: &Cli) -> Plan {
        let (warmup, duration, rounds, in_flight, source_runs, cached_runs) = if cli.quick {
            (20, 150, 1, 8, 1, 2)
        } else {
            (300, 1000, 2, 64, 3, 5)
        };
        Plan {
            load: Load {
                concurrency: 1,
                warmup: Duration::from_millis(warmup),
                duration: Duration::from_millis(cli.duration_ms.unwrap_or(duration)),
            },
            rounds: cli.rounds.unwrap_or(rounds).max(1),
            in_flight,
            source_runs,
            cached_runs,
            fairness: Duration::from_secs(if cli.quick { 1 } else { 10 }),
            hog_clients: if cli.quick { 50 } else { fairness::HOG_CLIENTS },
        }
    }

    fn at(&self, concurrency: usize) -> Load {
        Load {
            concurrency,
            ..self.load
        }
    }
}

/// The benchmark's manifest: the pattern plugin, two no-op plugins (fresh
/// instances and reuse) and the queue consumer, all `bench-probe`, with
/// quotas that never get in the way of the measurement; then each example
/// of the instance-reuse table twice ([`reuse::manifest`]).
fn manifest(wasm: &Path, data_dir: &Path, redis_url: &str, examples: &[reuse::Built]) -> String {
    let mut s = format!(
        r#"
data-dir = {data_dir:?}

[redis]
url = {redis_url:?}

[host]
max-instances = 256

[plugins.bench]
wasm = {wasm:?}
queue-max-length = {max_len}
[plugins.bench.quotas]
concurrency = 256
queue = 1024
redis-rate = 0
[plugins.bench.limiters.bench]
algorithm = "gcra"
rate = "1000000/s"
burst = 1000

[plugins.bench-per-call]
wasm = {wasm:?}
isolation = "per-call"
queue-max-length = {max_len}
[plugins.bench-per-call.quotas]
concurrency = 256
queue = 1024
redis-rate = 0
[plugins.bench-per-call.limiters.bench]
algorithm = "gcra"
rate = "1000000/s"
burst = 1000

[plugins.noop-fresh]
wasm = {wasm:?}
isolation = "per-call"

[plugins.noop-reuse]
wasm = {wasm:?}
reuse-instances = 1000000

[plugins.{queue_plugin}]
wasm = {wasm:?}
queue-max-length = {max_len}
[plugins.{queue_plugin}.quotas]
concurrency = 64
redis-rate = 0
[plugins.{queue_plugin}.consumers.{queue}]
group = "workers"
concurrency = {consumers}
batch = {batch}
visibility-timeout = "60s"
"#,
        max_len = patterns::QUEUE_MAX_LENGTH,
        queue_plugin = e2e::PLUGIN,
        queue = e2e::QUEUE,
        consumers = e2e::CONCURRENCY,
        batch = e2e::BATCH,
    );
    s.push_str(&reuse::manifest(examples));
    s
}

fn default_wasm_dir() -> anyhow::Result<PathBuf> {
    // <target>/<profile>/redloom-bench
    let exe = std::env::current_exe()?;
    let target = exe
        .ancestors()
        .nth(2)
        .context("cannot tell the target folder from this binary's path")?;
    Ok(target.join("wasm32-wasip2/wasm"))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let started = Instant::now();
    let plan = Plan::new(&cli);
    let loadavg_before = loadavg();
    let wasm_dir = match &cli.wasm_dir {
        Some(d) => d.clone(),
        None => default_wasm_dir()?,
    };
    let probe = wasm_dir.join("bench_probe.wasm");
    if !probe.exists() {
        bail!(
            "{} does not exist: build the plugins first (scripts/build-plugins), or pass --wasm-dir",
            probe.display()
        );
    }
    let probe = std::fs::canonicalize(&probe)?;
    let wasm_dir_abs = std::fs::canonicalize(&wasm_dir)?;
    std::fs::create_dir_all(&cli.out).with_context(|| format!("creating {}", cli.out.display()))?;

    // The JavaScript and Python examples compile for seconds when the host
    // loads them; the cold start later finds them in the same cache.
    let (heavy, heavy_skipped) = heavy_examples(&cli);
    let mut examples = vec![reuse::Built {
        example: &reuse::RUST,
        wasm: probe.clone(),
    }];
    examples.extend(heavy.iter().cloned());
    let Setup {
        // Kept to the end: dropping it removes the folder.
        temp: _temp,
        server,
        url,
        data_dir,
        config,
        host,
        b,
    } = Setup::start(&probe, &examples).await?;
    // No response timeout: FLUSHDB after the cache-miss-fill rows frees
    // millions of keys and takes seconds (redis-rs would give up at 500 ms).
    let mut admin = redis::Client::open(url.as_str())?
        .get_multiplexed_async_connection_with_config(
            &redis::AsyncConnectionConfig::new().set_response_timeout(None),
        )
        .await?;

    // Memory first, while this process is quiet (the child does the work).
    eprintln!("redloom-bench: memory");
    let memory = memory::measure(&memory::ChildArgs {
        wasm: probe.clone(),
        redis_url: url.clone(),
        data_dir: data_dir.clone(),
        in_flight: plan.in_flight,
    })
    .await?;

    eprintln!("redloom-bench: invocation overhead");
    let overhead = overhead(&host, &plan).await?;

    let instance_reuse = reuse::measure(&host, &plan, &examples).await?;
    let _: () = redis::cmd("FLUSHDB").query_async(&mut admin).await?;

    let per_call = PluginName::parse("bench-per-call")?;
    let mut patterns = Vec::new();
    for pattern in Pattern::ALL {
        eprintln!("redloom-bench: {}", pattern.name());
        let e2e = if pattern == Pattern::QueueEndToEnd {
            Some(Arc::new(e2e::E2e::start(&b, &config).await?))
        } else {
            None
        };
        for c in [1, 32] {
            // Native, the plugin (pooled, the default), and the plugin with
            // a fresh instance per call, alternating.
            let mut sides = alternate(&plan, c, || match &e2e {
                Some(e) => vec![e.native_op(&b), e.plugin_op(&b)],
                None => vec![
                    patterns::native_op(&b, pattern),
                    patterns::plugin_op(&b, pattern),
                    patterns::plugin_op_as(&b, pattern, per_call.clone()),
                ],
            })
            .await
            .with_context(|| format!("{} at concurrency {c}", pattern.name()))?
            .into_iter();
            let native = sides.next().expect("native").stats();
            let plugin = sides.next().expect("plugin").stats();
            let mut row = PatternRow::new(pattern.name(), pattern.describe(), c, plugin, native);
            row.per_call = sides.next().map(|s| s.stats());
            patterns.push(row);
        }
        if let Some(e) = e2e {
            match Arc::try_unwrap(e) {
                Ok(e) => e.stop().await,
                Err(_) => bail!("the queue benchmark is still referenced"),
            }
        }
        let _: () = redis::cmd("FLUSHDB").query_async(&mut admin).await?;
    }

    eprintln!("redloom-bench: scaling");
    let mut scaling = Vec::new();
    for c in [1, 8, 32, 128] {
        let (plugin, native) = side_by_side(&plan, c, || {
            (
                patterns::plugin_op(&b, Pattern::CacheHit),
                patterns::native_op(&b, Pattern::CacheHit),
            )
        })
        .await
        .with_context(|| format!("scaling at concurrency {c}"))?;
        let (plugin, native) = (plugin.stats(), native.stats());
        scaling.push(ScalingRow {
            concurrency: c,
            ratio: plugin.throughput / native.throughput,
            plugin,
            native,
        });
    }
    let _: () = redis::cmd("FLUSHDB").query_async(&mut admin).await?;

    eprintln!("redloom-bench: cold start");
    let (subjects, mut cold_start_skipped) = cold_start_subjects(&cli, &wasm_dir, &probe, &heavy);
    cold_start_skipped.extend(heavy_skipped.iter().cloned());
    let cold_start = coldstart::measure(
        &subjects,
        &data_dir.join("cache"),
        plan.source_runs,
        plan.cached_runs,
    )
    .await?;

    eprintln!("redloom-bench: redis-benchmark");
    let redis_benchmark =
        redis_benchmark::measure(&url, &mut admin, if cli.quick { 2_000 } else { 100_000 }).await?;
    let _: () = redis::cmd("FLUSHDB").query_async(&mut admin).await?;

    // Last: it floods a server of its own with CPU-bound requests.
    eprintln!("redloom-bench: noisy neighbour");
    let fairness = fairness::measure(
        &wasm_dir_abs,
        &url,
        &data_dir.join("fairness"),
        plan.fairness,
        plan.hog_clients,
    )
    .await
    .context("the noisy-neighbour measurement")?;

    let info: String = redis::cmd("INFO")
        .arg("server")
        .query_async(&mut admin)
        .await?;
    let redis_version = info
        .lines()
        .find_map(|l| l.strip_prefix("redis_version:"))
        .unwrap_or("unknown")
        .trim()
        .to_string();
    host.shutdown().await;
    drop(host);
    drop(b);
    server.stop().await;

    let targets = targets(
        &patterns,
        &overhead,
        &cold_start,
        &fairness,
        &scaling,
        &redis_benchmark,
    );
    let report = Report {
        schema: report::SCHEMA,
        mode: if cli.quick { "quick" } else { "full" },
        machine: machine(redis_version, loadavg_before),
        settings: Settings {
            warmup_ms: plan.load.warmup.as_millis() as u64,
            duration_ms: plan.load.duration.as_millis() as u64,
            rounds: plan.rounds,
            tokio_workers: tokio::runtime::Handle::current().metrics().num_workers(),
            pool: "pooling allocator with pagemap_scan (auto); keep resident: linear memory 1 MiB, tables 64 KiB, async stacks 256 KiB (host/src/engine.rs)".into(),
        },
        patterns,
        overhead,
        instance_reuse,
        instance_reuse_skipped: heavy_skipped,
        cold_start,
        cold_start_skipped,
        memory,
        scaling,
        redis_benchmark,
        fairness,
        targets,
        total_seconds: started.elapsed().as_secs_f64(),
    };
    let md = markdown(&report);
    println!("{md}");
    let json = serde_json::to_string_pretty(&report)?;
    for (file, text) in [
        ("report.json", json.as_str()),
        ("report.md", md.as_str()),
        ("throughput.svg", svg(&report).as_str()),
    ] {
        let path = cli.out.join(file);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    eprintln!(
        "redloom-bench: wrote {} (report.json, report.md, throughput.svg) in {:.0} s",
        cli.out.display(),
        report.total_seconds
    );
    Ok(())
}

/// A private Redis, a host with the benchmark's plugins loaded, and the
/// pattern benchmark on both.
struct Setup {
    temp: tempfile::TempDir,
    server: PrivateRedis,
    url: String,
    data_dir: PathBuf,
    config: Config,
    host: Arc<Host>,
    b: Arc<Bench>,
}

impl Setup {
    async fn start(probe: &Path, examples: &[reuse::Built]) -> anyhow::Result<Setup> {
        let temp = tempfile::tempdir()?;
        let mut server_options = ServerOptions::new(temp.path().join("redis"));
        server_options.persistence = false;
        let server = PrivateRedis::start(server_options).await?;
        let url = server.url();
        eprintln!("redloom-bench: private redis-server at {url}");
        let data_dir = temp.path().join("data");
        let config = Config::parse(
            &manifest(probe, &data_dir, &url, examples),
            &temp.path().join("redloom.toml"),
        )
        .map_err(|e| anyhow::anyhow!("the benchmark's manifest: {e}"))?;
        let host = Arc::new(Host::start(HostOptions::from_config(&config)).await?);
        host.load_all(&config).await?;
        let native = Redis::connect(
            &url,
            RedisOptions::new(config.redis.connect_timeout, config.redis.response_timeout),
        )
        .await?;
        let bench_name = PluginName::parse("bench")?;
        let gcra = *config.plugins[&bench_name]
            .limiters
            .get("bench")
            .context("the manifest's bench policy")?;
        let b = Arc::new(Bench::new(
            host.clone(),
            bench_name,
            native,
            url.clone(),
            gcra,
        ));
        Ok(Setup {
            temp,
            server,
            url,
            data_dir,
            config,
            host,
            b,
        })
    }
}

/// `redloom-bench hot`: one pattern, one side, at one concurrency, for a
/// profiler to watch (`scripts/profile`); prints throughput and the
/// process's CPU per operation.
async fn hot(wasm_dir: &Path, args: HotArgs) -> anyhow::Result<()> {
    let probe = std::fs::canonicalize(wasm_dir.join("bench_probe.wasm"))?;
    let examples = [reuse::Built {
        example: &reuse::RUST,
        wasm: probe.clone(),
    }];
    let setup = Setup::start(&probe, &examples).await?;
    let pattern = Pattern::ALL
        .into_iter()
        .find(|p| p.name() == args.pattern)
        .with_context(|| {
            let names: Vec<_> = Pattern::ALL.iter().map(|p| p.name()).collect();
            format!("no pattern `{}`; one of {}", args.pattern, names.join(", "))
        })?;
    anyhow::ensure!(
        pattern != Pattern::QueueEndToEnd,
        "queue-end-to-end needs the consumer set-up of the full run"
    );
    let op = if args.native {
        patterns::native_op(&setup.b, pattern)
    } else {
        patterns::plugin_op(&setup.b, pattern)
    };
    let load = Load {
        concurrency: args.concurrency,
        warmup: Duration::from_secs(1),
        duration: Duration::from_secs(args.seconds),
    };
    let cpu_before = process_cpu();
    let samples = measure::run(load, op).await?;
    let cpu = process_cpu() - cpu_before;
    let stats = samples.stats();
    println!(
        "{} ({}) at concurrency {}: {:.0} ops/s, p50 {:.1} µs, p99 {:.1} µs, process CPU {:.1} µs per op",
        pattern.name(),
        if args.native { "native" } else { "plugin" },
        args.concurrency,
        stats.throughput,
        stats.p50_us,
        stats.p99_us,
        // Warm-up included: CPU over all operations run.
        cpu.as_secs_f64() * 1e6 / (samples.ops as f64 * (1.0 + 1.0 / args.seconds as f64)),
    );
    setup.host.shutdown().await;
    Ok(())
}

/// CPU time (user + system) this process has used.
pub fn process_cpu() -> Duration {
    // SAFETY: getrusage writes only into the struct it is given.
    let usage = unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut u);
        u
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// Runs each of `ops` in turn, `plan.rounds` times, at `concurrency`; `ops`
/// makes fresh operations for each round (new key names).
async fn alternate(
    plan: &Plan,
    concurrency: usize,
    ops: impl Fn() -> Vec<measure::Op>,
) -> anyhow::Result<Vec<Samples>> {
    let mut sides: Vec<Samples> = Vec::new();
    for _ in 0..plan.rounds {
        for (i, op) in ops().into_iter().enumerate() {
            let s = measure::run(plan.at(concurrency), op).await?;
            match sides.get_mut(i) {
                Some(side) => side.merge(s),
                None => sides.push(s),
            }
        }
    }
    Ok(sides)
}

/// Runs native then plugin, `plan.rounds` times, at `concurrency`; `ops`
/// makes a fresh pair of operations for each round (new key names).
async fn side_by_side(
    plan: &Plan,
    concurrency: usize,
    ops: impl Fn() -> (measure::Op, measure::Op),
) -> anyhow::Result<(Samples, Samples)> {
    let mut plugin = Samples::default();
    let mut native = Samples::default();
    for _ in 0..plan.rounds {
        let (p, n) = ops();
        native.merge(measure::run(plan.at(concurrency), n).await?);
        plugin.merge(measure::run(plan.at(concurrency), p).await?);
    }
    Ok((plugin, native))
}

/// The no-op plugin with a fresh instance per call and with reuse, and
/// instantiation alone.
async fn overhead(host: &Arc<Host>, plan: &Plan) -> anyhow::Result<Overhead> {
    let mut stats = Vec::new();
    for name in ["noop-fresh", "noop-reuse"] {
        let name = PluginName::parse(name)?;
        let host = host.clone();
        let noop = op(move |_, _| {
            let (host, name) = (host.clone(), name.clone());
            async move {
                let out = host.invoke(&name, b"noop").await?;
                anyhow::ensure!(out.is_empty(), "noop returned something");
                Ok(())
            }
        });
        let mut s = Samples::default();
        for _ in 0..plan.rounds {
            s.merge(measure::run(plan.at(1), noop.clone()).await?);
        }
        stats.push(s.stats());
    }
    let plugin = host
        .plugin(&PluginName::parse("noop-fresh")?)
        .context("noop-fresh is loaded")?;
    let instantiate = measure::repeat(100, plan.load.duration, || async {
        plugin.probe(None).await?;
        Ok(())
    })
    .await?
    .stats();
    let reuse = stats[1];
    Ok(Overhead {
        fresh: stats[0],
        reuse,
        instantiate,
        call_us: reuse.p50_us,
    })
}

/// The JavaScript and Python examples that were built, and those skipped
/// (with why): quick mode skips both (compiling them takes seconds in
/// release and minutes in a debug build).
fn heavy_examples(cli: &Cli) -> (Vec<reuse::Built>, Vec<String>) {
    let mut built = Vec::new();
    let mut skipped = Vec::new();
    for (example, path) in [
        (&reuse::JAVASCRIPT, &cli.js_wasm),
        (&reuse::PYTHON, &cli.python_wasm),
    ] {
        let (name, language) = (example.name, example.language);
        match path {
            _ if cli.quick => skipped.push(format!("{name} ({language}): quick mode")),
            Some(p) if p.exists() => match std::fs::canonicalize(p) {
                Ok(wasm) => built.push(reuse::Built { example, wasm }),
                Err(e) => skipped.push(format!("{name} ({language}): {}: {e}", p.display())),
            },
            Some(p) => skipped.push(format!("{name} ({language}): {} does not exist", p.display())),
            None => skipped.push(format!(
                "{name} ({language}): not built (scripts/bench builds it when plugins/{name}'s toolchain is installed by scripts/setup)"
            )),
        }
    }
    (built, skipped)
}

/// The plugins whose cold start is measured — `bench-probe`, in full mode
/// the Rust examples, and the built `heavy` examples — and the Rust
/// examples skipped (with why).
fn cold_start_subjects(
    cli: &Cli,
    wasm_dir: &Path,
    probe: &Path,
    heavy: &[reuse::Built],
) -> (Vec<Subject>, Vec<String>) {
    let mut subjects = vec![Subject {
        name: "bench-probe".into(),
        language: "rust",
        wasm: probe.to_path_buf(),
    }];
    let mut skipped = Vec::new();
    if !cli.quick {
        for name in [
            "visit-counter",
            "get-user-cached",
            "reserve-inventory",
            "ip-rate-limit",
        ] {
            let wasm = wasm_dir.join(format!("{}.wasm", name.replace('-', "_")));
            if wasm.exists() {
                subjects.push(Subject {
                    name: name.into(),
                    language: "rust",
                    wasm,
                });
            } else {
                skipped.push(format!("{name} (rust): {} not built", wasm.display()));
            }
        }
    }
    subjects.extend(heavy.iter().map(|b| Subject {
        name: b.example.name.into(),
        language: b.example.language,
        wasm: b.wasm.clone(),
    }));
    (subjects, skipped)
}

/// The issue's targets, checked against this run.
fn targets(
    patterns: &[PatternRow],
    o: &Overhead,
    cold: &[coldstart::ColdStart],
    fairness: &fairness::Fairness,
    scaling: &[ScalingRow],
    redis_benchmark: &[RedisBenchmarkRow],
) -> Vec<Target> {
    let mut t = Vec::new();
    for p in patterns {
        let limit = if p.concurrency >= 32 { 0.9 } else { 0.85 };
        t.push(Target::at_least(
            format!("{} @{}: plugin/native throughput", p.pattern, p.concurrency),
            p.ratio,
            limit,
        ));
    }
    for p in patterns {
        t.push(Target::at_most(
            format!(
                "{} @{}: host CPU per invocation above native, µs",
                p.pattern, p.concurrency
            ),
            p.host_cpu_us(),
            5.0,
        ));
    }
    t.push(Target::at_most(
        "no-op, per-call (fresh instance): p50 µs",
        o.fresh.p50_us,
        8.0,
    ));
    t.push(Target::at_most(
        "no-op, pooled (reused instance): p50 µs",
        o.reuse.p50_us,
        1.5,
    ));
    // A near-cache hit answers from host memory: it should beat Redis's
    // own fastest command, measured by Redis's own client, by 2×.
    let near = patterns
        .iter()
        .find(|p| p.pattern == Pattern::CacheHitNear.name() && p.concurrency == 32);
    let get = redis_benchmark
        .iter()
        .find(|r| r.command == "GET" && r.concurrency == 32);
    if let (Some(near), Some(get)) = (near, get) {
        t.push(Target::at_least(
            "cache-hit-near @32 / redis-benchmark GET @32 throughput",
            near.plugin.throughput / get.throughput,
            2.0,
        ));
    }
    let at = |c: usize| {
        scaling
            .iter()
            .find(|x| x.concurrency == c)
            .map(|x| x.plugin.throughput)
    };
    if let (Some(c32), Some(c128)) = (at(32), at(128)) {
        t.push(Target::at_least(
            "scaling: plugin ops/s at c=128 / at c=32",
            c128 / c32,
            1.0,
        ));
    }
    if let Some(worst) = cold
        .iter()
        .filter(|c| c.plugin != "bench-probe")
        .map(|c| c.cached_ms)
        .reduce(f64::max)
    {
        t.push(Target::at_most(
            "precompiled load, slowest example plugin: ms",
            worst,
            10.0,
        ));
    }
    t.push(Target::at_most(
        format!(
            "noisy neighbour: {} req/s victim p99 with {} hog clients, ms",
            fairness::VICTIM_RATE,
            fairness.hog_clients
        ),
        fairness.loaded_p99_ms,
        20.0,
    ));
    t
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn machine(redis: String, loadavg_before: String) -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|s| s.trim_start_matches([' ', '\t', ':']).trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let memory_kib: f64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0);
    Machine {
        date: chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string(),
        cpu,
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        memory_gib: memory_kib / (1024.0 * 1024.0),
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_string(),
        redis,
        build: if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        loadavg_before,
        loadavg_after: loadavg(),
    }
}
