//! End to end against the real lab cluster (PostgreSQL 15, Patroni, etcd on 127.0.0.11-13),
//! through pgfront running in-process with conf/local.toml on ephemeral ports.
//!
//! These tests change the cluster (switchover, crash, paused agents), so they run one at a
//! time and each leaves the cluster healthy. `scripts/test` starts the cluster and runs
//! them with `--ignored --test-threads=1`. Deadlines are generous liveness bounds, not
//! speed claims: the failover benchmark measures speed.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pgfront::Pgfront;
use support::eventually;
use tokio_postgres::{Client, NoTls};

const LIVENESS: Duration = Duration::from_secs(90);
const NEEDS_LAB: &str = "needs the lab cluster: run scripts/test";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn lab_dir() -> PathBuf {
    std::env::var_os("PGFRONT_LAB_DIR").map_or_else(|| PathBuf::from("/var/tmp/pgfront-lab"), PathBuf::from)
}

/// Runs `scripts/cluster ARGS` and returns its stdout; panics with its output on failure.
async fn cluster(args: &[&str]) -> String {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new(repo().join("scripts/cluster")).args(&args).output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "scripts/cluster {args:?} failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    })
    .await
    .unwrap()
}

/// Waits until the cluster has one primary and two streaming replicas.
async fn healthy() {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    loop {
        let ok = tokio::task::spawn_blocking(|| {
            std::process::Command::new(repo().join("scripts/cluster"))
                .arg("status")
                .output()
                .map(|o| o.status.success())
        })
        .await
        .unwrap()
        .unwrap_or(false);
        if ok {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "the lab cluster did not become healthy");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn node_ip(name: &str) -> &'static str {
    match name {
        "node1" => "127.0.0.11",
        "node2" => "127.0.0.12",
        "node3" => "127.0.0.13",
        other => panic!("unknown node {other}"),
    }
}

fn node_of(ip: &str) -> String {
    format!("node{}", ip.trim_start_matches("127.0.0.1"))
}

/// conf/local.toml's text, its listeners and web moved to ephemeral ports, and its TLS
/// files (named relative to conf/) made absolute.
fn local_toml() -> String {
    let text = std::fs::read_to_string(repo().join("conf/local.toml")).unwrap();
    let text = text.replace("\"../lab/tls/", &format!("\"{}/lab/tls/", repo().display()));
    ["127.0.0.1:5000", "127.0.0.1:5001", "127.0.0.1:5002", "127.0.0.1:7000"]
        .iter()
        .fold(text, |t, a| t.replace(&format!("\"{a}\""), "\"127.0.0.1:0\""))
}

/// pgfront with conf/local.toml on ephemeral ports.
fn start_pgfront() -> Pgfront {
    support::start(&local_toml())
}

async fn ready(pg: &Pgfront) {
    eventually(LIVENESS, "one leader and two replicas admitted", || {
        let rt = pg.shared().runtime();
        rt.listener("primary").unwrap().servers_up() == 1 && rt.listener("replicas").unwrap().servers_up() == 2
    })
    .await;
}

#[derive(Clone, Copy, Debug)]
enum Tls {
    Disable,
    /// TLS if the server offers it (libpq's default).
    Prefer,
    /// Encrypted, certificate not checked (libpq's sslmode=require).
    Require,
    /// Encrypted, certificate checked against the lab CA and the host name (verify-full).
    VerifyFull,
}

async fn pg_connect(addr: SocketAddr, tls: Tls) -> Result<Client, tokio_postgres::Error> {
    let mode = match tls {
        Tls::Disable => "disable",
        Tls::Prefer => "prefer",
        _ => "require",
    };
    let conn = format!(
        "host={} port={} user=postgres password=postgres dbname=postgres sslmode={mode} connect_timeout=60",
        addr.ip(),
        addr.port()
    );
    let client = match tls {
        Tls::Disable => {
            let (client, connection) = tokio_postgres::connect(&conn, NoTls).await?;
            tokio::spawn(connection);
            client
        }
        Tls::Prefer | Tls::Require | Tls::VerifyFull => {
            let (client, connection) = tokio_postgres::connect(&conn, tls_connector(tls)).await?;
            tokio::spawn(connection);
            client
        }
    };
    Ok(client)
}

/// An error as an operator would want it read: SQLSTATE and message for server errors,
/// the whole cause chain otherwise.
fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{} {}: {}", db.severity(), db.code().code(), db.message());
    }
    let mut s = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        s.push_str(&format!(": {c}"));
        cause = c.source();
    }
    s
}

/// (in recovery, server address) of a session.
async fn whereami(c: &Client) -> Result<(bool, String), tokio_postgres::Error> {
    let row = c.query_one("SELECT pg_is_in_recovery(), host(inet_server_addr())", &[]).await?;
    Ok((row.get(0), row.get(1)))
}

fn tls_connector(tls: Tls) -> tokio_postgres_rustls::MakeRustlsConnect {
    let config = match tls {
        Tls::VerifyFull => {
            use rustls::pki_types::pem::PemObject;
            let mut roots = rustls::RootCertStore::empty();
            for cert in rustls::pki_types::CertificateDer::pem_file_iter(lab_dir().join("ca.crt")).unwrap() {
                roots.add(cert.unwrap()).unwrap();
            }
            rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth()
        }
        // sslmode=require: encryption without checking who answers.
        _ => pgfront::tls::client_config_without_verification(),
    };
    tokio_postgres_rustls::MakeRustlsConnect::new(config)
}

#[tokio::test]
#[ignore = "needs the lab cluster: run scripts/test"]
async fn ports_land_on_the_right_roles_in_plain_text_and_tls() {
    let _ = NEEDS_LAB;
    healthy().await;
    let pg = start_pgfront();
    ready(&pg).await;
    let primary = pg.listener_addr("primary").unwrap();
    let replicas = pg.listener_addr("replicas").unwrap();
    let reads = pg.listener_addr("reads").unwrap();
    for tls in [Tls::Disable, Tls::Prefer, Tls::Require, Tls::VerifyFull] {
        let c = pg_connect(primary, tls).await.unwrap_or_else(|e| panic!("{tls:?}: {e}"));
        let (recovery, _) = whereami(&c).await.unwrap();
        assert!(!recovery, "5000 with {tls:?} landed on a replica");
        let mut seen = Vec::new();
        for _ in 0..4 {
            let c = pg_connect(replicas, tls).await.unwrap_or_else(|e| panic!("{tls:?}: {e}"));
            let (recovery, addr) = whereami(&c).await.unwrap();
            assert!(recovery, "5001 with {tls:?} landed on the leader");
            seen.push(addr);
        }
        for pair in seen.windows(2) {
            assert_ne!(pair[0], pair[1], "5001 alternates between both replicas: {seen:?}");
        }
        let c = pg_connect(reads, tls).await.unwrap_or_else(|e| panic!("{tls:?}: {e}"));
        assert!(whereami(&c).await.unwrap().0, "5002 serves reads from a replica");
        // conf/local.toml terminates TLS (verify-full above checked pgfront's certificate
        // against the lab CA) and speaks plain text to PostgreSQL on loopback.
        assert!(!server_ssl(&c).await, "{tls:?}: TLS ends at pgfront");
    }
    pg.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
#[ignore = "needs the lab cluster: run scripts/test"]
async fn a_restarted_pgfront_sends_nothing_to_the_wrong_role() {
    healthy().await;
    for _ in 0..2 {
        let pg = start_pgfront();
        let primary = pg.listener_addr("primary").unwrap();
        let replicas = pg.listener_addr("replicas").unwrap();
        // Connect at once, before any check has passed: sessions wait, then land right.
        let mut tasks = Vec::new();
        for i in 0..10 {
            let (addr, want_recovery) = if i % 2 == 0 { (primary, false) } else { (replicas, true) };
            tasks.push(tokio::spawn(async move {
                let c = pg_connect(addr, Tls::Disable).await.expect("connects after the checks pass");
                let (recovery, server) = whereami(&c).await.unwrap();
                assert_eq!(recovery, want_recovery, "a session reached {server} of the wrong role");
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        pg.shutdown(Duration::from_secs(5)).await;
    }
}

/// Writes through 5000 every 50 ms, reconnecting on error, until stopped.
struct Writer {
    stop: Arc<AtomicBool>,
    commits: Arc<Mutex<Vec<(tokio::time::Instant, String)>>>,
    errors: Arc<Mutex<Vec<String>>>,
    read_only: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Writer {
    fn start(addr: SocketAddr) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let commits = Arc::new(Mutex::new(Vec::new()));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let read_only = Arc::new(AtomicU64::new(0));
        let (s, c, e, r) = (stop.clone(), commits.clone(), errors.clone(), read_only.clone());
        let task = tokio::spawn(async move {
            let mut client: Option<Client> = None;
            while !s.load(Ordering::SeqCst) {
                if client.as_ref().is_none_or(|c| c.is_closed()) {
                    client = pg_connect(addr, Tls::Disable)
                        .await
                        .map_err(|err| e.lock().unwrap().push(err.to_string()))
                        .ok();
                }
                if let Some(cl) = &client {
                    match cl
                        .query_one(
                            "INSERT INTO pgfront_e2e(via) VALUES ('5000') RETURNING host(inet_server_addr())",
                            &[],
                        )
                        .await
                    {
                        Ok(row) => c.lock().unwrap().push((tokio::time::Instant::now(), row.get::<_, String>(0))),
                        Err(err) => {
                            let text = describe(&err);
                            if text.contains("read-only") {
                                r.fetch_add(1, Ordering::SeqCst);
                            }
                            e.lock().unwrap().push(text);
                            client = None;
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        Writer { stop, commits, errors, read_only, task }
    }

    fn committed_on(&self, ip: &str) -> bool {
        self.commits.lock().unwrap().iter().any(|(_, a)| a == ip)
    }

    async fn finish(self) -> (usize, Vec<String>, u64) {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.unwrap();
        let n = self.commits.lock().unwrap().len();
        let errors = self.errors.lock().unwrap().clone();
        (n, errors, self.read_only.load(Ordering::SeqCst))
    }
}

async fn create_table(primary: SocketAddr) {
    let c = pg_connect(primary, Tls::Disable).await.unwrap();
    c.batch_execute(
        "CREATE TABLE IF NOT EXISTS pgfront_e2e(id bigserial PRIMARY KEY, at timestamptz DEFAULT now(), via text)",
    )
    .await
    .unwrap();
}

/// Opens a new session through `addr` every 100 ms, counting failed connects, sessions cut
/// right after connecting (established on the old leader just before its demotion), and
/// sessions that land on a node in recovery.
struct Connector {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<ConnectorReport>,
}

#[derive(Debug, Default)]
struct ConnectorReport {
    ok: u64,
    connect_errors: Vec<String>,
    cut_after_connect: Vec<String>,
    wrong_role: u64,
}

impl Connector {
    fn start(addr: SocketAddr) -> Connector {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let task = tokio::spawn(async move {
            let mut report = ConnectorReport::default();
            while !s.load(Ordering::SeqCst) {
                // libpq's default sslmode=prefer: TLS with pgfront, which terminates it on
                // 5000, so a demoting leader's 57P03 is seen and held for TLS clients too.
                let attempt = tokio::spawn(async move {
                    let c = pg_connect(addr, Tls::Prefer).await.map_err(|e| (true, describe(&e)))?;
                    whereami(&c).await.map_err(|e| (false, describe(&e)))
                });
                match attempt.await.unwrap() {
                    Ok((false, _)) => report.ok += 1,
                    Ok((true, _)) => report.wrong_role += 1,
                    Err((true, e)) => report.connect_errors.push(e),
                    Err((false, e)) => report.cut_after_connect.push(e),
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            report
        });
        Connector { stop, task }
    }

    async fn finish(self) -> ConnectorReport {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.unwrap()
    }
}

#[tokio::test]
#[ignore = "needs the lab cluster: run scripts/test"]
async fn a_switchover_moves_writes_to_the_new_leader() {
    healthy().await;
    let pg = start_pgfront();
    ready(&pg).await;
    let primary = pg.listener_addr("primary").unwrap();
    create_table(primary).await;
    let old_session = pg_connect(primary, Tls::Disable).await.unwrap();
    let (_, old_ip) = whereami(&old_session).await.unwrap();
    let writer = Writer::start(primary);
    eventually(LIVENESS, "writer commits before the switchover", || writer.committed_on(&old_ip)).await;
    // Never two write targets: sample the leader listener throughout.
    let most_up = Arc::new(AtomicU64::new(0));
    let watching = Arc::new(AtomicBool::new(true));
    let watch = {
        let (rt, most_up, watching) = (pg.shared().clone(), most_up.clone(), watching.clone());
        tokio::spawn(async move {
            while watching.load(Ordering::SeqCst) {
                let n = rt.runtime().listener("primary").unwrap().servers_up() as u64;
                most_up.fetch_max(n, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let connector = Connector::start(primary);

    cluster(&["switchover"]).await;
    let new_leader = cluster(&["leader"]).await.trim().to_owned();
    let new_ip = node_ip(&new_leader);
    assert_ne!(new_ip, old_ip, "the switchover changed the leader");

    // The session on the old leader was closed (by pgfront's mark-down or by Patroni's demotion).
    let deadline = tokio::time::Instant::now() + LIVENESS;
    while old_session.simple_query("SELECT 1").await.is_ok() {
        assert!(tokio::time::Instant::now() < deadline, "session to the old leader stays open");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // New sessions reach the new leader, and the writer keeps committing there.
    eventually(LIVENESS, "writer commits on the new leader", || writer.committed_on(new_ip)).await;
    let c = pg_connect(primary, Tls::Disable).await.unwrap();
    assert_eq!(whereami(&c).await.unwrap(), (false, new_ip.to_owned()));
    let (commits, errors, read_only) = writer.finish().await;
    let report = connector.finish().await;
    watching.store(false, Ordering::SeqCst);
    watch.await.unwrap();
    eprintln!("switchover: writer {commits} commits, errors {errors:?}; connector {report:?}");
    assert_eq!(read_only, 0, "no write reached a read-only node: {errors:?}");
    assert_eq!(report.wrong_role, 0, "no new write session landed on a node in recovery");
    // Clients connecting during the switchover wait instead of failing. The one exception
    // no proxy can hide: a client whose authentication was under way on the old leader at
    // the instant PostgreSQL began shutting down is closed by PostgreSQL itself (an
    // authentication exchange cannot be replayed on another server). pgfront itself never
    // refuses one (no 57P03, 08006 or timeout from pgfront).
    let from_server = |e: &String| e == "connection closed" || e.contains("57P01");
    assert!(
        report.connect_errors.len() <= 1 && report.connect_errors.iter().all(from_server),
        "clients connecting during the switchover wait instead of failing: {report:?}"
    );
    assert!(
        report.cut_after_connect.len() <= 2,
        "at most the sessions opened just before the demotion are cut: {report:?}"
    );
    assert_eq!(most_up.load(Ordering::SeqCst), 1, "at most one write target at any instant");
    healthy().await;
    pg.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
#[ignore = "needs the lab cluster: run scripts/test"]
async fn a_crashed_leader_is_followed() {
    healthy().await;
    let pg = start_pgfront();
    ready(&pg).await;
    let primary = pg.listener_addr("primary").unwrap();
    let old = cluster(&["leader"]).await.trim().to_owned();
    cluster(&["kill", &old]).await;
    // Keep trying through 5000 until a session lands on a new, writable leader.
    let deadline = tokio::time::Instant::now() + LIVENESS;
    let new_ip = loop {
        if let Ok(c) = pg_connect(primary, Tls::Disable).await {
            if let Ok((false, ip)) = whereami(&c).await {
                if ip != node_ip(&old) {
                    break ip;
                }
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "no new leader through 5000");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(cluster(&["leader"]).await.trim(), node_of(&new_ip));
    cluster(&["start", &old]).await;
    healthy().await;
    pg.shutdown(Duration::from_secs(5)).await;
}

/// Pauses a node's Patroni agent (its REST API stops answering; PostgreSQL keeps running).
fn pause_agent(node: &str, pause: bool) {
    let pid = std::fs::read_to_string(lab_dir().join(node).join("patroni.pid")).unwrap();
    let sig = if pause { "-STOP" } else { "-CONT" };
    let ok = std::process::Command::new("kill").args([sig, pid.trim()]).status().unwrap().success();
    assert!(ok, "kill {sig} {pid}");
}

#[tokio::test]
#[ignore = "needs the lab cluster: run scripts/test"]
async fn a_replica_whose_rest_stops_answering_leaves_the_rotation() {
    healthy().await;
    let pg = start_pgfront();
    ready(&pg).await;
    let replicas = pg.listener_addr("replicas").unwrap();
    let session = pg_connect(replicas, Tls::Disable).await.unwrap();
    let (_, ip) = whereami(&session).await.unwrap();
    let victim = node_of(&ip);
    pause_agent(&victim, true);
    // Within inter x fall + fall x timeout check (about 24 s with the reference values).
    let deadline = tokio::time::Instant::now() + LIVENESS;
    while session.simple_query("SELECT 1").await.is_ok() {
        if tokio::time::Instant::now() > deadline {
            pause_agent(&victim, false);
            panic!("the session on {victim} was not cut");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut landed = Vec::new();
    for _ in 0..4 {
        let c = pg_connect(replicas, Tls::Disable).await.unwrap();
        landed.push(whereami(&c).await.unwrap().1);
    }
    pause_agent(&victim, false);
    assert!(landed.iter().all(|a| *a != ip), "{victim} still in rotation: {landed:?}");
    // It comes back once its agent answers again.
    let deadline = tokio::time::Instant::now() + LIVENESS;
    loop {
        let c = pg_connect(replicas, Tls::Disable).await.unwrap();
        if whereami(&c).await.unwrap().1 == ip {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{victim} did not come back");
    }
    healthy().await;
    pg.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
#[ignore = "needs the lab cluster: run scripts/test"]
async fn cancels_through_the_round_robin_port_reach_the_right_server() {
    healthy().await;
    let pg = start_pgfront();
    ready(&pg).await;
    // conf/local.toml terminates TLS on every listener, so pgfront reads the BackendKeyData
    // of plain and TLS sessions alike, and a cancel, in plain text or inside TLS (as
    // tokio-postgres, asyncpg and libpq 17 send it for a TLS session), goes straight to
    // the session's server.
    for name in ["replicas", "reads"] {
        let addr = pg.listener_addr(name).unwrap();
        for (round, tls) in [Tls::Disable, Tls::Require].into_iter().cycle().take(8).enumerate() {
            let c = pg_connect(addr, tls).await.unwrap();
            assert!(!pg.shared().cancel_keys.is_empty(), "{name} {tls:?}: the session's cancel key is known");
            let (_, ip) = whereami(&c).await.unwrap();
            let pid: i32 = c.query_one("SELECT pg_backend_pid()", &[]).await.unwrap().get(0);
            let token = c.cancel_token();
            let sleeper = tokio::spawn(async move {
                let started = tokio::time::Instant::now();
                let r = c.simple_query("SELECT pg_sleep(5)").await;
                (r, started.elapsed())
            });
            // In every other pair of rounds another client connects in between, moving the
            // round robin on: a cancel routed like a session would reach the other replica
            // in half the rounds.
            let mut others = Vec::new();
            if (round / 2) % 2 == 1 {
                let other = pg_connect(addr, tls).await.unwrap();
                whereami(&other).await.unwrap();
                others.push(other);
            }
            // Cancel once the query is running, as its server reports it.
            until_active(&ip, pid).await;
            match tls {
                Tls::Disable => token.cancel_query(NoTls).await.unwrap(),
                _ => token.cancel_query(tls_connector(tls)).await.unwrap(),
            }
            let (result, took) = sleeper.await.unwrap();
            let err = result.expect_err("the query was cancelled, not completed");
            assert_eq!(
                err.code(),
                Some(&tokio_postgres::error::SqlState::QUERY_CANCELED),
                "{name} round {round} {tls:?}: {}",
                describe(&err)
            );
            assert!(
                took < Duration::from_secs(5),
                "{name} round {round}: cancelled before pg_sleep(5) ended ({took:?})"
            );
        }
    }
    eventually(LIVENESS, "keys unregistered when sessions end", || pg.shared().cancel_keys.is_empty()).await;
    pg.shutdown(Duration::from_secs(5)).await;
}

/// Waits until backend `pid` on the server at `ip` runs a query, asked directly.
async fn until_active(ip: &str, pid: i32) {
    let addr: SocketAddr = format!("{ip}:5432").parse().unwrap();
    let direct = pg_connect(addr, Tls::Disable).await.unwrap();
    let deadline = tokio::time::Instant::now() + LIVENESS;
    loop {
        let q = "SELECT count(*) FROM pg_stat_activity WHERE pid = $1 AND state = 'active'";
        let n: i64 = direct.query_one(q, &[&pid]).await.unwrap().get(0);
        if n == 1 {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "backend {pid} on {ip} never ran its query");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn pg_connect_with(addr: SocketAddr, tls: Tls, options: &str) -> Client {
    pg_connect_extra(addr, tls, options, "").await
}

/// Connects with `options` and further connection-string settings `extra`.
async fn pg_connect_extra(addr: SocketAddr, tls: Tls, options: &str, extra: &str) -> Client {
    let mode = if matches!(tls, Tls::Disable) { "disable" } else { "require" };
    let conn = format!(
        "host={} port={} user=postgres password=postgres dbname=postgres sslmode={mode} options='{options}' {extra}",
        addr.ip(),
        addr.port()
    );
    if matches!(tls, Tls::Disable) {
        let (client, connection) = tokio_postgres::connect(&conn, NoTls).await.unwrap();
        tokio::spawn(connection);
        client
    } else {
        let (client, connection) = tokio_postgres::connect(&conn, tls_connector(tls)).await.unwrap();
        tokio::spawn(connection);
        client
    }
}

#[tokio::test]
#[ignore = "needs the lab cluster: run scripts/test"]
async fn the_reads_port_serves_the_primary_on_request() {
    healthy().await;
    let pg = start_pgfront();
    ready(&pg).await;
    let reads = pg.listener_addr("reads").unwrap();
    for _ in 0..3 {
        let c = pg_connect_with(reads, Tls::Disable, "-c pgfront.target=primary").await;
        assert!(!whereami(&c).await.unwrap().0, "pgfront.target=primary lands on the leader");
        // The server accepted the placeholder setting unchanged.
        let v: String = c.query_one("SHOW pgfront.target", &[]).await.unwrap().get(0);
        assert_eq!(v, "primary");
        let c = pg_connect_with(reads, Tls::Disable, "-c pgfront.target=replica").await;
        assert!(whereami(&c).await.unwrap().0);
        let c = pg_connect(reads, Tls::Disable).await.unwrap();
        assert!(whereami(&c).await.unwrap().0, "without a target: a replica");
    }
    // Read as PostgreSQL reads it (before, these landed on a replica while the session's
    // own setting said primary): the name without case, flags run together.
    for options in ["-c PGFRONT.TARGET=primary", "-ec pgfront.target=primary"] {
        let c = pg_connect_with(reads, Tls::Disable, options).await;
        let v: String = c.query_one("SHOW pgfront.target", &[]).await.unwrap().get(0);
        assert_eq!(v, "primary", "{options}");
        assert!(!whereami(&c).await.unwrap().0, "{options} lands on the leader");
    }
    // conf/local.toml terminates TLS on 5002: a TLS client's parameters are read too.
    let c = pg_connect_with(reads, Tls::Require, "-c pgfront.target=primary").await;
    assert!(!whereami(&c).await.unwrap().0, "a TLS client asking for the primary lands on the leader");
    let c = pg_connect_with(reads, Tls::Require, "").await;
    assert!(whereami(&c).await.unwrap().0, "a TLS client without a target: a replica");
    pg.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
#[ignore = "needs the lab cluster: run scripts/test"]
async fn the_dashboard_renders_in_a_real_browser() {
    healthy().await;
    let pg = start_pgfront();
    ready(&pg).await;
    let url = format!("http://{}/", pg.web_addr().unwrap());
    let shot = repo().join("target/dashboard.png");
    let shot_arg = shot.clone();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(repo().join("scripts/browser-check"))
            .args([url.as_str(), "admin", "secret", shot_arg.to_str().unwrap()])
            .env("BROWSER_CHECK_WINDOW", "1900,1600")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(out.status.success(), "browser-check: {}", String::from_utf8_lossy(&out.stderr));
    let dom = String::from_utf8_lossy(&out.stdout);
    let leader = cluster(&["leader"]).await.trim().to_owned();
    for node in ["node1", "node2", "node3"] {
        let role = if node == leader { "primary (leader)" } else { "replica" };
        let row = dom
            .lines()
            .find(|l| l.contains(&format!(">{node}<")) && l.contains("<td class=\"l\">") && l.contains(role));
        assert!(row.is_some(), "the cluster table shows {node} as {role}");
    }
    assert!(dom.contains(&format!("Leader: <b>{leader}</b>")));
    assert!(
        std::fs::metadata(&shot).map(|m| m.len() > 10_000).unwrap_or(false),
        "screenshot written to {}",
        shot.display()
    );
    eprintln!("dashboard screenshot: {}", shot.display());
    pg.shutdown(Duration::from_secs(5)).await;
}

/// conf/local.toml (every listener terminates TLS with the lab CA's certificate for
/// 127.0.0.1), connecting to PostgreSQL as `server` says.
fn start_pgfront_tls(server: &str) -> Pgfront {
    let text = local_toml();
    let server = format!("server = \"{server}\", server_ca = \"{}\" }}", lab_dir().join("ca.crt").display());
    assert!(text.contains("server = \"disable\" }"), "conf/local.toml terminates TLS");
    support::start(&text.replace("server = \"disable\" }", &server))
}

async fn server_ssl(c: &Client) -> bool {
    c.query_one("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[]).await.unwrap().get(0)
}

#[tokio::test]
#[ignore = "needs the lab cluster: run scripts/test"]
async fn a_tls_terminating_listener_routes_tls_clients_by_parameter() {
    healthy().await;
    let pg = start_pgfront_tls("disable");
    ready(&pg).await;
    let reads = pg.listener_addr("reads").unwrap();
    for _ in 0..3 {
        // verify-full against pgfront's certificate; the target is read inside TLS; SCRAM
        // works because channel binding is not offered through a terminator.
        let c = pg_connect_with(reads, Tls::VerifyFull, "-c pgfront.target=primary").await;
        assert!(!whereami(&c).await.unwrap().0, "TLS client with pgfront.target=primary lands on the leader");
        assert!(!server_ssl(&c).await, "server = disable: TLS ends at pgfront");
        let c = pg_connect_with(reads, Tls::Require, "").await;
        assert!(whereami(&c).await.unwrap().0, "no target: a replica");
    }
    // Plain-text clients are still served on the same port.
    let c = pg_connect(reads, Tls::Disable).await.unwrap();
    assert!(whereami(&c).await.unwrap().0);
    pg.shutdown(Duration::from_secs(5)).await;

    // TLS to PostgreSQL as well (verify-full against the lab CA). A SCRAM client that
    // supports channel binding cannot log in through any TLS terminator when the server
    // side is TLS too (documented); one that does not bind (channel_binding=disable) can.
    let pg = start_pgfront_tls("verify-full");
    ready(&pg).await;
    let reads = pg.listener_addr("reads").unwrap();
    let c = pg_connect_extra(reads, Tls::VerifyFull, "-c pgfront.target=primary", "channel_binding=disable").await;
    assert!(!whereami(&c).await.unwrap().0);
    assert!(server_ssl(&c).await, "server = verify-full: pgfront to PostgreSQL is encrypted");
    pg.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
#[ignore = "needs the lab cluster: run scripts/test"]
async fn a_stopped_replica_leaves_the_rotation_and_comes_back() {
    healthy().await;
    let pg = start_pgfront();
    ready(&pg).await;
    let replicas = pg.listener_addr("replicas").unwrap();
    let session = pg_connect(replicas, Tls::Disable).await.unwrap();
    let (_, ip) = whereami(&session).await.unwrap();
    let victim = node_of(&ip);
    cluster(&["stop", &victim]).await;
    let deadline = tokio::time::Instant::now() + LIVENESS;
    while session.simple_query("SELECT 1").await.is_ok() {
        assert!(tokio::time::Instant::now() < deadline, "the session on the stopped {victim} stays open");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eventually(LIVENESS, "the stopped replica leaves the rotation", || {
        pg.shared().runtime().listener("replicas").unwrap().servers_up() == 1
    })
    .await;
    for _ in 0..4 {
        let c = pg_connect(replicas, Tls::Disable).await.unwrap();
        assert_ne!(whereami(&c).await.unwrap().1, ip, "{victim} is stopped");
    }
    cluster(&["start", &victim]).await;
    healthy().await;
    let deadline = tokio::time::Instant::now() + LIVENESS;
    loop {
        let c = pg_connect(replicas, Tls::Disable).await.unwrap();
        if whereami(&c).await.unwrap().1 == ip {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{victim} did not come back");
    }
    pg.shutdown(Duration::from_secs(5)).await;
}

/// An HAProxy started from a configuration text, stopped on drop.
struct HaproxyProcess(std::process::Child, PathBuf);

impl Drop for HaproxyProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        let _ = std::fs::remove_file(&self.1);
    }
}

fn start_haproxy(name: &str, text: &str) -> HaproxyProcess {
    let path = std::env::temp_dir().join(format!("pgfront-import-{name}-{}.cfg", std::process::id()));
    std::fs::write(&path, text).unwrap();
    let child = std::process::Command::new("haproxy")
        .args(["-db", "-f"])
        .arg(&path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("haproxy is installed by scripts/deps");
    HaproxyProcess(child, path)
}

/// Which role a check admits: Some(true) the primary, Some(false) a replica, None any.
fn role_of(path: &str) -> Option<bool> {
    match path {
        "/" | "/master" | "/primary" | "/leader" => Some(true),
        p if p.starts_with("/replica") => Some(false),
        _ => None,
    }
}

#[tokio::test]
#[ignore = "needs the lab cluster: run scripts/test"]
async fn imported_haproxy_configs_send_each_port_to_the_same_role_as_haproxy() {
    healthy().await;
    let shapes = ["tutorial", "patroni-template", "frontend-backend", "pgsql-check"];
    for (i, shape) in shapes.iter().enumerate() {
        let original = std::fs::read_to_string(repo().join(format!("tests/haproxy/{shape}.cfg")))
            .unwrap()
            .replace("@NODE1@", node_ip("node1"))
            .replace("@NODE2@", node_ip("node2"))
            .replace("@NODE3@", node_ip("node3"));
        // pgfront from the converted file, its ports moved to ephemeral ones.
        let imported = pgfront::import::import(shape, &original, Default::default()).unwrap();
        let mut text = imported.toml.clone();
        for port in ["*:5000", "*:5001", "*:5002", "*:7000"] {
            text = text.replace(&format!("\"{port}\""), "\"127.0.0.1:0\"");
        }
        let pg = support::start(&text);
        // HAProxy from the original, on its own ports, in the foreground.
        let base = 16000 + 10 * i as u16;
        let mut hap = original.replace("    daemon\n", "").replace("    log /dev/log local0\n", "");
        for n in 0..3u16 {
            hap = hap.replace(&format!("bind *:500{n}"), &format!("bind 127.0.0.1:{}", base + n));
        }
        hap = hap.replace("bind *:7000", &format!("bind 127.0.0.1:{}", base + 9));
        hap = hap.replace("user haproxy", "").replace("group haproxy", "");
        let _haproxy = start_haproxy(shape, &hap);
        let config = pgfront::Config::parse(Path::new("imported.toml"), &text).unwrap();
        let what = format!("{shape}: every imported listener has a server up");
        eventually(LIVENESS, &what, || {
            let rt = pg.shared().runtime();
            rt.listeners.iter().all(|l| l.servers_up() >= 1)
        })
        .await;
        for (n, l) in config.listeners.iter().enumerate() {
            let want = role_of(&l.check.path);
            let ours = pg.listener_addr(&l.name).unwrap();
            let theirs: SocketAddr = format!("127.0.0.1:{}", base + n as u16).parse().unwrap();
            // HAProxy starts servers UP before checking them: wait for its checks to settle.
            let deadline = tokio::time::Instant::now() + LIVENESS;
            let haproxy_role = loop {
                let mut roles = Vec::new();
                for _ in 0..3 {
                    if let Ok(c) = pg_connect(theirs, Tls::Disable).await {
                        if let Ok((recovery, _)) = whereami(&c).await {
                            roles.push(!recovery);
                        }
                    }
                }
                // Role checks: every session on the role; /health: any running node.
                if roles.len() == 3 && want.is_none_or(|w| roles.iter().all(|r| *r == w)) {
                    break roles[0];
                }
                assert!(tokio::time::Instant::now() < deadline, "{shape}/{}: HAProxy never settled: {roles:?}", l.name);
                tokio::time::sleep(Duration::from_millis(500)).await;
            };
            for _ in 0..3 {
                let c = pg_connect(ours, Tls::Disable).await.unwrap_or_else(|e| panic!("{shape}/{}: {e}", l.name));
                let primary = !whereami(&c).await.unwrap().0;
                // A role-agnostic check (/health) admits any running node, as HAProxy does.
                if let Some(w) = want {
                    assert_eq!(primary, w, "{shape}/{}: pgfront's port lands on the wrong role", l.name);
                    assert_eq!(primary, haproxy_role, "{shape}/{}: pgfront and HAProxy disagree", l.name);
                }
            }
        }
        pg.shutdown(Duration::from_secs(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the lab cluster: run scripts/test"]
async fn pgfront_status_prints_the_demo_cluster() {
    healthy().await;
    let pg = start_pgfront();
    ready(&pg).await;
    let url = format!("http://{}", pg.web_addr().unwrap());
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_pgfront"))
            .args(["status", "--url", &url, "--user", "admin"])
            .env("PGFRONT_PASSWORD", "secret")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}{}", String::from_utf8_lossy(&out.stderr));
    for n in ["node1", "node2", "node3", "(leader)", "listener primary", "listener replicas", "listener reads"] {
        assert!(text.contains(n), "status lacks {n}:\n{text}");
    }
    pg.shutdown(Duration::from_secs(5)).await;
}
