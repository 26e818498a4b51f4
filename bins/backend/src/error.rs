//! Why the service gave up on a request: both cases end the connection without a response.

/// An error returned from the service; hyper answers it by closing the connection (HTTP/1.1)
/// or resetting the stream (HTTP/2), never with a response.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    /// `GET /reset` asked for the connection to be dropped.
    #[error("connection reset on request (GET /reset)")]
    Reset,
    /// The request body could not be read to its end.
    #[error("reading the request body: {0}")]
    Body(#[from] hyper::Error),
}
