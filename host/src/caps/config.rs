//! `redloom:plugin/config`: the plugin's `settings` from its manifest entry.

use super::Caps;
use crate::bindings::config::Host;

impl Host for Caps {
    async fn get(&mut self, key: String) -> wasmtime::Result<Option<String>> {
        Ok(self.plugin.settings.get(&key).cloned())
    }

    async fn entries(&mut self) -> wasmtime::Result<Vec<(String, String)>> {
        Ok(self
            .plugin
            .settings
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }
}
