//! What a wasmtime `Store` holds for one plugin instance: WASI state (with no
//! filesystem, environment, arguments, sockets or stdin), resource limits,
//! and [`Caps`], the state every capability implementation works with
//! (defined with the capabilities, in `caps/context.rs`).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use wasmtime::component::ResourceTable;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

pub use crate::caps::{Caps, Cleanup, CleanupAction, OutboundPolicy, PluginContext, QueuePolicy};
use crate::quota::{CpuMeter, Limits};
use crate::redis::Redis;

/// Store data of one instance.
pub struct State {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(crate) limits: Limits,
    /// Guest CPU time of the current invocation.
    pub(crate) cpu: Arc<CpuMeter>,
    /// Set by the epoch callback when the current invocation should move to
    /// the background runtime (see `plugin::Placed`).
    pub(crate) migrate: Arc<std::sync::atomic::AtomicBool>,
    /// Epoch ticks at which the current invocation was running guest code.
    pub(crate) ticks: std::sync::atomic::AtomicU32,
    pub(crate) caps: Caps,
}

impl State {
    pub fn new(plugin: Arc<PluginContext>, redis: Option<Redis>) -> State {
        let caps = Caps::new(plugin.clone(), redis);
        let log_used = &caps.log_used;
        let wasi = WasiCtxBuilder::new()
            .stdout(GuestOutput::new(plugin.clone(), log_used.clone(), "stdout"))
            .stderr(GuestOutput::new(plugin.clone(), log_used.clone(), "stderr"))
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        let limits = Limits::new(&plugin.quotas);
        State {
            wasi,
            table: ResourceTable::new(),
            limits,
            cpu: Arc::default(),
            migrate: Arc::default(),
            ticks: Default::default(),
            caps,
        }
    }
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// A guest's stdout or stderr: each line goes to the host log, tagged with
/// the plugin's name, within the same budgets as the `log` capability
/// (`caps::log`); lines over [`MAX_LINE_BYTES`] are split.
struct GuestOutput {
    plugin: Arc<PluginContext>,
    log_used: Arc<std::sync::atomic::AtomicU64>,
    stream: &'static str,
}

/// Longest stdout/stderr line logged as one record.
pub const MAX_LINE_BYTES: usize = 4096;

impl GuestOutput {
    fn new(
        plugin: Arc<PluginContext>,
        log_used: Arc<std::sync::atomic::AtomicU64>,
        stream: &'static str,
    ) -> GuestOutput {
        GuestOutput {
            plugin,
            log_used,
            stream,
        }
    }
}

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(LineLogger {
            plugin: self.plugin.clone(),
            log_used: self.log_used.clone(),
            stream: self.stream,
            line: Vec::new(),
        })
    }
}

struct LineLogger {
    plugin: Arc<PluginContext>,
    log_used: Arc<std::sync::atomic::AtomicU64>,
    stream: &'static str,
    line: Vec<u8>,
}

impl LineLogger {
    fn emit(&mut self) {
        if self.line.is_empty() {
            return;
        }
        let text = String::from_utf8_lossy(&self.line);
        let text = text.trim_end_matches(['\n', '\r']);
        let level = if self.stream == "stderr" {
            crate::bindings::log::Level::Warn
        } else {
            crate::bindings::log::Level::Info
        };
        crate::caps::log::emit(&self.plugin, &self.log_used, level, text, self.stream);
        self.line.clear();
    }
}

impl tokio::io::AsyncWrite for LineLogger {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        for &b in buf {
            this.line.push(b);
            if b == b'\n' || this.line.len() >= MAX_LINE_BYTES {
                this.emit();
            }
        }
        // Report everything as written: the guest must not block or fail
        // because its output is being dropped.
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.emit();
        Poll::Ready(Ok(()))
    }
}

impl Drop for LineLogger {
    fn drop(&mut self) {
        self.emit();
    }
}
