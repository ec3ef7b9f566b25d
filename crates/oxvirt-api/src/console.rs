//! `GET /api/v1/vms/{name}/console`: the interactive serial console, as a WebSocket.
//! Binary (or text) messages from the client are typed into the guest's serial port; what the
//! guest prints comes back as binary messages.

use crate::error::{ApiError, ApiResult};
use crate::names::Names;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::response::Response;
use futures_util::{SinkExt, StreamExt};
use oxvirt_controller::Controller;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

pub async fn console(
    State(c): State<Controller>,
    Names(name): Names<String>,
    ws: WebSocketUpgrade,
) -> ApiResult<Response> {
    let vm = c.vms().get_vm(&name)?;
    if !vm.status.state.has_process() {
        return Err(oxvirt_controller::ControlError::Conflict(format!(
            "VM {name} is {}: its console exists only while it runs",
            vm.status.state.as_str()
        ))
        .into());
    }
    let path = c.vms().console_socket(&name)?;
    let serial = UnixStream::connect(&path).await.map_err(|e| {
        ApiError::from(oxvirt_controller::ControlError::Conflict(format!("console of VM {name} is not reachable: {e}")))
    })?;
    Ok(ws.on_upgrade(move |socket| pump(socket, serial)))
}

async fn pump(socket: WebSocket, serial: UnixStream) {
    let (mut ws_tx, mut ws_rx) = socket.split();
    let (mut ser_rx, mut ser_tx) = serial.into_split();
    let to_guest = async {
        while let Some(Ok(msg)) = ws_rx.next().await {
            let bytes = match msg {
                Message::Binary(b) => b.to_vec(),
                Message::Text(t) => t.as_bytes().to_vec(),
                Message::Close(_) => break,
                _ => continue,
            };
            if ser_tx.write_all(&bytes).await.is_err() {
                break;
            }
        }
    };
    let from_guest = async {
        let mut buf = vec![0u8; 4096];
        loop {
            match ser_rx.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if ws_tx.send(Message::Binary(buf[..n].to_vec().into())).await.is_err() {
                        break;
                    }
                }
            }
        }
        let _ = ws_tx.send(Message::Close(None)).await;
    };
    tokio::select! {
        _ = to_guest => {}
        _ = from_guest => {}
    }
}
