//! reserve-inventory: reserves stock of a product under a distributed lock,
//! and fences every write with the lock's token.
//!
//! Input (JSON): `{"sku": "A1", "reserve": 2, "order": "o-17"}` takes 2 units
//! for order `o-17` if that many are available; `{"sku": "A1", "restock": 10}`
//! adds 10 units. Reply: `{"sku": "A1", "reserved": true, "available": 8,
//! "fencing_token": 42}` (`reserved` is absent for a restock).
//!
//! The stock record lives in `kv` under `stock:<sku>` as JSON
//! `{"available": 8, "fence": 42, "last_order": "o-17"}`, where `fence` is the
//! fencing token of the lock holder that wrote it last.
//!
//! # Why the lock is not enough
//!
//! The lock `sku:<sku>` makes the read-modify-write of one SKU run one at a
//! time across every host — until a holder stalls past the lock's time to
//! live (a long GC-like pause, a slow network) and a second holder takes the
//! lock while the first still believes it holds it. So the record itself
//! checks the token: [`fenced_write`] refuses to write when the record carries
//! a token newer than ours, and writes through `kv::compare_and_swap`, so the
//! check and the write are one atomic step in Redis. A stale holder's write
//! then fails with a clear error instead of overwriting a newer reservation.

use std::time::Duration;

use redloom_sdk::lock::{self, Ownership};
use redloom_sdk::{Error, Invoke, Result, config, kv, log};
use serde::{Deserialize, Serialize};

/// Settings: how long the lock lives, and how long to wait for it.
const LOCK_TTL_SETTING: &str = "lock-ttl-ms";
const LOCK_WAIT_SETTING: &str = "lock-wait-ms";
const DEFAULT_LOCK_TTL_MS: u64 = 5_000;
const DEFAULT_LOCK_WAIT_MS: u64 = 2_000;
/// SKUs are part of keys and lock names; this keeps both well under the
/// host's 1024-byte limit.
const MAX_SKU_BYTES: usize = 128;

struct ReserveInventory;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Request {
    sku: String,
    #[serde(default)]
    reserve: Option<u32>,
    #[serde(default)]
    order: Option<String>,
    #[serde(default)]
    restock: Option<u32>,
}

/// The stock of one SKU, as stored.
#[derive(Serialize, Deserialize, Default)]
struct Stock {
    available: i64,
    /// Fencing token of the last writer.
    fence: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_order: Option<String>,
}

#[derive(Serialize)]
struct Reply<'a> {
    sku: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    reserved: Option<bool>,
    available: i64,
    fencing_token: u64,
}

impl Invoke for ReserveInventory {
    fn invoke(input: Vec<u8>) -> Result<Vec<u8>> {
        let req: Request = serde_json::from_slice(&input)?;
        if req.sku.is_empty() || req.sku.len() > MAX_SKU_BYTES {
            return Err(Error::invalid(format!(
                "sku must be 1 to {MAX_SKU_BYTES} bytes"
            )));
        }
        let ttl = Duration::from_millis(config::get_parsed_or(
            LOCK_TTL_SETTING,
            DEFAULT_LOCK_TTL_MS,
        )?);
        let wait = Duration::from_millis(config::get_parsed_or(
            LOCK_WAIT_SETTING,
            DEFAULT_LOCK_WAIT_MS,
        )?);

        let guard = lock::acquire(&format!("sku:{}", req.sku), ttl, wait)?;
        let token = guard.fencing_token();
        let key = format!("stock:{}", req.sku);
        let current = kv::get(&key)?;
        let mut stock: Stock = match &current {
            Some(bytes) => serde_json::from_slice(bytes)?,
            None => Stock::default(),
        };
        let seen = stock.fence;

        let reserved = match (req.reserve, req.restock) {
            (Some(n), None) => {
                let order = req
                    .order
                    .ok_or_else(|| Error::invalid("a reservation needs an `order`"))?;
                let ok = stock.available >= i64::from(n);
                if ok {
                    stock.available -= i64::from(n);
                    stock.last_order = Some(order);
                }
                Some(ok)
            }
            (None, Some(n)) => {
                stock.available += i64::from(n);
                None
            }
            _ => {
                return Err(Error::invalid(
                    "give exactly one of `reserve` (with `order`) and `restock`",
                ));
            }
        };
        if reserved != Some(false) {
            stock.fence = token;
            fenced_write(&key, current.as_deref(), seen, token, &stock)?;
        }

        if guard.release()? == Ownership::NotOwner {
            // The write above was fenced, so it was still correct; the lock
            // just expired before we were done. Worth knowing about.
            log::warn!(
                "lock for {} expired before release (token {token}); consider a longer {LOCK_TTL_SETTING}",
                req.sku
            );
        }
        let reply = Reply {
            sku: &req.sku,
            reserved,
            available: stock.available,
            fencing_token: token,
        };
        Ok(serde_json::to_vec(&reply)?)
    }
}

/// Writes `stock` at `key` only if no newer lock holder has written it.
///
/// `read` is the record as read under the lock and `seen` the token it
/// carried. A token newer than ours means a later holder already wrote: we
/// are a stale holder and must not write. Compare-and-swap against `read`
/// makes that check and the write one atomic step: if anyone wrote in
/// between, nothing is written.
fn fenced_write(
    key: &str,
    read: Option<&[u8]>,
    seen: u64,
    token: u64,
    stock: &Stock,
) -> Result<()> {
    if seen > token {
        return Err(Error::other(format!(
            "stale lock holder: `{key}` was written with fencing token {seen}, ours is {token}"
        )));
    }
    let bytes = serde_json::to_vec(stock)?;
    if !kv::compare_and_swap(key, read, bytes, None)? {
        return Err(Error::other(format!(
            "stale lock holder: `{key}` changed while we held the lock (token {token}); not overwriting"
        )));
    }
    Ok(())
}

redloom_sdk::export!(ReserveInventory => [invoke]);
