//! Test guest for the HTTP trigger. Routes (by path; the host's route
//! patterns decide which requests arrive here):
//!
//! | path | answer |
//! |---|---|
//! | `/echo/...` | 200, a text dump of the request: method, path, params, query, headers, body length |
//! | `/burn/:ms` | runs guest code for `ms` milliseconds, then 200 `done` |
//! | `/version` | 200, the `version` setting |
//! | `/error` | the plugin's error (the host answers 500) |
//! | `/error/:kind` | the plugin returns that kind of error: `backend` (backend-unavailable), `timeout`, `invalid` (invalid-argument) |
//! | `/panic` | a trap (500) |
//! | `/fetch?url=U` | outbound GET of `U`: 200 with the origin's status and body, or 502 with the error as `kind: message` (`denied: ...`, `timeout: ...`) |
//! | `/hold/:name` | `SET started:<name> 1`, then waits (checking every 100 ms, at most 60 s) until the kv key `release:<name>` exists, then 200 `done` (504 if it never appeared) |
//! | `/incr/:n?key=K` | `n` Redis increments of `K` (to spend the `redis-rate` quota), then 200 with the last value |
//! | `/forge` | 200 with a body that starts with `hello` and goes on with a whole forged HTTP response, and the framing and hop-by-hop headers that would make a client read only `hello` (`content-length: 5`, `transfer-encoding`, `connection`, `keep-alive`, `upgrade`, `te`, `trailer`, `proxy-connection`), plus `x-kept: yes` |
//! | `/big-header/:kib` | 200 `ok` with an `x-big` header of `kib` KiB |
//! | `/status/:code` | an empty answer with that status |
//! | `/hold?mark=M&release=R` | increments `M`, then waits (20 ms between looks) until the key `R` exists; 200 `done` |

use std::time::{Duration, Instant};

use redloom_sdk::http::{self, Request, Response};
use redloom_sdk::{Error, Http, Result, config, kv};

struct Probe;

impl Http for Probe {
    fn handle(request: Request) -> Result<Response> {
        let path = request.path.clone();
        if path.starts_with("/echo") {
            let mut out = format!("{} {}\n", request.method, request.path);
            for (k, v) in &request.params {
                out.push_str(&format!("param {k}={v}\n"));
            }
            for (k, v) in &request.query {
                out.push_str(&format!("query {k}={v}\n"));
            }
            if let Some(v) = request.header("x-test") {
                out.push_str(&format!("header x-test={v}\n"));
            }
            out.push_str(&format!("body {}\n", request.body.len()));
            return Ok(Response::text(200, out).with_header("x-probe", "yes"));
        }
        if let Some(ms) = path.strip_prefix("/burn/") {
            let ms: u64 = ms.parse().map_err(|_| Error::invalid("bad ms"))?;
            let until = Instant::now() + Duration::from_millis(ms);
            let mut x = 0u64;
            while Instant::now() < until {
                for _ in 0..10_000 {
                    x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
                }
            }
            return Ok(Response::text(200, "done"));
        }
        if let Some(name) = path.strip_prefix("/hold/") {
            // The test releases it: a request that holds its slot exactly
            // as long as the test needs, however slow the machine. Sleeping
            // happens in the host (no guest CPU); at most 600 commands.
            kv::set(&format!("started:{name}"), "1")?;
            let release = format!("release:{name}");
            let until = Instant::now() + Duration::from_secs(60);
            while !kv::exists(&release)? {
                if Instant::now() > until {
                    return Ok(Response::text(504, format!("{release} never appeared")));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            return Ok(Response::text(200, "done"));
        }
        if let Some(n) = path.strip_prefix("/incr/") {
            let n: u32 = n.parse().map_err(|_| Error::invalid("bad n"))?;
            let key = request
                .query("key")
                .ok_or_else(|| Error::invalid("no key"))?;
            let mut last = 0;
            for _ in 0..n {
                last = kv::increment(key, 1)?;
            }
            return Ok(Response::text(200, last.to_string()));
        }
        if let Some(kib) = path.strip_prefix("/big-header/") {
            let kib: usize = kib.parse().map_err(|_| Error::invalid("bad kib"))?;
            return Ok(Response::text(200, "ok").with_header("x-big", "b".repeat(kib << 10)));
        }
        if let Some(kind) = path.strip_prefix("/error/") {
            return Err(match kind {
                "backend" => Error::BackendUnavailable("secret: redis is down".into()),
                "timeout" => Error::Timeout("secret: redis did not answer".into()),
                _ => Error::invalid("secret: bad input"),
            });
        }
        if let Some(code) = path.strip_prefix("/status/") {
            let code: u16 = code.parse().map_err(|_| Error::invalid("bad code"))?;
            return Ok(Response::text(code, ""));
        }
        if path == "/hold" {
            let (mark, release) = match (request.query("mark"), request.query("release")) {
                (Some(m), Some(r)) => (m.to_string(), r.to_string()),
                _ => return Err(Error::invalid("/hold?mark=M&release=R")),
            };
            kv::increment(&mark, 1)?;
            while !kv::exists(&release)? {
                std::thread::sleep(Duration::from_millis(20));
            }
            return Ok(Response::text(200, "done"));
        }
        if path == "/forge" {
            let forged = "HTTP/1.1 200 OK\r\ncontent-length: 6\r\nx-forged: 1\r\n\r\nforged";
            let body = format!("hello{forged}");
            let mut r = Response::text(200, body);
            for (k, v) in [
                ("content-length", "5"),
                ("transfer-encoding", "identity"),
                ("connection", "keep-alive"),
                ("keep-alive", "timeout=999"),
                ("upgrade", "h2c"),
                ("te", "trailers"),
                ("trailer", "x-after"),
                ("proxy-connection", "keep-alive"),
                ("x-kept", "yes"),
            ] {
                r = r.with_header(k, v);
            }
            return Ok(r);
        }
        match path.as_str() {
            "/version" => Ok(Response::text(200, config::get_or("version", "1"))),
            "/error" => Err(Error::other("secret internal detail")),
            "/panic" => panic!("secret panic detail"),
            "/fetch" => {
                let url = request
                    .query("url")
                    .ok_or_else(|| Error::invalid("no url"))?;
                match http::get(url) {
                    Ok(r) => Ok(Response::text(
                        200,
                        format!("{} {}", r.status, String::from_utf8_lossy(&r.body)),
                    )),
                    Err(e) => Ok(Response::text(
                        502,
                        format!("{}: {}", e.kind(), e.message()),
                    )),
                }
            }
            _ => Ok(Response::text(404, "probe: no such path")),
        }
    }
}

redloom_sdk::export!(Probe => [http]);
