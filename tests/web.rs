//! The stats surface: basic auth, HTML, CSV and JSON from the same counters.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const LIMIT: Duration = Duration::from_secs(10);

/// A minimal HTTP/1.0 GET; returns the status and the body.
async fn get(addr: SocketAddr, path: &str, auth: Option<&str>) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let auth = auth.map(|a| format!("Authorization: Basic {a}\r\n")).unwrap_or_default();
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n{auth}\r\n").as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let status = out.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

/// admin:secret
const ADMIN: &str = "YWRtaW46c2VjcmV0";

#[tokio::test]
async fn credentials_are_required() {
    let lab = Lab::start(1).await;
    let pg = start(&lab.config(""));
    let web = pg.web_addr().unwrap();
    assert_eq!(get(web, "/", None).await.0, 401);
    assert_eq!(get(web, "/", Some("YWRtaW46d3Jvbmc=")).await.0, 401, "admin:wrong");
    assert_eq!(get(web, "/;csv", None).await.0, 401);
    assert_eq!(get(web, "/status.json", None).await.0, 401);
    assert_eq!(get(web, "/", Some(ADMIN)).await.0, 200);
    assert_eq!(get(web, "/health", None).await.0, 200, "the liveness endpoint needs no credentials");
}

#[tokio::test]
async fn views_show_state_and_counters() {
    let lab = Lab::start(3).await;
    lab.leader(0);
    let pg = start(&lab.config(""));
    let web = pg.web_addr().unwrap();
    let addr = pg.listener_addr("primary").unwrap();
    eventually(LIMIT, "leader up", || pg.shared().runtime.load().listener("primary").unwrap().servers_up() == 1).await;
    let mut c = connect(addr).await.unwrap();
    c.echo(b"0123456789").await.unwrap();

    let (status, html) = get(web, "/", Some(ADMIN)).await;
    assert_eq!(status, 200);
    for needle in ["primary", "replicas", "node1", "node2", "node3", "L7OK/200", "L7STS/503", ">UP<", ">DOWN<"] {
        assert!(html.contains(needle), "page lacks {needle}");
    }

    let (_, csv) = get(web, "/;csv", Some(ADMIN)).await;
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().unwrap().trim_start_matches("# ").split(',').collect();
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
    let row: Vec<&str> = csv.lines().find(|l| l.starts_with("primary,node1,")).unwrap().split(',').collect();
    assert_eq!(row[col("status")], "UP");
    assert_eq!(row[col("scur")], "1");
    assert_eq!(row[col("slim")], "100");
    assert_eq!(row[col("bin")], "18", "8-byte opening + 10 bytes");
    assert_eq!(row[col("check_status")], "L7OK");
    assert_eq!(row[col("check_code")], "200");
    let down: Vec<&str> = csv.lines().find(|l| l.starts_with("primary,node2,")).unwrap().split(',').collect();
    assert_eq!(down[col("status")], "DOWN");
    assert_eq!(down[col("check_status")], "L7STS");
    assert_eq!(down[col("check_code")], "503");
    assert!(csv.lines().any(|l| l.starts_with("primary,BACKEND,")));

    let (_, json) = get(web, "/status.json", Some(ADMIN)).await;
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let primary = &v["listeners"][0];
    assert_eq!(primary["name"], "primary");
    assert_eq!(primary["servers_up"], 1);
    assert_eq!(primary["servers"][0]["cur"], 1);
    assert_eq!(primary["servers"][0]["status"], "UP");
    assert_eq!(v["sessions"], 1);
}

#[tokio::test]
async fn transitional_states_are_shown() {
    let lab = Lab::start(1).await;
    lab.leader(0);
    // Slow checks so the transitional state lasts long enough to observe.
    let pg =
        start(&lab.config("fastinter = \"30s\"").replace("inter = \"50ms\"\nfastinter = \"20ms\"", "inter = \"50ms\""));
    let web = pg.web_addr().unwrap();
    let rt = pg.shared().runtime.load_full();
    let check = rt.listener("primary").unwrap().servers[0].check.clone();
    eventually(LIMIT, "DOWN 1/2", || check.report().machine.label() == "DOWN 1/2").await;
    let (_, html) = get(web, "/", Some(ADMIN)).await;
    assert!(html.contains("DOWN 1/2"), "transitional state on the page");
}
