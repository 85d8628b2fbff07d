//! A listener's wait queue, as HAProxy's: first come, first served. A session that finds
//! no server able to take it waits here; each freed place (a session ending, a connect
//! completing, a server coming up) serves the oldest waiter that can use it, one waiter
//! per place, instead of waking every waiter to race for it. Newcomers never overtake
//! sessions already waiting. The queue outlives reloads and always serves from the
//! current generation of its listener.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::{oneshot, Notify};

use super::{pick, Ask, Slot};
use crate::cluster::ListenerState;

#[derive(Debug, Default)]
pub struct Queue {
    waiters: Mutex<VecDeque<Waiter>>,
    /// Waiters now; read without the lock so a freed slot with nobody waiting costs nothing.
    len: AtomicUsize,
    next_id: AtomicU64,
    /// The listener's current generation (set by each reload): waiters get its servers.
    current: Mutex<Weak<ListenerState>>,
    /// A place was freed while another dispatch held the lock (or from inside one): the
    /// holder makes another pass before it leaves, so no freed place goes unserved.
    again: AtomicBool,
    /// Woken on changes that may help a session pausing after a server that was not ready.
    pub(crate) changed: Notify,
}

#[derive(Debug)]
struct Waiter {
    id: u64,
    ask: Ask,
    /// Servers a retry just failed on, used only when nothing else is eligible.
    avoid: Vec<usize>,
    tx: oneshot::Sender<Slot>,
}

thread_local! {
    /// Set while this thread serves a queue: a place handed back inside that pass (a pick
    /// that took a connect place and then found the server full) frees nothing the pass
    /// has not already looked at, so it must not ask for another pass.
    static SERVING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Queue {
    /// Makes `listener` the generation the queue serves from.
    pub fn serve_from(&self, listener: &Arc<ListenerState>) {
        *lock(&self.current) = Arc::downgrade(listener);
    }

    /// The listener's current generation, if it still exists.
    pub fn current(&self) -> Option<Arc<ListenerState>> {
        lock(&self.current).upgrade()
    }

    pub fn is_empty(&self) -> bool {
        self.len.load(Ordering::Acquire) == 0
    }

    pub fn len(&self) -> usize {
        self.len.load(Ordering::Acquire)
    }

    /// Whether a session waiting here asked for the primary (`pgfront.target=primary`).
    pub fn asks_for_primary(&self) -> bool {
        !self.is_empty() && lock(&self.waiters).iter().any(|w| w.ask.target == crate::config::Target::Primary)
    }

    /// Joins the tail; the slot arrives on the returned receiver.
    pub(super) fn push(&self, ask: Ask, avoid: &[usize]) -> (u64, oneshot::Receiver<Slot>) {
        let (tx, rx) = oneshot::channel();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut q = lock(&self.waiters);
        q.push_back(Waiter { id, ask, avoid: avoid.to_vec(), tx });
        self.len.store(q.len(), Ordering::Release);
        (id, rx)
    }

    /// Leaves the queue (served, timed out, or the client gone).
    pub(super) fn remove(&self, id: u64) {
        let mut q = lock(&self.waiters);
        q.retain(|w| w.id != id);
        self.len.store(q.len(), Ordering::Release);
    }

    /// Serves waiters in arrival order while servers can take them: each waiter is offered
    /// a server by its own ask (target and position); a waiter that cannot be served is
    /// passed over, and later waiters with the same ask are not even tried (nothing they
    /// could get).
    pub fn dispatch(&self) {
        if SERVING.with(|s| s.get()) {
            return;
        }
        loop {
            if self.is_empty() {
                return;
            }
            self.again.store(false, Ordering::Release);
            let served = match self.waiters.try_lock() {
                Ok(mut q) => self.serving(&mut q),
                Err(std::sync::TryLockError::Poisoned(p)) => self.serving(&mut p.into_inner()),
                // Another dispatch (on this thread: one that freed this place) is serving:
                // it makes another pass for this place before it leaves.
                Err(std::sync::TryLockError::WouldBlock) => {
                    self.again.store(true, Ordering::Release);
                    return;
                }
            };
            // Outside the lock: a waiter that left meanwhile hands its slot back, and
            // dropping a slot dispatches again.
            for (tx, slot) in served {
                let _ = tx.send(slot);
            }
            if !self.again.swap(false, Ordering::AcqRel) {
                return;
            }
        }
    }

    fn serving(&self, q: &mut VecDeque<Waiter>) -> Vec<(oneshot::Sender<Slot>, Slot)> {
        /// Clears the flag however the pass ends.
        struct Serving;
        impl Drop for Serving {
            fn drop(&mut self) {
                SERVING.with(|s| s.set(false));
            }
        }
        SERVING.with(|s| s.set(true));
        let _serving = Serving;
        self.serve(q)
    }

    fn serve(&self, q: &mut VecDeque<Waiter>) -> Vec<(oneshot::Sender<Slot>, Slot)> {
        let Some(listener) = self.current() else { return Vec::new() };
        let mut served = Vec::new();
        {
            let mut stuck: Vec<Ask> = Vec::new();
            let mut i = 0;
            while i < q.len() {
                let w = &q[i];
                if w.tx.is_closed() {
                    q.remove(i);
                    continue;
                }
                if w.avoid.is_empty() && stuck.contains(&w.ask) {
                    i += 1;
                    continue;
                }
                match pick(&listener, &w.avoid, w.ask) {
                    Ok(slot) => {
                        if let Some(w) = q.remove(i) {
                            served.push((w.tx, slot));
                        }
                    }
                    Err(_) => {
                        if w.avoid.is_empty() {
                            stuck.push(w.ask);
                        }
                        i += 1;
                    }
                }
            }
            self.len.store(q.len(), Ordering::Release);
        }
        served
    }

    /// Wakes sessions pausing after a server that was not ready, and serves the queue.
    pub fn changed(&self) {
        self.changed.notify_waiters();
        self.dispatch();
    }
}
