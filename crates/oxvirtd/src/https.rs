//! The HTTPS listener: TLS in front of the token-checked API. A connection that has not finished
//! its TLS handshake, or a request's headers, within [`HANDSHAKE_TIMEOUT`] / [`HEADER_TIMEOUT`] is
//! closed; connections are capped in all and per address, so a crowd of idle or half-open
//! connections from one place cannot keep a real client out.

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// The TLS handshake must be done within this.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A request's headers must have arrived within this (also bounds an idle keep-alive connection).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// How many connections the listener holds at once.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    pub total: usize,
    pub per_address: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits { total: 1024, per_address: 64 }
    }
}

/// Open connections per address; a slot is given back when its guard drops.
#[derive(Default)]
struct Counts {
    total: usize,
    by_address: HashMap<IpAddr, usize>,
}

struct Slot {
    counts: Arc<Mutex<Counts>>,
    address: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.by_address.get_mut(&self.address) {
            *n -= 1;
            if *n == 0 {
                c.by_address.remove(&self.address);
            }
        }
    }
}

/// Where a connection comes from, for the per-address cap: an IPv6 peer by its /64.
fn site_of(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6(std::net::Ipv6Addr::from(u128::from(v6) & !((1u128 << 64) - 1))),
        v4 => v4,
    }
}

fn take_slot(counts: &Arc<Mutex<Counts>>, address: IpAddr, limits: ConnectionLimits) -> Option<Slot> {
    let mut c = counts.lock().unwrap_or_else(|p| p.into_inner());
    let mine = c.by_address.get(&address).copied().unwrap_or(0);
    if c.total >= limits.total || mine >= limits.per_address {
        return None;
    }
    c.total += 1;
    *c.by_address.entry(address).or_insert(0) += 1;
    Some(Slot { counts: counts.clone(), address })
}

/// Serves `app` over TLS on `listener` until the process ends.
pub async fn serve(listener: TcpListener, tls: Arc<rustls::ServerConfig>, app: axum::Router, limits: ConnectionLimits) {
    let acceptor = TlsAcceptor::from(tls);
    let counts = Arc::new(Mutex::new(Counts::default()));
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("HTTPS accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(slot) = take_slot(&counts, site_of(peer.ip()), limits) else {
            tracing::debug!(%peer, "HTTPS connection refused: connection limit reached");
            drop(tcp);
            continue;
        };
        let acceptor = acceptor.clone();
        let app = app.clone().layer(axum::Extension(oxvirt_api::auth::Peer(peer.to_string())));
        tokio::spawn(async move {
            let _slot = slot;
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, "TLS handshake failed: {e}");
                    return;
                }
                Err(_) => return,
            };
            let service = TowerToHyperService::new(app);
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(tls), service)
                .with_upgrades();
            if let Err(e) = conn.await {
                tracing::debug!(%peer, "HTTPS connection: {e}");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_capped_in_all_and_per_address_and_given_back() {
        let counts = Arc::new(Mutex::new(Counts::default()));
        let limits = ConnectionLimits { total: 3, per_address: 2 };
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let b: IpAddr = "127.0.0.1".parse().unwrap();
        let s1 = take_slot(&counts, a, limits).unwrap();
        let _s2 = take_slot(&counts, a, limits).unwrap();
        assert!(take_slot(&counts, a, limits).is_none(), "per address");
        let _s3 = take_slot(&counts, b, limits).unwrap();
        assert!(take_slot(&counts, b, limits).is_none(), "in all");
        drop(s1);
        assert!(take_slot(&counts, b, limits).is_some(), "given back");
        let one: IpAddr = "2001:db8:0:1::1".parse().unwrap();
        let other: IpAddr = "2001:db8:0:1:ffff::2".parse().unwrap();
        assert_eq!(site_of(one), site_of(other), "one /64, one site");
        assert_ne!(site_of(one), site_of("2001:db8:0:2::1".parse().unwrap()));
    }
}
