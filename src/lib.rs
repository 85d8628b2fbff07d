//! pgfront: a PostgreSQL-aware TCP load balancer for Patroni clusters.
//!
//! Data path: [`proxy`] accepts and serves sessions, choosing servers through [`balance`]
//! and reading the PostgreSQL opening through [`pg`]. Control path: [`health`] probes
//! Patroni and drives the live view in [`cluster`]; [`discovery`] learns the nodes from
//! Patroni's member list. [`config`] validates the file,
//! [`stats`] and [`web`] show what happens, and [`app`] wires it all.

pub mod app;
pub mod balance;
pub mod cluster;
pub mod config;
pub mod discovery;
pub mod fds;
pub mod health;
pub mod history;
pub mod import;
pub mod malloc;
pub mod net;
pub mod pg;
pub mod proxy;
pub mod retired;
pub mod sampler;
pub mod state;
pub mod stats;
pub mod status;
pub mod tls;
pub mod web;

pub use app::{Bound, Pgfront, Workers};
pub use config::Config;
