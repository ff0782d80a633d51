//! `redloom:plugin/outbound-http`: HTTP requests to the origins a plugin's
//! manifest allows (`allowed-outbound-hosts`), nothing else.
//!
//! Deny by default: an empty list allows no request. Each entry is an origin,
//! `scheme://host[:port]` (the port defaults to 80/443); a request is allowed
//! only if its scheme, host and port equal one entry's. Redirects are not
//! followed (a redirect could leave the allowlist); the guest sees the 3xx.
//! Every exchange has a deadline (`outbound-timeout`, or less if the guest
//! asks), and the response body may bring at most `max-reply` bytes into the
//! guest. The time counts against the invocation's `wall-time`.

use std::sync::OnceLock;
use std::time::Duration;

use super::Caps;
use crate::bindings::http_types::{self, Response};
use crate::bindings::outbound_http::{Host, OutgoingRequest};
use crate::bindings::types::Error;
use crate::quota::Quota;
use crate::quota::QuotaTrap;

/// An allowed origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    scheme: String,
    host: String,
    port: u16,
}

impl Origin {
    /// Parses `scheme://host[:port]`; anything more (a path, a query, user
    /// info) is an error, so an entry always means exactly one origin.
    pub fn parse(s: &str) -> Result<Origin, String> {
        let url = reqwest::Url::parse(s).map_err(|e| format!("`{s}` is not a URL: {e}"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!("`{s}`: only http and https origins are allowed"));
        }
        if url.path() != "/" || url.query().is_some() || !url.username().is_empty() {
            return Err(format!(
                "`{s}`: give only scheme://host:port, without a path or credentials"
            ));
        }
        Origin::of(&url).ok_or_else(|| format!("`{s}` has no host"))
    }

    fn of(url: &reqwest::Url) -> Option<Origin> {
        Some(Origin {
            scheme: url.scheme().to_string(),
            host: url.host_str()?.to_ascii_lowercase(),
            port: url.port_or_known_default()?,
        })
    }
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}://{}:{}", self.scheme, self.host, self.port)
    }
}

/// One client for the whole process: connection pools are shared, redirects
/// are never followed and no proxy from the environment is used.
fn client() -> &'static reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT.get_or_init(|| {
        reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .connect_timeout(Duration::from_secs(5))
            .build()
            .expect("building the HTTP client")
    })
}

impl http_types::Host for Caps {}

impl Caps {
    async fn send(&mut self, request: OutgoingRequest) -> Result<Response, Error> {
        let url = reqwest::Url::parse(&request.url)
            .map_err(|e| Error::InvalidArgument(format!("`{}` is not a URL: {e}", request.url)))?;
        let origin = Origin::of(&url)
            .ok_or_else(|| Error::InvalidArgument(format!("`{}` has no host", request.url)))?;
        if !self.plugin.outbound.allowed.contains(&origin) {
            return Err(Error::Denied(format!(
                "{origin} is not in this plugin's allowed-outbound-hosts"
            )));
        }
        let method = reqwest::Method::from_bytes(request.method.as_bytes()).map_err(|_| {
            Error::InvalidArgument(format!("`{}` is not an HTTP method", request.method))
        })?;
        let limit = self.plugin.outbound.timeout;
        let timeout = request
            .timeout_ms
            .map(|ms| Duration::from_millis(ms.into()).min(limit))
            .unwrap_or(limit);
        let mut builder = client()
            .request(method, url)
            .timeout(timeout)
            .body(request.body);
        for (name, value) in &request.headers {
            builder = builder.header(name, value);
        }
        // With traces on, the origin sees this call's trace context, unless
        // the plugin set its own.
        for (name, value) in crate::logging::trace_headers() {
            if !request
                .headers
                .iter()
                .any(|(n, _)| n.eq_ignore_ascii_case(&name))
            {
                builder = builder.header(name, value);
            }
        }
        self.plugin.stats.outbound_request();
        let mut response = builder.send().await.map_err(|e| send_error(&origin, e))?;
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let max = self.plugin.quotas.max_reply;
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| send_error(&origin, e))? {
            if (body.len() + chunk.len()) as u64 > max {
                return Err(self.breach(QuotaTrap::new(
                    Quota::Payload,
                    format!("the response from {origin} is over max-reply ({max} bytes)"),
                )));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Response {
            status,
            headers,
            body,
        })
    }
}

fn send_error(origin: &Origin, e: reqwest::Error) -> Error {
    if e.is_timeout() {
        Error::Timeout(format!("{origin} did not answer in time"))
    } else if e.is_builder() {
        Error::InvalidArgument(format!("cannot build the request: {e}"))
    } else {
        Error::BackendUnavailable(format!("{origin}: {e}"))
    }
}

impl Host for Caps {
    async fn send(
        &mut self,
        request: OutgoingRequest,
    ) -> wasmtime::Result<Result<Response, Error>> {
        Ok(traced!("outbound-http", "send", Caps::send(self, request)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Entries are exact origins; default ports are filled in.
    #[test]
    fn origins() {
        assert_eq!(
            Origin::parse("http://Example.com").unwrap().to_string(),
            "http://example.com:80"
        );
        assert_eq!(
            Origin::parse("https://a.b:8443").unwrap().to_string(),
            "https://a.b:8443"
        );
        for bad in [
            "example.com",
            "ftp://x",
            "http://x/path",
            "http://u:p@x",
            "http://x?q=1",
        ] {
            assert!(Origin::parse(bad).is_err(), "{bad}");
        }
    }
}
