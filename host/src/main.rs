//! The `redloom` binary; everything lives in the library (see `cli.rs`).

fn main() -> std::process::ExitCode {
    std::process::ExitCode::from(redloom::cli::main())
}
