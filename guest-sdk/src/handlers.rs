//! Handler traits: what a plugin implements for each trigger it supports.
//!
//! Each trait pairs with one WIT handler interface and one name in
//! [`export!`](crate::export)'s list. Adding a handler means adding its trait
//! here, its glue in `__private`, and its row in the macro crate's table.

use crate::Result;

/// The generic handler, called by `redloom invoke` and the admin API.
///
/// Export it with `redloom_sdk::export!(MyPlugin => [invoke]);`.
///
/// ```no_run
/// use redloom_sdk::{Error, Invoke, Result};
///
/// struct Upper;
///
/// impl Invoke for Upper {
///     fn invoke(input: Vec<u8>) -> Result<Vec<u8>> {
///         if input.is_empty() {
///             return Err(Error::invalid("empty input"));
///         }
///         Ok(input.to_ascii_uppercase())
///     }
/// }
///
/// redloom_sdk::export!(Upper => [invoke]);
/// # fn main() {}
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` does not implement `redloom_sdk::Invoke`",
    label = "exported with the `invoke` handler here",
    note = "`export!(... => [invoke])` needs `impl redloom_sdk::Invoke for {Self}`"
)]
pub trait Invoke {
    /// Handle one invocation: `input` is the caller's bytes, `Ok` bytes are
    /// the reply, and an `Err` is passed back to the caller as a typed error.
    /// A panic traps the instance; the host reports it for this call only.
    fn invoke(input: Vec<u8>) -> Result<Vec<u8>>;
}

/// The HTTP handler: `redloom serve` calls it for each request whose route
/// (`[[routes]]` in redloom.toml) names the plugin.
///
/// Export it with `redloom_sdk::export!(MyPlugin => [http]);`. An `Err`
/// becomes a 500 whose body does not reveal the error (the host logs it).
///
/// ```no_run
/// use redloom_sdk::http::{Request, Response};
/// use redloom_sdk::{Http, Result, kv};
///
/// struct Hits;
///
/// impl Http for Hits {
///     fn handle(request: Request) -> Result<Response> {
///         let page = request.param("page").unwrap_or("home");
///         let n = kv::increment(&format!("hits:{page}"), 1)?;
///         Ok(Response::text(200, format!("{page}: {n} hits\n")))
///     }
/// }
///
/// redloom_sdk::export!(Hits => [http]);
/// # fn main() {}
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` does not implement `redloom_sdk::Http`",
    label = "exported with the `http` handler here",
    note = "`export!(... => [http])` needs `impl redloom_sdk::Http for {Self}`"
)]
pub trait Http {
    /// Handle one request.
    fn handle(request: crate::http::Request) -> Result<crate::http::Response>;
}

/// The message handler: `redloom serve` calls it for each message on the
/// channels and patterns the manifest's `subscriptions` name, and for the
/// keyspace events its `keyspace-events` ask for.
///
/// Export it with `redloom_sdk::export!(MyPlugin => [message]);`.
///
/// ```no_run
/// use redloom_sdk::pubsub::Message;
/// use redloom_sdk::{OnMessage, Result, kv};
///
/// struct LastMessage;
///
/// impl OnMessage for LastMessage {
///     fn on_message(message: Message) -> Result<()> {
///         kv::set(&format!("last:{}", message.channel), &message.payload)
///     }
/// }
///
/// redloom_sdk::export!(LastMessage => [message]);
/// # fn main() {}
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` does not implement `redloom_sdk::OnMessage`",
    label = "exported with the `message` handler here",
    note = "`export!(... => [message])` needs `impl redloom_sdk::OnMessage for {Self}`"
)]
pub trait OnMessage {
    /// Handle one message. An error is logged and counted; pub/sub does not
    /// redeliver.
    fn on_message(message: crate::pubsub::Message) -> Result<()>;
}

/// The timer handler: `redloom serve` calls it at each tick of the timers in
/// the manifest's `[plugins.NAME.timers.TIMER]` tables.
///
/// Export it with `redloom_sdk::export!(MyPlugin => [timer]);`.
///
/// ```no_run
/// use redloom_sdk::pubsub::Tick;
/// use redloom_sdk::{OnTick, Result, kv};
///
/// struct Heartbeat;
///
/// impl OnTick for Heartbeat {
///     fn on_tick(tick: Tick) -> Result<()> {
///         kv::set(&format!("last-tick:{}", tick.timer), tick.scheduled_ms.to_string())
///     }
/// }
///
/// redloom_sdk::export!(Heartbeat => [timer]);
/// # fn main() {}
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` does not implement `redloom_sdk::OnTick`",
    label = "exported with the `timer` handler here",
    note = "`export!(... => [timer])` needs `impl redloom_sdk::OnTick for {Self}`"
)]
pub trait OnTick {
    /// Handle one tick. An error is logged and counted; the tick is not retried.
    fn on_tick(tick: crate::pubsub::Tick) -> Result<()>;
}

/// The queue handler: `redloom serve` calls it for each message of the
/// queues the manifest's `[plugins.NAME.consumers.QUEUE]` tables consume.
/// `Ok` acknowledges the message; an `Err` (or a panic) retries it with
/// backoff, and after the last attempt moves it to the dead letters.
///
/// Export it with `redloom_sdk::export!(MyPlugin => [queue]);`.
///
/// ```no_run
/// use redloom_sdk::queue::Job;
/// use redloom_sdk::{OnJob, Result, kv};
///
/// struct Worker;
///
/// impl OnJob for Worker {
///     fn on_job(job: Job) -> Result<()> {
///         kv::set(&format!("done:{}", job.id), &job.payload)
///     }
/// }
///
/// redloom_sdk::export!(Worker => [queue]);
/// # fn main() {}
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` does not implement `redloom_sdk::OnJob`",
    label = "exported with the `queue` handler here",
    note = "`export!(... => [queue])` needs `impl redloom_sdk::OnJob for {Self}`"
)]
pub trait OnJob {
    /// Process one message.
    fn on_job(job: crate::queue::Job) -> Result<()>;
}
