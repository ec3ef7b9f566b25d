//! The cluster's transport settings (`[store]`): TLS with client certificates to etcd, and TLS
//! for live migration. Their shape is checked with the rest of the config (`config.rs`), their
//! files here at start (each error names the setting).

use crate::config::StoreConfig;
use oxvirt_store::EtcdTls;
use std::path::{Path, PathBuf};

/// The files QEMU's `tls-creds-x509` objects read from a migration TLS directory.
pub const MIGRATION_TLS_FILES: [&str; 5] =
    ["ca-cert.pem", "server-cert.pem", "server-key.pem", "client-cert.pem", "client-key.pem"];

#[derive(Debug, thiserror::Error)]
pub enum TlsSettingError {
    #[error("store.{field}: {path}: {source}")]
    Read { field: &'static str, path: PathBuf, source: std::io::Error },
    #[error("store.{field}: {path} is not a PEM file (no \"-----BEGIN\" line)")]
    NotPem { field: &'static str, path: PathBuf },
}

fn read_pem(field: &'static str, path: &Path) -> Result<Vec<u8>, TlsSettingError> {
    let bytes = std::fs::read(path).map_err(|source| TlsSettingError::Read { field, path: path.into(), source })?;
    if !bytes.windows(10).any(|w| w == b"-----BEGIN") {
        return Err(TlsSettingError::NotPem { field, path: path.into() });
    }
    Ok(bytes)
}

/// The etcd TLS files, read (`None`: plaintext, or no etcd).
pub fn load_etcd(s: &StoreConfig) -> Result<Option<EtcdTls>, TlsSettingError> {
    let (Some(ca), Some(cert), Some(key)) = (&s.etcd_ca, &s.etcd_cert, &s.etcd_key) else {
        return Ok(None);
    };
    if s.backend != "etcd" {
        return Ok(None);
    }
    Ok(Some(EtcdTls {
        ca: read_pem("etcd_ca", ca)?,
        cert: read_pem("etcd_cert", cert)?,
        key: read_pem("etcd_key", key)?,
    }))
}

/// The migration TLS directory, once each of its files reads as PEM (QEMU reads them as it
/// starts, so a bad one would fail every VM's start instead); `None` without etcd (no
/// migration).
pub fn check_migration_dir(s: &StoreConfig) -> Result<Option<PathBuf>, TlsSettingError> {
    let Some(dir) = s.migration_tls_dir.as_ref().filter(|_| s.backend == "etcd") else { return Ok(None) };
    for f in MIGRATION_TLS_FILES {
        read_pem("migration_tls_dir", &dir.join(f))?;
    }
    // QEMU's option syntax and the controller want an absolute path.
    let abs = std::fs::canonicalize(dir).map_err(|source| TlsSettingError::Read {
        field: "migration_tls_dir",
        path: dir.clone(),
        source,
    })?;
    Ok(Some(abs))
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    const ETCD: &str = "[store]\nbackend = \"etcd\"\n";

    #[test]
    fn refuses_half_or_mismatched_tls_settings_naming_them() {
        let tls = "etcd_ca = \"/c\"\netcd_cert = \"/r\"\netcd_key = \"/k\"\n";
        let ok = Config::parse(&format!("{ETCD}etcd_endpoints = [\"https://e:2379\"]\n{tls}")).unwrap();
        assert!(ok.store.etcd_key.is_some());
        let half = Config::parse(&format!("{ETCD}etcd_endpoints = [\"https://e:2379\"]\netcd_ca = \"/c\"\n"));
        assert!(half.unwrap_err().starts_with("store.etcd_cert: etcd_ca, etcd_cert and etcd_key go together"));
        let no_tls = Config::parse(&format!("{ETCD}etcd_endpoints = [\"https://e:2379\"]\n"));
        assert!(no_tls.unwrap_err().starts_with("store.etcd_endpoints: \"https://e:2379\" is https://"));
        let plain = Config::parse(&format!("{ETCD}etcd_endpoints = [\"http://e:2379\"]\n{tls}"));
        assert!(plain.unwrap_err().starts_with("store.etcd_ca: TLS to etcd needs https://"));
        // On a single host they wait for --join, which checks them.
        let single = Config::parse(&format!("[store]\n{tls}migration_tls_dir = \"/m\"\n")).unwrap();
        assert!(super::load_etcd(&single.store).unwrap().is_none());
        assert!(super::check_migration_dir(&single.store).unwrap().is_none());
        assert!(single.clone().join("https://e:2379", None).is_ok());
        let err = single.join("http://e:2379", None).unwrap_err();
        assert!(err.starts_with("--join: store.etcd_ca: TLS to etcd"), "{err}");
        assert!(Config::default()
            .join("https://e:2379", None)
            .unwrap_err()
            .starts_with("--join: store.etcd_endpoints"));
    }

    #[test]
    fn reads_the_files_naming_the_setting() {
        let dir = tempfile::tempdir().unwrap();
        let pem = b"-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----\n";
        for f in super::MIGRATION_TLS_FILES {
            std::fs::write(dir.path().join(f), pem).unwrap();
        }
        std::fs::write(dir.path().join("junk"), b"junk").unwrap();
        let text = |ca: &str| {
            format!(
                "{ETCD}etcd_endpoints = [\"https://e:2379\"]\netcd_ca = \"{}\"\netcd_cert = \"{}\"\netcd_key = \"{}\"\nmigration_tls_dir = \"{}\"\n",
                dir.path().join(ca).display(),
                dir.path().join("client-cert.pem").display(),
                dir.path().join("nothing.pem").display(),
                dir.path().display(),
            )
        };
        let c = Config::parse(&text("ca-cert.pem")).unwrap();
        let err = super::load_etcd(&c.store).unwrap_err().to_string();
        assert!(err.starts_with("store.etcd_key: ") && err.contains("nothing.pem"), "{err}");
        let c = Config::parse(&text("junk")).unwrap();
        assert!(super::load_etcd(&c.store).unwrap_err().to_string().starts_with("store.etcd_ca: "));
        assert!(super::check_migration_dir(&c.store).unwrap().is_some());
        std::fs::remove_file(dir.path().join("server-key.pem")).unwrap();
        let err = super::check_migration_dir(&c.store).unwrap_err().to_string();
        assert!(err.starts_with("store.migration_tls_dir: ") && err.contains("server-key.pem"), "{err}");
    }
}
