use thiserror::Error;

/// What can go wrong while describing backends or building a pool.
///
/// Every message names the value at fault, so it can be shown to the user as is.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// The backend address is not a URL.
    #[error("invalid backend URL {url:?}: {reason}")]
    InvalidUrl {
        /// The text as given.
        url: String,
        /// Why it does not parse.
        reason: String,
    },
    /// The URL's scheme is not one the proxy speaks.
    #[error("unsupported scheme {scheme:?} in backend {url:?} (expected http or h2c)")]
    UnsupportedScheme {
        /// The scheme found.
        scheme: String,
        /// The URL as given.
        url: String,
    },
    /// The URL carries a part a backend address cannot have.
    #[error("backend {url:?} must be scheme://host:port only (found {part})")]
    UnexpectedPart {
        /// The URL as given.
        url: String,
        /// The offending part: "a path", "a query", "credentials"...
        part: &'static str,
    },
    /// A `,key=value` option after the URL is not known.
    #[error("unknown option {key:?} in backend {spec:?} (known: weight, protocol)")]
    UnknownOption {
        /// The option name.
        key: String,
        /// The whole backend text.
        spec: String,
    },
    /// A `,key=value` option has a value that does not fit.
    #[error("invalid {key} {value:?} in backend {spec:?}: {reason}")]
    InvalidOption {
        /// The option name.
        key: &'static str,
        /// The value as given.
        value: String,
        /// The whole backend text.
        spec: String,
        /// What the value must be.
        reason: &'static str,
    },
    /// Two backends share one `host:port`.
    #[error("duplicate backend {id}")]
    DuplicateBackend {
        /// The `host:port` given twice.
        id: String,
    },
}
