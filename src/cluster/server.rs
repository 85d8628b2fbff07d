//! A server: one node as seen by one listener (HAProxy's `server` line inside a backend).
//! It owns the per-server session limit, the counters, and the cancellation token that
//! cuts its sessions on mark-down.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::check::Check;
use super::node::Leadership;

/// Counters every view reads (stats page, CSV, JSON, Prometheus): atomics, no locks on
/// the data path.
#[derive(Debug, Default)]
pub struct ServerStats {
    /// Sessions open now (HAProxy `scur`).
    pub cur: AtomicUsize,
    /// Highest `cur` seen (`smax`).
    pub max: AtomicUsize,
    /// Sessions ever routed here (`stot`).
    pub total: AtomicU64,
    /// Bytes from clients to this server (`bin`).
    pub bytes_in: AtomicU64,
    /// Bytes from this server to clients (`bout`).
    pub bytes_out: AtomicU64,
    /// Failed connects (`econ`).
    pub conn_errors: AtomicU64,
    /// Connect retries on this server (`wretr`).
    pub retries: AtomicU64,
    /// Sessions moved to another server after a failed connect here (`wredis`).
    pub redispatches: AtomicU64,
    /// Sessions closed by mark-down (shutdown-sessions).
    pub killed: AtomicU64,
}

/// An operator's setting for a server, as HAProxy's `set server ... state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminState {
    /// Takes sessions when its check admits it.
    Ready,
    /// No new sessions; open ones stay.
    Drain,
    /// No new sessions, and its check results are ignored for routing.
    Maint,
}

impl AdminState {
    pub fn as_str(self) -> &'static str {
        match self {
            AdminState::Ready => "READY",
            AdminState::Drain => "DRAIN",
            AdminState::Maint => "MAINT",
        }
    }
}

#[derive(Debug)]
pub struct Server {
    /// Index of the node in the configuration.
    pub node: usize,
    pub name: String,
    /// PostgreSQL's address, `host:port`.
    pub address: String,
    /// The local address connections to this server leave from (`source`).
    pub source: Option<IpAddr>,
    pub maxconn: usize,
    pub check: Arc<Check>,
    /// Shared with the server this one replaced on a reload, so sessions, counters and the
    /// operator's setting carry over when only its check or maxconn changed.
    pub stats: Arc<ServerStats>,
    /// Parent of every session token of this server; replaced by a fresh child of
    /// `parent` each time the server's sessions are cut.
    sessions: Arc<Mutex<CancellationToken>>,
    parent: CancellationToken,
    /// 0 ready, 1 drain, 2 maint.
    admin: Arc<AtomicU8>,
}

impl Server {
    pub fn new(
        node: usize,
        name: String,
        address: String,
        source: Option<IpAddr>,
        maxconn: usize,
        check: Arc<Check>,
        parent: &CancellationToken,
    ) -> Server {
        Server {
            node,
            name,
            address,
            source,
            maxconn,
            check,
            stats: Arc::default(),
            sessions: Arc::new(Mutex::new(parent.child_token())),
            parent: parent.clone(),
            admin: Arc::new(AtomicU8::new(0)),
        }
    }

    /// The same server (listener and node) rebuilt by a reload with another check,
    /// address or maxconn: its open sessions stay reachable by mark-down and operator cuts,
    /// and its counters (sessions open against maxconn among them) continue.
    pub fn succeed(
        old: &Server,
        node: usize,
        address: String,
        source: Option<IpAddr>,
        maxconn: usize,
        check: Arc<Check>,
    ) -> Server {
        Server {
            node,
            name: old.name.clone(),
            address,
            source,
            maxconn,
            check,
            stats: Arc::clone(&old.stats),
            sessions: Arc::clone(&old.sessions),
            parent: old.parent.clone(),
            admin: Arc::clone(&old.admin),
        }
    }

    /// Whether new sessions may be sent here.
    pub fn is_up(&self) -> bool {
        self.admin() == AdminState::Ready && self.check.is_up()
    }

    pub fn admin(&self) -> AdminState {
        match self.admin.load(Ordering::Acquire) {
            0 => AdminState::Ready,
            1 => AdminState::Drain,
            _ => AdminState::Maint,
        }
    }

    pub fn set_admin(&self, state: AdminState) {
        let v = match state {
            AdminState::Ready => 0,
            AdminState::Drain => 1,
            AdminState::Maint => 2,
        };
        self.admin.store(v, Ordering::Release);
    }

    /// Takes a session slot if the server is below maxconn.
    pub fn try_acquire(self: &Arc<Self>, wake: &Arc<Notify>) -> Option<Slot> {
        let cur = &self.stats.cur;
        let mut n = cur.load(Ordering::Relaxed);
        loop {
            if n >= self.maxconn {
                return None;
            }
            match cur.compare_exchange_weak(n, n + 1, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => break,
                Err(actual) => n = actual,
            }
        }
        self.stats.max.fetch_max(n + 1, Ordering::Relaxed);
        self.stats.total.fetch_add(1, Ordering::Relaxed);
        // The session token is taken with the slot, before any eligibility check: a cut
        // that lands after this cancels it, and one that landed before has already
        // cleared the server's admission, so no session slips between the two.
        Some(Slot {
            server: Arc::clone(self),
            wake: Arc::clone(wake),
            fallback: None,
            token: self.session_token(),
            term: None,
        })
    }

    /// The token a new session selects on; cancelled when the server's sessions are cut.
    pub fn session_token(&self) -> CancellationToken {
        self.lock().child_token()
    }

    /// Closes every session on this server (mark-down with shutdown-sessions, admin action).
    /// Later sessions get a fresh token.
    pub fn cut_sessions(&self) -> usize {
        let old = std::mem::replace(&mut *self.lock(), self.parent.child_token());
        old.cancel();
        let n = self.stats.cur.load(Ordering::Relaxed);
        self.stats.killed.fetch_add(n as u64, Ordering::Relaxed);
        n
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CancellationToken> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A held session slot on a server; dropping it frees the slot and wakes queued sessions.
#[derive(Debug)]
pub struct Slot {
    server: Arc<Server>,
    wake: Arc<Notify>,
    /// Set when the server was chosen only because it leads (`fallback_to_leader`).
    fallback: Option<Arc<Leadership>>,
    /// The session's token: cancelled when the server's sessions are cut.
    token: CancellationToken,
    /// For a session sent to the leader: cancelled when leadership moves on.
    term: Option<CancellationToken>,
}

impl Slot {
    pub fn server(&self) -> &Arc<Server> {
        &self.server
    }

    /// Marks the slot as a fallback to the leader.
    pub(crate) fn into_fallback(mut self, leadership: &Arc<Leadership>) -> Slot {
        self.term = Some(leadership.term_token());
        self.fallback = Some(Arc::clone(leadership));
        self
    }

    /// The token the session selects on.
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }

    /// For a session that went to the leader without the listener's check admitting it:
    /// the token of the current leadership term, cancelled when the leader changes.
    pub fn term(&self) -> Option<&CancellationToken> {
        self.term.as_ref()
    }

    /// Whether the server may still take this session: admitted by its check, or, for a
    /// fallback, still the leader.
    pub fn eligible(&self) -> bool {
        match &self.fallback {
            Some(l) => l.leader() == Some(self.server.node) && self.server.admin() == AdminState::Ready,
            None => self.server.is_up(),
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.server.stats.cur.fetch_sub(1, Ordering::AcqRel);
        self.wake.notify_waiters();
    }
}
