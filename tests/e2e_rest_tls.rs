//! End to end against a second lab cluster whose Patroni REST APIs serve HTTPS and require
//! a client certificate (`PGFRONT_LAB_REST_TLS=1`, nodes 127.0.0.21-23, the lab CA in
//! lab/tls). `scripts/test` starts it; these tests only read it.
//!
//! pgfront checks with `verify = "full"` and the probe's client certificate: all three
//! listeners route to the right roles. Without the client certificate every check fails
//! with a TLS reason; with a wrong CA for one node, that node fails and the others work.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use pgfront::stats::Snapshot;
use pgfront::Pgfront;
use support::eventually;
use tokio_postgres::NoTls;

const LIVENESS: Duration = Duration::from_secs(90);

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn lab_dir() -> PathBuf {
    std::env::var_os("PGFRONT_TLS_LAB_DIR").map_or_else(|| PathBuf::from("/var/tmp/pgfront-lab2"), PathBuf::from)
}

/// The TLS lab's network prefix (`PGFRONT_LAB_NET`): nodes are NET1..NET3.
fn net() -> String {
    std::env::var("PGFRONT_TLS_LAB_NET").unwrap_or_else(|_| "127.0.0.2".into())
}

fn tls_file(name: &str) -> String {
    repo().join("lab/tls").join(name).display().to_string()
}

/// `scripts/cluster ARGS` on the TLS lab.
fn cluster(args: &[&str]) -> std::process::Output {
    std::process::Command::new(repo().join("scripts/cluster"))
        .args(args)
        .env("PGFRONT_LAB_DIR", lab_dir())
        .env("PGFRONT_LAB_NET", net())
        .env("PGFRONT_LAB_ETCD", std::env::var("PGFRONT_TLS_LAB_ETCD").unwrap_or_else(|_| "127.0.0.1:2479".into()))
        .output()
        .unwrap()
}

async fn healthy() {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let out = tokio::task::spawn_blocking(|| cluster(&["status"])).await.unwrap();
        if out.status.success() {
            let rest = String::from_utf8_lossy(&out.stdout).to_string();
            assert!(rest.contains("https"), "the lab serves its REST APIs over HTTPS:\n{rest}");
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "the TLS lab is not healthy: {:?}", out);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn leader_ip() -> String {
    let out = tokio::task::spawn_blocking(|| cluster(&["leader"])).await.unwrap();
    assert!(out.status.success(), "{out:?}");
    let name = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    format!("{}{}", net(), name.trim_start_matches("node"))
}

/// pgfront in front of the TLS lab; `tls` is [defaults]' check_tls, `node2_tls` node2's own.
fn config(tls: &str, node2_tls: &str) -> String {
    let n = net();
    format!(
        r#"
[global]
hunt_inter = "200ms"

[defaults]
inter = "1s"
fall = 2
rise = 1
check_port = 8008
timeout_check = "3s"
check_tls = {tls}

[[node]]
name = "node1"
address = "{n}1:5432"

[[node]]
name = "node2"
address = "{n}2:5432"
{node2_tls}

[[node]]
name = "node3"
address = "{n}3:5432"

[[listener]]
name = "primary"
bind = "127.0.0.1:0"
balance = "first"
check = {{ path = "/master" }}

[[listener]]
name = "replicas"
bind = "127.0.0.1:0"
check = {{ path = "/replica" }}

[[listener]]
name = "reads"
bind = "127.0.0.1:0"
check = {{ path = "/replica" }}
fallback_to_leader = true
client_target = true

[web]
bind = "127.0.0.1:0"
[[web.user]]
name = "admin"
password = "secret"
role = "admin"
"#
    )
}

fn full_tls() -> String {
    format!(
        r#"{{ verify = "full", ca = "{}", cert = "{}", key = "{}" }}"#,
        tls_file("ca.crt"),
        tls_file("probe-client.crt"),
        tls_file("probe-client.key")
    )
}

fn up(pg: &Pgfront, listener: &str) -> usize {
    pg.shared().runtime().listener(listener).unwrap().servers_up()
}

async fn server_ip(addr: SocketAddr, options: &str) -> (bool, String) {
    let conn = format!(
        "host={} port={} user=postgres password=postgres dbname=postgres sslmode=disable options='{options}'",
        addr.ip(),
        addr.port()
    );
    let (c, connection) = tokio_postgres::connect(&conn, NoTls).await.unwrap();
    tokio::spawn(connection);
    let row = c.query_one("SELECT pg_is_in_recovery(), host(inet_server_addr())", &[]).await.unwrap();
    (row.get(0), row.get(1))
}

/// The server rows of every listener for `node`: (listener, check code, detail).
fn checks_of(pg: &Pgfront, node: &str) -> Vec<(String, Option<&'static str>, String)> {
    let snap = Snapshot::of(pg.shared());
    snap.listeners
        .iter()
        .flat_map(|l| {
            l.servers
                .iter()
                .filter(|s| s.name == node)
                .map(|s| (l.name.clone(), s.check_code, s.check_detail.clone()))
                .collect::<Vec<_>>()
        })
        .collect()
}

fn metrics(web: SocketAddr) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(web).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\nAuthorization: Basic YWRtaW46c2VjcmV0\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[tokio::test]
#[ignore = "needs the TLS lab cluster: run scripts/test"]
async fn checks_over_https_with_a_client_certificate_route_every_listener() {
    healthy().await;
    let pg = support::start(&config(&full_tls(), ""));
    eventually(LIVENESS, "one leader and two replicas admitted over HTTPS", || {
        up(&pg, "primary") == 1 && up(&pg, "replicas") == 2
    })
    .await;
    let leader = leader_ip().await;
    let primary = pg.listener_addr("primary").unwrap();
    let replicas = pg.listener_addr("replicas").unwrap();
    let reads = pg.listener_addr("reads").unwrap();
    assert_eq!(server_ip(primary, "").await, (false, leader.clone()), "5000's role: the leader");
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..4 {
        let (recovery, ip) = server_ip(replicas, "").await;
        assert!(recovery && ip != leader, "5001's role: a replica, got {ip}");
        seen.insert(ip);
    }
    assert_eq!(seen.len(), 2, "round robin over both replicas");
    assert!(server_ip(reads, "").await.0, "5002's role: a replica");
    assert_eq!(server_ip(reads, "-c pgfront.target=primary").await, (false, leader));
    // The certificate's expiry is exported (lab certificates are valid for years).
    let text = tokio::task::spawn_blocking({
        let web = pg.web_addr().unwrap();
        move || metrics(web)
    })
    .await
    .unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with("pgfront_node_check_cert_expiry_timestamp_seconds{node=\"node1\"}"))
        .unwrap_or_else(|| panic!("expiry metric missing:\n{text}"));
    let expiry: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    assert!(expiry > now + 86400.0, "{line}");
    assert!(
        text.contains("pgfront_server_check_status{listener=\"primary\",server=\"node1\",state=\""),
        "check status metric"
    );
    pg.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
#[ignore = "needs the TLS lab cluster: run scripts/test"]
async fn a_probe_without_the_client_certificate_fails_with_a_tls_reason() {
    healthy().await;
    let tls = format!(r#"{{ verify = "full", ca = "{}" }}"#, tls_file("ca.crt"));
    let pg = support::start(&config(&tls, ""));
    eventually(LIVENESS, "every node checked and failed with L6RSP", || {
        ["node1", "node2", "node3"].iter().all(|n| {
            checks_of(&pg, n)
                .iter()
                .all(|(_, code, detail)| *code == Some("L6RSP") && detail.contains("client certificate"))
        })
    })
    .await;
    assert_eq!((up(&pg, "primary"), up(&pg, "replicas")), (0, 0), "nothing is admitted");
    pg.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
#[ignore = "needs the TLS lab cluster: run scripts/test"]
async fn a_wrong_ca_for_one_node_fails_that_node_only() {
    healthy().await;
    // node2 must be a replica here, so the leader stays reachable: pick the node by role.
    let leader = leader_ip().await;
    let wrong = if leader.ends_with('2') { "node3" } else { "node2" };
    let other_ca = {
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.distinguished_name.push(rcgen::DnType::CommonName, "not the lab CA");
        p.self_signed(&rcgen::KeyPair::generate().unwrap()).unwrap().pem()
    };
    let file = std::env::temp_dir().join(format!("pgfront-e2e-wrong-ca-{}.crt", std::process::id()));
    std::fs::write(&file, other_ca).unwrap();
    let node_tls = format!("check_tls = {{ ca = \"{}\" }}", file.display());
    let text = config(&full_tls(), "").replace(
        &format!("name = \"{wrong}\"\naddress = \"{}{}:5432\"\n", net(), &wrong[4..]),
        &format!("name = \"{wrong}\"\naddress = \"{}{}:5432\"\n{node_tls}\n", net(), &wrong[4..]),
    );
    assert!(text.contains(&node_tls), "the node's own check_tls is in the config");
    let pg = support::start(&text);
    std::fs::remove_file(&file).unwrap();
    eventually(LIVENESS, "the other replica and the leader admitted, the wrong-CA node failing", || {
        up(&pg, "primary") == 1
            && up(&pg, "replicas") == 1
            && checks_of(&pg, wrong)
                .iter()
                .all(|(_, code, detail)| *code == Some("L6RSP") && detail.contains("untrusted certificate"))
    })
    .await;
    let replicas = pg.listener_addr("replicas").unwrap();
    let wrong_ip = format!("{}{}", net(), &wrong[4..]);
    for _ in 0..4 {
        let (recovery, ip) = server_ip(replicas, "").await;
        assert!(recovery && ip != wrong_ip, "never the node whose checks fail: {ip}");
    }
    pg.shutdown(Duration::from_secs(5)).await;
}
