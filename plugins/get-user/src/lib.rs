//! get-user: the seed's `getUser(userId)` as an HTTP plugin, with
//! cache-aside in front of an origin reached by outbound HTTP.
//!
//! `GET /users/:id`:
//! 1. look the user up in the cache (`kv` key `user:<id>`); a hit answers
//!    at once (`x-cache: hit`);
//! 2. on a miss, `GET <origin>/users/<id>` (the `origin` setting; it must be
//!    in the manifest's `allowed-outbound-hosts`), store a 200's body with a
//!    TTL of `ttl-secs` (default 300) and answer it (`x-cache: miss`);
//! 3. a 404 from the origin is a 404; anything else is a 502.
//!
//! Concurrent misses of one key each reach the origin here; the `cache`
//! capability (single-flight, stale-while-revalidate) is the next step.

use std::time::Duration;

use redloom_sdk::http::{self, Request, Response};
use redloom_sdk::kv::{self, SetOptions};
use redloom_sdk::{Error, Http, Result, config, log};

const DEFAULT_TTL_SECS: u64 = 300;

struct GetUser;

impl Http for GetUser {
    fn handle(request: Request) -> Result<Response> {
        let id = request.param("id").unwrap_or_default();
        if id.is_empty()
            || id.len() > 64
            || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Ok(Response::text(
                400,
                "user ids are 1-64 letters, digits or '-'\n",
            ));
        }
        let key = format!("user:{id}");
        if let Some(user) = kv::get(&key)? {
            return Ok(json(200, user).with_header("x-cache", "hit"));
        }
        let origin =
            config::get("origin").ok_or_else(|| Error::other("the `origin` setting is missing"))?;
        let ttl: u64 = config::get_parsed_or("ttl-secs", DEFAULT_TTL_SECS)?;
        let fetched = http::get(&format!("{}/users/{id}", origin.trim_end_matches('/')))?;
        match fetched.status {
            200 => {
                kv::set_with(
                    &key,
                    &fetched.body,
                    SetOptions::new().ttl(Duration::from_secs(ttl)),
                )?;
                log::debug(&format!("cached {key} for {ttl}s"));
                Ok(json(200, fetched.body).with_header("x-cache", "miss"))
            }
            404 => Ok(Response::text(404, "no such user\n")),
            status => {
                log::warn(&format!("origin answered {status} for user {id}"));
                Ok(Response::text(502, "the user service is unavailable\n"))
            }
        }
    }
}

fn json(status: u16, body: Vec<u8>) -> Response {
    Response::new(status)
        .with_header("content-type", "application/json")
        .with_body(body)
}

redloom_sdk::export!(GetUser => [http]);
