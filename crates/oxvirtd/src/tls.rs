//! The daemon's TLS identity: a self-signed certificate made at first start (replaceable by the
//! operator's own: put `server.crt` and `server.key` in `<data-dir>/tls/`), and its fingerprint,
//! which clients pin.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub struct TlsIdentity {
    pub config: Arc<rustls::ServerConfig>,
    /// SHA-256 of the certificate (DER), as colon-separated hex.
    pub fingerprint: String,
    pub cert_path: PathBuf,
}

/// The SHA-256 fingerprint of a DER certificate, as `AB:CD:...`.
pub fn fingerprint(der: &[u8]) -> String {
    Sha256::digest(der).iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":")
}

fn write_private(path: &Path, data: &[u8], mode: u32) -> Result<(), String> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(|e| format!("write {}: {e}", path.display()))?;
    f.write_all(data).map_err(|e| format!("write {}: {e}", path.display()))
}

/// Loads `<dir>/server.crt` and `server.key`, making a self-signed pair first when absent.
pub fn load_or_create(dir: &Path) -> Result<TlsIdentity, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    let cert_path = dir.join("server.crt");
    let key_path = dir.join("server.key");
    if cert_path.exists() != key_path.exists() {
        return Err(format!(
            "{} and {} go together: one is missing (put both back, or remove both to make a new self-signed pair)",
            cert_path.display(),
            key_path.display()
        ));
    }
    if !cert_path.exists() {
        let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default().trim().to_string();
        let mut names = vec!["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()];
        if !hostname.is_empty() {
            names.push(hostname);
        }
        let key = rcgen::KeyPair::generate().map_err(|e| format!("make TLS key: {e}"))?;
        let mut params = rcgen::CertificateParams::new(names).map_err(|e| format!("TLS names: {e}"))?;
        params.distinguished_name.push(rcgen::DnType::CommonName, "oxvirtd");
        params.not_after = rcgen::date_time_ymd(2036, 1, 1);
        let cert = params.self_signed(&key).map_err(|e| format!("make TLS certificate: {e}"))?;
        write_private(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
        write_private(&cert_path, cert.pem().as_bytes(), 0o644)?;
    }
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert_path)
        .map_err(|e| format!("read {}: {e}", cert_path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("read {}: {e}", cert_path.display()))?;
    let first = certs.first().ok_or_else(|| format!("{} holds no certificate", cert_path.display()))?;
    let fingerprint = fingerprint(first.as_ref());
    let key = PrivateKeyDer::from_pem_file(&key_path).map_err(|e| format!("read {}: {e}", key_path.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("TLS certificate and key do not fit: {e}"))?;
    std::fs::write(dir.join("fingerprint"), format!("{fingerprint}\n")).map_err(|e| e.to_string())?;
    Ok(TlsIdentity { config: Arc::new(config), fingerprint, cert_path })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn makes_once_then_reloads_the_same_identity() {
        let dir = tempfile_dir();
        let a = load_or_create(&dir).unwrap();
        let b = load_or_create(&dir).unwrap();
        assert_eq!(a.fingerprint, b.fingerprint);
        assert_eq!(a.fingerprint.len(), 32 * 3 - 1);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join("server.key")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn tempfile_dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("oxvirtd-tls-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }
}
