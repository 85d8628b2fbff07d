//! `pgfront import-haproxy`: turns a working haproxy.cfg for a Patroni cluster into a
//! commented pgfront configuration, and says what it could not carry over.
//!
//! Every directive gets one of three outcomes: mapped to its pgfront key (with the HAProxy
//! line as a comment), explained (converted to what pgfront does instead, with a note), or
//! unmapped (listed with its line and a suggestion; the result is then incomplete).

mod parse;
mod render;
mod server;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashSet};

use parse::{time, Line, Section};

/// What the importer says about one directive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    pub line: usize,
    pub directive: String,
    pub kind: NoteKind,
    pub text: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoteKind {
    /// Converted to what pgfront does instead; the result is complete.
    Explained,
    /// Not carried over; the result is incomplete until the operator decides.
    Unmapped,
}

/// The converted configuration and the notes.
#[derive(Debug, Clone)]
pub struct Imported {
    pub toml: String,
    pub notes: Vec<Note>,
}

impl Imported {
    /// Nothing was left unmapped.
    pub fn complete(&self) -> bool {
        !self.notes.iter().any(|n| n.kind == NoteKind::Unmapped)
    }
}

/// Why nothing could be converted.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// With what was noted on the way (every server left out, for example, says why).
    #[error("no listen or frontend with PostgreSQL servers was found")]
    NothingToImport { notes: Vec<Note> },
}

#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Replace `stats auth` passwords by Argon2 hashes.
    pub hash_passwords: bool,
}

/// Per-server check parameters (`server` or `default-server`).
#[derive(Debug, Clone, Default)]
struct ServerParams {
    port: Option<u16>,
    maxconn: Option<usize>,
    inter: Option<String>,
    fastinter: Option<String>,
    downinter: Option<String>,
    fall: Option<u32>,
    rise: Option<u32>,
    on_marked_down: Option<String>,
    check: bool,
    backup: bool,
    /// `maxconn` was written on the server (or its `default-server`), 0 (no limit) included.
    maxconn_set: bool,
    /// `check-ssl` and what goes with it: `verify`, `ca-file`, `crt`, `verifyhost`, `check-sni`.
    check_ssl: bool,
    verify: Option<String>,
    ca_file: Option<String>,
    crt: Option<String>,
    verifyhost: Option<String>,
    check_sni: Option<String>,
    /// `agent-check`: an agent may mark the server down, drain or maint it.
    agent: bool,
    /// `id`: under `balance first`, HAProxy picks the lowest id first.
    id: Option<u32>,
    /// `weight` (HAProxy's default is 1) and its line.
    weight: Option<(u32, usize)>,
}

#[derive(Debug, Clone)]
struct Server {
    name: String,
    address: String,
    params: ServerParams,
    line: usize,
}

/// A `bind` line: the address as written, its options, its line.
#[derive(Debug, Clone)]
struct Bind {
    address: String,
    options: Vec<String>,
    line: usize,
}

/// `[global]` settings read from HAProxy's `global`.
#[derive(Debug, Clone, Default)]
struct Global {
    /// The `global` section's line (0 without one).
    line: usize,
    maxconn: Option<usize>,
    threads: Option<usize>,
    hard_stop_after: Option<String>,
}

/// What a proxy section (or `defaults`) says.
#[derive(Debug, Clone, Default)]
struct Proxy {
    kind: String,
    name: String,
    line: usize,
    mode: Option<String>,
    balance: Option<String>,
    retries: Option<u32>,
    timeouts: BTreeMap<&'static str, String>,
    /// `timeout tunnel` and its line: in TCP mode it replaces client and server once connected.
    tunnel: Option<(String, usize)>,
    /// The check option in force: HAProxy keeps one check type per proxy, so each check
    /// option clears the others (an `option pgsql-check` in a listen replaces the `option
    /// httpchk` of its defaults, and the other way round).
    check: CheckOption,
    /// The `option httpchk` / `http-check` rule set in use. HAProxy names a rule set after its
    /// section: a section with its own such lines starts a new one, without the request or
    /// the expect of its defaults; `own_http` says this section started it.
    http: HttpRules,
    own_http: bool,
    /// The `tcp-check` rules in use (a rule set named as `http`'s is).
    tcp: TcpRules,
    own_tcp: bool,
    default_server: ServerParams,
    /// `option redispatch [N]` (N defaults to -1, the last retry); None without it or with
    /// `no option redispatch`, Some(0) when disabled by value.
    redispatch: Option<i64>,
    dontlog_normal: bool,
    binds: Vec<Bind>,
    servers: Vec<Server>,
    default_backend: Option<String>,
    /// `use_backend NAME if ACL` whose condition never holds for PostgreSQL traffic.
    use_backends: Vec<(String, usize)>,
    /// The first `use_backend` whose condition always holds for PostgreSQL traffic (`unless`
    /// an HTTP ACL, `if !ACL`, or none): HAProxy sends every session there.
    always_backend: Option<(String, usize)>,
    http_acls: Vec<(String, usize)>,
    stats: bool,
    stats_refresh: Option<String>,
    stats_users: Vec<(String, String)>,
    stats_admin: bool,
    /// `stats uri` and its line (HAProxy's default is `/haproxy?stats`).
    stats_uri: Option<(String, usize)>,
    /// Request rules of an HTTP proxy (`http-request`, `stats http-request`): on the stats
    /// page they limit who reaches it. (line, directive)
    http_requests: Vec<(usize, String)>,
}

/// A proxy's health check type: the last check option set wins.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
enum CheckOption {
    /// No check option: a TCP connect (HAProxy's default).
    #[default]
    Connect,
    /// `option httpchk`: the request of the `http` rule set.
    Http,
    /// `option tcp-check`: a TCP connect, or the `tcp` rules when there are any.
    TcpCheck,
    /// `option pgsql-check`: PostgreSQL answers, any role.
    Pgsql,
    /// Another protocol's check (`ssl-hello-chk`, `mysql-check`, ...) and its line.
    Other(String, usize),
}

/// An HTTP check rule set as far as pgfront can carry it.
#[derive(Debug, Clone, Default)]
struct HttpRules {
    /// The line that started the rule set.
    line: usize,
    /// A send rule exists: the implicit one of `option httpchk`, or an `http-check send`.
    send: bool,
    /// An `http-check send` was read. HAProxy merges the implicit send of `option httpchk`
    /// with the first explicit one field by field (the later line's fields win); a second
    /// `option httpchk` before any explicit send replaces the first one whole.
    explicit: bool,
    /// Method and URI, each when a line gave it (else OPTIONS and /).
    method: Option<String>,
    path: Option<String>,
    expect: Option<u16>,
    /// An `http-check expect` pgfront cannot carry (a string, a regex, a status range), its
    /// line and text: what passes, so which role the port serves, is not known.
    unread_expect: Option<(usize, String)>,
    /// An `option httpchk` of the section that owns the rule set was read.
    from_option: bool,
}

/// `tcp-check` rules: pgfront does not run TCP scripts, so they are never carried over;
/// what they ask is kept to write the nearest check.
#[derive(Debug, Clone, Default)]
struct TcpRules {
    /// The first rule's line, when there are rules.
    line: Option<usize>,
    /// The request line of a `tcp-check send` (`GET /master HTTP/1.0...`).
    request: Option<(String, String)>,
    /// `tcp-check connect port N`.
    port: Option<u16>,
}

/// Converts `text` (read from `file`) into a pgfront configuration.
pub fn import(file: &str, text: &str, options: Options) -> Result<Imported, ImportError> {
    let mut cx = Converter::default();
    let sections = parse::sections(text);
    let mut global = Global::default();
    // HAProxy: a proxy takes the last `defaults` section above it, or the one it names with
    // `from NAME`; a later `defaults` never reaches back to the proxies before it. A
    // `defaults` section without `from` starts from HAProxy's defaults, not from the
    // `defaults` above it.
    let mut defaults = Proxy::default();
    let haproxy = Proxy::default();
    let mut named: BTreeMap<String, Proxy> = BTreeMap::new();
    let mut proxies: Vec<Proxy> = Vec::new();
    for s in &sections {
        let base = match &s.from {
            None if s.kind == "defaults" => &haproxy,
            None => &defaults,
            Some(name) => match named.get(name) {
                Some(d) => d,
                None => {
                    let what = format!("{} {} from {name}", s.kind, s.name.as_deref().unwrap_or_default());
                    cx.note(s.number, &what, NoteKind::Unmapped, format!("no defaults section is named {name:?}: HAProxy refuses this file; the last defaults section above is used"));
                    &defaults
                }
            },
        };
        match s.kind.as_str() {
            "global" => cx.global(s, &mut global),
            "defaults" => {
                let d = cx.proxy(s, base);
                if let Some(name) = &s.name {
                    named.insert(name.clone(), d.clone());
                }
                defaults = d;
            }
            "listen" | "frontend" | "backend" => {
                let p = cx.proxy(s, base);
                proxies.push(p);
            }
            "" => {
                for l in &s.lines {
                    cx.unmapped(
                        l,
                        "outside any section (HAProxy refuses it)",
                        "move it into the section it belongs to",
                    );
                }
            }
            other => {
                cx.note(s.number, other, NoteKind::Unmapped, format!("`{other}` sections have no pgfront equivalent"))
            }
        }
    }
    // What a frontend may name as its backend: a backend, or a listen (HAProxy allows both).
    let backends: BTreeMap<&str, &Proxy> =
        proxies.iter().filter(|p| p.kind == "backend" || p.kind == "listen").map(|p| (p.name.as_str(), p)).collect();
    // A backend that only shows the stats page (`stats enable`, no servers), reached from a
    // frontend's default_backend: HAProxy's frontend/backend form of the stats page.
    let stats_only = |p: &Proxy| p.stats && p.servers.is_empty();
    let stats_backends: HashSet<&str> = proxies
        .iter()
        .filter(|p| p.kind == "frontend")
        .filter_map(|p| p.default_backend.as_deref())
        .filter(|b| backends.get(b).is_some_and(|b| b.kind == "backend" && stats_only(b)))
        .collect();
    // The PostgreSQL listeners: a listen with servers, or a frontend with a default backend.
    // A proxy with servers is one even with `stats enable` (its stats part is noted).
    let mut listeners: Vec<render::Listener> = Vec::new();
    let mut stats: Vec<Proxy> = Vec::new();
    for p in &proxies {
        match p.kind.as_str() {
            "listen" if !p.servers.is_empty() => {
                if p.stats {
                    cx.note(p.line, "stats enable", NoteKind::Unmapped, format!("{}: a stats page on the port of a proxy with servers: pgfront's page needs its own address ([web] bind); not carried over", p.name));
                }
                listeners.extend(cx.listener(p, p, false, &global));
            }
            "frontend" if p.stats && p.default_backend.is_none() && p.always_backend.is_none() => stats.push(p.clone()),
            "frontend" => {
                // An always-true use_backend wins over default_backend.
                let (name, reads) = match (&p.always_backend, &p.default_backend) {
                    (Some((name, line)), _) => {
                        cx.note(*line, &format!("use_backend {name}"), NoteKind::Explained, format!("the condition always holds for PostgreSQL traffic (an HTTP ACL never matches it, so `unless` or `!` makes it true): HAProxy sends every session of {} to {name}, and so does this listener", p.name));
                        for (u, line) in &p.use_backends {
                            cx.note(
                                *line,
                                &format!("use_backend {u}"),
                                NoteKind::Explained,
                                "an HTTP ACL never matches PostgreSQL traffic: this rule never routes".into(),
                            );
                        }
                        (name, false)
                    }
                    (None, Some(name)) => (name, !p.use_backends.is_empty()),
                    (None, None) => {
                        cx.note(
                            p.line,
                            "frontend",
                            NoteKind::Unmapped,
                            format!("frontend {} has no default_backend", p.name),
                        );
                        continue;
                    }
                };
                let Some(b) = backends.get(name.as_str()) else {
                    cx.note(p.line, "default_backend", NoteKind::Unmapped, format!("backend {name} is not defined"));
                    continue;
                };
                if b.kind == "backend" && stats_only(b) {
                    // The stats page: served on the frontend's address, set up by the backend.
                    let mut page = (*b).clone();
                    page.binds = p.binds.clone();
                    page.line = p.line;
                    page.http_requests.extend(p.http_requests.iter().cloned());
                    page.name = p.name.clone();
                    stats.push(page);
                    continue;
                }
                if p.stats {
                    cx.note(p.line, "stats enable", NoteKind::Unmapped, format!("{}: a stats page on the port of a proxy with servers: pgfront's page needs its own address ([web] bind); not carried over", p.name));
                }
                listeners.extend(cx.listener(p, b, reads, &global));
            }
            "backend" if stats_backends.contains(p.name.as_str()) => {}
            _ if p.stats => stats.push(p.clone()),
            _ => {}
        }
    }
    if listeners.is_empty() {
        return Err(ImportError::NothingToImport { notes: cx.notes });
    }
    let web = stats.first().map(|s| cx.web(s, options));
    for extra in stats.iter().skip(1) {
        cx.note(
            extra.line,
            "stats",
            NoteKind::Unmapped,
            "pgfront has one stats page; this one is not carried over".into(),
        );
    }
    let mut imported = cx.render(file, &global, &listeners, web);
    render::validate(file, &mut imported);
    Ok(imported)
}

#[derive(Default)]
struct Converter {
    notes: Vec<Note>,
    /// (line, text) of the notes made: a directive that repeats a word (10 000 `weight 1` on
    /// one server line) gets one note for it, not one per repetition.
    said: HashSet<(usize, String)>,
    /// Timeouts HAProxy leaves unlimited (not set): the first line, pgfront's default, and
    /// the listeners concerned.
    missing: BTreeMap<&'static str, (usize, std::time::Duration, Vec<String>)>,
    /// `ca-base` and `crt-base` of `global`: the directories of relative `ca-file` and `crt`.
    ca_base: Option<String>,
    crt_base: Option<String>,
    /// `ssl-server-verify` of `global`: the `verify` of a server that does not say
    /// (HAProxy's default is `required`).
    ssl_server_verify: Option<String>,
}

/// The longest excerpt of a directive a note quotes: a 90 KB line must not be copied into
/// every note about it.
const EXCERPT: usize = 200;

/// `s`, cut to [`EXCERPT`] characters with "…" when longer.
fn excerpt(s: &str) -> String {
    match s.char_indices().nth(EXCERPT) {
        None => s.to_owned(),
        Some((i, _)) => format!("{}…", &s[..i]),
    }
}

/// A note's text, bounded: its own words are a few hundred characters, and what it quotes
/// of the file is an excerpt already.
fn bounded(s: &str) -> String {
    match s.char_indices().nth(EXCERPT * 5) {
        None => s.to_owned(),
        Some((i, _)) => format!("{}…", &s[..i]),
    }
}

/// A line's words joined, cut to an excerpt without joining all of a huge line.
fn directive_of(l: &Line) -> String {
    let mut out = String::new();
    for w in &l.words {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(w);
        if out.len() > EXCERPT * 4 {
            break;
        }
    }
    excerpt(&out)
}

impl Converter {
    fn note(&mut self, line: usize, directive: &str, kind: NoteKind, text: String) {
        let text = bounded(&text);
        if !self.said.insert((line, text.clone())) {
            return;
        }
        self.notes.push(Note { line, directive: excerpt(directive), kind, text });
    }

    fn said(&self, line: usize, text: &str) -> bool {
        self.said.contains(&(line, bounded(text)))
    }

    fn unmapped(&mut self, l: &Line, what: &str, suggestion: &str) {
        let text = format!("{what}; {suggestion}");
        if !self.said(l.number, &text) {
            self.note(l.number, &directive_of(l), NoteKind::Unmapped, text);
        }
    }

    fn explained(&mut self, l: &Line, text: impl Into<String>) {
        let text = text.into();
        if !self.said(l.number, &text) {
            self.note(l.number, &directive_of(l), NoteKind::Explained, text);
        }
    }

    fn global(&mut self, s: &Section, g: &mut Global) {
        g.line = s.number;
        for l in &s.lines {
            let w = |i| l.word(i).unwrap_or_default();
            match w(0) {
                "maxconn" => match w(1).parse() {
                    // 0: HAProxy computes the limit from the file descriptor limit.
                    Ok(0) => self.unmapped(
                        l,
                        "maxconn 0: HAProxy derives the limit from `ulimit -n`; pgfront needs a number",
                        "pgfront's default (4096) is used; write [global] maxconn by hand",
                    ),
                    Ok(n) if n > crate::config::MOST_SESSIONS => self.unmapped(
                        l,
                        &format!("pgfront takes at most {} sessions", crate::config::MOST_SESSIONS),
                        "pgfront's default (4096) is used; write [global] maxconn by hand",
                    ),
                    Ok(n) => g.maxconn = Some(n),
                    Err(_) => self.unmapped(l, "not a number", "write [global] maxconn by hand"),
                },
                "nbthread" => match w(1).parse() {
                    Ok(n) if (1..=256).contains(&n) => g.threads = Some(n),
                    _ => self.unmapped(
                        l,
                        "not a thread count pgfront takes (1 to 256)",
                        "write [global] threads by hand",
                    ),
                },
                "hard-stop-after" => match time(w(1)) {
                    Ok(t) if t != "0ms" => g.hard_stop_after = Some(t),
                    Ok(_) => self.unmapped(
                        l,
                        "0: HAProxy waits without limit; pgfront needs a time",
                        "write [global] hard_stop_after by hand",
                    ),
                    Err(e) => self.unmapped(l, &e, "write [global] hard_stop_after by hand"),
                },
                // Relative `ca-file` and `crt` paths of the lines below are read from there.
                "ca-base" if l.words.len() == 2 => self.ca_base = Some(w(1).to_owned()),
                "crt-base" if l.words.len() == 2 => self.crt_base = Some(w(1).to_owned()),
                "ssl-server-verify" if l.words.len() == 2 && matches!(w(1), "none" | "required") => {
                    self.ssl_server_verify = Some(w(1).to_owned())
                }
                // Process management, logging and runtime API: pgfront runs under systemd or
                // Pacemaker, logs to stderr, and has its own web surface.
                "log" | "chroot" | "user" | "group" | "uid" | "gid" | "daemon" | "pidfile" | "stats" | "nbproc"
                | "master-worker" | "spread-checks" | "log-send-hostname" | "node" | "description" => {}
                k if k.starts_with("tune.") || k.starts_with("ssl-default-") || k.starts_with("ssl-dh") => {}
                _ => self.unmapped(
                    l,
                    "no pgfront equivalent in [global]",
                    "see conf/pgfront.toml for what [global] holds",
                ),
            }
        }
    }

    /// Reads a proxy section (or `defaults`) over `base`.
    fn proxy(&mut self, s: &Section, base: &Proxy) -> Proxy {
        let mut p = base.clone();
        p.kind = s.kind.clone();
        p.name = s.name.clone().unwrap_or_default();
        p.line = s.number;
        p.binds.clear();
        p.servers.clear();
        p.use_backends.clear();
        p.always_backend = None;
        p.http_acls.clear();
        p.default_backend = None;
        p.stats = false;
        p.stats_uri = None;
        p.http_requests.clear();
        p.own_http = false;
        p.own_tcp = false;
        if let Some(b) = &s.header_bind {
            p.binds.push(Bind { address: b.clone(), options: Vec::new(), line: s.number });
        }
        for l in &s.lines {
            self.directive(&mut p, l);
        }
        // Rule sets HAProxy does not use, or uses without what the defaults had: said, as
        // they surprise whoever reads the file.
        if p.own_http && p.check != CheckOption::Http {
            let text = "HAProxy ignores http-check rules without `option httpchk` (it warns so)";
            self.note(p.http.line, "http-check", NoteKind::Explained, text.into());
        } else if p.own_http && !p.http.from_option && base.check == CheckOption::Http && base.http.send && p.http.send
        {
            let text = format!(
                "these http-check lines start a rule set of {} in HAProxy, without the request of `option httpchk` in its defaults: HAProxy sends {} {}",
                p.name,
                p.http.method.as_deref().unwrap_or("OPTIONS"),
                p.http.path.as_deref().unwrap_or("/")
            );
            self.note(p.http.line, "http-check", NoteKind::Explained, text);
        }
        if p.own_tcp && p.tcp.line.is_some() && p.check != CheckOption::TcpCheck {
            let line = p.tcp.line.unwrap_or_default();
            self.note(
                line,
                "tcp-check",
                NoteKind::Explained,
                "HAProxy ignores tcp-check rules without `option tcp-check` (it warns so)".into(),
            );
        }
        p
    }

    /// The section's own HTTP check rule set, started (empty) on its first line.
    fn own_http<'p>(p: &'p mut Proxy, l: &Line) -> &'p mut HttpRules {
        if !p.own_http {
            p.own_http = true;
            p.http = HttpRules { line: l.number, ..HttpRules::default() };
        }
        &mut p.http
    }

    /// A timeout's value, or a note saying why it is not carried over. HAProxy's 0 is "not
    /// set": no limit for connect, client, server and tunnel (pgfront has no unlimited
    /// timeout), the fallback for queue (timeout connect) and check (inter), so the key is
    /// removed and the fallback written (see `render`).
    fn timeout(&mut self, p: &mut Proxy, l: &Line, key: &'static str, value: &str) {
        match time(value) {
            Ok(t) if t == "0ms" || t == "0us" => {
                p.timeouts.remove(key);
                if key == "timeout_tunnel" {
                    p.tunnel = None;
                }
                match key {
                    "timeout_queue" => self.explained(l, "0 is not set in HAProxy: the queue timeout is timeout connect"),
                    "timeout_check" => self.explained(l, "0 is not set in HAProxy: the check timeout is inter"),
                    _ => self.unmapped(
                        l,
                        "0 means no limit in HAProxy; pgfront has no unlimited timeout (the longest is 24.8 days), so its default is used",
                        "write the time you want by hand",
                    ),
                }
            }
            Ok(t) if key == "timeout_tunnel" => p.tunnel = Some((t, l.number)),
            Ok(t) => {
                p.timeouts.insert(key, t);
            }
            Err(e) => self.unmapped(l, &format!("unreadable time: {e}"), "write the timeout with a unit, e.g. \"4s\""),
        }
    }

    fn directive(&mut self, p: &mut Proxy, l: &Line) {
        let w = |i| l.word(i).unwrap_or_default();
        match w(0) {
            "mode" => {
                p.mode = Some(w(1).to_owned());
            }
            "bind" => {
                let Some(address) = l.word(1) else {
                    return self.unmapped(l, "a bind without an address", "fix the line");
                };
                p.binds.push(Bind { address: address.to_owned(), options: l.words[2..].to_vec(), line: l.number })
            }
            "balance" => match w(1) {
                "roundrobin" | "static-rr" => p.balance = Some("roundrobin".into()),
                "leastconn" => p.balance = Some("leastconn".into()),
                "first" => p.balance = Some("first".into()),
                // `source`, `uri`, `hdr`, `random`...: each spreads clients its own way
                // (`source` keeps a client on one server); roundrobin does not, so it is a
                // change of meaning, not a detail.
                other => {
                    self.unmapped(
                        l,
                        &format!("balance {other} has no pgfront equivalent"),
                        "roundrobin is written instead (no client affinity)",
                    );
                    p.balance = Some("roundrobin".into());
                }
            },
            "retries" => match w(1).parse::<u32>() {
                // HAProxy reads an int: a larger number is not the count it uses.
                Ok(n) if n > i32::MAX as u32 => self.unmapped(
                    l,
                    &format!("retries {n} is more than HAProxy reads (2^31 - 1)"),
                    "write retries by hand; HAProxy's default (3) is written",
                ),
                Ok(n) => p.retries = Some(n),
                Err(_) => self.unmapped(l, "retries needs a whole number", "write retries by hand"),
            },
            "timeout" => {
                let key = match w(1) {
                    "connect" => "timeout_connect",
                    "client" => "timeout_client",
                    "server" => "timeout_server",
                    "check" => "timeout_check",
                    "queue" => "timeout_queue",
                    "tunnel" => "timeout_tunnel",
                    // HTTP-only: never used by a TCP proxy.
                    "http-request" | "http-keep-alive" | "tarpit" => return,
                    "client-fin" | "server-fin" => {
                        return self.unmapped(
                            l,
                            "pgfront has no separate timeout for a half-closed session (timeout_client and timeout_server apply)",
                            "leave it out, or adjust timeout_client/timeout_server",
                        )
                    }
                    _ => return self.unmapped(l, "an unknown timeout", "fix or remove the line"),
                };
                self.timeout(p, l, key, w(2));
            }
            "contimeout" | "clitimeout" | "srvtimeout" => {
                let key = match w(0) {
                    "contimeout" => "timeout_connect",
                    "clitimeout" => "timeout_client",
                    _ => "timeout_server",
                };
                self.timeout(p, l, key, w(1));
            }
            "option" => self.option(p, l),
            // `no option dontlog-normal`: a frontend logs every session again.
            "no" if w(1) == "option" && w(2) == "dontlog-normal" && l.words.len() == 3 => p.dontlog_normal = false,
            "no" if w(1) == "option" && w(2) == "redispatch" && l.words.len() == 3 => p.redispatch = None,
            "http-check" => match w(1) {
                "expect" => {
                    let rules = Self::own_http(p, l);
                    match (w(2), l.words.len()) {
                        ("status", 4) if w(3).parse::<u16>().is_ok() => rules.expect = w(3).parse().ok(),
                        // Decided per listener: which role passes is not known.
                        _ => {
                            rules.unread_expect.get_or_insert((l.number, directive_of(l)));
                        }
                    }
                }
                "send" => self.http_send(p, l),
                // A rule with nothing to carry: it still makes the rule set the section's own.
                "comment" => {
                    Self::own_http(p, l);
                }
                "connect" => {
                    Self::own_http(p, l);
                    self.unmapped(
                        l,
                        "http-check connect (another port, TLS or address for the check) is not converted",
                        "set the nodes' check_port / check_tls by hand",
                    )
                }
                _ => self.unmapped(l, "this http-check form is not understood", "set the listener's check by hand"),
            },
            "tcp-check" => {
                // HAProxy drops comment rules; every other one makes a script pgfront cannot run.
                if w(1) != "comment" {
                    if !p.own_tcp {
                        p.own_tcp = true;
                        p.tcp = TcpRules::default();
                    }
                    p.tcp.line.get_or_insert(l.number);
                    match w(1) {
                        "connect" => {
                            let port = l.words.iter().position(|w| w == "port").and_then(|i| l.word(i + 1));
                            if let Some(Ok(n)) = port.map(str::parse::<u16>) {
                                p.tcp.port.get_or_insert(n);
                            }
                        }
                        "send" if p.tcp.request.is_none() => {
                            // The data, one word once its escaped spaces are read: `GET /master HTTP/1.0...`.
                            let data = l.rest(2);
                            let words: Vec<&str> = data.split_whitespace().collect();
                            p.tcp.request = words.windows(2).find_map(|w| {
                                (matches!(w[0], "GET" | "OPTIONS" | "HEAD") && w[1].starts_with('/'))
                                    .then(|| (w[0].to_owned(), w[1].to_owned()))
                            });
                        }
                        _ => {}
                    }
                }
            }
            "default-server" => {
                let params = std::mem::take(&mut p.default_server);
                p.default_server = self.server_params(l, 1, params);
            }
            "server" => {
                let (Some(name), Some(address)) = (l.word(1), l.word(2)) else {
                    return self.unmapped(l, "a server needs a name and an address", "fix the line");
                };
                if address.contains('$') {
                    return self.unmapped(
                        l,
                        "the address names an environment variable, which HAProxy expands when it starts: its value is not known here, so the server is left out",
                        "write the address by hand",
                    );
                }
                if !address.contains(':') {
                    return self.unmapped(l, "a server without a port", "add the PostgreSQL port to the address");
                }
                let params = self.server_params(l, 3, p.default_server.clone());
                p.servers.push(Server { name: name.to_owned(), address: address.to_owned(), params, line: l.number });
            }
            "default_backend" => p.default_backend = Some(w(1).to_owned()),
            "use_backend" => {
                // HTTP ACLs never match PostgreSQL traffic (its startup packet is no HTTP
                // request, so the sample fetch fails, and a failed fetch does not match),
                // which decides a condition made of them: `if is_primary` never routes,
                // `unless is_primary` and `if !is_primary` always do. Anything else (an
                // inline `{ src ... }`, a TCP ACL, a dynamic name) is routing pgfront cannot carry.
                let truth = match w(2) {
                    "" => Some(true),
                    "if" => Self::http_condition(p, &l.words[3..]),
                    "unless" => Self::http_condition(p, &l.words[3..]).map(|t| !t),
                    _ => None,
                };
                match truth {
                    _ if w(1).contains('%') || w(1).is_empty() => self.unmapped(
                        l,
                        "a backend name computed per session",
                        "route with [[listener]] routes, or a listener per backend",
                    ),
                    Some(false) => p.use_backends.push((w(1).to_owned(), l.number)),
                    Some(true) if p.always_backend.is_none() => p.always_backend = Some((w(1).to_owned(), l.number)),
                    Some(true) => self.explained(l, "never reached: an earlier use_backend always matches"),
                    None => self.unmapped(
                        l,
                        "routing on a condition pgfront cannot read",
                        "route with [[listener]] routes, or a listener per backend",
                    ),
                }
            }
            "acl" => {
                // Layer-7 criteria can never match PostgreSQL traffic in TCP mode.
                if [
                    "path", "path_beg", "path_end", "path_reg", "path_sub", "url", "url_beg", "hdr", "hdr_beg",
                    "method",
                ]
                .iter()
                .any(|c| w(2) == *c || w(2).starts_with(&format!("{c}(")))
                {
                    p.http_acls.push((directive_of(l), l.number));
                } else {
                    self.unmapped(l, "ACLs other than HTTP paths are not converted", "route with [[listener]] routes");
                }
            }
            "stats" => {
                p.stats = true;
                match w(1) {
                    "auth" => match w(2).split_once(':') {
                        Some(("", _)) => {
                            self.unmapped(l, "stats auth with an empty user name", "add a [[web.user]] by hand")
                        }
                        Some((u, pw)) => p.stats_users.push((u.to_owned(), pw.to_owned())),
                        None => self.unmapped(l, "stats auth needs user:password", "add a [[web.user]]"),
                    },
                    "refresh" => match time(w(2)) {
                        Ok(t) if t != "0ms" => p.stats_refresh = Some(t),
                        Ok(_) => self.unmapped(l, "a refresh of 0", "set [web] refresh by hand"),
                        Err(e) => self.unmapped(l, &e, "set [web] refresh by hand"),
                    },
                    // `stats admin` always has a condition; only an always-true one makes every
                    // user an admin. Another one (`if LOCALHOST`) limits who may act: pgfront's
                    // roles do not depend on where a request comes from, so no one is made admin.
                    "admin" => match (w(2), w(3), l.words.len()) {
                        ("if", "TRUE", 4) | ("unless", "FALSE", 4) => p.stats_admin = true,
                        _ => self.unmapped(
                            l,
                            "a conditional stats admin: pgfront's roles do not depend on where a request comes from, so no user is made admin",
                            "give role = \"admin\" to the users who should have it",
                        ),
                    },
                    "uri" if l.words.len() == 3 => p.stats_uri = Some((w(2).to_owned(), l.number)),
                    // Request rules of the page: who may reach it, or see it.
                    "http-request" => p.http_requests.push((l.number, directive_of(l))),
                    "enable" | "realm" | "hide-version" | "show-legends" | "show-node" | "show-desc" => {}
                    _ => self.unmapped(
                        l,
                        "a stats setting the importer does not know",
                        "check what it did and set [web] by hand",
                    ),
                }
            }
            "maxconn" => {
                if w(1) == "0" && l.words.len() == 2 {
                    // HAProxy's default: the global maxconn limits the proxy, as in pgfront.
                    self.explained(
                        l,
                        "0 is HAProxy's default: the proxy is limited by the global maxconn, as in pgfront",
                    );
                } else if p.kind == "backend" {
                    self.explained(l, "HAProxy ignores maxconn in a backend");
                } else {
                    // A proxy's own accept limit: pgfront has the global one and per server.
                    self.unmapped(
                        l,
                        "a per-listener session limit: pgfront limits sessions globally ([global] maxconn) and per server (maxconn), not per listener",
                        "lower [global] maxconn or the listener's maxconn if the limit matters",
                    );
                }
            }
            "log" | "description" | "id" | "fullconn" | "monitor-uri" | "unique-id-format" | "log-format" => {}
            "errorfile" | "http-request" | "http-response" | "capture" | "compression" | "redirect" => {
                if w(0) == "http-request" && p.mode.as_deref() == Some("http") {
                    p.http_requests.push((l.number, directive_of(l)));
                } else if p.mode.as_deref() != Some("http") {
                    self.unmapped(l, "an HTTP directive in a TCP proxy", "remove it; pgfront proxies PostgreSQL");
                }
            }
            _ => self.unmapped(l, "not understood by the importer", "port it by hand (see conf/pgfront.toml)"),
        }
    }

    /// A check method pgfront sends: HAProxy sends the method as written, and pgfront only
    /// OPTIONS, GET or HEAD. Another one (`POST`, a lowercase `get`, which Patroni answers
    /// with 501) is noted, and the nearest pgfront method written.
    fn method(&mut self, l: &Line, method: &str) -> String {
        if matches!(method, "OPTIONS" | "GET" | "HEAD") {
            return method.to_owned();
        }
        let upper = method.to_ascii_uppercase();
        let nearest = if matches!(upper.as_str(), "OPTIONS" | "HEAD") { upper } else { "GET".to_owned() };
        self.unmapped(
            l,
            &format!("pgfront checks with OPTIONS, GET or HEAD, not {method:?}: {nearest} is written"),
            "check that Patroni answers it as you expect",
        );
        nearest
    }

    /// `http-check send`: merged into the implicit send of `option httpchk` (only the fields
    /// it gives replace that one's); a second explicit send makes a send/expect sequence.
    fn http_send(&mut self, p: &mut Proxy, l: &Line) {
        let (mut method, mut path) = (None, None);
        let mut unsent = Vec::new();
        let mut i = 2;
        while i < l.words.len() {
            let value = l.word(i + 1);
            match (l.words[i].as_str(), value) {
                ("meth", Some(m)) => method = Some(self.method(l, m)),
                ("uri", Some(u)) => path = Some(u.to_owned()),
                ("uri-lf", Some(_)) => {
                    self.unmapped(
                        l,
                        "uri-lf: a URI built when the check runs; pgfront's check path is fixed",
                        "set the listener's check path by hand",
                    );
                }
                ("ver" | "body" | "body-lf", Some(_)) => unsent.push(l.words[i].clone()),
                ("comment", Some(_)) => {}
                ("hdr", Some(_)) if i + 2 < l.words.len() => {
                    unsent.push("hdr".to_owned());
                    i += 1;
                }
                (other, _) => {
                    self.unmapped(
                        l,
                        &format!("http-check send: `{}` is not understood", excerpt(other)),
                        "set the listener's check by hand",
                    );
                    break;
                }
            }
            i += 2;
        }
        if !unsent.is_empty() {
            unsent.dedup();
            self.explained(
                l,
                format!(
                    "pgfront sends its own request line and headers: {} not sent (Patroni's answer does not depend on them)",
                    unsent.join(", ")
                ),
            );
        }
        let rules = Self::own_http(p, l);
        if rules.explicit {
            return self.unmapped(
                l,
                "a second http-check send makes a send/expect sequence; pgfront sends one request",
                "set the listener's check by hand",
            );
        }
        rules.method = method.or(rules.method.take());
        rules.path = path.or(rules.path.take());
        rules.send = true;
        rules.explicit = true;
    }

    /// The truth, for PostgreSQL traffic, of a condition made only of named HTTP ACLs (each
    /// false), `!`, `||` and `or`: terms are ANDed, groups ORed. None when it names anything
    /// else.
    fn http_condition(p: &Proxy, words: &[String]) -> Option<bool> {
        let http = |n: &str| p.http_acls.iter().any(|(acl, _)| acl.split_whitespace().nth(1) == Some(n));
        let mut any = false;
        let mut group = true;
        let mut terms = 0;
        let mut negate = false;
        for w in words {
            match w.as_str() {
                "||" | "or" => {
                    any |= group && terms > 0;
                    (group, terms) = (true, 0);
                }
                "!" => negate = !negate,
                name => {
                    let (neg, name) = match name.strip_prefix('!') {
                        Some(n) => (!negate, n),
                        None => (negate, name),
                    };
                    if !http(name) {
                        return None;
                    }
                    // The ACL is false: the term is true only when negated.
                    group &= neg;
                    terms += 1;
                    negate = false;
                }
            }
        }
        if terms == 0 && !any && words.iter().all(|w| matches!(w.as_str(), "||" | "or" | "!")) {
            return None;
        }
        Some(any || (group && terms > 0))
    }

    fn option(&mut self, p: &mut Proxy, l: &Line) {
        let w = |i| l.word(i).unwrap_or_default();
        match w(1) {
            "httpchk" => {
                // `option httpchk`, `option httpchk OPTIONS /master`, `option httpchk
                // OPTIONS/master` (the tutorials' spelling), `option httpchk /master`.
                let rest = l.rest(2);
                let (method, path) = match rest.split_whitespace().collect::<Vec<_>>().as_slice() {
                    [] => (None, None),
                    [one] if one.starts_with('/') => (None, Some((*one).to_owned())),
                    [one] => match one.find('/') {
                        Some(i) => (Some(one[..i].to_owned()), Some(one[i..].to_owned())),
                        None => (Some(one.to_string()), None),
                    },
                    [m, path, ..] => (Some((*m).to_owned()), Some((*path).to_owned())),
                };
                let method = method.map(|m| self.method(l, &m));
                p.check = CheckOption::Http;
                let rules = Self::own_http(p, l);
                rules.from_option = true;
                if rules.explicit {
                    // Merged into the explicit send: only the fields given.
                    rules.method = method.or(rules.method.take());
                    rules.path = path.or(rules.path.take());
                } else {
                    (rules.method, rules.path) = (method, path);
                }
                rules.send = true;
            }
            "pgsql-check" => p.check = CheckOption::Pgsql,
            "tcp-check" => p.check = CheckOption::TcpCheck,
            other @ ("ssl-hello-chk" | "smtpchk" | "ldap-check" | "mysql-check" | "redis-check" | "external-check"
            | "spop-check") => p.check = CheckOption::Other(other.to_owned(), l.number),
            "dontlog-normal" if p.kind == "backend" => {
                self.explained(l, "a frontend option: HAProxy ignores it in a backend (the frontend's applies)")
            }
            "dontlog-normal" => p.dontlog_normal = true,
            // pgfront always redispatches a failed connect, keeps TCP keepalives on, and
            // logs in its own format.
            "redispatch" => match l.word(2).map(str::parse::<i64>) {
                None => p.redispatch = Some(-1),
                Some(Ok(n)) => p.redispatch = Some(n),
                Some(Err(_)) => self.unmapped(l, "option redispatch takes a whole number", "fix the line"),
            },
            "tcpka" | "clitcpka" | "srvtcpka" | "tcplog" | "dontlognull" | "log-health-checks" | "splice-auto"
            | "splice-request" | "splice-response" | "abortonclose" | "httplog" | "http-server-close"
            | "forwardfor" | "httpclose" | "http-keep-alive" => {}
            _ => self.unmapped(l, "an option the importer does not know", "port it by hand if it matters"),
        }
    }
}

fn quote(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

/// A pgfront name from an HAProxy one (letters, digits, '-', '_', '.').
fn sanitize(name: &str) -> String {
    let s: String =
        name.chars().map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '_' }).collect();
    if s.is_empty() {
        "node".to_owned()
    } else {
        s
    }
}

fn hash(password: &str) -> Option<String> {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).ok()?;
    let salt = SaltString::encode_b64(&salt).ok()?;
    argon2::Argon2::default().hash_password(password.as_bytes(), &salt).ok().map(|h| h.to_string())
}
