//! A short log of what changed and why (servers up and down, leader changes, reloads),
//! kept across reloads for the stats page.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::SystemTime;

const KEEP: usize = 100;

#[derive(Debug, Clone)]
pub struct Event {
    pub at: SystemTime,
    pub text: String,
}

#[derive(Debug, Default)]
pub struct EventLog {
    events: Mutex<VecDeque<Event>>,
}

impl EventLog {
    pub fn push(&self, text: String) {
        let mut e = self.events.lock().unwrap_or_else(|p| p.into_inner());
        if e.len() == KEEP {
            e.pop_front();
        }
        e.push_back(Event { at: SystemTime::now(), text });
    }

    /// Newest first.
    pub fn recent(&self) -> Vec<Event> {
        self.events.lock().unwrap_or_else(|p| p.into_inner()).iter().rev().cloned().collect()
    }
}
