//! The PostgreSQL wire bits pgfront needs before a session reaches a server: pure
//! functions over bytes, so they can be property-tested and fuzzed.

mod lsn;
mod startup;

pub use lsn::{format_lsn, parse_lsn};
pub use startup::{sqlstate as error_sqlstate, startup_message, Startup};

#[cfg(test)]
mod head_tests {
    #[test]
    fn a_header_split_anywhere_is_read_once_whole() {
        let msg = [b'Z', 0, 0, 0, 5, b'I', b'D', 0, 0, 0, 4];
        for cut in 0..msg.len() {
            let mut head = super::MessageHead::default();
            let (mut first, mut second) = (&msg[..cut], &msg[cut..]);
            let got = head.take(&mut first).or_else(|| head.take(&mut second));
            assert_eq!(got, Some((b'Z', 5)), "cut at {cut}");
            assert_eq!(first.len() + second.len(), msg.len() - 5, "only the header taken");
        }
    }
}

#[cfg(test)]
mod shown_tests {
    #[test]
    fn client_values_are_shown_quoted_escaped_and_short() {
        assert_eq!(super::shown("0/3000060"), "\"0/3000060\"");
        let forged = "zz\n2026-12-01T06:00:00Z  WARN leader changed\n\x1b[2J";
        let s = super::shown(forged);
        assert!(!s.contains('\n') && !s.contains('\x1b'), "{s}");
        assert!(s.contains("\\n2026") && s.contains("\\u{1b}"), "{s}");
        let long = "é".repeat(9000);
        assert_eq!(super::shown(&long), format!("{:?}...", "é".repeat(64)));
    }
}

/// A value a client sent, as pgfront shows it in its log and its errors: quoted, control
/// characters escaped (a newline in a startup parameter must not forge a log line, nor an
/// escape sequence drive an operator's terminal), and at most 64 characters.
pub fn shown(value: &str) -> String {
    const MOST: usize = 64;
    match value.char_indices().nth(MOST) {
        Some((cut, _)) => format!("{:?}...", &value[..cut]),
        None => format!("{value:?}"),
    }
}

/// The five bytes that start every message after the startup packet (its type and its
/// length word), gathered across reads that may split them anywhere.
#[derive(Default)]
pub struct MessageHead {
    bytes: [u8; 5],
    filled: u8,
}

impl MessageHead {
    /// Takes header bytes from the front of `data`: the type and the length (which counts
    /// itself) once all five are in.
    pub fn take(&mut self, data: &mut &[u8]) -> Option<(u8, u32)> {
        let at = self.filled as usize;
        let n = (5 - at).min(data.len());
        self.bytes[at..at + n].copy_from_slice(&data[..n]);
        self.filled += n as u8;
        *data = &data[n..];
        if self.filled < 5 {
            return None;
        }
        self.filled = 0;
        let [kind, a, b, c, d] = self.bytes;
        Some((kind, u32::from_be_bytes([a, b, c, d])))
    }
}

/// The largest startup packet PostgreSQL accepts.
pub const MAX_STARTUP_PACKET: u32 = 10_000;
pub const SSL_REQUEST: u32 = 80_877_103;
pub const GSSENC_REQUEST: u32 = 80_877_104;
pub const CANCEL_REQUEST: u32 = 80_877_102;
/// First byte of a TLS record: a client using PostgreSQL 17's direct TLS.
pub const TLS_HANDSHAKE: u8 = 0x16;

/// What the first eight bytes of a connection say it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opening {
    SslRequest,
    GssEncRequest,
    /// A cancel for the session holding the key that follows (`len - 12` bytes of key).
    CancelRequest {
        len: u32,
    },
    /// A StartupMessage for protocol 3.`minor`, `len` bytes in all.
    Startup {
        minor: u16,
        len: u32,
    },
    /// A TLS ClientHello (direct TLS): the rest is the server's business.
    DirectTls,
}

/// Why an opening was refused; the message is what the client is told.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadOpening {
    #[error("invalid length of startup packet ({0} bytes)")]
    Length(u32),
    #[error("unsupported frontend protocol {0}.{1}: pgfront and the server support 3.x")]
    Protocol(u16, u16),
    #[error("malformed startup packet")]
    Malformed,
    /// Bytes sent behind an SSLRequest or GSSENCRequest before its answer: PostgreSQL
    /// refuses them (CVE-2021-23214), and so does pgfront.
    #[error("received unencrypted data after an encryption request")]
    DataAfterRequest,
    /// A direct-TLS client that did not negotiate ALPN `postgresql`: PostgreSQL 17 closes
    /// it, since without ALPN a client of another protocol (a browser, an HTTPS probe) could
    /// have been talked into sending its bytes here.
    #[error("received direct SSL connection request without ALPN protocol negotiation extension")]
    NoAlpn,
}

/// Classifies the first eight bytes a client sends, as the PostgreSQL server would.
pub fn classify(head: [u8; 8]) -> Result<Opening, BadOpening> {
    if head[0] == TLS_HANDSHAKE {
        return Ok(Opening::DirectTls);
    }
    let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
    let code = u32::from_be_bytes([head[4], head[5], head[6], head[7]]);
    if !(8..=MAX_STARTUP_PACKET).contains(&len) {
        return Err(BadOpening::Length(len));
    }
    match code {
        SSL_REQUEST | GSSENC_REQUEST if len != 8 => Err(BadOpening::Length(len)),
        SSL_REQUEST => Ok(Opening::SslRequest),
        GSSENC_REQUEST => Ok(Opening::GssEncRequest),
        // Protocol 3.0 keys are 4 bytes; 3.2 (PostgreSQL 18) allows up to 256.
        CANCEL_REQUEST if (16..=12 + 256).contains(&len) => Ok(Opening::CancelRequest { len }),
        CANCEL_REQUEST => Err(BadOpening::Length(len)),
        _ => {
            let (major, minor) = ((code >> 16) as u16, (code & 0xffff) as u16);
            match major {
                // Parameters need at least the final NUL.
                3 if len > 8 => Ok(Opening::Startup { minor, len }),
                3 => Err(BadOpening::Length(len)),
                _ => Err(BadOpening::Protocol(major, minor)),
            }
        }
    }
}

/// An SSLRequest, as pgfront sends it to a server.
pub fn ssl_request() -> [u8; 8] {
    let mut r = [0u8; 8];
    r[..4].copy_from_slice(&8u32.to_be_bytes());
    r[4..].copy_from_slice(&SSL_REQUEST.to_be_bytes());
    r
}

/// Removes the channel-binding (`-PLUS`) mechanisms from an AuthenticationSASL message
/// (`R`, code 10) in place; other messages are left alone.
pub fn strip_channel_binding(msg: &mut Vec<u8>) {
    if msg.len() < 9 || msg[0] != b'R' || msg[5..9] != 10u32.to_be_bytes() {
        return;
    }
    let names: Vec<Vec<u8>> =
        msg[9..].split(|b| *b == 0).filter(|n| !n.is_empty() && !n.ends_with(b"-PLUS")).map(<[u8]>::to_vec).collect();
    let mut out = vec![b'R', 0, 0, 0, 0];
    out.extend_from_slice(&10u32.to_be_bytes());
    for n in names {
        out.extend_from_slice(&n);
        out.push(0);
    }
    out.push(0);
    let len = (out.len() - 1) as u32;
    out[1..5].copy_from_slice(&len.to_be_bytes());
    *msg = out;
}

/// SQLSTATEs pgfront uses when it refuses a client itself.
pub mod sqlstate {
    /// cannot_connect_now: no server is available (yet).
    pub const CANNOT_CONNECT_NOW: &str = "57P03";
    /// too_many_connections: every server is at its maxconn.
    pub const TOO_MANY_CONNECTIONS: &str = "53300";
    /// connection_failure: the chosen server could not be reached.
    pub const CONNECTION_FAILURE: &str = "08006";
    /// protocol_violation: the client did not speak PostgreSQL.
    pub const PROTOCOL_VIOLATION: &str = "08P01";
    /// invalid_parameter_value: a pgfront setting the client sent cannot be read.
    pub const INVALID_PARAMETER_VALUE: &str = "22023";
}

/// An ErrorResponse (`E`) message with severity FATAL, which libpq prints as
/// `FATAL:  message` whether it arrives before or after the startup packet, and also in
/// answer to an SSLRequest.
pub fn fatal(code: &str, message: &str, hint: Option<&str>) -> Vec<u8> {
    let mut body = Vec::with_capacity(64 + message.len());
    for (tag, value) in
        [(b'S', "FATAL"), (b'V', "FATAL"), (b'C', code), (b'M', message)].into_iter().chain(hint.map(|h| (b'H', h)))
    {
        body.push(tag);
        // A NUL inside a field would end it early and shift every later field.
        body.extend(value.bytes().filter(|b| *b != 0));
        body.push(0);
    }
    body.push(0);
    let mut msg = Vec::with_capacity(body.len() + 5);
    msg.push(b'E');
    msg.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    msg.extend_from_slice(&body);
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fatal_is_a_well_formed_error_response() {
        let m = fatal(sqlstate::CANNOT_CONNECT_NOW, "no server", Some("retry"));
        assert_eq!(m[0], b'E');
        let len = u32::from_be_bytes([m[1], m[2], m[3], m[4]]) as usize;
        assert_eq!(len + 1, m.len());
        let fields: Vec<&[u8]> = m[5..m.len() - 1].split(|b| *b == 0).filter(|f| !f.is_empty()).collect();
        assert_eq!(fields, vec![&b"SFATAL"[..], b"VFATAL", b"C57P03", b"Mno server", b"Hretry"]);
        assert_eq!(*m.last().unwrap(), 0);
    }

    fn head(len: u32, code: u32) -> [u8; 8] {
        let mut h = [0u8; 8];
        h[..4].copy_from_slice(&len.to_be_bytes());
        h[4..].copy_from_slice(&code.to_be_bytes());
        h
    }

    #[test]
    fn classifies_openings() {
        assert_eq!(classify(head(8, SSL_REQUEST)), Ok(Opening::SslRequest));
        assert_eq!(classify(head(8, GSSENC_REQUEST)), Ok(Opening::GssEncRequest));
        assert_eq!(classify(head(16, CANCEL_REQUEST)), Ok(Opening::CancelRequest { len: 16 }));
        assert_eq!(classify(head(44, CANCEL_REQUEST)), Ok(Opening::CancelRequest { len: 44 }));
        assert_eq!(classify(head(80, 196_608)), Ok(Opening::Startup { minor: 0, len: 80 }));
        assert_eq!(classify(head(80, 196_610)), Ok(Opening::Startup { minor: 2, len: 80 }));
        assert_eq!(classify([0x16, 3, 1, 0, 0xc8, 1, 0, 0]), Ok(Opening::DirectTls));
    }

    #[test]
    fn refuses_what_postgres_refuses() {
        assert_eq!(classify(head(10_001, 196_608)), Err(BadOpening::Length(10_001)));
        assert_eq!(classify(head(4, 196_608)), Err(BadOpening::Length(4)));
        assert_eq!(classify(head(12, SSL_REQUEST)), Err(BadOpening::Length(12)));
        assert_eq!(classify(head(12, CANCEL_REQUEST)), Err(BadOpening::Length(12)));
        assert_eq!(classify(head(80, 131_072)), Err(BadOpening::Protocol(2, 0)));
        assert_eq!(classify(*b"GET / HT"), Err(BadOpening::Length(u32::from_be_bytes(*b"GET "))));
    }

    proptest::proptest! {
        #[test]
        fn classify_never_panics(bytes: [u8; 8]) {
            let _ = classify(bytes);
        }
    }

    #[test]
    fn strips_channel_binding_from_sasl_offers() {
        let mut m = vec![b'R', 0, 0, 0, 0];
        m.extend_from_slice(&10u32.to_be_bytes());
        m.extend_from_slice(b"SCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0");
        let len = (m.len() - 1) as u32;
        m[1..5].copy_from_slice(&len.to_be_bytes());
        strip_channel_binding(&mut m);
        assert_eq!(&m[9..], b"SCRAM-SHA-256\0\0");
        assert_eq!(u32::from_be_bytes([m[1], m[2], m[3], m[4]]) as usize, m.len() - 1);
        let mut md5 = vec![b'R', 0, 0, 0, 12, 0, 0, 0, 5, 1, 2, 3, 4];
        let before = md5.clone();
        strip_channel_binding(&mut md5);
        assert_eq!(md5, before, "other authentication requests pass unchanged");
    }

    #[test]
    fn nul_bytes_in_a_message_are_dropped() {
        let m = fatal("08P01", "a\0b", None);
        assert!(m.windows(3).any(|w| w == b"Mab"));
    }
}
