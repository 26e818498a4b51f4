//! Choosing one backend for one request.
//!
//! A [`Strategy`] is synchronous, takes `&self`, allocates nothing and takes no lock: it reads the
//! snapshot it is handed and, at most, a few atomics of its own. Each algorithm lives in its own
//! file; this module holds the trait and what a pick may know about the request.

use std::any::Any;
use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use crate::Backend;
use crate::pool::Snapshot;

mod consistent_hash;
mod least_connections;
mod power_of_two;
mod random;
mod rng;
mod round_robin;
mod weighted_round_robin;

pub use consistent_hash::ConsistentHash;
pub use least_connections::LeastConnections;
pub use power_of_two::{Load, PowerOfTwo};
pub use random::Random;
pub use rng::SplitMix;
pub use round_robin::RoundRobin;
pub use weighted_round_robin::WeightedRoundRobin;

/// Picks one backend for a request.
///
/// `pick` returns an index into [`Snapshot::backends`] of a backend that is in
/// [`Snapshot::eligible`] and not excluded by `ctx`, or `None` when there is none.
///
/// A custom strategy, always the first eligible backend:
///
/// ```
/// use lb_core::{Context, Pool, Snapshot, Strategy};
///
/// #[derive(Debug)]
/// struct First;
///
/// impl Strategy for First {
///     fn pick(&self, snapshot: &Snapshot, ctx: &Context<'_>) -> Option<usize> {
///         snapshot
///             .eligible()
///             .iter()
///             .copied()
///             .find(|&i| !ctx.is_excluded(&snapshot.backends()[i]))
///     }
/// }
///
/// let pool = Pool::new(["http://127.0.0.1:1".parse().unwrap()], First)?;
/// assert_eq!(pool.select(&Context::new()).unwrap().id(), "127.0.0.1:1");
/// # Ok::<(), lb_core::Error>(())
/// ```
pub trait Strategy: Send + Sync + fmt::Debug + 'static {
    /// Picks a backend for one request.
    fn pick(&self, snapshot: &Snapshot, ctx: &Context<'_>) -> Option<usize>;

    /// Builds what picks need from a new set of eligible backends (a lookup table, an
    /// interleaved sequence); the pool calls it when it publishes a snapshot, never per request,
    /// and [`Snapshot::prepared`] hands it back to [`pick`](Self::pick). `eligible` holds indices
    /// into `backends`.
    fn prepare(
        &self,
        backends: &[Arc<Backend>],
        eligible: &[usize],
    ) -> Option<Box<dyn Any + Send + Sync>> {
        let _ = (backends, eligible);
        None
    }

    /// True if the strategy reads response latencies ([`Backend::latency_estimate`]): the proxy
    /// then reports each response's latency with [`Backend::observe_latency`].
    fn uses_latency(&self) -> bool {
        false
    }

    /// True if the strategy reads the request's key ([`Context::key`]): the proxy then computes
    /// one per request.
    fn uses_key(&self) -> bool {
        false
    }
}

/// A boxed strategy is a strategy: lets a program choose one at run time (by name, from its
/// configuration) and hand it to [`Pool::new`](crate::Pool::new).
impl<S: Strategy + ?Sized> Strategy for Box<S> {
    fn pick(&self, snapshot: &Snapshot, ctx: &Context<'_>) -> Option<usize> {
        (**self).pick(snapshot, ctx)
    }

    fn prepare(
        &self,
        backends: &[Arc<Backend>],
        eligible: &[usize],
    ) -> Option<Box<dyn Any + Send + Sync>> {
        (**self).prepare(backends, eligible)
    }

    fn uses_latency(&self) -> bool {
        (**self).uses_latency()
    }

    fn uses_key(&self) -> bool {
        (**self).uses_key()
    }
}

/// What a strategy may know about the request it picks for.
///
/// Kept free of HTTP types so that `lb-core` stays independent of any HTTP library: the proxy
/// turns the request into a hash key, and lists the backends a retry must avoid.
#[derive(Debug, Clone, Copy, Default)]
pub struct Context<'a> {
    key: Option<u64>,
    excluded: &'a [u64],
    now: Option<Instant>,
}

impl<'a> Context<'a> {
    /// A context with no key and no exclusions.
    pub fn new() -> Self {
        Context::default()
    }

    /// Sets the request's hash key (for strategies that map requests to backends by key).
    pub fn with_key(mut self, key: u64) -> Self {
        self.key = Some(key);
        self
    }

    /// Excludes backends by [`Backend::key`]: those a retry already tried.
    pub fn excluding(mut self, keys: &'a [u64]) -> Self {
        self.excluded = keys;
        self
    }

    /// Picks as of `now` rather than the clock's current time (simulations in virtual time).
    pub fn at(mut self, now: Instant) -> Self {
        self.now = Some(now);
        self
    }

    /// The time to pick at: the one given with [`at`](Self::at), else the clock's.
    pub fn now(&self) -> Instant {
        self.now.unwrap_or_else(Instant::now)
    }

    /// The request's hash key, if the proxy computed one.
    pub fn key(&self) -> Option<u64> {
        self.key
    }

    /// True if `backend` must not be picked for this request.
    pub fn is_excluded(&self, backend: &Backend) -> bool {
        !self.excluded.is_empty() && self.excluded.contains(&backend.key())
    }

    /// True if any backend is excluded.
    pub fn has_exclusions(&self) -> bool {
        !self.excluded.is_empty()
    }
}
