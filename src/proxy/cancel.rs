//! Query cancels. A CancelRequest arrives on a new connection carrying the key of the
//! session to cancel, and round robin would send it to any server: 0 of 10 cancels reached
//! the right server through HAProxy's replica port. pgfront sends it to the server that
//! issued the key when it saw the key (sessions it can read), and otherwise to every server
//! of the listener: PostgreSQL acts only where the key matches and ignores it elsewhere, so
//! this works even for sessions encrypted end to end.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use tokio::io::AsyncWriteExt;
use tokio::task::JoinSet;
use tokio::time::timeout;

use crate::cluster::ListenerState;
use crate::state::Shared;

/// Forwards a CancelRequest packet to every server of `listener`, whatever its health:
/// the query to cancel may be running on a server that was just marked down.
pub async fn forward(shared: &Shared, listener: &ListenerState, packet: &[u8], peer: SocketAddr) {
    let known = packet.get(8..).and_then(|key| shared.cancel_keys.lookup(key));
    let source_of = |address: &str| listener.servers.iter().find(|s| s.address == address).and_then(|s| s.source);
    let targets: Vec<(String, Option<std::net::IpAddr>)> = match &known {
        Some(address) => vec![(address.clone(), source_of(address))],
        None => listener.servers.iter().map(|s| (s.address.clone(), s.source)).collect(),
    };
    let mut sends = JoinSet::new();
    for (address, source) in targets {
        let (packet, limit) = (packet.to_vec(), listener.config.timeout_connect);
        sends.spawn(async move {
            timeout(limit, async {
                let mut s = crate::net::connect(&address, source).await?;
                s.write_all(&packet).await?;
                s.shutdown().await
            })
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timeout"))
            .and_then(|r| r)
        });
    }
    let mut delivered = 0;
    while let Some(r) = sends.join_next().await {
        if matches!(r, Ok(Ok(()))) {
            delivered += 1;
        }
    }
    listener.stats.cancels.fetch_add(1, Ordering::Relaxed);
    tracing::info!(listener = %listener.config.name, client = %peer, servers = delivered, key_known = known.is_some(),
        "cancel request forwarded");
}
