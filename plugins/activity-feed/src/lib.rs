//! activity-feed: capped activity feeds on Redis lists, over HTTP.
//!
//! Each user's feed is a list (key `{feed:USER}items`), newest first, never
//! longer than the setting `max-length` (default 100): a new entry is
//! pushed and the list trimmed in one atomic batch, together with the
//! user's entry counter (`{feed:USER}stats`), so no reader ever sees the
//! feed over its cap or the counter out of step with it.
//!
//! Routes (bind them in `redloom.toml`):
//!
//! - `POST /feeds/:user` with the entry as the body (at most 1 KiB of
//!   text): answers `{"length", "posted"}`.
//! - `GET /feeds/:user?n=20`: the newest `n` (1–100) entries, as JSON
//!   strings.

use redloom_sdk::batch::{Batch, Reply};
use redloom_sdk::http::{Request, Response};
use redloom_sdk::{Error, Http, Result, config, list};
use serde_json::json;

/// Longest entry.
const MAX_ENTRY: usize = 1024;

/// Most entries one read returns.
const MAX_READ: u32 = 100;

fn max_length() -> Result<i64> {
    config::get_or("max-length", "100")
        .parse()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| Error::invalid("setting max-length must be a whole number above 0"))
}

fn post(user: &str, body: &[u8]) -> Result<Response> {
    let entry = std::str::from_utf8(body).map_err(|_| Error::invalid("the entry must be text"))?;
    if entry.is_empty() || entry.len() > MAX_ENTRY {
        return Err(Error::invalid(format!(
            "an entry is 1 to {MAX_ENTRY} bytes long"
        )));
    }
    let (items, stats) = (
        format!("{{feed:{user}}}items"),
        format!("{{feed:{user}}}stats"),
    );
    let replies = Batch::new()
        .list_push_front(&items, entry)
        .list_trim(&items, 0, max_length()? - 1)
        .list_length(&items)
        .hash_increment(&stats, "posted", 1)
        .run()?;
    let integer = |i: usize| match replies.get(i) {
        Some(Ok(Reply::Integer(n))) => Ok(*n),
        other => Err(Error::other(format!("unexpected batch reply {other:?}"))),
    };
    Response::json(200, &json!({"length": integer(2)?, "posted": integer(3)?}))
}

fn read(user: &str, n: Option<&str>) -> Result<Response> {
    let n: u32 = match n {
        None => 20,
        Some(n) => n
            .parse()
            .ok()
            .filter(|n| (1..=MAX_READ).contains(n))
            .ok_or_else(|| Error::invalid(format!("n must be 1 to {MAX_READ}")))?,
    };
    let entries = list::range(&format!("{{feed:{user}}}items"), 0, i64::from(n) - 1)?;
    let entries: Vec<String> = entries
        .into_iter()
        .map(|e| String::from_utf8_lossy(&e).into_owned())
        .collect();
    Response::json(200, &entries)
}

/// The request's answer; bad input is an `invalid-argument` error.
fn route(request: Request) -> Result<Response> {
    let user = request
        .param("user")
        .filter(|u| !u.is_empty() && u.len() <= 128 && !u.contains(['{', '}']))
        .ok_or_else(|| Error::invalid("user must be 1 to 128 bytes without braces"))?;
    match request.method.as_str() {
        "POST" => post(user, &request.body),
        "GET" => read(user, request.query("n")),
        _ => Ok(Response::text(405, "method not allowed\n")),
    }
}

struct Feed;

impl Http for Feed {
    /// Bad input is the client's mistake (400, with why); any other error
    /// is the host's 500.
    fn handle(request: Request) -> Result<Response> {
        match route(request) {
            Err(Error::InvalidArgument(why)) => Ok(Response::text(400, format!("{why}\n"))),
            answer => answer,
        }
    }
}

redloom_sdk::export!(Feed => [http]);
