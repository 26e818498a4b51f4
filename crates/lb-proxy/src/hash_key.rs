//! What part of a request consistent hashing maps to a backend.

use std::fmt;
use std::str::FromStr;

use http::header::{self, HeaderName, HeaderValue};
use http::request::Parts;
use xxhash_rust::xxh3::xxh3_64;

use crate::ProxyError;

/// The part of a request that picks its backend under consistent hashing.
///
/// Written as `ip`, `header:NAME`, `cookie:NAME`, `query:NAME` or `path`. A request that lacks
/// the part (no such header, cookie or parameter) has no key, and is sent round robin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    /// The client's IP address.
    ClientIp,
    /// The first value of a request header.
    Header(HeaderName),
    /// The value of a cookie.
    Cookie(String),
    /// The raw value of a query parameter (the first one of that name).
    Query(String),
    /// The request path, without the query.
    Path,
}

impl HashKey {
    /// The request's key: xxh3 of the chosen part, as the client sent it.
    pub(crate) fn hash(&self, parts: &Parts, client_ip: &HeaderValue) -> Option<u64> {
        let bytes: &[u8] = match self {
            HashKey::ClientIp => client_ip.as_bytes(),
            HashKey::Header(name) => parts.headers.get(name)?.as_bytes(),
            HashKey::Cookie(name) => parts
                .headers
                .get_all(header::COOKIE)
                .iter()
                .flat_map(|v| v.as_bytes().split(|&b| b == b';'))
                .find_map(|pair| {
                    let (k, v) = split_pair(pair.trim_ascii())?;
                    (k == name.as_bytes()).then_some(v)
                })?,
            HashKey::Query(name) => parts
                .uri
                .query()?
                .as_bytes()
                .split(|&b| b == b'&')
                .find_map(|pair| {
                    let (k, v) = split_pair(pair).unwrap_or((pair, b""));
                    (k == name.as_bytes()).then_some(v)
                })?,
            HashKey::Path => parts.uri.path().as_bytes(),
        };
        Some(xxh3_64(bytes))
    }
}

fn split_pair(pair: &[u8]) -> Option<(&[u8], &[u8])> {
    let eq = pair.iter().position(|&b| b == b'=')?;
    Some((&pair[..eq], &pair[eq + 1..]))
}

impl FromStr for HashKey {
    type Err = ProxyError;

    fn from_str(text: &str) -> Result<Self, ProxyError> {
        let invalid = || ProxyError::InvalidHashKey(text.to_owned());
        match text.split_once(':') {
            None if text == "ip" => Ok(HashKey::ClientIp),
            None if text == "path" => Ok(HashKey::Path),
            Some(("header", name)) => HeaderName::from_bytes(name.as_bytes())
                .map(HashKey::Header)
                .map_err(|_| invalid()),
            Some(("cookie", name)) if !name.is_empty() => Ok(HashKey::Cookie(name.to_owned())),
            Some(("query", name)) if !name.is_empty() => Ok(HashKey::Query(name.to_owned())),
            _ => Err(invalid()),
        }
    }
}

impl fmt::Display for HashKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HashKey::ClientIp => f.write_str("ip"),
            HashKey::Header(name) => write!(f, "header:{name}"),
            HashKey::Cookie(name) => write!(f, "cookie:{name}"),
            HashKey::Query(name) => write!(f, "query:{name}"),
            HashKey::Path => f.write_str("path"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(uri: &str, headers: &[(&str, &str)]) -> Parts {
        let mut request = http::Request::builder().uri(uri);
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        request.body(()).unwrap().into_parts().0
    }

    fn key(spec: &str, uri: &str, headers: &[(&str, &str)]) -> Option<u64> {
        spec.parse::<HashKey>()
            .unwrap()
            .hash(&parts(uri, headers), &HeaderValue::from_static("10.0.0.9"))
    }

    #[test]
    fn each_kind_reads_its_part() {
        assert_eq!(key("ip", "/", &[]), Some(xxh3_64(b"10.0.0.9")));
        assert_eq!(key("path", "/a/b?x=1", &[]), Some(xxh3_64(b"/a/b")));
        assert_eq!(
            key("header:x-user", "/", &[("x-user", "ann")]),
            Some(xxh3_64(b"ann"))
        );
        assert_eq!(
            key("query:uid", "/p?a=1&uid=42&uid=43", &[]),
            Some(xxh3_64(b"42"))
        );
        assert_eq!(
            key(
                "cookie:session",
                "/",
                &[("cookie", "theme=dark; session=abc"), ("cookie", "x=1")]
            ),
            Some(xxh3_64(b"abc"))
        );
    }

    #[test]
    fn a_missing_part_gives_no_key() {
        assert_eq!(key("header:x-user", "/", &[]), None);
        assert_eq!(key("cookie:session", "/", &[("cookie", "other=1")]), None);
        assert_eq!(key("query:uid", "/p", &[]), None);
        assert_eq!(key("query:uid", "/p?uidx=1", &[]), None);
    }

    #[test]
    fn bad_specs_are_named() {
        for bad in [
            "",
            "ipv6",
            "header:",
            "header:bad name",
            "cookie:",
            "query:",
            "body",
        ] {
            let err = bad.parse::<HashKey>().unwrap_err().to_string();
            assert!(err.contains(&format!("{bad:?}")), "{err}");
        }
        for good in ["ip", "path", "header:x-user", "cookie:s", "query:u"] {
            assert_eq!(good.parse::<HashKey>().unwrap().to_string(), good);
        }
    }
}
