//! The probe seam: how one backend is checked once.

use std::fmt;
use std::io;
use std::time::Duration;

use async_trait::async_trait;
use lb_core::Backend;
use thiserror::Error;

/// Checks one backend once. `Ok(())` means healthy.
///
/// The checker calls `probe` concurrently for different backends, never twice at once for the
/// same backend, and bounds every call with its timeout, so an implementation need not add its
/// own. Plug in your own to check something other than HTTP:
///
/// ```
/// use async_trait::async_trait;
/// use lb_core::Backend;
/// use lb_health::{Probe, ProbeError};
///
/// /// Healthy when a TCP connection can be opened.
/// #[derive(Debug)]
/// struct TcpConnect;
///
/// #[async_trait]
/// impl Probe for TcpConnect {
///     async fn probe(&self, backend: &Backend) -> Result<(), ProbeError> {
///         let addr = backend.id().to_owned();
///         tokio::net::TcpStream::connect(addr).await.map_err(ProbeError::Connect)?;
///         Ok(())
///     }
/// }
/// ```
#[async_trait]
pub trait Probe: Send + Sync + fmt::Debug + 'static {
    /// Checks `backend` once.
    async fn probe(&self, backend: &Backend) -> Result<(), ProbeError>;
}

/// Why a probe found a backend unhealthy. The message is what the health log line shows.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ProbeError {
    /// The TCP connection could not be opened.
    #[error("connect failed: {0}")]
    Connect(#[source] io::Error),
    /// No answer within the probe timeout.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The backend answered with a status outside the expected range.
    #[error("unexpected status {0}")]
    Status(u16),
    /// The exchange failed after connecting (closed, malformed answer...).
    #[error("http error: {0}")]
    Http(#[source] hyper::Error),
    /// Anything else a custom probe wants to report.
    #[error("{0}")]
    Other(Box<dyn std::error::Error + Send + Sync>),
}
