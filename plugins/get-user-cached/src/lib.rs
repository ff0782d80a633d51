//! get-user-cached: the seed's `getUser(userId)` as an HTTP plugin, through
//! the `cache` capability in front of an origin reached by outbound HTTP.
//!
//! `GET /users/:id` answers `Cache::fetch("user:<id>", policy, origin)`:
//! - a fresh hit answers at once (`x-cache: hit`);
//! - on a miss exactly one request across every host reaches
//!   `GET <origin>/users/<id>` (`x-cache: miss`); concurrent requests for
//!   the same user wait for its value instead of stampeding the origin;
//! - with `stale-secs` > 0 (stale-while-revalidate), a value past `ttl-secs`
//!   is still answered at once (`x-cache: stale`) while one request
//!   refreshes it (`x-cache: refresh`);
//! - a 404 from the origin is remembered for `negative-secs` (default 10)
//!   and answered 404; other origin statuses are a 502 and are not cached.
//!
//! Settings: `origin` (required; must be in `allowed-outbound-hosts`),
//! `ttl-secs` (default 300), `stale-secs` (default 0), `negative-secs`
//! (default 10). Every entry is tagged `users`, so one
//! `cache::invalidate_tag("users")` drops them all.

use std::time::Duration;

use redloom_sdk::cache::{Cache, Policy};
use redloom_sdk::http::{self, Request, Response};
use redloom_sdk::{Error, Http, Result, config, log};

struct GetUserCached;

/// The origin answered something other than 200 or 404.
const ORIGIN_FAILED: &str = "the user service is unavailable";

impl Http for GetUserCached {
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
        let origin =
            config::get("origin").ok_or_else(|| Error::other("the `origin` setting is missing"))?;
        let policy = Policy::ttl(Duration::from_secs(config::get_parsed_or("ttl-secs", 300)?))
            .stale(Duration::from_secs(config::get_parsed_or("stale-secs", 0)?))
            .negative(Duration::from_secs(config::get_parsed_or(
                "negative-secs",
                10,
            )?))
            .tag("users");
        let url = format!("{}/users/{id}", origin.trim_end_matches('/'));
        let fetched = Cache::fetch(&format!("user:{id}"), &policy, || {
            let r = http::get(&url)?;
            match r.status {
                200 => Ok(Some(r.body)),
                404 => Ok(None),
                status => {
                    log::warn(&format!("origin answered {status} for user {id}"));
                    Err(Error::other(ORIGIN_FAILED))
                }
            }
        });
        match fetched {
            Ok(f) => Ok(match f.value {
                Some(user) => Response::new(200)
                    .with_header("content-type", "application/json")
                    .with_body(user),
                None => Response::text(404, "no such user\n"),
            }
            .with_header("x-cache", f.source.as_str())),
            Err(Error::Other(m)) if m == ORIGIN_FAILED => {
                Ok(Response::text(502, format!("{ORIGIN_FAILED}\n")))
            }
            Err(e) => Err(e),
        }
    }
}

redloom_sdk::export!(GetUserCached => [http]);
