//! Socket options, set in one place.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use socket2::{Domain, Protocol, SockRef, Socket, TcpKeepalive, Type};
use tokio::net::{TcpListener, TcpStream};

/// Listen backlog: excess clients wait here while global maxconn pauses accepting.
const BACKLOG: i32 = 1024;

/// Binds a listening socket with SO_REUSEADDR, so a restart does not fail on TIME_WAIT.
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    TcpListener::from_std(bind_std(addr, false)?)
}

/// Binds `copies` listening sockets on `addr`, one per worker: with more than one, each has
/// SO_REUSEPORT and the kernel spreads new connections across them, so each worker
/// accepts and serves its own share without handing sessions between threads. The sockets
/// are registered with a runtime by the worker that accepts on them.
pub fn bind_copies(addr: SocketAddr, copies: usize) -> io::Result<Vec<std::net::TcpListener>> {
    if copies > 1 {
        // SO_REUSEPORT would let this bind share a port another process (a second pgfront)
        // already serves: make sure it is free first, as a plain bind would.
        let probe = bind_std(addr, false)?;
        let addr = probe.local_addr()?;
        drop(probe);
        return bind_group(addr, copies);
    }
    bind_group(addr, copies)
}

fn bind_group(addr: SocketAddr, copies: usize) -> io::Result<Vec<std::net::TcpListener>> {
    let first = bind_std(addr, copies > 1)?;
    // Port 0 picks a port once; the other copies join it.
    let addr = first.local_addr()?;
    let mut all = vec![first];
    for _ in 1..copies {
        all.push(bind_std(addr, true)?);
    }
    Ok(all)
}

fn bind_std(addr: SocketAddr, reuse_port: bool) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.set_nonblocking(true)?;
    // Set once here rather than on every accepted socket: Linux's accepted sockets inherit
    // them from the listener, which saves four setsockopt calls per new session.
    socket.set_nodelay(true)?;
    socket.set_tcp_keepalive(&keepalive())?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

/// Keepalives so a vanished peer is noticed within minutes.
fn keepalive() -> TcpKeepalive {
    TcpKeepalive::new().with_time(Duration::from_secs(60)).with_interval(Duration::from_secs(10))
}

/// Options for the server end of a session: no Nagle delay (PostgreSQL messages are small
/// and latency-bound) and keepalives. The client end has them from its listener.
pub fn server(stream: &TcpStream) -> io::Result<()> {
    stream.set_nodelay(true)?;
    SockRef::from(stream).set_tcp_keepalive(&keepalive())
}

/// Whether an accept error means the process is out of descriptors (back off, don't spin).
pub fn is_fd_exhaustion(e: &io::Error) -> bool {
    // Linux's ENFILE and EMFILE.
    const ENFILE: i32 = 23;
    const EMFILE: i32 = 24;
    matches!(e.raw_os_error(), Some(ENFILE | EMFILE))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Accepted clients get no socket options of their own: they must inherit them.
    #[tokio::test]
    async fn accepted_sockets_inherit_nodelay_and_keepalives_from_the_listener() {
        for copies in [1, 2] {
            let sockets = bind_copies("127.0.0.1:0".parse().unwrap(), copies).unwrap();
            let addr = sockets[0].local_addr().unwrap();
            let listeners: Vec<TcpListener> = sockets.into_iter().map(|s| TcpListener::from_std(s).unwrap()).collect();
            let _client = TcpStream::connect(addr).await.unwrap();
            let accepted = loop {
                if let Some(s) = listeners.iter().find_map(|l| l.accept().now_or_never()) {
                    break s.unwrap().0;
                }
                tokio::task::yield_now().await;
            };
            let s = SockRef::from(&accepted);
            assert!(s.nodelay().unwrap(), "TCP_NODELAY");
            assert!(s.keepalive().unwrap(), "SO_KEEPALIVE");
            assert_eq!(s.keepalive_time().unwrap(), Duration::from_secs(60));
            assert_eq!(s.keepalive_interval().unwrap(), Duration::from_secs(10));
        }
    }

    /// Polls a future once.
    trait NowOrNever: std::future::Future + Sized {
        fn now_or_never(self) -> Option<Self::Output> {
            let mut f = std::pin::pin!(self);
            let waker = std::task::Waker::noop();
            match f.as_mut().poll(&mut std::task::Context::from_waker(waker)) {
                std::task::Poll::Ready(v) => Some(v),
                std::task::Poll::Pending => None,
            }
        }
    }
    impl<F: std::future::Future> NowOrNever for F {}
}
