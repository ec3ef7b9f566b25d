//! RFC 7047's JSON-RPC over a stream: `transact`, `echo`, `list_dbs`.

use serde_json::{json, Value};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// Largest reply read (a select of every port of a big host is far smaller).
const MAX_MESSAGE: usize = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum OvsdbError {
    #[error("ovsdb-server at {path}: {source}")]
    Connect { path: String, source: std::io::Error },
    #[error("ovsdb connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("ovsdb-server sent what is not JSON-RPC: {0}")]
    Protocol(String),
    #[error("ovsdb-server did not answer within {0:?}")]
    Timeout(Duration),
    #[error("ovsdb-server closed the connection")]
    Closed,
    #[error("ovsdb {method} failed: {error}")]
    Rpc { method: String, error: String },
    /// A request oxvirt will not send: the field and the rule it breaks.
    #[error("{field}: {rule}")]
    Invalid { field: String, rule: String },
    /// One operation of a transaction failed; the database did not change.
    #[error("ovsdb transaction refused at operation {index} ({op}): {error}{}", details.as_ref().map(|d| format!(": {d}")).unwrap_or_default())]
    Operation { index: usize, op: String, error: String, details: Option<String> },
}

/// A connection to ovsdb-server.
pub struct Client {
    stream: UnixStream,
    buf: Vec<u8>,
    next_id: u64,
    timeout: Duration,
}

impl Client {
    pub async fn connect(path: &std::path::Path, timeout: Duration) -> Result<Client, OvsdbError> {
        let stream = UnixStream::connect(path)
            .await
            .map_err(|source| OvsdbError::Connect { path: path.display().to_string(), source })?;
        Ok(Client { stream, buf: Vec::new(), next_id: 1, timeout })
    }

    /// The databases the server holds.
    pub async fn list_dbs(&mut self) -> Result<Vec<String>, OvsdbError> {
        let v = self.call("list_dbs", json!([])).await?;
        serde_json::from_value(v).map_err(|e| OvsdbError::Protocol(format!("list_dbs: {e}")))
    }

    /// Runs `ops` on database `db` as one transaction: all or none. Returns each operation's
    /// result; the first failed operation is the error.
    pub async fn transact(&mut self, db: &str, ops: Vec<Value>) -> Result<Vec<Value>, OvsdbError> {
        let names: Vec<String> =
            ops.iter().map(|o| o.get("op").and_then(Value::as_str).unwrap_or("?").to_string()).collect();
        let mut params = vec![json!(db)];
        params.extend(ops);
        let result = self.call("transact", Value::Array(params)).await?;
        let Value::Array(results) = result else {
            return Err(OvsdbError::Protocol("transact: result is not an array".into()));
        };
        for (index, r) in results.iter().enumerate() {
            if let Some(error) = r.get("error").and_then(Value::as_str) {
                let details = r.get("details").and_then(Value::as_str).map(str::to_string);
                // An error past the last operation (a commit failure) is named by the last one.
                let op = names.get(index).or(names.last()).cloned().unwrap_or_default();
                return Err(OvsdbError::Operation { index, op, error: error.to_string(), details });
            }
        }
        Ok(results)
    }

    /// One request and its reply; the server's own echo requests are answered meanwhile and
    /// its notifications (monitor updates) passed over.
    pub async fn call(&mut self, method: &str, params: Value) -> Result<Value, OvsdbError> {
        let id = self.next_id;
        self.next_id += 1;
        self.send(&json!({ "method": method, "params": params, "id": id })).await?;
        let timeout = self.timeout;
        let wait = async {
            loop {
                let msg = self.read_message().await?;
                if msg.get("method").and_then(Value::as_str) == Some("echo") {
                    let reply = json!({ "result": msg.get("params").cloned().unwrap_or(json!([])), "error": null, "id": msg.get("id").cloned().unwrap_or(Value::Null) });
                    self.send(&reply).await?;
                    continue;
                }
                if msg.get("id").and_then(Value::as_u64) != Some(id) {
                    continue;
                }
                match msg.get("error") {
                    Some(Value::Null) | None => return Ok(msg.get("result").cloned().unwrap_or(Value::Null)),
                    Some(e) => {
                        let error = e.as_str().map(str::to_string).unwrap_or_else(|| e.to_string());
                        return Err(OvsdbError::Rpc { method: method.to_string(), error });
                    }
                }
            }
        };
        tokio::time::timeout(timeout, wait).await.map_err(|_| OvsdbError::Timeout(timeout))?
    }

    async fn send(&mut self, v: &Value) -> Result<(), OvsdbError> {
        self.stream.write_all(v.to_string().as_bytes()).await?;
        Ok(())
    }

    /// The next whole JSON value on the stream (values come back to back, unframed).
    async fn read_message(&mut self) -> Result<Value, OvsdbError> {
        loop {
            if !self.buf.is_empty() {
                let mut it = serde_json::Deserializer::from_slice(&self.buf).into_iter::<Value>();
                match it.next() {
                    Some(Ok(v)) => {
                        let used = it.byte_offset();
                        self.buf.drain(..used);
                        return Ok(v);
                    }
                    Some(Err(e)) if e.is_eof() => {}
                    Some(Err(e)) => return Err(OvsdbError::Protocol(e.to_string())),
                    None => self.buf.clear(),
                }
            }
            if self.buf.len() > MAX_MESSAGE {
                return Err(OvsdbError::Protocol(format!("a message over {MAX_MESSAGE} bytes")));
            }
            let mut chunk = [0u8; 16 << 10];
            let n = self.stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(OvsdbError::Closed);
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}
