//! What reaches the backend, and what comes back: round robin, the counter parameter,
//! forwarding and hop-by-hop headers, Host, bodies both ways, streaming, WebSocket.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::Request;
use support::*;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_gives_each_healthy_backend_exactly_k() {
    let backends = backends(3).await;
    backends[1].set_healthy(false);
    let mut args = args_for(&backends);
    args.extend(["--health-interval".into(), "100ms".into()]);
    let lb = Balancer::start(&args.iter().map(String::as_str).collect::<Vec<_>>());

    // One sequential client over one keep-alive connection: with m = 2 healthy, 2·15 requests.
    let client = client();
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut order = Vec::new();
    for _ in 0..30 {
        let reply = send(
            &client,
            Request::get(lb.url("/ping")).body(Full::default()).unwrap(),
        )
        .await;
        assert_eq!(reply.status, 200);
        order.push(reply.backend());
        *seen.entry(reply.backend()).or_default() += 1;
    }
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[backends[0].id()], 15);
    assert_eq!(seen[backends[2].id()], 15);
    // Strict alternation, not merely equal totals.
    assert!(order.windows(2).all(|w| w[0] != w[1]), "{order:?}");

    // All three once the second recovers: 3·10 requests give 10 each.
    backends[1].set_healthy(true);
    assert!(
        eventually(Duration::from_secs(5), async || get(&lb.url("/ping"))
            .await
            .backend()
            == backends[1].id())
        .await
    );
    let mut seen: HashMap<String, usize> = HashMap::new();
    for _ in 0..30 {
        let reply = send(
            &client,
            Request::get(lb.url("/ping")).body(Full::default()).unwrap(),
        )
        .await;
        *seen.entry(reply.backend()).or_default() += 1;
    }
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert!(seen.values().all(|&n| n == 10), "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_counter_parameter_counts_every_request_received() {
    let backends = backends(2).await;
    let args = args_for(&backends);
    let lb = Balancer::start(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let client = client();
    for n in 1..=5 {
        let path = if n % 2 == 0 {
            "/echo?a=1&b=two"
        } else {
            "/echo"
        };
        let reply = send(
            &client,
            Request::get(lb.url(path)).body(Full::default()).unwrap(),
        )
        .await;
        let query = reply.json()["query"].as_str().unwrap().to_owned();
        let expected = if n % 2 == 0 {
            format!("a=1&b=two&reqCounter={n}")
        } else {
            format!("reqCounter={n}")
        };
        assert_eq!(query, expected);
    }
    // A request the balancer answers itself still counts: 404 from no route is the backend's,
    // so use one the backend rejects and then check the next number.
    let reply = send(
        &client,
        Request::get(lb.url("/nope")).body(Full::default()).unwrap(),
    )
    .await;
    assert_eq!(reply.status, 404);
    let reply = send(
        &client,
        Request::get(lb.url("/echo?"))
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(reply.json()["query"], "reqCounter=7");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_counter_parameter_can_be_renamed_or_disabled() {
    let backends = backends(1).await;
    let mut args = args_for(&backends);
    args.extend(["--request-counter-param".into(), "n".into()]);
    let lb = Balancer::start(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(get(&lb.url("/echo?x=y")).await.json()["query"], "x=y&n=1");
    drop(lb);

    let mut args = args_for(&backends);
    args.extend(["--request-counter-param".into(), String::new()]);
    let lb = Balancer::start(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(get(&lb.url("/echo?x=y")).await.json()["query"], "x=y");
    assert_eq!(get(&lb.url("/echo")).await.json()["query"], "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn method_path_query_headers_and_body_arrive_unchanged() {
    let backends = backends(1).await;
    let args = args_for(&backends);
    let lb = Balancer::start(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let body = vec![b'x'; 100_000];
    let request = Request::builder()
        .method("PATCH")
        .uri(lb.url("/echo/a%20b/c?q=%2F1&flag"))
        .header("host", "shop.example:8443")
        .header("x-custom", "one")
        .header("x-custom", "two")
        .header("user-agent", "lb-test")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let reply = send(&client(), request).await;
    assert_eq!(reply.status, 200);
    let echo = reply.json();
    assert_eq!(echo["method"], "PATCH");
    assert_eq!(echo["path"], "/echo/a%20b/c");
    assert_eq!(echo["query"], "q=%2F1&flag&reqCounter=1");
    assert_eq!(echo["body_bytes"], 100_000);
    let headers = &echo["headers"];
    assert_eq!(
        headers["host"],
        serde_json::json!(["shop.example:8443"]),
        "Host is kept"
    );
    assert_eq!(headers["x-custom"], serde_json::json!(["one", "two"]));
    assert_eq!(headers["user-agent"], serde_json::json!(["lb-test"]));
    assert_eq!(headers["content-length"], serde_json::json!(["100000"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_are_added() {
    let backends = backends(1).await;
    let args = args_for(&backends);
    let lb = Balancer::start(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let request = Request::get(lb.url("/echo"))
        .header("host", "api.example")
        .header("x-forwarded-for", "203.0.113.7")
        .body(Full::default())
        .unwrap();
    let echo = send(&client(), request).await.json();
    let headers = &echo["headers"];
    assert_eq!(
        headers["x-forwarded-for"],
        serde_json::json!(["203.0.113.7, 127.0.0.1"])
    );
    assert_eq!(headers["x-forwarded-proto"], serde_json::json!(["http"]));
    assert_eq!(
        headers["x-forwarded-host"],
        serde_json::json!(["api.example"])
    );

    let echo = get(&lb.url("/echo")).await.json();
    assert_eq!(
        echo["headers"]["x-forwarded-for"],
        serde_json::json!(["127.0.0.1"])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_are_not_forwarded() {
    let backends = backends(1).await;
    let args = args_for(&backends);
    let lb = Balancer::start(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let raw = "GET /echo HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, X-Drop-Me\r\nKeep-Alive: timeout=5\r\n\
               Proxy-Connection: keep-alive\r\nTE: trailers\r\nTrailer: x-sum\r\nUpgrade: something\r\n\
               X-Drop-Me: 1\r\nX-Keep-Me: 2\r\nConnection: close, host\r\n\r\n";
    let response = raw_exchange(lb.addr, raw.as_bytes());
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let json = &response[response.find("\r\n\r\n").unwrap() + 4..];
    let echo: serde_json::Value = serde_json::from_str(json).unwrap();
    let headers = echo["headers"].as_object().unwrap();
    for gone in [
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "upgrade",
        "x-drop-me",
    ] {
        assert!(
            !headers.contains_key(gone),
            "{gone} was forwarded: {headers:?}"
        );
    }
    assert_eq!(headers["x-keep-me"], serde_json::json!(["2"]));
    assert_eq!(
        headers["host"],
        serde_json::json!(["a"]),
        "Connection cannot name Host away"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absolute_form_target_names_the_host() {
    let backends = backends(1).await;
    let args = args_for(&backends);
    let lb = Balancer::start(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let raw = "GET http://api.example:81/echo?x=1 HTTP/1.1\r\nHost: ignored.example\r\nConnection: close\r\n\r\n";
    let response = raw_exchange(lb.addr, raw.as_bytes());
    let echo: serde_json::Value =
        serde_json::from_str(&response[response.find("\r\n\r\n").unwrap() + 4..]).unwrap();
    assert_eq!(echo["path"], "/echo");
    assert_eq!(echo["query"], "x=1&reqCounter=1");
    assert_eq!(
        echo["headers"]["host"],
        serde_json::json!(["api.example:81"])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_chunked_response_arrives_chunk_by_chunk() {
    let backends = backends(1).await;
    let args = args_for(&backends);
    let lb = Balancer::start(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let response = client()
        .request(
            Request::get(lb.url("/stream/3?interval_ms=400"))
                .body(Full::default())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let first = tokio::time::timeout(Duration::from_secs(5), body.frame())
        .await
        .expect("first chunk in time")
        .unwrap()
        .unwrap()
        .into_data()
        .unwrap();
    // The backend sends the next chunk 400 ms later: the first arrived on its own.
    assert_eq!(&first[..], b"chunk 1\n");
    let rest = body.collect().await.unwrap().to_bytes();
    assert_eq!(&rest[..], b"chunk 2\nchunk 3\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gigabyte_passes_both_ways_with_flat_memory() {
    const GIB: u64 = 1 << 30;
    let backends = backends(1).await;
    let args = args_for(&backends);
    let lb = Balancer::start(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let _warm = get(&lb.url("/ping")).await;
    let before = lb.peak_rss_kib();

    // Download: streamed and counted, never held.
    let response = client()
        .request(
            Request::get(lb.url(&format!("/bytes/{GIB}")))
                .body(Full::default())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let mut received = 0u64;
    while let Some(frame) = body.frame().await {
        received += frame.unwrap().into_data().map_or(0, |d| d.len() as u64);
    }
    assert_eq!(received, GIB);

    // Upload: a streamed body of 1 GiB in 64 KiB chunks.
    let chunk = Bytes::from(vec![7u8; 64 * 1024]);
    let chunks = GIB / chunk.len() as u64;
    let stream =
        futures_util::stream::iter((0..chunks).map(move |_| {
            Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(chunk.clone()))
        }));
    let upload = http_body_util::StreamBody::new(stream);
    let client: hyper_util::client::legacy::Client<_, http_body_util::StreamBody<_>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let response = client
        .request(Request::post(lb.url("/echo")).body(upload).unwrap())
        .await
        .unwrap();
    let echo: serde_json::Value =
        serde_json::from_slice(&response.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(echo["body_bytes"], GIB);

    let grown_mib = (lb.peak_rss_kib().saturating_sub(before)) / 1024;
    assert!(
        grown_mib < 64,
        "balancer peak memory grew by {grown_mib} MiB moving 2 GiB"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_works_end_to_end() {
    let backends = backends(2).await;
    let args = args_for(&backends);
    let lb = Balancer::start(&args.iter().map(String::as_str).collect::<Vec<_>>());
    for _ in 0..2 {
        let stream = tokio::net::TcpStream::connect(lb.addr).await.unwrap();
        let (mut ws, response) =
            tokio_tungstenite::client_async(format!("ws://{}/ws", lb.addr), stream)
                .await
                .expect("handshake through the balancer");
        assert_eq!(response.status(), 101);
        ws.send(Message::text("hello")).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("hello"));
        ws.send(Message::binary(vec![0u8, 1, 2, 255]))
            .await
            .unwrap();
        assert_eq!(
            ws.next().await.unwrap().unwrap(),
            Message::binary(vec![0u8, 1, 2, 255])
        );
        ws.close(None).await.unwrap();
    }
    // The balancer still serves plain HTTP afterwards.
    assert_eq!(get(&lb.url("/ping")).await.status, 200);
}
