//! `ANY /echo`: describes the request back as JSON, counting its body without keeping it.

use std::collections::BTreeMap;

use http::{Response, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde::Serialize;

use crate::{body, error::Error};

/// The JSON document `/echo` answers with.
#[derive(Debug, Serialize)]
struct Echo<'a> {
    id: &'a str,
    method: &'a str,
    /// As received, percent-encoding and all.
    path: &'a str,
    /// As received, `""` if there was none.
    query: &'a str,
    /// Lowercase names; every value, in the order it arrived; non-UTF-8 bytes replaced.
    headers: BTreeMap<&'a str, Vec<String>>,
    body_bytes: u64,
    /// The HTTP version the request arrived in (`HTTP/1.1`, `HTTP/2.0`): shows which protocol a
    /// proxy in front spoke.
    version: String,
}

/// Reads the body to its end frame by frame (so memory stays flat for any upload) and answers
/// 200 with the [`Echo`] document; a body that fails to arrive ends the connection.
pub(crate) async fn respond(
    request: http::Request<Incoming>,
    id: &str,
) -> Result<Response<body::Body>, Error> {
    let (parts, mut incoming) = request.into_parts();
    let mut body_bytes = 0u64;
    while let Some(frame) = incoming.frame().await {
        if let Some(data) = frame?.data_ref() {
            body_bytes += data.len() as u64;
        }
    }
    let mut headers: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (name, value) in &parts.headers {
        headers
            .entry(name.as_str())
            .or_default()
            .push(String::from_utf8_lossy(value.as_bytes()).into_owned());
    }
    let echo = Echo {
        id,
        method: parts.method.as_str(),
        path: parts.uri.path(),
        query: parts.uri.query().unwrap_or(""),
        headers,
        body_bytes,
        version: format!("{:?}", parts.version),
    };
    let mut json = serde_json::to_vec(&echo).unwrap_or_else(|e| {
        // Unreachable with string keys and values; answer something well-formed regardless.
        tracing::error!("serializing /echo: {e}");
        b"{}".to_vec()
    });
    json.push(b'\n');
    let mut response = Response::new(body::full(json));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    Ok(response)
}
