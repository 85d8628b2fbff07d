//! One client session: read the opening, pick a server (waiting in the queue if none can
//! take it), connect with retries, hand over the opening, then copy until the session
//! ends. Every refusal made before a server is chosen is a PostgreSQL error the client can
//! print, and a server that answers "cannot connect now" (57P03: shutting down, starting
//! up) sends the session back to the queue instead of to the client.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{sleep, timeout, timeout_at, Instant};
use tokio_util::either::Either;

use super::copy::{self, End, Idle, Meters, Watch};
use super::keys::{self, KeySniffer};
use super::min_lsn::{self, BadLsn, Miss};
use super::{cancel, tweaks};
use crate::balance::{Ask, NoServer, Slot, Target};
use crate::cluster::{ListenerState, Server};
use crate::config::LogSessions;
use crate::pg::{self, sqlstate, Opening, Startup};
use crate::state::{Permit, Shared};
use crate::tls::{self, Rewind};

/// The largest first server message pgfront reads (an auth request or an error).
const MAX_FIRST_REPLY: usize = 64 * 1024;
/// How often a queued TLS client with unread data is looked at for a close.
const GONE_POLL: Duration = Duration::from_millis(250);
/// How long closing a cancel request's connection may take (a close_notify and a FIN).
const CANCEL_CLOSE: Duration = Duration::from_secs(1);
/// How long a session waits for a check to re-probe a server that was not ready.
const NOT_READY_PAUSE: Duration = Duration::from_millis(250);

/// Why a session was refused before reaching a server.
#[derive(Debug, thiserror::Error)]
enum Refusal {
    #[error("client sent nothing in time")]
    Silent,
    #[error("client closed before a server was reached")]
    Gone,
    #[error("{0}")]
    Garbage(#[from] pg::BadOpening),
    #[error("{0} (waited {1:?})")]
    Queue(NoServer, Duration),
    #[error("{0}")]
    BadLsn(#[from] BadLsn),
    /// `pgfront.target=replica` with `pgfront.min_lsn`: no replica replayed it in time.
    #[error("no replica replayed {lsn} within min_lsn_wait (waited {waited:?})", lsn = pg::format_lsn(*.0), waited = .1)]
    Behind(u64, Duration),
    #[error("could not connect to {server} ({address}): {error}")]
    Connect { server: String, address: String, error: String },
    /// The server answered but TLS with it failed (it refused TLS, or its certificate was
    /// not accepted): a configuration fault, not a failover, so it is not held.
    #[error("TLS with {server} ({address}) failed: {error}")]
    ServerTls { server: String, address: String, error: String },
    /// The server accepted an SSLRequest, and the client did not start a TLS handshake.
    #[error("expected a TLS handshake after the server accepted SSL")]
    NotTls,
    #[error("shutting down")]
    Stopping,
}

impl Refusal {
    fn as_label(&self) -> &'static str {
        match self {
            Refusal::Silent => "startup_timeout",
            Refusal::Gone => "client_gone",
            Refusal::Garbage(_) => "protocol_violation",
            Refusal::Queue(e, _) => e.as_label(),
            Refusal::BadLsn(_) => "invalid_parameter",
            Refusal::Behind(..) => "min_lsn_behind",
            Refusal::Connect { .. } => "connect_failed",
            Refusal::ServerTls { .. } => "server_tls",
            Refusal::NotTls => "protocol_violation",
            Refusal::Stopping => "stopping",
        }
    }

    /// The ErrorResponse the client is sent, if it can still read one.
    fn message(&self, listener: &str) -> Option<Vec<u8>> {
        let (code, text, hint) = match self {
            Refusal::Silent | Refusal::Gone => return None,
            Refusal::Garbage(e) => (sqlstate::PROTOCOL_VIOLATION, format!("pgfront: {e}"), None),
            Refusal::Queue(NoServer::NoneUp, waited) => (
                sqlstate::CANNOT_CONNECT_NOW,
                format!(
                    "pgfront: no server available for listener \"{listener}\" after waiting {:.1}s",
                    waited.as_secs_f64()
                ),
                Some("The cluster may be failing over; retry shortly."),
            ),
            Refusal::Queue(NoServer::NoLeader, waited) => (
                sqlstate::CANNOT_CONNECT_NOW,
                format!(
                    "pgfront: the session asked for the primary (pgfront.target=primary) and listener \"{listener}\" knows no leader after waiting {:.1}s",
                    waited.as_secs_f64()
                ),
                Some("The cluster may be failing over; retry shortly. The session is never sent to a replica instead."),
            ),
            Refusal::Queue(NoServer::Full, waited) => (
                sqlstate::TOO_MANY_CONNECTIONS,
                format!(
                    "pgfront: every server of listener \"{listener}\" is at maxconn (waited {:.1}s)",
                    waited.as_secs_f64()
                ),
                None,
            ),
            // Not reached: a session whose position no server reached waits, then goes on.
            Refusal::Queue(NoServer::Behind, waited) => (
                sqlstate::CANNOT_CONNECT_NOW,
                format!(
                    "pgfront: no server of listener \"{listener}\" has replayed the session's pgfront.min_lsn after waiting {:.1}s",
                    waited.as_secs_f64()
                ),
                None,
            ),
            Refusal::BadLsn(e) => (
                sqlstate::INVALID_PARAMETER_VALUE,
                format!("pgfront: {e}"),
                Some("pgfront.min_lsn is a WAL position as pg_current_wal_lsn() prints it, like 0/3000060."),
            ),
            Refusal::Behind(lsn, waited) => (
                sqlstate::CANNOT_CONNECT_NOW,
                format!(
                    "pgfront: no replica of listener \"{listener}\" has replayed pgfront.min_lsn={} after waiting {:.3}s",
                    pg::format_lsn(*lsn),
                    waited.as_secs_f64()
                ),
                Some("The session asked for replicas only (pgfront.target=replica), so it is not sent to the leader; retry, or ask for prefer-replica."),
            ),
            Refusal::Connect { .. } | Refusal::ServerTls { .. } => {
                (sqlstate::CONNECTION_FAILURE, format!("pgfront: {self}"), None)
            }
            Refusal::NotTls => (sqlstate::PROTOCOL_VIOLATION, format!("pgfront: {self}"), None),
            Refusal::Stopping => (sqlstate::CANNOT_CONNECT_NOW, "pgfront is shutting down".to_owned(), None),
        };
        Some(pg::fatal(code, &text, hint))
    }
}

/// What the client sent before a server was chosen, forwarded to it first.
struct Prelude {
    bytes: Vec<u8>,
    opening: Opening,
    /// The parsed StartupMessage of a plain-text client.
    startup: Option<Startup>,
}

/// The client's side of a session: plain TCP, or TLS that pgfront terminates.
/// TLS state is large (over a KiB) and boxed, so a plain-text session does not carry its
/// size for its whole life.
type ClientIo = Either<TcpStream, Box<tokio_rustls::server::TlsStream<Rewind<TcpStream>>>>;
/// The server's side: plain TCP, or TLS pgfront negotiated with PostgreSQL.
type ServerIo = Either<TcpStream, Box<tokio_rustls::client::TlsStream<TcpStream>>>;

/// Serves one accepted client to the end. The end of a graceful stop (`hard_stop_after`)
/// ends it in any phase: held in the queue, connecting, being refused, or copying.
pub async fn serve(
    shared: Arc<Shared>,
    listener: Arc<ListenerState>,
    client: TcpStream,
    peer: SocketAddr,
    permit: Permit,
) {
    // Reference counts, not copies: this runs for every new session.
    let (hard_stop, l) = (shared.tokens.sessions.clone(), Arc::clone(&listener));
    tokio::select! {
        biased;
        // Copying sessions see the same cancellation through their server's token and end
        // (and log) on their own; this arm ends the ones still before that.
        () = serve_until_end(shared, listener, client, peer, permit) => {}
        () = hard_stop.cancelled() => {
            tracing::info!(listener = %l.config.name, client = %peer, reason = "stopping", "session closed before reaching a server");
        }
    }
}

async fn serve_until_end(
    shared: Arc<Shared>,
    listener: Arc<ListenerState>,
    client: TcpStream,
    peer: SocketAddr,
    _permit: Permit,
) {
    let started = Instant::now();
    let name = listener.config.name.clone();
    if let Err(e) = tweaks::session(&client) {
        tracing::debug!(listener = %name, client = %peer, error = %e, "socket options");
    }
    // The startup phase's futures are boxed: their state (the TLS handshake, the parsed
    // opening, the connect) is freed when the phase ends, instead of sizing every
    // session's task for its whole life.
    let (mut client, prelude) = match Box::pin(open(client, &listener)).await {
        Ok(v) => v,
        Err((client, refusal)) => return Box::pin(refused(&listener, client, peer, started, refusal, None)).await,
    };
    if let Opening::CancelRequest { .. } = prelude.opening {
        cancel::forward(&shared, &listener, &prelude.bytes, peer).await;
        // Closed as PostgreSQL closes it: inside TLS with a close_notify first, without
        // which libpq 17+ (OpenSSL 3) reports the encrypted cancel as failed
        // ("unexpected eof while reading").
        let _ = timeout(CANCEL_CLOSE, client.shutdown()).await;
        return;
    }
    let target = target_of(&listener, prelude.startup.as_ref());
    let ask = match min_lsn::requested(&listener, prelude.startup.as_ref()) {
        Ok(lsn) => Ask::new(target, lsn),
        Err(e) => {
            return Box::pin(refused(&listener, Some(client), peer, started, e.into(), Some(&prelude.opening))).await
        }
    };
    let established = tokio::select! {
        r = Box::pin(establish(&shared, &listener, &prelude, ask, matches!(client, Either::Right(_)), peer)) => r,
        // A client that gives up while held in the queue must not later take a server slot.
        () = gone(&client) => Err(Refusal::Gone),
    };
    let (mut slot, mut upstream, reply) = match established {
        Ok(v) => v,
        Err(refusal) => {
            return Box::pin(refused(&listener, Some(client), peer, started, refusal, Some(&prelude.opening))).await
        }
    };
    let server = Arc::clone(slot.server());
    // The connect place is held until authentication ends where pgfront can see it
    // (ReadyForQuery); for an opaque session, until the server answered its opening.
    let readable = prelude.startup.is_some();
    let sent = prelude.bytes.len() as u64;
    // Nothing of the opening is needed any more: an idle session keeps none of it.
    drop(prelude);
    // An opaque session (TLS end to end) gives its place back now: the server has answered
    // its opening, and nothing later can be seen.
    let connecting: keys::Held = std::sync::Mutex::new(slot.take_connecting().filter(|_| readable));
    // A child of the server's token, itself a child of the process's session token: cut by
    // mark-down, by an operator, or by the end of a graceful stop. Taken with the slot.
    let token = slot.token().clone();
    let mut moved = copy::Moved { to_server: sent, to_client: 0 };
    server.stats.bytes_in.fetch_add(sent, Ordering::Relaxed);
    let written = async {
        client.write_all(&reply).await?;
        // The server accepted TLS for a client pgfront passes through: what the client sends
        // next must be a TLS handshake, within timeout_startup. Anything else would be
        // relayed to a server waiting for a handshake, and hang both until a timeout.
        if reply == b"S" && listener.config.tls.is_none() {
            let deadline = Instant::now() + listener.config.timeout_startup;
            let hello = tls_record_start(&mut client, deadline).await?;
            upstream.write_all(&hello).await?;
            moved.to_server += hello.len() as u64;
        }
        Ok::<_, std::io::Error>(())
    };
    let end = match Box::pin(written).await {
        Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
            drop((slot, upstream));
            return Box::pin(refused(&listener, Some(client), peer, started, Refusal::NotTls, None)).await;
        }
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
            drop((slot, upstream));
            return Box::pin(refused(&listener, Some(client), peer, started, Refusal::Silent, None)).await;
        }
        Err(e) => End::ClientError(e),
        Ok(()) => {
            moved.to_client = reply.len() as u64;
            server.stats.bytes_out.fetch_add(reply.len() as u64, Ordering::Relaxed);
            drop(reply);
            let meters = Meters { to_server: &server.stats.bytes_in, to_client: &server.stats.bytes_out };
            let idle = Idle { client: listener.config.timeout_client, server: listener.config.timeout_server };
            // The cancel key is readable when pgfront read the StartupMessage (plain text,
            // or TLS it terminated).
            let mut sniffer =
                readable.then(|| KeySniffer::new(&shared.cancel_keys, server.address.clone()).holding(&connecting));
            let held = Some((&connecting, listener.config.timeout_connect));
            let watch =
                Watch { meters, idle, cut: &token, term: slot.term(), sniffer: sniffer.as_mut(), connecting: held };
            let (end, m) = match (client, upstream) {
                (Either::Left(mut c), Either::Left(mut s)) => copy::bidirectional(&mut c, &mut s, watch).await,
                (mut c, mut s) => Box::pin(copy::bidirectional_io(&mut c, &mut s, watch)).await,
            };
            moved.to_server += m.to_server;
            moved.to_client += m.to_client;
            end
        }
    };
    // PostgreSQL ends sessions on its own only when something happens to it (shutdown,
    // demotion, crash, an administrator): look at the node now, not at the next interval.
    if matches!(end, End::ServerError(_) | End::ServerClosed) {
        server.check.kick();
    }
    if matches!(end, End::ServerError(_) | End::ServerClosed | End::Cut | End::LeaderChanged) {
        server.stats.ended_by_server.fetch_add(1, Ordering::Relaxed);
    }
    let log = match listener.config.log_sessions {
        LogSessions::All => true,
        LogSessions::Errors => !end.is_normal(),
        LogSessions::None => false,
    };
    if log {
        tracing::info!(listener = %name, server = %server.name, client = %peer, reason = end.as_label(),
            detail = %EndDetail(&end), duration_ms = started.elapsed().as_millis() as u64,
            bytes_to_server = moved.to_server, bytes_to_client = moved.to_client, "session closed");
    }
    drop(slot);
}

/// Reads the client's opening. On a listener that terminates TLS, an SSLRequest is
/// answered `S` and a direct-TLS ClientHello accepted, and the opening is read again inside
/// TLS; a GSSENCRequest is answered `N` (as poolers do). Elsewhere TLS passes through.
async fn open(
    mut client: TcpStream,
    listener: &ListenerState,
) -> Result<(ClientIo, Prelude), (Option<ClientIo>, Refusal)> {
    let deadline = Instant::now() + listener.config.timeout_startup;
    let Some(tls) = &listener.config.tls else {
        return match read_prelude(&mut client, deadline).await {
            Ok(p) => Ok((Either::Left(client), p)),
            Err(r) => Err((Some(Either::Left(client)), r)),
        };
    };
    let mut prelude = match read_prelude(&mut client, deadline).await {
        Ok(p) => p,
        Err(r) => return Err((Some(Either::Left(client)), r)),
    };
    // A client may ask for GSS encryption more than once; each gets "N" (bounded by the
    // startup deadline, since every request is a read).
    while prelude.opening == Opening::GssEncRequest {
        if client.write_all(b"N").await.is_err() {
            return Err((None, Refusal::Gone));
        }
        prelude = match read_prelude(&mut client, deadline).await {
            Ok(p) => p,
            Err(r) => return Err((Some(Either::Left(client)), r)),
        };
    }
    let prefix = match prelude.opening {
        Opening::SslRequest => {
            if client.write_all(b"S").await.is_err() {
                return Err((None, Refusal::Gone));
            }
            Vec::new()
        }
        // The eight bytes read belong to the ClientHello: hand them back to the handshake.
        Opening::DirectTls => prelude.bytes.clone(),
        _ => return Ok((Either::Left(client), prelude)),
    };
    let accepted = timeout_at(deadline, tls.context().acceptor.accept(Rewind::new(prefix, client))).await;
    let mut stream = match accepted {
        Ok(Ok(s)) => s,
        // The handshake failed or timed out: nothing readable can be sent; the socket closes.
        Ok(Err(_)) | Err(_) => return Err((None, Refusal::Gone)),
    };
    match read_prelude(&mut stream, deadline).await {
        Ok(p) if matches!(p.opening, Opening::Startup { .. } | Opening::CancelRequest { .. }) => {
            Ok((Either::Right(Box::new(stream)), p))
        }
        Ok(_) => Err((Some(Either::Right(Box::new(stream))), Refusal::Garbage(pg::BadOpening::Malformed))),
        Err(r) => Err((Some(Either::Right(Box::new(stream))), r)),
    }
}

/// Where a session goes: the client's `options=-c pgfront.target=...` where the listener
/// honours it, else the first route matching its user, database and application_name,
/// else the listener's default. Only readable startups (plain text, or TLS terminated here)
/// can ask; the rest get the default.
fn target_of(listener: &ListenerState, startup: Option<&Startup>) -> Target {
    let cfg = &listener.config;
    let Some(s) = startup else {
        return cfg.default_target;
    };
    if cfg.client_target {
        // `options='-c pgfront.target=...'` (libpq, JDBC, psycopg), or a startup parameter
        // of its own (asyncpg's server_settings), which PostgreSQL accepts just the same.
        if let Some(t) = s.setting("pgfront.target").and_then(|v| Target::parse(&v)) {
            return t;
        }
    }
    cfg.routes
        .iter()
        .find(|r| r.matches(s.get("user"), s.get("database"), s.get("application_name")))
        .map_or(cfg.default_target, |r| r.target)
}

async fn refused(
    listener: &ListenerState,
    client: Option<ClientIo>,
    peer: SocketAddr,
    started: Instant,
    refusal: Refusal,
    opening: Option<&Opening>,
) {
    listener.stats.refused.fetch_add(1, Ordering::Relaxed);
    if listener.config.log_sessions != LogSessions::None {
        tracing::info!(listener = %listener.config.name, client = %peer, reason = refusal.as_label(), detail = %refusal,
            duration_ms = started.elapsed().as_millis() as u64, "session refused");
    }
    if let (Some(mut client), Some(msg)) = (client, refusal.message(&listener.config.name)) {
        // Inside TLS, the opening that counts is the one read after the handshake.
        let opening = if matches!(client, Either::Right(_)) { None } else { opening };
        refuse(&mut client, &msg, opening, listener.config.timeout_startup).await;
    }
}

struct EndDetail<'a>(&'a End);

impl std::fmt::Display for EndDetail<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            End::ClientError(e) | End::ServerError(e) => write!(f, "{e}"),
            _ => Ok(()),
        }
    }
}

/// Completes when the client closes (or resets) while it should be waiting for an answer;
/// never completes if it sends more (a pipelining client), which is the server's business.
async fn gone(client: &ClientIo) {
    let mut b = [0u8; 1];
    match client {
        Either::Left(tcp) => match tcp.peek(&mut b).await {
            Ok(0) | Err(_) => {}
            Ok(_) => std::future::pending().await,
        },
        // Inside TLS a close arrives as a record (close_notify) before the FIN, so a peek
        // sees data; the socket's read-closed readiness (EPOLLRDHUP) tells the FIN itself.
        Either::Right(tls) => {
            let tcp = tls.get_ref().0.inner();
            loop {
                match tcp.ready(tokio::io::Interest::READABLE).await {
                    Ok(r) if r.is_read_closed() => return,
                    Ok(_) => sleep(GONE_POLL).await,
                    Err(_) => return,
                }
            }
        }
    }
}

/// Reads the client's opening: eight bytes, then the rest of a StartupMessage or a
/// CancelRequest (bounded by the 10000-byte limit and `timeout_startup`).
async fn read_prelude<S: AsyncRead + Unpin>(client: &mut S, deadline: Instant) -> Result<Prelude, Refusal> {
    let mut head = [0u8; 8];
    match timeout_at(deadline, client.read_exact(&mut head)).await {
        Err(_) => return Err(Refusal::Silent),
        Ok(Err(_)) => return Err(Refusal::Gone),
        Ok(Ok(_)) => {}
    }
    let opening = pg::classify(head)?;
    let mut bytes = head.to_vec();
    let rest = match opening {
        Opening::Startup { len, .. } | Opening::CancelRequest { len } => len as usize - 8,
        _ => 0,
    };
    if rest > 0 {
        bytes.resize(8 + rest, 0);
        match timeout_at(deadline, client.read_exact(&mut bytes[8..])).await {
            Err(_) => return Err(Refusal::Silent),
            Ok(Err(_)) => return Err(Refusal::Gone),
            Ok(Ok(_)) => {}
        }
    }
    let startup = match opening {
        Opening::Startup { .. } => Some(Startup::parse(&bytes)?),
        _ => None,
    };
    Ok(Prelude { bytes, opening, startup })
}

/// Connects a server and hands it the prelude. For a plain-text StartupMessage the
/// server's first message is read: "cannot connect now" (57P03) sends the session back to
/// the queue (and the node's check to an immediate re-probe) until the listener's hold
/// bound; anything else is returned to be forwarded to the client.
async fn establish(
    shared: &Shared,
    listener: &Arc<ListenerState>,
    prelude: &Prelude,
    mut ask: Ask,
    client_tls: bool,
    peer: SocketAddr,
) -> Result<(Slot, ServerIo, Vec<u8>), Refusal> {
    let cfg = &listener.config;
    let mut wait = min_lsn::Wait::begin(listener, &ask);
    // A wait for a replica's position comes first; the queue's own bound after it.
    let waits_for_position = if wait.is_some() { cfg.min_lsn_wait } else { Duration::ZERO };
    let hold_until = Instant::now() + waits_for_position + cfg.timeout_queue;
    loop {
        let (slot, stream) = connect(shared, listener, &mut ask, &mut wait, hold_until, peer).await?;
        let server = Arc::clone(slot.server());
        let first = async {
            let mut upstream = secure(stream, listener, &server.address).await?;
            upstream.write_all(&prelude.bytes).await?;
            if prelude.startup.is_none() {
                // Pass-through TLS: the server's one-byte answer to an SSLRequest tells
                // whether a TLS handshake must follow.
                let mut answer = Vec::new();
                if prelude.opening == Opening::SslRequest && cfg.tls.is_none() {
                    let mut b = [0u8; 1];
                    upstream.read_exact(&mut b).await?;
                    answer.push(b[0]);
                }
                return Ok((upstream, answer));
            }
            let reply = read_message(&mut upstream).await?;
            Ok::<_, FirstError>((upstream, reply))
        };
        let (upstream, mut reply) = match timeout(cfg.timeout_connect, first).await {
            Ok(Ok(v)) => v,
            Ok(Err(FirstError::Tls(error))) => {
                server.note_error(&format!("TLS: {error}"));
                server.check.kick();
                tracing::warn!(listener = %cfg.name, server = %server.name, error = %error, "TLS with the server failed");
                return Err(Refusal::ServerTls { server: server.name.clone(), address: server.address.clone(), error });
            }
            Ok(Err(FirstError::Io(e))) => {
                not_ready(&server, listener, &format!("handshake failed: {e}"));
                pause(listener, hold_until).await?;
                continue;
            }
            Err(_) => {
                not_ready(&server, listener, "no answer to the startup packet in time");
                pause(listener, hold_until).await?;
                continue;
            }
        };
        let cannot_connect_now =
            reply.first() == Some(&b'E') && pg::error_sqlstate(&reply[5..]) == Some(sqlstate::CANNOT_CONNECT_NOW);
        if cannot_connect_now && Instant::now() < hold_until {
            not_ready(&server, listener, "the server cannot accept sessions now (57P03)");
            drop((slot, upstream));
            pause(listener, hold_until).await?;
            continue;
        }
        if client_tls {
            // SCRAM channel binding ties the client's proof to the TLS certificate it sees,
            // which is pgfront's, not the server's: offering it would fail every login.
            pg::strip_channel_binding(&mut reply);
        }
        return Ok((slot, upstream, reply));
    }
}

/// Why a server that accepted the connection could not take the session.
#[derive(Debug)]
enum FirstError {
    /// TLS with it failed: it refused TLS, or its certificate or handshake was not
    /// accepted. Retrying will not help.
    Tls(String),
    /// Anything else (a reset, a close): it may be going down; the session is held.
    Io(std::io::Error),
}

impl From<std::io::Error> for FirstError {
    fn from(e: std::io::Error) -> Self {
        FirstError::Io(e)
    }
}

/// Negotiates TLS with PostgreSQL when the listener terminates TLS and says so.
async fn secure(mut stream: TcpStream, listener: &ListenerState, address: &str) -> Result<ServerIo, FirstError> {
    let Some(connector) = listener.config.tls.as_ref().and_then(|t| t.context().connector.clone()) else {
        return Ok(Either::Left(stream));
    };
    stream.write_all(&pg::ssl_request()).await?;
    let mut answer = [0u8; 1];
    stream.read_exact(&mut answer).await?;
    if answer[0] != b'S' {
        return Err(FirstError::Tls("the server does not accept TLS".into()));
    }
    let name = tls::server_name(address).map_err(|e| FirstError::Tls(e.to_string()))?;
    match connector.connect(name, stream).await {
        Ok(s) => Ok(Either::Right(Box::new(s))),
        // rustls reports handshake and certificate failures as InvalidData.
        Err(e) if e.kind() == std::io::ErrorKind::InvalidData => Err(FirstError::Tls(e.to_string())),
        Err(e) => Err(FirstError::Io(e)),
    }
}

/// Reads the first bytes a client sends after the server accepted its SSLRequest: they
/// must open a TLS handshake record (content type 22, version 3.x). Returns them to be
/// forwarded; `InvalidData` when they are something else, `TimedOut` past `deadline`.
async fn tls_record_start<S: AsyncRead + Unpin>(client: &mut S, deadline: Instant) -> std::io::Result<Vec<u8>> {
    let mut head = [0u8; 3];
    match timeout_at(deadline, client.read_exact(&mut head)).await {
        Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
        Ok(Err(e)) => Err(e),
        Ok(Ok(_)) if head[0] == pg::TLS_HANDSHAKE && head[1] == 3 && head[2] <= 4 => Ok(head.to_vec()),
        Ok(Ok(_)) => Err(std::io::ErrorKind::InvalidData.into()),
    }
}

/// A server that accepted the connection but could not take the session.
fn not_ready(server: &Server, listener: &ListenerState, why: &str) {
    server.stats.conn_errors.fetch_add(1, Ordering::Relaxed);
    server.check.kick();
    tracing::info!(listener = %listener.config.name, server = %server.name, why, "server not ready; session held");
}

/// Waits for a change on the listener (a server up, a slot freed) or a short pause, within
/// the hold bound.
async fn pause(listener: &ListenerState, hold_until: Instant) -> Result<(), Refusal> {
    let now = Instant::now();
    if now >= hold_until {
        return Err(Refusal::Queue(NoServer::NoneUp, listener.config.timeout_queue));
    }
    let wake = listener.queue.changed.notified();
    let _ = timeout_at((now + NOT_READY_PAUSE).min(hold_until), wake).await;
    Ok(())
}

/// Reads one backend message (type, length, body), bounded in size.
async fn read_message<S: AsyncRead + Unpin>(s: &mut S) -> std::io::Result<Vec<u8>> {
    let mut head = [0u8; 5];
    s.read_exact(&mut head).await?;
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    if !(4..=MAX_FIRST_REPLY).contains(&len) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("first server message of {len} bytes"),
        ));
    }
    let mut msg = head.to_vec();
    msg.resize(1 + len, 0);
    s.read_exact(&mut msg[5..]).await?;
    Ok(msg)
}

/// Picks a server and connects, retrying failed connects up to `retries` times, on
/// another server where the balance allows. While the hold bound lasts, exhausted retries
/// send the session back to the queue rather than to the client: a leader that refuses
/// connections is about to be replaced.
async fn connect(
    shared: &Shared,
    listener: &Arc<ListenerState>,
    ask: &mut Ask,
    wait: &mut Option<min_lsn::Wait>,
    hold_until: Instant,
    peer: SocketAddr,
) -> Result<(Slot, TcpStream), Refusal> {
    let cfg = &listener.config;
    let mut avoid: Vec<usize> = Vec::new();
    let mut failed: Option<Arc<Server>> = None;
    let mut attempts = 0;
    let queued_at = Instant::now();
    loop {
        let slot = tokio::select! {
            r = min_lsn::acquire(listener, &avoid, ask, wait, hold_until, peer) => r.map_err(|m| match m {
                Miss::Queue(e) => Refusal::Queue(e, queued_at.elapsed()),
                Miss::Behind { lsn } => Refusal::Behind(lsn, queued_at.elapsed()),
            })?,
            () = shared.tokens.accept.cancelled() => return Err(Refusal::Stopping),
        };
        let server = Arc::clone(slot.server());
        if let Some(prev) = failed.take() {
            if prev.node != server.node {
                prev.stats.redispatches.fetch_add(1, Ordering::Relaxed);
            }
        }
        let error = match timeout(cfg.timeout_connect, crate::net::connect(&server.address, server.source)).await {
            Ok(Ok(stream)) => {
                // The server may have been marked down between the pick and now; its
                // sessions were cut then, so this one must not slip through. Try the others,
                // without spinning, within the hold bound.
                if !slot.eligible() {
                    avoid.push(server.node);
                    drop((slot, stream));
                    pause(listener, hold_until)
                        .await
                        .map_err(|_| Refusal::Queue(NoServer::NoneUp, queued_at.elapsed()))?;
                    continue;
                }
                let _ = tweaks::session(&stream);
                return Ok((slot, stream));
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("connect timeout after {:?}", cfg.timeout_connect),
        };
        attempts += 1;
        server.stats.conn_errors.fetch_add(1, Ordering::Relaxed);
        server.check.kick();
        tracing::warn!(listener = %cfg.name, server = %server.name, error = %error, attempt = attempts, "connect failed");
        drop(slot);
        if attempts > cfg.retries {
            let refusal = || Refusal::Connect { server: server.name.clone(), address: server.address.clone(), error };
            if Instant::now() + NOT_READY_PAUSE >= hold_until {
                return Err(refusal());
            }
            // Hold: wait for the checks to catch up, then start over.
            pause(listener, hold_until).await.map_err(|_| refusal())?;
            attempts = 0;
            avoid.clear();
            continue;
        }
        server.stats.retries.fetch_add(1, Ordering::Relaxed);
        let alternative = listener.servers.iter().any(|s| s.node != server.node && s.is_up());
        if !alternative {
            // HAProxy waits about min(timeout connect, 1s) before retrying the same server.
            sleep(cfg.timeout_connect.min(Duration::from_secs(1))).await;
        }
        avoid.push(server.node);
        failed = Some(server);
    }
}

/// Sends a PostgreSQL error and closes without resetting. A client that opened with an
/// SSLRequest or GSSENCRequest is first told "no encryption" and its StartupMessage read,
/// because libpq does not show an error sent in answer to the request itself; the client's
/// unread bytes are drained briefly so the kernel does not reset before the error is read.
async fn refuse<S: AsyncRead + AsyncWrite + Unpin>(
    client: &mut S,
    message: &[u8],
    opening: Option<&Opening>,
    limit: Duration,
) {
    let _ = timeout(limit.min(Duration::from_secs(5)), async {
        if matches!(opening, Some(Opening::SslRequest | Opening::GssEncRequest)) {
            client.write_all(b"N").await?;
            // A client that insists on encryption closes here; one that falls back sends its
            // StartupMessage in plain text, then reads the error.
            let mut len = [0u8; 4];
            client.read_exact(&mut len).await?;
            let n = u32::from_be_bytes(len).clamp(4, pg::MAX_STARTUP_PACKET) as usize - 4;
            let mut rest = vec![0u8; n];
            client.read_exact(&mut rest).await?;
        }
        client.write_all(message).await?;
        client.shutdown().await?;
        let mut sink = [0u8; 1024];
        while client.read(&mut sink).await? > 0 {}
        Ok::<_, std::io::Error>(())
    })
    .await;
}
