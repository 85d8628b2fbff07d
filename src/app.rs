//! Wiring: bind the sockets, start checkers, listeners and the web surface, and stop
//! gracefully. `main.rs` is a thin CLI over this; tests run it in-process on port 0.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cluster::Runtime;
use crate::config::Config;
use crate::health::{self, Probe};
use crate::state::{Shared, Tokens};
use crate::{proxy, web};

/// Binding failed; names what could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("cannot bind {what} on {addr}: {source}")]
pub struct BindError {
    pub what: String,
    pub addr: SocketAddr,
    #[source]
    pub source: std::io::Error,
}

/// Sockets bound for a configuration, before anything serves on them.
#[derive(Debug)]
pub struct Bound {
    listeners: Vec<(String, TcpListener)>,
    web: Option<TcpListener>,
}

impl Bound {
    /// Binds every listener and the web surface of `config`.
    pub fn bind(config: &Config) -> Result<Bound, BindError> {
        let mut listeners = Vec::with_capacity(config.listeners.len());
        for l in &config.listeners {
            let socket = proxy::bind(l.bind).map_err(|source| BindError {
                what: format!("listener {:?}", l.name),
                addr: l.bind,
                source,
            })?;
            listeners.push((l.name.clone(), socket));
        }
        let web = match &config.web {
            None => None,
            Some(w) => {
                Some(proxy::bind(w.bind).map_err(|source| BindError { what: "web".into(), addr: w.bind, source })?)
            }
        };
        Ok(Bound { listeners, web })
    }
}

/// A running pgfront.
pub struct Pgfront {
    shared: Arc<Shared>,
    /// Checkers, accept loops and the web server (not sessions: those are in `shared`).
    tasks: TaskTracker,
    checkers: CancellationToken,
    web_stop: CancellationToken,
    addrs: HashMap<String, SocketAddr>,
    web_addr: Option<SocketAddr>,
}

/// What a graceful stop did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stopped {
    /// Sessions still open when the deadline passed, which were then closed.
    pub cut: usize,
}

impl Pgfront {
    /// Starts serving `config` on `bound`, probing with `probe`. Must run inside a Tokio runtime.
    pub fn start(config: Config, bound: Bound, probe: Arc<dyn Probe>) -> Pgfront {
        let tokens = Tokens::new();
        let runtime = Runtime::build(Arc::new(config), &tokens.sessions);
        let shared = Arc::new(Shared::new(runtime, tokens));
        let tasks = TaskTracker::new();
        let checkers = shared.tokens.root.child_token();
        health::spawn_checkers(&shared.runtime.load_full(), probe, &tasks, &checkers);
        let mut addrs = HashMap::new();
        for (name, socket) in bound.listeners {
            if let Some(addr) = proxy::local_addr(&socket) {
                addrs.insert(name.clone(), addr);
            }
            tracing::info!(listener = %name, bind = ?addrs.get(&name), "listening");
            tasks.spawn(proxy::accept_loop(Arc::clone(&shared), name, socket));
        }
        let web_stop = shared.tokens.root.child_token();
        let web_addr = bound.web.map(|socket| {
            let addr = proxy::local_addr(&socket);
            tracing::info!(bind = ?addr, "stats page listening");
            tasks.spawn(web::serve(Arc::clone(&shared), socket, web_stop.clone()));
            addr
        });
        Pgfront { shared, tasks, checkers, web_stop, addrs, web_addr: web_addr.flatten() }
    }

    /// The address a listener is bound to.
    pub fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        self.addrs.get(name).copied()
    }

    pub fn web_addr(&self) -> Option<SocketAddr> {
        self.web_addr
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Graceful stop: stop accepting, let sessions finish for up to `grace`, then close
    /// the rest, stop checks and the web surface.
    pub async fn shutdown(self, grace: Duration) -> Stopped {
        let shared = &self.shared;
        shared.tokens.accept.cancel();
        shared.sessions.close();
        let open = shared.runtime.load().sessions();
        tracing::info!(sessions = open, grace = ?grace, "stopping: no new sessions; waiting for open ones");
        let cut = match tokio::time::timeout(grace, shared.sessions.wait()).await {
            Ok(()) => 0,
            Err(_) => {
                let n = shared.runtime.load().sessions();
                tracing::warn!(sessions = n, "grace period over: closing remaining sessions");
                shared.tokens.sessions.cancel();
                shared.sessions.wait().await;
                n
            }
        };
        self.checkers.cancel();
        self.web_stop.cancel();
        self.tasks.close();
        self.tasks.wait().await;
        shared.tokens.root.cancel();
        tracing::info!(cut, "stopped");
        Stopped { cut }
    }

    /// Serves until `signal` completes, then stops gracefully within the configured
    /// `hard_stop_after`.
    pub async fn run_until(self, signal: impl Future<Output = ()>) -> Stopped {
        signal.await;
        let grace = self.shared.runtime.load().config.global.hard_stop_after;
        self.shutdown(grace).await
    }
}

/// Starts pgfront with the production probe.
pub fn start(config: Config, bound: Bound) -> Pgfront {
    Pgfront::start(config, bound, Arc::new(health::HttpProbe))
}
