//! session-store: web sessions in Redis hashes, over HTTP.
//!
//! A session is one hash (key `session:ID`) of string fields. Every read or
//! write refreshes its time to live (setting `ttl-secs`, default 1800), so a
//! session lives as long as it is used and then disappears by itself.
//!
//! Routes (bind them in `redloom.toml`):
//!
//! - `PUT /sessions/:id` with a JSON object of strings: sets those fields
//!   (others are kept) and renews the TTL in one atomic batch; answers the
//!   whole session.
//! - `GET /sessions/:id`: the session's fields as a JSON object, or 404.
//! - `DELETE /sessions/:id`: ends the session (204).

use std::collections::BTreeMap;
use std::time::Duration;

use redloom_sdk::batch::Batch;
use redloom_sdk::http::{Request, Response};
use redloom_sdk::{Error, Http, Result, config, hash, keys};

/// Longest session id.
const MAX_ID: usize = 128;

fn ttl() -> Result<Duration> {
    let secs: u64 = config::get_or("ttl-secs", "1800")
        .parse()
        .ok()
        .filter(|s| *s > 0)
        .ok_or_else(|| Error::invalid("setting ttl-secs must be a whole number above 0"))?;
    Ok(Duration::from_secs(secs))
}

/// The session's fields, with its time to live refreshed; `None` if it
/// does not exist (or expired).
fn read(key: &str) -> Result<Option<BTreeMap<String, String>>> {
    let fields = hash::get_all(key)?;
    if fields.is_empty() {
        return Ok(None);
    }
    keys::expire(key, ttl()?)?;
    Ok(Some(
        fields
            .into_iter()
            .map(|(f, v)| (f, String::from_utf8_lossy(&v).into_owned()))
            .collect(),
    ))
}

struct Sessions;

impl Http for Sessions {
    /// Bad input is the client's mistake (400, with why); any other error
    /// is the host's 500.
    fn handle(request: Request) -> Result<Response> {
        match route(request) {
            Err(Error::InvalidArgument(why)) => Ok(Response::text(400, format!("{why}\n"))),
            answer => answer,
        }
    }
}

/// The request's answer; bad input is an `invalid-argument` error.
fn route(request: Request) -> Result<Response> {
    let id = request
        .param("id")
        .filter(|id| !id.is_empty() && id.len() <= MAX_ID)
        .ok_or_else(|| Error::invalid(format!("session id must be 1 to {MAX_ID} bytes")))?;
    let key = format!("session:{id}");
    match request.method.as_str() {
        "PUT" => {
            let fields: BTreeMap<String, String> =
                serde_json::from_slice(&request.body).map_err(|e| {
                    Error::invalid(format!("body must be a JSON object of strings: {e}"))
                })?;
            if fields.is_empty() {
                return Err(Error::invalid("set at least one field"));
            }
            // The fields and the renewed TTL in one atomic batch: a session
            // is never left without its TTL.
            let mut batch = Batch::new();
            for (field, value) in &fields {
                batch = batch.hash_set(&key, field, value);
            }
            for reply in batch.expire(&key, ttl()?).run()? {
                reply?;
            }
            let session = read(&key)?.ok_or_else(|| Error::other("the session vanished"))?;
            Response::json(200, &session)
        }
        "GET" => match read(&key)? {
            Some(session) => Response::json(200, &session),
            None => Ok(Response::text(404, "no such session\n")),
        },
        "DELETE" => {
            keys::delete(&[&key])?;
            Ok(Response::new(204))
        }
        _ => Ok(Response::text(405, "method not allowed\n")),
    }
}

redloom_sdk::export!(Sessions => [http]);
