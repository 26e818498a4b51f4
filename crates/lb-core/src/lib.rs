//! The core of the `lb` load balancer: backends, the backend pool and the selection strategies.
//!
//! - [`BackendSpec`] is a backend as a user writes it (`http://127.0.0.1:8080,weight=3`);
//!   [`Backend`] is a live one, with its health and in-flight count as atomics.
//! - [`Pool`] holds an immutable [`Snapshot`] of the backends and which of them are eligible,
//!   swapped whole by writers (the health checker, a reload) and read without a lock.
//! - [`Strategy`] picks one backend per request from a snapshot; [`RoundRobin`] is the first.
//!
//! What it deliberately does not do: I/O. There is no runtime and no HTTP library here, only
//! `std`, so the crate can be embedded anywhere and its examples run without tokio. Health
//! checking lives in `lb-health`, forwarding in `lb-proxy`; both talk to each other only through
//! the [`Pool`].
//!
//! ```
//! use lb_core::{Context, Pool, RoundRobin};
//!
//! let pool = Pool::new(
//!     ["http://127.0.0.1:8080", "http://127.0.0.1:8081,weight=2"].map(|u| u.parse().unwrap()),
//!     RoundRobin::new(),
//! )?;
//! let backend = pool.select(&Context::new()).expect("two healthy backends");
//! let _guard = backend.start_request(); // counts the request in flight until dropped
//! assert_eq!(backend.in_flight(), 1);
//! # Ok::<(), lb_core::Error>(())
//! ```

mod backend;
mod error;
mod outcome;
mod pool;
pub mod stats;
pub mod strategy;

pub use backend::{Address, Backend, BackendSpec, FULL_WEIGHT, Health, InFlight, Protocol};
pub use error::Error;
pub use outcome::{Observer, Outcome};
pub use pool::{Pool, Reconfigured, Snapshot};
pub use stats::Stats;
pub use strategy::{
    ConsistentHash, Context, LeastConnections, Load, PowerOfTwo, Random, RoundRobin, SplitMix,
    Strategy, WeightedRoundRobin,
};
