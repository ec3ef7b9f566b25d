//! NBD multipath, the way dm-multipath serves a block device over several links.
//!
//! QEMU's NBD client knows one server address. It connects to this proxy, which relays the
//! connection to the first path (an NBD server socket) that answers. When that path fails, the
//! proxy drops QEMU's connection; QEMU's NBD client reconnects (it holds the guest's requests
//! meanwhile, for its `reconnect-delay`) and the proxy relays the new connection through the next
//! path that answers. The guest sees a short stall, not an I/O error.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::{UnixListener, UnixStream};

/// How long one path may take to accept before the next is tried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// A path that failed is not used again for this long while another works (dm-multipath's
/// failback delay): a flapping path does not bounce the disk back and forth.
const FAILBACK: Duration = Duration::from_secs(30);

/// The proxy's state: the paths, the one in use, and when each failed last.
pub struct Multipath {
    paths: Vec<PathBuf>,
    current: AtomicUsize,
    /// The path of the last connection made (usize::MAX before the first).
    last_used: AtomicUsize,
    failed_at: Mutex<Vec<Option<Instant>>>,
}

impl Multipath {
    pub fn new(paths: Vec<PathBuf>) -> Arc<Self> {
        let n = paths.len();
        Arc::new(Multipath {
            paths,
            current: AtomicUsize::new(0),
            last_used: AtomicUsize::new(usize::MAX),
            failed_at: Mutex::new(vec![None; n]),
        })
    }

    fn recently_failed(&self, i: usize) -> bool {
        let f = self.failed_at.lock().unwrap_or_else(|p| p.into_inner());
        f[i].is_some_and(|t| t.elapsed() < FAILBACK)
    }

    fn mark_failed(&self, i: usize) {
        let mut f = self.failed_at.lock().unwrap_or_else(|p| p.into_inner());
        f[i] = Some(Instant::now());
        eprintln!("oxvirt-mpath: path {i} ({}) failed", self.paths[i].display());
    }

    /// The path in use now (index).
    pub fn current(&self) -> usize {
        self.current.load(Ordering::SeqCst)
    }

    /// Connects through the path in use, else the next ones in turn; paths that failed lately
    /// are tried last.
    pub async fn connect(&self) -> Option<(usize, UnixStream)> {
        let n = self.paths.len();
        let first = self.current();
        let order: Vec<usize> = (0..n).map(|k| (first + k) % n).collect();
        let (fresh, stale): (Vec<usize>, Vec<usize>) = order.into_iter().partition(|i| !self.recently_failed(*i));
        for i in fresh.into_iter().chain(stale) {
            match tokio::time::timeout(CONNECT_TIMEOUT, UnixStream::connect(&self.paths[i])).await {
                Ok(Ok(s)) => {
                    if self.last_used.swap(i, Ordering::SeqCst) != i {
                        eprintln!("oxvirt-mpath: using path {i} ({})", self.paths[i].display());
                    }
                    self.current.store(i, Ordering::SeqCst);
                    return Some((i, s));
                }
                _ => self.mark_failed(i),
            }
        }
        None
    }

    /// Serves QEMU's connections on `listen` until the process ends.
    pub async fn serve(self: Arc<Self>, listener: UnixListener) {
        loop {
            let Ok((client, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let me = self.clone();
            tokio::spawn(async move { me.relay(client).await });
        }
    }

    async fn relay(&self, client: UnixStream) {
        let Some((i, upstream)) = self.connect().await else {
            eprintln!("oxvirt-mpath: no path answers");
            return;
        };
        let (mut client_rd, mut client_wr) = client.into_split();
        let (mut up_rd, mut up_wr) = upstream.into_split();
        let to_server = tokio::io::copy(&mut client_rd, &mut up_wr);
        let from_server = tokio::io::copy(&mut up_rd, &mut client_wr);
        // Whichever side ends first ends both: QEMU then reconnects, through a live path. When
        // the server's side ended first, the path failed.
        tokio::select! {
            _ = to_server => {}
            _ = from_server => {
                self.mark_failed(i);
                let n = self.paths.len();
                let _ = self.current.compare_exchange(i, (i + 1) % n, Ordering::SeqCst, Ordering::SeqCst);
            }
        }
    }
}

/// Binds `listen` (replacing a stale socket) and serves it.
pub async fn run(listen: &Path, paths: Vec<PathBuf>) -> std::io::Result<()> {
    let _ = std::fs::remove_file(listen);
    let listener = UnixListener::bind(listen)?;
    Multipath::new(paths).serve(listener).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// An upstream that answers every byte with its own tag.
    async fn tagged_server(path: PathBuf, tag: u8) -> tokio::task::JoinHandle<()> {
        let l = UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let mut b = [0u8; 1];
                    while s.read_exact(&mut b).await.is_ok() {
                        if s.write_all(&[tag]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        })
    }

    async fn ask(listen: &Path) -> Option<u8> {
        let mut c = UnixStream::connect(listen).await.ok()?;
        c.write_all(b"?").await.ok()?;
        let mut b = [0u8; 1];
        tokio::time::timeout(Duration::from_secs(3), c.read_exact(&mut b)).await.ok()?.ok()?;
        Some(b[0])
    }

    #[tokio::test]
    async fn fails_over_to_the_next_path_and_back() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, listen) = (dir.path().join("a"), dir.path().join("b"), dir.path().join("mp"));
        let sa = tagged_server(a.clone(), b'A').await;
        let _sb = tagged_server(b.clone(), b'B').await;
        let listen2 = listen.clone();
        let paths = vec![a.clone(), b.clone()];
        tokio::spawn(async move { run(&listen2, paths).await });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(ask(&listen).await, Some(b'A'));
        // Path A dies: new connections go through B.
        sa.abort();
        let _ = std::fs::remove_file(&a);
        assert_eq!(ask(&listen).await, Some(b'B'));
        assert_eq!(ask(&listen).await, Some(b'B'), "stays on the path that works");
        // A path that comes back is not used again at once (failback delay).
        let _sa2 = tagged_server(a.clone(), b'A').await;
        assert_eq!(ask(&listen).await, Some(b'B'));
    }

    #[tokio::test]
    async fn no_path_means_the_client_is_closed() {
        let dir = tempfile::tempdir().unwrap();
        let listen = dir.path().join("mp");
        let l2 = listen.clone();
        let paths = vec![dir.path().join("none")];
        tokio::spawn(async move { run(&l2, paths).await });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(ask(&listen).await, None);
    }
}
