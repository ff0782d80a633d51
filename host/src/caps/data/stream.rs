//! `redloom:plugin/stream`: Redis streams as append-only event logs in the
//! plugin's key space (reads by id; work queues with consumer groups are
//! the `queue` capability).

use super::{check_count, check_items, command};
use crate::bindings::stream::{Entry, Host};
use crate::bindings::types::Error;
use crate::caps::Caps;
use crate::caps::common::{R, invalid};

/// Entries as Redis answers them: `[id, [field, value, ...]]` each.
type Raw = Vec<(String, Vec<(String, Vec<u8>)>)>;

fn entries(raw: Raw) -> Vec<Entry> {
    raw.into_iter()
        .map(|(id, fields)| Entry { id, fields })
        .collect()
}

/// An id or range bound the guest gave: at most 64 bytes, no spaces (Redis
/// checks the rest and answers `invalid-argument`).
fn id_arg(id: &str) -> Result<&str, Error> {
    if id.is_empty() || id.len() > 64 || id.contains(char::is_whitespace) {
        return Err(invalid(format!("`{id}` is not a stream id")));
    }
    Ok(id)
}

impl Caps {
    async fn stream_range(
        &mut self,
        name: &str,
        key: &str,
        (from, to): (&str, &str),
        count: u32,
    ) -> Result<Vec<Entry>, Error> {
        let key = self.data_key(key)?;
        let count = check_count(count)?;
        let cmd = command(name, (key, id_arg(from)?, id_arg(to)?, "COUNT", count));
        Ok(entries(self.query(cmd).await?))
    }
}

impl Host for Caps {
    async fn add(
        &mut self,
        key: String,
        fields: Vec<(String, Vec<u8>)>,
        max_length: Option<u64>,
    ) -> R<String> {
        Ok(traced!("stream", "add", async {
            let key = self.data_key(&key)?;
            if fields.is_empty() {
                return Err(invalid("an entry needs at least one field"));
            }
            check_items("fields", fields.len())?;
            self.check_payload(&key, fields.iter().map(|(f, v)| f.len() + v.len()).sum())?;
            let mut cmd = command("XADD", &key);
            if let Some(max) = max_length {
                cmd.arg("MAXLEN").arg("~").arg(max);
            }
            cmd.arg("*").arg(fields);
            self.query(cmd).await
        }))
    }

    async fn range(
        &mut self,
        key: String,
        start: String,
        end: String,
        count: u32,
    ) -> R<Vec<Entry>> {
        Ok(traced!(
            "stream",
            "range",
            self.stream_range("XRANGE", &key, (&start, &end), count)
        ))
    }

    async fn reverse_range(
        &mut self,
        key: String,
        end: String,
        start: String,
        count: u32,
    ) -> R<Vec<Entry>> {
        Ok(traced!(
            "stream",
            "reverse-range",
            self.stream_range("XREVRANGE", &key, (&end, &start), count)
        ))
    }

    async fn read_after(&mut self, key: String, id: String, count: u32) -> R<Vec<Entry>> {
        Ok(traced!("stream", "read-after", async {
            let key = self.data_key(&key)?;
            let count = check_count(count)?;
            let cmd = command("XREAD", ("COUNT", count, "STREAMS", key, id_arg(&id)?));
            // `[[key, entries]]`, or nil when nothing is newer.
            let read: Option<Vec<(String, Raw)>> = self.query(cmd).await?;
            Ok::<_, Error>(
                read.into_iter()
                    .flatten()
                    .flat_map(|(_, raw)| entries(raw))
                    .collect(),
            )
        }))
    }

    async fn length(&mut self, key: String) -> R<u64> {
        Ok(traced!("stream", "length", async {
            let key = self.data_key(&key)?;
            self.query(command("XLEN", key)).await
        }))
    }

    async fn trim(&mut self, key: String, max_length: u64) -> R<u64> {
        Ok(traced!("stream", "trim", async {
            let key = self.data_key(&key)?;
            self.query(command("XTRIM", (key, "MAXLEN", max_length)))
                .await
        }))
    }

    async fn delete(&mut self, key: String, ids: Vec<String>) -> R<u64> {
        Ok(traced!("stream", "delete", async {
            let key = self.data_key(&key)?;
            if ids.is_empty() {
                return Err(invalid("name at least one id"));
            }
            check_items("ids", ids.len())?;
            for id in &ids {
                id_arg(id)?;
            }
            self.query(command("XDEL", (key, ids))).await
        }))
    }
}
