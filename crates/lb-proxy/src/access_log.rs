//! The access log seam: one entry per request, handed over when its response has ended.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Method, Uri};
use lb_core::Backend;

/// Receives one [`AccessEntry`] per request, once its response has been sent (or abandoned by
/// the client). Runs on the request path, on the worker thread that served the request: an
/// implementation must be cheap and must not block (buffer, and write in bulk).
pub trait AccessLog: Send + Sync + fmt::Debug + 'static {
    /// Records one request.
    fn log(&self, entry: &AccessEntry<'_>);
}

/// One request, as the access log sees it.
#[derive(Debug)]
#[non_exhaustive]
pub struct AccessEntry<'a> {
    /// The client's address.
    pub client: SocketAddr,
    /// The request's method.
    pub method: &'a Method,
    /// The request target as the client sent it (path and query, before any rewriting).
    pub target: &'a str,
    /// The status sent to the client (the backend's, or the proxy's own error status); 499 if
    /// the client went away before an answer was ready (nginx's convention).
    pub status: u16,
    /// The backend that answered; `None` when the proxy answered itself.
    pub backend: Option<&'a str>,
    /// From sending the request to the backend to its response headers.
    pub upstream: Option<Duration>,
    /// From receiving the request to the end of its response.
    pub total: Duration,
}

impl<'a> AccessEntry<'a> {
    /// An entry with these fields, in the order they are declared (for tests of an
    /// [`AccessLog`]).
    pub fn new(
        client: SocketAddr,
        method: &'a Method,
        target: &'a str,
        status: u16,
        backend: Option<&'a str>,
        upstream: Option<Duration>,
        total: Duration,
    ) -> Self {
        AccessEntry {
            client,
            method,
            target,
            status,
            backend,
            upstream,
            total,
        }
    }
}

/// An entry waiting for its response to end; logged when dropped.
pub(crate) struct Pending {
    pub(crate) sink: Arc<dyn AccessLog>,
    pub(crate) client: SocketAddr,
    pub(crate) method: Method,
    /// The request's target: cloning a `Uri` shares its bytes, where a `String` would copy.
    pub(crate) target: Uri,
    pub(crate) status: u16,
    pub(crate) backend: Option<Arc<Backend>>,
    pub(crate) upstream: Option<Duration>,
    pub(crate) started: Instant,
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.sink.log(&AccessEntry {
            client: self.client,
            method: &self.method,
            target: self.target.path_and_query().map_or_else(
                || self.target.authority().map_or("", |a| a.as_str()),
                |p| p.as_str(),
            ),
            status: self.status,
            backend: self.backend.as_deref().map(Backend::id),
            upstream: self.upstream,
            total: self.started.elapsed(),
        });
    }
}

impl fmt::Debug for Pending {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pending")
            .field("target", &self.target)
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}
