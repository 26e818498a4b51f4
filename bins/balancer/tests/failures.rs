//! When things go wrong: health ejection and recovery, no healthy backend, refused and dead
//! backends, slow backends, malformed requests. Each failure costs only the request it hits.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use http_body_util::Full;
use hyper::Request;
use support::*;

fn start(backends: &[TestBackend], extra: &[&str]) -> Balancer {
    let mut args = args_for(backends);
    args.extend(extra.iter().map(|s| s.to_string()));
    Balancer::start(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// Which backends answer `n` requests.
async fn seen(lb: &Balancer, n: usize) -> HashSet<String> {
    let client = client();
    let mut seen = HashSet::new();
    for _ in 0..n {
        let reply = send(
            &client,
            Request::get(lb.url("/ping")).body(Full::default()).unwrap(),
        )
        .await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        seen.insert(reply.backend());
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unhealthy_backend_is_ejected_and_comes_back() {
    let backends = backends(3).await;
    let interval = Duration::from_millis(300);
    let lb = start(
        &backends,
        &["--health-interval", "300ms", "--health-timeout", "200ms"],
    );
    assert_eq!(seen(&lb, 6).await.len(), 3);

    // The backend's own switch, as a user would flip it: POST /health/down.
    let down = send(
        &client(),
        Request::post(format!("{}/health/down", backends[2].url()))
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(down.status, 200);
    let flipped = Instant::now();
    // Within two intervals plus the timeout, no more traffic to it.
    tokio::time::sleep(2 * interval + Duration::from_millis(200)).await;
    let now = seen(&lb, 12).await;
    assert!(
        !now.contains(backends[2].id()),
        "still sent to the unhealthy backend after {:?}",
        flipped.elapsed()
    );
    assert_eq!(now.len(), 2);

    let up = send(
        &client(),
        Request::post(format!("{}/health/up", backends[2].url()))
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(up.status, 200);
    // Within two intervals it gets traffic again.
    tokio::time::sleep(2 * interval).await;
    assert_eq!(seen(&lb, 6).await.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_healthy_backend_is_a_503_at_once() {
    let backends = backends(2).await;
    for b in &backends {
        b.set_healthy(false);
    }
    let lb = start(&backends, &["--health-interval", "200ms"]);
    let client = client();
    for _ in 0..20 {
        let started = Instant::now();
        let reply = send(
            &client,
            Request::get(lb.url("/ping")).body(Full::default()).unwrap(),
        )
        .await;
        let took = started.elapsed();
        assert_eq!(reply.status, 503);
        assert!(
            reply.text().contains("no healthy backend"),
            "{}",
            reply.text()
        );
        // No waiting on a connect timeout (1 s) or a probe: answered straight away.
        assert!(took < Duration::from_millis(500), "503 took {took:?}");
    }
    // And it recovers as soon as a probe passes.
    backends[0].set_healthy(true);
    assert!(
        eventually(Duration::from_secs(3), async || get(&lb.url("/ping"))
            .await
            .status
            == 200)
        .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusing_backend_is_passed_over_without_failing_a_request() {
    let mut backends = backends(3).await;
    // Probes every hour: the balancer learns of the dead backend only by connecting to it.
    let lb = start(&backends, &["--health-interval", "1h"]);
    assert_eq!(seen(&lb, 3).await.len(), 3);
    let dead = backends.remove(1);
    let dead_id = dead.id().to_owned();
    dead.kill().await;
    let client = client();
    for _ in 0..30 {
        let reply = send(
            &client,
            Request::post(lb.url("/echo"))
                .body(Full::new("payload".into()))
                .unwrap(),
        )
        .await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_ne!(reply.backend(), dead_id);
        assert_eq!(
            reply.json()["body_bytes"],
            7,
            "the body went along to the next backend"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_over_goes_on_until_a_backend_answers() {
    let mut backends = backends(5).await;
    let lb = start(&backends, &["--health-interval", "1h"]);
    assert_eq!(seen(&lb, 5).await.len(), 5);
    let alive = backends.remove(3);
    for dead in backends {
        dead.kill().await;
    }
    for _ in 0..10 {
        let reply = get(&lb.url("/ping")).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_eq!(reply.backend(), alive.id());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_response_timeout_starts_when_the_upload_is_done() {
    let backends = backends(1).await;
    let lb = start(&backends, &["--response-timeout", "400ms"]);
    // An upload that takes ~1.2 s, three times the response timeout.
    let chunks = futures_util::stream::unfold(0u8, |i| async move {
        if i == 6 {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        Some((
            Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(bytes::Bytes::from(
                vec![b'u'; 1000],
            ))),
            i + 1,
        ))
    });
    let client: hyper_util::client::legacy::Client<_, http_body_util::StreamBody<_>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let response = client
        .request(
            Request::post(lb.url("/echo"))
                .body(http_body_util::StreamBody::new(Box::pin(chunks)))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .unwrap()
        .to_bytes();
    let echo: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(echo["body_bytes"], 6000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_backend_refusing_is_a_502() {
    let backends = backends(2).await;
    let lb = start(&backends, &["--health-interval", "1h"]);
    assert_eq!(seen(&lb, 2).await.len(), 2);
    for b in backends {
        b.kill().await;
    }
    let reply = get(&lb.url("/ping")).await;
    assert_eq!(reply.status, 502);
    assert_eq!(reply.text(), "bad gateway\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_slower_than_the_response_timeout_is_a_504() {
    let backends = backends(1).await;
    let lb = start(&backends, &["--response-timeout", "300ms"]);
    let started = Instant::now();
    let reply = get(&lb.url("/delay/3000")).await;
    assert_eq!(reply.status, 504);
    assert_eq!(reply.text(), "gateway timeout\n");
    assert!(started.elapsed() < Duration::from_millis(2500));
    // A request within the timeout is fine, on the same balancer.
    assert_eq!(get(&lb.url("/delay/50")).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backends_own_errors_pass_through_untouched() {
    let backends = backends(1).await;
    let lb = start(&backends, &[]);
    for code in [404u16, 500, 503] {
        let reply = get(&lb.url(&format!("/status/{code}"))).await;
        assert_eq!(reply.status.as_u16(), code);
        assert_eq!(
            reply.backend(),
            backends[0].id(),
            "the backend's answer, not the balancer's"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_drops_the_connection_is_a_502_for_that_request_only() {
    let backends = backends(1).await;
    let lb = start(&backends, &[]);
    assert_eq!(get(&lb.url("/reset")).await.status, 502);
    assert_eq!(get(&lb.url("/ping")).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_4xx_and_everyone_else_is_served() {
    let backends = backends(1).await;
    let lb = start(&backends, &[]);

    let garbage = raw_exchange(lb.addr, b"THIS IS NOT HTTP\r\n\r\n");
    assert!(garbage.starts_with("HTTP/1.1 400"), "{garbage}");

    let bad_header = raw_exchange(
        lb.addr,
        b"GET / HTTP/1.1\r\nHost: a\r\nBad Header: x\r\n\r\n",
    );
    assert!(bad_header.starts_with("HTTP/1.1 400"), "{bad_header}");

    for smuggle in [
        &b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"[..],
        b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
    ] {
        let reply = raw_exchange(lb.addr, smuggle);
        assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
    }
    // Smuggling behind an ordinary request on the same connection is caught too.
    let pipelined = b"GET /ping HTTP/1.1\r\nHost: a\r\n\r\n\
POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    let reply = raw_exchange(lb.addr, pipelined);
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(reply.contains("HTTP/1.1 400"), "{reply}");
    assert!(
        !reply.contains("\"method\":\"POST\""),
        "the ambiguous request reached the backend: {reply}"
    );

    let big = format!(
        "GET /ping HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n",
        "a".repeat(40 * 1024)
    );
    let reply = raw_exchange(lb.addr, big.as_bytes());
    assert!(
        reply.starts_with("HTTP/1.1 431"),
        "{}",
        &reply[..reply.len().min(200)]
    );

    let many: String = (0..40)
        .map(|i| format!("X-H{i}: {}\r\n", "b".repeat(1000)))
        .collect();
    let reply = raw_exchange(
        lb.addr,
        format!("GET /ping HTTP/1.1\r\nHost: a\r\n{many}\r\n").as_bytes(),
    );
    assert!(
        reply.starts_with("HTTP/1.1 431"),
        "{}",
        &reply[..reply.len().min(200)]
    );

    // The limit is exact, however the head arrives: 32 KiB in all passes, one byte more is
    // refused, both sent in one write.
    let head_of = |len: usize| {
        let bare = "GET /ping HTTP/1.1\r\nHost: a\r\nConnection: close\r\nX-Big: \r\n\r\n";
        let head = bare.replace(
            "X-Big: ",
            &format!("X-Big: {}", "c".repeat(len - bare.len())),
        );
        assert_eq!(head.len(), len);
        head
    };
    let at_limit = raw_exchange(lb.addr, head_of(32 * 1024).as_bytes());
    assert!(
        at_limit.starts_with("HTTP/1.1 200"),
        "{}",
        &at_limit[..at_limit.len().min(200)]
    );
    let over = raw_exchange(lb.addr, head_of(32 * 1024 + 1).as_bytes());
    assert!(
        over.starts_with("HTTP/1.1 431"),
        "{}",
        &over[..over.len().min(200)]
    );

    // Headers under the limit are fine.
    let fine = format!(
        "GET /ping HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(16 * 1024)
    );
    assert!(raw_exchange(lb.addr, fine.as_bytes()).starts_with("HTTP/1.1 200"));

    let connect = raw_exchange(
        lb.addr,
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
    );
    assert!(connect.starts_with("HTTP/1.1 405"), "{connect}");

    // Nothing of this cost anyone else anything.
    assert_eq!(get(&lb.url("/ping")).await.status, 200);
}
