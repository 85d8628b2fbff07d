//! One client session: read the opening packet, pick a server (waiting in the queue if
//! none can take it), connect with retries, then copy until the session ends. Every
//! refusal made before a server is chosen is a PostgreSQL error the client can print.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{sleep, timeout, Instant};

use super::copy::{self, End, Idle, Meters};
use super::tweaks;
use crate::balance::{self, NoServer};
use crate::cluster::{ListenerState, Server, Slot};
use crate::pg::{self, sqlstate};
use crate::state::Shared;

/// Why a session was refused before reaching a server.
#[derive(Debug, thiserror::Error)]
enum Refusal {
    #[error("client sent nothing in time")]
    Silent,
    #[error("client closed before its first packet")]
    Gone,
    #[error("{0}")]
    Garbage(#[from] pg::BadOpening),
    #[error("{0} (waited {1:?})")]
    Queue(NoServer, Duration),
    #[error("could not connect to {server} ({address}): {error}")]
    Connect { server: String, address: String, error: String },
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
            Refusal::Connect { .. } => "connect_failed",
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
            Refusal::Queue(NoServer::Full, waited) => (
                sqlstate::TOO_MANY_CONNECTIONS,
                format!(
                    "pgfront: every server of listener \"{listener}\" is at maxconn (waited {:.1}s)",
                    waited.as_secs_f64()
                ),
                None,
            ),
            Refusal::Connect { .. } => (sqlstate::CONNECTION_FAILURE, format!("pgfront: {self}"), None),
            Refusal::Stopping => (sqlstate::CANNOT_CONNECT_NOW, "pgfront is shutting down".to_owned(), None),
        };
        Some(pg::fatal(code, &text, hint))
    }
}

/// Serves one accepted client to the end.
pub async fn serve(
    shared: Arc<Shared>,
    listener: Arc<ListenerState>,
    mut client: TcpStream,
    peer: SocketAddr,
    _permit: OwnedSemaphorePermit,
) {
    let started = Instant::now();
    let name = listener.config.name.clone();
    if let Err(e) = tweaks::session(&client) {
        tracing::debug!(listener = %name, client = %peer, error = %e, "socket options");
    }
    let result = async {
        let head = opening(&mut client, listener.config.timeout_startup).await?;
        let (slot, server) = connect(&shared, &listener).await?;
        Ok::<_, Refusal>((head, slot, server))
    }
    .await;
    let (head, slot, mut upstream) = match result {
        Ok(v) => v,
        Err(refusal) => {
            listener.stats.refused.fetch_add(1, Ordering::Relaxed);
            tracing::info!(listener = %name, client = %peer, reason = refusal.as_label(), detail = %refusal,
                duration_ms = started.elapsed().as_millis() as u64, "session refused");
            if let Some(msg) = refusal.message(&name) {
                refuse(&mut client, &msg).await;
            }
            return;
        }
    };
    let server = Arc::clone(slot.server());
    // A child of the server's token, itself a child of the process's session token: cut by
    // mark-down, by an operator, or by the end of a graceful stop.
    let token = server.session_token();
    let mut moved = copy::Moved::default();
    let end = match upstream.write_all(&head).await {
        Err(e) => End::ServerError(e),
        Ok(()) => {
            moved.to_server = head.len() as u64;
            server.stats.bytes_in.fetch_add(head.len() as u64, Ordering::Relaxed);
            let meters = Meters { to_server: &server.stats.bytes_in, to_client: &server.stats.bytes_out };
            let idle = Idle { client: listener.config.timeout_client, server: listener.config.timeout_server };
            let (end, m) = copy::bidirectional(&mut client, &mut upstream, meters, idle, &token).await;
            moved.to_server += m.to_server;
            moved.to_client += m.to_client;
            end
        }
    };
    if matches!(end, End::ServerError(_)) {
        server.check.kick();
    }
    tracing::info!(listener = %name, server = %server.name, client = %peer, reason = end.as_label(),
        detail = %EndDetail(&end), duration_ms = started.elapsed().as_millis() as u64,
        bytes_to_server = moved.to_server, bytes_to_client = moved.to_client, "session closed");
    drop(slot);
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

/// Reads and checks the client's first eight bytes; they are forwarded to the server first.
async fn opening(client: &mut TcpStream, limit: Duration) -> Result<[u8; 8], Refusal> {
    let mut head = [0u8; 8];
    match timeout(limit, client.read_exact(&mut head)).await {
        Err(_) => Err(Refusal::Silent),
        Ok(Err(_)) => Err(Refusal::Gone),
        Ok(Ok(_)) => {
            pg::classify(head)?;
            Ok(head)
        }
    }
}

/// Picks a server and connects, retrying failed connects up to `retries` times, on
/// another server where the balance allows.
async fn connect(shared: &Shared, listener: &Arc<ListenerState>) -> Result<(Slot, TcpStream), Refusal> {
    let cfg = &listener.config;
    let mut avoid: Vec<usize> = Vec::new();
    let mut failed: Option<Arc<Server>> = None;
    let mut retries = 0;
    loop {
        let queued_at = Instant::now();
        let slot = tokio::select! {
            r = balance::acquire(listener, &avoid, queued_at + cfg.timeout_queue) => r.map_err(|e| Refusal::Queue(e, queued_at.elapsed()))?,
            () = shared.tokens.accept.cancelled(), if !shared.tokens.accept.is_cancelled() => return Err(Refusal::Stopping),
        };
        let server = Arc::clone(slot.server());
        if let Some(prev) = failed.take() {
            if prev.node != server.node {
                prev.stats.redispatches.fetch_add(1, Ordering::Relaxed);
            }
        }
        let error = match timeout(cfg.timeout_connect, TcpStream::connect(&server.address)).await {
            Ok(Ok(stream)) => {
                // The server may have been marked down between the pick and now; its
                // sessions were cut then, so this one must not slip through.
                if !slot.eligible() {
                    continue;
                }
                let _ = tweaks::session(&stream);
                return Ok((slot, stream));
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("connect timeout after {:?}", cfg.timeout_connect),
        };
        server.stats.conn_errors.fetch_add(1, Ordering::Relaxed);
        server.check.kick();
        tracing::warn!(listener = %cfg.name, server = %server.name, error = %error, retry = retries + 1, "connect failed");
        if retries >= cfg.retries {
            return Err(Refusal::Connect { server: server.name.clone(), address: server.address.clone(), error });
        }
        retries += 1;
        server.stats.retries.fetch_add(1, Ordering::Relaxed);
        drop(slot);
        let alternative = listener.servers.iter().any(|s| s.node != server.node && s.is_up());
        if !alternative {
            // HAProxy waits about min(timeout connect, 1s) before retrying the same server.
            sleep(cfg.timeout_connect.min(Duration::from_secs(1))).await;
        }
        avoid.push(server.node);
        failed = Some(server);
    }
}

/// Sends a PostgreSQL error and closes without resetting: the client's unread bytes are
/// drained briefly so the kernel does not answer them with RST before the error is read.
async fn refuse(client: &mut TcpStream, message: &[u8]) {
    let _ = timeout(Duration::from_secs(2), async {
        let _ = client.write_all(message).await;
        let _ = client.shutdown().await;
        let mut sink = [0u8; 1024];
        while let Ok(n) = client.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}
