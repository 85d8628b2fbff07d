//! What every task of a running pgfront shares: the Patroni clusters it fronts, each with
//! its current generation (swapped whole on reload), the process-wide session limit, and
//! the cancellation hierarchy.

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

/// One Patroni cluster of a running pgfront: its current generation, swapped whole when a
/// reload or its discovery changes it, and never when another cluster changes. Its
/// listeners' accept loops and its checkers hold this, so a cluster's sessions, health and
/// leadership are its own: a leader change, a reload or a member set of another cluster
/// leaves them as they are.
#[derive(Debug)]
pub struct ClusterState {
    /// `""` for the unnamed cluster of a file without `[[cluster]]`.
    pub name: String,
    pub runtime: ArcSwap<Runtime>,
    /// What discovery (`discovery = "patroni"`) found and did for this cluster.
    pub discovery: crate::discovery::Stats,
    /// Set when a reload removed the cluster: its last generation stays for the sessions
    /// that hold it, but an accept loop it kept (a listener another cluster took over, by
    /// name and bind) must look its listener up in the current clusters instead.
    pub removed: std::sync::atomic::AtomicBool,
}

impl ClusterState {
    pub fn new(runtime: Runtime) -> ClusterState {
        ClusterState {
            name: runtime.config.cluster.clone(),
            runtime: ArcSwap::from_pointee(runtime),
            discovery: Default::default(),
            removed: Default::default(),
        }
    }

    /// Whether a reload removed the cluster.
    pub fn is_removed(&self) -> bool {
        self.removed.load(Ordering::Relaxed)
    }

    /// The current generation.
    pub fn runtime(&self) -> Arc<Runtime> {
        self.runtime.load_full()
    }
}

#[derive(Debug)]
pub struct Shared {
    /// The clusters, in file order; a reload may add or remove some (the list is swapped
    /// whole, each cluster's generation separately).
    pub clusters: ArcSwap<Vec<Arc<ClusterState>>>,
    /// Global maxconn: a permit per open session, taken before accepting.
    pub global: Arc<Semaphore>,
    /// The global maxconn in effect: the configured one, as the descriptor limit holds it
    /// (`fds::fit_maxconn`), so a reload resizes from what was applied.
    maxconn: AtomicUsize,
    /// Permits a reload that lowered maxconn could not take back at once because sessions
    /// held them: each is forgotten as its session ends.
    pub owed: Arc<AtomicUsize>,
    pub tokens: Tokens,
    /// Every session task, so a stop can wait for them to drain.
    pub sessions: TaskTracker,
    pub reloads: Reloads,
    /// Cancel keys of the sessions pgfront can read, to route cancels precisely.
    pub cancel_keys: crate::proxy::keys::CancelKeys,
    /// What the web surface and cancel fan-outs may take of the descriptors' reserve.
    pub shares: crate::fds::Shares,
    /// Servers a reload or discovery took away while sessions were open on them.
    pub retired: crate::retired::Retired,
}

/// Reload outcomes, for logs, metrics and the dashboard.
#[derive(Debug, Default)]
pub struct Reloads {
    pub ok: AtomicU64,
    pub failed: AtomicU64,
    last_error: Mutex<Option<String>>,
    /// Odd while a reload swaps generations and hands listening sockets to the listeners
    /// that now name their addresses (a rename, a swap of addresses), even otherwise: a
    /// seqlock, so an accept loop reads its socket's listener name and the generation it
    /// looks that name up in as one, never the new generation with the old name.
    epoch: AtomicU64,
}

/// A reload's moving section (see `Reloads::epoch`): ends when dropped, on every path.
pub struct Moving<'a>(&'a AtomicU64);

impl Drop for Moving<'_> {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

impl Reloads {
    /// Marks the start of a reload's moving section, until the guard drops.
    pub fn moving(&self) -> Moving<'_> {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        Moving(&self.epoch)
    }

    /// Runs `read` at a moment no reload is moving listeners: again if one moved them
    /// meanwhile (a reload's moving section is short and never waits on I/O).
    pub async fn steady<T>(&self, mut read: impl FnMut() -> T) -> T {
        loop {
            let seen = self.epoch.load(Ordering::SeqCst);
            if seen % 2 == 0 {
                let value = read();
                if self.epoch.load(Ordering::SeqCst) == seen {
                    return value;
                }
            }
            tokio::task::yield_now().await;
        }
    }

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

    /// Fits the `configured` global maxconn to the descriptor limit as it is now, with a
    /// reserve for the checks of the most nodes served so far (declared and discovered
    /// alike; see `fds::note_nodes`), resizes to it, and lets the web and cancel shares
    /// grow with the reserve.
    pub fn refit(&self, configured: usize) {
        crate::fds::note_nodes(self.clusters.load().iter().map(|c| c.runtime().config.nodes.len()).sum());
        self.resize(crate::fds::fit_maxconn(configured));
        self.shares.grow();
    }

    /// The global maxconn in effect (see `maxconn`).
    pub fn maxconn_in_effect(&self) -> usize {
        self.maxconn.load(Ordering::Acquire)
    }

    /// Places held under global maxconn: every session past its accept, on any listener,
    /// a removed one included (permits owed by a lowered maxconn are still held).
    pub fn places_held(&self) -> usize {
        (self.maxconn_in_effect() + self.owed.load(Ordering::Acquire)).saturating_sub(self.global.available_permits())
    }

    /// Applies a new global maxconn: raising it pays debts first, lowering takes back the
    /// free places at once and the held ones as their sessions end.
    pub fn resize(&self, new: usize) {
        let old = self.maxconn.swap(new, Ordering::AcqRel);
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

    /// Shared state for one cluster (the unnamed one of a file without `[[cluster]]`).
    pub fn new(runtime: Runtime, tokens: Tokens) -> Shared {
        Shared::with_clusters(vec![runtime], tokens)
    }

    /// Shared state for several clusters, one generation each; `runtimes` is not empty.
    pub fn with_clusters(runtimes: Vec<Runtime>, tokens: Tokens) -> Shared {
        let configured = runtimes.first().map_or(crate::config::defaults::GLOBAL_MAXCONN, |r| r.config.global.maxconn);
        // Bound and started by now: what is open is what serving needs besides sessions.
        crate::fds::note_base(runtimes.iter().map(|r| r.config.nodes.len()).sum());
        let maxconn = crate::fds::fit_maxconn(configured);
        let clusters = runtimes.into_iter().map(|r| Arc::new(ClusterState::new(r))).collect();
        Shared {
            clusters: ArcSwap::from_pointee(clusters),
            global: Arc::new(Semaphore::new(maxconn)),
            maxconn: AtomicUsize::new(maxconn),
            tokens,
            sessions: TaskTracker::new(),
            reloads: Reloads::default(),
            cancel_keys: Default::default(),
            shares: crate::fds::Shares::new(),
            owed: Arc::default(),
            retired: Default::default(),
        }
    }

    /// The current generation of the first cluster: the only one of a file without
    /// `[[cluster]]`, which is what scripts, tests and the single-cluster views read.
    pub fn runtime(&self) -> Arc<Runtime> {
        self.first().runtime()
    }

    /// The first cluster (there is always one).
    pub fn first(&self) -> Arc<ClusterState> {
        Arc::clone(&self.clusters.load()[0])
    }

    /// The cluster named `name` (`""`: the unnamed one).
    pub fn cluster(&self, name: &str) -> Option<Arc<ClusterState>> {
        self.clusters.load().iter().find(|c| c.name == name).cloned()
    }

    /// Every cluster's current generation, in order.
    pub fn runtimes(&self) -> Vec<Arc<Runtime>> {
        self.clusters.load().iter().map(|c| c.runtime()).collect()
    }

    /// The listener named `name`, in whichever cluster holds it (names are unique).
    pub fn listener(&self, name: &str) -> Option<Arc<crate::cluster::ListenerState>> {
        self.clusters.load().iter().find_map(|c| c.runtime().listener(name).cloned())
    }

    /// Sessions open in every cluster.
    pub fn open_sessions(&self) -> usize {
        self.runtimes().iter().map(|r| r.sessions()).sum()
    }

    /// Records a transition in every cluster's event log (reloads belong to all).
    pub fn event_all(&self, text: &str) {
        for rt in self.runtimes() {
            rt.events.push(text.to_owned());
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
        s.resize(1);
        assert_eq!(s.global.available_permits(), 0, "the free place is taken back at once");
        assert_eq!(s.owed.load(Ordering::SeqCst), 2);
        drop(held);
        assert_eq!(s.global.available_permits(), 1, "two ended sessions paid the debt, the third frees a place");
        s.resize(3);
        assert_eq!(s.global.available_permits(), 3);
    }

    #[tokio::test]
    async fn raising_maxconn_pays_debts_first() {
        let s = shared(2);
        let held = vec![s.permit().await.unwrap(), s.permit().await.unwrap()];
        s.resize(1);
        assert_eq!(s.owed.load(Ordering::SeqCst), 1);
        s.resize(2);
        assert_eq!((s.owed.load(Ordering::SeqCst), s.global.available_permits()), (0, 0));
        drop(held);
        assert_eq!(s.global.available_permits(), 2);
    }
}
