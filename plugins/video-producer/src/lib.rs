//! video-producer: the seed's `video:ingest` producer behind HTTP.
//!
//! `POST /videos` with the video's URL as the body enqueues a job on the
//! shared queue `video:ingest` (the manifest lists it in `shared-queues`
//! for both this plugin and video-worker). An `idempotency-key` header makes
//! a retried upload enqueue once; `x-delay-ms` schedules it for later.
//! Answers 202 with the message id, or 503 when the queue is full.

use std::time::Duration;

use redloom_sdk::http::{Request, Response};
use redloom_sdk::queue::{self, EnqueueOptions};
use redloom_sdk::{Error, Http, Result};

struct Producer;

impl Http for Producer {
    fn handle(request: Request) -> Result<Response> {
        let url = String::from_utf8(request.body.clone())?;
        let url = url.trim();
        if url.is_empty() || url.len() > 2048 {
            return Ok(Response::text(
                400,
                "send the video URL (1-2048 bytes) as the body\n",
            ));
        }
        let mut options = EnqueueOptions::default().header("source", "http");
        if let Some(key) = request.header("idempotency-key") {
            options = options.dedupe_id(key);
        }
        if let Some(ms) = request.header("x-delay-ms").and_then(|v| v.parse().ok()) {
            options = options.delay(Duration::from_millis(ms));
        }
        match queue::enqueue("video:ingest", url, options) {
            Ok(id) => Ok(Response::text(202, format!("{id}\n"))),
            Err(Error::QuotaExceeded(_)) => Ok(Response::text(
                503,
                "the ingest queue is full; retry later\n",
            )
            .with_header("retry-after", "5")),
            Err(e) => Err(e),
        }
    }
}

redloom_sdk::export!(Producer => [http]);
