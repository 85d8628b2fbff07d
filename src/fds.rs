//! File descriptors: every session holds two (its client and its server), and what is not
//! a session (checks, the web page, listeners, reloads reading files, logs) needs a few
//! more. A global maxconn the descriptor limit cannot hold would let waiting clients take
//! the last descriptors as client sockets, leaving none for their server connects or for
//! the health checks; so the maxconn in effect is the one the limit can hold.

use std::io;

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

/// The global maxconn a descriptor `limit` can hold: two per session, after the reserve.
pub fn fitting(maxconn: usize, limit: Option<u64>) -> usize {
    let Some(limit) = limit else {
        return maxconn;
    };
    let reserve = RESERVE.min(limit / 2);
    let sessions = (limit.saturating_sub(reserve) / 2).max(1);
    maxconn.min(usize::try_from(sessions).unwrap_or(usize::MAX))
}

/// The configured global maxconn, or the most this process's descriptor limit holds,
/// with a warning naming both when the limit is the smaller.
pub fn fit_maxconn(maxconn: usize) -> usize {
    let limit = limit();
    let fit = fitting(maxconn, limit);
    if fit < maxconn {
        tracing::warn!(configured = maxconn, in_effect = fit, descriptor_limit = limit.unwrap_or_default(),
            "global.maxconn needs about {} descriptors (2 per session); the limit holds {fit} sessions: raise LimitNOFILE (or ulimit -n)",
            maxconn * 2 + RESERVE as usize);
    }
    fit
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
    fn exhaustion_is_emfile_or_enfile() {
        assert!(is_exhaustion(&io::Error::from_raw_os_error(libc::EMFILE)));
        assert!(is_exhaustion(&io::Error::from_raw_os_error(libc::ENFILE)));
        assert!(!is_exhaustion(&io::Error::from_raw_os_error(libc::ECONNREFUSED)));
    }
}
