//! Health checking: the pure inter/fall/rise state machine, the probe seam with its
//! Patroni HTTP implementation, and the checker tasks that join them.

mod checker;
mod machine;
mod patroni;
mod probe;

pub use checker::spawn_checkers;
pub use machine::{Machine, Status, Transition};
pub use patroni::{verdict, NodeStatus, Verdict, View};
pub use probe::{CheckCode, HttpProbe, Probe, ProbeResult};
