//! An async client of QEMU's QMP (JSON lines over a Unix socket).
//!
//! One connection per guest, held by the daemon: commands carry ids and time out, replies are
//! matched by id, events go to every subscriber. Works with QEMU 7.2 and newer: only the
//! greeting's `QMP.version.qemu` and the `return`/`error`/`event` members are relied upon.

use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::UnixStream;
use tokio::sync::{broadcast, oneshot};

/// Longest line accepted from QEMU; a reply past this is treated as a protocol error.
const MAX_LINE: usize = 16 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("QMP connection to {path}: {source}")]
    Connect { path: String, source: std::io::Error },
    #[error("QMP I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("QMP protocol: {0}")]
    Protocol(String),
    /// QEMU answered the command with an error.
    #[error("QMP {command} failed ({class}): {desc}")]
    Command { command: String, class: String, desc: String },
    #[error("QMP {0} got no answer within {1:?}")]
    Timeout(String, Duration),
    #[error("QMP connection closed (QEMU exited?)")]
    Disconnected,
}

/// A QMP event: its name, data and QEMU's timestamp (microseconds).
#[derive(Debug, Clone, PartialEq)]
pub struct QmpEvent {
    pub name: String,
    pub data: Value,
    pub micros: u64,
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Result<Value, QmpError>>>>>;

pub struct Qmp {
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    pending: Pending,
    next_id: AtomicU64,
    events: broadcast::Sender<QmpEvent>,
    closed: Arc<AtomicBool>,
    /// (major, minor, micro) from the greeting.
    pub version: (u64, u64, u64),
    pub timeout: Duration,
}

impl Qmp {
    /// Connects, reads the greeting and leaves capabilities negotiation mode.
    pub async fn connect(path: &Path, timeout: Duration) -> Result<Arc<Qmp>, QmpError> {
        Self::connect_with(path, timeout, timeout).await
    }

    /// As [`Qmp::connect`], waiting up to `greeting` for QEMU's greeting (a QEMU still
    /// initialising sends it late) and `timeout` for each command after.
    pub async fn connect_with(path: &Path, greeting: Duration, timeout: Duration) -> Result<Arc<Qmp>, QmpError> {
        let stream = tokio::time::timeout(timeout, UnixStream::connect(path))
            .await
            .map_err(|_| QmpError::Timeout("connect".into(), timeout))?
            .map_err(|source| QmpError::Connect { path: path.display().to_string(), source })?;
        let (read, write) = stream.into_split();
        let mut reader = BufReader::new(read);
        let greeting = tokio::time::timeout(greeting, read_message(&mut reader))
            .await
            .map_err(|_| QmpError::Timeout("greeting".into(), greeting))??
            .ok_or(QmpError::Disconnected)?;
        let version = parse_greeting(&greeting)?;
        let (events, _) = broadcast::channel(256);
        let qmp = Arc::new(Qmp {
            writer: tokio::sync::Mutex::new(write),
            pending: Arc::default(),
            next_id: AtomicU64::new(1),
            events: events.clone(),
            closed: Arc::new(AtomicBool::new(false)),
            version,
            timeout,
        });
        tokio::spawn(read_loop(reader, qmp.pending.clone(), events, qmp.closed.clone()));
        qmp.execute("qmp_capabilities", Value::Null).await?;
        Ok(qmp)
    }

    pub fn subscribe(&self) -> broadcast::Receiver<QmpEvent> {
        self.events.subscribe()
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Runs a command with the default timeout.
    pub async fn execute(&self, command: &str, args: Value) -> Result<Value, QmpError> {
        self.execute_with_timeout(command, args, self.timeout).await
    }

    pub async fn execute_with_timeout(&self, command: &str, args: Value, timeout: Duration) -> Result<Value, QmpError> {
        self.run(command, args, timeout, None).await
    }

    /// Runs a command that hands QEMU an open file descriptor (SCM_RIGHTS), as `getfd` does: the
    /// way to give a QEMU that gave up root a file or device it could not open itself.
    pub async fn execute_with_fd(&self, command: &str, args: Value, fd: std::os::fd::RawFd) -> Result<Value, QmpError> {
        self.run(command, args, self.timeout, Some(fd)).await
    }

    async fn run(
        &self,
        command: &str,
        args: Value,
        timeout: Duration,
        fd: Option<std::os::fd::RawFd>,
    ) -> Result<Value, QmpError> {
        if self.is_closed() {
            return Err(QmpError::Disconnected);
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut msg = json!({ "execute": command, "id": id });
        if !args.is_null() {
            msg["arguments"] = args;
        }
        let mut line = msg.to_string();
        line.push('\n');
        let (tx, rx) = oneshot::channel();
        lock(&self.pending).insert(id, tx);
        let written = async {
            let mut w = self.writer.lock().await;
            match fd {
                None => {
                    w.write_all(line.as_bytes()).await?;
                    w.flush().await
                }
                Some(fd) => {
                    let stream: &tokio::net::UnixStream = w.as_ref();
                    stream.async_io(tokio::io::Interest::WRITABLE, || send_with_fd(stream, line.as_bytes(), fd)).await
                }
            }
        };
        // A QEMU that stops reading must not hang its caller (kill escalates to SIGKILL on this).
        match tokio::time::timeout(timeout, written).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                lock(&self.pending).remove(&id);
                return Err(QmpError::Io(e));
            }
            Err(_) => {
                lock(&self.pending).remove(&id);
                return Err(QmpError::Timeout(command.to_string(), timeout));
            }
        }
        if self.is_closed() {
            lock(&self.pending).remove(&id);
            return Err(QmpError::Disconnected);
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(Ok(ret))) => Ok(ret),
            Ok(Ok(Err(QmpError::Command { class, desc, .. }))) => {
                Err(QmpError::Command { command: command.to_string(), class, desc })
            }
            Ok(Ok(Err(e))) => Err(e),
            Ok(Err(_)) => Err(QmpError::Disconnected),
            Err(_) => {
                lock(&self.pending).remove(&id);
                Err(QmpError::Timeout(command.to_string(), timeout))
            }
        }
    }
}

/// Sends `bytes` with `fd` attached (SCM_RIGHTS) in one message.
fn send_with_fd(stream: &tokio::net::UnixStream, bytes: &[u8], fd: std::os::fd::RawFd) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: msghdr, iovec and the control buffer live across the call and are sized as the
    // CMSG macros say; the kernel only reads them.
    unsafe {
        let mut iov = libc::iovec { iov_base: bytes.as_ptr() as *mut libc::c_void, iov_len: bytes.len() };
        let space = libc::CMSG_SPACE(std::mem::size_of::<libc::c_int>() as u32) as usize;
        let mut control = vec![0u8; space];
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<libc::c_int>() as u32) as _;
        std::ptr::copy_nonoverlapping(
            &fd as *const libc::c_int as *const u8,
            libc::CMSG_DATA(cmsg),
            std::mem::size_of::<libc::c_int>(),
        );
        let n = libc::sendmsg(stream.as_raw_fd(), &msg, libc::MSG_NOSIGNAL);
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        if n as usize != bytes.len() {
            return Err(std::io::Error::new(std::io::ErrorKind::WriteZero, "QMP command sent in part"));
        }
    }
    Ok(())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// QEMU's version from its QMP greeting.
pub fn parse_greeting(v: &Value) -> Result<(u64, u64, u64), QmpError> {
    let q = v
        .get("QMP")
        .and_then(|q| q.get("version"))
        .and_then(|v| v.get("qemu"))
        .ok_or_else(|| QmpError::Protocol(format!("not a QMP greeting: {v}")))?;
    let n = |k: &str| q.get(k).and_then(Value::as_u64).unwrap_or(0);
    Ok((n("major"), n("minor"), n("micro")))
}

async fn read_message<R: tokio::io::AsyncBufRead + Unpin>(r: &mut R) -> Result<Option<Value>, QmpError> {
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = (&mut *r).take(MAX_LINE as u64 + 1).read_until(b'\n', &mut line).await?;
        if n == 0 {
            return Ok(None);
        }
        if line.len() > MAX_LINE {
            return Err(QmpError::Protocol("message longer than 16 MiB".into()));
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        return decode_line(&line).map(Some);
    }
}

/// One line from QEMU as JSON (the fuzz target `qmp_line` feeds it anything).
pub fn decode_line(line: &[u8]) -> Result<Value, QmpError> {
    serde_json::from_slice(line).map_err(|e| QmpError::Protocol(format!("bad JSON from QEMU: {e}")))
}

/// What one message from QEMU is.
#[derive(Debug, PartialEq)]
pub enum Message {
    Reply {
        id: u64,
        result: Result<Value, (String, String)>,
    },
    Event(QmpEvent),
    /// A reply without our id, or something unknown: ignored.
    Other,
}

pub fn classify(v: Value) -> Message {
    if let Some(name) = v.get("event").and_then(Value::as_str) {
        let ts = &v["timestamp"];
        let micros = ts["seconds"].as_u64().unwrap_or(0) * 1_000_000 + ts["microseconds"].as_u64().unwrap_or(0);
        return Message::Event(QmpEvent {
            name: name.to_string(),
            data: v.get("data").cloned().unwrap_or(Value::Null),
            micros,
        });
    }
    let Some(id) = v.get("id").and_then(Value::as_u64) else { return Message::Other };
    if let Some(ret) = v.get("return") {
        return Message::Reply { id, result: Ok(ret.clone()) };
    }
    if let Some(err) = v.get("error") {
        let s = |k: &str| err.get(k).and_then(Value::as_str).unwrap_or("").to_string();
        return Message::Reply { id, result: Err((s("class"), s("desc"))) };
    }
    Message::Other
}

async fn read_loop(
    mut reader: BufReader<tokio::net::unix::OwnedReadHalf>,
    pending: Pending,
    events: broadcast::Sender<QmpEvent>,
    closed: Arc<AtomicBool>,
) {
    loop {
        match read_message(&mut reader).await {
            Ok(Some(v)) => match classify(v) {
                Message::Reply { id, result } => {
                    if let Some(tx) = lock(&pending).remove(&id) {
                        let _ = tx.send(result.map_err(|(class, desc)| QmpError::Command {
                            command: String::new(),
                            class,
                            desc,
                        }));
                    }
                }
                Message::Event(e) => {
                    let _ = events.send(e);
                }
                Message::Other => {}
            },
            Ok(None) => break,
            Err(e) => {
                tracing::warn!("QMP read: {e}");
                break;
            }
        }
    }
    closed.store(true, Ordering::SeqCst);
    for (_, tx) in lock(&pending).drain() {
        let _ = tx.send(Err(QmpError::Disconnected));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::UnixListener;

    #[test]
    fn classifies_messages() {
        assert_eq!(
            classify(json!({"return": {"status": "running"}, "id": 3})),
            Message::Reply { id: 3, result: Ok(json!({"status": "running"})) }
        );
        assert_eq!(
            classify(json!({"error": {"class": "GenericError", "desc": "no"}, "id": 4})),
            Message::Reply { id: 4, result: Err(("GenericError".into(), "no".into())) }
        );
        let ev = classify(
            json!({"event": "SHUTDOWN", "data": {"guest": true}, "timestamp": {"seconds": 2, "microseconds": 5}}),
        );
        assert_eq!(
            ev,
            Message::Event(QmpEvent { name: "SHUTDOWN".into(), data: json!({"guest": true}), micros: 2_000_005 })
        );
        assert_eq!(classify(json!({"return": {}})), Message::Other);
    }

    #[test]
    fn greeting_versions() {
        let g = json!({"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": ""}, "capabilities": ["oob"]}});
        assert_eq!(parse_greeting(&g).unwrap(), (7, 2, 22));
        assert!(parse_greeting(&json!({"hello": 1})).is_err());
    }

    /// A fake QEMU that greets, answers by script and can send events: tests the client's
    /// framing, id matching, errors, timeouts and disconnects without a real QEMU.
    async fn fake_qemu(path: &Path, script: fn(Value) -> Vec<String>) {
        let listener = UnixListener::bind(path).unwrap();
        tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            let (r, mut w) = s.into_split();
            w.write_all(b"{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 0, \"minor\": 2, \"major\": 7}}, \"capabilities\": []}}\n").await.unwrap();
            let mut lines = BufReader::new(r).lines();
            while let Ok(Some(l)) = lines.next_line().await {
                let v: Value = serde_json::from_str(&l).unwrap();
                for out in script(v) {
                    if out == "CLOSE" {
                        return;
                    }
                    w.write_all(out.as_bytes()).await.unwrap();
                    w.write_all(b"\n").await.unwrap();
                }
            }
        });
    }

    fn script(v: Value) -> Vec<String> {
        let id = v["id"].clone();
        match v["execute"].as_str().unwrap() {
            "qmp_capabilities" => vec![json!({"return": {}, "id": id}).to_string()],
            "query-status" => vec![
                json!({"event": "RESUME", "timestamp": {"seconds": 1, "microseconds": 0}}).to_string(),
                json!({"return": {"status": "running", "running": true}, "id": id}).to_string(),
            ],
            "bad" => vec![
                json!({"error": {"class": "CommandNotFound", "desc": "The command bad has not been found"}, "id": id})
                    .to_string(),
            ],
            "silent" => vec![],
            "bye" => vec!["CLOSE".into()],
            _ => vec![],
        }
    }

    #[tokio::test]
    async fn commands_replies_events_errors_timeouts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.sock");
        fake_qemu(&path, script).await;
        let qmp = Qmp::connect(&path, Duration::from_secs(5)).await.unwrap();
        assert_eq!(qmp.version, (7, 2, 0));
        let mut ev = qmp.subscribe();
        let st = qmp.execute("query-status", Value::Null).await.unwrap();
        assert_eq!(st["status"], "running");
        assert_eq!(ev.recv().await.unwrap().name, "RESUME");
        match qmp.execute("bad", Value::Null).await {
            Err(QmpError::Command { command, class, .. }) => {
                assert_eq!(command, "bad");
                assert_eq!(class, "CommandNotFound");
            }
            other => panic!("{other:?}"),
        }
        let t = qmp.execute_with_timeout("silent", Value::Null, Duration::from_millis(100)).await;
        assert!(matches!(t, Err(QmpError::Timeout(..))), "{t:?}");
        let b = qmp.execute("bye", Value::Null).await;
        assert!(matches!(b, Err(QmpError::Disconnected)), "{b:?}");
        assert!(qmp.is_closed());
        assert!(matches!(qmp.execute("query-status", Value::Null).await, Err(QmpError::Disconnected)));
    }

    #[tokio::test]
    async fn refuses_a_non_qmp_peer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.sock");
        let listener = UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            s.write_all(b"{\"hello\": 1}\n").await.unwrap();
            tokio::time::sleep(Duration::from_secs(1)).await;
        });
        let err = Qmp::connect(&path, Duration::from_secs(5)).await.err().unwrap();
        assert!(matches!(err, QmpError::Protocol(_)), "{err}");
    }
}
