//! WebSocket test helpers: connect, send a JSON frame, and read the next JSON frame (heartbeats
//! skipped) within the test bound.

use futures::{SinkExt, StreamExt};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

use super::{TestApp, WAIT};

pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Connects to `/ws` on the app, with no token.
pub async fn connect(app: &TestApp) -> Ws {
    let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", app.addr))
        .await
        .expect("ws connect");
    ws
}

/// Sends `v` as a text frame.
pub async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::Text(v.to_string().into())).await.unwrap();
}

/// The next JSON text frame that is not a heartbeat.
pub async fn recv(ws: &mut Ws) -> Value {
    loop {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("ws frame in time")
            .expect("socket open")
            .unwrap();
        if let Message::Text(t) = msg {
            let v: Value = serde_json::from_str(&t).unwrap();
            if !v["type"].as_str().unwrap_or("").ends_with(":heartbeat") {
                return v;
            }
        }
    }
}
