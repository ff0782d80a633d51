//! Links `src/table.ll` (`table.grow`, which Rust cannot express) into the
//! guest, and makes the function table growable so a grow within the
//! plugin's `table-elements` quota succeeds. Only for wasm: a native build
//! (`cargo clippy --workspace`) has no function table to grow.

fn main() {
    println!("cargo:rerun-if-changed=src/table.ll");
    if std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() != Ok("wasm32") {
        return;
    }
    cc::Build::new()
        .compiler("clang")
        .file("src/table.ll")
        .flag("-mreference-types")
        // clang 14 cannot select `table.grow` without optimisation.
        .opt_level(2)
        // The IR names no target: clang sets the one cargo builds for, and
        // would warn that it overrides the module's default.
        .flag("-Wno-override-module")
        .compile("hostile_table");
    println!("cargo:rustc-link-arg=--growable-table");
}
