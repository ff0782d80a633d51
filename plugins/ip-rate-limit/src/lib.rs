//! ip-rate-limit: the seed's per-IP rate limit as a redloom plugin.
//!
//! Every request is checked against the manifest's limiter policy (setting
//! `policy`, default `per-ip`) with the client's address as the key. Over
//! the limit, the answer is `429 Too Many Requests` with `Retry-After` and
//! the `RateLimit-Limit` / `RateLimit-Remaining` / `RateLimit-Reset`
//! headers; otherwise the request goes on to the handler ([`forward`]) and
//! its response carries the same `RateLimit-*` headers. Tenants with another
//! quota get a per-key override (`limiter::set_override`), which every host
//! sees at once.
//!
//! The logic is [`limit`]: a plain function from [`Request`] to
//! [`Response`], independent of the trigger. Through `invoke`:
//!
//! - input: JSON `{"client": "203.0.113.7", "path": "/search", "cost": 1}`
//!   (`path` and `cost` optional), or a bare client id;
//! - output: JSON `{"status": 200|429, "headers": {...}, "body": "...",
//!   "decision": {"allowed", "limit", "remaining", "retry_after_ms",
//!   "reset_after_ms"}}`.
//!
//! Behind the HTTP trigger the same function serves requests: the
//! [`Request`] is built from the client address (the peer, or with the
//! setting `trusted-proxies = N` the address N proxies out, from
//! `x-forwarded-for`) and the path, and the [`Response`] becomes the HTTP
//! response.

use redloom_sdk::limiter::{self, Decision};
use redloom_sdk::{Error, Invoke, Result, config};
use serde::Deserialize;
use serde_json::json;

/// What the limit needs to know about a request.
#[derive(Debug, Clone, Deserialize)]
pub struct Request {
    /// The client's address (or any id to limit by).
    pub client: String,
    /// The request path.
    #[serde(default = "root")]
    pub path: String,
    /// Units this request costs (default 1).
    #[serde(default = "one")]
    pub cost: u64,
}

fn root() -> String {
    "/".into()
}

fn one() -> u64 {
    1
}

/// An HTTP-shaped answer.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// The limiter's decision, for callers that want more than headers.
    pub decision: Decision,
}

/// Longest client id accepted (limited keys are at most 1024 bytes).
const MAX_CLIENT: usize = 256;

/// Checks `req` against the policy and answers 429 or forwards it.
pub fn limit(req: &Request) -> Result<Response> {
    if req.client.is_empty() || req.client.len() > MAX_CLIENT {
        return Err(Error::invalid(format!(
            "client must be 1 to {MAX_CLIENT} bytes long"
        )));
    }
    let policy = config::get_or("policy", "per-ip");
    let decision = limiter::check_cost(&policy, &req.client, req.cost)?;
    let headers: Vec<(String, String)> = decision
        .headers()
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    if !decision.allowed {
        return Ok(Response {
            status: 429,
            headers,
            body: format!(
                "too many requests; retry in {} s\n",
                decision.retry_after_secs()
            ),
            decision,
        });
    }
    let (status, body) = forward(req)?;
    Ok(Response {
        status,
        headers,
        body,
        decision,
    })
}

/// The handler behind the limit (here, a greeting).
fn forward(req: &Request) -> Result<(u16, String)> {
    Ok((
        200,
        format!("hello {}, you asked for {}\n", req.client, req.path),
    ))
}

struct IpRateLimit;

impl Invoke for IpRateLimit {
    fn invoke(input: Vec<u8>) -> Result<Vec<u8>> {
        let text = String::from_utf8(input)?;
        let req: Request = if text.trim_start().starts_with('{') {
            serde_json::from_str(&text)?
        } else {
            Request {
                client: text.trim().to_owned(),
                path: root(),
                cost: 1,
            }
        };
        let resp = limit(&req)?;
        let headers: serde_json::Map<String, serde_json::Value> = resp
            .headers
            .into_iter()
            .map(|(k, v)| (k, v.into()))
            .collect();
        let d = resp.decision;
        let out = json!({
            "status": resp.status,
            "headers": headers,
            "body": resp.body,
            "decision": {
                "allowed": d.allowed,
                "limit": d.limit,
                "remaining": d.remaining,
                "retry_after_ms": d.retry_after.as_millis() as u64,
                "reset_after_ms": d.reset_after.as_millis() as u64,
            },
        });
        Ok(serde_json::to_vec(&out)?)
    }
}

/// The HTTP face of the same logic. The client is the connection's IP,
/// unless the setting `trusted-proxies` says how many proxies stand in front
/// of the host: then it is the address the outermost trusted proxy saw, read
/// from the right of `x-forwarded-for` (each proxy appends its peer, so
/// anything further left was written by the client and could be forged).
impl redloom_sdk::Http for IpRateLimit {
    fn handle(request: redloom_sdk::http::Request) -> Result<redloom_sdk::http::Response> {
        let trusted: usize = config::get_or("trusted-proxies", "0")
            .parse()
            .map_err(|_| Error::invalid("setting trusted-proxies must be a whole number"))?;
        let peer = request
            .client_addr
            .rsplit_once(':')
            .map_or(request.client_addr.as_str(), |(ip, _)| ip)
            .trim_matches(['[', ']']);
        let client = client_address(peer, request.header("x-forwarded-for"), trusted);
        let r = limit(&Request {
            client,
            path: request.path.clone(),
            cost: 1,
        })?;
        let mut response = redloom_sdk::http::Response::text(r.status, r.body);
        for (k, v) in r.headers {
            response = response.with_header(k, v);
        }
        Ok(response)
    }
}

/// The address `trusted` proxies from the host: the peer itself when no
/// proxy is trusted, else the `trusted`-th `x-forwarded-for` entry from the
/// right; the leftmost entry when the chain is shorter than that.
pub fn client_address(peer: &str, forwarded_for: Option<&str>, trusted: usize) -> String {
    let mut chain: Vec<&str> = forwarded_for
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .collect();
    chain.push(peer);
    let i = chain.len().saturating_sub(trusted + 1);
    chain[i].to_owned()
}

redloom_sdk::export!(IpRateLimit => [invoke, http]);

#[cfg(test)]
mod tests {
    use super::client_address;

    #[test]
    fn forwarded_for_counts_only_trusted_hops() {
        let xff = Some("6.6.6.6, 203.0.113.7, 10.0.0.1");
        assert_eq!(client_address("127.0.0.1", xff, 0), "127.0.0.1");
        assert_eq!(client_address("127.0.0.1", xff, 1), "10.0.0.1");
        assert_eq!(client_address("127.0.0.1", xff, 2), "203.0.113.7");
        assert_eq!(client_address("127.0.0.1", xff, 9), "6.6.6.6");
        assert_eq!(client_address("127.0.0.1", None, 2), "127.0.0.1");
    }
}
