//! Active health checking for the `lb` load balancer.
//!
//! A [`Checker`] probes every backend of an [`lb_core::Pool`] concurrently each interval, bounds
//! each probe with a timeout, and flips the backend's health in the pool, which publishes a new
//! snapshot for the request path. The probe is a trait object ([`Probe`]); [`HttpProbe`]
//! (`GET /health`, 2xx = healthy) is the default, and users can plug in their own.
//!
//! What it deliberately does not do: touch the request path. Health reaches the proxy only
//! through the pool's snapshot, so nothing here can slow a request down.
//!
//! ```no_run
//! use std::sync::Arc;
//! use std::time::Duration;
//!
//! use lb_core::{Pool, RoundRobin};
//! use lb_health::{Checker, HttpProbe};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let pool = Arc::new(Pool::new(["http://127.0.0.1:8080".parse()?], RoundRobin::new())?);
//! let checker = Checker::new(Arc::clone(&pool), HttpProbe::new("/health")?)
//!     .with_interval(Duration::from_secs(1))
//!     .with_timeout(Duration::from_secs(1));
//! checker.check_all().await; // one round now
//! tokio::spawn(checker.run(std::future::pending())); // then every second
//! # Ok(())
//! # }
//! ```

mod checker;
mod http;
mod probe;

pub use checker::Checker;
pub use http::HttpProbe;
pub use probe::{Probe, ProbeError};

/// Errors in configuring health checks.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// The health path is not an absolute URL path.
    #[error("invalid health path {0:?}: must start with / and be a valid URL path")]
    InvalidPath(String),
}
