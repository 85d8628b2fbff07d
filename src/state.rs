//! What every task of a running pgfront shares: the current runtime (swapped whole on
//! reload), the process-wide session limit, and the cancellation hierarchy.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cluster::Runtime;

/// The cancellation hierarchy of a process:
/// `root` ends everything; `accept` (child of root) stops the listeners; `sessions`
/// (child of root) is the parent of every server's session token, cancelled when the
/// graceful-stop deadline passes.
#[derive(Debug, Clone)]
pub struct Tokens {
    pub root: CancellationToken,
    pub accept: CancellationToken,
    pub sessions: CancellationToken,
}

impl Tokens {
    pub fn new() -> Tokens {
        let root = CancellationToken::new();
        Tokens { accept: root.child_token(), sessions: root.child_token(), root }
    }
}

impl Default for Tokens {
    fn default() -> Self {
        Tokens::new()
    }
}

#[derive(Debug)]
pub struct Shared {
    pub runtime: ArcSwap<Runtime>,
    /// Global maxconn: a permit per open session, taken before accepting.
    pub global: Arc<Semaphore>,
    /// Permits a reload that lowered maxconn could not take back at once because sessions
    /// held them: each is forgotten as its session ends.
    pub owed: Arc<AtomicUsize>,
    pub tokens: Tokens,
    /// Every session task, so a stop can wait for them to drain.
    pub sessions: TaskTracker,
    pub reloads: Reloads,
    /// Cancel keys of the sessions pgfront can read, to route cancels precisely.
    pub cancel_keys: crate::proxy::keys::CancelKeys,
    /// What discovery (`discovery = "patroni"`) found and did.
    pub discovery: crate::discovery::Stats,
}

/// Reload outcomes, for logs, metrics and the dashboard.
#[derive(Debug, Default)]
pub struct Reloads {
    pub ok: AtomicU64,
    pub failed: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl Reloads {
    /// The error of the last reload, if it failed.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn set_last_error(&self, e: Option<String>) {
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = e;
    }
}

/// A session's place under global maxconn; returned when the session ends, unless a
/// reload lowered maxconn meanwhile and the place is owed.
#[derive(Debug)]
pub struct Permit {
    permit: Option<OwnedSemaphorePermit>,
    owed: Arc<AtomicUsize>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let pay = self.owed.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1)).is_ok();
        if let (true, Some(p)) = (pay, self.permit.take()) {
            p.forget();
        }
    }
}

impl Shared {
    /// Waits for a place under global maxconn.
    pub async fn permit(&self) -> Option<Permit> {
        let p = Arc::clone(&self.global).acquire_owned().await.ok()?;
        Some(Permit { permit: Some(p), owed: Arc::clone(&self.owed) })
    }

    /// A place under global maxconn if one is free now.
    pub fn try_permit(&self) -> Option<Permit> {
        let p = Arc::clone(&self.global).try_acquire_owned().ok()?;
        Some(Permit { permit: Some(p), owed: Arc::clone(&self.owed) })
    }

    /// Waits until a place under global maxconn is free, without taking it: an accept
    /// loop waiting for a client holds no place that a session on another listener needs.
    pub async fn place_free(&self) -> bool {
        self.global.acquire().await.is_ok()
    }

    /// Applies a new global maxconn: raising it pays debts first, lowering takes back the
    /// free places at once and the held ones as their sessions end.
    pub fn resize(&self, old: usize, new: usize) {
        if new >= old {
            let mut more = new - old;
            let _ = self.owed.fetch_update(Ordering::AcqRel, Ordering::Acquire, |owed| {
                let paid = owed.min(new - old);
                more = new - old - paid;
                Some(owed - paid)
            });
            self.global.add_permits(more);
        } else {
            let taken = self.global.forget_permits(old - new);
            self.owed.fetch_add(old - new - taken, Ordering::AcqRel);
        }
    }

    pub fn new(runtime: Runtime, tokens: Tokens) -> Shared {
        let global = Arc::new(Semaphore::new(runtime.config.global.maxconn));
        Shared {
            runtime: ArcSwap::from_pointee(runtime),
            global,
            tokens,
            sessions: TaskTracker::new(),
            reloads: Reloads::default(),
            cancel_keys: Default::default(),
            discovery: Default::default(),
            owed: Arc::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::Runtime;
    use crate::config::Config;

    fn shared(maxconn: usize) -> Shared {
        let text = format!("[global]\nmaxconn = {maxconn}\n[[node]]\nname = \"n\"\naddress = \"127.0.0.1:1\"\n[[listener]]\nname = \"l\"\nbind = \"127.0.0.1:0\"\ncheck = {{ path = \"/replica\" }}\n");
        let config = Config::parse(std::path::Path::new("t.toml"), &text).unwrap();
        let tokens = Tokens::new();
        Shared::new(Runtime::build(Arc::new(config), &tokens.sessions), tokens)
    }

    #[tokio::test]
    async fn lowering_maxconn_takes_back_held_places_as_sessions_end() {
        let s = shared(4);
        let held: Vec<Permit> = vec![s.permit().await.unwrap(), s.permit().await.unwrap(), s.permit().await.unwrap()];
        s.resize(4, 1);
        assert_eq!(s.global.available_permits(), 0, "the free place is taken back at once");
        assert_eq!(s.owed.load(Ordering::SeqCst), 2);
        drop(held);
        assert_eq!(s.global.available_permits(), 1, "two ended sessions paid the debt, the third frees a place");
        s.resize(1, 3);
        assert_eq!(s.global.available_permits(), 3);
    }

    #[tokio::test]
    async fn raising_maxconn_pays_debts_first() {
        let s = shared(2);
        let held = vec![s.permit().await.unwrap(), s.permit().await.unwrap()];
        s.resize(2, 1);
        assert_eq!(s.owed.load(Ordering::SeqCst), 1);
        s.resize(1, 2);
        assert_eq!((s.owed.load(Ordering::SeqCst), s.global.available_permits()), (0, 0));
        drop(held);
        assert_eq!(s.global.available_permits(), 2);
    }
}
