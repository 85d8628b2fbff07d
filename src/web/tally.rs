//! Refusals worth a WARN line (connections turned away, logins refused) come in crowds: a
//! line for the first, then at most one every WARN_EVERY with how many came since, and the
//! tail of a crowd written by a tick rather than with the next crowd, days later.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// At most one WARN line this often about one kind of refusal.
pub const WARN_EVERY: Duration = Duration::from_secs(10);

/// When the last line was written, and how many were counted since.
#[derive(Default)]
pub struct Tally(Mutex<(Option<Instant>, u64)>);

impl Tally {
    /// Counts one; `Some(count)` when a line is due now (none written within WARN_EVERY):
    /// the caller writes it, after the lock is given back.
    pub fn count(&self) -> Option<u64> {
        let mut g = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        g.1 += 1;
        if g.0.is_some_and(|at| at.elapsed() < WARN_EVERY) {
            return None;
        }
        let n = g.1;
        *g = (Some(Instant::now()), 0);
        Some(n)
    }

    /// For the tick: `Some(count)` of those counted and not yet written, once WARN_EVERY
    /// has passed since the last line.
    pub fn flush(&self) -> Option<u64> {
        let mut g = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if g.1 == 0 || g.0.is_some_and(|at| at.elapsed() < WARN_EVERY) {
            return None;
        }
        let n = g.1;
        *g = (Some(Instant::now()), 0);
        Some(n)
    }

    #[cfg(test)]
    fn as_if_a_while_passed(&self) {
        let mut g = self.0.lock().unwrap();
        g.0 = g.0.and_then(|at| at.checked_sub(WARN_EVERY));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_at_once_then_counts_and_the_tail_is_flushed() {
        let t = Tally::default();
        assert_eq!(t.flush(), None, "nothing counted");
        assert_eq!(t.count(), Some(1));
        assert_eq!((t.count(), t.count()), (None, None), "within WARN_EVERY");
        assert_eq!(t.flush(), None, "not yet");
        t.as_if_a_while_passed();
        assert_eq!(t.flush(), Some(2), "the tail of the crowd");
        assert_eq!(t.flush(), None);
        t.as_if_a_while_passed();
        assert_eq!(t.count(), Some(1), "a new crowd: at once");
    }
}
