//! The test backend of the `lb` load balancer: a small HTTP server whose endpoints make a
//! backend's behaviours easy to ask for — echo, delays, chosen status codes, large and
//! streamed bodies, a WebSocket echo, a dropped connection, a health switch.
//!
//! Every response carries `x-backend-id: <id>`, so a test can tell which backend answered.
//! One port speaks HTTP/1.1 (with upgrades) and HTTP/2 with prior knowledge (h2c).
//!
//! | request | answer |
//! | --- | --- |
//! | `GET /ping` | 200 `pong from <id>` |
//! | `GET /health` | 200, or 503 after `POST /health/down` (until `POST /health/up`) |
//! | `ANY /echo`, `ANY /echo/<anything>` | 200 JSON: id, method, raw path and query, headers, `body_bytes` |
//! | `GET /delay/<ms>` | 200 after `ms` milliseconds |
//! | `GET /status/<code>` | that status (`200..=999`; anything else 400) |
//! | `GET /bytes/<n>` | exactly `n` bytes, `content-length: n` |
//! | `GET /stream/<n>?interval_ms=<m>` | chunked `chunk 1\n` .. `chunk n\n`, `m` ms apart (default 10) |
//! | `GET /ws` | WebSocket echo of text and binary messages |
//! | `GET /reset` | the connection is closed without a response |
//!
//! Unknown paths get 404, known paths with the wrong method 405. Bodies of any size, in or
//! out, are streamed: memory stays flat. Idle keep-alive connections stay open until the
//! client closes them or the backend stops: no idle timeout surprises a test.
//!
//! What it deliberately does not do: TLS, persistence, or any routing configuration. It is a
//! test fixture; the binary `backend` wraps [`TestBackend`] with a command line, a "served N
//! requests" reporter and signal handling.
//!
//! ```
//! use lb_backend::TestBackend;
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> std::io::Result<()> {
//! let backend = TestBackend::start("127.0.0.1:0".parse().unwrap(), Some("b1".into())).await?;
//! let mut stream = tokio::net::TcpStream::connect(backend.local_addr()).await?;
//! stream.write_all(b"GET /ping HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").await?;
//! let mut response = String::new();
//! stream.read_to_string(&mut response).await?;
//! assert!(response.starts_with("HTTP/1.1 200 OK"));
//! assert!(response.contains("x-backend-id: b1"));
//! assert!(response.ends_with("pong from b1\n"));
//! assert_eq!(backend.requests(), 1);
//! backend.kill().await;
//! # Ok(())
//! # }
//! ```

mod body;
mod echo;
mod error;
mod executor;
mod route;
mod server;
mod service;
mod ws;

pub use server::TestBackend;
