//! `redloom:plugin/batch`: several data-structure commands as one unit —
//! atomic (`MULTI`/`EXEC` on the shared connection) or optimistic (a
//! `transaction` resource: `WATCH` on a connection of its own, reads, then
//! `MULTI`/`EXEC` that Redis runs only if no watched key changed).
//!
//! Every key of a batch or transaction is in one slot group (so one
//! Cluster node runs it), each command is charged like its single-command
//! twin, writes are checked against `max-write` and `storage`, and the
//! replies together against `max-reply`.

use redis::{Cmd, Value};
use wasmtime::component::{Resource, ResourceTable};

use super::list::{pop_command, push_command};
use super::{check_count, check_items, command, positive_ttl, slot_group};
use crate::bindings::batch::{Command, Host, HostTransaction, Reply};
use crate::bindings::types::Error;
use crate::caps::Caps;
use crate::caps::common::{R, invalid};
use crate::redis::{CommandError, exec_atomic};

/// Transactions one instance may hold open at once: each holds a Redis
/// connection of its own until it commits, is dropped, or the invocation
/// ends (the instance is then not reused, so the connection closes).
pub const MAX_TRANSACTIONS: usize = 4;

/// What a command's reply is decoded as.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Done,
    Integer,
    Number,
    Value,
    Values,
}

/// A batch command made ready to send: the Redis command, its reply's
/// kind, the guest's key, and the payload bytes it writes (`None`: a read).
struct Prepared {
    cmd: Cmd,
    kind: Kind,
    key: String,
    writes: Option<usize>,
}

impl Caps {
    /// `command` as Redis will run it, with its key mapped into the
    /// plugin's namespace and its items bounded.
    fn prepare(&self, op: Command) -> Result<Prepared, Error> {
        let at = |key: &str| self.data_key(key);
        let items = |what: &str, n: usize| {
            if n == 0 {
                return Err(invalid(format!("a batch command names no {what}")));
            }
            check_items(what, n)
        };
        let (cmd, kind, key, writes) = match op {
            Command::Get(k) => (command("GET", at(&k)?), Kind::Value, k, None),
            Command::Set((k, v)) => {
                let n = v.len();
                (command("SET", (at(&k)?, v)), Kind::Done, k, Some(n))
            }
            Command::Delete(k) => (command("DEL", at(&k)?), Kind::Integer, k, None),
            Command::Increment((k, d)) => (command("INCRBY", (at(&k)?, d)), Kind::Integer, k, None),
            Command::Expire((k, ms)) => {
                let ms = i64::try_from(positive_ttl(ms)?).unwrap_or(i64::MAX);
                (command("PEXPIRE", (at(&k)?, ms)), Kind::Integer, k, None)
            }
            Command::HashGet((k, f)) => (command("HGET", (at(&k)?, f)), Kind::Value, k, None),
            Command::HashSet((k, entries)) => {
                items("fields", entries.len())?;
                let n = entries.iter().map(|(f, v)| f.len() + v.len()).sum();
                (
                    command("HSET", (at(&k)?, entries)),
                    Kind::Integer,
                    k,
                    Some(n),
                )
            }
            Command::HashDelete((k, fields)) => {
                items("fields", fields.len())?;
                (command("HDEL", (at(&k)?, fields)), Kind::Integer, k, None)
            }
            Command::HashIncrement((k, f, d)) => {
                (command("HINCRBY", (at(&k)?, f, d)), Kind::Integer, k, None)
            }
            Command::SetAdd((k, members)) => {
                items("members", members.len())?;
                let n = members.iter().map(String::len).sum();
                (
                    command("SADD", (at(&k)?, members)),
                    Kind::Integer,
                    k,
                    Some(n),
                )
            }
            Command::SetRemove((k, members)) => {
                items("members", members.len())?;
                (command("SREM", (at(&k)?, members)), Kind::Integer, k, None)
            }
            Command::SetContains((k, m)) => {
                (command("SISMEMBER", (at(&k)?, m)), Kind::Integer, k, None)
            }
            Command::SortedSetAdd((k, members)) => {
                items("members", members.len())?;
                let n = members.iter().map(|m| m.member.len() + 8).sum();
                let mut cmd = command("ZADD", at(&k)?);
                for m in members {
                    cmd.arg(m.score).arg(m.member);
                }
                (cmd, Kind::Integer, k, Some(n))
            }
            Command::SortedSetIncrement((k, m, d)) => {
                (command("ZINCRBY", (at(&k)?, d, m)), Kind::Number, k, None)
            }
            Command::SortedSetRemove((k, members)) => {
                items("members", members.len())?;
                (command("ZREM", (at(&k)?, members)), Kind::Integer, k, None)
            }
            Command::SortedSetScore((k, m)) => {
                (command("ZSCORE", (at(&k)?, m)), Kind::Number, k, None)
            }
            Command::ListPush((k, end, values)) => {
                items("values", values.len())?;
                let n = values.iter().map(Vec::len).sum();
                (
                    command(push_command(end, false), (at(&k)?, values)),
                    Kind::Integer,
                    k,
                    Some(n),
                )
            }
            Command::ListPop((k, end, count)) => {
                let count = check_count(count)?;
                let cmd = command(pop_command(end), (at(&k)?, count));
                (cmd, Kind::Values, k, None)
            }
            Command::ListTrim((k, start, stop)) => (
                command("LTRIM", (at(&k)?, start, stop)),
                Kind::Done,
                k,
                None,
            ),
            Command::ListRange((k, start, stop)) => (
                command("LRANGE", (at(&k)?, start, stop)),
                Kind::Values,
                k,
                None,
            ),
            Command::ListLength(k) => (command("LLEN", at(&k)?), Kind::Integer, k, None),
            Command::HyperloglogAdd((k, elements)) => {
                items("elements", elements.len())?;
                let n = elements.iter().map(String::len).sum();
                (
                    command("PFADD", (at(&k)?, elements)),
                    Kind::Integer,
                    k,
                    Some(n),
                )
            }
        };
        Ok(Prepared {
            cmd,
            kind,
            key,
            writes,
        })
    }

    /// Prepares `commands` (1 to [`super::MAX_ITEMS`]), all in `group` (or, with
    /// `None`, in the first command's group), checks each write and charges
    /// each command. Returns the commands, their reply kinds and the
    /// connection they were admitted on.
    async fn prepare_batch(
        &mut self,
        commands: Vec<Command>,
        group: Option<&str>,
    ) -> Result<(Vec<Cmd>, Vec<Kind>, crate::redis::Redis), Error> {
        if commands.is_empty() {
            return Err(invalid("a batch needs at least one command"));
        }
        check_items("commands", commands.len())?;
        let prepared = commands
            .into_iter()
            .map(|c| self.prepare(c))
            .collect::<Result<Vec<_>, _>>()?;
        let group = group
            .unwrap_or_else(|| slot_group(&prepared[0].key))
            .to_owned();
        if let Some(p) = prepared.iter().find(|p| slot_group(&p.key) != group) {
            return Err(invalid(format!(
                "key `{}` is not in the batch's slot group `{group}`; every key of a batch \
                 must be (start each key with the same `{{group}}`)",
                p.key
            )));
        }
        for p in &prepared {
            if let Some(bytes) = p.writes {
                let key = self.data_key(&p.key)?;
                self.check_payload(&key, bytes)?;
            }
        }
        let mut redis = None;
        for _ in &prepared {
            redis = Some(self.admit().await?);
        }
        let redis = redis.expect("at least one command");
        let (cmds, kinds) = prepared.into_iter().map(|p| (p.cmd, p.kind)).unzip();
        Ok((cmds, kinds, redis))
    }

    /// The replies of a batch, each decoded as its kind, after the whole
    /// answer is sized against `max-reply`.
    fn replies(
        &mut self,
        kinds: &[Kind],
        values: Vec<Value>,
    ) -> Result<Vec<Result<Reply, Error>>, Error> {
        self.check_reply(values.iter().map(super::reply_bytes).sum())?;
        if values.len() != kinds.len() {
            return Err(Error::Other(format!(
                "Redis answered {} replies to {} commands",
                values.len(),
                kinds.len()
            )));
        }
        Ok(kinds
            .iter()
            .zip(values)
            .map(|(k, v)| reply(*k, v))
            .collect())
    }

    async fn batch_run(
        &mut self,
        commands: Vec<Command>,
    ) -> Result<Vec<Result<Reply, Error>>, Error> {
        let (cmds, kinds, redis) = self.prepare_batch(commands, None).await?;
        let values = redis.transaction(cmds).await?;
        self.replies(&kinds, values)
    }
}

/// One command's reply as its kind, or its own error.
fn reply(kind: Kind, value: Value) -> Result<Reply, Error> {
    if let Value::ServerError(e) = value {
        return Err(CommandError::from(redis::RedisError::from(e)).into());
    }
    Ok(match kind {
        Kind::Done => Reply::Done,
        Kind::Integer => Reply::Integer(super::decode(value)?),
        Kind::Number => Reply::Number(super::decode(value)?),
        Kind::Value => Reply::Value(super::decode(value)?),
        Kind::Values => {
            Reply::Values(super::decode::<Option<Vec<Vec<u8>>>>(value)?.unwrap_or_default())
        }
    })
}

/// An optimistic transaction: its own connection, with `WATCH` on keys of
/// `group`, until it commits (the entry stays, without a connection, until
/// the guest drops its handle, so the handle never names another one).
pub struct Transaction {
    conn: Option<redis::aio::MultiplexedConnection>,
    group: String,
}

/// The transaction's connection, unless it is over.
fn open(tx: &Transaction) -> Result<redis::aio::MultiplexedConnection, Error> {
    tx.conn
        .clone()
        .ok_or_else(|| invalid("the transaction is over (it was committed)"))
}

/// The open transactions of one instance: the host side of the guest's
/// `transaction` resources.
pub struct Transactions {
    table: ResourceTable,
}

impl Default for Transactions {
    fn default() -> Self {
        let mut table = ResourceTable::new();
        table.set_max_capacity(MAX_TRANSACTIONS);
        Transactions { table }
    }
}

impl Transactions {
    /// No transaction is open in the instance.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }
}

type WitTransaction = crate::bindings::batch::Transaction;

fn ours(handle: &Resource<WitTransaction>) -> Resource<Transaction> {
    if handle.owned() {
        Resource::new_own(handle.rep())
    } else {
        Resource::new_borrow(handle.rep())
    }
}

impl Caps {
    async fn transaction_watch(
        &mut self,
        keys: Vec<String>,
    ) -> Result<Resource<WitTransaction>, Error> {
        let mapped = self.grouped_keys(&keys)?;
        if self.transactions.table.iter_mut().count() >= MAX_TRANSACTIONS {
            return Err(invalid(format!(
                "{MAX_TRANSACTIONS} transactions are open already; commit or drop one first"
            )));
        }
        self.own_connection()?;
        let redis = self.admit().await?;
        let mut conn = redis
            .connection_for_key(&mapped[0], std::time::Duration::ZERO)
            .await?;
        let _: () = command("WATCH", &mapped)
            .query_async(&mut conn)
            .await
            .map_err(CommandError::from)?;
        let group = slot_group(&keys[0]).to_owned();
        let handle = self
            .transactions
            .table
            .push(Transaction {
                conn: Some(conn),
                group,
            })
            .map_err(|e| Error::Other(format!("cannot hold the transaction: {e}")))?;
        Ok(Resource::new_own(handle.rep()))
    }

    async fn transaction_read(
        &mut self,
        handle: &Resource<WitTransaction>,
        command: Command,
    ) -> Result<Reply, Error> {
        if !is_read(&command) {
            return Err(invalid(
                "a transaction reads with get, hash-get, set-contains, sorted-set-score, \
                 list-range or list-length; writes go into commit",
            ));
        }
        let prepared = self.prepare(command)?;
        let tx = self
            .transactions
            .table
            .get_mut(&ours(handle))
            .map_err(|e| Error::Other(format!("no such transaction: {e}")))?;
        if slot_group(&prepared.key) != tx.group {
            return Err(invalid(format!(
                "key `{}` is not in the transaction's slot group `{}`",
                prepared.key, tx.group
            )));
        }
        let mut conn = open(tx)?;
        self.admit().await?;
        let value: Value = prepared
            .cmd
            .query_async(&mut conn)
            .await
            .map_err(CommandError::from)?;
        self.check_reply(super::reply_bytes(&value))?;
        reply(prepared.kind, value)
    }

    async fn transaction_commit(
        &mut self,
        handle: &Resource<WitTransaction>,
        commands: Vec<Command>,
    ) -> Result<Option<Vec<Result<Reply, Error>>>, Error> {
        let (mut conn, group) = {
            let tx = self
                .transactions
                .table
                .get_mut(&ours(handle))
                .map_err(|e| Error::Other(format!("no such transaction: {e}")))?;
            (open(tx)?, tx.group.clone())
        };
        let (cmds, kinds, _) = self.prepare_batch(commands, Some(&group)).await?;
        let Some(values) = exec_atomic(&mut conn, cmds).await? else {
            return Ok(None);
        };
        self.replies(&kinds, values).map(Some)
    }
}

/// Whether a command only reads.
fn is_read(command: &Command) -> bool {
    matches!(
        command,
        Command::Get(_)
            | Command::HashGet(_)
            | Command::SetContains(_)
            | Command::SortedSetScore(_)
            | Command::ListRange(_)
            | Command::ListLength(_)
    )
}

impl Host for Caps {
    async fn run(&mut self, commands: Vec<Command>) -> R<Vec<Result<Reply, Error>>> {
        Ok(traced!("batch", "run", self.batch_run(commands)))
    }
}

impl HostTransaction for Caps {
    async fn watch(&mut self, keys: Vec<String>) -> R<Resource<WitTransaction>> {
        Ok(traced!("batch", "watch", self.transaction_watch(keys)))
    }

    async fn read(&mut self, handle: Resource<WitTransaction>, command: Command) -> R<Reply> {
        Ok(traced!(
            "batch",
            "read",
            self.transaction_read(&handle, command)
        ))
    }

    async fn commit(
        &mut self,
        handle: Resource<WitTransaction>,
        commands: Vec<Command>,
    ) -> R<Option<Vec<Result<Reply, Error>>>> {
        let result = traced!(
            "batch",
            "commit",
            self.transaction_commit(&handle, commands)
        );
        // Committed or not, the transaction is over: close its connection.
        if let Ok(tx) = self.transactions.table.get_mut(&ours(&handle)) {
            tx.conn = None;
        }
        Ok(result)
    }

    async fn drop(&mut self, handle: Resource<WitTransaction>) -> wasmtime::Result<()> {
        self.transactions.table.delete(ours(&handle))?;
        Ok(())
    }
}
