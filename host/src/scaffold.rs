//! `redloom new`: a plugin project to start from, in Rust, JavaScript,
//! Python or C.
//!
//! Every project has the same shape, whatever its language:
//!
//! | file | what |
//! |---|---|
//! | `wit/` | a copy of this host's WIT package (`redloom:plugin`) |
//! | the plugin | `src/lib.rs`, `plugin.js`, `app.py` or `plugin.c`: greets a name and counts the greetings with `kv` |
//! | `build` | builds `<name>.wasm` with the language's own toolchain |
//! | `test` | builds, runs the plugin twice with `redloom invoke` against a private Redis, checks replies and the count it stored |
//! | `redloom.toml` | the plugin's entry: settings, quotas, instance reuse |
//! | `README.md`, `.gitignore` | |
//!
//! The templates live in `host/templates/` and are compiled into the binary;
//! `{{name}}`-style placeholders are filled in here. JavaScript and Python
//! projects get `reuse-instances = 16` ([`HEAVY_RUNTIME_REUSE`]): their
//! components embed a whole interpreter, whose instantiation costs far more
//! than a Rust or C plugin's.

use std::path::{Path, PathBuf};

use crate::namespace::PluginName;

/// The language of a new plugin project.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    /// Rust, with `redloom-sdk`.
    Rust,
    /// JavaScript, built with componentize-js (SpiderMonkey).
    #[value(alias = "javascript")]
    Js,
    /// Python, built with componentize-py (CPython).
    #[value(alias = "py")]
    Python,
    /// C, built with clang + wasi-libc and wit-bindgen's C generator.
    C,
}

/// `reuse-instances` in the `redloom.toml` of a JavaScript or Python
/// project: an interpreter component costs ≈ 0.2–0.9 ms to instantiate
/// against ≈ 15–30 µs for Rust or C, and reusing an instance costs ≈ 1–14 µs.
pub const HEAVY_RUNTIME_REUSE: u32 = 16;

impl Lang {
    /// Invocations one pooled instance serves in the scaffolded
    /// `redloom.toml`: the host's default for Rust and C, fewer for the
    /// interpreters (whose heaps grow with what their globals hold).
    pub fn default_reuse(self) -> u32 {
        match self {
            Lang::Js | Lang::Python => HEAVY_RUNTIME_REUSE,
            Lang::Rust | Lang::C => crate::config::DEFAULT_REUSE_INSTANCES,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Lang::Rust => "Rust",
            Lang::Js => "JavaScript",
            Lang::Python => "Python",
            Lang::C => "C",
        }
    }
}

/// What `redloom new` was asked for.
#[derive(Debug, Clone)]
pub struct NewProject {
    pub name: PluginName,
    pub lang: Lang,
    /// The project folder: created, or an existing empty one.
    pub dir: PathBuf,
    /// For Rust: the `guest-sdk` folder to depend on.
    pub sdk: PathBuf,
}

/// Why a project could not be created.
#[derive(Debug, thiserror::Error)]
pub enum ScaffoldError {
    #[error(transparent)]
    Name(#[from] crate::namespace::NameError),
    #[error("invalid plugin name `{0}`: a project name must start with a letter")]
    NameStart(String),
    #[error("{} already exists and is not an empty folder", .0.display())]
    Exists(PathBuf),
    #[error("redloom-sdk not found at {}", .0.display())]
    NoSdk(PathBuf),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl ScaffoldError {
    /// What to do about it, when there is something to say.
    pub fn hint(&self) -> Option<String> {
        match self {
            ScaffoldError::Exists(_) => Some("pick another name or --dir".into()),
            ScaffoldError::NoSdk(_) => {
                Some("pass --sdk PATH to the guest-sdk folder of a redloom checkout".into())
            }
            _ => None,
        }
    }
}

/// The `guest-sdk` folder of the checkout this binary was built from.
pub fn default_sdk() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../guest-sdk")
}

impl NewProject {
    /// Checks `name` (a plugin name that starts with a letter, since it is
    /// also a Cargo/npm package name); `dir` defaults to `./<name>`, `sdk` to
    /// [`default_sdk`].
    pub fn new(
        name: &str,
        lang: Lang,
        dir: Option<PathBuf>,
        sdk: Option<PathBuf>,
    ) -> Result<NewProject, ScaffoldError> {
        let name = PluginName::parse(name)?;
        if !name.as_str().starts_with(|c: char| c.is_ascii_lowercase()) {
            return Err(ScaffoldError::NameStart(name.as_str().to_owned()));
        }
        Ok(NewProject {
            dir: dir.unwrap_or_else(|| PathBuf::from(name.as_str())),
            sdk: sdk.unwrap_or_else(default_sdk),
            name,
            lang,
        })
    }
}

/// One file of a template.
struct File {
    /// Path in the project.
    path: &'static str,
    text: &'static str,
    /// A script: mode 0755.
    executable: bool,
}

const fn file(path: &'static str, text: &'static str) -> File {
    File {
        path,
        text,
        executable: false,
    }
}

const fn script(path: &'static str, text: &'static str) -> File {
    File {
        path,
        text,
        executable: true,
    }
}

/// Every file of `wit/`, copied into each project. A unit test checks that
/// this list and the folder agree.
const WIT: &[(&str, &str)] = &[
    ("cache.wit", include_str!("../../wit/cache.wit")),
    ("config.wit", include_str!("../../wit/config.wit")),
    ("handlers.wit", include_str!("../../wit/handlers.wit")),
    ("http.wit", include_str!("../../wit/http.wit")),
    ("kv.wit", include_str!("../../wit/kv.wit")),
    ("limiter.wit", include_str!("../../wit/limiter.wit")),
    ("lock.wit", include_str!("../../wit/lock.wit")),
    ("log.wit", include_str!("../../wit/log.wit")),
    ("pubsub.wit", include_str!("../../wit/pubsub.wit")),
    ("queue.wit", include_str!("../../wit/queue.wit")),
    ("structures.wit", include_str!("../../wit/structures.wit")),
    ("types.wit", include_str!("../../wit/types.wit")),
    ("worlds.wit", include_str!("../../wit/worlds.wit")),
];

/// Files every project has.
const COMMON: &[File] = &[
    file("redloom.toml", include_str!("../templates/redloom.toml")),
    script("test", include_str!("../templates/test")),
];

const RUST: &[File] = &[
    file(
        "Cargo.toml",
        include_str!("../templates/rust/Cargo.toml.in"),
    ),
    file("src/lib.rs", include_str!("../templates/rust/src/lib.rs")),
    script("build", include_str!("../templates/rust/build")),
    file("README.md", include_str!("../templates/rust/README.md")),
    file(".gitignore", include_str!("../templates/rust/gitignore")),
];

const JS: &[File] = &[
    file(
        "package.json",
        include_str!("../templates/js/package.json.in"),
    ),
    // The example's lock file, so `npm ci` installs exactly the versions
    // the examples are tested with (see `js_lock_matches_the_example`).
    file(
        "package-lock.json",
        include_str!("../templates/js/package-lock.json.in"),
    ),
    file("plugin.js", include_str!("../templates/js/plugin.js")),
    script("build", include_str!("../templates/js/build")),
    file("README.md", include_str!("../templates/js/README.md")),
    file(".gitignore", include_str!("../templates/js/gitignore")),
];

const PYTHON: &[File] = &[
    file(
        "requirements.txt",
        include_str!("../templates/python/requirements.txt"),
    ),
    file("app.py", include_str!("../templates/python/app.py")),
    script("build", include_str!("../templates/python/build")),
    file("README.md", include_str!("../templates/python/README.md")),
    file(".gitignore", include_str!("../templates/python/gitignore")),
];

const C: &[File] = &[
    file("plugin.c", include_str!("../templates/c/plugin.c")),
    script("build", include_str!("../templates/c/build")),
    file(
        "tools/Cargo.toml",
        include_str!("../templates/c/tools/Cargo.toml.in"),
    ),
    file(
        "tools/src/main.rs",
        include_str!("../templates/c/tools/main.rs"),
    ),
    // The same source as the workspace's `cargo xtask build-c`.
    file(
        "tools/src/c_plugin.rs",
        include_str!("../templates/c/tools/c_plugin.rs"),
    ),
    file("README.md", include_str!("../templates/c/README.md")),
    file(".gitignore", include_str!("../templates/c/gitignore")),
];

/// The `redloom.toml` lines about instance reuse, per language.
fn reuse_section(lang: Lang) -> String {
    let n = lang.default_reuse();
    match lang {
        Lang::Js | Lang::Python => format!(
            "# A {} component embeds its interpreter: instantiating one costs\n\
             # 0.2-0.9 ms, so one instance serves up to {n} invocations. Module globals\n\
             # survive between those invocations (keep no per-request state in them);\n\
             # an instance is discarded after any error, trap or quota breach.\n\
             # 0 = a fresh instance per invocation.\n\
             reuse-instances = {n}\n",
            lang.label()
        ),
        Lang::Rust | Lang::C => format!(
            "# Pooled instances (the default): one {} instance serves up to {n}\n\
             # invocations of this plugin, for at most a minute. Globals and statics\n\
             # survive between those invocations (keep no per-request state in them);\n\
             # an instance is discarded after any error, trap or quota breach.\n\
             # isolation = \"per-call\" (instead of this line) gives every invocation\n\
             # a fresh instance.\n\
             reuse-instances = {n}\n",
            lang.label()
        ),
    }
}

/// Fills in the placeholders of one template file.
fn render(text: &str, p: &NewProject) -> String {
    let sdk = std::fs::canonicalize(&p.sdk)
        .or_else(|_| std::path::absolute(&p.sdk))
        .unwrap_or_else(|_| p.sdk.clone());
    text.replace("{{name}}", p.name.as_str())
        .replace("{{crate}}", &p.name.as_str().replace('-', "_"))
        // A TOML string, quoted and escaped.
        .replace(
            "\"{{sdk}}\"",
            &toml::Value::String(sdk.display().to_string()).to_string(),
        )
        .replace("{{reuse}}", &reuse_section(p.lang))
}

/// Writes the project; returns the files written, relative to `p.dir`.
pub fn create(p: &NewProject) -> Result<Vec<PathBuf>, ScaffoldError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ScaffoldError::Io { path, source }
    };
    match std::fs::read_dir(&p.dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(ScaffoldError::Exists(p.dir.clone()));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(_) => return Err(ScaffoldError::Exists(p.dir.clone())),
    }
    if p.lang == Lang::Rust && !p.sdk.join("Cargo.toml").is_file() {
        return Err(ScaffoldError::NoSdk(p.sdk.clone()));
    }
    let files = match p.lang {
        Lang::Rust => RUST,
        Lang::Js => JS,
        Lang::Python => PYTHON,
        Lang::C => C,
    };
    let mut written = Vec::new();
    let mut write = |rel: &str, text: &str, executable: bool| -> Result<(), ScaffoldError> {
        let path = p.dir.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io(parent))?;
        }
        std::fs::write(&path, render(text, p)).map_err(io(&path))?;
        if executable {
            make_executable(&path).map_err(io(&path))?;
        }
        written.push(PathBuf::from(rel));
        Ok(())
    };
    for f in COMMON.iter().chain(files) {
        write(f.path, f.text, f.executable)?;
    }
    for (name, text) in WIT {
        // WIT files are copied as they are.
        let path = p.dir.join("wit").join(name);
        std::fs::create_dir_all(p.dir.join("wit")).map_err(io(&p.dir))?;
        std::fs::write(&path, text).map_err(io(&path))?;
        written.push(Path::new("wit").join(name));
    }
    Ok(written)
}

#[cfg(unix)]
fn make_executable(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
}

#[cfg(not(unix))]
fn make_executable(_: &Path) -> std::io::Result<()> {
    Ok(())
}

/// `redloom new`: creates the project and returns what to print.
pub fn run(
    name: &str,
    lang: Lang,
    dir: Option<PathBuf>,
    sdk: Option<PathBuf>,
) -> Result<String, ScaffoldError> {
    let p = NewProject::new(name, lang, dir, sdk)?;
    let files = create(&p)?;
    let mut out = format!(
        "created {} plugin `{}` in {}:\n",
        lang.label(),
        p.name.as_str(),
        p.dir.display()
    );
    for f in files.iter().filter(|f| !f.starts_with("wit")) {
        out.push_str(&format!("  {}\n", f.display()));
    }
    out.push_str("  wit/  (the redloom:plugin WIT package)\n");
    out.push_str(&format!(
        "next:\n  cd {}\n  ./build                 # -> {}.wasm\n  ./test                  # runs it in redloom against a private Redis\n",
        p.dir.display(),
        p.name.as_str()
    ));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The embedded WIT list is exactly the files in `wit/`, so a new WIT
    /// file cannot be left out of scaffolded projects.
    #[test]
    fn every_wit_file_is_scaffolded() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../wit");
        let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(".wit"))
            .collect();
        on_disk.sort();
        let embedded: Vec<&str> = WIT.iter().map(|(n, _)| *n).collect();
        assert_eq!(
            embedded, on_disk,
            "update scaffold::WIT to list every file in wit/"
        );
    }

    /// The JavaScript template's lock file is the example's (which CI
    /// builds and tests), only renamed: the same versions of componentize-js
    /// and of everything it pulls in.
    #[test]
    fn js_lock_matches_the_example() {
        let example: serde_json::Value = serde_json::from_str(include_str!(
            "../../plugins/rate-limited-api/package-lock.json"
        ))
        .unwrap();
        let mut template: serde_json::Value =
            serde_json::from_str(include_str!("../templates/js/package-lock.json.in")).unwrap();
        template["name"] = example["name"].clone();
        template["packages"][""]["name"] = example["name"].clone();
        assert!(
            template == example,
            "regenerate host/templates/js/package-lock.json.in from \
             plugins/rate-limited-api/package-lock.json (names → {{{{name}}}})"
        );
        let deps = |text: &str| {
            serde_json::from_str::<serde_json::Value>(text).unwrap()["devDependencies"].clone()
        };
        assert_eq!(
            deps(include_str!("../templates/js/package.json.in")),
            deps(include_str!("../../plugins/rate-limited-api/package.json"))
        );
    }

    /// Each language renders completely (no placeholder left), with the
    /// instance-reuse default of its runtime, and scripts are executable.
    #[test]
    fn every_language_renders() {
        for lang in [Lang::Rust, Lang::Js, Lang::Python, Lang::C] {
            let tmp = tempfile::tempdir().unwrap();
            let dir = tmp.path().join("p");
            let p = NewProject::new("my-plugin", lang, Some(dir.clone()), None).unwrap();
            let files = create(&p).unwrap();
            assert!(files.iter().any(|f| f == Path::new("wit/worlds.wit")));
            for f in &files {
                let text = std::fs::read_to_string(dir.join(f)).unwrap();
                assert!(
                    !text.contains("{{"),
                    "{lang:?}: {} keeps a placeholder",
                    f.display()
                );
            }
            let toml = std::fs::read_to_string(dir.join("redloom.toml")).unwrap();
            let config: toml::Table = toml.parse().unwrap();
            let reuse = config["plugins"]["my-plugin"]["reuse-instances"]
                .as_integer()
                .unwrap();
            assert_eq!(reuse, i64::from(lang.default_reuse()), "{lang:?}");
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                for s in ["build", "test"] {
                    let mode = std::fs::metadata(dir.join(s)).unwrap().permissions().mode();
                    assert_eq!(mode & 0o111, 0o111, "{lang:?}: {s} is executable");
                }
            }
        }
    }

    /// An existing non-empty folder is never written into; names must
    /// start with a letter.
    #[test]
    fn refuses_what_it_must() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("x"), "").unwrap();
        let p = NewProject::new("ok", Lang::C, Some(tmp.path().to_path_buf()), None).unwrap();
        assert!(matches!(create(&p), Err(ScaffoldError::Exists(_))));
        assert!(matches!(
            NewProject::new("1abc", Lang::Js, None, None),
            Err(ScaffoldError::NameStart(_))
        ));
        assert!(NewProject::new("Bad", Lang::Js, None, None).is_err());
        let p = NewProject::new(
            "ok",
            Lang::Rust,
            Some(tmp.path().join("new")),
            Some(tmp.path().join("no-sdk")),
        )
        .unwrap();
        assert!(matches!(create(&p), Err(ScaffoldError::NoSdk(_))));
    }
}
