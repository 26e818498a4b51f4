//! Protection against slow and idle clients, and against overload.
#![allow(clippy::unwrap_used)]

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use support::*;

fn start(backends: &[TestBackend], extra: &[&str]) -> Balancer {
    let mut args = args_for(backends);
    args.extend(extra.iter().map(|s| s.to_string()));
    Balancer::start(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// Reads until the peer closes (or 10 s pass); returns what was read and when it closed.
fn read_until_closed(stream: &mut TcpStream) -> (String, Instant) {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("connection not closed: {e}"),
        }
    }
    (String::from_utf8_lossy(&out).into_owned(), Instant::now())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_request_head_gets_408_and_is_disconnected() {
    let backends = backends(1).await;
    let lb = start(&backends, &["--client-header-timeout", "500ms"]);
    let mut slow = TcpStream::connect(lb.addr).unwrap();
    let started = Instant::now();
    slow.write_all(b"GET /ping HTTP/1.1\r\nHost: a\r\n")
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    slow.write_all(b"X-Slow: 1\r\n").unwrap();
    let (reply, closed) = read_until_closed(&mut slow);
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply:?}");
    let took = closed - started;
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_secs(5),
        "{took:?}"
    );
    // Meanwhile everyone else is served.
    assert_eq!(get(&lb.url("/ping")).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_sent_in_pieces_within_the_timeout_is_served() {
    let backends = backends(1).await;
    let lb = start(&backends, &["--client-header-timeout", "2s"]);
    let mut client = TcpStream::connect(lb.addr).unwrap();
    for piece in [
        "GET /ping HTTP/1.1\r\n",
        "Host: a\r\n",
        "Connection: close\r\n",
        "\r\n",
    ] {
        client.write_all(piece.as_bytes()).unwrap();
        std::thread::sleep(Duration::from_millis(100));
    }
    let (reply, _) = read_until_closed(&mut client);
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connections_are_closed_after_the_idle_timeout() {
    let backends = backends(1).await;
    let lb = start(&backends, &["--idle-timeout", "700ms"]);
    let mut client = TcpStream::connect(lb.addr).unwrap();
    client
        .write_all(b"GET /ping HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 4096];
    let n = client.read(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let idle_since = Instant::now();
    let (rest, closed) = read_until_closed(&mut client);
    assert_eq!(rest, "", "nothing is sent on an idle close");
    let idle_for = closed - idle_since;
    assert!(
        idle_for >= Duration::from_millis(650) && idle_for < Duration::from_secs(5),
        "{idle_for:?}"
    );

    // A connection that never sends anything is idle too.
    let mut silent = TcpStream::connect(lb.addr).unwrap();
    let opened = Instant::now();
    let (_, closed) = read_until_closed(&mut silent);
    assert!(
        closed - opened >= Duration::from_millis(650),
        "{:?}",
        closed - opened
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_on_a_slow_backend_is_not_idleness() {
    let backends = backends(1).await;
    let lb = start(&backends, &["--idle-timeout", "300ms"]);
    let reply = raw_exchange(
        lb.addr,
        b"GET /delay/1200 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    );
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_websocket_outlives_the_idle_timeout() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let backends = backends(1).await;
    let lb = start(&backends, &["--idle-timeout", "300ms"]);
    let stream = tokio::net::TcpStream::connect(lb.addr).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async(format!("ws://{}/ws", lb.addr), stream)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    ws.send(Message::text("still here")).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::text("still here")
    );
}
