//! The last hour, kept in memory: a sample every [`STEP`] of sessions, new sessions per
//! second and queue depth per listener, check latency per node and replication lag per
//! replica ([`POINTS`] of them, a ring); who led when; and the last failovers with what
//! they cost. Fed by the sampler task and the data plane's reactions to leader changes;
//! read by the page and `/status.json`. Nothing here knows the live cluster: the feeders
//! pass plain values, so every part is tested as pure code.

pub mod failover;
mod ring;
pub mod sample;
mod timeline;

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use serde::Serialize;

pub use failover::{Counters, Failover, Failovers, Stamp};
pub use ring::Ring;
pub use sample::{Accumulator, ListenerTick, NodeTick, Sample};
pub use timeline::{Segment, Timeline};

/// How far back a failover's counts begin before pgfront saw the old leader stop leading:
/// PostgreSQL closes its sessions as it demotes (or dies) a moment before Patroni's REST API
/// says so, and new sessions are held from the leader's first answer that is not a running
/// primary; those belong to the failover too.
pub const LOOKBACK: Duration = Duration::from_secs(10);

/// One point every ten seconds ...
pub const STEP: Duration = Duration::from_secs(10);
/// ... for an hour.
pub const POINTS: usize = 360;

/// Everything kept, behind one lock taken briefly by the sampler (once a second), the
/// reactor (per leader change) and the views.
#[derive(Debug)]
pub struct History {
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    samples: Ring<Sample>,
    timeline: Timeline,
    failovers: Failovers,
    /// The counters of the last [`LOOKBACK`], one reading a second (cuts per node), for
    /// the baseline of a failover that begins.
    recent: Ring<Recent>,
    /// The leader whose write check last stopped admitting it while it led, and when.
    stopped: Option<(Stamp, String)>,
}

/// One second's reading of the counters a failover starts from.
#[derive(Debug, Clone)]
pub struct Recent {
    pub at: tokio::time::Instant,
    pub held: u64,
    pub refused: u64,
    /// Sessions ended other than by their client, per node.
    pub ended: BTreeMap<String, u64>,
}

impl Default for History {
    fn default() -> Self {
        History::new(SystemTime::now())
    }
}

impl History {
    pub fn new(at: SystemTime) -> History {
        History {
            inner: Mutex::new(Inner {
                samples: Ring::new(POINTS),
                timeline: Timeline::new(at, STEP * POINTS as u32),
                failovers: Failovers::default(),
                recent: Ring::new(LOOKBACK.as_secs() as usize + 2),
                stopped: None,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic elsewhere must not take the history (or the page) down with it.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn push(&self, sample: Sample) {
        self.lock().samples.push(sample);
    }

    /// The leader `node`'s write check stopped admitting it at `at` (it still holds the lock,
    /// but PostgreSQL is stopping or its answers fail): if it stops leading before its check
    /// admits again, that failover's writes stopped here, however long the answers took to
    /// fail (a REST API that hangs takes `timeout_check` a probe: with the shipped timings
    /// the first failed answer came 10.6-12 s before the claim ended, and a 10 s bound here
    /// dropped it, so the failover row showed a write gap of 4 s for 15).
    pub fn writes_stopped(&self, at: Stamp, node: &str) {
        let mut i = self.lock();
        // The earliest stop of this leader since it last admitted is the one that counts.
        let earlier = matches!(&i.stopped, Some((s, n)) if n == node && s.mono <= at.mono);
        if !earlier {
            i.stopped = Some((at, node.to_owned()));
        }
    }

    /// The leader `node`'s write check admits again: a stop noted before is over.
    pub fn writes_resumed(&self, node: &str) {
        let mut i = self.lock();
        if matches!(&i.stopped, Some((_, n)) if n == node) {
            i.stopped = None;
        }
    }

    /// Keeps a reading for the baselines of failovers to come.
    pub fn note(&self, reading: Recent) {
        self.lock().recent.push(reading);
    }

    /// The leader changed: the timeline and the failover accounting follow. A failover's
    /// counts begin at the oldest reading within [`LOOKBACK`].
    pub fn leader_changed(
        &self,
        at: Stamp,
        from: Option<&str>,
        to: Option<&str>,
        read: impl Fn(Option<&str>) -> Counters,
    ) {
        let mut guard = self.lock();
        let i = &mut *guard;
        i.timeline.changed(at.wall, to);
        let before = i.recent.iter().find(|r| at.mono.saturating_duration_since(r.at) <= LOOKBACK).cloned();
        let stopped = match (i.stopped.take(), from) {
            (Some((s, n)), Some(old)) if n == old => Some(s),
            _ => None,
        };
        i.failovers.changed(at, from, to, stopped, |node| back_to(read(node), before.as_ref(), node));
    }

    /// The old leader of the failover being counted, if one is.
    pub fn counting_from(&self) -> Option<String> {
        self.lock().failovers.counting_from().map(str::to_owned)
    }

    /// Updates (and, once settled, closes) the failover being counted.
    pub fn tick(&self, at: Stamp, read: impl Fn(Option<&str>) -> Counters) {
        self.lock().failovers.tick(at, read);
    }

    pub fn view(&self) -> HistoryView {
        let i = self.lock();
        HistoryView {
            series: Series::of(i.samples.iter()),
            leader_timeline: i.timeline.segments(),
            failovers: i.failovers.recent(),
        }
    }
}

/// Counters as they were at `before` (never above what they are now: counters only grow,
/// and a reload may have started some afresh).
fn back_to(now: Counters, before: Option<&Recent>, node: Option<&str>) -> Counters {
    let Some(b) = before else { return now };
    let cut = node.and_then(|n| b.ended.get(n)).copied().unwrap_or(now.cut);
    Counters { held: b.held.min(now.held), refused: b.refused.min(now.refused), cut: cut.min(now.cut), ..now }
}

/// What the views read, serialized into `/status.json` as is.
#[derive(Debug, Clone, Default, Serialize)]
pub struct HistoryView {
    pub series: Series,
    /// Oldest first.
    pub leader_timeline: Vec<Segment>,
    /// Newest first.
    pub failovers: Vec<Failover>,
}

/// The samples as one column per measure, aligned on `times`; `null` where a listener or
/// node did not exist yet (or no value was known).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Series {
    pub step_secs: u64,
    /// Unix seconds of each point, oldest first.
    pub times: Vec<u64>,
    pub listeners: BTreeMap<String, ListenerSeries>,
    pub nodes: BTreeMap<String, NodeSeries>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ListenerSeries {
    /// Sessions open at the sample.
    pub sessions: Vec<Option<f64>>,
    /// Sessions accepted per second over the step.
    pub new_per_sec: Vec<Option<f64>>,
    /// The deepest queue seen during the step.
    pub queue: Vec<Option<f64>>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct NodeSeries {
    /// The slowest check answer during the step, in milliseconds.
    pub check_ms: Vec<Option<f64>>,
    /// Replay lag behind the leader in bytes (replicas only).
    pub lag_bytes: Vec<Option<f64>>,
}

impl Series {
    fn of<'a>(samples: impl ExactSizeIterator<Item = &'a Sample>) -> Series {
        let n = samples.len();
        let mut s = Series { step_secs: STEP.as_secs(), ..Series::default() };
        for (i, sample) in samples.enumerate() {
            s.times.push(sample.at);
            for l in &sample.listeners {
                let e = s.listeners.entry(l.name.clone()).or_insert_with(|| ListenerSeries {
                    sessions: vec![None; n],
                    new_per_sec: vec![None; n],
                    queue: vec![None; n],
                });
                e.sessions[i] = Some(l.sessions as f64);
                e.new_per_sec[i] = Some(l.new_per_sec);
                e.queue[i] = Some(l.queue as f64);
            }
            for d in &sample.nodes {
                let e = s
                    .nodes
                    .entry(d.name.clone())
                    .or_insert_with(|| NodeSeries { check_ms: vec![None; n], lag_bytes: vec![None; n] });
                e.check_ms[i] = d.check_ms;
                e.lag_bytes[i] = d.lag_bytes.map(|b| b as f64);
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::sample::{ListenerPoint, NodePoint};

    fn sample(at: u64, listeners: &[(&str, u64)], nodes: &[(&str, Option<f64>)]) -> Sample {
        Sample {
            at,
            listeners: listeners
                .iter()
                .map(|(n, s)| ListenerPoint { name: (*n).to_owned(), sessions: *s, new_per_sec: 0.5, queue: 0 })
                .collect(),
            nodes: nodes
                .iter()
                .map(|(n, ms)| NodePoint { name: (*n).to_owned(), check_ms: *ms, lag_bytes: None })
                .collect(),
        }
    }

    #[test]
    fn series_are_aligned_and_null_where_nothing_was_known() {
        let h = History::new(SystemTime::UNIX_EPOCH);
        h.push(sample(10, &[("primary", 1)], &[("node1", Some(2.0))]));
        h.push(sample(20, &[("primary", 2), ("extra", 5)], &[("node1", None)]));
        let s = h.view().series;
        assert_eq!(s.times, vec![10, 20]);
        assert_eq!(s.step_secs, 10);
        assert_eq!(s.listeners["primary"].sessions, vec![Some(1.0), Some(2.0)]);
        assert_eq!(s.listeners["extra"].sessions, vec![None, Some(5.0)], "a listener added by a reload");
        assert_eq!(s.nodes["node1"].check_ms, vec![Some(2.0), None]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failover_counts_from_the_lookback_before_the_leader_was_seen_gone() {
        let h = History::new(SystemTime::UNIX_EPOCH);
        let t0 = tokio::time::Instant::now();
        let stamp =
            |s: u64| Stamp { mono: t0 + Duration::from_secs(s), wall: SystemTime::UNIX_EPOCH + Duration::from_secs(s) };
        h.leader_changed(stamp(0), None, Some("node1"), |_| Counters::default());
        for s in 0..=20u64 {
            // node1's sessions end by the server from second 15 on (PostgreSQL stopping).
            let ended = BTreeMap::from([("node1".to_owned(), if s >= 15 { 4 } else { 1 })]);
            h.note(Recent { at: t0 + Duration::from_secs(s), held: s, refused: 2, ended });
        }
        // Seen gone at 20 s: the baseline is the reading of 10 s, before the cuts began.
        let now = Counters { held: 20, refused: 2, cut: 4, ..Counters::default() };
        h.leader_changed(stamp(20), Some("node1"), None, |_| now);
        h.tick(stamp(21), |_| Counters { held: 22, refused: 3, cut: 5, ..Counters::default() });
        let f = &h.view().failovers[0];
        assert_eq!((f.cut, f.held, f.refused), (4, 12, 1), "{f:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn writes_stopped_long_before_the_claim_ends_begin_the_write_gap_unless_they_resumed() {
        // Found by helper-47: a leader whose REST API hung (5 s a probe) failed its first
        // answer 10.6-12 s before its claim ended, and the 10 s bound dropped it: the row had
        // no writes_stopped_at and a write gap of 4 s for 15.
        let h = History::new(SystemTime::UNIX_EPOCH);
        let t0 = tokio::time::Instant::now();
        let stamp =
            |s: u64| Stamp { mono: t0 + Duration::from_secs(s), wall: SystemTime::UNIX_EPOCH + Duration::from_secs(s) };
        h.leader_changed(stamp(0), None, Some("node1"), |_| Counters::default());
        h.writes_stopped(stamp(3), "node1");
        h.writes_stopped(stamp(9), "node1");
        h.leader_changed(stamp(15), Some("node1"), None, |_| Counters::default());
        h.leader_changed(stamp(17), None, Some("node2"), |_| Counters::default());
        let from = |node: &str| h.view().failovers.into_iter().find(|f| f.from.as_deref() == Some(node)).unwrap();
        assert_eq!(from("node1").writes_stopped_at, Some(3.0), "from the first failed answer, 12 s before");
        assert_eq!(from("node1").write_gap_secs, Some(14.0));
        // A stop that ended (the leader admitted again) says nothing of a later failover.
        h.writes_stopped(stamp(100), "node2");
        h.writes_resumed("node2");
        h.leader_changed(stamp(400), Some("node2"), None, |_| Counters::default());
        assert_eq!(from("node2").writes_stopped_at, None);
    }

    #[test]
    fn at_most_an_hour_of_points() {
        let h = History::new(SystemTime::UNIX_EPOCH);
        for i in 0..(POINTS as u64 + 40) {
            h.push(sample(i * 10, &[("primary", i)], &[]));
        }
        let s = h.view().series;
        assert_eq!(s.times.len(), POINTS);
        assert_eq!(s.times[0], 400);
    }
}
