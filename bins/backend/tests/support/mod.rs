//! Helpers shared by the integration tests: start a backend, talk to it over real sockets,
//! and never wait without a bound.

#![allow(dead_code)] // each test binary uses its own part of this module

use std::{net::SocketAddr, time::Duration};

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode, Version};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use lb_backend::TestBackend;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// The longest any single step of a test may take.
pub(crate) const WAIT: Duration = Duration::from_secs(10);

/// Awaits `future`, failing the test if it takes longer than [`WAIT`].
pub(crate) async fn within<F: Future>(what: &str, future: F) -> F::Output {
    match tokio::time::timeout(WAIT, future).await {
        Ok(output) => output,
        Err(_) => panic!("{what}: no answer within {WAIT:?}"),
    }
}

/// A backend on `127.0.0.1:0` named `id`.
pub(crate) async fn start(id: &str) -> TestBackend {
    let addr = SocketAddr::from(([127, 0, 0, 1], 0));
    TestBackend::start(addr, Some(id.to_owned()))
        .await
        .expect("bind 127.0.0.1:0")
}

/// A complete response.
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) status: StatusCode,
    pub(crate) version: Version,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
}

impl Reply {
    /// The named header as text, if present.
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body as text.
    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON.
    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("body is JSON")
    }
}

/// Sends `request` over a fresh HTTP/1.1 connection and reads the whole response.
pub(crate) async fn send<B>(addr: SocketAddr, request: Request<B>) -> Reply
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    within("HTTP/1.1 exchange", async {
        let stream = TcpStream::connect(addr).await.expect("connect");
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("HTTP/1.1 handshake");
        tokio::spawn(connection);
        let response = sender.send_request(request).await.expect("response");
        collect(response).await
    })
    .await
}

/// Sends `request` over a fresh HTTP/2 prior-knowledge (h2c) connection.
pub(crate) async fn send_h2<B>(addr: SocketAddr, request: Request<B>) -> Reply
where
    B: http_body::Body + Unpin + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    within("h2c exchange", async {
        let stream = TcpStream::connect(addr).await.expect("connect");
        let (mut sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .expect("h2c handshake");
        tokio::spawn(connection);
        let response = sender.send_request(request).await.expect("response");
        collect(response).await
    })
    .await
}

async fn collect(response: http::Response<hyper::body::Incoming>) -> Reply {
    let (parts, body) = response.into_parts();
    let body = body.collect().await.expect("response body").to_bytes();
    Reply {
        status: parts.status,
        version: parts.version,
        headers: parts.headers,
        body,
    }
}

/// A bodiless request for `path` with a `host` header.
pub(crate) fn request(method: &str, path: &str) -> Request<Empty<Bytes>> {
    Request::builder()
        .method(method)
        .uri(path)
        .header("host", "backend.test")
        .body(Empty::new())
        .expect("valid request")
}

/// `GET path` over HTTP/1.1.
pub(crate) async fn get(addr: SocketAddr, path: &str) -> Reply {
    send(addr, request("GET", path)).await
}

/// Writes `bytes` on a fresh connection and reads until the server closes it.
pub(crate) async fn raw(addr: SocketAddr, bytes: &[u8]) -> std::io::Result<Vec<u8>> {
    within("raw exchange", async {
        let mut stream = TcpStream::connect(addr).await?;
        stream.write_all(bytes).await?;
        let mut received = Vec::new();
        stream.read_to_end(&mut received).await?;
        Ok(received)
    })
    .await
}

/// Reads from `stream` into `buf` until `buf` ends with `suffix`.
pub(crate) async fn read_until_ends_with(stream: &mut TcpStream, buf: &mut Vec<u8>, suffix: &[u8]) {
    within("reading a response", async {
        while !buf.ends_with(suffix) {
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await.expect("read");
            assert!(
                n > 0,
                "closed early; got {:?}",
                String::from_utf8_lossy(buf)
            );
            buf.extend_from_slice(&chunk[..n]);
        }
    })
    .await;
}

/// Waits (bounded) until connecting to `addr` is refused.
pub(crate) async fn refused(addr: SocketAddr) -> bool {
    tokio::time::timeout(WAIT, async {
        while TcpStream::connect(addr).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .is_ok()
}
