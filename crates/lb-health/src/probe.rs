//! The probe seam: how one backend is checked once.

use std::fmt;
use std::io;
use std::time::Duration;

use async_trait::async_trait;
use lb_core::{Address, Backend};
use thiserror::Error;
use tokio::net::TcpStream;

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
/// use tokio::io::{AsyncReadExt, AsyncWriteExt};
///
/// /// Healthy when a Redis-protocol backend answers `PING` with `+PONG`.
/// #[derive(Debug)]
/// struct RedisPing;
///
/// #[async_trait]
/// impl Probe for RedisPing {
///     async fn probe(&self, backend: &Backend) -> Result<(), ProbeError> {
///         let mut stream = tokio::net::TcpStream::connect(backend.id())
///             .await
///             .map_err(ProbeError::Connect)?;
///         let mut answer = [0u8; 7];
///         async {
///             stream.write_all(b"PING\r\n").await?;
///             stream.read_exact(&mut answer).await
///         }
///         .await
///         .map_err(|e| ProbeError::Other(e.into()))?;
///         if &answer == b"+PONG\r\n" {
///             Ok(())
///         } else {
///             Err(ProbeError::Other("no PONG".into()))
///         }
///     }
/// }
///
/// // Then: `Checker::new(pool, RedisPing)`.
/// ```
#[async_trait]
pub trait Probe: Send + Sync + fmt::Debug + 'static {
    /// Checks `backend` once.
    async fn probe(&self, backend: &Backend) -> Result<(), ProbeError>;
}

/// A shared probe is a probe: lets a program choose one at run time (`Arc<dyn Probe>`) and keep
/// a handle on it.
#[async_trait]
impl<P: Probe + ?Sized> Probe for std::sync::Arc<P> {
    async fn probe(&self, backend: &Backend) -> Result<(), ProbeError> {
        (**self).probe(backend).await
    }
}

/// Opens a TCP connection to `address` (resolving a name at each call), with `TCP_NODELAY`.
pub(crate) async fn connect(address: &Address) -> Result<TcpStream, ProbeError> {
    let stream = match address {
        Address::Ip(addr) => TcpStream::connect(addr).await,
        Address::Name(host, port) => TcpStream::connect((host.as_str(), *port)).await,
    }
    .map_err(ProbeError::Connect)?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// Healthy when a TCP connection to the backend can be opened (HAProxy's plain `check`); for
/// backends that do not speak HTTP, or where an HTTP health endpoint is missing.
#[derive(Debug, Clone, Copy, Default)]
pub struct TcpProbe;

#[async_trait]
impl Probe for TcpProbe {
    async fn probe(&self, backend: &Backend) -> Result<(), ProbeError> {
        connect(backend.address()).await.map(drop)
    }
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
