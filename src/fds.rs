//! File descriptors: every session holds two (its client and its server), and what is not
//! a session (checks, the web page, listeners, reloads reading files, logs) needs a few
//! more. A global maxconn the descriptor limit cannot hold would let waiting clients take
//! the last descriptors as client sockets, leaving none for their server connects or for
//! the health checks; so the maxconn in effect is the one the limit can hold.

use std::io;
use std::sync::Arc;

use tokio::sync::Semaphore;

/// Descriptors kept out of sessions' reach: at most this many, and at most half of
/// the limit (a process started with a tiny limit still serves a few sessions).
const RESERVE: u64 = 100;

/// RLIMIT_NOFILE as it is now.
fn get() -> Option<libc::rlimit> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes the one struct passed.
    (unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0).then_some(lim)
}

/// Raises the soft descriptor limit to the hard one, as HAProxy and Go programs do at
/// start-up (systemd's `LimitNOFILE=65536` sets both already; a shell's soft limit is
/// often 1024 under a larger hard one). Returns the soft limit in effect.
pub fn raise_limit() -> Option<u64> {
    let lim = get()?;
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
        // SAFETY: setrlimit reads the one struct passed.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            return Some(raised.rlim_cur);
        }
    }
    Some(lim.rlim_cur)
}

/// The soft descriptor limit of this process, if it has one.
pub fn limit() -> Option<u64> {
    get().map(|l| l.rlim_cur).filter(|&c| c != libc::RLIM_INFINITY)
}

/// Descriptors a `limit` keeps out of sessions' reach.
fn reserve(limit: Option<u64>) -> u64 {
    limit.map_or(RESERVE, |l| RESERVE.min(l / 2))
}

/// The global maxconn a descriptor `limit` can hold: two per session, after the reserve.
pub fn fitting(maxconn: usize, limit: Option<u64>) -> usize {
    let Some(limit) = limit else {
        return maxconn;
    };
    let reserve = reserve(Some(limit));
    let sessions = (limit.saturating_sub(reserve) / 2).max(1);
    maxconn.min(usize::try_from(sessions).unwrap_or(usize::MAX))
}

/// The configured global maxconn, or the most this process's descriptor limit holds,
/// with a warning naming both when the limit is the smaller (once, until either changes).
pub fn fit_maxconn(maxconn: usize) -> usize {
    let limit = limit();
    let fit = fitting(maxconn, limit);
    // Said when it starts to apply or changes, not at every reload while it holds.
    static SAID: std::sync::Mutex<Option<(usize, usize)>> = std::sync::Mutex::new(None);
    let mut said = SAID.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let news = said.replace((maxconn, fit)) != Some((maxconn, fit));
    if fit < maxconn && news {
        tracing::warn!(configured = maxconn, in_effect = fit, descriptor_limit = limit.unwrap_or_default(),
            "global.maxconn needs about {} descriptors (2 per session); the limit holds {fit} sessions: raise LimitNOFILE (or ulimit -n)",
            maxconn * 2 + RESERVE as usize);
    }
    fit
}

/// The shares of the reserve that what is not a session may take: bounded, so that a
/// flood of dashboard connections or of cancel requests cannot take the descriptors the
/// health checks and the sessions' server connects need. A quarter of the reserve each
/// (25 of 100); the rest is for listeners, the runtimes' own descriptors, the checks and
/// a reload reading its files.
#[derive(Debug)]
pub struct Shares {
    /// Connections the web surface holds at once; more wait in its backlog.
    pub web: Arc<Semaphore>,
    /// Server connects that cancel requests make beyond one each (a cancel whose key is
    /// unknown goes to every server of its listener): more go one at a time.
    pub fanout: Arc<Semaphore>,
}

impl Shares {
    /// The shares of this process's descriptor limit.
    pub fn new() -> Shares {
        Shares::of(limit())
    }

    fn of(limit: Option<u64>) -> Shares {
        let quarter = usize::try_from(reserve(limit) / 4).unwrap_or(usize::MAX);
        Shares { web: Arc::new(Semaphore::new(quarter.max(2))), fanout: Arc::new(Semaphore::new(quarter.max(1))) }
    }
}

impl Default for Shares {
    fn default() -> Shares {
        Shares::new()
    }
}

/// One descriptor a health checker keeps open (on /dev/null) and gives up to make its
/// check when the process is out of them, so that a node that died during a shortage is
/// still found out (without it, the check is no verdict and the node keeps its state).
#[derive(Debug, Default)]
pub struct Spare(Option<std::fs::File>);

impl Spare {
    /// A spare, if a descriptor is free now.
    pub fn new() -> Spare {
        let mut s = Spare(None);
        s.refill();
        s
    }

    /// Closes the spare, making its descriptor free; false if there was none to give.
    pub fn release(&mut self) -> bool {
        self.0.take().is_some()
    }

    /// Opens the spare again if it was given up (a no-op while descriptors stay short).
    pub fn refill(&mut self) {
        if self.0.is_none() {
            self.0 = std::fs::File::open("/dev/null").ok();
        }
    }

    pub fn is_held(&self) -> bool {
        self.0.is_some()
    }
}

/// Whether an error means the process is out of descriptors (Linux's EMFILE, or ENFILE
/// for the whole system): pgfront's shortage, never the peer's fault.
pub fn is_exhaustion(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maxconn_is_what_the_limit_holds_after_the_reserve() {
        assert_eq!(fitting(4096, None), 4096);
        assert_eq!(fitting(4096, Some(65536)), 4096);
        assert_eq!(fitting(40_000, Some(65536)), (65536 - 100) / 2);
        assert_eq!(fitting(4096, Some(1024)), (1024 - 100) / 2);
        // A small limit keeps half: 64 descriptors hold 16 sessions.
        assert_eq!(fitting(4096, Some(64)), 16);
        assert_eq!(fitting(4096, Some(256)), 78);
        assert_eq!(fitting(4096, Some(2)), 1);
    }

    #[test]
    fn the_web_surface_and_cancel_fan_outs_take_a_quarter_of_the_reserve_each() {
        let s = Shares::of(Some(65536));
        assert_eq!((s.web.available_permits(), s.fanout.available_permits()), (25, 25));
        let s = Shares::of(Some(64));
        assert_eq!((s.web.available_permits(), s.fanout.available_permits()), (8, 8));
        let s = Shares::of(Some(4));
        assert_eq!((s.web.available_permits(), s.fanout.available_permits()), (2, 1));
    }

    #[test]
    fn a_spare_is_given_up_once_and_refilled() {
        let mut s = Spare::new();
        assert!(s.is_held());
        assert!(s.release());
        assert!(!s.release(), "nothing left to give");
        s.refill();
        assert!(s.is_held());
    }

    #[test]
    fn exhaustion_is_emfile_or_enfile() {
        assert!(is_exhaustion(&io::Error::from_raw_os_error(libc::EMFILE)));
        assert!(is_exhaustion(&io::Error::from_raw_os_error(libc::ENFILE)));
        assert!(!is_exhaustion(&io::Error::from_raw_os_error(libc::ECONNREFUSED)));
    }
}
