//! A small blocking NBD client (the fixed-newstyle protocol over a Unix socket): reads, writes,
//! flushes and block status with structured replies. It reads QEMU's exports of a VM's disks,
//! with the `qemu:dirty-bitmap:` meta context saying which chunks changed, and writes restored
//! disks into `qemu-nbd`'s. One request at a time per connection; parallel work opens several.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
const OPT_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
const REQUEST_MAGIC: u32 = 0x2560_9513;
const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

const FLAG_FIXED_NEWSTYLE: u16 = 1;
const FLAG_NO_ZEROES: u16 = 2;

const OPT_GO: u32 = 7;
const OPT_STRUCTURED_REPLY: u32 = 8;
const OPT_SET_META_CONTEXT: u32 = 10;

const REP_ACK: u32 = 1;
const REP_INFO: u32 = 3;
const REP_META_CONTEXT: u32 = 4;
const REP_ERR_BIT: u32 = 1 << 31;

const INFO_EXPORT: u16 = 0;
const TRANS_READ_ONLY: u16 = 1 << 1;

const CMD_READ: u16 = 0;
const CMD_WRITE: u16 = 1;
const CMD_DISC: u16 = 2;
const CMD_FLUSH: u16 = 3;
const CMD_BLOCK_STATUS: u16 = 7;

const REPLY_FLAG_DONE: u16 = 1;
const REPLY_NONE: u16 = 0;
const REPLY_OFFSET_DATA: u16 = 1;
const REPLY_OFFSET_HOLE: u16 = 2;
const REPLY_BLOCK_STATUS: u16 = 5;
const REPLY_ERR_BIT: u16 = 1 << 15;

/// The meta context saying where an image has data (`base:allocation`: bit 0 hole, bit 1 zero).
pub const ALLOCATION: &str = "base:allocation";
/// `base:allocation`'s flag for a range that reads as zeros.
pub const STATE_ZERO: u32 = 2;

/// The meta context of a dirty bitmap QEMU exports with its disk (bit 0: changed).
pub fn dirty_bitmap(name: &str) -> String {
    format!("qemu:dirty-bitmap:{name}")
}

#[derive(Debug, thiserror::Error)]
pub enum NbdError {
    #[error("NBD connection to {path}: {source}")]
    Connect { path: String, source: std::io::Error },
    #[error("NBD: {0}")]
    Io(#[from] std::io::Error),
    #[error("NBD server: {0}")]
    Protocol(String),
    #[error("NBD server refused {what}: error {code}{message}")]
    Refused { what: String, code: u32, message: String },
}

/// One extent of a meta context: `length` bytes with the context's `flags`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub length: u64,
    pub flags: u32,
}

/// A connection to one export, negotiated and ready for commands.
pub struct NbdClient {
    stream: UnixStream,
    size: u64,
    read_only: bool,
    /// The ids the server gave the meta contexts asked for, in the order asked.
    contexts: Vec<(String, u32)>,
    cookie: u64,
}

impl NbdClient {
    /// Connects to the server at `socket` and opens `export`, asking for the meta contexts named
    /// (a server that does not know one refuses it: an error).
    pub fn connect(socket: &Path, export: &str, contexts: &[&str]) -> Result<NbdClient, NbdError> {
        let stream = UnixStream::connect(socket)
            .map_err(|source| NbdError::Connect { path: socket.display().to_string(), source })?;
        stream.set_read_timeout(Some(Duration::from_secs(120)))?;
        stream.set_write_timeout(Some(Duration::from_secs(120)))?;
        let mut c = NbdClient { stream, size: 0, read_only: true, contexts: Vec::new(), cookie: 0 };
        c.handshake(export, contexts)?;
        Ok(c)
    }

    /// The export's size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn read_only(&self) -> bool {
        self.read_only
    }

    fn handshake(&mut self, export: &str, contexts: &[&str]) -> Result<(), NbdError> {
        let magic = self.u64()?;
        let opt = self.u64()?;
        if magic != NBDMAGIC || opt != IHAVEOPT {
            return Err(NbdError::Protocol("not a fixed-newstyle NBD server".into()));
        }
        let flags = self.u16()?;
        if flags & FLAG_FIXED_NEWSTYLE == 0 {
            return Err(NbdError::Protocol("the server is not fixed-newstyle".into()));
        }
        let client_flags = u32::from(FLAG_FIXED_NEWSTYLE | (flags & FLAG_NO_ZEROES));
        self.stream.write_all(&client_flags.to_be_bytes())?;

        self.option(OPT_STRUCTURED_REPLY, &[])?;
        self.expect_ack(OPT_STRUCTURED_REPLY, "structured replies")?;

        if !contexts.is_empty() {
            let mut data = Vec::new();
            put_str(&mut data, export);
            data.extend_from_slice(&(contexts.len() as u32).to_be_bytes());
            for q in contexts {
                put_str(&mut data, q);
            }
            self.option(OPT_SET_META_CONTEXT, &data)?;
            loop {
                let (kind, payload) = self.option_reply(OPT_SET_META_CONTEXT, "meta contexts")?;
                match kind {
                    REP_META_CONTEXT if payload.len() >= 4 => {
                        let id = u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]);
                        let name = String::from_utf8_lossy(&payload[4..]).into_owned();
                        self.contexts.push((name, id));
                    }
                    REP_ACK => break,
                    other => return Err(NbdError::Protocol(format!("unexpected reply {other} to meta contexts"))),
                }
            }
            for q in contexts {
                if !self.contexts.iter().any(|(n, _)| n == q) {
                    return Err(NbdError::Protocol(format!("the export has no meta context {q:?}")));
                }
            }
        }

        let mut data = Vec::new();
        put_str(&mut data, export);
        data.extend_from_slice(&0u16.to_be_bytes());
        self.option(OPT_GO, &data)?;
        loop {
            let (kind, payload) = self.option_reply(OPT_GO, &format!("export {export:?}"))?;
            match kind {
                REP_INFO if payload.len() >= 12 && u16::from_be_bytes([payload[0], payload[1]]) == INFO_EXPORT => {
                    self.size = u64::from_be_bytes(payload[2..10].try_into().unwrap_or([0; 8]));
                    let tflags = u16::from_be_bytes([payload[10], payload[11]]);
                    self.read_only = tflags & TRANS_READ_ONLY != 0;
                }
                REP_INFO => {}
                REP_ACK => return Ok(()),
                other => return Err(NbdError::Protocol(format!("unexpected reply {other} to GO"))),
            }
        }
    }

    fn option(&mut self, opt: u32, data: &[u8]) -> Result<(), NbdError> {
        let mut b = Vec::with_capacity(16 + data.len());
        b.extend_from_slice(&IHAVEOPT.to_be_bytes());
        b.extend_from_slice(&opt.to_be_bytes());
        b.extend_from_slice(&(data.len() as u32).to_be_bytes());
        b.extend_from_slice(data);
        self.stream.write_all(&b)?;
        Ok(())
    }

    /// One reply to option `opt`: its type and payload (an error reply is an error).
    fn option_reply(&mut self, opt: u32, what: &str) -> Result<(u32, Vec<u8>), NbdError> {
        if self.u64()? != OPT_REPLY_MAGIC {
            return Err(NbdError::Protocol("bad option reply magic".into()));
        }
        let got = self.u32()?;
        let kind = self.u32()?;
        let len = self.u32()? as usize;
        if len > 1 << 20 {
            return Err(NbdError::Protocol(format!("option reply of {len} bytes")));
        }
        let payload = self.bytes(len)?;
        if got != opt {
            return Err(NbdError::Protocol(format!("reply to option {got}, asked {opt}")));
        }
        if kind & REP_ERR_BIT != 0 {
            return Err(NbdError::Refused {
                what: what.to_string(),
                code: kind & !REP_ERR_BIT,
                message: text_suffix(&payload),
            });
        }
        Ok((kind, payload))
    }

    fn expect_ack(&mut self, opt: u32, what: &str) -> Result<(), NbdError> {
        match self.option_reply(opt, what)?.0 {
            REP_ACK => Ok(()),
            other => Err(NbdError::Protocol(format!("unexpected reply {other} to {what}"))),
        }
    }

    fn request(&mut self, kind: u16, offset: u64, length: u32, data: &[u8]) -> Result<u64, NbdError> {
        self.cookie += 1;
        let mut b = Vec::with_capacity(28 + data.len());
        b.extend_from_slice(&REQUEST_MAGIC.to_be_bytes());
        b.extend_from_slice(&0u16.to_be_bytes());
        b.extend_from_slice(&kind.to_be_bytes());
        b.extend_from_slice(&self.cookie.to_be_bytes());
        b.extend_from_slice(&offset.to_be_bytes());
        b.extend_from_slice(&length.to_be_bytes());
        if data.len() > 64 << 10 {
            self.stream.write_all(&b)?;
            self.stream.write_all(data)?;
        } else {
            b.extend_from_slice(data);
            self.stream.write_all(&b)?;
        }
        Ok(self.cookie)
    }

    /// Reads `buf.len()` bytes at `offset` (holes come back as zeros).
    pub fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), NbdError> {
        let cookie = self.request(CMD_READ, offset, buf.len() as u32, &[])?;
        buf.fill(0);
        loop {
            match self.reply_header(cookie)? {
                Reply::Simple => return self.stream.read_exact(buf).map_err(NbdError::from),
                Reply::Chunk { flags, kind, length } => {
                    match kind {
                        REPLY_OFFSET_DATA => {
                            let at = self.u64()?;
                            let n = (length as usize).saturating_sub(8);
                            let start = at.checked_sub(offset).map(|s| s as usize).filter(|s| s + n <= buf.len());
                            let Some(start) = start else {
                                return Err(NbdError::Protocol(format!("data at {at} outside the read")));
                            };
                            self.stream.read_exact(&mut buf[start..start + n])?;
                        }
                        REPLY_OFFSET_HOLE => {
                            let _ = self.bytes(length as usize)?;
                        }
                        REPLY_NONE => {}
                        k if k & REPLY_ERR_BIT != 0 => return Err(self.chunk_error(length, "read")),
                        k => {
                            let _ = self.bytes(length as usize)?;
                            return Err(NbdError::Protocol(format!("unexpected reply chunk {k} to a read")));
                        }
                    }
                    if flags & REPLY_FLAG_DONE != 0 {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// Writes `data` at `offset`.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), NbdError> {
        let cookie = self.request(CMD_WRITE, offset, data.len() as u32, data)?;
        self.simple_done(cookie, "write")
    }

    /// Asks the server to make every write so far durable.
    pub fn flush(&mut self) -> Result<(), NbdError> {
        let cookie = self.request(CMD_FLUSH, 0, 0, &[])?;
        self.simple_done(cookie, "flush")
    }

    /// The extents of meta context `context` from `offset`, covering at most `length` bytes
    /// (the server may say less; at least one extent).
    pub fn block_status(&mut self, context: &str, offset: u64, length: u32) -> Result<Vec<Extent>, NbdError> {
        let Some(&(_, id)) = self.contexts.iter().find(|(n, _)| n == context) else {
            return Err(NbdError::Protocol(format!("meta context {context:?} was not negotiated")));
        };
        let cookie = self.request(CMD_BLOCK_STATUS, offset, length, &[])?;
        let mut out = Vec::new();
        loop {
            match self.reply_header(cookie)? {
                Reply::Simple => {
                    return Err(NbdError::Protocol("a simple reply to block status".into()));
                }
                Reply::Chunk { flags, kind, length } => {
                    match kind {
                        REPLY_BLOCK_STATUS => {
                            let payload = self.bytes(length as usize)?;
                            if payload.len() < 4 || (payload.len() - 4) % 8 != 0 {
                                return Err(NbdError::Protocol("a malformed block status".into()));
                            }
                            let ctx = u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]);
                            if ctx == id {
                                for d in payload[4..].chunks_exact(8) {
                                    out.push(Extent {
                                        length: u64::from(u32::from_be_bytes([d[0], d[1], d[2], d[3]])),
                                        flags: u32::from_be_bytes([d[4], d[5], d[6], d[7]]),
                                    });
                                }
                            }
                        }
                        REPLY_NONE => {}
                        k if k & REPLY_ERR_BIT != 0 => return Err(self.chunk_error(length, "block status")),
                        _ => {
                            let _ = self.bytes(length as usize)?;
                        }
                    }
                    if flags & REPLY_FLAG_DONE != 0 {
                        break;
                    }
                }
            }
        }
        if out.is_empty() || out.iter().any(|e| e.length == 0) {
            return Err(NbdError::Protocol(format!("no extents of {context:?} at {offset}")));
        }
        Ok(out)
    }

    /// Says goodbye (the server closes the connection).
    pub fn disconnect(mut self) {
        let _ = self.request(CMD_DISC, 0, 0, &[]);
    }

    fn simple_done(&mut self, cookie: u64, what: &str) -> Result<(), NbdError> {
        loop {
            match self.reply_header(cookie)? {
                Reply::Simple => return Ok(()),
                Reply::Chunk { flags, kind, length } => {
                    if kind & REPLY_ERR_BIT != 0 {
                        return Err(self.chunk_error(length, what));
                    }
                    let _ = self.bytes(length as usize)?;
                    if flags & REPLY_FLAG_DONE != 0 {
                        return Ok(());
                    }
                }
            }
        }
    }

    fn reply_header(&mut self, cookie: u64) -> Result<Reply, NbdError> {
        match self.u32()? {
            SIMPLE_REPLY_MAGIC => {
                let error = self.u32()?;
                let got = self.u64()?;
                if got != cookie {
                    return Err(NbdError::Protocol(format!("reply to request {got}, waiting for {cookie}")));
                }
                if error != 0 {
                    return Err(NbdError::Refused { what: "a request".into(), code: error, message: String::new() });
                }
                Ok(Reply::Simple)
            }
            STRUCTURED_REPLY_MAGIC => {
                let flags = self.u16()?;
                let kind = self.u16()?;
                let got = self.u64()?;
                let length = self.u32()?;
                if got != cookie {
                    return Err(NbdError::Protocol(format!("reply to request {got}, waiting for {cookie}")));
                }
                if length > 64 << 20 {
                    return Err(NbdError::Protocol(format!("a reply chunk of {length} bytes")));
                }
                Ok(Reply::Chunk { flags, kind, length })
            }
            m => Err(NbdError::Protocol(format!("bad reply magic {m:#x}"))),
        }
    }

    fn chunk_error(&mut self, length: u32, what: &str) -> NbdError {
        match self.bytes(length as usize) {
            Ok(p) if p.len() >= 6 => NbdError::Refused {
                what: what.to_string(),
                code: u32::from_be_bytes([p[0], p[1], p[2], p[3]]),
                message: text_suffix(&p[6..]),
            },
            Ok(_) => NbdError::Protocol(format!("a short error reply to {what}")),
            Err(e) => e,
        }
    }

    fn bytes(&mut self, n: usize) -> Result<Vec<u8>, NbdError> {
        let mut b = vec![0; n];
        self.stream.read_exact(&mut b)?;
        Ok(b)
    }
    fn u16(&mut self) -> Result<u16, NbdError> {
        let mut b = [0; 2];
        self.stream.read_exact(&mut b)?;
        Ok(u16::from_be_bytes(b))
    }
    fn u32(&mut self) -> Result<u32, NbdError> {
        let mut b = [0; 4];
        self.stream.read_exact(&mut b)?;
        Ok(u32::from_be_bytes(b))
    }
    fn u64(&mut self) -> Result<u64, NbdError> {
        let mut b = [0; 8];
        self.stream.read_exact(&mut b)?;
        Ok(u64::from_be_bytes(b))
    }
}

enum Reply {
    Simple,
    Chunk { flags: u16, kind: u16, length: u32 },
}

fn put_str(b: &mut Vec<u8>, s: &str) {
    b.extend_from_slice(&(s.len() as u32).to_be_bytes());
    b.extend_from_slice(s.as_bytes());
}

fn text_suffix(p: &[u8]) -> String {
    let t = String::from_utf8_lossy(p);
    let t = t.trim();
    if t.is_empty() {
        String::new()
    } else {
        format!(": {t}")
    }
}

/// Which of `chunks` chunks of `chunk_size` bytes have any extent with `flags & mask != 0`
/// (`want` true) or with none of those flags (`want` false), asked of `context` over the whole
/// export.
pub fn chunks_where(
    c: &mut NbdClient,
    context: &str,
    chunk_size: u64,
    mask: u32,
    want: bool,
) -> Result<Vec<bool>, NbdError> {
    let size = c.size();
    let chunks = size.div_ceil(chunk_size) as usize;
    let mut marked = vec![false; chunks];
    let mut at = 0u64;
    while at < size {
        let ask = (size - at).min(1 << 30) as u32;
        for e in c.block_status(context, at, ask)? {
            let end = (at + e.length).min(size);
            if (e.flags & mask != 0) == want {
                let first = (at / chunk_size) as usize;
                let last = ((end - 1) / chunk_size) as usize;
                for m in &mut marked[first..=last.min(chunks - 1)] {
                    *m = true;
                }
            }
            at = end;
            if at >= size {
                break;
            }
        }
    }
    Ok(marked)
}
