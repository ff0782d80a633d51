//! `cargo xtask TASK`: build steps that are easier to get right in Rust than
//! in shell (see <https://github.com/matklad/cargo-xtask>).
//!
//! | task | what |
//! |---|---|
//! | `build-c ARGS` | builds a C plugin into a component (`plugins/hit-counter/build` calls it); `cargo xtask build-c --help` |
//! | `flamegraph PERF_SCRIPT SVG [TITLE]` | folds the stacks of `perf script` output and draws them as a flame graph (`scripts/profile` calls it) |

use std::ffi::OsString;
use std::process::ExitCode;

/// Shared with the build tool that `redloom new --lang c` writes into a C
/// project, so the scaffolded tool is this exact code.
#[path = "../../host/templates/c/tools/c_plugin.rs"]
mod c_plugin;

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let task = args.next();
    let result = match task.as_ref().and_then(|t| t.to_str()) {
        Some("build-c") => build_c(args.collect()),
        Some("flamegraph") => flamegraph(args.collect()),
        _ => Err(anyhow::anyhow!(
            "usage: cargo xtask build-c [ARGS...]   (cargo xtask build-c --help)\n       \
             cargo xtask flamegraph PERF_SCRIPT SVG [TITLE]"
        )),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn build_c(args: Vec<OsString>) -> anyhow::Result<()> {
    let options = c_plugin::Options::from_args(args)?;
    let built = c_plugin::build(&options)?;
    eprintln!("built {} ({} bytes)", built.component.display(), built.size);
    Ok(())
}

/// `perf script` output → folded stacks → an SVG flame graph.
fn flamegraph(args: Vec<OsString>) -> anyhow::Result<()> {
    use anyhow::Context as _;
    use inferno::collapse::Collapse;
    let [input, output, rest @ ..] = &args[..] else {
        anyhow::bail!("usage: cargo xtask flamegraph PERF_SCRIPT SVG [TITLE]");
    };
    let title = rest
        .first()
        .map(|t| t.to_string_lossy().into_owned())
        .unwrap_or_else(|| "redloom".into());
    let script = std::fs::File::open(input)
        .with_context(|| format!("opening {}", input.to_string_lossy()))?;
    let mut folded = Vec::new();
    inferno::collapse::perf::Folder::default()
        .collapse(std::io::BufReader::new(script), &mut folded)
        .context("folding the perf stacks")?;
    let mut options = inferno::flamegraph::Options::default();
    options.title = title;
    options.count_name = "samples".into();
    let svg = std::fs::File::create(output)
        .with_context(|| format!("creating {}", output.to_string_lossy()))?;
    inferno::flamegraph::from_reader(&mut options, &folded[..], std::io::BufWriter::new(svg))
        .context("drawing the flame graph")?;
    Ok(())
}
