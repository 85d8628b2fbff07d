use super::*;
use crate::config::{Balance, CheckMode, Config, Target};
use crate::health::Verify;

fn shape(name: &str) -> String {
    let text = match name {
        "tutorial" => include_str!("../../tests/haproxy/tutorial.cfg"),
        "patroni-template" => include_str!("../../tests/haproxy/patroni-template.cfg"),
        "frontend-backend" => include_str!("../../tests/haproxy/frontend-backend.cfg"),
        "pgsql-check" => include_str!("../../tests/haproxy/pgsql-check.cfg"),
        "check-ssl" => include_str!("../../tests/haproxy/check-ssl.cfg"),
        _ => unreachable!(),
    };
    text.replace("@NODE1@", "127.0.0.11")
        .replace("@NODE2@", "127.0.0.12")
        .replace("@NODE3@", "127.0.0.13")
        .replace("@CA@", &lab_tls("ca.crt"))
        .replace("@CRT@", &lab_tls("probe-client.pem"))
}

/// A file of the lab's shipped test CA (`lab/tls`).
fn lab_tls(name: &str) -> String {
    format!("{}/lab/tls/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn convert(name: &str) -> (Imported, Config) {
    let imported = import(&format!("{name}.cfg"), &shape(name), Options::default()).unwrap();
    let config = Config::parse(std::path::Path::new("imported.toml"), &imported.toml)
        .unwrap_or_else(|e| panic!("{name}: the output does not pass check: {e}\n{}", imported.toml));
    (imported, config)
}

#[test]
fn the_tutorial_converts_completely() {
    let (imported, c) = convert("tutorial");
    assert!(imported.complete(), "{:?}", imported.notes);
    // Nothing else to explain: only that pgfront redispatches where HAProxy (no option
    // redispatch) retried the same replica.
    let notes: Vec<&str> = imported.notes.iter().map(|n| n.directive.as_str()).collect();
    assert_eq!(notes, ["option redispatch"], "{:?}", imported.notes);
    assert_eq!(c.global.maxconn, 4096);
    assert_eq!(c.global.check_mode, CheckMode::Patroni);
    assert_eq!(c.nodes.len(), 3);
    assert_eq!(c.nodes[0].check_address, "127.0.0.11:8008");
    let primary = &c.listeners[0];
    assert_eq!((primary.name.as_str(), primary.bind.port()), ("primary", 5000));
    assert!(primary.check.is_leader());
    assert_eq!(primary.check.path, "/master");
    assert_eq!((primary.check.timing.fall, primary.check.timing.rise), (3, 2));
    assert_eq!(primary.check.timing.inter, std::time::Duration::from_secs(3));
    assert!(primary.shutdown_sessions);
    assert_eq!((primary.retries, primary.maxconn), (2, 100));
    assert_eq!(primary.timeout_connect, std::time::Duration::from_secs(4));
    assert_eq!(primary.timeout_client, std::time::Duration::from_secs(1800));
    let standbys = &c.listeners[1];
    assert_eq!(standbys.balance, Balance::RoundRobin);
    assert_eq!(standbys.check.path, "/replica");
    let web = c.web.as_ref().unwrap();
    assert_eq!(web.bind.port(), 7000);
    assert_eq!(web.users[0].name, "admin");
}

#[test]
fn patroni_template_spellings_convert() {
    let (imported, c) = convert("patroni-template");
    assert!(imported.complete(), "{:?}", imported.notes);
    assert_eq!(c.listeners[0].check.path, "/", "option httpchk alone is OPTIONS /, the primary");
    assert!(c.listeners[0].check.is_leader());
    assert_eq!((c.listeners[1].check.method.as_str(), c.listeners[1].check.path.as_str()), ("OPTIONS", "/replica"));
    assert_eq!(c.nodes[0].name, "postgresql_127.0.0.11_5432");
    // No stats auth: explained, and the page gets a commented example user.
    assert!(imported.notes.iter().any(|n| n.kind == NoteKind::Explained && n.text.contains("[[web.user]]")));
}

#[test]
fn frontends_and_the_read_primary_acl_convert() {
    let (imported, c) = convert("frontend-backend");
    assert!(imported.complete(), "{:?}", imported.notes);
    let names: Vec<&str> = c.listeners.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, ["ft_primary", "ft_replicas", "ft_reads"]);
    assert_eq!(c.listeners[0].check.path, "/primary");
    assert_eq!(c.listeners[0].check.method, "GET");
    let reads = &c.listeners[2];
    assert!(reads.client_target, "the ACL becomes pgfront.target");
    assert_eq!(reads.check.path, "/replica");
    assert_eq!(reads.default_target, Target::Listener);
    assert!(imported.notes.iter().any(|n| n.text.contains("pgfront.target=primary")));
    assert_eq!(c.listeners[0].retries, 3);
    assert_eq!(c.listeners[0].timeout_connect, std::time::Duration::from_secs(5), "5000 is milliseconds");
    assert_eq!(c.listeners[0].timeout_queue, std::time::Duration::from_secs(5));
    assert_eq!(c.listeners[0].maxconn, 2000, "no server maxconn: the global limit");
}

#[test]
fn pgsql_check_leastconn_and_backup_convert() {
    let (imported, c) = convert("pgsql-check");
    // A backup server has no pgfront equivalent: left out, and said so.
    let unmapped: Vec<&Note> = imported.notes.iter().filter(|n| n.kind == NoteKind::Unmapped).collect();
    assert_eq!(unmapped.len(), 1, "{unmapped:?}");
    assert!(unmapped[0].directive.contains("backup") && unmapped[0].line == 18, "{unmapped:?}");
    assert_eq!(c.listeners[0].servers.len(), 2, "the backup server is not a regular one");
    assert_eq!(c.listeners[0].balance, Balance::LeastConn);
    assert_eq!(c.listeners[0].check.path, "/health", "pgsql-check: PostgreSQL answers, any role");
    assert!(!c.listeners[0].shutdown_sessions, "HAProxy's default: sessions stay");
    assert_eq!(c.listeners[1].check.path, "/leader");
    assert!(c.listeners[1].shutdown_sessions);
    assert_eq!((c.listeners[0].maxconn, c.listeners[1].maxconn), (500, 50), "server maxconn per listener");
}

#[test]
fn check_ssl_becomes_check_tls_per_node() {
    let (imported, c) = convert("check-ssl");
    assert!(imported.complete(), "{:?}", imported.notes);
    let tls: Vec<_> = c.nodes.iter().map(|n| n.check_tls.as_deref().expect("check_tls")).collect();
    assert_eq!(tls.iter().map(|t| t.verify).collect::<Vec<_>>(), [Verify::Full, Verify::Ca, Verify::None]);
    assert_eq!(tls[0].server_name.as_deref(), Some("patroni1.example"));
    // HAProxy's crt holds the certificate and the key together.
    assert_eq!(tls[1].cert.as_deref(), Some(std::path::Path::new(&lab_tls("probe-client.pem"))));
    assert_eq!(tls[1].cert, tls[1].key);
    let why = imported.notes.iter().find(|n| n.line == 14).expect("the chain-only mapping is explained");
    assert!(why.text.contains("verify = \"ca\""), "{why:?}");
    assert!(c.warnings().iter().any(|w| w.contains("node \"n3\"")), "verify none is warned about");
}

#[test]
fn unknown_directives_are_listed_with_their_line() {
    let text = "global\n    maxconn 10\n    frobnicate yes\ndefaults\n    mode tcp\nlisten l\n    bind *:5000\n    option httpchk OPTIONS /master\n    server a 127.0.0.1:5432 check port 8008 weight 10\n";
    let imported = import("x.cfg", text, Options::default()).unwrap();
    assert!(!imported.complete());
    let n = imported.notes.iter().find(|n| n.kind == NoteKind::Unmapped).unwrap();
    assert_eq!((n.line, n.directive.as_str()), (3, "frobnicate yes"));
    assert!(imported.notes.iter().any(|n| n.line == 9 && n.text.contains("weight")));
    assert!(matches!(
        import("x.cfg", "global\n  maxconn 1\n", Options::default()),
        Err(ImportError::NothingToImport { .. })
    ));
}

#[test]
fn passwords_can_be_stored_hashed() {
    let imported = import("t.cfg", &shape("tutorial"), Options { hash_passwords: true }).unwrap();
    assert!(!imported.toml.contains("secret"), "{}", imported.toml);
    let c = Config::parse(std::path::Path::new("t.toml"), &imported.toml).unwrap();
    assert_eq!(c.web.unwrap().users[0].name, "admin");
}

/// A listen of `body` lines after a defaults section with every timeout, so that only what
/// a test is about is noted.
fn with_defaults(body: &str) -> String {
    format!("defaults\n    mode tcp\n    timeout connect 4s\n    timeout client 30m\n    timeout server 30m\n{body}")
}

fn run(text: &str) -> Imported {
    import("t.cfg", text, Options::default()).unwrap()
}

fn unmapped(i: &Imported) -> Vec<&Note> {
    i.notes.iter().filter(|n| n.kind == NoteKind::Unmapped).collect()
}

fn parsed(i: &Imported) -> Config {
    Config::parse(std::path::Path::new("t.toml"), &i.toml).unwrap_or_else(|e| panic!("{e}\n{}", i.toml))
}

#[test]
fn an_output_pgfront_refuses_is_never_complete() {
    // The path is not a Patroni endpoint pgfront can read (lag=abc): check refuses it.
    let i = run(&with_defaults(
        "listen l\n    bind 127.0.0.1:5000\n    option httpchk GET /replica?lag=abc\n    server a 127.0.0.11:5432 check port 8008\n",
    ));
    assert!(!i.complete(), "{}", i.toml);
    assert!(unmapped(&i).iter().any(|n| n.text.contains("not valid for pgfront")), "{:?}", i.notes);
}

#[test]
fn haproxy_bind_forms_become_addresses_pgfront_takes_or_notes() {
    let listen = |bind: &str| {
        with_defaults(&format!(
            "listen l\n    bind {bind}\n    option httpchk OPTIONS /master\n    server a 127.0.0.11:5432 check port 8008\nlisten stats\n    bind :7000\n    stats enable\n    stats uri /\n    stats auth u:p\n"
        ))
    };
    for (bind, want) in [
        (":5000", "0.0.0.0:5000"),
        ("ipv4@*:5000", "0.0.0.0:5000"),
        ("*:5000", "0.0.0.0:5000"),
        (":::5000", "[::]:5000"),
    ] {
        let i = run(&listen(bind));
        assert!(i.complete(), "{bind}: {:?}", i.notes);
        let c = parsed(&i);
        assert_eq!(c.listeners[0].bind.to_string(), want, "{bind}");
        assert_eq!(c.web.unwrap().bind.port(), 7000, "stats bind :7000");
    }
    for bind in [
        "0.0.0.0:5000,127.0.0.1:5003",
        "*:5000-5002",
        "/var/run/pg.sock",
        "\"${BIND}:5000\"",
        "*:5000 ssl crt /etc/haproxy/pg.pem",
        "*:5000 accept-proxy",
        ":::5000 v4v6",
    ] {
        let i = run(&listen(bind));
        assert!(!i.complete(), "{bind}: {}", i.toml);
        parsed(&i);
        assert!(!i.notes.iter().any(|n| n.text.contains("not valid for pgfront")), "{bind}: {:?}", i.notes);
    }
    let i = run(&listen("*:5000 ssl crt /etc/haproxy/pg.pem"));
    let texts: Vec<&str> = unmapped(&i).iter().map(|n| n.text.as_str()).collect();
    assert!(texts.iter().any(|t| t.contains("`ssl`")) && texts.iter().any(|t| t.contains("`crt`")), "{texts:?}");
}

#[test]
fn check_values_pgfront_refuses_are_noted() {
    for server in ["check port 8008 inter 0", "check port 8008 fall 0", "check port 8008 port 99999"] {
        let i = run(&with_defaults(&format!(
            "listen l\n    bind 127.0.0.1:5000\n    option httpchk OPTIONS /master\n    server a 127.0.0.11:5432 {server}\n"
        )));
        assert!(!i.complete(), "{server}");
        parsed(&i);
    }
    for chk in ["POST /master", "get /master"] {
        let i = run(&with_defaults(&format!(
            "listen l\n    bind 127.0.0.1:5000\n    option httpchk {chk}\n    server a 127.0.0.11:5432 check port 8008\n"
        )));
        assert!(!i.complete(), "{chk}");
        parsed(&i);
    }
    // The same address twice, and a stats user without a name.
    let i = run(&with_defaults(
        "listen l\n    bind 127.0.0.1:5000\n    option httpchk OPTIONS /master\n    server a 127.0.0.11:5432 check port 8008\n    server b 127.0.0.11:5432 check port 8008\nlisten stats\n    bind 127.0.0.1:7000\n    stats enable\n    stats uri /\n    stats auth :pw\n",
    ));
    assert_eq!(unmapped(&i).len(), 2, "{:?}", i.notes);
    assert_eq!(parsed(&i).listeners[0].servers.len(), 1);
}

#[test]
fn an_overflowing_time_is_a_note() {
    let i = run("defaults\n    mode tcp\n    timeout connect 4s\n    timeout server 30m\n    timeout client 999999999999999d\nlisten l\n    bind 127.0.0.1:5000\n    option httpchk OPTIONS /master\n    server a 127.0.0.11:5432 check port 8008 inter 99999999999999999h\n");
    assert!(unmapped(&i).iter().any(|n| n.line == 5 && n.text.contains("longest")), "{:?}", i.notes);
    assert!(unmapped(&i).iter().any(|n| n.line == 9 && n.text.contains("longest")), "{:?}", i.notes);
    parsed(&i);
}

#[test]
fn a_conditional_stats_admin_makes_no_one_admin() {
    let text = |cond: &str| {
        with_defaults(&format!(
            "listen l\n    bind 127.0.0.1:5000\n    option httpchk OPTIONS /master\n    server a 127.0.0.11:5432 check port 8008\nlisten stats\n    bind 127.0.0.1:7000\n    stats enable\n    stats uri /\n    stats auth admin:pw\n    stats admin {cond}\n"
        ))
    };
    let i = run(&text("if LOCALHOST"));
    assert!(!i.complete());
    let web = parsed(&i).web.unwrap();
    assert_eq!(web.users[0].role, crate::config::Role::ReadOnly);
    let i = run(&text("if TRUE"));
    assert!(i.complete(), "{:?}", i.notes);
    assert_eq!(parsed(&i).web.unwrap().users[0].role, crate::config::Role::Admin);
}

#[test]
fn a_server_without_check_is_noted_and_not_probed_on_its_postgresql_port() {
    let i = run(&with_defaults(
        "listen l\n    bind 127.0.0.1:5000\n    option httpchk OPTIONS /master\n    server pg1 127.0.0.11:5432\n    server pg2 127.0.0.12:5432 check port 8008\n",
    ));
    assert!(unmapped(&i).iter().any(|n| n.line == 9 && n.text.contains("never checks")), "{:?}", i.notes);
    let c = parsed(&i);
    assert_eq!(c.nodes[0].check_address, "127.0.0.11:8008", "{}", i.toml);
}

#[test]
fn haproxy_zero_is_no_limit_not_zero() {
    let i = run("global\n    maxconn 0\ndefaults\n    mode tcp\n    timeout connect 4s\n    timeout client 0\n    timeout server 30m\n    timeout queue 0\n    timeout check 0\nlisten l\n    bind 127.0.0.1:5000\n    option httpchk OPTIONS /master\n    default-server inter 3s\n    server a 127.0.0.11:5432 check port 8008 maxconn 0\n");
    let c = parsed(&i);
    let l = &c.listeners[0];
    assert_eq!(l.timeout_queue, std::time::Duration::from_secs(4), "unset queue: timeout connect");
    assert_eq!(l.check.timing.timeout, std::time::Duration::from_secs(3), "unset check: inter");
    assert_eq!(l.maxconn, 4096, "maxconn 0: no per-server limit");
    assert_eq!(l.timeout_client, std::time::Duration::from_secs(1800));
    let lines: Vec<usize> = unmapped(&i).iter().map(|n| n.line).collect();
    assert!(lines.contains(&2) && lines.contains(&6), "{:?}", i.notes);
}

#[test]
fn each_listen_takes_the_defaults_above_it() {
    let i = run("defaults\n    mode tcp\n    timeout connect 4s\n    timeout client 30m\n    timeout server 30m\nlisten primary\n    bind 127.0.0.1:5000\n    option httpchk OPTIONS /master\n    server pg1 127.0.0.11:5432 check port 8008\ndefaults\n    mode tcp\n    timeout connect 4s\n    timeout client 30m\n    timeout server 30m\n    timeout queue 1s\n    timeout check 1s\n    option dontlog-normal\nlisten replicas\n    bind 127.0.0.1:5001\n    option httpchk OPTIONS /replica\n    server pg1 127.0.0.11:5432 check port 8008\n");
    assert!(i.complete(), "{:?}", i.notes);
    let c = parsed(&i);
    let (p, r) = (&c.listeners[0], &c.listeners[1]);
    assert_eq!(p.timeout_queue, std::time::Duration::from_secs(4));
    assert_eq!(p.check.timing.timeout, std::time::Duration::from_secs(2));
    assert_eq!(p.log_sessions, crate::config::LogSessions::All);
    assert_eq!(r.timeout_queue, std::time::Duration::from_secs(1));
    assert_eq!(r.check.timing.timeout, std::time::Duration::from_secs(1));
    assert_eq!(r.log_sessions, crate::config::LogSessions::Errors);
}

#[test]
fn named_defaults_are_taken_with_from() {
    let i = run("global\n    hard-stop-after 60s\ndefaults tcp_defaults\n    mode tcp\n    timeout connect 4s\n    timeout client 30m\n    timeout server 30m\n    option httpchk OPTIONS /master\n\ndefaults http_defaults\n    mode http\n    timeout client 10s\n\nlisten primary from tcp_defaults\n    bind 127.0.0.1:5000\n    server pg1 127.0.0.11:5432 check port 8008\n");
    assert!(i.complete(), "{:?}", i.notes);
    let c = parsed(&i);
    assert_eq!(c.listeners[0].check.path, "/master");
    assert_eq!(c.listeners[0].bind.port(), 5000);
    assert_eq!(c.listeners[0].timeout_client, std::time::Duration::from_secs(1800));
    assert_eq!(c.global.hard_stop_after, std::time::Duration::from_secs(60));
}

#[test]
fn a_byte_order_mark_and_lines_before_any_section() {
    let i = run("\u{feff}global\r\n    maxconn 50\r\n    nbthread 4\r\ndefaults\r\n    mode tcp\r\n    timeout connect 4s\r\n    timeout client 30m\r\n    timeout server 30m\r\nlisten primary\r\n    bind 127.0.0.1:5000\r\n    option httpchk OPTIONS /master\r\n    server pg1 127.0.0.11:5432 check port 8008 maxconn 20\r\n");
    assert!(i.complete(), "{:?}", i.notes);
    let c = parsed(&i);
    assert_eq!((c.global.maxconn, c.global.threads), (50, 4));
    let i = run(&format!("# c\nmaxconn 50\ntimeout client 1h\nglobal\n    maxconn 10\n{}", with_defaults("listen l\n    bind 127.0.0.1:5000\n    option httpchk OPTIONS /master\n    server a 127.0.0.11:5432 check port 8008\n")));
    let lines: Vec<usize> = unmapped(&i).iter().map(|n| n.line).collect();
    assert_eq!(lines, [2, 3], "{:?}", i.notes);
}

#[test]
fn listens_that_check_a_node_differently_are_noted() {
    let i = run(&with_defaults("listen primary\n    bind 127.0.0.1:5000\n    option httpchk OPTIONS /master\n    server pg1 127.0.0.11:5432 check port 8008\nlisten replicas\n    bind 127.0.0.1:5001\n    option httpchk OPTIONS /replica\n    server pg1 127.0.0.11:5432 check port 8009 check-ssl verify none\n"));
    let n = unmapped(&i);
    assert!(n.len() == 1 && n[0].line == 13 && n[0].text.contains("8009") && n[0].text.contains("check-ssl"), "{n:?}");
    parsed(&i);
}

#[test]
fn servers_of_one_listen_with_different_timing_are_noted() {
    let i = run(&with_defaults("listen primary\n    bind 127.0.0.1:5000\n    option httpchk OPTIONS /master\n    server pg1 127.0.0.11:5432 check port 8008 inter 1s fall 2 rise 1\n    server pg2 127.0.0.12:5432 check port 8008 inter 10s fall 5 rise 5\n"));
    let n = unmapped(&i);
    assert!(n.len() == 1 && n[0].line == 10 && n[0].text.contains("timing"), "{n:?}");
    assert_eq!(parsed(&i).listeners[0].check.timing.inter, std::time::Duration::from_secs(1));
}

#[test]
fn a_frontends_client_timeout_and_maxconn_are_its_own() {
    let i = run("global\n    maxconn 1000\ndefaults\n    mode tcp\n    timeout connect 4s\n    timeout client 30m\n    timeout server 30m\nfrontend fe\n    bind 127.0.0.1:5000\n    timeout client 2h\n    maxconn 500\n    default_backend be\nbackend be\n    option httpchk OPTIONS /master\n    server pg1 127.0.0.11:5432 check port 8008\n");
    assert_eq!(parsed(&i).listeners[0].timeout_client, std::time::Duration::from_secs(7200));
    assert!(unmapped(&i).iter().any(|n| n.line == 11), "frontend maxconn: {:?}", i.notes);
}

#[test]
fn timeout_tunnel_is_the_connected_sessions_timeout() {
    let i = run(&with_defaults("    timeout tunnel 1h\nlisten l\n    bind 127.0.0.1:5000\n    option httpchk OPTIONS /master\n    server a 127.0.0.11:5432 check port 8008\n"));
    assert!(i.complete(), "{:?}", i.notes);
    let l = &parsed(&i).listeners[0];
    assert_eq!(
        (l.timeout_client, l.timeout_server),
        (std::time::Duration::from_secs(3600), std::time::Duration::from_secs(3600))
    );
}

#[test]
fn unreadable_values_are_noted() {
    let i = run("defaults\n    mode tcp\n    timeout connect 4s\n    timeout client 30m\n    timeout server 30m\n    timeout bogus 1s\n    retries abc\n    contimeout zzz\nlisten l\n    bind 127.0.0.1:5000\n    option httpchk OPTIONS /master\n    default-server inter 2.5s fall x rise -1 maxconn lots port 99999\n    server a 127.0.0.11:5432 check inter\n    server b 127.0.0.12:5432 check port\n");
    let n = unmapped(&i);
    for line in [6, 7, 8, 13, 14] {
        assert!(n.iter().any(|n| n.line == line), "line {line}: {n:?}");
    }
    assert_eq!(n.iter().filter(|n| n.line == 12).count(), 5, "{n:?}");
    parsed(&i);
}

#[test]
fn an_environment_variable_in_a_server_address_is_not_copied() {
    let i = run(&with_defaults("listen l\n    bind 127.0.0.1:5000\n    option httpchk OPTIONS /master\n    server a \"${PG1}:5432\" check port 8008\n    server b 127.0.0.12:5432 check port \"${P}\"\n"));
    assert!(!i.toml.contains("${"), "{}", i.toml);
    assert_eq!(unmapped(&i).len(), 2, "{:?}", i.notes);
    assert_eq!(parsed(&i).nodes.len(), 1);
}

#[test]
fn a_listen_with_servers_and_stats_is_a_proxy() {
    let i = run(&with_defaults("listen primary\n    bind 127.0.0.1:5000\n    option httpchk OPTIONS /master\n    stats enable\n    server pg1 127.0.0.11:5432 check port 8008\n"));
    assert!(!i.complete());
    let c = parsed(&i);
    assert_eq!(c.listeners[0].servers.len(), 1);
    assert!(c.web.is_none());
}

#[test]
fn a_long_line_gives_bounded_notes() {
    let weights = " weight 1".repeat(10_000);
    let i = run(&with_defaults(&format!("listen l\n    bind 127.0.0.1:5000\n    option httpchk OPTIONS /master\n    server a 127.0.0.11:5432 check port 8008{weights} frob\n")));
    assert_eq!(i.notes.iter().filter(|n| n.line == 9).count(), 2, "one per word kind");
    assert!(i.notes.iter().all(|n| n.directive.len() < 1000 && n.text.len() < 2000));
}

#[test]
fn the_maxconn_comment_says_where_it_comes_from() {
    let i = run(&with_defaults("global\n    maxconn 100\nlisten l\n    bind 127.0.0.1:5000\n    option httpchk OPTIONS /master\n    server a 127.0.0.11:5432 check port 8008 maxconn 100\n"));
    assert!(i.toml.contains("maxconn = 100   # server ... maxconn 100"), "{}", i.toml);
}

#[test]
fn check_tls_files_of_the_target_host_are_explained_not_refused() {
    let i = run(&with_defaults("listen l\n    bind 127.0.0.1:5000\n    option httpchk OPTIONS /master\n    server a 127.0.0.11:5432 check port 8008 check-ssl verify required ca-file /nonexistent/ca.crt verifyhost a\n"));
    assert!(i.complete(), "{:?}", i.notes);
    assert!(i.notes.iter().any(|n| n.directive == "check_tls" && n.text.contains("not on this host")), "{:?}", i.notes);
}

#[test]
fn a_balance_pgfront_lacks_is_a_change_of_meaning() {
    // Before: only explained (exit 0), though `balance source` kept each client on one
    // replica and roundrobin does not.
    let i = run(&with_defaults("listen replicas\n    bind 127.0.0.1:5001\n    balance source\n    option httpchk OPTIONS /replica\n    server a 127.0.0.11:5432 check port 8008\n"));
    assert!(!i.complete());
    assert!(unmapped(&i).iter().any(|n| n.text.contains("balance source")), "{:?}", i.notes);
    assert_eq!(parsed(&i).listeners[0].balance, Balance::RoundRobin);
}

#[test]
fn nothing_to_import_still_says_why() {
    // Before: "nothing to import" alone, though each server left out had its reason.
    let e = import("x.cfg", &with_defaults("listen l\n    bind 127.0.0.1:5000\n    option httpchk OPTIONS /master\n    server a \"${PG}:5432\" check port 8008\n"), Options::default());
    let Err(ImportError::NothingToImport { notes }) = e else { panic!("{e:?}") };
    assert!(notes.iter().any(|n| n.kind == NoteKind::Unmapped), "{notes:?}");
}

/// The defaults of helper-34's cases: every timeout, so only what a test is about is noted.
const TIMEOUTS: &str =
    "defaults\n    mode tcp\n    timeout connect 4s\n    timeout client 30m\n    timeout server 30m\n";

#[test]
fn tcp_check_rules_are_not_carried_over_as_a_liveness_check() {
    // Before: /health (any role), exit 0: the leader port would have sent writes to replicas.
    let i = run(&format!("{TIMEOUTS}listen primary\n    bind 127.0.0.1:5000\n    option tcp-check\n    tcp-check connect port 8008\n    tcp-check send GET\\ /master\\ HTTP/1.0\\r\\n\\r\\n\n    tcp-check expect string HTTP/1.0\\ 200\n    server pg1 127.0.0.11:5432 check\n    server pg2 127.0.0.12:5432 check\n"));
    assert!(!i.complete(), "{:?}", i.notes);
    assert!(unmapped(&i).iter().any(|n| n.line == 9 && n.text.contains("tcp-check rules")), "{:?}", i.notes);
    let c = parsed(&i);
    assert_eq!((c.listeners[0].check.method.as_str(), c.listeners[0].check.path.as_str()), ("GET", "/master"));
    assert_eq!(c.nodes[0].check_address, "127.0.0.11:8008", "the rules' connect port");
    // A script without a request line: /health, and still not carried over.
    let i = run(&format!("{TIMEOUTS}listen any\n    bind 127.0.0.1:5000\n    option tcp-check\n    tcp-check connect\n    tcp-check send-binary 00000008\n    tcp-check expect binary 4e\n    server pg1 127.0.0.11:5432 check\n"));
    assert!(!i.complete());
    assert_eq!(parsed(&i).listeners[0].check.path, "/health");
    // A bare `option tcp-check` is a TCP connect: PostgreSQL answers.
    let i = run(&format!(
        "{TIMEOUTS}listen any\n    bind 127.0.0.1:5000\n    option tcp-check\n    server pg1 127.0.0.11:5432 check\n"
    ));
    assert!(i.complete(), "{:?}", i.notes);
    assert_eq!(parsed(&i).listeners[0].check.path, "/health");
}

#[test]
fn http_check_send_keeps_what_option_httpchk_set() {
    // Before: `http-check send hdr ...` reset the request to OPTIONS /, and `hdr NAME VALUE`
    // (three words) shifted meth/uri out of place.
    let listen = |lines: &str| {
        run(&format!("{TIMEOUTS}listen replicas\n    bind 127.0.0.1:5001\n{lines}    server pg1 127.0.0.11:5432 check port 8008\n"))
    };
    let check = |i: &Imported| {
        let c = parsed(i);
        let l = &c.listeners[0];
        (l.check.method.clone(), l.check.path.clone())
    };
    let i = listen("    option httpchk OPTIONS /replica\n    http-check send hdr Host patroni\n");
    assert_eq!(check(&i), ("OPTIONS".to_owned(), "/replica".to_owned()));
    assert!(i.complete(), "{:?}", i.notes);
    let i = listen("    option httpchk\n    http-check send hdr Host patroni meth GET uri /replica\n");
    assert_eq!(check(&i), ("GET".to_owned(), "/replica".to_owned()));
    // The explicit send first, then the option: the option's fields win where it gives them.
    let i = listen("    http-check send meth GET uri /replica ver HTTP/1.1 hdr Host x\n    option httpchk\n");
    assert_eq!(check(&i), ("GET".to_owned(), "/replica".to_owned()));
    let i = listen("    http-check send meth GET\n    option httpchk /master\n");
    assert_eq!(check(&i), ("GET".to_owned(), "/master".to_owned()));
    // A second `option httpchk` replaces the first one whole.
    let i = listen("    option httpchk GET /master\n    option httpchk /replica\n");
    assert_eq!(check(&i), ("OPTIONS".to_owned(), "/replica".to_owned()));
    // Rules without `option httpchk`: HAProxy ignores them (a TCP connect check).
    let i = listen("    http-check send meth GET uri /master\n");
    assert_eq!(check(&i).1, "/health");
}

#[test]
fn a_defaults_section_without_from_starts_from_haproxys_defaults() {
    // Before: the second defaults took the first one's httpchk and on-marked-down.
    let i = run(&format!("{TIMEOUTS}    option httpchk OPTIONS /master\n    default-server inter 3s fall 3 rise 2 on-marked-down shutdown-sessions\nlisten primary\n    bind 127.0.0.1:5000\n    server pg1 127.0.0.11:5432 check port 8008\n{TIMEOUTS}listen replicas\n    bind 127.0.0.1:5001\n    server pg2 127.0.0.12:5432 check port 8008\n"));
    let c = parsed(&i);
    assert!(c.listeners[0].shutdown_sessions);
    assert_eq!(c.listeners[0].check.path, "/master");
    assert!(!c.listeners[1].shutdown_sessions, "{}", i.toml);
    assert_eq!(c.listeners[1].check.path, "/health", "no check option in the second defaults");
}

#[test]
fn the_last_check_option_wins() {
    // Before: the listen's pgsql-check was ignored for the httpchk of its defaults.
    let i = run(&format!("{TIMEOUTS}    option httpchk OPTIONS /master\nlisten primary\n    bind 127.0.0.1:5000\n    server pg1 127.0.0.11:5432 check port 8008\nlisten any\n    bind 127.0.0.1:5001\n    option pgsql-check user haproxy\n    server pg1 127.0.0.11:5432 check\n"));
    assert!(i.complete(), "{:?}", i.notes);
    let c = parsed(&i);
    assert_eq!((c.listeners[0].check.path.as_str(), c.listeners[1].check.path.as_str()), ("/master", "/health"));
    // And the other way round.
    let i = run(&format!("{TIMEOUTS}    option pgsql-check user haproxy\nlisten primary\n    bind 127.0.0.1:5000\n    option httpchk OPTIONS /master\n    server pg1 127.0.0.11:5432 check port 8008\n"));
    assert_eq!(parsed(&i).listeners[0].check.path, "/master");
    // Another protocol's check replaces httpchk too, and is not carried over.
    let i = run(&format!("{TIMEOUTS}    option httpchk OPTIONS /master\nlisten primary\n    bind 127.0.0.1:5000\n    option ssl-hello-chk\n    server pg1 127.0.0.11:5432 check port 8008\n"));
    assert!(unmapped(&i).iter().any(|n| n.line == 9 && n.text.contains("ssl-hello-chk")), "{:?}", i.notes);
    assert_eq!(parsed(&i).listeners[0].check.path, "/health");
}

#[test]
fn use_backend_unless_or_negated_always_routes() {
    // Before: taken as never matching, so the listener served the replicas.
    let front = |rule: &str| {
        run(&format!("{TIMEOUTS}frontend fe\n    bind 127.0.0.1:5000\n    acl is_replica path_beg /replica\n    {rule}\n    default_backend be_replicas\nbackend be_primary\n    option httpchk OPTIONS /master\n    server pg1 127.0.0.11:5432 check port 8008\nbackend be_replicas\n    option httpchk OPTIONS /replica\n    server pg1 127.0.0.11:5432 check port 8008\n"))
    };
    for rule in [
        "use_backend be_primary unless is_replica",
        "use_backend be_primary if !is_replica",
        "use_backend be_primary if ! is_replica",
        "use_backend be_primary",
    ] {
        let i = front(rule);
        assert!(i.complete(), "{rule}: {:?}", i.notes);
        let l = &parsed(&i).listeners[0];
        assert_eq!(l.check.path, "/master", "{rule}");
        assert!(!l.client_target, "{rule}");
    }
    for rule in ["use_backend be_primary if is_replica", "use_backend be_primary unless !is_replica"] {
        let l = &parsed(&front(rule)).listeners[0];
        assert_eq!(l.check.path, "/replica", "{rule}");
    }
    assert!(!front("use_backend be_primary if is_replica || { src 10.0.0.0/8 }").complete());
}

#[test]
fn ca_base_and_crt_base_prefix_relative_paths() {
    // Before: ca-base ignored, ca.pem written as a path relative to pgfront's configuration.
    let server = "server pg1 127.0.0.11:5432 check port 8008 check-ssl verify required ca-file ca.pem crt probe.pem verifyhost pg1";
    let i = run(&format!("global\n    ca-base /etc/haproxy/ca\n    crt-base /etc/haproxy/crt/\n{TIMEOUTS}listen primary\n    bind 127.0.0.1:5000\n    option httpchk OPTIONS /master\n    {server}\n"));
    assert!(i.complete(), "{:?}", i.notes);
    assert!(i.toml.contains("ca = \"/etc/haproxy/ca/ca.pem\", cert = \"/etc/haproxy/crt/probe.pem\""), "{}", i.toml);
    let i = run(&format!(
        "{TIMEOUTS}listen primary\n    bind 127.0.0.1:5000\n    option httpchk OPTIONS /master\n    {server}\n"
    ));
    let n = unmapped(&i);
    assert!(n.len() == 2 && n.iter().all(|n| n.text.contains("working directory")), "{n:?}");
}

#[test]
fn dontlog_normal_is_read_from_the_frontend() {
    // Before: only the backend's (where HAProxy ignores it) was read.
    let text = |fe: &str, be: &str| {
        format!("{TIMEOUTS}frontend fe\n    bind 127.0.0.1:5000\n{fe}    default_backend be\nbackend be\n{be}    option httpchk OPTIONS /master\n    server pg1 127.0.0.11:5432 check port 8008\n")
    };
    let log = |t: &str| parsed(&run(t)).listeners[0].log_sessions;
    use crate::config::LogSessions;
    assert_eq!(log(&text("    option dontlog-normal\n", "")), LogSessions::Errors);
    assert_eq!(log(&text("", "    option dontlog-normal\n")), LogSessions::All);
    assert_eq!(
        log(&format!("{TIMEOUTS}    option dontlog-normal\n{}", &text("", "")[TIMEOUTS.len()..])),
        LogSessions::Errors
    );
    assert_eq!(
        log(&format!(
            "{TIMEOUTS}    option dontlog-normal\n{}",
            &text("    no option dontlog-normal\n", "")[TIMEOUTS.len()..]
        )),
        LogSessions::All
    );
}

#[test]
fn a_stats_backend_behind_a_frontend_is_the_stats_page_and_a_listen_can_be_a_backend() {
    // Before: the stats frontend became a PostgreSQL listener without servers.
    let i = run(&format!("{TIMEOUTS}frontend stats\n    mode http\n    bind 127.0.0.1:8404\n    default_backend stats_be\nbackend stats_be\n    mode http\n    stats enable\n    stats uri /\n    stats auth admin:pw\nlisten primary\n    bind 127.0.0.1:5000\n    option httpchk OPTIONS /master\n    server pg1 127.0.0.11:5432 check port 8008\n"));
    assert!(i.complete(), "{:?}", i.notes);
    let c = parsed(&i);
    assert_eq!(c.listeners.len(), 1);
    let web = c.web.unwrap();
    assert_eq!((web.bind.port(), web.users[0].name.as_str()), (8404, "admin"));
    // Before: "backend primary is not defined".
    let i = run(&format!("{TIMEOUTS}frontend fe\n    bind 127.0.0.1:5000\n    default_backend primary\nlisten primary\n    bind 127.0.0.1:5001\n    option httpchk OPTIONS /master\n    server pg1 127.0.0.11:5432 check port 8008\n"));
    assert!(i.complete(), "{:?}", i.notes);
    let c = parsed(&i);
    assert_eq!(c.listeners.iter().map(|l| l.check.path.as_str()).collect::<Vec<_>>(), ["/master", "/master"]);
}

#[test]
fn values_haproxy_or_pgfront_cannot_take_are_noted_not_written() {
    // Before: written as they were (fall 4000000000, which HAProxy refuses), and maxconn
    // 5000000, which pgfront refuses.
    let i = run(&format!("global\n    maxconn 50000\n{TIMEOUTS}listen primary\n    bind 127.0.0.1:5000\n    retries 4000000000\n    option httpchk OPTIONS /master\n    server pg1 127.0.0.11:5432 check port 8008 fall 4000000000 rise 4000000000 maxconn 5000000 inter 24d\n"));
    let n = unmapped(&i);
    assert!(n.iter().any(|n| n.line == 10 && n.text.contains("retries")), "{n:?}");
    assert_eq!(n.iter().filter(|n| n.line == 12).count(), 2, "fall and rise: {n:?}");
    assert!(!n.iter().any(|n| n.text.contains("not valid")), "{n:?}");
    let l = &parsed(&i).listeners[0];
    assert_eq!((l.retries, l.maxconn), (3, 50000));
    assert!(!i.toml.contains("4000000000"), "{}", i.toml);
}

#[test]
fn two_postgresql_ports_checked_at_one_rest_api_become_two_clusters() {
    // Before: six nodes of one cluster, two per REST API: both claimed leadership and
    // pgfront held every write, with exit 0.
    let servers = |port| {
        (1..=3).map(|n| format!("    server pgnode0{n} 10.0.0.{n}:{port} check port 8008\n")).collect::<String>()
    };
    let i = run(&format!(
        "{TIMEOUTS}listen master\n    bind 10.0.0.1:5000\n    option httpchk OPTIONS /primary\n{}listen replicas\n    bind 10.0.0.1:5001\n    option httpchk OPTIONS /replica\n{}listen master_direct\n    bind 10.0.0.1:6000\n    option httpchk OPTIONS /primary\n{}",
        servers(6432),
        servers(6432),
        servers(5432)
    ));
    assert!(i.complete(), "{:?}", i.notes);
    let c = parsed(&i);
    assert!(c.nodes.is_empty() && c.listeners.is_empty(), "{}", i.toml);
    let shape: Vec<(&str, Vec<&str>, Vec<&str>)> = c
        .clusters
        .iter()
        .map(|k| {
            (
                k.cluster.as_str(),
                k.nodes.iter().map(|n| n.address.as_str()).collect(),
                k.listeners.iter().map(|l| l.name.as_str()).collect(),
            )
        })
        .collect();
    assert_eq!(
        shape,
        [
            ("port-6432", vec!["10.0.0.1:6432", "10.0.0.2:6432", "10.0.0.3:6432"], vec!["master", "replicas"]),
            ("port-5432", vec!["10.0.0.1:5432", "10.0.0.2:5432", "10.0.0.3:5432"], vec!["master_direct"]),
        ]
    );
    for k in &c.clusters {
        let apis: Vec<&str> = k.nodes.iter().map(|n| n.check_address.as_str()).collect();
        assert_eq!(apis, ["10.0.0.1:8008", "10.0.0.2:8008", "10.0.0.3:8008"]);
    }
    // One listen with both ports of a host: the second cannot be a node of its cluster.
    let i = run(&format!("{TIMEOUTS}listen mixed\n    bind 10.0.0.1:5000\n    option httpchk OPTIONS /primary\n    server a 10.0.0.1:6432 check port 8008\n    server b 10.0.0.1:5432 check port 8008\n    server c 10.0.0.2:5432 check port 8008\n"));
    assert!(unmapped(&i).iter().any(|n| n.line == 10 && n.text.contains("left out")), "{:?}", i.notes);
    let c = parsed(&i);
    let nodes: Vec<&str> = c.nodes.iter().map(|n| n.address.as_str()).collect();
    assert_eq!(nodes, ["10.0.0.1:6432", "10.0.0.2:5432"]);
}

#[test]
fn a_role_decided_by_what_cannot_be_carried_is_not_served_to_every_role() {
    // Before: /health (any role) on the agent's port, and GET /patroni -> 200 (any running
    // node) on the master port, with only a note that the agent or expect was not understood.
    let agent = format!("{TIMEOUTS}listen rw\n    bind 127.0.0.1:5000\n    option pgsql-check user haproxy\n    server pg1 10.0.0.1:5432 check agent-check agent-port 5555\n    server pg2 10.0.0.2:5432 check agent-check agent-port 5555\nlisten ro\n    bind 127.0.0.1:5001\n    option httpchk OPTIONS /replica\n    server pg1 10.0.0.1:5432 check port 8008\n");
    let i = run(&agent);
    let c = parsed(&i);
    assert_eq!(c.listeners.iter().map(|l| l.name.as_str()).collect::<Vec<_>>(), ["ro"], "{}", i.toml);
    assert!(unmapped(&i).iter().any(|n| n.line == 9 && n.text.contains("ANY role")), "{:?}", i.notes);
    // With a role check the agent can only take servers out: the listener stays, noted.
    let i = run(&agent.replace("option pgsql-check user haproxy", "option httpchk OPTIONS /master"));
    assert_eq!(parsed(&i).listeners.len(), 2);
    assert!(unmapped(&i).iter().any(|n| n.line == 9 && n.text.contains("agent-check is not carried")), "{:?}", i.notes);
    let expect = format!("{TIMEOUTS}listen master\n    bind 127.0.0.1:5000\n    option httpchk GET /patroni\n    http-check expect string \"role\":\\ \"master\"\n    server n1 10.0.0.1:5432 check port 8008\nlisten replica\n    bind 127.0.0.1:5001\n    option httpchk GET /patroni\n    http-check expect rstring \\\"role\\\":\\ ?\\\"replica\\\"\n    server n1 10.0.0.1:5432 check port 8008\nlisten primary\n    bind 127.0.0.1:5002\n    option httpchk OPTIONS /primary\n    server n1 10.0.0.1:5432 check port 8008\n");
    let i = run(&expect);
    let c = parsed(&i);
    assert_eq!(c.listeners.iter().map(|l| l.name.as_str()).collect::<Vec<_>>(), ["primary"], "{}", i.toml);
    let n = unmapped(&i);
    assert!(n.iter().any(|n| n.line == 9 && n.text.contains("ANY role")), "{n:?}");
    assert!(n.iter().any(|n| n.line == 14 && n.text.contains("ANY role")), "{n:?}");
}

#[test]
fn the_port_of_a_check_that_is_not_http_is_never_written_as_the_rest_apis() {
    // Before: check_port = 5432 (PostgreSQL's port, asked over HTTP: every node DOWN).
    let i = run(&format!("{TIMEOUTS}listen pg\n    bind *:5000\n    option pgsql-check user haproxy\n    server n1 10.0.0.1:6432 check port 5432\n    server n2 10.0.0.2:6432 check port 5432\n"));
    assert!(i.complete(), "{:?}", i.notes);
    let c = parsed(&i);
    assert_eq!(
        c.nodes.iter().map(|n| n.check_address.as_str()).collect::<Vec<_>>(),
        ["10.0.0.1:8008", "10.0.0.2:8008"]
    );
    assert!(i.notes.iter().any(|n| n.text.contains("connected to port 5432")), "{:?}", i.notes);
    // tcp-check rules that talk PostgreSQL on 5432: the same.
    let i = run(&format!("{TIMEOUTS}listen primary\n    bind *:5000\n    option tcp-check\n    tcp-check connect port 5432\n    tcp-check send-binary 00000025\n    tcp-check expect binary 52\n    server n1 10.0.0.1:5432 check\n"));
    assert_eq!(parsed(&i).nodes[0].check_address, "10.0.0.1:8008", "{}", i.toml);
    // tcp-check rules that send an HTTP request: where they connected is the REST API.
    let i = run(&format!("{TIMEOUTS}listen primary\n    bind *:5000\n    option tcp-check\n    tcp-check connect port 8009\n    tcp-check send GET\\ /master\\ HTTP/1.0\\r\\n\\r\\n\n    tcp-check expect string 200\n    server n1 10.0.0.1:5432 check port 5432\n"));
    assert_eq!(parsed(&i).nodes[0].check_address, "10.0.0.1:8009", "{}", i.toml);
}

#[test]
fn stats_page_request_rules_and_its_uri_are_not_dropped_silently() {
    let pg = "listen primary\n    bind 127.0.0.1:5000\n    option httpchk OPTIONS /master\n    server pg1 127.0.0.11:5432 check port 8008\n";
    // Before: complete; the page's source restriction and unknown stats keywords were dropped.
    let i = run(&format!("{TIMEOUTS}listen stats\n    mode http\n    bind *:7000\n    stats enable\n    stats uri /\n    stats auth admin:pw\n    stats admin if TRUE\n    stats http-request deny unless {{ src 10.0.0.0/8 }}\n    stats scope primary\n{pg}"));
    let n = unmapped(&i);
    assert!(n.iter().any(|n| n.line == 13 && n.text.contains("admin page") && n.text.contains("any address")), "{n:?}");
    assert!(n.iter().any(|n| n.line == 14), "stats scope: {n:?}");
    let i = run(&format!("{TIMEOUTS}listen stats\n    mode http\n    bind *:7000\n    http-request deny unless {{ src 10.0.0.0/8 }}\n    stats enable\n    stats uri /stats\n    stats auth admin:pw\n{pg}"));
    let n = unmapped(&i);
    assert_eq!(n.len(), 1, "{n:?}");
    assert!(n[0].line == 9 && n[0].text.contains("every address") && !n[0].text.contains("admin page"), "{n:?}");
    // The URI: HAProxy's default /haproxy?stats, or another one, is not pgfront's.
    for (uri, line) in [("", 6), ("    stats uri /haproxy\n", 10)] {
        let i = run(&format!("{TIMEOUTS}listen stats\n    mode http\n    bind *:7000\n    stats enable\n{uri}    stats auth admin:pw\n{pg}"));
        let n = unmapped(&i);
        assert!(
            n.iter().any(|n| n.line == line && n.text.contains(";csv") && n.text.contains("/;csv")),
            "{uri}: {n:?}"
        );
    }
}

#[test]
fn global_ssl_server_verify_and_the_sni_name_are_what_haproxy_verifies() {
    let ca = lab_tls("ca.crt");
    // Before: ssl-server-verify none was not read: verify = "ca", and a ca-file was asked for.
    let i = run(&format!("global\n    ssl-server-verify none\n{TIMEOUTS}listen primary\n    bind 127.0.0.1:5000\n    option httpchk OPTIONS /master\n    server n1 127.0.0.11:5432 check port 8008 check-ssl\n    server n2 127.0.0.12:5432 check port 8008 check-ssl verify required ca-file {ca}\n"));
    assert!(i.complete(), "{:?}", i.notes);
    let c = parsed(&i);
    let verify: Vec<Verify> = c.nodes.iter().map(|n| n.check_tls.as_deref().unwrap().verify).collect();
    assert_eq!(verify, [Verify::None, Verify::Ca]);
    // Before: verifyhost won over check-sni; HAProxy verifies against the SNI it sent.
    let i = run(&format!("{TIMEOUTS}listen primary\n    bind 127.0.0.1:5000\n    option httpchk OPTIONS /master\n    server n1 127.0.0.11:5432 check port 8008 check-ssl verify required ca-file {ca} verifyhost patroni.internal check-sni n1.example\n"));
    let c = parsed(&i);
    let tls = c.nodes[0].check_tls.as_deref().unwrap();
    assert_eq!((tls.verify, tls.server_name.as_deref()), (Verify::Full, Some("n1.example")));
}

#[test]
fn an_http_acl_frontend_beside_a_check_patroni_mode_cannot_read_gets_no_client_target() {
    // Before: client_target = true with check_mode = "http", which check refuses.
    let i = run(&format!("{TIMEOUTS}frontend pg\n    bind *:5000\n    acl is_rw path_beg /rw\n    use_backend primary if is_rw\n    default_backend replicas\nbackend primary\n    option httpchk OPTIONS /master\n    server n1 10.0.0.1:5432 check port 8008\nbackend replicas\n    option httpchk OPTIONS /replica\n    server n1 10.0.0.1:5432 check port 8008\nlisten custom\n    bind *:5005\n    option httpchk GET /custom-health\n    server n1 10.0.0.1:5432 check port 8008\n"));
    assert!(i.complete(), "{:?}", i.notes);
    let c = parsed(&i);
    assert_eq!(c.global.check_mode, CheckMode::Http);
    assert!(!c.listeners[0].client_target);
    assert!(i.notes.iter().any(|n| n.line == 9 && n.text.contains("left out")), "{:?}", i.notes);
}

#[test]
fn balance_first_takes_servers_by_id() {
    // Before: ids ignored: n1 first, where HAProxy takes n2 (id 1), then n4 (no id: 2), then n1.
    let i = run(&format!("{TIMEOUTS}listen primary\n    bind *:5000\n    option httpchk OPTIONS /master\n    server n1 10.0.0.1:5432 check port 8008\n    server n2 10.0.0.2:5432 check port 8008\n    server n3 10.0.0.3:5432 check port 8008\n    server n4 10.0.0.4:5432 check port 8008\nlisten reads\n    bind *:5001\n    balance first\n    option httpchk OPTIONS /replica\n    server n1 10.0.0.1:5432 check port 8008 id 3\n    server n2 10.0.0.2:5432 check port 8008 id 1\n    server n3 10.0.0.3:5432 check port 8008 id 5\n    server n4 10.0.0.4:5432 check port 8008\n"));
    assert!(i.complete(), "{:?}", i.notes);
    let c = parsed(&i);
    let reads = &c.listeners[1];
    assert_eq!(reads.balance, Balance::First);
    let order: Vec<&str> = reads.servers.iter().map(|&s| c.nodes[s].name.as_str()).collect();
    assert_eq!(order, ["n2", "n4", "n1", "n3"]);
}

#[test]
fn on_marked_down_takes_only_shutdown_sessions() {
    // Before: mark-backup-down and shutdown-backup-sessions were accepted, exit 0.
    for action in ["mark-backup-down", "shutdown-backup-sessions"] {
        let i = run(&format!("{TIMEOUTS}listen primary\n    bind *:5000\n    option httpchk OPTIONS /master\n    server n1 10.0.0.1:5432 check port 8008 on-marked-down {action}\n"));
        assert!(unmapped(&i).iter().any(|n| n.line == 9 && n.text.contains("refuses")), "{action}: {:?}", i.notes);
    }
}

#[test]
fn unequal_weights_are_a_change_of_meaning() {
    // Before: weight ignored with exit 0 whatever the values.
    let listen = |w1: &str, w2: &str| {
        run(&format!("{TIMEOUTS}listen reads\n    bind *:5001\n    option httpchk OPTIONS /replica\n    server n1 10.0.0.1:5432 check port 8008 {w1}\n    server n2 10.0.0.2:5432 check port 8008 {w2}\n"))
    };
    let i = listen("weight 100", "weight 10");
    assert!(unmapped(&i).iter().any(|n| n.text.contains("weights differ")), "{:?}", i.notes);
    let i = listen("weight 10", "");
    assert!(unmapped(&i).iter().any(|n| n.text.contains("weights differ")), "the default is 1: {:?}", i.notes);
    let i = listen("weight 10", "weight 10");
    assert!(i.complete(), "{:?}", i.notes);
}

#[test]
fn no_global_maxconn_is_explained() {
    // Before: pgfront's 4096 used without a word. Explained, not Unmapped: pgfront, like
    // HAProxy, raises the soft descriptor limit to the hard one and holds global maxconn to
    // what the limit holds (src/fds.rs fit_maxconn); only its default ceiling, 4096, differs
    // from HAProxy's (none but the limit), and the note says how to raise it.
    let i = run(&format!("{TIMEOUTS}listen primary\n    bind *:5000\n    option httpchk OPTIONS /master\n    server n1 10.0.0.1:5432 check port 8008\n"));
    assert!(i.complete(), "{:?}", i.notes);
    assert!(
        i.notes
            .iter()
            .any(|n| n.directive == "global maxconn" && n.text.contains("4096") && n.text.contains("[global] maxconn")),
        "{:?}",
        i.notes
    );
    assert_eq!(parsed(&i).global.maxconn, 4096);
}

#[test]
fn pgfronts_redispatch_is_explained_where_haproxy_retried_otherwise() {
    // Before: nothing said, whether HAProxy redispatched or not.
    let listen = |opt: &str, check: &str| {
        run(&format!("{TIMEOUTS}listen l\n    bind *:5001\n{opt}    option httpchk OPTIONS {check}\n    server n1 10.0.0.1:5432 check port 8008\n    server n2 10.0.0.2:5432 check port 8008\n"))
    };
    let said = |i: &Imported| i.notes.iter().find(|n| n.directive == "option redispatch").map(|n| n.text.clone());
    let i = listen("", "/replica");
    assert!(i.complete() && said(&i).is_some_and(|t| t.contains("same server")), "{:?}", i.notes);
    let i = listen("    option redispatch 0\n", "/replica");
    assert!(said(&i).is_some_and(|t| t.contains("same server")), "{:?}", i.notes);
    let i = listen("    option redispatch\n", "/replica");
    assert!(said(&i).is_some_and(|t| t.contains("last retry")), "{:?}", i.notes);
    // As pgfront does, or on a leader port (one server passes at a time): nothing to say.
    assert_eq!(said(&listen("    option redispatch 1\n", "/replica")), None);
    assert_eq!(said(&listen("", "/master")), None);
    let i = listen("    no option redispatch\n", "/replica");
    assert!(i.complete(), "{:?}", i.notes);
}

#[test]
fn a_listen_maxconn_0_and_valued_server_keywords_are_read_as_haproxy_does() {
    // Before: maxconn 0 (HAProxy: the global limit) was noted as a per-listener limit, and
    // `maxqueue 10` gave a second note for `10` as a server parameter of its own.
    let i = run(&format!("{TIMEOUTS}listen primary\n    bind *:5000\n    maxconn 0\n    option httpchk OPTIONS /master\n    server n1 10.0.0.1:5432 check port 8008 maxqueue 10 on-error mark-down\n"));
    let n = unmapped(&i);
    assert!(!n.iter().any(|n| n.line == 8), "maxconn 0: {n:?}");
    assert_eq!(n.iter().filter(|n| n.line == 10).count(), 2, "maxqueue and on-error, not their values: {n:?}");
    assert!(!n.iter().any(|n| n.text.contains("`10`") || n.text.contains("`mark-down`")), "{n:?}");
}
