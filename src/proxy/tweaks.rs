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
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    TcpListener::from_std(socket.into())
}

/// Options for both ends of a session: no Nagle delay (PostgreSQL messages are small and
/// latency-bound) and keepalives so a vanished peer is noticed within minutes.
pub fn session(stream: &TcpStream) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let ka = TcpKeepalive::new().with_time(Duration::from_secs(60)).with_interval(Duration::from_secs(10));
    SockRef::from(stream).set_tcp_keepalive(&ka)
}

/// Whether an accept error means the process is out of descriptors (back off, don't spin).
pub fn is_fd_exhaustion(e: &io::Error) -> bool {
    // Linux's ENFILE and EMFILE.
    const ENFILE: i32 = 23;
    const EMFILE: i32 = 24;
    matches!(e.raw_os_error(), Some(ENFILE | EMFILE))
}
