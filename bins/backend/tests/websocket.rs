//! `GET /ws`: the WebSocket echo, driven by a tokio-tungstenite client.

mod support;

use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::StatusCode;
use support::{get, start, within};
use tokio::net::TcpStream;
use tokio_tungstenite::{
    WebSocketStream, client_async,
    tungstenite::{Message, client::IntoClientRequest, protocol::frame::coding::CloseCode},
};

async fn connect(addr: std::net::SocketAddr) -> WebSocketStream<TcpStream> {
    let stream = within("connect", TcpStream::connect(addr))
        .await
        .expect("connect");
    let request = format!("ws://{addr}/ws")
        .into_client_request()
        .expect("ws request");
    let (ws, response) = within("ws handshake", client_async(request, stream))
        .await
        .expect("ws handshake");
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    assert_eq!(
        response
            .headers()
            .get("x-backend-id")
            .and_then(|v| v.to_str().ok()),
        Some("ws")
    );
    ws
}

async fn next(ws: &mut WebSocketStream<TcpStream>) -> Message {
    within("ws message", ws.next())
        .await
        .expect("a message, not the end")
        .expect("a readable message")
}

#[tokio::test]
async fn websocket_echoes_text_and_binary_messages() {
    let backend = start("ws").await;
    let mut ws = connect(backend.local_addr()).await;

    within("send", ws.send(Message::text("hello, backend")))
        .await
        .expect("send text");
    assert_eq!(next(&mut ws).await, Message::text("hello, backend"));

    let binary = Bytes::from_static(&[0, 1, 2, 0xfe, 0xff]);
    within("send", ws.send(Message::Binary(binary.clone())))
        .await
        .expect("send binary");
    assert_eq!(next(&mut ws).await, Message::Binary(binary));
}

#[tokio::test]
async fn websocket_answers_ping_and_close() {
    let backend = start("ws").await;
    let mut ws = connect(backend.local_addr()).await;

    within(
        "send",
        ws.send(Message::Ping(Bytes::from_static(b"are you there"))),
    )
    .await
    .expect("send ping");
    assert_eq!(
        next(&mut ws).await,
        Message::Pong(Bytes::from_static(b"are you there"))
    );

    within("close", ws.close(None)).await.expect("send close");
    // The server answers the close; then the stream ends.
    let rest: Vec<_> = within("close handshake", ws.collect()).await;
    assert!(
        rest.iter().all(|m| matches!(m, Ok(Message::Close(_)))),
        "after close: {rest:?}"
    );
}

#[tokio::test]
async fn websocket_without_upgrade_is_400() {
    let backend = start("ws").await;
    let reply = get(backend.local_addr(), "/ws").await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.header("x-backend-id"), Some("ws"));
}

#[tokio::test]
async fn kill_closes_open_websockets() {
    let backend = start("ws").await;
    let mut ws = connect(backend.local_addr()).await;
    within("send", ws.send(Message::text("before")))
        .await
        .expect("send");
    assert_eq!(next(&mut ws).await, Message::text("before"));

    within("kill", backend.kill()).await;

    // No close frame from a crash: the socket just ends.
    match within("ws after kill", ws.next()).await {
        None | Some(Err(_)) => {}
        Some(Ok(message)) => panic!("message from a killed backend: {message:?}"),
    }
}

#[tokio::test]
async fn graceful_shutdown_says_going_away_to_websockets() {
    let backend = start("ws").await;
    let mut ws = connect(backend.local_addr()).await;
    within("send", ws.send(Message::text("before")))
        .await
        .expect("send");
    assert_eq!(next(&mut ws).await, Message::text("before"));

    within("shutdown", backend.shutdown(Duration::from_secs(5))).await;

    match next(&mut ws).await {
        Message::Close(Some(frame)) => assert_eq!(frame.code, CloseCode::Away),
        other => panic!("expected a 1001 close, got {other:?}"),
    }
}
