//! `GET /ws`: a WebSocket echo on the HTTP/1.1 upgrade, with tokio-tungstenite.

use std::sync::{Arc, Mutex, PoisonError};

use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, Version, header};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::sync::watch;
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{
        Message,
        handshake::derive_accept_key,
        protocol::{CloseFrame, Role, frame::coding::CloseCode},
    },
};

use crate::{
    body,
    server::{CLOSE_GRACE, Signal, stopped},
};

/// Where the service leaves an accepted upgrade for the connection's task, which runs the
/// WebSocket after hyper hands the socket over (so the session belongs to that task too).
#[derive(Debug, Clone, Default)]
pub(crate) struct UpgradeSlot(Arc<Mutex<Option<OnUpgrade>>>);

impl UpgradeSlot {
    fn put(&self, upgrade: OnUpgrade) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Some(upgrade);
    }

    /// The upgrade accepted on this connection, if any.
    pub(crate) fn take(&self) -> Option<OnUpgrade> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).take()
    }
}

/// Answers a handshake: 101 with `Sec-WebSocket-Accept` (the upgrade is left in `slot`), or
/// 400 when the request is not an HTTP/1.1 `Upgrade: websocket` with a `Sec-WebSocket-Key`.
pub(crate) fn accept<B>(request: &mut Request<B>, slot: &UpgradeSlot) -> Response<body::Body> {
    let key = match handshake_key(request.version(), request.headers()) {
        Ok(key) => key,
        Err(why) => {
            let mut response = Response::new(body::full(format!("{why}\n")));
            *response.status_mut() = StatusCode::BAD_REQUEST;
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            return response;
        }
    };
    let accept = derive_accept_key(key.as_bytes());
    slot.put(hyper::upgrade::on(request));
    let mut response = Response::new(body::empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(value) = HeaderValue::from_str(&accept) {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, value);
    }
    response
}

fn handshake_key(version: Version, headers: &HeaderMap) -> Result<HeaderValue, &'static str> {
    if version != Version::HTTP_11 {
        return Err("websocket upgrade needs HTTP/1.1");
    }
    let upgrade = headers
        .get_all(header::UPGRADE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("websocket"));
    if !upgrade {
        return Err("expected `Upgrade: websocket`");
    }
    headers
        .get(header::SEC_WEBSOCKET_KEY)
        .cloned()
        .ok_or("missing Sec-WebSocket-Key")
}

/// Echoes text and binary messages until the peer closes, the socket fails, or the backend
/// stops (a graceful stop sends a 1001 "going away" close first).
pub(crate) async fn serve(upgrade: OnUpgrade, mut signal: watch::Receiver<Signal>) {
    let upgraded = match upgrade.await {
        Ok(upgraded) => upgraded,
        Err(e) => {
            tracing::debug!("websocket upgrade failed: {e}");
            return;
        }
    };
    let mut ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
    loop {
        let message = tokio::select! {
            message = ws.next() => message,
            signal = stopped(&mut signal) => {
                if signal == Signal::Kill {
                    // A crash sends nothing; the task is about to be aborted.
                    return;
                }
                let close = CloseFrame { code: CloseCode::Away, reason: "backend stopping".into() };
                let _ = tokio::time::timeout(CLOSE_GRACE, ws.close(Some(close))).await;
                return;
            }
        };
        let sent = match message {
            // Close, then end of stream: tungstenite answers the close by itself.
            None => return,
            Some(Err(e)) => {
                tracing::debug!("websocket read: {e}");
                return;
            }
            Some(Ok(message @ (Message::Text(_) | Message::Binary(_)))) => ws.send(message).await,
            // tungstenite queued the pong; flush it now rather than on the next message.
            Some(Ok(Message::Ping(_))) => ws.flush().await,
            Some(Ok(Message::Pong(_) | Message::Close(_) | Message::Frame(_))) => Ok(()),
        };
        if let Err(e) = sent {
            tracing::debug!("websocket write: {e}");
            return;
        }
    }
}
