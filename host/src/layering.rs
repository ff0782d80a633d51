//! The host's top-level modules form layers, and a module may use only the
//! layers below its own: no import cycle, so each module can be read (and
//! tested) with only what is under it. The test here reads every source
//! file and fails on a backward use, naming the file and line.
//!
//! A use is any `crate::MODULE` outside a comment (a doc link is not a
//! dependency). A new top-level module must be given a layer here.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Lowest first. Modules of one layer do not use each other.
const LAYERS: &[&[&str]] = &[
    // Leaves: no other module of the crate.
    &["files", "handler", "units", "quota"],
    // Counters; rate-limit policies; the key namespace; Redis (the only
    // module that talks to it).
    &["stats", "limiter"],
    // The log format and the access log (uses the counters' outcomes);
    // plugins from OCI registries (uses `files`).
    &["logging", "oci"],
    &["namespace"],
    &["redis"],
    // The generated WIT bindings, above everything that must not see
    // generated types (quotas, counters, Redis), below what wires them.
    &["bindings"],
    // The capabilities: the edge between the guest's types and the host's.
    &["caps"],
    // The configuration validates capability settings.
    &["config"],
    &["store", "subscriptions"],
    &["engine"],
    &["plugin"],
    &["host"],
    // What runs on a host: measurements, triggers, `serve`.
    &["sampler"],
    &["triggers"],
    &["serve"],
    // The command line.
    &["scaffold"],
    &["cli"],
];

/// Re-exports at the crate root: `crate::near_cache` is `caps::near_cache`.
const ALIASES: &[(&str, &str)] = &[("near_cache", "caps")];

/// Files that are not layered: the crate root, the binary, this test.
const NOT_LAYERED: &[&str] = &["lib", "main", "layering"];

/// A backward (or unknown) use: `file:line: module uses other`.
fn backward_uses(files: &BTreeMap<String, Vec<(PathBuf, String)>>) -> Vec<String> {
    let layer_of = |m: &str| LAYERS.iter().position(|l| l.contains(&m));
    let mut found = Vec::new();
    for (module, sources) in files {
        let Some(own) = layer_of(module) else {
            found.push(format!(
                "{module}: a top-level module without a layer in layering.rs"
            ));
            continue;
        };
        for (path, text) in sources {
            for (n, line) in text.lines().enumerate() {
                if line.trim_start().starts_with("//") {
                    continue;
                }
                for used in line.split("crate::").skip(1) {
                    let name: String = used
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    let name = ALIASES
                        .iter()
                        .find(|(a, _)| *a == name)
                        .map_or(name.as_str(), |(_, m)| m);
                    if name == module {
                        continue;
                    }
                    if let Some(theirs) = layer_of(name)
                        && theirs >= own
                    {
                        found.push(format!(
                            "{}:{}: {module} (layer {own}) uses {name} (layer {theirs})",
                            path.display(),
                            n + 1
                        ));
                    }
                }
            }
        }
    }
    found
}

/// Every `.rs` file under `src`, by the top-level module it belongs to.
fn sources(src: &Path) -> BTreeMap<String, Vec<(PathBuf, String)>> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    let mut files = Vec::new();
    walk(src, &mut files);
    let mut by_module: BTreeMap<String, Vec<(PathBuf, String)>> = BTreeMap::new();
    for p in files {
        let rel = p.strip_prefix(src).unwrap();
        let first = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy();
        let module = first.trim_end_matches(".rs").to_string();
        if NOT_LAYERED.contains(&module.as_str()) && rel.components().count() == 1 {
            continue;
        }
        let text = std::fs::read_to_string(&p).unwrap();
        by_module
            .entry(module)
            .or_default()
            .push((rel.to_path_buf(), text));
    }
    by_module
}

/// No module uses its own layer or one above it.
#[test]
fn modules_use_only_the_layers_below() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let files = sources(&src);
    assert!(files.contains_key("plugin") && files.contains_key("caps"));
    let backward = backward_uses(&files);
    assert!(
        backward.is_empty(),
        "backward uses between the host's modules (see layering.rs):\n{}",
        backward.join("\n")
    );
}

/// The check sees a backward use, an unknown module, and not a doc link.
#[test]
fn a_backward_use_is_found() {
    let file = |m: &str, text: &str| (m.to_string(), vec![(PathBuf::from(m), text.to_string())]);
    let files = BTreeMap::from([
        file(
            "redis",
            "/// see [`crate::plugin`]\nuse crate::namespace::Namespace;\n",
        ),
        file(
            "stats",
            "fn f() { crate::near_cache::x(); crate::quota::y(); }\n",
        ),
        file("brand_new", "\n"),
    ]);
    let found = backward_uses(&files);
    assert_eq!(found.len(), 2, "{found:?}");
    assert!(found[0].starts_with("brand_new: "), "{found:?}");
    assert!(
        found[1].starts_with("stats:1: stats (layer 1) uses caps"),
        "{found:?}"
    );
}
