//! oxvirtd's end of the guest agent's port: QEMU serves it as a Unix socket (bound by oxvirtd,
//! `handoff.rs`); one request line out, one reply line back
//! ([`oxvirt_guest_agent::protocol`]).

use crate::HvError;
use oxvirt_guest_agent::protocol::{parse_reply, Request, MAX_LINE};
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

/// Sends `request` to the agent behind `socket` and waits up to `timeout` for its answer.
pub(crate) async fn tell(socket: &Path, request: &Request, timeout: Duration) -> Result<(), HvError> {
    let what = format!("the guest agent's answer to '{}'", request.done_word());
    let exchange = async {
        let mut stream = tokio::net::UnixStream::connect(socket)
            .await
            .map_err(|e| HvError::io(format!("connect to the guest agent at {}", socket.display()), e))?;
        stream.write_all(request.to_line().as_bytes()).await.map_err(|e| HvError::io("write to the guest agent", e))?;
        let mut reader = BufReader::new(stream).take(MAX_LINE as u64);
        let mut line = String::new();
        reader.read_line(&mut line).await.map_err(|e| HvError::io("read the guest agent's answer", e))?;
        match parse_reply(&line) {
            Ok(word) if word == request.done_word() => Ok(()),
            Ok(word) => {
                Err(HvError::Refused(format!("the guest agent answered 'ok {word}' to '{}'", request.done_word())))
            }
            Err(why) => Err(HvError::Refused(format!("the guest agent refused: {why}"))),
        }
    };
    tokio::time::timeout(timeout, exchange).await.map_err(|_| HvError::Timeout(timeout, what))?
}
