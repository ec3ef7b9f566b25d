//! `oxvirt vm console NAME`: an interactive serial console in the terminal. Ctrl-] leaves.

use futures_util::{SinkExt, StreamExt};
use oxvirt_client::{Client, ClientError};
use std::io::{Read, Write};
use tokio_tungstenite::tungstenite::Message;

const ESCAPE: u8 = 0x1d; // Ctrl-]

/// Puts the terminal in raw mode while alive, and restores it when dropped.
struct RawMode(Option<libc::termios>);

impl RawMode {
    fn enable() -> RawMode {
        // SAFETY: tcgetattr/tcsetattr on stdin with a zeroed termios that tcgetattr fills.
        unsafe {
            if libc::isatty(0) != 1 {
                return RawMode(None);
            }
            let mut t: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(0, &mut t) != 0 {
                return RawMode(None);
            }
            let saved = t;
            libc::cfmakeraw(&mut t);
            libc::tcsetattr(0, libc::TCSANOW, &t);
            RawMode(Some(saved))
        }
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(t) = self.0 {
            // SAFETY: restores the settings read in enable().
            unsafe { libc::tcsetattr(0, libc::TCSANOW, &t) };
        }
    }
}

pub async fn run(client: &Client, name: &str) -> Result<(), ClientError> {
    let ws = client.console(name).await?;
    eprintln!("Connected to the console of VM {name}. Press Ctrl-] to leave.\r");
    let _raw = RawMode::enable();
    let (mut tx, mut rx) = ws.split();
    let (in_tx, mut in_rx) = tokio::sync::mpsc::channel::<Vec<u8>>(16);
    std::thread::spawn(move || {
        let mut buf = [0u8; 1024];
        let mut stdin = std::io::stdin();
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if in_tx.blocking_send(buf[..n].to_vec()).is_err() {
                        break;
                    }
                }
            }
        }
    });
    let mut stdout = std::io::stdout();
    loop {
        tokio::select! {
            input = in_rx.recv() => {
                let Some(mut bytes) = input else { break };
                if let Some(pos) = bytes.iter().position(|b| *b == ESCAPE) {
                    bytes.truncate(pos);
                    if !bytes.is_empty() {
                        let _ = tx.send(Message::Binary(bytes.into())).await;
                    }
                    break;
                }
                if tx.send(Message::Binary(bytes.into())).await.is_err() {
                    break;
                }
            }
            msg = rx.next() => {
                match msg {
                    Some(Ok(Message::Binary(b))) => { let _ = stdout.write_all(&b); let _ = stdout.flush(); }
                    Some(Ok(Message::Text(t))) => { let _ = stdout.write_all(t.as_bytes()); let _ = stdout.flush(); }
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                    Some(Ok(_)) => {}
                }
            }
        }
    }
    let _ = tx.send(Message::Close(None)).await;
    drop(_raw);
    eprintln!("\nLeft the console of VM {name}.");
    Ok(())
}
