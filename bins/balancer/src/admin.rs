//! The admin listener, never on the traffic port: `GET /healthz`, `GET /backends`, and
//! `POST /backends/{host:port}/drain` and `/enable`.

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
use lb_core::Pool;
use lb_health::Checker;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

/// Serves the admin endpoints on `listener` until `shutdown` completes.
pub(crate) async fn serve(
    listener: TcpListener,
    pool: Arc<Pool>,
    checker: Checker,
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
        let (pool, checker) = (Arc::clone(&pool), checker.clone());
        connections.spawn(async move {
            let service = service_fn(move |req| {
                let response = route(&req, &pool, &checker);
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

fn route(req: &Request<Incoming>, pool: &Pool, checker: &Checker) -> Response<Full<Bytes>> {
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
        return match operate(checker, id) {
            Some(backend) => {
                let body = serde_json::json!({
                    "id": backend.id(),
                    "health": backend.health().to_string(),
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
            let snapshot = pool.load();
            let eligible = snapshot.eligible();
            let backends: Vec<_> = snapshot
                .backends()
                .iter()
                .enumerate()
                .map(|(i, b)| {
                    serde_json::json!({
                        "id": b.id(),
                        "url": b.spec().url().as_str(),
                        "weight": b.weight(),
                        "health": b.health().to_string(),
                        "eligible": eligible.contains(&i),
                        "in_flight": b.in_flight(),
                        "failures_in_a_row": b.failure_streak(),
                        "weight_scale": b.weight_scale(),
                    })
                })
                .collect();
            let body = serde_json::to_vec_pretty(&backends).unwrap_or_default();
            reply(StatusCode::OK, "application/json", body.into())
        }
        (_, "/healthz" | "/backends") => reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "method not allowed\n".into(),
        ),
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    }
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
