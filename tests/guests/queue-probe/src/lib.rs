//! Test guest for queues.
//!
//! invoke: a JSON object `{"queue": Q, "payloads": [..], "delay_ms"?: n,
//! "dedupe"?: id, "dedupe_window_ms"?: n, "max_attempts"?: n,
//! "headers"?: {name: value}}` enqueues
//! each payload and returns the ids as a JSON array. A refused one (a full
//! queue) is swallowed as `"full"`, but the refusal is a quota breach, so
//! the host fails the invocation anyway.
//!
//! queue handler, by payload:
//! - `ok...`: `INCR done:<id>`, `INCR done-total`;
//! - `fail-N`: fails attempts 1..=N, then succeeds like `ok`;
//! - `always-fail`: always fails;
//! - `slow-MS`: runs guest code for MS milliseconds, then succeeds;
//! - `hold-KEY`: waits until the kv key KEY exists (polling every 10 ms, at
//!   most 50 s, then fails), then succeeds: a test holds the message
//!   running until it says so;
//! - `sleep-MS`: sleeps MS milliseconds (no CPU), then succeeds;
//! - `durable`: only enqueues the job's id on the queue `done-log`.
//!
//! Every delivery but a `durable` one also does `INCR attempts:<id>` and
//! records its time in `at:<id>:<attempt>`.
//!
//! http: `POST /enqueue/Q` enqueues the body on queue `Q` and answers 200
//! with the id, or, when the enqueue fails, still 200 with `refused:
//! KIND transient=BOOL` (a plugin that swallows the error: the host must
//! not let that answer out when the error was a quota breach).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redloom_sdk::http::{Request, Response};
use redloom_sdk::queue::{self, EnqueueOptions, Job};
use redloom_sdk::{Error, Http, Invoke, OnJob, Result, kv};
use serde_json::Value;

struct Probe;

impl Invoke for Probe {
    fn invoke(input: Vec<u8>) -> Result<Vec<u8>> {
        let v: Value = serde_json::from_slice(&input).map_err(|e| Error::invalid(e.to_string()))?;
        let q = v["queue"]
            .as_str()
            .ok_or_else(|| Error::invalid("no queue"))?;
        let mut ids = Vec::new();
        for p in v["payloads"].as_array().cloned().unwrap_or_default() {
            let mut o = EnqueueOptions::default();
            if let Some(d) = v["delay_ms"].as_u64() {
                o = o.delay(Duration::from_millis(d));
            }
            if let Some(d) = v["dedupe"].as_str() {
                o = o.dedupe_id(d);
            }
            if let Some(w) = v["dedupe_window_ms"].as_u64() {
                o = o.dedupe_window(Duration::from_millis(w));
            }
            if let Some(m) = v["max_attempts"].as_u64() {
                o = o.max_attempts(m as u32);
            }
            if let Some(h) = v["headers"].as_object() {
                for (name, value) in h {
                    o = o.header(name, value.as_str().unwrap_or_default());
                }
            }
            match queue::enqueue(q, p.as_str().unwrap_or_default(), o) {
                Ok(id) => ids.push(Value::String(id)),
                Err(Error::QuotaExceeded(_)) => ids.push(Value::String("full".into())),
                Err(e) => return Err(e),
            }
        }
        Ok(Value::Array(ids).to_string().into_bytes())
    }
}

impl OnJob for Probe {
    fn on_job(job: Job) -> Result<()> {
        let payload = String::from_utf8_lossy(&job.payload).into_owned();
        if payload == "durable" {
            // The record is itself a queue message, so with `wait-replicas`
            // it survives a failover like the job did.
            queue::enqueue("done-log", job.id.as_str(), EnqueueOptions::default())?;
            return Ok(());
        }
        kv::increment(&format!("attempts:{}", job.id), 1)?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        kv::set(&format!("at:{}:{}", job.id, job.attempt), now.to_string())?;
        if let Some(n) = payload.strip_prefix("fail-") {
            let n: u32 = n.parse().unwrap_or(0);
            if job.attempt <= n {
                return Err(Error::other(format!("failing attempt {}", job.attempt)));
            }
        } else if payload == "always-fail" {
            return Err(Error::other("this job always fails"));
        } else if let Some(key) = payload.strip_prefix("hold-") {
            let until = Instant::now() + Duration::from_secs(50);
            while !kv::exists(key)? {
                if Instant::now() >= until {
                    return Err(Error::other(format!("`{key}` never appeared")));
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        } else if let Some(ms) = payload.strip_prefix("sleep-") {
            std::thread::sleep(Duration::from_millis(ms.parse().unwrap_or(0)));
        } else if let Some(ms) = payload.strip_prefix("slow-") {
            let until = Instant::now() + Duration::from_millis(ms.parse().unwrap_or(0));
            while Instant::now() < until {
                std::hint::black_box(0u64);
            }
        }
        kv::increment(&format!("done:{}", job.id), 1)?;
        kv::increment("done-total", 1)?;
        Ok(())
    }
}

impl Http for Probe {
    fn handle(request: Request) -> Result<Response> {
        let Some(q) = request.path.strip_prefix("/enqueue/") else {
            return Ok(Response::text(404, "probe: no such path"));
        };
        Ok(
            match queue::enqueue(q, request.body.as_slice(), EnqueueOptions::default()) {
                Ok(id) => Response::text(200, id),
                Err(e) => Response::text(
                    200,
                    format!("refused: {} transient={}", e.kind(), e.is_transient()),
                ),
            },
        )
    }
}

redloom_sdk::export!(Probe => [invoke, queue, http]);
