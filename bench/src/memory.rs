//! Memory, measured in a child process of its own (`redloom-bench
//! memory-child`), so the allocations of the other benchmarks do not
//! count: the host's resident set (`VmRSS` in `/proc/self/status`) with 1,
//! 10 and 100 plugins loaded and idle, and per instance in flight.
//!
//! The plugins are copies of `bench-probe` under different names, each
//! loaded from the compiled cache (as a restarted host would). Instances
//! are held in flight by a lock: the benchmark takes it, then starts
//! invocations that wait for it (`wait-lock:NAME`), counts them in
//! (`INCR arrived:NAME`), reads the resident set, and releases the lock.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use redloom::config::Config;
use redloom::host::{Host, HostOptions};
use redloom::namespace::{Namespace, PluginName};
use redloom::plugin::PluginSpec;
use redloom::redis::AcquireReply;
use serde::{Deserialize, Serialize};

/// Plugin counts at which the resident set is read.
pub const LOADED: [usize; 3] = [1, 10, 100];

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Memory {
    /// The host started (runtime, pool reserved, Redis connected), no plugin.
    pub baseline_mib: f64,
    pub loaded: Vec<LoadedRss>,
    pub in_flight: InFlight,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoadedRss {
    pub plugins: usize,
    pub rss_mib: f64,
    /// Above the baseline.
    pub delta_mib: f64,
    pub per_plugin_kib: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InFlight {
    pub instances: usize,
    pub before_mib: f64,
    pub during_mib: f64,
    pub per_instance_kib: f64,
}

/// What the parent passes to the child.
#[derive(Debug, Clone, clap::Args)]
pub struct ChildArgs {
    #[arg(long)]
    pub wasm: PathBuf,
    #[arg(long)]
    pub redis_url: String,
    #[arg(long)]
    pub data_dir: PathBuf,
    #[arg(long, default_value_t = 64)]
    pub in_flight: usize,
}

/// `VmRSS` of this process, in KiB.
pub fn rss_kib() -> anyhow::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .context("no VmRSS in /proc/self/status")?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .context("malformed VmRSS line")?
        .parse()?)
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// The child's work; its result goes to stdout as JSON.
pub async fn child(args: ChildArgs) -> anyhow::Result<Memory> {
    let manifest = format!(
        "data-dir = {:?}\n[redis]\nurl = {:?}\n[host]\nmax-instances = 256\n",
        args.data_dir, args.redis_url
    );
    let config = Config::parse(&manifest, &args.data_dir.join("redloom.toml"))
        .map_err(|e| anyhow::anyhow!("the memory child's manifest: {e}"))?;
    let options = HostOptions::from_config(&config);
    let host = Arc::new(Host::start(options).await?);
    let baseline = rss_kib()?;

    let mut loaded = Vec::new();
    let mut first = None;
    for n in 1..=*LOADED.last().expect("not empty") {
        let mut spec = PluginSpec::from_path(&args.wasm);
        spec.name = PluginName::parse(&format!("mem-{n:03}"))?;
        spec.quotas.concurrency = 256;
        spec.quotas.queue = 1024;
        let plugin = host.load(spec).await?;
        first.get_or_insert(plugin);
        if LOADED.contains(&n) {
            let rss = rss_kib()?;
            let delta = rss.saturating_sub(baseline);
            loaded.push(LoadedRss {
                plugins: n,
                rss_mib: mib(rss),
                delta_mib: mib(delta),
                per_plugin_kib: delta as f64 / n as f64,
            });
        }
    }

    let plugin = first.context("no plugin loaded")?;
    let name = plugin.name().clone();
    let lock = format!("hold-{}", std::process::id());
    let ns = Namespace::new(&name);
    let keys = ns.lock(&lock)?;
    let redis = host.redis().clone();
    match redis.lock_acquire(&keys, "bench-holder", 60_000).await? {
        AcquireReply::Acquired { .. } => {}
        AcquireReply::Held { .. } => bail!("the benchmark's lock {lock} is already held"),
    }
    let before = rss_kib()?;
    let mut calls = Vec::new();
    let input = format!("wait-lock:{lock}");
    for _ in 0..args.in_flight {
        let (host, name, input) = (host.clone(), name.clone(), input.clone());
        calls.push(tokio::spawn(async move {
            host.invoke(&name, input.as_bytes()).await
        }));
    }
    let arrived = ns.kv(&format!("arrived:{lock}"))?;
    let started = Instant::now();
    loop {
        let n: u64 = redis
            .get(&arrived)
            .await?
            .and_then(|v| String::from_utf8(v).ok()?.parse().ok())
            .unwrap_or(0);
        if n as usize >= args.in_flight {
            break;
        }
        ensure!(
            started.elapsed() < Duration::from_secs(30),
            "only {n} of {} invocations got in flight",
            args.in_flight
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let during = rss_kib()?;
    ensure!(
        redis.lock_release(&keys, "bench-holder").await?,
        "lost the benchmark's lock"
    );
    for c in calls {
        tokio::time::timeout(Duration::from_secs(60), c)
            .await
            .context("a waiting invocation did not finish")???;
    }
    host.shutdown().await;
    Ok(Memory {
        baseline_mib: mib(baseline),
        loaded,
        in_flight: InFlight {
            instances: args.in_flight,
            before_mib: mib(before),
            during_mib: mib(during),
            per_instance_kib: during.saturating_sub(before) as f64 / args.in_flight.max(1) as f64,
        },
    })
}

/// Runs the child and parses its report.
pub async fn measure(args: &ChildArgs) -> anyhow::Result<Memory> {
    let exe = std::env::current_exe()?;
    let mut cmd = tokio::process::Command::new(exe);
    cmd.arg("memory-child")
        .arg("--wasm")
        .arg(&args.wasm)
        .arg("--redis-url")
        .arg(&args.redis_url)
        .arg("--data-dir")
        .arg(&args.data_dir)
        .arg("--in-flight")
        .arg(args.in_flight.to_string())
        .kill_on_drop(true)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit());
    let out = tokio::time::timeout(Duration::from_secs(300), cmd.output())
        .await
        .context("the memory child did not finish within 300 s")??;
    ensure!(
        out.status.success(),
        "the memory child failed ({})",
        out.status
    );
    let text = String::from_utf8(out.stdout)?;
    let last = text
        .lines()
        .last()
        .context("the memory child printed nothing")?;
    Ok(serde_json::from_str(last)?)
}
