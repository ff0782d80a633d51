//! video-worker: the seed's `video:ingest` worker.
//!
//! Consumes the shared queue `video:ingest` (`[plugins.video-worker.consumers."video:ingest"]`).
//! For each job it "transcodes" the video (here: records the work in kv:
//! `status:<id>` = `done <url>`, and counts `processed`). A URL containing
//! `broken` fails, so the retry and dead-letter path can be seen:
//! `redloom queue dead-letters video:ingest --plugin video-worker --shared`.

use redloom_sdk::queue::Job;
use redloom_sdk::{Error, OnJob, Result, kv, log};

struct Worker;

impl OnJob for Worker {
    fn on_job(job: Job) -> Result<()> {
        let url = String::from_utf8_lossy(&job.payload).into_owned();
        if url.contains("broken") {
            return Err(Error::other(format!("cannot transcode {url}")));
        }
        log::info(&format!(
            "transcoding {url} (job {}, attempt {})",
            job.id, job.attempt
        ));
        kv::set(&format!("status:{}", job.id), format!("done {url}"))?;
        kv::increment("processed", 1)?;
        Ok(())
    }
}

redloom_sdk::export!(Worker => [queue]);
