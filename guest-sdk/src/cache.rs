//! A cache in Redis with stampede protection: cache-aside, stale-while-
//! revalidate, write-through, write-around, tags and negative caching.
//!
//! Most plugins need only [`Cache`]'s helpers and a [`Policy`]:
//!
//! ```no_run
//! use std::time::Duration;
//! use redloom_sdk::cache::{Cache, Policy};
//!
//! # fn load_user(_: &str) -> redloom_sdk::Result<Vec<u8>> { Ok(Vec::new()) }
//! # fn main() -> redloom_sdk::Result<()> {
//! // Cache-aside: the value for 300 s; on a miss exactly one caller across
//! // all hosts runs the closure, the others wait for its value.
//! let policy = Policy::ttl(Duration::from_secs(300));
//! let user = Cache::get_or_fill("user:42", &policy, || load_user("42"))?;
//! # let _ = user;
//! # Ok(())
//! # }
//! ```
//!
//! | pattern | call |
//! |---|---|
//! | cache-aside | [`Cache::get_or_fill`] (and [`Cache::get_or_fill_optional`] for values that may not exist, [`Cache::fetch`] to learn where a value came from) |
//! | stale-while-revalidate | the same, with [`Policy::stale`] |
//! | negative caching | [`Cache::get_or_fill_optional`] with [`Policy::negative`] |
//! | early refresh (XFetch) | [`Policy::early_refresh`] |
//! | write-through | [`Cache::write_through`] |
//! | write-around | [`Cache::write_around`] |
//! | invalidation | [`invalidate`], [`invalidate_tag`] with [`Policy::tag`] |
//! | typed values (`json` feature) | `Cache::get_or_fill_json`, `Cache::get_or_fill_optional_json`, `Cache::write_through_json` |
//!
//! # How it works
//!
//! [`lookup`] returns a fresh hit, a stale hit, a miss with a fill [`Lease`]
//! (exactly one caller across all hosts gets it), or [`Lookup::Filling`]
//! when someone else is filling and the policy's [`wait`](Policy::wait) ran
//! out. A caller that finds a key being filled waits without polling Redis
//! hard: the host wakes it when the fill lands through the same host; a
//! fill through another host publishes a wake-up to the hosts waiting for
//! the key, and one lookup per host (not per caller) reads it at once.
//! Lookups also re-read Redis with a jittered backoff (2 ms doubling to
//! 50 ms, to 500 ms while wake-ups arrive) in case a wake-up is lost. If the
//! filler dies, its lease expires after [`Policy::lease`] (at once if its
//! invocation ended) and one waiter takes over. [`fill`] stores only with a
//! lease that is still valid, so a slow origin never overwrites a newer value.
//!
//! Inside one host, concurrent lookups of one key share one Redis round trip
//! and one fill, and fresh hits are answered from the host's near cache
//! (memory, kept coherent by Redis's invalidation reports) until the entry
//! or one of its tags is written; see [`Policy::near_cache`].
//!
//! A lookup finds only an entry stored with the same set of tags
//! ([`Policy::tag`]); it deletes an entry stored with other tags. Use one
//! tag set per key.
//!
//! # Stale-while-revalidate in a plugin
//!
//! An invocation cannot keep running after it answered, so the one caller
//! that gets the refresh lease of a stale entry refreshes it (and gets the
//! new value); every other caller gets the stale value at once. If the
//! refresh fails, that caller gets the stale value too.
//!
//! # Limits
//!
//! Values may be at most the plugin's `max-reply` quota (1 MiB by default);
//! [`fill`] and [`set`] refuse larger ones with [`Error::InvalidArgument`].
//! Keys and tags are at most 1024 bytes; at most 32 tags per entry.

use std::time::Duration;

use crate::__private::bindings::redloom::plugin::cache as wit;
use crate::millis as ms;
use crate::{Error, Result};

/// How a cached value is kept and looked up.
///
/// ```
/// use std::time::Duration;
/// use redloom_sdk::cache::Policy;
///
/// let p = Policy::ttl(Duration::from_secs(60))
///     .stale(Duration::from_secs(600))     // serve stale for 10 more minutes while refreshing
///     .negative(Duration::from_secs(5))    // remember "not found" for 5 s
///     .tag("users")                        // invalidate_tag("users") drops it
///     .early_refresh(1.0);                 // XFetch
/// assert_eq!(p.fresh, Duration::from_secs(60));
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// How long a value is fresh.
    pub fresh: Duration,
    /// How long after that it is still served (stale) while one caller
    /// refreshes it; zero for none.
    pub stale: Duration,
    /// How long to remember "not found"; `None` does not cache it.
    pub negative: Option<Duration>,
    /// Tags of the entry, for [`invalidate_tag`].
    pub tags: Vec<String>,
    /// How long a fill lease lasts: the longest the origin may take before
    /// another caller takes over. Default 10 s.
    pub lease: Duration,
    /// How long to wait for someone else's fill. Default 5 s.
    pub wait: Duration,
    /// XFetch beta for early refresh; 0 (the default) turns it off.
    pub early_refresh: f64,
    /// Whether lookups may be answered from the host's near cache (see
    /// [`Policy::near_cache`]). Default `true`.
    pub near_cache: bool,
}

impl Policy {
    /// Values fresh for `fresh`, no stale time, no negative caching.
    pub fn ttl(fresh: Duration) -> Policy {
        Policy {
            fresh,
            stale: Duration::ZERO,
            negative: None,
            tags: Vec::new(),
            lease: Duration::from_secs(10),
            wait: Duration::from_secs(5),
            early_refresh: 0.0,
            near_cache: true,
        }
    }

    /// Serve the value as stale for `stale` after its fresh time.
    pub fn stale(mut self, stale: Duration) -> Policy {
        self.stale = stale;
        self
    }

    /// Remember "not found" for `ttl`.
    pub fn negative(mut self, ttl: Duration) -> Policy {
        self.negative = Some(ttl);
        self
    }

    /// Add a tag.
    pub fn tag(mut self, tag: impl Into<String>) -> Policy {
        self.tags.push(tag.into());
        self
    }

    /// The fill lease's time to live.
    pub fn lease(mut self, lease: Duration) -> Policy {
        self.lease = lease;
        self
    }

    /// How long to wait for another caller's fill.
    pub fn wait(mut self, wait: Duration) -> Policy {
        self.wait = wait;
        self
    }

    /// Turn on XFetch early refresh with `beta` (1.0 is the usual value;
    /// larger refreshes earlier).
    ///
    /// A fresh entry nearing the end of its fresh time is then handed, with
    /// a probability growing as the end nears and with the time its last
    /// fill took, to one caller with a refresh lease: [`Cache::get_or_fill`]
    /// and friends run the origin for that caller (the others keep getting
    /// the cached value), so a hot key is refreshed before it expires and
    /// never misses. A value stored by [`set`] (or [`Cache::write_through`])
    /// keeps the fill time of the entry it replaced; an entry only ever
    /// stored by `set` has none and is never refreshed early.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use redloom_sdk::cache::{Cache, Policy, Source};
    ///
    /// # fn load_prices() -> redloom_sdk::Result<Vec<u8>> { Ok(Vec::new()) }
    /// # fn main() -> redloom_sdk::Result<()> {
    /// let policy = Policy::ttl(Duration::from_secs(60)).early_refresh(1.0);
    /// let got = Cache::fetch("prices", &policy, || Ok(Some(load_prices()?)))?;
    /// if got.source == Source::Refreshed {
    ///     // This caller was chosen to refresh the entry before it expired.
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn early_refresh(mut self, beta: f64) -> Policy {
        self.early_refresh = beta;
        self
    }

    /// Whether lookups may be answered from the host's near cache (on by
    /// default, unless the plugin's `near-cache = false`).
    ///
    /// The host keeps fresh hits in memory and drops them when Redis
    /// reports a write of the entry or of one of its tags (by any host or
    /// client), so another client's write is seen within the delivery time
    /// of that report (under a millisecond on one network; at most the
    /// plugin's `near-cache-max-age`, 10 s by default, if a report were
    /// lost). Writes through the same host are
    /// seen at once. Stale hits, misses and leases always come from Redis.
    /// `near_cache(false)` reads Redis on every lookup.
    pub fn near_cache(mut self, on: bool) -> Policy {
        self.near_cache = on;
        self
    }

    fn lookup_options(&self) -> wit::LookupOptions {
        wit::LookupOptions {
            tags: self.tags.clone(),
            lease_ttl_ms: ms(self.lease),
            wait_ms: ms(self.wait),
            early_refresh_beta: self.early_refresh,
            near_cache: self.near_cache,
        }
    }

    fn ttls(&self, negative: bool) -> wit::Ttls {
        match (negative, self.negative) {
            (true, Some(ttl)) => wit::Ttls {
                fresh_ms: ms(ttl),
                stale_ms: 0,
            },
            _ => wit::Ttls {
                fresh_ms: ms(self.fresh),
                stale_ms: ms(self.stale),
            },
        }
    }
}

/// The right to store one key's value; from [`lookup`], used by [`fill`] or
/// [`abandon`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    token: String,
}

impl Lease {
    fn into_wit(self) -> wit::Lease {
        wit::Lease { token: self.token }
    }
}

/// A value found in the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hit {
    /// The value; `None` for a remembered "not found".
    pub value: Option<Vec<u8>>,
    /// This caller should refresh the entry (stale, or chosen by XFetch).
    pub refresh: Option<Lease>,
}

/// What [`lookup`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// Inside its fresh time.
    Fresh(Hit),
    /// Past its fresh time, inside its stale time.
    Stale(Hit),
    /// Nothing usable; this caller holds the fill lease.
    Miss(Lease),
    /// Nothing usable; someone else is filling and the wait ran out.
    Filling,
}

/// Looks `key` up under `policy` (its tags, lease, wait and XFetch beta).
pub fn lookup(key: &str, policy: &Policy) -> Result<Lookup> {
    let hit = |h: wit::Hit| Hit {
        value: h.value,
        refresh: h.refresh.map(|l| Lease { token: l.token }),
    };
    Ok(
        match wit::lookup(key, &policy.lookup_options()).map_err(Error::from_wit)? {
            wit::LookupResult::Fresh(h) => Lookup::Fresh(hit(h)),
            wit::LookupResult::Stale(h) => Lookup::Stale(hit(h)),
            wit::LookupResult::Miss(l) => Lookup::Miss(Lease { token: l.token }),
            wit::LookupResult::Filling => Lookup::Filling,
        },
    )
}

/// Stores `value` (`None`: "not found", kept for [`Policy::negative`], or
/// for the fresh time if that is unset) with `lease`. `Ok(false)`: the lease
/// expired or was superseded and nothing was stored.
pub fn fill(key: &str, lease: Lease, value: Option<&[u8]>, policy: &Policy) -> Result<bool> {
    wit::fill(key, &lease.into_wit(), value, policy.ttls(value.is_none())).map_err(Error::from_wit)
}

/// Gives `lease` up without storing (the origin failed), so the next caller
/// gets it at once. Returns whether it was still held.
pub fn abandon(key: &str, lease: Lease) -> Result<bool> {
    wit::abandon(key, &lease.into_wit()).map_err(Error::from_wit)
}

/// Stores `value` unconditionally (write-through), superseding any lease.
pub fn set(key: &str, value: Option<&[u8]>, policy: &Policy) -> Result<()> {
    wit::set(key, value, policy.ttls(value.is_none()), &policy.tags).map_err(Error::from_wit)
}

/// Removes `key`'s entry and supersedes any lease. Returns whether it existed.
pub fn invalidate(key: &str) -> Result<bool> {
    wit::invalidate(key).map_err(Error::from_wit)
}

/// Invalidates every entry tagged `tag`, in one Redis command however many
/// entries carry it: the tag's version is bumped, and entries stored with
/// the old version stop matching (and expire with their time to live).
///
/// ```no_run
/// use std::time::Duration;
/// use redloom_sdk::cache::{self, Cache, Policy};
///
/// # fn load(_: &str) -> redloom_sdk::Result<Vec<u8>> { Ok(Vec::new()) }
/// # fn main() -> redloom_sdk::Result<()> {
/// // Every entry of team 7 carries the tag "team:7".
/// let policy = Policy::ttl(Duration::from_secs(300)).tag("team:7");
/// let members = Cache::get_or_fill("team:7:members", &policy, || load("members"))?;
/// let settings = Cache::get_or_fill("team:7:settings", &policy, || load("settings"))?;
/// # let _ = (members, settings);
///
/// // Team 7 was renamed: drop all its entries at once. The next lookups
/// // with `policy` miss and fill from the origin again.
/// cache::invalidate_tag("team:7")?;
/// # Ok(())
/// # }
/// ```
pub fn invalidate_tag(tag: &str) -> Result<()> {
    wit::invalidate_tag(tag).map_err(Error::from_wit)
}

/// Where [`Cache::fetch`]'s value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    /// A fresh cache hit.
    Fresh,
    /// A stale hit (another caller refreshes it).
    Stale,
    /// This caller refreshed a stale or early-refresh entry from the origin.
    Refreshed,
    /// A miss this caller filled from the origin.
    Filled,
}

impl Source {
    /// `hit`, `stale`, `refresh` or `miss`: for an `x-cache` header.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Fresh => "hit",
            Source::Stale => "stale",
            Source::Refreshed => "refresh",
            Source::Filled => "miss",
        }
    }
}

/// A value and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched<T> {
    pub value: T,
    pub source: Source,
}

/// The cache patterns as one-call helpers.
pub struct Cache;

impl Cache {
    /// Cache-aside: the cached value of `key`, or `origin()`'s, stored under
    /// `policy`. On a miss exactly one caller across all hosts runs `origin`;
    /// the others wait (up to [`Policy::wait`], then [`Error::Timeout`]) and
    /// get its value. With [`Policy::stale`], a stale value is returned at
    /// once to every caller but the one refreshing it.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use redloom_sdk::cache::{Cache, Policy};
    /// use redloom_sdk::http;
    ///
    /// # fn main() -> redloom_sdk::Result<()> {
    /// let policy = Policy::ttl(Duration::from_secs(300));
    /// let body = Cache::get_or_fill("user:42", &policy, || {
    ///     Ok(http::get("http://users.internal/users/42")?.body)
    /// })?;
    /// # let _ = body;
    /// # Ok(())
    /// # }
    /// ```
    pub fn get_or_fill(
        key: &str,
        policy: &Policy,
        origin: impl FnOnce() -> Result<Vec<u8>>,
    ) -> Result<Vec<u8>> {
        Cache::fetch(key, policy, || origin().map(Some))?
            .value
            .ok_or_else(|| Error::other(format!("cache entry `{key}` is a negative entry")))
    }

    /// Cache-aside for values that may not exist: `origin` returns `None`
    /// for "not found", which is remembered for [`Policy::negative`] (not
    /// at all without it).
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use redloom_sdk::cache::{Cache, Policy};
    ///
    /// # fn find(_: &str) -> redloom_sdk::Result<Option<Vec<u8>>> { Ok(None) }
    /// # fn main() -> redloom_sdk::Result<()> {
    /// let policy = Policy::ttl(Duration::from_secs(300)).negative(Duration::from_secs(10));
    /// let user = Cache::get_or_fill_optional("user:404", &policy, || find("404"))?;
    /// assert!(user.is_none()); // and the next 10 s of lookups do not reach `find`
    /// # Ok(())
    /// # }
    /// ```
    pub fn get_or_fill_optional(
        key: &str,
        policy: &Policy,
        origin: impl FnOnce() -> Result<Option<Vec<u8>>>,
    ) -> Result<Option<Vec<u8>>> {
        Ok(Cache::fetch(key, policy, origin)?.value)
    }

    /// [`Cache::get_or_fill_optional`], also saying where the value came
    /// from (for an `x-cache` header or metrics).
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use redloom_sdk::cache::{Cache, Policy};
    ///
    /// # fn main() -> redloom_sdk::Result<()> {
    /// // Stale-while-revalidate: fresh 60 s, then served stale for 10 min
    /// // while one caller refreshes.
    /// let policy = Policy::ttl(Duration::from_secs(60)).stale(Duration::from_secs(600));
    /// let got = Cache::fetch("prices", &policy, || Ok(Some(b"...".to_vec())))?;
    /// println!("x-cache: {}", got.source.as_str());
    /// # Ok(())
    /// # }
    /// ```
    pub fn fetch(
        key: &str,
        policy: &Policy,
        origin: impl FnOnce() -> Result<Option<Vec<u8>>>,
    ) -> Result<Fetched<Option<Vec<u8>>>> {
        let (hit, stale) = match lookup(key, policy)? {
            Lookup::Fresh(hit) => (hit, false),
            Lookup::Stale(hit) => (hit, true),
            Lookup::Miss(lease) => {
                let value = store(key, lease, policy, origin)?;
                return Ok(Fetched {
                    value,
                    source: Source::Filled,
                });
            }
            Lookup::Filling => {
                return Err(Error::Timeout(format!(
                    "cache entry `{key}` is still being filled by another caller after waiting {} ms",
                    ms(policy.wait)
                )));
            }
        };
        let source = if stale { Source::Stale } else { Source::Fresh };
        let Some(lease) = hit.refresh else {
            return Ok(Fetched {
                value: hit.value,
                source,
            });
        };
        // This caller refreshes; if the origin fails, the cached value still serves.
        match store(key, lease, policy, origin) {
            Ok(value) => Ok(Fetched {
                value,
                source: Source::Refreshed,
            }),
            Err(_) => Ok(Fetched {
                value: hit.value,
                source,
            }),
        }
    }

    /// Write-through: writes `value` to the origin with `write_origin`, then
    /// stores it in the cache under `policy` (superseding any fill in
    /// progress, so an older origin read cannot overwrite it). If the cache
    /// write fails, the entry is invalidated (best effort) and the error
    /// returned.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use redloom_sdk::cache::{Cache, Policy};
    ///
    /// # fn save(_: &[u8]) -> redloom_sdk::Result<()> { Ok(()) }
    /// # fn main() -> redloom_sdk::Result<()> {
    /// let policy = Policy::ttl(Duration::from_secs(300));
    /// let user = br#"{"id":"42","name":"Ada"}"#;
    /// Cache::write_through("user:42", user, &policy, || save(user))?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn write_through(
        key: &str,
        value: &[u8],
        policy: &Policy,
        write_origin: impl FnOnce() -> Result<()>,
    ) -> Result<()> {
        write_origin()?;
        set(key, Some(value), policy).inspect_err(|_| {
            let _ = invalidate(key);
        })
    }

    /// Write-around: writes to the origin with `write_origin`, then
    /// invalidates `key`, so the next read fills it from the origin.
    ///
    /// ```no_run
    /// use redloom_sdk::cache::Cache;
    ///
    /// # fn delete_user(_: &str) -> redloom_sdk::Result<()> { Ok(()) }
    /// # fn main() -> redloom_sdk::Result<()> {
    /// Cache::write_around("user:42", || delete_user("42"))?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn write_around<T>(key: &str, write_origin: impl FnOnce() -> Result<T>) -> Result<T> {
        let out = write_origin()?;
        invalidate(key)?;
        Ok(out)
    }

    /// [`Cache::get_or_fill`] for a serde type, stored as JSON (`json`
    /// feature). A cached value that is not `T`'s JSON fails with
    /// [`Error::InvalidArgument`].
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use redloom_sdk::cache::{Cache, Policy};
    /// use serde::{Deserialize, Serialize};
    ///
    /// #[derive(Serialize, Deserialize)]
    /// struct User {
    ///     id: u64,
    ///     name: String,
    /// }
    ///
    /// # fn load_user(id: u64) -> redloom_sdk::Result<User> { Ok(User { id, name: String::new() }) }
    /// # fn main() -> redloom_sdk::Result<()> {
    /// let policy = Policy::ttl(Duration::from_secs(300));
    /// let user: User = Cache::get_or_fill_json("user:42", &policy, || load_user(42))?;
    /// # let _ = user;
    /// # Ok(())
    /// # }
    /// ```
    #[cfg(feature = "json")]
    pub fn get_or_fill_json<T>(
        key: &str,
        policy: &Policy,
        origin: impl FnOnce() -> Result<T>,
    ) -> Result<T>
    where
        T: serde::Serialize + serde::de::DeserializeOwned,
    {
        Cache::get_or_fill_optional_json(key, policy, || origin().map(Some))?
            .ok_or_else(|| Error::other(format!("cache entry `{key}` is a negative entry")))
    }

    /// [`Cache::get_or_fill_optional`] for a serde type, stored as JSON
    /// (`json` feature); `None` ("not found") is remembered for
    /// [`Policy::negative`].
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use redloom_sdk::cache::{Cache, Policy};
    /// use serde::{Deserialize, Serialize};
    ///
    /// #[derive(Serialize, Deserialize)]
    /// struct User {
    ///     id: u64,
    ///     name: String,
    /// }
    ///
    /// # fn find_user(_: u64) -> redloom_sdk::Result<Option<User>> { Ok(None) }
    /// # fn main() -> redloom_sdk::Result<()> {
    /// let policy = Policy::ttl(Duration::from_secs(300)).negative(Duration::from_secs(10));
    /// let user: Option<User> =
    ///     Cache::get_or_fill_optional_json("user:404", &policy, || find_user(404))?;
    /// assert!(user.is_none());
    /// # Ok(())
    /// # }
    /// ```
    #[cfg(feature = "json")]
    pub fn get_or_fill_optional_json<T>(
        key: &str,
        policy: &Policy,
        origin: impl FnOnce() -> Result<Option<T>>,
    ) -> Result<Option<T>>
    where
        T: serde::Serialize + serde::de::DeserializeOwned,
    {
        let bytes = Cache::get_or_fill_optional(key, policy, || {
            origin()?
                .map(|v| serde_json::to_vec(&v).map_err(Error::from))
                .transpose()
        })?;
        bytes
            .map(|b| {
                serde_json::from_slice(&b).map_err(|e| {
                    Error::invalid(format!("cache entry `{key}` is not the expected JSON: {e}"))
                })
            })
            .transpose()
    }

    /// [`Cache::write_through`] for a serde type, stored as JSON (`json`
    /// feature): read back with [`Cache::get_or_fill_json`].
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use redloom_sdk::cache::{Cache, Policy};
    /// use serde::{Deserialize, Serialize};
    ///
    /// #[derive(Serialize, Deserialize)]
    /// struct User {
    ///     id: u64,
    ///     name: String,
    /// }
    ///
    /// # fn save_user(_: &User) -> redloom_sdk::Result<()> { Ok(()) }
    /// # fn main() -> redloom_sdk::Result<()> {
    /// let policy = Policy::ttl(Duration::from_secs(300));
    /// let user = User { id: 42, name: "Ada".into() };
    /// Cache::write_through_json("user:42", &user, &policy, || save_user(&user))?;
    /// # Ok(())
    /// # }
    /// ```
    #[cfg(feature = "json")]
    pub fn write_through_json<T: serde::Serialize + ?Sized>(
        key: &str,
        value: &T,
        policy: &Policy,
        write_origin: impl FnOnce() -> Result<()>,
    ) -> Result<()> {
        let bytes = serde_json::to_vec(value)?;
        Cache::write_through(key, &bytes, policy, write_origin)
    }
}

/// Runs `origin` under `lease` and stores its value; gives the lease up if
/// the origin fails or a "not found" is not to be cached.
fn store(
    key: &str,
    lease: Lease,
    policy: &Policy,
    origin: impl FnOnce() -> Result<Option<Vec<u8>>>,
) -> Result<Option<Vec<u8>>> {
    let value = match origin() {
        Ok(v) => v,
        Err(e) => {
            let _ = abandon(key, lease);
            return Err(e);
        }
    };
    if value.is_none() && policy.negative.is_none() {
        abandon(key, lease)?;
        return Ok(None);
    }
    // A refused fill (lease expired or superseded) still returns the value.
    fill(key, lease, value.as_deref(), policy)?;
    Ok(value)
}
