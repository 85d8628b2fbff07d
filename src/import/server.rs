//! `server` / `default-server` parameters and `bind` addresses.

use super::parse::{time, Line};
use super::{quote, Bind, Converter, NoteKind, ServerParams};

/// Bind options that take a value (the next word), so it is not read as an option.
const BIND_VALUED: &[&str] = &[
    "crt",
    "crt-list",
    "ca-file",
    "ca-verify-file",
    "crl-file",
    "ciphers",
    "ciphersuites",
    "alpn",
    "npn",
    "curves",
    "ecdhe",
    "sigalgs",
    "client-sigalgs",
    "ssl-min-ver",
    "ssl-max-ver",
    "verify",
    "ca-ignore-err",
    "crt-ignore-err",
    "name",
    "id",
    "process",
    "thread",
    "maxconn",
    "backlog",
    "interface",
    "mss",
    "tcp-ut",
    "user",
    "group",
    "uid",
    "gid",
    "mode",
    "level",
    "severity-output",
    "nice",
    "namespace",
    "proto",
    "accept-netscaler-cip",
    "label",
    "shards",
    "idle-ping",
    "guid-prefix",
];

/// Server keywords that take a value (the next word) and that the importer does not carry
/// over: the value is not read as a keyword of its own.
const SERVER_VALUED: &[&str] = &[
    "maxqueue",
    "minconn",
    "on-error",
    "agent-send",
    "agent-addr",
    "addr",
    "source",
    "sni",
    "alpn",
    "npn",
    "ciphers",
    "ciphersuites",
    "curves",
    "sigalgs",
    "client-sigalgs",
    "ssl-min-ver",
    "ssl-max-ver",
    "crl-file",
    "proto",
    "check-proto",
    "check-alpn",
    "namespace",
    "track",
    "redir",
    "pool-max-conn",
    "pool-low-conn",
    "pool-purge-delay",
    "max-reuse",
    "tcp-ut",
    "socks4",
    "proxy-v2-options",
    "resolve-prefer",
    "resolve-net",
    "resolve-opts",
    "log-proto",
    "ws",
    "hash-key",
    "guid",
    "shard",
    "set-proxy-v2-tlv-fmt",
    "usesrc",
];

impl Converter {
    pub(super) fn server_params(&mut self, l: &Line, from: usize, mut p: ServerParams) -> ServerParams {
        let words = &l.words;
        let mut i = from;
        while i < words.len() {
            let word = words[i].as_str();
            let value = words.get(i + 1).map(String::as_str);
            match word {
                "check" => p.check = true,
                "agent-check" => p.agent = true,
                "no-agent-check" => p.agent = false,
                "no-check" => p.check = false,
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
                    i += 1;
                    let Some(value) = value else {
                        self.unmapped(l, &format!("`{key}` without a value (HAProxy refuses it)"), "fix the line");
                        break;
                    };
                    self.server_value(l, &mut p, key, value);
                }
                "weight" if value == Some("0") => {
                    self.unmapped(
                        l,
                        "weight 0 takes no new sessions",
                        "leave the server out of `servers`, or drain it from the page",
                    );
                    i += 1;
                }
                // Compared across the servers of a listener (see `Converter::weights`).
                "weight" => {
                    i += 1;
                    match value.map(str::parse::<u32>) {
                        Some(Ok(n)) if n <= 256 => p.weight = Some((n, l.number)),
                        _ => self.unmapped(l, "weight needs a number from 0 to 256 (HAProxy refuses another)", "fix the line"),
                    }
                }
                "id" => {
                    i += 1;
                    match value.map(str::parse::<u32>) {
                        Some(Ok(n)) if n > 0 && n <= i32::MAX as u32 => p.id = Some(n),
                        _ => self.unmapped(l, "id needs a positive number (HAProxy refuses another)", "fix the line"),
                    }
                }
                "on-marked-up" | "slowstart" | "agent-port" | "agent-inter" | "observe" | "error-limit"
                | "cookie" | "resolvers" | "init-addr" => {
                    self.explained(l, format!("`{word}` has no pgfront equivalent and is ignored"));
                    i += 1;
                }
                "check-ssl" => p.check_ssl = true,
                key @ ("verify" | "ca-file" | "crt" | "verifyhost" | "check-sni") => {
                    i += 1;
                    let Some(value) = value else {
                        self.unmapped(l, &format!("`{key}` without a value (HAProxy refuses it)"), "fix the line");
                        break;
                    };
                    let v = Some(value.to_owned());
                    match key {
                        "verify" if !matches!(value, "none" | "required") => self.unmapped(
                            l,
                            &format!("verify {}: HAProxy knows none and required", super::excerpt(value)),
                            "fix the line",
                        ),
                        "verify" => p.verify = v,
                        "ca-file" => p.ca_file = Some(self.based(l, key, value)),
                        "crt" => p.crt = Some(self.based(l, key, value)),
                        "verifyhost" => p.verifyhost = v,
                        _ => p.check_sni = v,
                    }
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
                other => {
                    self.unmapped(
                        l,
                        &format!("server parameter `{}` is not understood", super::excerpt(other)),
                        "port it by hand",
                    );
                    if SERVER_VALUED.contains(&other) {
                        i += 1;
                    }
                }
            }
            i += 1;
        }
        p
    }

    /// A `ca-file` or `crt` path as HAProxy reads it: a relative one is in `ca-base` /
    /// `crt-base` when `global` sets it, else in HAProxy's working directory, which is not
    /// known here (and pgfront reads a relative path from its configuration file's directory).
    fn based(&mut self, l: &Line, key: &str, value: &str) -> String {
        let base = if key == "ca-file" { &self.ca_base } else { &self.crt_base };
        if value.starts_with('/') {
            return value.to_owned();
        }
        match base {
            Some(dir) => format!("{}/{value}", dir.trim_end_matches('/')),
            None => {
                self.unmapped(
                    l,
                    &format!(
                        "{key} {}: a relative path, which HAProxy reads from its working directory (no {} in global); pgfront reads it from the directory of the configuration file it is given",
                        super::excerpt(value),
                        if key == "ca-file" { "ca-base" } else { "crt-base" }
                    ),
                    "write the absolute path in check_tls",
                );
                value.to_owned()
            }
        }
    }

    /// One valued server parameter; a value HAProxy would refuse (or that pgfront cannot
    /// take) is a note, never a silent fallback to a default.
    fn server_value(&mut self, l: &Line, p: &mut ServerParams, key: &str, value: &str) {
        let bad = |cx: &mut Self, why: &str| {
            cx.unmapped(
                l,
                &format!("{key} {}: {why}", super::excerpt(value)),
                "fix the value; pgfront's default is used",
            )
        };
        if value.contains('$') {
            return bad(self, "an environment variable HAProxy expands when it starts; its value is not known here");
        }
        match key {
            "port" => match value.parse::<u16>() {
                Ok(n) if n > 0 => p.port = Some(n),
                _ => bad(self, "not a port (1 to 65535)"),
            },
            // HAProxy's maxconn 0 is no limit: no per-server limit, as when it is not written.
            "maxconn" => match value.parse::<usize>() {
                Ok(0) => {
                    p.maxconn = None;
                    p.maxconn_set = true;
                }
                Ok(n) => {
                    p.maxconn = Some(n);
                    p.maxconn_set = true;
                }
                Err(_) => bad(self, "not a whole number"),
            },
            "inter" | "fastinter" | "downinter" => match time(value) {
                Ok(t) if t == "0ms" || t == "0us" => bad(self, "must be greater than zero"),
                Ok(t) => match key {
                    "inter" => p.inter = Some(t),
                    "fastinter" => p.fastinter = Some(t),
                    _ => p.downinter = Some(t),
                },
                Err(e) => bad(self, &e),
            },
            // HAProxy reads an int and refuses one that is not above 0 (a larger number wraps).
            "fall" | "rise" => match value.parse::<u32>() {
                Ok(n) if n > 0 && n <= i32::MAX as u32 => {
                    if key == "fall" {
                        p.fall = Some(n)
                    } else {
                        p.rise = Some(n)
                    }
                }
                _ => bad(self, "must be a whole number from 1 to 2147483647 (HAProxy refuses another)"),
            },
            // on-marked-down has one action; shutdown-backup-sessions is on-marked-up's.
            _ => match value {
                "shutdown-sessions" => p.on_marked_down = Some(value.to_owned()),
                _ => bad(self, "on-marked-down has one action, shutdown-sessions: HAProxy refuses another"),
            },
        }
    }

    /// A `bind` address in pgfront's form, or None (with a note) when there is none: HAProxy's
    /// `:5000` is every IPv4 address (`0.0.0.0:5000`, pgfront also takes `*:5000`), `:::5000` every IPv6
    /// one, `ipv4@`/`ipv6@` only say the family. A list, a port range, a UNIX socket or an
    /// environment variable has no one pgfront address. Options after the address are noted.
    pub(super) fn bind_address(&mut self, b: &Bind) -> Option<String> {
        let line = Line {
            number: b.line,
            words: std::iter::once("bind".to_owned())
                .chain(std::iter::once(b.address.clone()))
                .chain(b.options.iter().cloned())
                .collect(),
        };
        self.bind_options(&line, &b.options);
        let mut text = b.address.as_str();
        if text.contains('$') {
            self.unmapped(
                &line,
                "the address names an environment variable, which HAProxy expands when it starts: its value is not known here",
                "write the listener's bind by hand",
            );
            return None;
        }
        if let Some((first, _)) = text.split_once(',') {
            self.unmapped(
                &line,
                "a list of addresses: pgfront binds one address per listener, the first is used",
                "add a [[listener]] for each other address",
            );
            text = first;
        }
        let mut v6 = false;
        if let Some((family, rest)) = text.split_once('@') {
            match family {
                "ipv4" | "tcp4" | "tcp" => {}
                "ipv6" | "tcp6" => v6 = true,
                _ => {
                    self.unmapped(
                        &line,
                        &format!("a {family}@ address (a socket pgfront cannot listen on; it listens on TCP)"),
                        "bind the listener to a TCP address",
                    );
                    return None;
                }
            }
            text = rest;
        }
        if text.starts_with('/') {
            self.unmapped(&line, "a UNIX socket: pgfront listens on TCP only", "bind the listener to a TCP address");
            return None;
        }
        let Some((host, port)) = text.rsplit_once(':') else {
            self.unmapped(&line, "an address without a port", "write the listener's bind by hand");
            return None;
        };
        let port = match port.split_once('-') {
            Some((first, _)) => {
                self.unmapped(
                    &line,
                    "a port range: pgfront binds one port per listener, the first is used",
                    "add a [[listener]] for each other port",
                );
                first
            }
            None => port,
        };
        let host = match host.trim_start_matches('[').trim_end_matches(']') {
            "" | "*" if v6 => "[::]".to_owned(),
            // pgfront takes `*` as HAProxy does; the empty host it needs spelled out.
            "*" => "*".to_owned(),
            "" => "0.0.0.0".to_owned(),
            h if h.contains(':') => format!("[{h}]"),
            h => h.to_owned(),
        };
        Some(format!("{host}:{port}"))
    }

    /// Every option of a `bind` line is something pgfront does not do on a listener: each
    /// is noted once.
    fn bind_options(&mut self, line: &Line, options: &[String]) {
        let mut i = 0;
        while i < options.len() {
            let o = options[i].as_str();
            let (what, how) = match o {
                "ssl" => (
                    "HAProxy terminates TLS here (with `crt`); PostgreSQL clients start TLS with an SSLRequest, which a TLS listener does not speak",
                    "to terminate TLS, give the listener a `tls` table (cert, key)",
                ),
                "crt" | "crt-list" | "ca-file" | "verify" | "alpn" | "ciphers" | "ciphersuites" => {
                    ("a TLS setting of `ssl`", "see the listener's `tls` table")
                }
                "accept-proxy" | "accept-netscaler-cip" => (
                    "clients come through a proxy that sends the PROXY protocol header; pgfront does not read it",
                    "remove the proxy in front, or keep HAProxy for this port",
                ),
                "v4v6" | "v6only" => (
                    "IPv4/IPv6 sharing on an IPv6 socket: pgfront leaves it to the system (net.ipv6.bindv6only)",
                    "bind 0.0.0.0 and [::] with a listener each if both are needed",
                ),
                "transparent" | "tfo" | "defer-accept" | "interface" | "namespace" | "mss" | "tcp-ut" | "backlog"
                | "maxconn" => ("a socket option pgfront does not set", "leave it out"),
                "name" | "id" | "process" | "thread" | "shards" | "label" | "guid-prefix" => {
                    ("naming or placement of the socket in HAProxy; no pgfront equivalent", "leave it out")
                }
                _ => ("a bind option the importer does not know", "port it by hand"),
            };
            let text = format!("bind option `{}`: {what}", super::excerpt(o));
            if matches!(o, "name" | "id" | "process" | "thread" | "shards" | "label" | "guid-prefix") {
                self.explained(line, text);
            } else {
                self.unmapped(line, &text, how);
            }
            if BIND_VALUED.contains(&o) {
                i += 1;
            }
            i += 1;
        }
    }

    /// A node's `check_tls` table for a server with `check-ssl`, and what the operator should
    /// know about it. HAProxy's `verify required` (its default) checks the chain, and the host
    /// name only with `verifyhost` (or the SNI): pgfront's `ca` and `full`. A `crt` file holds
    /// the certificate and its key together, so it is both `cert` and `key`.
    pub(super) fn check_tls(p: &ServerParams) -> Option<(String, Option<(NoteKind, String)>)> {
        if !p.check_ssl {
            return None;
        }
        let mut keys = Vec::new();
        let mut note = None;
        // HAProxy verifies the certificate against the SNI it sent (check-sni), and against
        // verifyhost only when no SNI was sent.
        let name = p.check_sni.as_ref().or(p.verifyhost.as_ref());
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
}
