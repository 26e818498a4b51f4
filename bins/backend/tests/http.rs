//! Every endpoint of the test backend over real HTTP/1.1 and h2c on 127.0.0.1.

mod support;

use std::{convert::Infallible, time::Duration};

use bytes::Bytes;
use http::{Request, StatusCode, Version};
use http_body::Frame;
use http_body_util::{Empty, Full, StreamBody};
use support::{get, raw, read_until_ends_with, request, send, send_h2, start, within};
use tokio::{io::AsyncWriteExt, net::TcpStream, time::Instant};

#[tokio::test]
async fn ping_answers_pong_with_the_backend_id() {
    let backend = start("alpha").await;
    let reply = get(backend.local_addr(), "/ping").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.header("x-backend-id"), Some("alpha"));
    assert_eq!(reply.text(), "pong from alpha\n");
}

#[tokio::test]
async fn default_id_is_the_bound_address() {
    let backend = lb_backend::TestBackend::start(([127, 0, 0, 1], 0).into(), None)
        .await
        .expect("bind");
    let addr = backend.local_addr();
    assert_ne!(addr.port(), 0);
    assert_eq!(backend.id(), addr.to_string());
    assert_eq!(backend.url(), format!("http://{addr}"));
    let reply = get(addr, "/ping").await;
    assert_eq!(
        reply.header("x-backend-id"),
        Some(addr.to_string().as_str())
    );
}

#[tokio::test]
async fn unknown_path_is_404_and_still_names_the_backend() {
    let backend = start("b404").await;
    let reply = get(backend.local_addr(), "/no/such/thing").await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(reply.header("x-backend-id"), Some("b404"));
}

#[tokio::test]
async fn wrong_method_on_a_known_path_is_405() {
    let backend = start("b405").await;
    let addr = backend.local_addr();
    let reply = send(addr, request("POST", "/ping")).await;
    assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(reply.header("x-backend-id"), Some("b405"));
    assert_eq!(reply.header("allow"), Some("GET, HEAD"));
    let reply = get(addr, "/health/down").await;
    assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(reply.header("allow"), Some("POST"));
}

#[tokio::test]
async fn echo_reports_method_raw_path_raw_query_and_repeated_headers() {
    let backend = start("echo").await;
    let request = Request::builder()
        .method("PUT")
        .uri("/echo/a%20b/c?x=1&x=2&y=%2F")
        .header("host", "backend.test")
        .header("x-multi", "one")
        .header("x-multi", "two")
        .header("X-Mixed-Case", "v")
        .header(
            "x-latin1",
            http::HeaderValue::from_bytes(b"caf\xe9").expect("obs-text"),
        )
        .body(Full::new(Bytes::from_static(b"hello")))
        .expect("request");
    let reply = send(backend.local_addr(), request).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    assert_eq!(reply.header("x-backend-id"), Some("echo"));
    let json = reply.json();
    assert_eq!(json["id"], "echo");
    assert_eq!(json["method"], "PUT");
    assert_eq!(json["path"], "/echo/a%20b/c");
    assert_eq!(json["query"], "x=1&x=2&y=%2F");
    assert_eq!(
        json["headers"]["x-multi"],
        serde_json::json!(["one", "two"])
    );
    assert_eq!(json["headers"]["x-mixed-case"], serde_json::json!(["v"]));
    assert_eq!(json["headers"]["host"], serde_json::json!(["backend.test"]));
    assert_eq!(
        json["headers"]["x-latin1"],
        serde_json::json!(["caf\u{fffd}"])
    );
    assert_eq!(json["headers"]["content-length"], serde_json::json!(["5"]));
    assert_eq!(json["body_bytes"], 5);
}

#[tokio::test]
async fn echo_without_query_reports_an_empty_one() {
    let backend = start("echo").await;
    let json = get(backend.local_addr(), "/echo").await.json();
    assert_eq!(json["path"], "/echo");
    assert_eq!(json["query"], "");
    assert_eq!(json["method"], "GET");
    assert_eq!(json["body_bytes"], 0);
}

#[tokio::test]
async fn echo_counts_a_streamed_5_mb_upload() {
    static CHUNK: [u8; 64 * 1024] = [7; 64 * 1024];
    const CHUNKS: usize = 80; // 80 × 64 KiB = 5 MiB
    let backend = start("upload").await;
    let frames = futures_util::stream::iter(
        (0..CHUNKS).map(|_| Ok::<_, Infallible>(Frame::data(Bytes::from_static(&CHUNK)))),
    );
    let request = Request::builder()
        .method("POST")
        .uri("/echo/upload")
        .header("host", "backend.test")
        .body(StreamBody::new(frames))
        .expect("request");
    let json = send(backend.local_addr(), request).await.json();
    assert_eq!(json["body_bytes"], (CHUNKS * CHUNK.len()) as u64);
    assert_eq!(
        json["headers"]["transfer-encoding"],
        serde_json::json!(["chunked"])
    );
}

#[tokio::test]
async fn bytes_sends_exactly_n_bytes_with_content_length() {
    let backend = start("bytes").await;
    for n in [0u64, 1, 65_536, 200_001] {
        let reply = get(backend.local_addr(), &format!("/bytes/{n}")).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.header("content-length"), Some(n.to_string().as_str()));
        assert_eq!(reply.body.len() as u64, n);
    }
    let reply = get(backend.local_addr(), "/bytes/lots").await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn stream_sends_each_chunk_as_it_is_made() {
    let backend = start("stream").await;
    let mut stream = within("connect", TcpStream::connect(backend.local_addr()))
        .await
        .expect("connect");
    let started = Instant::now();
    stream
        .write_all(
            b"GET /stream/3?interval_ms=300 HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
        )
        .await
        .expect("write");
    let mut received = Vec::new();
    read_until_ends_with(&mut stream, &mut received, b"chunk 1\n\r\n").await;
    let (head, body) = split_head(&received);
    // The first chunk is here, the second is 300 ms away: nothing else has been sent yet.
    assert_eq!(body, "8\r\nchunk 1\n\r\n");
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(head.contains("transfer-encoding: chunked"), "{head}");
    assert!(!head.contains("content-length"), "{head}");
    assert!(head.contains("x-backend-id: stream"), "{head}");
    read_until_ends_with(&mut stream, &mut received, b"0\r\n\r\n").await;
    let (_, body) = split_head(&received);
    assert_eq!(
        body,
        "8\r\nchunk 1\n\r\n8\r\nchunk 2\n\r\n8\r\nchunk 3\n\r\n0\r\n\r\n"
    );
    // Two pauses of 300 ms separate the three chunks.
    assert!(started.elapsed() >= Duration::from_millis(600));
}

fn split_head(received: &[u8]) -> (String, String) {
    let text = String::from_utf8_lossy(received);
    let (head, body) = text.split_once("\r\n\r\n").expect("a response head");
    (head.to_owned(), body.to_owned())
}

#[tokio::test]
async fn stream_defaults_to_a_short_interval() {
    let backend = start("stream").await;
    let reply = get(backend.local_addr(), "/stream/4").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.text(), "chunk 1\nchunk 2\nchunk 3\nchunk 4\n");
}

#[tokio::test]
async fn delay_answers_after_the_delay() {
    let backend = start("slow").await;
    let started = Instant::now();
    let reply = get(backend.local_addr(), "/delay/200").await;
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.text(), "delayed 200 ms\n");
    assert_eq!(reply.header("x-backend-id"), Some("slow"));
}

#[tokio::test]
async fn status_answers_with_the_code_asked_for() {
    let backend = start("status").await;
    let addr = backend.local_addr();
    let reply = get(addr, "/status/418").await;
    assert_eq!(reply.status, StatusCode::IM_A_TEAPOT);
    assert_eq!(reply.header("x-backend-id"), Some("status"));
    assert_eq!(
        get(addr, "/status/503").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(get(addr, "/status/599").await.status.as_u16(), 599);
    let no_content = get(addr, "/status/204").await;
    assert_eq!(no_content.status, StatusCode::NO_CONTENT);
    assert!(no_content.body.is_empty());
    for bad in [
        "/status/1000",
        "/status/99",
        "/status/teapot",
        "/status/100",
    ] {
        let reply = get(addr, bad).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(reply.header("x-backend-id"), Some("status"), "{bad}");
    }
}

#[tokio::test]
async fn health_toggles_with_post_and_with_set_healthy() {
    let backend = start("h").await;
    let addr = backend.local_addr();
    assert_eq!(get(addr, "/health").await.status, StatusCode::OK);

    assert_eq!(
        send(addr, request("POST", "/health/down")).await.status,
        StatusCode::OK
    );
    let reply = get(addr, "/health").await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.header("x-backend-id"), Some("h"));
    assert_eq!(
        send(addr, request("POST", "/health/up")).await.status,
        StatusCode::OK
    );
    assert_eq!(get(addr, "/health").await.status, StatusCode::OK);

    backend.set_healthy(false);
    assert_eq!(
        get(addr, "/health").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    backend.set_healthy(true);
    assert_eq!(get(addr, "/health").await.status, StatusCode::OK);
}

#[tokio::test]
async fn every_request_is_counted() {
    let backend = start("count").await;
    let addr = backend.local_addr();
    assert_eq!(backend.requests(), 0);
    get(addr, "/ping").await;
    get(addr, "/nope").await;
    get(addr, "/status/500").await;
    let reset = raw(addr, b"GET /reset HTTP/1.1\r\nhost: x\r\n\r\n").await;
    assert!(reset.map(|bytes| bytes.is_empty()).unwrap_or(true));
    assert_eq!(backend.requests(), 4);
}

#[tokio::test]
async fn h2c_prior_knowledge_ping() {
    let backend = start("h2").await;
    let addr = backend.local_addr();
    let request = Request::builder()
        .uri(format!("http://{addr}/ping"))
        .body(Empty::<Bytes>::new())
        .expect("request");
    let reply = send_h2(addr, request).await;
    assert_eq!(reply.version, Version::HTTP_2);
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.header("x-backend-id"), Some("h2"));
    assert_eq!(reply.text(), "pong from h2\n");
}

#[tokio::test]
async fn h2c_echo_shows_the_headers_that_arrived_and_no_invented_host() {
    let backend = start("h2").await;
    let addr = backend.local_addr();
    let request = Request::builder()
        .method("POST")
        .uri(format!("http://{addr}/echo/x?q=1"))
        .header("x-one", "1")
        .body(Full::new(Bytes::from_static(b"abc")))
        .expect("request");
    let reply = send_h2(addr, request).await;
    assert_eq!(reply.version, Version::HTTP_2);
    let json = reply.json();
    assert_eq!(json["path"], "/echo/x");
    assert_eq!(json["query"], "q=1");
    assert_eq!(json["headers"]["x-one"], serde_json::json!(["1"]));
    assert!(json["headers"].get("host").is_none(), "{json}");
    assert_eq!(json["body_bytes"], 3);
}
