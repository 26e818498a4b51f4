//! The default probe: `GET <backend><path>`, healthy on 2xx.

use std::fmt;
use std::ops::RangeInclusive;

use async_trait::async_trait;
use bytes::Bytes;
use http::uri::PathAndQuery;
use http::{Request, header};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use lb_core::Backend;

use crate::probe::connect;
use crate::{Error, Probe, ProbeError};

/// `GET <path>` over a new HTTP/1.1 connection; a 2xx status (or the range set with
/// [`with_expected_status`](Self::with_expected_status)) is healthy.
///
/// A fresh connection per probe (as HAProxy does) checks that the backend still accepts new
/// connections, which pooled ones would hide. The request carries `Host: <backend host:port>`,
/// `User-Agent: lb-health` and `Connection: close`; the response body is not read.
#[derive(Clone)]
pub struct HttpProbe {
    path: PathAndQuery,
    expect: RangeInclusive<u16>,
}

impl HttpProbe {
    /// Probes `path` (default `/health`); it must be an absolute path, optionally with a query.
    pub fn new(path: &str) -> Result<Self, Error> {
        if !path.starts_with('/') {
            return Err(Error::InvalidPath(path.to_owned()));
        }
        let path = path
            .parse::<PathAndQuery>()
            .map_err(|_| Error::InvalidPath(path.to_owned()))?;
        Ok(HttpProbe {
            path,
            expect: 200..=299,
        })
    }

    /// The statuses that mean healthy (default `200..=299`).
    pub fn with_expected_status(mut self, expect: RangeInclusive<u16>) -> Self {
        self.expect = expect;
        self
    }

    /// The path this probe requests.
    pub fn path(&self) -> &str {
        self.path.as_str()
    }
}

impl Default for HttpProbe {
    fn default() -> Self {
        HttpProbe {
            path: PathAndQuery::from_static("/health"),
            expect: 200..=299,
        }
    }
}

impl fmt::Debug for HttpProbe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpProbe")
            .field("path", &self.path.as_str())
            .field("expect", &self.expect)
            .finish()
    }
}

#[async_trait]
impl Probe for HttpProbe {
    async fn probe(&self, backend: &Backend) -> Result<(), ProbeError> {
        let stream = connect(backend.address()).await?;
        let _ = stream.set_nodelay(true);
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(ProbeError::Http)?;
        let request = Request::get(self.path.as_str())
            .header(header::HOST, backend.id())
            .header(header::USER_AGENT, "lb-health")
            .header(header::CONNECTION, "close")
            .body(Empty::<Bytes>::new())
            .map_err(|e| ProbeError::Other(e.into()))?;
        // Drive the connection here rather than in a spawned task, so that a probe cancelled by
        // its timeout takes its connection with it.
        let mut conn = std::pin::pin!(conn);
        let mut response = std::pin::pin!(sender.send_request(request));
        let response = tokio::select! {
            response = &mut response => response,
            ended = &mut conn => match ended {
                Err(e) => return Err(ProbeError::Http(e)),
                // A short answer with `Connection: close` can end the connection in the same
                // poll that delivers the response; the response is then ready (or an error).
                Ok(()) => response.await,
            },
        }
        .map_err(ProbeError::Http)?;
        if self.expect.contains(&response.status().as_u16()) {
            Ok(())
        } else {
            Err(ProbeError::Status(response.status().as_u16()))
        }
    }
}
