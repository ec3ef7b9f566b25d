//! `qemu-img`, the one tool that writes images. Every call gets an argument vector (no shell);
//! work that makes a new file writes a hidden `.partial` file first and renames it when whole, so
//! a failure (a full disk, a bad source, a cancel) leaves nothing half-made.

use crate::paths::{partial_file, rename_no_replace};
use crate::StorageError;
use oxvirt_model::DiskFormat;
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::io::AsyncReadExt;

const QEMU_IMG: &str = "qemu-img";

async fn run(op: &str, args: &[&std::ffi::OsStr]) -> Result<String, StorageError> {
    let out = tokio::process::Command::new(QEMU_IMG)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| StorageError::io(format!("run {QEMU_IMG}"), e))?;
    if !out.status.success() {
        let message = String::from_utf8_lossy(&out.stderr).trim().to_string();
        return Err(StorageError::QemuImg { op: op.into(), message });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn os(s: &str) -> &std::ffi::OsStr {
    std::ffi::OsStr::new(s)
}

/// Creates an image; with `backing`, a thin qcow2 on top of it (a linked clone).
pub async fn create(
    path: &Path,
    format: DiskFormat,
    size: Option<u64>,
    backing: Option<(&Path, DiskFormat)>,
) -> Result<(), StorageError> {
    if path.exists() {
        return Err(StorageError::Unsafe(format!("{} exists already: refusing to overwrite it", path.display())));
    }
    let tmp = partial_file(path);
    let _ = std::fs::remove_file(&tmp);
    let size_s = size.map(|s| s.to_string());
    let mut args: Vec<&std::ffi::OsStr> = vec![os("create"), os("-q"), os("-f"), os(format.as_str())];
    if let Some((b, bf)) = backing {
        args.extend([os("-b"), b.as_os_str(), os("-F"), os(bf.as_str())]);
    }
    args.push(tmp.as_os_str());
    if let Some(s) = &size_s {
        args.push(os(s));
    }
    let r = run("create", &args).await;
    finish(r, &tmp, path)
}

fn finish(r: Result<String, StorageError>, tmp: &Path, path: &Path) -> Result<(), StorageError> {
    match r {
        Ok(_) => rename_no_replace(tmp, path).map_err(|e| {
            let _ = std::fs::remove_file(tmp);
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                StorageError::Unsafe(format!("{} appeared meanwhile: refusing to overwrite it", path.display()))
            } else {
                StorageError::io(format!("rename {} to {}", tmp.display(), path.display()), e)
            }
        }),
        Err(e) => {
            let _ = std::fs::remove_file(tmp);
            Err(e)
        }
    }
}

/// What `qemu-img info` says of an image.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
pub struct ImageInfo {
    #[serde(rename = "virtual-size")]
    pub virtual_size: u64,
    #[serde(rename = "actual-size", default)]
    pub actual_size: u64,
    pub format: String,
    #[serde(rename = "backing-filename", default)]
    pub backing_filename: Option<String>,
    #[serde(default)]
    pub snapshots: Vec<SnapshotInfo>,
    /// Format details: a qcow2's external data file, a VMDK's extents.
    #[serde(rename = "format-specific", default)]
    pub format_specific: Option<serde_json::Value>,
}

impl ImageInfo {
    /// Files other than `path` itself that reading this image would open: its backing file, a
    /// qcow2's external data file, a VMDK's extents elsewhere. An image from outside must have
    /// none (each could name any file on the host).
    pub fn other_files(&self, path: &Path) -> Vec<String> {
        let mut files: Vec<String> = self.backing_filename.iter().cloned().collect();
        let data = self.format_specific.as_ref().map(|f| &f["data"]);
        if let Some(f) = data.and_then(|d| d["data-file"].as_str()) {
            files.push(f.to_string());
        }
        for e in data.and_then(|d| d["extents"].as_array()).into_iter().flatten() {
            if let Some(f) = e["filename"].as_str().filter(|f| Path::new(f) != path) {
                files.push(f.to_string());
            }
        }
        files
    }
}

#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
pub struct SnapshotInfo {
    pub name: String,
}

/// Reads an image's header (also while a VM has it open: `-U`).
pub async fn info(path: &Path, format: Option<DiskFormat>) -> Result<ImageInfo, StorageError> {
    let mut args = vec![os("info"), os("--output=json"), os("-U")];
    if let Some(f) = format {
        args.extend([os("-f"), os(f.as_str())]);
    }
    args.push(path.as_os_str());
    let out = run("info", &args).await?;
    serde_json::from_str(&out)
        .map_err(|e| StorageError::QemuImg { op: "info".into(), message: format!("unreadable output: {e}") })
}

/// A qcow2 image's persistent dirty bitmap, as `qemu-img info` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageBitmap {
    pub name: String,
    /// Recording writes when the image is opened (`auto`).
    pub enabled: bool,
    /// Marked in use by a program that never closed the image (a crash): not to be trusted.
    pub in_use: bool,
}

impl ImageInfo {
    /// The image's persistent dirty bitmaps (a qcow2's; none for other formats).
    pub fn bitmaps(&self) -> Vec<ImageBitmap> {
        let list = self.format_specific.as_ref().and_then(|f| f["data"]["bitmaps"].as_array().cloned());
        list.unwrap_or_default()
            .iter()
            .map(|b| {
                let flags: Vec<&str> = b["flags"].as_array().into_iter().flatten().filter_map(|f| f.as_str()).collect();
                ImageBitmap {
                    name: b["name"].as_str().unwrap_or_default().to_string(),
                    enabled: flags.contains(&"auto"),
                    in_use: flags.contains(&"in-use"),
                }
            })
            .collect()
    }
}

/// A change to a qcow2 image's bitmap `name` (no program may have the image open).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BitmapOp<'a> {
    /// A new bitmap, recording (or not) from the next open, one bit per `granularity` bytes.
    Add {
        granularity: u64,
        disabled: bool,
    },
    /// The bitmap takes the bits of bitmaps `sources` of the same image too.
    Merge {
        sources: &'a [String],
    },
    Remove,
}

/// Applies `op` to bitmap `name` of the qcow2 image `path`.
pub async fn bitmap(path: &Path, name: &str, op: BitmapOp<'_>) -> Result<(), StorageError> {
    let g;
    let mut args = vec![os("bitmap"), os("-f"), os("qcow2")];
    match &op {
        BitmapOp::Add { granularity, disabled } => {
            g = granularity.to_string();
            args.extend([os("--add"), os("-g"), os(&g)]);
            if *disabled {
                args.push(os("--disable"));
            }
        }
        BitmapOp::Merge { sources } => {
            for s in sources.iter() {
                args.extend([os("--merge"), os(s)]);
            }
        }
        BitmapOp::Remove => args.push(os("--remove")),
    }
    args.extend([path.as_os_str(), os(name)]);
    run("bitmap", &args).await.map(|_| ())
}

/// Grows an image (the VM must not have it open; a running VM is resized through QMP).
pub async fn resize(path: &Path, format: DiskFormat, size: u64) -> Result<(), StorageError> {
    let s = size.to_string();
    run("resize", &[os("resize"), os("-q"), os("-f"), os(format.as_str()), path.as_os_str(), os(&s)]).await.map(|_| ())
}

/// Copies `src` (any format qemu-img reads: qcow2, raw, vmdk...) to a new image `dst`, reporting
/// progress in percent. Stops when `cancel` is set; nothing is left at `dst` unless it succeeded.
pub async fn convert(
    src: &Path,
    src_format: Option<&str>,
    dst: &Path,
    dst_format: DiskFormat,
    mut progress: impl FnMut(u8),
    cancel: &AtomicBool,
) -> Result<(), StorageError> {
    if dst.exists() {
        return Err(StorageError::Unsafe(format!("{} exists already: refusing to overwrite it", dst.display())));
    }
    let tmp = partial_file(dst);
    let _ = std::fs::remove_file(&tmp);
    let mut cmd = tokio::process::Command::new(QEMU_IMG);
    cmd.arg("convert").arg("-p").arg("-O").arg(dst_format.as_str());
    if let Some(f) = src_format {
        cmd.arg("-f").arg(f);
    }
    cmd.arg(src).arg(&tmp).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|e| StorageError::io(format!("run {QEMU_IMG}"), e))?;
    let mut stdout = child.stdout.take().ok_or_else(|| StorageError::Unsafe("no stdout".into()))?;
    let mut stderr = child.stderr.take().ok_or_else(|| StorageError::Unsafe("no stderr".into()))?;
    let err_reader = tokio::spawn(async move {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s).await;
        s
    });
    let mut buf = [0u8; 256];
    let mut line = String::new();
    let mut last = 0u8;
    loop {
        if cancel.load(Ordering::SeqCst) {
            let _ = child.kill().await;
            let _ = std::fs::remove_file(&tmp);
            return Err(StorageError::Cancelled);
        }
        let n = match tokio::time::timeout(std::time::Duration::from_millis(200), stdout.read(&mut buf)).await {
            Ok(Ok(0)) => break,
            Ok(Ok(n)) => n,
            Ok(Err(_)) => break,
            Err(_) => continue,
        };
        for c in String::from_utf8_lossy(&buf[..n]).chars() {
            if c == '\r' || c == '\n' {
                if let Some(p) = parse_progress(&line) {
                    if p != last {
                        last = p;
                        progress(p);
                    }
                }
                line.clear();
            } else {
                line.push(c);
            }
        }
    }
    let status = child.wait().await.map_err(|e| StorageError::io("wait for qemu-img", e))?;
    let message = err_reader.await.unwrap_or_default();
    let r = if status.success() {
        Ok(String::new())
    } else {
        Err(StorageError::QemuImg { op: "convert".into(), message: message.trim().to_string() })
    };
    finish(r, &tmp, dst)
}

/// `    (45.12/100%)` → 45.
fn parse_progress(line: &str) -> Option<u8> {
    let inner = line.trim().strip_prefix('(')?.split('/').next()?;
    inner.trim().parse::<f64>().ok().map(|p| p.clamp(0.0, 100.0) as u8)
}

/// Internal qcow2 snapshots of an image no VM has open.
pub async fn snapshot(op: SnapshotOp, path: &Path, name: &str) -> Result<(), StorageError> {
    let flag = match op {
        SnapshotOp::Create => "-c",
        SnapshotOp::Apply => "-a",
        SnapshotOp::Delete => "-d",
    };
    run("snapshot", &[os("snapshot"), os("-q"), os(flag), os(name), path.as_os_str()]).await.map(|_| ())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotOp {
    Create,
    Apply,
    Delete,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_lines() {
        assert_eq!(parse_progress("    (45.12/100%)"), Some(45));
        assert_eq!(parse_progress("(100.00/100%)"), Some(100));
        assert_eq!(parse_progress("garbage"), None);
    }

    #[tokio::test]
    async fn create_info_resize_snapshot_convert() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base.qcow2");
        create(&base, DiskFormat::Qcow2, Some(64 << 20), None).await.unwrap();
        assert!(create(&base, DiskFormat::Qcow2, Some(1 << 20), None).await.is_err(), "never overwrites");
        let i = info(&base, Some(DiskFormat::Qcow2)).await.unwrap();
        assert_eq!((i.virtual_size, i.format.as_str()), (64 << 20, "qcow2"));
        resize(&base, DiskFormat::Qcow2, 128 << 20).await.unwrap();
        assert_eq!(info(&base, None).await.unwrap().virtual_size, 128 << 20);
        snapshot(SnapshotOp::Create, &base, "s1").await.unwrap();
        assert_eq!(info(&base, None).await.unwrap().snapshots[0].name, "s1");
        snapshot(SnapshotOp::Delete, &base, "s1").await.unwrap();
        let clone = dir.path().join("clone.qcow2");
        create(&clone, DiskFormat::Qcow2, None, Some((&base, DiskFormat::Qcow2))).await.unwrap();
        let ci = info(&clone, None).await.unwrap();
        assert_eq!(ci.virtual_size, 128 << 20);
        assert!(ci.backing_filename.unwrap().ends_with("base.qcow2"));
        let raw = dir.path().join("copy.raw");
        let mut seen = Vec::new();
        convert(&clone, Some("qcow2"), &raw, DiskFormat::Raw, |p| seen.push(p), &AtomicBool::new(false)).await.unwrap();
        assert_eq!(std::fs::metadata(&raw).unwrap().len(), 128 << 20);
        assert_eq!(seen.last(), Some(&100));
        let leftovers = std::fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().ends_with(".partial"))
            .count();
        assert_eq!(leftovers, 0);
    }

    #[tokio::test]
    async fn failed_convert_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("not-an-image.vmdk");
        std::fs::write(&src, b"garbage").unwrap();
        let dst = dir.path().join("out.qcow2");
        let err =
            convert(&src, Some("vmdk"), &dst, DiskFormat::Qcow2, |_| {}, &AtomicBool::new(false)).await.unwrap_err();
        assert!(matches!(err, StorageError::QemuImg { .. }), "{err}");
        assert!(!dst.exists());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "only the source is left");
    }
}
