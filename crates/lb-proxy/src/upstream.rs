//! Connections to backends: opened on demand, kept alive, reused.
//!
//! HTTP/1.1 backends get a list of idle connections each, reused newest first; h2c backends one
//! shared connection each, on which requests are multiplexed.
//!
//! A small pool of our own rather than hyper-util's legacy `Client`, for two reasons. Taking a
//! connection is separate from sending on it, so a connect failure leaves the request untouched
//! and it can go to another backend, body and all (the legacy client consumes the request before
//! it knows whether it can connect). And a connection goes back to the pool when the response
//! body ends, in the task that read it, with no extra task or channel per request.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once, PoisonError, Weak};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::uri::{Authority, Scheme, Uri};
use http::{Request, Response, Version};
use hyper::body::Incoming;
use hyper::client::conn::{TrySendError, http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use lb_core::{Address, Backend, Pool, Protocol};
use rustc_hash::FxBuildHasher;
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep, timeout};
use tokio_util::either::Either;

use crate::ProxyError;
use crate::body::RequestBody;
use crate::coalesce::Coalesced;

/// Settings of the upstream connection pool.
#[derive(Debug, Clone)]
pub(crate) struct UpstreamConfig {
    pub(crate) connect_timeout: Duration,
    pub(crate) idle_timeout: Duration,
    pub(crate) max_idle_per_backend: usize,
    /// Idle connections to backends no longer in this pool (a reload removed them) are closed
    /// by the reaper.
    pub(crate) pool: Arc<Pool>,
}

/// Keep-alive connections to every backend, keyed by [`Backend::key`].
#[derive(Clone)]
pub(crate) struct Upstream {
    shared: Arc<Shared>,
}

struct Shared {
    slots: Mutex<HashMap<u64, Slot, FxBuildHasher>>,
    config: UpstreamConfig,
    /// Shared with the pools made by [`Upstream::fresh`], so it counts for all of them.
    opened: Arc<AtomicU64>,
    reaper: Once,
}

/// What is kept for one backend.
#[derive(Default)]
struct Slot {
    /// HTTP/1.1: idle connections, oldest first.
    idle: VecDeque<Idle>,
    /// h2c: the shared connection.
    h2: Option<http2::SendRequest<RequestBody>>,
    /// h2c: held while connecting, so that requests arriving together share one connection.
    h2_connecting: Arc<tokio::sync::Mutex<()>>,
}

struct Idle {
    sender: http1::SendRequest<RequestBody>,
    timer: ResponseTimer,
    since: Instant,
}

/// The response timeout's timer, kept with an HTTP/1.1 connection for its whole life, so that a
/// request re-arms no timer: it waits on whatever deadline the timer has, and only when that
/// comes too early (at most once per timeout period) sets it again. A fresh timer per request
/// cost ~650 instructions (registering it in tokio's timer wheel and removing it again).
#[derive(Debug)]
pub(crate) struct ResponseTimer(Pin<Box<Sleep>>);

impl ResponseTimer {
    fn new() -> Self {
        ResponseTimer(Box::pin(tokio::time::sleep_until(Instant::now())))
    }

    /// Ready once `deadline` has passed. A poll function rather than an `async fn`: the
    /// request's future holds the wait, and this way it is two pointers.
    pub(crate) fn poll_until(&mut self, cx: &mut Context<'_>, deadline: Instant) -> Poll<()> {
        if self.0.deadline() > deadline {
            self.0.as_mut().reset(deadline);
        }
        loop {
            ready!(self.0.as_mut().poll(cx));
            if Instant::now() >= deadline {
                return Poll::Ready(());
            }
            self.0.as_mut().reset(deadline);
        }
    }
}

impl Shared {
    fn slots(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Slot, FxBuildHasher>> {
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Closes idle connections past the idle timeout, drops closed h2 connections, and forgets
    /// backends with nothing left.
    fn reap(&self) {
        let now = Instant::now();
        let snapshot = self.config.pool.load();
        self.slots().retain(|key, slot| {
            if !snapshot.backends().iter().any(|b| b.key() == *key) {
                return false;
            }
            slot.idle.retain(|e| {
                now.duration_since(e.since) < self.config.idle_timeout && !e.sender.is_closed()
            });
            if slot.h2.as_ref().is_some_and(http2::SendRequest::is_closed) {
                slot.h2 = None;
            }
            !slot.idle.is_empty() || slot.h2.is_some()
        });
    }
}

/// Reaps `shared` every half idle timeout (between 1 s and 30 s) for as long as the pool
/// exists: it holds only a weak reference, and ends at the first tick after the pool is gone.
async fn reap_while_alive(shared: Weak<Shared>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tick.tick().await;
        match shared.upgrade() {
            Some(shared) => shared.reap(),
            None => return,
        }
    }
}

impl Upstream {
    pub(crate) fn new(config: UpstreamConfig) -> Self {
        Upstream::with_counter(config, Arc::new(AtomicU64::new(0)))
    }

    fn with_counter(config: UpstreamConfig, opened: Arc<AtomicU64>) -> Self {
        Upstream {
            shared: Arc::new(Shared {
                slots: Mutex::new(HashMap::default()),
                config,
                opened,
                reaper: Once::new(),
            }),
        }
    }

    /// An empty pool with the same settings, counting into the same total of opened
    /// connections.
    pub(crate) fn fresh(&self) -> Self {
        Upstream::with_counter(self.shared.config.clone(), Arc::clone(&self.shared.opened))
    }

    /// Connections opened since start; with the request count it shows how well they are reused.
    pub(crate) fn connections_opened(&self) -> u64 {
        self.shared.opened.load(Ordering::Relaxed)
    }

    /// Connects, except to an h2c backend another request is already connecting to: then waits
    /// for that connection and shares it. For when [`kept`](Self::kept) has none.
    pub(crate) async fn connect_or_join(&self, backend: &Backend) -> Result<Conn, ProxyError> {
        if backend.protocol() == Protocol::Http1 {
            return self.connect(backend).await;
        }
        let gate = Arc::clone(
            &self
                .shared
                .slots()
                .entry(backend.key())
                .or_default()
                .h2_connecting,
        );
        let _turn = gate.lock().await;
        match self.kept(backend, Instant::now()) {
            Some(conn) => Ok(conn),
            None => self.connect(backend).await,
        }
    }

    /// The newest ready idle HTTP/1.1 connection, or the shared h2c connection, to `backend`,
    /// at `now`.
    pub(crate) fn kept(&self, backend: &Backend, now: Instant) -> Option<Conn> {
        let mut slots = self.shared.slots();
        let slot = slots.get_mut(&backend.key())?;
        let sender = match backend.protocol() {
            Protocol::Http1 => {
                let (sender, timer) =
                    take_ready(&mut slot.idle, self.shared.config.idle_timeout, now)?;
                Sender::H1(sender, timer)
            }
            Protocol::H2c => match &slot.h2 {
                Some(h2) if !h2.is_closed() => Sender::H2(h2.clone(), ResponseTimer::new()),
                _ => return None,
            },
        };
        Some(Conn {
            sender,
            key: backend.key(),
            reused: true,
            pool: Arc::clone(&self.shared),
        })
    }

    /// A new connection to `backend`, bypassing the kept ones. An h2c connection becomes the
    /// backend's shared one.
    pub(crate) async fn connect(&self, backend: &Backend) -> Result<Conn, ProxyError> {
        let connect_timeout = self.shared.config.connect_timeout;
        let connecting = async {
            match backend.address() {
                Address::Ip(addr) => TcpStream::connect(addr).await,
                Address::Name(host, port) => TcpStream::connect((host.as_str(), *port)).await,
            }
        };
        let stream = match timeout(connect_timeout, connecting).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(source)) => {
                return Err(ProxyError::Connect {
                    backend: backend.id().to_owned(),
                    source,
                });
            }
            Err(_) => {
                return Err(ProxyError::ConnectTimeout {
                    backend: backend.id().to_owned(),
                    timeout: connect_timeout,
                });
            }
        };
        let _ = stream.set_nodelay(true);
        let id = backend.id().to_owned();
        let failed = |source| ProxyError::Upstream {
            backend: backend.id().to_owned(),
            source,
        };
        let sender = match backend.protocol() {
            Protocol::Http1 => {
                let (sender, conn) = http1::Builder::new()
                    .handshake(TokioIo::new(Coalesced(stream)))
                    .await
                    .map_err(failed)?;
                tokio::spawn(async move {
                    if let Err(e) = conn.with_upgrades().await {
                        tracing::debug!(backend = %id, error = %e, "upstream connection ended with an error");
                    }
                });
                Sender::H1(sender, ResponseTimer::new())
            }
            Protocol::H2c => {
                let (sender, conn) = http2::Builder::new(TokioExecutor::new())
                    .timer(TokioTimer::new())
                    .handshake(TokioIo::new(Coalesced(stream)))
                    .await
                    .map_err(failed)?;
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(backend = %id, error = %e, "upstream h2 connection ended with an error");
                    }
                });
                self.shared.slots().entry(backend.key()).or_default().h2 = Some(sender.clone());
                Sender::H2(sender, ResponseTimer::new())
            }
        };
        self.shared.opened.fetch_add(1, Ordering::Relaxed);
        backend.stats().record_connection();
        self.shared.reaper.call_once(|| {
            let every = (self.shared.config.idle_timeout / 2)
                .clamp(Duration::from_secs(1), Duration::from_secs(30));
            tokio::spawn(reap_while_alive(Arc::downgrade(&self.shared), every));
        });
        Ok(Conn {
            sender,
            key: backend.key(),
            reused: false,
            pool: Arc::clone(&self.shared),
        })
    }
}

/// Newest ready connection first; closed or expired ones met on the way are dropped, busy ones
/// (a response still finishing on them) are left in place.
fn take_ready(
    idle: &mut VecDeque<Idle>,
    idle_timeout: Duration,
    now: Instant,
) -> Option<(http1::SendRequest<RequestBody>, ResponseTimer)> {
    let mut i = idle.len();
    while i > 0 {
        i -= 1;
        let entry = &idle[i];
        if now.duration_since(entry.since) >= idle_timeout || entry.sender.is_closed() {
            idle.remove(i);
        } else if entry.sender.is_ready() {
            return idle.remove(i).map(|e| (e.sender, e.timer));
        }
    }
    None
}

impl fmt::Debug for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upstream")
            .field("config", &self.shared.config)
            .field("opened", &self.connections_opened())
            .finish()
    }
}

/// A connection's sender, with the timer its requests wait on (an h2c connection is shared by
/// concurrent requests, so each of them has a timer of its own).
enum Sender {
    H1(http1::SendRequest<RequestBody>, ResponseTimer),
    H2(http2::SendRequest<RequestBody>, ResponseTimer),
}

/// A connection taken from the pool (or just opened) for one request.
pub(crate) struct Conn {
    sender: Sender,
    key: u64,
    reused: bool,
    pool: Arc<Shared>,
}

impl Conn {
    /// True if this connection served an earlier request, so it may have been closed by the
    /// backend meanwhile.
    pub(crate) fn is_reused(&self) -> bool {
        self.reused
    }

    /// Sends a request, in the form the connection's protocol wants, and returns the response
    /// future with the connection's response timer. If the connection turns out to be closed
    /// before the request was written, the error hands the request back, so it can be sent
    /// elsewhere.
    pub(crate) fn send(
        &mut self,
        mut request: Request<RequestBody>,
    ) -> (
        impl Future<Output = Result<Response<Incoming>, TrySendError<Request<RequestBody>>>> + use<>,
        &mut ResponseTimer,
    ) {
        // `Either` rather than an `async` block around the two: that would hold the hyper
        // future twice (once captured, once awaited), in every request's future.
        match &mut self.sender {
            Sender::H1(sender, timer) => {
                to_http1(&mut request);
                (Either::Left(sender.try_send_request(request)), timer)
            }
            Sender::H2(sender, timer) => {
                to_http2(&mut request);
                (Either::Right(sender.try_send_request(request)), timer)
            }
        }
    }

    /// Returns an HTTP/1.1 connection to the pool, once its response has been read to the end.
    /// (An h2c connection stays shared in the pool all along.)
    pub(crate) fn release(self) {
        let Sender::H1(sender, timer) = self.sender else {
            return;
        };
        if sender.is_closed() {
            return;
        }
        let shared = &self.pool;
        let now = Instant::now();
        let mut slots = shared.slots();
        let idle = &mut slots.entry(self.key).or_default().idle;
        while idle
            .front()
            .is_some_and(|e| now.duration_since(e.since) >= shared.config.idle_timeout)
        {
            idle.pop_front();
        }
        if idle.len() >= shared.config.max_idle_per_backend {
            idle.pop_front();
        }
        if shared.config.max_idle_per_backend > 0 {
            idle.push_back(Idle {
                sender,
                timer,
                since: now,
            });
        }
    }
}

/// HTTP/1.1 wants an origin-form target and the host in `Host`. The proxy prepares requests so;
/// only one sent back unsent by an h2c connection needs turning back.
fn to_http1(request: &mut Request<RequestBody>) {
    if request.version() == Version::HTTP_11 && request.uri().authority().is_none() {
        return;
    }
    *request.version_mut() = Version::HTTP_11;
    if let Some(authority) = request.uri().authority()
        && let Ok(host) = HeaderValue::from_str(authority.as_str())
    {
        request.headers_mut().insert(header::HOST, host);
    }
    if let Some(target) = request.uri().path_and_query().cloned() {
        *request.uri_mut() = Uri::from(target);
    }
}

/// HTTP/2 carries the host in the `:authority` pseudo-header, built from the target's
/// scheme and authority, and has no `Host` (RFC 9113 §8.3.1). A request with no host at all
/// (HTTP/1.0 without `Host`) is left without one, and the h2 connection refuses it (502).
fn to_http2(request: &mut Request<RequestBody>) {
    *request.version_mut() = Version::HTTP_2;
    if request.uri().authority().is_some() {
        return;
    }
    let Some(authority) = request
        .headers()
        .get(header::HOST)
        .and_then(|host| Authority::try_from(host.as_bytes()).ok())
    else {
        return;
    };
    let target = request.uri().path_and_query().map_or("/", |t| t.as_str());
    if let Ok(uri) = Uri::builder()
        .scheme(Scheme::HTTP)
        .authority(authority)
        .path_and_query(target)
        .build()
    {
        *request.uri_mut() = uri;
        request.headers_mut().remove(header::HOST);
    }
}

impl fmt::Debug for Conn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let protocol = match self.sender {
            Sender::H1(..) => "http1",
            Sender::H2(..) => "h2c",
        };
        f.debug_struct("Conn")
            .field("protocol", &protocol)
            .field("key", &self.key)
            .field("reused", &self.reused)
            .finish()
    }
}
