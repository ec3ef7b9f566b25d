//! One switch's connection, seen from the controller: the hello and version check, the
//! switch's features, echo requests answered, requests matched to their replies by
//! transaction id, and barriers that say which requests the switch refused.

use crate::message::{
    self, decode, encode, frame_length, DecodeError, ErrorMsg, Features, FlowMod, Message, HEADER_LEN, VERSION,
};
use crate::multipart::{FlowStats, FlowStatsRequest, MultipartBody, MultipartRequest, PortStats};
use std::collections::VecDeque;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error("switch connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("switch sent a message oxvirt cannot read: {0}")]
    Decode(#[from] DecodeError),
    #[error("message not sent: {0}")]
    Encode(#[from] message::EncodeError),
    #[error("switch speaks OpenFlow versions {0:?} (wire numbers), not 1.3 (4)")]
    Version(Vec<u8>),
    #[error("switch refused request {xid}: {} (type {}, code {})", .error.describe(), .error.kind, .error.code)]
    Refused { xid: u32, error: ErrorMsg },
    #[error("switch sent {got} where {expected} was due")]
    Unexpected { expected: &'static str, got: String },
    #[error("switch did not answer within {0:?}")]
    Timeout(Duration),
    #[error("switch closed the connection")]
    Closed,
}

/// A controller's connection to one switch, after the handshake. [`Connection::recv`] may be
/// cancelled (in a `select!`) without losing a byte; a request cut by a timeout leaves its
/// reply to come, so after any error but [`ConnError::Refused`] the controller drops the
/// connection and the switch connects again.
pub struct Connection<S> {
    stream: S,
    next_xid: u32,
    features: Features,
    timeout: Duration,
    /// Messages that arrived while a reply was awaited (packet-ins, port changes, …).
    pending: VecDeque<(u32, Message)>,
    /// Bytes read of a message not yet whole.
    rbuf: Vec<u8>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Connection<S> {
    /// Says hello (OpenFlow 1.3 only), checks the switch speaks it, and asks its features.
    /// Each answer must come within `timeout`.
    pub async fn handshake(stream: S, timeout: Duration) -> Result<Connection<S>, ConnError> {
        let mut c = Connection {
            stream,
            next_xid: 1,
            features: Features { datapath_id: 0, n_buffers: 0, n_tables: 0, auxiliary_id: 0, capabilities: 0 },
            timeout,
            pending: VecDeque::new(),
            rbuf: Vec::new(),
        };
        c.send(&Message::Hello { versions: vec![VERSION] }).await?;
        let deadline = Instant::now() + timeout;
        let (version, (_, msg)) = c.read_raw(Some(deadline)).await?;
        match msg {
            Message::Hello { versions } => {
                let speaks = if versions.is_empty() { version >= VERSION } else { versions.contains(&VERSION) };
                if !speaks {
                    return Err(ConnError::Version(if versions.is_empty() { vec![version] } else { versions }));
                }
            }
            other => return Err(ConnError::Unexpected { expected: "a hello", got: name(&other) }),
        }
        let xid = c.send(&Message::FeaturesRequest).await?;
        match c.reply(xid).await? {
            Message::FeaturesReply(f) => c.features = f,
            other => return Err(ConnError::Unexpected { expected: "a features reply", got: name(&other) }),
        }
        Ok(c)
    }

    pub fn features(&self) -> &Features {
        &self.features
    }

    /// Sends a message under a new transaction id, which it returns.
    pub async fn send(&mut self, msg: &Message) -> Result<u32, ConnError> {
        let xid = self.next_xid;
        self.next_xid = self.next_xid.wrapping_add(1).max(1);
        self.stream.write_all(&encode(xid, msg)?).await?;
        Ok(xid)
    }

    /// The next message the switch sent of its own accord (echo requests are answered here).
    pub async fn recv(&mut self) -> Result<(u32, Message), ConnError> {
        if let Some(m) = self.pending.pop_front() {
            return Ok(m);
        }
        loop {
            let (xid, msg) = self.read_one(None).await?;
            if let Some(m) = self.answer_echo(xid, msg).await? {
                return Ok(m);
            }
        }
    }

    /// Sends flow changes and a barrier: Ok once the switch has applied every one, or the first
    /// it refused (with its index in `mods`).
    pub async fn flow_mods(&mut self, mods: &[FlowMod]) -> Result<(), (usize, ConnError)> {
        let mut xids = Vec::with_capacity(mods.len());
        for (i, m) in mods.iter().enumerate() {
            xids.push(self.send(&Message::FlowMod(m.clone())).await.map_err(|e| (i, e))?);
        }
        let refused = self.barrier().await.map_err(|e| (mods.len(), e))?;
        match refused.into_iter().next() {
            Some((xid, error)) => {
                Err((xids.iter().position(|x| *x == xid).unwrap_or(mods.len()), ConnError::Refused { xid, error }))
            }
            None => Ok(()),
        }
    }

    /// A barrier: waits until the switch has handled everything sent before it, and returns
    /// the requests it refused meanwhile (their xids with the errors).
    pub async fn barrier(&mut self) -> Result<Vec<(u32, ErrorMsg)>, ConnError> {
        let xid = self.send(&Message::BarrierRequest).await?;
        let deadline = Instant::now() + self.timeout;
        let mut refused = Vec::new();
        loop {
            let (x, msg) = self.read_one(Some(deadline)).await?;
            match msg {
                Message::BarrierReply if x == xid => return Ok(refused),
                Message::Error(e) => refused.push((x, e)),
                other => {
                    if let Some(m) = self.answer_echo(x, other).await? {
                        self.pending.push_back(m);
                    }
                }
            }
        }
    }

    /// A multipart request's whole reply, its parts in order.
    pub async fn multipart(&mut self, body: MultipartBody) -> Result<Vec<MultipartBody>, ConnError> {
        let xid = self.send(&Message::MultipartRequest(MultipartRequest::new(body))).await?;
        let mut parts = Vec::new();
        loop {
            match self.reply(xid).await? {
                Message::MultipartReply(r) => {
                    let more = r.more();
                    parts.push(r.body);
                    if !more {
                        return Ok(parts);
                    }
                }
                other => return Err(ConnError::Unexpected { expected: "a multipart reply", got: name(&other) }),
            }
        }
    }

    /// Flows with their counters.
    pub async fn flow_stats(&mut self, req: FlowStatsRequest) -> Result<Vec<FlowStats>, ConnError> {
        let mut out = Vec::new();
        for part in self.multipart(MultipartBody::FlowStatsRequest(req)).await? {
            match part {
                MultipartBody::FlowStats(list) => out.extend(list),
                other => return Err(ConnError::Unexpected { expected: "flow statistics", got: format!("{other:?}") }),
            }
        }
        Ok(out)
    }

    /// One port's counters, or every port's ([`crate::port::ANY`]).
    pub async fn port_stats(&mut self, port_no: u32) -> Result<Vec<PortStats>, ConnError> {
        let mut out = Vec::new();
        for part in self.multipart(MultipartBody::PortStatsRequest { port_no }).await? {
            match part {
                MultipartBody::PortStats(list) => out.extend(list),
                other => return Err(ConnError::Unexpected { expected: "port statistics", got: format!("{other:?}") }),
            }
        }
        Ok(out)
    }

    /// An echo round trip (the switch is alive and reading).
    pub async fn echo(&mut self, data: &[u8]) -> Result<Duration, ConnError> {
        let t0 = Instant::now();
        let xid = self.send(&Message::EchoRequest(data.to_vec())).await?;
        match self.reply(xid).await? {
            Message::EchoReply(d) if d == data => Ok(t0.elapsed()),
            other => Err(ConnError::Unexpected { expected: "an echo reply with the data sent", got: name(&other) }),
        }
    }

    /// The reply to `xid` (within the timeout); an error with that xid is the request refused. Other messages wait
    /// in `pending` for [`Connection::recv`].
    async fn reply(&mut self, xid: u32) -> Result<Message, ConnError> {
        let deadline = Instant::now() + self.timeout;
        loop {
            let (x, msg) = self.read_one(Some(deadline)).await?;
            if x == xid {
                return match msg {
                    Message::Error(error) => Err(ConnError::Refused { xid, error }),
                    m => Ok(m),
                };
            }
            if let Some(m) = self.answer_echo(x, msg).await? {
                self.pending.push_back(m);
            }
        }
    }

    async fn answer_echo(&mut self, xid: u32, msg: Message) -> Result<Option<(u32, Message)>, ConnError> {
        match msg {
            Message::EchoRequest(data) => {
                self.stream.write_all(&encode(xid, &Message::EchoReply(data))?).await?;
                Ok(None)
            }
            m => Ok(Some((xid, m))),
        }
    }

    async fn read_one(&mut self, deadline: Option<Instant>) -> Result<(u32, Message), ConnError> {
        let (_, msg) = self.read_raw(deadline).await?;
        Ok(msg)
    }

    /// One message: (the header's version, (xid, message)); by `deadline` when there is one.
    /// Cancel-safe: bytes read stay in `rbuf` until their message is whole.
    async fn read_raw(&mut self, deadline: Option<Instant>) -> Result<(u8, (u32, Message)), ConnError> {
        let read = async {
            loop {
                if self.rbuf.len() >= HEADER_LEN {
                    let mut header = [0u8; HEADER_LEN];
                    header.copy_from_slice(&self.rbuf[..HEADER_LEN]);
                    let len = frame_length(&header)?;
                    if self.rbuf.len() >= len {
                        let frame: Vec<u8> = self.rbuf.drain(..len).collect();
                        return Ok((header[0], decode(&frame)?));
                    }
                }
                let mut chunk = [0u8; 16 << 10];
                let n = self.stream.read(&mut chunk).await?;
                if n == 0 {
                    return Err(ConnError::Closed);
                }
                self.rbuf.extend_from_slice(&chunk[..n]);
            }
        };
        let Some(deadline) = deadline else {
            return read.await;
        };
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, read).await {
            Ok(r) => r,
            Err(_) => Err(ConnError::Timeout(self.timeout)),
        }
    }
}

/// A message's kind, for errors.
fn name(m: &Message) -> String {
    let s = format!("{m:?}");
    s.split(['(', ' ', '{']).next().unwrap_or("a message").to_string()
}
