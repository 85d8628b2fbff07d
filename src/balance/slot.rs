//! A session's place on a server: counted against the server's `maxconn` (and, while the
//! session is still connecting, against the listener's `max_connecting`), released when
//! dropped, which hands the place to the next session in the listener's queue.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::Queue;
use crate::cluster::{Leadership, Server};

/// A held session slot on a server; dropping it frees the slot and serves the queue.
#[derive(Debug)]
pub struct Slot {
    server: Arc<Server>,
    queue: Arc<Queue>,
    /// Set when the server was chosen only because it leads (`fallback_to_leader`).
    fallback: Option<Arc<Leadership>>,
    /// The session's token: cancelled when the server's sessions are cut.
    token: CancellationToken,
    /// For a session sent to the leader: cancelled when leadership moves on.
    term: Option<CancellationToken>,
    /// The session's place among the server's connects in flight, until it is established.
    connecting: Option<Connecting>,
}

/// One connect in flight to a server (connect, TLS, authentication). A server that has
/// just been promoted and is handed every held session at once spends its first second in
/// handshakes; bounding them lets the first sessions complete at once. Dropping it lets
/// the next queued session connect.
#[derive(Debug)]
pub struct Connecting {
    server: Arc<Server>,
    queue: Arc<Queue>,
    /// Serve the queue when released (not when the slot around it is released anyway).
    serve: bool,
}

impl Drop for Connecting {
    fn drop(&mut self) {
        self.server.stats.connecting.fetch_sub(1, Ordering::AcqRel);
        if self.serve {
            self.queue.dispatch();
        }
    }
}

/// Takes a session slot on `server` if it is below its maxconn and below
/// `max_connecting` connects in flight.
pub fn try_acquire(server: &Arc<Server>, queue: &Arc<Queue>, max_connecting: usize) -> Option<Slot> {
    let stats = &server.stats;
    let mut c = stats.connecting.load(Ordering::Relaxed);
    loop {
        if c >= max_connecting {
            return None;
        }
        match stats.connecting.compare_exchange_weak(c, c + 1, Ordering::AcqRel, Ordering::Relaxed) {
            Ok(_) => break,
            Err(actual) => c = actual,
        }
    }
    let connecting = Connecting { server: Arc::clone(server), queue: Arc::clone(queue), serve: true };
    let cur = &stats.cur;
    let mut n = cur.load(Ordering::Relaxed);
    loop {
        if n >= server.maxconn {
            // Give the connect place back; a waiter refused it meanwhile may take it now
            // (from inside a dispatch this only asks that dispatch for another pass).
            drop(connecting);
            return None;
        }
        match cur.compare_exchange_weak(n, n + 1, Ordering::AcqRel, Ordering::Relaxed) {
            Ok(_) => break,
            Err(actual) => n = actual,
        }
    }
    stats.max.fetch_max(n + 1, Ordering::Relaxed);
    stats.total.fetch_add(1, Ordering::Relaxed);
    if stats.first_armed.load(Ordering::Relaxed) && stats.first_armed.swap(false, Ordering::AcqRel) {
        *stats.first_session.lock().unwrap_or_else(|p| p.into_inner()) = Some(tokio::time::Instant::now());
    }
    // The session token is taken with the slot, before any eligibility check: a cut that
    // lands after this cancels it, and one that landed before has already cleared the
    // server's admission, so no session slips between the two.
    Some(Slot {
        server: Arc::clone(server),
        queue: Arc::clone(queue),
        fallback: None,
        token: server.session_token(),
        term: None,
        connecting: Some(connecting),
    })
}

impl Slot {
    pub fn server(&self) -> &Arc<Server> {
        &self.server
    }

    /// Marks the slot as a fallback to the leader.
    /// Its session ends with the leader's term and by an operator's cut, not when this
    /// listener's check marks the node DOWN: a reads port's replica check fails on a node
    /// that was just promoted, and cut the sessions sent there because it leads.
    pub(crate) fn into_fallback(mut self, leadership: &Arc<Leadership>) -> Slot {
        self.term = Some(leadership.term_token());
        self.fallback = Some(Arc::clone(leadership));
        self.token = self.server.leader_session_token();
        self.server.stats.on_term.fetch_add(1, Ordering::AcqRel);
        self
    }

    /// The token the session selects on.
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }

    /// For a session that went to the leader without the listener's check admitting it:
    /// the token of the current leadership term, cancelled when the term ends (another
    /// node leads, or the leader's claim is over; see `cluster::node::Term`).
    pub fn term(&self) -> Option<&CancellationToken> {
        self.term.as_ref()
    }

    /// The session's connect place, to drop once it is established (after authentication
    /// when pgfront can see it, else once the server answered the opening).
    pub fn take_connecting(&mut self) -> Option<Connecting> {
        self.connecting.take()
    }

    /// Whether the server may still take this session: admitted by its check, or, for a
    /// fallback, still the leader and ready.
    pub fn eligible(&self) -> bool {
        match &self.fallback {
            Some(l) => l.ready_leader() == Some(self.server.node) && self.server.accepts(),
            None => self.server.is_up(),
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        // The connect place first, without serving the queue twice.
        if let Some(mut c) = self.connecting.take() {
            c.serve = false;
        }
        if self.fallback.is_some() {
            self.server.stats.on_term.fetch_sub(1, Ordering::AcqRel);
        }
        self.server.stats.cur.fetch_sub(1, Ordering::AcqRel);
        self.queue.dispatch();
    }
}
