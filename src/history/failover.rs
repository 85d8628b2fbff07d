//! Failover accounting: one record per leader change, from the moment pgfront sees the old
//! leader stop leading to the moment the new one is settled (its held sessions served).
//! Pure: the caller passes the time and the counters it read, so every sequence of leader
//! changes is tested without a cluster or a clock.

use std::collections::VecDeque;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::time::Instant;

/// Failovers kept.
pub const KEEP: usize = 50;
/// After the new leader is seen, the record stays open at least this long (sessions cut on
/// the old leader and held ones served are still being counted) ...
pub const SETTLE: Duration = Duration::from_secs(5);
/// ... and until the queues are empty, but no longer than this.
pub const MAX_OPEN: Duration = Duration::from_secs(60);

/// A moment on both clocks: the monotonic one for durations, the wall one to show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub mono: Instant,
    pub wall: SystemTime,
}

impl Stamp {
    pub fn now() -> Stamp {
        Stamp { mono: Instant::now(), wall: SystemTime::now() }
    }
}

/// Seconds since the Unix epoch, to the millisecond, for JSON and the page.
pub fn unix(t: SystemTime) -> f64 {
    let ms = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
    ms as f64 / 1000.0
}

fn secs(d: Duration) -> f64 {
    (d.as_millis() as f64) / 1000.0
}

/// What the data plane has counted so far, read when a failover begins and as it goes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Sessions that ever entered a listener's queue.
    pub held: u64,
    /// Sessions refused (queue timeout, no server, maxconn).
    pub refused: u64,
    /// Sessions on the old leader that ended other than by their client (PostgreSQL closed
    /// them as it demoted, or pgfront cut them); only for the node asked about.
    pub cut: u64,
    /// Sessions waiting in queues now.
    pub queue_now: usize,
    /// The longest wait of a session that left a queue since the failover began.
    pub longest_hold: Duration,
    /// When the first session was sent to the new leader on a write listener, since it
    /// became the leader.
    pub first_session: Option<Instant>,
}

/// One leader change as pgfront lived it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Failover {
    /// The leader before (none when the cluster had none).
    pub from: Option<String>,
    /// The leader after; none while no node leads yet.
    pub to: Option<String>,
    /// When pgfront saw the old leader stop leading (Unix seconds).
    pub started_at: f64,
    /// When the old leader's write check first failed before marking it DOWN, if that came
    /// first (it still held the lock, but PostgreSQL was stopping): writes stopped here.
    pub writes_stopped_at: Option<f64>,
    /// When pgfront saw the new leader lead: Patroni's flip, as pgfront saw it.
    pub flip_at: Option<f64>,
    /// From the old leader's end to the flip: nobody held the leader lock.
    pub no_leader_secs: Option<f64>,
    /// From the moment writes stopped (`writes_stopped_at`, else `started_at`) to the flip:
    /// how long writes had no target.
    pub write_gap_secs: Option<f64>,
    /// From the flip to the first session sent to the new leader on a write listener.
    pub first_session_secs: Option<f64>,
    /// Sessions held in a queue during the failover.
    pub held: u64,
    /// Sessions on the old leader that ended other than by their client.
    pub cut: u64,
    /// Sessions refused during the failover.
    pub refused: u64,
    /// The longest a session waited in a queue.
    pub longest_hold_secs: f64,
    /// False while still counting (no leader yet, or held sessions still being served).
    pub complete: bool,
}

#[derive(Debug, Clone)]
struct Open {
    started: Instant,
    /// When writes stopped, if before `started`.
    stopped: Option<Instant>,
    flip: Option<Instant>,
    baseline: Counters,
}

/// The last [`KEEP`] failovers, newest last, and the one being counted.
#[derive(Debug, Clone, Default)]
pub struct Failovers {
    records: VecDeque<Failover>,
    open: Option<Open>,
    /// A leader was seen: from then on, losing one is a failover (at start-up it is not).
    had_leader: bool,
}

impl Failovers {
    /// Newest first.
    pub fn recent(&self) -> Vec<Failover> {
        self.records.iter().rev().cloned().collect()
    }

    /// The old leader of the failover being counted, whose ended sessions are its cuts.
    pub fn counting_from(&self) -> Option<&str> {
        self.open.as_ref()?;
        self.records.back().and_then(|r| r.from.as_deref())
    }

    /// The leader changed from `from` to `to` at `at`; `read(old)` returns the counters,
    /// with `cut` counted on node `old`. `stopped`: when the old leader's write check
    /// stopped admitting it, if that was earlier (writes stopped there).
    pub fn changed(
        &mut self,
        at: Stamp,
        from: Option<&str>,
        to: Option<&str>,
        stopped: Option<Stamp>,
        read: impl Fn(Option<&str>) -> Counters,
    ) {
        match (from, to) {
            (None, None) => {}
            // The old leader stopped leading: a failover begins (the one before ends here).
            (Some(old), new) => {
                self.begin(at, Some(old), &read);
                if let Some(s) = stopped {
                    self.writes_stopped(s);
                }
                if let Some(new) = new {
                    self.flip(at, new);
                }
            }
            (None, Some(new)) => {
                match &self.open {
                    Some(o) if o.flip.is_none() => self.flip(at, new),
                    // A leader at start-up is no failover.
                    _ if !self.had_leader => {}
                    // A leader after a none nobody saw begin: count from here.
                    _ => {
                        self.begin(at, None, &read);
                        self.flip(at, new);
                    }
                }
                self.had_leader = true;
            }
        }
    }

    /// Closes the failover being counted, if any, and opens one from `old`.
    fn begin(&mut self, at: Stamp, old: Option<&str>, read: &impl Fn(Option<&str>) -> Counters) {
        self.close(at, read);
        let baseline = read(old);
        self.records.push_back(Failover {
            from: old.map(str::to_owned),
            to: None,
            started_at: unix(at.wall),
            writes_stopped_at: None,
            flip_at: None,
            no_leader_secs: None,
            write_gap_secs: None,
            first_session_secs: None,
            held: 0,
            cut: 0,
            refused: 0,
            longest_hold_secs: 0.0,
            complete: false,
        });
        while self.records.len() > KEEP {
            self.records.pop_front();
        }
        self.open = Some(Open { started: at.mono, stopped: None, flip: None, baseline });
        self.had_leader = true;
    }

    fn flip(&mut self, at: Stamp, new: &str) {
        let (Some(o), Some(r)) = (self.open.as_mut(), self.records.back_mut()) else { return };
        o.flip = Some(at.mono);
        r.to = Some(new.to_owned());
        r.flip_at = Some(unix(at.wall));
        r.no_leader_secs = Some(secs(at.mono.saturating_duration_since(o.started)));
        r.write_gap_secs = Some(secs(at.mono.saturating_duration_since(o.stopped.unwrap_or(o.started))));
    }

    /// The failover that just began had its writes stop earlier, at `at` (its old leader's
    /// write check stopped admitting while it still held the lock).
    fn writes_stopped(&mut self, at: Stamp) {
        let (Some(o), Some(r)) = (self.open.as_mut(), self.records.back_mut()) else { return };
        if o.flip.is_none() && at.mono <= o.started {
            o.stopped = Some(at.mono);
            r.writes_stopped_at = Some(unix(at.wall));
        }
    }

    /// Brings the open record's figures up to `read`'s, and closes it once the new leader
    /// has been settled for [`SETTLE`] with nobody left waiting (or after [`MAX_OPEN`]).
    pub fn tick(&mut self, at: Stamp, read: impl Fn(Option<&str>) -> Counters) {
        let Some(flip) = self.open.as_ref().map(|o| o.flip) else { return };
        let c = read(self.counting_from());
        self.update(&c);
        if let Some(flip) = flip {
            let settled = at.mono.saturating_duration_since(flip);
            if (settled >= SETTLE && c.queue_now == 0) || settled >= MAX_OPEN {
                self.finish();
            }
        }
    }

    fn close(&mut self, _at: Stamp, read: &impl Fn(Option<&str>) -> Counters) {
        if self.open.is_some() {
            let c = read(self.counting_from());
            self.update(&c);
            self.finish();
        }
    }

    fn finish(&mut self) {
        self.open = None;
        if let Some(r) = self.records.back_mut() {
            r.complete = true;
        }
    }

    fn update(&mut self, c: &Counters) {
        let (Some(o), Some(r)) = (self.open.as_ref(), self.records.back_mut()) else { return };
        let b = &o.baseline;
        r.held = c.held.saturating_sub(b.held);
        r.refused = c.refused.saturating_sub(b.refused);
        r.cut = c.cut.saturating_sub(b.cut);
        r.longest_hold_secs = r.longest_hold_secs.max(secs(c.longest_hold));
        if let (Some(flip), Some(first)) = (o.flip, c.first_session) {
            if first >= flip && r.first_session_secs.is_none() {
                r.first_session_secs = Some(secs(first - flip));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(start: Stamp, ms: u64) -> Stamp {
        let d = Duration::from_millis(ms);
        Stamp { mono: start.mono + d, wall: start.wall + d }
    }

    fn counters(held: u64, refused: u64, cut: u64, queue_now: usize) -> Counters {
        Counters { held, refused, cut, queue_now, ..Counters::default() }
    }

    #[tokio::test(start_paused = true)]
    async fn a_switchover_is_counted_from_the_old_leaders_end_to_the_settled_new_one() {
        let t0 = Stamp { mono: Instant::now(), wall: UNIX_EPOCH + Duration::from_secs(1_000) };
        let mut f = Failovers::default();
        f.changed(t0, None, Some("node1"), None, |_| Counters::default());
        assert!(f.recent().is_empty(), "a leader at start-up is no failover");

        // Before: 7 held and 2 refused ever, 4 sessions of node1 ended by the server.
        let stopped = at(t0, 8_500);
        f.changed(at(t0, 10_000), Some("node1"), None, Some(stopped), |n| {
            assert_eq!(n, Some("node1"), "cuts are counted on the old leader");
            counters(7, 2, 4, 0)
        });
        let r = &f.recent()[0];
        assert_eq!((r.from.as_deref(), r.to.as_deref(), r.complete), (Some("node1"), None, false));
        assert_eq!(r.started_at, 1_010.0);

        // No leader for 2.5 s: sessions queue, node1's sessions end.
        f.tick(at(t0, 11_000), |_| counters(10, 2, 7, 3));
        assert_eq!((f.recent()[0].held, f.recent()[0].cut), (3, 3), "figures as they go");
        f.changed(at(t0, 12_500), None, Some("node2"), None, |_| counters(12, 2, 7, 5));
        let first = t0.mono + Duration::from_millis(12_800);
        let during = |q| Counters {
            first_session: Some(first),
            longest_hold: Duration::from_millis(2_400),
            ..counters(12, 3, 7, q)
        };
        f.tick(at(t0, 13_000), |_| during(0));
        assert!(!f.recent()[0].complete, "still settling: sessions cut at the flip are yet to be counted");
        f.tick(at(t0, 17_500), |_| during(1));
        assert!(!f.recent()[0].complete, "someone still waits");
        f.tick(at(t0, 18_000), |_| during(0));
        let r = &f.recent()[0];
        assert!(r.complete);
        assert_eq!(r.to.as_deref(), Some("node2"));
        assert_eq!(r.flip_at, Some(1_012.5));
        assert_eq!(r.no_leader_secs, Some(2.5));
        assert_eq!(r.writes_stopped_at, Some(1_008.5));
        assert_eq!(r.write_gap_secs, Some(4.0), "from the old leader's last write admission to the flip");
        assert_eq!(r.first_session_secs, Some(0.3));
        assert_eq!((r.held, r.cut, r.refused), (5, 3, 1));
        assert_eq!(r.longest_hold_secs, 2.4);
        // Closed: later counts do not move it.
        f.tick(at(t0, 19_000), |_| counters(99, 99, 99, 0));
        assert_eq!(f.recent()[0].held, 5);
    }

    #[tokio::test(start_paused = true)]
    async fn a_direct_change_has_no_gap_and_a_new_failover_closes_the_open_one() {
        let t0 = Stamp::now();
        let mut f = Failovers::default();
        f.changed(t0, None, Some("a"), None, |_| Counters::default());
        f.changed(at(t0, 1_000), Some("a"), Some("b"), None, |_| counters(0, 0, 0, 0));
        assert_eq!(f.recent()[0].no_leader_secs, Some(0.0));
        f.changed(at(t0, 2_000), Some("b"), None, None, |n| counters(1, 0, if n == Some("a") { 2 } else { 0 }, 0));
        let all = f.recent();
        assert_eq!(all.len(), 2);
        assert!(all[1].complete, "the earlier one ended when the next began");
        assert_eq!((all[1].held, all[1].cut), (1, 2), "its figures up to then, cuts on its own old leader");
        assert!(!all[0].complete);
        assert_eq!(all[0].from.as_deref(), Some("b"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_long_outage_stays_open_and_fifty_are_kept() {
        let t0 = Stamp::now();
        let mut f = Failovers::default();
        f.changed(t0, None, Some("a"), None, |_| Counters::default());
        f.changed(at(t0, 1), Some("a"), None, None, |_| Counters::default());
        f.tick(at(t0, 600_000), |_| counters(0, 40, 0, 9));
        let r = &f.recent()[0];
        assert!(!r.complete, "no leader yet: still a failover under way");
        assert_eq!(r.refused, 40);
        // A first session before the flip is not the new leader's.
        f.changed(at(t0, 600_001), None, Some("b"), None, |_| counters(0, 40, 0, 0));
        let early = Counters { first_session: Some(t0.mono), ..Counters::default() };
        f.tick(at(t0, 600_002), |_| early);
        assert_eq!(f.recent()[0].first_session_secs, None);
        f.tick(at(t0, 600_001 + MAX_OPEN.as_millis() as u64), |_| counters(0, 40, 0, 3));
        assert!(f.recent()[0].complete, "closed after MAX_OPEN even with a queue");
        for i in 0..60u64 {
            f.changed(at(t0, 700_000 + i * 2), Some("b"), Some("c"), None, |_| Counters::default());
        }
        assert_eq!(f.recent().len(), KEEP);
    }
}
