//! Worker threads: one single-threaded tokio runtime per worker, each with its own listener
//! (`SO_REUSEPORT`) and its own upstream connections, sharing only the pool and the counter.

use std::io;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::thread::JoinHandle;

use lb_proxy::{Proxy, Server};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Binds `count` listening sockets on `addr` (the same port for all, also when `addr` asks for
/// port 0).
pub(crate) fn bind(addr: SocketAddr, count: usize) -> Result<Vec<StdListener>, String> {
    let fail = |e: io::Error| format!("cannot listen on {addr}: {e}");
    let first = lb_proxy::bind_reuseport(addr).map_err(fail)?;
    let actual = first.local_addr().map_err(fail)?;
    let mut all = vec![first];
    for _ in 1..count {
        all.push(lb_proxy::bind_reuseport(actual).map_err(fail)?);
    }
    Ok(all)
}

/// Running workers.
pub(crate) struct Workers {
    stop: watch::Sender<bool>,
    threads: Vec<JoinHandle<()>>,
}

impl Workers {
    /// Starts one worker thread per listener, each serving its own [`Proxy::worker`] with the
    /// settings of `server`.
    pub(crate) fn start(
        listeners: Vec<StdListener>,
        proxy: &Proxy,
        server: &Server,
    ) -> io::Result<Workers> {
        let (stop, stopped) = watch::channel(false);
        let mut threads = Vec::new();
        for (i, listener) in listeners.into_iter().enumerate() {
            let server = server.clone().proxy(proxy.worker());
            let mut stopped = stopped.clone();
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let thread = std::thread::Builder::new()
                .name(format!("lb-worker-{i}"))
                .spawn(move || {
                    runtime.block_on(async move {
                        let listener = match TcpListener::from_std(listener) {
                            Ok(listener) => listener,
                            Err(error) => return tracing::error!(%error, "worker cannot listen"),
                        };
                        let shutdown = async move {
                            let _ = stopped.wait_for(|stop| *stop).await;
                        };
                        server.serve(listener, shutdown).await;
                    });
                })?;
            threads.push(thread);
        }
        Ok(Workers { stop, threads })
    }

    /// Tells every worker to stop accepting and drain, and waits until all have finished.
    pub(crate) async fn stop(self) {
        let _ = self.stop.send(true);
        let threads = self.threads;
        let _ = tokio::task::spawn_blocking(move || {
            for thread in threads {
                let _ = thread.join();
            }
        })
        .await;
    }
}
