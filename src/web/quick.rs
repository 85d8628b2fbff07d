//! The quick lane's door: with every main place held, a connection is let in only to ask
//! GET /health (what Pacemaker's monitor and `pgfront status` ask, with a timeout that
//! restarts pgfront when it passes). Its first bytes are looked at without reading them,
//! and anything else is answered or closed at once, so that a crowd of silent or slow
//! connections in the backlog cannot make the monitor's GET wait behind them.

use std::time::Duration;

use tokio::net::TcpStream;

use super::Tally;

/// What every accepted request to /health starts with, then ' ' or '?'.
const HEALTH: &[u8] = b"GET /health";
/// How long a connection that sent part of that may take to send the rest (curl and the
/// OCF agent send their request in one write).
const PREFIX_WAIT: Duration = Duration::from_millis(50);
/// Between two looks at a connection that sent a part: `peek` leaves its data readable.
const PEEK_AGAIN: Duration = Duration::from_millis(5);

const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
Content-Type: text/plain; charset=utf-8\r\nCache-Control: no-store\r\nRetry-After: 1\r\n\
Connection: close\r\nContent-Length: 16\r\n\r\nbusy: try again\n";

/// What the door decided about a connection.
#[derive(Debug, PartialEq, Eq)]
pub enum Door {
    /// It asks GET /health: served as any request.
    Health,
    /// It asked something else, answered 503 with Retry-After.
    Busy,
    /// It sent nothing, or only part of a request line, in time: closed.
    Closed,
}

/// Looks at what `stream` sent and answers or closes it unless it asks GET /health.
/// `deferred`: the socket has TCP_DEFER_ACCEPT, so a connection accepted with nothing to
/// read sent nothing for a second already.
pub async fn door(stream: &TcpStream, deferred: bool, turned: &Tally) -> Door {
    let door = look(stream, deferred).await;
    match door {
        Door::Health => return door,
        Door::Busy => {
            // The socket's send buffer is empty: the answer fits without waiting. Straight
            // to the socket: tokio's `try_write` may not know yet that it is writable.
            // SAFETY: a valid socket descriptor, and a buffer valid for its length.
            let _ = unsafe {
                libc::send(fd(stream), BUSY.as_ptr().cast(), BUSY.len(), libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
            };
            drain(stream);
        }
        Door::Closed => {}
    }
    if let Some(n) = turned.count() {
        tracing::warn!(
            turned_away = n,
            "web port busy: every place is held, connections that do not ask GET /health are turned away"
        );
    }
    door
}

async fn look(stream: &TcpStream, deferred: bool) -> Door {
    let deadline = tokio::time::Instant::now() + PREFIX_WAIT;
    let mut buf = [0u8; HEALTH.len() + 1];
    let mut first = true;
    loop {
        let got = if first && deferred {
            // Nothing sent yet means nothing sent for the whole deferral.
            match peek_now(stream, &mut buf) {
                Some(n) => n,
                None => return Door::Closed,
            }
        } else {
            match tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await {
                Ok(Ok(n)) => n,
                Ok(Err(_)) | Err(_) => return Door::Closed,
            }
        };
        first = false;
        match judge(&buf[..got]) {
            Some(door) => return door,
            None if tokio::time::Instant::now() >= deadline => return Door::Closed,
            None => tokio::time::sleep(PEEK_AGAIN.min(deadline - tokio::time::Instant::now())).await,
        }
    }
}

/// What the first bytes say: `None` while they are a strict part of a /health request.
fn judge(got: &[u8]) -> Option<Door> {
    if got.is_empty() {
        // The peer closed without a word.
        return Some(Door::Closed);
    }
    let n = got.len().min(HEALTH.len());
    if got[..n] != HEALTH[..n] {
        return Some(Door::Busy);
    }
    match got.get(HEALTH.len()) {
        None => None,
        Some(b' ' | b'?') => Some(Door::Health),
        Some(_) => Some(Door::Busy),
    }
}

/// Reads what the client already sent, so that closing sends FIN rather than RST (an RST
/// can discard the answer before the client reads it).
fn drain(stream: &TcpStream) {
    let mut sink = [0u8; 4096];
    for _ in 0..4 {
        if recv_now(stream, &mut sink, 0).is_none_or(|n| n == 0) {
            return;
        }
    }
}

/// A peek that does not wait (tokio's waits): `None` when nothing is there yet.
fn peek_now(stream: &TcpStream, buf: &mut [u8]) -> Option<usize> {
    recv_now(stream, buf, libc::MSG_PEEK)
}

/// A `recv` that does not wait, and does not ask tokio whether the socket is readable (it
/// may not have heard yet of a socket just accepted): `None` when nothing is there.
fn recv_now(stream: &TcpStream, buf: &mut [u8], flags: libc::c_int) -> Option<usize> {
    // SAFETY: a valid socket descriptor, and a buffer valid for `buf.len()` bytes.
    let n = unsafe { libc::recv(fd(stream), buf.as_mut_ptr().cast(), buf.len(), flags | libc::MSG_DONTWAIT) };
    usize::try_from(n).ok()
}

fn fd(stream: &TcpStream) -> std::os::fd::RawFd {
    std::os::fd::AsRawFd::as_raw_fd(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_bytes_decide() {
        assert_eq!(judge(b"GET /health HTTP/1.1\r\n"[..12].as_ref()), Some(Door::Health));
        assert_eq!(judge(b"GET /health?x=1 HTTP/1.1"), Some(Door::Health));
        assert_eq!(judge(b"GET /healthz HTTP/1.1"), Some(Door::Busy));
        assert_eq!(judge(b"GET / HTTP/1.1"), Some(Door::Busy));
        assert_eq!(judge(b"POST /admin"), Some(Door::Busy));
        assert_eq!(judge(b"\x16\x03\x01"), Some(Door::Busy), "a TLS hello");
        assert_eq!(judge(b"GET /hea"), None, "wait for the rest");
        assert_eq!(judge(b"G"), None);
        assert_eq!(judge(b""), Some(Door::Closed));
    }
}
