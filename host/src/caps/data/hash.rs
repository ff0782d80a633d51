//! `redloom:plugin/hash`: Redis hashes in the plugin's key space.

use super::{check_items, check_scan_count, command};
use crate::bindings::hash::{HashPage, Host};
use crate::bindings::types::Error;
use crate::caps::Caps;
use crate::caps::common::{R, invalid};

impl Host for Caps {
    async fn get(&mut self, key: String, field: String) -> R<Option<Vec<u8>>> {
        Ok(traced!("hash", "get", async {
            let key = self.data_key(&key)?;
            self.query(command("HGET", (key, field))).await
        }))
    }

    async fn set(&mut self, key: String, entries: Vec<(String, Vec<u8>)>) -> R<u32> {
        Ok(traced!("hash", "set", async {
            let key = self.data_key(&key)?;
            if entries.is_empty() {
                return Err(invalid("set at least one field"));
            }
            check_items("fields", entries.len())?;
            let bytes = entries.iter().map(|(f, v)| f.len() + v.len()).sum();
            self.check_payload(&key, bytes)?;
            self.query(command("HSET", (key, entries))).await
        }))
    }

    async fn set_if_absent(&mut self, key: String, field: String, value: Vec<u8>) -> R<bool> {
        Ok(traced!("hash", "set-if-absent", async {
            let key = self.data_key(&key)?;
            self.check_payload(&key, field.len() + value.len())?;
            self.query(command("HSETNX", (key, field, value))).await
        }))
    }

    async fn get_many(&mut self, key: String, fields: Vec<String>) -> R<Vec<Option<Vec<u8>>>> {
        Ok(traced!("hash", "get-many", async {
            let key = self.data_key(&key)?;
            check_items("fields", fields.len())?;
            if fields.is_empty() {
                return Ok(Vec::new());
            }
            self.query(command("HMGET", (key, fields))).await
        }))
    }

    async fn get_all(&mut self, key: String) -> R<Vec<(String, Vec<u8>)>> {
        Ok(traced!("hash", "get-all", async {
            let key = self.data_key(&key)?;
            self.query(command("HGETALL", key)).await
        }))
    }

    async fn delete(&mut self, key: String, fields: Vec<String>) -> R<u32> {
        Ok(traced!("hash", "delete", async {
            let key = self.data_key(&key)?;
            if fields.is_empty() {
                return Err(invalid("delete at least one field"));
            }
            check_items("fields", fields.len())?;
            self.query(command("HDEL", (key, fields))).await
        }))
    }

    async fn increment(&mut self, key: String, field: String, delta: i64) -> R<i64> {
        Ok(traced!("hash", "increment", async {
            let key = self.data_key(&key)?;
            self.query(command("HINCRBY", (key, field, delta))).await
        }))
    }

    async fn increment_float(&mut self, key: String, field: String, delta: f64) -> R<f64> {
        Ok(traced!("hash", "increment-float", async {
            let key = self.data_key(&key)?;
            if !delta.is_finite() {
                return Err(invalid("delta must be a finite number"));
            }
            self.query(command("HINCRBYFLOAT", (key, field, delta)))
                .await
        }))
    }

    async fn exists(&mut self, key: String, field: String) -> R<bool> {
        Ok(traced!("hash", "exists", async {
            let key = self.data_key(&key)?;
            self.query(command("HEXISTS", (key, field))).await
        }))
    }

    async fn length(&mut self, key: String) -> R<u64> {
        Ok(traced!("hash", "length", async {
            let key = self.data_key(&key)?;
            self.query(command("HLEN", key)).await
        }))
    }

    async fn field_names(&mut self, key: String) -> R<Vec<String>> {
        Ok(traced!("hash", "field-names", async {
            let key = self.data_key(&key)?;
            self.query(command("HKEYS", key)).await
        }))
    }

    async fn scan(&mut self, key: String, cursor: u64, count: u32) -> R<HashPage> {
        Ok(traced!("hash", "scan", async {
            let key = self.data_key(&key)?;
            let count = check_scan_count(count)?;
            let (cursor, entries) = self
                .query(command("HSCAN", (key, cursor, "COUNT", count)))
                .await?;
            Ok::<_, Error>(HashPage { cursor, entries })
        }))
    }
}
