//! The integration tests, one module per area, in one binary. Each test
//! starts what it needs (private `redis-server` processes, hosts, `serve`)
//! through the harness in `tests/src/lib.rs`.
//!
//! `cargo test -p redloom-tests --test suite AREA::` runs one area;
//! `REDLOOM_TEST_REDIS=cluster` runs the capability areas (`cache`,
//! `limiter`, `lock`, `queue`, `structures`) against a loopback Redis Cluster.

mod attacks;
mod bench;
mod cache;
mod caps;
mod cli;
mod cluster;
mod foundation;
mod http_limits;
mod languages;
mod limiter;
mod lock;
mod near_cache;
mod oci;
mod pubsub_isolation;
mod queue;
mod queue_poison;
mod quotas;
mod serve;
mod structures;
mod telemetry;
mod triggers;
