//! `redloom:plugin/hyperloglog`: Redis HyperLogLogs in the plugin's key space.

use super::{check_items, command};
use crate::bindings::hyperloglog::Host;
use crate::caps::Caps;
use crate::caps::common::R;

impl Host for Caps {
    async fn add(&mut self, key: String, elements: Vec<String>) -> R<bool> {
        Ok(traced!("hyperloglog", "add", async {
            let key = self.data_key(&key)?;
            check_items("elements", elements.len())?;
            self.check_payload(&key, elements.iter().map(String::len).sum())?;
            self.query(command("PFADD", (key, elements))).await
        }))
    }

    async fn count(&mut self, keys: Vec<String>) -> R<u64> {
        Ok(traced!("hyperloglog", "count", async {
            let keys = self.grouped_keys(&keys)?;
            self.query(command("PFCOUNT", keys)).await
        }))
    }

    async fn merge(&mut self, destination: String, sources: Vec<String>) -> R<()> {
        Ok(traced!("hyperloglog", "merge", async {
            let mut all = vec![destination];
            all.extend(sources);
            let keys = self.grouped_keys(&all)?;
            self.query(command("PFMERGE", keys)).await
        }))
    }
}
