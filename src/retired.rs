//! Servers a reload (or a discovery round) took away while sessions were open on them: a
//! removed listener, a removed cluster, a node dropped from a listener. Those sessions run
//! to their end and keep their places under global maxconn, so the views must show them
//! until they do: without this, status and metrics said 0 sessions while a new client
//! waited for a place they held.

use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};

use serde::Serialize;

use crate::cluster::{Runtime, ServerStats};

/// The servers taken away, each until its last session ends.
#[derive(Debug, Default)]
pub struct Retired {
    list: Mutex<Vec<Entry>>,
}

#[derive(Debug)]
struct Entry {
    cluster: String,
    listener: String,
    server: String,
    /// Where the server is: a cancel for a session pgfront cannot read goes there too.
    address: String,
    source: Option<IpAddr>,
    /// Alive while a session (or a generation a session holds) keeps the server.
    stats: Weak<ServerStats>,
}

/// Sessions still open on a server that is no longer served.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RetiredSessions {
    pub cluster: String,
    pub listener: String,
    pub server: String,
    pub sessions: usize,
}

impl Retired {
    /// Notes the servers of the `old` generations that none of the `current` ones serves
    /// (a server carried over by a reload shares its counters with its successor, so the
    /// counters tell one from the other).
    pub fn note(&self, old: &[Arc<Runtime>], current: &[Arc<Runtime>]) {
        let served = |stats: &Arc<ServerStats>| served(current, stats);
        let mut list = self.list.lock().unwrap_or_else(|p| p.into_inner());
        list.retain(|e| e.stats.strong_count() > 0);
        for rt in old {
            for l in &rt.listeners {
                for s in &l.servers {
                    let known = list.iter().any(|e| std::ptr::eq(e.stats.as_ptr(), Arc::as_ptr(&s.stats)));
                    if !known && !served(&s.stats) {
                        list.push(Entry {
                            cluster: rt.config.cluster.clone(),
                            listener: l.config.name.clone(),
                            server: s.name.clone(),
                            address: s.address.clone(),
                            source: s.source,
                            stats: Arc::downgrade(&s.stats),
                        });
                    }
                }
            }
        }
    }

    /// The retired servers that still hold sessions, in the order they were taken away,
    /// but those the `current` generations (the ones a view shows) serve: a view read
    /// while a reload swaps must not count a server in both places.
    pub fn open(&self, current: &[Arc<Runtime>]) -> Vec<RetiredSessions> {
        let mut list = self.list.lock().unwrap_or_else(|p| p.into_inner());
        list.retain(|e| e.stats.strong_count() > 0);
        list.iter()
            .filter_map(|e| {
                let stats = e.stats.upgrade()?;
                let sessions = stats.cur.load(Ordering::Relaxed);
                (sessions > 0 && !served(current, &stats)).then(|| RetiredSessions {
                    cluster: e.cluster.clone(),
                    listener: e.listener.clone(),
                    server: e.server.clone(),
                    sessions,
                })
            })
            .collect()
    }
}

impl Retired {
    /// Where the retired servers of listener `listener` that still hold sessions are. A
    /// cancel whose key pgfront never saw (TLS passed through) goes to every server of the
    /// listener; before, a server a reload took away (removed, or its address changed) was
    /// left out, so a query running there could not be cancelled.
    pub fn holding(&self, listener: &str) -> Vec<(String, Option<IpAddr>)> {
        let list = self.list.lock().unwrap_or_else(|p| p.into_inner());
        list.iter()
            .filter(|e| e.listener == listener && e.stats.upgrade().is_some_and(|s| s.cur.load(Ordering::Relaxed) > 0))
            .map(|e| (e.address.clone(), e.source))
            .collect()
    }
}

/// Whether one of `current` serves the server whose counters are `stats`.
fn served(current: &[Arc<Runtime>], stats: &Arc<ServerStats>) -> bool {
    current.iter().flat_map(|rt| &rt.listeners).flat_map(|l| &l.servers).any(|s| Arc::ptr_eq(&s.stats, stats))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use tokio_util::sync::CancellationToken;

    fn runtime(listeners: &[&str], previous: Option<&Runtime>) -> Arc<Runtime> {
        let mut text = "[[node]]\nname = \"n1\"\naddress = \"127.0.0.1:1\"\n".to_owned();
        for l in listeners {
            text.push_str(&format!(
                "[[listener]]\nname = \"{l}\"\nbind = \"127.0.0.1:0\"\ncheck = {{ path = \"/replica\" }}\n"
            ));
        }
        let config = Config::parse(std::path::Path::new("t.toml"), &text).unwrap();
        Arc::new(Runtime::build_from(Arc::new(config), &CancellationToken::new(), previous))
    }

    #[test]
    fn a_removed_listeners_sessions_are_shown_until_they_end() {
        let old = runtime(&["a", "b"], None);
        let new = runtime(&["a"], Some(&old));
        old.listeners[0].servers[0].stats.cur.store(1, Ordering::Relaxed);
        old.listeners[1].servers[0].stats.cur.store(2, Ordering::Relaxed);
        let retired = Retired::default();
        retired.note(&[Arc::clone(&old)], &[Arc::clone(&new)]);
        retired.note(&[Arc::clone(&old)], &[Arc::clone(&new)]);
        // "a" carried over (its sessions are shown where it is served); "b" was removed.
        let want = RetiredSessions { cluster: String::new(), listener: "b".into(), server: "n1".into(), sessions: 2 };
        assert_eq!(retired.open(&[Arc::clone(&new)]), vec![want], "noted once, with its two sessions");
        // Never shown twice: not beside a generation that still serves it (a view read
        // while a reload swaps).
        assert_eq!(retired.open(&[Arc::clone(&old)]), vec![]);
        old.listeners[1].servers[0].stats.cur.store(0, Ordering::Relaxed);
        assert_eq!(retired.open(&[Arc::clone(&new)]), vec![], "none once they ended");
        drop(old);
        assert_eq!(retired.open(&[Arc::clone(&new)]), vec![]);
        assert_eq!(retired.list.lock().unwrap().len(), 0, "forgotten once nothing holds the server");
    }
}
