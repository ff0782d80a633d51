//! `redloom:plugin/lock`: fenced, renewable, blocking locks in Redis, in the
//! plugin's namespace.
//!
//! # One acquisition
//!
//! Every acquire gets a fresh owner id (`<host id>-<sequence>`, unique across
//! hosts). Before the first attempt is sent, a release of that owner id is
//! registered on the invocation's [`Cleanup`]: if the invocation ends while
//! the lock is held — or while the acquire script is in flight and its reply
//! may be lost — the host deletes the lock (compare-and-delete on the owner
//! id, so a lock someone else holds is never touched) as soon as the
//! invocation ends, not when its time to live runs out. Releasing or dropping
//! the handle sends the same compare-and-delete and cancels the registration.
//!
//! The lock itself is `lua/lock_acquire.lua`: `EXISTS` on the lock, else
//! `INCR` of the fencing counter and `HSET owner token` + `PEXPIRE`, in one
//! script, so the token order is the acquisition order on that primary.
//!
//! # Waiting
//!
//! A waiting acquire retries after a jittered exponential backoff (2 ms
//! doubling to [`MAX_BACKOFF`], each pause drawn from its upper half), never
//! longer than the holder's remaining time to live (which the failed attempt
//! returns) or the waiter's own deadline, where it makes a last attempt. A
//! release made through this process wakes one waiter for that lock at once
//! through a per-lock [`Notify`] (keyed by Redis URL and lock key, so two
//! `Host`s on one Redis share it); releases by other processes and expiry are
//! noticed at the next backoff step. No pub/sub connection is needed, which
//! keeps locks working with ACL users that have no channel permissions.
//!
//! # Guardrails
//!
//! Times to live are 1 ms to [`MAX_TTL_MS`]; an instance holds at most
//! [`MAX_HANDLES`] lock handles; auto-renew needs a time to live of at least
//! [`MIN_AUTO_RENEW_TTL_MS`]. Every command the guest causes goes through
//! [`Caps::admit`] (quotas, counters), except releases: a release only ever
//! follows an admitted acquire and frees what the plugin holds, so it is
//! counted but never refused or delayed by a quota. Renewals run in a host
//! task and count in the plugin's statistics, not against its quotas.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, Weak};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use wasmtime::component::{Resource, ResourceTable};

use super::common::{Backoff, R, invalid, unique_id};
use super::{Caps, Cleanup, PluginContext};
use crate::bindings::lock::{HolderInfo, Host, HostLock, Ownership};
use crate::bindings::types::Error;
use crate::namespace::LockKeys;
use crate::redis::{AcquireReply, CommandError, CommandResult, Redis};

/// Longest time to live. A lock never outlives the invocation that took it
/// (wall time is at most 5 minutes), so a longer TTL would only delay
/// recovery after a host crash.
pub const MAX_TTL_MS: u64 = 60 * 60 * 1000;

/// Shortest time to live auto-renew accepts: renewing every third of less
/// would send a command every few milliseconds.
pub const MIN_AUTO_RENEW_TTL_MS: u64 = 100;

/// Lock handles one instance may own at once (released ones count until the
/// guest drops them), so a guest cannot grow the host's table without bound.
pub const MAX_HANDLES: usize = 64;

/// The first pause between attempts while waiting.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(2);

/// The longest pause between attempts while waiting: how late a waiter may
/// notice a release made by another process.
pub const MAX_BACKOFF: Duration = Duration::from_millis(100);

/// Waits are cut to this, which keeps deadline arithmetic finite; the
/// invocation's wall time ends any wait long before.
const MAX_WAIT: Duration = Duration::from_secs(60 * 60);

/// The lock handles of one instance: the host side of the guest's `lock`
/// resources.
pub struct Locks {
    table: ResourceTable,
}

impl Default for Locks {
    fn default() -> Self {
        let mut table = ResourceTable::new();
        table.set_max_capacity(MAX_HANDLES);
        Locks { table }
    }
}

impl Locks {
    /// No `lock` handle is alive in the instance.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }
}

/// The host side of one guest `lock` handle.
pub struct LockHandle {
    name: String,
    token: u64,
    lease: Arc<Lease>,
    /// The invocation's cleanup registry, and this lease's entry in it.
    cleanup: Arc<Cleanup>,
    cleanup_id: u64,
}

/// One acquisition, shared by its handle, its cleanup action and its
/// renewal task.
struct Lease {
    name: String,
    keys: LockKeys,
    owner: String,
    /// Key of the lock's waiters in [`WAITERS`].
    wake: String,
    /// The latest time to live given (acquire or extend), for renewals.
    ttl_ms: AtomicU64,
    state: Mutex<LeaseState>,
}

#[derive(Default)]
struct LeaseState {
    /// The guest released or dropped the handle, or the invocation ended.
    released: bool,
    renewal: Option<JoinHandle<()>>,
}

impl Lease {
    fn state(&self) -> std::sync::MutexGuard<'_, LeaseState> {
        self.state.lock().expect("lease state poisoned")
    }

    fn is_released(&self) -> bool {
        self.state().released
    }

    fn mark_released(&self) {
        self.state().released = true;
    }

    fn stop_renewal(&self) {
        if let Some(task) = self.state().renewal.take() {
            task.abort();
        }
    }

    /// Compare-and-delete in Redis; on success wakes one waiter of this
    /// process.
    async fn release(&self, redis: &Redis) -> CommandResult<bool> {
        let released = redis.lock_release(&self.keys, &self.owner).await?;
        if released {
            wake(&self.wake);
        }
        Ok(released)
    }
}

/// The cleanup action of `lease`: stop renewing and release in Redis.
fn release_at_end(lease: Arc<Lease>) -> crate::caps::CleanupAction {
    Box::new(move |redis: Redis| {
        Box::pin(async move {
            lease.stop_renewal();
            lease.mark_released();
            match lease.release(&redis).await {
                Ok(true) => tracing::debug!(
                    lock = %lease.name,
                    "released a lock the invocation still held when it ended"
                ),
                Ok(false) => {}
                Err(e) => tracing::warn!(
                    lock = %lease.name,
                    "cannot release a lock at the end of the invocation (it expires with its TTL): {e}"
                ),
            }
        })
    })
}

/// Starts renewing `lease` every third of its time to live until the task
/// is aborted, the lease is gone, or a renewal finds the lock lost.
fn start_renewal(lease: &Arc<Lease>, redis: Redis, plugin: Arc<PluginContext>) {
    let weak: Weak<Lease> = Arc::downgrade(lease);
    let task = tokio::spawn(async move {
        loop {
            let Some(ttl_ms) = weak.upgrade().map(|l| l.ttl_ms.load(Ordering::Relaxed)) else {
                return;
            };
            tokio::time::sleep(Duration::from_millis(ttl_ms / 3)).await;
            let Some(lease) = weak.upgrade() else { return };
            let ttl_ms = lease.ttl_ms.load(Ordering::Relaxed);
            plugin.stats.redis_command();
            match redis.lock_extend(&lease.keys, &lease.owner, ttl_ms).await {
                Ok(true) => {}
                Ok(false) => {
                    tracing::warn!(
                        plugin = %plugin.name,
                        lock = %lease.name,
                        "auto-renew found the lock lost; renewal stopped"
                    );
                    return;
                }
                Err(e) => tracing::warn!(
                    plugin = %plugin.name,
                    lock = %lease.name,
                    "auto-renew failed; retrying in a third of the TTL: {e}"
                ),
            }
        }
    });
    if let Some(old) = lease.state().renewal.replace(task) {
        old.abort();
    }
}

// ---- waiting --------------------------------------------------------------

/// The waiters of one lock in this process.
struct WaitList {
    notify: Arc<Notify>,
    waiters: usize,
}

/// Per lock, keyed by Redis URL + lock key: who waits for it here.
static WAITERS: LazyLock<Mutex<HashMap<String, WaitList>>> = LazyLock::new(Mutex::default);

/// One waiting acquire's registration in [`WAITERS`]; removes the entry when
/// the last waiter of that lock leaves (also when its invocation is
/// cancelled).
struct Waiter {
    key: String,
    notify: Arc<Notify>,
}

impl Waiter {
    fn new(key: &str) -> Waiter {
        let mut map = WAITERS.lock().expect("waiters poisoned");
        let list = map.entry(key.to_owned()).or_insert_with(|| WaitList {
            notify: Arc::new(Notify::new()),
            waiters: 0,
        });
        list.waiters += 1;
        Waiter {
            key: key.to_owned(),
            notify: list.notify.clone(),
        }
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        let mut map = WAITERS.lock().expect("waiters poisoned");
        if let Some(list) = map.get_mut(&self.key) {
            list.waiters -= 1;
            if list.waiters == 0 {
                map.remove(&self.key);
            }
        }
    }
}

/// Wakes one waiter of the lock `key`, if any waits in this process. A woken
/// waiter that loses the race goes back to waiting; one that was cancelled
/// passes the wake-up on (tokio's `notify_one` semantics).
fn wake(key: &str) {
    if let Some(list) = WAITERS.lock().expect("waiters poisoned").get(key) {
        list.notify.notify_one();
    }
}

// ---- the capability -------------------------------------------------------

fn check_ttl(ttl_ms: u64) -> Result<u64, Error> {
    if ttl_ms == 0 || ttl_ms > MAX_TTL_MS {
        return Err(invalid(format!(
            "ttl-ms must be from 1 to {MAX_TTL_MS} (one hour), not {ttl_ms}"
        )));
    }
    Ok(ttl_ms)
}

fn ownership(owned: bool) -> Ownership {
    if owned {
        Ownership::Owner
    } else {
        Ownership::NotOwner
    }
}

fn released_error(name: &str) -> Error {
    invalid(format!("lock `{name}` was already released"))
}

/// How long an acquire may wait: `None` tries once and reports a held lock
/// as `None`; `Some(d)` waits up to `d` and reports it as `timeout`.
type Wait = Option<Duration>;

impl Caps {
    fn lock_keys(&self, name: &str) -> Result<LockKeys, Error> {
        self.plugin
            .namespace
            .lock(name)
            .map_err(|e| invalid(format!("lock name: {e}")))
    }

    /// Whether `owner` is an acquisition this instance still holds.
    fn holds(&mut self, owner: &str) -> bool {
        self.locks.table.iter_mut().any(|entry| {
            entry
                .downcast_ref::<LockHandle>()
                .is_some_and(|h| h.lease.owner == owner && !h.lease.is_released())
        })
    }

    fn lock_handle(&self, handle: &Resource<LockHandle>) -> wasmtime::Result<&LockHandle> {
        Ok(self.locks.table.get(handle)?)
    }

    /// [`Caps::lock_acquire`], counted in the plugin's lock counters:
    /// taken, or busy (not taken: held elsewhere, or the wait ran out).
    async fn counted_acquire(
        &mut self,
        name: String,
        ttl_ms: u64,
        wait: Wait,
    ) -> Result<Option<Resource<LockHandle>>, Error> {
        let started = std::time::Instant::now();
        let result = self.lock_acquire(name, ttl_ms, wait).await;
        let acquired = match &result {
            Ok(Some(_)) => Some(true),
            Ok(None) | Err(Error::Timeout(_)) => Some(false),
            Err(_) => None,
        };
        if let Some(acquired) = acquired {
            self.plugin
                .stats
                .lock_acquisition(acquired, started.elapsed());
        }
        result
    }

    async fn lock_acquire(
        &mut self,
        name: String,
        ttl_ms: u64,
        wait: Wait,
    ) -> Result<Option<Resource<LockHandle>>, Error> {
        let ttl_ms = check_ttl(ttl_ms)?;
        let keys = self.lock_keys(&name)?;
        if self.locks.table.iter_mut().count() >= MAX_HANDLES {
            return Err(invalid(format!(
                "an instance may own at most {MAX_HANDLES} lock handles; drop the ones you are done with"
            )));
        }
        let url = match &self.redis {
            Some(redis) => redis.url().to_owned(),
            None => {
                return Err(Error::BackendUnavailable(
                    "this host runs without Redis".into(),
                ));
            }
        };
        let lease = Arc::new(Lease {
            wake: format!("{url}\n{}", keys.lock),
            name: name.clone(),
            keys,
            owner: unique_id(),
            ttl_ms: AtomicU64::new(ttl_ms),
            state: Mutex::default(),
        });
        // Registered before the first attempt: if the invocation ends while
        // the script is in flight, the lock (if it was taken) is released.
        let cleanup = self.cleanup.clone();
        let cleanup_id = cleanup.register(release_at_end(lease.clone()));
        let outcome = self.attempt_until(&lease, ttl_ms, wait).await;
        let token = match outcome {
            Ok(Some(token)) => token,
            Ok(None) => {
                cleanup.cancel(cleanup_id);
                return Ok(None);
            }
            Err(e) => {
                // After a timeout or a lost connection the script may have
                // run: keep the release registered for the invocation's end.
                if !matches!(e, AttemptError::MaybeSent(_)) {
                    cleanup.cancel(cleanup_id);
                }
                return Err(e.into_error());
            }
        };
        let handle = LockHandle {
            name,
            token,
            lease: lease.clone(),
            cleanup: cleanup.clone(),
            cleanup_id,
        };
        match self.locks.table.push(handle) {
            Ok(resource) => Ok(Some(resource)),
            Err(e) => {
                // Unreachable after the count check above; release at once.
                let _ = self.release_lease(&lease, &cleanup, cleanup_id).await;
                Err(Error::Other(format!("cannot store the lock handle: {e}")))
            }
        }
    }

    /// Attempts to take `lease`'s lock until it is taken or `wait` is over.
    /// `Ok(None)`: held by another owner and `wait` is `None`.
    async fn attempt_until(
        &mut self,
        lease: &Lease,
        ttl_ms: u64,
        wait: Wait,
    ) -> Result<Option<u64>, AttemptError> {
        let started = Instant::now();
        let deadline = wait.map(|w| started + w.min(MAX_WAIT));
        let waiter = wait.map(|_| Waiter::new(&lease.wake));
        let mut backoff = Backoff::new(FIRST_BACKOFF);
        loop {
            // Listen before trying, so a release between a failed attempt
            // and the pause is not missed.
            let mut notified = waiter.as_ref().map(|w| Box::pin(w.notify.notified()));
            if let Some(n) = &mut notified {
                n.as_mut().enable();
            }
            let redis = self.admit().await.map_err(AttemptError::Refused)?;
            let reply = redis
                .lock_acquire(&lease.keys, &lease.owner, ttl_ms)
                .await
                .map_err(|e| match e {
                    CommandError::Rejected(_) => AttemptError::Refused(e.into()),
                    _ => AttemptError::MaybeSent(e),
                })?;
            let (left, holder) = match reply {
                AcquireReply::Acquired { token } => return Ok(Some(token)),
                AcquireReply::Held { ttl_ms, owner } => (ttl_ms, owner),
            };
            if self.holds(&holder) {
                return Err(AttemptError::Refused(invalid(format!(
                    "lock `{}` is already held by this instance; locks are not re-entrant",
                    lease.name
                ))));
            }
            let (Some(deadline), Some(notified)) = (deadline, notified) else {
                return Ok(None);
            };
            let now = Instant::now();
            if now >= deadline {
                return Err(AttemptError::Refused(Error::Timeout(format!(
                    "lock `{}` is still held by another owner after waiting {} ms",
                    lease.name,
                    started.elapsed().as_millis()
                ))));
            }
            let mut pause = backoff.next_pause(MAX_BACKOFF).min(deadline - now);
            if let Some(left) = left {
                // The lock expires then; try again right after.
                pause = pause.min(Duration::from_millis(left + 1));
            }
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// Releases `lease` in Redis (compare-and-delete) and, once Redis has
    /// answered, forgets its cleanup registration. On a failed command the
    /// registration stays, so the invocation's end retries.
    async fn release_lease(
        &mut self,
        lease: &Lease,
        cleanup: &Cleanup,
        cleanup_id: u64,
    ) -> Result<bool, Error> {
        lease.stop_renewal();
        let redis = self.release_connection()?;
        let owned = lease.release(&redis).await?;
        lease.mark_released();
        cleanup.cancel(cleanup_id);
        Ok(owned)
    }

    async fn lock_release(
        &mut self,
        handle: &Resource<LockHandle>,
    ) -> wasmtime::Result<Result<Ownership, Error>> {
        let h = self.lock_handle(handle)?;
        if h.lease.is_released() {
            return Ok(Err(released_error(&h.name)));
        }
        let (lease, cleanup, id) = (h.lease.clone(), h.cleanup.clone(), h.cleanup_id);
        Ok(self
            .release_lease(&lease, &cleanup, id)
            .await
            .map(ownership))
    }

    async fn lock_extend(
        &mut self,
        handle: &Resource<LockHandle>,
        ttl_ms: u64,
    ) -> wasmtime::Result<Result<Ownership, Error>> {
        let h = self.lock_handle(handle)?;
        if h.lease.is_released() {
            return Ok(Err(released_error(&h.name)));
        }
        let lease = h.lease.clone();
        let result = async {
            let ttl_ms = check_ttl(ttl_ms)?;
            let redis = self.admit().await?;
            let owned = redis.lock_extend(&lease.keys, &lease.owner, ttl_ms).await?;
            if owned {
                lease.ttl_ms.store(ttl_ms, Ordering::Relaxed);
            }
            Ok(ownership(owned))
        }
        .await;
        Ok(result)
    }

    fn lock_auto_renew(
        &mut self,
        handle: &Resource<LockHandle>,
        enabled: bool,
    ) -> wasmtime::Result<Result<(), Error>> {
        let h = self.lock_handle(handle)?;
        let lease = h.lease.clone();
        if lease.is_released() {
            return Ok(Err(released_error(&h.name)));
        }
        if !enabled {
            lease.stop_renewal();
            return Ok(Ok(()));
        }
        let ttl_ms = lease.ttl_ms.load(Ordering::Relaxed);
        if ttl_ms < MIN_AUTO_RENEW_TTL_MS {
            return Ok(Err(invalid(format!(
                "auto-renew needs a ttl of at least {MIN_AUTO_RENEW_TTL_MS} ms; lock `{}` has {ttl_ms} ms",
                h.name
            ))));
        }
        let Some(redis) = self.redis.clone() else {
            return Ok(Err(Error::BackendUnavailable(
                "this host runs without Redis".into(),
            )));
        };
        start_renewal(&lease, redis, self.plugin.clone());
        Ok(Ok(()))
    }

    async fn lock_holder(&mut self, name: &str) -> Result<Option<HolderInfo>, Error> {
        let keys = self.lock_keys(name)?;
        let holder = self.admit().await?.lock_holder(&keys).await?;
        Ok(holder.map(|h| HolderInfo {
            fencing_token: h.token,
            ttl_ms: h.ttl_ms,
            owner: h.owner,
        }))
    }

    async fn lock_is_locked(&mut self, name: &str) -> Result<bool, Error> {
        let keys = self.lock_keys(name)?;
        Ok(self.admit().await?.lock_is_held(&keys).await?)
    }
}

/// Why an attempt loop stopped without the lock.
enum AttemptError {
    /// Nothing was taken: a quota, an argument, a script error, a timeout
    /// waiting.
    Refused(Error),
    /// The command failed in a way that leaves open whether the script ran.
    MaybeSent(CommandError),
}

impl AttemptError {
    fn into_error(self) -> Error {
        match self {
            AttemptError::Refused(e) => e,
            AttemptError::MaybeSent(e) => e.into(),
        }
    }
}

/// The `lock` resource as the bindings type it. The instance's table holds
/// a [`LockHandle`] under the same rep; these two convert at the boundary
/// (the bindings are generated without knowing caps' types, so they stay
/// below every other module).
type WitLock = crate::bindings::lock::Lock;

fn ours(handle: &Resource<WitLock>) -> Resource<LockHandle> {
    if handle.owned() {
        Resource::new_own(handle.rep())
    } else {
        Resource::new_borrow(handle.rep())
    }
}

fn to_wit(handle: Resource<LockHandle>) -> Resource<WitLock> {
    Resource::new_own(handle.rep())
}

impl Host for Caps {
    async fn acquire(&mut self, name: String, ttl_ms: u64, wait_ms: u64) -> R<Resource<WitLock>> {
        let wait = Some(Duration::from_millis(wait_ms));
        Ok(
            traced!("lock", "acquire", self.counted_acquire(name, ttl_ms, wait)).and_then(|r| {
                r.map(to_wit)
                    .ok_or_else(|| Error::Other("the lock was neither taken nor timed out".into()))
            }),
        )
    }

    async fn try_acquire(&mut self, name: String, ttl_ms: u64) -> R<Option<Resource<WitLock>>> {
        Ok(traced!(
            "lock",
            "try-acquire",
            self.counted_acquire(name, ttl_ms, None)
        )
        .map(|r| r.map(to_wit)))
    }

    async fn holder(&mut self, name: String) -> R<Option<HolderInfo>> {
        Ok(traced!("lock", "holder", self.lock_holder(&name)))
    }

    async fn is_locked(&mut self, name: String) -> R<bool> {
        Ok(traced!("lock", "is-locked", self.lock_is_locked(&name)))
    }
}

impl HostLock for Caps {
    async fn name(&mut self, handle: Resource<WitLock>) -> wasmtime::Result<String> {
        Ok(self.lock_handle(&ours(&handle))?.name.clone())
    }

    async fn fencing_token(&mut self, handle: Resource<WitLock>) -> wasmtime::Result<u64> {
        Ok(self.lock_handle(&ours(&handle))?.token)
    }

    async fn release(&mut self, handle: Resource<WitLock>) -> R<Ownership> {
        traced!("lock", "release", self.lock_release(&ours(&handle)))
    }

    async fn extend(&mut self, handle: Resource<WitLock>, ttl_ms: u64) -> R<Ownership> {
        traced!("lock", "extend", self.lock_extend(&ours(&handle), ttl_ms))
    }

    async fn auto_renew(&mut self, handle: Resource<WitLock>, enabled: bool) -> R<()> {
        self.lock_auto_renew(&ours(&handle), enabled)
    }

    /// The guest dropped its handle: release the lock if it still holds it.
    /// A failed release is left to the invocation's cleanup; it never traps.
    async fn drop(&mut self, handle: Resource<WitLock>) -> wasmtime::Result<()> {
        let h = self.locks.table.delete(ours(&handle))?;
        if !h.lease.is_released()
            && let Err(e) = self.release_lease(&h.lease, &h.cleanup, h.cleanup_id).await
        {
            tracing::debug!(
                plugin = %self.plugin.name,
                lock = %h.name,
                "releasing a dropped lock failed; retrying when the invocation ends: {}",
                super::describe(&e)
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Backoff pauses grow, stay within their cap's upper half, and jitter.
    #[test]
    fn backoff_is_bounded_and_jittered() {
        let mut b = Backoff::new(FIRST_BACKOFF);
        let pauses: Vec<Duration> = (0..20).map(|_| b.next_pause(MAX_BACKOFF)).collect();
        assert!(pauses[0] >= FIRST_BACKOFF / 2 && pauses[0] <= FIRST_BACKOFF);
        for p in &pauses {
            assert!(*p <= MAX_BACKOFF, "{p:?}");
        }
        for p in &pauses[10..] {
            assert!(*p >= MAX_BACKOFF / 2, "{p:?}");
        }
        let mut sorted = pauses[10..].to_vec();
        sorted.dedup();
        assert!(sorted.len() > 1, "no jitter: {pauses:?}");
    }

    /// A waiter registry entry lives exactly as long as its waiters, and a
    /// wake-up reaches a waiter that listens.
    #[tokio::test]
    async fn waiters_are_woken_and_cleaned_up() {
        let key = format!("test\n{}", unique_id());
        let a = Waiter::new(&key);
        let b = Waiter::new(&key);
        let mut notified = Box::pin(a.notify.notified());
        notified.as_mut().enable();
        wake(&key);
        tokio::time::timeout(Duration::from_secs(5), notified)
            .await
            .expect("woken");
        drop(a);
        assert!(WAITERS.lock().unwrap().contains_key(&key));
        drop(b);
        assert!(!WAITERS.lock().unwrap().contains_key(&key));
        wake(&key); // nobody waits: a no-op
    }
}
