//! Query cancels. A CancelRequest arrives on a new connection carrying the key of the
//! session to cancel, and round robin would send it to any server: 0 of 10 cancels reached
//! the right server through HAProxy's replica port. pgfront sends it to every server of the
//! listener; PostgreSQL acts only where the key matches and ignores it elsewhere. This works
//! whether or not the session itself is encrypted, since the key is never needed here.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::timeout;

use crate::cluster::ListenerState;

/// Forwards a CancelRequest packet to every server of `listener`, whatever its health:
/// the query to cancel may be running on a server that was just marked down.
pub async fn forward(listener: &ListenerState, packet: &[u8], peer: SocketAddr) {
    let mut sends = JoinSet::new();
    for server in &listener.servers {
        let (address, packet, limit) = (server.address.clone(), packet.to_vec(), listener.config.timeout_connect);
        sends.spawn(async move {
            timeout(limit, async {
                let mut s = TcpStream::connect(&address).await?;
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
    tracing::info!(listener = %listener.config.name, client = %peer, servers = delivered, "cancel request forwarded");
}
