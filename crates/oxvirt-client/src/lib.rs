//! A client of oxvirt's REST API over the daemon's Unix socket (used by the CLI and the tests).

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use oxvirt_model::{HostInfo, Task, Vm};
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

mod storage;
mod transport;
pub use storage::Cloned;
pub use transport::{normalize_fingerprint, Io, Transport};

/// The error body the API returns with every 4xx and 5xx.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
pub struct ApiErrorBody {
    pub status: u16,
    pub code: String,
    pub message: String,
    pub field: Option<String>,
    pub rule: Option<String>,
}

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

#[derive(Debug, Clone, serde::Deserialize)]
pub struct Created {
    pub vm: Vm,
    pub task: Option<Task>,
}

/// An open serial console: send bytes as binary messages, receive what the guest prints.
pub type Console = tokio_tungstenite::WebSocketStream<Box<dyn Io>>;

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
        let (status, bytes) = self.raw(method, path, body.map(|b| b.to_string().into_bytes())).await?;
        check(status, &bytes)?;
        let bytes = if bytes.is_empty() { Bytes::from_static(b"null") } else { bytes };
        serde_json::from_slice(&bytes)
            .map_err(|e| ClientError::Decode(format!("{e}: {}", String::from_utf8_lossy(&bytes))))
    }

    pub async fn host(&self) -> Result<HostInfo, ClientError> {
        self.call(Method::GET, "/api/v1/host", None).await
    }

    pub async fn create_vm(&self, spec: &Value, start: bool) -> Result<Created, ClientError> {
        let path = if start { "/api/v1/vms?start=true" } else { "/api/v1/vms" };
        self.call(Method::POST, path, Some(spec)).await
    }

    pub async fn list_vms(&self) -> Result<Vec<Vm>, ClientError> {
        self.call(Method::GET, "/api/v1/vms", None).await
    }

    pub async fn get_vm(&self, name: &str) -> Result<Vm, ClientError> {
        self.call(Method::GET, &format!("/api/v1/vms/{}", encode(name)), None).await
    }

    pub async fn update_vm(&self, name: &str, update: &Value) -> Result<Vm, ClientError> {
        self.call(Method::PATCH, &format!("/api/v1/vms/{}", encode(name)), Some(update)).await
    }

    pub async fn delete_vm(&self, name: &str) -> Result<(), ClientError> {
        let _: Value = self.call(Method::DELETE, &format!("/api/v1/vms/{}", encode(name)), None).await?;
        Ok(())
    }

    pub async fn vm_action(&self, name: &str, action: &str) -> Result<Task, ClientError> {
        self.call(Method::POST, &format!("/api/v1/vms/{}/actions/{}", encode(name), encode(action)), None).await
    }

    pub async fn console_log(&self, name: &str, bytes: u64) -> Result<Vec<u8>, ClientError> {
        let (status, body) =
            self.raw(Method::GET, &format!("/api/v1/vms/{}/console-log?bytes={bytes}", encode(name)), None).await?;
        check(status, &body)?;
        Ok(body.to_vec())
    }

    /// Opens the VM's interactive serial console (a WebSocket over the daemon's socket).
    pub async fn console(&self, name: &str) -> Result<Console, ClientError> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let stream = self.transport.connect().await?;
        let url = format!("{}/api/v1/vms/{}/console", self.transport.ws_base(), encode(name));
        let mut req = url.into_client_request().map_err(|e| ClientError::Http(e.to_string()))?;
        if let Some(auth) = self.transport.authorization() {
            let v = auth.parse().map_err(|_| ClientError::Http("token holds characters a header cannot".into()))?;
            req.headers_mut().insert("authorization", v);
        }
        match tokio_tungstenite::client_async(req, stream).await {
            Ok((ws, _)) => Ok(ws),
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                let body = resp.body().clone().unwrap_or_default();
                check(resp.status().as_u16(), &body)?;
                Err(ClientError::Http(format!("console refused with status {}", resp.status())))
            }
            Err(e) => Err(ClientError::Http(format!("console: {e}"))),
        }
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

    /// Starts a live migration (a task).
    pub async fn migrate_vm(&self, name: &str, to: &str) -> Result<Task, ClientError> {
        self.post(&format!("/api/v1/vms/{}/migrate", encode(name)), &serde_json::json!({ "to": to })).await
    }

    pub async fn put<T: DeserializeOwned>(&self, path: &str, body: &Value) -> Result<T, ClientError> {
        self.call(Method::PUT, path, Some(body)).await
    }

    pub async fn list_tasks(&self) -> Result<Vec<Task>, ClientError> {
        self.call(Method::GET, "/api/v1/tasks", None).await
    }

    pub async fn get_task(&self, id: &str) -> Result<Task, ClientError> {
        self.call(Method::GET, &format!("/api/v1/tasks/{}", encode(id)), None).await
    }

    pub async fn cancel_task(&self, id: &str) -> Result<Task, ClientError> {
        self.call(Method::DELETE, &format!("/api/v1/tasks/{}", encode(id)), None).await
    }

    /// Waits for a task to end, `timeout` at most (longer waits are made of several requests).
    pub async fn wait_task(&self, id: &str, timeout: Duration) -> Result<Task, ClientError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now()).as_secs().min(60);
            let t: Task =
                self.call(Method::GET, &format!("/api/v1/tasks/{}/wait?timeout={left}", encode(id)), None).await?;
            if t.state.is_final() || left == 0 {
                return Ok(t);
            }
        }
    }

    /// Runs an action and waits for its task; a failed task is an error.
    pub async fn vm_action_wait(&self, name: &str, action: &str, timeout: Duration) -> Result<Task, ClientError> {
        let t = self.vm_action(name, action).await?;
        let t = self.wait_task(&t.id, timeout).await?;
        match t.state {
            oxvirt_model::TaskState::Succeeded => Ok(t),
            _ => Err(ClientError::Api(ApiErrorBody {
                status: 500,
                code: "task-failed".into(),
                message: format!("{} {:?}: {}", t.kind, t.state, t.error.clone().unwrap_or_default()).to_lowercase(),
                field: None,
                rule: None,
            })),
        }
    }
}

fn check(status: u16, body: &[u8]) -> Result<(), ClientError> {
    if status < 400 {
        return Ok(());
    }
    #[derive(serde::Deserialize)]
    struct Wrapper {
        error: ApiErrorBody,
    }
    match serde_json::from_slice::<Wrapper>(body) {
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
