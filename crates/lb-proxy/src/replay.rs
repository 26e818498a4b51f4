//! A copy of a bodyless request's head, to send it again to another backend should the one it
//! went to break the connection before answering (idempotent requests may be, RFC 9110 §9.2.2).
//!
//! It is made for every such request and almost never used, so it is kept as bytes in one
//! buffer: method, target, then each header's name and value, every field ended by `\n`, which
//! none of them can contain. Cloning the `Request` instead cost two allocations and an atomic
//! increment and decrement per header value (the values share hyper's read buffer): 6 % of a
//! request's CPU time. This is one allocation and a copy of a few hundred bytes; the rare replay
//! parses it back.

use http::header::{HeaderName, HeaderValue};
use http::{Method, Request, Uri, Version};

use crate::body::RequestBody;

/// See the [module documentation](self).
#[derive(Debug)]
pub(crate) struct Replay(Vec<u8>);

impl Replay {
    /// Copies the head of `request` (its body is not copied: only bodyless requests are replayed).
    pub(crate) fn of<B>(request: &Request<B>) -> Replay {
        let uri = request.uri();
        let absolute;
        let target = match uri.path_and_query() {
            Some(target) if uri.authority().is_none() => target.as_str(),
            // Not what the proxy sends (it sends origin form), but a copy should be whole.
            _ => {
                absolute = uri.to_string();
                &absolute
            }
        };
        let headers = request.headers();
        let size = request.method().as_str().len()
            + target.len()
            + headers
                .iter()
                .map(|(name, value)| name.as_str().len() + value.len() + 2)
                .sum::<usize>()
            + 2;
        let mut head = Vec::with_capacity(size);
        for field in [request.method().as_str().as_bytes(), target.as_bytes()] {
            head.extend_from_slice(field);
            head.push(b'\n');
        }
        for (name, value) in headers {
            head.extend_from_slice(name.as_str().as_bytes());
            head.push(b'\n');
            head.extend_from_slice(value.as_bytes());
            head.push(b'\n');
        }
        Replay(head)
    }

    /// The request again, as HTTP/1.1 (as the proxy prepares every request) with an empty body.
    /// `None` only if the copy does not parse back, which a copy made by [`of`](Self::of)
    /// always does.
    pub(crate) fn request(&self) -> Option<Request<RequestBody>> {
        let mut fields = self.0.split(|&b| b == b'\n');
        let method = Method::from_bytes(fields.next()?).ok()?;
        let uri = Uri::try_from(fields.next()?).ok()?;
        let mut request = Request::new(RequestBody::empty());
        *request.method_mut() = method;
        *request.uri_mut() = uri;
        *request.version_mut() = Version::HTTP_11;
        let headers = request.headers_mut();
        // A name is never empty: the empty field after the last `\n` ends the list.
        while let Some(name) = fields.next().filter(|name| !name.is_empty()) {
            let value = fields.next()?;
            headers.append(
                HeaderName::from_bytes(name).ok()?,
                HeaderValue::from_bytes(value).ok()?,
            );
        }
        Some(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: Method, uri: &str, headers: &[(&str, &[u8])]) -> Request<()> {
        let mut request = Request::new(());
        *request.method_mut() = method;
        *request.uri_mut() = uri.parse().unwrap();
        for (name, value) in headers {
            request.headers_mut().append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_bytes(value).unwrap(),
            );
        }
        request
    }

    fn assert_same_head<A, B>(a: &Request<A>, b: &Request<B>) {
        assert_eq!(a.method(), b.method());
        assert_eq!(a.uri(), b.uri());
        assert_eq!(a.version(), b.version());
        assert_eq!(a.headers(), b.headers());
    }

    #[test]
    fn the_head_comes_back_as_it_was() {
        let original = request(
            Method::GET,
            "/a%20b?x=1&reqCounter=7",
            &[
                ("host", b"example.com:8080"),
                ("accept", b"*/*"),
                ("x-multi", b"one"),
                ("x-multi", b"two, three"),
                ("x-empty", b""),
                ("x-tab", b"a\tb"),
                ("x-latin", &[b'a', 0xe9, b'b']),
                ("x-forwarded-for", b"10.0.0.1, 127.0.0.1"),
            ],
        );
        let replayed = Replay::of(&original).request().unwrap();
        assert_same_head(&original, &replayed);
        let values: Vec<_> = replayed.headers().get_all("x-multi").iter().collect();
        assert_eq!(
            values,
            ["one", "two, three"],
            "repeated headers keep their order"
        );
    }

    #[test]
    fn any_method_and_target_form_comes_back() {
        for (method, target) in [
            (Method::DELETE, "/items/1"),
            (Method::OPTIONS, "*"),
            (Method::from_bytes(b"PURGE").unwrap(), "/cache?all"),
            (Method::GET, "http://example.com/absolute?q"),
        ] {
            let original = request(method, target, &[]);
            assert_same_head(&original, &Replay::of(&original).request().unwrap());
        }
    }

    #[test]
    fn a_damaged_copy_gives_no_request_rather_than_a_wrong_one() {
        assert!(Replay(b"GET\n/\nhost".to_vec()).request().is_none());
        assert!(Replay(b"G T\n/\n".to_vec()).request().is_none());
        assert!(
            Replay(b"GET\n/\nbad name\nv\n".to_vec())
                .request()
                .is_none()
        );
    }
}
