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

/// A client that hangs up, whether still waiting for its answer or in the middle of a streamed
/// one, is let go at once: its request to the backend is cut off, not run to its end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_hangs_up_frees_its_backend_at_once() {
    let backends = backends(1).await;
    let lb = start(&backends, &["--admin", "127.0.0.1:0"]);
    let admin = lb.admin_addr().await;
    let in_flight = async || {
        get(&format!("http://{admin}/backends")).await.json()[0]["in_flight"]
            .as_u64()
            .unwrap()
    };
    for (path, wait_for) in [
        ("/delay/8000", None),
        ("/stream/40?interval_ms=200", Some("chunk 1\n")),
    ] {
        let mut client = TcpStream::connect(lb.addr).unwrap();
        write!(client, "GET {path} HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
        if let Some(first) = wait_for {
            client
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            let mut seen = Vec::new();
            let mut buf = [0; 1024];
            while !String::from_utf8_lossy(&seen).contains(first) {
                let n = client.read(&mut buf).unwrap();
                assert!(n > 0, "closed before {first:?}");
                seen.extend_from_slice(&buf[..n]);
            }
        }
        assert!(
            eventually(Duration::from_secs(5), async || in_flight().await == 1).await,
            "{path}: never under way"
        );
        drop(client);
        let hung_up = Instant::now();
        assert!(
            eventually(Duration::from_secs(3), async || in_flight().await == 0).await,
            "{path}: the backend still holds the request of a client gone"
        );
        assert!(hung_up.elapsed() < Duration::from_secs(3), "{path}");
    }
    assert_eq!(get(&lb.url("/ping")).await.status, 200);
}

/// Sends `n` requests for `path` at once, each on its own connection; returns (status, time) per request.
async fn burst(lb: &Balancer, path: &str, n: usize) -> Vec<(u16, Duration, String)> {
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let url = lb.url(path);
            tokio::spawn(async move {
                let started = Instant::now();
                let reply = get(&url).await;
                (reply.status.as_u16(), started.elapsed(), reply.text())
            })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_makes_the_rest_wait_not_fail() {
    let backends = backends(1).await;
    let lb = start(&backends, &["--max-connections", "2", "--workers", "1"]);
    let started = Instant::now();
    let results = burst(&lb, "/delay/400", 4).await;
    assert!(results.iter().all(|(s, _, _)| *s == 200), "{results:?}");
    // Two at a time: the last two waited for the first two to finish.
    assert!(
        started.elapsed() >= Duration::from_millis(750),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_tunnel_keeps_its_place_under_max_connections() {
    let backends = backends(1).await;
    let lb = start(&backends, &["--max-connections", "1", "--workers", "1"]);
    let stream = tokio::net::TcpStream::connect(lb.addr).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async(format!("ws://{}/ws", lb.addr), stream)
        .await
        .unwrap();
    // The tunnel is the one connection allowed: the next waits in the listen backlog.
    let url = lb.url("/ping");
    let waiting = tokio::spawn(async move { get(&url).await.status });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiting.is_finished(), "served beside an open tunnel");
    ws.close(None).await.unwrap();
    drop(ws);
    let status = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("still waiting after the tunnel closed")
        .unwrap();
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_backend_queues_a_few_and_turns_the_rest_away_fast() {
    let backends = backends(1).await;
    let lb = start(
        &backends,
        &[
            "--backend-max-in-flight",
            "2",
            "--queue-size",
            "2",
            "--queue-timeout",
            "3s",
        ],
    );
    let results = burst(&lb, "/delay/500", 12).await;
    let ok = results.iter().filter(|(s, _, _)| *s == 200).count();
    let busy: Vec<_> = results.iter().filter(|(s, _, _)| *s == 503).collect();
    // Two in flight, two queued until they finish: four served; eight turned away at once.
    assert_eq!(ok, 4, "{results:?}");
    assert_eq!(busy.len(), 8, "{results:?}");
    for (_, took, body) in busy {
        assert_eq!(body, "all backends busy\n");
        assert!(*took < Duration::from_millis(400), "a 503 took {took:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_request_gives_up_after_the_queue_timeout() {
    let backends = backends(1).await;
    let lb = start(
        &backends,
        &[
            "--backend-max-in-flight",
            "1",
            "--queue-size",
            "1",
            "--queue-timeout",
            "300ms",
        ],
    );
    let results = burst(&lb, "/delay/1500", 2).await;
    let mut statuses: Vec<u16> = results.iter().map(|(s, _, _)| *s).collect();
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 503], "{results:?}");
    let (_, waited, _) = results.iter().find(|(s, _, _)| *s == 503).unwrap();
    assert!(
        *waited >= Duration::from_millis(280) && *waited < Duration::from_millis(1400),
        "{waited:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_times_the_load_it_can_serve_keeps_memory_bounded_and_admitted_requests_succeed() {
    // Capacity: 2 backends x 5 in flight x 20 requests/s each (/delay/50) = 200 requests/s.
    let backends = backends(2).await;
    let lb = start(
        &backends,
        &[
            "--backend-max-in-flight",
            "5",
            "--queue-size",
            "20",
            "--queue-timeout",
            "200ms",
            "--max-connections",
            "300",
        ],
    );
    let _ = get(&lb.url("/ping")).await;
    let baseline = lb.peak_rss_kib();
    // 200 clients in a closed loop for 3 s: each waits only for its own answer, so rejected ones
    // come right back; the offered load is many times the capacity.
    let deadline = Instant::now() + Duration::from_secs(3);
    let clients: Vec<_> = (0..200)
        .map(|_| {
            let url = lb.url("/delay/50");
            tokio::spawn(async move {
                let client = client();
                let (mut ok, mut busy) = (0u32, 0u32);
                while Instant::now() < deadline {
                    let reply = send(
                        &client,
                        hyper::Request::get(&url)
                            .body(http_body_util::Full::default())
                            .unwrap(),
                    )
                    .await;
                    match reply.status.as_u16() {
                        200 => ok += 1,
                        503 => busy += 1,
                        other => panic!("unexpected {other}: {}", reply.text()),
                    }
                }
                (ok, busy)
            })
        })
        .collect();
    let (mut ok, mut busy) = (0, 0);
    for c in clients {
        let (o, b) = c.await.unwrap();
        ok += o;
        busy += b;
    }
    // Roughly capacity x 3 s served, the rest turned away.
    assert!(ok > 150, "only {ok} served");
    assert!(
        busy > 10 * ok / 2,
        "not overloaded enough to prove anything: {ok} ok, {busy} busy"
    );
    let grown_mib = lb.peak_rss_kib().saturating_sub(baseline) / 1024;
    assert!(grown_mib < 48, "memory grew {grown_mib} MiB under overload");
    eprintln!("served {ok}, turned away {busy}, memory grew {grown_mib} MiB");
}
