//! `cargo run --manifest-path tools/Cargo.toml -- [--wit DIR] [--out FILE] SOURCE.c...`
//! builds the C plugin into a component; see `c_plugin.rs`.

use std::process::ExitCode;

mod c_plugin;

fn main() -> ExitCode {
    let built = c_plugin::Options::from_args(std::env::args_os().skip(1))
        .and_then(|options| c_plugin::build(&options));
    match built {
        Ok(built) => {
            eprintln!("built {} ({} bytes)", built.component.display(), built.size);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
