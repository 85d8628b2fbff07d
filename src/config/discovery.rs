//! Nodes learned from Patroni (`[global] discovery = "patroni"`): the settings, the address
//! allow-list, and the merge of the file's declared nodes with the discovered members into
//! one [`Config`], the same kind of value a reload swaps in.
//!
//! The merge is pure: the discovery task (`crate::discovery`) decides which members are in
//! use, and the generation path of a reload applies the result, so nodes that stay keep
//! their health and sessions.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use super::error::ConfigError;
use super::raw::{RawDefaults, RawGlobal};
use super::{defaults, dur, Config, Node, Validator};
use crate::health::{CheckAuth, CheckTls};

/// Where members are learned from, and what a member that is not declared gets.
#[derive(Debug, Clone, PartialEq)]
pub struct Discovery {
    /// REST API addresses (`host:port`) asked first; any member that answers will do after.
    pub seeds: Vec<String>,
    /// Only members whose PostgreSQL and REST addresses fall inside one of these are used:
    /// a forged or mistaken `/cluster` answer cannot send sessions or probes elsewhere.
    pub allow: Vec<Cidr>,
    /// How often the member list is read.
    pub inter: Duration,
    /// Bounds of one `/cluster` request, the probe's own (connect, whole answer).
    pub connect_timeout: Duration,
    pub timeout: Duration,
    /// What a discovered-only member gets: `[global] source` and `[defaults]`' REST settings.
    pub source: Option<IpAddr>,
    pub check_tls: Option<Arc<CheckTls>>,
    pub check_auth: Option<Arc<CheckAuth>>,
}

/// Where a node of a running configuration comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Origin {
    /// A `[[node]]` of the file.
    #[default]
    Declared,
    /// A member of Patroni's `/cluster` answer.
    Discovered,
    /// A discovered member that is no longer listed but still holds sessions: it takes no
    /// new ones, and stays probed until its check fails or its sessions end.
    Leaving,
}

impl Origin {
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Declared => "declared",
            Origin::Discovered => "discovered",
            Origin::Leaving => "leaving",
        }
    }
}

/// A discovered member in use, as the discovery task hands it to the merge.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Member {
    /// Patroni's member name (matches a declared `[[node]]` by name).
    pub name: String,
    /// PostgreSQL, `ip:port` (inside `discovery_allow`).
    pub address: String,
    /// Patroni's REST API, `ip:port` (inside `discovery_allow`).
    pub check_address: String,
    /// No longer listed, kept while it holds sessions (see [`Origin::Leaving`]).
    pub leaving: bool,
}

impl Member {
    /// A node the configuration serves, as the member it is (or was: `leaving`).
    pub fn of(node: &Node) -> Member {
        Member {
            name: node.name.clone(),
            address: node.address.clone(),
            check_address: node.check_address.clone(),
            leaving: node.origin == Origin::Leaving,
        }
    }
}

impl Config {
    /// The configuration with `members` added to the file's declared nodes: a member named
    /// like a declared node is that node (the declared settings win, address included);
    /// others get the defaults, in name order after the declared ones; every listener that
    /// lists no `servers` serves them all. Call it on the file's configuration.
    pub fn with_members(&self, members: &[Member]) -> Config {
        let mut c = self.clone();
        let Some(d) = &self.global.discovery else { return c };
        debug_assert!(c.nodes.iter().all(|n| n.origin == Origin::Declared), "merge onto the file's configuration");
        let mut extra: Vec<&Member> = members.iter().filter(|m| !self.nodes.iter().any(|n| n.name == m.name)).collect();
        extra.sort();
        extra.dedup_by(|a, b| a.name == b.name);
        for m in extra {
            c.nodes.push(Node {
                name: m.name.clone(),
                address: m.address.clone(),
                check_address: m.check_address.clone(),
                maxconn: None,
                source: d.source,
                check_tls: d.check_tls.clone(),
                check_auth: d.check_auth.clone(),
                origin: if m.leaving { Origin::Leaving } else { Origin::Discovered },
            });
        }
        let every: Vec<usize> = (0..c.nodes.len()).collect();
        for l in c.listeners.iter_mut().filter(|l| l.every_node) {
            l.servers.clone_from(&every);
        }
        c
    }
}

impl Validator<'_> {
    /// `discovery`, `discovery_seeds`, `discovery_allow`, `discovery_inter` of `table`
    /// (`global` for a file without `[[cluster]]`, else each `cluster`).
    pub(super) fn discovery(
        &self,
        g: &RawGlobal,
        d: &RawDefaults,
        source: Option<IpAddr>,
        table: &str,
    ) -> Result<Option<Discovery>, ConfigError> {
        let key = |k: &str| format!("{table}.{k}");
        let on = match &g.discovery {
            None => None,
            Some(v) => match v.get_ref().as_str() {
                "patroni" => Some(v.span()),
                "none" => None,
                other => {
                    let msg = format!("unknown discovery {other:?}; expected \"patroni\" or \"none\"");
                    return Err(self.src.error(v.span(), key("discovery"), msg));
                }
            },
        };
        let Some(on) = on else {
            let stray = [
                (&key("discovery_seeds"), g.discovery_seeds.as_ref().map(|s| s.span())),
                (&key("discovery_allow"), g.discovery_allow.as_ref().map(|s| s.span())),
                (&key("discovery_inter"), g.discovery_inter.as_ref().map(|s| s.span())),
            ];
            if let Some((key, Some(span))) = stray.into_iter().find(|(_, s)| s.is_some()) {
                return Err(self.src.error(span, key, "needs discovery = \"patroni\""));
            }
            return Ok(None);
        };
        let list = |v: &Option<toml::Spanned<Vec<toml::Spanned<String>>>>, key: &str, what: &str| match v {
            Some(l) if !l.get_ref().is_empty() => Ok(l.get_ref().clone()),
            Some(l) => Err(self.src.error(l.span(), key, format!("must list at least one {what}"))),
            None => Err(self.src.error(
                on.clone(),
                key,
                format!("discovery = \"patroni\" needs `{key}` with at least one {what}"),
            )),
        };
        let mut seeds = Vec::new();
        for s in list(&g.discovery_seeds, &key("discovery_seeds"), "REST address (host:port)")? {
            self.host_port(&s, &key("discovery_seeds"))?;
            seeds.push(s.into_inner());
        }
        let mut allow = Vec::new();
        for a in list(&g.discovery_allow, &key("discovery_allow"), "address block (10.0.0.0/24)")? {
            allow.push(Cidr::parse(a.get_ref()).map_err(|e| self.src.error(a.span(), key("discovery_allow"), e))?);
        }
        let inter = self.nonzero(&d.inter, "inter", defaults::INTER)?;
        let inter = self.nonzero(&g.discovery_inter, &key("discovery_inter"), inter)?;
        let timeout_connect = d.timeout_connect.as_ref().map_or(defaults::TIMEOUT_CONNECT, |t| t.get_ref().0);
        Ok(Some(Discovery {
            seeds,
            allow,
            inter,
            connect_timeout: timeout_connect.min(inter),
            timeout: dur(&d.timeout_check, defaults::TIMEOUT_CHECK),
            source,
            check_tls: self.check_tls(None, d.check_tls.as_ref())?,
            check_auth: match d.check_auth.as_ref() {
                Some(a) => Some(self.check_auth(a)?),
                None => None,
            },
        }))
    }
}

/// An address block: `10.0.0.0/24`, `fd00::/64`, or one address (`/32`, `/128`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses a block; an address with bits set past the prefix (`10.0.0.1/24`) is refused,
    /// since it usually means a mistyped prefix.
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let text = text.trim();
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let net: IpAddr = addr.parse().map_err(|_| format!("{text:?} is not an address block like 10.0.0.0/24"))?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{text:?}: the prefix length must be 0 to {max}"))?,
        };
        let cidr = Cidr { net, prefix };
        if cidr.masked(&net) != bits(&net) {
            let base = cidr.base();
            return Err(format!("{text:?} has bits set past /{prefix}; did you mean {base}/{prefix}?"));
        }
        Ok(cidr)
    }

    /// The prefix length (0 allows everything of its family).
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Whether `ip` lies in the block (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn contains(&self, ip: &IpAddr) -> bool {
        let ip = ip.to_canonical();
        ip.is_ipv4() == self.net.is_ipv4() && self.masked(&ip) == self.masked(&self.net)
    }

    fn mask(&self) -> u128 {
        let width: u32 = if self.net.is_ipv4() { 32 } else { 128 };
        let low = |n: u32| if n >= 128 { u128::MAX } else { (1u128 << n) - 1 };
        low(width) & !low(width - u32::from(self.prefix))
    }

    fn masked(&self, ip: &IpAddr) -> u128 {
        bits(ip) & self.mask()
    }

    fn base(&self) -> IpAddr {
        let b = self.masked(&self.net);
        match self.net {
            IpAddr::V4(_) => IpAddr::from((b as u32).to_be_bytes()),
            IpAddr::V6(_) => IpAddr::from(b.to_be_bytes()),
        }
    }
}

fn bits(ip: &IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(*v4)),
        IpAddr::V6(v6) => u128::from(*v6),
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.net, self.prefix)
    }
}

/// Whether `host` (an IP address, `host:port` form stripped) lies inside any block of `allow`.
/// A name is never inside: it could resolve anywhere later.
pub fn allowed(allow: &[Cidr], host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.parse::<IpAddr>().is_ok_and(|ip| allow.iter().any(|c| c.contains(&ip)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_match_their_addresses_only() {
        let c = Cidr::parse("10.0.0.0/24").unwrap();
        assert!(c.contains(&"10.0.0.1".parse().unwrap()));
        assert!(c.contains(&"10.0.0.255".parse().unwrap()));
        assert!(!c.contains(&"10.0.1.0".parse().unwrap()));
        assert!(!c.contains(&"9.255.255.255".parse().unwrap()));
        assert!(c.contains(&"::ffff:10.0.0.7".parse().unwrap()), "IPv4-mapped counts as IPv4");
        assert!(!c.contains(&"fd00::1".parse().unwrap()));
        let one = Cidr::parse("127.0.0.51").unwrap();
        assert_eq!(one.to_string(), "127.0.0.51/32");
        assert!(one.contains(&"127.0.0.51".parse().unwrap()));
        assert!(!one.contains(&"127.0.0.52".parse().unwrap()));
        let all = Cidr::parse("0.0.0.0/0").unwrap();
        assert!(all.contains(&"203.0.113.9".parse().unwrap()));
        assert!(!all.contains(&"::1".parse().unwrap()));
        let odd = Cidr::parse("127.0.0.48/29").unwrap();
        assert!((48..=55).all(|i| odd.contains(&format!("127.0.0.{i}").parse().unwrap())));
        assert!(!odd.contains(&"127.0.0.56".parse().unwrap()) && !odd.contains(&"127.0.0.47".parse().unwrap()));
        let v6 = Cidr::parse("fd00:1::/64").unwrap();
        assert!(v6.contains(&"fd00:1::9".parse().unwrap()));
        assert!(!v6.contains(&"fd00:2::9".parse().unwrap()));
    }

    #[test]
    fn mistyped_blocks_are_refused() {
        assert!(Cidr::parse("10.0.0.1/24").unwrap_err().contains("did you mean 10.0.0.0/24"));
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(Cidr::parse("10.0.0/24").is_err());
        assert!(Cidr::parse("db.example/24").is_err());
        assert!(Cidr::parse("").is_err());
    }

    #[test]
    fn names_are_never_allowed() {
        let allow = [Cidr::parse("127.0.0.0/8").unwrap()];
        assert!(allowed(&allow, "127.0.0.5"));
        assert!(!allowed(&allow, "localhost"), "a name could resolve anywhere later");
        assert!(!allowed(&allow, "10.1.1.1"));
        assert!(!allowed(&[], "127.0.0.5"));
    }
}
