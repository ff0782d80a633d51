//! The report: JSON (`report.json`), a Markdown table (`report.md`, also
//! printed) and an SVG chart of plugin vs native throughput
//! (`throughput.svg`, drawn with plotters).

use std::fmt::Write as _;

use serde::Serialize;

use crate::coldstart::ColdStart;
use crate::measure::Stats;
use crate::memory::Memory;
use crate::reuse::ReuseRow;

/// Bump when a field changes meaning.
pub const SCHEMA: u32 = 1;

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub schema: u32,
    /// `full` or `quick`.
    pub mode: &'static str,
    pub machine: Machine,
    pub settings: Settings,
    pub patterns: Vec<PatternRow>,
    pub overhead: Overhead,
    /// Fresh instance per call vs `reuse-instances = 16`, per language.
    pub instance_reuse: Vec<ReuseRow>,
    /// Instance-reuse examples that were not measured, with the reason.
    pub instance_reuse_skipped: Vec<String>,
    pub cold_start: Vec<ColdStart>,
    /// Cold-start subjects that were not measured, with the reason.
    pub cold_start_skipped: Vec<String>,
    pub memory: Memory,
    pub scaling: Vec<ScalingRow>,
    /// `redis-benchmark` GET and EVALSHA against the same server.
    pub redis_benchmark: Vec<RedisBenchmarkRow>,
    /// The noisy neighbour: a light plugin's latency beside a CPU hog.
    pub fairness: crate::fairness::Fairness,
    pub targets: Vec<Target>,
    pub total_seconds: f64,
}

/// One `redis-benchmark` run.
#[derive(Debug, Clone, Serialize)]
pub struct RedisBenchmarkRow {
    pub command: String,
    pub concurrency: usize,
    pub throughput: f64,
    pub p50_us: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub date: String,
    pub cpu: String,
    pub cores: usize,
    pub memory_gib: f64,
    pub kernel: String,
    pub redis: String,
    /// `release` or `debug`: how this benchmark was built.
    pub build: &'static str,
    /// `/proc/loadavg` before and after: other work on the machine.
    pub loadavg_before: String,
    pub loadavg_after: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    pub warmup_ms: u64,
    pub duration_ms: u64,
    /// Alternating native/plugin runs per row; the row merges them.
    pub rounds: usize,
    pub tokio_workers: usize,
    /// The engine's pooling-allocator keep-resident settings (engine.rs).
    pub pool: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct PatternRow {
    pub pattern: &'static str,
    pub operation: &'static str,
    pub concurrency: usize,
    pub plugin: Stats,
    pub native: Stats,
    /// Plugin throughput / native throughput.
    pub ratio: f64,
    /// Plugin p50 / native p50.
    pub p50_ratio: f64,
    /// The plugin with `isolation = "per-call"` (the row's `plugin` is
    /// pooled, the default); none for the queue end to end.
    pub per_call: Option<Stats>,
}

impl PatternRow {
    /// Host CPU per invocation above the native path, µs.
    pub fn host_cpu_us(&self) -> f64 {
        self.plugin.cpu_us_per_op - self.native.cpu_us_per_op
    }
}

impl PatternRow {
    pub fn new(
        pattern: &'static str,
        operation: &'static str,
        concurrency: usize,
        plugin: Stats,
        native: Stats,
    ) -> PatternRow {
        PatternRow {
            pattern,
            operation,
            concurrency,
            plugin,
            native,
            ratio: plugin.throughput / native.throughput,
            p50_ratio: plugin.p50_us / native.p50_us,
            per_call: None,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Overhead {
    /// `noop` with a fresh instance per call (`reuse-instances = 0`).
    pub fresh: Stats,
    /// `noop` on a reused instance (`reuse-instances = 1000000`).
    pub reuse: Stats,
    /// Instantiation alone (a store, the instance, its handler exports).
    pub instantiate: Stats,
    /// The call alone: the p50 of `reuse`.
    pub call_us: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ScalingRow {
    pub concurrency: usize,
    pub plugin: Stats,
    pub native: Stats,
    pub ratio: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Target {
    pub target: String,
    pub value: f64,
    pub limit: f64,
    pub met: bool,
}

impl Target {
    pub fn at_least(target: impl Into<String>, value: f64, limit: f64) -> Target {
        Target {
            target: target.into(),
            value,
            limit,
            met: value >= limit,
        }
    }

    pub fn at_most(target: impl Into<String>, value: f64, limit: f64) -> Target {
        Target {
            target: target.into(),
            value,
            limit,
            met: value <= limit,
        }
    }
}

fn ops(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{:.1}k", v / 1000.0)
    } else {
        format!("{v:.0}")
    }
}

fn us(v: f64) -> String {
    if v >= 1000.0 {
        format!("{:.2} ms", v / 1000.0)
    } else {
        format!("{v:.1} µs")
    }
}

/// The whole report as Markdown.
pub fn markdown(r: &Report) -> String {
    let mut s = String::new();
    let m = &r.machine;
    let _ = writeln!(
        s,
        "redloom benchmark ({} mode, {} build), {}\n{} × {}, {:.1} GiB, Linux {}, Redis {}; load average before {} / after {}\n",
        r.mode,
        m.build,
        m.date,
        m.cores,
        m.cpu,
        m.memory_gib,
        m.kernel,
        m.redis,
        m.loadavg_before,
        m.loadavg_after
    );
    let _ = writeln!(
        s,
        "Patterns: plugin (bench-probe through Host::invoke, pooled instances: the default isolation) vs native Rust (same redis-rs calls and Lua scripts), {} ms × {} rounds per side; CPU is this process's per operation (host or native client, plus the load generator), so plugin − native is the host's cost per invocation; per-call: the same plugin with `isolation = \"per-call\"`, in the same rounds\n",
        r.settings.duration_ms, r.settings.rounds
    );
    let _ = writeln!(
        s,
        "| pattern | conc. | plugin ops/s | native ops/s | ratio | plugin p50 | native p50 | plugin p99 | native p99 | plugin CPU/op | native CPU/op | host CPU/op | per-call ops/s | per-call / pooled |"
    );
    let _ = writeln!(
        s,
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for p in &r.patterns {
        let (pc_ops, pc_ratio) = match &p.per_call {
            Some(pc) => (
                ops(pc.throughput),
                format!("{:.2}", pc.throughput / p.plugin.throughput),
            ),
            None => ("–".into(), "–".into()),
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {:.2} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            p.pattern,
            p.concurrency,
            ops(p.plugin.throughput),
            ops(p.native.throughput),
            p.ratio,
            us(p.plugin.p50_us),
            us(p.native.p50_us),
            us(p.plugin.p99_us),
            us(p.native.p99_us),
            us(p.plugin.cpu_us_per_op),
            us(p.native.cpu_us_per_op),
            us(p.host_cpu_us()),
            pc_ops,
            pc_ratio
        );
    }
    let _ = writeln!(
        s,
        "\n`redis-benchmark` against the same server, same run (what Redis alone does on this machine)\n"
    );
    let _ = writeln!(s, "| command | conc. | requests/s | p50 |");
    let _ = writeln!(s, "|---|---:|---:|---:|");
    for x in &r.redis_benchmark {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} |",
            x.command,
            x.concurrency,
            ops(x.throughput),
            us(x.p50_us)
        );
    }
    let o = &r.overhead;
    let _ = writeln!(
        s,
        "\nInvocation overhead (no-op plugin, no Redis, concurrency 1)\n"
    );
    let _ = writeln!(s, "| what | p50 | p99 | mean | calls/s |");
    let _ = writeln!(s, "|---|---:|---:|---:|---:|");
    for (name, st) in [
        ("per-call: fresh instance per call", &o.fresh),
        ("pooled: reused instance", &o.reuse),
        ("instantiate only", &o.instantiate),
    ] {
        let _ = writeln!(
            s,
            "| {name} | {} | {} | {} | {} |",
            us(st.p50_us),
            us(st.p99_us),
            us(st.mean_us),
            ops(st.throughput)
        );
    }
    let _ = writeln!(
        s,
        "\nInstance reuse (concurrency 1; fresh instance per call vs `reuse-instances = {}`, alternating runs; the JavaScript and Python calls include their Redis round trips)\n",
        r.instance_reuse
            .first()
            .map_or(crate::reuse::REUSE, |x| x.reuse_instances)
    );
    let _ = writeln!(
        s,
        "| plugin | language | fresh p50 | reuse p50 | fresh/reuse | fresh calls/s | reuse calls/s | instantiate p50 |"
    );
    let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---:|---:|");
    for x in &r.instance_reuse {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {:.1} | {} | {} | {} |",
            x.plugin,
            x.language,
            us(x.fresh.p50_us),
            us(x.reuse.p50_us),
            x.ratio,
            ops(x.fresh.throughput),
            ops(x.reuse.throughput),
            us(x.instantiate.p50_us)
        );
    }
    for x in &r.instance_reuse {
        let _ = writeln!(s, "\n{} per call: {}", x.plugin, x.operation);
    }
    for skipped in &r.instance_reuse_skipped {
        let _ = writeln!(s, "\nskipped: {skipped}");
    }
    let _ = writeln!(s, "\nCold start (Plugin::load; median)\n");
    let _ = writeln!(
        s,
        "| plugin | language | size | from source wasm | from precompiled cache | first instance |"
    );
    let _ = writeln!(s, "|---|---|---:|---:|---:|---:|");
    for c in &r.cold_start {
        let _ = writeln!(
            s,
            "| {} | {} | {:.0} KiB | {:.1} ms | {:.2} ms | {:.2} ms |",
            c.plugin,
            c.language,
            c.size_bytes as f64 / 1024.0,
            c.source_ms,
            c.cached_ms,
            c.first_instance_ms
        );
    }
    for skipped in &r.cold_start_skipped {
        let _ = writeln!(s, "\nskipped: {skipped}");
    }
    let mem = &r.memory;
    let _ = writeln!(
        s,
        "\nMemory (host RSS, separate process; baseline {:.1} MiB)\n",
        mem.baseline_mib
    );
    let _ = writeln!(
        s,
        "| loaded plugins (idle) | RSS | above baseline | per plugin |"
    );
    let _ = writeln!(s, "|---:|---:|---:|---:|");
    for l in &mem.loaded {
        let _ = writeln!(
            s,
            "| {} | {:.1} MiB | {:.1} MiB | {:.0} KiB |",
            l.plugins, l.rss_mib, l.delta_mib, l.per_plugin_kib
        );
    }
    let f = &mem.in_flight;
    let _ = writeln!(
        s,
        "\n{} instances in flight: {:.1} → {:.1} MiB, {:.0} KiB per instance",
        f.instances, f.before_mib, f.during_mib, f.per_instance_kib
    );
    let _ = writeln!(s, "\nScaling (cache hit, shared multiplexed connection)\n");
    let _ = writeln!(
        s,
        "| concurrency | plugin ops/s | native ops/s | ratio | plugin p50 | native p50 | plugin p99 | native p99 |"
    );
    let _ = writeln!(s, "|---:|---:|---:|---:|---:|---:|---:|---:|");
    for x in &r.scaling {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.2} | {} | {} | {} | {} |",
            x.concurrency,
            ops(x.plugin.throughput),
            ops(x.native.throughput),
            x.ratio,
            us(x.plugin.p50_us),
            us(x.native.p50_us),
            us(x.plugin.p99_us),
            us(x.native.p99_us)
        );
    }
    let f = &r.fairness;
    let _ = writeln!(
        s,
        "\nNoisy neighbour (`redloom serve`; victim: {} req/s of `GET /incr` with one Redis increment each; hog: {} clients in a closed loop of {} ms CPU-bound requests, quotas concurrency 8, queue 64)\n",
        crate::fairness::VICTIM_RATE,
        f.hog_clients,
        crate::fairness::HOG_BURN_MS
    );
    let _ = writeln!(
        s,
        "| victim | requests | p50 | p99 | max | failed | hog served | hog turned away |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|");
    let _ = writeln!(
        s,
        "| alone | | {:.1} ms | {:.1} ms | {:.1} ms | | | |",
        f.alone_p50_ms, f.alone_p99_ms, f.alone_max_ms
    );
    let _ = writeln!(
        s,
        "| beside the hog | {} | {:.1} ms | {:.1} ms | {:.1} ms | {} | {} | {} |",
        f.victim_requests,
        f.loaded_p50_ms,
        f.loaded_p99_ms,
        f.loaded_max_ms,
        f.victim_failures,
        f.hog_served,
        f.hog_rejected
    );
    let _ = writeln!(s, "\nTargets (issues 17 and 18)\n");
    let _ = writeln!(s, "| target | measured | limit | met |");
    let _ = writeln!(s, "|---|---:|---:|---|");
    for t in &r.targets {
        let _ = writeln!(
            s,
            "| {} | {:.2} | {} | {} |",
            t.target,
            t.value,
            t.limit,
            if t.met { "yes" } else { "**no**" }
        );
    }
    s
}

/// Grouped bars: for each pattern and concurrency, native throughput (1.0)
/// and plugin throughput relative to it (the ratio), so fast and slow
/// patterns share one axis; the absolute ops/s are in the category labels.
pub fn svg(r: &Report) -> String {
    use plotters::prelude::*;

    const PLUGIN: RGBColor = RGBColor(0xd9, 0x62, 0x2b);
    const NATIVE: RGBColor = RGBColor(0x3b, 0x6e, 0xa5);
    let rows = &r.patterns;
    let mut out = String::new();
    let drawn = (|| -> Result<(), Box<dyn std::error::Error + '_>> {
        let height = 140 + 34 * rows.len() as u32;
        let root = SVGBackend::with_string(&mut out, (900, height)).into_drawing_area();
        root.fill(&WHITE)?;
        let caption = format!(
            "plugin vs native Rust throughput ({} build, {} mode, {})",
            r.machine.build, r.mode, r.machine.date
        );
        let top = rows
            .iter()
            .map(|p| p.ratio)
            .fold(1.0_f64, f64::max)
            .max(1.0)
            * 1.1;
        let mut chart = ChartBuilder::on(&root)
            .caption(caption, ("sans-serif", 16))
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(330)
            .build_cartesian_2d(0.0..top, 0.0..rows.len() as f64)?;
        chart
            .configure_mesh()
            .disable_y_mesh()
            .x_desc("throughput relative to native (native = 1.0)")
            .y_labels(rows.len() * 2 + 1)
            .y_label_formatter(&|y| {
                // Row i is drawn top-down, in [n-1-i, n-i).
                let slot = y.floor();
                let i = rows.len() as f64 - 1.0 - slot;
                match rows.get(i as usize).filter(|_| i >= 0.0) {
                    Some(p) if (y - slot - 0.5).abs() < 0.26 => format!(
                        "{} @{}: {} vs {}",
                        p.pattern,
                        p.concurrency,
                        ops(p.plugin.throughput),
                        ops(p.native.throughput)
                    ),
                    _ => String::new(),
                }
            })
            .draw()?;
        let bar = |i: usize, lane: f64, value: f64, color: RGBColor| {
            let y = (rows.len() - 1 - i) as f64 + 0.15 + lane * 0.35;
            Rectangle::new([(0.0, y), (value, y + 0.32)], color.filled())
        };
        chart
            .draw_series(
                rows.iter()
                    .enumerate()
                    .map(|(i, _)| bar(i, 1.0, 1.0, NATIVE)),
            )?
            .label("native")
            .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], NATIVE.filled()));
        chart
            .draw_series(
                rows.iter()
                    .enumerate()
                    .map(|(i, p)| bar(i, 0.0, p.ratio, PLUGIN)),
            )?
            .label("plugin")
            .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], PLUGIN.filled()));
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
        root.present()?;
        Ok(())
    })();
    if let Err(e) = drawn {
        return format!("<!-- chart failed: {} -->", escape(&e.to_string()));
    }
    out
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
