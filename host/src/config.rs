//! `redloom.toml`: which Redis to use and which plugins to load.
//!
//! Parsing is strict (`deny_unknown_fields`) and every mistake is reported as
//! one line naming the file, the line, the key and what was expected, e.g.
//! `redloom.toml:7: plugins.counter.wasm: invalid type: integer `3`, expected a string`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::namespace::PluginName;

/// The name of the configuration file `redloom` looks for in the current directory.
pub const DEFAULT_FILE: &str = "redloom.toml";

/// A parsed and validated `redloom.toml`.
#[derive(Debug, Clone, Default)]
pub struct Config {
    /// Where the file was read from; relative paths in it are relative to its folder.
    pub source: Option<PathBuf>,
    pub redis: RedisSection,
    /// Folder for the private Redis's data and the compiled-plugin cache.
    pub data_dir: PathBuf,
    /// Plugins by name, in name order.
    pub plugins: BTreeMap<PluginName, PluginConfig>,
}

/// The `[redis]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RedisSection {
    /// `redis://` or `rediss://` URL; none means: start a private `redis-server`.
    #[serde(default)]
    pub url: Option<String>,
    /// How long to wait for a connection to Redis.
    #[serde(default = "default_connect_timeout", with = "duration")]
    pub connect_timeout: Duration,
    /// How long to wait for the reply to one command.
    #[serde(default = "default_response_timeout", with = "duration")]
    pub response_timeout: Duration,
}

impl Default for RedisSection {
    fn default() -> Self {
        RedisSection {
            url: None,
            connect_timeout: default_connect_timeout(),
            response_timeout: default_response_timeout(),
        }
    }
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(2)
}

fn default_response_timeout() -> Duration {
    Duration::from_secs(2)
}

/// One `[plugins.NAME]` table.
#[derive(Debug, Clone)]
pub struct PluginConfig {
    /// Path of the component (`.wasm`), resolved against the config file's folder.
    pub wasm: PathBuf,
    /// The plugin's settings, served by the `config` capability.
    pub settings: BTreeMap<String, String>,
    /// Reuse one instance for up to this many invocations; 0 or 1 means a
    /// fresh instance per invocation (the default and the strongest isolation).
    pub reuse_instances: u32,
    pub quotas: Quotas,
}

/// Per-plugin limits. Issue-by-issue more quotas join these; each has a safe default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quotas {
    /// Linear memory per instance.
    pub memory: u64,
    /// Wall-clock deadline per invocation, including time spent awaiting Redis.
    pub wall_time: Duration,
    /// Largest input accepted, in bytes.
    pub max_input: u64,
    /// Largest output returned, in bytes.
    pub max_output: u64,
}

impl Default for Quotas {
    fn default() -> Self {
        Quotas {
            memory: 64 << 20,
            wall_time: Duration::from_secs(10),
            max_input: 1 << 20,
            max_output: 1 << 20,
        }
    }
}

/// Host-wide ceilings: no plugin's quota may exceed these.
pub mod ceilings {
    use std::time::Duration;

    /// The pooling allocator reserves address space per slot; 1 GiB bounds it.
    pub const MEMORY: u64 = 1 << 30;
    pub const WALL_TIME: Duration = Duration::from_secs(300);
    pub const PAYLOAD: u64 = 64 << 20;
    pub const REUSE_INSTANCES: u32 = 1_000_000;
}

/// A configuration mistake, already formatted as one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("{}: cannot read: {e}", path.display())))?;
        Config::parse(&text, path)
    }

    /// Parses `text` as if read from `path` (used for messages and relative paths).
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let raw: RawConfig = {
            let de =
                toml::Deserializer::parse(text).map_err(|e| toml_error(&file, text, None, &e))?;
            serde_path_to_error::deserialize(de).map_err(|e| {
                let key = e.path().to_string();
                toml_error(&file, text, Some(&key), e.inner())
            })?
        };
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let at = |key: &str, msg: String| ConfigError(format!("{file}: {key}: {msg}"));

        let mut plugins = BTreeMap::new();
        for (name, p) in raw.plugins {
            let key = format!("plugins.{name}");
            let name = PluginName::parse(&name).map_err(|e| at(&key, e.to_string()))?;
            let quotas = p.quotas.resolve(&key).map_err(|(k, m)| at(&k, m))?;
            if p.reuse_instances > ceilings::REUSE_INSTANCES {
                return Err(at(
                    &format!("{key}.reuse-instances"),
                    format!("at most {} allowed", ceilings::REUSE_INSTANCES),
                ));
            }
            let settings = p
                .settings
                .into_iter()
                .map(|(k, v)| {
                    let v = match v {
                        toml::Value::String(s) => s,
                        other => other.to_string(),
                    };
                    (k, v)
                })
                .collect();
            plugins.insert(
                name,
                PluginConfig {
                    wasm: base.join(p.wasm),
                    settings,
                    reuse_instances: p.reuse_instances,
                    quotas,
                },
            );
        }
        if let Some(url) = &raw.redis.url {
            check_redis_url(url).map_err(|m| at("redis.url", m))?;
        }
        Ok(Config {
            source: Some(path.to_path_buf()),
            redis: raw.redis,
            data_dir: base.join(raw.data_dir.unwrap_or_else(|| PathBuf::from(".redloom"))),
            plugins,
        })
    }
}

/// Checks that `url` is one redis-rs accepts, with a message naming the scheme problem.
pub fn check_redis_url(url: &str) -> Result<(), String> {
    if !(url.starts_with("redis://") || url.starts_with("rediss://") || url.starts_with("unix://"))
    {
        return Err(format!(
            "expected a redis://, rediss:// or unix:// URL, found `{url}`"
        ));
    }
    redis::Client::open(url)
        .map(drop)
        .map_err(|e| format!("invalid Redis URL: {e}"))
}

fn toml_error(file: &str, text: &str, key: Option<&str>, e: &toml::de::Error) -> ConfigError {
    let line = e
        .span()
        .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
    let mut out = file.to_string();
    if let Some(line) = line {
        out.push_str(&format!(":{line}"));
    }
    match key {
        Some(k) if !k.is_empty() && k != "." => out.push_str(&format!(": {k}")),
        _ => {}
    }
    // toml's messages can span lines; keep the first, which says what was wrong.
    let msg = e.message().lines().next().unwrap_or("invalid TOML").trim();
    out.push_str(&format!(": {msg}"));
    ConfigError(out)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawConfig {
    #[serde(default)]
    redis: RedisSection,
    #[serde(default)]
    data_dir: Option<PathBuf>,
    #[serde(default)]
    plugins: BTreeMap<String, RawPlugin>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawPlugin {
    wasm: PathBuf,
    #[serde(default)]
    settings: BTreeMap<String, toml::Value>,
    #[serde(default)]
    reuse_instances: u32,
    #[serde(default)]
    quotas: RawQuotas,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawQuotas {
    #[serde(default, deserialize_with = "bytes::option")]
    memory: Option<u64>,
    #[serde(default, with = "duration::option")]
    wall_time: Option<Duration>,
    #[serde(default, deserialize_with = "bytes::option")]
    max_input: Option<u64>,
    #[serde(default, deserialize_with = "bytes::option")]
    max_output: Option<u64>,
}

impl RawQuotas {
    /// Applies defaults and checks ceilings; errors name the offending key.
    fn resolve(self, plugin_key: &str) -> Result<Quotas, (String, String)> {
        let d = Quotas::default();
        let q = Quotas {
            memory: self.memory.unwrap_or(d.memory),
            wall_time: self.wall_time.unwrap_or(d.wall_time),
            max_input: self.max_input.unwrap_or(d.max_input),
            max_output: self.max_output.unwrap_or(d.max_output),
        };
        let key = |k: &str| format!("{plugin_key}.quotas.{k}");
        let over = |k: &str, v: String, max: String| {
            Err((key(k), format!("{v} is above the host ceiling of {max}")))
        };
        if q.memory < (1 << 16) {
            return Err((
                key("memory"),
                "must be at least 64KiB (one wasm page)".into(),
            ));
        }
        if q.memory > ceilings::MEMORY {
            return over(
                "memory",
                bytesize::ByteSize(q.memory).to_string(),
                bytesize::ByteSize(ceilings::MEMORY).to_string(),
            );
        }
        if q.wall_time.is_zero() {
            return Err((key("wall-time"), "must be greater than zero".into()));
        }
        if q.wall_time > ceilings::WALL_TIME {
            return over(
                "wall-time",
                humantime::format_duration(q.wall_time).to_string(),
                humantime::format_duration(ceilings::WALL_TIME).to_string(),
            );
        }
        for (k, v) in [("max-input", q.max_input), ("max-output", q.max_output)] {
            if v > ceilings::PAYLOAD {
                return over(
                    k,
                    bytesize::ByteSize(v).to_string(),
                    bytesize::ByteSize(ceilings::PAYLOAD).to_string(),
                );
            }
        }
        Ok(q)
    }
}

/// Durations as humantime strings: `"500ms"`, `"10s"`, `"2m"`.
pub(crate) mod duration {
    use super::*;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        parse(&s).map_err(serde::de::Error::custom)
    }

    pub fn parse(s: &str) -> Result<Duration, String> {
        humantime::parse_duration(s.trim()).map_err(|e| {
            format!("expected a duration such as \"500ms\" or \"10s\", found {s:?} ({e})")
        })
    }

    pub mod option {
        use super::*;
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
            super::deserialize(d).map(Some)
        }
    }
}

/// Byte sizes as integers or strings: `65536`, `"64KiB"`, `"64 MiB"`.
pub(crate) mod bytes {
    use super::*;

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum IntOrString {
        Int(u64),
        String(String),
    }

    pub fn option<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        match IntOrString::deserialize(d)? {
            IntOrString::Int(n) => Ok(Some(n)),
            IntOrString::String(s) => parse(&s).map(Some).map_err(serde::de::Error::custom),
        }
    }

    pub fn parse(s: &str) -> Result<u64, String> {
        s.trim()
            .parse::<bytesize::ByteSize>()
            .map(|b| b.as_u64())
            .map_err(|_| {
                format!("expected a size such as 65536, \"64KiB\" or \"16MiB\", found {s:?}")
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/etc/redloom/redloom.toml"))
    }

    /// A full file parses, paths resolve against its folder and settings become strings.
    #[test]
    fn parses_full_file() {
        let c = parse(
            r#"
data-dir = "state"
[redis]
url = "redis://127.0.0.1:7000"
response-timeout = "750ms"

[plugins.visit-counter]
wasm = "plugins/counter.wasm"
reuse-instances = 8
settings = { greeting = "hi", ttl = 30, on = true }
[plugins.visit-counter.quotas]
memory = "16MiB"
wall-time = "2s"
"#,
        )
        .unwrap();
        assert_eq!(c.data_dir, Path::new("/etc/redloom/state"));
        assert_eq!(c.redis.response_timeout, Duration::from_millis(750));
        let p = &c.plugins[&PluginName::parse("visit-counter").unwrap()];
        assert_eq!(p.wasm, Path::new("/etc/redloom/plugins/counter.wasm"));
        assert_eq!(p.settings["ttl"], "30");
        assert_eq!(p.settings["greeting"], "hi");
        assert_eq!(p.settings["on"], "true");
        assert_eq!(p.reuse_instances, 8);
        assert_eq!(p.quotas.memory, 16 << 20);
        assert_eq!(p.quotas.wall_time, Duration::from_secs(2));
        assert_eq!(p.quotas.max_output, Quotas::default().max_output);
    }

    /// Every mistake is one line naming file, line, key and expectation.
    #[test]
    fn errors_name_file_line_and_key() {
        let e = parse("[plugins.a]\nwasm = 3\n").unwrap_err().0;
        assert_eq!(
            e,
            "/etc/redloom/redloom.toml:2: plugins.a.wasm: invalid type: integer `3`, expected path string"
        );
        let e = parse("[plugins.a]\nwsam = \"x.wasm\"\n").unwrap_err().0;
        assert!(
            e.starts_with("/etc/redloom/redloom.toml:2: plugins.a.wsam: unknown field `wsam`"),
            "{e}"
        );
        let e = parse("[plugins.a]\nwasm = \"a.wasm\"\nquotas = { wall-time = \"soon\" }\n")
            .unwrap_err()
            .0;
        assert!(
            e.contains("plugins.a.quotas.wall-time") && e.contains("expected a duration"),
            "{e}"
        );
        let e = parse("[plugins.\"Bad Name\"]\nwasm = \"a.wasm\"\n")
            .unwrap_err()
            .0;
        assert!(
            e.contains("plugins.Bad Name") && e.contains("lowercase"),
            "{e}"
        );
        let e = parse("[redis]\nurl = \"http://x\"\n").unwrap_err().0;
        assert!(e.contains("redis.url") && e.contains("redis://"), "{e}");
        let e = parse("[plugins.a]\nwasm = \"a.wasm\"\nquotas = { memory = \"2GiB\" }\n")
            .unwrap_err()
            .0;
        assert!(
            e.contains("plugins.a.quotas.memory") && e.contains("ceiling"),
            "{e}"
        );
        let e = parse("[plugins.a\n").unwrap_err().0;
        assert!(e.starts_with("/etc/redloom/redloom.toml:1: "), "{e}");
        assert!(!e.contains('\n'), "{e}");
    }
}
