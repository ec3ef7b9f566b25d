//! How the client reaches the daemon: its Unix socket, or HTTPS with a token and a pinned
//! certificate fingerprint (the daemon's certificate is self-signed unless the operator replaced it).

use crate::ClientError;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};

/// A connected byte stream to the daemon.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

#[derive(Clone)]
pub enum Transport {
    Unix(PathBuf),
    Https { host: String, port: u16, token: String, tls: Arc<rustls::ClientConfig> },
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Transport::Unix(p) => write!(f, "unix:{}", p.display()),
            Transport::Https { host, port, .. } => write!(f, "https://{host}:{port}"),
        }
    }
}

/// Normalises a fingerprint: hex digits only, upper case.
pub fn normalize_fingerprint(s: &str) -> String {
    s.chars().filter(|c| c.is_ascii_hexdigit()).collect::<String>().to_ascii_uppercase()
}

/// Accepts exactly the certificate whose SHA-256 is pinned; signatures are still checked.
#[derive(Debug)]
struct PinnedCert {
    sha256: String,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCert {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let got: String = Sha256::digest(end_entity.as_ref()).iter().map(|b| format!("{b:02X}")).collect();
        if got == self.sha256 {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "the daemon's certificate has fingerprint {got}, not the pinned {}: refusing to talk to it",
                self.sha256
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

impl Transport {
    /// HTTPS to `url` (`https://host:port` or `host:port`) with a token and a pinned fingerprint.
    pub fn https(url: &str, token: &str, fingerprint: &str) -> Result<Transport, ClientError> {
        let rest = url.strip_prefix("https://").unwrap_or(url).trim_end_matches('/');
        if rest.contains("://") {
            return Err(ClientError::Http(format!("--url {url:?}: only https:// is supported")));
        }
        let (host, port) = rest
            .rsplit_once(':')
            .and_then(|(h, p)| p.parse::<u16>().ok().map(|p| (h.trim_matches(['[', ']']).to_string(), p)))
            .ok_or_else(|| ClientError::Http(format!("--url {url:?}: write it as https://HOST:PORT")))?;
        let sha256 = normalize_fingerprint(fingerprint);
        if sha256.len() != 64 {
            return Err(ClientError::Http(
                "--fingerprint: must be the SHA-256 the daemon printed (64 hex digits; colons allowed)".into(),
            ));
        }
        if token.trim().is_empty() {
            return Err(ClientError::Http("--token: an API token is required over HTTPS".into()));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| ClientError::Http(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedCert { sha256, provider }))
            .with_no_client_auth();
        Ok(Transport::Https { host, port, token: token.trim().to_string(), tls: Arc::new(tls) })
    }

    pub async fn connect(&self) -> Result<Box<dyn Io>, ClientError> {
        match self {
            Transport::Unix(path) => {
                let s = tokio::net::UnixStream::connect(path)
                    .await
                    .map_err(|source| ClientError::Connect { path: path.clone(), source })?;
                Ok(Box::new(s))
            }
            Transport::Https { host, port, tls, .. } => {
                let tcp = tokio::net::TcpStream::connect((host.as_str(), *port))
                    .await
                    .map_err(|source| ClientError::Connect { path: format!("{host}:{port}").into(), source })?;
                let name = ServerName::try_from(host.clone())
                    .map_err(|e| ClientError::Http(format!("server name {host:?}: {e}")))?;
                let s = tokio_rustls::TlsConnector::from(tls.clone())
                    .connect(name, tcp)
                    .await
                    .map_err(|e| ClientError::Http(format!("TLS with {host}:{port}: {e}")))?;
                Ok(Box::new(s))
            }
        }
    }

    /// The `Authorization` header value, over HTTPS.
    pub fn authorization(&self) -> Option<String> {
        match self {
            Transport::Unix(_) => None,
            Transport::Https { token, .. } => Some(format!("Bearer {token}")),
        }
    }

    pub fn ws_base(&self) -> String {
        match self {
            Transport::Unix(_) => "ws://oxvirtd".into(),
            Transport::Https { host, port, .. } => format!("wss://{host}:{port}"),
        }
    }
}
