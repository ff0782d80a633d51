//! The timer trigger: `every = "30s"` or `cron = "0 */5 * * * *"` per
//! `[plugins.NAME.timers.TIMER]`.
//!
//! Ticks are wall-clock instants every host computes the same way (multiples
//! of the period since the Unix epoch, or the cron schedule in UTC), so with
//! `singleton = true` the hosts running a plugin race for an atomic claim of
//! each tick (`SET rl:<plugin>:timer:{<timer>}:<tick ms> NX PX`) and exactly
//! one runs it. A claim lives ten periods (at least 1 s, a day for cron);
//! a host stalled for half of that skips the tick rather than claim it
//! after the first claim may have expired. Without `singleton`, every host
//! runs every tick.
//!
//! Missed ticks (while the host runs: the previous tick ran past the next,
//! or the process was paused or starved): `missed = "skip"` (default) drops
//! them and waits for the next future tick; `missed = "catch-up"` runs the
//! most recent missed tick once, at once. Ticks of one timer never overlap
//! on one host. A host keeps no record of its ticks, so one that starts (or
//! restarts) begins with the next future tick: ticks due while no host ran
//! are never run, whatever `missed` says.
//!
//! Shutdown: a timer stops waiting for its next tick at once; a tick
//! already running finishes (the shutdown deadline bounds it, see
//! [`super::Triggers::stop`]).

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::{Config, Missed, Schedule, TimerConfig};
use crate::host::Host;
use crate::namespace::PluginName;
use crate::plugin::{Call, Tick};

/// Spawns one task per configured timer; each ends once `stopped` is true
/// and no tick of it is running.
pub fn start(
    host: Arc<Host>,
    config: &Config,
    stopped: &watch::Receiver<bool>,
) -> Vec<JoinHandle<()>> {
    let mut tasks = Vec::new();
    for (name, p) in &config.plugins {
        for (timer, t) in &p.triggers.timers {
            tasks.push(tokio::spawn(run(
                host.clone(),
                name.clone(),
                timer.clone(),
                t.clone(),
                stopped.clone(),
            )));
        }
    }
    tasks
}

/// The first tick strictly after `after_ms`.
fn next_tick(schedule: &Schedule, cron: Option<&cron::Schedule>, after_ms: u64) -> Option<u64> {
    match schedule {
        Schedule::Every(period) => {
            let p = period.as_millis().max(1) as u64;
            Some((after_ms / p + 1) * p)
        }
        Schedule::Cron(_) => {
            let after = chrono::DateTime::from_timestamp_millis(after_ms as i64)?;
            cron?
                .after(&after)
                .next()
                .map(|t| t.timestamp_millis() as u64)
        }
    }
}

/// How long a singleton claim lives: long enough that no other host can
/// claim the same tick, short enough not to pile up keys.
fn claim_ttl(schedule: &Schedule) -> u64 {
    match schedule {
        Schedule::Every(p) => (p.as_millis() as u64 * 10).clamp(1_000, 86_400_000),
        Schedule::Cron(_) => 86_400_000,
    }
}

async fn run(
    host: Arc<Host>,
    plugin: PluginName,
    timer: String,
    t: TimerConfig,
    mut stopped: watch::Receiver<bool>,
) {
    let cron = match &t.schedule {
        Schedule::Cron(c) => match cron::Schedule::from_str(c) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::error!(%plugin, %timer, "invalid cron expression: {e}");
                return;
            }
        },
        Schedule::Every(_) => None,
    };
    let Some(mut due) = next_tick(&t.schedule, cron.as_ref(), crate::units::unix_ms()) else {
        tracing::warn!(%plugin, %timer, "the schedule has no future tick");
        return;
    };
    loop {
        let now = crate::units::unix_ms();
        if due > now {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(due - now)) => {}
                // Also ends when the sender is gone (triggers dropped).
                _ = stopped.wait_for(|s| *s) => return,
            }
        }
        // A catch-up tick is due at once: no new tick after a stop either.
        if *stopped.borrow() {
            return;
        }
        // Not raced against the stop signal: a tick that started finishes.
        fire(&host, &plugin, &timer, &t, due).await;
        // Where the schedule stands after this tick (which may have run long).
        let now = crate::units::unix_ms();
        let Some(next) = next_tick(&t.schedule, cron.as_ref(), due) else {
            return;
        };
        due = if next > now {
            next
        } else {
            // Ticks passed while this one ran or the host was away.
            let latest_missed = last_tick_at_or_before(&t.schedule, cron.as_ref(), next, now);
            match t.missed {
                Missed::CatchUp => latest_missed,
                Missed::Skip => match next_tick(&t.schedule, cron.as_ref(), now) {
                    Some(n) => n,
                    None => return,
                },
            }
        };
    }
}

/// The latest tick in `[first, now]` (`first` is a tick).
fn last_tick_at_or_before(
    schedule: &Schedule,
    cron: Option<&cron::Schedule>,
    first: u64,
    now: u64,
) -> u64 {
    let mut last = first;
    while let Some(n) = next_tick(schedule, cron, last) {
        if n > now {
            break;
        }
        last = n;
    }
    last
}

/// Whether a singleton tick due at `due` may still be claimed at `now`:
/// another host's claim of it lives at least `claim_ttl` from `due`, so
/// before half of that has passed it is surely still there, and a claim by
/// this host cannot succeed after another host ran the tick. A host that
/// was stalled longer skips the tick instead.
fn claimable(schedule: &Schedule, due: u64, now: u64) -> bool {
    now < due.saturating_add(claim_ttl(schedule) / 2)
}

async fn fire(host: &Host, plugin: &PluginName, timer: &str, t: &TimerConfig, due: u64) {
    if t.singleton {
        if !claimable(&t.schedule, due, crate::units::unix_ms()) {
            tracing::warn!(
                %plugin,
                timer,
                due,
                "skipping a tick too old to claim safely (this host was stalled)"
            );
            return;
        }
        let key = format!("rl:{plugin}:timer:{{{timer}}}:{due}");
        match host.redis().claim(&key, claim_ttl(&t.schedule)).await {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                tracing::warn!(%plugin, timer, "cannot claim the tick (skipped): {e}");
                return;
            }
        }
    }
    let tick = Tick {
        timer: timer.to_string(),
        scheduled_ms: due,
    };
    let source = format!("timer {timer}");
    if let Err(e) = super::call(host, plugin, Call::Tick(&tick), &source).await {
        tracing::warn!(%plugin, timer, "timer handler failed: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A singleton tick is claimed only while every other host's claim of
    /// it must still exist: within half the claim's time to live.
    #[test]
    fn old_ticks_are_not_claimed() {
        let every = Schedule::Every(Duration::from_millis(100));
        // 100 ms period: claims live 1 s.
        assert!(claimable(&every, 10_000, 10_000));
        assert!(claimable(&every, 10_000, 10_499));
        assert!(!claimable(&every, 10_000, 10_500));
        let cron = Schedule::Cron("0 * * * * *".into());
        assert!(claimable(&cron, 0, 43_199_999));
        assert!(!claimable(&cron, 0, 43_200_000));
    }

    /// Interval ticks are multiples of the period; cron ticks follow the
    /// expression; catch-up finds the latest missed tick.
    #[test]
    fn schedules() {
        let every = Schedule::Every(Duration::from_millis(250));
        assert_eq!(next_tick(&every, None, 1_000), Some(1_250));
        assert_eq!(next_tick(&every, None, 1_001), Some(1_250));
        assert_eq!(last_tick_at_or_before(&every, None, 1_250, 2_100), 2_000);
        let c = cron::Schedule::from_str("0 */5 * * * *").unwrap();
        let cron = Schedule::Cron("0 */5 * * * *".into());
        // 1970-01-01T00:00:01Z → the next multiple of five minutes.
        assert_eq!(next_tick(&cron, Some(&c), 1_000), Some(300_000));
        // `start/step` in the seconds field: every odd second.
        let c = cron::Schedule::from_str("1/2 * * * * *").unwrap();
        let odd = Schedule::Cron("1/2 * * * * *".into());
        assert_eq!(next_tick(&odd, Some(&c), 0), Some(1_000));
        assert_eq!(next_tick(&odd, Some(&c), 1_000), Some(3_000));
        assert_eq!(next_tick(&odd, Some(&c), 59_500), Some(61_000));
    }
}
