//! The HTTP trigger: a request is routed, checked against the plugin's
//! `max-input`, turned into the WIT `request`, handled by the plugin within
//! its quotas, and its `response` sent back.
//!
//! | outcome | status |
//! |---|---|
//! | no route | 404 (405 if the path exists for other methods) |
//! | routed plugin not loaded (unloaded at runtime) | 503 |
//! | body over the plugin's `max-input` | 413 |
//! | body not complete within `[http] body-read-timeout` | 408 |
//! | `concurrency` quota | 429 with `Retry-After`, after [`REJECTION_DELAY`] |
//! | `redis-rate` quota | 429 with `Retry-After` |
//! | any other quota (`cpu`, `wall-time`, `memory`, ...) | 503 with `Retry-After` |
//! | the plugin's error or a trap | 500; the body says nothing about why (the log does) |
//! | a status below 200 or over 599 from the plugin | 500 |
//!
//! The response's framing is the host's alone: a plugin's `content-length`,
//! `transfer-encoding` and hop-by-hop headers (`connection`, `keep-alive`,
//! `upgrade`, `te`, `trailer`, ...) are dropped, so no plugin can make a
//! kept-alive connection read part of its body as the next response.
//! Headers count towards the plugin's `max-output`.

use std::sync::Arc;
use std::time::Instant;

use axum::body::{Body, to_bytes};
use axum::extract::State;
use axum::http::{HeaderName, HeaderValue, Request, Response, StatusCode, header};

use super::App;
use super::listener::BodyTimeout;
use super::routes::Match;
use crate::bindings::http_types::Request as HttpRequest;
use crate::bindings::types::Error as GuestError;
use crate::host::HostInvokeError;
use crate::namespace::PluginName;
use crate::plugin::InvokeError;
use crate::quota::Quota;

/// Seconds a client should wait after a quota rejection.
const RETRY_AFTER_SECS: &str = "1";

/// How long the host holds a request its plugin turned away for
/// `concurrency` (queue full) before answering 429. Clients that retry at
/// once would otherwise turn a saturated plugin into a flood of cheap
/// rejections that takes the CPU other plugins' requests need; held, each
/// connection retries at most four times a second, at no CPU cost (the
/// request just waits).
pub const REJECTION_DELAY: std::time::Duration = std::time::Duration::from_millis(250);

pub async fn handle(State(app): State<Arc<App>>, request: Request<Body>) -> Response<Body> {
    let client_addr = request
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.to_string())
        .unwrap_or_default();
    // The request's span (a trace's server span when traces are on),
    // continuing the client's trace from its `traceparent`.
    let span = if crate::logging::tracing_on() {
        let span = tracing::info_span!(
            target: crate::logging::SPANS,
            "http",
            otel.name = format!("{} {}", request.method(), request.uri().path()),
            otel.kind = "server",
            http.request.method = %request.method(),
            url.path = request.uri().path(),
            http.response.status_code = tracing::field::Empty,
        );
        crate::logging::continue_trace(
            &span,
            request
                .headers()
                .iter()
                .filter_map(|(k, v)| Some((k.as_str(), v.to_str().ok()?))),
        );
        span
    } else {
        tracing::Span::none()
    };
    let mut access = Access {
        started: Instant::now(),
        method: request.method().clone(),
        path: request.uri().path().to_string(),
        client: client_addr,
        plugin: None,
        status: None,
        trace_id: crate::logging::trace_id(&span),
    };
    let response = {
        use tracing::Instrument as _;
        respond(&app, request, &mut access)
            .instrument(span.clone())
            .await
    };
    span.record("http.response.status_code", response.status().as_u16());
    access.status = Some(response.status().as_u16());
    response
}

/// The access-log record of one request, written when dropped: with the
/// status sent, or [`CLIENT_CLOSED`] if the client went away first.
struct Access {
    started: Instant,
    method: axum::http::Method,
    path: String,
    client: String,
    plugin: Option<PluginName>,
    status: Option<u16>,
    trace_id: Option<String>,
}

/// The status logged for a request whose client hung up before the answer
/// (nginx's convention; never sent).
pub const CLIENT_CLOSED: u16 = 499;

impl Drop for Access {
    fn drop(&mut self) {
        crate::logging::http(
            self.method.as_str(),
            &self.path,
            self.status.unwrap_or(CLIENT_CLOSED),
            self.plugin.as_ref().map(PluginName::as_str),
            self.started.elapsed(),
            &self.client,
            self.trace_id.as_deref(),
        );
    }
}

async fn respond(app: &App, request: Request<Body>, access: &mut Access) -> Response<Body> {
    let client_addr = access.client.clone();
    let (parts, body) = request.into_parts();
    let path = access.path.clone();
    let (plugin, params) = match app.routes.lookup(parts.method.as_str(), &path) {
        Match::Found { plugin, params } => {
            access.plugin = Some(plugin.clone());
            (plugin, params)
        }
        Match::MethodNotAllowed => {
            return plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
        }
        Match::NotFound => return plain(StatusCode::NOT_FOUND, "not found"),
    };
    let Some(loaded) = app.host.plugin(&plugin) else {
        return retry_later(StatusCode::SERVICE_UNAVAILABLE, "service unavailable");
    };
    let limit = loaded.quotas().max_input;
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return plain(StatusCode::PAYLOAD_TOO_LARGE, "request body too large");
    }
    let body = match to_bytes(body, usize::try_from(limit).unwrap_or(usize::MAX)).await {
        Ok(b) => b.to_vec(),
        Err(e) if BodyTimeout::caused(&e) => {
            return plain(StatusCode::REQUEST_TIMEOUT, "request body too slow");
        }
        Err(_) => return plain(StatusCode::PAYLOAD_TOO_LARGE, "request body too large"),
    };
    let query = parts.uri.query().map(form_urlencoded).unwrap_or_default();
    let headers = parts
        .headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let request = HttpRequest {
        method: parts.method.as_str().to_string(),
        path,
        params,
        query,
        headers,
        body,
        client_addr,
    };
    match app.host.handle_http(&plugin, &request).await {
        Ok(r) => {
            // 1xx would leave the connection waiting for a final answer
            // (101 switches protocols): only final statuses come from plugins.
            let status = match StatusCode::from_u16(r.status) {
                Ok(s) if s.as_u16() >= 200 => s,
                _ => {
                    tracing::warn!(%plugin, status = r.status, "plugin answered with an invalid status");
                    return plain(StatusCode::INTERNAL_SERVER_ERROR, "internal error");
                }
            };
            let mut response = Response::new(Body::from(r.body));
            *response.status_mut() = status;
            for (name, value) in r.headers {
                match (
                    HeaderName::try_from(name.as_str()),
                    HeaderValue::try_from(value.as_str()),
                ) {
                    (Ok(n), _) if is_connection_level(&n) => {
                        tracing::debug!(%plugin, header = %n, "dropping a framing or hop-by-hop header");
                    }
                    (Ok(n), Ok(v)) => {
                        response.headers_mut().append(n, v);
                    }
                    _ => {
                        tracing::debug!(%plugin, header = %name, "dropping an invalid response header")
                    }
                }
            }
            response
        }
        Err(HostInvokeError::UnknownPlugin(_)) => {
            retry_later(StatusCode::SERVICE_UNAVAILABLE, "service unavailable")
        }
        Err(HostInvokeError::Invoke(e)) => {
            // Turning requests away is the plugin's load, not a fault, and
            // can happen thousands of times a second: counted in the
            // metrics, logged only at debug level.
            if matches!(e.quota(), Some(Quota::Concurrency | Quota::RedisRate)) {
                tracing::debug!(%plugin, "request turned away: {e}");
            } else {
                tracing::warn!(%plugin, "request failed: {e}");
            }
            match &e {
                InvokeError::Quota { quota, .. } => match quota {
                    Quota::Concurrency => {
                        tokio::time::sleep(REJECTION_DELAY).await;
                        retry_later(StatusCode::TOO_MANY_REQUESTS, "too many requests")
                    }
                    Quota::RedisRate => {
                        retry_later(StatusCode::TOO_MANY_REQUESTS, "too many requests")
                    }
                    _ => retry_later(StatusCode::SERVICE_UNAVAILABLE, "service unavailable"),
                },
                // The handler gave up because Redis (or an origin) is down
                // or slow, and returned the capability's error as is (or
                // through the SDK's `?`): the service is unavailable, and
                // trying again later may work.
                InvokeError::Guest {
                    error: GuestError::BackendUnavailable(_) | GuestError::Timeout(_),
                    ..
                } => retry_later(StatusCode::SERVICE_UNAVAILABLE, "service unavailable"),
                _ => plain(StatusCode::INTERNAL_SERVER_ERROR, "internal error"),
            }
        }
    }
}

/// Headers that describe the connection or the message's framing rather
/// than the response, which only the host may set: hyper frames the body it
/// is given, and a plugin's `content-length` or `transfer-encoding` that
/// disagreed with it would let the rest of the body be read as the response
/// to the next request on a kept-alive connection (response splitting).
/// The list is RFC 9110 §7.6.1's hop-by-hop headers plus the framing ones.
const CONNECTION_LEVEL: [HeaderName; 9] = [
    header::CONTENT_LENGTH,
    header::TRANSFER_ENCODING,
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::UPGRADE,
    header::PROXY_AUTHENTICATE,
];

fn is_connection_level(name: &HeaderName) -> bool {
    CONNECTION_LEVEL.contains(name)
}

/// `a=1&b=%20x` → pairs, percent- and plus-decoded.
pub fn form_urlencoded(query: &str) -> Vec<(String, String)> {
    reqwest::Url::parse(&format!("http://q/?{query}"))
        .map(|u| {
            u.query_pairs()
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect()
        })
        .unwrap_or_default()
}

fn plain(status: StatusCode, text: &'static str) -> Response<Body> {
    let mut r = Response::new(Body::from(text));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn retry_later(status: StatusCode, text: &'static str) -> Response<Body> {
    let mut r = plain(status, text);
    r.headers_mut().insert(
        header::RETRY_AFTER,
        HeaderValue::from_static(RETRY_AFTER_SECS),
    );
    r
}

#[cfg(test)]
mod tests {
    /// Query strings decode like browsers encode them.
    #[test]
    fn query_pairs() {
        assert_eq!(
            super::form_urlencoded("a=1&b=x%20y&a=2&c=d+e"),
            [("a", "1"), ("b", "x y"), ("a", "2"), ("c", "d e")]
                .map(|(k, v)| (k.to_string(), v.to_string()))
        );
    }
}
