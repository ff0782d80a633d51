//! `/metrics`: every plugin's counters in the Prometheus text format,
//! encoded by `prometheus-client` from fresh snapshots at each scrape.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `redloom_invocations_total` | counter | `plugin` |
//! | `redloom_errors_total` | counter | `plugin`, `kind` (`guest`, `trap`, `instantiate`, `cancelled`) |
//! | `redloom_quota_rejections_total` | counter | `plugin`, `quota` |
//! | `redloom_guest_cpu_seconds_total` | counter | `plugin` |
//! | `redloom_redis_commands_total` | counter | `plugin` |
//! | `redloom_outbound_requests_total` | counter | `plugin` |
//! | `redloom_pubsub_dropped_total` | counter | `plugin` |
//! | `redloom_pubsub_reconnects_total` | counter | `plugin` |
//! | `redloom_pubsub_unsubscribed_seconds_total` | counter | `plugin` |
//! | `redloom_queue_deferred_total` | counter | `plugin` |
//! | `redloom_log_dropped_total` | counter | `plugin` |
//! | `redloom_background_invocations_total` | counter | `plugin` |
//! | `redloom_near_cache_hits_total` | counter | `plugin` |
//! | `redloom_near_cache_misses_total` | counter | `plugin` |
//! | `redloom_near_cache_invalidations_total` | counter | `plugin` |
//! | `redloom_near_cache_evictions_total` | counter | `plugin` |
//! | `redloom_near_cache_tracking_lost_total` | counter | `plugin` |
//! | `redloom_near_cache_bytes` | gauge | `plugin` |
//! | `redloom_invocation_duration_seconds` | histogram | `plugin`, `handler` |
//! | `redloom_cache_lookups_total` | counter | `plugin`, `result` (`fresh`, `stale`, `miss`, `filling`) |
//! | `redloom_cache_fills_total` | counter | `plugin` |
//! | `redloom_limiter_decisions_total` | counter | `plugin`, `decision` (`allowed`, `denied`) |
//! | `redloom_lock_acquisitions_total` | counter | `plugin`, `result` (`acquired`, `busy`) |
//! | `redloom_lock_wait_seconds_total` | counter | `plugin` |
//! | `redloom_queue_length`, `_pending`, `_lag`, `_scheduled`, `_dead_letters`, `_oldest_pending_seconds` | gauge | `plugin`, `queue` (each consumed queue, read from Redis at the scrape) |
//! | `redloom_plugins_loaded` | gauge | |
//! | `redloom_redis_up` | gauge | (1 when the last `PING` answered) |
//! | `redloom_redis_used_memory_bytes` | gauge | (Redis `INFO`, summed over a Cluster's primaries; absent when `INFO` failed) |
//! | `redloom_redis_maxmemory_bytes` | gauge | (0: no limit) |
//! | `redloom_redis_evicted_keys_total` | counter | |
//! | `redloom_redis_keyspace_hits_total` | counter | |
//! | `redloom_redis_keyspace_misses_total` | counter | |
//! | `redloom_connections` | gauge | `listener` (`http`, `admin`) |
//! | `redloom_connection_timeouts_total` | counter | `listener`, `kind` (`header`, `idle`, `body`) |
//! | `redloom_connection_limit_reached_total` | counter | `listener` |

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::host::Host;
use crate::redis::info::ServerInfo;
use crate::redis::queue::QueueStats;
use crate::stats::WALL_TIME_BUCKETS;

/// Reads the host's counters at scrape time.
#[derive(Debug)]
pub struct HostCollector {
    host: Arc<Host>,
    /// Set by the readiness probe and by each scrape's PING.
    pub redis_up: Arc<AtomicBool>,
    /// Redis's own figures, read by each scrape before encoding (`None`
    /// when `INFO` failed or timed out).
    pub redis_info: Arc<Mutex<Option<ServerInfo>>>,
    /// The consumed queues' state, read by each scrape before encoding.
    pub queue_stats: Arc<Mutex<Vec<QueueSample>>>,
}

/// One consumed queue's state at a scrape.
#[derive(Debug, Clone)]
pub struct QueueSample {
    pub plugin: String,
    pub queue: String,
    pub stats: QueueStats,
}

impl HostCollector {
    pub fn registry(
        host: Arc<Host>,
        redis_up: Arc<AtomicBool>,
        redis_info: Arc<Mutex<Option<ServerInfo>>>,
        queue_stats: Arc<Mutex<Vec<QueueSample>>>,
    ) -> Registry {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(HostCollector {
            host,
            redis_up,
            redis_info,
            queue_stats,
        }));
        registry
    }
}

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Host")
            .field("plugins", &self.plugin_names())
            .finish()
    }
}

type Fmt = Result<(), std::fmt::Error>;

/// A queue gauge: name, help, and its value from a queue's stats.
type QueueGauge = (&'static str, &'static str, fn(&QueueStats) -> f64);

impl Collector for HostCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Fmt {
        let plugins = self.host.plugin_infos();
        let counter = |encoder: &mut DescriptorEncoder,
                       name: &str,
                       help: &str,
                       rows: Vec<(Vec<(&str, String)>, f64)>|
         -> Fmt {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (labels, v) in rows {
                ConstCounter::new(v).encode(family.encode_family(&labels)?)?;
            }
            Ok(())
        };
        let per_plugin = |f: &dyn Fn(&crate::stats::Snapshot) -> f64| {
            plugins
                .iter()
                .map(|p| (vec![("plugin", p.name.to_string())], f(&p.stats)))
                .collect::<Vec<_>>()
        };
        counter(
            &mut encoder,
            "redloom_invocations",
            "Handler calls, finished or refused.",
            per_plugin(&|s| s.invocations as f64),
        )?;
        counter(
            &mut encoder,
            "redloom_errors",
            "Failed calls by kind: the plugin's own error, a trap, a failed instantiation, or a call its caller gave up on.",
            plugins
                .iter()
                .flat_map(|p| {
                    p.stats.errors.iter().map(|(k, n)| {
                        (
                            vec![("plugin", p.name.to_string()), ("kind", k.to_string())],
                            *n as f64,
                        )
                    })
                })
                .collect(),
        )?;
        counter(
            &mut encoder,
            "redloom_quota_rejections",
            "Calls ended or refused by a quota.",
            plugins
                .iter()
                .flat_map(|p| {
                    p.stats.quota_rejections.iter().map(|(q, n)| {
                        (
                            vec![("plugin", p.name.to_string()), ("quota", q.to_string())],
                            *n as f64,
                        )
                    })
                })
                .collect(),
        )?;
        counter(
            &mut encoder,
            "redloom_guest_cpu_seconds",
            "Time spent running guest code.",
            per_plugin(&|s| s.guest_cpu.as_secs_f64()),
        )?;
        counter(
            &mut encoder,
            "redloom_redis_commands",
            "Redis commands sent for the plugin.",
            per_plugin(&|s| s.redis_commands as f64),
        )?;
        counter(
            &mut encoder,
            "redloom_outbound_requests",
            "Outbound HTTP requests.",
            per_plugin(&|s| s.outbound_requests as f64),
        )?;
        counter(
            &mut encoder,
            "redloom_pubsub_dropped",
            "Pub/sub messages dropped because the plugin's buffer was full.",
            per_plugin(&|s| s.dropped_messages as f64),
        )?;
        counter(
            &mut encoder,
            "redloom_pubsub_reconnects",
            "Times the plugin's pub/sub subscription connection was lost and made again.",
            per_plugin(&|s| s.pubsub_reconnects as f64),
        )?;
        counter(
            &mut encoder,
            "redloom_pubsub_unsubscribed_seconds",
            "Time the plugin had no pub/sub subscription between losing its connection and subscribing again; messages published then were missed.",
            per_plugin(&|s| s.pubsub_unsubscribed.as_secs_f64()),
        )?;
        counter(
            &mut encoder,
            "redloom_queue_deferred",
            "Queue messages deferred because they were over their consumer's rate limit.",
            per_plugin(&|s| s.deferred_messages as f64),
        )?;
        counter(
            &mut encoder,
            "redloom_log_dropped",
            "Log records and stdout/stderr lines dropped over the plugin's max-log or log-rate.",
            per_plugin(&|s| s.dropped_log as f64),
        )?;
        counter(
            &mut encoder,
            "redloom_background_invocations",
            "Invocations run on the low-priority background runtime after computing for long (or because the plugin recently did).",
            per_plugin(&|s| s.background as f64),
        )?;
        counter(
            &mut encoder,
            "redloom_near_cache_hits",
            "Cache lookups answered from the host's near cache, without Redis.",
            per_plugin(&|s| s.near_cache.hits as f64),
        )?;
        counter(
            &mut encoder,
            "redloom_near_cache_misses",
            "Cache lookups that could have used the near cache but went to Redis.",
            per_plugin(&|s| s.near_cache.misses as f64),
        )?;
        counter(
            &mut encoder,
            "redloom_near_cache_invalidations",
            "Near-cache entries dropped because their keys were written (or tracking was lost).",
            per_plugin(&|s| s.near_cache.invalidations as f64),
        )?;
        counter(
            &mut encoder,
            "redloom_near_cache_evictions",
            "Near-cache entries evicted to stay within near-cache-max-bytes.",
            per_plugin(&|s| s.near_cache.evictions as f64),
        )?;
        counter(
            &mut encoder,
            "redloom_near_cache_tracking_lost",
            "Times the near cache's invalidation (tracking) connection was lost; each flushed the near cache until tracking was back.",
            per_plugin(&|s| s.near_cache.tracking_lost as f64),
        )?;
        let mut family = encoder.encode_descriptor(
            "redloom_near_cache_bytes",
            "Bytes the near cache holds now, as counted against near-cache-max-bytes.",
            None,
            MetricType::Gauge,
        )?;
        for p in &plugins {
            let v = i64::try_from(p.stats.near_cache.bytes).unwrap_or(i64::MAX);
            ConstGauge::new(v).encode(family.encode_family(&[("plugin", p.name.to_string())])?)?;
        }

        let mut family = encoder.encode_descriptor(
            "redloom_invocation_duration_seconds",
            "Wall time of handler calls, per handler.",
            None,
            MetricType::Histogram,
        )?;
        for p in &plugins {
            for (handler, wall) in &p.stats.wall_time {
                let mut previous = 0;
                let buckets: Vec<(f64, u64)> = WALL_TIME_BUCKETS
                    .iter()
                    .copied()
                    .chain([f64::MAX])
                    .zip(&wall.buckets)
                    .map(|(bound, c)| {
                        let n = c - previous;
                        previous = *c;
                        (bound, n)
                    })
                    .collect();
                let labels = vec![
                    ("plugin", p.name.to_string()),
                    ("handler", handler.name().to_string()),
                ];
                family
                    .encode_family(&labels)?
                    .encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                        wall.sum.as_secs_f64(),
                        wall.count(),
                        &buckets,
                        None,
                    )?;
            }
        }

        let labelled =
            |label: &'static str,
             f: &dyn Fn(&crate::stats::Snapshot) -> &Vec<(&'static str, u64)>| {
                plugins
                    .iter()
                    .flat_map(|p| {
                        f(&p.stats).iter().map(move |(v, n)| {
                            (
                                vec![("plugin", p.name.to_string()), (label, v.to_string())],
                                *n as f64,
                            )
                        })
                    })
                    .collect::<Vec<_>>()
            };
        counter(
            &mut encoder,
            "redloom_cache_lookups",
            "Cache lookups by what they found: fresh, stale (served while refreshed), miss (the caller fills), filling (another caller was filling past the wait).",
            labelled("result", &|s| &s.cache_lookups),
        )?;
        counter(
            &mut encoder,
            "redloom_cache_fills",
            "Values stored by cache fills.",
            per_plugin(&|s| s.cache_fills as f64),
        )?;
        counter(
            &mut encoder,
            "redloom_limiter_decisions",
            "Rate-limit checks and slot acquisitions, allowed or denied.",
            labelled("decision", &|s| &s.limiter_decisions),
        )?;
        counter(
            &mut encoder,
            "redloom_lock_acquisitions",
            "Lock acquisitions: acquired, or busy (held elsewhere until the wait ran out).",
            labelled("result", &|s| &s.lock_acquisitions),
        )?;
        counter(
            &mut encoder,
            "redloom_lock_wait_seconds",
            "Time spent acquiring locks, taken or not.",
            per_plugin(&|s| s.lock_wait.as_secs_f64()),
        )?;

        let gauge = |encoder: &mut DescriptorEncoder, name: &str, help: &str, v: i64| -> Fmt {
            ConstGauge::new(v).encode(encoder.encode_descriptor(
                name,
                help,
                None,
                MetricType::Gauge,
            )?)
        };
        gauge(
            &mut encoder,
            "redloom_plugins_loaded",
            "Plugins loaded.",
            plugins.len() as i64,
        )?;
        gauge(
            &mut encoder,
            "redloom_redis_up",
            "1 when the host's last PING to Redis answered.",
            i64::from(self.redis_up.load(Ordering::Relaxed)),
        )?;
        let queues = self
            .queue_stats
            .lock()
            .expect("queue stats poisoned")
            .clone();
        let queue_gauges: [QueueGauge; 6] = [
            (
                "redloom_queue_length",
                "Messages in the queue's stream, delivered or not.",
                |s| s.length as f64,
            ),
            (
                "redloom_queue_pending",
                "Messages delivered to the consumer group and not yet acknowledged.",
                |s| s.pending as f64,
            ),
            (
                "redloom_queue_lag",
                "Messages not yet delivered to the consumer group.",
                |s| s.lag as f64,
            ),
            (
                "redloom_queue_scheduled",
                "Delayed messages and scheduled retries.",
                |s| s.scheduled as f64,
            ),
            (
                "redloom_queue_dead_letters",
                "Messages in the queue's dead letters.",
                |s| s.dead_letters as f64,
            ),
            (
                "redloom_queue_oldest_pending_seconds",
                "Time since the oldest pending message was delivered.",
                |s| s.oldest_pending_ms as f64 / 1000.0,
            ),
        ];
        for (name, help, value) in queue_gauges {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for q in &queues {
                let labels = [("plugin", q.plugin.as_str()), ("queue", q.queue.as_str())];
                ConstGauge::new(value(&q.stats)).encode(family.encode_family(&labels)?)?;
            }
        }
        let info = self.redis_info.lock().expect("redis info poisoned").clone();
        if let Some(info) = info {
            gauge(
                &mut encoder,
                "redloom_redis_used_memory_bytes",
                "Memory Redis uses (INFO used_memory; summed over a Cluster's primaries).",
                i64::try_from(info.used_memory).unwrap_or(i64::MAX),
            )?;
            gauge(
                &mut encoder,
                "redloom_redis_maxmemory_bytes",
                "Redis's memory limit (INFO maxmemory; 0: none).",
                i64::try_from(info.maxmemory).unwrap_or(i64::MAX),
            )?;
            let total = |encoder: &mut DescriptorEncoder, name: &str, help: &str, v: u64| -> Fmt {
                ConstCounter::new(v as f64).encode(encoder.encode_descriptor(
                    name,
                    help,
                    None,
                    MetricType::Counter,
                )?)
            };
            total(
                &mut encoder,
                "redloom_redis_evicted_keys",
                "Keys Redis evicted to stay under maxmemory (INFO evicted_keys).",
                info.evicted_keys,
            )?;
            total(
                &mut encoder,
                "redloom_redis_keyspace_hits",
                "Redis lookups that found their key (INFO keyspace_hits).",
                info.keyspace_hits,
            )?;
            total(
                &mut encoder,
                "redloom_redis_keyspace_misses",
                "Redis lookups that did not find their key (INFO keyspace_misses).",
                info.keyspace_misses,
            )?;
        }
        Ok(())
    }
}

/// Reads the listeners' connection counters at scrape time.
#[derive(Debug)]
pub struct ListenerCollector {
    /// By configuration section (`http`, `admin`).
    pub listeners: Vec<(&'static str, Arc<super::listener::ListenerStats>)>,
}

impl Collector for ListenerCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Fmt {
        let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        let mut family = encoder.encode_descriptor(
            "redloom_connections",
            "Client connections open now.",
            None,
            MetricType::Gauge,
        )?;
        for (name, stats) in &self.listeners {
            let v = i64::try_from(load(&stats.open)).unwrap_or(i64::MAX);
            ConstGauge::new(v).encode(family.encode_family(&[("listener", *name)])?)?;
        }
        let mut family = encoder.encode_descriptor(
            "redloom_connection_timeouts",
            "Connections closed because their headers (header) or any traffic (idle) did not come in time, and request bodies that did not (body).",
            None,
            MetricType::Counter,
        )?;
        for (name, stats) in &self.listeners {
            for (kind, n) in [
                ("header", &stats.header_timeouts),
                ("idle", &stats.idle_timeouts),
                ("body", &stats.body_timeouts),
            ] {
                ConstCounter::new(load(n))
                    .encode(family.encode_family(&[("listener", *name), ("kind", kind)])?)?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "redloom_connection_limit_reached",
            "Times the listener had max-connections open and stopped accepting until one closed.",
            None,
            MetricType::Counter,
        )?;
        for (name, stats) in &self.listeners {
            ConstCounter::new(load(&stats.limit_reached))
                .encode(family.encode_family(&[("listener", *name)])?)?;
        }
        Ok(())
    }
}
