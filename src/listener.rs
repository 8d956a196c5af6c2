//! The listeners' connections: TLS (ALPN picks HTTP/1.1 or HTTP/2), a
//! deadline on every phase a client controls, and one cap on open
//! connections for the whole process. A hostile peer holds nothing for long:
//! each phase has its timeout, and at the cap the connection that has waited
//! on its client the longest makes room for a new one.

use crate::config::ServerConfig;
use axum::extract::ConnectInfo;
use axum::Router;
use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

/// File descriptors kept out of the connection cap: the database pool,
/// validation's outbound sockets and DNS, CA files, logs.
const FD_RESERVE: u64 = 128;

/// What `[server]` says about connections, in the units the code uses.
#[derive(Clone, Debug)]
pub struct Limits {
    pub tls_handshake: Duration,
    pub header_read: Duration,
    pub body: Duration,
    pub idle: Duration,
    /// hyper's own bound on a request head (HTTP/1 read buffer, HTTP/2
    /// header list): twice what Cairn accepts, so Cairn's check answers
    /// first with a problem document.
    pub head_bytes: usize,
    pub h2_max_concurrent_streams: u32,
    pub h2_stream_window: u32,
    pub h2_connection_window: u32,
}

impl Limits {
    pub fn new(s: &ServerConfig) -> Limits {
        Limits {
            tls_handshake: Duration::from_secs(s.tls_handshake_timeout_secs),
            header_read: Duration::from_secs(s.header_read_timeout_secs),
            body: Duration::from_secs(s.body_timeout_secs),
            idle: Duration::from_secs(s.idle_timeout_secs),
            head_bytes: (2 * (s.max_uri_bytes + s.max_header_bytes)).max(8192),
            h2_max_concurrent_streams: s.h2_max_concurrent_streams,
            h2_stream_window: s.h2_stream_window_bytes,
            h2_connection_window: s.h2_connection_window_bytes,
        }
    }
}

/// The connection cap for `configured`: raises the soft open-file limit to
/// the hard one (as Go's runtime does), then keeps `FD_RESERVE` descriptors
/// out of the cap, so connections can never take the last file descriptor.
pub fn connection_cap(configured: usize) -> usize {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut lim = getrlimit(Resource::Nofile);
    if let (Some(cur), Some(max)) = (lim.current, lim.maximum) {
        if max > cur {
            lim.current = Some(max);
            if setrlimit(Resource::Nofile, lim).is_err() {
                lim.current = Some(cur);
            }
        }
    }
    let fds = lim.current.unwrap_or(u64::MAX);
    let room = fds.saturating_sub(FD_RESERVE).max(16);
    configured.min(usize::try_from(room).unwrap_or(usize::MAX))
}

/// Every open connection of the process (both listeners share one cap:
/// it is about file descriptors).
pub struct Connections {
    cap: usize,
    epoch: std::time::Instant,
    next_id: AtomicU64,
    open: Mutex<HashMap<u64, Arc<ConnState>>>,
    /// Shutting down: accept nothing new, close each connection once it
    /// has no request in flight (HTTP/1 answers say `Connection: close`).
    draining: AtomicBool,
    /// Woken when draining starts.
    drain_started: Notify,
}

/// A connection with nothing in flight is closed this long after its last
/// answer once draining: its response has long been written by then.
const DRAIN_SETTLE: Duration = Duration::from_millis(100);

impl Connections {
    pub fn new(cap: usize) -> Arc<Connections> {
        Arc::new(Connections {
            cap,
            epoch: std::time::Instant::now(),
            next_id: AtomicU64::new(0),
            open: Mutex::new(HashMap::new()),
            draining: AtomicBool::new(false),
            drain_started: Notify::new(),
        })
    }

    /// Start a graceful shutdown: the listeners stop accepting, and every
    /// connection closes once it has nothing in flight.
    pub fn drain(&self) {
        self.draining.store(true, Ordering::Release);
        self.drain_started.notify_waiters();
        for c in self.lock().values() {
            c.changed.notify_one();
        }
    }

    fn draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Connections still open.
    pub fn open_count(&self) -> usize {
        self.lock().len()
    }

    pub fn cap(&self) -> usize {
        self.cap
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn instant(&self, ms: u64) -> Instant {
        Instant::from_std(self.epoch + Duration::from_millis(ms))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<ConnState>>> {
        // The map stays consistent whatever panicked while holding it.
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Admits a new connection. At the cap the connection that has waited
    /// on its client the longest (handshake, headers, a body, keep-alive)
    /// is closed to make room; if every one is being worked on, the new
    /// connection is refused at once rather than left hanging.
    fn admit(self: &Arc<Self>) -> Option<Admitted> {
        let mut open = self.lock();
        if open.len() >= self.cap && !Self::evict_idlest(&mut open) {
            return None;
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let state = Arc::new(ConnState::new(self.now_ms()));
        open.insert(id, state.clone());
        Some(Admitted {
            conns: self.clone(),
            id,
            state,
        })
    }

    fn evict_idlest(open: &mut HashMap<u64, Arc<ConnState>>) -> bool {
        let victim = open
            .iter()
            .filter(|(_, c)| c.waiting_on_client())
            .min_by_key(|(_, c)| c.idle_since.load(Ordering::Relaxed))
            .map(|(id, _)| *id);
        match victim.and_then(|id| open.remove(&id)) {
            Some(c) => {
                c.evicted.notify_one();
                true
            }
            None => false,
        }
    }
}

/// A connection counted against the cap until dropped.
struct Admitted {
    conns: Arc<Connections>,
    id: u64,
    state: Arc<ConnState>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.conns.lock().remove(&self.id);
    }
}

/// What one connection is doing, for its deadlines and for eviction.
struct ConnState {
    /// Requests whose handler is running.
    requests: AtomicUsize,
    /// Of those, the ones whose body is still arriving.
    receiving: AtomicUsize,
    /// When the connection last had no request (ms since `epoch`).
    idle_since: AtomicU64,
    /// HTTP/1: when the first byte of the next request head arrived, plus
    /// one (0: none yet).
    head_since: AtomicU64,
    /// HTTP/1: the last request was answered without reading all its body
    /// (a 413 from the header), so the connection cannot be reused.
    body_abandoned: AtomicBool,
    evicted: Notify,
    /// The deadline may have moved earlier (idle again, a head started).
    changed: Notify,
}

impl ConnState {
    fn new(now_ms: u64) -> ConnState {
        ConnState {
            requests: AtomicUsize::new(0),
            receiving: AtomicUsize::new(0),
            idle_since: AtomicU64::new(now_ms),
            head_since: AtomicU64::new(0),
            body_abandoned: AtomicBool::new(false),
            evicted: Notify::new(),
            changed: Notify::new(),
        }
    }

    /// No handler is working on a request whose body has arrived: the
    /// connection waits on its client.
    fn waiting_on_client(&self) -> bool {
        self.requests.load(Ordering::Relaxed) == self.receiving.load(Ordering::Relaxed)
    }

    /// When the connection must be closed, in ms since `epoch`: the idle
    /// timeout until a request head starts, then the header timeout. While
    /// a request runs there is none (its body has its own).
    fn deadline_ms(&self, limits: &Limits) -> Option<u64> {
        if self.requests.load(Ordering::Acquire) > 0 {
            return None;
        }
        match self.head_since.load(Ordering::Acquire) {
            0 => Some(self.idle_since.load(Ordering::Acquire) + limits.idle.as_millis() as u64),
            h => Some(h - 1 + limits.header_read.as_millis() as u64),
        }
    }
}

/// Serves `app` on `listener` until the process ends: TLS when `tls` is
/// given (HTTP/2 when ALPN says `h2`), plain HTTP/1.1 otherwise.
pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    app: Router,
    conns: Arc<Connections>,
    limits: Arc<Limits>,
) {
    loop {
        let drain = conns.drain_started.notified();
        tokio::pin!(drain);
        drain.as_mut().enable();
        if conns.draining() {
            return;
        }
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = drain => return,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors despite the reserve (or another
                // transient error): free one and retry shortly, not in a
                // busy loop.
                tracing::debug!("accept: {e}");
                Connections::evict_idlest(&mut conns.lock());
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let Some(admitted) = conns.admit() else {
            tracing::debug!(%peer, "connection cap reached, every connection busy: refused");
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(serve_connection(
            stream,
            peer,
            tls.clone(),
            app.clone(),
            admitted,
            limits.clone(),
        ));
    }
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<TlsAcceptor>,
    app: Router,
    admitted: Admitted,
    limits: Arc<Limits>,
) {
    let state = admitted.state.clone();
    let conn = Conn {
        conns: admitted.conns.clone(),
        state: state.clone(),
        limits: limits.clone(),
        peer,
        app,
    };
    let Some(tls) = tls else {
        return conn.serve_http1(stream).await;
    };
    let handshake = tokio::time::timeout(limits.tls_handshake, tls.accept(stream));
    let stream = tokio::select! {
        r = handshake => match r {
            Ok(Ok(s)) => s,
            Ok(Err(_)) | Err(_) => return,
        },
        _ = state.evicted.notified() => return,
    };
    // The idle clock starts once the handshake is done.
    state
        .idle_since
        .store(admitted.conns.now_ms(), Ordering::Release);
    if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
        conn.serve_http2(stream).await
    } else {
        conn.serve_http1(stream).await
    }
}

/// One connection's serving context.
#[derive(Clone)]
struct Conn {
    conns: Arc<Connections>,
    state: Arc<ConnState>,
    limits: Arc<Limits>,
    peer: SocketAddr,
    app: Router,
}

impl Conn {
    async fn serve_http1<IO>(self, io: IO)
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let io = Watched {
            inner: io,
            conn: Some(self.clone()),
        };
        let mut http1 = hyper::server::conn::http1::Builder::new();
        // The read buffer bounds a request head (431 above it). Header and
        // idle timeouts are the watchdog's (it also covers HTTP/2).
        http1.max_buf_size(self.limits.head_bytes);
        let served = http1
            .serve_connection(TokioIo::new(io), self.service(true))
            .without_shutdown();
        if let Some(Ok(parts)) = self.watch(served).await {
            linger(parts.io.into_inner()).await;
        }
    }

    async fn serve_http2<IO>(self, io: IO)
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let io = Watched {
            inner: io,
            conn: None,
        };
        let l = &self.limits;
        let mut http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        http2
            .max_concurrent_streams(l.h2_max_concurrent_streams)
            .initial_stream_window_size(l.h2_stream_window)
            .initial_connection_window_size(l.h2_connection_window)
            .max_header_list_size(l.head_bytes as u32)
            // Cairn's responses are small; this bounds what a client that
            // does not read them can make the server hold, per stream.
            .max_send_buf_size(64 * 1024);
        let served = http2.serve_connection(TokioIo::new(io), self.service(false));
        self.watch(served).await;
    }

    /// Drives the connection until it ends (its output), its deadline
    /// passes or the cap evicts it (`None`); dropping it closes the socket.
    async fn watch<F: Future>(&self, served: F) -> Option<F::Output> {
        tokio::pin!(served);
        loop {
            let mut deadline = self.state.deadline_ms(&self.limits);
            if self.conns.draining()
                && self.state.requests.load(Ordering::Acquire) == 0
                && self.state.head_since.load(Ordering::Acquire) == 0
            {
                let settle =
                    self.state.idle_since.load(Ordering::Acquire) + DRAIN_SETTLE.as_millis() as u64;
                if settle <= self.conns.now_ms() {
                    return None;
                }
                deadline = Some(deadline.map_or(settle, |d| d.min(settle)));
            }
            let sleep = async {
                match deadline {
                    Some(ms) => tokio::time::sleep_until(self.conns.instant(ms)).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                out = &mut served => return Some(out),
                _ = self.state.evicted.notified() => return None,
                _ = self.state.changed.notified() => {}
                _ = sleep => {
                    let now = self.conns.now_ms();
                    if self.state.deadline_ms(&self.limits).is_some_and(|d| d <= now) {
                        return None;
                    }
                    // Draining: the loop's top decides.
                }
            }
        }
    }

    /// The app, with the peer address, the request counted while its
    /// handler runs, and its body under the body timeout.
    fn service(
        &self,
        http1: bool,
    ) -> impl hyper::service::Service<
        hyper::Request<Incoming>,
        Response = axum::response::Response,
        Error = std::convert::Infallible,
        Future = impl Future<Output = Result<axum::response::Response, std::convert::Infallible>> + Send,
    > + Clone {
        let conn = self.clone();
        hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
            let running = RequestRunning::begin(&conn);
            let (mut parts, body) = req.into_parts();
            parts.extensions.insert(ConnectInfo(conn.peer));
            let body = TimedBody::new(body, &conn);
            let req = hyper::Request::from_parts(parts, axum::body::Body::new(body));
            let response = conn.app.clone().oneshot(req);
            let state = conn.state.clone();
            let conns = conn.conns.clone();
            async move {
                let mut r = response.await;
                drop(running);
                // hyper closes an HTTP/1 connection whose request body was
                // not read, but does not say so: without this the client
                // would reuse it and see its next request fail. (HTTP/2
                // resets just the stream, and forbids the header.)
                if let Ok(resp) = &mut r {
                    let draining = conns.draining();
                    if http1 && (state.body_abandoned.swap(false, Ordering::AcqRel) || draining) {
                        resp.headers_mut().insert(
                            http::header::CONNECTION,
                            http::HeaderValue::from_static("close"),
                        );
                    }
                }
                r
            }
        })
    }
}

/// How long, and how many bytes, a closing HTTP/1 connection still reads
/// and discards what the client sends.
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 1 << 20;

/// Closes an HTTP/1 connection the way nginx's lingering close does: end
/// the response stream (TLS close_notify, FIN), then read and discard what
/// the client is still sending for a moment. Closing with unread input
/// makes the kernel send a reset, and a client still writing the body of
/// a request answered early (413 from the header) would lose the answer.
async fn linger<IO: AsyncRead + AsyncWrite + Unpin>(mut io: IO) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = tokio::time::timeout(LINGER, async {
        io.shutdown().await?;
        let mut buf = [0u8; 8192];
        let mut discarded = 0;
        while discarded < LINGER_BYTES {
            match io.read(&mut buf).await? {
                0 => break,
                n => discarded += n,
            }
        }
        Ok::<_, std::io::Error>(())
    })
    .await;
}

/// A request whose handler runs; the connection is idle again when the
/// last one ends.
struct RequestRunning(Conn);

impl RequestRunning {
    fn begin(conn: &Conn) -> RequestRunning {
        conn.state.requests.fetch_add(1, Ordering::AcqRel);
        conn.state.head_since.store(0, Ordering::Release);
        RequestRunning(conn.clone())
    }
}

impl Drop for RequestRunning {
    fn drop(&mut self) {
        let s = &self.0.state;
        s.idle_since.store(self.0.conns.now_ms(), Ordering::Release);
        if s.requests.fetch_sub(1, Ordering::AcqRel) == 1 {
            s.changed.notify_one();
        }
    }
}

/// The request body did not arrive within `server.body_timeout_secs`.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {} s", .0.as_secs())]
pub struct BodyTimeout(pub Duration);

/// A request body that fails with `BodyTimeout` once the body timeout
/// (counted from the request's head) passes, and counts as "receiving"
/// until it ends.
struct TimedBody {
    inner: Incoming,
    deadline: Pin<Box<tokio::time::Sleep>>,
    timeout: Duration,
    receiving: Option<Receiving>,
}

struct Receiving(Arc<ConnState>);

impl Drop for Receiving {
    fn drop(&mut self) {
        self.0.receiving.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Drop for TimedBody {
    fn drop(&mut self) {
        if let Some(r) = &self.receiving {
            r.0.body_abandoned.store(true, Ordering::Release);
        }
    }
}

impl TimedBody {
    fn new(inner: Incoming, conn: &Conn) -> TimedBody {
        let receiving = (!inner.is_end_stream()).then(|| {
            conn.state.receiving.fetch_add(1, Ordering::AcqRel);
            Receiving(conn.state.clone())
        });
        TimedBody {
            inner,
            deadline: Box::pin(tokio::time::sleep(conn.limits.body)),
            timeout: conn.limits.body,
            receiving,
        }
    }
}

impl Body for TimedBody {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if this.receiving.is_none() {
            return Pin::new(&mut this.inner).poll_frame(cx).map_err(Into::into);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if this.inner.is_end_stream() {
                    this.receiving = None;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(other) => {
                this.receiving = None;
                Poll::Ready(other.map(|r| r.map_err(Into::into)))
            }
            Poll::Pending => {
                if this.deadline.as_mut().poll(cx).is_ready() {
                    if let Some(r) = this.receiving.take() {
                        r.0.body_abandoned.store(true, Ordering::Release);
                    }
                    return Poll::Ready(Some(Err(BodyTimeout(this.timeout).into())));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The connection's stream; on HTTP/1 it notes when the first byte of a
/// request head arrives, which starts the header timeout.
struct Watched<IO> {
    inner: IO,
    /// HTTP/1 only (HTTP/2 control frames are no request head).
    conn: Option<Conn>,
}

impl<IO: AsyncRead + Unpin> AsyncRead for Watched<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let (Some(c), Poll::Ready(Ok(()))) = (&this.conn, &r) {
            let s = &c.state;
            if buf.filled().len() > before
                && s.requests.load(Ordering::Acquire) == 0
                && s.head_since.load(Ordering::Acquire) == 0
            {
                s.head_since.store(c.conns.now_ms() + 1, Ordering::Release);
                s.changed.notify_one();
            }
        }
        r
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Watched<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
