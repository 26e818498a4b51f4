//! The admin listener: `GET /healthz` and `GET /backends`, never on the traffic port.

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
use tokio::net::TcpListener;
use tokio::task::JoinSet;

/// Serves the admin endpoints on `listener` until `shutdown` completes.
pub(crate) async fn serve(
    listener: TcpListener,
    pool: Arc<Pool>,
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
        let pool = Arc::clone(&pool);
        connections.spawn(async move {
            let service = service_fn(move |req| {
                let pool = Arc::clone(&pool);
                async move { Ok::<_, Infallible>(route(&req, &pool)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn route(req: &Request<Incoming>, pool: &Pool) -> Response<Full<Bytes>> {
    match (req.method(), req.uri().path()) {
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
