//! What every task of a running pgfront shares: the current runtime (swapped whole on
//! reload), the process-wide session limit, and the cancellation hierarchy.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use tokio::sync::Semaphore;
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
    pub tokens: Tokens,
    /// Every session task, so a stop can wait for them to drain.
    pub sessions: TaskTracker,
    pub reloads: Reloads,
    /// Cancel keys of the sessions pgfront can read, to route cancels precisely.
    pub cancel_keys: crate::proxy::keys::CancelKeys,
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

impl Shared {
    pub fn new(runtime: Runtime, tokens: Tokens) -> Shared {
        let global = Arc::new(Semaphore::new(runtime.config.global.maxconn));
        Shared {
            runtime: ArcSwap::from_pointee(runtime),
            global,
            tokens,
            sessions: TaskTracker::new(),
            reloads: Reloads::default(),
            cancel_keys: Default::default(),
        }
    }
}
