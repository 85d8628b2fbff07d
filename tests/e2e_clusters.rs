//! End to end: one pgfront in front of two real Patroni clusters (`[[cluster]]` a and b). A
//! switchover in a moves a's write listener to its new leader and cuts the sessions on its
//! old one, while b's sessions (a writer and two readers through b's listeners) stay open
//! and keep answering through it, and b's generation, leadership and health do not move.
//!
//! The two labs come from the environment (each as `scripts/cluster` takes them), so the
//! test runs against any two labs that are up; it only reads b and switches a over:
//!   PGFRONT_CLUSTERS_A_NET / _ETCD / _DIR  (default: the default lab, 127.0.0.11-13)
//!   PGFRONT_CLUSTERS_B_NET / _ETCD / _DIR  (default: lab2, 127.0.0.21-23)
//! A lab whose REST APIs serve HTTPS (its `rest-tls` record says 1, as lab2's) is checked
//! with the lab CA and the probe's client certificate, as tests/e2e_rest_tls.rs does.
//!
//! `cargo test --test e2e_clusters -- --ignored --nocapture`, e.g. on lab3 and lab4:
//!   PGFRONT_CLUSTERS_A_NET=127.0.0.3 PGFRONT_CLUSTERS_A_ETCD=127.0.0.1:2579
//!   PGFRONT_CLUSTERS_A_DIR=/var/tmp/pgfront-lab3 PGFRONT_CLUSTERS_B_NET=127.0.0.4
//!   PGFRONT_CLUSTERS_B_ETCD=127.0.0.1:2679 PGFRONT_CLUSTERS_B_DIR=/var/tmp/pgfront-lab4

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pgfront::Pgfront;
use support::eventually;
use tokio_postgres::NoTls;

const LIVENESS: Duration = Duration::from_secs(90);

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// One lab, as `scripts/cluster` addresses it.
#[derive(Clone)]
struct LabEnv {
    net: String,
    etcd: String,
    dir: PathBuf,
}

impl LabEnv {
    fn from_env(which: &str, net: &str, etcd: &str, dir: &str) -> LabEnv {
        let var =
            |k: &str, d: &str| std::env::var(format!("PGFRONT_CLUSTERS_{which}_{k}")).unwrap_or_else(|_| d.into());
        LabEnv { net: var("NET", net), etcd: var("ETCD", etcd), dir: PathBuf::from(var("DIR", dir)) }
    }

    fn cluster(&self, args: &[&str]) -> std::process::Output {
        std::process::Command::new(repo().join("scripts/cluster"))
            .args(args)
            .env("PGFRONT_LAB_DIR", &self.dir)
            .env("PGFRONT_LAB_NET", &self.net)
            .env("PGFRONT_LAB_ETCD", &self.etcd)
            .env_remove("PGFRONT_LAB_REST_TLS")
            .output()
            .unwrap()
    }

    async fn run(&self, args: &'static [&'static str]) -> String {
        let me = self.clone();
        let out = tokio::task::spawn_blocking(move || me.cluster(args)).await.unwrap();
        assert!(out.status.success(), "scripts/cluster {args:?} on {}: {out:?}", self.net);
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Its three nodes are primary or streaming.
    async fn healthy(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        loop {
            let me = self.clone();
            let out = tokio::task::spawn_blocking(move || me.cluster(&["status"])).await.unwrap();
            let text = String::from_utf8_lossy(&out.stdout).to_string();
            let ready = text
                .lines()
                .filter(|l| ["node1 ", "node2 ", "node3 "].iter().any(|n| l.starts_with(n)))
                .filter(|l| l.contains(" primary ") || l.contains(" streaming "))
                .count();
            if ready == 3 {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "lab {} is not healthy:\n{text}", self.net);
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    async fn leader(&self) -> String {
        self.run(&["leader"]).await
    }

    /// Whether the lab's REST APIs serve HTTPS (the lab's own record).
    fn rest_tls(&self) -> bool {
        std::fs::read_to_string(self.dir.join("rest-tls")).is_ok_and(|t| t.trim() == "1")
    }

    /// Its `[[cluster.node]]` tables, with the lab's probe TLS when it serves HTTPS.
    fn nodes(&self) -> String {
        let tls = |f: &str| repo().join("lab/tls").join(f).display().to_string();
        let check_tls = if self.rest_tls() {
            format!(
                "check_tls = {{ verify = \"full\", ca = \"{}\", cert = \"{}\", key = \"{}\" }}\n",
                tls("ca.crt"),
                tls("probe-client.crt"),
                tls("probe-client.key")
            )
        } else {
            String::new()
        };
        (1..=3)
            .map(|i| {
                format!("[[cluster.node]]\nname = \"node{i}\"\naddress = \"{n}{i}:5432\"\n{check_tls}\n", n = self.net)
            })
            .collect()
    }
}

fn config(a: &LabEnv, b: &LabEnv) -> String {
    let cluster = |name: &str, lab: &LabEnv| {
        format!(
            r#"
[[cluster]]
name = "{name}"

{nodes}
[[cluster.listener]]
name = "{name}-primary"
bind = "127.0.0.1:0"
balance = "first"
check = {{ path = "/master" }}

[[cluster.listener]]
name = "{name}-replicas"
bind = "127.0.0.1:0"
check = {{ path = "/replica" }}
"#,
            nodes = lab.nodes()
        )
    };
    format!(
        r#"
[global]
hunt_inter = "200ms"

[defaults]
inter = "1s"
fall = 2
rise = 1
timeout_check = "3s"
{}{}
[web]
bind = "127.0.0.1:0"
"#,
        cluster("a", a),
        cluster("b", b)
    )
}

fn up(pg: &Pgfront, listener: &str) -> usize {
    pg.shared().listener(listener).map_or(0, |l| l.servers_up())
}

async fn session(addr: SocketAddr) -> tokio_postgres::Client {
    let conn = format!(
        "host={} port={} user=postgres password=postgres dbname=postgres sslmode=disable connect_timeout=10",
        addr.ip(),
        addr.port()
    );
    let (c, connection) = tokio_postgres::connect(&conn, NoTls).await.unwrap();
    tokio::spawn(connection);
    c
}

async fn server(c: &tokio_postgres::Client) -> (bool, String) {
    let row = c.query_one("SELECT pg_is_in_recovery(), host(inet_server_addr())", &[]).await.unwrap();
    (row.get(0), row.get(1))
}

/// b's downs per (listener, server), its leader changes, and its generation.
fn b_state(pg: &Pgfront) -> (Arc<pgfront::cluster::Runtime>, u64, Vec<(String, String, u64)>) {
    let rt = pg.cluster("b").unwrap().runtime.load_full();
    let downs = rt
        .listeners
        .iter()
        .flat_map(|l| l.servers.iter().map(move |s| (l.config.name.clone(), s.name.clone(), s.check.report().downs)))
        .collect();
    let changes = rt.leadership.changes.load(Ordering::SeqCst);
    (rt, changes, downs)
}

#[tokio::test]
#[ignore = "needs two lab clusters (default: the default lab and lab2): see the header"]
async fn a_switchover_in_one_cluster_leaves_the_other_clusters_sessions_alone() {
    let a = LabEnv::from_env("A", "127.0.0.1", "127.0.0.1:2379", "/var/tmp/pgfront-lab");
    let b = LabEnv::from_env("B", "127.0.0.2", "127.0.0.1:2479", "/var/tmp/pgfront-lab2");
    a.healthy().await;
    b.healthy().await;
    let a_leader = format!("{}{}", a.net, a.leader().await.trim_start_matches("node"));
    let b_leader = format!("{}{}", b.net, b.leader().await.trim_start_matches("node"));
    let pg = support::start(&config(&a, &b));
    eventually(LIVENESS, "both clusters routed", || {
        up(&pg, "a-primary") == 1
            && up(&pg, "a-replicas") == 2
            && up(&pg, "b-primary") == 1
            && up(&pg, "b-replicas") == 2
    })
    .await;

    // Sessions through both clusters, each on its own cluster's nodes.
    let a_write = session(pg.listener_addr("a-primary").unwrap()).await;
    assert_eq!(server(&a_write).await, (false, a_leader.clone()), "a's write listener: a's leader");
    let b_write = Arc::new(session(pg.listener_addr("b-primary").unwrap()).await);
    assert_eq!(server(&b_write).await, (false, b_leader.clone()), "b's write listener: b's leader");
    let mut b_reads = Vec::new();
    for _ in 0..2 {
        let c = session(pg.listener_addr("b-replicas").unwrap()).await;
        let (recovery, ip) = server(&c).await;
        assert!(recovery && ip.starts_with(&b.net) && ip != b_leader, "b's replicas listener: {ip}");
        b_reads.push(Arc::new(c));
    }
    b_write.batch_execute("CREATE TABLE IF NOT EXISTS pgfront_e2e_clusters (at timestamptz)").await.unwrap();
    let (b_rt, b_changes, b_downs) = b_state(&pg);

    // b's sessions work all through a's switchover: a query every 50 ms on each.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut load = Vec::new();
    for (i, c) in std::iter::once(Arc::clone(&b_write)).chain(b_reads.iter().cloned()).enumerate() {
        let (stop, ok, failed) = (Arc::clone(&stop), Arc::clone(&ok), Arc::clone(&failed));
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let r = if i == 0 {
                    c.execute("INSERT INTO pgfront_e2e_clusters VALUES (now())", &[]).await.map(|_| ())
                } else {
                    c.query_one("SELECT 1", &[]).await.map(|_| ())
                };
                match r {
                    Ok(()) => ok.fetch_add(1, Ordering::SeqCst),
                    Err(e) => {
                        eprintln!("clusters: a session through b failed: {e}");
                        failed.fetch_add(1, Ordering::SeqCst)
                    }
                };
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }));
    }

    let t = Instant::now();
    a.run(&["switchover"]).await;
    let new_a = format!("{}{}", a.net, a.leader().await.trim_start_matches("node"));
    assert_ne!(new_a, a_leader);
    eventually(LIVENESS, "a's write listener on a's new leader", || {
        let l = pg.shared().listener("a-primary").unwrap();
        l.servers_up() == 1 && l.servers.iter().any(|s| s.is_up() && s.address.starts_with(&format!("{new_a}:")))
    })
    .await;
    eprintln!("clusters: a switched over in {:.1} s", t.elapsed().as_secs_f64());
    eventually(LIVENESS, "the session on a's old leader ends", || a_write.is_closed()).await;
    let a_new = session(pg.listener_addr("a-primary").unwrap()).await;
    assert_eq!(server(&a_new).await, (false, new_a.clone()));
    // Let b's sessions run on a little after a settled.
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::SeqCst);
    for l in load {
        l.await.unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::SeqCst), failed.load(Ordering::SeqCst));
    eprintln!("clusters: through b during a's switchover: {ok} queries answered, {failed} failed");
    assert_eq!(failed, 0, "no query through b failed");
    assert!(ok > 30, "b's sessions were busy throughout ({ok})");
    assert_eq!(server(&b_write).await, (false, b_leader.clone()), "b's write session: still open, same node");
    for c in &b_reads {
        assert!(server(c).await.0, "b's read sessions: still open, on replicas");
    }
    let (b_rt_now, b_changes_now, b_downs_now) = b_state(&pg);
    assert!(Arc::ptr_eq(&b_rt, &b_rt_now), "b's generation was not rebuilt");
    assert_eq!(b_changes_now, b_changes, "b's leadership did not move");
    assert_eq!(b_downs_now, b_downs, "no server of b went down");
    let a_changes = pg.cluster("a").unwrap().runtime.load().leadership.changes.load(Ordering::SeqCst);
    assert!(a_changes >= 2, "a's leader changed ({a_changes})");
    b_write.batch_execute("DROP TABLE IF EXISTS pgfront_e2e_clusters").await.unwrap();
    pg.shutdown(Duration::from_secs(5)).await;
}
