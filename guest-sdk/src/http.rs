//! HTTP: the request a routed plugin handles, the response it returns, and
//! outbound requests to the origins its manifest allows.
//!
//! ```no_run
//! use redloom_sdk::http::{self, OutgoingRequest};
//! # fn main() -> redloom_sdk::Result<()> {
//! // Only origins in `allowed-outbound-hosts` are reachable; others fail
//! // with `Error::Denied`.
//! let user = http::send(OutgoingRequest::get("http://127.0.0.1:8081/users/42"))?;
//! if user.status == 200 {
//!     let body = String::from_utf8_lossy(&user.body);
//!     redloom_sdk::log::info(&format!("origin said {body}"));
//! }
//! # Ok(())
//! # }
//! ```

use std::time::Duration;

use crate::__private::bindings::redloom::plugin::{http_types as wit, outbound_http};
use crate::{Error, Result};

/// A request routed to the plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// `GET`, `POST`, ... (uppercase).
    pub method: String,
    /// The path without the query string.
    pub path: String,
    /// Route parameters: `/users/:id` gives `("id", "42")`.
    pub params: Vec<(String, String)>,
    /// Decoded query pairs, in order.
    pub query: Vec<(String, String)>,
    /// Headers, names lowercase.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The client's address as the host saw it (`ip:port`).
    pub client_addr: String,
}

fn first<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

impl Request {
    /// The route parameter `name`.
    pub fn param(&self, name: &str) -> Option<&str> {
        first(&self.params, name)
    }

    /// The first query value for `name`.
    pub fn query(&self, name: &str) -> Option<&str> {
        first(&self.query, name)
    }

    /// The first value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        first(&self.headers, &name.to_ascii_lowercase())
    }

    pub(crate) fn from_wit(r: wit::Request) -> Request {
        Request {
            method: r.method,
            path: r.path,
            params: r.params,
            query: r.query,
            headers: r.headers,
            body: r.body,
            client_addr: r.client_addr,
        }
    }
}

/// A response: from the plugin's HTTP handler, or from an outbound request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// An empty response with `status`.
    pub fn new(status: u16) -> Response {
        Response {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// A `text/plain` response.
    pub fn text(status: u16, body: impl Into<String>) -> Response {
        Response::new(status)
            .with_header("content-type", "text/plain; charset=utf-8")
            .with_body(body.into().into_bytes())
    }

    /// An `application/json` response of `value`.
    #[cfg(feature = "json")]
    pub fn json<T: serde::Serialize + ?Sized>(status: u16, value: &T) -> Result<Response> {
        Ok(Response::new(status)
            .with_header("content-type", "application/json")
            .with_body(serde_json::to_vec(value)?))
    }

    /// Adds a header.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Response {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Replaces the body.
    pub fn with_body(mut self, body: impl Into<Vec<u8>>) -> Response {
        self.body = body.into();
        self
    }

    /// The first value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub(crate) fn into_wit(self) -> wit::Response {
        wit::Response {
            status: self.status,
            headers: self.headers,
            body: self.body,
        }
    }

    fn from_wit(r: wit::Response) -> Response {
        Response {
            status: r.status,
            headers: r.headers,
            body: r.body,
        }
    }
}

/// An outbound request; build it with [`OutgoingRequest::get`] or
/// [`OutgoingRequest::new`] and send it with [`send`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingRequest {
    pub method: String,
    /// Absolute `http://` or `https://` URL.
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Deadline for the exchange; capped by the plugin's `outbound-timeout`.
    pub timeout: Option<Duration>,
}

impl OutgoingRequest {
    pub fn new(method: impl Into<String>, url: impl Into<String>) -> OutgoingRequest {
        OutgoingRequest {
            method: method.into(),
            url: url.into(),
            headers: Vec::new(),
            body: Vec::new(),
            timeout: None,
        }
    }

    /// A `GET` of `url`.
    pub fn get(url: impl Into<String>) -> OutgoingRequest {
        OutgoingRequest::new("GET", url)
    }

    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> OutgoingRequest {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub fn body(mut self, body: impl Into<Vec<u8>>) -> OutgoingRequest {
        self.body = body.into();
        self
    }

    pub fn timeout(mut self, timeout: Duration) -> OutgoingRequest {
        self.timeout = Some(timeout);
        self
    }
}

/// Sends `request` to an allowed origin and returns its response, whatever
/// the status. Fails with [`Error::Denied`] for an origin not in the
/// manifest's `allowed-outbound-hosts`, [`Error::Timeout`] past the deadline,
/// and [`Error::BackendUnavailable`] when the origin cannot be reached.
pub fn send(request: OutgoingRequest) -> Result<Response> {
    let timeout_ms = request
        .timeout
        .map(|d| u32::try_from(d.as_millis().max(1)).unwrap_or(u32::MAX));
    let wit_request = outbound_http::OutgoingRequest {
        method: request.method,
        url: request.url,
        headers: request.headers,
        body: request.body,
        timeout_ms,
    };
    outbound_http::send(&wit_request)
        .map(Response::from_wit)
        .map_err(Error::from)
}

/// `GET url`.
pub fn get(url: &str) -> Result<Response> {
    send(OutgoingRequest::get(url))
}
