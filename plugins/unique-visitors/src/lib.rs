//! unique-visitors: distinct visitors per page and day with HyperLogLog
//! (about 0.8 % error, at most 12 KiB per page and day), over HTTP.
//!
//! A visit adds the visitor's id to the day's HyperLogLog
//! (`{visits:PAGE}YYYY-MM-DD`, kept 8 days). The week is the merge of the
//! last seven days into `{visits:PAGE}week`, whose count is the number of
//! distinct visitors over the week, not the sum of the days.
//!
//! Routes (bind them in `redloom.toml`):
//!
//! - `POST /visits/:page` with the visitor's id as the body: records the
//!   visit; answers `{"today": N}`.
//! - `GET /visits/:page`: `{"today": N, "week": M}`, merging the week.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redloom_sdk::http::{Request, Response};
use redloom_sdk::{Error, Http, Result, hyperloglog, keys};
use serde_json::json;

/// How long a day's HyperLogLog is kept.
const KEEP: Duration = Duration::from_secs(8 * 24 * 3600);

/// The civil date `days` days after 1970-01-01 (Howard Hinnant's algorithm).
fn date(days: i64) -> String {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

fn today() -> Result<i64> {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|e| Error::other(format!("the clock is before 1970: {e}")))?
        .as_secs();
    Ok((secs / 86_400) as i64)
}

fn day_key(page: &str, day: i64) -> String {
    format!("{{visits:{page}}}{}", date(day))
}

fn visit(page: &str, visitor: &[u8]) -> Result<Response> {
    let visitor = std::str::from_utf8(visitor)
        .ok()
        .filter(|v| !v.is_empty() && v.len() <= 256)
        .ok_or_else(|| Error::invalid("the body is the visitor's id, 1 to 256 bytes of text"))?;
    let key = day_key(page, today()?);
    hyperloglog::add(&key, &[visitor])?;
    keys::expire(&key, KEEP)?;
    Response::json(200, &json!({"today": hyperloglog::count(&[&key])?}))
}

fn counts(page: &str) -> Result<Response> {
    let now = today()?;
    let days: Vec<String> = (0..7).map(|d| day_key(page, now - d)).collect();
    let week = format!("{{visits:{page}}}week");
    // The week is rebuilt from the days each time, so an old week's
    // visitors never linger in it.
    keys::delete(&[&week])?;
    hyperloglog::merge(&week, &days)?;
    keys::expire(&week, KEEP)?;
    Response::json(
        200,
        &json!({
            "today": hyperloglog::count(&days[..1])?,
            "week": hyperloglog::count(&[&week])?,
        }),
    )
}

/// The request's answer; bad input is an `invalid-argument` error.
fn route(request: Request) -> Result<Response> {
    let page = request
        .param("page")
        .filter(|p| !p.is_empty() && p.len() <= 128 && !p.contains(['{', '}']))
        .ok_or_else(|| Error::invalid("page must be 1 to 128 bytes without braces"))?;
    match request.method.as_str() {
        "POST" => visit(page, &request.body),
        "GET" => counts(page),
        _ => Ok(Response::text(405, "method not allowed\n")),
    }
}

struct Visitors;

impl Http for Visitors {
    /// Bad input is the client's mistake (400, with why); any other error
    /// is the host's 500.
    fn handle(request: Request) -> Result<Response> {
        match route(request) {
            Err(Error::InvalidArgument(why)) => Ok(Response::text(400, format!("{why}\n"))),
            answer => answer,
        }
    }
}

redloom_sdk::export!(Visitors => [http]);

#[cfg(test)]
mod tests {
    #[test]
    fn dates() {
        assert_eq!(super::date(0), "1970-01-01");
        assert_eq!(super::date(20_428), "2025-12-06");
        assert_eq!(super::date(11_016), "2000-02-29");
    }
}
