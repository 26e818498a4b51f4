//! Connections to backends: opened on demand, kept alive, reused newest first.
//!
//! A small pool of our own rather than hyper-util's legacy `Client`, for two reasons. Taking a
//! connection is separate from sending on it, so a connect failure leaves the request untouched
//! and it can go to another backend, body and all (the legacy client consumes the request before
//! it knows whether it can connect). And a connection goes back to the pool when the response
//! body ends, in the task that read it, with no extra task or channel per request.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once, PoisonError, Weak};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::{TrySendError, http1};
use hyper_util::rt::TokioIo;
use lb_core::{Address, Backend};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};

use crate::ProxyError;
use crate::body::RequestBody;

/// Settings of the upstream connection pool.
#[derive(Debug, Clone)]
pub(crate) struct UpstreamConfig {
    pub(crate) connect_timeout: Duration,
    pub(crate) idle_timeout: Duration,
    pub(crate) max_idle_per_backend: usize,
}

/// Keep-alive connections to every backend, keyed by [`Backend::key`].
#[derive(Clone)]
pub(crate) struct Upstream {
    shared: Arc<Shared>,
}

struct Shared {
    idle: Mutex<HashMap<u64, VecDeque<Idle>>>,
    config: UpstreamConfig,
    /// Shared with the pools made by [`Upstream::fresh`], so it counts for all of them.
    opened: Arc<AtomicU64>,
    reaper: Once,
}

impl Shared {
    /// Closes idle connections past the idle timeout and forgets backends with none left.
    fn reap(&self) {
        let now = Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        idle.retain(|_, list| {
            list.retain(|e| {
                now.duration_since(e.since) < self.config.idle_timeout && !e.sender.is_closed()
            });
            !list.is_empty()
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

struct Idle {
    sender: http1::SendRequest<RequestBody>,
    since: Instant,
}

impl Upstream {
    pub(crate) fn new(config: UpstreamConfig) -> Self {
        Upstream {
            shared: Arc::new(Shared {
                idle: Mutex::new(HashMap::new()),
                config,
                opened: Arc::new(AtomicU64::new(0)),
                reaper: Once::new(),
            }),
        }
    }

    /// An empty pool with the same settings, counting into the same total of opened
    /// connections.
    pub(crate) fn fresh(&self) -> Self {
        Upstream {
            shared: Arc::new(Shared {
                idle: Mutex::new(HashMap::new()),
                config: self.shared.config.clone(),
                opened: Arc::clone(&self.shared.opened),
                reaper: Once::new(),
            }),
        }
    }

    /// Connections opened since start; with the request count it shows how well they are reused.
    pub(crate) fn connections_opened(&self) -> u64 {
        self.shared.opened.load(Ordering::Relaxed)
    }

    /// An idle connection to `backend` if one is ready, else a new one.
    pub(crate) async fn checkout(&self, backend: &Backend) -> Result<Conn, ProxyError> {
        match self.idle(backend) {
            Some(conn) => Ok(conn),
            // Boxed: connecting is the rare path, and its future would otherwise make every
            // request's future (copied into a box per request) several hundred bytes larger.
            None => Box::pin(self.connect(backend)).await,
        }
    }

    /// The newest ready idle connection to `backend`, if any.
    pub(crate) fn idle(&self, backend: &Backend) -> Option<Conn> {
        self.take_idle(backend.key()).map(|sender| Conn {
            sender,
            key: backend.key(),
            reused: true,
            pool: Arc::clone(&self.shared),
        })
    }

    /// A new connection to `backend`, bypassing the idle ones.
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
        let (sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|source| ProxyError::Upstream {
                backend: backend.id().to_owned(),
                source,
            })?;
        let id = backend.id().to_owned();
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(backend = %id, error = %e, "upstream connection ended with an error");
            }
        });
        self.shared.opened.fetch_add(1, Ordering::Relaxed);
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

    /// Newest ready connection first; closed or expired ones met on the way are dropped, busy
    /// ones (a response still finishing on them) are left in place.
    fn take_idle(&self, key: u64) -> Option<http1::SendRequest<RequestBody>> {
        let mut idle = self
            .shared
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let list = idle.get_mut(&key)?;
        let now = Instant::now();
        let mut i = list.len();
        while i > 0 {
            i -= 1;
            let entry = &list[i];
            let expired = now.duration_since(entry.since) >= self.shared.config.idle_timeout;
            if expired || entry.sender.is_closed() {
                list.remove(i);
            } else if entry.sender.is_ready() {
                return list.remove(i).map(|e| e.sender);
            }
        }
        None
    }
}

impl fmt::Debug for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upstream")
            .field("config", &self.shared.config)
            .field("opened", &self.connections_opened())
            .finish()
    }
}

/// A connection taken from the pool (or just opened) for one request.
pub(crate) struct Conn {
    sender: http1::SendRequest<RequestBody>,
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

    /// Sends a request. If the connection turns out to be closed before the request was written,
    /// the error hands the request back, so it can be sent elsewhere.
    pub(crate) fn send(
        &mut self,
        request: Request<RequestBody>,
    ) -> impl Future<Output = Result<Response<Incoming>, TrySendError<Request<RequestBody>>>> + use<>
    {
        self.sender.try_send_request(request)
    }

    /// Returns the connection to the pool, once its response has been read to the end.
    pub(crate) fn release(self) {
        if self.sender.is_closed() {
            return;
        }
        let shared = &self.pool;
        let now = Instant::now();
        let mut idle = shared.idle.lock().unwrap_or_else(PoisonError::into_inner);
        let list = idle.entry(self.key).or_default();
        while list
            .front()
            .is_some_and(|e| now.duration_since(e.since) >= shared.config.idle_timeout)
        {
            list.pop_front();
        }
        if list.len() >= shared.config.max_idle_per_backend {
            list.pop_front();
        }
        if shared.config.max_idle_per_backend > 0 {
            list.push_back(Idle {
                sender: self.sender,
                since: now,
            });
        }
    }
}

impl fmt::Debug for Conn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Conn")
            .field("key", &self.key)
            .field("reused", &self.reused)
            .finish()
    }
}
