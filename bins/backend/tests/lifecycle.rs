//! How a backend stops: `/reset`, `kill`, graceful `shutdown`, drop, and a taken address.

mod support;

use std::{net::SocketAddr, time::Duration};

use http::StatusCode;
use lb_backend::TestBackend;
use support::{WAIT, get, raw, read_until_ends_with, refused, start, within};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    time::Instant,
};

/// Waits (bounded) until the backend has seen `n` requests.
async fn until_requests(backend: &TestBackend, n: u64) {
    within("request to arrive", async {
        while backend.requests() < n {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn reset_closes_the_connection_without_a_response() {
    let backend = start("reset").await;
    let addr = backend.local_addr();
    // EOF or a reset are both fine; a single byte of response is not.
    let received = raw(addr, b"GET /reset HTTP/1.1\r\nhost: x\r\n\r\n").await;
    assert!(
        received.as_ref().map_or(true, Vec::is_empty),
        "got a response: {:?}",
        received.map(|b| String::from_utf8_lossy(&b).into_owned())
    );
    // The backend itself is fine.
    assert_eq!(get(addr, "/ping").await.status, StatusCode::OK);
}

#[tokio::test]
async fn kill_refuses_new_connections_and_closes_idle_keep_alive_ones() {
    let backend = start("k").await;
    let addr = backend.local_addr();
    let mut idle = within("connect", TcpStream::connect(addr))
        .await
        .expect("connect");
    idle.write_all(b"GET /ping HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .expect("write");
    let mut received = Vec::new();
    read_until_ends_with(&mut idle, &mut received, b"pong from k\n").await;
    // The connection is now idle, kept alive by the server.

    within("kill", backend.kill()).await;

    let mut buf = [0u8; 64];
    match within("read after kill", idle.read(&mut buf)).await {
        Ok(0) | Err(_) => {}
        Ok(n) => panic!("read {n} bytes from a killed backend"),
    }
    let err = TcpStream::connect(addr)
        .await
        .expect_err("port still open after kill");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
}

#[tokio::test]
async fn kill_closes_in_flight_requests() {
    let backend = start("k").await;
    let addr = backend.local_addr();
    let slow = tokio::spawn(raw(addr, b"GET /delay/60000 HTTP/1.1\r\nhost: x\r\n\r\n"));
    until_requests(&backend, 1).await;
    within("kill", backend.kill()).await;
    let received = within("in-flight request", slow).await.expect("task");
    assert!(received.map_or(true, |b| b.is_empty()));
}

#[tokio::test]
async fn kill_closes_h2c_connections_with_streams_in_flight() {
    let backend = start("k").await;
    let addr = backend.local_addr();
    let stream = within("connect", TcpStream::connect(addr))
        .await
        .expect("connect");
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .expect("h2c handshake");
    let connection = tokio::spawn(connection);
    let request = http::Request::builder()
        .uri(format!("http://{addr}/delay/60000"))
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .expect("request");
    let in_flight = tokio::spawn(async move { sender.send_request(request).await });
    until_requests(&backend, 1).await;

    within("kill", backend.kill()).await;

    let response = within("in-flight h2 request", in_flight)
        .await
        .expect("task");
    assert!(
        response.is_err(),
        "a response from a killed backend: {response:?}"
    );
    within("h2 connection to end", connection)
        .await
        .expect("task")
        .ok();
}

#[tokio::test]
async fn graceful_shutdown_lets_an_in_flight_request_finish() {
    let backend = start("g").await;
    let addr = backend.local_addr();
    let in_flight = tokio::spawn(async move { get(addr, "/delay/300").await });
    until_requests(&backend, 1).await;

    within("shutdown", backend.shutdown(Duration::from_secs(5))).await;

    let reply = within("in-flight request", in_flight).await.expect("task");
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.text(), "delayed 300 ms\n");
    assert_eq!(reply.header("x-backend-id"), Some("g"));
    let err = TcpStream::connect(addr)
        .await
        .expect_err("port still open after shutdown");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
}

#[tokio::test]
async fn graceful_shutdown_closes_idle_connections_at_once() {
    let backend = start("g").await;
    let addr = backend.local_addr();
    let mut idle = within("connect", TcpStream::connect(addr))
        .await
        .expect("connect");
    idle.write_all(b"GET /ping HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .expect("write");
    let mut received = Vec::new();
    read_until_ends_with(&mut idle, &mut received, b"pong from g\n").await;

    let started = Instant::now();
    within("shutdown", backend.shutdown(WAIT)).await;
    // Nothing was in flight, so the grace period was not needed.
    assert!(started.elapsed() < WAIT);
    let mut buf = [0u8; 64];
    assert!(matches!(
        within("read", idle.read(&mut buf)).await,
        Ok(0) | Err(_)
    ));
}

#[tokio::test]
async fn graceful_shutdown_is_bounded_by_its_grace() {
    let backend = start("g").await;
    let addr = backend.local_addr();
    let stuck = tokio::spawn(raw(addr, b"GET /delay/60000 HTTP/1.1\r\nhost: x\r\n\r\n"));
    until_requests(&backend, 1).await;

    // Returns once the grace runs out, not after the minute-long request.
    within("shutdown", backend.shutdown(Duration::from_millis(200))).await;

    let received = within("stuck request", stuck).await.expect("task");
    assert!(received.map_or(true, |b| b.is_empty()));
    assert!(refused(addr).await);
}

#[tokio::test]
async fn dropping_a_backend_stops_it() {
    let backend = start("d").await;
    let addr = backend.local_addr();
    assert_eq!(get(addr, "/ping").await.status, StatusCode::OK);
    drop(backend);
    assert!(refused(addr).await, "port {addr} still accepts after drop");
}

#[tokio::test]
async fn an_address_in_use_is_an_error_that_names_it() {
    let taken = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = taken.local_addr().expect("local addr");
    let err = TestBackend::start(addr, None)
        .await
        .expect_err("address is taken");
    assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);
    assert!(err.to_string().contains(&addr.to_string()), "{err}");
}

#[tokio::test]
async fn from_listener_serves_on_the_given_listener() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr: SocketAddr = listener.local_addr().expect("local addr");
    let backend = TestBackend::from_listener(listener, Some("given".into())).expect("serve");
    assert_eq!(backend.local_addr(), addr);
    assert_eq!(backend.id(), "given");
    assert_eq!(get(addr, "/ping").await.text(), "pong from given\n");
    assert!(format!("{backend:?}").contains("given"));
}

#[tokio::test]
async fn an_id_that_cannot_be_a_header_is_refused() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let err = TestBackend::from_listener(listener, Some("bad\nid".into())).expect_err("newline");
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
}
