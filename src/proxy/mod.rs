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

pub use buffers::{trim as trim_memory, TRIM_LOOK};
pub use copy::End;
pub use react::Reactor;
pub use tweaks::{bind, bind_copies, bind_web, defers_accept};

use crate::state::{ClusterState, Shared};

/// Accepts on `socket` for the listener named `name` of `cluster` until the accept token is
/// cancelled. The listener's policy is looked up in its cluster's current generation at
/// each accept, so a reload applies to the next session without rebinding (and a listener
/// a reload moved to another cluster is found there).
pub async fn accept_loop(
    shared: Arc<Shared>,
    cluster: Arc<ClusterState>,
    name: Arc<arc_swap::ArcSwap<String>>,
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
                Ok(v) => {
                    if SHORT.load(std::sync::atomic::Ordering::Relaxed) {
                        lock_exhaustion().recovered(&name.load());
                    }
                    v
                }
                Err(e) => {
                    accept_error(&name.load_full(), &e).await;
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
        // The name as a reload left it (one that renamed the listener hands its sockets
        // on), read with the generation it is looked up in.
        let found = shared
            .reloads
            .steady(|| {
                let name = name.load();
                match cluster.runtime.load().listener(&name) {
                    Some(l) if !cluster.is_removed() => Some(Arc::clone(l)),
                    _ => shared.listener(&name),
                }
            })
            .await;
        let Some(listener) = found else {
            // Removed by a reload whose socket has not closed yet.
            continue;
        };
        listener.stats.accepted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        shared.sessions.spawn(session::serve(Arc::clone(&shared), listener, stream, peer, permit));
    }
}

/// How long accept waits when descriptors are exhausted before it tries again.
const EXHAUSTED_PAUSE: Duration = Duration::from_millis(100);
/// While descriptors stay exhausted, the error is logged at most this often (with the
/// number of pauses since), so a long shortage is not ten log lines a second.
const EXHAUSTED_LOG_EVERY: Duration = Duration::from_secs(10);

/// The process's descriptor shortage. Accept flaps between failing and succeeding while
/// descriptors are short (each closing session frees one), and every worker's accept loop
/// of every listener meets the same shortage: both the error and the recovery are said at
/// most once per `EXHAUSTED_LOG_EVERY` for the whole process.
struct Exhaustion {
    /// When the error was last logged.
    logged: Option<tokio::time::Instant>,
    /// Pauses (of any accept loop) since the error was last logged.
    pauses: u64,
}

/// The error was logged and the recovery not yet: read on every accept, so a plain flag
/// (the lock is taken only while a shortage lasts).
static SHORT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
static EXHAUSTION: std::sync::Mutex<Exhaustion> = std::sync::Mutex::new(Exhaustion { logged: None, pauses: 0 });

fn lock_exhaustion() -> std::sync::MutexGuard<'static, Exhaustion> {
    EXHAUSTION.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Exhaustion {
    fn recovered(&mut self, name: &str) {
        if SHORT.swap(false, std::sync::atomic::Ordering::Relaxed) {
            tracing::warn!(listener = %name, pauses = self.pauses, "file descriptors available again; accepting");
        }
    }
}

/// Logs an accept error and backs off when descriptors are exhausted instead of spinning.
async fn accept_error(name: &str, e: &std::io::Error) {
    if crate::fds::is_exhaustion(e) {
        {
            let mut x = lock_exhaustion();
            x.pauses += 1;
            let now = tokio::time::Instant::now();
            if x.logged.is_none_or(|at| now.duration_since(at) >= EXHAUSTED_LOG_EVERY) {
                tracing::error!(listener = %name, error = %e, pauses = x.pauses,
                    "out of file descriptors; pausing accept (clients wait in the backlog)");
                x.logged = Some(now);
                x.pauses = 0;
                SHORT.store(true, std::sync::atomic::Ordering::Relaxed);
            }
        }
        tokio::time::sleep(EXHAUSTED_PAUSE).await;
    } else {
        tracing::debug!(listener = %name, error = %e, "accept failed");
    }
}

/// The address a listener actually bound (useful with port 0 in tests).
pub fn local_addr(socket: &TcpListener) -> Option<SocketAddr> {
    socket.local_addr().ok()
}
