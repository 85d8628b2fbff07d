//! The quick lane's door: with every main place held, a connection is let in only to ask
//! for /health (what Pacemaker's monitor asks, with a timeout that restarts pgfront when it
//! passes). Its request head is looked at without reading it, and anything else is answered
//! or closed at once, so that a crowd of silent or slow connections in the backlog cannot
//! make the monitor's request wait behind them.

use std::time::Duration;

use tokio::net::TcpStream;

/// The request lines let in, each followed by ' ' or '?'.
const HEALTH: [&[u8]; 2] = [b"GET /health", b"HEAD /health"];
/// How long a connection may take to send its whole request head: once accepted under
/// TCP_DEFER_ACCEPT its first segment is there (curl and the OCF agent send the request in
/// one write), and the short wait covers only a head split over segments...
const HEAD_WAIT_DEFERRED: Duration = Duration::from_millis(10);
/// ...and without it, the first bytes too.
const HEAD_WAIT: Duration = Duration::from_millis(50);
/// Between two looks at a connection that sent a part: `peek` leaves its data readable.
const PEEK_AGAIN: Duration = Duration::from_millis(5);
/// How much of a request head is looked at: a /health request's is far shorter.
const LOOK: usize = 1024;

/// The answer to anything else: its head, then its body (not sent to a HEAD request).
const BUSY_HEAD: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
Content-Type: text/plain; charset=utf-8\r\nCache-Control: no-store\r\nRetry-After: 1\r\n\
Connection: close\r\nContent-Length: 16\r\n\r\n";
/// What `pgfront status` and `ctl` know a busy pgfront by (they ask again only then).
pub const BUSY_BODY: &str = "busy: try again\n";

/// What the door decided about a connection.
#[derive(Debug, PartialEq, Eq)]
pub enum Door {
    /// Its whole head is there and asks for /health: served as any request.
    Health,
    /// It asked something else: answered 503 with Retry-After (a HEAD request, without
    /// the body).
    Busy { head_only: bool },
    /// It sent nothing, or not a whole /health request in time: closed.
    Closed,
}

/// Looks at what `stream` sent and answers or closes it unless it asks for /health.
/// `deferred`: the socket has TCP_DEFER_ACCEPT.
pub async fn door(stream: &TcpStream, deferred: bool) -> Door {
    let door = look(stream, deferred).await;
    if let Door::Busy { head_only } = door {
        // The socket's send buffer is empty: the answer fits without waiting. Straight to
        // the socket: tokio's `try_write` may not know yet that it is writable.
        let body: &[u8] = if head_only { b"" } else { BUSY_BODY.as_bytes() };
        for part in [BUSY_HEAD, body] {
            // SAFETY: a valid socket descriptor, and a buffer valid for its length.
            let _ = unsafe {
                libc::send(fd(stream), part.as_ptr().cast(), part.len(), libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
            };
        }
        // FIN after the answer; the request, read now, leaves nothing for an RST.
        // SAFETY: a valid socket descriptor.
        unsafe { libc::shutdown(fd(stream), libc::SHUT_WR) };
        drain(stream);
    }
    door
}

async fn look(stream: &TcpStream, deferred: bool) -> Door {
    let deadline = tokio::time::Instant::now() + if deferred { HEAD_WAIT_DEFERRED } else { HEAD_WAIT };
    let mut buf = [0u8; LOOK];
    loop {
        // What is there now, without tokio (it may not know yet that the socket is
        // readable); it is waited for only when nothing is.
        let got = match peek_now(stream, &mut buf) {
            Some(n) => n,
            None => match tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await {
                Ok(Ok(n)) => n,
                Ok(Err(_)) | Err(_) => return Door::Closed,
            },
        };
        let seen = judge(&buf[..got]);
        let whole = got == LOOK || buf[..got].windows(4).any(|w| w == b"\r\n\r\n");
        let late = tokio::time::Instant::now() >= deadline;
        match seen {
            Seen::Nothing => return Door::Closed,
            Seen::Health if whole => return Door::Health,
            Seen::Other { head_only } if whole || late => return Door::Busy { head_only },
            _ if late => return Door::Closed,
            _ => tokio::time::sleep(PEEK_AGAIN.min(deadline - tokio::time::Instant::now())).await,
        }
    }
}

/// What the first bytes of a request say.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    /// The peer closed without a word.
    Nothing,
    /// A part of a /health request line, or empty lines before it.
    Part,
    /// A /health request line.
    Health,
    /// Any other request (or none at all).
    Other { head_only: bool },
}

fn judge(got: &[u8]) -> Seen {
    if got.is_empty() {
        return Seen::Nothing;
    }
    // RFC 9112 2.2: empty lines before a request line are ignored.
    let start = got.iter().position(|b| !matches!(b, b'\r' | b'\n')).unwrap_or(got.len());
    let line = &got[start..];
    let mut part = line.is_empty();
    for want in HEALTH {
        let n = line.len().min(want.len());
        if line[..n] != want[..n] {
            continue;
        }
        match line.get(want.len()) {
            None => part = true,
            Some(b' ' | b'?') => return Seen::Health,
            Some(_) => {}
        }
    }
    if part {
        Seen::Part
    } else {
        Seen::Other { head_only: line.starts_with(b"HEAD ") }
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
        assert_eq!(judge(b"GET /health HTTP/1.1\r\n"), Seen::Health);
        assert_eq!(judge(b"GET /health?x=1 HTTP/1.1"), Seen::Health);
        assert_eq!(judge(b"HEAD /health HTTP/1.0"), Seen::Health);
        assert_eq!(judge(b"\r\nGET /health HTTP/1.1"), Seen::Health, "an empty line first");
        assert_eq!(judge(b"GET /healthz HTTP/1.1"), Seen::Other { head_only: false });
        assert_eq!(judge(b"GET / HTTP/1.1"), Seen::Other { head_only: false });
        assert_eq!(judge(b"HEAD / HTTP/1.1"), Seen::Other { head_only: true });
        assert_eq!(judge(b"POST /admin"), Seen::Other { head_only: false });
        assert_eq!(judge(b"\x16\x03\x01"), Seen::Other { head_only: false }, "a TLS hello");
        assert_eq!(judge(b"GET /hea"), Seen::Part, "wait for the rest");
        assert_eq!(judge(b"HE"), Seen::Part);
        assert_eq!(judge(b"GET /health"), Seen::Part);
        assert_eq!(judge(b"\r\n"), Seen::Part);
        assert_eq!(judge(b""), Seen::Nothing);
    }
}
