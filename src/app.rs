//! Wiring: bind the sockets, start checkers, listeners and the web surface, and stop
//! gracefully. `main.rs` is a thin CLI over this; tests run it in-process on port 0.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cluster::{self, Runtime};
use crate::config::{Config, Member};
use crate::health::{self, Probe};
use crate::state::{ClusterState, Shared, Tokens};
use crate::{discovery, proxy, web};

/// Binding failed; names what could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("cannot bind {what} on {addr}: {source}")]
pub struct BindError {
    pub what: String,
    pub addr: SocketAddr,
    #[source]
    pub source: std::io::Error,
}

/// The runtimes that accept and serve sessions. In production one current-thread runtime
/// per core, each accepting on its own SO_REUSEPORT socket of every listener and serving
/// the sessions it accepted: no session is handed between threads, and no work-stealing
/// scheduler sits on the data path. In tests, the test's own runtime.
#[derive(Debug, Clone)]
pub struct Workers {
    handles: Vec<Handle>,
}

impl Workers {
    /// The runtime this is called from, alone.
    pub fn current() -> Workers {
        Workers { handles: vec![Handle::current()] }
    }

    pub fn new(handles: Vec<Handle>) -> Workers {
        assert!(!handles.is_empty(), "at least one worker");
        Workers { handles }
    }

    pub fn len(&self) -> usize {
        self.handles.len()
    }

    pub fn is_empty(&self) -> bool {
        self.handles.is_empty()
    }
}

/// Sockets bound for a configuration, before anything serves on them.
#[derive(Debug)]
pub struct Bound {
    /// Per listener, one socket per worker.
    listeners: Vec<(String, Vec<std::net::TcpListener>)>,
    web: Option<TcpListener>,
}

fn bind_listener(
    l: &crate::config::Listener,
    copies: usize,
    defer: bool,
) -> Result<Vec<std::net::TcpListener>, BindError> {
    proxy::bind_copies(l.bind, copies, defer).map_err(|source| BindError {
        what: format!("listener {:?}", l.name),
        addr: l.bind,
        source,
    })
}

impl Bound {
    /// Binds every listener and the web surface of `config`, for one worker.
    pub fn bind(config: &Config) -> Result<Bound, BindError> {
        Bound::bind_for(config, 1)
    }

    /// Binds every listener once per worker (SO_REUSEPORT) and the web surface once.
    pub fn bind_for(config: &Config, workers: usize) -> Result<Bound, BindError> {
        let mut listeners = Vec::new();
        for l in config.all_listeners() {
            listeners.push((l.name.clone(), bind_listener(l, workers.max(1), config.global.defer_accept)?));
        }
        let web = match &config.web {
            None => None,
            Some(w) => {
                let web = proxy::bind_web(w.bind, config.global.defer_accept);
                Some(web.map_err(|source| BindError { what: "web".into(), addr: w.bind, source })?)
            }
        };
        Ok(Bound { listeners, web })
    }
}

/// A running pgfront.
pub struct Pgfront {
    gen: Generations,
    web_stop: CancellationToken,
    web_addr: Option<SocketAddr>,
}

/// What builds and swaps in generations: shared by the operator's reloads and every
/// cluster's discovery task, so a discovered member set goes through the same path as a
/// reload.
#[derive(Clone)]
struct Generations {
    shared: Arc<Shared>,
    probe: Arc<dyn Probe>,
    workers: Workers,
    /// Checkers, accept loops, discovery and the web server (sessions are in `shared`).
    tasks: TaskTracker,
    serving: Arc<Mutex<Serving>>,
    /// Stops the process-wide tasks (web, sampler, discovery).
    web_stop: CancellationToken,
}

/// What serves the current configuration; replaced piece by piece on reload.
struct Serving {
    /// Per listener (names are unique across clusters).
    listeners: HashMap<String, Served>,
    /// Per cluster, by name.
    clusters: HashMap<String, ClusterServing>,
    /// The operator's whole file as last applied.
    file: Config,
    /// Set by a stop once the checkers are cancelled: a member set arriving after that
    /// must not start checkers the stop would then wait for.
    stopped: bool,
}

/// A listener's bound sockets as served.
struct Served {
    /// The bind address as configured, and as bound (port 0 chooses one).
    configured: SocketAddr,
    addr: SocketAddr,
    /// Stops its accept loops.
    token: CancellationToken,
    /// The listener its accept loops serve: a reload that renames a listener, or swaps two
    /// listeners' addresses, hands the sockets over by changing it (a new socket could not
    /// bind while the old one holds the address).
    name: Arc<ArcSwap<String>>,
}

/// What serves one cluster.
struct ClusterServing {
    /// Stops the checkers of the cluster's current generation.
    checkers: CancellationToken,
    /// Stops the cluster's discovery task (the cluster was removed).
    discovery: CancellationToken,
    /// The cluster as read from the file (declared nodes only).
    file: Config,
    /// The discovered members in use: merged into every generation, a reload's included.
    members: Vec<Member>,
}

/// What a graceful stop did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stopped {
    /// Sessions still open when the deadline passed, which were then closed.
    pub cut: usize,
}

/// Why a reload changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Bind(#[from] BindError),
}

impl ReloadError {
    pub fn as_label(&self) -> &'static str {
        match self {
            ReloadError::Config(e) => e.as_label(),
            ReloadError::Bind(_) => "bind",
        }
    }
}

impl Pgfront {
    /// Starts serving `config` on `bound`, probing with `probe`, sessions on the calling
    /// runtime. Must run inside a Tokio runtime.
    pub fn start(config: Config, bound: Bound, probe: Arc<dyn Probe>) -> Pgfront {
        Pgfront::start_on(config, bound, probe, Workers::current())
    }

    /// Starts serving with sessions on `workers`; checkers and the web surface run on the
    /// calling runtime.
    pub fn start_on(config: Config, bound: Bound, probe: Arc<dyn Probe>, workers: Workers) -> Pgfront {
        let tokens = Tokens::new();
        let binds: HashMap<String, SocketAddr> = config.all_listeners().map(|l| (l.name.clone(), l.bind)).collect();
        let views = config.views();
        let runtimes = views.iter().map(|v| Runtime::build(Arc::new(v.with_members(&[])), &tokens.sessions)).collect();
        let shared = Arc::new(Shared::with_clusters(runtimes, tokens));
        let tasks = TaskTracker::new();
        let web_stop = shared.tokens.root.child_token();
        let serving = Arc::new(Mutex::new(Serving {
            listeners: HashMap::new(),
            clusters: HashMap::new(),
            file: config,
            stopped: false,
        }));
        let gen = Generations {
            shared: Arc::clone(&shared),
            probe: Arc::clone(&probe),
            workers,
            tasks,
            serving,
            web_stop: web_stop.clone(),
        };
        {
            let mut serving = gen.serving.lock().unwrap_or_else(|p| p.into_inner());
            for (view, cluster) in views.into_iter().zip(shared.clusters.load().iter()) {
                let cs = gen.start_cluster(cluster, view);
                serving.clusters.insert(cluster.name.clone(), cs);
            }
            for (name, sockets) in bound.listeners {
                let Some(cluster) = cluster_of(&shared, &name) else { continue };
                let served = spawn_listener(&shared, &gen.tasks, &gen.workers, &cluster, binds[&name], &name, sockets);
                serving.listeners.insert(name.clone(), served);
            }
        }
        let tasks = &gen.tasks;
        let web_addr = bound.web.and_then(|socket| {
            let addr = proxy::local_addr(&socket);
            tracing::info!(bind = ?addr, "stats page listening");
            tasks.spawn(web::serve(Arc::clone(&shared), socket, web_stop.clone()));
            addr
        });
        // The last hour for the page and /status.json; stops with the web surface.
        tasks.spawn(crate::sampler::run(Arc::clone(&shared), web_stop.clone()));
        // Memory freed by bursts goes back to the system (see proxy::trim_memory). Stops
        // with the web surface, before the stop waits for these tasks.
        let trim_stop = web_stop.clone();
        tasks.spawn(async move {
            let mut every = tokio::time::interval(proxy::TRIM_LOOK);
            loop {
                tokio::select! {
                    _ = every.tick() => proxy::trim_memory(),
                    () = trim_stop.cancelled() => return,
                }
            }
        });
        Pgfront { gen, web_stop, web_addr }
    }

    /// Applies a new configuration without dropping live sessions: nodes, checks and
    /// servers that did not change keep their health state and sessions; new listeners are
    /// bound first, so a bind failure changes nothing; removed servers and listeners take no
    /// new sessions and their open ones run to their end.
    /// Discovered members (`discovery = "patroni"`) are merged in again: a reload keeps them.
    pub fn reload(&self, config: Config) -> Result<(), ReloadError> {
        let result = self.gen.reload(config);
        let stats = &self.gen.shared.reloads;
        match &result {
            Ok(()) => {
                stats.ok.fetch_add(1, Ordering::Relaxed);
                stats.set_last_error(None);
                tracing::info!("configuration reloaded");
                self.gen.shared.event_all("configuration reloaded");
            }
            Err(e) => self.reload_failed(e),
        }
        result
    }

    /// Records a reload that failed before a configuration could be built (unreadable or
    /// invalid file): nothing changes, and the reason is logged and shown.
    pub fn reload_failed(&self, e: &ReloadError) {
        let shared = &self.gen.shared;
        shared.reloads.failed.fetch_add(1, Ordering::Relaxed);
        shared.reloads.set_last_error(Some(e.to_string()));
        tracing::error!(error = %e, "reload refused; the running configuration is unchanged");
        shared.event_all(&format!("reload refused: {e}"));
    }

    /// The address a listener is bound to.
    pub fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        self.gen.serving.lock().unwrap_or_else(|p| p.into_inner()).listeners.get(name).map(|l| l.addr)
    }

    /// The cluster named `name` (`""`: the unnamed cluster of a file without `[[cluster]]`).
    pub fn cluster(&self, name: &str) -> Option<Arc<ClusterState>> {
        self.gen.shared.cluster(name)
    }

    pub fn web_addr(&self) -> Option<SocketAddr> {
        self.web_addr
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.gen.shared
    }

    /// Graceful stop: stop accepting, let sessions finish for up to `grace`, then close
    /// the rest, stop checks and the web surface.
    pub async fn shutdown(self, grace: Duration) -> Stopped {
        self.shutdown_or(grace, std::future::pending()).await
    }

    /// [`Pgfront::shutdown`], with the grace period ended early when `hurry` completes
    /// (an operator's second SIGTERM or SIGINT).
    pub async fn shutdown_or(self, grace: Duration, hurry: impl std::future::Future<Output = ()>) -> Stopped {
        let shared = &self.gen.shared;
        shared.tokens.accept.cancel();
        shared.sessions.close();
        // Every session task, not only those holding a server's place in the current
        // generation (sessions still starting, or on servers and listeners a reload removed).
        let open = shared.sessions.len();
        tracing::info!(sessions = open, grace = ?grace, "stopping: no new sessions; waiting for open ones");
        let (drained, why) = tokio::select! {
            r = tokio::time::timeout(grace, shared.sessions.wait()) => (r.is_ok(), "grace period over"),
            () = hurry => (shared.sessions.is_empty(), "told again to stop"),
        };
        let cut = if drained {
            0
        } else {
            let n = shared.sessions.len();
            tracing::warn!(sessions = n, "{why}: closing remaining sessions");
            shared.tokens.sessions.cancel();
            shared.sessions.wait().await;
            n
        };
        {
            let mut serving = self.gen.serving.lock().unwrap_or_else(|p| p.into_inner());
            serving.stopped = true;
            for c in serving.clusters.values() {
                c.checkers.cancel();
                c.discovery.cancel();
            }
        }
        self.web_stop.cancel();
        self.gen.tasks.close();
        self.gen.tasks.wait().await;
        shared.tokens.root.cancel();
        tracing::info!(cut, "stopped");
        Stopped { cut }
    }
}

impl Generations {
    /// Starts the checkers and the discovery task of a new cluster.
    fn start_cluster(&self, cluster: &Arc<ClusterState>, file: Config) -> ClusterServing {
        let checkers = self.shared.tokens.root.child_token();
        cluster::spawn_checkers(
            &cluster.runtime(),
            Arc::clone(&self.probe),
            Arc::new(proxy::Reactor),
            &self.tasks,
            &checkers,
        );
        // Members from Patroni (idle unless `discovery` is set; a reload may turn it on).
        let discovery = self.web_stop.child_token();
        let apply: Arc<dyn discovery::Apply> = Arc::new(ClusterApply { gen: self.clone(), name: cluster.name.clone() });
        self.tasks.spawn(discovery::run(Arc::clone(cluster), Arc::clone(&self.probe), apply, discovery.clone()));
        ClusterServing { checkers, discovery, file, members: Vec::new() }
    }

    /// An operator's reload: each cluster of the file with its discovered members merged
    /// in. A cluster whose part of the file did not change is left alone (its generation,
    /// checkers and sessions are not touched); new clusters start, removed ones stop.
    fn reload(&self, config: Config) -> Result<(), ReloadError> {
        let mut serving = self.serving.lock().unwrap_or_else(|p| p.into_inner());
        // Bind what is new or moved before touching anything; a listener whose address
        // another listener served takes over its sockets (a rename, a swap of addresses).
        let mut fresh = Vec::new();
        let mut adopted = Vec::new();
        for l in config.all_listeners() {
            let same = serving.listeners.get(&l.name).is_some_and(|s| s.configured == l.bind);
            if same {
                continue;
            }
            let from = serving.listeners.iter().find(|(name, s)| {
                s.configured == l.bind
                    && l.bind.port() != 0
                    && !config.all_listeners().any(|n| &n.name == *name && n.bind == s.configured)
            });
            match from {
                Some((from, _)) => adopted.push((from.clone(), l.name.clone())),
                None => {
                    let defer = config.global.defer_accept;
                    fresh.push((l.name.clone(), l.bind, bind_listener(l, self.workers.len(), defer)?));
                }
            }
        }
        let old = &serving.file;
        if let Some(w) = &config.web {
            if old.web.as_ref().map(|o| o.bind) != Some(w.bind) {
                tracing::warn!(bind = %w.bind, "the web bind address changes only with a restart");
            }
        }
        if config.global.log_format != old.global.log_format {
            tracing::warn!("log_format changes only with a restart");
        }
        if config.global.threads != old.global.threads {
            tracing::warn!(
                configured = config.global.threads,
                running = self.workers.len(),
                "threads changes only with a restart"
            );
        }
        if config.global.defer_accept != old.global.defer_accept {
            tracing::warn!(
                "defer_accept applies to listeners bound from now on; the others keep theirs until a restart"
            );
        }
        // From the first generation swapped to the last socket handed over, accept loops
        // wait (see `Reloads::steady`): none reads a listener's old name in a new generation.
        let moving = self.shared.reloads.moving();
        let before = self.shared.clusters.load_full();
        // Every listener of the generations now running: one moved to another cluster goes
        // on there with its queue (see `Runtime::build_after`).
        let listening: Vec<Arc<cluster::ListenerState>> =
            before.iter().flat_map(|c| c.runtime().listeners.clone()).collect();
        let mut after: Vec<Arc<ClusterState>> = Vec::new();
        let views = config.views();
        let names: Vec<String> = views.iter().map(|v| v.cluster.clone()).collect();
        let mut succeeded: Vec<String> = Vec::new();
        // Generations replaced: servers they had and no new one has hold sessions still.
        let mut replaced = Vec::new();
        for view in views {
            match before.iter().find(|c| c.name == view.cluster) {
                Some(cluster) => {
                    let cs = serving.clusters.get_mut(&view.cluster).expect("a running cluster is served");
                    if cs.file != view {
                        if cs.members.is_empty() && view.global.discovery.is_some() {
                            // Discovery switched on: until its first answer, the nodes served
                            // so far stay, as the members they will be (a member named like a
                            // node is that node); the first answer replaces them.
                            cs.members = served_as_members(&cluster.runtime(), &view);
                        }
                        let merged = view.with_members(&cs.members);
                        replaced.push(self.swap(cluster, cs, merged, &listening));
                        cs.file = view;
                    }
                    after.push(Arc::clone(cluster));
                }
                None => {
                    // A renamed cluster (or a file moved to [[cluster]] tables) succeeds the
                    // removed cluster that served one of its listeners: nodes, checks, health,
                    // leadership, queues and sessions carry over as in any reload.
                    let predecessor =
                        before.iter().filter(|c| !names.contains(&c.name) && !succeeded.contains(&c.name)).find(|c| {
                            // By a listener's name, or by a fixed address whose sockets are
                            // handed over (a cluster renamed with its listeners).
                            let rt = c.runtime.load();
                            view.listeners.iter().any(|l| {
                                rt.listener(&l.name).is_some()
                                    || (l.bind.port() != 0 && rt.listeners.iter().any(|o| o.config.bind == l.bind))
                            })
                        });
                    let previous = predecessor.map(|c| c.runtime());
                    // Its discovered members too, so they keep their health and sessions
                    // instead of coming back as new servers at the next discovery round.
                    let members: Vec<Member> = predecessor
                        .and_then(|p| serving.clusters.get(&p.name))
                        .map(|cs| cs.members.clone())
                        .unwrap_or_default();
                    let sessions = &self.shared.tokens.sessions;
                    let config = Arc::new(view.with_members(&members));
                    let cluster = Arc::new(ClusterState::new(Runtime::build_after(
                        config,
                        sessions,
                        previous.as_deref(),
                        &listening,
                    )));
                    match predecessor {
                        Some(p) => {
                            tracing::info!(cluster = %cluster.name, from = %p.name, "cluster added, succeeding a removed one");
                            succeeded.push(p.name.clone());
                        }
                        None => tracing::info!(cluster = %cluster.name, "cluster added"),
                    }
                    let mut cs = self.start_cluster(&cluster, view);
                    cs.members = members;
                    serving.clusters.insert(cluster.name.clone(), cs);
                    after.push(cluster);
                }
            }
        }
        // The new list first: an accept loop that finds its cluster removed looks its
        // listener up again, and must find it in the new list, never the old one.
        self.shared.clusters.store(Arc::new(after.clone()));
        for gone in before.iter().filter(|c| !after.iter().any(|a| Arc::ptr_eq(a, c))) {
            tracing::info!(cluster = %gone.name, "cluster removed; its open sessions run to their end");
            gone.removed.store(true, Ordering::Relaxed);
            replaced.push(gone.runtime());
            if let Some(cs) = serving.clusters.remove(&gone.name) {
                cs.checkers.cancel();
                cs.discovery.cancel();
            }
        }
        self.shared.retired.note(&replaced, &self.shared.runtimes());
        // As the descriptor limit holds it (see `fds`), with a reserve for the checks of
        // every node served now, discovered members included; resized from the one in effect.
        self.shared.refit(config.global.maxconn);
        self.listeners(&mut serving, &config, fresh, adopted);
        drop(moving);
        serving.file = config;
        Ok(())
    }

    /// Builds `cluster`'s generation for `config` (its view, members merged), swaps it in,
    /// and moves its checkers to it (reused checks keep their state); returns the
    /// generation it replaced.
    fn swap(
        &self,
        cluster: &ClusterState,
        serving: &mut ClusterServing,
        config: Config,
        elsewhere: &[Arc<cluster::ListenerState>],
    ) -> Arc<Runtime> {
        let old = cluster.runtime();
        let runtime =
            Arc::new(Runtime::build_after(Arc::new(config), &self.shared.tokens.sessions, Some(&old), elsewhere));
        let checkers = self.shared.tokens.root.child_token();
        cluster::spawn_checkers(&runtime, Arc::clone(&self.probe), Arc::new(proxy::Reactor), &self.tasks, &checkers);
        std::mem::replace(&mut serving.checkers, checkers).cancel();
        cluster.runtime.store(Arc::clone(&runtime));
        // Waiters look again: the swap may have added servers or places.
        for l in &runtime.listeners {
            l.wake_queue();
        }
        old
    }

    /// Starts accept loops on the freshly bound sockets, hands `adopted` sockets over
    /// (from, to), and stops those of listeners the file no longer has.
    fn listeners(
        &self,
        serving: &mut Serving,
        config: &Config,
        fresh: Vec<(String, SocketAddr, Vec<std::net::TcpListener>)>,
        adopted: Vec<(String, String)>,
    ) {
        // All taken out first, so that two listeners can swap.
        let handed: Vec<(String, Served)> =
            adopted.into_iter().filter_map(|(from, to)| Some((to, serving.listeners.remove(&from)?))).collect();
        let mut replaced = Vec::new();
        for (to, served) in handed {
            tracing::info!(listener = %to, from = %served.name.load(), bind = %served.addr,
                "listener takes over the address of another: its sockets now serve it");
            served.name.store(Arc::new(to.clone()));
            replaced.extend(serving.listeners.insert(to, served));
        }
        for (name, configured, socket) in fresh {
            let Some(cluster) = cluster_of(&self.shared, &name) else { continue };
            let served = spawn_listener(&self.shared, &self.tasks, &self.workers, &cluster, configured, &name, socket);
            replaced.extend(serving.listeners.insert(name, served));
        }
        for old in replaced {
            old.token.cancel();
        }
        let names: Vec<&str> = config.all_listeners().map(|l| l.name.as_str()).collect();
        serving.listeners.retain(|name, served| {
            let keep = names.contains(&name.as_str());
            if !keep {
                tracing::info!(listener = %name, "listener removed; its open sessions run to their end");
                served.token.cancel();
            }
            keep
        });
    }
}

/// The cluster whose current generation holds listener `name`.
fn cluster_of(shared: &Shared, name: &str) -> Option<Arc<ClusterState>> {
    shared.clusters.load().iter().find(|c| c.runtime().listener(name).is_some()).cloned()
}

/// Takes one cluster's member sets from its discovery task.
struct ClusterApply {
    gen: Generations,
    name: String,
}

impl discovery::Apply for ClusterApply {
    /// A new member set: the cluster's part of the file with these members, applied as a
    /// reload is (nodes that stay keep their health and sessions), without counting as one;
    /// no other cluster is touched.
    fn members(&self, members: Vec<Member>) -> bool {
        let mut serving = self.gen.serving.lock().unwrap_or_else(|p| p.into_inner());
        if serving.stopped {
            return false;
        }
        let Some(cluster) = self.gen.shared.cluster(&self.name) else { return false };
        let Some(cs) = serving.clusters.get_mut(&self.name) else { return false };
        if cs.members == members {
            return false;
        }
        let merged = cs.file.with_members(&members);
        let old = self.gen.swap(&cluster, cs, merged, &[]);
        self.gen.shared.retired.note(&[old], &self.gen.shared.runtimes());
        cs.members = members;
        // Each member's check holds descriptors too: the reserve grows with them.
        self.gen.shared.refit(serving.file.global.maxconn);
        true
    }
}

/// Starts an accept loop per socket of a bound listener, each on its worker.
fn spawn_listener(
    shared: &Arc<Shared>,
    tasks: &TaskTracker,
    workers: &Workers,
    cluster: &Arc<ClusterState>,
    configured: SocketAddr,
    name: &str,
    sockets: Vec<std::net::TcpListener>,
) -> Served {
    let addr = sockets.first().and_then(|s| s.local_addr().ok()).unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
    tracing::info!(listener = %name, bind = %addr, workers = sockets.len(), "listening");
    let token = shared.tokens.accept.child_token();
    let served = Arc::new(ArcSwap::from_pointee(name.to_owned()));
    for (i, socket) in sockets.into_iter().enumerate() {
        let (shared, cluster, name, token) =
            (Arc::clone(shared), Arc::clone(cluster), Arc::clone(&served), token.clone());
        let accept = async move {
            // Registered with the worker's own reactor.
            match TcpListener::from_std(socket) {
                Ok(socket) => proxy::accept_loop(shared, cluster, name, socket, token).await,
                Err(e) => tracing::error!(listener = %name.load(), error = %e, "cannot serve a listening socket"),
            }
        };
        tasks.spawn_on(accept, &workers.handles[i % workers.len()]);
    }
    Served { configured, addr, token, name: served }
}

/// Starts pgfront with the production probe.
pub fn start(config: Config, bound: Bound) -> Pgfront {
    Pgfront::start(config, bound, Arc::new(health::HttpProbe))
}

/// Starts pgfront with the production probe, sessions on `workers`.
pub fn start_on(config: Config, bound: Bound, workers: Workers) -> Pgfront {
    Pgfront::start_on(config, bound, Arc::new(health::HttpProbe), workers)
}

/// The nodes `rt` serves that `view` does not declare, as discovered members: what a
/// generation switching to discovery keeps until discovery answers.
fn served_as_members(rt: &Runtime, view: &Config) -> Vec<Member> {
    rt.config
        .nodes
        .iter()
        .filter(|n| !view.nodes.iter().any(|d| d.name == n.name))
        .map(|n| Member { leaving: false, ..Member::of(n) })
        .collect()
}
