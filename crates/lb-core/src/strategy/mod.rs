//! Choosing one backend for one request.
//!
//! A [`Strategy`] is synchronous, takes `&self`, allocates nothing and takes no lock: it reads the
//! snapshot it is handed and, at most, a few atomics of its own. Each algorithm lives in its own
//! file; this module holds the trait and what a pick may know about the request.

use std::fmt;

use crate::Backend;
use crate::pool::Snapshot;

mod round_robin;

pub use round_robin::RoundRobin;

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
}

/// What a strategy may know about the request it picks for.
///
/// Kept free of HTTP types so that `lb-core` stays independent of any HTTP library: the proxy
/// turns the request into a hash key, and lists the backends a retry must avoid.
#[derive(Debug, Clone, Copy, Default)]
pub struct Context<'a> {
    key: Option<u64>,
    excluded: &'a [u64],
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
