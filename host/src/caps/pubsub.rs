//! `redloom:plugin/pubsub`: publish on the plugin's own channels, or on the
//! shared channels its manifest lists.

use super::Caps;
use crate::bindings::pubsub::Host;
use crate::bindings::types::Error;

impl Caps {
    async fn publish(&mut self, channel: &str, payload: &[u8]) -> Result<u32, Error> {
        let shared = crate::namespace::is_shared(&self.plugin.shared_channels, channel);
        let channel = self
            .plugin
            .namespace
            .channel(channel, shared)
            .map_err(|e| Error::InvalidArgument(e.to_string()))?;
        // Stored nowhere, but a message travels to every subscriber's
        // connection: bounded like a stored value.
        self.check_write(0, payload.len())?;
        // With traces on, the message carries this call's trace context
        // (see `logging::TRACE_ENVELOPE`); subscribing hosts unwrap it.
        let wrapped = crate::logging::wrap_payload(payload);
        let payload = wrapped.as_deref().unwrap_or(payload);
        let n = self.admit().await?.publish(&channel, payload).await?;
        Ok(u32::try_from(n).unwrap_or(u32::MAX))
    }
}

impl Host for Caps {
    async fn publish(
        &mut self,
        channel: String,
        payload: Vec<u8>,
    ) -> wasmtime::Result<Result<u32, Error>> {
        Ok(traced!(
            "pubsub",
            "publish",
            Caps::publish(self, &channel, &payload)
        ))
    }
}
