//! A TCP proxy on loopback that a test can cut: a host's link to etcd, cut while the host and
//! its guests live on (as a switch port or a cable would), then mended.

use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

pub struct CuttableLink {
    /// `http://127.0.0.1:PORT`: where the host connects instead of the target.
    pub url: String,
    cut: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
}

impl CuttableLink {
    /// Forwards connections to `target` (`host:port`) until cut.
    pub fn to(target: &str) -> CuttableLink {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let cut = Arc::new(AtomicBool::new(false));
        let open: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (target, c, o) = (target.to_string(), cut.clone(), open.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                // Cut: the connection is dropped at once (as an unreachable peer resets it).
                if c.load(Ordering::SeqCst) {
                    continue;
                }
                let Ok(server) = TcpStream::connect(&target) else { continue };
                let mut held = o.lock().unwrap_or_else(|p| p.into_inner());
                for s in [&client, &server] {
                    if let Ok(s) = s.try_clone() {
                        held.push(s);
                    }
                }
                drop(held);
                pipe(&client, &server);
                pipe(&server, &client);
            }
        });
        CuttableLink { url, cut, open }
    }

    /// Cuts the link: open connections are shut, new ones dropped.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for s in self.open.lock().unwrap_or_else(|p| p.into_inner()).drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    /// Mends it: new connections go through again.
    pub fn mend(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

fn pipe(from: &TcpStream, to: &TcpStream) {
    let (Ok(mut from), Ok(mut to)) = (from.try_clone(), to.try_clone()) else { return };
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut from, &mut to);
        let _ = to.shutdown(Shutdown::Write);
    });
}
