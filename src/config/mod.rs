//! The configuration: a TOML schema, HAProxy's defaults, and validation into a [`Config`]
//! that cannot be invalid. Everything else reads the validated value; a reload swaps in a
//! new one only after it has passed here.

mod discovery;
mod endpoint;
mod error;
mod hash;
mod raw;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub use discovery::{allowed, Cidr, Discovery, Member, Origin};
pub use endpoint::{parse_size, Endpoint, ReplicaFilter};
pub use error::ConfigError;
use error::Source;
use raw::{Dur, RawCheck, RawCheckAuth, RawCheckTls, RawConfig, RawDefaults, RawListener, RawNode};
use toml::Spanned;

use crate::health::{CheckAuth, CheckTls, Verify};
use crate::tls::{ServerTls, TlsSettings};

/// HAProxy's values in the reference deployment; a ported haproxy.cfg means the same here.
pub mod defaults {
    use std::time::Duration;
    pub const GLOBAL_MAXCONN: usize = 4096;
    pub const SERVER_MAXCONN: usize = 100;
    pub const RETRIES: u32 = 2;
    pub const TIMEOUT_CONNECT: Duration = Duration::from_secs(4);
    pub const TIMEOUT_CLIENT: Duration = Duration::from_secs(30 * 60);
    pub const TIMEOUT_SERVER: Duration = Duration::from_secs(30 * 60);
    pub const TIMEOUT_CHECK: Duration = Duration::from_secs(5);
    pub const INTER: Duration = Duration::from_secs(2);
    pub const FALL: u32 = 3;
    pub const RISE: u32 = 2;
    pub const CHECK_PORT: u16 = 8008;
    pub const HARD_STOP_AFTER: Duration = Duration::from_secs(30);
    pub const TIMEOUT_STARTUP: Duration = Duration::from_secs(10);
    pub const HUNT_INTER: Duration = Duration::from_millis(200);
    /// A leader listener holds sessions through a switchover (a few seconds) by default.
    pub const LEADER_TIMEOUT_QUEUE: Duration = Duration::from_secs(30);
    /// Sessions connecting to one server at once (connect, TLS, authentication): a server
    /// handed a whole queue at once after a failover answers the first ones promptly.
    pub const MAX_CONNECTING: usize = 16;
    pub const WEB_REFRESH: Duration = Duration::from_secs(5);
    /// How long a session with `pgfront.min_lsn` waits for a replica to replay that
    /// position before it goes to the leader: a few replay delays of a healthy replica.
    pub const MIN_LSN_WAIT: Duration = Duration::from_millis(200);
}

/// Which servers a session may use: the listener's own rule, or what the client asked
/// for with `options=-c pgfront.target=...` where the listener allows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum Target {
    /// Servers admitted by the listener's check, then the leader if `fallback_to_leader`.
    #[default]
    Listener,
    /// The leader only.
    Primary,
    /// Servers admitted by the listener's check only.
    Replica,
    /// Replicas first, the leader when none is eligible.
    PreferReplica,
    /// Any admitted server or the leader, in rotation.
    Any,
}

impl Target {
    /// Parses a `pgfront.target` value (a client's, or a route's in the file): case aside,
    /// as PostgreSQL reads an enum setting, `_` for `-`, and with libpq's
    /// `target_session_attrs` words for the same things.
    pub fn parse(v: &str) -> Option<Target> {
        Some(match v.to_ascii_lowercase().replace('_', "-").as_str() {
            "primary" | "leader" | "master" | "read-write" => Target::Primary,
            "replica" | "standby" | "read-only" => Target::Replica,
            "prefer-replica" | "prefer-standby" => Target::PreferReplica,
            "any" => Target::Any,
            "listener" => Target::Listener,
            _ => return None,
        })
    }
}

/// A routing rule: sessions whose startup parameters match every given field go to
/// `target` (read from plain-text clients, and TLS clients where the listener terminates TLS).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub user: Option<String>,
    pub database: Option<String>,
    pub application_name: Option<String>,
    pub target: Target,
}

impl Route {
    /// Whether the parameters match, as PostgreSQL reads them: `database` absent or empty
    /// is the user name (pgjdbc's `jdbc:postgresql://lb:5002/` sends it empty), and both
    /// names are cut to 63 bytes (NAMEDATALEN - 1).
    pub fn matches(&self, user: Option<&str>, database: Option<&str>, application_name: Option<&str>) -> bool {
        fn name(n: &str) -> &str {
            let mut end = n.len().min(63);
            while !n.is_char_boundary(end) {
                end -= 1;
            }
            &n[..end]
        }
        let user = user.map(name);
        let database = database.filter(|d| !d.is_empty()).map(name).or(user);
        let eq = |want: &Option<String>, got: Option<&str>| want.as_deref().is_none_or(|w| Some(w) == got);
        eq(&self.user, user) && eq(&self.database, database) && eq(&self.application_name, application_name)
    }
}

/// A validated configuration, and the view of one Patroni cluster the live state is built
/// from.
///
/// A file without `[[cluster]]` tables is one unnamed cluster: `cluster` is empty, `nodes`
/// and `listeners` are the file's, and `clusters` is empty. A file with `[[cluster]]`
/// tables has no top-level nodes or listeners; `clusters` holds one view per cluster, in
/// file order, each a `Config` of its own (the file's `global` with that cluster's
/// discovery, the file's `web`, its nodes and listeners). [`Config::views`] gives the
/// clusters either way; each is built into a generation of its own (`cluster::Runtime`).
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub path: PathBuf,
    pub global: Global,
    pub nodes: Vec<Node>,
    pub listeners: Vec<Listener>,
    pub web: Option<Web>,
    /// The cluster's name: `""` for the unnamed cluster of a file without `[[cluster]]`.
    pub cluster: String,
    /// The `[[cluster]]` tables of the file, one view each (empty without them).
    pub clusters: Vec<Config>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Global {
    /// Sessions the whole process holds at once; beyond it, accepting pauses (HAProxy's
    /// global maxconn), so excess clients wait in the kernel's backlog.
    pub maxconn: usize,
    /// How long a graceful stop lets sessions finish before closing them.
    pub hard_stop_after: Duration,
    pub check_mode: CheckMode,
    /// Probe interval for every node while a leader listener has no leader (a switchover
    /// or failover in progress), so the new leader is found within a fraction of a second.
    pub hunt_inter: Duration,
    /// The address pgfront's connections to servers and REST APIs leave from (HAProxy's
    /// `source`), unless a node sets its own.
    pub source: Option<IpAddr>,
    /// Worker threads serving sessions (HAProxy's `nbthread`): each runs its own event
    /// loop and accepts on its own socket of every listener. Default: one per CPU.
    pub threads: usize,
    /// How log lines are written; read at start-up (a reload cannot change it).
    pub log_format: LogFormat,
    /// Listeners hand over a client only once it has sent its first bytes (TCP_DEFER_ACCEPT,
    /// HAProxy's `defer-accept`). Every PostgreSQL client speaks first, so this saves a
    /// wake-up, a read that finds nothing and a timer per new session; a client that
    /// connects and says nothing waits in the kernel (about a second) instead of holding a
    /// descriptor and a task. Set when a listener is bound: a reload keeps the sockets of
    /// listeners that stay. The web port has it too (HTTP clients speak first as well), so
    /// silent connections cannot queue ahead of Pacemaker's GET /health in its few places.
    pub defer_accept: bool,
    /// Nodes learned from Patroni's member list, when set (`discovery = "patroni"`).
    pub discovery: Option<Discovery>,
}

/// How log lines are written: for people, or one JSON object per line for a log pipeline
/// (Loki, Elasticsearch, journald's JSON export) to parse without a regular expression.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// How health is learned from Patroni.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CheckMode {
    /// One `GET /primary` per node per interval; its status says who leads, its JSON body
    /// (role, state, timeline, WAL positions, tags) answers every other listener's check
    /// with Patroni's semantics, and lets pgfront arbitrate between two claimants.
    Patroni,
    /// HAProxy's way: each distinct (node, method, path) is requested and its status
    /// compared with `expect`. For REST endpoints that are not Patroni's.
    Http,
}

/// A PostgreSQL node with its Patroni agent, declared once and used by every listener.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub name: String,
    /// Where PostgreSQL answers, `host:port`.
    pub address: String,
    /// Where Patroni's REST API answers, `host:port`.
    pub check_address: String,
    /// Overrides the listener's per-server maxconn for this node, when set.
    pub maxconn: Option<usize>,
    /// The local address connections to this node (PostgreSQL and Patroni's REST API)
    /// leave from: the node's own `source`, else `[global] source`, else the kernel's choice.
    pub source: Option<IpAddr>,
    /// HTTPS towards the REST API: the node's `check_tls` laid key by key over `[defaults]`'s.
    pub check_tls: Option<Arc<CheckTls>>,
    /// Basic auth towards the REST API: the node's `check_auth`, else `[defaults]`'.
    pub check_auth: Option<Arc<CheckAuth>>,
    /// Declared in the file, or learned from Patroni (and whether it is leaving).
    pub origin: Origin,
}

/// Which sessions are logged (HAProxy's `option dontlog-normal` is `errors`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogSessions {
    /// A line for every session that ends and every refusal.
    All,
    /// Only sessions that end abnormally (errors, timeouts, cuts) and refusals.
    Errors,
    /// No per-session lines (transitions, reloads and admin actions are still logged).
    None,
}

/// How a listener picks a server among those admitted by its check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Balance {
    /// The first admitted server in declared order (HAProxy `balance first`): for the leader.
    First,
    RoundRobin,
    LeastConn,
}

impl Balance {
    pub fn as_str(self) -> &'static str {
        match self {
            Balance::First => "first",
            Balance::RoundRobin => "roundrobin",
            Balance::LeastConn => "leastconn",
        }
    }
}

/// When a check runs and how many results change a server's state (HAProxy's meanings).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CheckTiming {
    pub inter: Duration,
    /// Interval while a server is in transition (between first failure and `fall`, or first
    /// pass and `rise`).
    pub fastinter: Duration,
    /// Interval while a server is fully down.
    pub downinter: Duration,
    pub fall: u32,
    pub rise: u32,
    /// Bound on the TCP connect of a probe (HAProxy uses min(timeout connect, inter)).
    pub connect_timeout: Duration,
    /// Bound on the whole answer.
    pub timeout: Duration,
}

/// The request that admits a server to a listener.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CheckSpec {
    pub method: String,
    pub path: String,
    pub expect: u16,
    pub timing: CheckTiming,
    /// The Patroni endpoint the path names, when it names one.
    pub endpoint: Option<Endpoint>,
    /// The local address the probe connects from (the node's `source`); set per probe
    /// target by the checker, `None` in a listener's spec.
    pub source: Option<IpAddr>,
    /// HTTPS for the probe (the node's `check_tls`); set per probe target, like `source`.
    pub tls: Option<Arc<CheckTls>>,
    /// Basic auth for the probe (the node's `check_auth`); set per probe target.
    pub auth: Option<Arc<CheckAuth>>,
}

impl CheckSpec {
    /// True when the check admits at most one node at a time (the leader).
    pub fn is_leader(&self) -> bool {
        self.endpoint.as_ref().is_some_and(Endpoint::is_leader)
    }
}

/// One listening port and the policy behind it.
#[derive(Debug, Clone, PartialEq)]
pub struct Listener {
    pub name: String,
    pub bind: SocketAddr,
    pub balance: Balance,
    /// Indices into [`Config::nodes`], in declared order.
    pub servers: Vec<usize>,
    /// The file lists no `servers`: every node is a server here, discovered ones included.
    pub every_node: bool,
    pub check: CheckSpec,
    pub retries: u32,
    pub maxconn: usize,
    pub timeout_connect: Duration,
    pub timeout_client: Duration,
    pub timeout_server: Duration,
    pub timeout_queue: Duration,
    /// How long a session that asks for the primary (`pgfront.target=primary`, or a route
    /// to it) waits for a leader: the listener's own `timeout_queue` where its table sets
    /// one, else the longest of the cluster's leader listeners (30 s without one). Before,
    /// such a session on the reads port was refused after that port's bound (4 s) in a
    /// failover that the write port held its clients through.
    pub timeout_queue_primary: Duration,
    /// Bound on the client's first packet (a client that sends nothing is closed).
    pub timeout_startup: Duration,
    /// Sessions connecting to one server at once; the rest wait in the queue, oldest first.
    pub max_connecting: usize,
    /// Which sessions get a log line when they end or are refused.
    pub log_sessions: LogSessions,
    /// Close every session of a server when its check marks it down.
    pub shutdown_sessions: bool,
    /// Send sessions to the leader when no server passes this listener's check.
    pub fallback_to_leader: bool,
    /// Honour `options=-c pgfront.target=primary|replica|prefer-replica|any` from
    /// plain-text clients (and TLS clients where this listener terminates TLS).
    pub client_target: bool,
    /// Terminate TLS here (to read TLS clients' startup parameters); `None` passes TLS
    /// through end to end.
    pub tls: Option<TlsSettings>,
    /// Rules on user, database and application_name, first match wins.
    pub routes: Vec<Route>,
    /// Where sessions go when neither the client nor a route says.
    pub default_target: Target,
    /// How long a session asking for `pgfront.min_lsn` (read where `client_target` is on)
    /// waits for a replica that has replayed it, while pgfront refreshes the replicas'
    /// positions, before it goes to the leader (or, for `pgfront.target=replica`, is refused).
    pub min_lsn_wait: Duration,
}

impl Listener {
    /// How long a session asking for `target` waits in the queue.
    pub fn timeout_queue_for(&self, target: Target) -> Duration {
        if target == Target::Primary {
            self.timeout_queue_primary
        } else {
            self.timeout_queue
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Web {
    pub bind: SocketAddr,
    pub refresh: Duration,
    pub users: Vec<User>,
}

#[derive(Clone, PartialEq)]
pub struct User {
    pub name: String,
    pub secret: Secret,
    pub role: Role,
}

/// The longest user name and password together that basic auth accepts (its header,
/// base64 of both, stays under the web port's 1 KiB bound).
pub const LONGEST_CREDENTIALS: usize = 700;

/// The most a configuration file may hold: far more than any real one (30 000 nodes take
/// about 2 MB), and a bound for a path that names something endless.
pub const LARGEST_FILE: u64 = 16 << 20;

/// A configuration file's text: a regular file (through symlinks) of at most
/// `LARGEST_FILE` bytes. A FIFO made `check` and `run` wait forever for a writer, and
/// /dev/zero read until memory ran out; pgfront reads the file again at every reload, so
/// only a file can be its configuration.
fn read_file(path: &Path) -> std::io::Result<String> {
    use std::os::unix::fs::OpenOptionsExt;
    // Without waiting: opening a FIFO for reading otherwise waits for a writer.
    let file = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        let kind = if meta.is_dir() { "a directory" } else { "not a regular file (a FIFO, a socket or a device)" };
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("it is {kind}")));
    }
    String::from_utf8(read_capped(file)?).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// All of `source`, refused past `LARGEST_FILE` bytes (a configuration, or the haproxy.cfg
/// `import-haproxy` reads, which may come through a pipe).
pub fn read_capped(source: impl std::io::Read) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut bytes = Vec::new();
    source.take(LARGEST_FILE + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > LARGEST_FILE {
        let msg = format!("it is larger than {} MiB", LARGEST_FILE >> 20);
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, msg));
    }
    Ok(bytes)
}

/// `host:port` split, when the host is an IPv4 address, a DNS name, or an IPv6 address in
/// brackets, and the port is not 0: "::1" (host ":" and port 1), "host name:5432",
/// "http://h:5432" or "${X}:5432" passed before, and were only found out when connecting.
fn split_host_port(text: &str) -> Option<(&str, u16)> {
    let (host, port) = text.rsplit_once(':')?;
    let port = port.parse::<u16>().ok().filter(|p| *p != 0)?;
    if let Some(inner) = host.strip_prefix('[') {
        let inner = inner.strip_suffix(']')?;
        return inner.parse::<std::net::Ipv6Addr>().is_ok().then_some((inner, port));
    }
    let label = |l: &str| {
        (1..=63).contains(&l.len())
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    let name = host.len() <= 253 && host.strip_suffix('.').unwrap_or(host).split('.').all(label);
    (host.parse::<std::net::Ipv4Addr>().is_ok() || name).then_some((host, port))
}

/// The bind of `binds` that `addr` cannot be bound beside, and its listener: the same
/// address, or the same port where either is a wildcard of its family (`[::]` takes IPv4
/// as well: pgfront leaves IPV6_V6ONLY at the system's default, off). `check` passed
/// 127.0.0.1:5000 beside 0.0.0.0:5000, and `run` then failed with "address in use".
fn clashing(binds: &HashMap<SocketAddr, String>, addr: SocketAddr) -> Option<(SocketAddr, &String)> {
    let covers = |wild: SocketAddr, other: SocketAddr| {
        wild.ip().is_unspecified() && (wild.is_ipv6() || wild.is_ipv4() == other.is_ipv4())
    };
    binds
        .iter()
        .find(|(b, _)| b.port() == addr.port() && (**b == addr || covers(**b, addr) || covers(addr, **b)))
        .map(|(b, name)| (*b, name))
}

/// The most any session count (maxconn, max_connecting) may be: more than one process can
/// hold (two descriptors a session, `fs.nr_open` 1 048 576 by default), and far below what
/// would overflow the session limit's arithmetic (a larger global maxconn passed `check`
/// and made `run` panic).
pub const MOST_SESSIONS: usize = 1_000_000;

/// How a user's password is checked.
#[derive(Clone, PartialEq)]
pub enum Secret {
    /// In clear in the file (as HAProxy's `stats auth`).
    Clear(String),
    /// An Argon2 PHC string (`$argon2id$...`).
    Argon2(String),
    /// A bcrypt hash (`$2b$...`).
    Bcrypt(String),
}

/// What a user may do on the web surface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Read the pages and exports.
    ReadOnly,
    /// Also act on servers (ready, drain, maint, shut down sessions).
    Admin,
}

impl std::fmt::Debug for User {
    // Never print a password, not even in a debug dump.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("User").field("name", &self.name).finish_non_exhaustive()
    }
}

impl Config {
    /// The clusters of the file, one view each: the file itself for a file without
    /// `[[cluster]]` (the unnamed cluster), else its `[[cluster]]`s in file order.
    pub fn views(&self) -> Vec<Config> {
        if self.clusters.is_empty() {
            vec![self.clone()]
        } else {
            self.clusters.clone()
        }
    }

    /// Every listener of the file, in every cluster.
    pub fn all_listeners(&self) -> impl Iterator<Item = &Listener> + '_ {
        self.listeners.iter().chain(self.clusters.iter().flat_map(|c| c.listeners.iter()))
    }

    /// Reads and validates a file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = read_file(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        Config::parse(path, &text)
    }

    /// Validates `text` as if read from `path` (which only names it in errors).
    /// What is valid but will not do what it seems to: said by `pgfront check` and at start.
    pub fn warnings(&self) -> Vec<String> {
        if !self.clusters.is_empty() {
            let mut w = Vec::new();
            for c in &self.clusters {
                w.extend(c.warnings().into_iter().map(|text| format!("cluster {:?}: {text}", c.cluster)));
            }
            return w;
        }
        let mut w = Vec::new();
        if let Some(d) = &self.global.discovery {
            for c in d.allow.iter().filter(|c| c.prefix() == 0) {
                w.push(format!(
                    "discovery_allow {c} allows every address: a forged /cluster answer could send sessions anywhere; name your nodes' network"
                ));
            }
        }
        for n in &self.nodes {
            if n.check_tls.as_ref().is_some_and(|t| t.verify == Verify::None) {
                w.push(format!(
                    "node {:?}: check_tls verify = \"none\": the REST API's certificate is not checked, so anyone who can answer on {} decides this node's health",
                    n.name, n.check_address
                ));
            }
        }
        for l in &self.listeners {
            if l.tls.is_none() && (l.client_target || !l.routes.is_empty()) {
                w.push(format!(
                    "listener {:?}: client_target/routes on a pass-through listener: TLS clients (libpq's default sslmode=prefer) cannot be read here: their pgfront.target is ignored (add a `tls` table to terminate TLS)",
                    l.name
                ));
            }
        }
        w
    }

    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let src = Source { path, text };
        let raw: RawConfig = toml::from_str(text).map_err(|e| src.toml_error(&e))?;
        Validator { src: &src }.config(raw)
    }
}

struct Validator<'a> {
    src: &'a Source<'a>,
}

type Result<T, E = ConfigError> = std::result::Result<T, E>;

impl Validator<'_> {
    fn config(&self, raw: RawConfig) -> Result<Config> {
        let check_mode = match &raw.global.check_mode {
            None => CheckMode::Patroni,
            Some(m) => match m.get_ref().as_str() {
                "patroni" => CheckMode::Patroni,
                "http" => CheckMode::Http,
                other => {
                    let msg = format!("unknown mode {other:?}; expected \"patroni\" or \"http\"");
                    return Err(self.src.error(m.span(), "global.check_mode", msg));
                }
            },
        };
        let log_format = match &raw.global.log_format {
            None => LogFormat::Text,
            Some(f) => match f.get_ref().as_str() {
                "text" => LogFormat::Text,
                "json" => LogFormat::Json,
                other => {
                    let msg = format!("unknown format {other:?}; expected \"text\" or \"json\"");
                    return Err(self.src.error(f.span(), "global.log_format", msg));
                }
            },
        };
        let global = Global {
            log_format,
            defer_accept: raw.global.defer_accept.unwrap_or(true),
            maxconn: self.positive(raw.global.maxconn.as_ref(), "global.maxconn")?.unwrap_or(defaults::GLOBAL_MAXCONN),
            hard_stop_after: raw.global.hard_stop_after.map_or(defaults::HARD_STOP_AFTER, |d| d.0),
            check_mode,
            hunt_inter: self.nonzero(&raw.global.hunt_inter, "global.hunt_inter", defaults::HUNT_INTER)?,
            source: raw.global.source.as_ref().map(|s| self.ip(s, "global.source")).transpose()?,
            threads: match &raw.global.threads {
                Some(t) if !(1..=256).contains(t.get_ref()) => {
                    return Err(self.src.error(t.span(), "global.threads", "must be between 1 and 256"));
                }
                Some(t) => *t.get_ref(),
                None => std::thread::available_parallelism().map_or(1, |n| n.get()),
            },
            discovery: None,
        };
        let mut global = global;
        let mut binds: HashMap<SocketAddr, String> = HashMap::new();
        let mut names: Vec<String> = Vec::new();
        if raw.clusters.is_empty() {
            global.discovery = self.discovery(&raw.global, &raw.defaults, global.source, "global")?;
            let (nodes, listeners) =
                self.cluster(&raw.nodes, &raw.listeners, &raw.defaults, &global, &mut binds, &mut names)?;
            if listeners.is_empty() {
                return Err(self.src.error(0..0, "listener", "no [[listener]] is defined; pgfront needs at least one"));
            }
            let web = self.web(raw.web, &binds)?;
            return Ok(Config {
                path: self.src.path.to_owned(),
                global,
                nodes,
                listeners,
                web,
                cluster: String::new(),
                clusters: Vec::new(),
            });
        }
        // With [[cluster]] tables, nodes, listeners and discovery belong to a cluster.
        if let Some(n) = raw.nodes.first() {
            let msg = "a top-level [[node]] cannot be mixed with [[cluster]] tables: move it into its cluster as [[cluster.node]]";
            return Err(self.src.error(n.name.span(), "node", msg));
        }
        if let Some(l) = raw.listeners.first() {
            let msg = "a top-level [[listener]] cannot be mixed with [[cluster]] tables: move it into its cluster as [[cluster.listener]]";
            return Err(self.src.error(l.name.span(), "listener", msg));
        }
        let g = &raw.global;
        let stray = [
            ("global.discovery", g.discovery.as_ref().map(Spanned::span)),
            ("global.discovery_seeds", g.discovery_seeds.as_ref().map(Spanned::span)),
            ("global.discovery_allow", g.discovery_allow.as_ref().map(Spanned::span)),
            ("global.discovery_inter", g.discovery_inter.as_ref().map(Spanned::span)),
        ];
        if let Some((key, Some(span))) = stray.into_iter().find(|(_, s)| s.is_some()) {
            let msg = "with [[cluster]] tables, discovery is set in each [[cluster]] (its seeds are that cluster's)";
            return Err(self.src.error(span, key, msg));
        }
        let mut clusters: Vec<Config> = Vec::with_capacity(raw.clusters.len());
        for c in &raw.clusters {
            let name = c.name.get_ref();
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
                return Err(self.src.error(
                    c.name.span(),
                    "cluster.name",
                    format!("{name:?} is not a valid name (letters, digits, '-', '_', '.')"),
                ));
            }
            if clusters.iter().any(|o| &o.cluster == name) {
                return Err(self.src.error(c.name.span(), "cluster.name", format!("duplicate cluster name {name:?}")));
            }
            let own = raw::RawGlobal {
                discovery: c.discovery.clone(),
                discovery_seeds: c.discovery_seeds.clone(),
                discovery_allow: c.discovery_allow.clone(),
                discovery_inter: c.discovery_inter.clone(),
                ..Default::default()
            };
            let mut global = global.clone();
            global.discovery = self.discovery(&own, &raw.defaults, global.source, "cluster")?;
            let (nodes, listeners) =
                self.cluster(&c.nodes, &c.listeners, &raw.defaults, &global, &mut binds, &mut names)?;
            if listeners.is_empty() {
                let msg = format!("cluster {name:?} has no [[cluster.listener]]; each cluster needs at least one");
                return Err(self.src.error(c.name.span(), "cluster.listener", msg));
            }
            clusters.push(Config {
                path: self.src.path.to_owned(),
                global,
                nodes,
                listeners,
                web: None,
                cluster: name.clone(),
                clusters: Vec::new(),
            });
        }
        let web = self.web(raw.web, &binds)?;
        for c in &mut clusters {
            c.web.clone_from(&web);
        }
        Ok(Config {
            path: self.src.path.to_owned(),
            global,
            nodes: Vec::new(),
            listeners: Vec::new(),
            web,
            cluster: String::new(),
            clusters,
        })
    }

    /// One cluster's nodes and listeners. Listener names and binds are unique across the
    /// whole file (`names`, `binds`), so metrics, admin actions and binds never collide.
    fn cluster(
        &self,
        raw_nodes: &[RawNode],
        raw_listeners: &[RawListener],
        defaults: &RawDefaults,
        global: &Global,
        binds: &mut HashMap<SocketAddr, String>,
        names: &mut Vec<String>,
    ) -> Result<(Vec<Node>, Vec<Listener>)> {
        let discovering = global.discovery.is_some();
        let nodes = self.nodes(raw_nodes, defaults, global.source)?;
        // Patroni's answer is a member's: two nodes asking one REST API would both be its
        // role, so two leaders, and writes held as a conflict for good (a pgbouncer port and
        // PostgreSQL's port of one host; two [[cluster]] tables, one per port, serve that).
        if global.check_mode == CheckMode::Patroni {
            for (i, n) in nodes.iter().enumerate() {
                if let Some(o) = nodes[..i].iter().find(|o| o.check_address == n.check_address) {
                    let span = raw_nodes[i].check_address.as_ref().map_or(raw_nodes[i].address.span(), |a| a.span());
                    let msg = format!(
                        "nodes {:?} and {:?} would both ask the REST API {}: one Patroni member is one node (for two ports of one host, use a [[cluster]] per port)",
                        o.name, n.name, n.check_address
                    );
                    return Err(self.src.error(span, "node.check_address", msg));
                }
            }
        }
        let mut listeners = Vec::with_capacity(raw_listeners.len());
        for l in raw_listeners {
            let listener = self.listener(l, defaults, raw_nodes, &nodes, global.check_mode, discovering)?;
            if names.contains(&listener.name) {
                return Err(self.src.error(
                    l.name.span(),
                    "listener.name",
                    format!("duplicate listener name {:?}", listener.name),
                ));
            }
            // Port 0 (an ephemeral port, as tests use) never collides.
            if listener.bind.port() == 0 {
            } else if let Some((at, other)) = clashing(binds, listener.bind) {
                return Err(self.src.error(
                    l.bind.span(),
                    "listener.bind",
                    format!("{} is already bound by listener {other:?} ({at})", listener.bind),
                ));
            } else {
                binds.insert(listener.bind, listener.name.clone());
            }
            names.push(listener.name.clone());
            listeners.push(listener);
        }
        // A session asking a reads port for the primary waits as long as the write port's
        // sessions do, unless its own listener sets `timeout_queue` (one in [defaults], as
        // the shipped files have, is the reads port's own bound, not the write port's).
        let leader_hold = listeners.iter().filter(|l| l.check.is_leader()).map(|l| l.timeout_queue).max();
        for (l, raw) in listeners.iter_mut().zip(raw_listeners) {
            if raw.timeout_queue.is_none() && !l.check.is_leader() {
                l.timeout_queue_primary = leader_hold.unwrap_or(defaults::LEADER_TIMEOUT_QUEUE);
            }
        }
        Ok((nodes, listeners))
    }

    fn web(&self, raw: Option<raw::RawWeb>, binds: &HashMap<SocketAddr, String>) -> Result<Option<Web>> {
        Ok(match raw {
            None => None,
            Some(w) => {
                let bind = self.bind(&w.bind, "web.bind")?;
                if let Some((at, other)) = clashing(binds, bind).filter(|_| bind.port() != 0) {
                    return Err(self.src.error(
                        w.bind.span(),
                        "web.bind",
                        format!("{bind} is already bound by listener {other:?} ({at})"),
                    ));
                }
                let mut users: Vec<User> = Vec::new();
                for u in w.users {
                    if users.iter().any(|o| &o.name == u.name.get_ref()) {
                        return Err(self.src.error(
                            u.name.span(),
                            "web.user.name",
                            format!("duplicate user {:?}", u.name.get_ref()),
                        ));
                    }
                    if u.name.get_ref().is_empty() || u.name.get_ref().contains(':') {
                        return Err(self.src.error(
                            u.name.span(),
                            "web.user.name",
                            "a user name must be non-empty and contain no ':'",
                        ));
                    }
                    let secret = match (&u.password, &u.password_hash) {
                        (Some(p), None) if u.name.get_ref().len() + p.get_ref().len() > LONGEST_CREDENTIALS => {
                            let msg = format!(
                                "the user name and password together must be at most {LONGEST_CREDENTIALS} bytes (the web port refuses a longer Authorization header)"
                            );
                            return Err(self.src.error(p.span(), "web.user.password", msg));
                        }
                        (Some(p), None) => Secret::Clear(p.get_ref().clone()),
                        (None, Some(h)) => {
                            let text = h.get_ref().clone();
                            match hash::usable(&text) {
                                Ok(hash::Kind::Argon2) => Secret::Argon2(text),
                                Ok(hash::Kind::Bcrypt) => Secret::Bcrypt(text),
                                Err(msg) => return Err(self.src.error(h.span(), "web.user.password_hash", msg)),
                            }
                        }
                        _ => {
                            let msg = "give exactly one of password and password_hash";
                            return Err(self.src.error(u.name.span(), "web.user", msg));
                        }
                    };
                    let role = match &u.role {
                        None => Role::ReadOnly,
                        Some(r) => match r.get_ref().as_str() {
                            "admin" => Role::Admin,
                            "read-only" | "readonly" => Role::ReadOnly,
                            other => {
                                let msg = format!("unknown role {other:?}; expected \"admin\" or \"read-only\"");
                                return Err(self.src.error(r.span(), "web.user.role", msg));
                            }
                        },
                    };
                    users.push(User { name: u.name.into_inner(), secret, role });
                }
                Some(Web { bind, refresh: w.refresh.map_or(defaults::WEB_REFRESH, |d| d.0), users })
            }
        })
    }

    fn nodes(&self, raw: &[RawNode], defaults: &RawDefaults, source: Option<IpAddr>) -> Result<Vec<Node>> {
        let check_port = defaults.check_port.as_ref().map_or(defaults::CHECK_PORT, |p| *p.get_ref());
        if let Some(p) = defaults.check_port.as_ref().filter(|p| *p.get_ref() == 0) {
            return Err(self.src.error(p.span(), "check_port", "must be a port from 1 to 65535"));
        }
        let mut nodes: Vec<Node> = Vec::with_capacity(raw.len());
        for n in raw {
            let name = n.name.get_ref();
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
                return Err(self.src.error(
                    n.name.span(),
                    "node.name",
                    format!("{name:?} is not a valid name (letters, digits, '-', '_', '.')"),
                ));
            }
            if nodes.iter().any(|o| &o.name == name) {
                return Err(self.src.error(n.name.span(), "node.name", format!("duplicate node name {name:?}")));
            }
            let (host, _) = self.host_port(&n.address, "node.address")?;
            // Two nodes at one address would be one server counted twice, and its leader
            // answer two claims to lead (writes held as a conflict).
            if let Some(o) = nodes.iter().find(|o| o.address == *n.address.get_ref()) {
                let msg = format!("{:?} is node {:?}'s address too", n.address.get_ref(), o.name);
                return Err(self.src.error(n.address.span(), "node.address", msg));
            }
            let check_address = match &n.check_address {
                Some(a) => {
                    self.host_port(a, "node.check_address")?;
                    a.get_ref().clone()
                }
                None if host.contains(':') => format!("[{host}]:{check_port}"),
                None => format!("{host}:{check_port}"),
            };
            nodes.push(Node {
                name: name.clone(),
                address: n.address.get_ref().clone(),
                check_address,
                maxconn: self.positive(n.maxconn.as_ref(), "node.maxconn")?,
                source: match &n.source {
                    Some(s) => Some(self.ip(s, "node.source")?),
                    None => source,
                },
                check_tls: self.check_tls(n.check_tls.as_ref(), defaults.check_tls.as_ref())?,
                check_auth: match n.check_auth.as_ref().or(defaults.check_auth.as_ref()) {
                    Some(a) => Some(self.check_auth(a)?),
                    None => None,
                },
                origin: Origin::Declared,
            });
        }
        Ok(nodes)
    }

    fn listener(
        &self,
        l: &RawListener,
        defaults: &RawDefaults,
        raw_nodes: &[RawNode],
        nodes: &[Node],
        mode: CheckMode,
        discovering: bool,
    ) -> Result<Listener> {
        // Where a node's REST API is and how it is spoken to belongs to the node, probed once
        // for all listeners (each listener's check asks it its own question): check_port in
        // a listener was silently ignored.
        let node_level = [
            ("check_port", l.check_port.as_ref().map(|v| v.span())),
            ("check_tls", l.check_tls.as_ref().map(|v| v.span())),
            ("check_auth", l.check_auth.as_ref().map(|v| v.span())),
        ];
        if let Some((key, Some(span))) = node_level.into_iter().find(|(_, s)| s.is_some()) {
            let msg = "check_port, check_tls and check_auth belong to [defaults] or a [[node]] (check_address for one node's port): a node is probed once for all listeners";
            return Err(self.src.error(span, format!("listener.{key}"), msg));
        }
        let name = l.name.get_ref();
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
            return Err(self.src.error(
                l.name.span(),
                "listener.name",
                format!("{name:?} is not a valid name (letters, digits, '-', '_', '.')"),
            ));
        }
        let s = l.settings(defaults);
        let bind = self.bind(&l.bind, "listener.bind")?;
        let balance = match &l.balance {
            None => Balance::RoundRobin,
            Some(b) => match b.get_ref().as_str() {
                "first" | "leader" => Balance::First,
                "roundrobin" => Balance::RoundRobin,
                "leastconn" => Balance::LeastConn,
                other => {
                    return Err(self.src.error(
                        b.span(),
                        "listener.balance",
                        format!("unknown balance {other:?}; expected \"first\", \"roundrobin\" or \"leastconn\""),
                    ));
                }
            },
        };
        let servers = match &l.servers {
            None => (0..nodes.len()).collect::<Vec<_>>(),
            Some(list) => {
                let mut idx = Vec::new();
                for s in list.get_ref() {
                    let Some(i) = nodes.iter().position(|n| &n.name == s.get_ref()) else {
                        return Err(self.src.error(
                            s.span(),
                            "listener.servers",
                            format!("no [[node]] is named {:?}", s.get_ref()),
                        ));
                    };
                    if idx.contains(&i) {
                        return Err(self.src.error(
                            s.span(),
                            "listener.servers",
                            format!("node {:?} is listed twice", s.get_ref()),
                        ));
                    }
                    idx.push(i);
                }
                idx
            }
        };
        // With discovery, a listener of every node may start empty: members come later.
        if servers.is_empty() && !(discovering && l.servers.is_none()) {
            let span = l.servers.as_ref().map_or(l.name.span(), |s| s.span());
            let why = if raw_nodes.is_empty() { "no [[node]] is defined" } else { "its server list is empty" };
            return Err(self.src.error(span, "listener.servers", format!("listener {name:?} has no servers: {why}")));
        }
        let timeout_connect = dur(&s.timeout_connect, defaults::TIMEOUT_CONNECT);
        let check = self.check(l.check.get_ref(), &s, timeout_connect, mode)?;
        let fallback_to_leader = l.fallback_to_leader.as_ref().is_some_and(|v| *v.get_ref());
        let client_target = l.client_target.as_ref().is_some_and(|v| *v.get_ref());
        let needs_leader = "needs check_mode = \"patroni\" (pgfront must know which node leads)";
        if let Some(v) = l.client_target.as_ref().filter(|_| client_target && mode != CheckMode::Patroni) {
            return Err(self.src.error(v.span(), "client_target", needs_leader));
        }
        if let Some(v) = l.fallback_to_leader.as_ref().filter(|_| fallback_to_leader && mode != CheckMode::Patroni) {
            return Err(self.src.error(v.span(), "fallback_to_leader", needs_leader));
        }
        let parse_target = |v: &Spanned<String>, key: &str| {
            Target::parse(v.get_ref()).ok_or_else(|| {
                let msg = format!(
                    "unknown target {:?}; expected primary, replica, prefer-replica, any or listener",
                    v.get_ref()
                );
                self.src.error(v.span(), key, msg)
            })
        };
        let default_target = match &l.default_target {
            None => Target::Listener,
            Some(t) => parse_target(t, "listener.default_target")?,
        };
        let mut routes = Vec::new();
        for r in l.routes.iter().flatten() {
            let raw = r.get_ref();
            if raw.user.is_none() && raw.database.is_none() && raw.application_name.is_none() {
                return Err(self.src.error(
                    r.span(),
                    "listener.routes",
                    "a route must match user, database or application_name",
                ));
            }
            routes.push(Route {
                user: raw.user.clone(),
                database: raw.database.clone(),
                application_name: raw.application_name.clone(),
                target: parse_target(&raw.target, "listener.routes.target")?,
            });
        }
        if (!routes.is_empty() || default_target != Target::Listener) && mode != CheckMode::Patroni {
            let (span, key) = match (l.routes.as_ref().and_then(|r| r.first()), &l.default_target) {
                (Some(r), _) => (r.span(), "listener.routes"),
                (None, Some(t)) => (t.span(), "listener.default_target"),
                (None, None) => (l.name.span(), "listener.routes"),
            };
            return Err(self.src.error(span, key, needs_leader));
        }
        let tls = match &l.tls {
            None => None,
            Some(t) => Some(self.tls(t)?),
        };
        // A leader listener holds sessions through a switchover unless told otherwise.
        let queue_default = if check.is_leader() { defaults::LEADER_TIMEOUT_QUEUE } else { timeout_connect };
        let shutdown_sessions = match &s.on_marked_down {
            None => true,
            Some(v) => match v.get_ref().as_str() {
                "shutdown-sessions" => true,
                "none" => false,
                other => {
                    return Err(self.src.error(
                        v.span(),
                        "on_marked_down",
                        format!("unknown action {other:?}; expected \"shutdown-sessions\" or \"none\""),
                    ));
                }
            },
        };
        if let (Some(d), CheckMode::Http) = (&s.min_lsn_wait, mode) {
            let msg = "needs check_mode = \"patroni\" (replica positions come from Patroni's status JSON)";
            return Err(self.src.error(d.span(), "min_lsn_wait", msg));
        }
        for (key, d) in [
            ("timeout_connect", &s.timeout_connect),
            ("timeout_client", &s.timeout_client),
            ("timeout_server", &s.timeout_server),
        ] {
            if let Some(d) = d {
                if d.get_ref().0.is_zero() {
                    return Err(self.src.error(d.span(), key, "must be greater than zero"));
                }
            }
        }
        Ok(Listener {
            name: name.clone(),
            bind,
            balance,
            servers,
            every_node: l.servers.is_none(),
            check,
            retries: s.retries.as_ref().map_or(defaults::RETRIES, |r| *r.get_ref()),
            maxconn: self.positive(s.maxconn.as_ref(), "maxconn")?.unwrap_or(defaults::SERVER_MAXCONN),
            timeout_connect,
            timeout_client: dur(&s.timeout_client, defaults::TIMEOUT_CLIENT),
            timeout_server: dur(&s.timeout_server, defaults::TIMEOUT_SERVER),
            // HAProxy: "timeout queue" defaults to "timeout connect"; 30 s for the leader.
            timeout_queue: dur(&s.timeout_queue, queue_default),
            // For a reads port without its own `timeout_queue`, the write port's (see above).
            timeout_queue_primary: dur(&s.timeout_queue, queue_default),
            timeout_startup: self.nonzero(&s.timeout_startup, "timeout_startup", defaults::TIMEOUT_STARTUP)?,
            max_connecting: self
                .positive(s.max_connecting.as_ref(), "max_connecting")?
                .unwrap_or(defaults::MAX_CONNECTING),
            log_sessions: match &s.log_sessions {
                None => LogSessions::All,
                Some(v) => match v.get_ref().as_str() {
                    "all" => LogSessions::All,
                    "errors" => LogSessions::Errors,
                    "none" => LogSessions::None,
                    other => {
                        let msg = format!("unknown value {other:?}; expected \"all\", \"errors\" or \"none\"");
                        return Err(self.src.error(v.span(), "log_sessions", msg));
                    }
                },
            },
            shutdown_sessions,
            fallback_to_leader,
            client_target,
            tls,
            routes,
            default_target,
            min_lsn_wait: dur(&s.min_lsn_wait, defaults::MIN_LSN_WAIT),
        })
    }

    fn check(&self, c: &RawCheck, s: &RawDefaults, timeout_connect: Duration, mode: CheckMode) -> Result<CheckSpec> {
        let method = c.method.get_ref();
        if !matches!(method.as_str(), "OPTIONS" | "GET" | "HEAD") {
            return Err(self.src.error(
                c.method.span(),
                "check.method",
                format!("unsupported method {method:?}; expected \"OPTIONS\", \"GET\" or \"HEAD\""),
            ));
        }
        let path = c.path.get_ref();
        if !path.starts_with('/') || path.chars().any(|ch| ch.is_whitespace() || ch.is_control()) {
            return Err(self.src.error(
                c.path.span(),
                "check.path",
                format!("{path:?} must start with '/' and contain no spaces"),
            ));
        }
        let mut endpoint = Endpoint::parse(path).map_err(|e| self.src.error(c.path.span(), "check.path", e))?;
        if let Some(d) = &s.max_replay_delay {
            let filter = endpoint.as_mut().and_then(Endpoint::filter_mut).filter(|_| mode == CheckMode::Patroni);
            match filter {
                Some(f) => f.max_delay = Some(d.get_ref().0),
                None if c.path.get_ref().starts_with("/replica") || mode == CheckMode::Http => {
                    let msg =
                        "needs check_mode = \"patroni\" and a replica check (/replica, /read-only, /sync, /async)";
                    return Err(self.src.error(d.span(), "max_replay_delay", msg));
                }
                // A leader check on a listener that inherits the default: not applicable.
                None => {}
            }
        }
        let (expect, expect_at) = c.expect.as_ref().map_or((200, c.path.span()), |e| (*e.get_ref(), e.span()));
        if mode == CheckMode::Patroni {
            if endpoint.is_none() {
                return Err(self.src.error(c.path.span(), "check.path", format!("{path:?} is not a Patroni health endpoint; use one of /primary, /replica, /read-only, /leader, /health, ... or set [global] check_mode = \"http\"")));
            }
            if expect != 200 {
                return Err(self.src.error(
                    expect_at,
                    "check.expect",
                    "with check_mode = \"patroni\" a check passes when Patroni would answer 200; expect must be 200",
                ));
            }
        }
        if !(100..=599).contains(&expect) {
            return Err(self.src.error(expect_at, "check.expect", format!("{expect} is not an HTTP status")));
        }
        let inter = self.nonzero(&s.inter, "inter", defaults::INTER)?;
        let fall = self.count(&s.fall, "fall", defaults::FALL)?;
        let rise = self.count(&s.rise, "rise", defaults::RISE)?;
        Ok(CheckSpec {
            method: method.clone(),
            path: path.clone(),
            expect,
            timing: CheckTiming {
                inter,
                fastinter: self.nonzero(&s.fastinter, "fastinter", inter)?,
                downinter: self.nonzero(&s.downinter, "downinter", inter)?,
                fall,
                rise,
                connect_timeout: timeout_connect.min(inter),
                timeout: self.nonzero(&s.timeout_check, "timeout_check", defaults::TIMEOUT_CHECK)?,
            },
            endpoint,
            source: None,
            tls: None,
            auth: None,
        })
    }

    /// A node's `check_tls`, laid key by key over `[defaults]`'; files are read now, so a
    /// missing or bad certificate is a configuration error, and a reload re-reads them.
    fn check_tls(
        &self,
        node: Option<&Spanned<RawCheckTls>>,
        defaults: Option<&Spanned<RawCheckTls>>,
    ) -> Result<Option<Arc<CheckTls>>> {
        let (raw, span) = match (node, defaults) {
            (None, None) => return Ok(None),
            (Some(n), Some(d)) => (n.get_ref().over(d.get_ref()), n.span()),
            (Some(t), None) | (None, Some(t)) => (t.get_ref().clone(), t.span()),
        };
        let verify = match raw.verify.as_ref().map(|v| (v.get_ref().as_str(), v.span())) {
            None | Some(("full", _)) => Verify::Full,
            Some(("ca", _)) => Verify::Ca,
            Some(("none", _)) => Verify::None,
            Some((other, span)) => {
                let msg = format!("unknown verify mode {other:?}; expected \"full\", \"ca\" or \"none\"");
                return Err(self.src.error(span, "check_tls.verify", msg));
            }
        };
        let path = |p: &Option<String>| p.as_deref().map(|p| self.relative(p));
        CheckTls::load(verify, path(&raw.ca), path(&raw.cert), path(&raw.key), raw.server_name.clone())
            .map(|t| Some(Arc::new(t)))
            .map_err(|e| self.src.error(span, "check_tls", e))
    }

    /// Basic auth for probes, with the password read from its file or variable now.
    fn check_auth(&self, a: &Spanned<RawCheckAuth>) -> Result<Arc<CheckAuth>> {
        let raw = a.get_ref();
        let err = |msg: String| self.src.error(a.span(), "check_auth", msg);
        if raw.user.is_empty() || raw.user.contains(':') {
            return Err(err(format!("user {:?} must be non-empty and without ':'", raw.user)));
        }
        let password = match (&raw.password_file, &raw.password_env) {
            (Some(f), None) => {
                let p = self.relative(f);
                let text = std::fs::read_to_string(&p).map_err(|e| err(format!("cannot read {}: {e}", p.display())))?;
                // A file written by `echo` ends in a newline that is not part of the password.
                text.strip_suffix('\n').map(|t| t.strip_suffix('\r').unwrap_or(t)).unwrap_or(&text).to_owned()
            }
            (None, Some(v)) => {
                std::env::var(v).map_err(|_| err(format!("environment variable {v:?} is not set (or not UTF-8)")))?
            }
            _ => return Err(err("set exactly one of password_file or password_env".into())),
        };
        Ok(Arc::new(CheckAuth::new(raw.user.clone(), &password)))
    }

    /// A path relative to the configuration file's directory.
    fn relative(&self, p: &str) -> PathBuf {
        self.src.path.parent().unwrap_or(Path::new(".")).join(p)
    }

    fn tls(&self, t: &Spanned<raw::RawTls>) -> Result<TlsSettings> {
        let raw = t.get_ref();
        let server = match raw.server.as_deref() {
            None | Some("require") => ServerTls::Require,
            Some("verify-full") => ServerTls::VerifyFull,
            Some("disable") => ServerTls::Disable,
            Some(other) => {
                let msg =
                    format!("unknown server TLS mode {other:?}; expected \"require\", \"verify-full\" or \"disable\"");
                return Err(self.src.error(t.span(), "listener.tls.server", msg));
            }
        };
        // Relative paths are relative to the configuration file.
        let path = |p: &str| self.relative(p);
        TlsSettings::load(path(&raw.cert), path(&raw.key), server, raw.server_ca.as_deref().map(path))
            .map_err(|e| self.src.error(t.span(), "listener.tls", e))
    }

    fn nonzero(&self, v: &Option<Spanned<Dur>>, key: &str, default: Duration) -> Result<Duration> {
        match v {
            None => Ok(default),
            Some(d) if d.get_ref().0.is_zero() => Err(self.src.error(d.span(), key, "must be greater than zero")),
            Some(d) => Ok(d.get_ref().0),
        }
    }

    fn count(&self, v: &Option<Spanned<u32>>, key: &str, default: u32) -> Result<u32> {
        match v {
            None => Ok(default),
            Some(n) if *n.get_ref() == 0 => Err(self.src.error(n.span(), key, "must be at least 1")),
            Some(n) => Ok(*n.get_ref()),
        }
    }

    fn positive(&self, v: Option<&Spanned<usize>>, key: &str) -> Result<Option<usize>> {
        match v {
            Some(n) if *n.get_ref() == 0 => Err(self.src.error(n.span(), key, "must be at least 1")),
            Some(n) if *n.get_ref() > MOST_SESSIONS => {
                let msg = format!("must be at most {MOST_SESSIONS} (a session takes two descriptors, and Linux allows a process about a million)");
                Err(self.src.error(n.span(), key, msg))
            }
            other => Ok(other.map(|n| *n.get_ref())),
        }
    }

    /// `host:port` with a numeric port; the host is resolved when connecting.
    fn host_port<'s>(&self, v: &'s Spanned<String>, key: &str) -> Result<(&'s str, u16)> {
        let text = v.get_ref().as_str();
        split_host_port(text).ok_or_else(|| {
            let msg = format!("{text:?} is not host:port (an IPv4 address or a DNS name, or an IPv6 address in brackets, and a port from 1 to 65535)");
            self.src.error(v.span(), key, msg)
        })
    }

    /// A local IP address to bind outgoing connections to.
    fn ip(&self, v: &Spanned<String>, key: &str) -> Result<IpAddr> {
        v.get_ref().trim().parse::<IpAddr>().map_err(|_| {
            self.src.error(
                v.span(),
                key,
                format!("{:?} is not an IP address (a local address to connect from)", v.get_ref()),
            )
        })
    }

    /// A listening address: `ip:port`, `*:port` (all IPv4 addresses) or `host:port`.
    fn bind(&self, v: &Spanned<String>, key: &str) -> Result<SocketAddr> {
        let text = v.get_ref().as_str();
        let text = text.strip_prefix("*:").map_or_else(|| text.to_owned(), |port| format!("0.0.0.0:{port}"));
        if let Ok(addr) = text.parse::<SocketAddr>() {
            return Ok(addr);
        }
        self.host_port(v, key)?;
        text.to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next())
            .ok_or_else(|| self.src.error(v.span(), key, format!("cannot resolve {text:?}")))
    }
}

fn dur(v: &Option<Spanned<Dur>>, default: Duration) -> Duration {
    v.as_ref().map_or(default, |d| d.get_ref().0)
}

#[cfg(test)]
mod tests;
