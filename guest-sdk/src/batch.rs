//! Several data-structure commands as one unit.
//!
//! - [`Batch::run`]: atomically (`MULTI`/`EXEC`) — no other client's
//!   command runs between them.
//! - [`Transaction`]: optimistically — watch keys, read them, then commit a
//!   batch that runs only if no watched key changed meanwhile (`None`:
//!   read again and retry).
//!
//! Every key of a batch or transaction must be in one slot group (start
//! them with the same `{group}`; see [`keys`](crate::keys)). As in Redis, a
//! command that fails inside a batch (a wrong type) fails alone: each has
//! its own result.
//!
//! ```no_run
//! use redloom_sdk::batch::{Batch, Transaction};
//!
//! # fn main() -> redloom_sdk::Result<()> {
//! // A capped activity feed: push and trim in one step.
//! Batch::new()
//!     .list_push_front("{feed}ada", b"liked a post")
//!     .list_trim("{feed}ada", 0, 99)
//!     .run()?;
//!
//! // Move 10 between two balances unless someone else touched them.
//! loop {
//!     let tx = Transaction::watch(&["{acct}a", "{acct}b"])?;
//!     let a: i64 = tx.get_string("{acct}a")?.unwrap_or_default().parse().unwrap_or(0);
//!     if a < 10 {
//!         break;
//!     }
//!     let moved = Batch::new().increment("{acct}a", -10).increment("{acct}b", 10);
//!     if tx.commit(moved)?.is_some() {
//!         break;
//!     }
//! }
//! # Ok(())
//! # }
//! ```

use crate::__private::bindings::redloom::plugin::batch as wit;
use crate::__private::bindings::redloom::plugin::list::End as WitEnd;
use crate::__private::bindings::redloom::plugin::sorted_set::Scored;
use crate::list::End;
use crate::{Error, Result};

/// What one command of a batch answered.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// Success without a value.
    Done,
    Integer(i64),
    /// A score (`None`: no such member).
    Number(Option<f64>),
    /// A value (`None`: no such key or field).
    Value(Option<Vec<u8>>),
    Values(Vec<Vec<u8>>),
}

impl Reply {
    fn from_wit(r: wit::Reply) -> Reply {
        match r {
            wit::Reply::Done => Reply::Done,
            wit::Reply::Integer(n) => Reply::Integer(n),
            wit::Reply::Number(n) => Reply::Number(n),
            wit::Reply::Value(v) => Reply::Value(v),
            wit::Reply::Values(v) => Reply::Values(v),
        }
    }
}

fn results(
    r: Vec<
        std::result::Result<wit::Reply, crate::__private::bindings::redloom::plugin::types::Error>,
    >,
) -> Vec<Result<Reply>> {
    r.into_iter()
        .map(|r| r.map(Reply::from_wit).map_err(Error::from_wit))
        .collect()
}

fn end(e: End) -> WitEnd {
    match e {
        End::Front => WitEnd::Front,
        End::Back => WitEnd::Back,
    }
}

/// A list of commands, built by chaining, then [`run`](Batch::run) (or
/// committed by a [`Transaction`]).
#[derive(Debug, Clone, Default)]
pub struct Batch {
    commands: Vec<wit::Command>,
}

impl Batch {
    pub fn new() -> Batch {
        Batch::default()
    }

    /// How many commands it holds.
    pub fn len(&self) -> usize {
        self.commands.len()
    }

    pub fn is_empty(&self) -> bool {
        self.commands.is_empty()
    }

    fn with(mut self, c: wit::Command) -> Batch {
        self.commands.push(c);
        self
    }

    /// `kv::get`: [`Reply::Value`].
    pub fn get(self, key: &str) -> Batch {
        self.with(wit::Command::Get(key.into()))
    }
    /// `kv::set`: [`Reply::Done`].
    pub fn set(self, key: &str, value: impl AsRef<[u8]>) -> Batch {
        self.with(wit::Command::Set((key.into(), value.as_ref().to_vec())))
    }
    /// Delete a key of any type: [`Reply::Integer`].
    pub fn delete(self, key: &str) -> Batch {
        self.with(wit::Command::Delete(key.into()))
    }
    /// `kv::increment`: [`Reply::Integer`].
    pub fn increment(self, key: &str, delta: i64) -> Batch {
        self.with(wit::Command::Increment((key.into(), delta)))
    }
    /// `keys::expire`: [`Reply::Integer`].
    pub fn expire(self, key: &str, ttl: std::time::Duration) -> Batch {
        self.with(wit::Command::Expire((key.into(), crate::millis(ttl))))
    }
    /// `hash::get`: [`Reply::Value`].
    pub fn hash_get(self, key: &str, field: &str) -> Batch {
        self.with(wit::Command::HashGet((key.into(), field.into())))
    }
    /// `hash::set`: [`Reply::Integer`].
    pub fn hash_set(self, key: &str, field: &str, value: impl AsRef<[u8]>) -> Batch {
        let entries = vec![(field.to_owned(), value.as_ref().to_vec())];
        self.with(wit::Command::HashSet((key.into(), entries)))
    }
    /// `hash::delete`: [`Reply::Integer`].
    pub fn hash_delete(self, key: &str, field: &str) -> Batch {
        self.with(wit::Command::HashDelete((key.into(), vec![field.into()])))
    }
    /// `hash::increment`: [`Reply::Integer`].
    pub fn hash_increment(self, key: &str, field: &str, delta: i64) -> Batch {
        self.with(wit::Command::HashIncrement((
            key.into(),
            field.into(),
            delta,
        )))
    }
    /// `set::add`: [`Reply::Integer`].
    pub fn set_add(self, key: &str, member: &str) -> Batch {
        self.with(wit::Command::SetAdd((key.into(), vec![member.into()])))
    }
    /// `set::remove`: [`Reply::Integer`].
    pub fn set_remove(self, key: &str, member: &str) -> Batch {
        self.with(wit::Command::SetRemove((key.into(), vec![member.into()])))
    }
    /// `set::contains`: [`Reply::Integer`] (1 or 0).
    pub fn set_contains(self, key: &str, member: &str) -> Batch {
        self.with(wit::Command::SetContains((key.into(), member.into())))
    }
    /// `sorted_set::add`: [`Reply::Integer`].
    pub fn sorted_set_add(self, key: &str, member: &str, score: f64) -> Batch {
        let m = Scored {
            member: member.into(),
            score,
        };
        self.with(wit::Command::SortedSetAdd((key.into(), vec![m])))
    }
    /// `sorted_set::increment`: [`Reply::Number`].
    pub fn sorted_set_increment(self, key: &str, member: &str, delta: f64) -> Batch {
        self.with(wit::Command::SortedSetIncrement((
            key.into(),
            member.into(),
            delta,
        )))
    }
    /// `sorted_set::remove`: [`Reply::Integer`].
    pub fn sorted_set_remove(self, key: &str, member: &str) -> Batch {
        self.with(wit::Command::SortedSetRemove((
            key.into(),
            vec![member.into()],
        )))
    }
    /// `sorted_set::score`: [`Reply::Number`].
    pub fn sorted_set_score(self, key: &str, member: &str) -> Batch {
        self.with(wit::Command::SortedSetScore((key.into(), member.into())))
    }
    /// `list::push` of one value: [`Reply::Integer`] (the new length).
    pub fn list_push(self, key: &str, at: End, value: impl AsRef<[u8]>) -> Batch {
        self.with(wit::Command::ListPush((
            key.into(),
            end(at),
            vec![value.as_ref().to_vec()],
        )))
    }
    /// [`Batch::list_push`] at the front.
    pub fn list_push_front(self, key: &str, value: impl AsRef<[u8]>) -> Batch {
        self.list_push(key, End::Front, value)
    }
    /// [`Batch::list_push`] at the back.
    pub fn list_push_back(self, key: &str, value: impl AsRef<[u8]>) -> Batch {
        self.list_push(key, End::Back, value)
    }
    /// `list::pop`: [`Reply::Values`].
    pub fn list_pop(self, key: &str, at: End, count: u32) -> Batch {
        self.with(wit::Command::ListPop((key.into(), end(at), count)))
    }
    /// `list::trim`: [`Reply::Done`].
    pub fn list_trim(self, key: &str, start: i64, stop: i64) -> Batch {
        self.with(wit::Command::ListTrim((key.into(), start, stop)))
    }
    /// `list::range`: [`Reply::Values`].
    pub fn list_range(self, key: &str, start: i64, stop: i64) -> Batch {
        self.with(wit::Command::ListRange((key.into(), start, stop)))
    }
    /// `list::length`: [`Reply::Integer`].
    pub fn list_length(self, key: &str) -> Batch {
        self.with(wit::Command::ListLength(key.into()))
    }
    /// `hyperloglog::add` of one element: [`Reply::Integer`].
    pub fn hyperloglog_add(self, key: &str, element: &str) -> Batch {
        self.with(wit::Command::HyperloglogAdd((
            key.into(),
            vec![element.into()],
        )))
    }

    /// Runs the commands atomically; each has its own result, in order.
    pub fn run(self) -> Result<Vec<Result<Reply>>> {
        wit::run(&self.commands)
            .map(results)
            .map_err(Error::from_wit)
    }
}

/// An optimistic transaction (see the [module](self) docs). It holds a
/// Redis connection of its own until it commits or is dropped; a plugin
/// may hold 4 at once.
#[derive(Debug)]
pub struct Transaction {
    inner: wit::Transaction,
}

impl Transaction {
    /// Starts watching `keys` (one slot group).
    pub fn watch<K: AsRef<str>>(keys: &[K]) -> Result<Transaction> {
        let keys = crate::strings(keys);
        wit::Transaction::watch(&keys)
            .map(|inner| Transaction { inner })
            .map_err(Error::from_wit)
    }

    fn read(&self, c: wit::Command) -> Result<Reply> {
        self.inner
            .read(&c)
            .map(Reply::from_wit)
            .map_err(Error::from_wit)
    }

    /// The value of a `kv` key, as the transaction sees it.
    pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        match self.read(wit::Command::Get(key.into()))? {
            Reply::Value(v) => Ok(v),
            other => Err(Error::other(format!("unexpected reply {other:?}"))),
        }
    }

    /// [`Transaction::get`] as UTF-8 text.
    pub fn get_string(&self, key: &str) -> Result<Option<String>> {
        self.get(key)?
            .map(|b| {
                String::from_utf8(b)
                    .map_err(|e| Error::invalid(format!("`{key}` is not UTF-8: {e}")))
            })
            .transpose()
    }

    /// A hash field, as the transaction sees it.
    pub fn hash_get(&self, key: &str, field: &str) -> Result<Option<Vec<u8>>> {
        match self.read(wit::Command::HashGet((key.into(), field.into())))? {
            Reply::Value(v) => Ok(v),
            other => Err(Error::other(format!("unexpected reply {other:?}"))),
        }
    }

    /// A sorted-set member's score, as the transaction sees it.
    pub fn score(&self, key: &str, member: &str) -> Result<Option<f64>> {
        match self.read(wit::Command::SortedSetScore((key.into(), member.into())))? {
            Reply::Number(n) => Ok(n),
            other => Err(Error::other(format!("unexpected reply {other:?}"))),
        }
    }

    /// A list's values from `start` to `stop`, as the transaction sees them.
    pub fn list_range(&self, key: &str, start: i64, stop: i64) -> Result<Vec<Vec<u8>>> {
        match self.read(wit::Command::ListRange((key.into(), start, stop)))? {
            Reply::Values(v) => Ok(v),
            other => Err(Error::other(format!("unexpected reply {other:?}"))),
        }
    }

    /// Runs `batch` atomically unless a watched key changed: `None` then
    /// (nothing ran), each command's result otherwise. Ends the transaction.
    pub fn commit(self, batch: Batch) -> Result<Option<Vec<Result<Reply>>>> {
        self.inner
            .commit(&batch.commands)
            .map(|r| r.map(results))
            .map_err(Error::from_wit)
    }
}
