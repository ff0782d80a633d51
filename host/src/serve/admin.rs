//! The admin listener: `/plugins` (list, load, unload, reload — behind the
//! bearer token when one is set), `/metrics`, `/healthz`, `/readyz`.
//!
//! | request | does |
//! |---|---|
//! | `GET /plugins` | JSON list, by name: every loaded plugin (`"state": "loaded"`, its handlers and counters) and every configured plugin that is not loaded now (`"state": "unloaded"`, name and wasm only) |
//! | `POST /plugins` `{"name", "wasm"?, "settings"?}` | loads a plugin (its `[plugins.NAME]` table, if the config has one, supplies everything not given) |
//! | `POST /plugins/{name}/reload` `{"wasm"?, "settings"?}` | loads it again (from a new file, with new settings, if given) and swaps it in atomically |
//! | `DELETE /plugins/{name}` | unloads it; routes to it answer 503 |
//! | `GET /metrics` | Prometheus text format |
//! | `GET /healthz` | 200 while the process serves |
//! | `GET /readyz` | 200 when Redis answers `PING` and every configured plugin is loaded, else 503 with the reason |

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::App;
use crate::namespace::PluginName;
use crate::plugin::PluginSpec;

pub fn router(app: Arc<App>) -> Router {
    let plugins = Router::new()
        .route("/plugins", get(list).post(load))
        .route("/plugins/{name}", axum::routing::delete(unload))
        .route("/plugins/{name}/reload", post(reload))
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            require_token,
        ));
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .merge(plugins)
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            require_known_host,
        ))
        .with_state(app)
}

/// Refuses a request whose `Host` is a name this listener does not go by:
/// a page on `attacker.example` whose DNS answer is 127.0.0.1 (DNS
/// rebinding) reaches the listener with `Host: attacker.example`. IP
/// addresses, `localhost` and `[admin] allowed-hosts` pass.
async fn require_known_host(State(app): State<Arc<App>>, request: Request, next: Next) -> Response {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| request.uri().host());
    match host {
        Some(h) if known_host(h, &app.config.admin.allowed_hosts) => next.run(request).await,
        _ => error(
            StatusCode::FORBIDDEN,
            "unknown Host: the admin API answers to IP addresses, localhost and \
             [admin] allowed-hosts only"
                .into(),
        ),
    }
}

/// Whether `host` (a `Host` header: name or address, optional port) is an
/// IP address, `localhost`, or one of `allowed`.
fn known_host(host: &str, allowed: &[String]) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        // [v6]:port
        match rest.split_once(']') {
            Some((v6, _)) => return v6.parse::<std::net::Ipv6Addr>().is_ok(),
            None => return false,
        }
    } else {
        host.rsplit_once(':').map_or(host, |(n, _)| n)
    };
    name.parse::<std::net::Ipv4Addr>().is_ok()
        || name.eq_ignore_ascii_case("localhost")
        || allowed.iter().any(|a| a.eq_ignore_ascii_case(name))
}

/// `/plugins` requests need the bearer token (unless `[admin] auth = "none"`),
/// and a `POST` must say it carries JSON, so a cross-site form post (which
/// cannot set that type without the browser asking first) changes nothing.
async fn require_token(State(app): State<Arc<App>>, request: Request, next: Next) -> Response {
    if let Some(token) = &app.admin_token {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if !given.is_some_and(|g| constant_time_eq(g.as_bytes(), token.as_bytes())) {
            return error(
                StatusCode::UNAUTHORIZED,
                "missing or wrong bearer token".into(),
            );
        }
    }
    if request.method() == axum::http::Method::POST {
        let json = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"));
        if !json {
            return error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "send a JSON body with content-type: application/json".into(),
            );
        }
    }
    next.run(request).await
}

/// Compares without an early exit, so the time taken does not tell how much
/// of a guessed token was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The token in `<data_dir>/admin-token`, generated (32 random bytes, hex)
/// and written with mode 0600 if the file does not exist yet.
pub fn generated_token(data_dir: &std::path::Path) -> anyhow::Result<String> {
    use anyhow::Context;
    let path = data_dir.join(crate::config::ADMIN_TOKEN_FILE);
    if let Some(token) = crate::files::read_secret(&path) {
        return Ok(token);
    }
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let token = crate::files::new_secret().context("making the admin token")?;
    crate::files::write_private(&path, &format!("{token}\n"))
        .with_context(|| format!("writing {}", path.display()))?;
    tracing::info!(file = %path.display(), "generated the admin API token");
    Ok(token)
}

/// The JSON error body of every admin failure.
fn error(status: StatusCode, message: String) -> Response {
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}

/// One plugin in `GET /plugins`.
#[derive(Serialize)]
pub struct PluginJson {
    pub name: String,
    /// The file it runs from; for an unloaded plugin, the file `load` would
    /// use (its configuration's).
    pub wasm: PathBuf,
    pub state: PluginState,
    /// Handlers and counters, only while loaded: unloading drops them.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub loaded: Option<LoadedJson>,
}

/// Whether requests reach a plugin.
#[derive(Serialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum PluginState {
    /// Serving its routes and triggers.
    Loaded,
    /// In the configuration but unloaded through the admin API: its routes
    /// answer 503 and `/readyz` fails until it is loaded again.
    Unloaded,
}

/// What a loaded plugin adds to [`PluginJson`].
#[derive(Serialize)]
pub struct LoadedJson {
    pub handlers: Vec<&'static str>,
    pub invocations: u64,
    pub errors: BTreeMap<&'static str, u64>,
    pub quota_rejections: BTreeMap<&'static str, u64>,
    pub guest_cpu_seconds: f64,
    pub redis_commands: u64,
}

async fn list(State(app): State<Arc<App>>) -> Json<Vec<PluginJson>> {
    let mut plugins: BTreeMap<PluginName, PluginJson> = app
        .host
        .plugin_infos()
        .into_iter()
        .map(|p| {
            let json = PluginJson {
                name: p.name.to_string(),
                wasm: p.wasm,
                state: PluginState::Loaded,
                loaded: Some(LoadedJson {
                    handlers: p.handlers,
                    invocations: p.stats.invocations,
                    errors: p.stats.errors.iter().copied().collect(),
                    quota_rejections: p.stats.quota_rejections.iter().copied().collect(),
                    guest_cpu_seconds: p.stats.guest_cpu.as_secs_f64(),
                    redis_commands: p.stats.redis_commands,
                }),
            };
            (p.name, json)
        })
        .collect();
    for (name, config) in &app.config.plugins {
        plugins.entry(name.clone()).or_insert_with(|| PluginJson {
            name: name.to_string(),
            wasm: PluginSpec::from_config(name.clone(), config).wasm,
            state: PluginState::Unloaded,
            loaded: None,
        });
    }
    Json(plugins.into_values().collect())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoadBody {
    name: String,
    #[serde(default)]
    wasm: Option<PathBuf>,
    #[serde(default)]
    settings: Option<BTreeMap<String, String>>,
}

async fn load(State(app): State<Arc<App>>, Json(body): Json<LoadBody>) -> Response {
    let name = match PluginName::parse(&body.name) {
        Ok(n) => n,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let mut spec = match (app.config.plugins.get(&name), body.wasm) {
        (Some(c), wasm) => {
            let mut spec = PluginSpec::from_config(name.clone(), c);
            if let Some(w) = wasm {
                spec.wasm = w;
            }
            spec
        }
        (None, Some(wasm)) => {
            let mut spec = PluginSpec::from_path(&wasm);
            spec.name = name.clone();
            spec
        }
        (None, None) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("{name} is not in the configuration; give \"wasm\""),
            );
        }
    };
    if let Some(s) = body.settings {
        spec.settings = s;
    }
    match app.load_checked(spec).await {
        Ok(()) => (
            StatusCode::CREATED,
            Json(serde_json::json!({ "loaded": name.to_string() })),
        )
            .into_response(),
        Err(e) => error(StatusCode::UNPROCESSABLE_ENTITY, e),
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ReloadBody {
    #[serde(default)]
    wasm: Option<PathBuf>,
    #[serde(default)]
    settings: Option<BTreeMap<String, String>>,
}

async fn reload(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    body: Option<Json<ReloadBody>>,
) -> Response {
    let Ok(name) = PluginName::parse(&name) else {
        return error(StatusCode::NOT_FOUND, format!("no plugin named {name}"));
    };
    let ReloadBody { wasm, settings } = body.map(|Json(b)| b).unwrap_or_default();
    match app.reload_checked(&name, wasm, settings).await {
        Ok(()) => Json(serde_json::json!({ "reloaded": name.to_string() })).into_response(),
        Err((status, e)) => error(status, e),
    }
}

async fn unload(State(app): State<Arc<App>>, Path(name): Path<String>) -> Response {
    match PluginName::parse(&name).ok().filter(|n| app.host.unload(n)) {
        Some(n) => Json(serde_json::json!({ "unloaded": n.to_string() })).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            format!("no plugin named {name} is loaded"),
        ),
    }
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    if app.check_redis().await {
        tokio::join!(app.read_redis_info(), app.read_queue_stats());
    } else {
        *app.redis_info.lock().expect("redis info poisoned") = None;
        app.queue_stats
            .lock()
            .expect("queue stats poisoned")
            .clear();
    }
    let mut text = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &app.metrics) {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding metrics: {e}"),
        );
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

async fn ready(State(app): State<Arc<App>>) -> Response {
    let mut problems = Vec::new();
    if !app.check_redis().await {
        problems.push("Redis does not answer PING".to_string());
    }
    let loaded = app.host.plugin_names();
    for name in app.config.plugins.keys() {
        if !loaded.contains(name) {
            problems.push(format!("plugin {name} is not loaded"));
        }
    }
    if problems.is_empty() {
        "ready\n".into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, problems.join("\n") + "\n").into_response()
    }
}
