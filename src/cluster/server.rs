//! A server: one node as seen by one listener (HAProxy's `server` line inside a backend).
//! It owns the counters (sessions against `maxconn` among them) and the cancellation token
//! that cuts its sessions on mark-down.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

use super::check::Check;

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
    /// Sessions open here that were sent to the leader as such (`fallback_to_leader`,
    /// `pgfront.target=primary`): they end with its leadership term, not when this
    /// listener's own check (a replica check, on a reads port) marks the node DOWN.
    pub on_term: AtomicUsize,
    /// Sessions that ended other than by their client: the server closed or failed, or
    /// pgfront cut them. A failover's "cut" is this on the old leader.
    pub ended_by_server: AtomicU64,
    /// Armed when the node becomes the leader: the next session sent here records when,
    /// for the failover's "time to first session". One relaxed load per session otherwise.
    pub first_armed: std::sync::atomic::AtomicBool,
    pub first_session: Mutex<Option<tokio::time::Instant>>,
    /// Sessions connecting now (connect, TLS, authentication), bounded per listener by
    /// `max_connecting` so a server that just became eligible is not handed the whole
    /// queue's handshakes at once.
    pub connecting: AtomicUsize,
    /// The last connect or handshake failure that was the server's doing, and when: shown
    /// on the stats page next to the error count.
    pub last_error: Mutex<Option<(std::time::SystemTime, String)>>,
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
    /// The same for sessions sent to the leader as such (see `ServerStats::on_term`): cut
    /// by an operator, never by a mark-down.
    leader_sessions: Arc<Mutex<CancellationToken>>,
    parent: CancellationToken,
    /// 0 ready, 1 drain, 2 maint.
    admin: Arc<AtomicU8>,
    /// A discovered member that left Patroni's member list while holding sessions: no new
    /// sessions; its check still runs, so a failure cuts what it holds (see `config::Origin`).
    pub leaving: bool,
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
            leader_sessions: Arc::new(Mutex::new(parent.child_token())),
            parent: parent.clone(),
            admin: Arc::new(AtomicU8::new(0)),
            leaving: false,
        }
    }

    /// The same server (listener and node) rebuilt by a reload with another check,
    /// address or maxconn: its open sessions stay reachable by mark-down and operator cuts,
    /// and its counters (sessions open against maxconn among them) continue.
    pub fn succeed(
        old: &Server,
        node: usize,
        name: String,
        address: String,
        source: Option<IpAddr>,
        maxconn: usize,
        check: Arc<Check>,
    ) -> Server {
        Server {
            node,
            name,
            address,
            source,
            maxconn,
            check,
            stats: Arc::clone(&old.stats),
            sessions: Arc::clone(&old.sessions),
            leader_sessions: Arc::clone(&old.leader_sessions),
            parent: old.parent.clone(),
            admin: Arc::clone(&old.admin),
            leaving: false,
        }
    }

    /// The server marked as leaving (or not).
    pub fn with_leaving(mut self, leaving: bool) -> Server {
        self.leaving = leaving;
        self
    }

    /// Whether the operator's setting lets new sessions here (and the member has not left).
    pub fn accepts(&self) -> bool {
        self.admin() == AdminState::Ready && !self.leaving
    }

    /// Whether new sessions may be sent here.
    pub fn is_up(&self) -> bool {
        self.accepts() && self.check.is_up()
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

    /// The token a new session selects on; cancelled when the server's sessions are cut.
    pub fn session_token(&self) -> CancellationToken {
        // The server's token itself, not a child: nothing cancels one session alone, and a
        // child would cost every session an allocation and a lock on the parent.
        self.lock().clone()
    }

    /// The token of a session sent here as the leader (see `ServerStats::on_term`).
    pub fn leader_session_token(&self) -> CancellationToken {
        self.leader_sessions.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Closes the sessions this server's check governs (a mark-down with shutdown-sessions):
    /// every one but those sent here as the leader, which end with its term. Later
    /// sessions get a fresh token.
    pub fn cut_sessions(&self) -> usize {
        let (old, n) = {
            let mut token = self.lock();
            // Counted before the cut: the sessions it wakes leave `cur` on other threads at
            // once, and a count after it missed them (the log's sessions_cut, the killed
            // counter and the failover panel said 0 or 1 for 2 cut).
            let n = self.stats.cur.load(Ordering::Relaxed).saturating_sub(self.stats.on_term.load(Ordering::Relaxed));
            (std::mem::replace(&mut *token, self.parent.child_token()), n)
        };
        old.cancel();
        self.stats.killed.fetch_add(n as u64, Ordering::Relaxed);
        n
    }

    /// Closes every session on this server, those sent to it as the leader too (an
    /// operator's shutdown or kill-sessions).
    pub fn cut_all_sessions(&self) -> usize {
        let (old, on_term) = {
            let mut token = self.leader_sessions.lock().unwrap_or_else(|p| p.into_inner());
            let n = self.stats.on_term.load(Ordering::Relaxed);
            (std::mem::replace(&mut *token, self.parent.child_token()), n)
        };
        old.cancel();
        self.stats.killed.fetch_add(on_term as u64, Ordering::Relaxed);
        on_term + self.cut_sessions()
    }

    /// The next session sent here records its time in `first_session` (cleared now).
    pub fn arm_first_session(&self) {
        *self.stats.first_session.lock().unwrap_or_else(|p| p.into_inner()) = None;
        self.stats.first_armed.store(true, Ordering::Release);
    }

    /// When the first session since [`Server::arm_first_session`] was sent here.
    pub fn first_session(&self) -> Option<tokio::time::Instant> {
        *self.stats.first_session.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a failure that was the server's doing (it answered but could not be spoken to).
    pub fn note_error(&self, error: &str) {
        self.stats.conn_errors.fetch_add(1, Ordering::Relaxed);
        *self.stats.last_error.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((std::time::SystemTime::now(), error.to_owned()));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CancellationToken> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::sync::atomic::Ordering;
    use std::sync::Arc;
    use std::task::{Context, Wake, Waker};

    /// A session waiting on its token that leaves the server's count as soon as it is woken,
    /// as a session on another worker thread may, before `cut_sessions` goes on.
    struct Leaves(Arc<super::ServerStats>);

    impl Wake for Leaves {
        fn wake(self: Arc<Self>) {
            self.0.cur.fetch_sub(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn sessions_cut_are_counted_before_they_leave() {
        let text = "[[node]]\nname = \"n\"\naddress = \"127.0.0.1:1\"\n[[listener]]\nname = \"l\"\nbind = \"127.0.0.1:0\"\ncheck = { path = \"/replica\" }\n";
        let config = crate::config::Config::parse(std::path::Path::new("t.toml"), text).unwrap();
        let rt = crate::cluster::Runtime::build(Arc::new(config), &tokio_util::sync::CancellationToken::new());
        let server = &rt.listeners[0].servers[0];
        let tokens: Vec<_> = (0..2).map(|_| server.session_token()).collect();
        let mut waits: Vec<_> = tokens.iter().map(|t| Box::pin(t.cancelled())).collect();
        for w in &mut waits {
            server.stats.cur.fetch_add(1, Ordering::Relaxed);
            let waker = Waker::from(Arc::new(Leaves(Arc::clone(&server.stats))));
            assert!(w.as_mut().poll(&mut Context::from_waker(&waker)).is_pending());
        }
        // Failed before: 0, the two sessions had left by the time they were counted.
        assert_eq!(server.cut_sessions(), 2);
        assert_eq!(server.stats.killed.load(Ordering::Relaxed), 2);
        assert_eq!(server.stats.cur.load(Ordering::Relaxed), 0);
    }
}
