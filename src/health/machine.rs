//! The inter/fall/rise state machine: plain data, no clock, no I/O, so every sequence of
//! check results can be tested directly.
//!
//! Unlike HAProxy, a server starts DOWN and must pass `rise` checks before it takes
//! sessions: a balancer that sends writes to "the leader" must not guess at start-up.

use std::time::Duration;

use crate::config::CheckTiming;

/// The two stable states; the transitional ones are `Up` with failures or `Down` with
/// passes counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Up,
    Down,
}

/// A state change caused by one check result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    WentUp,
    WentDown,
}

/// Health of one check target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Machine {
    status: Status,
    /// Consecutive results against the current status: failures while up, passes while down.
    streak: u32,
    rise: u32,
    fall: u32,
}

impl Machine {
    /// A machine that starts DOWN with no pass seen.
    pub fn new(rise: u32, fall: u32) -> Machine {
        Machine { status: Status::Down, streak: 0, rise: rise.max(1), fall: fall.max(1) }
    }

    pub fn status(&self) -> Status {
        self.status
    }

    pub fn is_up(&self) -> bool {
        self.status == Status::Up
    }

    /// Feeds one result; returns the transition it caused, if any.
    pub fn observe(&mut self, passed: bool) -> Option<Transition> {
        match (self.status, passed) {
            (Status::Up, true) | (Status::Down, false) => {
                self.streak = 0;
                None
            }
            (Status::Up, false) => {
                self.streak += 1;
                (self.streak >= self.fall).then(|| self.flip(Status::Down, Transition::WentDown))
            }
            (Status::Down, true) => {
                self.streak += 1;
                (self.streak >= self.rise).then(|| self.flip(Status::Up, Transition::WentUp))
            }
        }
    }

    /// New rise and fall counts (a reload): the status stays; the streak counts towards the
    /// new bounds from the next result on.
    pub fn retune(&mut self, rise: u32, fall: u32) {
        self.rise = rise.max(1);
        self.fall = fall.max(1);
    }

    /// Forces a state, as an admin action or a leader arbitration does.
    pub fn force(&mut self, status: Status) -> Option<Transition> {
        if self.status == status {
            self.streak = 0;
            return None;
        }
        Some(self.flip(status, if status == Status::Up { Transition::WentUp } else { Transition::WentDown }))
    }

    fn flip(&mut self, status: Status, t: Transition) -> Transition {
        self.status = status;
        self.streak = 0;
        t
    }

    /// Consecutive results against the current status so far (failures while UP, passes
    /// while DOWN).
    pub fn streak(&self) -> u32 {
        self.streak
    }

    /// True between the first contrary result and the flip.
    pub fn in_transition(&self) -> bool {
        self.streak > 0
    }

    /// When the next check is due: `fastinter` in transition, `downinter` when down,
    /// `inter` when up.
    pub fn next_interval(&self, t: &CheckTiming) -> Duration {
        match (self.status, self.in_transition()) {
            (_, true) => t.fastinter,
            (Status::Up, false) => t.inter,
            (Status::Down, false) => t.downinter,
        }
    }

    /// HAProxy's status text: `UP`, `DOWN`, `UP 1/3` (1 of 3 failures seen), `DOWN 1/2`.
    pub fn label(&self) -> String {
        match (self.status, self.streak) {
            (Status::Up, 0) => "UP".to_owned(),
            (Status::Down, 0) => "DOWN".to_owned(),
            (Status::Up, n) => format!("UP {n}/{}", self.fall),
            (Status::Down, n) => format!("DOWN {n}/{}", self.rise),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(m: &mut Machine, results: &[bool]) -> Vec<Option<Transition>> {
        results.iter().map(|r| m.observe(*r)).collect()
    }

    #[test]
    fn starts_down_until_rise_passes() {
        let mut m = Machine::new(2, 3);
        assert_eq!(m.status(), Status::Down);
        assert_eq!(m.label(), "DOWN");
        assert_eq!(m.observe(true), None);
        assert_eq!(m.label(), "DOWN 1/2");
        assert_eq!(m.observe(true), Some(Transition::WentUp));
        assert_eq!(m.label(), "UP");
    }

    #[test]
    fn fall_consecutive_failures_mark_down() {
        let mut m = Machine::new(2, 3);
        run(&mut m, &[true, true]);
        assert_eq!(run(&mut m, &[false, false]), vec![None, None]);
        assert_eq!(m.label(), "UP 2/3");
        assert_eq!(m.observe(false), Some(Transition::WentDown));
        assert_eq!(m.label(), "DOWN");
    }

    #[test]
    fn a_pass_resets_the_failure_streak() {
        let mut m = Machine::new(2, 3);
        run(&mut m, &[true, true]);
        let t = run(&mut m, &[false, false, true, false, false]);
        assert!(t.iter().all(Option::is_none), "{t:?}");
        assert!(m.is_up());
        assert_eq!(m.label(), "UP 2/3");
    }

    #[test]
    fn a_failure_resets_the_rise_streak() {
        let mut m = Machine::new(3, 3);
        let t = run(&mut m, &[true, true, false, true, true]);
        assert!(t.iter().all(Option::is_none), "{t:?}");
        assert_eq!(m.label(), "DOWN 2/3");
        assert_eq!(m.observe(true), Some(Transition::WentUp));
    }

    #[test]
    fn rise_one_fall_one_flip_on_every_contrary_result() {
        let mut m = Machine::new(1, 1);
        assert_eq!(
            run(&mut m, &[true, true, false, false, true]),
            vec![Some(Transition::WentUp), None, Some(Transition::WentDown), None, Some(Transition::WentUp)]
        );
    }

    #[test]
    fn intervals_follow_the_state() {
        let t = CheckTiming {
            inter: Duration::from_secs(3),
            fastinter: Duration::from_secs(1),
            downinter: Duration::from_secs(5),
            fall: 3,
            rise: 2,
            connect_timeout: Duration::from_secs(3),
            timeout: Duration::from_secs(5),
        };
        let mut m = Machine::new(2, 3);
        assert_eq!(m.next_interval(&t), t.downinter);
        m.observe(true);
        assert_eq!(m.next_interval(&t), t.fastinter);
        m.observe(true);
        assert_eq!(m.next_interval(&t), t.inter);
        m.observe(false);
        assert_eq!(m.next_interval(&t), t.fastinter);
    }

    #[test]
    fn force_changes_state_once() {
        let mut m = Machine::new(2, 3);
        assert_eq!(m.force(Status::Up), Some(Transition::WentUp));
        assert_eq!(m.force(Status::Up), None);
        assert_eq!(m.force(Status::Down), Some(Transition::WentDown));
    }
}
