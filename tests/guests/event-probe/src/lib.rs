//! Test guest for the pub/sub, keyspace and timer triggers: it records what
//! it receives in its own kv keys, so tests read the effects from Redis.
//!
//! - message: `SET last:<channel> <payload>`, `INCR got:<channel>`, and
//!   `INCR got-pattern:<pattern>` when a pattern matched; a payload starting
//!   with `slow` first does `INCR started:<channel>` and runs guest code for
//!   200 ms (`slow:<ms>`: for that many ms); a payload `hold` first does
//!   `INCR started:<channel>` and waits until the key `release:<channel>`
//!   exists (see [`hold`]).
//! - tick: `INCR tick:<timer>:<scheduled ms>` and `INCR ticks:<timer>`; a
//!   timer whose name starts with `slow` first does `INCR started:<timer>`
//!   and runs guest code for 1 s; one whose name starts with `hold` first
//!   does `INCR started:<timer>` and waits until `release:<timer>` exists.
//! - invoke: `publish <channel> <payload>` publishes and returns the count.

use std::time::{Duration, Instant};

use redloom_sdk::pubsub::{self, Message, Tick};
use redloom_sdk::{Error, Invoke, OnMessage, OnTick, Result, kv};

struct Probe;

/// Runs guest code (no host call) for `ms` milliseconds.
fn spin(ms: u64) {
    let until = Instant::now() + Duration::from_millis(ms);
    while Instant::now() < until {
        std::hint::black_box(0u64);
    }
}

/// How long [`hold`] waits for its release key at most.
const HOLD_LIMIT: Duration = Duration::from_secs(60);

/// Waits until the kv key `release:<name>` exists, so a test decides when
/// a handler ends instead of guessing how long it takes: checks every
/// 100 ms (sleeping in the host, so no guest CPU is spent; at most 600
/// commands, well inside the per-invocation Redis quota), and fails after
/// [`HOLD_LIMIT`].
fn hold(name: &str) -> Result<()> {
    let key = format!("release:{name}");
    let until = Instant::now() + HOLD_LIMIT;
    while !kv::exists(&key)? {
        if Instant::now() > until {
            return Err(Error::other(format!(
                "{key} did not appear within {HOLD_LIMIT:?}"
            )));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

impl OnMessage for Probe {
    fn on_message(message: Message) -> Result<()> {
        if message.payload == b"hold" {
            kv::increment(&format!("started:{}", message.channel), 1)?;
            hold(&message.channel)?;
        } else if let Some(rest) = message.payload.strip_prefix(b"slow") {
            kv::increment(&format!("started:{}", message.channel), 1)?;
            let ms = rest
                .strip_prefix(b":")
                .and_then(|ms| std::str::from_utf8(ms).ok()?.parse().ok())
                .unwrap_or(200);
            spin(ms);
        }
        // `last` first: tests wait for `got`, then read `last`.
        kv::set(&format!("last:{}", message.channel), &message.payload)?;
        kv::increment(&format!("got:{}", message.channel), 1)?;
        if let Some(p) = &message.pattern {
            kv::increment(&format!("got-pattern:{p}"), 1)?;
        }
        Ok(())
    }
}

impl OnTick for Probe {
    fn on_tick(tick: Tick) -> Result<()> {
        if tick.timer.starts_with("slow") {
            kv::increment(&format!("started:{}", tick.timer), 1)?;
            spin(1_000);
        } else if tick.timer.starts_with("hold") {
            kv::increment(&format!("started:{}", tick.timer), 1)?;
            hold(&tick.timer)?;
        }
        kv::increment(&format!("tick:{}:{}", tick.timer, tick.scheduled_ms), 1)?;
        kv::increment(&format!("ticks:{}", tick.timer), 1)?;
        Ok(())
    }
}

impl Invoke for Probe {
    fn invoke(input: Vec<u8>) -> Result<Vec<u8>> {
        let input = String::from_utf8(input)?;
        let mut words = input.splitn(3, ' ');
        match (words.next(), words.next(), words.next()) {
            (Some("publish"), Some(channel), payload) => {
                let n = pubsub::publish(channel, payload.unwrap_or(""))?;
                Ok(n.to_string().into_bytes())
            }
            _ => Err(Error::invalid("expected `publish <channel> <payload>`")),
        }
    }
}

redloom_sdk::export!(Probe => [invoke, message, timer]);
