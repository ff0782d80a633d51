//! `cargo xtask TASK`: build steps that are easier to get right in Rust than
//! in shell (see <https://github.com/matklad/cargo-xtask>).
//!
//! | task | what |
//! |---|---|
//! | `build-c ARGS` | builds a C plugin into a component (`plugins/hit-counter/build` calls it); `cargo xtask build-c --help` |

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
        _ => Err(anyhow::anyhow!(
            "usage: cargo xtask build-c [ARGS...]   (cargo xtask build-c --help)"
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
