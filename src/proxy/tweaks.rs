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
    TcpListener::from_std(bind_std(addr, false, 0)?)
}

/// Binds the web port: with `defer`, a connection is accepted once it has sent something
/// (HTTP clients speak first), so one that connects and says nothing waits in the kernel
/// instead of taking one of the web's few places (see `fds::Shares::web`).
pub fn bind_web(addr: SocketAddr, defer: bool) -> io::Result<TcpListener> {
    TcpListener::from_std(bind_std(addr, false, if defer { DEFER_ACCEPT } else { 0 })?)
}

/// Binds `copies` listening sockets on `addr`, one per worker: with more than one, each has
/// SO_REUSEPORT and the kernel spreads new connections across them, so each worker
/// accepts and serves its own share without handing sessions between threads. The sockets
/// are registered with a runtime by the worker that accepts on them. With `defer`, a
/// client is accepted once it has sent something (see `Global::defer_accept`).
pub fn bind_copies(addr: SocketAddr, copies: usize, defer: bool) -> io::Result<Vec<std::net::TcpListener>> {
    let defer = if defer { DEFER_ACCEPT } else { 0 };
    if copies > 1 {
        // SO_REUSEPORT would let this bind share a port another process (a second pgfront)
        // already serves: make sure it is free first, as a plain bind would.
        let probe = bind_std(addr, false, 0)?;
        let addr = probe.local_addr()?;
        drop(probe);
        return bind_group(addr, copies, defer);
    }
    bind_group(addr, copies, defer)
}

fn bind_group(addr: SocketAddr, copies: usize, defer: i32) -> io::Result<Vec<std::net::TcpListener>> {
    let first = bind_std(addr, copies > 1, defer)?;
    // Port 0 picks a port once; the other copies join it.
    let addr = first.local_addr()?;
    let mut all = vec![first];
    for _ in 1..copies {
        all.push(bind_std(addr, true, defer)?);
    }
    Ok(all)
}

/// Seconds a silent client waits in the kernel before it is accepted anyway (Linux rounds
/// this to SYN-ACK retransmissions: the first comes after a second), after which
/// `timeout_startup` applies to it as to any client.
const DEFER_ACCEPT: i32 = 1;

fn bind_std(addr: SocketAddr, reuse_port: bool, defer: i32) -> io::Result<std::net::TcpListener> {
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
    if defer > 0 {
        set_defer_accept(&socket, defer)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

/// Whether a listening socket has TCP_DEFER_ACCEPT: a connection it hands over has sent
/// something (or waited out the deferral).
pub fn defers_accept(socket: &TcpListener) -> bool {
    use std::os::fd::AsRawFd;
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: a valid socket descriptor, and a pointer to a c_int with its size.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_DEFER_ACCEPT,
            std::ptr::from_mut(&mut value).cast(),
            &mut len,
        )
    };
    rc == 0 && value > 0
}

/// TCP_DEFER_ACCEPT (socket2 0.5 has no setter for it).
fn set_defer_accept(socket: &Socket, secs: i32) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let value: libc::c_int = secs;
    // SAFETY: a valid socket descriptor, and a pointer to a c_int with its size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_DEFER_ACCEPT,
            std::ptr::from_ref(&value).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Accepted clients get no socket options of their own: they must inherit them.
    #[tokio::test]
    async fn accepted_sockets_inherit_nodelay_and_keepalives_from_the_listener() {
        for copies in [1, 2] {
            let sockets = bind_copies("127.0.0.1:0".parse().unwrap(), copies, false).unwrap();
            let addr = sockets[0].local_addr().unwrap();
            let listeners: Vec<TcpListener> = sockets.into_iter().map(|s| TcpListener::from_std(s).unwrap()).collect();
            let _client = TcpStream::connect(addr).await.unwrap();
            let accepted = accept_any(&listeners).await;
            let s = SockRef::from(&accepted);
            assert!(s.nodelay().unwrap(), "TCP_NODELAY");
            assert!(s.keepalive().unwrap(), "SO_KEEPALIVE");
            assert_eq!(s.keepalive_time().unwrap(), Duration::from_secs(60));
            assert_eq!(s.keepalive_interval().unwrap(), Duration::from_secs(10));
        }
    }

    /// The first client any of `listeners` accepts (SO_REUSEPORT picks which).
    async fn accept_any(listeners: &[TcpListener]) -> TcpStream {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(s) = listeners.iter().find_map(|l| l.accept().now_or_never()) {
                return s.unwrap().0;
            }
            assert!(std::time::Instant::now() < deadline, "no client accepted");
            tokio::task::yield_now().await;
        }
    }

    /// With defer_accept every copy has TCP_DEFER_ACCEPT, and a client is accepted with its
    /// first bytes already readable; without it, the option is off.
    #[tokio::test]
    async fn deferred_listeners_hand_over_clients_with_their_first_bytes() {
        use tokio::io::AsyncWriteExt;
        let value = |l: &std::net::TcpListener| {
            use std::os::fd::AsRawFd;
            let mut v: libc::c_int = -1;
            let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
            // SAFETY: a valid descriptor, and a c_int with its size.
            let rc = unsafe {
                libc::getsockopt(
                    l.as_raw_fd(),
                    libc::IPPROTO_TCP,
                    libc::TCP_DEFER_ACCEPT,
                    std::ptr::from_mut(&mut v).cast(),
                    &mut len,
                )
            };
            assert_eq!(rc, 0);
            v
        };
        for copies in [1, 2] {
            let off = bind_copies("127.0.0.1:0".parse().unwrap(), copies, false).unwrap();
            assert!(off.iter().all(|l| value(l) == 0), "off unless asked");
            let sockets = bind_copies("127.0.0.1:0".parse().unwrap(), copies, true).unwrap();
            assert!(sockets.iter().all(|l| value(l) > 0), "every copy defers");
            let addr = sockets[0].local_addr().unwrap();
            let listeners: Vec<TcpListener> = sockets.into_iter().map(|s| TcpListener::from_std(s).unwrap()).collect();
            let mut client = TcpStream::connect(addr).await.unwrap();
            client.write_all(b"\0\0\0\x08").await.unwrap();
            let accepted = accept_any(&listeners).await;
            let mut b = [0u8; 8];
            assert_eq!(accepted.try_read(&mut b).unwrap(), 4, "the first bytes came with the client");
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

/// The kernel's smoothed round-trip time of the connected TCP socket `fd` (TCP_INFO's
/// `tcpi_rtt`; socket2 0.5 has no getter for it), if it has one. The caller keeps `fd`
/// open for the call.
pub fn rtt(fd: std::os::fd::RawFd) -> Option<Duration> {
    // SAFETY: tcp_info is plain integers, for which all zeroes is a valid value.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: a pointer to a tcp_info and its size; the kernel writes at most `len` bytes.
    let rc = unsafe {
        libc::getsockopt(fd, libc::IPPROTO_TCP, libc::TCP_INFO, std::ptr::from_mut(&mut info).cast(), &mut len)
    };
    let has = std::mem::offset_of!(libc::tcp_info, tcpi_rtt) + std::mem::size_of::<u32>();
    (rc == 0 && len as usize >= has).then(|| Duration::from_micros(info.tcpi_rtt.into()))
}

#[cfg(test)]
mod rtt_tests {
    #[tokio::test]
    async fn a_connected_socket_has_a_round_trip_time_and_a_closed_descriptor_none() {
        use std::os::fd::AsRawFd;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        for fd in [client.as_raw_fd(), accepted.as_raw_fd()] {
            let rtt = super::rtt(fd).expect("TCP_INFO");
            assert!(rtt < std::time::Duration::from_secs(1), "{rtt:?} on loopback");
        }
        assert_eq!(super::rtt(-1), None);
    }
}
