//! Cold start: how long `Plugin::load` takes (read the file, compile it or
//! load the compiled artifact, link, pre-instantiate) from the source wasm
//! (compile cache off) and from the precompiled cache, and the first
//! instantiation after that.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use redloom::engine::{CacheOutcome, Runtime, RuntimeOptions};
use redloom::plugin::{Plugin, PluginSpec};
use serde::Serialize;

/// One plugin to load.
#[derive(Debug, Clone)]
pub struct Subject {
    pub name: String,
    pub language: &'static str,
    pub wasm: PathBuf,
}

#[derive(Debug, Clone, Serialize)]
pub struct ColdStart {
    pub plugin: String,
    pub language: &'static str,
    pub size_bytes: u64,
    /// Median load from the source wasm (compiled), milliseconds.
    pub source_ms: f64,
    /// Median load from the precompiled cache, milliseconds.
    pub cached_ms: f64,
    /// Median first instantiation after a load, milliseconds.
    pub first_instance_ms: f64,
    /// How many loads each median is over.
    pub source_runs: usize,
    pub cached_runs: usize,
}

/// Measures every subject; `source_runs` compiles and `cached_runs` cache
/// hits each (a subject whose file is larger than 4 MiB — an interpreter —
/// is compiled once: that takes seconds).
pub async fn measure(
    subjects: &[Subject],
    cache_dir: &Path,
    source_runs: usize,
    cached_runs: usize,
) -> anyhow::Result<Vec<ColdStart>> {
    let small = RuntimeOptions {
        max_instances: 8,
        ..RuntimeOptions::default()
    };
    let uncached = Runtime::new(small.clone())?;
    let cached = Runtime::new(RuntimeOptions {
        cache_dir: Some(cache_dir.to_path_buf()),
        ..small
    })?;
    let mut rows = Vec::new();
    for s in subjects {
        let size = std::fs::metadata(&s.wasm)?.len();
        let spec = PluginSpec::from_path(&s.wasm);
        let n_source = if size > 4 << 20 { 1 } else { source_runs };
        let mut source = Vec::new();
        for _ in 0..n_source.max(1) {
            let (d, outcome, _) = load(&uncached, &spec)?;
            anyhow::ensure!(
                outcome == CacheOutcome::Disabled,
                "the uncached runtime used a cache"
            );
            source.push(d);
        }
        // Fill the cache (this load compiles, unless the benchmark's host
        // already compiled the plugin into the same cache), then measure hits.
        let (_, _, _) = load(&cached, &spec)?;
        let mut hits = Vec::new();
        let mut instances = Vec::new();
        for _ in 0..cached_runs.max(1) {
            let (d, outcome, plugin) = load(&cached, &spec)?;
            anyhow::ensure!(
                outcome == CacheOutcome::Hit,
                "{}: the second load did not come from the cache ({outcome:?})",
                s.name
            );
            hits.push(d);
            let t = Instant::now();
            plugin.probe(None).await?;
            instances.push(t.elapsed());
        }
        rows.push(ColdStart {
            plugin: s.name.clone(),
            language: s.language,
            size_bytes: size,
            source_ms: median_ms(&mut source),
            cached_ms: median_ms(&mut hits),
            first_instance_ms: median_ms(&mut instances),
            source_runs: n_source.max(1),
            cached_runs: cached_runs.max(1),
        });
    }
    Ok(rows)
}

fn load(runtime: &Runtime, spec: &PluginSpec) -> anyhow::Result<(Duration, CacheOutcome, Plugin)> {
    let t = Instant::now();
    let plugin = Plugin::load(runtime, spec.clone())?;
    let d = t.elapsed();
    Ok((d, plugin.report().cache, plugin))
}

fn median_ms(v: &mut [Duration]) -> f64 {
    v.sort_unstable();
    v.get(v.len() / 2).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}
