//! A test cluster's certificates: a CA of its own and one certificate for `127.0.0.1` /
//! `localhost` usable as server and client (etcd members and peers, oxvirtd's etcd client,
//! QEMU's migration ends). Made with rcgen (no openssl); files in a temporary directory.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};
use std::path::{Path, PathBuf};

pub struct TestPki {
    pub dir: tempfile::TempDir,
}

impl TestPki {
    /// A fresh CA (named `tag`) and its node certificate. Files: `ca.pem`, `node.pem`,
    /// `node-key.pem`, and `migration/` in the layout QEMU's `tls-creds-x509` reads.
    pub fn new(tag: &str) -> TestPki {
        let dir = tempfile::Builder::new().prefix("oxv-pki").tempdir_in("/tmp").expect("tempdir");
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        ca.distinguished_name.push(DnType::CommonName, format!("oxvirt test CA {tag}"));
        let ca = ca.self_signed(&ca_key).expect("CA");

        let key = KeyPair::generate().expect("node key");
        let mut node = CertificateParams::new(vec!["localhost".to_string()]).expect("node params");
        node.subject_alt_names.push(SanType::IpAddress(std::net::IpAddr::from([127, 0, 0, 1])));
        node.distinguished_name.push(DnType::CommonName, format!("oxvirt test node {tag}"));
        node.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let node = node.signed_by(&key, &ca, &ca_key).expect("node certificate");

        let write = |p: PathBuf, text: &str| std::fs::write(p, text).expect("write PEM");
        write(dir.path().join("ca.pem"), &ca.pem());
        write(dir.path().join("node.pem"), &node.pem());
        write(dir.path().join("node-key.pem"), &key.serialize_pem());
        let mig = dir.path().join("migration");
        std::fs::create_dir(&mig).expect("mkdir");
        write(mig.join("ca-cert.pem"), &ca.pem());
        for end in ["server", "client"] {
            write(mig.join(format!("{end}-cert.pem")), &node.pem());
            write(mig.join(format!("{end}-key.pem")), &key.serialize_pem());
        }
        TestPki { dir }
    }

    pub fn ca(&self) -> PathBuf {
        self.path().join("ca.pem")
    }
    pub fn cert(&self) -> PathBuf {
        self.path().join("node.pem")
    }
    pub fn key(&self) -> PathBuf {
        self.path().join("node-key.pem")
    }
    pub fn migration_dir(&self) -> PathBuf {
        self.path().join("migration")
    }
    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The `[store]` lines of oxvirtd.toml for TLS to etcd with this certificate.
    pub fn etcd_settings(&self) -> String {
        format!(
            "etcd_ca = \"{}\"\netcd_cert = \"{}\"\netcd_key = \"{}\"\n",
            self.ca().display(),
            self.cert().display(),
            self.key().display()
        )
    }

    /// The same, for the store crate's client.
    pub fn etcd_tls(&self) -> oxvirt_store::EtcdTls {
        let read = |p: PathBuf| std::fs::read(p).expect("read PEM");
        oxvirt_store::EtcdTls { ca: read(self.ca()), cert: read(self.cert()), key: read(self.key()) }
    }

    /// `etcdctl`'s TLS options with this certificate.
    pub fn etcdctl_args(&self) -> Vec<String> {
        vec![
            format!("--cacert={}", self.ca().display()),
            format!("--cert={}", self.cert().display()),
            format!("--key={}", self.key().display()),
        ]
    }
}
