//! Which endpoint a request is for: pure parsing of the method, path and query.

use std::time::Duration;

use http::{Method, StatusCode};

/// `GET /stream/<n>` sends its chunks this far apart unless `?interval_ms=` says otherwise.
pub(crate) const DEFAULT_STREAM_INTERVAL: Duration = Duration::from_millis(10);

/// An endpoint with its parameters parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Route {
    /// `GET /ping`
    Ping,
    /// `GET /health`
    Health,
    /// `POST /health/up` (`true`) or `POST /health/down` (`false`)
    SetHealth(bool),
    /// `ANY /echo` and `ANY /echo/<anything>`
    Echo,
    /// `GET /delay/<ms>`
    Delay(Duration),
    /// `GET /status/<code>`
    Status(StatusCode),
    /// `GET /bytes/<n>`
    Bytes(u64),
    /// `GET /stream/<n>?interval_ms=<m>`
    Stream {
        /// How many chunks.
        count: u64,
        /// The pause between two chunks.
        interval: Duration,
    },
    /// `GET /ws`
    WebSocket,
    /// `GET /reset`
    Reset,
}

/// The outcome of routing one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Resolved {
    /// A known endpoint, called with an allowed method and valid parameters.
    Found(Route),
    /// No endpoint has this path.
    NotFound,
    /// The path is known but not with this method; the value is the `allow` header.
    MethodNotAllowed(&'static str),
    /// The path is known but a parameter is not valid; the value says which and why.
    BadRequest(String),
}

const GET: &str = "GET, HEAD";
const POST: &str = "POST";

/// Routes a request by its method, raw path and raw query.
pub(crate) fn resolve(method: &Method, path: &str, query: Option<&str>) -> Resolved {
    let is_get = method == Method::GET || method == Method::HEAD;
    let is_post = method == Method::POST;
    let (allow, allowed) = match path {
        "/echo" => return Resolved::Found(Route::Echo),
        p if p.starts_with("/echo/") => return Resolved::Found(Route::Echo),
        "/health/up" | "/health/down" => (POST, is_post),
        "/ping" | "/health" | "/ws" | "/reset" => (GET, is_get),
        p if ["/delay/", "/status/", "/bytes/", "/stream/"]
            .iter()
            .any(|prefix| p.starts_with(prefix)) =>
        {
            (GET, is_get)
        }
        _ => return Resolved::NotFound,
    };
    if !allowed {
        return Resolved::MethodNotAllowed(allow);
    }
    let parsed = match path {
        "/ping" => Ok(Route::Ping),
        "/health" => Ok(Route::Health),
        "/health/up" => Ok(Route::SetHealth(true)),
        "/health/down" => Ok(Route::SetHealth(false)),
        "/ws" => Ok(Route::WebSocket),
        "/reset" => Ok(Route::Reset),
        p => {
            if let Some(ms) = p.strip_prefix("/delay/") {
                parse_delay(ms).map(Route::Delay)
            } else if let Some(code) = p.strip_prefix("/status/") {
                parse_status(code).map(Route::Status)
            } else if let Some(n) = p.strip_prefix("/bytes/") {
                parse_count("byte count", n).map(Route::Bytes)
            } else if let Some(n) = p.strip_prefix("/stream/") {
                parse_stream(n, query).map(|(count, interval)| Route::Stream { count, interval })
            } else {
                return Resolved::NotFound;
            }
        }
    };
    match parsed {
        Ok(route) => Resolved::Found(route),
        Err(why) => Resolved::BadRequest(why),
    }
}

/// Parses the `<ms>` of `/delay/<ms>`.
pub(crate) fn parse_delay(ms: &str) -> Result<Duration, String> {
    parse_count("delay in milliseconds", ms).map(Duration::from_millis)
}

/// Parses the `<code>` of `/status/<code>`: a number in `200..=999`.
///
/// `100..=199` are valid statuses but cannot be a final response (hyper would turn them into a
/// 500 or, for 101, into a dead upgrade), so they are refused like an invalid code.
pub(crate) fn parse_status(code: &str) -> Result<StatusCode, String> {
    let status = parse_count("status code", code)
        .ok()
        .and_then(|n| u16::try_from(n).ok())
        .and_then(|n| StatusCode::from_u16(n).ok())
        .ok_or_else(|| format!("invalid status code {code:?}: expected a number in 100..=999"))?;
    if status.is_informational() {
        return Err(format!(
            "status code {code:?} is informational (1xx) and cannot be a final response"
        ));
    }
    Ok(status)
}

/// Parses `<n>` and the query of `/stream/<n>?interval_ms=<m>`; other query keys are ignored.
pub(crate) fn parse_stream(n: &str, query: Option<&str>) -> Result<(u64, Duration), String> {
    let count = parse_count("chunk count", n)?;
    let mut interval = DEFAULT_STREAM_INTERVAL;
    for pair in query.unwrap_or("").split('&') {
        if let Some(ms) = pair.strip_prefix("interval_ms=") {
            interval = Duration::from_millis(parse_count("interval_ms", ms)?);
        }
    }
    Ok((count, interval))
}

fn parse_count(what: &str, text: &str) -> Result<u64, String> {
    // `u64::from_str` accepts a leading `+`; a path parameter should be plain digits.
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "invalid {what} {text:?}: expected a non-negative integer"
        ));
    }
    text.parse()
        .map_err(|_| format!("invalid {what} {text:?}: larger than {}", u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(path: &str) -> Resolved {
        let (path, query) = match path.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (path, None),
        };
        resolve(&Method::GET, path, query)
    }

    #[test]
    fn status_codes_in_range_parse() {
        assert_eq!(parse_status("418"), Ok(StatusCode::IM_A_TEAPOT));
        assert_eq!(parse_status("200"), Ok(StatusCode::OK));
        assert_eq!(parse_status("999").map(|s| s.as_u16()), Ok(999));
    }

    #[test]
    fn status_codes_out_of_range_or_not_numbers_are_refused() {
        for bad in ["99", "1000", "abc", "", "-1", "+200", "65536", "20 0"] {
            let err = parse_status(bad).expect_err(bad);
            assert!(err.contains(&format!("{bad:?}")), "{err}");
        }
    }

    #[test]
    fn informational_status_codes_are_refused() {
        assert!(parse_status("100").is_err());
        assert!(parse_status("101").is_err());
        assert!(parse_status("199").is_err());
    }

    #[test]
    fn delays_parse_as_milliseconds() {
        assert_eq!(parse_delay("0"), Ok(Duration::ZERO));
        assert_eq!(parse_delay("250"), Ok(Duration::from_millis(250)));
        assert_eq!(
            parse_delay(&u64::MAX.to_string()),
            Ok(Duration::from_millis(u64::MAX))
        );
        assert!(parse_delay("1.5").is_err());
        assert!(parse_delay("18446744073709551616").is_err());
        assert!(parse_delay("").is_err());
    }

    #[test]
    fn stream_takes_count_and_optional_interval() {
        assert_eq!(parse_stream("3", None), Ok((3, DEFAULT_STREAM_INTERVAL)));
        assert_eq!(
            parse_stream("3", Some("interval_ms=300")),
            Ok((3, Duration::from_millis(300)))
        );
        assert_eq!(
            parse_stream("5", Some("x=1&interval_ms=0&y")),
            Ok((5, Duration::ZERO))
        );
        assert!(parse_stream("3", Some("interval_ms=soon")).is_err());
        assert!(parse_stream("three", None).is_err());
    }

    #[test]
    fn routes_resolve_with_their_parameters() {
        assert_eq!(get("/ping"), Resolved::Found(Route::Ping));
        assert_eq!(get("/health"), Resolved::Found(Route::Health));
        assert_eq!(
            get("/delay/20"),
            Resolved::Found(Route::Delay(Duration::from_millis(20)))
        );
        assert_eq!(
            get("/status/418"),
            Resolved::Found(Route::Status(StatusCode::IM_A_TEAPOT))
        );
        assert_eq!(get("/bytes/10"), Resolved::Found(Route::Bytes(10)));
        assert_eq!(
            get("/stream/2?interval_ms=5"),
            Resolved::Found(Route::Stream {
                count: 2,
                interval: Duration::from_millis(5)
            })
        );
        assert_eq!(get("/echo"), Resolved::Found(Route::Echo));
        assert_eq!(get("/echo/a/b"), Resolved::Found(Route::Echo));
        assert_eq!(get("/ws"), Resolved::Found(Route::WebSocket));
        assert_eq!(get("/reset"), Resolved::Found(Route::Reset));
        assert_eq!(
            resolve(&Method::POST, "/health/down", None),
            Resolved::Found(Route::SetHealth(false))
        );
        assert_eq!(
            resolve(&Method::DELETE, "/echo/x", None),
            Resolved::Found(Route::Echo)
        );
    }

    #[test]
    fn unknown_paths_and_wrong_methods() {
        assert_eq!(get("/nope"), Resolved::NotFound);
        assert_eq!(get("/pingx"), Resolved::NotFound);
        assert_eq!(get("/echoes"), Resolved::NotFound);
        assert_eq!(get("/delay"), Resolved::NotFound);
        assert_eq!(get("/health/down"), Resolved::MethodNotAllowed("POST"));
        assert_eq!(
            resolve(&Method::POST, "/ping", None),
            Resolved::MethodNotAllowed("GET, HEAD")
        );
        assert_eq!(
            resolve(&Method::PUT, "/status/abc", None),
            Resolved::MethodNotAllowed("GET, HEAD")
        );
        assert!(matches!(get("/status/abc"), Resolved::BadRequest(why) if why.contains("\"abc\"")));
        assert!(matches!(get("/delay/"), Resolved::BadRequest(_)));
    }
}
