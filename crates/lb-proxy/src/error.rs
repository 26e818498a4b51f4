use std::io;
use std::time::Duration;

use http::StatusCode;
use thiserror::Error;

/// Why a request could not be forwarded. Each maps to the status the client gets
/// ([`status`](Self::status)), and says whether trying another backend is safe
/// ([`is_retryable`](Self::is_retryable)).
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ProxyError {
    /// Every backend is unhealthy (or the pool is empty).
    #[error("no healthy backend")]
    NoHealthyBackend,
    /// Every eligible backend is at its limit of requests in flight, and the queue is full or
    /// the wait in it ran out.
    #[error("every backend is at its limit of requests in flight")]
    Overloaded,
    /// The TCP connection to a backend failed (refused, unreachable...).
    #[error("connect to {backend} failed: {source}")]
    Connect {
        /// The backend's `host:port`.
        backend: String,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// The TCP connection to a backend did not complete in time.
    #[error("connect to {backend} timed out after {timeout:?}")]
    ConnectTimeout {
        /// The backend's `host:port`.
        backend: String,
        /// The connect timeout.
        timeout: Duration,
    },
    /// The backend did not send response headers in time.
    #[error("backend {backend} sent no response within {timeout:?}")]
    ResponseTimeout {
        /// The backend's `host:port`.
        backend: String,
        /// The response timeout.
        timeout: Duration,
    },
    /// The exchange with the backend failed after the request was (possibly) sent.
    #[error("backend {backend} failed: {source}")]
    Upstream {
        /// The backend's `host:port`.
        backend: String,
        /// What hyper said.
        #[source]
        source: hyper::Error,
    },
    /// The backend answered `101 Switching Protocols` to a request that asked for no upgrade.
    #[error("backend {backend} switched protocols unasked")]
    UnexpectedUpgrade {
        /// The backend's `host:port`.
        backend: String,
    },
    /// The request cannot be forwarded at all.
    #[error("{0}")]
    BadRequest(&'static str),
    /// The method is not one a reverse proxy forwards (`CONNECT`).
    #[error("method not allowed")]
    MethodNotAllowed,
    /// A hash key that is not one of `ip`, `header:NAME`, `cookie:NAME`, `query:NAME`, `path`.
    #[error("invalid hash key {0:?}: use ip, header:NAME, cookie:NAME, query:NAME or path")]
    InvalidHashKey(String),
    /// A setting the proxy was built with: the counter parameter name needs escaping.
    #[error("invalid request counter parameter {0:?}: use only letters, digits and - . _ ~")]
    InvalidCounterParam(String),
}

impl ProxyError {
    /// The status code the client gets: 503 with no healthy backend or all of them full, 504 when the backend was too
    /// slow, 502 for other backend failures, 4xx for requests that cannot be forwarded.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoHealthyBackend | ProxyError::Overloaded => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ProxyError::ResponseTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::Connect { .. }
            | ProxyError::ConnectTimeout { .. }
            | ProxyError::Upstream { .. }
            | ProxyError::UnexpectedUpgrade { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::InvalidCounterParam(_) | ProxyError::InvalidHashKey(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }

    /// True when the request provably never reached the backend, so sending it to another one
    /// cannot run it twice.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ProxyError::Connect { .. } | ProxyError::ConnectTimeout { .. }
        )
    }

    /// The short text the client sees: no backend addresses or internals leak to clients.
    pub(crate) fn public_message(&self) -> &'static str {
        match self {
            ProxyError::NoHealthyBackend => "no healthy backend\n",
            ProxyError::Overloaded => "all backends busy\n",
            ProxyError::ResponseTimeout { .. } => "gateway timeout\n",
            ProxyError::Connect { .. }
            | ProxyError::ConnectTimeout { .. }
            | ProxyError::Upstream { .. }
            | ProxyError::UnexpectedUpgrade { .. } => "bad gateway\n",
            ProxyError::BadRequest(why) => why,
            ProxyError::MethodNotAllowed => "method not allowed\n",
            ProxyError::InvalidCounterParam(_) | ProxyError::InvalidHashKey(_) => {
                "internal error\n"
            }
        }
    }
}
