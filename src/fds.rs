//! File descriptors: every session holds two (its client and its server), and what is not
//! a session (checks, the web page, listeners, reloads reading files, logs) needs a few
//! more. A global maxconn the descriptor limit cannot hold would let waiting clients take
//! the last descriptors as client sockets, leaving none for their server connects or for
//! the health checks; so the maxconn in effect is the one the limit can hold.

use std::io;
use std::sync::Arc;

use tokio::net::TcpSocket;
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

/// The part of RESERVE meant for descriptors open before the first session (stdio, a
/// listening socket per worker and listener, the runtimes' epoll and wakers, the web
/// port): about 21 with three listeners on two workers.
const BASE_IN_RESERVE: u64 = 25;

/// Descriptors open when serving began (see [`note_base`]): a machine with many worker
/// threads holds more listening sockets and runtimes than the reserve allows for.
static BASE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Nodes whose checks the reserve allows for (each check holds a probe and a spare).
const NODES_IN_RESERVE: u64 = 15;

/// Nodes checked (see [`note_base`]).
static NODES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Counts the descriptors this process has open, once its sockets are bound and its
/// runtimes started, and the `nodes` it checks, so that the reserve grows with them (16
/// workers with three listeners hold about 100; each node's check two).
pub fn note_base(nodes: usize) {
    note_nodes(nodes);
    if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
        // One of them is the directory being read.
        let open = u64::try_from(dir.count()).unwrap_or(0).saturating_sub(1);
        BASE.fetch_max(open, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The nodes checked now, declared and discovered (the count at start grows, never
/// shrinks: a removed node's checker may still hold its descriptors while it stops).
pub fn note_nodes(nodes: usize) {
    NODES.fetch_max(u64::try_from(nodes).unwrap_or(u64::MAX), std::sync::atomic::Ordering::Relaxed);
}

/// Descriptors a `limit` keeps out of sessions' reach: RESERVE, more where the
/// descriptors open at start (`base`) or the nodes checked exceed what it allows for, and
/// at most half the limit.
fn reserve(limit: Option<u64>, base: u64) -> u64 {
    reserve_for(limit, base, NODES.load(std::sync::atomic::Ordering::Relaxed))
}

fn reserve_for(limit: Option<u64>, base: u64, nodes: u64) -> u64 {
    let reserve = RESERVE + base.saturating_sub(BASE_IN_RESERVE) + 2 * nodes.saturating_sub(NODES_IN_RESERVE);
    limit.map_or(reserve, |l| reserve.min(l / 2))
}

/// The global maxconn a descriptor `limit` can hold: two per session, after the reserve.
pub fn fitting(maxconn: usize, limit: Option<u64>, base: u64) -> usize {
    let Some(limit) = limit else {
        return maxconn;
    };
    let reserve = reserve(Some(limit), base);
    let sessions = (limit.saturating_sub(reserve) / 2).max(1);
    maxconn.min(usize::try_from(sessions).unwrap_or(usize::MAX))
}

/// The configured global maxconn, or the most this process's descriptor limit holds,
/// with a warning naming both when the limit is the smaller (once, until either changes).
pub fn fit_maxconn(maxconn: usize) -> usize {
    let limit = limit();
    let base = BASE.load(std::sync::atomic::Ordering::Relaxed);
    let fit = fitting(maxconn, limit, base);
    // Said when it starts to apply or changes, not at every reload while it holds.
    static SAID: std::sync::Mutex<Option<(usize, usize)>> = std::sync::Mutex::new(None);
    let mut said = SAID.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let news = said.replace((maxconn, fit)) != Some((maxconn, fit));
    if fit < maxconn && news {
        tracing::warn!(configured = maxconn, in_effect = fit, descriptor_limit = limit.unwrap_or_default(),
            "global.maxconn needs about {} descriptors (2 per session); the limit holds {fit} sessions: raise LimitNOFILE (or ulimit -n)",
            maxconn.saturating_mul(2).saturating_add(reserve(None, base) as usize));
    }
    fit
}

/// Places of the web's quick lane (see `Shares::web_quick`), out of its quarter.
const WEB_QUICK: usize = 2;

/// The shares of the reserve that what is not a session may take: bounded, so that a
/// flood of dashboard connections or of cancel requests cannot take the descriptors the
/// health checks and the sessions' server connects need. A quarter each of what the
/// reserve leaves after the descriptors open at start (19 of 100 with 21 open); the rest
/// is for the checks (a probe and a spare each) and a reload reading its files.
#[derive(Debug)]
pub struct Shares {
    /// Connections the web surface holds at once; more wait in its backlog.
    pub web: Arc<Semaphore>,
    /// Two more (one at small limits), for when `web` is taken: each serves one quick
    /// GET /health and nothing else (a monitor's check must not wait behind dashboards:
    /// Pacemaker restarts pgfront when it times out).
    pub web_quick: Arc<Semaphore>,
    /// Server connects that cancel requests make beyond one each (a cancel whose key is
    /// unknown goes to every server of its listener): more go one at a time.
    pub fanout: Arc<Semaphore>,
    /// The places given so far, [web, web_quick, fanout]: [`Shares::grow`] adds the rest.
    given: std::sync::Mutex<[usize; 3]>,
}

impl Shares {
    /// The shares of this process's descriptor limit.
    pub fn new() -> Shares {
        Shares::of(
            limit(),
            BASE.load(std::sync::atomic::Ordering::Relaxed),
            NODES.load(std::sync::atomic::Ordering::Relaxed),
        )
    }

    fn of(limit: Option<u64>, base: u64, nodes: u64) -> Shares {
        let [web, quick, fanout] = Shares::sizes(limit, base, nodes);
        Shares {
            web: Arc::new(Semaphore::new(web)),
            web_quick: Arc::new(Semaphore::new(quick)),
            fanout: Arc::new(Semaphore::new(fanout)),
            given: std::sync::Mutex::new([web, quick, fanout]),
        }
    }

    /// Places of [web, web_quick, fanout] for a `limit`, what was open at start and the
    /// nodes checked.
    fn sizes(limit: Option<u64>, base: u64, nodes: u64) -> [usize; 3] {
        let free = reserve_for(limit, base, nodes).saturating_sub(base);
        let quarter = usize::try_from(free / 4).unwrap_or(usize::MAX);
        let quick = WEB_QUICK.min(quarter / 2).max(1);
        [quarter.saturating_sub(quick).max(1), quick, quarter.max(1)]
    }

    /// Grows the shares to what the reserve is now (more nodes checked, a raised limit).
    /// They never shrink: places in use cannot be taken back, and a smaller reserve (a
    /// lowered limit) is already short of what the checks need, not made better by it.
    pub fn grow(&self) {
        let (base, nodes) =
            (BASE.load(std::sync::atomic::Ordering::Relaxed), NODES.load(std::sync::atomic::Ordering::Relaxed));
        self.grow_to(Shares::sizes(limit(), base, nodes));
    }

    fn grow_to(&self, sizes: [usize; 3]) {
        let mut given = self.given.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for ((sem, had), now) in [&self.web, &self.web_quick, &self.fanout].into_iter().zip(given.iter_mut()).zip(sizes)
        {
            if now > *had {
                sem.add_permits(now - *had);
                *had = now;
            }
        }
    }
}

impl Default for Shares {
    fn default() -> Shares {
        Shares::new()
    }
}

/// An unconnected TCP socket a health checker keeps and makes its check with when the
/// process is out of descriptors, so that a node that died during a shortage is still
/// found out (without it, the check is no verdict and the node keeps its state). The
/// descriptor is handed to the check, not freed, so no other thread can take it first;
/// once the check's connection closes, its number is free again for the refill.
#[derive(Debug)]
pub struct Spare {
    socket: Option<TcpSocket>,
    v6: bool,
    /// The address the node's checks last connected to (see [`Lent::known`]).
    known: Option<std::net::SocketAddr>,
}

/// The spare as lent to one check.
#[derive(Debug)]
pub struct Lent {
    pub socket: TcpSocket,
    /// The address the node's checks last connected to: a check address that is a name
    /// cannot be looked up while no descriptor is free (glibc opens /etc/hosts, or a
    /// socket to the resolver), so the check goes there.
    pub known: Option<std::net::SocketAddr>,
}

impl Spare {
    /// A spare of the family the check needs: its `source` address's when it has one,
    /// else the family of `target` (`ip:port`; a name: IPv4, or what [`Spare::seen`]
    /// learns), if a descriptor is free now.
    pub fn for_target(target: &str, source: Option<std::net::IpAddr>) -> Spare {
        let v6 = match source {
            Some(ip) => ip.is_ipv6(),
            None => target.parse::<std::net::SocketAddr>().is_ok_and(|a| a.is_ipv6()),
        };
        let mut s = Spare { socket: None, v6, known: None };
        s.refill();
        s
    }

    /// The socket to connect with; None if it was taken and not refilled yet.
    pub fn take(&mut self) -> Option<Lent> {
        Some(Lent { socket: self.socket.take()?, known: self.known })
    }

    /// The address a check actually connected to: the next spare is of its family (a name
    /// may resolve to IPv6 only), and a check with the spare goes there when the name
    /// cannot be looked up.
    pub fn seen(&mut self, peer: std::net::SocketAddr) {
        self.known = Some(peer);
        if peer.is_ipv6() != self.v6 {
            self.v6 = peer.is_ipv6();
            self.socket = None;
            self.refill();
        }
    }

    /// Opens a new one if it was taken (a no-op while descriptors stay short).
    pub fn refill(&mut self) {
        if self.socket.is_none() {
            self.socket = if self.v6 { TcpSocket::new_v6() } else { TcpSocket::new_v4() }.ok();
        }
    }

    #[cfg(test)]
    fn is_held(&self) -> bool {
        self.socket.is_some()
    }
}

/// Whether this process is out of descriptors now: a failed connect or name lookup is
/// then pgfront's shortage (glibc reports a lookup that found no descriptor as a lookup
/// failure, not as EMFILE), never the node's fault.
pub fn short_now() -> bool {
    match TcpSocket::new_v4() {
        Ok(_) => false,
        Err(e) => is_exhaustion(&e),
    }
}

/// Whether an error means the process is out of descriptors (Linux's EMFILE, or ENFILE
/// for the whole system): pgfront's shortage, never the peer's fault.
pub fn is_exhaustion(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

/// Whether a connect failed for want of something of this host's (local ports, the source
/// address, kernel buffers or memory) rather than because of the server: such a failure
/// says nothing against the server (see `Check::shun`).
pub fn is_local_shortage(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EADDRNOTAVAIL | libc::EADDRINUSE | libc::ENOBUFS | libc::ENOMEM))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maxconn_is_what_the_limit_holds_after_the_reserve() {
        assert_eq!(fitting(4096, None, 21), 4096);
        assert_eq!(fitting(4096, Some(65536), 21), 4096);
        assert_eq!(fitting(40_000, Some(65536), 21), (65536 - 100) / 2);
        assert_eq!(fitting(4096, Some(1024), 21), (1024 - 100) / 2);
        // A small limit keeps half: 64 descriptors hold 16 sessions.
        assert_eq!(fitting(4096, Some(64), 21), 16);
        assert_eq!(fitting(4096, Some(256), 21), 78);
        assert_eq!(fitting(4096, Some(2), 21), 1);
        // 16 workers with three listeners start with about 105 descriptors open.
        assert_eq!(fitting(40_000, Some(65536), 105), (65536 - 180) / 2);
    }

    #[test]
    fn the_web_surface_and_cancel_fan_outs_take_a_quarter_each_of_what_the_reserve_leaves() {
        let places =
            |s: Shares| (s.web.available_permits() + s.web_quick.available_permits(), s.fanout.available_permits());
        assert_eq!(places(Shares::of(Some(65536), 21, 3)), (19, 19));
        assert_eq!(places(Shares::of(Some(65536), 105, 3)), (18, 18));
        // Half of 64 is kept: 11 of it after what is open at start.
        assert_eq!(places(Shares::of(Some(64), 21, 3)), (2, 2));
        // At least one place each, main and quick.
        assert_eq!(places(Shares::of(Some(4), 21, 3)), (2, 1));
    }

    #[test]
    fn the_shares_grow_with_the_reserve_and_never_shrink() {
        let s = Shares::of(Some(65536), 21, 3);
        let held = s.web.clone().try_acquire_many_owned(5).unwrap();
        // 40 nodes: a reserve of 150, 129 after what is open at start, 32 places each.
        assert_eq!(Shares::sizes(Some(65536), 21, 40), [30, 2, 32]);
        s.grow_to(Shares::sizes(Some(65536), 21, 40));
        assert_eq!(
            (s.web.available_permits(), s.web_quick.available_permits(), s.fanout.available_permits()),
            (25, 2, 32)
        );
        s.grow_to([10, 1, 10]);
        assert_eq!(
            (s.web.available_permits(), s.web_quick.available_permits(), s.fanout.available_permits()),
            (25, 2, 32)
        );
        drop(held);
        assert_eq!(s.web.available_permits(), 30);
    }

    #[tokio::test]
    async fn a_spare_is_taken_once_and_refilled_in_the_targets_family() {
        let mut s = Spare::for_target("127.0.0.1:8008", None);
        assert!(s.is_held());
        let socket = s.take().expect("a socket").socket;
        assert!(socket.bind("127.0.0.1:0".parse().unwrap()).is_ok(), "IPv4");
        assert!(s.take().is_none(), "nothing left to give");
        s.refill();
        assert!(s.is_held());
        let mut s = Spare::for_target("[::1]:8008", None);
        if let Some(Lent { socket, .. }) = s.take() {
            // (a host without IPv6 has no socket to give)
            assert!(socket.bind("127.0.0.1:0".parse().unwrap()).is_err(), "IPv6");
        }
        // A name: IPv4 unless the source is IPv6, or a check connected over IPv6.
        let mut s = Spare::for_target("rest.example:8008", None);
        assert!(s.take().unwrap().socket.bind("127.0.0.1:0".parse().unwrap()).is_ok());
        s.refill();
        s.seen("[::1]:8008".parse().unwrap());
        if let Some(Lent { socket, known }) = s.take() {
            assert_eq!(known, Some("[::1]:8008".parse().unwrap()), "where the check last went");
            assert!(socket.bind("127.0.0.1:0".parse().unwrap()).is_err(), "IPv6 after seeing it");
        }
        let mut s = Spare::for_target("rest.example:8008", Some("::1".parse().unwrap()));
        if let Some(Lent { socket, .. }) = s.take() {
            assert!(socket.bind("127.0.0.1:0".parse().unwrap()).is_err(), "the source's family");
        }
    }

    #[test]
    fn the_reserve_grows_with_what_is_open_at_start_and_the_nodes_checked() {
        assert_eq!(reserve_for(Some(65536), 21, 3), 100);
        assert_eq!(reserve_for(Some(65536), 105, 3), 180);
        assert_eq!(reserve_for(Some(65536), 21, 40), 150);
        assert_eq!(reserve_for(None, 21, 40), 150);
        assert_eq!(reserve_for(Some(64), 105, 40), 32, "at most half the limit");
    }

    #[test]
    fn exhaustion_is_emfile_or_enfile() {
        assert!(is_exhaustion(&io::Error::from_raw_os_error(libc::EMFILE)));
        assert!(is_exhaustion(&io::Error::from_raw_os_error(libc::ENFILE)));
        assert!(!is_exhaustion(&io::Error::from_raw_os_error(libc::ECONNREFUSED)));
    }
}
