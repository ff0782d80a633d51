//! The load generator: `concurrency` workers run one operation in a closed
//! loop (each starts its next operation when the last one answered) for a
//! warm-up, then for the measured time; every operation's latency is kept.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

/// One operation: `(worker, sequence number within the worker)`.
pub type Op = Arc<dyn Fn(usize, u64) -> BoxFuture + Send + Sync>;
pub type BoxFuture = Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>;

/// Wraps an async closure as an [`Op`].
pub fn op<F, Fut>(f: F) -> Op
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    Arc::new(move |w, n| Box::pin(f(w, n)))
}

/// How long to run, and how many workers.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    pub concurrency: usize,
    pub warmup: Duration,
    pub duration: Duration,
}

/// Raw results of one or more runs of one operation.
#[derive(Debug, Default, Clone)]
pub struct Samples {
    pub ops: u64,
    pub elapsed: Duration,
    /// Per-operation latency in nanoseconds.
    pub latencies: Vec<u64>,
    /// CPU time (user + system) of this whole process over the measured
    /// period: the host or native client, and the load generator (the same
    /// on both sides); redis-server runs in a process of its own.
    pub cpu: Duration,
}

impl Samples {
    pub fn merge(&mut self, other: Samples) {
        self.ops += other.ops;
        self.elapsed += other.elapsed;
        self.latencies.extend(other.latencies);
        self.cpu += other.cpu;
    }

    pub fn stats(&self) -> Stats {
        let mut l = self.latencies.clone();
        l.sort_unstable();
        let us = |ns: u64| ns as f64 / 1000.0;
        let pct = |p: f64| {
            if l.is_empty() {
                return 0.0;
            }
            // Nearest rank.
            let rank = ((p * l.len() as f64).ceil() as usize).clamp(1, l.len());
            us(l[rank - 1])
        };
        let mean = if l.is_empty() {
            0.0
        } else {
            us(l.iter().sum::<u64>() / l.len() as u64)
        };
        let secs = self.elapsed.as_secs_f64();
        Stats {
            ops: self.ops,
            throughput: if secs > 0.0 {
                self.ops as f64 / secs
            } else {
                0.0
            },
            p50_us: pct(0.50),
            p99_us: pct(0.99),
            mean_us: mean,
            cpu_us_per_op: if self.ops > 0 {
                self.cpu.as_secs_f64() * 1e6 / self.ops as f64
            } else {
                0.0
            },
        }
    }
}

/// What the report shows for one measured operation.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Stats {
    pub ops: u64,
    /// Operations per second.
    pub throughput: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub mean_us: f64,
    /// Process CPU per operation, µs (see [`Samples::cpu`]).
    pub cpu_us_per_op: f64,
}

/// Runs `op` under `load`: a warm-up (at least one operation per worker, not
/// recorded), then the measured period. The first failed operation fails
/// the run.
pub async fn run(load: Load, op: Op) -> anyhow::Result<Samples> {
    let started = Instant::now();
    let warm_until = started + load.warmup;
    let mut workers = Vec::with_capacity(load.concurrency);
    for w in 0..load.concurrency {
        let op = op.clone();
        workers.push(tokio::spawn(async move {
            let mut n = 0u64;
            loop {
                op(w, n).await?;
                n += 1;
                if Instant::now() >= warm_until {
                    break;
                }
            }
            Ok::<_, anyhow::Error>(n)
        }));
    }
    let mut first = 0u64;
    for w in workers {
        first = first.max(w.await??);
    }
    // Every worker starts measuring at the same moment.
    let measure_from = Instant::now();
    let cpu_from = crate::process_cpu();
    let until = measure_from + load.duration;
    let mut workers = Vec::with_capacity(load.concurrency);
    for w in 0..load.concurrency {
        let op = op.clone();
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(1024);
            let mut n = first;
            loop {
                let t = Instant::now();
                if t >= until {
                    break;
                }
                op(w, n).await?;
                latencies.push(t.elapsed().as_nanos() as u64);
                n += 1;
            }
            Ok::<_, anyhow::Error>(latencies)
        }));
    }
    let mut samples = Samples::default();
    for w in workers {
        let l = w.await??;
        samples.ops += l.len() as u64;
        samples.latencies.extend(l);
    }
    samples.elapsed = measure_from.elapsed();
    samples.cpu = crate::process_cpu().saturating_sub(cpu_from);
    Ok(samples)
}

/// Times `f` `n` times (at least once, and at least for `min`), one after
/// another.
pub async fn repeat<F, Fut>(n: usize, min: Duration, mut f: F) -> anyhow::Result<Samples>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let started = Instant::now();
    let mut samples = Samples::default();
    let mut i = 0;
    while i < n.max(1) || started.elapsed() < min {
        let t = Instant::now();
        f().await?;
        samples.latencies.push(t.elapsed().as_nanos() as u64);
        i += 1;
    }
    samples.ops = samples.latencies.len() as u64;
    samples.elapsed = started.elapsed();
    Ok(samples)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Percentiles are nearest-rank and throughput is operations per second.
    #[test]
    fn stats_of_known_samples() {
        let s = Samples {
            ops: 100,
            elapsed: Duration::from_secs(2),
            latencies: (1..=100).map(|i| i * 1000).collect(),
            cpu: Duration::from_millis(1),
        };
        let st = s.stats();
        assert_eq!(st.throughput, 50.0);
        assert_eq!(st.p50_us, 50.0);
        assert_eq!(st.p99_us, 99.0);
        assert_eq!(st.cpu_us_per_op, 10.0);
    }
}
