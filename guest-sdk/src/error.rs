//! The error every capability call and handler returns.

use std::fmt;

use crate::__private::bindings::redloom::plugin::types as wit;

/// `Result` with this crate's [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a capability call or a handler failed.
///
/// Mirrors the WIT `error` variant: the host returns one of these from every
/// capability call, and a handler's `Err` is passed back to whoever invoked
/// the plugin. Match on it to tell a transient problem
/// ([`BackendUnavailable`](Error::BackendUnavailable), [`Timeout`](Error::Timeout))
/// from the plugin's own mistake ([`InvalidArgument`](Error::InvalidArgument)).
///
/// ```
/// use redloom_sdk::{Error, Quota};
///
/// let e = Error::invalid("visitor id is empty");
/// assert_eq!(e.to_string(), "invalid argument: visitor id is empty");
/// assert_eq!(e.kind(), "invalid-argument");
/// assert!(!e.is_transient());
/// assert!(Error::QuotaExceeded(Quota::RedisRate).is_transient());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Error {
    /// A per-plugin quota was exhausted; the payload names which one.
    QuotaExceeded(Quota),
    /// Redis could not be reached or answered with a server error; retrying
    /// later may work.
    BackendUnavailable(String),
    /// The operation did not finish before its deadline.
    Timeout(String),
    /// An argument was rejected: a key that is too long, a zero TTL, a
    /// malformed value, or (from a handler) malformed input.
    InvalidArgument(String),
    /// The plugin's manifest does not allow this operation.
    Denied(String),
    /// Anything else; the message says what happened.
    Other(String),
}

impl Error {
    /// An [`Error::Other`] with `message`.
    pub fn other(message: impl Into<String>) -> Self {
        Error::Other(message.into())
    }

    /// An [`Error::InvalidArgument`] with `message`.
    pub fn invalid(message: impl Into<String>) -> Self {
        Error::InvalidArgument(message.into())
    }

    /// An [`Error::Denied`] with `message`.
    pub fn denied(message: impl Into<String>) -> Self {
        Error::Denied(message.into())
    }

    /// The WIT name of the variant: `quota-exceeded`, `backend-unavailable`,
    /// `timeout`, `invalid-argument`, `denied` or `other`.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::QuotaExceeded(_) => "quota-exceeded",
            Error::BackendUnavailable(_) => "backend-unavailable",
            Error::Timeout(_) => "timeout",
            Error::InvalidArgument(_) => "invalid-argument",
            Error::Denied(_) => "denied",
            Error::Other(_) => "other",
        }
    }

    /// The message carried by the variant; for
    /// [`QuotaExceeded`](Error::QuotaExceeded) the quota's name.
    pub fn message(&self) -> &str {
        match self {
            Error::QuotaExceeded(quota) => quota.name(),
            Error::BackendUnavailable(m)
            | Error::Timeout(m)
            | Error::InvalidArgument(m)
            | Error::Denied(m)
            | Error::Other(m) => m,
        }
    }

    /// Whether retrying the same call later may succeed: the backend was
    /// unavailable, the call timed out, or a quota that frees up over time
    /// (rate, concurrency, storage or a full queue — not a per-invocation
    /// one) was exhausted.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::BackendUnavailable(_) | Error::Timeout(_) => true,
            Error::QuotaExceeded(quota) => matches!(
                quota,
                Quota::RedisRate | Quota::Concurrency | Quota::Storage
            ),
            Error::InvalidArgument(_) | Error::Denied(_) | Error::Other(_) => false,
        }
    }

    pub(crate) fn from_wit(e: wit::Error) -> Self {
        match e {
            wit::Error::QuotaExceeded(q) => Error::QuotaExceeded(Quota::from_wit(q)),
            wit::Error::BackendUnavailable(m) => Error::BackendUnavailable(m),
            wit::Error::Timeout(m) => Error::Timeout(m),
            wit::Error::InvalidArgument(m) => Error::InvalidArgument(m),
            wit::Error::Denied(m) => Error::Denied(m),
            wit::Error::Other(m) => Error::Other(m),
        }
    }

    pub(crate) fn into_wit(self) -> wit::Error {
        match self {
            Error::QuotaExceeded(q) => wit::Error::QuotaExceeded(q.into_wit()),
            Error::BackendUnavailable(m) => wit::Error::BackendUnavailable(m),
            Error::Timeout(m) => wit::Error::Timeout(m),
            Error::InvalidArgument(m) => wit::Error::InvalidArgument(m),
            Error::Denied(m) => wit::Error::Denied(m),
            Error::Other(m) => wit::Error::Other(m),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::QuotaExceeded(quota) => write!(f, "quota exceeded: {quota}"),
            Error::BackendUnavailable(m) => write!(f, "backend unavailable: {m}"),
            Error::Timeout(m) => write!(f, "timeout: {m}"),
            Error::InvalidArgument(m) => write!(f, "invalid argument: {m}"),
            Error::Denied(m) => write!(f, "denied: {m}"),
            Error::Other(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for Error {}

// The generated types are private; these impls exist for the code `export!`
// generates and are hidden from the docs for that reason.
#[doc(hidden)]
impl From<wit::Error> for Error {
    fn from(e: wit::Error) -> Self {
        Error::from_wit(e)
    }
}

#[doc(hidden)]
impl From<Error> for wit::Error {
    fn from(e: Error) -> Self {
        e.into_wit()
    }
}

/// Input that should have been UTF-8 and was not is the caller's mistake.
impl From<std::string::FromUtf8Error> for Error {
    fn from(e: std::string::FromUtf8Error) -> Self {
        Error::InvalidArgument(format!("not valid UTF-8: {e}"))
    }
}

/// Input that should have been UTF-8 and was not is the caller's mistake.
impl From<std::str::Utf8Error> for Error {
    fn from(e: std::str::Utf8Error) -> Self {
        Error::InvalidArgument(format!("not valid UTF-8: {e}"))
    }
}

/// Malformed JSON (input or a stored value) is an invalid argument.
#[cfg(feature = "json")]
impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Error::InvalidArgument(format!("invalid JSON: {e}"))
    }
}

/// A per-plugin quota, as named in the plugin's manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Quota {
    /// Guest CPU time per invocation.
    Cpu,
    /// Wall-clock deadline per invocation, including time spent awaiting Redis.
    WallTime,
    /// Linear memory, tables or instances per invocation.
    Memory,
    /// Redis commands per invocation.
    RedisOps,
    /// Redis commands per second for the plugin as a whole.
    RedisRate,
    /// In-flight invocations of the plugin.
    Concurrency,
    /// Size of an input, output, value or Redis reply.
    Payload,
    /// Redis memory the plugin's keys use, or a full queue: retry once
    /// some is freed.
    Storage,
}

impl Quota {
    /// The quota's WIT (and manifest) name, e.g. `redis-ops`.
    pub fn name(self) -> &'static str {
        match self {
            Quota::Cpu => "cpu",
            Quota::WallTime => "wall-time",
            Quota::Memory => "memory",
            Quota::RedisOps => "redis-ops",
            Quota::RedisRate => "redis-rate",
            Quota::Concurrency => "concurrency",
            Quota::Payload => "payload",
            Quota::Storage => "storage",
        }
    }

    fn from_wit(q: wit::Quota) -> Self {
        match q {
            wit::Quota::Cpu => Quota::Cpu,
            wit::Quota::WallTime => Quota::WallTime,
            wit::Quota::Memory => Quota::Memory,
            wit::Quota::RedisOps => Quota::RedisOps,
            wit::Quota::RedisRate => Quota::RedisRate,
            wit::Quota::Concurrency => Quota::Concurrency,
            wit::Quota::Payload => Quota::Payload,
            wit::Quota::Storage => Quota::Storage,
        }
    }

    fn into_wit(self) -> wit::Quota {
        match self {
            Quota::Cpu => wit::Quota::Cpu,
            Quota::WallTime => wit::Quota::WallTime,
            Quota::Memory => wit::Quota::Memory,
            Quota::RedisOps => wit::Quota::RedisOps,
            Quota::RedisRate => wit::Quota::RedisRate,
            Quota::Concurrency => wit::Quota::Concurrency,
            Quota::Payload => wit::Quota::Payload,
            Quota::Storage => wit::Quota::Storage,
        }
    }
}

impl fmt::Display for Quota {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[doc(hidden)]
impl From<wit::Quota> for Quota {
    fn from(q: wit::Quota) -> Self {
        Quota::from_wit(q)
    }
}

#[doc(hidden)]
impl From<Quota> for wit::Quota {
    fn from(q: Quota) -> Self {
        q.into_wit()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL_QUOTAS: [Quota; 7] = [
        Quota::Cpu,
        Quota::WallTime,
        Quota::Memory,
        Quota::RedisOps,
        Quota::RedisRate,
        Quota::Concurrency,
        Quota::Payload,
    ];

    /// Every error survives the round trip through the WIT type unchanged.
    #[test]
    fn error_round_trips_through_wit() {
        let mut errors: Vec<Error> = ALL_QUOTAS
            .iter()
            .map(|q| Error::QuotaExceeded(*q))
            .collect();
        errors.extend([
            Error::BackendUnavailable("down".into()),
            Error::Timeout("slow".into()),
            Error::invalid("bad"),
            Error::denied("no"),
            Error::other("else"),
        ]);
        for e in errors {
            assert_eq!(Error::from_wit(e.clone().into_wit()), e);
        }
    }

    /// Quota names are the WIT enum case names.
    #[test]
    fn quota_names_match_wit() {
        let names: Vec<_> = ALL_QUOTAS.iter().map(|q| q.to_string()).collect();
        assert_eq!(
            names,
            [
                "cpu",
                "wall-time",
                "memory",
                "redis-ops",
                "redis-rate",
                "concurrency",
                "payload"
            ]
        );
    }
}
