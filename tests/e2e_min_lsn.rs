//! Read-your-writes end to end against a real lab cluster (PostgreSQL 15, Patroni, etcd),
//! through pgfront running in-process with conf/local.toml on ephemeral ports.
//!
//! The replicas apply commits late (`recovery_min_apply_delay`, set through Patroni's
//! dynamic configuration); writers commit through the leader listener and at once read
//! their row through the reads listener with `pgfront.min_lsn` = `pg_current_wal_lsn()`
//! after the commit: no read may miss its row, and most must be served by replicas. The
//! control, the same loop without `min_lsn`, must miss. A replica whose replay is paused
//! must never serve such a read. The delay is removed and replay resumed on every exit
//! path (a guard's `Drop`, which also runs when an assertion fails).
//!
//! Against the default lab (127.0.0.11-13) by default; another lab through the same
//! variables as `scripts/cluster` (`PGFRONT_LAB_NET`, e.g. 127.0.0.3 for nodes .31-.33).
//! `PGFRONT_MIN_LSN_PAIRS` (default 2000) and `PGFRONT_MIN_LSN_SECONDS` (default 120)
//! bound the main loop. `scripts/test` runs it with `--ignored --test-threads=1`.

mod support;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pgfront::Pgfront;
use support::eventually;
use tokio::time::Instant;
use tokio_postgres::{Client, NoTls};

const LIVENESS: Duration = Duration::from_secs(90);
/// How late the replicas apply each commit.
const APPLY_DELAY: &str = "50ms";
const WORKERS: u64 = 4;
const TABLE: &str = "pgfront_read_your_writes";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The lab's address prefix: nodes are NET1..NET3.
fn net() -> String {
    std::env::var("PGFRONT_LAB_NET").unwrap_or_else(|_| "127.0.0.1".into())
}

fn node_ip(i: usize) -> String {
    format!("{}{i}", net())
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// conf/local.toml on ephemeral ports, its nodes moved to this lab's addresses.
fn config() -> String {
    let mut text = std::fs::read_to_string(repo().join("conf/local.toml")).unwrap();
    text = text.replace("\"../lab/tls/", &format!("\"{}/lab/tls/", repo().display()));
    for a in ["127.0.0.1:5000", "127.0.0.1:5001", "127.0.0.1:5002", "127.0.0.1:7000"] {
        text = text.replace(&format!("\"{a}\""), "\"127.0.0.1:0\"");
    }
    for i in 1..=3 {
        text = text.replace(&format!("\"127.0.0.1{i}:5432\""), &format!("\"{}:5432\"", node_ip(i)));
    }
    text
}

/// Runs SQL on a node directly (psql, plain text), returning its unaligned output.
fn psql(ip: &str, sql: &str) -> Result<String, String> {
    let out = std::process::Command::new("psql")
        .arg(format!("host={ip} port=5432 user=postgres dbname=postgres connect_timeout=5 sslmode=disable"))
        .args(["-XAtc", sql])
        .env("PGPASSWORD", "postgres")
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// `PATCH /config` on the first node's Patroni REST API that answers (plain HTTP).
fn patch_config(body: &str) -> Result<(), String> {
    let mut last = String::new();
    for i in 1..=3 {
        let attempt = || -> std::io::Result<String> {
            let addr: SocketAddr = format!("{}:8008", node_ip(i)).parse().unwrap();
            let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            let req = format!(
                "PATCH /config HTTP/1.0\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            s.write_all(req.as_bytes())?;
            let mut out = String::new();
            s.read_to_string(&mut out)?;
            Ok(out)
        };
        match attempt() {
            Ok(out) if out.starts_with("HTTP/1.0 200") || out.starts_with("HTTP/1.1 200") => return Ok(()),
            Ok(out) => last = out.lines().next().unwrap_or_default().to_owned(),
            Err(e) => last = e.to_string(),
        }
    }
    Err(last)
}

fn set_apply_delay(value: Option<&str>) -> Result<(), String> {
    let v = value.map_or("null".to_owned(), |v| format!("\"{v}\""));
    patch_config(&format!(r#"{{"postgresql": {{"parameters": {{"recovery_min_apply_delay": {v}}}}}}}"#))
}

/// Patroni's maintenance mode: while it is off, Patroni resumes a replica's paused replay
/// within a loop (measured: in under 3 s), so a paused replica needs it on.
fn set_maintenance(on: bool) -> Result<(), String> {
    patch_config(&format!(r#"{{"pause": {}}}"#, if on { "true" } else { "null" }))
}

/// Puts the cluster back as it was, whatever ends the test: replay resumed everywhere, no
/// apply delay, Patroni out of maintenance mode.
struct Restore;

impl Restore {
    fn now() {
        for i in 1..=3 {
            let _ = psql(&node_ip(i), "SELECT CASE WHEN pg_is_in_recovery() THEN pg_wal_replay_resume() END");
        }
        if let Err(e) = set_apply_delay(None) {
            eprintln!("could not remove recovery_min_apply_delay: {e}");
        }
        if let Err(e) = set_maintenance(false) {
            eprintln!("could not end Patroni's maintenance mode: {e}");
        }
    }
}

impl Drop for Restore {
    fn drop(&mut self) {
        Restore::now();
        // Wait until the replicas apply at once again, so the next test starts clean.
        for _ in 0..60 {
            let clean = (1..=3).all(|i| psql(&node_ip(i), "SHOW recovery_min_apply_delay").is_ok_and(|v| v == "0"));
            if clean {
                return;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        eprintln!("recovery_min_apply_delay still set on a node after 30 s");
    }
}

async fn connect(addr: SocketAddr, options: Option<&str>) -> Result<Client, tokio_postgres::Error> {
    let mut c = tokio_postgres::Config::new();
    c.host(addr.ip().to_string()).port(addr.port()).user("postgres").password("postgres").dbname("postgres");
    c.connect_timeout(Duration::from_secs(30));
    if let Some(o) = options {
        c.options(o);
    }
    let (client, connection) = c.connect(NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

/// What a loop of write-then-read pairs found.
#[derive(Debug, Default)]
struct Tally {
    pairs: AtomicU64,
    misses: AtomicU64,
    on_replica: AtomicU64,
    on_paused: AtomicU64,
    read_us: AtomicU64,
}

impl Tally {
    fn get(&self, f: impl Fn(&Tally) -> &AtomicU64) -> u64 {
        f(self).load(Ordering::Relaxed)
    }
}

/// `WORKERS` writers, each committing a row through `primary` and reading it at once
/// through `reads` (with `pgfront.min_lsn` when `with_lsn`), until `pairs` pairs or `limit`.
async fn pairs(
    primary: SocketAddr,
    reads: SocketAddr,
    with_lsn: bool,
    pairs: u64,
    limit: Duration,
    paused: Option<String>,
) -> Arc<Tally> {
    let tally = Arc::new(Tally::default());
    let next = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + limit;
    let mut tasks = Vec::new();
    for _ in 0..WORKERS {
        let (tally, next, paused) = (Arc::clone(&tally), Arc::clone(&next), paused.clone());
        tasks.push(tokio::spawn(async move {
            let writer = connect(primary, None).await.expect("writer connects through the leader listener");
            let insert = writer.prepare(&format!("INSERT INTO {TABLE} VALUES ($1)")).await.unwrap();
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= pairs || Instant::now() >= deadline {
                    return;
                }
                // Each loop writes its own ids.
                let id = (n + if with_lsn { 1 << 40 } else { 0 } + paused.as_ref().map_or(0, |_| 1 << 41)) as i64;
                writer.execute(&insert, &[&id]).await.unwrap();
                let lsn: String = writer.query_one("SELECT pg_current_wal_lsn()::text", &[]).await.unwrap().get(0);
                let options = with_lsn.then(|| format!("-c pgfront.min_lsn={lsn}"));
                let started = Instant::now();
                let reader = connect(reads, options.as_deref()).await.unwrap_or_else(|e| panic!("read {id}: {e}"));
                let row = reader
                    .query_one(
                        &format!(
                            "SELECT EXISTS (SELECT 1 FROM {TABLE} WHERE id = $1), pg_is_in_recovery(), host(inet_server_addr())"
                        ),
                        &[&id],
                    )
                    .await
                    .unwrap();
                tally.read_us.fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
                let (found, recovery, server): (bool, bool, String) = (row.get(0), row.get(1), row.get(2));
                tally.pairs.fetch_add(1, Ordering::Relaxed);
                if !found {
                    tally.misses.fetch_add(1, Ordering::Relaxed);
                }
                if recovery {
                    tally.on_replica.fetch_add(1, Ordering::Relaxed);
                }
                if paused.as_deref() == Some(server.as_str()) {
                    tally.on_paused.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    tally
}

fn report(what: &str, t: &Tally, pg: &Pgfront) {
    let rt = pg.shared().runtime();
    let st = &rt.listener("reads").unwrap().stats;
    let n = t.get(|t| &t.pairs).max(1);
    eprintln!(
        "{what}: {} pairs, {} misses, {} on replicas ({:.1}%), {} on the paused replica, read (connect + query) {:.1} ms avg; pgfront so far: min_lsn replica {} leader {} refused {}, wait {:.1} ms avg",
        t.get(|t| &t.pairs),
        t.get(|t| &t.misses),
        t.get(|t| &t.on_replica),
        100.0 * t.get(|t| &t.on_replica) as f64 / n as f64,
        t.get(|t| &t.on_paused),
        t.get(|t| &t.read_us) as f64 / n as f64 / 1000.0,
        st.min_lsn_replica.load(Ordering::Relaxed),
        st.min_lsn_leader.load(Ordering::Relaxed),
        st.min_lsn_refused.load(Ordering::Relaxed),
        st.min_lsn_wait_us.load(Ordering::Relaxed) as f64
            / (st.min_lsn_replica.load(Ordering::Relaxed) + st.min_lsn_leader.load(Ordering::Relaxed)).max(1) as f64
            / 1000.0,
    );
}

#[tokio::test]
#[ignore = "needs the lab cluster: run scripts/test"]
async fn reads_with_min_lsn_see_their_writes_on_replicas_that_apply_late() {
    // A run killed before its guard ran may have left a delay or a paused replica.
    Restore::now();
    let _restore = Restore;
    let pg = support::start(&config());
    eventually(LIVENESS, "one leader and two replicas admitted", || {
        let rt = pg.shared().runtime();
        rt.listener("primary").unwrap().servers_up() == 1 && rt.listener("reads").unwrap().servers_up() == 2
    })
    .await;
    let primary = pg.listener_addr("primary").unwrap();
    let reads = pg.listener_addr("reads").unwrap();
    let admin = connect(primary, None).await.unwrap();
    admin
        .batch_execute(&format!("DROP TABLE IF EXISTS {TABLE}; CREATE TABLE {TABLE} (id bigint PRIMARY KEY)"))
        .await
        .unwrap();
    let leader: String = admin.query_one("SELECT host(inet_server_addr())", &[]).await.unwrap().get(0);
    let replicas: Vec<String> = (1..=3).map(node_ip).filter(|ip| *ip != leader).collect();

    set_apply_delay(Some(APPLY_DELAY)).expect("PATCH /config");
    eventually(LIVENESS, "replicas apply late", || {
        replicas.iter().all(|ip| psql(ip, "SHOW recovery_min_apply_delay").is_ok_and(|v| v == APPLY_DELAY))
    })
    .await;

    // The control: without min_lsn, reads on replicas that apply 50 ms late miss.
    let control = pairs(primary, reads, false, 200, Duration::from_secs(60), None).await;
    report("control (no min_lsn)", &control, &pg);
    assert!(control.get(|t| &t.misses) >= 1, "the control never missed: the replicas do not apply late");

    // Read-your-writes.
    let n = env_u64("PGFRONT_MIN_LSN_PAIRS", 2000);
    let limit = Duration::from_secs(env_u64("PGFRONT_MIN_LSN_SECONDS", 120));
    let before = pg.shared().runtime().listener("reads").unwrap().stats.min_lsn_leader.load(Ordering::Relaxed);
    let rw = pairs(primary, reads, true, n, limit, None).await;
    report("with min_lsn", &rw, &pg);
    let done = rw.get(|t| &t.pairs);
    assert!(done >= n.min(500), "only {done} pairs in {limit:?}");
    assert_eq!(rw.get(|t| &t.misses), 0, "a read with min_lsn missed its own write");
    assert!(rw.get(|t| &t.on_replica) * 2 > done, "most reads must be served by replicas");
    let rt = pg.shared().runtime();
    let on_leader = rt.listener("reads").unwrap().stats.min_lsn_leader.load(Ordering::Relaxed) - before;
    assert_eq!(on_leader, done - rw.get(|t| &t.on_replica), "pgfront's count of fallbacks agrees");

    // A replica whose replay is paused never serves a read that needs a later position.
    // (Patroni in maintenance mode, or it resumes the replay within seconds.)
    let paused = replicas[0].clone();
    let state = || psql(&paused, "SELECT pg_get_wal_replay_pause_state()").unwrap_or_default();
    set_maintenance(true).expect("PATCH /config pause");
    psql(&paused, "SELECT pg_wal_replay_pause()").expect("pause replay");
    eventually(LIVENESS, "replay paused", || state() == "paused").await;
    let paused_pairs = pairs(primary, reads, true, 300, Duration::from_secs(60), Some(paused.clone())).await;
    report(&format!("with min_lsn, replay paused on {paused}"), &paused_pairs, &pg);
    assert_eq!(state(), "paused", "replay was resumed during the loop: the check proves nothing");
    psql(&paused, "SELECT pg_wal_replay_resume()").expect("resume replay");
    set_maintenance(false).expect("PATCH /config pause");
    assert_eq!(paused_pairs.get(|t| &t.on_paused), 0, "the paused replica served a read");
    assert_eq!(paused_pairs.get(|t| &t.misses), 0, "a read with min_lsn missed its own write");

    admin.batch_execute(&format!("DROP TABLE {TABLE}")).await.unwrap();
    pg.shutdown(Duration::from_secs(5)).await;
}
