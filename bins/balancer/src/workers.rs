//! Workers: one single-threaded tokio runtime per worker, each with its own listener
//! (`SO_REUSEPORT`) and its own upstream connections, sharing only the pool and the counter.
//!
//! Worker 0 is the main thread itself, beside the control tasks (signals, health checks, admin),
//! which cost it next to nothing; workers 1.. get threads of their own. With one worker the
//! balancer is a single thread, as nginx and HAProxy are: one stack and one malloc arena fewer.

use std::io;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::thread::JoinHandle;

use lb_proxy::{Proxy, Server};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::access_log;

/// Binds `count` listening sockets on `addr` (the same port for all, also when `addr` asks for
/// port 0); an address in use, even by another balancer, is refused.
pub(crate) fn bind(addr: SocketAddr, count: usize) -> Result<Vec<StdListener>, String> {
    lb_proxy::bind_listeners(addr, count).map_err(|e| format!("cannot listen on {addr}: {e}"))
}

/// One worker: serves until told to stop, then writes out its part of the access log.
async fn serve(
    server: Server,
    listener: TcpListener,
    mut stopped: watch::Receiver<bool>,
    access_log: bool,
) {
    let flusher = access_log.then(|| tokio::spawn(access_log::flush_periodically()));
    let shutdown = async move {
        let _ = stopped.wait_for(|stop| *stop).await;
    };
    server.serve(listener, shutdown).await;
    if let Some(flusher) = flusher {
        flusher.abort();
        access_log::flush();
    }
}

/// Running workers.
pub(crate) struct Workers {
    stop: watch::Sender<bool>,
    main: tokio::task::JoinHandle<()>,
    threads: Vec<JoinHandle<()>>,
}

impl Workers {
    /// Starts one worker per listener, each serving its own [`Proxy::worker`] with the settings
    /// of `server`: the first on the current (main thread's) runtime, the others on threads.
    pub(crate) fn start(
        listeners: Vec<StdListener>,
        proxy: &Proxy,
        server: &Server,
        access_log: bool,
    ) -> io::Result<Workers> {
        let (stop, stopped) = watch::channel(false);
        let mut listeners = listeners.into_iter();
        let first = listeners
            .next()
            .ok_or_else(|| io::Error::other("no listener"))
            .and_then(TcpListener::from_std)?;
        let main = tokio::spawn(serve(
            server.clone().proxy(proxy.worker()),
            first,
            stopped.clone(),
            access_log,
        ));
        let mut threads = Vec::new();
        for (i, listener) in listeners.enumerate() {
            let i = i + 1;
            let server = server.clone().proxy(proxy.worker());
            let stopped = stopped.clone();
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let thread = std::thread::Builder::new()
                .name(format!("lb-worker-{i}"))
                .spawn(move || {
                    runtime.block_on(async move {
                        match TcpListener::from_std(listener) {
                            Ok(listener) => serve(server, listener, stopped, access_log).await,
                            Err(error) => tracing::error!(%error, "worker cannot listen"),
                        }
                    });
                })?;
            threads.push(thread);
        }
        Ok(Workers {
            stop,
            main,
            threads,
        })
    }

    /// Tells every worker to stop accepting and drain, and waits until all have finished.
    pub(crate) async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.main.await;
        let threads = self.threads;
        if threads.is_empty() {
            return;
        }
        let _ = tokio::task::spawn_blocking(move || {
            for thread in threads {
                let _ = thread.join();
            }
        })
        .await;
    }
}
