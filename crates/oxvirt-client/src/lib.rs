//! A client of oxvirt's REST API over the daemon's Unix socket or HTTPS (used by the CLI and the
//! tests): one typed call per route, by area (`vms.rs`, `tasks.rs`, `host.rs`, `resources.rs`,
//! `storage.rs`, `network.rs`, `access.rs`, `projects.rs`, `cluster.rs`), with the model's wire
//! types as bodies; `get`/`post`/`put`/`patch`/`delete` for requests no call covers (tests).

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use std::path::PathBuf;
use std::sync::Arc;

mod access;
mod backups;
mod cluster;
mod ha;
mod host;
mod network;
mod projects;
mod resources;
mod storage;
mod tasks;
mod templates;
mod transport;
mod vms;
pub use access::Access;
pub use cluster::Cluster;
pub use ha::Ha;
pub use network::Networks;
pub use projects::Projects;
pub use resources::ResourceControl;
pub use storage::{Cloned, Storage};
pub use transport::{normalize_fingerprint, Io, Transport};
pub use vms::{Console, Created};

/// The error body the API returns with every 4xx and 5xx (the model's wire type).
pub use oxvirt_model::ApiErrorBody;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach oxvirtd at {path}: {source} (is the daemon running? see --socket / OXVIRT_SOCKET)")]
    Connect { path: PathBuf, source: std::io::Error },
    #[error("talking to oxvirtd: {0}")]
    Http(String),
    #[error("{}", .0.message)]
    Api(ApiErrorBody),
    #[error("unexpected answer from oxvirtd: {0}")]
    Decode(String),
    /// A command's argument refused before anything was sent: the flag and the rule.
    #[error("{0}")]
    Usage(String),
}

#[derive(Debug, Clone)]
pub struct Client {
    transport: Transport,
    /// Connections to the daemon's Unix socket that answered and may carry another request
    /// (HTTP/1.1 keep-alive), shared by the client's clones.
    idle: Arc<IdleConnections>,
}

/// At most this many idle connections are kept.
const MAX_IDLE: usize = 16;

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

#[derive(Default)]
struct IdleConnections(std::sync::Mutex<Vec<Sender>>);

impl std::fmt::Debug for IdleConnections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} idle connections", self.0.lock().map(|v| v.len()).unwrap_or(0))
    }
}

impl IdleConnections {
    fn take(&self) -> Option<Sender> {
        self.0.lock().ok()?.pop()
    }

    fn give_back(&self, s: Sender) {
        if let Ok(mut v) = self.0.lock() {
            if !s.is_closed() && v.len() < MAX_IDLE {
                v.push(s);
            }
        }
    }
}

impl Client {
    /// A client of the daemon's Unix socket.
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Client::with_transport(Transport::Unix(socket.into()))
    }

    pub fn with_transport(transport: Transport) -> Self {
        Client { transport, idle: Arc::default() }
    }

    pub fn transport(&self) -> &Transport {
        &self.transport
    }

    /// One request; returns the status and the body. API errors come back as `Ok` here.
    pub async fn raw(&self, method: Method, path: &str, body: Option<Vec<u8>>) -> Result<(u16, Bytes), ClientError> {
        let mut req = Request::builder().method(method).uri(path).header("host", "oxvirtd");
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        if let Some(auth) = self.transport.authorization() {
            req = req.header("authorization", auth);
        }
        let req =
            req.body(Full::new(Bytes::from(body.unwrap_or_default()))).map_err(|e| ClientError::Http(e.to_string()))?;
        let (resp, sender) = self.send(req).await?;
        let status = resp.status().as_u16();
        let bytes = resp.into_body().collect().await.map_err(|e| ClientError::Http(e.to_string()))?.to_bytes();
        // Over the Unix socket the connection carries the next request too. Over HTTPS each
        // request has its own: the daemon caps connections per address and closes idle ones.
        if matches!(self.transport, Transport::Unix(_)) {
            self.idle.give_back(sender);
        }
        Ok((status, bytes))
    }

    /// Sends one request on an idle connection, or on a new one. A connection the daemon closed
    /// (it restarted) gives the request back unsent, and the next one is tried: a request is
    /// never sent twice.
    async fn send(&self, mut req: Request<Full<Bytes>>) -> Result<(hyper::Response<Incoming>, Sender), ClientError> {
        while let Some(mut sender) = self.idle.take() {
            if sender.ready().await.is_err() {
                continue;
            }
            match sender.try_send_request(req).await {
                Ok(resp) => return Ok((resp, sender)),
                Err(mut e) => match e.take_message() {
                    Some(unsent) => req = unsent,
                    None => return Err(ClientError::Http(e.into_error().to_string())),
                },
            }
        }
        let stream = self.transport.connect().await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| ClientError::Http(e.to_string()))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let resp = sender.send_request(req).await.map_err(|e| ClientError::Http(e.to_string()))?;
        Ok((resp, sender))
    }

    /// A request whose success body is JSON of type `T`; API errors become [`ClientError::Api`].
    pub async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<T, ClientError> {
        decode(self.raw(method, path, body.map(|b| b.to_string().into_bytes())).await?)
    }

    /// A request whose body is `body` as JSON (a model wire type) and whose success body is JSON
    /// of type `T`.
    pub(crate) async fn call_with<T: DeserializeOwned, B: Serialize + ?Sized>(
        &self,
        method: Method,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let body = serde_json::to_vec(body).map_err(|e| ClientError::Http(format!("encoding the request: {e}")))?;
        decode(self.raw(method, path, Some(body)).await?)
    }

    pub async fn post<T: DeserializeOwned>(&self, path: &str, body: &Value) -> Result<T, ClientError> {
        self.call(Method::POST, path, Some(body)).await
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.call(Method::GET, path, None).await
    }

    pub async fn delete(&self, path: &str) -> Result<(), ClientError> {
        let _: Value = self.call(Method::DELETE, path, None).await?;
        Ok(())
    }

    /// A DELETE whose answer is JSON.
    pub async fn delete_json<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.call(Method::DELETE, path, None).await
    }

    pub async fn patch<T: DeserializeOwned>(&self, path: &str, body: &Value) -> Result<T, ClientError> {
        self.call(Method::PATCH, path, Some(body)).await
    }

    pub async fn put<T: DeserializeOwned>(&self, path: &str, body: &Value) -> Result<T, ClientError> {
        self.call(Method::PUT, path, Some(body)).await
    }
}

/// The success body of an answer as `T` (no body reads as JSON `null`); an API error as
/// [`ClientError::Api`].
fn decode<T: DeserializeOwned>((status, bytes): (u16, Bytes)) -> Result<T, ClientError> {
    check(status, &bytes)?;
    let bytes = if bytes.is_empty() { Bytes::from_static(b"null") } else { bytes };
    serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode(format!("{e}: {}", String::from_utf8_lossy(&bytes))))
}

fn check(status: u16, body: &[u8]) -> Result<(), ClientError> {
    if status < 400 {
        return Ok(());
    }
    match serde_json::from_slice::<oxvirt_model::ErrorReply>(body) {
        Ok(w) => Err(ClientError::Api(w.error)),
        Err(_) => Err(ClientError::Http(format!("status {status}: {}", String::from_utf8_lossy(body)))),
    }
}

/// Percent-encodes a path segment.
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
