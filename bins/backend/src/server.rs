//! [`TestBackend`]: the listener, its connections, and how they stop.

use std::{fmt, io, net::SocketAddr, sync::Arc, time::Duration};

use hyper::service::service_fn;
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    server::{
        conn::auto,
        graceful::{GracefulShutdown, Watcher},
    },
};
use tokio::{
    net::{TcpListener, TcpStream},
    runtime::Handle,
    sync::watch,
    task::{JoinHandle, JoinSet},
    time::Instant,
};

use crate::{
    executor::{Lifeline, StreamExecutor},
    service::{self, Shared},
    ws::{self, UpgradeSlot},
};

/// How long to wait after a failed `accept` (say, out of file descriptors) before trying again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// How long a WebSocket gets to send its close frame when the backend stops.
pub(crate) const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// What the owner of a [`TestBackend`] asks of its tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Signal {
    /// Keep serving.
    Serve,
    /// Stop accepting, let in-flight requests finish for at most this long, then close.
    Drain(Duration),
    /// Close the listener and every connection now.
    Kill,
}

/// Resolves once the owner asks to stop, with how; an owner that is gone counts as a kill.
pub(crate) async fn stopped(signal: &mut watch::Receiver<Signal>) -> Signal {
    // The guard `wait_for` returns is not `Send`: copy the value out and drop it here.
    match signal.wait_for(|s| *s != Signal::Serve).await {
        Ok(guard) => *guard,
        Err(_) => Signal::Kill,
    }
}

/// A running test backend.
///
/// Serves HTTP/1.1 (with upgrades, for `/ws`) and HTTP/2 with prior knowledge (h2c) on one
/// port, on the tokio runtime it was started on. Stop it with [`shutdown`](Self::shutdown)
/// (graceful) or [`kill`](Self::kill) (a crash); dropping it aborts it like `kill`.
pub struct TestBackend {
    addr: SocketAddr,
    shared: Arc<Shared>,
    signal: watch::Sender<Signal>,
    runtime: Handle,
    task: Option<JoinHandle<()>>,
}

impl TestBackend {
    /// Binds `addr` (port 0 = ephemeral) and starts serving on the current tokio runtime.
    /// `id: None` = the bound address as text.
    ///
    /// Fails if the address cannot be bound (the error names it), if `id` cannot be sent as a
    /// header value, or if there is no current tokio runtime.
    pub async fn start(addr: SocketAddr, id: Option<String>) -> io::Result<TestBackend> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
        Self::from_listener(listener, id)
    }

    /// Serves on an already bound listener. `id: None` = its local address as text.
    pub fn from_listener(listener: TcpListener, id: Option<String>) -> io::Result<TestBackend> {
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::new(id.unwrap_or_else(|| addr.to_string()))?);
        let runtime = Handle::try_current().map_err(io::Error::other)?;
        let (signal, stop) = watch::channel(Signal::Serve);
        let task = runtime.spawn(accept_loop(listener, Arc::clone(&shared), stop));
        Ok(TestBackend {
            addr,
            shared,
            signal,
            runtime,
            task: Some(task),
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its name, as sent in `x-backend-id`.
    pub fn id(&self) -> &str {
        &self.shared.id
    }

    /// `http://ip:port`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Requests served so far (all of them: every path, every status, `/reset` included).
    pub fn requests(&self) -> u64 {
        self.shared.requests()
    }

    /// What `GET /health` answers: true = 200, false = 503 (same switch as
    /// `POST /health/up|down`).
    pub fn set_healthy(&self, healthy: bool) {
        self.shared.set_healthy(healthy);
    }

    /// Prints `<id>: served <N> requests` to stdout every `every` (at least 1 ms), only when
    /// the count changed since the last line. Stops when the backend stops.
    pub fn spawn_reporter(&self, every: Duration) {
        let every = every.max(Duration::from_millis(1));
        let shared = Arc::clone(&self.shared);
        let mut stop = self.signal.subscribe();
        self.runtime.spawn(async move {
            let mut ticks = tokio::time::interval_at(Instant::now() + every, every);
            let mut reported = 0;
            loop {
                tokio::select! {
                    _ = stopped(&mut stop) => return,
                    _ = ticks.tick() => {}
                }
                let served = shared.requests();
                if served != reported {
                    reported = served;
                    let line = format!("{}: served {served} requests\n", shared.id);
                    // A closed stdout must not take the server down.
                    let _ = io::Write::write_all(&mut io::stdout().lock(), line.as_bytes());
                }
            }
        });
    }

    /// Graceful: stop accepting, wait for in-flight requests (bounded by `grace`), then close.
    ///
    /// Idle keep-alive connections close at once, HTTP/2 ones get a GOAWAY, WebSockets a 1001
    /// close; whatever is still open when `grace` runs out is closed as by [`kill`](Self::kill).
    pub async fn shutdown(mut self, grace: Duration) {
        self.stop(Signal::Drain(grace)).await;
    }

    /// Hard stop, like a crash: the listener closes and every open connection (idle
    /// keep-alive ones included) is closed at once.
    ///
    /// When it returns, the port refuses connections and every socket has been closed.
    pub async fn kill(mut self) {
        self.stop(Signal::Kill).await;
    }

    async fn stop(&mut self, signal: Signal) {
        self.signal.send_replace(signal);
        if let Some(task) = self.task.take()
            && let Err(e) = task.await
        {
            tracing::error!("backend {} stopped abnormally: {e}", self.shared.id);
        }
    }
}

impl Drop for TestBackend {
    /// Aborts the accept task, which drops the listener and aborts every connection.
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

impl fmt::Debug for TestBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestBackend")
            .field("id", &self.shared.id)
            .field("addr", &self.addr)
            .field("requests", &self.shared.requests())
            .field("running", &self.task.is_some())
            .finish()
    }
}

/// Accepts until told to stop, then stops the connections as the signal says.
///
/// Owns every connection task in a [`JoinSet`], so dropping this future (when the task is
/// aborted) aborts them all.
async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<Signal>,
) {
    let (_lifeline, executor) = Lifeline::new();
    let mut builder = auto::Builder::new(executor);
    // No header read timeout: an idle keep-alive connection stays open until its client closes
    // it or the backend stops, so tests that reuse connections see no surprise closes.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(None);
    builder.http2().timer(TokioTimer::new());
    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = stopped(&mut stop) => break,
            Some(done) = connections.join_next(), if !connections.is_empty() => {
                if let Err(e) = done
                    && e.is_panic()
                {
                    tracing::error!("connection task panicked: {e}");
                }
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    connections.spawn(serve_connection(
                        stream,
                        builder.clone(),
                        Arc::clone(&shared),
                        graceful.watcher(),
                        stop.clone(),
                    ));
                }
                Err(e) => {
                    tracing::warn!("accept on {} failed: {e}; retrying", shared.id);
                    tokio::select! {
                        _ = stopped(&mut stop) => break,
                        () = tokio::time::sleep(ACCEPT_BACKOFF) => {}
                    }
                }
            },
        }
    }
    drop(listener);
    if let Signal::Drain(grace) = stopped(&mut stop).await {
        let drained = tokio::time::timeout(grace, async {
            graceful.shutdown().await;
            while connections.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::debug!("backend {}: grace of {grace:?} ran out", shared.id);
        }
    }
    connections.shutdown().await;
}

/// Serves one connection; if it upgrades to a WebSocket, runs that too.
async fn serve_connection(
    stream: TcpStream,
    builder: auto::Builder<StreamExecutor>,
    shared: Arc<Shared>,
    watcher: Watcher,
    stop: watch::Receiver<Signal>,
) {
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!("TCP_NODELAY: {e}");
    }
    let upgrade = UpgradeSlot::default();
    let service = {
        let upgrade = upgrade.clone();
        service_fn(move |request| service::handle(request, Arc::clone(&shared), upgrade.clone()))
    };
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
    if let Err(e) = watcher.watch(connection).await {
        tracing::debug!("connection closed: {e}");
    }
    if let Some(upgrade) = upgrade.take() {
        ws::serve(upgrade, stop).await;
    }
}
