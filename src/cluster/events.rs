//! What the control plane decides ([`Change`]), and a short log of what changed and why
//! (servers up and down, leader changes, reloads), kept across reloads for the stats page.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use super::{Check, Runtime};

const KEEP: usize = 100;

#[derive(Debug, Clone)]
pub struct Event {
    pub at: SystemTime,
    pub text: String,
}

#[derive(Debug, Default)]
pub struct EventLog {
    events: Mutex<VecDeque<Event>>,
}

impl EventLog {
    pub fn push(&self, text: String) {
        let mut e = self.events.lock().unwrap_or_else(|p| p.into_inner());
        if e.len() == KEEP {
            e.pop_front();
        }
        e.push_back(Event { at: SystemTime::now(), text });
    }

    /// Newest first.
    pub fn recent(&self) -> Vec<Event> {
        self.events.lock().unwrap_or_else(|p| p.into_inner()).iter().rev().cloned().collect()
    }
}

/// A decision of the control plane, handed to the data plane, which acts on it: cutting
/// sessions, waking queued ones, logging. The checkers decide; they never touch a session.
#[derive(Debug, Clone)]
pub enum Change {
    /// A check went UP: its servers take sessions again.
    Up { check: Arc<Check> },
    /// A check went DOWN: its servers take no new sessions, and on listeners with
    /// shutdown-sessions their open sessions are cut. `forced`: another node started
    /// leading, and a former leader's sessions are cut whatever `on_marked_down` says.
    Down { check: Arc<Check>, forced: bool },
    /// Another node started leading while a former leader's check was already DOWN (by
    /// `fall`, on a listener that keeps sessions at a mark-down): its sessions are cut now,
    /// since writes there would go to the wrong primary.
    FormerLeader { check: Arc<Check> },
    /// A check admits again (or anew) without a transition: queued sessions look again.
    Admitting { check: Arc<Check> },
    /// Another node leads (or none). Sessions sent to the old leader by listeners that do
    /// not check for it end with its term: already, if another node leads; if none does,
    /// once the old leader's claim is over (`fall` answers), not at one 503.
    LeaderChanged { from: Option<String>, to: Option<String>, timeline: Option<u64> },
    /// The leader answers as a running primary again after a failed answer: sessions
    /// waiting for it (on any listener) may go.
    LeaderReady,
    /// Several nodes claim leadership at once: writes are held.
    Conflict { claimants: Vec<String> },
    /// Nobody leads because the timeline floor refuses these nodes' claims as stale.
    StaleClaims { nodes: Vec<String>, floor: u64 },
    /// The cluster's system identifier changed: it was rebuilt, and its timelines start over.
    IdentityChanged { from: Option<String>, to: String },
}

/// The data plane's side of [`Change`]s.
pub trait React: Send + Sync + 'static {
    fn react(&self, rt: &Runtime, change: Change);
}
