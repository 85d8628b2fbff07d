//! The data path: listeners accept clients and hand each to a session task.

mod buffers;
mod cancel;
mod copy;
pub mod keys;
mod min_lsn;
mod react;
mod session;
mod tweaks;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use buffers::trim as trim_memory;
pub use copy::End;
pub use react::Reactor;
pub use tweaks::{bind, bind_copies};

use crate::state::{ClusterState, Shared};

/// Accepts on `socket` for the listener named `name` of `cluster` until the accept token is
/// cancelled. The listener's policy is looked up in its cluster's current generation at
/// each accept, so a reload applies to the next session without rebinding (and a listener
/// a reload moved to another cluster is found there).
pub async fn accept_loop(
    shared: Arc<Shared>,
    cluster: Arc<ClusterState>,
    name: String,
    socket: TcpListener,
    stop: CancellationToken,
) {
    loop {
        // Global maxconn: accept only while a place is free, as HAProxy does; the kernel's
        // backlog holds clients meanwhile. The place is taken after the accept, so idle
        // accept loops hold none.
        tokio::select! {
            free = shared.place_free() => if !free { return },
            () = stop.cancelled() => return,
        }
        let (stream, peer) = tokio::select! {
            r = socket.accept() => match r {
                Ok(v) => v,
                Err(e) => {
                    accept_error(&name, &e).await;
                    continue;
                }
            },
            () = stop.cancelled() => return,
        };
        // Another listener may have taken the last place since: this client waits for
        // the next one, as it would have in the backlog.
        let permit = match shared.try_permit() {
            Some(p) => p,
            None => tokio::select! {
                p = shared.permit() => match p {
                    Some(p) => p,
                    None => return,
                },
                () = stop.cancelled() => return,
            },
        };
        // A listener a reload moved to another cluster (or whose cluster it removed and
        // another took over) is looked up across the current clusters.
        let runtime = cluster.runtime.load();
        let found = match runtime.listener(&name) {
            Some(l) if !cluster.is_removed() => Some(Arc::clone(l)),
            _ => shared.listener(&name),
        };
        let Some(listener) = found else {
            // Removed by a reload whose socket has not closed yet.
            continue;
        };
        listener.stats.accepted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        shared.sessions.spawn(session::serve(Arc::clone(&shared), listener, stream, peer, permit));
    }
}

/// Logs an accept error and backs off when descriptors are exhausted instead of spinning.
async fn accept_error(name: &str, e: &std::io::Error) {
    if tweaks::is_fd_exhaustion(e) {
        tracing::error!(listener = %name, error = %e, "out of file descriptors; pausing accept");
        tokio::time::sleep(Duration::from_millis(100)).await;
    } else {
        tracing::debug!(listener = %name, error = %e, "accept failed");
    }
}

/// The address a listener actually bound (useful with port 0 in tests).
pub fn local_addr(socket: &TcpListener) -> Option<SocketAddr> {
    socket.local_addr().ok()
}
