//! Who led when: one segment per leadership term (or gap with no leader), kept for the
//! last hour so the page can draw it and scripts can read it.

use std::collections::VecDeque;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use super::failover::unix;

/// Segments kept at most, whatever happens within the hour (a flapping cluster).
const MAX_SEGMENTS: usize = 500;

/// One term: `leader` from `from` until `to` (open while it lasts).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Segment {
    /// None: no node led (a failover, a conflict, or nothing known yet at start-up).
    pub leader: Option<String>,
    /// Unix seconds.
    pub from: f64,
    /// Unix seconds; none for the current term.
    pub to: Option<f64>,
}

#[derive(Debug, Clone)]
pub struct Timeline {
    segments: VecDeque<(Option<String>, SystemTime, Option<SystemTime>)>,
    keep: Duration,
}

impl Timeline {
    /// Starts with "no leader known" at `at`, keeping segments that ended within `keep`.
    pub fn new(at: SystemTime, keep: Duration) -> Timeline {
        let mut segments = VecDeque::new();
        segments.push_back((None, at, None));
        Timeline { segments, keep }
    }

    /// `leader` leads from `at` (None: nobody does).
    pub fn changed(&mut self, at: SystemTime, leader: Option<&str>) {
        if let Some(last) = self.segments.back_mut() {
            if last.0.as_deref() == leader {
                return;
            }
            last.2 = Some(at);
        }
        self.segments.push_back((leader.map(str::to_owned), at, None));
        let horizon = at.checked_sub(self.keep);
        while self.segments.len() > MAX_SEGMENTS
            || self.segments.front().is_some_and(|s| matches!((s.2, horizon), (Some(end), Some(h)) if end < h))
        {
            self.segments.pop_front();
        }
    }

    /// Oldest first.
    pub fn segments(&self) -> Vec<Segment> {
        self.segments
            .iter()
            .map(|(leader, from, to)| Segment { leader: leader.clone(), from: unix(*from), to: to.map(unix) })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use super::*;

    #[test]
    fn terms_and_gaps_in_order_for_the_last_hour() {
        let t = |s: u64| UNIX_EPOCH + Duration::from_secs(s);
        let mut tl = Timeline::new(t(100), Duration::from_secs(3600));
        tl.changed(t(101), Some("node1"));
        tl.changed(t(101), Some("node1"));
        tl.changed(t(200), None);
        tl.changed(t(203), Some("node2"));
        let s = tl.segments();
        let view: Vec<(Option<&str>, f64, Option<f64>)> =
            s.iter().map(|s| (s.leader.as_deref(), s.from, s.to)).collect();
        assert_eq!(
            view,
            vec![
                (None, 100.0, Some(101.0)),
                (Some("node1"), 101.0, Some(200.0)),
                (None, 200.0, Some(203.0)),
                (Some("node2"), 203.0, None)
            ]
        );
        // Two hours later, only what ended within the hour remains, and the current term.
        tl.changed(t(203 + 7200), None);
        tl.changed(t(203 + 7300), Some("node3"));
        let s = tl.segments();
        assert_eq!(s.len(), 3, "{s:?}");
        assert_eq!(s[0].leader.as_deref(), Some("node2"), "the term that ended within the hour stays");
    }
}
