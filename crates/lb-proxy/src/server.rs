//! Serving a [`Proxy`] on a TCP listener, with a graceful stop.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tokio_util::task::TaskTracker;

use crate::Proxy;
use crate::client_io::{ClientIo, ClientTimeouts, Protocol};
use crate::proxy::ProxyService;

/// Serves a [`Proxy`] on a listener: HTTP/1.1 and HTTP/2 with prior knowledge (h2c) on the
/// same port, WebSocket and other upgrades passed through.
///
/// Defaults: request headers up to 32 KiB in total (larger gets 431), 10 s to send a request
/// head once it has begun (slower gets 408 and the connection closed), idle keep-alive
/// connections closed after 60 s, a grace period of 30 s for in-flight requests at shutdown.
#[derive(Debug, Clone)]
pub struct Server {
    proxy: Proxy,
    max_header_bytes: usize,
    timeouts: ClientTimeouts,
    grace_period: Duration,
    /// Shared by clones, so that workers serving one listener address share one limit.
    max_connections: Option<Arc<Semaphore>>,
}

impl Server {
    /// A server for `proxy` with the defaults above.
    pub fn new(proxy: Proxy) -> Self {
        Server {
            proxy,
            max_header_bytes: 32 * 1024,
            timeouts: ClientTimeouts {
                idle: Duration::from_secs(60),
                header: Duration::from_secs(10),
            },
            grace_period: Duration::from_secs(30),
            max_connections: None,
        }
    }

    /// Most client connections open at once, across this server and its clones (default: no
    /// limit). At the limit no more are accepted until one closes: new ones wait in the
    /// kernel's listen backlog, as with HAProxy's `maxconn`. An upgraded (WebSocket) connection
    /// counts until it closes.
    pub fn max_connections(mut self, max: Option<usize>) -> Self {
        self.max_connections = max.map(|m| Arc::new(Semaphore::new(m)));
        self
    }

    /// Longest time from the first byte of a request head to its end (default 10 s): a client
    /// sending its headers slower than that (slowloris) gets 408 and the connection is closed.
    pub fn client_header_timeout(mut self, timeout: Duration) -> Self {
        self.timeouts.header = timeout;
        self
    }

    /// Longest time a client connection may wait with no request under way and nothing sent
    /// or received (default 60 s); then it is closed. Not applied to upgraded (WebSocket)
    /// connections, which may rightly be quiet for long.
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.timeouts.idle = timeout;
        self
    }

    /// The same server settings for another proxy, e.g. a [`Proxy::worker`].
    pub fn proxy(mut self, proxy: Proxy) -> Self {
        self.proxy = proxy;
        self
    }

    /// Largest request head (request line and headers) accepted; larger gets 431. At least 8 KiB.
    pub fn max_header_bytes(mut self, bytes: usize) -> Self {
        self.max_header_bytes = bytes.max(8 * 1024);
        self
    }

    /// How long in-flight requests may still run once shutdown starts (default 30 s).
    pub fn grace_period(mut self, grace: Duration) -> Self {
        self.grace_period = grace;
        self
    }

    /// Accepts connections until `shutdown` completes, then stops accepting at once, closes idle
    /// keep-alive connections, lets in-flight requests finish (up to the grace period), closes
    /// what is left and the upgraded (WebSocket) connections, and returns once every task it
    /// started has ended.
    pub async fn serve(self, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        let mut http1 = http1::Builder::new();
        http1
            .timer(TokioTimer::new())
            .max_buf_size(self.max_header_bytes)
            // The limit proper: the buffer's size alone lets a long head through when it
            // arrives whole in one read.
            .max_header_size(self.max_header_bytes)
            // ClientIo enforces the client timeouts without a timer per request.
            .header_read_timeout(None)
            // And notices a client that hangs up while its request is answered, with a peek
            // rather than hyper's read (which would take a new 8 KiB buffer per request).
            .half_close(true);
        let connections = TaskTracker::new();
        // HTTP/2 requests, each in a task of its own.
        let streams = TaskTracker::new();
        // Cancelled when shutdown starts: connections finish what is under way and close.
        let graceful = CancellationToken::new();
        // Cancelled when the grace period is over: connections close at once.
        let hard_stop = CancellationToken::new();
        let mut http2 = http2::Builder::new(StreamExecutor {
            tasks: streams.clone(),
            hard_stop: hard_stop.clone(),
        });
        http2
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(self.max_header_bytes).unwrap_or(u32::MAX));
        let protocols = Arc::new(Protocols { http1, http2 });
        let mut shutdown = pin!(shutdown);
        loop {
            let permit = match &self.max_connections {
                Some(limit) => tokio::select! {
                    () = &mut shutdown => break,
                    permit = Arc::clone(limit).acquire_owned() => permit.ok(),
                },
                None => None,
            };
            let (stream, client) = tokio::select! {
                () = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        pause_after_accept_error(&error).await;
                        continue;
                    }
                },
            };
            let _ = stream.set_nodelay(true);
            let io =
                ClientIo::new(stream, self.max_header_bytes, self.timeouts).with_permit(permit);
            let accepted = Accepted {
                protocols: Arc::clone(&protocols),
                io,
                service: self.proxy.service(client),
                client,
                graceful: graceful.clone().cancelled_owned(),
                hard_stop: hard_stop.clone().cancelled_owned(),
            };
            connections.spawn(accepted.serve());
        }
        drop(listener);
        tracing::info!(
            connections = connections.len(),
            "shutting down: finishing in-flight requests"
        );
        graceful.cancel();
        connections.close();
        streams.close();
        let finished = async {
            connections.wait().await;
            streams.wait().await;
        };
        if tokio::time::timeout(self.grace_period, finished)
            .await
            .is_err()
        {
            tracing::warn!(grace_period = ?self.grace_period, "grace period over, closing remaining connections");
        }
        hard_stop.cancel();
        connections.wait().await;
        streams.wait().await;
        self.proxy.close_upgraded_connections().await;
    }
}

/// The two protocols' settings, shared by every connection.
struct Protocols {
    http1: http1::Builder,
    http2: http2::Builder<StreamExecutor>,
}

/// Runs the task hyper's HTTP/2 server starts for each request as one of the server's own: the
/// server's stop waits for them, and its hard stop ends them, as it ends the HTTP/1.1 requests
/// it cuts off. (On their own they would end a little later, once a dropped connection's reset
/// reaches them, after `serve` has returned.)
#[derive(Clone)]
struct StreamExecutor {
    tasks: TaskTracker,
    hard_stop: CancellationToken,
}

impl<F: Future<Output = ()> + Send + 'static> hyper::rt::Executor<F> for StreamExecutor {
    fn execute(&self, stream: F) {
        let hard_stop = self.hard_stop.clone();
        self.tasks.spawn(async move {
            tokio::select! {
                () = stream => {}
                () = hard_stop.cancelled() => {}
            }
        });
    }
}

/// An accepted client connection, with what serving it needs.
struct Accepted {
    protocols: Arc<Protocols>,
    io: ClientIo<TcpStream>,
    service: ProxyService,
    client: SocketAddr,
    /// Shutdown has started: finish what is under way, then close.
    graceful: WaitForCancellationFutureOwned,
    /// The grace period is over: close at once.
    hard_stop: WaitForCancellationFutureOwned,
}

impl Accepted {
    /// Serves the connection with the protocol its first bytes tell, until it ends or is
    /// stopped. A connection that has not yet sent enough to tell is closed when shutdown
    /// starts.
    ///
    /// A function returning an `async` block that uses `self` in place: an `async fn` would
    /// keep its arguments twice in its future, which lives as long as the connection.
    #[expect(clippy::manual_async_fn, reason = "the point is the block's captures")]
    fn serve(mut self) -> impl Future<Output = ()> + Send + 'static {
        async move {
            let mut graceful = pin!(self.graceful);
            let protocol = tokio::select! {
                // A request that has arrived is served (with `Connection: close`), not dropped.
                biased;
                protocol = self.io.sniff() => protocol,
                () = &mut graceful => return,
            };
            let ended = match protocol {
                Ok(Protocol::Http1) => {
                    // Pinned here and lent: moved into `until_stopped`, it would take room
                    // twice in this future.
                    let conn = pin!(
                        self.protocols
                            .http1
                            .serve_connection(TokioIo::new(self.io), self.service)
                            .with_upgrades()
                    );
                    let hard = self.hard_stop;
                    until_stopped(conn, graceful, hard, |conn| conn.graceful_shutdown()).await
                }
                Ok(Protocol::Http2) => {
                    // Boxed: HTTP/1.1 connections, the many, need not make room for it.
                    let mut conn = Box::pin(
                        self.protocols
                            .http2
                            .serve_connection(TokioIo::new(self.io), self.service),
                    );
                    let hard = self.hard_stop;
                    until_stopped(conn.as_mut(), graceful, hard, |conn| {
                        conn.graceful_shutdown()
                    })
                    .await
                }
                Err(error) => Err(error.into()),
            };
            if let Err(error) = ended {
                tracing::debug!(client = %self.client, %error, "client connection ended with an error");
            }
        }
    }
}

/// Runs `conn` to its end; at the graceful stop asks it to finish (`shutdown`), at the hard stop
/// drops it.
async fn until_stopped<C>(
    mut conn: Pin<&mut C>,
    graceful: Pin<&mut WaitForCancellationFutureOwned>,
    hard: WaitForCancellationFutureOwned,
    shutdown: impl FnOnce(Pin<&mut C>),
) -> Result<(), Box<dyn std::error::Error + Send + Sync>>
where
    C: Future<Output = hyper::Result<()>>,
{
    tokio::select! {
        ended = conn.as_mut() => return Ok(ended?),
        () = graceful => shutdown(conn.as_mut()),
    }
    tokio::select! {
        ended = conn => Ok(ended?),
        () = hard => Ok(()),
    }
}

/// Serves `proxy` on `listener` with the [`Server`] defaults until `shutdown` completes.
pub async fn serve(listener: TcpListener, proxy: Proxy, shutdown: impl Future<Output = ()>) {
    Server::new(proxy).serve(listener, shutdown).await;
}

/// Errors about one connection (it was reset before we took it) are skipped at once; running out
/// of descriptors or memory is waited out briefly instead of spinning on it.
async fn pause_after_accept_error(error: &io::Error) {
    use io::ErrorKind::*;
    if matches!(
        error.kind(),
        ConnectionAborted | ConnectionReset | ConnectionRefused | Interrupted
    ) {
        return;
    }
    tracing::warn!(%error, "accept failed; pausing 50 ms");
    tokio::time::sleep(Duration::from_millis(50)).await;
}

/// Binds `count` listening sockets (at least one) on `addr`, one per worker thread, all on the
/// same port: the one the first is given when `addr` asks for port 0. They share it with
/// `SO_REUSEPORT`, so that the kernel spreads new connections among them. An address something
/// already listens on is refused (`AddrInUse`), as a plain bind refuses it, even when that
/// socket allows sharing too: a second balancer started there by mistake would otherwise
/// quietly take part of the connections. The sockets are non-blocking, ready for
/// [`TcpListener::from_std`], with a backlog of 4096 (capped by `net.core.somaxconn`).
pub fn bind_listeners(addr: SocketAddr, count: usize) -> io::Result<Vec<std::net::TcpListener>> {
    if addr.port() != 0 {
        // A socket that does not share ports binds only where nothing listens. It never
        // listens itself, so closing it leaves nothing behind.
        socket(addr)?.bind(&addr.into())?;
    }
    let first = bind_shared(addr)?;
    let port = first.local_addr()?.port();
    let mut all = vec![first];
    for _ in 1..count {
        all.push(bind_shared(SocketAddr::new(addr.ip(), port))?);
    }
    Ok(all)
}

/// A TCP socket for `addr`'s family that may bind an address still in `TIME_WAIT` (as std's
/// listeners do).
fn socket(addr: SocketAddr) -> io::Result<socket2::Socket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    Ok(socket)
}

/// A listening socket on `addr` that others may bind too.
fn bind_shared(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = socket(addr)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    Ok(socket.into())
}
