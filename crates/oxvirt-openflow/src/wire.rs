//! Big-endian reading and writing. A read past the end is a [`DecodeError`] naming what was
//! being read; nothing here panics on what a switch sends.

/// Why bytes from a switch are not an OpenFlow 1.3 message oxvirt can read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("{what}: needs {needed} bytes, {available} left")]
    Truncated { what: &'static str, needed: usize, available: usize },
    #[error("{what}: length {length} is invalid ({rule})")]
    Length { what: &'static str, length: usize, rule: &'static str },
    #[error("OpenFlow version {0:#04x}: only 1.3 (0x04) is spoken")]
    Version(u8),
    #[error("{what}: value {value:#x} is invalid ({rule})")]
    Value { what: &'static str, value: u64, rule: &'static str },
}

pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub(crate) fn bytes(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], DecodeError> {
        if self.remaining() < n {
            return Err(DecodeError::Truncated { what, needed: n, available: self.remaining() });
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    pub(crate) fn skip(&mut self, n: usize, what: &'static str) -> Result<(), DecodeError> {
        self.bytes(n, what).map(|_| ())
    }

    pub(crate) fn rest(&mut self) -> &'a [u8] {
        let out = &self.buf[self.pos..];
        self.pos = self.buf.len();
        out
    }

    pub(crate) fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        Ok(self.bytes(1, what)?[0])
    }

    pub(crate) fn u16(&mut self, what: &'static str) -> Result<u16, DecodeError> {
        let b = self.bytes(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    pub(crate) fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        let b = self.bytes(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub(crate) fn u64(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        let b = self.bytes(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }

    /// A length-prefixed part: `len` bytes (counted from `header` bytes already read) as a
    /// reader of their own, checked to be at least `header` and to fit.
    pub(crate) fn sub(&mut self, len: usize, header: usize, what: &'static str) -> Result<Reader<'a>, DecodeError> {
        if len < header {
            return Err(DecodeError::Length { what, length: len, rule: "shorter than its own header" });
        }
        Ok(Reader::new(self.bytes(len - header, what)?))
    }
}

/// The head of a type-length-value part padded to 8 bytes (an action, an instruction): its
/// type, its whole length (checked: a multiple of 8 that holds its 4-byte head and fits) and a
/// reader of its body.
pub(crate) fn tlv8<'a>(r: &mut Reader<'a>, what: &'static str) -> Result<(u16, usize, Reader<'a>), DecodeError> {
    let kind = r.u16(what)?;
    let len = r.u16(what)? as usize;
    if !len.is_multiple_of(8) {
        return Err(DecodeError::Length { what, length: len, rule: "a multiple of 8" });
    }
    Ok((kind, len, r.sub(len, 4, what)?))
}

/// A part whose type fixes its length.
pub(crate) fn fixed_len(len: usize, want: usize, what: &'static str) -> Result<(), DecodeError> {
    if len == want {
        Ok(())
    } else {
        Err(DecodeError::Length { what, length: len, rule: "fixed by its type" })
    }
}

/// Every item of a list that fills `r`, each read by `item`.
pub(crate) fn read_all<T>(
    mut r: Reader,
    item: impl Fn(&mut Reader) -> Result<T, DecodeError>,
) -> Result<Vec<T>, DecodeError> {
    let mut out = Vec::new();
    while r.remaining() > 0 {
        out.push(item(&mut r)?);
    }
    Ok(out)
}

/// Bytes being built; lengths are patched once a part's end is known.
#[derive(Default)]
pub(crate) struct Writer {
    pub(crate) buf: Vec<u8>,
}

impl Writer {
    pub(crate) fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }
    pub(crate) fn u16(&mut self, v: u16) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }
    pub(crate) fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }
    pub(crate) fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }
    pub(crate) fn bytes(&mut self, b: &[u8]) {
        self.buf.extend_from_slice(b);
    }
    pub(crate) fn zeros(&mut self, n: usize) {
        self.buf.resize(self.buf.len() + n, 0);
    }
    pub(crate) fn len(&self) -> usize {
        self.buf.len()
    }
    /// Writes a 16-bit length at `at` (where a part began its length field).
    pub(crate) fn patch_u16(&mut self, at: usize, v: u16) {
        self.buf[at..at + 2].copy_from_slice(&v.to_be_bytes());
    }
    /// Zeros up to the next multiple of 8 from `start`.
    pub(crate) fn pad8_from(&mut self, start: usize) {
        let n = (8 - (self.buf.len() - start) % 8) % 8;
        self.zeros(n);
    }
}

/// `n` rounded up to a multiple of 8.
pub(crate) fn pad8(n: usize) -> usize {
    n.div_ceil(8) * 8
}
