//! Client-side encryption of a repository: the hosts hold the key, the repository's storage
//! sees only ciphertext. From one 256-bit key, two are derived (HMAC-SHA256 of a label): one
//! names chunks (HMAC-SHA256 of the plaintext, so names say nothing of the content, and equal
//! chunks still share one name: deduplication holds within the repository), one seals them
//! (AES-256-GCM, a random 96-bit nonce per chunk, stored first). A wrong key is refused by its
//! fingerprint before anything is read; a chunk changed on disk fails its authentication tag.

use ring::{aead, hmac, rand::SecureRandom};

/// The bytes of a key.
pub const KEY_BYTES: usize = 32;
const NONCE_BYTES: usize = 12;

#[derive(Debug, thiserror::Error)]
pub enum CryptError {
    #[error("a key is {KEY_BYTES} bytes written as {} hex digits", KEY_BYTES * 2)]
    BadKey,
    #[error("the system's random source failed")]
    Random,
    #[error("it does not decrypt with this key (changed on disk, or another key's)")]
    Unsealed,
}

/// A repository's key, with what is derived from it.
pub struct RepoKey {
    raw: [u8; KEY_BYTES],
    names: hmac::Key,
    seal: aead::LessSafeKey,
}

impl std::fmt::Debug for RepoKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RepoKey({})", self.fingerprint())
    }
}

fn derive(raw: &[u8; KEY_BYTES], label: &str) -> [u8; 32] {
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, raw), label.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(tag.as_ref());
    out
}

impl RepoKey {
    /// A new random key.
    pub fn generate() -> Result<RepoKey, CryptError> {
        let mut raw = [0u8; KEY_BYTES];
        ring::rand::SystemRandom::new().fill(&mut raw).map_err(|_| CryptError::Random)?;
        Ok(RepoKey::from_bytes(raw))
    }

    fn from_bytes(raw: [u8; KEY_BYTES]) -> RepoKey {
        let names = hmac::Key::new(hmac::HMAC_SHA256, &derive(&raw, "oxvirt-backup chunk names"));
        let unbound = aead::UnboundKey::new(&aead::AES_256_GCM, &derive(&raw, "oxvirt-backup sealing"))
            .unwrap_or_else(|_| unreachable!("AES-256-GCM takes a 32-byte key"));
        RepoKey { raw, names, seal: aead::LessSafeKey::new(unbound) }
    }

    /// The key from its hex form (surrounding whitespace ignored).
    pub fn from_hex(text: &str) -> Result<RepoKey, CryptError> {
        let text = text.trim();
        if text.len() != KEY_BYTES * 2 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(CryptError::BadKey);
        }
        let mut raw = [0u8; KEY_BYTES];
        for (i, b) in raw.iter_mut().enumerate() {
            *b = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).map_err(|_| CryptError::BadKey)?;
        }
        Ok(RepoKey::from_bytes(raw))
    }

    pub fn to_hex(&self) -> String {
        hex(&self.raw)
    }

    /// What names the key without revealing it (kept in the repository's header).
    pub fn fingerprint(&self) -> String {
        hex(&derive(&self.raw, "oxvirt-backup fingerprint")[..8])
    }

    /// A chunk's name: HMAC-SHA256 of its plaintext, in hex.
    pub fn name(&self, data: &[u8]) -> String {
        hex(hmac::sign(&self.names, data).as_ref())
    }

    /// `plain` sealed: nonce, ciphertext, tag.
    pub fn seal(&self, plain: &[u8]) -> Result<Vec<u8>, CryptError> {
        let mut nonce = [0u8; NONCE_BYTES];
        ring::rand::SystemRandom::new().fill(&mut nonce).map_err(|_| CryptError::Random)?;
        let mut out = Vec::with_capacity(NONCE_BYTES + plain.len() + aead::AES_256_GCM.tag_len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plain);
        let tag = self
            .seal
            .seal_in_place_separate_tag(
                aead::Nonce::assume_unique_for_key(nonce),
                aead::Aad::empty(),
                &mut out[NONCE_BYTES..],
            )
            .map_err(|_| CryptError::Unsealed)?;
        out.extend_from_slice(tag.as_ref());
        Ok(out)
    }

    /// What `seal` made, opened and authenticated.
    pub fn open(&self, sealed: &[u8]) -> Result<Vec<u8>, CryptError> {
        if sealed.len() < NONCE_BYTES + aead::AES_256_GCM.tag_len() {
            return Err(CryptError::Unsealed);
        }
        let (nonce, body) = sealed.split_at(NONCE_BYTES);
        let nonce = aead::Nonce::try_assume_unique_for_key(nonce).map_err(|_| CryptError::Unsealed)?;
        let mut buf = body.to_vec();
        let plain = self.seal.open_in_place(nonce, aead::Aad::empty(), &mut buf).map_err(|_| CryptError::Unsealed)?;
        let n = plain.len();
        buf.truncate(n);
        Ok(buf)
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_data_opens_only_with_its_key_and_unchanged() {
        let k = RepoKey::generate().unwrap();
        let again = RepoKey::from_hex(&format!("  {}\n", k.to_hex())).unwrap();
        assert_eq!(k.fingerprint(), again.fingerprint());
        let sealed = k.seal(b"the guest's secret data").unwrap();
        assert!(!sealed.windows(6).any(|w| w == b"secret"), "no plaintext in what is stored");
        assert_ne!(sealed, k.seal(b"the guest's secret data").unwrap(), "a fresh nonce each time");
        assert_eq!(again.open(&sealed).unwrap(), b"the guest's secret data");
        let other = RepoKey::generate().unwrap();
        assert_ne!(other.fingerprint(), k.fingerprint());
        assert!(matches!(other.open(&sealed), Err(CryptError::Unsealed)));
        let mut flipped = sealed.clone();
        flipped[20] ^= 1;
        assert!(matches!(k.open(&flipped), Err(CryptError::Unsealed)));
        assert!(matches!(k.open(&sealed[..10]), Err(CryptError::Unsealed)));
        // Names: equal data, equal names; none is the plain SHA-256; another key, other names.
        assert_eq!(k.name(b"x"), again.name(b"x"));
        assert_ne!(k.name(b"x"), crate::repo::digest_of(b"x"));
        assert_ne!(k.name(b"x"), other.name(b"x"));
        assert_eq!(k.name(b"x").len(), 64);
        for bad in ["", "zz", &"0".repeat(63), &"g".repeat(64)] {
            assert!(matches!(RepoKey::from_hex(bad), Err(CryptError::BadKey)), "{bad}");
        }
    }
}
