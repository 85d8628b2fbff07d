//! From the sections read to pgfront's TOML: the listeners (with every setting HAProxy
//! applied to them, its defaults included), the nodes, `[defaults]` (what every listener
//! shares) and `[web]`; then the output is validated as `pgfront check` would.

use std::fmt::Write as _;

use super::{hash, quote, sanitize, CheckOption, Converter, Global, Imported, Note, NoteKind, Options, Proxy, Server};
use crate::config::defaults as pgfront;

/// A PostgreSQL listener to write.
#[derive(Debug, Clone)]
pub(super) struct Listener {
    name: String,
    bind: String,
    /// Why `bind` is a stand-in, when the HAProxy one could not be carried over.
    bind_comment: Option<String>,
    balance: Option<String>,
    method: String,
    path: String,
    expect: u16,
    servers: Vec<Server>,
    /// The settings HAProxy applied to this listener, as pgfront keys (key, TOML value,
    /// comment). Those every listener shares are written once, in `[defaults]`.
    keys: Vec<(&'static str, String, String)>,
    /// Clients may ask for the primary (`pgfront.target`): the line of the `use_backend` whose
    /// HTTP ACL never routed to it in HAProxy.
    client_target: Option<usize>,
    comments: Vec<String>,
}

/// HAProxy's check timing of one server, as pgfront keys.
fn timing(s: &Server) -> Vec<(&'static str, String, String)> {
    let p = &s.params;
    let mut out = Vec::new();
    for (k, v) in [("inter", &p.inter), ("fastinter", &p.fastinter), ("downinter", &p.downinter)] {
        if let Some(v) = v {
            out.push((k, quote(v), String::new()));
        }
    }
    if let Some(f) = p.fall {
        out.push(("fall", f.to_string(), String::new()));
    }
    if let Some(r) = p.rise {
        out.push(("rise", r.to_string(), String::new()));
    }
    // HAProxy leaves sessions open on a server marked down unless told otherwise.
    let marked = p.on_marked_down.as_deref().unwrap_or("none");
    let marked = if marked == "shutdown-sessions" { marked } else { "none" };
    let why = if marked == "none" {
        "HAProxy's default; \"shutdown-sessions\" is recommended for a leader listener"
    } else {
        ""
    };
    out.push(("on_marked_down", quote(marked), why.to_owned()));
    out
}

impl Converter {
    /// A PostgreSQL listener from a listen (`front` = `back`) or a frontend and its backend.
    /// None (with a note) when the directive that decides which role the port serves cannot
    /// be carried over: the listener would admit every role, so it is not written.
    pub(super) fn listener(&mut self, front: &Proxy, back: &Proxy, reads: bool, global: &Global) -> Option<Listener> {
        let name = sanitize(&front.name);
        let mut servers: Vec<Server> = Vec::new();
        for s in back.servers.iter().filter(|s| !s.params.backup) {
            if servers.iter().any(|o| o.address == s.address) {
                self.note(
                    s.line,
                    &format!("server {}", s.name),
                    NoteKind::Unmapped,
                    format!("a second server at {}: HAProxy balances over both lines as two servers; pgfront has one node per address, so this line is left out", s.address),
                );
                continue;
            }
            let mut s = s.clone();
            // A server without `verify` takes global's ssl-server-verify.
            if s.params.verify.is_none() {
                s.params.verify.clone_from(&self.ssl_server_verify);
            }
            servers.push(s);
        }
        self.order_by_id(back, &mut servers);
        self.weights(back, &servers);
        let mut comments = Vec::new();
        if front.mode.as_deref() == Some("http") || back.mode.as_deref() == Some("http") {
            self.note(
                front.line,
                "mode http",
                NoteKind::Unmapped,
                format!("{} is in HTTP mode; pgfront proxies PostgreSQL (TCP)", front.name),
            );
        }
        let (bind, bind_comment) = match front.binds.first() {
            Some(b) => match self.bind_address(b) {
                Some(a) => (a, None),
                None => (
                    "127.0.0.1:0".to_owned(),
                    Some(format!("HAProxy: bind {} (not carried over: see the notes)", super::excerpt(&b.address))),
                ),
            },
            None => {
                self.note(front.line, &front.kind, NoteKind::Unmapped, format!("{} has no bind", front.name));
                ("127.0.0.1:0".to_owned(), Some("HAProxy: no bind".to_owned()))
            }
        };
        for b in front.binds.iter().skip(1) {
            self.note(
                b.line,
                &format!("bind {}", b.address),
                NoteKind::Unmapped,
                "pgfront binds one address per listener; add another [[listener]]".into(),
            );
        }
        let (method, path) = self.check(back, &mut comments);
        if !self.role_carried(front, back, &servers, &path) {
            return None;
        }
        // HAProxy never checks a server without `check`: it is always up. pgfront checks
        // every node, so such a server takes sessions only while its check passes.
        let unchecked: Vec<&Server> = servers.iter().filter(|s| !s.params.check).collect();
        let always_up = "HAProxy never checks it (no `check`) and always sends it sessions; pgfront checks every node and sends sessions only while the check passes";
        if !unchecked.is_empty() && unchecked.len() == servers.len() {
            comments.push("# HAProxy did not check these servers (no `check`); pgfront always does".to_owned());
            self.note(
                back.line,
                "check",
                NoteKind::Unmapped,
                format!("{}: no server has `check`: {always_up}", back.name),
            );
        } else {
            for s in unchecked {
                self.note(
                    s.line,
                    &format!("server {}", s.name),
                    NoteKind::Unmapped,
                    format!("{}: {always_up}", s.name),
                );
            }
        }
        if back.check != CheckOption::Http {
            // HAProxy checked PostgreSQL (or another protocol) on the port it connected to,
            // which is never Patroni's: pgfront asks Patroni's REST API on its default port.
            // Only tcp-check rules that send an HTTP request (written as the check) connected
            // to the REST API: where they said, else the server's check port.
            let http_rules =
                back.check == CheckOption::TcpCheck && back.tcp.line.is_some() && back.tcp.request.is_some();
            if http_rules {
                let port = back.tcp.port.unwrap_or(pgfront::CHECK_PORT);
                for s in servers.iter_mut() {
                    if back.tcp.port.is_some() || s.params.port.is_none() {
                        s.params.port = Some(port);
                    }
                }
                self.note(
                    back.line,
                    "check port",
                    NoteKind::Explained,
                    format!("{}: Patroni's REST API is asked where the tcp-check rules sent their request (check_port {port} unless a server says otherwise)", back.name),
                );
            } else {
                let port = pgfront::CHECK_PORT;
                let mut theirs: Vec<u16> = servers
                    .iter()
                    .filter_map(|s| s.params.port)
                    .chain(back.tcp.port.filter(|_| back.check == CheckOption::TcpCheck))
                    .filter(|p| *p != port)
                    .collect();
                theirs.sort_unstable();
                theirs.dedup();
                for s in servers.iter_mut() {
                    s.params.port = Some(port);
                }
                let was = if theirs.is_empty() {
                    String::new()
                } else {
                    let list: Vec<String> = theirs.iter().map(u16::to_string).collect();
                    format!(" (HAProxy's check connected to port {}, which is not the REST API's)", list.join(", "))
                };
                self.note(
                    back.line,
                    "check port",
                    NoteKind::Explained,
                    format!("{}: Patroni's REST API is asked on port {port}, Patroni's default{was}; set check_port if restapi.listen says otherwise", back.name),
                );
            }
        }
        // What the client_target note says depends on check_mode, known once every listener
        // is read (see `render`).
        let mut target_line = None;
        if reads {
            for (u, line) in &front.use_backends {
                target_line.get_or_insert(*line);
                self.note(*line, &format!("use_backend {u}"), NoteKind::Explained, "an HTTP ACL never matches PostgreSQL traffic: HAProxy never routes by this rule, and this listener serves its default backend as HAProxy did".into());
            }
            for (acl, line) in &front.http_acls {
                self.note(*line, acl, NoteKind::Explained, "HTTP-only ACL (see use_backend)".into());
            }
        }
        self.redispatch(back, &servers, &path);
        let keys = self.keys(&name, front, back, &servers, global);
        Some(Listener {
            name,
            bind,
            bind_comment,
            balance: back.balance.clone(),
            method,
            path,
            expect: if back.check == CheckOption::Http { back.http.expect.unwrap_or(200) } else { 200 },
            servers,
            keys,
            client_target: target_line,
            comments,
        })
    }

    /// HAProxy's `balance first` takes servers from the lowest `id` up; a server without one
    /// gets the lowest id no server has, in the order written. pgfront's `first` takes them in
    /// the order of the listener's `servers`: written by id. Under another balance an id only
    /// names the server in HAProxy's stats.
    fn order_by_id(&mut self, back: &Proxy, servers: &mut [Server]) {
        let Some(first) = back.servers.iter().find(|s| s.params.id.is_some()) else { return };
        if back.balance.as_deref() != Some("first") {
            self.note(
                first.line,
                &format!("server {}", first.name),
                NoteKind::Explained,
                format!("{}: server id only names servers in HAProxy's stats under this balance; pgfront names nodes by name", back.name),
            );
            return;
        }
        let mut used: std::collections::HashSet<u32> = back.servers.iter().filter_map(|s| s.params.id).collect();
        let mut ids: std::collections::HashMap<usize, u32> = std::collections::HashMap::new();
        let mut next = 1;
        for s in &back.servers {
            let id = match s.params.id {
                Some(id) => id,
                None => {
                    while used.contains(&next) {
                        next += 1;
                    }
                    used.insert(next);
                    next
                }
            };
            ids.insert(s.line, id);
        }
        let before: Vec<String> = servers.iter().map(|s| s.name.clone()).collect();
        servers.sort_by_key(|s| ids.get(&s.line).copied().unwrap_or(u32::MAX));
        let after: Vec<String> = servers.iter().map(|s| s.name.clone()).collect();
        let text = if before == after {
            format!(
                "{}: balance first takes the lowest server id first; the servers are already in that order",
                back.name
            )
        } else {
            format!("{}: balance first takes the lowest server id first: pgfront's first takes the listener's `servers` in order, written by id ({})", back.name, after.join(", "))
        };
        self.note(first.line, &format!("server {}", first.name), NoteKind::Explained, text);
    }

    /// pgfront spreads sessions evenly over a listener's servers: equal weights say the
    /// same; unequal ones (HAProxy's default is 1) are a change of meaning, except under
    /// `balance first`, which ignores weights.
    fn weights(&mut self, back: &Proxy, servers: &[Server]) {
        let Some(line) = servers.iter().find_map(|s| s.params.weight.map(|(_, l)| l)) else { return };
        let weights: Vec<u32> = servers.iter().map(|s| s.params.weight.map_or(1, |(w, _)| w)).collect();
        let (kind, text) = if back.balance.as_deref() == Some("first") {
            (NoteKind::Explained, "balance first ignores server weights (HAProxy's manual), as pgfront's does")
        } else if weights.windows(2).all(|w| w[0] == w[1]) {
            (NoteKind::Explained, "the servers' weights are equal: pgfront spreads sessions evenly, the same")
        } else {
            (NoteKind::Unmapped, "the servers' weights differ (HAProxy's default is 1): pgfront has no weights and spreads sessions evenly; give a heavier server a larger share by hand (e.g. leave lighter ones out of this listener's `servers`)")
        };
        self.note(line, "weight", kind, format!("{}: {text}", back.name));
    }

    /// pgfront retries a failed connect on another server of the listener at every retry
    /// (HAProxy's `option redispatch 1`). HAProxy without redispatch retries the same server,
    /// and by default redispatches only on the last retry. On a leader port one server at a
    /// time passes the check, so there is no other server to go to; on another port a session
    /// HAProxy would fail (or retry on the same server) reaches another server of the same
    /// role: explained, since what the port serves does not change.
    fn redispatch(&mut self, back: &Proxy, servers: &[Server], path: &str) {
        let leader = matches!(crate::config::Endpoint::parse(path), Ok(Some(e)) if e.is_leader());
        if leader || servers.len() < 2 || back.retries == Some(0) {
            return;
        }
        let haproxy = match back.redispatch {
            None | Some(0) => "retries a failed connect on the same server (no option redispatch)".to_owned(),
            Some(-1) => "redispatches a failed connect to another server on the last retry only".to_owned(),
            Some(1) => return,
            Some(n) if n > 0 => format!("redispatches a failed connect to another server every {n}th retry"),
            Some(n) => format!("redispatches a failed connect to another server on the {}th retry before the last", -n),
        };
        self.note(
            back.line,
            "option redispatch",
            NoteKind::Explained,
            format!("{}: HAProxy {haproxy}; pgfront retries on another server of the listener at every retry, so a session whose server refuses it reaches another server of the same role", back.name),
        );
    }

    /// Whether what decides the role of the port is carried over. An `http-check expect`
    /// pgfront cannot read decides what passes, whatever the path; an agent (`agent-check`)
    /// can only take servers out (down, drain, maint), so it decides the role only when the
    /// check itself admits any role. Either way the listener is left out with a note: a port
    /// that served one role must not serve every role.
    fn role_carried(&mut self, front: &Proxy, back: &Proxy, servers: &[Server], path: &str) -> bool {
        let omitted = "the listener is not written (it would serve ANY role)";
        if back.check == CheckOption::Http {
            if let Some((line, directive)) = &back.http.unread_expect {
                self.note(
                    *line,
                    directive,
                    NoteKind::Unmapped,
                    format!("{}: pgfront's check passes on one HTTP status (200 by default); this expect (a string, a regular expression, a status list) decides which nodes pass, so which role the port serves, and cannot be carried over: {omitted}; add it by hand with the Patroni endpoint of its role (check = {{ path = \"/primary\" }}, \"/replica\", ...)", front.name),
                );
                return false;
            }
        }
        let Some(agent) = servers.iter().find(|s| s.params.agent) else { return true };
        let role = matches!(
            crate::config::Endpoint::parse(path),
            Ok(Some(e)) if !matches!(e, crate::config::Endpoint::Health | crate::config::Endpoint::Liveness | crate::config::Endpoint::Readiness)
        );
        if role {
            self.note(
                agent.line,
                &format!("server {}", agent.name),
                NoteKind::Unmapped,
                format!("{}: agent-check is not carried over: its agent could mark servers down, drain or maint them or change their weight; pgfront's check ({path}) alone decides", front.name),
            );
            true
        } else {
            self.note(
                agent.line,
                &format!("server {}", agent.name),
                NoteKind::Unmapped,
                format!("{}: agent-check: the agent could take servers out (down, drain, maint) while the check admits any role ({path}), so the agent decided which role the port serves; pgfront has no agent check: {omitted}; add it by hand with the Patroni endpoint of that role (check = {{ path = \"/primary\" }}, \"/replica\", ...)", front.name),
            );
            false
        }
    }

    /// The check pgfront runs for HAProxy's (method, path), with what was noted about it.
    fn check(&mut self, back: &Proxy, comments: &mut Vec<String>) -> (String, String) {
        let health = ("OPTIONS".to_owned(), "/health".to_owned());
        let liveness = |cx: &mut Self, comments: &mut Vec<String>, kind: &str| {
            cx.note(back.line, kind, NoteKind::Explained, format!("{kind} checks that PostgreSQL answers, any role: pgfront asks Patroni's /health, which says the same"));
            comments.push(format!("# HAProxy: {kind} (PostgreSQL answers, any role)"));
        };
        match &back.check {
            CheckOption::Http => {
                let h = &back.http;
                if !h.send {
                    self.note(
                        h.line,
                        "http-check",
                        NoteKind::Unmapped,
                        format!("{}: this section's http-check rules start a rule set without a request (HAProxy does not take the one of `option httpchk` in defaults into it): HAProxy sends none; OPTIONS / is written", back.name),
                    );
                }
                let method = h.method.clone().unwrap_or_else(|| "OPTIONS".to_owned());
                (method, h.path.clone().unwrap_or_else(|| "/".to_owned()))
            }
            CheckOption::TcpCheck => match (back.tcp.line, &back.tcp.request) {
                (None, _) => {
                    liveness(self, comments, "tcp-check");
                    health
                }
                // A script pgfront cannot run: what it sends and what it expects (a string
                // anywhere in the answer, an HTTP version) are not a Patroni check; the
                // request it sends is the nearest one.
                (Some(line), Some((method, path))) => {
                    self.note(
                        line,
                        "tcp-check",
                        NoteKind::Unmapped,
                        format!("{}: tcp-check rules (a connect/send/expect script) are not converted: their request, {method} {path}, is written as an HTTP check expecting status 200; check it asks what the rules expected", back.name),
                    );
                    comments.push(format!(
                        "# HAProxy: tcp-check rules sending {method} {path} (not converted: see the notes)"
                    ));
                    (method.clone(), path.clone())
                }
                (Some(line), None) => {
                    self.note(
                        line,
                        "tcp-check",
                        NoteKind::Unmapped,
                        format!("{}: tcp-check rules (a connect/send/expect script) are not converted: Patroni's /health (any role) is written, which passes on every running node; this port would now serve ANY role: set check.path to the endpoint the rules asked (e.g. \"/primary\")", back.name),
                    );
                    comments.push("# HAProxy: tcp-check rules (not converted: see the notes)".to_owned());
                    health
                }
            },
            CheckOption::Pgsql => {
                liveness(self, comments, "pgsql-check");
                health
            }
            CheckOption::Other(kind, line) => {
                self.note(
                    *line,
                    &format!("option {kind}"),
                    NoteKind::Unmapped,
                    format!(
                        "{}: option {kind} checks another protocol; pgfront asks Patroni's /health (any role) instead",
                        back.name
                    ),
                );
                health
            }
            CheckOption::Connect => {
                self.note(
                    back.line,
                    "check",
                    NoteKind::Explained,
                    format!("{}: no health check in HAProxy; pgfront checks Patroni's /health", back.name),
                );
                health
            }
        }
    }

    /// The settings HAProxy applies to a listener, as pgfront keys: the client side (timeout
    /// client) from the frontend, the rest from the backend; where HAProxy's default differs
    /// from pgfront's, HAProxy's is written (or noted when pgfront has none).
    fn keys(
        &mut self,
        name: &str,
        front: &Proxy,
        back: &Proxy,
        servers: &[Server],
        global: &Global,
    ) -> Vec<(&'static str, String, String)> {
        let mut keys: Vec<(&'static str, String, String)> = Vec::new();
        // HAProxy's default is 3 retries (pgfront's, the reference config's, is 2).
        keys.push(("retries", back.retries.unwrap_or(3).to_string(), String::new()));
        let mut t = back.timeouts.clone();
        match front.timeouts.get("timeout_client") {
            Some(v) => t.insert("timeout_client", v.clone()),
            None => t.remove("timeout_client"),
        };
        // In TCP mode HAProxy uses timeout tunnel instead of client and server once the
        // session is connected (it is a backend setting).
        if let Some((tunnel, line)) = &back.tunnel {
            self.note(
                *line,
                "timeout tunnel",
                NoteKind::Explained,
                format!("{name}: in TCP mode HAProxy uses timeout tunnel instead of timeout client and timeout server once a session is connected: both are {tunnel}"),
            );
            t.insert("timeout_client", tunnel.clone());
            t.insert("timeout_server", tunnel.clone());
        }
        for (key, default) in [
            ("timeout_connect", pgfront::TIMEOUT_CONNECT),
            ("timeout_client", pgfront::TIMEOUT_CLIENT),
            ("timeout_server", pgfront::TIMEOUT_SERVER),
        ] {
            if !t.contains_key(key) {
                self.missing.entry(key).or_insert_with(|| (back.line, default, Vec::new())).2.push(name.to_owned());
            }
        }
        // The check timing is set per server in HAProxy, per listener in pgfront.
        let checked: Vec<&Server> = servers.iter().filter(|s| s.params.check).collect();
        let basis = if checked.is_empty() { servers.iter().collect() } else { checked };
        let timing_keys = basis.first().map(|s| timing(s)).unwrap_or_default();
        if let Some(other) = basis.iter().find(|s| timing(s) != timing_keys) {
            self.note(
                other.line,
                &format!("server {}", other.name),
                NoteKind::Unmapped,
                format!("{name}: servers differ in check timing (inter, fastinter, downinter, fall, rise, on-marked-down); pgfront sets it per listener: the first server's is used"),
            );
        }
        for (k, v) in &t {
            keys.push((k, quote(v), String::new()));
        }
        if !t.contains_key("timeout_queue") {
            // No timeout queue: HAProxy uses timeout connect (pgfront: 30 s on a leader listener).
            if let Some(c) = t.get("timeout_connect").cloned() {
                keys.push(("timeout_queue", quote(&c), "HAProxy: no timeout queue is timeout connect".to_owned()));
            }
        }
        if !t.contains_key("timeout_check") {
            // No timeout check: HAProxy uses inter (pgfront: 5 s).
            let inter = basis.first().and_then(|s| s.params.inter.clone()).unwrap_or_else(|| "2s".to_owned());
            keys.push(("timeout_check", quote(&inter), "HAProxy: no timeout check is inter".to_owned()));
        }
        // Server maxconn (pgfront sets it per listener): no maxconn in HAProxy (or 0) means no
        // per-server limit, so the global one.
        let unlimited = global.maxconn.unwrap_or(pgfront::GLOBAL_MAXCONN);
        // A server maxconn above the global one is never reached: the global one limits first.
        if let Some(s) = servers.iter().find(|s| s.params.maxconn.is_some_and(|m| m > unlimited)) {
            self.note(
                s.line,
                &format!("server {}", s.name),
                NoteKind::Explained,
                format!("{name}: server maxconn {} is above the global maxconn ({unlimited}), which limits first: {unlimited} is written", s.params.maxconn.unwrap_or_default()),
            );
        }
        let all: Vec<usize> = servers.iter().map(|s| s.params.maxconn.unwrap_or(unlimited).min(unlimited)).collect();
        if all.windows(2).any(|w| w[0] != w[1]) {
            self.note(
                back.line,
                "maxconn",
                NoteKind::Unmapped,
                format!("{name}: servers differ in maxconn; pgfront sets it per listener: the largest is used"),
            );
        }
        let m = all.iter().copied().max().unwrap_or(unlimited);
        let why = if servers.iter().any(|s| s.params.maxconn.is_some()) {
            format!("server ... maxconn {m}")
        } else {
            "no server maxconn in HAProxy: limited by the global one".to_owned()
        };
        keys.push(("maxconn", m.to_string(), why));
        keys.extend(timing_keys);
        // A frontend option (HAProxy ignores it in a backend): the frontend's, or the listen's.
        if front.dontlog_normal {
            keys.push(("log_sessions", quote("errors"), "option dontlog-normal".to_owned()));
        }
        keys
    }

    pub(super) fn web(&mut self, s: &Proxy, options: Options) -> String {
        let mut out = String::from("[web]\n");
        let bind = match s.binds.first() {
            Some(b) => self.bind_address(b).unwrap_or_else(|| "127.0.0.1:7000".into()),
            None => "127.0.0.1:7000".into(),
        };
        let _ = writeln!(out, "bind = {}", quote(&bind));
        if let Some(r) = &s.stats_refresh {
            let _ = writeln!(out, "refresh = {}", quote(r));
        }
        // HAProxy's page is at its `stats uri` (default /haproxy?stats, its CSV at URI;csv);
        // pgfront's at / and /stats (CSV at /;csv).
        let (uri, line) = s.stats_uri.clone().unwrap_or_else(|| ("/haproxy?stats".to_owned(), s.line));
        if !matches!(uri.as_str(), "/" | "/stats") {
            self.note(
                line,
                "stats uri",
                NoteKind::Unmapped,
                format!("HAProxy served the page at {} (CSV at {};csv); pgfront serves it at / and /stats, the CSV at /;csv: links, bookmarks and scripts that read the CSV must change", super::excerpt(&uri), super::excerpt(&uri)),
            );
        }
        // Request rules decided who reached the page; pgfront's answers any address that
        // reaches [web] bind (users and roles still apply).
        for (line, rule) in &s.http_requests {
            let admin = if s.stats_admin && !s.stats_users.is_empty() {
                " The admin page (stats admin) is now reachable from any address that reaches the web bind."
            } else {
                ""
            };
            self.note(
                *line,
                rule,
                NoteKind::Unmapped,
                format!("a request rule of the stats page (who may reach it, e.g. `deny unless {{ src ... }}`) is not carried over: pgfront's page answers every address that reaches [web] bind.{admin} Bind [web] to an address only the allowed networks reach, or filter with a firewall"),
            );
        }
        if s.stats_users.is_empty() {
            self.note(s.line, "stats", NoteKind::Explained, "HAProxy's page had no credentials; pgfront's needs a user: add a [[web.user]] (the page answers 401 until then; /metrics and /health need none)".into());
            out.push_str("# HAProxy's stats page had no `stats auth`. Add a user, e.g.:\n# [[web.user]]\n# name = \"admin\"\n# password_hash = \"$argon2id$...\"\n# role = \"admin\"\n");
        }
        let role = if s.stats_admin { "admin" } else { "read-only" };
        let mut written: Vec<&str> = Vec::new();
        for (user, password) in &s.stats_users {
            if written.contains(&user.as_str()) {
                self.note(
                    s.line,
                    &format!("stats auth {user}:..."),
                    NoteKind::Unmapped,
                    format!("a second password for {user}: HAProxy accepts either; pgfront has one per user, the first is kept"),
                );
                continue;
            }
            written.push(user);
            out.push_str("\n[[web.user]]\n");
            let _ = writeln!(out, "name = {}", quote(user));
            match options.hash_passwords.then(|| hash(password)).flatten() {
                Some(h) => {
                    let _ = writeln!(out, "password_hash = {}   # from stats auth, hashed on import", quote(&h));
                }
                None => {
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

    pub(super) fn render(
        mut self,
        file: &str,
        global: &Global,
        listeners: &[Listener],
        web: Option<String>,
    ) -> Imported {
        // One note per timeout HAProxy leaves unlimited, naming the listeners (a file of
        // 20 000 listens without timeouts is 3 notes, not 60 000).
        for (key, (line, default, names)) in std::mem::take(&mut self.missing) {
            let what = key.replace('_', " ");
            let mut list = names.iter().take(5).cloned().collect::<Vec<_>>().join(", ");
            if names.len() > 5 {
                let _ = write!(list, " and {} more", names.len() - 5);
            }
            self.note(
                line,
                &what,
                NoteKind::Unmapped,
                format!(
                    "no {what} in HAProxy for {list}: HAProxy then waits without limit; pgfront has no unlimited timeout: its default ({}) applies",
                    humantime::format_duration(default)
                ),
            );
        }
        if global.maxconn.is_none() {
            // HAProxy fits an unset maxconn to the descriptor limit; pgfront fits its default
            // (4096) to it likewise, after raising the soft limit to the hard one as HAProxy
            // does: the same ceiling up to 4096 sessions, pgfront's fixed above it.
            self.note(
                global.line,
                "global maxconn",
                NoteKind::Explained,
                format!("no global maxconn: HAProxy derives it from the descriptor limit (about half of `ulimit -n`); pgfront's default, {}, is held to what the limit holds likewise, so past {} sessions at once clients wait in the listen backlog: to allow more, set [global] maxconn (and LimitNOFILE >= 2 x maxconn + 100)", pgfront::GLOBAL_MAXCONN, pgfront::GLOBAL_MAXCONN),
            );
        }
        let mut notes = self.notes;
        let mut out = format!(
            "# pgfront configuration imported from {file} by `pgfront import-haproxy`.\n# Check it with `pgfront check --config FILE`; the notes on stderr say what was not carried over.\n\n[global]\n"
        );
        if let Some(m) = global.maxconn {
            let _ = writeln!(out, "maxconn = {m}   # global maxconn");
        }
        if let Some(t) = global.threads {
            let _ = writeln!(out, "threads = {t}   # nbthread");
        }
        if let Some(h) = &global.hard_stop_after {
            let _ = writeln!(out, "hard_stop_after = {}   # hard-stop-after", quote(h));
        }
        // Patroni mode asks one GET /primary per node and answers each check with Patroni's
        // rules; a check that is not a Patroni endpoint (or expects another status) needs
        // HAProxy's way.
        let patroni =
            listeners.iter().all(|l| l.expect == 200 && matches!(crate::config::Endpoint::parse(&l.path), Ok(Some(_))));
        if !patroni {
            out.push_str("check_mode = \"http\"   # a check is not a Patroni endpoint expecting 200\n");
        }
        // Where Patroni answers for each node: the node's check port, else [defaults]'.
        let common_port = {
            let mut scratch = Vec::new();
            let ports: Vec<u16> = nodes(listeners, &mut scratch).iter().filter_map(|n| n.port).collect();
            ports.first().copied().filter(|p| ports.iter().all(|q| q == p))
        };
        let default_port = common_port.unwrap_or(pgfront::CHECK_PORT);
        let clusters = clusters(listeners, default_port, &mut notes);

        // [defaults]: the keys every listener has with the same value.
        let common: Vec<(&str, &str)> = listeners
            .first()
            .map(|first| {
                first
                    .keys
                    .iter()
                    .filter(|(k, v, _)| listeners.iter().all(|l| l.keys.iter().any(|(k2, v2, _)| k2 == k && v2 == v)))
                    .map(|(k, v, _)| (*k, v.as_str()))
                    .collect()
            })
            .unwrap_or_default();
        let shared = |key: &str, value: &str| common.contains(&(key, value));
        out.push_str("\n[defaults]\n");
        if let Some(first) = listeners.first() {
            for (k, v, why) in first.keys.iter().filter(|(k, v, _)| shared(k, v)) {
                let _ = writeln!(out, "{k} = {v}{}", comment(why));
            }
        }
        if let Some(p) = common_port {
            let _ = writeln!(out, "check_port = {p}   # Patroni's REST API (HAProxy: check port, or see the notes)");
        }
        for (cluster, listeners) in &clusters {
            let (node_table, listener_table) = match cluster {
                None => ("[[node]]", "[[listener]]"),
                Some(name) => {
                    let _ = writeln!(out, "\n[[cluster]]\nname = {}", quote(name));
                    ("[[cluster.node]]", "[[cluster.listener]]")
                }
            };
            let nodes = nodes(listeners, &mut notes);
            for n in &nodes {
                let _ = writeln!(out, "\n{node_table}");
                let _ = writeln!(out, "name = {}", quote(&n.name));
                let _ = writeln!(out, "address = {}", quote(&n.address));
                if let (None, Some(p)) = (common_port, n.port) {
                    let host = n.address.rsplit_once(':').map_or(n.address.as_str(), |(h, _)| h);
                    let _ = writeln!(out, "check_address = {}", quote(&format!("{host}:{p}")));
                }
                if let Some(t) = &n.tls {
                    let _ = writeln!(out, "check_tls = {t}");
                }
            }
            let all: Vec<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
            let by_address: std::collections::HashMap<&str, &str> =
                nodes.iter().map(|n| (n.address.as_str(), n.name.as_str())).collect();
            let name_of = |address: &str| by_address.get(address).copied();
            for l in listeners {
                let _ = writeln!(out, "\n{listener_table}");
                for c in &l.comments {
                    let _ = writeln!(out, "{c}");
                }
                let _ = writeln!(out, "name = {}", quote(&l.name));
                let _ = writeln!(
                    out,
                    "bind = {}{}",
                    quote(&l.bind),
                    comment(l.bind_comment.as_deref().unwrap_or_default())
                );
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
                let mine: Vec<&str> = l.servers.iter().filter_map(|s| name_of(&s.address)).collect();
                if mine.len() != all.len() || mine != all {
                    let list: Vec<String> = mine.iter().map(|n| quote(n)).collect();
                    let _ = writeln!(out, "servers = [{}]", list.join(", "));
                }
                if let Some(line) = l.client_target {
                    if patroni {
                        out.push_str("# HAProxy routed here with an HTTP ACL (use_backend ... if ...), which can never match PostgreSQL\n# traffic. pgfront reads the client's startup instead: options='-c pgfront.target=primary'\n");
                        out.push_str("client_target = true\n");
                        notes.push(Note { line, directive: "use_backend".into(), kind: NoteKind::Explained, text: format!("{}: clients may now ask for the primary with options='-c pgfront.target=primary' (client_target = true), which the HTTP ACL meant and never did", l.name) });
                    } else {
                        notes.push(Note { line, directive: "use_backend".into(), kind: NoteKind::Explained, text: format!("{}: client_target (clients asking for the primary with pgfront.target) needs check_mode = \"patroni\", and a check here is not a Patroni endpoint: left out, as HAProxy never routed these sessions to that backend either", l.name) });
                    }
                }
                for (k, v, why) in l.keys.iter().filter(|(k, v, _)| !shared(k, v)) {
                    let _ = writeln!(out, "{k} = {v}{}", comment(why));
                }
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

fn comment(why: &str) -> String {
    if why.is_empty() {
        String::new()
    } else {
        format!("   # {}", why.replace('\n', " "))
    }
}

/// Where HAProxy checks a server: its `port`, else (with `check`) its own port; None when
/// HAProxy says nothing (the node then has `[defaults]`' check_port).
fn port_of(s: &Server) -> Option<u16> {
    s.params.port.or_else(|| s.params.check.then(|| s.address.rsplit(':').next()?.parse().ok()).flatten())
}

/// The host part of a `host:port` address.
fn host_of(address: &str) -> &str {
    address.rsplit_once(':').map_or(address, |(h, _)| h)
}

/// The clusters to write, each with its listeners: one unnamed cluster (top-level `[[node]]`
/// and `[[listener]]`), unless servers at two PostgreSQL addresses are checked at one REST
/// API (a host's pgbouncer port and its PostgreSQL port, both `check port 8008`). In pgfront
/// a node is one PostgreSQL address with its Patroni REST API: two nodes of one cluster that
/// share a REST API both claim leadership, and writes are held. HAProxy checks each server
/// on its own, so the faithful form is one `[[cluster]]` per PostgreSQL port set, each with
/// its nodes at those ports (the same REST APIs) and the listeners that use them. A server
/// whose REST API is still shared within its cluster (one listen with both ports) is left out.
fn clusters(listeners: &[Listener], default_port: u16, notes: &mut Vec<Note>) -> Vec<(Option<String>, Vec<Listener>)> {
    let rest = |s: &Server| format!("{}:{}", host_of(&s.address), port_of(s).unwrap_or(default_port));
    let mut seen: std::collections::HashMap<String, &Server> = std::collections::HashMap::new();
    let mut shared: Option<(&Server, &Server, String)> = None;
    for s in listeners.iter().flat_map(|l| &l.servers) {
        let r = rest(s);
        match seen.get(&r) {
            Some(o) if o.address != s.address => {
                shared.get_or_insert((*o, s, r));
            }
            Some(_) => {}
            None => {
                seen.insert(r, s);
            }
        }
    }
    let Some((a, b, api)) = shared else {
        return vec![(None, listeners.to_vec())];
    };
    let ports = |l: &Listener| {
        l.servers
            .iter()
            .filter_map(|s| s.address.rsplit_once(':')?.1.parse::<u16>().ok())
            .collect::<std::collections::BTreeSet<u16>>()
    };
    let mut groups: Vec<(std::collections::BTreeSet<u16>, Vec<Listener>)> = Vec::new();
    for l in listeners {
        let key = ports(l);
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, g)) => g.push(l.clone()),
            None => groups.push((key, vec![l.clone()])),
        }
    }
    let named = |key: &std::collections::BTreeSet<u16>| {
        let list: Vec<String> = key.iter().map(u16::to_string).collect();
        format!("port-{}", list.join("-"))
    };
    let list: Vec<String> = groups
        .iter()
        .map(|(k, g)| {
            let names: Vec<&str> = g.iter().map(|l| l.name.as_str()).collect();
            format!("{} ({})", named(k), names.join(", "))
        })
        .collect();
    let split = groups.len() > 1;
    if split {
        notes.push(Note {
        line: b.line,
        directive: format!("server {}", super::excerpt(&b.name)),
        kind: NoteKind::Explained,
        text: super::bounded(&format!(
            "{} ({}) and {} ({}) are two PostgreSQL ports checked at one Patroni REST API ({api}); a pgfront node is one PostgreSQL address with its own REST API, and two nodes of one cluster sharing one would both claim leadership (writes held). The listeners are written as one [[cluster]] per PostgreSQL port set, each checking the same REST APIs: {} (the page and metrics name the cluster)",
            a.name,
            a.address,
            b.name,
            b.address,
            list.join(", ")
        )),
    });
    }
    let mut out = Vec::new();
    for (key, group) in groups {
        let mut apis: std::collections::HashMap<String, String> = std::collections::HashMap::new();
        let mut kept = Vec::new();
        for mut l in group {
            let line = l.servers.first().map_or(0, |s| s.line);
            l.servers.retain(|s| {
                let r = rest(s);
                match apis.get(&r) {
                    Some(o) if *o != s.address => {
                        notes.push(Note {
                            line: s.line,
                            directive: format!("server {}", super::excerpt(&s.name)),
                            kind: NoteKind::Unmapped,
                            text: super::bounded(&format!(
                                "{}: {} ({}) is checked at the REST API of {o} ({r}) in one listener set: both would claim leadership in pgfront and writes would be held, so this server is left out",
                                l.name, s.name, s.address
                            )),
                        });
                        false
                    }
                    Some(_) => true,
                    None => {
                        apis.insert(r, s.address.clone());
                        true
                    }
                }
            });
            if l.servers.is_empty() {
                notes.push(Note {
                    line,
                    directive: format!("listen {}", super::excerpt(&l.name)),
                    kind: NoteKind::Unmapped,
                    text: format!(
                        "{}: every server was left out (see the notes above), so the listener is not written",
                        l.name
                    ),
                });
                continue;
            }
            kept.push(l);
        }
        if !kept.is_empty() {
            out.push((split.then(|| named(&key)), kept));
        }
    }
    out
}

/// A node to write: a distinct server address, named after its first server line.
struct Node {
    name: String,
    address: String,
    /// The REST API's port, when HAProxy says it (else `[defaults]` check_port or 8008).
    port: Option<u16>,
    tls: Option<String>,
}

/// The nodes of every listener. pgfront probes a node once for all its listeners: where
/// HAProxy checked one address on different ports or with different TLS from two servers
/// lines, the first is used and the difference noted. A server without `check` says nothing
/// about where Patroni answers (its PostgreSQL port is not a check port).
fn nodes(listeners: &[Listener], notes: &mut Vec<Note>) -> Vec<Node> {
    let mut groups: Vec<(String, Vec<(&str, &Server)>)> = Vec::new();
    let mut index: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for l in listeners {
        for s in &l.servers {
            match index.get(s.address.as_str()) {
                Some(i) => groups[*i].1.push((&l.name, s)),
                None => {
                    index.insert(&s.address, groups.len());
                    groups.push((s.address.clone(), vec![(&l.name, s)]));
                }
            }
        }
    }
    let mut names: std::collections::HashSet<String> = std::collections::HashSet::new();
    let mut out: Vec<Node> = Vec::new();
    for (address, group) in groups {
        let (_, first) = group[0];
        let mut name = sanitize(&first.name);
        while names.contains(&name) {
            name.push('_');
        }
        names.insert(name.clone());
        let checked: Vec<(&str, &Server)> = group.iter().copied().filter(|(_, s)| s.params.check).collect();
        let basis = if checked.is_empty() { group.clone() } else { checked };
        let (l0, s0) = basis[0];
        let port = port_of(s0);
        let tls = Converter::check_tls(&s0.params);
        for (l, s) in &basis[1..] {
            let mut differ = Vec::new();
            if port_of(s) != port {
                differ.push(format!(
                    "on port {} by {l0} and on port {} by {l}",
                    port.map_or("8008".into(), |p| p.to_string()),
                    port_of(s).map_or("8008".into(), |p| p.to_string())
                ));
            }
            if Converter::check_tls(&s.params).map(|t| t.0) != tls.as_ref().map(|t| t.0.clone()) {
                differ.push(format!("with other check-ssl settings by {l} than by {l0}"));
            }
            if !differ.is_empty() {
                notes.push(Note {
                    line: s.line,
                    directive: format!("server {}", super::excerpt(&s.name)),
                    kind: NoteKind::Unmapped,
                    text: super::bounded(&format!(
                        "node {name} ({address}) is checked {}; pgfront probes a node once for all its listeners: {l0}'s check is used",
                        differ.join(", and ")
                    )),
                });
            }
        }
        if let Some((_, Some((kind, text)))) = &tls {
            notes.push(Note {
                line: s0.line,
                directive: format!("server {}", s0.name),
                kind: *kind,
                text: text.clone(),
            });
        }
        out.push(Node { name, address, port, tls: tls.map(|t| t.0) });
    }
    out
}

/// The safety net: the output must be a configuration `pgfront check` accepts, else the
/// import is not complete. Certificate files of check_tls are read by the validation; when
/// they are not on this host (they are on the one that will run pgfront), that is said and
/// the rest is validated without them.
pub(super) fn validate(file: &str, imported: &mut Imported) {
    let path = std::path::PathBuf::from(format!("{file}.toml"));
    let mut text = imported.toml.clone();
    let mut result = crate::config::Config::parse(&path, &text);
    let tls_error = matches!(&result, Err(crate::config::ConfigError::Invalid { key, .. }) if key == "check_tls");
    if tls_error && missing_files(&path, &text) {
        imported.notes.push(Note {
            line: 0,
            directive: "check_tls".into(),
            kind: NoteKind::Explained,
            text: "certificate files of check_tls are not on this host, so they were not checked: run `pgfront check` on the host that has them (pgfront reads a relative path from the directory of the configuration file it is given)".into(),
        });
        text = text.lines().filter(|l| !l.starts_with("check_tls = ")).collect::<Vec<_>>().join("\n");
        result = crate::config::Config::parse(&path, &text);
    }
    if let Err(e) = result {
        imported.notes.push(Note {
            line: 0,
            directive: "the output".into(),
            kind: NoteKind::Unmapped,
            text: super::bounded(&format!("the configuration written is not valid for pgfront: {e}")),
        });
    }
}

/// Whether a file named in a `check_tls` line of `text` does not exist here.
fn missing_files(path: &std::path::Path, text: &str) -> bool {
    let dir = path.parent().unwrap_or(std::path::Path::new("."));
    text.lines().filter(|l| l.starts_with("check_tls = ")).any(|l| {
        let Ok(line) = l.parse::<toml::Table>() else { return false };
        let Some(table) = line.get("check_tls").and_then(|t| t.as_table()) else { return false };
        ["ca", "cert", "key"]
            .iter()
            .filter_map(|k| table.get(*k).and_then(|v| v.as_str()))
            .any(|f| !dir.join(f).exists())
    })
}
