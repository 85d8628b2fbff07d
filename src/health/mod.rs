//! Health checking: the pure inter/fall/rise state machine, the probe seam with its
//! Patroni HTTP(S) implementation, and Patroni's rules. Pure parts and probes only: the
//! checker tasks that join them to the live cluster are `cluster::checker`.

mod machine;
mod patroni;
mod probe;
mod tls;

pub use machine::{Machine, Status, Transition};
pub use patroni::{verdict, NodeStatus, Verdict, View, Xlog};
pub use probe::{CheckCode, HttpProbe, Probe, ProbeResult};
pub use tls::{CheckAuth, CheckTls, Verify};
