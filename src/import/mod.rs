//! `pgfront import-haproxy`: turns a working haproxy.cfg for a Patroni cluster into a
//! commented pgfront configuration, and says what it could not carry over.
//!
//! Every directive gets one of three outcomes: mapped to its pgfront key (with the HAProxy
//! line as a comment), explained (converted to what pgfront does instead, with a note), or
//! unmapped (listed with its line and a suggestion; the result is then incomplete).

mod parse;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt::Write as _;

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
    #[error("no listen or frontend with PostgreSQL servers was found")]
    NothingToImport,
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
    /// `check-ssl` and what goes with it: `verify`, `ca-file`, `crt`, `verifyhost`, `check-sni`.
    check_ssl: bool,
    verify: Option<String>,
    ca_file: Option<String>,
    crt: Option<String>,
    verifyhost: Option<String>,
    check_sni: Option<String>,
}

#[derive(Debug, Clone)]
struct Server {
    name: String,
    address: String,
    params: ServerParams,
    line: usize,
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
    check: Option<(String, String)>,
    expect: Option<u16>,
    /// `option pgsql-check` / `tcp-check`: a check that PostgreSQL answers, any role.
    liveness_check: Option<&'static str>,
    default_server: ServerParams,
    dontlog_normal: bool,
    binds: Vec<(String, usize)>,
    servers: Vec<Server>,
    default_backend: Option<String>,
    /// `use_backend NAME if ACL`, with the ACL's criterion when it is an HTTP one.
    use_backends: Vec<(String, usize)>,
    http_acls: Vec<(String, usize)>,
    stats: bool,
    stats_refresh: Option<String>,
    stats_users: Vec<(String, String)>,
    stats_admin: bool,
}

/// Converts `text` (read from `file`) into a pgfront configuration.
pub fn import(file: &str, text: &str, options: Options) -> Result<Imported, ImportError> {
    let mut cx = Converter { notes: Vec::new() };
    let sections = parse::sections(text);
    let mut global_maxconn = None;
    let mut threads = None;
    let mut defaults = Proxy::default();
    let mut proxies: Vec<Proxy> = Vec::new();
    for s in &sections {
        match s.kind.as_str() {
            "global" => cx.global(s, &mut global_maxconn, &mut threads),
            // A later `defaults` section replaces the earlier one for the proxies after it.
            "defaults" => defaults = cx.proxy(s, &Proxy::default()),
            "listen" | "frontend" | "backend" => proxies.push(cx.proxy(s, &defaults)),
            "" => cx.unmapped(&s.lines[0], "outside any section", "move it into a section"),
            other => {
                cx.note(s.number, other, NoteKind::Unmapped, format!("`{other}` sections have no pgfront equivalent"))
            }
        }
    }
    let stats: Vec<&Proxy> = proxies.iter().filter(|p| p.stats).collect();
    let backends: BTreeMap<&str, &Proxy> =
        proxies.iter().filter(|p| p.kind == "backend").map(|p| (p.name.as_str(), p)).collect();
    // The PostgreSQL listeners: a listen with servers, or a frontend with a default backend.
    let mut listeners: Vec<Listener> = Vec::new();
    for p in proxies.iter().filter(|p| !p.stats) {
        match p.kind.as_str() {
            "listen" if !p.servers.is_empty() => listeners.push(cx.listener(p, p, false)),
            "frontend" => {
                let Some(name) = &p.default_backend else {
                    cx.note(
                        p.line,
                        "frontend",
                        NoteKind::Unmapped,
                        format!("frontend {} has no default_backend", p.name),
                    );
                    continue;
                };
                let Some(b) = backends.get(name.as_str()) else {
                    cx.note(p.line, "default_backend", NoteKind::Unmapped, format!("backend {name} is not defined"));
                    continue;
                };
                let reads = !p.use_backends.is_empty();
                listeners.push(cx.listener(p, b, reads));
            }
            _ => {}
        }
    }
    if listeners.is_empty() {
        return Err(ImportError::NothingToImport);
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
    Ok(cx.render(file, global_maxconn, threads, &defaults, &listeners, web))
}

/// A PostgreSQL listener to write.
#[derive(Debug)]
struct Listener {
    name: String,
    bind: String,
    balance: Option<String>,
    method: String,
    path: String,
    expect: u16,
    servers: Vec<Server>,
    settings: Proxy,
    /// Clients may ask for the primary (`pgfront.target`).
    client_target: bool,
    comments: Vec<String>,
}

struct Converter {
    notes: Vec<Note>,
}

impl Converter {
    fn note(&mut self, line: usize, directive: &str, kind: NoteKind, text: String) {
        self.notes.push(Note { line, directive: directive.to_owned(), kind, text });
    }

    fn unmapped(&mut self, l: &Line, what: &str, suggestion: &str) {
        let directive = l.words.join(" ");
        self.note(l.number, &directive, NoteKind::Unmapped, format!("{what}; {suggestion}"));
    }

    fn explained(&mut self, l: &Line, text: impl Into<String>) {
        let directive = l.words.join(" ");
        self.note(l.number, &directive, NoteKind::Explained, text.into());
    }

    fn global(&mut self, s: &Section, maxconn: &mut Option<usize>, threads: &mut Option<usize>) {
        for l in &s.lines {
            let w = |i| l.word(i).unwrap_or_default();
            match w(0) {
                "maxconn" => match w(1).parse() {
                    Ok(n) => *maxconn = Some(n),
                    Err(_) => self.unmapped(l, "not a number", "write [global] maxconn by hand"),
                },
                "nbthread" => *threads = w(1).parse().ok(),
                // Process management, logging and runtime API: pgfront runs under systemd or
                // Pacemaker, logs to stderr, and has its own web surface.
                "log" | "chroot" | "user" | "group" | "uid" | "gid" | "daemon" | "pidfile" | "stats" | "nbproc"
                | "master-worker" | "ca-base" | "crt-base" | "spread-checks" | "log-send-hostname" | "node"
                | "description" => {}
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
        p.http_acls.clear();
        p.default_backend = None;
        p.stats = false;
        if let Some(b) = &s.header_bind {
            p.binds.push((b.clone(), s.number));
        }
        for l in &s.lines {
            self.directive(&mut p, l);
        }
        p
    }

    fn directive(&mut self, p: &mut Proxy, l: &Line) {
        let w = |i| l.word(i).unwrap_or_default();
        match w(0) {
            "mode" => {
                p.mode = Some(w(1).to_owned());
            }
            "bind" => p.binds.push((w(1).to_owned(), l.number)),
            "balance" => match w(1) {
                "roundrobin" | "static-rr" => p.balance = Some("roundrobin".into()),
                "leastconn" => p.balance = Some("leastconn".into()),
                "first" => p.balance = Some("first".into()),
                other => {
                    self.explained(l, format!("balance {other} has no pgfront equivalent; roundrobin is used"));
                    p.balance = Some("roundrobin".into());
                }
            },
            "retries" => p.retries = w(1).parse().ok(),
            "timeout" => {
                let key = match w(1) {
                    "connect" => Some("timeout_connect"),
                    "client" => Some("timeout_client"),
                    "server" => Some("timeout_server"),
                    "check" => Some("timeout_check"),
                    "queue" => Some("timeout_queue"),
                    // HTTP-only or not applicable to a TCP proxy.
                    "http-request" | "http-keep-alive" | "tunnel" | "client-fin" | "server-fin" | "tarpit" => None,
                    _ => None,
                };
                match (key, time(w(2))) {
                    (Some(k), Some(v)) => {
                        p.timeouts.insert(k, v);
                    }
                    (None, _) => {}
                    (Some(_), None) => {
                        self.unmapped(l, "unreadable time", "write the timeout with a unit, e.g. \"4s\"")
                    }
                }
            }
            "contimeout" | "clitimeout" | "srvtimeout" => {
                let key = match w(0) {
                    "contimeout" => "timeout_connect",
                    "clitimeout" => "timeout_client",
                    _ => "timeout_server",
                };
                if let Some(v) = time(w(1)) {
                    p.timeouts.insert(key, v);
                }
            }
            "option" => self.option(p, l),
            "http-check" => match (w(1), w(2)) {
                ("expect", "status") => match w(3).parse() {
                    Ok(code) => p.expect = Some(code),
                    Err(_) => self.unmapped(l, "only a single status is understood", "set check.expect by hand"),
                },
                ("send", _) => {
                    let mut method = "OPTIONS".to_owned();
                    let mut path = "/".to_owned();
                    for pair in l.words[2..].chunks(2) {
                        match pair {
                            [k, v] if k == "meth" => method = v.clone(),
                            [k, v] if k == "uri" => path = v.clone(),
                            _ => {}
                        }
                    }
                    p.check = Some((method, path));
                }
                _ => self.unmapped(l, "this http-check form is not understood", "set the listener's check by hand"),
            },
            "tcp-check" => p.liveness_check = Some("tcp-check"),
            "default-server" => {
                let params = std::mem::take(&mut p.default_server);
                p.default_server = self.server_params(l, 1, params);
            }
            "server" => {
                let (Some(name), Some(address)) = (l.word(1), l.word(2)) else {
                    return self.unmapped(l, "a server needs a name and an address", "fix the line");
                };
                if !address.contains(':') {
                    return self.unmapped(l, "a server without a port", "add the PostgreSQL port to the address");
                }
                let params = self.server_params(l, 3, p.default_server.clone());
                p.servers.push(Server { name: name.to_owned(), address: address.to_owned(), params, line: l.number });
            }
            "default_backend" => p.default_backend = Some(w(1).to_owned()),
            "use_backend" => {
                // Only a condition made of named HTTP ACLs is known never to match; anything
                // else (an inline `{ src ... }`, a TCP ACL) is routing pgfront cannot carry.
                let names: Vec<&str> =
                    l.words.iter().skip(3).map(String::as_str).filter(|w| !matches!(*w, "!" | "||" | "or")).collect();
                let http = |n: &str| p.http_acls.iter().any(|(acl, _)| acl.split_whitespace().nth(1) == Some(n));
                if l.word(2).is_some() && !names.is_empty() && names.iter().all(|n| http(n.trim_start_matches('!'))) {
                    p.use_backends.push((w(1).to_owned(), l.number));
                } else {
                    self.unmapped(
                        l,
                        "routing on a condition pgfront cannot read",
                        "route with [[listener]] routes, or a listener per backend",
                    );
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
                    p.http_acls.push((l.words.join(" "), l.number));
                } else {
                    self.unmapped(l, "ACLs other than HTTP paths are not converted", "route with [[listener]] routes");
                }
            }
            "stats" => {
                p.stats = true;
                match w(1) {
                    "auth" => match w(2).split_once(':') {
                        Some((u, pw)) => p.stats_users.push((u.to_owned(), pw.to_owned())),
                        None => self.unmapped(l, "stats auth needs user:password", "add a [[web.user]]"),
                    },
                    "refresh" => p.stats_refresh = time(w(2)),
                    "admin" => p.stats_admin = true,
                    "enable" | "uri" | "realm" | "hide-version" | "show-legends" | "show-node" | "show-desc" => {}
                    _ => {}
                }
            }
            "maxconn" => {
                // A proxy's own session limit: pgfront has the global one and per server.
                self.explained(l, "a per-listener session limit; pgfront limits per server and globally");
            }
            "log" | "description" | "id" | "fullconn" | "monitor-uri" | "unique-id-format" | "log-format" => {}
            "errorfile" | "http-request" | "http-response" | "capture" | "compression" | "redirect" => {
                if p.mode.as_deref() != Some("http") {
                    self.unmapped(l, "an HTTP directive in a TCP proxy", "remove it; pgfront proxies PostgreSQL");
                }
            }
            _ => self.unmapped(l, "not understood by the importer", "port it by hand (see conf/pgfront.toml)"),
        }
    }

    fn option(&mut self, p: &mut Proxy, l: &Line) {
        let w = |i| l.word(i).unwrap_or_default();
        match w(1) {
            "httpchk" => {
                // `option httpchk`, `option httpchk OPTIONS /master`, `option httpchk
                // OPTIONS/master` (the tutorials' spelling), `option httpchk /master`.
                let rest = l.rest(2);
                let (method, path) = match rest.split_whitespace().collect::<Vec<_>>().as_slice() {
                    [] => ("OPTIONS".to_owned(), "/".to_owned()),
                    [one] if one.starts_with('/') => ("OPTIONS".to_owned(), (*one).to_owned()),
                    [one] => match one.find('/') {
                        Some(i) => (one[..i].to_owned(), one[i..].to_owned()),
                        None => (one.to_string(), "/".to_owned()),
                    },
                    [m, path, ..] => ((*m).to_owned(), (*path).to_owned()),
                };
                p.check = Some((method, path));
            }
            "pgsql-check" => p.liveness_check = Some("pgsql-check"),
            "tcp-check" => p.liveness_check = Some("tcp-check"),
            "dontlog-normal" => p.dontlog_normal = true,
            // pgfront always redispatches a failed connect, keeps TCP keepalives on, and
            // logs in its own format.
            "redispatch" | "tcpka" | "clitcpka" | "srvtcpka" | "tcplog" | "dontlognull" | "log-health-checks"
            | "splice-auto" | "splice-request" | "splice-response" | "abortonclose" | "httplog"
            | "http-server-close" | "forwardfor" | "httpclose" | "http-keep-alive" => {}
            _ => self.unmapped(l, "an option the importer does not know", "port it by hand if it matters"),
        }
    }

    fn server_params(&mut self, l: &Line, from: usize, mut p: ServerParams) -> ServerParams {
        let words = &l.words;
        let mut i = from;
        while i < words.len() {
            let value = words.get(i + 1).map(String::as_str).unwrap_or_default();
            let takes_value = |n: &mut usize| *n += 1;
            match words[i].as_str() {
                "check" => p.check = true,
                "backup" => {
                    p.backup = true;
                    self.unmapped(
                        l,
                        "backup: pgfront has no backup servers, so this server is left out of the listener",
                        "for reads that fall back to the leader use fallback_to_leader = true; otherwise add it to `servers`",
                    );
                }
                key @ ("port" | "maxconn" | "inter" | "fastinter" | "downinter" | "fall" | "rise"
                | "on-marked-down") => {
                    match key {
                        "port" => p.port = value.parse().ok(),
                        "maxconn" => p.maxconn = value.parse().ok(),
                        "inter" => p.inter = time(value),
                        "fastinter" => p.fastinter = time(value),
                        "downinter" => p.downinter = time(value),
                        "fall" => p.fall = value.parse().ok(),
                        "rise" => p.rise = value.parse().ok(),
                        _ => p.on_marked_down = Some(value.to_owned()),
                    }
                    takes_value(&mut i);
                }
                "weight" if value == "0" => {
                    self.unmapped(
                        l,
                        "weight 0 takes no new sessions",
                        "leave the server out of `servers`, or drain it from the page",
                    );
                    takes_value(&mut i);
                }
                "on-marked-up" | "slowstart" | "weight" | "agent-port" | "agent-inter" | "observe" | "error-limit"
                | "id" | "cookie" | "resolvers" | "init-addr" => {
                    self.explained(l, format!("`{}` has no pgfront equivalent and is ignored", words[i]));
                    takes_value(&mut i);
                }
                "check-ssl" => p.check_ssl = true,
                key @ ("verify" | "ca-file" | "crt" | "verifyhost" | "check-sni") => {
                    let v = Some(value.to_owned());
                    match key {
                        "verify" => p.verify = v,
                        "ca-file" => p.ca_file = v,
                        "crt" => p.crt = v,
                        "verifyhost" => p.verifyhost = v,
                        _ => p.check_sni = v,
                    }
                    takes_value(&mut i);
                }
                "ssl" => self.unmapped(
                    l,
                    "`ssl`: HAProxy speaks TLS to this server; PostgreSQL wants an SSLRequest first",
                    "to encrypt towards PostgreSQL, terminate TLS on the listener (a `tls` table with server = \"verify-full\")",
                ),
                "disabled" => self.unmapped(
                    l,
                    "disabled: the server starts in maintenance in HAProxy",
                    "put it in MAINT from the page after start, or leave it out of `servers`",
                ),
                other => self.unmapped(l, &format!("server parameter `{other}` is not understood"), "port it by hand"),
            }
            i += 1;
        }
        p
    }

    /// A node's `check_tls` table for a server with `check-ssl`, and what the operator should
    /// know about it. HAProxy's `verify required` (its default) checks the chain, and the host
    /// name only with `verifyhost` (or the SNI): pgfront's `ca` and `full`. A `crt` file holds
    /// the certificate and its key together, so it is both `cert` and `key`.
    fn check_tls(p: &ServerParams) -> Option<(String, Option<(NoteKind, String)>)> {
        if !p.check_ssl {
            return None;
        }
        let mut keys = Vec::new();
        let mut note = None;
        let name = p.verifyhost.as_ref().or(p.check_sni.as_ref());
        match p.verify.as_deref() {
            Some("none") => keys.push(("verify", "none".to_owned())),
            _ if name.is_some() => keys.push(("verify", "full".to_owned())),
            _ => {
                keys.push(("verify", "ca".to_owned()));
                note = Some((
                NoteKind::Explained,
                "verify required without verifyhost checks the certificate's chain, not its name: verify = \"ca\" (consider \"full\")".to_owned(),
            ));
            }
        }
        if let Some(ca) = &p.ca_file {
            keys.push(("ca", ca.clone()));
        } else if p.verify.as_deref() != Some("none") {
            note = Some((
                NoteKind::Unmapped,
                "check-ssl with verify required needs ca-file: add `ca` to check_tls".to_owned(),
            ));
        }
        if let Some(crt) = &p.crt {
            keys.push(("cert", crt.clone()));
            keys.push(("key", crt.clone()));
        }
        if let Some(n) = name {
            keys.push(("server_name", n.clone()));
        }
        let body: Vec<String> = keys.iter().map(|(k, v)| format!("{k} = {}", quote(v))).collect();
        Some((format!("{{ {} }}", body.join(", ")), note))
    }

    /// A PostgreSQL listener from a listen (`front` = `back`) or a frontend and its backend.
    fn listener(&mut self, front: &Proxy, back: &Proxy, reads: bool) -> Listener {
        let back =
            &Proxy { servers: back.servers.iter().filter(|s| !s.params.backup).cloned().collect(), ..back.clone() };
        let mut comments = Vec::new();
        if front.mode.as_deref() == Some("http") || back.mode.as_deref() == Some("http") {
            self.note(
                front.line,
                "mode http",
                NoteKind::Unmapped,
                format!("{} is in HTTP mode; pgfront proxies PostgreSQL (TCP)", front.name),
            );
        }
        let bind = match front.binds.first() {
            Some((b, _)) => b.clone(),
            None => {
                self.note(front.line, &front.kind, NoteKind::Unmapped, format!("{} has no bind", front.name));
                "127.0.0.1:0".to_owned()
            }
        };
        for (b, line) in front.binds.iter().skip(1) {
            self.note(
                *line,
                &format!("bind {b}"),
                NoteKind::Unmapped,
                "pgfront binds one address per listener; add another [[listener]]".into(),
            );
        }
        let (method, path) = match (&back.check, back.liveness_check) {
            (Some(c), _) => c.clone(),
            (None, Some(kind)) => {
                self.note(back.line, kind, NoteKind::Explained, format!("{kind} checks that PostgreSQL answers, any role: pgfront asks Patroni's /health, which says the same"));
                comments.push(format!("# HAProxy: {kind} (PostgreSQL answers, any role)"));
                ("OPTIONS".to_owned(), "/health".to_owned())
            }
            (None, None) => {
                self.note(
                    back.line,
                    "check",
                    NoteKind::Explained,
                    format!("{}: no health check in HAProxy; pgfront checks Patroni's /health", back.name),
                );
                ("OPTIONS".to_owned(), "/health".to_owned())
            }
        };
        if !back.servers.iter().any(|s| s.params.check) {
            comments.push("# HAProxy did not check these servers (no `check`); pgfront always does".to_owned());
        }
        let mut servers = back.servers.clone();
        if back.check.is_none() {
            // HAProxy checked PostgreSQL itself (its own port); pgfront asks Patroni.
            for s in servers.iter_mut().filter(|s| s.params.port.is_none()) {
                s.params.port = Some(crate::config::defaults::CHECK_PORT);
            }
            self.note(
                back.line,
                "check port",
                NoteKind::Explained,
                format!(
                    "{}: Patroni's REST API is asked on port {} (check_port)",
                    back.name,
                    crate::config::defaults::CHECK_PORT
                ),
            );
        }
        if reads {
            for (u, line) in &front.use_backends {
                self.note(*line, &format!("use_backend {u}"), NoteKind::Explained, "an HTTP ACL never matches PostgreSQL traffic: this listener serves its default backend; clients ask for the primary with options='-c pgfront.target=primary' (client_target = true)".into());
            }
            for (acl, line) in &front.http_acls {
                self.note(*line, acl, NoteKind::Explained, "HTTP-only ACL (see use_backend)".into());
            }
            comments.push(
                "# HAProxy routed here with an HTTP ACL (use_backend ... if ...), which can never match PostgreSQL\n# traffic. pgfront reads the client's startup instead: options='-c pgfront.target=primary'".to_owned(),
            );
        }
        Listener {
            name: sanitize(&front.name),
            bind,
            balance: back.balance.clone(),
            method,
            path,
            expect: back.expect.unwrap_or(200),
            servers,
            settings: back.clone(),
            client_target: reads,
            comments,
        }
    }

    fn web(&mut self, s: &Proxy, options: Options) -> String {
        let mut out = String::from("[web]\n");
        let bind = s.binds.first().map(|b| b.0.clone()).unwrap_or_else(|| "127.0.0.1:7000".into());
        let _ = writeln!(out, "bind = {}", quote(&bind));
        if let Some(r) = &s.stats_refresh {
            let _ = writeln!(out, "refresh = {}", quote(r));
        }
        if s.stats_users.is_empty() {
            self.note(s.line, "stats", NoteKind::Explained, "HAProxy's page had no credentials; pgfront's needs a user: add a [[web.user]] (the page answers 401 until then; /metrics and /health need none)".into());
            out.push_str("# HAProxy's stats page had no `stats auth`. Add a user, e.g.:\n# [[web.user]]\n# name = \"admin\"\n# password_hash = \"$argon2id$...\"\n# role = \"admin\"\n");
        }
        let role = if s.stats_admin { "admin" } else { "read-only" };
        for (user, password) in &s.stats_users {
            out.push_str("\n[[web.user]]\n");
            let _ = writeln!(out, "name = {}", quote(user));
            match (options.hash_passwords, hash(password)) {
                (true, Some(h)) => {
                    let _ = writeln!(out, "password_hash = {}   # from stats auth, hashed on import", quote(&h));
                }
                _ => {
                    let _ = writeln!(
                        out,
                        "password = {}   # from stats auth; import with --hash-passwords to store a hash",
                        quote(password)
                    );
                }
            }
            let _ = writeln!(out, "role = \"{role}\"{}", if s.stats_admin { "   # stats admin" } else { "" });
        }
        out
    }

    fn render(
        self,
        file: &str,
        maxconn: Option<usize>,
        threads: Option<usize>,
        defaults: &Proxy,
        listeners: &[Listener],
        web: Option<String>,
    ) -> Imported {
        let mut notes = self.notes;
        let mut out = format!(
            "# pgfront configuration imported from {file} by `pgfront import-haproxy`.\n# Check it with `pgfront check --config FILE`; the notes on stderr say what was not carried over.\n\n[global]\n"
        );
        if let Some(m) = maxconn {
            let _ = writeln!(out, "maxconn = {m}   # global maxconn");
        }
        if let Some(t) = threads {
            let _ = writeln!(out, "threads = {t}   # nbthread");
        }
        // Patroni mode asks one GET /primary per node and answers each check with Patroni's
        // rules; a check that is not a Patroni endpoint (or expects another status) needs
        // HAProxy's way.
        let patroni =
            listeners.iter().all(|l| l.expect == 200 && matches!(crate::config::Endpoint::parse(&l.path), Ok(Some(_))));
        if !patroni {
            out.push_str("check_mode = \"http\"   # a check is not a Patroni endpoint expecting 200\n");
        }
        // Nodes: every distinct server address, named after its first server line.
        let mut nodes: Vec<(String, &Server)> = Vec::new();
        for l in listeners {
            for s in &l.servers {
                if !nodes.iter().any(|(_, n)| n.address == s.address) {
                    let mut name = sanitize(&s.name);
                    while nodes.iter().any(|(n, _)| *n == name) {
                        name.push('_');
                    }
                    nodes.push((name, s));
                }
            }
        }
        let name_of = |address: &str| nodes.iter().find(|(_, s)| s.address == address).map(|(n, _)| n.clone());
        let check_port = |s: &Server| s.params.port.or_else(|| s.address.rsplit(':').next()?.parse().ok());
        let ports: Vec<Option<u16>> = nodes.iter().map(|(_, s)| check_port(s)).collect();
        let common_port = ports.first().copied().flatten().filter(|p| ports.iter().all(|q| *q == Some(*p)));
        // Server maxconn, per listener (pgfront sets it per listener, or per node): no
        // maxconn in HAProxy means no per-server limit, so the global one.
        let unlimited = maxconn.unwrap_or(4096);
        let listener_maxconn: Vec<usize> = listeners
            .iter()
            .map(|l| {
                let all: Vec<usize> = l.servers.iter().map(|s| s.params.maxconn.unwrap_or(unlimited)).collect();
                if all.windows(2).any(|w| w[0] != w[1]) {
                    notes.push(Note {
                        line: l.settings.line,
                        directive: "maxconn".into(),
                        kind: NoteKind::Explained,
                        text: format!(
                            "{}: servers differ in maxconn; pgfront sets it per listener (the largest is used)",
                            l.name
                        ),
                    });
                }
                all.into_iter().max().unwrap_or(unlimited)
            })
            .collect();
        let common_maxconn = listener_maxconn.first().copied().filter(|m| listener_maxconn.iter().all(|q| q == m));

        out.push_str("\n[defaults]\n");
        // HAProxy's default is 3 retries (pgfront's, the reference config's, is 2).
        let _ = writeln!(out, "retries = {}", defaults.retries.unwrap_or(3));
        for (k, v) in &defaults.timeouts {
            let _ = writeln!(out, "{k} = {}", quote(v));
        }
        if let Some(m) = common_maxconn {
            let why = if m == unlimited && maxconn.is_some() {
                "no server maxconn in HAProxy: limited by the global one".to_owned()
            } else {
                format!("server ... maxconn {m}")
            };
            let _ = writeln!(out, "maxconn = {m}   # {why}");
        }
        if let Some(p) = common_port {
            let _ = writeln!(out, "check_port = {p}   # check port {p}");
        }
        // Check timing shared by every listener goes here; a listener that differs says so.
        let timing = |l: &Listener| timing_of(l);
        let first = listeners.first().map(timing).unwrap_or_default();
        let shared = listeners.iter().all(|l| timing(l) == first);
        if shared {
            out.push_str(&first);
        }
        if defaults.dontlog_normal {
            out.push_str("log_sessions = \"errors\"   # option dontlog-normal\n");
        }
        for (name, s) in &nodes {
            out.push_str("\n[[node]]\n");
            let _ = writeln!(out, "name = {}", quote(name));
            let _ = writeln!(out, "address = {}", quote(&s.address));
            if common_port.is_none() {
                if let Some(p) = check_port(s) {
                    let host = s.address.rsplit_once(':').map_or(s.address.as_str(), |(h, _)| h);
                    let _ = writeln!(out, "check_address = {}", quote(&format!("{host}:{p}")));
                }
            }
            if let Some((table, note)) = Self::check_tls(&s.params) {
                let _ = writeln!(out, "check_tls = {table}");
                if let Some((kind, text)) = note {
                    notes.push(Note { line: s.line, directive: format!("server {}", s.name), kind, text });
                }
            }
        }
        let all: Vec<String> = nodes.iter().map(|(n, _)| n.clone()).collect();
        for (l, lm) in listeners.iter().zip(&listener_maxconn) {
            out.push_str("\n[[listener]]\n");
            for c in &l.comments {
                let _ = writeln!(out, "{c}");
            }
            let _ = writeln!(out, "name = {}", quote(&l.name));
            let _ = writeln!(out, "bind = {}", quote(&l.bind));
            if let Some(b) = &l.balance {
                let _ = writeln!(out, "balance = {}", quote(b));
            }
            let _ = writeln!(
                out,
                "check = {{ method = {}, path = {}, expect = {} }}",
                quote(&l.method),
                quote(&l.path),
                l.expect
            );
            let mine: Vec<String> = l.servers.iter().filter_map(|s| name_of(&s.address)).collect();
            if mine != all {
                let list: Vec<String> = mine.iter().map(|n| quote(n)).collect();
                let _ = writeln!(out, "servers = [{}]", list.join(", "));
            }
            if l.client_target {
                out.push_str("client_target = true\n");
            }
            if common_maxconn.is_none() {
                let _ = writeln!(out, "maxconn = {lm}");
            }
            if l.settings.retries.unwrap_or(3) != defaults.retries.unwrap_or(3) {
                let _ = writeln!(out, "retries = {}", l.settings.retries.unwrap_or(3));
            }
            for (k, v) in &l.settings.timeouts {
                if defaults.timeouts.get(k) != Some(v) {
                    let _ = writeln!(out, "{k} = {}", quote(v));
                }
            }
            if !shared {
                out.push_str(&timing(l));
            }
            if l.settings.dontlog_normal && !defaults.dontlog_normal {
                out.push_str("log_sessions = \"errors\"   # option dontlog-normal\n");
            }
            let marked: Vec<&Option<String>> = l.servers.iter().map(|s| &s.params.on_marked_down).collect();
            if marked.windows(2).any(|w| w[0] != w[1]) {
                notes.push(Note {
                    line: l.settings.line,
                    directive: "on-marked-down".into(),
                    kind: NoteKind::Explained,
                    text: format!("{}: servers differ in on-marked-down; pgfront sets it per listener (the first server's is used)", l.name),
                });
            }
        }
        if let Some(w) = web {
            out.push('\n');
            out.push_str(&w);
        }
        notes.sort_by_key(|n| n.line);
        Imported { toml: out, notes }
    }
}

/// The check timing keys of a listener, from its first server (HAProxy sets them per server).
fn timing_of(l: &Listener) -> String {
    let mut out = String::new();
    let Some(s) = l.servers.first() else { return out };
    let p = &s.params;
    for (k, v) in [("inter", &p.inter), ("fastinter", &p.fastinter), ("downinter", &p.downinter)] {
        if let Some(v) = v {
            let _ = writeln!(out, "{k} = {}", quote(v));
        }
    }
    if let Some(f) = p.fall {
        let _ = writeln!(out, "fall = {f}");
    }
    if let Some(r) = p.rise {
        let _ = writeln!(out, "rise = {r}");
    }
    // HAProxy leaves sessions open on a server marked down unless told otherwise.
    let marked = p.on_marked_down.as_deref().unwrap_or("none");
    let marked = if marked == "shutdown-sessions" { marked } else { "none" };
    let _ = writeln!(
        out,
        "on_marked_down = \"{marked}\"{}",
        if marked == "none" {
            "   # HAProxy's default; \"shutdown-sessions\" is recommended for a leader listener"
        } else {
            ""
        }
    );
    out
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
