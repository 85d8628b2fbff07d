//! A fixed-size ring of the latest values: pushing past capacity drops the oldest, so
//! an hour of history costs the same memory after a day as after an hour.

use std::collections::VecDeque;

#[derive(Debug, Clone)]
pub struct Ring<T> {
    cap: usize,
    items: VecDeque<T>,
}

impl<T> Ring<T> {
    /// A ring of at most `cap` values (at least one).
    pub fn new(cap: usize) -> Ring<T> {
        let cap = cap.max(1);
        Ring { cap, items: VecDeque::with_capacity(cap) }
    }

    /// Adds the newest value; returns the oldest one if the ring was full.
    pub fn push(&mut self, v: T) -> Option<T> {
        let dropped = if self.items.len() == self.cap { self.items.pop_front() } else { None };
        self.items.push_back(v);
        dropped
    }

    /// Oldest first.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = &T> + ExactSizeIterator + '_ {
        self.items.iter()
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn capacity(&self) -> usize {
        self.cap
    }

    pub fn last(&self) -> Option<&T> {
        self.items.back()
    }

    pub fn last_mut(&mut self) -> Option<&mut T> {
        self.items.back_mut()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_cap_values_oldest_first() {
        let mut r = Ring::new(3);
        assert!(r.is_empty());
        assert_eq!(r.push(1), None);
        assert_eq!(r.push(2), None);
        assert_eq!(r.push(3), None);
        assert_eq!(r.push(4), Some(1), "full: the oldest goes");
        assert_eq!(r.iter().copied().collect::<Vec<_>>(), vec![2, 3, 4]);
        assert_eq!((r.len(), r.capacity(), r.last()), (3, 3, Some(&4)));
    }

    #[test]
    fn an_hour_at_ten_seconds_is_360_points_whatever_runs_longer() {
        let mut r = Ring::new(360);
        for i in 0..10_000u32 {
            r.push(i);
        }
        assert_eq!(r.len(), 360);
        assert_eq!(r.iter().next(), Some(&(10_000 - 360)));
        assert_eq!(Ring::<u8>::new(0).capacity(), 1, "never a ring that cannot hold its newest value");
    }
}
