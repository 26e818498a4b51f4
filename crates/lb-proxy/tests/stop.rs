//! The server's stop: a request still running when the grace period ends is cut off, and is
//! over when `serve` returns, over HTTP/1.1 and HTTP/2 alike.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::Request;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use lb_backend::TestBackend;
use lb_core::{Pool, RoundRobin};
use lb_proxy::{Proxy, Server};
use tokio::net::TcpListener;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_cut_off_at_the_hard_stop_is_over_when_serve_returns() {
    let backend = TestBackend::start("127.0.0.1:0".parse().unwrap(), None)
        .await
        .unwrap();
    let url = format!("http://{}", backend.local_addr());
    for http2 in [false, true] {
        let pool = Arc::new(Pool::new([url.parse().unwrap()], RoundRobin::new()).unwrap());
        let proxy = Proxy::builder(Arc::clone(&pool)).build().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = Server::new(proxy).grace_period(Duration::from_millis(200));
        let serving = tokio::spawn(server.serve(listener, async {
            let _ = stopped.await;
        }));

        let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
            .http2_only(http2)
            .build_http();
        let request = Request::get(format!("http://{addr}/delay/5000"))
            .body(Full::default())
            .unwrap();
        let in_flight = tokio::spawn(client.request(request));
        let backend_in_use = || pool.load().backends()[0].in_flight();
        let deadline = Instant::now() + Duration::from_secs(5);
        while backend_in_use() == 0 {
            assert!(
                Instant::now() < deadline,
                "the request never reached the backend"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }

        let _ = stop.send(());
        tokio::time::timeout(Duration::from_secs(3), serving)
            .await
            .expect("serve did not return after the grace period")
            .unwrap();
        // The request's work ended with the server, not with the backend's answer.
        assert_eq!(backend_in_use(), 0, "http2: {http2}");
        assert!(in_flight.await.unwrap().is_err(), "http2: {http2}");
    }
}
