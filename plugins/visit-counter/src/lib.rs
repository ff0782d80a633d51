//! visit-counter: counts page visits and recognises returning visitors.
//!
//! Input: `{"page": "/pricing", "visitor": "v-123"}` (JSON), or a bare visitor
//! id as plain text, which counts as a visit to `/`.
//!
//! Per call it
//! 1. increments the page's visit counter (`kv::increment`, kept forever);
//! 2. reads the visitor's session and writes it back with a fresh TTL
//!    (`session-ttl-secs` from the manifest settings, default 1800), so a
//!    visitor is "returning" while they come back within the TTL;
//!
//! and replies with JSON:
//! `{"page": "/pricing", "visits": 42, "returning": true, "pages_this_session": 3}`.

use std::time::Duration;

use redloom_sdk::kv::{self, SetOptions};
use redloom_sdk::{Error, Invoke, Result, config, log};
use serde::{Deserialize, Serialize};

/// Setting: how long a session lasts after the visitor's last visit.
const SESSION_TTL_SETTING: &str = "session-ttl-secs";
const DEFAULT_SESSION_TTL_SECS: u64 = 30 * 60;
/// Page and visitor names are part of keys; the host caps keys at 1024 bytes,
/// these caps keep every key well inside that with a clear error.
const MAX_PAGE_BYTES: usize = 512;
const MAX_VISITOR_BYTES: usize = 256;

struct VisitCounter;

#[derive(Deserialize)]
struct Visit {
    #[serde(default = "root_page")]
    page: String,
    visitor: String,
}

fn root_page() -> String {
    "/".to_owned()
}

/// What is stored per visitor, under `session:<visitor>`, with the session TTL.
#[derive(Serialize, Deserialize)]
struct Session {
    last_page: String,
    pages: u64,
}

#[derive(Serialize)]
struct Summary<'a> {
    page: &'a str,
    visits: i64,
    returning: bool,
    pages_this_session: u64,
}

impl Invoke for VisitCounter {
    fn invoke(input: Vec<u8>) -> Result<Vec<u8>> {
        let visit = parse_visit(&input)?;
        let ttl_secs: u64 = config::get_parsed_or(SESSION_TTL_SETTING, DEFAULT_SESSION_TTL_SECS)?;
        if ttl_secs == 0 {
            return Err(Error::invalid(format!(
                "setting `{SESSION_TTL_SETTING}` must be at least 1"
            )));
        }

        let visits = kv::increment(&format!("page:{}:visits", visit.page), 1)?;

        let session_key = format!("session:{}", visit.visitor);
        let previous: Option<Session> = kv::get_json(&session_key)?;
        let returning = previous.is_some();
        let session = Session {
            last_page: visit.page.clone(),
            pages: previous.map_or(0, |s| s.pages) + 1,
        };
        kv::set_json_with(
            &session_key,
            &session,
            SetOptions::new().ttl(Duration::from_secs(ttl_secs)),
        )?;

        log::debug!(
            "visit to {} by {} (visit #{visits}, {})",
            visit.page,
            visit.visitor,
            if returning { "returning" } else { "new" }
        );

        let summary = Summary {
            page: &visit.page,
            visits,
            returning,
            pages_this_session: session.pages,
        };
        Ok(serde_json::to_vec(&summary)?)
    }
}

redloom_sdk::export!(VisitCounter => [invoke]);

/// Reads JSON `{"page", "visitor"}` or a bare visitor id, and checks both names.
fn parse_visit(input: &[u8]) -> Result<Visit> {
    let text = std::str::from_utf8(input)?.trim();
    let visit = if text.starts_with('{') {
        serde_json::from_str::<Visit>(text)?
    } else {
        Visit {
            page: root_page(),
            visitor: text.to_owned(),
        }
    };
    check_name("visitor", &visit.visitor, MAX_VISITOR_BYTES)?;
    check_name("page", &visit.page, MAX_PAGE_BYTES)?;
    Ok(visit)
}

fn check_name(what: &str, value: &str, max: usize) -> Result<()> {
    if value.is_empty() {
        return Err(Error::invalid(format!("{what} is empty")));
    }
    if value.len() > max {
        return Err(Error::invalid(format!("{what} is longer than {max} bytes")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// JSON and plain-text input both parse; a JSON visit without a page is a visit to `/`.
    #[test]
    fn parses_both_input_forms() {
        let v = parse_visit(br#"{"page":"/pricing","visitor":"v-1"}"#).unwrap();
        assert_eq!((v.page.as_str(), v.visitor.as_str()), ("/pricing", "v-1"));
        let v = parse_visit(b"  v-2\n").unwrap();
        assert_eq!((v.page.as_str(), v.visitor.as_str()), ("/", "v-2"));
        let v = parse_visit(br#"{"visitor":"v-3"}"#).unwrap();
        assert_eq!(v.page, "/");
    }

    /// Empty, oversized, non-UTF-8 and malformed input is an invalid argument.
    #[test]
    fn rejects_bad_input() {
        let long = "x".repeat(MAX_VISITOR_BYTES + 1);
        for bad in [
            &b""[..],
            b"   ",
            b"\xff",
            br#"{"page":"/"}"#,
            br#"{"visitor":""}"#,
            long.as_bytes(),
        ] {
            let e = parse_visit(bad).err().expect("rejected");
            assert_eq!(e.kind(), "invalid-argument", "{e}");
        }
    }
}
