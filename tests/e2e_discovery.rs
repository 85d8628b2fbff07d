//! End to end: nodes from Patroni against a lab cluster of its own (nodes 127.0.0.51-53, a
//! fourth on .54 added and removed by the test; `scripts/test` starts and stops the lab).
//!
//! pgfront starts with one seed REST address and no declared node: the other members are
//! learned from `GET /cluster`, and all three listeners route by role. A fourth Patroni node
//! started into the running cluster joins the replicas listener once it streams, without a
//! reload; stopped, its sessions end with its checks and it leaves the member list.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use pgfront::config::Origin;
use pgfront::Pgfront;
use support::eventually;
use tokio_postgres::NoTls;

const LIVENESS: Duration = Duration::from_secs(90);

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn lab_dir() -> PathBuf {
    std::env::var_os("PGFRONT_DISCOVERY_LAB_DIR").map_or_else(|| PathBuf::from("/var/tmp/pgfront-lab5"), PathBuf::from)
}

/// The lab's network prefix: nodes are NET1..NET4.
fn net() -> String {
    std::env::var("PGFRONT_DISCOVERY_LAB_NET").unwrap_or_else(|_| "127.0.0.5".into())
}

/// `scripts/cluster ARGS` on this lab, knowing node4.
fn cluster(args: &[&str]) -> std::process::Output {
    std::process::Command::new(repo().join("scripts/cluster"))
        .args(args)
        .env("PGFRONT_LAB_DIR", lab_dir())
        .env("PGFRONT_LAB_NET", net())
        .env(
            "PGFRONT_LAB_ETCD",
            std::env::var("PGFRONT_DISCOVERY_LAB_ETCD").unwrap_or_else(|_| "127.0.0.1:2779".into()),
        )
        .env("PGFRONT_LAB_NODE_COUNT", "4")
        .output()
        .unwrap()
}

async fn cluster_ok(args: &'static [&'static str]) -> String {
    let out = tokio::task::spawn_blocking(move || cluster(args)).await.unwrap();
    assert!(out.status.success(), "scripts/cluster {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Stops node4 however the test ends, so the lab is left with its three nodes.
struct Node4;

impl Drop for Node4 {
    fn drop(&mut self) {
        let _ = cluster(&["stop", "node4"]);
    }
}

/// The three usual nodes are primary or streaming (node4, if left over, is stopped first).
async fn three_healthy() {
    let _ = tokio::task::spawn_blocking(|| cluster(&["stop", "node4"])).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let out = tokio::task::spawn_blocking(|| cluster(&["status"])).await.unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let ready = text
            .lines()
            .filter(|l| ["node1 ", "node2 ", "node3 "].iter().any(|n| l.starts_with(n)))
            .filter(|l| l.contains(" primary ") || l.contains(" streaming "))
            .count();
        if ready == 3 {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "the discovery lab is not healthy:\n{text}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// pgfront with one seed and no declared node.
fn config() -> String {
    let n = net();
    format!(
        r#"
[global]
hunt_inter = "200ms"
discovery = "patroni"
discovery_seeds = ["{n}1:8008"]
discovery_allow = ["{n}1", "{n}2", "{n}3", "{n}4"]
discovery_inter = "1s"

[defaults]
inter = "1s"
fall = 2
rise = 1
timeout_check = "3s"

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
"#
    )
}

fn up(pg: &Pgfront, listener: &str) -> usize {
    pg.shared().runtime().listener(listener).unwrap().servers_up()
}

fn nodes(pg: &Pgfront) -> Vec<(String, String, Origin)> {
    let rt = pg.shared().runtime();
    rt.config.nodes.iter().map(|n| (n.name.clone(), n.address.clone(), n.origin)).collect()
}

async fn session(addr: SocketAddr, options: &str) -> tokio_postgres::Client {
    let conn = format!(
        "host={} port={} user=postgres password=postgres dbname=postgres sslmode=disable options='{options}'",
        addr.ip(),
        addr.port()
    );
    let (c, connection) = tokio_postgres::connect(&conn, NoTls).await.unwrap();
    tokio::spawn(connection);
    c
}

async fn server_ip(addr: SocketAddr, options: &str) -> (bool, String) {
    let c = session(addr, options).await;
    let row = c.query_one("SELECT pg_is_in_recovery(), host(inet_server_addr())", &[]).await.unwrap();
    (row.get(0), row.get(1))
}

#[tokio::test]
#[ignore = "needs the discovery lab cluster (127.0.0.51-54): run scripts/test"]
async fn one_seed_finds_the_cluster_and_a_fourth_node_joins_and_leaves() {
    three_healthy().await;
    let leader_name = cluster_ok(&["leader"]).await;
    let leader = format!("{}{}", net(), leader_name.trim_start_matches("node"));
    let started = Instant::now();
    let pg = support::start(&config());
    eventually(LIVENESS, "the leader and two replicas learned from one seed", || {
        up(&pg, "primary") == 1 && up(&pg, "replicas") == 2 && up(&pg, "reads") == 2
    })
    .await;
    eprintln!("discovery: 3 members routed {:.1} s after start", started.elapsed().as_secs_f64());
    assert!(nodes(&pg).iter().all(|(_, _, o)| *o == Origin::Discovered), "{:?}", nodes(&pg));
    let primary = pg.listener_addr("primary").unwrap();
    let replicas = pg.listener_addr("replicas").unwrap();
    let reads = pg.listener_addr("reads").unwrap();
    assert_eq!(server_ip(primary, "").await, (false, leader.clone()), "5000: the leader");
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..4 {
        let (recovery, ip) = server_ip(replicas, "").await;
        assert!(recovery && ip != leader, "5001: a replica, got {ip}");
        seen.insert(ip);
    }
    assert_eq!(seen.len(), 2, "round robin over both replicas");
    assert!(server_ip(reads, "").await.0, "5002: a replica");
    assert_eq!(server_ip(reads, "-c pgfront.target=primary").await, (false, leader.clone()));

    // A fourth member: started into the running cluster, it joins 5001 once streaming.
    let _node4 = Node4;
    let node4 = format!("{}4", net());
    let t = Instant::now();
    cluster_ok(&["start", "node4"]).await;
    let streaming = t.elapsed();
    eventually(LIVENESS, "node4 admitted on the replicas listener", || up(&pg, "replicas") == 3).await;
    eprintln!(
        "discovery: node4 streaming {:.1} s after start, admitted on 5001 {:.1} s later",
        streaming.as_secs_f64(),
        (t.elapsed() - streaming).as_secs_f64()
    );
    assert_eq!(pg.shared().reloads.ok.load(Ordering::Relaxed), 0, "without a reload");
    let mut on_node4 = None;
    for _ in 0..12 {
        let c = session(replicas, "").await;
        let row = c.query_one("SELECT host(inet_server_addr())", &[]).await.unwrap();
        if row.get::<_, String>(0) == node4 {
            on_node4 = Some(c);
            break;
        }
    }
    let on_node4 = on_node4.expect("round robin reaches node4");

    // Stopped: its checks fail and cut the session; it then leaves the member list.
    let t = Instant::now();
    cluster_ok(&["stop", "node4"]).await;
    eventually(LIVENESS, "node4 marked down on 5001", || up(&pg, "replicas") == 2).await;
    eventually(LIVENESS, "the session on node4 ends", || on_node4.is_closed()).await;
    eventually(LIVENESS, "node4 leaves the member set", || !nodes(&pg).iter().any(|(n, _, _)| n == "node4")).await;
    eprintln!("discovery: node4 removed {:.1} s after its Patroni was stopped", t.elapsed().as_secs_f64());
    for _ in 0..4 {
        let (recovery, ip) = server_ip(replicas, "").await;
        assert!(recovery && ip != node4 && ip != leader, "5001 after node4 left: {ip}");
    }
    let d = &pg.shared().first().discovery;
    let rate = d.requests.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
    eprintln!(
        "discovery: {} /cluster requests in {:.1} s ({rate:.2}/s), {} changes, {} errors",
        d.requests.load(Ordering::Relaxed),
        started.elapsed().as_secs_f64(),
        d.changes.load(Ordering::Relaxed),
        d.errors.load(Ordering::Relaxed)
    );
    assert!(d.changes.load(Ordering::Relaxed) >= 3, "found, node4 joined, node4 left");
    assert_eq!(pg.shared().reloads.ok.load(Ordering::Relaxed), 0);
    pg.shutdown(Duration::from_secs(5)).await;
}
