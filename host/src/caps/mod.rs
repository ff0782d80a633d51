//! Host implementations of the capability interfaces, one module per WIT
//! interface. Each works on [`Caps`](crate::caps::Caps): keys are mapped
//! into the plugin's namespace here, Redis is reached only through
//! [`crate::redis`], and every failure becomes a typed WIT `error`.

/// Awaits a capability call's future inside a span of its own (exported
/// as a trace's child span: `module`, `function`, never the values) when
/// traces are on; with them off the future is awaited as it is, no span
/// and no wrapper.
macro_rules! traced {
    // `match`: temporaries in the call (`&ours(&handle)`) live until it
    // has been awaited.
    ($module:literal, $function:literal, $call:expr) => {
        match $call {
            call => {
                if crate::logging::tracing_on() {
                    use tracing::Instrument as _;
                    call.instrument(tracing::info_span!(
                        target: crate::logging::SPANS,
                        "capability call",
                        otel.name = concat!($module, ".", $function),
                        module = $module,
                        function = $function,
                    ))
                    .await
                } else {
                    call.await
                }
            }
        }
    };
}

pub(crate) mod cache;
mod common;
mod config;
mod context;
pub mod data;
pub(crate) mod limiter;
pub(crate) mod lock;
pub(crate) mod log;
pub mod near_cache;
pub(crate) mod outbound_http;
mod pubsub;
mod queue;

use crate::bindings::types::{self, Error};
use crate::quota::Quota;
use crate::quota::{MAX_RATE_WAIT, QuotaTrap};
use crate::redis::{CommandError, Redis};
pub use context::{Caps, Cleanup, CleanupAction, OutboundPolicy, PluginContext, QueuePolicy};

impl types::Host for Caps {}

impl From<CommandError> for Error {
    fn from(e: CommandError) -> Error {
        match e {
            CommandError::Timeout => Error::Timeout(e.to_string()),
            CommandError::Unavailable(m) => Error::BackendUnavailable(m),
            CommandError::Rejected(m) => Error::InvalidArgument(m),
            CommandError::Denied(m) => Error::Denied(m),
        }
    }
}

/// The guest's view of a quota.
impl From<Quota> for types::Quota {
    fn from(q: Quota) -> types::Quota {
        match q {
            Quota::Cpu => types::Quota::Cpu,
            Quota::WallTime => types::Quota::WallTime,
            Quota::Memory => types::Quota::Memory,
            Quota::RedisOps => types::Quota::RedisOps,
            Quota::RedisRate => types::Quota::RedisRate,
            Quota::Concurrency => types::Quota::Concurrency,
            Quota::Payload => types::Quota::Payload,
            Quota::Storage => types::Quota::Storage,
        }
    }
}

/// The host's view of a quota a guest named (in an error it returned).
impl From<types::Quota> for Quota {
    fn from(q: types::Quota) -> Quota {
        match q {
            types::Quota::Cpu => Quota::Cpu,
            types::Quota::WallTime => Quota::WallTime,
            types::Quota::Memory => Quota::Memory,
            types::Quota::RedisOps => Quota::RedisOps,
            types::Quota::RedisRate => Quota::RedisRate,
            types::Quota::Concurrency => Quota::Concurrency,
            types::Quota::Payload => Quota::Payload,
            types::Quota::Storage => Quota::Storage,
        }
    }
}

/// A WIT error as one line.
pub fn describe(e: &Error) -> String {
    match e {
        Error::QuotaExceeded(q) => format!("quota exceeded: {}", Quota::from(*q).name()),
        Error::BackendUnavailable(m) => format!("backend unavailable: {m}"),
        Error::Timeout(m) => format!("timeout: {m}"),
        Error::InvalidArgument(m) => format!("invalid argument: {m}"),
        Error::Denied(m) => format!("denied: {m}"),
        Error::Other(m) => m.clone(),
    }
}

impl Caps {
    /// Charges one Redis command against the plugin's quotas (`redis-ops`
    /// per invocation, the shared `redis-rate` bucket) and returns the
    /// connection to send it on. Every capability sends every command
    /// through here, so the counters and quotas see all of them.
    pub(crate) async fn admit(&mut self) -> Result<Redis, Error> {
        if let Some(b) = &self.breach {
            return Err(Error::QuotaExceeded(b.quota.into()));
        }
        let limit = self.plugin.quotas.redis_ops;
        if self.redis_ops >= limit {
            return Err(self.breach(QuotaTrap::new(
                Quota::RedisOps,
                format!("more than {limit} Redis commands in one invocation"),
            )));
        }
        let taken = self
            .plugin
            .redis_rate
            .lock()
            .expect("rate bucket poisoned")
            .take(MAX_RATE_WAIT);
        match taken {
            Ok(wait) if !wait.is_zero() => tokio::time::sleep(wait).await,
            Ok(_) => {}
            Err(_) => {
                let rate = self.plugin.quotas.redis_rate;
                return Err(self.breach(QuotaTrap::new(
                    Quota::RedisRate,
                    format!("more than {rate} Redis commands per second"),
                )));
            }
        }
        self.counted_connection()
    }

    /// The connection for a command that frees what the plugin holds (a
    /// lock or limiter-slot release): counted (`redis-ops`, the plugin's
    /// command counter) but never refused and never delayed by the
    /// `redis-rate` bucket. There is at most one per admitted acquire.
    pub(crate) fn release_connection(&mut self) -> Result<Redis, Error> {
        self.counted_connection()
    }

    /// The connection, with the command counted.
    fn counted_connection(&mut self) -> Result<Redis, Error> {
        let redis = self
            .redis
            .clone()
            .ok_or_else(|| Error::BackendUnavailable("this host runs without Redis".into()))?;
        self.redis_ops += 1;
        self.plugin.stats.redis_command();
        Ok(redis)
    }

    /// Fails with `quota-exceeded(payload)` when a reply of `bytes` would
    /// bring more than `max-reply` into the guest.
    pub(crate) fn check_reply(&mut self, bytes: usize) -> Result<(), Error> {
        let max = self.plugin.quotas.max_reply;
        if bytes as u64 > max {
            return Err(self.breach(QuotaTrap::new(
                Quota::Payload,
                format!("a Redis reply of {bytes} bytes is over max-reply ({max})"),
            )));
        }
        Ok(())
    }

    /// Checks a write of `value_len` bytes stored under `key_len` bytes of
    /// key names, before it is sent: the value against `max-write`
    /// (`quota-exceeded(payload)`), and key plus value against what is left
    /// of the plugin's `storage` (`quota-exceeded(storage)`); the bytes are
    /// charged to the storage meter if it passes. `key_len` 0 (a publish)
    /// stores nothing.
    pub(crate) fn check_write(&mut self, key_len: usize, value_len: usize) -> Result<(), Error> {
        let quotas = &self.plugin.quotas;
        let max = quotas.max_write;
        if value_len as u64 > max {
            return Err(self.breach(QuotaTrap::new(
                Quota::Payload,
                format!("a value of {value_len} bytes is over max-write ({max})"),
            )));
        }
        if key_len == 0 {
            return Ok(());
        }
        let limit = quotas.storage;
        if let Err(used) = self
            .plugin
            .storage
            .charge((key_len + value_len) as u64, limit)
        {
            return Err(self.breach(QuotaTrap::new(
                Quota::Storage,
                format!(
                    "its keys use about {used} bytes of Redis; writing {} more would pass \
                     its storage quota ({limit})",
                    key_len + value_len
                ),
            )));
        }
        Ok(())
    }

    /// Records the invocation's first breach and returns the guest's error.
    pub(crate) fn breach(&mut self, trap: QuotaTrap) -> Error {
        let quota = trap.quota;
        self.breach.get_or_insert(trap);
        Error::QuotaExceeded(quota.into())
    }
}
