//! Turning once-a-second readings into one point per [`super::STEP`]: sessions as they are
//! at the point, new sessions per second from the accepted counter, and the worst queue
//! depth and check latency seen within the step (a three-second switchover must not fall
//! between two points). Pure: the sampler task feeds readings and pushes what comes out.

use std::collections::BTreeMap;

use serde::Serialize;

/// One point.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Sample {
    /// Unix seconds.
    pub at: u64,
    pub listeners: Vec<ListenerPoint>,
    pub nodes: Vec<NodePoint>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ListenerPoint {
    pub name: String,
    pub sessions: u64,
    pub new_per_sec: f64,
    pub queue: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodePoint {
    pub name: String,
    pub check_ms: Option<f64>,
    pub lag_bytes: Option<u64>,
}

/// One reading of a listener.
#[derive(Debug, Clone, PartialEq)]
pub struct ListenerTick {
    pub name: String,
    pub sessions: u64,
    /// The listener's accepted counter (monotonic across reloads).
    pub accepted: u64,
    pub queue: u64,
}

/// One reading of a node.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeTick {
    pub name: String,
    pub check_ms: Option<f64>,
    pub lag_bytes: Option<u64>,
}

/// Readings since the last point.
#[derive(Debug, Clone, Default)]
pub struct Accumulator {
    /// Accepted counters at the last point, per listener.
    accepted_before: BTreeMap<String, u64>,
    /// Worst queue and latest sessions per listener within the step.
    listeners: BTreeMap<String, (u64, u64, u64)>,
    /// Worst latency and latest lag per node within the step.
    nodes: BTreeMap<String, (Option<f64>, Option<u64>)>,
}

impl Accumulator {
    /// Adds a reading.
    pub fn add(&mut self, listeners: &[ListenerTick], nodes: &[NodeTick]) {
        for l in listeners {
            let e = self.listeners.entry(l.name.clone()).or_insert((0, 0, l.accepted));
            e.0 = e.0.max(l.queue);
            e.1 = l.sessions;
            e.2 = l.accepted;
            self.accepted_before.entry(l.name.clone()).or_insert(l.accepted);
        }
        for n in nodes {
            let e = self.nodes.entry(n.name.clone()).or_insert((None, None));
            e.0 = match (e.0, n.check_ms) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            };
            e.1 = n.lag_bytes.or(e.1);
        }
    }

    /// The point for the step that ends at `at` (Unix seconds), `step_secs` long; starts
    /// the next step.
    pub fn point(&mut self, at: u64, step_secs: u64) -> Sample {
        let listeners = std::mem::take(&mut self.listeners);
        let nodes = std::mem::take(&mut self.nodes);
        let step = step_secs.max(1) as f64;
        let listeners = listeners
            .into_iter()
            .map(|(name, (queue, sessions, accepted))| {
                let before = self.accepted_before.insert(name.clone(), accepted).unwrap_or(accepted);
                let new_per_sec = accepted.saturating_sub(before) as f64 / step;
                ListenerPoint { name, sessions, new_per_sec, queue }
            })
            .collect::<Vec<_>>();
        // A listener that is gone (a reload removed it) starts afresh if it comes back.
        self.accepted_before.retain(|name, _| listeners.iter().any(|l| &l.name == name));
        let nodes =
            nodes.into_iter().map(|(name, (check_ms, lag_bytes))| NodePoint { name, check_ms, lag_bytes }).collect();
        Sample { at, listeners, nodes }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(sessions: u64, accepted: u64, queue: u64) -> Vec<ListenerTick> {
        vec![ListenerTick { name: "primary".into(), sessions, accepted, queue }]
    }

    fn n(ms: Option<f64>, lag: Option<u64>) -> Vec<NodeTick> {
        vec![NodeTick { name: "node2".into(), check_ms: ms, lag_bytes: lag }]
    }

    #[test]
    fn a_point_holds_the_rate_the_worst_queue_and_the_latest_sessions() {
        let mut a = Accumulator::default();
        a.add(&l(3, 100, 0), &n(Some(1.0), Some(0)));
        a.add(&l(4, 120, 6), &n(Some(40.0), None));
        a.add(&l(2, 150, 0), &n(Some(2.0), Some(512)));
        let p = a.point(1_000, 10);
        assert_eq!(p.at, 1_000);
        let lp = &p.listeners[0];
        assert_eq!((lp.sessions, lp.queue), (2, 6), "sessions as they are, the deepest queue within the step");
        assert_eq!(lp.new_per_sec, 5.0, "50 accepted in 10 s");
        assert_eq!((p.nodes[0].check_ms, p.nodes[0].lag_bytes), (Some(40.0), Some(512)));

        // The next step counts from the last reading.
        a.add(&l(2, 160, 0), &n(None, None));
        let p = a.point(1_010, 10);
        assert_eq!(p.listeners[0].new_per_sec, 1.0);
        assert_eq!(p.listeners[0].queue, 0);
        assert_eq!(p.nodes[0].check_ms, None, "no answer seen: no latency made up");
    }

    #[test]
    fn a_step_with_no_readings_is_empty_not_a_made_up_value() {
        let mut a = Accumulator::default();
        let p = a.point(10, 10);
        assert!(p.listeners.is_empty() && p.nodes.is_empty());
    }
}
