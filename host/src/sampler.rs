//! `redloom serve`'s background measurement of each plugin's Redis memory,
//! for the `storage` quota ([`crate::quota::StorageMeter`]).
//!
//! Every `[host] storage-sample-interval` (default 30 s) one pass `SCAN`s
//! the keys under `rl:*` on every primary and sums `MEMORY USAGE` by plugin
//! (`redis::storage`). A pass costs one `SCAN` page and one pipelined
//! `MEMORY USAGE` batch per 1,000 keys; when it takes long, the next waits
//! [`BACKOFF_FACTOR`] times as long as it took, so sampling uses at most
//! about 5 % of one Redis connection's time. Each host samples for itself
//! (its writes since a pass began stay charged until the next pass sees
//! them), and stores the result for `redloom invoke` to start from.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::host::Host;

/// The wait after a pass is at least this many times the pass's duration.
pub const BACKOFF_FACTOR: u32 = 20;

/// Starts sampling every `interval` until `stopped` turns true.
pub fn start(
    host: Arc<Host>,
    interval: Duration,
    mut stopped: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let started = Instant::now();
            if let Err(e) = pass(&host).await {
                tracing::warn!("measuring the plugins' Redis memory failed: {e}");
            }
            let wait = interval.max(started.elapsed() * BACKOFF_FACTOR);
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stopped.wait_for(|s| *s) => return,
            }
        }
    })
}

/// One measurement of every loaded plugin.
pub async fn pass(host: &Host) -> Result<(), crate::redis::CommandError> {
    // What each plugin had written before the pass began: the pass sees it.
    let plugins: Vec<_> = host
        .plugin_names()
        .into_iter()
        .filter_map(|n| host.plugin(&n))
        .map(|p| {
            let before = p.storage().sample_started();
            (p, before)
        })
        .collect();
    let totals = host.redis().memory_by_plugin().await?;
    for (plugin, before) in plugins {
        let name = plugin.name().as_str();
        let bytes = totals.get(name).copied().unwrap_or(0);
        plugin.storage().sampled(bytes, before);
        host.redis().store_usage(name, bytes).await?;
        tracing::debug!(plugin = name, bytes, "sampled the plugin's Redis memory");
    }
    Ok(())
}
