//! HTTP forwarding for the `lb` load balancer, on hyper 1.x.
//!
//! [`Proxy`] picks a backend from an [`lb_core::Pool`] for each request, rewrites the request
//! (request counter parameter, `X-Forwarded-*` headers, hop-by-hop headers removed), forwards it
//! over a pooled keep-alive connection and streams the response back. When no backend can answer
//! the client gets 503 (none healthy), 502 (every try failed) or 504 (too slow).
//!
//! It is a library first: [`Proxy::service`] is a hyper [`Service`](hyper::service::Service) you
//! can serve on your own connections, [`Proxy::forward`] handles a single request inside your own
//! service, and [`serve`] runs the whole thing on a listener until a shutdown signal.
//!
//! What it deliberately does not do: choose backends (that is the pool's strategy), check their
//! health (that is `lb-health`), or terminate TLS.
//!
//! ```no_run
//! use std::sync::Arc;
//!
//! use lb_core::{Pool, RoundRobin};
//! use lb_proxy::Proxy;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let pool = Arc::new(Pool::new(
//!     ["http://127.0.0.1:8080".parse()?, "http://127.0.0.1:8081".parse()?],
//!     RoundRobin::new(),
//! )?);
//! let proxy = Proxy::builder(pool).counter_param(None).build()?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8000").await?;
//! lb_proxy::serve(listener, proxy, async {
//!     let _ = tokio::signal::ctrl_c().await;
//! })
//! .await;
//! # Ok(())
//! # }
//! ```

mod access_log;
mod admission;
mod body;
mod client_io;
mod coalesce;
mod error;
mod framing;
mod hash_key;
mod proxy;
mod replay;
mod rewrite;
mod server;
mod upstream;

pub use access_log::{AccessEntry, AccessLog};
pub use body::ProxyBody;
pub use error::ProxyError;
pub use hash_key::HashKey;
pub use proxy::{Proxy, ProxyBuilder, ProxyService, RetryBudget};
pub use server::{Server, bind_listeners, serve};
