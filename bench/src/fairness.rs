//! The noisy neighbour: a light plugin's HTTP latency while another plugin
//! on the same `serve` is flooded with CPU-bound requests.
//!
//! One `redloom serve` (in this process) routes `GET /incr/:n` to `victim`
//! and `GET /burn/:ms` to `hog`, both the http-probe test guest. The victim
//! is called at a steady 20 requests per second (one Redis increment each),
//! first alone, then while [`HOG_CLIENTS`] clients keep `/burn/20` requests
//! in flight without pause (the hog's quotas let 8 run, 64 wait; the rest
//! are turned away with 429 and come straight back). The load generators
//! run on threads of their own, outside the server's runtime. The row is
//! the victim's p50 / p99 / max in both phases.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use redloom::config::Config;
use redloom::host::{Host, HostOptions};
use redloom::serve::Server;
use serde::Serialize;

/// Concurrent clients of the CPU-bound plugin.
pub const HOG_CLIENTS: usize = 500;
/// Guest CPU per hog request.
pub const HOG_BURN_MS: u64 = 20;
/// The victim's request rate.
pub const VICTIM_RATE: u32 = 20;

/// The row.
#[derive(Debug, Clone, Serialize)]
pub struct Fairness {
    /// Concurrent clients of the CPU-bound plugin.
    pub hog_clients: usize,
    pub victim_requests: usize,
    pub alone_p50_ms: f64,
    pub alone_p99_ms: f64,
    pub alone_max_ms: f64,
    pub loaded_p50_ms: f64,
    pub loaded_p99_ms: f64,
    pub loaded_max_ms: f64,
    /// Hog requests answered 200, and turned away (429/503), while loaded.
    pub hog_served: u64,
    pub hog_rejected: u64,
    /// Victim requests that did not answer 200 while loaded.
    pub victim_failures: usize,
}

fn manifest(wasm: &Path, data_dir: &Path, redis_url: &str) -> String {
    format!(
        r#"
data-dir = {data_dir:?}
[redis]
url = {redis_url:?}
[http]
listen = "127.0.0.1:0"
[admin]
listen = "127.0.0.1:0"
auth = "none"

[plugins.victim]
wasm = {wasm:?}
[plugins.hog]
wasm = {wasm:?}
[plugins.hog.quotas]
concurrency = 8
queue = 64
cpu = "60s"
wall-time = "60s"

[[routes]]
method = "GET"
path = "/incr/:n"
plugin = "victim"
[[routes]]
method = "GET"
path = "/burn/:ms"
plugin = "hog"
"#
    )
}

/// Runs both phases for `duration` each.
pub async fn measure(
    wasm_dir: &Path,
    redis_url: &str,
    data_dir: &Path,
    duration: Duration,
    hog_clients: usize,
) -> anyhow::Result<Fairness> {
    let wasm = wasm_dir.join("http_probe.wasm");
    let config = Config::parse(
        &manifest(&wasm, data_dir, redis_url),
        &data_dir.join("redloom.toml"),
    )
    .map_err(|e| anyhow::anyhow!("the fairness manifest: {e}"))?;
    let host = Arc::new(Host::start(HostOptions::from_config(&config)).await?);
    let server = Server::bind(host.clone(), config).await?;
    let addr = server.http_addr();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.run(async move {
        let _ = stop_rx.await;
    }));

    let alone = victim(addr, duration).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicU64::new(0));
    let rejected = Arc::new(AtomicU64::new(0));
    let hog = {
        let (stop, served, rejected) = (stop.clone(), served.clone(), rejected.clone());
        std::thread::spawn(move || run_hog_clients(addr, hog_clients, stop, served, rejected))
    };
    // Let the hog fill its slots and queue first.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = (
        served.load(Ordering::Relaxed),
        rejected.load(Ordering::Relaxed),
    );
    let loaded = victim(addr, duration).await?;
    let after = (
        served.load(Ordering::Relaxed),
        rejected.load(Ordering::Relaxed),
    );
    stop.store(true, Ordering::Relaxed);
    hog.join()
        .map_err(|_| anyhow::anyhow!("the hog clients panicked"))??;
    let _ = stop_tx.send(());
    serving.await?;
    host.shutdown().await;

    let pct = |l: &[Duration], p: f64| {
        let rank = ((p * l.len() as f64).ceil() as usize).clamp(1, l.len());
        l[rank - 1].as_secs_f64() * 1000.0
    };
    Ok(Fairness {
        hog_clients,
        victim_requests: loaded.latencies.len(),
        alone_p50_ms: pct(&alone.latencies, 0.50),
        alone_p99_ms: pct(&alone.latencies, 0.99),
        alone_max_ms: pct(&alone.latencies, 1.0),
        loaded_p50_ms: pct(&loaded.latencies, 0.50),
        loaded_p99_ms: pct(&loaded.latencies, 0.99),
        loaded_max_ms: pct(&loaded.latencies, 1.0),
        hog_served: after.0 - before.0,
        hog_rejected: after.1 - before.1,
        victim_failures: loaded.failures,
    })
}

struct Victim {
    /// Sorted.
    latencies: Vec<Duration>,
    failures: usize,
}

/// The victim's client, on a thread and runtime of its own: one request
/// every 1/[`VICTIM_RATE`] s (open loop: the schedule does not wait for
/// slow answers), for `duration`.
async fn victim(addr: SocketAddr, duration: Duration) -> anyhow::Result<Victim> {
    let handle = std::thread::spawn(move || -> anyhow::Result<Victim> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async move {
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()?;
            let period = Duration::from_secs(1) / VICTIM_RATE;
            let n = (duration.as_secs_f64() / period.as_secs_f64()).ceil() as u32;
            let start = tokio::time::Instant::now();
            let mut calls = Vec::new();
            for i in 0..n {
                tokio::time::sleep_until(start + period * i).await;
                let client = client.clone();
                let url = format!("http://{addr}/incr/1?key=v");
                calls.push(tokio::spawn(async move {
                    let t = Instant::now();
                    let ok = matches!(client.get(url).send().await, Ok(r) if r.status() == 200);
                    (t.elapsed(), ok)
                }));
            }
            let mut latencies = Vec::new();
            let mut failures = 0;
            for c in calls {
                let (took, ok) = c.await?;
                if ok {
                    latencies.push(took);
                } else {
                    failures += 1;
                }
            }
            latencies.sort();
            anyhow::ensure!(!latencies.is_empty(), "no victim request succeeded");
            Ok(Victim {
                latencies,
                failures,
            })
        })
    });
    tokio::task::spawn_blocking(move || handle.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the victim client panicked"))?
}

/// `clients` clients on one thread, each in a closed loop of
/// `GET /burn/HOG_BURN_MS` until `stop`.
fn run_hog_clients(
    addr: SocketAddr,
    clients: usize,
    stop: Arc<AtomicBool>,
    served: Arc<AtomicU64>,
    rejected: Arc<AtomicU64>,
) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(clients)
            .timeout(Duration::from_secs(120))
            .build()
            .context("hog client")?;
        let tasks: Vec<_> = (0..clients)
            .map(|_| {
                let (client, stop, served, rejected) = (
                    client.clone(),
                    stop.clone(),
                    served.clone(),
                    rejected.clone(),
                );
                tokio::spawn(async move {
                    let url = format!("http://{addr}/burn/{HOG_BURN_MS}");
                    while !stop.load(Ordering::Relaxed) {
                        match client.get(&url).send().await {
                            Ok(r) if r.status() == 200 => {
                                served.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(_) => {
                                rejected.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                        }
                    }
                })
            })
            .collect();
        for t in tasks {
            let _ = t.await;
        }
        Ok(())
    })
}
