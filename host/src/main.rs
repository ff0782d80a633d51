//! The `redloom` binary; everything lives in the library (see `cli.rs`).

/// mimalloc rather than glibc's malloc: an invocation allocates and frees
/// on different tokio workers, and glibc's arenas made that ~15 % of the
/// CPU samples of a benchmark run, with lock waits (docs/bench/README.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    std::process::ExitCode::from(redloom::cli::main())
}
