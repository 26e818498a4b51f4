//! Upstream connections are reused: HTTP/1.1 ones one request after another, h2c ones by many
//! requests at once.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use lb_backend::TestBackend;
use lb_core::{Pool, RoundRobin};
use lb_proxy::{Proxy, Server};
use tokio::net::TcpListener;

/// Runs `requests` requests through a proxy in front of one test backend spoken to as `scheme`,
/// `concurrency` at a time, and returns the upstream connections the proxy opened.
async fn connections_for(scheme: &str, requests: usize, concurrency: usize) -> u64 {
    let backend = TestBackend::start("127.0.0.1:0".parse().unwrap(), None)
        .await
        .unwrap();
    let url = format!("{scheme}://{}", backend.local_addr());
    let pool = Arc::new(Pool::new([url.parse().unwrap()], RoundRobin::new()).unwrap());
    let proxy = Proxy::builder(pool).build().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(Server::new(proxy.clone()).serve(listener, async {
        let _ = stopped.await;
    }));

    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    for _ in 0..requests / concurrency {
        let batch: Vec<_> = (0..concurrency)
            .map(|_| {
                let client = client.clone();
                tokio::spawn(async move {
                    let request = Request::get(format!("http://{addr}/delay/20"))
                        .body(Full::default())
                        .unwrap();
                    let response = client.request(request).await.unwrap();
                    assert_eq!(response.status(), 200);
                    response.into_body().collect().await.unwrap();
                })
            })
            .collect();
        for task in batch {
            task.await.unwrap();
        }
    }
    assert_eq!(proxy.requests_received(), requests as u64);
    let _ = stop.send(());
    server.await.unwrap();
    proxy.upstream_connections_opened()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_connections_are_kept_alive_and_reused() {
    // One at a time: one connection serves all.
    assert_eq!(connections_for("http", 50, 1).await, 1);
    // Ten at a time: ten connections, reused for every batch.
    assert_eq!(connections_for("http", 100, 10).await, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_multiplexes_concurrent_requests_on_one_connection() {
    assert_eq!(connections_for("h2c", 100, 20).await, 1);
}
