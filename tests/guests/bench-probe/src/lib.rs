//! Benchmark guest for `bench/` (`redloom-bench`): each invocation does one
//! pattern operation, so a benchmark measures the pattern plus the plugin
//! boundary and nothing else (no JSON, no allocation beyond the call).
//!
//! invoke input `OP:ARG`:
//! - `noop`: returns nothing, touches no capability;
//! - `cache:KEY`: cache-aside, `Cache::get_or_fill` with a 10 min fresh time
//!   and a 128-byte value (a hit when KEY is warm, a miss + fill when not),
//!   always from Redis (`near_cache(false)`), like the native side;
//! - `cache-near:KEY`: the same with the host's near cache (a warm key is
//!   then a hit in host memory);
//! - `limit:KEY`: `limiter::check` of the manifest's `bench` policy;
//! - `lock:NAME`: acquire (wait up to 1 s) and release, uncontended;
//! - `wait-lock:NAME`: `INCR arrived:NAME`, then acquire with a 20 s wait
//!   (keeps the instance in flight while the benchmark holds NAME);
//! - `enqueue:QUEUE`: enqueues a 64-byte payload;
//! - `publish:CHANNEL`: publishes a 64-byte payload.
//!
//! queue handler: publishes the job's id on channel `done`, so the
//! benchmark sees when the message was processed.

use std::time::Duration;

use redloom_sdk::cache::{Cache, Policy};
use redloom_sdk::queue::{self, EnqueueOptions, Job};
use redloom_sdk::{Error, Invoke, OnJob, Result, kv, limiter, lock, pubsub};

/// The cached value (the native baseline stores the same bytes).
const VALUE: [u8; 128] = [b'v'; 128];
/// Enqueued and published payloads.
const PAYLOAD: [u8; 64] = [b'p'; 64];

struct Bench;

impl Invoke for Bench {
    fn invoke(input: Vec<u8>) -> Result<Vec<u8>> {
        let text = std::str::from_utf8(&input).map_err(|e| Error::invalid(e.to_string()))?;
        let (op, arg) = text.split_once(':').unwrap_or((text, ""));
        match op {
            "noop" => Ok(Vec::new()),
            "cache" | "cache-near" => {
                let policy = Policy::ttl(Duration::from_secs(600)).near_cache(op == "cache-near");
                Cache::get_or_fill(arg, &policy, || Ok(VALUE.to_vec()))
            }
            "limit" => {
                let d = limiter::check("bench", arg)?;
                Ok(vec![u8::from(d.allowed)])
            }
            "lock" => {
                let guard = lock::acquire(arg, Duration::from_secs(10), Duration::from_secs(1))?;
                Ok(vec![u8::from(guard.release()?.is_owner())])
            }
            "wait-lock" => {
                kv::increment(&format!("arrived:{arg}"), 1)?;
                let guard = lock::acquire(arg, Duration::from_secs(10), Duration::from_secs(20))?;
                Ok(vec![u8::from(guard.release()?.is_owner())])
            }
            "enqueue" => Ok(queue::enqueue(arg, PAYLOAD, EnqueueOptions::default())?.into_bytes()),
            "publish" => Ok(pubsub::publish(arg, PAYLOAD)?.to_le_bytes().to_vec()),
            _ => Err(Error::invalid(format!("unknown op `{op}`"))),
        }
    }
}

impl OnJob for Bench {
    fn on_job(job: Job) -> Result<()> {
        pubsub::publish("done", job.id.as_bytes())?;
        Ok(())
    }
}

redloom_sdk::export!(Bench => [invoke, queue]);
