//! The four protocol paths: HTTP/1.1 or h2c (prior knowledge) from the client, HTTP/1.1 or h2c
//! to the backend, on one port.
#![allow(clippy::unwrap_used)]

mod support;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use support::*;

/// An HTTP/2-only client (prior knowledge, no upgrade dance).
fn h2_client() -> Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

async fn echo(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    url: String,
) -> (hyper::Version, serde_json::Value) {
    let request = Request::post(url)
        .header("x-test", "1")
        .body(Full::new(Bytes::from_static(b"hello")))
        .unwrap();
    let response = client.request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let version = response.version();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (version, serde_json::from_slice(&body).unwrap())
}

/// Starts a balancer in front of one test backend spoken to as `scheme` (`http` or `h2c`).
async fn setup(scheme: &str) -> (Vec<TestBackend>, Balancer) {
    let backends = backends(1).await;
    let url = format!("{scheme}://{}", backends[0].local_addr());
    let lb = Balancer::start(&["--backend", &url]);
    (backends, lb)
}

fn check(echo: &serde_json::Value, upstream_version: &str, expect_host: bool) {
    assert_eq!(echo["version"], upstream_version, "{echo}");
    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["path"], "/echo/p");
    assert_eq!(echo["query"], "q=1&reqCounter=1");
    assert_eq!(echo["body_bytes"], 5);
    assert_eq!(echo["headers"]["x-test"], serde_json::json!(["1"]));
    assert_eq!(
        echo["headers"]["x-forwarded-proto"],
        serde_json::json!(["http"])
    );
    // HTTP/2 carries the host as :authority, not as a header.
    assert_eq!(echo["headers"].get("host").is_some(), expect_host, "{echo}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h1_to_h1() {
    let (_b, lb) = setup("http").await;
    let (version, echo) = echo(&client(), lb.url("/echo/p?q=1")).await;
    assert_eq!(version, hyper::Version::HTTP_11);
    check(&echo, "HTTP/1.1", true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_to_h1() {
    let (_b, lb) = setup("http").await;
    let (version, echo) = echo(&h2_client(), lb.url("/echo/p?q=1")).await;
    assert_eq!(version, hyper::Version::HTTP_2);
    check(&echo, "HTTP/1.1", true);
    assert_eq!(
        echo["headers"]["host"],
        serde_json::json!([lb.addr.to_string()])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h1_to_h2c() {
    let (_b, lb) = setup("h2c").await;
    let (version, echo) = echo(&client(), lb.url("/echo/p?q=1")).await;
    assert_eq!(version, hyper::Version::HTTP_11);
    check(&echo, "HTTP/2.0", false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_to_h2c() {
    let (_b, lb) = setup("h2c").await;
    let (version, echo) = echo(&h2_client(), lb.url("/echo/p?q=1")).await;
    assert_eq!(version, hyper::Version::HTTP_2);
    check(&echo, "HTTP/2.0", false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_option_and_streaming_over_h2c() {
    let backends = backends(1).await;
    let url = format!("http://{},protocol=h2c", backends[0].local_addr());
    let lb = Balancer::start(&["--backend", &url]);
    // A streamed response crosses h2c -> h1 chunk by chunk.
    let response = client()
        .request(
            Request::get(lb.url("/stream/3?interval_ms=300"))
                .body(Full::default())
                .unwrap(),
        )
        .await
        .unwrap();
    let mut body = response.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(&first[..], b"chunk 1\n");
    let rest = body.collect().await.unwrap().to_bytes();
    assert_eq!(&rest[..], b"chunk 2\nchunk 3\n");
    // And the request went over HTTP/2.
    let echo = get(&lb.url("/echo")).await.json();
    assert_eq!(echo["version"], "HTTP/2.0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_with_prior_knowledge_gets_through() {
    let (_b, lb) = setup("h2c").await;
    let url = lb.url("/ping");
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("curl")
            .args([
                "-s",
                "--http2-prior-knowledge",
                "-o",
                "/dev/null",
                "-w",
                "%{http_version} %{http_code}",
                &url,
            ])
            .output()
    })
    .await
    .unwrap();
    let Ok(out) = out else {
        assert!(
            std::env::var("LB_REQUIRE_LOAD_TOOLS").is_err(),
            "curl is required"
        );
        eprintln!("SKIPPED: curl is not installed");
        return;
    };
    assert_eq!(String::from_utf8_lossy(&out.stdout), "2 200");
}
