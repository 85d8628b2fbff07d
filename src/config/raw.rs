//! The TOML file as written, before validation.
//!
//! Every struct denies unknown fields so a typo is an error with a line number, and the
//! values whose validity depends on the rest of the file (names, references) are kept
//! `Spanned` so validation can point at the line that is wrong.

use std::time::Duration;

use serde::{Deserialize, Deserializer};
use toml::Spanned;

/// A duration written as `"3s"`, `"500ms"`, `"30m"` (humantime syntax; a unit is required).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

/// The longest duration accepted, HAProxy's own limit (2^31 - 1 ms, about 24.8 days): every
/// timer stays far from the clock's range, so no deadline computed from a setting can overflow.
pub const MAX_DURATION: Duration = Duration::from_millis(i32::MAX as u64);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let d = humantime::parse_duration(text.trim()).map_err(|e| {
            serde::de::Error::custom(format!(
                "invalid duration {text:?} ({e}); write it with a unit, like \"3s\", \"500ms\" or \"30m\""
            ))
        })?;
        if d > MAX_DURATION {
            return Err(serde::de::Error::custom(format!(
                "duration {text:?} is too long; the most is {} (as in HAProxy)",
                humantime::format_duration(MAX_DURATION)
            )));
        }
        Ok(Dur(d))
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub global: RawGlobal,
    #[serde(default)]
    pub defaults: RawDefaults,
    #[serde(default, rename = "node")]
    pub nodes: Vec<RawNode>,
    #[serde(default, rename = "listener")]
    pub listeners: Vec<RawListener>,
    pub web: Option<RawWeb>,
    /// `[[cluster]]` tables: several Patroni clusters in one process. A file without them
    /// is one unnamed cluster made of the top-level `[[node]]`s and `[[listener]]`s.
    #[serde(default, rename = "cluster")]
    pub clusters: Vec<RawCluster>,
}

/// One `[[cluster]]` table: a Patroni cluster with its nodes (or discovery) and listeners.
/// `[global]`, `[defaults]` and `[web]` stay top level and apply to every cluster.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCluster {
    pub name: Spanned<String>,
    #[serde(default, rename = "node")]
    pub nodes: Vec<RawNode>,
    #[serde(default, rename = "listener")]
    pub listeners: Vec<RawListener>,
    pub discovery: Option<Spanned<String>>,
    pub discovery_seeds: Option<Spanned<Vec<Spanned<String>>>>,
    pub discovery_allow: Option<Spanned<Vec<Spanned<String>>>>,
    pub discovery_inter: Option<Spanned<Dur>>,
}

#[derive(Debug, Default, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawGlobal {
    pub maxconn: Option<Spanned<usize>>,
    pub hard_stop_after: Option<Dur>,
    pub check_mode: Option<Spanned<String>>,
    pub hunt_inter: Option<Spanned<Dur>>,
    pub source: Option<Spanned<String>>,
    pub threads: Option<Spanned<usize>>,
    pub log_format: Option<Spanned<String>>,
    pub defer_accept: Option<bool>,
    /// `"patroni"`: learn nodes from Patroni's `GET /cluster` (see `config::discovery`).
    pub discovery: Option<Spanned<String>>,
    pub discovery_seeds: Option<Spanned<Vec<Spanned<String>>>>,
    pub discovery_allow: Option<Spanned<Vec<Spanned<String>>>>,
    pub discovery_inter: Option<Spanned<Dur>>,
}

/// Declares the settings that `[defaults]` holds and any `[[listener]]` may override, once,
/// so the two tables can never disagree on a key. (serde's `flatten` cannot be combined with
/// `deny_unknown_fields` or with toml's spans, hence a macro.)
macro_rules! tunables {
    ($($field:ident : $ty:ty),* $(,)?) => {
        /// Settings shared by every listener unless the listener overrides them.
        #[derive(Debug, Default, Deserialize, Clone)]
        #[serde(deny_unknown_fields)]
        pub struct RawDefaults {
            $(pub $field: Option<$ty>,)*
        }

        /// One `[[listener]]` table: its identity, then any setting of `[defaults]`.
        #[derive(Debug, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct RawListener {
            pub name: Spanned<String>,
            pub bind: Spanned<String>,
            pub balance: Option<Spanned<String>>,
            pub servers: Option<Spanned<Vec<Spanned<String>>>>,
            pub check: Spanned<RawCheck>,
            pub fallback_to_leader: Option<Spanned<bool>>,
            pub client_target: Option<Spanned<bool>>,
            pub tls: Option<Spanned<RawTls>>,
            pub routes: Option<Vec<Spanned<RawRoute>>>,
            pub default_target: Option<Spanned<String>>,
            $(pub $field: Option<$ty>,)*
        }

        impl RawListener {
            /// The listener's own settings laid over `defaults`, key by key.
            pub fn settings(&self, defaults: &RawDefaults) -> RawDefaults {
                RawDefaults {
                    $($field: self.$field.clone().or_else(|| defaults.$field.clone()),)*
                }
            }
        }
    };
}

tunables! {
    retries: Spanned<u32>,
    maxconn: Spanned<usize>,
    timeout_connect: Spanned<Dur>,
    timeout_client: Spanned<Dur>,
    timeout_server: Spanned<Dur>,
    timeout_check: Spanned<Dur>,
    timeout_queue: Spanned<Dur>,
    timeout_startup: Spanned<Dur>,
    inter: Spanned<Dur>,
    fastinter: Spanned<Dur>,
    downinter: Spanned<Dur>,
    fall: Spanned<u32>,
    rise: Spanned<u32>,
    check_port: Spanned<u16>,
    on_marked_down: Spanned<String>,
    max_replay_delay: Spanned<Dur>,
    max_connecting: Spanned<usize>,
    min_lsn_wait: Spanned<Dur>,
    log_sessions: Spanned<String>,
    check_tls: Spanned<RawCheckTls>,
    check_auth: Spanned<RawCheckAuth>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNode {
    pub name: Spanned<String>,
    pub address: Spanned<String>,
    pub check_address: Option<Spanned<String>>,
    pub maxconn: Option<Spanned<usize>>,
    pub source: Option<Spanned<String>>,
    pub check_tls: Option<Spanned<RawCheckTls>>,
    pub check_auth: Option<Spanned<RawCheckAuth>>,
}

/// HTTPS for health checks (HAProxy's `check-ssl verify … ca-file … crt …`). A node's
/// table is laid over `[defaults]`' key by key.
#[derive(Debug, Default, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawCheckTls {
    pub verify: Option<Spanned<String>>,
    pub ca: Option<String>,
    pub cert: Option<String>,
    pub key: Option<String>,
    pub server_name: Option<String>,
}

impl RawCheckTls {
    /// `self`'s keys where set, else `under`'s.
    pub fn over(&self, under: &RawCheckTls) -> RawCheckTls {
        RawCheckTls {
            verify: self.verify.clone().or_else(|| under.verify.clone()),
            ca: self.ca.clone().or_else(|| under.ca.clone()),
            cert: self.cert.clone().or_else(|| under.cert.clone()),
            key: self.key.clone().or_else(|| under.key.clone()),
            server_name: self.server_name.clone().or_else(|| under.server_name.clone()),
        }
    }
}

/// Basic auth for health checks; the password comes from a file or the environment,
/// never from the configuration itself (which is often world-readable).
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawCheckAuth {
    pub user: String,
    pub password_file: Option<String>,
    pub password_env: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCheck {
    #[serde(default = "default_method")]
    pub method: Spanned<String>,
    pub path: Spanned<String>,
    /// 200 when not given; spanned, so that an error names its own line.
    pub expect: Option<Spanned<u16>>,
}

fn default_method() -> Spanned<String> {
    Spanned::new(0..0, "OPTIONS".to_owned())
}

/// A routing rule on startup parameters.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub user: Option<String>,
    pub database: Option<String>,
    pub application_name: Option<String>,
    pub target: Spanned<String>,
}

/// A listener's `tls` table: terminate TLS with this certificate.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub cert: String,
    pub key: String,
    pub server: Option<String>,
    pub server_ca: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWeb {
    pub bind: Spanned<String>,
    pub refresh: Option<Dur>,
    #[serde(default, rename = "user")]
    pub users: Vec<RawUser>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUser {
    pub name: Spanned<String>,
    pub password: Option<Spanned<String>>,
    pub password_hash: Option<Spanned<String>>,
    pub role: Option<Spanned<String>>,
}
