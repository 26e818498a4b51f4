//! The admin listener, never on the traffic port: `GET /` (the status page), `GET /metrics`,
//! `GET /healthz`, `GET /backends`, and `POST /backends/{host:port}/drain` and `/enable`.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use lb_core::{Pool, Stats};
use lb_health::Checker;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::metrics;

/// The status page: one HTML file, built into the binary; it reads `GET /backends` every second.
const STATUS_PAGE: &str = include_str!("status.html");

/// What the admin endpoints read and act on.
#[derive(Debug)]
pub(crate) struct Admin {
    pub(crate) pool: Arc<Pool>,
    pub(crate) checker: Checker,
    pub(crate) metrics: Registry,
}

/// Serves the admin endpoints on `listener` until `shutdown` completes.
pub(crate) async fn serve(
    listener: TcpListener,
    admin: Arc<Admin>,
    shutdown: impl Future<Output = ()>,
) {
    let mut shutdown = std::pin::pin!(shutdown);
    let mut connections = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => return,
            Some(_) = connections.join_next() => continue,
            accepted = listener.accept() => accepted,
        };
        let Ok((stream, _)) = accepted else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let admin = Arc::clone(&admin);
        connections.spawn(async move {
            let service = service_fn(move |req| {
                let response = route(&req, &admin);
                async move { Ok::<_, Infallible>(response) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn route(req: &Request<Incoming>, admin: &Admin) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    if let Some((id, action)) = path
        .strip_prefix("/backends/")
        .and_then(|rest| rest.rsplit_once('/'))
    {
        let operate = match action {
            "drain" => Checker::drain,
            "enable" => Checker::enable,
            _ => return reply(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
        };
        if req.method() != Method::POST {
            return reply(
                StatusCode::METHOD_NOT_ALLOWED,
                "text/plain",
                "use POST\n".into(),
            );
        }
        return match operate(&admin.checker, id) {
            Some(backend) => {
                let body = serde_json::json!({
                    "id": backend.id(),
                    "health": backend.health().to_string(),
                    "state": backend.health().to_string(),
                    "in_flight": backend.in_flight(),
                });
                reply(StatusCode::OK, "application/json", body.to_string().into())
            }
            None => reply(
                StatusCode::NOT_FOUND,
                "text/plain",
                format!("no backend {id}\n").into(),
            ),
        };
    }
    match (req.method(), path) {
        (&Method::GET, "/healthz") => reply(StatusCode::OK, "text/plain", "ok\n".into()),
        (&Method::GET, "/backends") => {
            let body = serde_json::to_vec_pretty(&backends(admin)).unwrap_or_default();
            reply(StatusCode::OK, "application/json", body.into())
        }
        (&Method::GET, "/metrics") => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            metrics::encode(&admin.metrics).into(),
        ),
        (&Method::GET, "/") => reply(
            StatusCode::OK,
            "text/html; charset=utf-8",
            Bytes::from_static(STATUS_PAGE.as_bytes()),
        ),
        (_, "/" | "/healthz" | "/backends" | "/metrics") => reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "method not allowed\n".into(),
        ),
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    }
}

/// Every backend, as `GET /backends` shows it.
fn backends(admin: &Admin) -> Vec<serde_json::Value> {
    let snapshot = admin.pool.load();
    let eligible = snapshot.eligible();
    snapshot
        .backends()
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let stats = b.stats();
            let responses: serde_json::Map<_, _> = (1..=5)
                .map(|class| {
                    let n: u64 = (0..=Stats::OTHER_METHOD)
                        .map(|m| stats.responses(m, class))
                        .sum();
                    (format!("{class}xx"), n.into())
                })
                .collect();
            let last_probe = admin.checker.last_probe(b.id()).map(|p| {
                serde_json::json!({
                    "at": humantime::format_rfc3339_millis(p.at).to_string(),
                    "ok": p.error.is_none(),
                    "error": p.error,
                    "took_ms": p.took.as_secs_f64() * 1000.0,
                })
            });
            serde_json::json!({
                "id": b.id(),
                "url": b.spec().url().as_str(),
                "weight": b.weight(),
                "health": b.health().to_string(),
                "state": b.health().to_string(),
                "eligible": eligible.contains(&i),
                "in_flight": b.in_flight(),
                "requests": stats.total_responses() + stats.total_failures(),
                "responses": responses,
                "failures": stats.total_failures(),
                "failures_in_a_row": b.failure_streak(),
                "ejections": stats.ejections(),
                "connections_opened": stats.connections_opened(),
                "weight_scale": b.weight_scale(),
                "last_probe": last_probe,
            })
        })
        .collect()
}

fn reply(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    response
}
