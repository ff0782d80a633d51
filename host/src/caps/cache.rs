//! `redloom:plugin/cache`: cache-aside with single-flight fills,
//! stale-while-revalidate, tag invalidation, negative caching and XFetch.
//!
//! # In Redis
//!
//! Cache key `K` of plugin `p` is an entry hash `rl:p:cache:{p/K}` and a
//! lease string `rl:p:cache:{p/K}:lease`, one hash tag per entry (see
//! [`crate::namespace::Namespace::cache`]). `lua/cache_lookup.lua` reads the
//! entry and, when the caller should compute the value (a miss, a stale hit,
//! an XFetch early refresh), takes the lease with `SET NX PX` in the same
//! step, so exactly one caller across all hosts gets it.
//! `lua/cache_fill.lua` stores only if the caller's lease id is still the
//! lease's value, so an expired or superseded lease stores nothing.
//!
//! Tags are version counters `rl:p:cache-tag:{p/TAG}`. A lookup reads the
//! versions of its tags (one pipelined round trip) and passes them to the
//! script as an opaque snapshot; an entry stored with another snapshot counts
//! as absent. The snapshot taken when a lease is granted travels inside the
//! lease token and is what `fill` stores, so a tag invalidated while the
//! origin was being read still invalidates the value read before it.
//! Invalidating a tag is one `INCR`.
//!
//! # Waiting and coalescing
//!
//! Inside one host, concurrent lookups of one key by one plugin form a
//! *flight* ([`Flights`], in the plugin's [`PluginContext`]): the first is the
//! leader and talks to Redis; the others wait on the flight's
//! `tokio::sync::watch` channel and get the leader's result without a Redis
//! command. When the leader gets the fill lease, the flight stays open until
//! its `fill` (followers get the filled value), `abandon` or the end of its
//! invocation (a cleanup action frees the lease in Redis and releases the
//! followers, so a trapped filler is replaced at once), or until its lease's
//! time to live passes (then a follower takes over through Redis).
//!
//! A leader that finds the lease held by another host waits until that
//! host's fill wakes it, or until a jittered exponential backoff pause ends
//! (never past the lease's remaining time to live + 1 ms or the caller's
//! deadline), and looks again: it then finds the value, or takes the freed
//! or expired lease over. Its followers learn the outcome from the leader,
//! so one key costs one Redis lookup per wake-up or pause per host however
//! many wait. No caller waits past its `wait-ms`.
//!
//! # Wake-ups across hosts
//!
//! A lookup that will wait and finds someone else's lease also sets the
//! entry's waiter flag (`…:waiting`, for the lease's remaining time to
//! live). The scripts that end a lease — `cache_fill` (a store),
//! `cache_abandon`, `cache_set`, `cache_invalidate` — delete the flag and,
//! only if it was there, `PUBLISH` the entry's key on the plugin's channel
//! `rl:<plugin>:cache-filled`: nothing is published when nobody waits.
//! Each host subscribes to that channel once per plugin, lazily (when one of
//! the plugin's lookups first waits for another host), on the plugin's own
//! connection target (so an `acl = true` plugin subscribes as its ACL user),
//! reconnecting with backoff; the task ends with the plugin's [`Flights`].
//! A message wakes the leader waiting for that entry through a per-entry
//! `tokio::sync::Notify`, whose `notified` future is enabled *before* the
//! lookup script runs, so a fill landing between the reply and the wait is
//! not missed.
//!
//! Polling stays as the safety net (a message lost while the subscription
//! reconnects, or sent before it was first up): pauses start at
//! [`FIRST_BACKOFF`] and double up to [`MAX_BACKOFF`] (50 ms) while the
//! subscription is down, and up to [`MAX_BACKOFF_NOTIFIED`] (500 ms) while it
//! is up. 500 ms bounds how late a lost wake-up is noticed while keeping a
//! long wait at 2–4 lookups per second per host and key; a (re)connect wakes
//! every waiter once, since messages may have been missed while it was
//! down.
//!
//! # Near cache
//!
//! A lookup whose options allow it (`near-cache`, and the plugin's
//! `near-cache` setting) is first answered from the plugin's near cache
//! ([`crate::near_cache`]) when it holds a fresh entry with the same tags;
//! otherwise its Redis read registers as pending there and a fresh hit
//! that handed out no lease is kept. Writes through this host (`fill`,
//! `set`, `invalidate`, `invalidate-tag`) drop the near entries they touch
//! before they are sent and again after the reply.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use super::common::{Backoff, R, invalid, random_unit, unique_id};
use super::{Caps, Cleanup, PluginContext};
use crate::bindings::redloom::plugin::cache::{
    Hit, Host, Lease, LookupOptions, LookupResult, Ttls,
};
use crate::bindings::types::Error;
use crate::namespace::CacheKeys;
use crate::redis::cache::{CacheLookup, CacheValue};
use crate::redis::{Redis, Subscription};
use crate::stats::CacheResult;

/// Longest lease: a lease only matters while its holder computes a value.
pub const MAX_LEASE_TTL_MS: u64 = 60 * 60 * 1000;

/// Longest `wait-ms`.
pub const MAX_WAIT_MS: u64 = 60_000;

/// Most tags per entry (each costs a `GET` per lookup).
pub const MAX_TAGS: usize = 32;

/// Longest fresh + stale time to live: 30 days.
pub const MAX_TTL_MS: u64 = 30 * 24 * 60 * 60 * 1000;

/// First pause of a leader waiting for another host's fill.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(2);

/// Longest pause of a leader waiting for another host's fill while the
/// plugin's wake-up subscription is not up: how late it may notice a value
/// filled through another host.
pub const MAX_BACKOFF: Duration = Duration::from_millis(50);

/// Longest pause of a leader waiting for another host's fill while the
/// wake-up subscription is up (the fill wakes it; polling only catches a
/// lost message).
pub const MAX_BACKOFF_NOTIFIED: Duration = Duration::from_millis(500);

/// How long one connection attempt of the wake-up subscription may take.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(5);

// ---- flights ----------------------------------------------------------------

/// What a flight's followers learn.
#[derive(Debug, Clone)]
enum Outcome {
    /// The leader is still working.
    Pending,
    /// A value: from the leader's hit or from its fill.
    Value { value: Option<Vec<u8>>, stale: bool },
    /// The leader gave up (no value): look again.
    Gone,
}

/// One key's in-process single flight.
struct Flight {
    serial: u64,
    /// The leader's canonical tags; only lookups with the same tags follow.
    tags: Vec<String>,
    tx: watch::Sender<Outcome>,
    /// Set once the leader holds the fill lease.
    lease: Mutex<Option<FlightLease>>,
}

struct FlightLease {
    id: String,
    /// When the lease expires (then followers stop waiting for the leader).
    expires: Instant,
    /// The leader's invocation cleanup and the registered give-up action.
    cleanup: Arc<Cleanup>,
    cleanup_id: u64,
}

/// One plugin's flights in this host, by entry key, and its wake-ups from
/// other hosts' fills.
#[derive(Default)]
pub struct Flights {
    map: Mutex<HashMap<String, Arc<Flight>>>,
    wakeups: Wakeups,
}

impl std::fmt::Debug for Flights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.map.lock().map(|m| m.len()).unwrap_or(0);
        f.debug_struct("Flights")
            .field("open", &n)
            .field("subscribed", &self.wakeups.up.load(Ordering::Relaxed))
            .finish()
    }
}

/// Entries leaders wait for: each entry's `Notify` and how many wait on it.
type Waiting = Arc<Mutex<HashMap<String, (Arc<Notify>, usize)>>>;

/// One plugin's subscription to its `cache-filled` channel in this host.
#[derive(Default)]
struct Wakeups {
    waiting: Waiting,
    /// Whether the subscription is up now.
    up: Arc<AtomicBool>,
    /// The subscription task, started by the first wait for another host.
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Drop for Wakeups {
    fn drop(&mut self) {
        if let Some(task) = self.task.get_mut().ok().and_then(Option::take) {
            task.abort();
        }
    }
}

/// A leader's registration for wake-ups of one entry; unregisters on drop.
struct Waiter {
    waiting: Waiting,
    entry: String,
    notify: Arc<Notify>,
}

impl Drop for Waiter {
    fn drop(&mut self) {
        let mut map = self.waiting.lock().expect("waiters poisoned");
        if let Some((_, n)) = map.get_mut(&self.entry) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.entry);
            }
        }
    }
}

/// Wakes whoever waits for `entry` (every waiter with `None`).
fn wake(waiting: &Waiting, entry: Option<&str>) {
    let map = waiting.lock().expect("waiters poisoned");
    match entry {
        Some(e) => {
            if let Some((notify, _)) = map.get(e) {
                notify.notify_waiters();
            }
        }
        None => map.values().for_each(|(notify, _)| notify.notify_waiters()),
    }
}

/// Keeps the plugin's wake-up subscription up
/// ([`crate::redis::keep_subscribed`]) and wakes the leaders that wait for
/// the entries named in its messages.
async fn subscription(
    redis: Redis,
    channel: String,
    waiting: Waiting,
    up: Arc<AtomicBool>,
    plugin: String,
) {
    crate::redis::keep_subscribed(
        &redis,
        &format!("cache wake-ups of plugin {plugin}"),
        |client| {
            let channel = channel.clone();
            async move {
                crate::redis::subscribe(&client, &[&channel], &[], SUBSCRIBE_TIMEOUT).await
            }
        },
        |event| match event {
            Subscription::Up { .. } => {
                up.store(true, Ordering::Relaxed);
                // A fill may have landed while nothing was subscribed.
                wake(&waiting, None);
            }
            Subscription::Message(msg) => {
                if let Ok(entry) = msg.get_payload::<String>() {
                    wake(&waiting, Some(&entry));
                }
            }
            Subscription::Down => up.store(false, Ordering::Relaxed),
        },
    )
    .await;
}

impl Flights {
    /// Registers a leader waiting for `entry`'s fill.
    fn waiter(&self, entry: &str) -> Waiter {
        let waiting = self.wakeups.waiting.clone();
        let notify = {
            let mut map = waiting.lock().expect("waiters poisoned");
            let (notify, n) = map
                .entry(entry.to_owned())
                .or_insert_with(|| (Arc::new(Notify::new()), 0));
            *n += 1;
            notify.clone()
        };
        Waiter {
            waiting,
            entry: entry.to_owned(),
            notify,
        }
    }

    /// Whether wake-ups from other hosts arrive now.
    fn subscribed(&self) -> bool {
        self.wakeups.up.load(Ordering::Relaxed)
    }

    /// Starts the wake-up subscription on `channel` (once per plugin and
    /// host), connecting like `redis` (the plugin's connection: its ACL user
    /// if it has one).
    fn subscribe(&self, redis: Option<&Redis>, channel: &str, plugin: &str) {
        let mut task = self.wakeups.task.lock().expect("wake-ups poisoned");
        if task.is_some() {
            return;
        }
        let Some(redis) = redis else { return };
        *task = Some(tokio::spawn(subscription(
            redis.clone(),
            channel.to_owned(),
            self.wakeups.waiting.clone(),
            self.wakeups.up.clone(),
            plugin.to_owned(),
        )));
    }
}

enum Role {
    Lead(LeaderGuard),
    Follow(Arc<Flight>),
    /// A flight with other tags is open: go to Redis without coalescing.
    Alone,
}

impl Flights {
    fn join(self: &Arc<Self>, entry: &str, tags: &[String]) -> Role {
        static SERIAL: AtomicU64 = AtomicU64::new(0);
        let mut map = self.map.lock().expect("flights poisoned");
        if let Some(f) = map.get(entry) {
            return if f.tags == tags {
                Role::Follow(f.clone())
            } else {
                Role::Alone
            };
        }
        let flight = Arc::new(Flight {
            serial: SERIAL.fetch_add(1, Ordering::Relaxed),
            tags: tags.to_vec(),
            tx: watch::Sender::new(Outcome::Pending),
            lease: Mutex::new(None),
        });
        map.insert(entry.to_owned(), flight.clone());
        Role::Lead(LeaderGuard {
            flights: self.clone(),
            entry: entry.to_owned(),
            flight,
            kept: false,
        })
    }

    /// Closes `entry`'s flight `serial` (if it is still the open one) with
    /// `outcome`. Returns the closed flight.
    fn close(&self, entry: &str, serial: u64, outcome: Outcome) -> Option<Arc<Flight>> {
        let mut map = self.map.lock().expect("flights poisoned");
        if map.get(entry).is_some_and(|f| f.serial == serial) {
            let f = map.remove(entry)?;
            drop(map);
            f.tx.send_replace(outcome);
            return Some(f);
        }
        None
    }

    /// Closes `entry`'s flight if its leader holds lease `id`; cancels the
    /// leader's give-up action.
    fn close_lease(&self, entry: &str, id: &str, outcome: Outcome) {
        let flight = {
            let map = self.map.lock().expect("flights poisoned");
            match map.get(entry) {
                Some(f)
                    if f.lease
                        .lock()
                        .expect("flight poisoned")
                        .as_ref()
                        .is_some_and(|l| l.id == id) =>
                {
                    f.clone()
                }
                _ => return,
            }
        };
        if let Some(f) = self.close(entry, flight.serial, outcome)
            && let Some(l) = f.lease.lock().expect("flight poisoned").take()
        {
            l.cleanup.cancel(l.cleanup_id);
        }
    }
}

/// The leader's hold on its flight: closes it as `Gone` when dropped
/// without [`LeaderGuard::resolve`] or [`LeaderGuard::keep`] (an error, a
/// deadline, a cancelled invocation).
struct LeaderGuard {
    flights: Arc<Flights>,
    entry: String,
    flight: Arc<Flight>,
    kept: bool,
}

impl LeaderGuard {
    fn resolve(mut self, outcome: Outcome) {
        self.kept = true;
        self.flights.close(&self.entry, self.flight.serial, outcome);
    }

    /// Keeps the flight open for the leader's fill.
    fn keep(mut self, lease: FlightLease) {
        self.kept = true;
        *self.flight.lease.lock().expect("flight poisoned") = Some(lease);
    }
}

impl Drop for LeaderGuard {
    fn drop(&mut self) {
        if !self.kept {
            self.flights
                .close(&self.entry, self.flight.serial, Outcome::Gone);
        }
    }
}

// ---- leases -------------------------------------------------------------------

/// The guest-visible token: `ID|GRANTED_MS|TAG_SNAPSHOT`.
fn token(id: &str, granted_ms: u64, tags: &str) -> Lease {
    Lease {
        token: format!("{id}|{granted_ms}|{tags}"),
    }
}

/// `(id, granted_ms, tag snapshot)` of a token.
fn parse_token(token: &str) -> Result<(&str, u64, &str), Error> {
    let bad = || invalid("not a lease token from cache.lookup");
    let (id, rest) = token.split_once('|').ok_or_else(bad)?;
    let (granted, tags) = rest.split_once('|').ok_or_else(bad)?;
    if id.is_empty() {
        return Err(bad());
    }
    Ok((id, granted.parse().map_err(|_| bad())?, tags))
}

/// Canonical tags: sorted, without duplicates, checked.
fn canonical_tags(tags: &[String]) -> Result<Vec<String>, Error> {
    let mut tags = tags.to_vec();
    tags.sort();
    tags.dedup();
    if tags.len() > MAX_TAGS {
        return Err(invalid(format!(
            "an entry may have at most {MAX_TAGS} tags, not {}",
            tags.len()
        )));
    }
    Ok(tags)
}

/// The snapshot of `tags` at `versions`: `LEN:TAG=VERSION;` per tag.
fn snapshot(tags: &[String], versions: &[u64]) -> String {
    tags.iter()
        .zip(versions)
        .map(|(t, v)| format!("{}:{t}={v};", t.len()))
        .collect()
}

fn check_ttls(ttls: Ttls) -> Result<Ttls, Error> {
    if ttls.fresh_ms == 0 {
        return Err(invalid("fresh-ms must be greater than 0"));
    }
    if ttls.fresh_ms.saturating_add(ttls.stale_ms) > MAX_TTL_MS {
        return Err(invalid(format!(
            "fresh-ms + stale-ms must be at most {MAX_TTL_MS} (30 days)"
        )));
    }
    Ok(ttls)
}

fn hit(value: Option<Vec<u8>>, refresh: Option<Lease>) -> Hit {
    Hit { value, refresh }
}

// ---- the capability -------------------------------------------------------------

impl Caps {
    fn cache_keys(&self, key: &str) -> Result<CacheKeys, Error> {
        self.plugin
            .namespace
            .cache(key)
            .map_err(|e| invalid(format!("cache key: {e}")))
    }

    /// Refuses a value the plugin could never read back (`max-reply`).
    fn check_value(&self, value: Option<&[u8]>) -> Result<(), Error> {
        let len = value.map_or(0, <[u8]>::len) as u64;
        let max = self.plugin.quotas.max_reply;
        if len > max {
            return Err(invalid(format!(
                "a cache value of {len} bytes is over the plugin's max-reply quota ({max} bytes)"
            )));
        }
        Ok(())
    }

    /// A near-cache registration for a lookup of `entry` with `tags`
    /// (`None`: the near cache is off or not tracking).
    fn near_pending(&self, entry: &str, tags: &[String]) -> Option<crate::near_cache::Pending> {
        let near = &self.plugin.near_cache;
        if !near.enabled() {
            return None;
        }
        let tag_keys = tags
            .iter()
            .map(|t| self.plugin.namespace.cache_tag(t))
            .collect::<Result<Vec<_>, _>>()
            .ok()?;
        near.begin(entry, &tag_keys)
    }

    /// The snapshot of `tags` at their current versions.
    async fn tag_snapshot(&mut self, tags: &[String]) -> Result<String, Error> {
        if tags.is_empty() {
            return Ok(String::new());
        }
        let keys = tags
            .iter()
            .map(|t| {
                self.plugin
                    .namespace
                    .cache_tag(t)
                    .map_err(|e| invalid(format!("cache tag: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let redis = self.admit().await?;
        // One pipelined round trip; each GET counts as a command.
        for _ in 1..keys.len() {
            self.admit().await?;
        }
        let versions = redis.cache_tag_versions(&keys).await?;
        Ok(snapshot(tags, &versions))
    }

    async fn cache_lookup(
        &mut self,
        key: &str,
        options: LookupOptions,
    ) -> Result<LookupResult, Error> {
        let keys = self.cache_keys(key)?;
        if options.lease_ttl_ms == 0 || options.lease_ttl_ms > MAX_LEASE_TTL_MS {
            return Err(invalid(format!(
                "lease-ttl-ms must be from 1 to {MAX_LEASE_TTL_MS}, not {}",
                options.lease_ttl_ms
            )));
        }
        if options.wait_ms > MAX_WAIT_MS {
            return Err(invalid(format!(
                "wait-ms must be at most {MAX_WAIT_MS}, not {}",
                options.wait_ms
            )));
        }
        let beta = options.early_refresh_beta;
        if !beta.is_finite() || beta < 0.0 {
            return Err(invalid("early-refresh-beta must be 0 or a positive number"));
        }
        let tags = canonical_tags(&options.tags)?;
        let near = &self.plugin.near_cache;
        // Not after a quota breach: the invocation fails anyway, as it
        // would at its next Redis command.
        if options.near_cache && near.enabled() && self.breach.is_none() {
            near.ensure_tracking();
            if let Some(value) = near.get(&keys.entry, &tags, beta) {
                self.check_reply(value.as_ref().map_or(0, Vec::len))?;
                return Ok(LookupResult::Fresh(hit(value, None)));
            }
        }
        let deadline = Instant::now() + Duration::from_millis(options.wait_ms);
        let flights = self.plugin.cache_flights.clone();
        loop {
            match flights.join(&keys.entry, &tags) {
                Role::Follow(flight) => {
                    match follow(&flight, deadline).await {
                        Some(Outcome::Value { value, stale }) => {
                            self.check_reply(value.as_ref().map_or(0, Vec::len))?;
                            let h = hit(value, None);
                            return Ok(if stale {
                                LookupResult::Stale(h)
                            } else {
                                LookupResult::Fresh(h)
                            });
                        }
                        Some(_) => {
                            // The leader gave up or its lease ran out: close
                            // its flight (if still open) and look again.
                            flights.close(&keys.entry, flight.serial, Outcome::Gone);
                        }
                        None => return Ok(LookupResult::Filling),
                    }
                }
                Role::Lead(guard) => {
                    return self
                        .lead(&keys, &tags, &options, deadline, Some(guard))
                        .await;
                }
                Role::Alone => return self.lead(&keys, &tags, &options, deadline, None).await,
            }
        }
    }

    /// Looks up in Redis, waiting for a wake-up (or a backoff pause) while
    /// another host fills, and tells the flight's followers (if leading
    /// one) what it found.
    async fn lead(
        &mut self,
        keys: &CacheKeys,
        tags: &[String],
        options: &LookupOptions,
        deadline: Instant,
        guard: Option<LeaderGuard>,
    ) -> Result<LookupResult, Error> {
        let mut backoff = Backoff::new(FIRST_BACKOFF);
        let flights = self.plugin.cache_flights.clone();
        // Registered for the whole lookup, so a wake-up is never lost
        // between two looks; only by callers that will wait.
        let waiter = (options.wait_ms > 0).then(|| flights.waiter(&keys.entry));
        loop {
            // Registered before the first read (the tag versions), so a
            // write of the entry or a tag from here on keeps the reply
            // out of the near cache (see `near_cache`).
            let pending = if options.near_cache {
                self.near_pending(&keys.entry, tags)
            } else {
                None
            };
            let tag_snapshot = self.tag_snapshot(tags).await?;
            let id = unique_id();
            let will_wait = waiter.is_some() && Instant::now() < deadline;
            // Enabled before the lookup: a fill published after the script
            // set the waiter flag wakes this future even before it is polled.
            let mut notified = std::pin::pin!(waiter.as_ref().map(|w| w.notify.notified()));
            if let Some(n) = notified.as_mut().as_pin_mut() {
                n.enable();
            }
            let redis = self.admit().await?;
            let found = redis
                .cache_lookup(
                    keys,
                    &tag_snapshot,
                    &id,
                    options.lease_ttl_ms,
                    options.early_refresh_beta,
                    random_unit(),
                    will_wait,
                )
                .await?;
            let (value, stale, granted, now_ms) = match found {
                CacheLookup::Fresh {
                    value,
                    granted,
                    now_ms,
                    fresh_left_ms,
                    delta_ms,
                } => {
                    // Not while this caller refreshes it (XFetch): its
                    // fill will replace the value.
                    if let Some(p) = pending.filter(|_| !granted) {
                        p.keep(value.as_deref(), tags, fresh_left_ms, delta_ms);
                    }
                    (value, false, granted, now_ms)
                }
                CacheLookup::Stale {
                    value,
                    granted,
                    now_ms,
                } => (value, true, granted, now_ms),
                CacheLookup::Miss { now_ms } => {
                    let lease = token(&id, now_ms, &tag_snapshot);
                    if let Some(guard) = guard {
                        let cleanup_id = self.cleanup.register(give_up_at_end(
                            self.plugin.clone(),
                            keys.clone(),
                            id.clone(),
                        ));
                        guard.keep(FlightLease {
                            id,
                            expires: Instant::now() + Duration::from_millis(options.lease_ttl_ms),
                            cleanup: self.cleanup.clone(),
                            cleanup_id,
                        });
                    }
                    return Ok(LookupResult::Miss(lease));
                }
                CacheLookup::Filling { lease_ttl_ms } => {
                    let now = Instant::now();
                    if now >= deadline {
                        return Ok(LookupResult::Filling);
                    }
                    let max = if flights.subscribed() {
                        MAX_BACKOFF_NOTIFIED
                    } else {
                        flights.subscribe(
                            self.redis.as_ref(),
                            &keys.filled,
                            self.plugin.name.as_str(),
                        );
                        MAX_BACKOFF
                    };
                    let mut pause = backoff.next_pause(max).min(deadline - now);
                    if let Some(left) = lease_ttl_ms {
                        pause = pause.min(Duration::from_millis(left + 1));
                    }
                    let woken = async {
                        match notified.as_mut().as_pin_mut() {
                            Some(n) => n.await,
                            None => std::future::pending().await,
                        }
                    };
                    tokio::select! {
                        () = tokio::time::sleep(pause) => {}
                        () = woken => {}
                    }
                    continue;
                }
            };
            self.check_reply(value.as_ref().map_or(0, Vec::len))?;
            if let Some(guard) = guard {
                guard.resolve(Outcome::Value {
                    value: value.clone(),
                    stale,
                });
            }
            let refresh = granted.then(|| token(&id, now_ms, &tag_snapshot));
            let h = hit(value, refresh);
            return Ok(if stale {
                LookupResult::Stale(h)
            } else {
                LookupResult::Fresh(h)
            });
        }
    }

    async fn cache_fill(
        &mut self,
        key: &str,
        lease: &Lease,
        value: Option<&[u8]>,
        ttls: Ttls,
    ) -> Result<bool, Error> {
        let keys = self.cache_keys(key)?;
        let (id, granted_ms, tags) = parse_token(&lease.token)?;
        let ttls = check_ttls(ttls)?;
        let checked = self.check_value(value).and_then(|()| {
            self.check_write(keys.entry.len() + tags.len(), value.map_or(0, <[u8]>::len))
        });
        if let Err(e) = checked {
            // The value will never be stored: let the next caller try.
            self.cache_give_up(&keys, id).await;
            return Err(e);
        }
        let redis = self.admit().await?;
        // This host reads its own writes: drop the near entry now and once
        // Redis has the new one (see `near_cache`).
        self.plugin.near_cache.written(&[&keys.entry]);
        let stored = redis
            .cache_fill(
                &keys,
                id,
                granted_ms,
                &CacheValue {
                    value,
                    fresh_ms: ttls.fresh_ms,
                    stale_ms: ttls.stale_ms,
                    tags,
                },
            )
            .await;
        self.plugin.near_cache.written(&[&keys.entry]);
        let stored = stored?;
        let outcome = if stored {
            Outcome::Value {
                value: value.map(<[u8]>::to_vec),
                stale: false,
            }
        } else {
            Outcome::Gone
        };
        self.plugin
            .cache_flights
            .close_lease(&keys.entry, id, outcome);
        Ok(stored)
    }

    /// Frees lease `id` in Redis and releases this host's waiters; errors
    /// are left to the lease's time to live.
    async fn cache_give_up(&mut self, keys: &CacheKeys, id: &str) -> bool {
        let freed = match self.admit().await {
            Ok(redis) => redis.cache_abandon(keys, id).await.unwrap_or(false),
            Err(_) => false,
        };
        self.plugin
            .cache_flights
            .close_lease(&keys.entry, id, Outcome::Gone);
        freed
    }

    async fn cache_abandon(&mut self, key: &str, lease: &Lease) -> Result<bool, Error> {
        let keys = self.cache_keys(key)?;
        let (id, _, _) = parse_token(&lease.token)?;
        let redis = self.admit().await?;
        let freed = redis.cache_abandon(&keys, id).await?;
        self.plugin
            .cache_flights
            .close_lease(&keys.entry, id, Outcome::Gone);
        Ok(freed)
    }

    async fn cache_set(
        &mut self,
        key: &str,
        value: Option<&[u8]>,
        ttls: Ttls,
        tags: &[String],
    ) -> Result<(), Error> {
        let keys = self.cache_keys(key)?;
        let ttls = check_ttls(ttls)?;
        self.check_value(value)?;
        let tags = canonical_tags(tags)?;
        let tag_snapshot = self.tag_snapshot(&tags).await?;
        self.check_write(
            keys.entry.len() + tag_snapshot.len(),
            value.map_or(0, <[u8]>::len),
        )?;
        let redis = self.admit().await?;
        self.plugin.near_cache.written(&[&keys.entry]);
        let set = redis
            .cache_set(
                &keys,
                &CacheValue {
                    value,
                    fresh_ms: ttls.fresh_ms,
                    stale_ms: ttls.stale_ms,
                    tags: &tag_snapshot,
                },
            )
            .await;
        self.plugin.near_cache.written(&[&keys.entry]);
        Ok(set?)
    }

    async fn cache_invalidate(&mut self, key: &str) -> Result<bool, Error> {
        let keys = self.cache_keys(key)?;
        let redis = self.admit().await?;
        self.plugin.near_cache.written(&[&keys.entry]);
        let existed = redis.cache_invalidate(&keys).await;
        self.plugin.near_cache.written(&[&keys.entry]);
        Ok(existed?)
    }

    async fn cache_invalidate_tag(&mut self, tag: &str) -> Result<(), Error> {
        let key = self
            .plugin
            .namespace
            .cache_tag(tag)
            .map_err(|e| invalid(format!("cache tag: {e}")))?;
        let redis = self.admit().await?;
        self.plugin.near_cache.written(&[&key]);
        let done = redis.cache_invalidate_tag(&key).await;
        self.plugin.near_cache.written(&[&key]);
        Ok(done?)
    }
}

/// Waits for `flight`'s outcome until `deadline` or the leader's lease
/// expires. `None`: the caller's deadline passed first; `Some(Gone)` also
/// when the lease expired without a fill.
async fn follow(flight: &Flight, deadline: Instant) -> Option<Outcome> {
    let mut rx = flight.tx.subscribe();
    loop {
        let outcome = rx.borrow_and_update().clone();
        if !matches!(outcome, Outcome::Pending) {
            return Some(outcome);
        }
        let expires = flight
            .lease
            .lock()
            .expect("flight poisoned")
            .as_ref()
            .map(|l| l.expires);
        let until = match expires {
            Some(e) if e < deadline => e,
            _ => deadline,
        };
        tokio::select! {
            changed = rx.changed() => {
                if changed.is_err() {
                    return Some(Outcome::Gone);
                }
            }
            _ = tokio::time::sleep_until(until) => {
                if until >= deadline {
                    return None;
                }
                // The leader's lease expired: stop following. If it never
                // had one yet, keep waiting (the loop re-reads it).
                if expires.is_some() {
                    return Some(Outcome::Gone);
                }
            }
        }
    }
}

/// The cleanup action of a fill lease: free it in Redis and release this
/// host's waiters, if the invocation ends without filling or abandoning.
fn give_up_at_end(
    plugin: Arc<PluginContext>,
    keys: CacheKeys,
    id: String,
) -> crate::caps::CleanupAction {
    Box::new(move |redis: Redis| {
        Box::pin(async move {
            plugin.stats.redis_command();
            match redis.cache_abandon(&keys, &id).await {
                Ok(true) => tracing::debug!(
                    plugin = %plugin.name,
                    "freed a cache fill lease the invocation still held when it ended"
                ),
                Ok(false) => {}
                Err(e) => tracing::warn!(
                    plugin = %plugin.name,
                    "cannot free a cache fill lease (it expires with its TTL): {e}"
                ),
            }
            plugin
                .cache_flights
                .close_lease(&keys.entry, &id, Outcome::Gone);
        })
    })
}

impl Host for Caps {
    async fn lookup(&mut self, key: String, options: LookupOptions) -> R<LookupResult> {
        let found = traced!("cache", "lookup", self.cache_lookup(&key, options));
        if let Ok(r) = &found {
            self.plugin.stats.cache_lookup(match r {
                LookupResult::Fresh(_) => CacheResult::Fresh,
                LookupResult::Stale(_) => CacheResult::Stale,
                LookupResult::Miss(_) => CacheResult::Miss,
                LookupResult::Filling => CacheResult::Filling,
            });
        }
        Ok(found)
    }

    async fn fill(
        &mut self,
        key: String,
        lease: Lease,
        value: Option<Vec<u8>>,
        ttls: Ttls,
    ) -> R<bool> {
        let stored = traced!(
            "cache",
            "fill",
            self.cache_fill(&key, &lease, value.as_deref(), ttls)
        );
        if let Ok(true) = stored {
            self.plugin.stats.cache_fill();
        }
        Ok(stored)
    }

    async fn abandon(&mut self, key: String, lease: Lease) -> R<bool> {
        Ok(traced!(
            "cache",
            "abandon",
            self.cache_abandon(&key, &lease)
        ))
    }

    async fn set(
        &mut self,
        key: String,
        value: Option<Vec<u8>>,
        ttls: Ttls,
        tags: Vec<String>,
    ) -> R<()> {
        Ok(traced!(
            "cache",
            "set",
            self.cache_set(&key, value.as_deref(), ttls, &tags)
        ))
    }

    async fn invalidate(&mut self, key: String) -> R<bool> {
        Ok(traced!("cache", "invalidate", self.cache_invalidate(&key)))
    }

    async fn invalidate_tag(&mut self, tag: String) -> R<()> {
        Ok(traced!(
            "cache",
            "invalidate-tag",
            self.cache_invalidate_tag(&tag)
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tokens round-trip, whatever the tag snapshot holds.
    #[test]
    fn tokens_round_trip() {
        let tags = snapshot(&["a|b".into(), "c".into()], &[3, 0]);
        let t = token("id-1", 42, &tags);
        assert_eq!(parse_token(&t.token).unwrap(), ("id-1", 42, tags.as_str()));
        assert!(parse_token("garbage").is_err());
        assert!(parse_token("|1|").is_err());
    }

    /// Tags are sorted and deduplicated, so the same set always gives the
    /// same snapshot.
    #[test]
    fn tags_are_canonical() {
        let t = canonical_tags(&["b".into(), "a".into(), "b".into()]).unwrap();
        assert_eq!(t, ["a", "b"]);
        assert_eq!(snapshot(&t, &[1, 2]), "1:a=1;1:b=2;");
        let many: Vec<String> = (0..=MAX_TAGS).map(|i| i.to_string()).collect();
        assert!(canonical_tags(&many).is_err());
    }

    /// Pauses grow from the upper half of [`FIRST_BACKOFF`] to the upper
    /// half of the cap in force: [`MAX_BACKOFF`] without wake-ups, then
    /// [`MAX_BACKOFF_NOTIFIED`] once they arrive; back to the lower cap at
    /// once if the subscription drops.
    #[test]
    fn backoff_caps() {
        let mut b = Backoff::new(FIRST_BACKOFF);
        let first = b.next_pause(MAX_BACKOFF);
        assert!(
            first >= FIRST_BACKOFF / 2 && first <= FIRST_BACKOFF,
            "{first:?}"
        );
        for _ in 0..10 {
            assert!(b.next_pause(MAX_BACKOFF) <= MAX_BACKOFF);
        }
        assert!(b.next_pause(MAX_BACKOFF) >= MAX_BACKOFF / 2);
        let mut most = Duration::ZERO;
        for _ in 0..20 {
            let p = b.next_pause(MAX_BACKOFF_NOTIFIED);
            assert!(p <= MAX_BACKOFF_NOTIFIED, "{p:?}");
            most = most.max(p);
        }
        assert!(most >= MAX_BACKOFF_NOTIFIED / 2, "{most:?}");
        assert!(b.next_pause(MAX_BACKOFF) <= MAX_BACKOFF);
    }
}
