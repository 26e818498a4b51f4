//! What changes between the request a client sent and the one a backend gets, and back.
//!
//! Everything else (method, path, query, the remaining headers, the body) passes unchanged.

use bytes::{BufMut, BytesMut};
use http::header::{self, HeaderName, HeaderValue};
use http::uri::{PathAndQuery, Uri};
use http::{HeaderMap, Version};

use crate::ProxyError;

const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1), plus the
/// `Keep-Alive` and `Proxy-Connection` headers older clients send.
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    KEEP_ALIVE,
    PROXY_CONNECTION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// True if the request asks to switch protocols (`Connection: upgrade` plus `Upgrade: ...`),
/// as a WebSocket handshake does.
pub(crate) fn is_upgrade_request(version: Version, headers: &HeaderMap) -> bool {
    version == Version::HTTP_11
        && headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .any(|v| has_token(v, "upgrade"))
}

fn has_token(value: &HeaderValue, token: &str) -> bool {
    value
        .to_str()
        .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
}

/// Removes hop-by-hop headers and those the `Connection` header names. With `upgrade`, keeps
/// `Upgrade` and sets `Connection: upgrade`, so the handshake reaches the other side.
///
/// On the hot path for every request and response (most carry `Connection: keep-alive`), so it
/// looks at each header name once, removes only what is there, and allocates only for a
/// `Connection` token that names some other header.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    let mut present = 0u8;
    let mut named: Vec<HeaderName> = Vec::new();
    for (name, value) in headers.iter() {
        let Some(i) = hop_by_hop_index(name) else {
            continue;
        };
        present |= 1 << i;
        // Connection: the options it lists are headers to remove too. Almost always it is a
        // single plain option, which names none.
        if i != 0 || is_plain_connection_option(value.as_bytes()) {
            continue;
        }
        for token in value.as_bytes().split(|&b| b == b',') {
            let token = token.trim_ascii();
            if token.is_empty() || is_plain_connection_option(token) {
                continue;
            }
            // `Connection: host` must not take the client's Host away.
            if let Ok(name) = HeaderName::from_bytes(token)
                && name != header::HOST
            {
                named.push(name);
            }
        }
    }
    if present == 0 {
        return;
    }
    for (i, hop) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 && !(upgrade && hop == header::UPGRADE) {
            headers.remove(hop);
        }
    }
    for name in named {
        headers.remove(name);
    }
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// The index in [`HOP_BY_HOP`] of `name`, if it is one. `HeaderName`s compare without their
/// text: two standard names by their tag, a standard and a custom one not at all, two custom
/// ones by length first. (Comparing `as_str()` by length, then bytes, cost twice as much.)
fn hop_by_hop_index(name: &HeaderName) -> Option<usize> {
    HOP_BY_HOP.iter().position(|hop| hop == name)
}

/// `Connection` options that are not header names to remove, or are removed anyway.
fn is_plain_connection_option(token: &[u8]) -> bool {
    [&b"keep-alive"[..], b"close", b"upgrade", b"te", b"trailer"]
        .iter()
        .any(|option| token.eq_ignore_ascii_case(option))
}

/// Sets the forwarding headers: appends the client's address to `X-Forwarded-For`, and sets
/// `X-Forwarded-Proto: http` and `X-Forwarded-Host` to the host the client asked for.
///
/// A request target with an authority (HTTP/1.1 absolute-form, HTTP/2's `:authority`) names the
/// host, and `Host` is set to it (RFC 9112 §3.2.2); otherwise the client's `Host` is kept as is.
pub(crate) fn add_forwarding_headers(headers: &mut HeaderMap, uri: &Uri, client_ip: &HeaderValue) {
    if let Some(host) = uri
        .authority()
        .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    {
        headers.insert(header::HOST, host);
    }
    match headers.entry(X_FORWARDED_FOR) {
        header::Entry::Vacant(slot) => {
            slot.insert(client_ip.clone());
        }
        header::Entry::Occupied(mut slot) => {
            let mut joined = Vec::with_capacity(64);
            for value in slot.iter() {
                joined.extend_from_slice(value.as_bytes());
                joined.extend_from_slice(b", ");
            }
            joined.extend_from_slice(client_ip.as_bytes());
            if let Ok(value) = HeaderValue::from_bytes(&joined) {
                slot.insert(value);
            }
        }
    }
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    match headers.get(header::HOST).cloned() {
        Some(host) => headers.insert(X_FORWARDED_HOST, host),
        None => headers.remove(X_FORWARDED_HOST),
    };
}

/// Turns the request target into origin form (`/path?query`) with `param=n` appended to the
/// query (`?` or `&` as needed). `OPTIONS *` stays `*`.
pub(crate) fn rewrite_target(
    uri: &mut Uri,
    counter: Option<(&str, u64)>,
) -> Result<(), ProxyError> {
    let target = uri.path_and_query().map_or("/", PathAndQuery::as_str);
    let Some((param, n)) = counter.filter(|_| target != "*") else {
        if uri.scheme().is_some() || uri.authority().is_some() {
            let origin = PathAndQuery::try_from(target)
                .map_err(|_| ProxyError::BadRequest("bad request target\n"))?;
            *uri = Uri::from(origin);
        }
        return Ok(());
    };
    let separator: &[u8] = match uri.query() {
        None => b"?",
        Some(q) if q.is_empty() || q.ends_with('&') => b"",
        Some(_) => b"&",
    };
    let mut digits = itoa::Buffer::new();
    let digits = digits.format(n);
    let mut buf =
        BytesMut::with_capacity(target.len() + separator.len() + param.len() + 1 + digits.len());
    buf.put_slice(target.as_bytes());
    buf.put_slice(separator);
    buf.put_slice(param.as_bytes());
    buf.put_u8(b'=');
    buf.put_slice(digits.as_bytes());
    let origin = PathAndQuery::from_maybe_shared(buf.freeze())
        .map_err(|_| ProxyError::BadRequest("bad request target\n"))?;
    *uri = Uri::from(origin);
    Ok(())
}

/// True if `name` can be used as a query parameter name without escaping.
pub(crate) fn is_valid_param(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        map
    }

    fn target(uri: &str, counter: Option<(&str, u64)>) -> String {
        let mut uri: Uri = uri.parse().unwrap();
        rewrite_target(&mut uri, counter).unwrap();
        uri.to_string()
    }

    #[test]
    fn counter_is_appended_with_the_right_separator() {
        let c = Some(("reqCounter", 7));
        assert_eq!(target("/ping", c), "/ping?reqCounter=7");
        assert_eq!(target("/ping?a=1", c), "/ping?a=1&reqCounter=7");
        assert_eq!(target("/ping?", c), "/ping?reqCounter=7");
        assert_eq!(target("/ping?a=1&", c), "/ping?a=1&reqCounter=7");
        assert_eq!(
            target("/", Some(("n", 18_446_744_073_709_551_615))),
            "/?n=18446744073709551615"
        );
        assert_eq!(target("/a%20b?x=%2F", c), "/a%20b?x=%2F&reqCounter=7");
        assert_eq!(target("*", c), "*");
    }

    #[test]
    fn absolute_form_becomes_origin_form() {
        assert_eq!(target("http://example.com/a?b=1", None), "/a?b=1");
        assert_eq!(target("http://example.com", Some(("n", 1))), "/?n=1");
        assert_eq!(target("/kept?as=is", None), "/kept?as=is");
    }

    #[test]
    fn hop_by_hop_headers_and_those_named_in_connection_go() {
        let mut h = headers(&[
            ("connection", "keep-alive, X-Secret"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("te", "trailers"),
            ("trailer", "x-checksum"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("x-secret", "1"),
            ("x-kept", "2"),
            ("host", "example.com"),
        ]);
        strip_hop_by_hop(&mut h, false);
        let mut left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(left, ["host", "x-kept"]);
    }

    #[test]
    fn hop_by_hop_names_are_found_by_length_then_name() {
        for (i, hop) in HOP_BY_HOP.iter().enumerate() {
            assert_eq!(hop_by_hop_index(hop), Some(i), "{hop}");
        }
        for other in [
            "host",
            "date",
            "content-length",
            "x-upgrade",
            "tee",
            "connections",
        ] {
            assert_eq!(
                hop_by_hop_index(&HeaderName::from_static(other)),
                None,
                "{other}"
            );
        }
    }

    #[test]
    fn connection_cannot_name_host_away() {
        let mut h = headers(&[
            ("connection", "host, x-a"),
            ("host", "example.com"),
            ("x-a", "1"),
        ]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h["host"], "example.com");
        assert!(!h.contains_key("x-a"));
    }

    #[test]
    fn an_upgrade_keeps_upgrade_and_says_connection_upgrade() {
        let mut h = headers(&[
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
            ("keep-alive", "1"),
        ]);
        assert!(is_upgrade_request(Version::HTTP_11, &h));
        assert!(!is_upgrade_request(Version::HTTP_10, &h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["connection"], "upgrade");
        assert!(!h.contains_key("keep-alive"));
        assert!(!is_upgrade_request(
            Version::HTTP_11,
            &headers(&[("upgrade", "websocket")])
        ));
    }

    #[test]
    fn forwarded_for_appends_and_proto_and_host_are_set() {
        let ip = HeaderValue::from_static("127.0.0.1");
        let uri: Uri = "/".parse().unwrap();

        let mut h = headers(&[("host", "shop.example:8000")]);
        add_forwarding_headers(&mut h, &uri, &ip);
        assert_eq!(h["x-forwarded-for"], "127.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "shop.example:8000");
        assert_eq!(h["host"], "shop.example:8000");

        let mut h = headers(&[
            ("host", "a"),
            ("x-forwarded-for", "10.0.0.1"),
            ("x-forwarded-for", "10.0.0.2, 10.0.0.3"),
            ("x-forwarded-proto", "https"),
        ]);
        add_forwarding_headers(&mut h, &uri, &ip);
        assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
        assert_eq!(
            h["x-forwarded-for"],
            "10.0.0.1, 10.0.0.2, 10.0.0.3, 127.0.0.1"
        );
        assert_eq!(h["x-forwarded-proto"], "http");
    }

    #[test]
    fn an_absolute_target_names_the_host() {
        let ip = HeaderValue::from_static("127.0.0.1");
        let mut h = headers(&[("host", "other.example")]);
        add_forwarding_headers(&mut h, &"http://api.example/x".parse().unwrap(), &ip);
        assert_eq!(h["host"], "api.example");
        assert_eq!(h["x-forwarded-host"], "api.example");
    }

    #[test]
    fn host_comes_from_the_authority_when_missing() {
        let ip = HeaderValue::from_static("::1");
        let uri: Uri = "http://api.example:81/x".parse().unwrap();
        let mut h = HeaderMap::new();
        add_forwarding_headers(&mut h, &uri, &ip);
        assert_eq!(h["host"], "api.example:81");
        assert_eq!(h["x-forwarded-host"], "api.example:81");

        let mut h = headers(&[("x-forwarded-host", "spoofed")]);
        add_forwarding_headers(&mut h, &"/x".parse().unwrap(), &ip);
        assert!(!h.contains_key("x-forwarded-host"));
    }

    #[test]
    fn param_names_are_checked() {
        assert!(is_valid_param("reqCounter"));
        assert!(is_valid_param("a-b.c_d~"));
        assert!(!is_valid_param(""));
        assert!(!is_valid_param("a b"));
        assert!(!is_valid_param("a&b"));
        assert!(!is_valid_param("a=b"));
    }
}
