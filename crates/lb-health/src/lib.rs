//! Health for the `lb` load balancer: one state machine per backend that joins active probes,
//! passive health from live traffic, slow start and operator drains.
//!
//! A [`Checker`] probes every backend of an [`lb_core::Pool`] on its own schedule (jittered,
//! bounded by a timeout, never two probes of one backend at once), takes each request's outcome
//! from the proxy through [`lb_core::Observer`] to eject backends that keep failing, and
//! publishes every change to the pool, where the request path reads it from the snapshot
//! without a lock. Subscribers ([`Checker::subscribe`]) get every [`Transition`], starting with
//! the current state of each backend. The rules themselves are plain functions in [`state`].
//!
//! The probe is a trait object ([`Probe`]); [`HttpProbe`] (`GET /health`, 2xx = healthy) and
//! [`TcpProbe`] (a connection opens) come with it, and users can plug in their own.
//!
//! ```no_run
//! use std::sync::Arc;
//! use std::time::Duration;
//!
//! use lb_core::{Pool, RoundRobin};
//! use lb_health::{Checker, HttpProbe, Policy};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let pool = Arc::new(Pool::new(["http://127.0.0.1:8080".parse()?], RoundRobin::new())?);
//! let checker = Checker::new(Arc::clone(&pool), HttpProbe::new("/health")?)
//!     .with_interval(Duration::from_secs(1))
//!     .with_policy(Policy { rise: 2, fall: 3, ..Policy::default() });
//! checker.check_all().await; // one round now: every backend's initial state
//! let mut events = checker.subscribe();
//! tokio::spawn(checker.clone().run(std::future::pending())); // then every second
//! while let Some(transition) = events.recv().await {
//!     println!("{transition}"); // "backend 127.0.0.1:8080 healthy -> unhealthy: ..."
//! }
//! # Ok(())
//! # }
//! ```

mod checker;
mod http;
mod probe;
pub mod state;

pub use checker::{Checker, Events, ProbeRecord};
pub use http::HttpProbe;
pub use probe::{Probe, ProbeError, TcpProbe};
pub use state::{Policy, Reason, Transition};
/// Errors in configuring health checks.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// The health path is not an absolute URL path.
    #[error("invalid health path {0:?}: must start with / and be a valid URL path")]
    InvalidPath(String),
}
