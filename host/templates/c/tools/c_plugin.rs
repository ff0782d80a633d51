//! Builds a redloom plugin written in C into a WebAssembly component.
//!
//! 1. C bindings for the WIT world, from wit-bindgen's C generator
//!    (`<world>.h`, `<world>.c` and `<world>_component_type.o`, which carries
//!    the world's type for step 3);
//! 2. a core wasm module (a WASI preview1 *reactor*: no `main`, exports
//!    called on demand) from `clang --target=wasm32-wasi` with Debian's
//!    `wasi-libc` as the sysroot, linked by `lld`;
//! 3. the component: `wit-component` wraps the module, and the preview1
//!    reactor adapter turns whatever libc needs from WASI into preview2
//!    imports (nothing at all when the plugin does no I/O of its own).
//!
//! The same source is the workspace's `cargo xtask build-c` and the build tool
//! that `redloom new --lang c` puts into a C project (`tools/`), so both are
//! compiled by the test suite. It needs only crates.io and Debian packages —
//! no `cargo install`ed CLI.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use wasi_preview1_component_adapter_provider::{
    WASI_SNAPSHOT_PREVIEW1_ADAPTER_NAME, WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER,
};
use wit_bindgen_core::Files;
use wit_bindgen_core::wit_parser::Resolve;

/// What to build, and with which tools.
#[derive(Debug, Clone)]
pub struct Options {
    /// The WIT package folder (`wit/`).
    pub wit: PathBuf,
    /// The world the plugin targets.
    pub world: String,
    /// The plugin's C sources.
    pub sources: Vec<PathBuf>,
    /// Where the component goes.
    pub out: PathBuf,
    /// Where generated bindings and the core module go.
    pub gen_dir: PathBuf,
    /// The C compiler (`$CC`, default `clang`).
    pub cc: OsString,
    /// The WASI sysroot (`$WASI_SYSROOT`, default `/usr`: Debian's `wasi-libc`
    /// installs `/usr/include/wasm32-wasi` and `/usr/lib/wasm32-wasi`).
    pub sysroot: PathBuf,
    /// Extra compiler flags (after `--`).
    pub cflags: Vec<OsString>,
}

pub const USAGE: &str = "\
usage: build-c [--wit DIR] [--world NAME] [--out FILE] [--gen-dir DIR] SOURCE.c... [-- CFLAGS...]

  --wit DIR       the WIT package [default: wit]
  --world NAME    the world to build for [default: invoke-plugin]
  --out FILE      the component to write [default: plugin.wasm]
  --gen-dir DIR   generated bindings and the core module [default: target/c-plugin]

Environment: CC (default clang), WASI_SYSROOT (default /usr).
Needs Debian's clang, lld, wasi-libc and libclang-rt-dev-wasm32.";

impl Options {
    /// Parses command-line arguments (without the program name).
    pub fn from_args(args: impl IntoIterator<Item = OsString>) -> Result<Options> {
        let mut o = Options {
            wit: PathBuf::from("wit"),
            world: "invoke-plugin".into(),
            sources: Vec::new(),
            out: PathBuf::from("plugin.wasm"),
            gen_dir: PathBuf::from("target/c-plugin"),
            cc: std::env::var_os("CC").unwrap_or_else(|| "clang".into()),
            sysroot: std::env::var_os("WASI_SYSROOT")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("/usr")),
            cflags: Vec::new(),
        };
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            let mut value = |name: &str| {
                args.next()
                    .with_context(|| format!("{name} needs a value\n{USAGE}"))
            };
            match arg.to_str() {
                Some("--wit") => o.wit = value("--wit")?.into(),
                Some("--world") => {
                    o.world = value("--world")?
                        .into_string()
                        .map_err(|_| anyhow::anyhow!("--world: not UTF-8"))?
                }
                Some("--out" | "-o") => o.out = value("--out")?.into(),
                Some("--gen-dir") => o.gen_dir = value("--gen-dir")?.into(),
                Some("--") => {
                    o.cflags.extend(args.by_ref());
                }
                Some("-h" | "--help") => bail!("{USAGE}"),
                Some(s) if s.starts_with('-') => bail!("unknown option `{s}`\n{USAGE}"),
                _ => o.sources.push(arg.into()),
            }
        }
        if o.sources.is_empty() {
            bail!("no C source given\n{USAGE}");
        }
        Ok(o)
    }
}

/// What a build produced.
#[derive(Debug)]
pub struct Built {
    pub component: PathBuf,
    pub size: usize,
}

/// Runs the three steps; see the module documentation.
pub fn build(o: &Options) -> Result<Built> {
    std::fs::create_dir_all(&o.gen_dir)
        .with_context(|| format!("creating {}", o.gen_dir.display()))?;
    let generated = generate_bindings(&o.wit, &o.world, &o.gen_dir)?;
    let core = o.gen_dir.join("core.wasm");
    compile(o, &generated, &core)?;
    let module = std::fs::read(&core).with_context(|| format!("reading {}", core.display()))?;
    let component = wit_component::ComponentEncoder::default()
        .module(&module)
        .context("reading the core module's component type")?
        .validate(true)
        .adapter(
            WASI_SNAPSHOT_PREVIEW1_ADAPTER_NAME,
            WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER,
        )
        .context("loading the WASI preview1 reactor adapter")?
        .encode()
        .context("encoding the component")?;
    if let Some(dir) = o.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(&o.out, &component).with_context(|| format!("writing {}", o.out.display()))?;
    Ok(Built {
        component: o.out.clone(),
        size: component.len(),
    })
}

/// Files wit-bindgen wrote: C sources to compile, objects to link, and the
/// folder holding the header.
struct Generated {
    sources: Vec<PathBuf>,
    objects: Vec<PathBuf>,
}

fn generate_bindings(wit: &Path, world: &str, dir: &Path) -> Result<Generated> {
    let mut resolve = Resolve::default();
    let (package, _) = resolve
        .push_path(wit)
        .with_context(|| format!("reading the WIT package in {}", wit.display()))?;
    let world = resolve
        .select_world(&[package], Some(world))
        .with_context(|| format!("finding world `{world}` in {}", wit.display()))?;
    let mut files = Files::default();
    wit_bindgen_c::Opts::default()
        .build()
        .generate(&mut resolve, world, &mut files)
        .context("generating C bindings")?;
    let mut generated = Generated {
        sources: Vec::new(),
        objects: Vec::new(),
    };
    for (name, contents) in files.iter() {
        let path = dir.join(name);
        std::fs::write(&path, contents).with_context(|| format!("writing {}", path.display()))?;
        match path.extension().and_then(|e| e.to_str()) {
            Some("c") => generated.sources.push(path),
            Some("o") => generated.objects.push(path),
            _ => {}
        }
    }
    Ok(generated)
}

fn compile(o: &Options, generated: &Generated, core: &Path) -> Result<()> {
    let mut cmd = Command::new(&o.cc);
    cmd.arg("--target=wasm32-wasi")
        .arg(format!("--sysroot={}", o.sysroot.display()))
        // A reactor: `_initialize` runs constructors, exports are called on demand.
        .arg("-mexec-model=reactor")
        .args(["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"])
        .arg("-I")
        .arg(&o.gen_dir)
        .args(&o.cflags)
        .args(&o.sources)
        .args(&generated.sources)
        .args(&generated.objects)
        .arg("-o")
        .arg(core);
    let status = cmd.status().map_err(|e| {
        anyhow::anyhow!(
            "cannot run {:?}: {e}\nhint: install Debian's clang, lld, wasi-libc and \
             libclang-rt-dev-wasm32 (scripts/setup does), or set CC",
            o.cc
        )
    })?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}
