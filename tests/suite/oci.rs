//! Plugins from an OCI registry: `redloom plugin push`, `oci://` references
//! in `redloom.toml` and on the command line, the lock file, the local
//! cache, and credentials from the Docker configuration, against Debian's
//! `docker-registry` started by the test.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use redloom_tests::{RedisServer, Registry, plugin, redloom_bin, run_with_timeout};

fn redloom(dir: &Path, docker_config: &Path) -> Command {
    let mut c = Command::new(redloom_bin());
    c.current_dir(dir)
        .env_remove("REDIS_URL")
        .env_remove("REDLOOM_CONFIG")
        .env_remove("RUST_LOG")
        .env("DOCKER_CONFIG", docker_config);
    c
}

fn run(cmd: &mut Command) -> (i32, String, String) {
    let out: Output = run_with_timeout(cmd, Duration::from_secs(120));
    (
        out.status.code().expect("exited"),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Push a component, run it by reference (pulled, pinned in
/// `redloom.lock`, cached); a new push to the same tag changes nothing
/// until the lock line goes; with the registry gone the pinned plugin
/// still loads from the cache; without credentials the registry refuses,
/// and a file that is not a component is not pushed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_from_a_registry() {
    let redis = RedisServer::start().await;
    let registry = Registry::start(Some("redloom")).await;
    let docker = registry.docker_config("redloom");
    let dir = tempfile::tempdir().unwrap();
    let reference = format!("oci://{}/team/probe:v1", registry.addr);
    std::fs::write(
        dir.path().join("redloom.toml"),
        format!(
            "{}[plugins.probe]\nwasm = {reference:?}\n",
            redis.config_table()
        ),
    )
    .unwrap();
    let push = |file: &Path| {
        run(redloom(dir.path(), &docker)
            .args(["plugin", "push"])
            .arg(file)
            .arg(&reference))
    };
    let version =
        || run(redloom(dir.path(), &docker).args(["invoke", "probe", "--http", "GET /version"]));

    let (status, pushed, stderr) = push(&plugin("http-probe"));
    assert_eq!(status, 0, "{stderr}");
    let digest = pushed
        .trim()
        .strip_prefix(&format!("{reference}@"))
        .unwrap_or_else(|| panic!("push printed {pushed:?}"))
        .to_string();
    assert!(digest.starts_with("sha256:"), "{digest}");

    let (status, stdout, stderr) = version();
    assert_eq!((status, stdout.as_str()), (0, "1"), "{stderr}");
    let lock = std::fs::read_to_string(dir.path().join("redloom.lock")).unwrap();
    assert!(
        lock.contains(&format!("{reference:?} = {digest:?}")),
        "the lock pins the pushed digest:\n{lock}"
    );
    let cached = dir
        .path()
        .join(".redloom/oci")
        .join(format!("{}.wasm", digest.replace(':', "-")));
    assert_eq!(
        std::fs::read(&cached).expect("the component is cached"),
        std::fs::read(plugin("http-probe")).unwrap()
    );

    // Another component under the same tag: the pinned digest still runs.
    let (status, _, stderr) = push(&plugin("kv-probe"));
    assert_eq!(status, 0, "{stderr}");
    assert_eq!(version().0, 0, "still the pinned http-probe");
    // Without the lock, the tag resolves again: kv-probe has no HTTP handler.
    std::fs::remove_file(dir.path().join("redloom.lock")).unwrap();
    let (status, _, stderr) = version();
    assert_eq!(status, 3, "{stderr}");
    assert!(stderr.contains("http"), "{stderr}");

    // Pinned and cached, the plugin loads with the registry gone.
    std::fs::write(
        dir.path().join("redloom.lock"),
        format!("[plugins]\n{reference:?} = {digest:?}\n"),
    )
    .unwrap();
    drop(registry);
    let (status, stdout, stderr) = version();
    assert_eq!((status, stdout.as_str()), (0, "1"), "{stderr}");

    // No credentials: the registry's refusal, named.
    let guarded = Registry::start(Some("redloom")).await;
    let elsewhere = format!("oci://{}/team/probe:v2", guarded.addr);
    let empty = tempfile::tempdir().unwrap();
    let (status, _, stderr) = run(redloom(dir.path(), empty.path())
        .args(["plugin", "push"])
        .arg(plugin("http-probe"))
        .arg(&elsewhere));
    assert_ne!(status, 0);
    assert!(
        stderr.contains("401") && stderr.contains(&elsewhere),
        "{stderr}"
    );
    let (status, _, stderr) = run(redloom(dir.path(), empty.path()).args(["invoke", &elsewhere]));
    assert_eq!(status, 3, "{stderr}");
    assert!(stderr.contains(&elsewhere), "{stderr}");
    // Not a component: refused before anything is sent.
    let not_wasm = dir.path().join("notes.wasm");
    std::fs::write(&not_wasm, "hello").unwrap();
    let (status, _, stderr) = run(redloom(dir.path(), &docker)
        .args(["plugin", "push"])
        .arg(&not_wasm)
        .arg(&reference));
    assert_eq!(status, 3, "{stderr}");
    assert!(stderr.contains("not a WebAssembly component"), "{stderr}");
    // A reference without a registry is a usage error.
    let (status, _, stderr) = run(redloom(dir.path(), &docker)
        .args(["plugin", "push"])
        .arg(plugin("http-probe"))
        .arg("oci://probe"));
    assert_eq!(status, 2, "{stderr}");
    assert!(stderr.contains("oci://REGISTRY/REPOSITORY:TAG"), "{stderr}");
}
