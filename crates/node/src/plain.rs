//! `tether node --plain-websocket`: a plain WebSocket echo server, no Engine.IO.
//!
//! What a proxy in front of a non-Socket.IO WebSocket service sees: a `101`, then
//! nothing from the server until the client speaks (no open packet, no pings). The
//! memory benchmark holds thousands of these through a proxy (`tether bench --transport
//! plain-websocket`) next to the Socket.IO nodes. Every path is accepted; text and binary
//! messages are echoed back, pings answered; each connection is a task of its own.

use std::net::SocketAddr;

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

use crate::node::NodeError;

/// Serves plain WebSockets on `bind` until SIGINT/SIGTERM; prints the same listening
/// line as a Socket.IO node (`{"event":"listening","port":…,"id":…}`).
pub async fn run_until_signal(bind: SocketAddr, id: String) -> Result<(), NodeError> {
    let listener = TcpListener::bind(bind)
        .await
        .map_err(|cause| NodeError::Bind { addr: bind, cause })?;
    let addr = listener
        .local_addr()
        .map_err(|cause| NodeError::Bind { addr: bind, cause })?;
    let id = if id.is_empty() {
        format!("node-{}", addr.port())
    } else {
        id
    };
    crate::node::print_listening(addr.port(), &id);
    tokio::select! {
        () = serve(listener) => {}
        _ = tether_kit::signal::first_signal() => {}
    }
    Ok(())
}

/// Serves plain WebSockets on `listener`, each connection in a task of its own, until
/// dropped.
pub async fn serve(listener: TcpListener) {
    let never = tokio_util::sync::CancellationToken::new();
    tether_kit::accept::accept_loop(&listener, &never, "plain-node", &[], |stream, _, _| {
        tokio::spawn(echo(stream));
    })
    .await;
}

/// One connection: the handshake, then every message echoed until either side closes.
async fn echo(stream: TcpStream) {
    // Small buffers: thousands are held at once, and the node's memory is not measured.
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let Ok(mut ws) = tokio_tungstenite::accept_async_with_config(stream, Some(config)).await else {
        return;
    };
    while let Some(Ok(m)) = ws.next().await {
        let reply = match m {
            Message::Text(_) | Message::Binary(_) => m,
            Message::Close(_) => break,
            // Pongs are sent by tungstenite itself.
            _ => continue,
        };
        if ws.send(reply).await.is_err() {
            break;
        }
    }
}
