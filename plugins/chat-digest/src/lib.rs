//! chat-digest: a timer plugin that aggregates.
//!
//! It hears every chat message (`subscriptions = ["room:*"]` on the shared
//! channels) and counts them; on its `digest` timer (a cron expression, with
//! `singleton = true` so one host runs each tick), it moves the count since
//! the last tick into `digest:<tick>` (kept for a day) and logs it. The
//! count is taken with compare-and-swap, so messages arriving during the
//! tick are never lost or counted twice. README.md has the configuration,
//! e.g. `cron = "0 */5 * * * *"` (seconds first: every five minutes).

use std::time::Duration;

use redloom_sdk::pubsub::{Message, Tick};
use redloom_sdk::{OnMessage, OnTick, Result, kv, log};

struct Digest;

impl OnMessage for Digest {
    fn on_message(_: Message) -> Result<()> {
        kv::increment("pending", 1)?;
        Ok(())
    }
}

impl OnTick for Digest {
    fn on_tick(tick: Tick) -> Result<()> {
        // Take the pending count atomically: retry if a message landed in between.
        for _ in 0..16 {
            let current = kv::get("pending")?;
            let n: u64 = current
                .as_deref()
                .and_then(|v| std::str::from_utf8(v).ok())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            if kv::compare_and_swap("pending", current.as_deref(), b"0", None)? {
                kv::set_with(
                    &format!("digest:{}", tick.scheduled_ms),
                    n.to_string(),
                    kv::SetOptions::new().ttl(Duration::from_secs(86_400)),
                )?;
                log::info(&format!(
                    "{}: {n} chat messages since the last digest",
                    tick.timer
                ));
                return Ok(());
            }
        }
        Err(redloom_sdk::Error::other("the pending count kept changing"))
    }
}

redloom_sdk::export!(Digest => [message, timer]);
