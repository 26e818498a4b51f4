//! The HTTP service: one request in, one response out (or a dropped connection).

use std::{
    io,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
};

use http::{HeaderName, HeaderValue, Request, Response, StatusCode, header};
use hyper::body::Incoming;

use crate::{
    body::{self, Body, Filler, Ticker},
    echo,
    error::Error,
    route::{self, Resolved, Route},
    ws::{self, UpgradeSlot},
};

/// The header that names the backend on every response.
pub(crate) const BACKEND_ID: HeaderName = HeaderName::from_static("x-backend-id");

/// What every connection of one backend shares: its name, health switch and request count.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) id: String,
    id_header: HeaderValue,
    healthy: AtomicBool,
    requests: AtomicU64,
}

impl Shared {
    /// Healthy, no requests yet. Fails if `id` cannot be a header value (control characters).
    pub(crate) fn new(id: String) -> io::Result<Self> {
        let id_header = HeaderValue::from_bytes(id.as_bytes()).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("backend id {id:?} cannot be sent as an x-backend-id header"),
            )
        })?;
        Ok(Self {
            id,
            id_header,
            healthy: AtomicBool::new(true),
            requests: AtomicU64::new(0),
        })
    }

    pub(crate) fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    pub(crate) fn set_healthy(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::Relaxed);
    }
}

/// Serves one request: counts it, routes it, and stamps `x-backend-id` on the response.
pub(crate) async fn handle(
    mut request: Request<Incoming>,
    shared: Arc<Shared>,
    upgrade: UpgradeSlot,
) -> Result<Response<Body>, Error> {
    shared.requests.fetch_add(1, Ordering::Relaxed);
    let uri = request.uri();
    let resolved = route::resolve(request.method(), uri.path(), uri.query());
    let mut response = match resolved {
        Resolved::Found(Route::Echo) => echo::respond(request, &shared.id).await?,
        Resolved::Found(Route::WebSocket) => ws::accept(&mut request, &upgrade),
        Resolved::Found(Route::Reset) => return Err(Error::Reset),
        Resolved::Found(Route::Delay(delay)) => {
            tokio::time::sleep(delay).await;
            text(
                StatusCode::OK,
                format!("delayed {} ms\n", delay.as_millis()),
            )
        }
        Resolved::Found(route) => respond(route, &shared),
        Resolved::NotFound => text(
            StatusCode::NOT_FOUND,
            format!("not found: {}\n", request.uri().path()),
        ),
        Resolved::MethodNotAllowed(allow) => {
            let mut response = text(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("method {} not allowed here\n", request.method()),
            );
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static(allow));
            response
        }
        Resolved::BadRequest(why) => text(StatusCode::BAD_REQUEST, format!("{why}\n")),
    };
    response
        .headers_mut()
        .insert(BACKEND_ID, shared.id_header.clone());
    Ok(response)
}

/// The endpoints that answer at once, without reading the request.
fn respond(route: Route, shared: &Shared) -> Response<Body> {
    match route {
        Route::Ping => text(StatusCode::OK, format!("pong from {}\n", shared.id)),
        Route::Health if shared.healthy.load(Ordering::Relaxed) => {
            text(StatusCode::OK, "healthy\n".into())
        }
        Route::Health => text(StatusCode::SERVICE_UNAVAILABLE, "unhealthy\n".into()),
        Route::SetHealth(healthy) => {
            shared.set_healthy(healthy);
            let now = if healthy { "up" } else { "down" };
            text(StatusCode::OK, format!("health is now {now}\n"))
        }
        Route::Status(status) => {
            // No body where HTTP forbids one.
            let body = if status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
                String::new()
            } else {
                format!("status {}\n", status.as_u16())
            };
            text(status, body)
        }
        Route::Bytes(len) => {
            let mut response = Response::new(body::boxed(Filler::new(len)));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            response
        }
        Route::Stream { count, interval } => {
            let mut response = Response::new(body::boxed(Ticker::new(count, interval)));
            response
                .headers_mut()
                .insert(header::CONTENT_TYPE, text_plain());
            response
        }
        // Answered in `handle`, which reads or holds the request.
        Route::Echo | Route::WebSocket | Route::Reset | Route::Delay(_) => {
            text(StatusCode::INTERNAL_SERVER_ERROR, "misrouted\n".into())
        }
    }
}

fn text(status: StatusCode, text: String) -> Response<Body> {
    let mut response = Response::new(body::full(text));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, text_plain());
    response
}

fn text_plain() -> HeaderValue {
    HeaderValue::from_static("text/plain; charset=utf-8")
}
