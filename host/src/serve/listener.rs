//! Accepting and serving the connections of one listener (`[http]` or
//! `[admin]`) within its [`ConnectionLimits`], so that slow or silent
//! clients (slowloris) cannot take every connection or file descriptor.
//!
//! | limit | enforced by | on breach |
//! |---|---|---|
//! | `max-connections` | a semaphore permit per connection, taken *before* `accept` | the listener stops accepting; new clients wait in the kernel's accept queue until a connection closes |
//! | `header-read-timeout` | hyper's `header_read_timeout` (its timer starts when the connection opens and again when a response has been sent) | the connection is closed |
//! | `idle-timeout` | [`Activity`]: the time of the last byte received or sent, and the requests in progress | a connection idle that long with no request in progress is closed |
//! | `body-read-timeout` | [`TimedBody`] around each request body | reading the body fails with [`BodyTimeout`] (the HTTP trigger answers 408) |
//!
//! Why wait rather than accept and close at once past `max-connections`: a
//! client that arrives while the listener is full is served as soon as a
//! connection closes (and the timeouts make sure one does), instead of
//! failing; and the waiting connections cost no descriptor of ours.
//!
//! hyper's header timer also runs while a kept-alive connection waits for its
//! next request, so that wait ends after the shorter of the header and idle
//! timeouts. `serve` raises the soft open-file limit to the hard one at start
//! and refuses to start when both listeners' `max-connections` and
//! [`OPEN_FILES_RESERVE`] do not fit in it.
//!
//! Shutdown is graceful as before: when `stop` turns true the listener
//! stops accepting (and closes), each connection finishes the request it is
//! serving and closes, and [`serve`] returns when every connection is gone.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::ConnectInfo;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::time::{Instant, Sleep};
use tower_service::Service;

use crate::config::ConnectionLimits;

/// Open files `serve` keeps free of both listeners' connections: Redis
/// connections (shared, blocking, subscriber, one per ACL user), compiled
/// plugin images, files being read, the runtime's own descriptors and the
/// private `redis-server`'s pipes. A few dozen are in use in a typical
/// host; 256 leaves room for many plugins.
pub const OPEN_FILES_RESERVE: u64 = 256;

/// How long the listener pauses after `accept` fails for a reason other
/// than the client (e.g. the process ran out of descriptors anyway), so the
/// failure neither spins nor floods the log.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_secs(1);

/// At most one "all connections in use" warning per listener this often:
/// under attack the limit is reached constantly; the counter has the count.
const LIMIT_WARNING_INTERVAL: Duration = Duration::from_secs(60);

/// What one listener's connections did, for `/metrics`.
#[derive(Debug, Default)]
pub struct ListenerStats {
    /// Connections open now.
    pub open: AtomicU64,
    /// Connections closed because their headers were not complete within
    /// `header-read-timeout`.
    pub header_timeouts: AtomicU64,
    /// Connections closed after `idle-timeout` without traffic.
    pub idle_timeouts: AtomicU64,
    /// Request bodies not complete within `body-read-timeout`.
    pub body_timeouts: AtomicU64,
    /// Times the listener found `max-connections` open and stopped
    /// accepting until one closed.
    pub limit_reached: AtomicU64,
}

/// Reading a request body took longer than `body-read-timeout`.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within body-read-timeout")]
pub struct BodyTimeout;

impl BodyTimeout {
    /// Whether `e` or an error it wraps is a [`BodyTimeout`].
    pub fn caused(e: &(dyn std::error::Error + 'static)) -> bool {
        let mut next = Some(e);
        while let Some(e) = next {
            if e.is::<BodyTimeout>() {
                return true;
            }
            next = e.source();
        }
        false
    }
}

/// Serves `router` on `listener` within `limits` until `stop` turns true,
/// then drains: returns when every connection has closed. `name` is the
/// configuration section (`http`, `admin`), for the log.
pub(super) async fn serve(
    name: &'static str,
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    stats: Arc<ListenerStats>,
    stop: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut stop_accepting = stop.clone();
    let mut last_warning: Option<Instant> = None;
    loop {
        if slots.available_permits() == 0 {
            stats.limit_reached.fetch_add(1, Ordering::Relaxed);
            if last_warning.is_none_or(|t| t.elapsed() >= LIMIT_WARNING_INTERVAL) {
                tracing::warn!(
                    "[{name}] max-connections ({}) are open: new connections wait until one closes",
                    limits.max_connections
                );
                last_warning = Some(Instant::now());
            }
        }
        // The permit comes first: while none is free, connections stay in
        // the kernel's queue and take none of our descriptors.
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => p.expect("the semaphore is never closed"),
            () = stopped(&mut stop_accepting) => break,
        };
        let (stream, addr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) if is_client_error(&e) => continue,
                Err(e) => {
                    tracing::error!(
                        "[{name}] accepting a connection failed: {e}; retrying in {}",
                        humantime::format_duration(ACCEPT_ERROR_PAUSE)
                    );
                    tokio::select! {
                        () = tokio::time::sleep(ACCEPT_ERROR_PAUSE) => continue,
                        () = stopped(&mut stop_accepting) => break,
                    }
                }
            },
            () = stopped(&mut stop_accepting) => break,
        };
        tokio::spawn(connection(
            name,
            stream,
            addr,
            router.clone(),
            limits,
            stats.clone(),
            stop.clone(),
            permit,
        ));
    }
    // No new connections: clients connecting now are refused.
    drop(listener);
    // Every connection holds a permit until it closes.
    let all = u32::try_from(limits.max_connections).expect("max-connections is checked");
    let _ = slots.acquire_many(all).await;
}

/// Resolves once `stop` is true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Errors of `accept` that concern one client only.
fn is_client_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionAborted | ConnectionReset | ConnectionRefused
    )
}

/// Serves one connection until it closes, times out, or (after `stop`) has
/// finished its request. `_permit` is its `max-connections` slot.
#[allow(clippy::too_many_arguments)]
async fn connection(
    name: &'static str,
    stream: TcpStream,
    addr: SocketAddr,
    router: Router,
    limits: ConnectionLimits,
    stats: Arc<ListenerStats>,
    mut stop: watch::Receiver<bool>,
    _permit: tokio::sync::OwnedSemaphorePermit,
) {
    let _open = Open::count(stats.clone());
    let activity = Arc::new(Activity::new());
    let service = hyper::service::service_fn({
        let activity = activity.clone();
        let stats = stats.clone();
        move |request: hyper::Request<Incoming>| {
            let busy = Busy::start(activity.clone());
            let deadline = Instant::now() + limits.body_read_timeout;
            let mut request = request.map(|body| TimedBody::new(body, deadline, stats.clone()));
            // What `into_make_service_with_connect_info` gave handlers: the
            // HTTP trigger passes the client's address to plugins.
            request.extensions_mut().insert(ConnectInfo(addr));
            let mut router = router.clone();
            async move {
                let response = router.call(request).await?;
                // The request counts as in progress until hyper has taken
                // the whole response body.
                Ok::<_, std::convert::Infallible>(response.map(|body| {
                    Body::new(BusyBody {
                        inner: body,
                        busy: Some(busy),
                    })
                }))
            }
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let io = TokioIo::new(Tracked {
        inner: stream,
        activity: activity.clone(),
    });
    let conn = builder.serve_connection(io, service);
    let mut conn = std::pin::pin!(conn);
    let mut stopping = false;
    loop {
        // While a request is in progress the idle timer does not run; look
        // again after a whole idle period (a request that ends sooner moves
        // the deadline to its end plus the idle timeout, never earlier).
        let wake = if activity.busy() {
            Instant::now() + limits.idle_timeout
        } else {
            activity.idle_deadline(limits.idle_timeout)
        };
        tokio::select! {
            result = conn.as_mut() => {
                match result {
                    Err(e) if e.is_timeout() => {
                        stats.header_timeouts.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!("[{name}] {addr}: no complete request headers within header-read-timeout; closed");
                    }
                    Err(e) => tracing::debug!("[{name}] {addr}: {e}"),
                    Ok(()) => {}
                }
                break;
            }
            () = stopped(&mut stop), if !stopping => {
                stopping = true;
                conn.as_mut().graceful_shutdown();
            }
            () = tokio::time::sleep_until(wake) => {
                if !activity.busy() && activity.idle_deadline(limits.idle_timeout) <= Instant::now() {
                    stats.idle_timeouts.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!("[{name}] {addr}: idle for idle-timeout; closed");
                    // Dropping the connection closes the socket.
                    break;
                }
            }
        }
    }
}

/// Counts a connection in [`ListenerStats::open`] while it lives.
struct Open(Arc<ListenerStats>);

impl Open {
    fn count(stats: Arc<ListenerStats>) -> Open {
        stats.open.fetch_add(1, Ordering::Relaxed);
        Open(stats)
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// When a connection last moved a byte (or finished a request), and how
/// many requests on it are in progress.
struct Activity {
    start: Instant,
    /// Nanoseconds after `start`.
    last: AtomicU64,
    busy: AtomicUsize,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            start: Instant::now(),
            last: AtomicU64::new(0),
            busy: AtomicUsize::new(0),
        }
    }

    fn touch(&self) {
        let nanos = u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.last.store(nanos, Ordering::SeqCst);
    }

    fn idle_deadline(&self, idle: Duration) -> Instant {
        self.start + Duration::from_nanos(self.last.load(Ordering::SeqCst)) + idle
    }

    fn busy(&self) -> bool {
        self.busy.load(Ordering::SeqCst) > 0
    }
}

/// A request in progress, from its headers until hyper has its whole
/// response body; its end counts as activity, so the idle timer starts
/// when the response has been handed over, not at the last byte received.
struct Busy(Arc<Activity>);

impl Busy {
    fn start(activity: Arc<Activity>) -> Busy {
        activity.busy.fetch_add(1, Ordering::SeqCst);
        Busy(activity)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        // Touch first: whoever sees the count drop sees the new time.
        self.0.touch();
        self.0.busy.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A response body that ends its request's [`Busy`] when it ends.
struct BusyBody {
    inner: Body,
    busy: Option<Busy>,
}

impl http_body::Body for BusyBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(None | Some(Err(_))) = polled {
            self.busy = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A request body (hyper's `Incoming`) that fails with [`BodyTimeout`]
/// once `deadline` passes before it is complete.
struct TimedBody<B> {
    inner: B,
    deadline: Instant,
    /// Created when the body is first waited for (most requests have none).
    sleep: Option<Pin<Box<Sleep>>>,
    stats: Arc<ListenerStats>,
}

impl<B> TimedBody<B> {
    fn new(inner: B, deadline: Instant, stats: Arc<ListenerStats>) -> TimedBody<B> {
        TimedBody {
            inner,
            deadline,
            sleep: None,
            stats,
        }
    }
}

impl<B> http_body::Body for TimedBody<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        // What has arrived is delivered even past the deadline.
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        let deadline = self.deadline;
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if sleep.as_mut().poll(cx).is_ready() {
            self.stats.body_timeouts.fetch_add(1, Ordering::Relaxed);
            return Poll::Ready(Some(Err(Box::new(BodyTimeout))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A TCP stream that records in [`Activity`] when bytes move.
struct Tracked {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = polled
            && n > 0
        {
            self.activity.touch();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = polled
            && n > 0
        {
            self.activity.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Raises this process's soft open-file limit (`RLIMIT_NOFILE`) to its
/// hard limit, which any process may do, and returns the soft limit now in
/// force. Connections past the limit would fail `accept` (and Redis
/// connects and file reads with it), so `serve` wants all it may have.
pub fn raise_open_files_limit() -> std::io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes only into the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit only reads the struct it is given.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            return Ok(raised.rlim_cur);
        }
        // Some systems cap the soft limit below an infinite hard one: keep
        // what there is.
        tracing::debug!(
            "cannot raise the open-file limit from {} to {}: {}",
            limit.rlim_cur,
            limit.rlim_max,
            std::io::Error::last_os_error()
        );
    }
    Ok(limit.rlim_cur)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A body that never ends, in place of a stalled client.
    struct Stalled;

    impl http_body::Body for Stalled {
        type Data = Bytes;
        type Error = std::io::Error;
        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
            Poll::Pending
        }
    }

    /// A stalled body fails at its deadline, is counted, and the failure
    /// is recognised through the layers that wrap it on its way to a
    /// handler (`to_bytes` over axum's `Body`).
    #[tokio::test]
    async fn stalled_body_times_out_recognisably() {
        let stats = Arc::new(ListenerStats::default());
        let deadline = Instant::now() + Duration::from_millis(50);
        let body = Body::new(TimedBody::new(Stalled, deadline, stats.clone()));
        let e = axum::body::to_bytes(body, 1024).await.unwrap_err();
        assert!(Instant::now() >= deadline);
        assert!(BodyTimeout::caused(&e), "{e:?}");
        assert_eq!(stats.body_timeouts.load(Ordering::Relaxed), 1);
        let other = axum::Error::new(std::io::Error::other("reset"));
        assert!(!BodyTimeout::caused(&other));
    }
}
