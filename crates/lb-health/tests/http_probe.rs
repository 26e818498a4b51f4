//! `HttpProbe` against real sockets on 127.0.0.1.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use lb_core::{Backend, Context, Pool, RoundRobin};
use lb_health::{Checker, HttpProbe, Probe, ProbeError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A one-trick server: answers every request with `status`, and records the request head.
async fn server(status: u16) -> (String, tokio::sync::mpsc::UnboundedReceiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut head = Vec::new();
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = stream.read(&mut buf).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    head.extend_from_slice(&buf[..n]);
                }
                let _ = tx.send(String::from_utf8_lossy(&head).into_owned());
                let reply = format!(
                    "HTTP/1.1 {status} X\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"
                );
                let _ = stream.write_all(reply.as_bytes()).await;
            });
        }
    });
    (url, rx)
}

fn backend(url: &str) -> Backend {
    Backend::new(url.parse().unwrap())
}

#[tokio::test]
async fn two_hundred_is_healthy_and_the_request_is_well_formed() {
    let (url, mut heads) = server(200).await;
    let b = backend(&url);
    HttpProbe::new("/health?deep=1")
        .unwrap()
        .probe(&b)
        .await
        .unwrap();
    let head = heads.recv().await.unwrap().to_ascii_lowercase();
    assert!(
        head.starts_with("get /health?deep=1 http/1.1\r\n"),
        "{head}"
    );
    assert!(head.contains(&format!("host: {}\r\n", b.id())), "{head}");
    assert!(head.contains("connection: close\r\n"), "{head}");
}

#[tokio::test]
async fn other_statuses_are_unhealthy_and_say_which() {
    for status in [301, 404, 500, 503] {
        let (url, _heads) = server(status).await;
        let err = HttpProbe::default()
            .probe(&backend(&url))
            .await
            .unwrap_err();
        assert!(matches!(err, ProbeError::Status(s) if s == status), "{err}");
        assert_eq!(err.to_string(), format!("unexpected status {status}"));
    }
}

#[tokio::test]
async fn refused_connection_is_unhealthy() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let err = HttpProbe::default()
        .probe(&backend(&url))
        .await
        .unwrap_err();
    assert!(matches!(err, ProbeError::Connect(_)), "{err}");
}

#[tokio::test]
async fn a_backend_that_never_answers_is_cut_off_by_the_checker_timeout() {
    // Accepts and then says nothing.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent = format!("http://{}", listener.local_addr().unwrap());
    let _keep = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            open.push(s);
        }
    });
    let (healthy, _heads) = server(200).await;
    let pool = Arc::new(
        Pool::new(
            [silent.parse().unwrap(), healthy.parse().unwrap()],
            RoundRobin::new(),
        )
        .unwrap(),
    );
    let started = std::time::Instant::now();
    Checker::new(Arc::clone(&pool), HttpProbe::default())
        .with_timeout(Duration::from_millis(300))
        .check_all()
        .await;
    assert!(started.elapsed() < Duration::from_secs(5));
    let snap = pool.load();
    assert_eq!(snap.eligible().len(), 1);
    for _ in 0..4 {
        assert_eq!(
            pool.select(&Context::new()).unwrap().id(),
            snap.backends()[1].id()
        );
    }
}

#[test]
fn paths_must_be_absolute() {
    assert!(HttpProbe::new("health").is_err());
    assert!(HttpProbe::new("/he alth").is_err());
    assert_eq!(HttpProbe::new("/ready").unwrap().path(), "/ready");
    assert_eq!(
        HttpProbe::new("health").unwrap_err().to_string(),
        "invalid health path \"health\": must start with / and be a valid URL path"
    );
}
