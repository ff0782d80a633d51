//! The benchmark program (`bench/`, `redloom-bench`): its quick mode runs
//! every benchmark against a private Redis of its own and writes a complete
//! report with sane values.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use redloom_tests::{nested_cargo, plugin, run_with_timeout, target_dir, workspace_root};
use serde_json::Value;

/// Patterns and concurrencies of the side-by-side table.
const PATTERNS: [&str; 8] = [
    "cache-hit",
    "cache-hit-near",
    "cache-miss-fill",
    "limiter-gcra",
    "lock-acquire-release",
    "queue-enqueue",
    "queue-end-to-end",
    "publish",
];
const PATTERN_CONCURRENCY: [u64; 2] = [1, 32];
const SCALING_CONCURRENCY: [u64; 4] = [1, 8, 32, 128];
const LOADED: [u64; 3] = [1, 10, 100];
/// The heavy-runtime examples: measured or reported skipped, in the
/// cold-start and instance-reuse sections.
const HEAVY: [&str; 2] = ["javascript", "python"];

/// `redloom-bench --quick` finishes in time, and its `report.json` has every
/// section and row: throughput above zero, p50 ≤ p99, finite ratios.
#[test]
fn quick_run_reports_every_section() {
    let wasm_dir = plugin("bench-probe").parent().unwrap().to_path_buf();
    let built = run_with_timeout(
        // `--workspace` and `nested_cargo`, as for the `redloom` binary
        // (`redloom_bin`): nothing rebuilt in another configuration.
        nested_cargo(
            Command::new(env!("CARGO"))
                .current_dir(workspace_root())
                .args(["build", "--quiet", "--workspace", "--bin", "redloom-bench"]),
        ),
        Duration::from_secs(900),
    );
    assert!(
        built.status.success(),
        "building redloom-bench failed:\n{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let out = tempfile::tempdir().unwrap();
    let run = run_with_timeout(
        Command::new(target_dir().join("debug/redloom-bench"))
            .arg("--quick")
            .arg("--out")
            .arg(out.path())
            .arg("--wasm-dir")
            .arg(&wasm_dir),
        Duration::from_secs(120),
    );
    assert!(
        run.status.success(),
        "redloom-bench --quick failed ({})\nstdout: {}\nstderr: {}",
        run.status,
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        stdout.contains("| cache-hit | 32 |"),
        "the table is printed:\n{stdout}"
    );
    for file in ["report.md", "throughput.svg"] {
        let text = std::fs::read_to_string(out.path().join(file)).unwrap();
        assert!(!text.is_empty(), "{file} is empty");
    }
    let report = read_report(out.path());
    if let Err(problems) = check_report(&report) {
        panic!(
            "report.json is incomplete or insane:\n{}\n{report:#}",
            problems.join("\n")
        );
    }
}

/// The committed run (`docs/bench/report.json`, quoted in the README) has
/// the shape and sanity the current benchmark writes, instance reuse
/// included.
#[test]
fn committed_report_is_complete() {
    let report = read_report(&workspace_root().join("docs/bench"));
    if let Err(problems) = check_report(&report) {
        panic!(
            "docs/bench/report.json is incomplete or stale (rerun `scripts/bench --out docs/bench`):\n{}",
            problems.join("\n")
        );
    }
    assert_eq!(report["mode"], "full", "the committed run is a full one");
}

/// The checker itself rejects a report with a missing row, a zero
/// throughput, p50 above p99, a ratio that is not a number or reuse that is
/// not faster — so the test above can fail.
#[test]
fn checker_rejects_broken_reports() {
    let good = sample_report();
    assert_eq!(check_report(&good), Ok(()), "the sample report is sane");
    type Breakage = (&'static str, fn(&mut Value));
    let breakages: [Breakage; 10] = [
        ("a missing pattern row", |r| {
            r["patterns"].as_array_mut().unwrap().pop();
        }),
        ("zero throughput", |r| {
            r["patterns"][0]["plugin"]["throughput"] = 0.0.into()
        }),
        ("p50 above p99", |r| {
            r["scaling"][1]["native"]["p50_us"] = 1e9.into()
        }),
        ("a NaN ratio (serialised as null)", |r| {
            r["patterns"][3]["ratio"] = Value::Null
        }),
        ("no memory rows", |r| {
            r["memory"]["loaded"] = Value::Array(vec![])
        }),
        ("no Rust instance-reuse row", |r| {
            r["instance_reuse"] = Value::Array(vec![])
        }),
        ("reuse not faster than a fresh instance", |r| {
            r["instance_reuse"][0]["ratio"] = 0.9.into()
        }),
        ("no noisy-neighbour row", |r| {
            r.as_object_mut().unwrap().remove("fairness");
        }),
        ("a hog that was never served", |r| {
            r["fairness"]["hog_served"] = 0.into()
        }),
        ("python neither measured nor skipped for reuse", |r| {
            r["instance_reuse_skipped"].as_array_mut().unwrap().pop();
        }),
    ];
    for (what, breakage) in breakages {
        let mut r = good.clone();
        breakage(&mut r);
        assert!(check_report(&r).is_err(), "{what} was not caught");
    }
}

fn read_report(dir: &Path) -> Value {
    let text = std::fs::read_to_string(dir.join("report.json")).expect("report.json written");
    serde_json::from_str(&text).expect("report.json is JSON")
}

/// Every problem with `r`, or `Ok`.
fn check_report(r: &Value) -> Result<(), Vec<String>> {
    let mut problems = Vec::new();
    let mut bad = |what: String| problems.push(what);

    if r["schema"] != 1 {
        bad(format!("schema is {}", r["schema"]));
    }
    for section in [
        "machine",
        "settings",
        "patterns",
        "overhead",
        "instance_reuse",
        "cold_start",
        "memory",
        "scaling",
        "fairness",
        "targets",
    ] {
        if r[section].is_null() {
            bad(format!("no `{section}` section"));
        }
    }

    let patterns = r["patterns"].as_array().cloned().unwrap_or_default();
    if patterns.len() != PATTERNS.len() * PATTERN_CONCURRENCY.len() {
        bad(format!("{} pattern rows", patterns.len()));
    }
    for name in PATTERNS {
        for c in PATTERN_CONCURRENCY {
            let row = patterns
                .iter()
                .find(|p| p["pattern"] == name && p["concurrency"] == c);
            let Some(row) = row else {
                bad(format!("no {name} row at concurrency {c}"));
                continue;
            };
            for side in ["plugin", "native"] {
                check_stats(&format!("{name}@{c} {side}"), &row[side], &mut bad);
            }
            check_ratio(&format!("{name}@{c} ratio"), &row["ratio"], &mut bad);
            check_ratio(
                &format!("{name}@{c} p50_ratio"),
                &row["p50_ratio"],
                &mut bad,
            );
        }
    }

    let f = &r["fairness"];
    for phase in ["alone", "loaded"] {
        let at = |p: &str| f[format!("{phase}_{p}_ms")].as_f64().unwrap_or(f64::NAN);
        let (p50, p99, max) = (at("p50"), at("p99"), at("max"));
        if !(p50 > 0.0 && p50 <= p99 && p99 <= max) {
            bad(format!(
                "noisy neighbour {phase}: p50 {p50}, p99 {p99}, max {max}"
            ));
        }
    }
    if f["victim_requests"].as_u64().unwrap_or(0) == 0 || f["hog_served"].as_u64().unwrap_or(0) == 0
    {
        bad(format!(
            "noisy neighbour: no victim or no hog request served: {f}"
        ));
    }

    let o = &r["overhead"];
    for what in ["fresh", "reuse", "instantiate"] {
        check_stats(&format!("overhead {what}"), &o[what], &mut bad);
    }
    check_ratio("overhead call_us", &o["call_us"], &mut bad);
    if o["fresh"]["p50_us"].as_f64() <= o["reuse"]["p50_us"].as_f64() {
        bad("a fresh instance per call is not slower than a reused one".into());
    }

    let reuse = r["instance_reuse"].as_array().cloned().unwrap_or_default();
    if !reuse.iter().any(|x| x["language"] == "rust") {
        bad("no Rust instance-reuse row".into());
    }
    for x in &reuse {
        let what = format!("instance reuse {}", x["language"]);
        for side in ["fresh", "reuse", "instantiate"] {
            check_stats(&format!("{what} {side}"), &x[side], &mut bad);
        }
        if x["reuse_instances"].as_u64().unwrap_or(0) < 2 {
            bad(format!(
                "{what}: reuse_instances is {}",
                x["reuse_instances"]
            ));
        }
        // A reused instance skips instantiation: it must be faster.
        let ratio = x["ratio"].as_f64().filter(|v| v.is_finite());
        if !ratio.is_some_and(|v| v > 1.0) {
            bad(format!("{what}: fresh/reuse p50 ratio is {}", x["ratio"]));
        }
    }
    check_heavy(r, "instance_reuse", &mut bad);

    let cold = r["cold_start"].as_array().cloned().unwrap_or_default();
    match cold.iter().find(|c| c["language"] == "rust") {
        None => bad("no Rust cold-start row".into()),
        Some(c) => {
            let source = c["source_ms"].as_f64().unwrap_or(0.0);
            let cached = c["cached_ms"].as_f64().unwrap_or(0.0);
            if !(cached > 0.0 && source > cached) {
                bad(format!(
                    "cold start: source {source} ms should exceed cached {cached} ms > 0"
                ));
            }
            check_ratio(
                "cold start first instance",
                &c["first_instance_ms"],
                &mut bad,
            );
        }
    }
    check_heavy(r, "cold_start", &mut bad);

    let m = &r["memory"];
    let baseline = m["baseline_mib"].as_f64().unwrap_or(0.0);
    if baseline <= 0.0 {
        bad("memory baseline is not positive".into());
    }
    let loaded = m["loaded"].as_array().cloned().unwrap_or_default();
    for n in LOADED {
        match loaded.iter().find(|l| l["plugins"] == n) {
            None => bad(format!("no memory row for {n} plugins")),
            Some(l) => {
                if l["rss_mib"].as_f64().unwrap_or(0.0) < baseline {
                    bad(format!("RSS with {n} plugins is below the baseline"));
                }
                if !l["per_plugin_kib"].as_f64().is_some_and(f64::is_finite) {
                    bad(format!("per-plugin memory for {n} plugins is not a number"));
                }
            }
        }
    }
    let f = &m["in_flight"];
    if f["instances"].as_u64().unwrap_or(0) == 0
        || !f["per_instance_kib"].as_f64().is_some_and(f64::is_finite)
    {
        bad(format!("in-flight memory: {f}"));
    }

    let scaling = r["scaling"].as_array().cloned().unwrap_or_default();
    for c in SCALING_CONCURRENCY {
        match scaling.iter().find(|s| s["concurrency"] == c) {
            None => bad(format!("no scaling row at concurrency {c}")),
            Some(s) => {
                check_stats(&format!("scaling@{c} plugin"), &s["plugin"], &mut bad);
                check_stats(&format!("scaling@{c} native"), &s["native"], &mut bad);
                check_ratio(&format!("scaling@{c} ratio"), &s["ratio"], &mut bad);
            }
        }
    }

    let targets = r["targets"].as_array().cloned().unwrap_or_default();
    if targets.len() < patterns.len() + 2 {
        bad(format!("{} targets", targets.len()));
    }
    for t in &targets {
        if !t["met"].is_boolean() || !t["value"].as_f64().is_some_and(f64::is_finite) {
            bad(format!("target {t}"));
        }
    }

    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

/// Each of [`HEAVY`] has a row in `section` or is listed in
/// `<section>_skipped`.
fn check_heavy(r: &Value, section: &str, bad: &mut impl FnMut(String)) {
    for language in HEAVY {
        let measured = r[section]
            .as_array()
            .is_some_and(|rows| rows.iter().any(|x| x["language"] == language));
        let skipped = r[format!("{section}_skipped")].as_array().is_some_and(|s| {
            s.iter()
                .any(|s| s.as_str().unwrap_or("").contains(language))
        });
        if !measured && !skipped {
            bad(format!(
                "{section}: {language} neither measured nor reported skipped"
            ));
        }
    }
}

/// Throughput and operations above zero, 0 < p50 ≤ p99.
fn check_stats(what: &str, s: &Value, bad: &mut impl FnMut(String)) {
    let get = |k: &str| s[k].as_f64().filter(|v| v.is_finite());
    match (get("throughput"), get("ops"), get("p50_us"), get("p99_us")) {
        (Some(t), Some(n), Some(p50), Some(p99))
            if t > 0.0 && n > 0.0 && p50 > 0.0 && p50 <= p99 => {}
        _ => bad(format!("{what}: {s}")),
    }
}

/// A finite number above zero.
fn check_ratio(what: &str, v: &Value, bad: &mut impl FnMut(String)) {
    if !v.as_f64().is_some_and(|v| v.is_finite() && v > 0.0) {
        bad(format!("{what} is {v}"));
    }
}

/// A minimal sane report in the shape `redloom-bench` writes.
fn sample_report() -> Value {
    let stats = serde_json::json!({"ops": 10, "throughput": 100.0, "p50_us": 50.0, "p99_us": 90.0, "mean_us": 55.0});
    let fresh = serde_json::json!({"ops": 10, "throughput": 100.0, "p50_us": 20.0, "p99_us": 30.0, "mean_us": 21.0});
    let reuse = serde_json::json!({"ops": 10, "throughput": 100.0, "p50_us": 2.0, "p99_us": 3.0, "mean_us": 2.1});
    let mut patterns = Vec::new();
    let mut targets = Vec::new();
    for name in PATTERNS {
        for c in PATTERN_CONCURRENCY {
            patterns.push(serde_json::json!({
                "pattern": name, "concurrency": c, "plugin": stats, "native": stats,
                "ratio": 1.0, "p50_ratio": 1.0
            }));
            targets
                .push(serde_json::json!({"target": name, "value": 1.0, "limit": 0.9, "met": true}));
        }
    }
    targets.push(serde_json::json!({"target": "fresh", "value": 20.0, "limit": 20.0, "met": true}));
    targets.push(serde_json::json!({"target": "reuse", "value": 2.0, "limit": 2.0, "met": true}));
    serde_json::json!({
        "schema": 1,
        "mode": "quick",
        "machine": {"cores": 2},
        "settings": {},
        "patterns": patterns,
        "overhead": {"fresh": fresh, "reuse": reuse, "instantiate": stats, "call_us": 2.0},
        "instance_reuse": [{"plugin": "bench-probe", "language": "rust", "operation": "no-op",
                            "reuse_instances": 16, "fresh": fresh, "reuse": reuse,
                            "instantiate": stats, "ratio": 10.0}],
        "instance_reuse_skipped": ["rate-limited-api (javascript): quick mode",
                                   "product-cache (python): quick mode"],
        "cold_start": [{"plugin": "bench-probe", "language": "rust", "size_bytes": 1,
                        "source_ms": 100.0, "cached_ms": 2.0, "first_instance_ms": 0.1}],
        "cold_start_skipped": ["rate-limited-api (javascript): quick mode",
                               "product-cache (python): quick mode"],
        "memory": {"baseline_mib": 30.0,
                   "loaded": LOADED.iter().map(|n| serde_json::json!({"plugins": n, "rss_mib": 40.0, "delta_mib": 10.0, "per_plugin_kib": 100.0})).collect::<Vec<_>>(),
                   "in_flight": {"instances": 8, "before_mib": 40.0, "during_mib": 41.0, "per_instance_kib": 128.0}},
        "scaling": SCALING_CONCURRENCY.iter().map(|c| serde_json::json!({"concurrency": c, "plugin": stats, "native": stats, "ratio": 1.0})).collect::<Vec<_>>(),
        "fairness": {"hog_clients": 50, "victim_requests": 20,
                     "alone_p50_ms": 1.0, "alone_p99_ms": 2.0, "alone_max_ms": 2.0,
                     "loaded_p50_ms": 1.5, "loaded_p99_ms": 3.0, "loaded_max_ms": 4.0,
                     "hog_served": 100, "hog_rejected": 10, "victim_failures": 0},
        "targets": targets,
    })
}
