//! Host paths: files and directories outside oxvirt's pools that a request names (a disk image,
//! a kernel, an import source, an export destination, a pool's directory). Naming one is an
//! administrator's power (checked by the controller); this module decides which paths may be
//! named at all: only under the roots listed in `oxvirtd.toml` (`host_path_roots`), never in the
//! system's own trees or among oxvirt's secrets, links resolved first, and never a device.

use std::os::unix::fs::FileTypeExt;
use std::path::{Component, Path, PathBuf};

/// Trees no request may name, whatever the roots say.
pub const SYSTEM_TREES: &[&str] =
    &["/proc", "/sys", "/dev", "/etc", "/boot", "/run", "/root", "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64"];

/// What oxvirtd keeps in its data directory that no request may name: its secrets (tokens,
/// TLS keys, the store), its sockets and its runtime directories.
pub const DATA_DIR_OWN: &[&str] = &[
    "admin.token",
    "tls",
    "store.db",
    "audit.log",
    "oxvirtd.toml",
    "oxvirtd.sock",
    "oxvirtd.lock",
    "https.addr",
    "run",
    "nbd",
    "networks",
];

/// What a request wants of a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    /// An existing regular file (a disk image, a kernel, an import source).
    File,
    /// A file that does not exist yet, in an existing directory (an export destination).
    NewFile,
    /// A directory, made if missing (a pool's directory).
    Dir,
}

/// A path refused, with the field it came in and the rule it broke.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {rule}")]
pub struct HostPathError {
    pub field: String,
    pub rule: String,
}

fn refuse(field: &str, rule: impl Into<String>) -> HostPathError {
    HostPathError { field: field.to_string(), rule: rule.into() }
}

/// The host-path policy of one daemon.
#[derive(Debug, Clone, Default)]
pub struct HostPaths {
    roots: Vec<PathBuf>,
    data_dir: PathBuf,
    /// Secrets of the daemon's kept outside its data directory (the etcd client key, the
    /// migration certificates...), refused like the data directory's own.
    secrets: Vec<PathBuf>,
}

impl HostPaths {
    /// `roots` as configured (links resolved where they exist); `data_dir` is oxvirtd's own.
    pub fn new(roots: &[PathBuf], data_dir: &Path) -> Self {
        let resolve = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
        HostPaths {
            roots: roots.iter().map(|r| resolve(r)).collect(),
            data_dir: resolve(data_dir),
            secrets: Vec::new(),
        }
    }

    /// The same, refusing `secrets` (files or directories) too.
    pub fn refusing(mut self, secrets: &[PathBuf]) -> Self {
        self.secrets = secrets.iter().map(|p| std::fs::canonicalize(p).unwrap_or_else(|_| p.clone())).collect();
        self
    }

    pub fn roots(&self) -> &[PathBuf] {
        &self.roots
    }

    /// Checks `path` (from request field `field`) and returns it with every link resolved:
    /// the path to use from now on.
    pub fn check(&self, field: &str, path: &str, want: Want) -> Result<PathBuf, HostPathError> {
        let p = Path::new(path);
        if !p.is_absolute() || p.components().any(|c| c == Component::ParentDir) {
            return Err(refuse(field, "must be an absolute path without `..`"));
        }
        if self.roots.is_empty() {
            return Err(refuse(
                field,
                "host paths are turned off on this host: use a volume of a pool (an administrator may list \
                 directories in host_path_roots of oxvirtd.toml)",
            ));
        }
        // By name first (a device need not exist to be refused), then where the links lead.
        let in_system = |q: &Path| SYSTEM_TREES.iter().find(|t| q.starts_with(t)).copied();
        if let Some(tree) = in_system(p) {
            return Err(refuse(field, format!("{} is in {tree}, which is never given to guests", p.display())));
        }
        let resolved = resolve(p, want).map_err(|rule| refuse(field, rule))?;
        if let Some(tree) = in_system(&resolved) {
            return Err(refuse(field, format!("{} is in {tree}, which is never given to guests", resolved.display())));
        }
        if resolved == Path::new("/") {
            return Err(refuse(field, "must not be the root directory"));
        }
        if let Ok(rest) = resolved.strip_prefix(&self.data_dir) {
            let first = rest.components().next().map(|c| c.as_os_str().to_string_lossy().into_owned());
            let own = match first.as_deref() {
                None => true,
                Some(f) => {
                    DATA_DIR_OWN.iter().any(|o| f == *o || f.starts_with(&format!("{o}-")))
                        || f.starts_with("audit.log")
                }
            };
            if own {
                return Err(refuse(
                    field,
                    format!("{} is oxvirt's own (its data directory's secrets and runtime files)", resolved.display()),
                ));
            }
        }
        if let Some(s) = self.secrets.iter().find(|s| resolved.starts_with(s)) {
            return Err(refuse(field, format!("{} is one of oxvirt's secrets ({})", resolved.display(), s.display())));
        }
        if !self.roots.iter().any(|r| resolved.starts_with(r)) {
            let roots: Vec<String> = self.roots.iter().map(|r| r.display().to_string()).collect();
            return Err(refuse(
                field,
                format!("{} is outside the host path roots ({})", resolved.display(), roots.join(", ")),
            ));
        }
        match want {
            Want::File => {
                let meta =
                    std::fs::metadata(&resolved).map_err(|e| refuse(field, format!("{}: {e}", resolved.display())))?;
                let t = meta.file_type();
                if t.is_block_device() || t.is_char_device() {
                    return Err(refuse(
                        field,
                        format!("{} is a device: host devices are never given to guests", resolved.display()),
                    ));
                }
                if !t.is_file() {
                    return Err(refuse(field, format!("{} is not a regular file", resolved.display())));
                }
            }
            Want::Dir => {
                if resolved.exists() && !resolved.is_dir() {
                    return Err(refuse(field, format!("{} exists and is not a directory", resolved.display())));
                }
            }
            Want::NewFile => {}
        }
        Ok(resolved)
    }
}

/// `p` with every link resolved. A file that should not exist yet resolves its directory; a
/// directory that does not exist yet resolves its nearest existing ancestor.
fn resolve(p: &Path, want: Want) -> Result<PathBuf, String> {
    match want {
        Want::File => std::fs::canonicalize(p).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => format!("{} does not exist", p.display()),
            _ => format!("{}: {e}", p.display()),
        }),
        Want::NewFile => {
            if std::fs::symlink_metadata(p).is_ok() {
                return Err(format!("{} exists already", p.display()));
            }
            let (Some(dir), Some(name)) = (p.parent(), p.file_name()) else {
                return Err("must name a file".into());
            };
            let dir =
                std::fs::canonicalize(dir).map_err(|_| format!("its directory {} does not exist", dir.display()))?;
            Ok(dir.join(name))
        }
        Want::Dir => {
            let mut existing = p;
            let mut rest = Vec::new();
            while std::fs::symlink_metadata(existing).is_err() {
                let (Some(parent), Some(name)) = (existing.parent(), existing.file_name()) else { break };
                rest.push(name.to_os_string());
                existing = parent;
            }
            let mut out = std::fs::canonicalize(existing).map_err(|e| format!("{}: {e}", existing.display()))?;
            for name in rest.iter().rev() {
                out.push(name);
            }
            Ok(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (tempfile::TempDir, HostPaths) {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("images");
        let data = t.path().join("data");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::create_dir_all(data.join("tls")).unwrap();
        std::fs::write(data.join("admin.token"), "x").unwrap();
        std::fs::write(data.join("tls/server.key"), "x").unwrap();
        std::fs::write(root.join("disk.raw"), "x").unwrap();
        let hp = HostPaths::new(&[root, t.path().join("data")], &data);
        (t, hp)
    }

    #[test]
    fn files_under_a_root_pass_resolved() {
        let (t, hp) = setup();
        let disk = t.path().join("images/disk.raw");
        let got = hp.check("disks[0].path", disk.to_str().unwrap(), Want::File).unwrap();
        assert_eq!(got, std::fs::canonicalize(&disk).unwrap());
    }

    #[test]
    fn nothing_passes_without_roots() {
        let hp = HostPaths::new(&[], Path::new("/var/lib/oxvirt"));
        let e = hp.check("kernel.kernel", "/srv/vmlinuz", Want::File).unwrap_err();
        assert_eq!(e.field, "kernel.kernel");
        assert!(e.rule.contains("host_path_roots"), "{e}");
    }

    #[test]
    fn system_trees_secrets_outside_and_links_are_refused() {
        let (t, hp) = setup();
        let everything = HostPaths::new(&[PathBuf::from("/")], &t.path().join("data"));
        for p in ["/etc/shadow", "/proc/self/mem", "/sys/kernel/notes", "/boot"] {
            let e = everything.check("f", p, Want::File).unwrap_err();
            assert!(e.rule.contains("never given"), "{p}: {e}");
        }
        let e = everything.check("f", "/dev/null", Want::File).unwrap_err();
        assert!(e.rule.contains("never given"), "{e}");
        for secret in ["data/admin.token", "data/tls/server.key", "data"] {
            let p = t.path().join(secret);
            let e = hp.check("source", p.to_str().unwrap(), Want::File).unwrap_err();
            assert!(e.rule.contains("oxvirt's own") || e.rule.contains("not a regular file"), "{secret}: {e}");
        }
        let key = t.path().join("images/etcd.key");
        std::fs::write(&key, "k").unwrap();
        let guarded = hp.clone().refusing(std::slice::from_ref(&key));
        let e = guarded.check("source", key.to_str().unwrap(), Want::File).unwrap_err();
        assert!(e.rule.contains("secrets"), "{e}");
        let outside = t.path().join("outside.raw");
        std::fs::write(&outside, "x").unwrap();
        let e = hp.check("f", outside.to_str().unwrap(), Want::File).unwrap_err();
        assert!(e.rule.contains("outside the host path roots"), "{e}");
        // A link under a root that points out of it is judged by where it points.
        let link = t.path().join("images/evil.raw");
        std::os::unix::fs::symlink("/etc/passwd", &link).unwrap();
        let e = hp.check("f", link.to_str().unwrap(), Want::File).unwrap_err();
        assert!(e.rule.contains("/etc"), "{e}");
        let e = hp.check("f", "/tmp/../etc/passwd", Want::File).unwrap_err();
        assert!(e.rule.contains(".."), "{e}");
    }

    #[test]
    fn devices_are_refused_even_under_a_root() {
        let hp = HostPaths::new(&[PathBuf::from("/dev")], Path::new("/var/lib/oxvirt"));
        assert!(hp.check("f", "/dev/null", Want::File).is_err());
    }

    #[test]
    fn new_files_and_directories() {
        let (t, hp) = setup();
        let out = t.path().join("images/out.raw");
        assert_eq!(hp.check("destination", out.to_str().unwrap(), Want::NewFile).unwrap(), out);
        let e = hp.check("destination", t.path().join("images/disk.raw").to_str().unwrap(), Want::NewFile).unwrap_err();
        assert!(e.rule.contains("exists"), "{e}");
        let e = hp.check("destination", "/root/.ssh/authorized_keys", Want::NewFile).unwrap_err();
        assert!(e.rule.contains("never given") || e.rule.contains("does not exist"), "{e}");
        let deep = t.path().join("images/a/b");
        assert_eq!(hp.check("path", deep.to_str().unwrap(), Want::Dir).unwrap(), deep);
        let e = hp.check("path", t.path().join("data/run/x").to_str().unwrap(), Want::Dir).unwrap_err();
        assert!(e.rule.contains("oxvirt's own"), "{e}");
        assert!(hp.check("path", t.path().join("data/pool-a").to_str().unwrap(), Want::Dir).is_ok());
    }
}
