//! Nodes from Patroni: reading `GET /cluster` (the member list with names, PostgreSQL and
//! REST addresses), keeping only members inside `discovery_allow`, and handing the set in
//! use to the generation path of a reload (`app`), which merges it with the file's nodes
//! (`Config::with_members`). Control plane only: nothing here touches a session.
//!
//! The parsing and the allow rule are pure ([`parse_cluster`], [`admit`]); the task that
//! asks every `discovery_inter` is [`run`].

mod task;

use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::Mutex;

use serde::Deserialize;

use crate::config::{allowed, Cidr, Member};

pub use task::{run, Apply};

/// One member as Patroni lists it, before the allow rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub name: String,
    /// PostgreSQL's host and port (`host`, `port`), when Patroni knows them.
    pub host: Option<String>,
    pub port: Option<u16>,
    /// The REST API's `host:port` from `api_url`, and whether it is `https`.
    pub api: Option<String>,
    pub https: bool,
    /// Patroni's role and state, for the log only (the checks decide admission).
    pub role: String,
    pub state: String,
}

#[derive(Deserialize)]
struct RawCluster {
    members: Vec<RawMember>,
    scope: Option<String>,
}

/// A parsed `/cluster` answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// Patroni's `scope` (the cluster's name), when given.
    pub scope: Option<String>,
    pub members: Vec<Listed>,
}

#[derive(Deserialize)]
struct RawMember {
    name: String,
    host: Option<String>,
    port: Option<u16>,
    api_url: Option<String>,
    #[serde(default)]
    role: String,
    #[serde(default)]
    state: String,
}

/// Parses Patroni's `GET /cluster` answer: `{"members": [{"name", "host", "port",
/// "api_url", "role", "state", ...}], ...}`. Unknown keys are ignored (Patroni adds some
/// in each version); a body without a `members` list is an error.
pub fn parse_cluster(body: &[u8]) -> Result<Answer, String> {
    let raw: RawCluster = serde_json::from_slice(body).map_err(|e| format!("not Patroni's /cluster JSON: {e}"))?;
    let members = raw
        .members
        .into_iter()
        .map(|m| {
            let (api, https) = match m.api_url.as_deref().and_then(api_address) {
                Some((a, s)) => (Some(a), s),
                None => (None, false),
            };
            Listed { name: m.name, host: m.host, port: m.port, api, https, role: m.role, state: m.state }
        })
        .collect();
    Ok(Answer { scope: raw.scope, members })
}

/// `http://10.0.0.1:8008/patroni` → (`10.0.0.1:8008`, false); the scheme's port when none.
fn api_address(url: &str) -> Option<(String, bool)> {
    let (scheme, rest) = url.split_once("://")?;
    let https = match scheme.to_ascii_lowercase().as_str() {
        "http" => false,
        "https" => true,
        _ => return None,
    };
    let authority = rest.split(['/', '?', '#']).next()?;
    // No credentials in a REST URL pgfront would follow.
    if authority.is_empty() || authority.contains('@') {
        return None;
    }
    let has_port = match authority.rsplit_once(':') {
        Some((h, p)) => {
            !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()) && (!h.contains(':') || h.ends_with(']'))
        }
        None => false,
    };
    let address = if has_port { authority.to_owned() } else { format!("{authority}:{}", if https { 443 } else { 80 }) };
    Some((address, https))
}

/// A member that was not used, and why (logged once per answer that changes it).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Refused {
    pub name: String,
    pub why: String,
}

/// The members that may be used: a valid name, a PostgreSQL address and a REST address,
/// both IP addresses inside `allow`. The others are refused with the reason.
pub fn admit(listed: &[Listed], allow: &[Cidr]) -> (Vec<Member>, Vec<Refused>) {
    let mut members: Vec<Member> = Vec::new();
    let mut refused = Vec::new();
    for m in listed {
        let refuse = |why: String| Refused { name: m.name.clone(), why };
        let host = m.host.as_deref().unwrap_or_default().trim_start_matches('[').trim_end_matches(']');
        let why = if m.name.is_empty() || !m.name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
            Some("its name is not usable (letters, digits, '-', '_', '.')".to_owned())
        } else if members.iter().any(|o| o.name == m.name) {
            Some("listed twice".to_owned())
        } else if m.host.is_none() || m.port.is_none() {
            Some("no PostgreSQL host and port in the answer".to_owned())
        } else if m.api.is_none() {
            Some("no usable api_url in the answer".to_owned())
        } else if !allowed(allow, host) {
            Some(format!("PostgreSQL address {host} is outside discovery_allow"))
        } else if !allowed(allow, m.api.as_deref().and_then(|a| a.rsplit_once(':')).map_or("", |(h, _)| h)) {
            Some(format!("REST address {} is outside discovery_allow", m.api.as_deref().unwrap_or_default()))
        } else {
            None
        };
        match why {
            Some(why) => refused.push(refuse(why)),
            None => {
                let port = m.port.unwrap_or_default();
                let address = if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") };
                members.push(Member {
                    name: m.name.clone(),
                    address,
                    check_address: m.api.clone().unwrap_or_default(),
                    leaving: false,
                });
            }
        }
    }
    members.sort();
    refused.sort();
    (members, refused)
}

/// What discovery did, for the page, `/status.json` and `/metrics`.
#[derive(Debug, Default)]
pub struct Stats {
    /// Members in use now (not counting leaving ones).
    pub members: AtomicUsize,
    /// Member sets applied (a join, a leave, an address change).
    pub changes: AtomicU64,
    /// Rounds in which no source gave a usable member list.
    pub errors: AtomicU64,
    /// `/cluster` requests made.
    pub requests: AtomicU64,
    /// Members named in the last answer but not used.
    pub refused: AtomicUsize,
    last: Mutex<Last>,
}

#[derive(Debug, Default, Clone)]
struct Last {
    source: Option<String>,
    error: Option<String>,
}

impl Stats {
    /// Where the member list came from last, and why the last round failed (while it is
    /// the latest).
    pub fn last(&self) -> (Option<String>, Option<String>) {
        let l = self.last.lock().unwrap_or_else(|p| p.into_inner()).clone();
        (l.source, l.error)
    }

    fn set_last(&self, source: Option<String>, error: Option<String>) {
        let mut l = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if source.is_some() {
            l.source = source;
        }
        l.error = error;
    }
}

#[cfg(test)]
mod tests;
