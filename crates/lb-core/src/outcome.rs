//! What the request path tells passive health: how each request to a backend went.

use std::fmt;
use std::sync::Arc;

use crate::Backend;

/// How one request to a backend ended, as far as the backend's health is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// The backend answered with a status below 500.
    Success,
    /// The backend answered with a 5xx status.
    ServerError(u16),
    /// No connection could be made (refused, unreachable, connect timeout).
    ConnectFailed,
    /// The connection broke before a complete response head arrived.
    Reset,
    /// No response head within the response timeout.
    Timeout,
}

impl Outcome {
    /// True for everything but [`Outcome::Success`].
    pub fn is_failure(self) -> bool {
        self != Outcome::Success
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Success => f.write_str("success"),
            Outcome::ServerError(status) => write!(f, "status {status}"),
            Outcome::ConnectFailed => f.write_str("connect failed"),
            Outcome::Reset => f.write_str("connection reset"),
            Outcome::Timeout => f.write_str("response timeout"),
        }
    }
}

/// Receives the [`Outcome`] of every request the proxy sends: the seam between the request path
/// and passive health (`lb_health::Checker` implements it).
///
/// `observe` runs on the request path, once per request: an implementation must be cheap and
/// must not block (count with atomics, hand anything slower to a task).
pub trait Observer: Send + Sync + fmt::Debug + 'static {
    /// Called when a request to `backend` has ended as `outcome`.
    fn observe(&self, backend: &Arc<Backend>, outcome: Outcome);
}
