//! The cache capability's near cache: fresh hits kept in host memory, per
//! plugin, dropped when Redis says their keys were written.
//!
//! # What is kept, and for how long
//!
//! Only a `fresh` hit of `lua/cache_lookup.lua` that handed out no lease
//! (not stale, not a miss, not an XFetch early refresh) is kept, with the
//! lookup's tags. It is served until the first of:
//! - its fresh time ends (measured from *before* the lookup was sent, so a
//!   near entry never outlives the Redis entry's fresh time); a stale hit,
//!   a miss and its lease always come from Redis, so single-flight fills
//!   and stale-while-revalidate work as without a near cache;
//! - with XFetch (`early-refresh-beta` > 0), the point where XFetch starts
//!   to matter: `delta × beta × `[`XFETCH_SPAN`] before the fresh end
//!   (`delta`: the time the entry's last fill took). From there every
//!   lookup goes to Redis, where one of them gets the refresh lease;
//! - `near-cache-max-age` (default [`MAX_AGE`]) after the lookup was sent:
//!   the safety net that bounds staleness even if an invalidation were
//!   lost;
//! - an invalidation of its entry key, of its lease or waiter key (a fill
//!   or refresh started), or of one of its tag keys (`INCR` by
//!   `invalidate-tag`), from any client — heard through RESP3 broadcast
//!   tracking of the plugin's cache prefixes ([`crate::redis::tracking`]);
//! - eviction: the plugin's near cache holds at most its `near-cache-max-
//!   bytes` (keys, values, tags and a fixed [`ENTRY_OVERHEAD`] per entry
//!   and tag), evicting by CLOCK (an approximation of least recently used).
//!
//! Writes through this host (`fill`, `set`, `invalidate`,
//! `invalidate-tag`) drop their near entries themselves, before they are
//! sent and again once Redis acknowledged them, so this host reads its own
//! writes without waiting for the invalidation message.
//!
//! # Why a value read is never kept past an invalidation
//!
//! Invalidations arrive on another connection than the lookup's reply, in
//! either order. A lookup registers as *pending* on its entry and tag keys
//! before its first read (the tag versions); an invalidation of any of
//! them, or a flush, spoils the registration, and a spoiled lookup keeps
//! nothing. So a write that Redis ran after the lookup's read either
//! spoils it (invalidation first) or removes what it kept (reply first).
//!
//! # Connection loss
//!
//! Nothing is served or kept while tracking is not up on every node. When
//! it is lost (a closed connection: at once; a silent one: within
//! [`HEARTBEAT`](crate::redis::tracking::HEARTBEAT) + the response timeout;
//! a Cluster's primaries changing: within the heartbeat), every entry is
//! dropped and every pending lookup spoiled; serving resumes only once
//! tracking is on again everywhere.
//!
//! # Staleness bound
//!
//! After a write is acknowledged to its writer, a near entry may still be
//! served for the invalidation's delivery time (Redis queues the message
//! before the writer's reply; in practice well under a millisecond on one
//! network); after an undetected connection loss for at most the heartbeat
//! plus the response timeout; and in every case never more than
//! `near-cache-max-age` (default [`MAX_AGE`]) after the value was read.

use std::collections::hash_map::Entry as Slot;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::time::Instant;

use crate::redis::Redis;
use crate::redis::tracking::Tracking;

/// Default bound of one plugin's near cache (`near-cache-max-bytes`): room
/// for ~50 000 entries of 128-byte values, small next to an instance.
pub const DEFAULT_MAX_BYTES: u64 = 16 << 20;

/// Largest `near-cache-max-bytes`: the near cache is host memory, outside
/// every other quota.
pub const MAX_BYTES_CEILING: u64 = 4 << 30;

/// Default of `near-cache-max-age`: the longest a near entry is served
/// after its value was read, whatever its fresh time — the safety net if an
/// invalidation were ever lost while the tracking connection stayed up.
/// Re-reading a hot key every 10 s costs nothing measurable.
pub const MAX_AGE: Duration = Duration::from_secs(10);

/// Largest `near-cache-max-age`: an hour of possible staleness is already
/// more than a safety net should allow.
pub const MAX_AGE_CEILING: Duration = Duration::from_secs(3600);

/// Bytes counted per entry (and per tag of an entry) beyond its key, value
/// and tag strings: the hash-map slots, the CLOCK ring slot, the entry
/// record and the tag index, rounded up.
pub const ENTRY_OVERHEAD: u64 = 160;

/// With XFetch on, near entries stop being served `delta × beta ×
/// XFETCH_SPAN` before their fresh end: from there XFetch refreshes a
/// lookup with probability over e^-3 ≈ 5 %, so lookups go to Redis, where
/// one of them takes the refresh lease.
pub const XFETCH_SPAN: f64 = 3.0;

/// A plugin's near-cache settings (`near-cache`, `near-cache-max-bytes`,
/// `near-cache-max-age`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NearConfig {
    pub enabled: bool,
    pub max_bytes: u64,
    pub max_age: Duration,
}

impl Default for NearConfig {
    fn default() -> Self {
        NearConfig {
            enabled: true,
            max_bytes: DEFAULT_MAX_BYTES,
            max_age: MAX_AGE,
        }
    }
}

impl NearConfig {
    /// The manifest's settings, defaults filled in and checked against
    /// their bounds; an error names the manifest key (`near-cache-max-bytes`
    /// or `near-cache-max-age`) and the allowed range.
    pub fn resolve(
        enabled: Option<bool>,
        max_bytes: Option<u64>,
        max_age: Option<Duration>,
    ) -> Result<NearConfig, (&'static str, String)> {
        let max_bytes = match max_bytes {
            None => DEFAULT_MAX_BYTES,
            Some(n) if (1..=MAX_BYTES_CEILING).contains(&n) => n,
            Some(n) => {
                return Err((
                    "near-cache-max-bytes",
                    format!(
                        "{n} is out of range: from 1 to {MAX_BYTES_CEILING} bytes (turn the near \
                         cache off with near-cache = false)"
                    ),
                ));
            }
        };
        let max_age = match max_age {
            None => MAX_AGE,
            Some(d) if !d.is_zero() && d <= MAX_AGE_CEILING => d,
            Some(d) => {
                return Err((
                    "near-cache-max-age",
                    format!("{d:?} is out of range: above 0 and at most {MAX_AGE_CEILING:?}"),
                ));
            }
        };
        Ok(NearConfig {
            enabled: enabled.unwrap_or(true),
            max_bytes,
            max_age,
        })
    }
}

pub use crate::stats::NearStats;

/// One plugin's near cache.
pub struct NearCache {
    config: NearConfig,
    /// The plugin's cache key prefixes, tracked in broadcast mode.
    prefixes: Vec<String>,
    shared: Arc<Shared>,
    /// The connection tracking runs on: the host's own (see
    /// `redis::tracking` for why not the plugin's ACL user). Set when the
    /// host loads the plugin; without it nothing is kept.
    tracker: OnceLock<Redis>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    name: String,
}

impl std::fmt::Debug for NearCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NearCache")
            .field("config", &self.config)
            .field("stats", &self.stats())
            .finish()
    }
}

impl Drop for NearCache {
    fn drop(&mut self) {
        if let Some(task) = self.task.get_mut().ok().and_then(Option::take) {
            task.abort();
        }
    }
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    hits: AtomicU64,
    misses: AtomicU64,
    invalidations: AtomicU64,
    evictions: AtomicU64,
    tracking_lost: AtomicU64,
}

struct Entry {
    id: u64,
    value: Option<Arc<[u8]>>,
    /// The lookup's canonical tags: only a lookup with the same tags is
    /// served (as in Redis).
    tags: Vec<String>,
    /// Their Redis keys, indexed in `State::by_tag`.
    tag_keys: Vec<Arc<str>>,
    /// Served until then (fresh end, or the safety-net age).
    until: Instant,
    /// The Redis entry's fresh end and its last fill time, for XFetch.
    fresh_end: Instant,
    delta: Duration,
    referenced: bool,
    bytes: u64,
}

#[derive(Default)]
struct State {
    serving: bool,
    /// Bumped by every flush and every change of `serving`: a pending
    /// lookup from another generation keeps nothing.
    generation: u64,
    entries: HashMap<Arc<str>, Entry>,
    /// Tag key → entry keys stored with it.
    by_tag: HashMap<Arc<str>, HashSet<Arc<str>>>,
    /// CLOCK order: entry keys with the id they had when queued (a
    /// mismatch is a leftover of a dropped entry).
    ring: VecDeque<(Arc<str>, u64)>,
    bytes: u64,
    next_id: u64,
    /// Key → pending lookups registered on it.
    pending: HashMap<Arc<str>, Vec<u64>>,
    /// Pending lookups that saw an invalidation of one of their keys.
    spoiled: HashSet<u64>,
}

impl NearCache {
    /// A near cache for the plugin whose key prefix is `prefix`
    /// (`rl:NAME:`).
    pub fn new(config: NearConfig, prefixes: Vec<String>, name: &str) -> NearCache {
        NearCache {
            config,
            prefixes,
            shared: Arc::default(),
            tracker: OnceLock::new(),
            task: Mutex::new(None),
            name: name.to_owned(),
        }
    }

    pub fn config(&self) -> NearConfig {
        self.config
    }

    /// Gives the connection tracking will run on (once; later calls are
    /// ignored).
    pub fn set_tracker(&self, redis: Redis) {
        let _ = self.tracker.set(redis);
    }

    /// Whether lookups may use the near cache at all.
    pub fn enabled(&self) -> bool {
        self.config.enabled && self.tracker.get().is_some()
    }

    /// Starts tracking (once) if it is not running.
    pub fn ensure_tracking(&self) {
        if !self.enabled() {
            return;
        }
        let mut task = self.task.lock().expect("near cache poisoned");
        if task.is_some() {
            return;
        }
        let Some(redis) = self.tracker.get().cloned() else {
            return;
        };
        let shared = self.shared.clone();
        let sink: crate::redis::tracking::TrackingSink =
            Arc::new(move |event| shared.on_tracking(event));
        let prefixes = self.prefixes.clone();
        let what = format!("near cache of plugin {}", self.name);
        let client_name = format!("redloom-near-cache:{}", self.name);
        *task = Some(tokio::spawn(async move {
            redis.keep_tracking(prefixes, what, client_name, sink).await;
        }));
    }

    /// The value of `entry` for a lookup with canonical `tags` and XFetch
    /// `beta`, if a near entry may answer it; counts a hit or a miss.
    pub fn get(&self, entry: &str, tags: &[String], beta: f64) -> Option<Option<Vec<u8>>> {
        let now = Instant::now();
        let mut s = self.shared.state.lock().expect("near cache poisoned");
        let serving = s.serving;
        let mut expired = false;
        let found = match s.entries.get_mut(entry) {
            Some(e) if now >= e.until => {
                expired = true;
                None
            }
            Some(e) if serving && e.tags == tags => {
                let span = e.delta.mul_f64(beta.max(0.0) * XFETCH_SPAN);
                if now + span < e.fresh_end {
                    e.referenced = true;
                    Some(e.value.as_deref().map(<[u8]>::to_vec))
                } else {
                    None
                }
            }
            _ => None,
        };
        if expired {
            // Past its time: drop it now rather than at eviction.
            s.remove(&Arc::from(entry));
        }
        drop(s);
        let counter = if found.is_some() {
            &self.shared.hits
        } else {
            &self.shared.misses
        };
        counter.fetch_add(1, Relaxed);
        found
    }

    /// Registers a lookup about to read `entry` with tag keys `tag_keys`,
    /// so invalidations meanwhile spoil it. `None` while tracking is not up
    /// (nothing may be kept).
    pub fn begin(&self, entry: &str, tag_keys: &[String]) -> Option<Pending> {
        if !self.enabled() {
            return None;
        }
        let mut s = self.shared.state.lock().expect("near cache poisoned");
        if !s.serving {
            return None;
        }
        let id = s.next_id;
        s.next_id += 1;
        let keys: Vec<Arc<str>> = std::iter::once(entry)
            .chain(tag_keys.iter().map(String::as_str))
            .map(Arc::from)
            .collect();
        for k in &keys {
            s.pending.entry(k.clone()).or_default().push(id);
        }
        Some(Pending {
            shared: self.shared.clone(),
            id,
            generation: s.generation,
            keys,
            sent: Instant::now(),
            max_bytes: self.config.max_bytes,
            max_age: self.config.max_age,
        })
    }

    /// This host is writing `keys` (an entry key or a tag key): drops what
    /// depends on them and spoils lookups in flight. Called before the
    /// write is sent and again after Redis acknowledged it.
    pub fn written(&self, keys: &[&str]) {
        if !self.config.enabled {
            return;
        }
        self.shared
            .invalidate(keys.iter().map(|k| (*k).to_owned()).collect());
    }

    pub fn stats(&self) -> NearStats {
        let s = self.shared.state.lock().expect("near cache poisoned");
        NearStats {
            hits: self.shared.hits.load(Relaxed),
            misses: self.shared.misses.load(Relaxed),
            invalidations: self.shared.invalidations.load(Relaxed),
            evictions: self.shared.evictions.load(Relaxed),
            tracking_lost: self.shared.tracking_lost.load(Relaxed),
            bytes: s.bytes,
            entries: s.entries.len() as u64,
            serving: s.serving,
        }
    }
}

/// A lookup in flight that may keep its fresh hit (see [`NearCache::begin`]).
pub struct Pending {
    shared: Arc<Shared>,
    id: u64,
    generation: u64,
    /// The entry key, then the tag keys.
    keys: Vec<Arc<str>>,
    /// Before the lookup was sent: fresh times count from here.
    sent: Instant,
    max_bytes: u64,
    max_age: Duration,
}

impl Pending {
    /// Keeps a fresh hit unless an invalidation or a flush came since
    /// [`NearCache::begin`]. `fresh_left_ms`: the entry's remaining fresh
    /// time when Redis read it; `delta_ms`: its last fill's duration.
    pub fn keep(
        self,
        value: Option<&[u8]>,
        tags: &[String],
        fresh_left_ms: u64,
        delta_ms: u64,
    ) -> bool {
        let fresh_end = self.sent + Duration::from_millis(fresh_left_ms);
        let until = fresh_end.min(self.sent + self.max_age);
        let entry_key = self.keys[0].clone();
        let tag_keys = self.keys[1..].to_vec();
        let bytes = ENTRY_OVERHEAD
            + entry_key.len() as u64
            + value.map_or(0, |v| v.len() as u64)
            + tags
                .iter()
                .zip(&tag_keys)
                .map(|(t, k)| ENTRY_OVERHEAD + (t.len() + k.len()) as u64)
                .sum::<u64>();
        let mut s = self.shared.state.lock().expect("near cache poisoned");
        if !s.serving
            || s.generation != self.generation
            || s.spoiled.contains(&self.id)
            || bytes > self.max_bytes
            || Instant::now() >= until
        {
            return false;
        }
        s.remove(&entry_key);
        let id = s.next_id;
        s.next_id += 1;
        for k in &tag_keys {
            s.by_tag
                .entry(k.clone())
                .or_default()
                .insert(entry_key.clone());
        }
        s.entries.insert(
            entry_key.clone(),
            Entry {
                id,
                value: value.map(Arc::from),
                tags: tags.to_vec(),
                tag_keys,
                until,
                fresh_end,
                delta: Duration::from_millis(delta_ms),
                referenced: false,
                bytes,
            },
        );
        s.ring.push_back((entry_key, id));
        s.bytes += bytes;
        let evicted = s.evict_to(self.max_bytes);
        drop(s);
        self.shared.evictions.fetch_add(evicted, Relaxed);
        true
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        let mut s = self.shared.state.lock().expect("near cache poisoned");
        for k in &self.keys {
            if let Slot::Occupied(mut o) = s.pending.entry(k.clone()) {
                o.get_mut().retain(|id| *id != self.id);
                if o.get().is_empty() {
                    o.remove();
                }
            }
        }
        s.spoiled.remove(&self.id);
    }
}

impl Shared {
    fn on_tracking(&self, event: Tracking) {
        match event {
            Tracking::Keys(keys) => self.invalidate(keys),
            Tracking::All => self.flush(None),
            Tracking::Up => self.flush(Some(true)),
            Tracking::Down => self.flush(Some(false)),
        }
    }

    /// Drops everything and spoils every pending lookup; `serving` changes
    /// to the given value.
    fn flush(&self, serving: Option<bool>) {
        let mut s = self.state.lock().expect("near cache poisoned");
        let dropped = s.entries.len() as u64;
        s.entries.clear();
        s.by_tag.clear();
        s.ring.clear();
        s.bytes = 0;
        s.generation += 1;
        let lost = s.serving && serving == Some(false);
        if let Some(up) = serving {
            s.serving = up;
        }
        drop(s);
        if lost {
            self.tracking_lost.fetch_add(1, Relaxed);
        }
        self.invalidations.fetch_add(dropped, Relaxed);
    }

    /// `keys` were written: drop their entries (an entry key, its lease or
    /// waiter key, or a tag key) and spoil lookups pending on them.
    fn invalidate(&self, keys: Vec<String>) {
        let mut s = self.state.lock().expect("near cache poisoned");
        let mut dropped = 0;
        for key in keys {
            let entry = key
                .strip_suffix(":lease")
                .or_else(|| key.strip_suffix(":waiting"))
                .unwrap_or(&key);
            for k in [key.as_str(), entry] {
                if let Some(ids) = s.pending.get(k) {
                    let ids = ids.clone();
                    s.spoiled.extend(ids);
                }
                if s.entries.contains_key(k) {
                    let k: Arc<str> = Arc::from(k);
                    s.remove(&k);
                    dropped += 1;
                }
                if let Some(tagged) = s.by_tag.remove(k) {
                    for e in tagged {
                        if s.remove(&e) {
                            dropped += 1;
                        }
                    }
                }
            }
        }
        drop(s);
        self.invalidations.fetch_add(dropped, Relaxed);
    }
}

impl State {
    /// Removes entry `key` (and its tag index entries); whether it was there.
    fn remove(&mut self, key: &Arc<str>) -> bool {
        let Some(e) = self.entries.remove(key) else {
            return false;
        };
        self.bytes -= e.bytes;
        for t in &e.tag_keys {
            if let Slot::Occupied(mut o) = self.by_tag.entry(t.clone()) {
                o.get_mut().remove(key);
                if o.get().is_empty() {
                    o.remove();
                }
            }
        }
        self.compact_ring();
        true
    }

    /// Drops leftovers from the ring once they outnumber live entries, so
    /// the ring stays within a constant factor of the entries.
    fn compact_ring(&mut self) {
        if self.ring.len() > 2 * self.entries.len() + 64 {
            let entries = &self.entries;
            self.ring
                .retain(|(k, id)| entries.get(k).is_some_and(|e| e.id == *id));
        }
    }

    /// Evicts (CLOCK: a recently served entry gets a second chance) until
    /// at most `max` bytes are held; returns how many entries went.
    fn evict_to(&mut self, max: u64) -> u64 {
        let mut evicted = 0;
        while self.bytes > max {
            let Some((key, id)) = self.ring.pop_front() else {
                break;
            };
            let Some(e) = self.entries.get_mut(&key) else {
                continue;
            };
            if e.id != id {
                continue;
            }
            if e.referenced {
                e.referenced = false;
                self.ring.push_back((key, id));
                continue;
            }
            self.remove(&key);
            evicted += 1;
        }
        evicted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serving(max_bytes: u64) -> NearCache {
        let near = NearCache::new(
            NearConfig {
                enabled: true,
                max_bytes,
                max_age: MAX_AGE,
            },
            vec!["rl:p:cache:".into()],
            "p",
        );
        near.shared.on_tracking(Tracking::Up);
        near
    }

    /// `begin` without a tracker connection: force one for unit tests.
    fn begin(near: &NearCache, entry: &str, tags: &[String]) -> Pending {
        begin_at(near, entry, tags, Instant::now())
    }

    /// [`begin`] for a lookup sent at `sent`.
    fn begin_at(near: &NearCache, entry: &str, tags: &[String], sent: Instant) -> Pending {
        let mut s = near.shared.state.lock().unwrap();
        let id = s.next_id;
        s.next_id += 1;
        let keys: Vec<Arc<str>> = std::iter::once(entry)
            .chain(tags.iter().map(String::as_str))
            .map(Arc::from)
            .collect();
        for k in &keys {
            s.pending.entry(k.clone()).or_default().push(id);
        }
        Pending {
            shared: near.shared.clone(),
            id,
            generation: s.generation,
            keys,
            sent,
            max_bytes: near.config.max_bytes,
            max_age: near.config.max_age,
        }
    }

    /// A kept hit is served; an invalidation of its key, of its lease or
    /// of its tag drops it; tags must match.
    #[tokio::test]
    async fn invalidations_drop_entries() {
        let near = serving(1 << 20);
        let tags = vec!["t".to_string()];
        let tag_keys = vec!["rl:p:cache-tag:{p/t}".to_string()];
        for drop_key in ["rl:p:cache:{p/a}", "rl:p:cache:{p/a}:lease", &tag_keys[0]] {
            assert!(begin(&near, "rl:p:cache:{p/a}", &tag_keys).keep(Some(b"v"), &tags, 60_000, 0));
            assert_eq!(
                near.get("rl:p:cache:{p/a}", &tags, 0.0),
                Some(Some(b"v".to_vec()))
            );
            assert_eq!(near.get("rl:p:cache:{p/a}", &[], 0.0), None, "other tags");
            near.shared
                .on_tracking(Tracking::Keys(vec![drop_key.into()]));
            assert_eq!(near.get("rl:p:cache:{p/a}", &tags, 0.0), None, "{drop_key}");
            assert_eq!(near.stats().bytes, 0);
        }
    }

    /// An invalidation (or a flush, or a loss of tracking) between the
    /// start of a lookup and its reply keeps the reply out.
    #[tokio::test]
    async fn invalidation_during_a_lookup_spoils_it() {
        let near = serving(1 << 20);
        let p = begin(&near, "rl:p:cache:{p/a}", &[]);
        near.shared
            .on_tracking(Tracking::Keys(vec!["rl:p:cache:{p/a}".into()]));
        assert!(!p.keep(Some(b"old"), &[], 60_000, 0));
        let p = begin(&near, "rl:p:cache:{p/a}", &[]);
        near.shared.on_tracking(Tracking::Down);
        near.shared.on_tracking(Tracking::Up);
        assert!(!p.keep(Some(b"old"), &[], 60_000, 0));
        let p = begin(&near, "rl:p:cache:{p/a}", &[]);
        near.shared
            .on_tracking(Tracking::Keys(vec!["rl:p:cache:{p/b}".into()]));
        assert!(p.keep(Some(b"new"), &[], 60_000, 0), "another key");
        near.shared.on_tracking(Tracking::Down);
        assert_eq!(near.get("rl:p:cache:{p/a}", &[], 0.0), None, "not serving");
        assert_eq!(near.stats().entries, 0);
    }

    /// Entries expire with their fresh time (counted from before the
    /// lookup was sent), early under XFetch, and at [`MAX_AGE`].
    #[tokio::test]
    async fn fresh_time_and_xfetch_horizon() {
        let near = serving(1 << 20);
        let ago = |ms: u64| Instant::now() - Duration::from_millis(ms);
        // Fresh for 1 s from 10 s ago: too late to keep.
        assert!(!begin_at(&near, "k", &[], ago(10_000)).keep(Some(b"v"), &[], 1_000, 0));
        // Fresh for 60 s, last fill took 10 s: with beta 1 the XFetch span
        // (30 s) starts in 30 s; with beta 3 (90 s) it has started.
        assert!(begin(&near, "k", &[]).keep(Some(b"v"), &[], 60_000, 10_000));
        assert!(near.get("k", &[], 0.0).is_some());
        assert!(near.get("k", &[], 1.0).is_some(), "before the XFetch span");
        assert!(near.get("k", &[], 3.0).is_none(), "inside the XFetch span");
        // Fresh for an hour, read almost MAX_AGE ago: served only until
        // MAX_AGE has passed.
        let old = Instant::now() - MAX_AGE + Duration::from_millis(300);
        assert!(begin_at(&near, "k", &[], old).keep(Some(b"v"), &[], 3_600_000, 0));
        assert!(near.get("k", &[], 0.0).is_some());
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(near.get("k", &[], 0.0).is_none(), "past the maximum age");
        assert_eq!(near.stats().entries, 0, "dropped when found expired");
    }

    /// A million distinct keys never take more than the bound.
    #[tokio::test]
    async fn memory_bound_holds_for_a_million_keys() {
        let max = 1 << 20;
        let near = serving(max);
        let tags = vec!["t".to_string()];
        let tag_keys = vec!["rl:p:cache-tag:{p/t}".to_string()];
        for i in 0..1_000_000u32 {
            let key = format!("rl:p:cache:{{p/k{i}}}");
            begin(&near, &key, &tag_keys).keep(Some(&[b'v'; 100]), &tags, 60_000, 0);
            if i % 1000 == 0 {
                // Some keys are hot: CLOCK keeps them longer.
                near.get(&key, &tags, 0.0);
            }
            assert!(near.stats().bytes <= max);
        }
        let s = near.stats();
        assert!(s.entries > 1000, "{s:?}");
        assert!(s.evictions > 900_000, "{s:?}");
        let st = near.shared.state.lock().unwrap();
        assert!(st.ring.len() <= 2 * st.entries.len() + 64 + 1);
        assert_eq!(
            st.by_tag.values().map(HashSet::len).sum::<usize>(),
            st.entries.len()
        );
        assert!(st.pending.is_empty() && st.spoiled.is_empty());
    }
}
