//! The report: JSON (`report.json`), a Markdown table (`report.md`, also
//! printed) and an SVG chart of plugin vs native throughput
//! (`throughput.svg`, drawn by hand: a few rectangles and labels need no
//! plotting library).

use std::fmt::Write as _;

use serde::Serialize;

use crate::coldstart::ColdStart;
use crate::measure::Stats;
use crate::memory::Memory;

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
    pub cold_start: Vec<ColdStart>,
    /// Cold-start subjects that were not measured, with the reason.
    pub cold_start_skipped: Vec<String>,
    pub memory: Memory,
    pub scaling: Vec<ScalingRow>,
    pub targets: Vec<Target>,
    pub total_seconds: f64,
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
        "Patterns: plugin (bench-probe through Host::invoke, fresh instance per call) vs native Rust (same redis-rs calls and Lua scripts), {} ms × {} rounds per side\n",
        r.settings.duration_ms, r.settings.rounds
    );
    let _ = writeln!(
        s,
        "| pattern | conc. | plugin ops/s | native ops/s | ratio | plugin p50 | native p50 | plugin p99 | native p99 |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for p in &r.patterns {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {:.2} | {} | {} | {} | {} |",
            p.pattern,
            p.concurrency,
            ops(p.plugin.throughput),
            ops(p.native.throughput),
            p.ratio,
            us(p.plugin.p50_us),
            us(p.native.p50_us),
            us(p.plugin.p99_us),
            us(p.native.p99_us)
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
        ("fresh instance per call", &o.fresh),
        ("reused instance", &o.reuse),
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
    let _ = writeln!(s, "\nTargets (issue 12)\n");
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

/// Horizontal bars: plugin and native throughput per pattern and
/// concurrency, each group scaled to its own native throughput (so fast
/// and slow patterns are equally readable), with the ops/s printed.
pub fn svg(r: &Report) -> String {
    const W: f64 = 820.0;
    const LABEL: f64 = 230.0;
    const BAR: f64 = 14.0;
    const GROUP: f64 = 2.0 * BAR + 14.0;
    const TOP: f64 = 64.0;
    let width = W - LABEL - 150.0;
    let height = TOP + GROUP * r.patterns.len() as f64 + 30.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{height}" viewBox="0 0 {W} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="10" y="20" font-size="15" font-weight="bold">redloom: plugin vs native Rust throughput per pattern (ops/s)</text>"#
    );
    let _ = writeln!(
        s,
        r##"<text x="10" y="38" fill="#555">{} build, {} mode, {}; bars scaled to each row's native throughput</text>"##,
        r.machine.build,
        r.mode,
        escape(&r.machine.date)
    );
    let _ = writeln!(
        s,
        r##"<rect x="{LABEL}" y="46" width="12" height="10" fill="#d9622b"/><text x="{}" y="55">plugin</text><rect x="{}" y="46" width="12" height="10" fill="#3b6ea5"/><text x="{}" y="55">native</text>"##,
        LABEL + 16.0,
        LABEL + 70.0,
        LABEL + 86.0
    );
    for (i, p) in r.patterns.iter().enumerate() {
        let y = TOP + GROUP * i as f64;
        let scale = width / p.native.throughput.max(p.plugin.throughput).max(1.0);
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="end">{} @{} (×{:.2})</text>"#,
            LABEL - 8.0,
            y + BAR + 4.0,
            p.pattern,
            p.concurrency,
            p.ratio
        );
        for (j, (v, color)) in [
            (p.plugin.throughput, "#d9622b"),
            (p.native.throughput, "#3b6ea5"),
        ]
        .into_iter()
        .enumerate()
        {
            let by = y + BAR * j as f64;
            let w = (v * scale).max(1.0);
            let _ = writeln!(
                s,
                r#"<rect x="{LABEL}" y="{by}" width="{w:.1}" height="{}" fill="{color}"/><text x="{:.1}" y="{}">{}</text>"#,
                BAR - 2.0,
                LABEL + w + 4.0,
                by + BAR - 3.0,
                ops(v)
            );
        }
    }
    let _ = writeln!(s, "</svg>");
    s
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
