//! Instance reuse for heavy runtimes: per-invocation latency of an example
//! plugin with a fresh instance per call and with `reuse-instances =`
//! [`REUSE`], for the Rust no-op (the baseline) and, when they were built,
//! the JavaScript (componentize-js, SpiderMonkey) and Python
//! (componentize-py, CPython) examples.
//!
//! Each example is loaded twice from the benchmark's manifest,
//! `<language>-fresh` (`reuse-instances = 0`) and `<language>-reuse`, and
//! both are measured at concurrency 1 in alternating runs, like the pattern
//! rows. The JavaScript and Python calls include their Redis round trips
//! (the example's hot path), the Rust one does none: compare the ratios,
//! not the absolute times across languages.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context as _, ensure};
use redloom::host::Host;
use redloom::namespace::PluginName;
use serde::Serialize;

use crate::Plan;
use crate::measure::{self, Samples, Stats, op};

/// Invocations per instance on the reuse side (what `redloom new --lang
/// js|python` writes).
pub const REUSE: u32 = 16;

/// An example plugin and its hot path.
#[derive(Debug)]
pub struct Example {
    /// The example's name (`plugins/<name>`, or the test guest).
    pub name: &'static str,
    pub language: &'static str,
    /// What one invocation does, for the report.
    pub operation: &'static str,
    input: &'static str,
    /// Manifest lines for `[plugins.NAME]` besides `wasm` and
    /// `reuse-instances` (`{p}` is the plugin's table, `plugins.NAME`).
    manifest: &'static str,
    /// Checks one reply (every measured call's).
    check: fn(&[u8]) -> anyhow::Result<()>,
}

/// The baseline: `bench-probe`'s no-op, no Redis.
pub static RUST: Example = Example {
    name: "bench-probe",
    language: "rust",
    operation: "no-op (no Redis)",
    input: "noop",
    manifest: "",
    check: |out| {
        ensure!(out.is_empty(), "noop returned something");
        Ok(())
    },
};

/// `plugins/rate-limited-api`: a GCRA check under a limit it never reaches,
/// then `kv.increment` (2 Redis round trips).
pub static JAVASCRIPT: Example = Example {
    name: "rate-limited-api",
    language: "javascript",
    operation: "limiter check + kv increment, answer 200 (2 EVALSHA/INCRBY round trips)",
    input: r#"{"client":"bench","path":"/items"}"#,
    manifest: r#"
[{p}.quotas]
redis-rate = 0
[{p}.limiters.api]
algorithm = "gcra"
rate = "1000000/s"
burst = 1000
"#,
    check: |out| {
        let text = String::from_utf8_lossy(out);
        ensure!(
            text.contains(r#""status":200"#),
            "rate-limited-api did not answer 200: {text}"
        );
        Ok(())
    },
};

/// `plugins/product-cache`: a cache hit (one `kv.get`; the untimed first
/// call fills it).
pub static PYTHON: Example = Example {
    name: "product-cache",
    language: "python",
    operation: "cache-aside hit: kv get of a warm product (1 round trip)",
    input: r#"{"product":"bench"}"#,
    manifest: r#"
[{p}.settings]
ttl-ms = 3600000
[{p}.quotas]
redis-rate = 0
"#,
    check: |out| {
        let text = String::from_utf8_lossy(out);
        ensure!(
            text.contains(r#""source": "cache""#),
            "product-cache did not answer from the cache: {text}"
        );
        Ok(())
    },
};

impl Example {
    fn plugin(&self, reuse: bool) -> String {
        format!(
            "{}-{}",
            self.language,
            if reuse { "reuse" } else { "fresh" }
        )
    }
}

/// An example with its built component.
#[derive(Debug, Clone)]
pub struct Built {
    pub example: &'static Example,
    pub wasm: PathBuf,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReuseRow {
    pub plugin: &'static str,
    pub language: &'static str,
    pub operation: &'static str,
    /// Invocations per instance on the reuse side.
    pub reuse_instances: u32,
    /// A fresh instance per call (`reuse-instances = 0`).
    pub fresh: Stats,
    /// `reuse-instances =` [`REUSE`]: one call in 16 instantiates.
    pub reuse: Stats,
    /// Instantiation alone (no call), as in the overhead table.
    pub instantiate: Stats,
    /// Fresh p50 / reuse p50.
    pub ratio: f64,
}

/// The manifest's tables for every example: a fresh and a reusing plugin.
pub fn manifest(examples: &[Built]) -> String {
    let mut s = String::new();
    for b in examples {
        for (reuse, n) in [(false, 0), (true, REUSE)] {
            let table = format!("plugins.{}", b.example.plugin(reuse));
            s.push_str(&format!(
                "\n[{table}]\nwasm = {:?}\nreuse-instances = {n}\n{}",
                b.wasm,
                b.example.manifest.replace("{p}", &table)
            ));
        }
    }
    s
}

/// Measures every example loaded from [`manifest`]: `plan.rounds`
/// alternating fresh/reuse runs at concurrency 1, after one untimed call
/// each (it fills what the hot path reads), and instantiation alone.
pub async fn measure(
    host: &Arc<Host>,
    plan: &Plan,
    examples: &[Built],
) -> anyhow::Result<Vec<ReuseRow>> {
    let mut rows = Vec::new();
    for b in examples {
        let e = b.example;
        eprintln!("redloom-bench: instance reuse, {} ({})", e.name, e.language);
        let fresh = PluginName::parse(&e.plugin(false))?;
        let reuse = PluginName::parse(&e.plugin(true))?;
        for name in [&fresh, &reuse] {
            host.invoke(name, e.input.as_bytes())
                .await
                .with_context(|| format!("{name}: the first invocation"))?;
        }
        let (mut f, mut r) = (Samples::default(), Samples::default());
        for _ in 0..plan.rounds {
            f.merge(measure::run(plan.at(1), call(host, &fresh, e)).await?);
            r.merge(measure::run(plan.at(1), call(host, &reuse, e)).await?);
        }
        let plugin = host.plugin(&fresh).context("the fresh plugin is loaded")?;
        let instantiate = measure::repeat(100, plan.load.duration, || async {
            plugin.probe(None).await?;
            Ok(())
        })
        .await?
        .stats();
        let (fresh, reuse) = (f.stats(), r.stats());
        rows.push(ReuseRow {
            plugin: e.name,
            language: e.language,
            operation: e.operation,
            reuse_instances: REUSE,
            fresh,
            reuse,
            instantiate,
            ratio: fresh.p50_us / reuse.p50_us,
        });
    }
    Ok(rows)
}

fn call(host: &Arc<Host>, name: &PluginName, e: &'static Example) -> measure::Op {
    let (host, name) = (host.clone(), name.clone());
    op(move |_, _| {
        let (host, name) = (host.clone(), name.clone());
        async move {
            let out = host.invoke(&name, e.input.as_bytes()).await?;
            (e.check)(&out).with_context(|| format!("{name}"))
        }
    })
}
