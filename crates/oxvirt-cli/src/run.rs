//! `oxvirt run --template T -- CMD ARGS`: a command in a fresh VM made from a template (one of
//! its warm pool when one waits), its output streamed, its exit code returned; the VM is
//! discarded after, whatever happened.
//!
//! The command reaches the guest's shell on its serial console. The guest prints markers around
//! it that the typed line cannot contain: it types `$((1))` where the guest prints `1`, so the
//! echo of the typed line is never taken for the guest's output. A random nonce in each marker
//! keeps one run's markers from another's.

use futures_util::{SinkExt, StreamExt};
use oxvirt_client::{Client, ClientError};
use oxvirt_model::TaskState;
use std::io::Write;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

/// What the guest prints once its shell reads what is typed.
fn ready_marker(nonce: &str) -> String {
    format!("OXV{nonce}0R")
}

fn begin_marker(nonce: &str) -> String {
    format!("OXV{nonce}1B")
}

fn end_marker(nonce: &str) -> String {
    format!("OXV{nonce}2E")
}

/// One argument as the guest's shell reads it back: single-quoted.
fn quote(arg: &str) -> String {
    format!("'{}'", arg.replace('\'', r"'\''"))
}

/// The line typed into the guest's shell for `command`.
fn typed_line(nonce: &str, command: &[String]) -> String {
    let cmd: Vec<String> = command.iter().map(|a| quote(a)).collect();
    format!("\necho OXV{nonce}$((1))B; {}; echo OXV{nonce}$((2))E$?\n", cmd.join(" "))
}

/// Splits the console's bytes into the command's output and its exit code.
struct Framer {
    begin: Vec<u8>,
    end: Vec<u8>,
    seen: Vec<u8>,
    started: bool,
}

/// What one chunk of console bytes gave.
#[derive(Debug, PartialEq)]
enum Framed {
    /// Output to print (the terminal's `\r\n` made `\n`).
    Output(Vec<u8>),
    /// The command ended: the last of its output, and its exit code.
    Ended(Vec<u8>, i32),
}

impl Framer {
    fn new(nonce: &str) -> Framer {
        Framer {
            begin: begin_marker(nonce).into_bytes(),
            end: end_marker(nonce).into_bytes(),
            seen: Vec::new(),
            started: false,
        }
    }

    fn push(&mut self, bytes: &[u8]) -> Framed {
        self.seen.extend_from_slice(bytes);
        if !self.started {
            // Output starts after the line the begin marker ends.
            let Some(at) = find(&self.seen, &self.begin) else { return Framed::Output(Vec::new()) };
            let rest = &self.seen[at + self.begin.len()..];
            let Some(nl) = rest.iter().position(|b| *b == b'\n') else { return Framed::Output(Vec::new()) };
            self.seen = rest[nl + 1..].to_vec();
            self.started = true;
        }
        if let Some(at) = find(&self.seen, &self.end) {
            let digits: Vec<u8> =
                self.seen[at + self.end.len()..].iter().copied().take_while(u8::is_ascii_digit).collect();
            let after = at + self.end.len() + digits.len();
            // The code is whole once something follows it (the line's end).
            if after < self.seen.len() {
                let code = std::str::from_utf8(&digits).ok().and_then(|d| d.parse().ok()).unwrap_or(-1);
                return Framed::Ended(crlf(&self.seen[..at]), code);
            }
            return Framed::Output(Vec::new());
        }
        // Held back: what could be the start of the end marker, and a `\r` whose `\n` may follow.
        let mut cut = self.seen.len() - self.end.len().min(self.seen.len());
        if cut > 0 && self.seen[cut - 1] == b'\r' {
            cut -= 1;
        }
        let out: Vec<u8> = self.seen.drain(..cut).collect();
        Framed::Output(crlf(&out))
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn crlf(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(b.len());
    for (i, c) in b.iter().enumerate() {
        if *c == b'\r' && b.get(i + 1) == Some(&b'\n') {
            continue;
        }
        out.push(*c);
    }
    out
}

fn nonce() -> String {
    let mut bytes = [0u8; 6];
    if std::fs::File::open("/dev/urandom").and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes)).is_err() {
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        bytes.copy_from_slice(&(t.as_nanos() as u64 ^ u64::from(std::process::id())).to_le_bytes()[..6]);
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Runs `command` in a new VM from `template`; its exit code.
pub async fn run(client: &Client, template: &str, command: &[String], timeout: Duration) -> Result<i32, ClientError> {
    let t = client.templates().get(template).await?;
    let nonce = nonce();
    let name = format!("run-{nonce}");
    let spec = serde_json::json!({
        "name": name, "template": template,
        "cpus": t.template.spec.cpus, "memory": t.template.spec.memory,
    });
    let created = client.create_vm(&spec, true).await?;
    let result = async {
        if let Some(task) = created.task {
            let done = client.wait_task(&task.id, timeout).await?;
            if done.state != TaskState::Succeeded {
                return Err(ClientError::Http(format!(
                    "VM {name} did not start: {}",
                    done.error.unwrap_or(done.message)
                )));
            }
        }
        tokio::select! {
            r = in_guest(client, &name, &nonce, command, timeout) => r,
            _ = tokio::signal::ctrl_c() => Err(ClientError::Http("interrupted".into())),
        }
    }
    .await;
    // Discarded whatever happened.
    let _ = client.vm_action_wait(&name, "kill", Duration::from_secs(60)).await;
    if let Err(e) = client.delete_vm(&name).await {
        eprintln!("warning: VM {name} was not deleted: {e}");
    }
    result
}

async fn in_guest(
    client: &Client,
    name: &str,
    nonce: &str,
    command: &[String],
    timeout: Duration,
) -> Result<i32, ClientError> {
    let mut ws = client.console(name).await?;
    let start = Instant::now();
    let late = || ClientError::Http(format!("no answer from VM {name} within {} s", timeout.as_secs()));
    // Typed until the guest's shell answers (what is typed before it reads may be lost), then
    // the command, once.
    let ready = ready_marker(nonce);
    let mut seen = Vec::new();
    let mut typed: Option<Instant> = None;
    while find(&seen, ready.as_bytes()).is_none() {
        if start.elapsed() > timeout {
            return Err(late());
        }
        if typed.is_none_or(|t| t.elapsed() > Duration::from_millis(500)) {
            let line = format!("\necho OXV{nonce}$((0))R\n");
            ws.send(Message::Binary(line.into_bytes().into())).await.map_err(|e| ClientError::Http(e.to_string()))?;
            typed = Some(Instant::now());
        }
        if let Ok(Some(Ok(Message::Binary(b)))) = tokio::time::timeout(Duration::from_millis(100), ws.next()).await {
            seen.extend_from_slice(&b);
        }
    }
    let line = typed_line(nonce, command);
    ws.send(Message::Binary(line.into_bytes().into())).await.map_err(|e| ClientError::Http(e.to_string()))?;
    let mut framer = Framer::new(nonce);
    let mut stdout = std::io::stdout();
    loop {
        let left = timeout.checked_sub(start.elapsed()).ok_or_else(late)?;
        let msg = match tokio::time::timeout(left, ws.next()).await {
            Err(_) => return Err(late()),
            Ok(None) => return Err(ClientError::Http(format!("VM {name}'s console closed before the command ended"))),
            Ok(Some(Err(e))) => return Err(ClientError::Http(e.to_string())),
            Ok(Some(Ok(m))) => m,
        };
        let Message::Binary(b) = msg else { continue };
        match framer.push(&b) {
            Framed::Output(out) => {
                let _ = stdout.write_all(&out);
                let _ = stdout.flush();
            }
            Framed::Ended(out, code) => {
                let _ = stdout.write_all(&out);
                let _ = stdout.flush();
                return Ok(code);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(f: &mut Framer, chunks: &[&[u8]]) -> (Vec<u8>, Option<i32>) {
        let mut out = Vec::new();
        for c in chunks {
            match f.push(c) {
                Framed::Output(o) => out.extend(o),
                Framed::Ended(o, code) => {
                    out.extend(o);
                    return (out, Some(code));
                }
            }
        }
        (out, None)
    }

    #[test]
    fn the_typed_line_never_holds_the_markers_the_guest_prints() {
        let line = typed_line("ab12", &["echo".into(), "it's".into()]);
        assert!(!line.contains(&begin_marker("ab12")) && !line.contains(&end_marker("ab12")));
        assert!(line.contains(r"'echo' 'it'\''s'"), "{line}");
    }

    #[test]
    fn output_between_the_markers_is_streamed_and_the_code_read() {
        let mut f = Framer::new("n1");
        let echo = typed_line("n1", &["ls".into()]).replace('\n', "\r\n");
        let (out, code) =
            all(&mut f, &[echo.as_bytes(), b"OXVn11B\r\nhello\r\nwor", b"ld\r\nOXVn1", b"2E", b"3", b"\r\n# "]);
        assert_eq!((String::from_utf8(out).unwrap(), code), ("hello\nworld\n".into(), Some(3)));
    }

    #[test]
    fn a_marker_split_across_chunks_is_found_and_never_printed() {
        let mut f = Framer::new("x");
        let stream = b"# OXVx1B\r\nline\r\nOXVx2E0\r\n";
        let chunks: Vec<&[u8]> = stream.chunks(1).collect();
        let (out, code) = all(&mut f, &chunks);
        assert_eq!((String::from_utf8(out).unwrap(), code), ("line\n".into(), Some(0)));
        // Another run's markers are output like any other.
        let mut f = Framer::new("y");
        let (out, code) = all(&mut f, &[b"OXVy1B\nOXVx2E5\nOXVy2E1\n"]);
        assert_eq!((String::from_utf8(out).unwrap(), code), ("OXVx2E5\n".into(), Some(1)));
    }
}
