//! Idle upstream connections are closed after the idle timeout even when no request comes to
//! reuse (or expire) them.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use lb_core::{Pool, RoundRobin};
use lb_proxy::{Proxy, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// A backend that answers one request per connection, keeps the connection open, and reports
/// when the proxy closes it.
async fn backend() -> (String, mpsc::UnboundedReceiver<Instant>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (closed, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let closed = closed.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut answered = false;
                loop {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => {
                            let _ = closed.send(Instant::now());
                            return;
                        }
                        Ok(_) if !answered => {
                            answered = true;
                            let _ = stream
                                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                                .await;
                        }
                        Ok(_) => {}
                    }
                }
            });
        }
    });
    (url, rx)
}

#[tokio::test]
async fn idle_connections_are_closed_after_the_idle_timeout() {
    let (url, mut closed) = backend().await;
    let pool = Arc::new(Pool::new([url.parse().unwrap()], RoundRobin::new()).unwrap());
    let proxy = Proxy::builder(pool)
        .idle_timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(Server::new(proxy.clone()).serve(listener, async {
        let _ = stopped.await;
    }));

    let mut client = TcpStream::connect(addr).await.unwrap();
    client
        .write_all(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    client.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let idle_since = Instant::now();
    assert_eq!(proxy.upstream_connections_opened(), 1);

    // Nothing else uses the connection: the reaper must close it (idle timeout 1 s, checks
    // every second), well before a backend's own keep-alive timeout would.
    let at = tokio::time::timeout(Duration::from_secs(10), closed.recv())
        .await
        .expect("the idle connection was closed")
        .unwrap();
    let idle_for = at - idle_since;
    assert!(
        idle_for >= Duration::from_millis(900),
        "closed too early: {idle_for:?}"
    );

    let _ = stop.send(());
    server.await.unwrap();
}
