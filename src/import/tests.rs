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
    assert!(imported.notes.is_empty(), "nothing to explain either: {:?}", imported.notes);
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
    assert!(matches!(import("x.cfg", "global\n  maxconn 1\n", Options::default()), Err(ImportError::NothingToImport)));
}

#[test]
fn passwords_can_be_stored_hashed() {
    let imported = import("t.cfg", &shape("tutorial"), Options { hash_passwords: true }).unwrap();
    assert!(!imported.toml.contains("secret"), "{}", imported.toml);
    let c = Config::parse(std::path::Path::new("t.toml"), &imported.toml).unwrap();
    assert_eq!(c.web.unwrap().users[0].name, "admin");
}
