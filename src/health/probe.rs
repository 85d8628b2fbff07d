//! The probe seam: one HTTP request to a node's Patroni REST API, classified with HAProxy's
//! check result codes. Production uses [`HttpProbe`]; tests may script any [`Probe`].
//!
//! Every probe is bounded in time (connect by `connect_timeout`, the answer by `timeout`)
//! and in memory (headers and body are capped), so a REST endpoint that hangs, dribbles,
//! resets or answers garbage is a failed check, never a stuck task.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::{timeout_at, Instant};

use super::tls;
use crate::config::CheckSpec;

/// Headers larger than this are an unparsable answer (an endless header must not grow memory).
const MAX_HEAD: usize = 8 * 1024;
/// Bodies are read (for GET) up to this size; Patroni's status JSON is a few KiB.
const MAX_BODY: usize = 64 * 1024;

/// HAProxy's check result codes, shown on the stats page and in logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub enum CheckCode {
    /// The connect did not finish in time.
    L4Tout,
    /// The connect was refused or failed.
    L4Con,
    /// An answer with the expected status.
    L7Ok,
    /// An answer with another status.
    L7Sts,
    /// An answer that is not HTTP, too large, or cut short.
    L7Rsp,
    /// Connected, but no complete answer in time.
    L7Tout,
    /// Connected, but the TLS handshake did not finish in time.
    L6Tout,
    /// The TLS handshake failed: an untrusted, expired or misnamed certificate, or the
    /// server refused pgfront's (missing) client certificate.
    L6Rsp,
    /// pgfront could not make the check itself (out of file descriptors). HAProxy calls it
    /// SOCKERR and counts it as a failed check; pgfront does not: it says nothing about the
    /// node, so it is no verdict, and the check's state stays as it was rather than
    /// counting towards `fall` and cutting the sessions of a healthy server. The checker
    /// first tries again with the socket it keeps spare (`fds::Spare`), so this is left
    /// only when that was used and no new one could be made since.
    SockErr,
}

impl CheckCode {
    pub fn as_str(self) -> &'static str {
        match self {
            CheckCode::L4Tout => "L4TOUT",
            CheckCode::L4Con => "L4CON",
            CheckCode::L7Ok => "L7OK",
            CheckCode::L7Sts => "L7STS",
            CheckCode::L7Rsp => "L7RSP",
            CheckCode::L7Tout => "L7TOUT",
            CheckCode::L6Tout => "L6TOUT",
            CheckCode::L6Rsp => "L6RSP",
            CheckCode::SockErr => "SOCKERR",
        }
    }
}

/// What one probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeResult {
    pub code: CheckCode,
    /// The HTTP status, when one was parsed.
    pub status: Option<u16>,
    pub duration: Duration,
    /// A short human reason for failures ("connection refused", "status 503").
    pub detail: String,
    /// The body of a GET answer, when one was read.
    pub body: Option<Vec<u8>>,
    /// Over HTTPS, the `notAfter` of the REST API's certificate (seconds since the epoch).
    pub cert_not_after: Option<i64>,
    /// The address the check connected to, when it connected.
    pub peer: Option<std::net::SocketAddr>,
}

impl ProbeResult {
    pub fn passed(&self) -> bool {
        self.code == CheckCode::L7Ok
    }

    /// An answer with Patroni's status for a check that `passed` (200) or not (503): what
    /// Patroni mode makes of a node's JSON for each listener's check, and what tests script.
    pub fn answered(passed: bool, duration: Duration, detail: impl Into<String>) -> ProbeResult {
        ProbeResult {
            code: if passed { CheckCode::L7Ok } else { CheckCode::L7Sts },
            status: Some(if passed { 200 } else { 503 }),
            duration,
            detail: detail.into(),
            body: None,
            cert_not_after: None,
            peer: None,
        }
    }

    fn fail(code: CheckCode, started: Instant, detail: impl Into<String>) -> ProbeResult {
        ProbeResult {
            code,
            status: None,
            duration: started.elapsed(),
            detail: detail.into(),
            body: None,
            cert_not_after: None,
            peer: None,
        }
    }

    /// HAProxy's rendering: `L7OK/200 in 1ms`, `L4CON in 0ms`.
    pub fn summary(&self) -> String {
        let ms = self.duration.as_millis();
        match self.status {
            Some(s) => format!("{}/{s} in {ms}ms", self.code.as_str()),
            None => format!("{} in {ms}ms", self.code.as_str()),
        }
    }
}

/// The seam between the checker's timing and the network.
pub trait Probe: Send + Sync + 'static {
    /// Probes `target` (`host:port`) with `spec`; must finish within the spec's timeouts.
    fn probe<'a>(
        &'a self,
        target: &'a str,
        spec: &'a CheckSpec,
    ) -> Pin<Box<dyn Future<Output = ProbeResult> + Send + 'a>>;

    /// Probes with `spare`, the checker's spare socket, when the process had no descriptor
    /// for a new one (see `fds::Spare`). Probes that open no socket (scripted fakes) ignore it.
    fn probe_with<'a>(
        &'a self,
        target: &'a str,
        spec: &'a CheckSpec,
        spare: crate::fds::Lent,
    ) -> Pin<Box<dyn Future<Output = ProbeResult> + Send + 'a>> {
        drop(spare);
        self.probe(target, spec)
    }
}

/// HTTP/1.0 over a fresh TCP connection per probe, as HAProxy does.
#[derive(Debug, Default, Clone, Copy)]
pub struct HttpProbe;

impl Probe for HttpProbe {
    fn probe<'a>(
        &'a self,
        target: &'a str,
        spec: &'a CheckSpec,
    ) -> Pin<Box<dyn Future<Output = ProbeResult> + Send + 'a>> {
        Box::pin(http_probe(target, spec, None))
    }

    fn probe_with<'a>(
        &'a self,
        target: &'a str,
        spec: &'a CheckSpec,
        spare: crate::fds::Lent,
    ) -> Pin<Box<dyn Future<Output = ProbeResult> + Send + 'a>> {
        Box::pin(http_probe(target, spec, Some(spare)))
    }
}

async fn http_probe(target: &str, spec: &CheckSpec, spare: Option<crate::fds::Lent>) -> ProbeResult {
    let started = Instant::now();
    let connecting = async {
        match spare {
            Some(s) => crate::net::connect_using(target, spec.source, s).await,
            None => crate::net::connect(target, spec.source)
                .await
                .map(|s| (s, None))
                .map_err(crate::net::SpareError::Connect),
        }
    };
    let connect = timeout_at(started + spec.timing.connect_timeout, connecting).await;
    let no_descriptor = |e: &dyn std::fmt::Display| {
        ProbeResult::fail(CheckCode::SockErr, started, format!("pgfront has no descriptor for the check: {e}"))
    };
    let stream = match connect {
        Err(_) => return ProbeResult::fail(CheckCode::L4Tout, started, "connect timeout"),
        // The spare could not be used (its family, the name, the source): no verdict.
        Ok(Err(crate::net::SpareError::Local(e))) => return no_descriptor(&e),
        // A failed lookup or connect while the process has no descriptor is its shortage.
        Ok(Err(crate::net::SpareError::Connect(e))) if crate::fds::is_exhaustion(&e) || crate::fds::short_now() => {
            return no_descriptor(&e);
        }
        Ok(Err(crate::net::SpareError::Connect(e))) => {
            return ProbeResult::fail(CheckCode::L4Con, started, e.to_string())
        }
        Ok(Ok(s)) => s,
    };
    let (stream, fallback) = stream;
    let peer = stream.peer_addr().ok();
    let mut result = handshake_and_ask(stream, target, spec, started).await;
    result.peer = peer;
    if let Some(at) = fallback {
        let why =
            format!("its name could not be looked up without a descriptor: checked at {at}, where checks last went");
        result.detail = if result.detail.is_empty() { why } else { format!("{} ({why})", result.detail) };
    }
    result
}

/// The TLS handshake, if any, and the HTTP exchange over a connected stream.
async fn handshake_and_ask(
    stream: tokio::net::TcpStream,
    target: &str,
    spec: &CheckSpec,
    started: Instant,
) -> ProbeResult {
    // HAProxy's `timeout check` bounds the handshake and the answer once connected.
    let deadline = Instant::now() + spec.timing.timeout;
    let Some(tls) = &spec.tls else {
        return answer(stream, target, spec, started, deadline, None).await;
    };
    let name = match tls.name_for(target) {
        Ok(n) => n,
        Err(e) => return ProbeResult::fail(CheckCode::L6Rsp, started, format!("no server name to check: {e}")),
    };
    match timeout_at(deadline, tls.connector().connect(name, stream)).await {
        Err(_) => ProbeResult::fail(CheckCode::L6Tout, started, "no complete TLS handshake in time"),
        Ok(Err(e)) => {
            let why = tls::tls_failure(&e).unwrap_or_else(|| format!("SSL handshake failure: {e}"));
            ProbeResult::fail(CheckCode::L6Rsp, started, why)
        }
        Ok(Ok(s)) => {
            let not_after = s.get_ref().1.peer_certificates().and_then(|c| c.first()).and_then(|c| tls::not_after(c));
            answer(s, target, spec, started, deadline, not_after).await
        }
    }
}

/// The HTTP exchange over an open connection, classified.
async fn answer<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    target: &str,
    spec: &CheckSpec,
    started: Instant,
    deadline: Instant,
    cert_not_after: Option<i64>,
) -> ProbeResult {
    let mut r = match timeout_at(deadline, exchange(&mut stream, target, spec)).await {
        Err(_) => ProbeResult::fail(CheckCode::L7Tout, started, "no complete answer in time"),
        Ok(Err((code, detail))) => ProbeResult::fail(code, started, detail),
        Ok(Ok((status, body))) => {
            let (code, detail) = if status == spec.expect {
                (CheckCode::L7Ok, String::new())
            } else if status == 401 && spec.auth.is_some() {
                (
                    CheckCode::L7Sts,
                    format!(
                        "status 401: the REST API refused user {:?}",
                        spec.auth.as_ref().map(|a| a.user.as_str()).unwrap_or_default()
                    ),
                )
            } else if status == 401 {
                (CheckCode::L7Sts, "status 401: the REST API wants credentials (check_auth)".to_owned())
            } else {
                (CheckCode::L7Sts, format!("status {status}, expected {}", spec.expect))
            };
            ProbeResult {
                code,
                status: Some(status),
                duration: started.elapsed(),
                detail,
                body,
                cert_not_after: None,
                peer: None,
            }
        }
    };
    r.cert_not_after = cert_not_after;
    r
}

type Exchange = Result<(u16, Option<Vec<u8>>), (CheckCode, String)>;

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S, target: &str, spec: &CheckSpec) -> Exchange {
    let auth = spec.auth.as_ref().map(|a| format!("Authorization: {}\r\n", a.header())).unwrap_or_default();
    let request = format!(
        "{} {} HTTP/1.0\r\nHost: {target}\r\nUser-Agent: pgfront/{}\r\n{auth}Connection: close\r\n\r\n",
        spec.method,
        spec.path,
        env!("CARGO_PKG_VERSION")
    );
    // A TLS alert after the handshake (a TLS 1.3 server refusing the client certificate)
    // arrives as a read error: it is the TLS layer's failure, not the HTTP answer's.
    let io = |e: std::io::Error| match tls::tls_failure(&e) {
        Some(why) => (CheckCode::L6Rsp, why),
        None => (CheckCode::L7Rsp, e.to_string()),
    };
    stream.write_all(request.as_bytes()).await.map_err(io)?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    let (status, head_len, content_length) = loop {
        let n = stream.read(&mut chunk).await.map_err(io)?;
        if n == 0 {
            return Err((CheckCode::L7Rsp, "connection closed before a complete status line and headers".into()));
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        match resp.parse(&buf) {
            Ok(httparse::Status::Complete(len)) => {
                let status = resp.code.unwrap_or(0);
                break (status, len, body_length(resp.headers).map_err(|why| (CheckCode::L7Rsp, why))?);
            }
            Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
                return Err((CheckCode::L7Rsp, format!("headers exceed {MAX_HEAD} bytes")));
            }
            Ok(httparse::Status::Partial) => {}
            Err(e) => return Err((CheckCode::L7Rsp, format!("not an HTTP answer: {e}"))),
        }
    };
    if spec.method != "GET" {
        return Ok((status, None));
    }
    // Patroni sends JSON without Content-Length and ends it by closing the connection.
    let mut body = buf.split_off(head_len);
    if content_length.is_some_and(|n| n > MAX_BODY) {
        return Err((CheckCode::L7Rsp, format!("body exceeds {MAX_BODY} bytes")));
    }
    let want = content_length.unwrap_or(MAX_BODY + 1);
    while body.len() < want {
        let n = match stream.read(&mut chunk).await {
            Ok(0) => break,
            Ok(n) => n,
            // Python's ssl servers (Patroni) close without TLS's close_notify; the body
            // ends there as it does in plain text (a cut JSON fails to parse later).
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(io(e)),
        };
        body.extend_from_slice(&chunk[..n]);
    }
    match content_length {
        // A body cut short is not the answer the server meant, whatever it parses as.
        Some(n) if body.len() < n => {
            return Err((CheckCode::L7Rsp, format!("connection closed after {} of {n} body bytes", body.len())));
        }
        // Bytes past the declared length are not part of this answer.
        Some(n) => body.truncate(n),
        None if body.len() > MAX_BODY => {
            return Err((CheckCode::L7Rsp, format!("body exceeds {MAX_BODY} bytes")));
        }
        None => {}
    }
    Ok((status, Some(body)))
}

/// The body's length as the headers declare it (None: it ends at the close, as Patroni's
/// does). Framing the body could be read two ways is refused, as RFC 9112 section 6.3
/// asks: a chunked body (no answer to an HTTP/1.0 request may have one), a Content-Length
/// that is not a number, and several that disagree.
fn body_length(headers: &[httparse::Header<'_>]) -> Result<Option<usize>, String> {
    if headers.iter().any(|h| h.name.eq_ignore_ascii_case("transfer-encoding")) {
        return Err("a Transfer-Encoding (chunked) body in an answer to an HTTP/1.0 request".into());
    }
    let mut length = None;
    for h in headers.iter().filter(|h| h.name.eq_ignore_ascii_case("content-length")) {
        let text = String::from_utf8_lossy(h.value);
        // Digits only: "+5" or " 5 5" are other numbers to other parsers.
        let n = Some(text.trim())
            .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|t| t.parse::<usize>().ok())
            .ok_or_else(|| format!("Content-Length {} is not a length", crate::pg::shown(&text)))?;
        if length.is_some_and(|l| l != n) {
            return Err("Content-Length given twice with different values".into());
        }
        length = Some(n);
    }
    Ok(length)
}
