//! Plugins from OCI registries: `oci://REGISTRY/REPOSITORY:TAG` (or
//! `@sha256:…`) wherever a plugin's `.wasm` path goes (`wasm =` in
//! `redloom.toml`, `redloom invoke`, `redloom plugin load --wasm`), and
//! `redloom plugin push FILE REF`.
//!
//! The layout is the CNCF Wasm OCI artifact one that wkg, wasmCloud and
//! oci-wasm use: one layer of media type `application/wasm` (the
//! component), a config of media type `application/vnd.wasm.config.v0+json`.
//! Pulls also take the older `application/vnd.wasm.content.layer.v1+wasm`
//! layer.
//!
//! - **Pinned.** The first resolution of a tag records the manifest's digest
//!   in the lock file (`redloom.lock` next to `redloom.toml`); from then on
//!   the plugin is pulled by that digest, so a tag moved in the registry
//!   changes nothing until the lock line is removed. The manifest is checked
//!   against the digest (SHA-256 of its bytes), the layer against the
//!   manifest's layer digest.
//! - **Cached.** Pulled components are kept in `DATA_DIR/oci/` under their
//!   manifest digest: a pinned plugin loads without the registry.
//! - **Bounded.** A registry is hostile input: a manifest over
//!   [`MAX_MANIFEST_BYTES`] or a layer over
//!   [`crate::files::MAX_COMPONENT_BYTES`] is refused before or while it is
//!   read.
//! - **Credentials** come from the Docker configuration
//!   (`$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`): the
//!   `auths` entry of the registry (`auth` = base64 `user:password`, or
//!   `username` and `password`); anonymous otherwise. Credential helpers
//!   are not run.
//! - **HTTP** only to loopback registries (`localhost`, `127.0.0.1`,
//!   `[::1]`); every other registry over HTTPS.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};

use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
use oci_client::manifest::{OciImageManifest, OciManifest};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use sha2::{Digest, Sha256};

/// How a `wasm` value names a registry artifact.
pub const SCHEME: &str = "oci://";

/// Media type of the component layer (CNCF Wasm OCI artifact).
pub const WASM_LAYER_MEDIA_TYPE: &str = "application/wasm";

/// Media type of the artifact's config (CNCF Wasm OCI artifact).
pub const WASM_CONFIG_MEDIA_TYPE: &str = "application/vnd.wasm.config.v0+json";

/// The older wasm-to-oci layer type, accepted when pulling.
const LEGACY_LAYER_MEDIA_TYPE: &str = oci_client::manifest::WASM_LAYER_MEDIA_TYPE;

/// Largest manifest read from a registry.
pub const MAX_MANIFEST_BYTES: usize = 1 << 20;

/// The lock file's name, next to the configuration file.
pub const LOCK_FILE: &str = "redloom.lock";

/// Whether `wasm` (a configured path or a command-line argument) is an
/// OCI reference.
pub fn is_reference(wasm: &str) -> bool {
    wasm.starts_with(SCHEME)
}

/// Errors of pushing or pulling, each naming the reference.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    #[error("`{0}` is not an OCI reference: {1}")]
    Reference(String, String),
    #[error("{reference}: {message}")]
    Registry { reference: String, message: String },
    #[error("{reference}: {message}")]
    Artifact { reference: String, message: String },
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
}

/// Parses `oci://REGISTRY/REPOSITORY[:TAG][@DIGEST]`.
pub fn parse(wasm: &str) -> Result<Reference, OciError> {
    let rest = wasm
        .strip_prefix(SCHEME)
        .ok_or_else(|| OciError::Reference(wasm.into(), format!("it must start with {SCHEME}")))?;
    let reference: Reference = rest
        .parse()
        .map_err(|e| OciError::Reference(wasm.into(), format!("{e}")))?;
    // Without a registry host, the parser would pick Docker Hub: say it.
    if !rest.contains('/') {
        return Err(OciError::Reference(
            wasm.into(),
            "expected oci://REGISTRY/REPOSITORY:TAG".into(),
        ));
    }
    Ok(reference)
}

/// A client for `reference`'s registry: HTTP for loopback registries only.
fn client(reference: &Reference) -> Client {
    let registry = reference.resolve_registry().to_string();
    let host = registry
        .rsplit_once(':')
        .filter(|(h, port)| port.chars().all(|c| c.is_ascii_digit()) && !h.ends_with(':'))
        .map_or(registry.as_str(), |(h, _)| h);
    let loopback = matches!(host, "localhost" | "127.0.0.1" | "[::1]");
    Client::new(ClientConfig {
        protocol: if loopback {
            ClientProtocol::Http
        } else {
            ClientProtocol::Https
        },
        ..Default::default()
    })
}

/// The registry credentials of `reference` from the Docker configuration.
fn auth(reference: &Reference) -> RegistryAuth {
    let file = std::env::var_os("DOCKER_CONFIG")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".docker")))
        .map(|dir| dir.join("config.json"));
    let Some(text) = file.and_then(|f| crate::files::read_bounded(&f, 1 << 20).ok()) else {
        return RegistryAuth::Anonymous;
    };
    let Ok(config) = serde_json::from_slice::<serde_json::Value>(&text) else {
        return RegistryAuth::Anonymous;
    };
    let registry = reference.registry();
    let entry = config["auths"]
        .as_object()
        .and_then(|auths| {
            auths.iter().find(|(k, _)| {
                let k = k
                    .trim_start_matches("https://")
                    .trim_start_matches("http://");
                k.trim_end_matches('/') == registry
            })
        })
        .map(|(_, v)| v);
    let Some(entry) = entry else {
        return RegistryAuth::Anonymous;
    };
    if let (Some(u), Some(p)) = (entry["username"].as_str(), entry["password"].as_str()) {
        return RegistryAuth::Basic(u.into(), p.into());
    }
    use base64::Engine as _;
    entry["auth"]
        .as_str()
        .and_then(|a| base64::engine::general_purpose::STANDARD.decode(a).ok())
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .and_then(|pair| {
            pair.split_once(':')
                .map(|(u, p)| RegistryAuth::Basic(u.into(), p.into()))
        })
        .unwrap_or(RegistryAuth::Anonymous)
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

/// Pushes the component in `file` to `wasm` (`oci://…:TAG`); returns the
/// manifest's digest.
pub async fn push(file: &Path, wasm: &str) -> Result<String, OciError> {
    let reference = parse(wasm)?;
    let bytes =
        crate::files::read_bounded(file, crate::files::MAX_COMPONENT_BYTES).map_err(|e| {
            OciError::File {
                path: file.into(),
                message: e.to_string(),
            }
        })?;
    if !wasmparser::Parser::is_component(&bytes) {
        return Err(OciError::File {
            path: file.into(),
            message: "not a WebAssembly component".into(),
        });
    }
    let layer_digest = sha256(&bytes);
    let layer = ImageLayer::new(bytes, WASM_LAYER_MEDIA_TYPE.into(), None);
    let config = serde_json::json!({
        "created": humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        "architecture": "wasm",
        "os": "wasip2",
        "layerDigests": [layer_digest],
    });
    let config = Config::new(
        serde_json::to_vec(&config).expect("JSON"),
        WASM_CONFIG_MEDIA_TYPE.into(),
        None,
    );
    let layers = [layer];
    let manifest = OciImageManifest::build(&layers, &config, None);
    let (client, auth) = (client(&reference), auth(&reference));
    let failed = |what: &str, e: oci_client::errors::OciDistributionError| OciError::Registry {
        reference: wasm.into(),
        message: format!("{what}: {e}"),
    };
    client
        .push(&reference, &layers, config, &auth, Some(manifest))
        .await
        .map_err(|e| failed("push failed", e))?;
    // The digest of the manifest as the registry stores it (what a pull by
    // this tag resolves to now).
    client
        .fetch_manifest_digest(&reference, &auth)
        .await
        .map_err(|e| failed("pushed, but cannot read the digest back", e))
}

/// Where a pulled component is cached: `DIR/oci/sha256-HEX.wasm`.
fn cached_path(data_dir: &Path, digest: &str) -> PathBuf {
    data_dir
        .join("oci")
        .join(format!("{}.wasm", digest.replace(':', "-")))
}

/// The lock file: reference → manifest digest, one `"REF" = "DIGEST"` line
/// each (TOML), sorted.
fn read_lock(lock: &Path) -> Result<BTreeMap<String, String>, OciError> {
    let text = match std::fs::read_to_string(lock) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => {
            return Err(OciError::File {
                path: lock.into(),
                message: e.to_string(),
            });
        }
    };
    #[derive(serde::Deserialize)]
    struct Lock {
        #[serde(default)]
        plugins: BTreeMap<String, String>,
    }
    toml::from_str::<Lock>(&text)
        .map(|l| l.plugins)
        .map_err(|e| OciError::File {
            path: lock.into(),
            message: format!("not a lock file: {e}"),
        })
}

fn write_lock(lock: &Path, pins: &BTreeMap<String, String>) -> Result<(), OciError> {
    let mut text = String::from(
        "# Written by redloom: the digest each oci:// plugin reference resolved to.\n\
         # Plugins load by these digests; delete a line to resolve its tag again.\n\
         [plugins]\n",
    );
    for (reference, digest) in pins {
        text.push_str(&format!("{reference:?} = {digest:?}\n"));
    }
    crate::files::write_atomically(lock, text.as_bytes()).map_err(|e| OciError::File {
        path: lock.into(),
        message: e.to_string(),
    })
}

/// The local file of the component `wasm` names: from the cache when its
/// pinned digest is there, else pulled (by the pinned digest, or by tag,
/// then pinned in `lock`) into `data_dir`'s cache.
pub async fn fetch(wasm: &str, data_dir: &Path, lock: &Path) -> Result<PathBuf, OciError> {
    let reference = parse(wasm)?;
    let mut pins = read_lock(lock)?;
    let pinned = reference
        .digest()
        .map(str::to_string)
        .or_else(|| pins.get(wasm).cloned());
    if let Some(digest) = &pinned {
        let path = cached_path(data_dir, digest);
        if path.is_file() {
            return Ok(path);
        }
    }
    let target = match &pinned {
        Some(d) => Reference::with_digest(
            reference.registry().to_string(),
            reference.repository().to_string(),
            d.clone(),
        ),
        None => reference.clone(),
    };
    let registry_error = |message: String| OciError::Registry {
        reference: wasm.into(),
        message,
    };
    let artifact_error = |message: String| OciError::Artifact {
        reference: wasm.into(),
        message,
    };
    let client = client(&target);
    let auth = auth(&target);
    let (body, _) = client
        .pull_manifest_raw(
            &target,
            &auth,
            &[oci_client::manifest::OCI_IMAGE_MEDIA_TYPE],
        )
        .await
        .map_err(|e| registry_error(format!("cannot read the manifest: {e}")))?;
    if body.len() > MAX_MANIFEST_BYTES {
        return Err(artifact_error(format!(
            "the manifest is {} bytes, over {MAX_MANIFEST_BYTES}",
            body.len()
        )));
    }
    let digest = sha256(&body);
    if let Some(want) = &pinned
        && *want != digest
    {
        return Err(artifact_error(format!(
            "the registry's manifest has digest {digest}, not the pinned {want}"
        )));
    }
    let manifest = match serde_json::from_slice::<OciManifest>(&body) {
        Ok(OciManifest::Image(m)) => m,
        Ok(OciManifest::ImageIndex(_)) => {
            return Err(artifact_error(
                "an image index, not a Wasm artifact (push it with `redloom plugin push`)".into(),
            ));
        }
        Err(e) => return Err(artifact_error(format!("an unreadable manifest: {e}"))),
    };
    let [layer] = manifest.layers.as_slice() else {
        return Err(artifact_error(format!(
            "a Wasm artifact has one layer, this one {}",
            manifest.layers.len()
        )));
    };
    if layer.media_type != WASM_LAYER_MEDIA_TYPE && layer.media_type != LEGACY_LAYER_MEDIA_TYPE {
        return Err(artifact_error(format!(
            "its layer is `{}`, not `{WASM_LAYER_MEDIA_TYPE}`",
            layer.media_type
        )));
    }
    let max = crate::files::MAX_COMPONENT_BYTES;
    if layer.size < 0 || layer.size as u64 > max {
        return Err(artifact_error(format!(
            "its layer is {} bytes, over {max}",
            layer.size
        )));
    }
    let mut bytes = Bounded {
        bytes: Vec::new(),
        max: max as usize,
    };
    client
        .pull_blob(&target, layer, &mut bytes)
        .await
        .map_err(|e| registry_error(format!("cannot read the component: {e}")))?;
    let path = cached_path(data_dir, &digest);
    std::fs::create_dir_all(path.parent().expect("a folder"))
        .and_then(|()| crate::files::write_atomically(&path, &bytes.bytes))
        .map_err(|e| OciError::File {
            path: path.clone(),
            message: e.to_string(),
        })?;
    if pinned.is_none() {
        pins.insert(wasm.to_string(), digest);
        write_lock(lock, &pins)?;
    }
    Ok(path)
}

/// A `Vec` that refuses to grow past `max` bytes (a registry that sends
/// more than the layer's declared size).
struct Bounded {
    bytes: Vec<u8>,
    max: usize,
}

impl tokio::io::AsyncWrite for Bounded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if self.bytes.len() + buf.len() > self.max {
            return Poll::Ready(Err(std::io::Error::other(format!(
                "the component is over {} bytes",
                self.max
            ))));
        }
        self.bytes.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_parse() {
        let r = parse("oci://127.0.0.1:5000/team/probe:v1").unwrap();
        assert_eq!(
            (r.registry(), r.repository(), r.tag()),
            ("127.0.0.1:5000", "team/probe", Some("v1"))
        );
        for bad in ["oci://probe", "127.0.0.1:5000/a:b", "oci://Host/UPPER:x"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        assert!(is_reference("oci://x/y:z"));
        assert!(!is_reference("plugins/x.wasm"));
    }

    #[test]
    fn bounded_refuses_past_its_max() {
        use tokio::io::AsyncWriteExt;
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut b = Bounded {
                bytes: Vec::new(),
                max: 4,
            };
            b.write_all(b"abcd").await.unwrap();
            assert!(b.write_all(b"e").await.is_err());
        });
    }
}
