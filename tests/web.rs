//! The stats surface: basic auth, HTML, CSV and JSON from the same counters.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const LIMIT: Duration = Duration::from_secs(10);

async fn get(addr: SocketAddr, path: &str, auth: Option<&str>) -> (u16, String) {
    http_get(addr, path, auth).await
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
    eventually(LIMIT, "leader up", || pg.shared().runtime().listener("primary").unwrap().servers_up() == 1).await;
    let mut c = connect(addr).await.unwrap();
    c.echo(b"0123456789").await.unwrap();

    let (status, html) = get(web, "/", Some(ADMIN)).await;
    assert_eq!(status, 200);
    for needle in
        ["primary", "replicas", "node1", "node2", "node3", "L7OK/200", "L7STS/503", ">UP<", ">replica<", ">leader<"]
    {
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
    assert_eq!(row[col("bin")], "8", "the opening is counted at once; the session's own bytes within a second");
    assert_eq!(row[col("check_status")], "L7OK");
    assert_eq!(row[col("check_code")], "200");
    let down: Vec<&str> = csv.lines().find(|l| l.starts_with("primary,node2,")).unwrap().split(',').collect();
    assert_eq!(down[col("status")], "DOWN");
    assert_eq!(down[col("check_status")], "L7STS");
    assert_eq!(down[col("check_code")], "503");
    assert_eq!(down[col("role")], "replica", "pgfront's role column");
    assert_eq!(col("role"), header.len() - 1, "after every HAProxy column");
    assert_eq!(row[col("role")], "leader");
    assert!(csv.lines().any(|l| l.starts_with("primary,BACKEND,")));

    let (_, json) = get(web, "/status.json", Some(ADMIN)).await;
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let primary = &v["listeners"][0];
    assert_eq!(primary["name"], "primary");
    assert_eq!(primary["servers_up"], 1);
    assert_eq!(primary["servers"][0]["cur"], 1);
    assert_eq!(primary["servers"][0]["status"], "UP");
    assert_eq!(v["sessions"], 1);

    // Byte counters are exact once the session ends.
    drop(c);
    let bytes_in = || async {
        let (_, csv) = get(web, "/;csv", Some(ADMIN)).await;
        let row: Vec<String> =
            csv.lines().find(|l| l.starts_with("primary,node1,")).unwrap().split(',').map(str::to_owned).collect();
        row[col("bin")].clone()
    };
    let deadline = tokio::time::Instant::now() + LIMIT;
    while bytes_in().await != "18" {
        assert!(tokio::time::Instant::now() < deadline, "8-byte opening + 10 bytes counted at the end");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn transitional_states_are_shown() {
    let lab = Lab::start(1).await;
    lab.leader(0);
    // Slow checks so the transitional state lasts long enough to observe.
    let pg =
        start(&lab.config("fastinter = \"30s\"").replace("inter = \"50ms\"\nfastinter = \"20ms\"", "inter = \"50ms\""));
    let web = pg.web_addr().unwrap();
    let rt = pg.shared().runtime();
    let check = rt.listener("primary").unwrap().servers[0].check.clone();
    eventually(LIMIT, "DOWN 1/2", || check.report().machine.label() == "DOWN 1/2").await;
    let (_, html) = get(web, "/", Some(ADMIN)).await;
    assert!(html.contains("DOWN 1/2"), "transitional state on the page");
}

#[tokio::test]
async fn the_other_role_is_shown_as_that_role_and_real_failures_stand_out() {
    let lab = Lab::start(3).await;
    lab.leader(0);
    let pg = start(&lab.config(""));
    let web = pg.web_addr().unwrap();
    let rt = pg.shared().runtime();
    let replicas = rt.listener("replicas").unwrap().clone();
    eventually(LIMIT, "replicas up", || replicas.servers_up() == 2).await;
    // node3's agent stops answering: a real failure.
    lab.nodes[2].rest.set_all(Some(Answer::Garbage));
    eventually(LIMIT, "node3 down", || replicas.servers_up() == 1).await;
    let (_, html) = get(web, "/", Some(ADMIN)).await;
    let row = |listener: &str, server: &str| {
        let table = &html[html.find(&format!("<h2 id=\"l-{listener}\">")).unwrap()..];
        let at = table.find(&format!("<td class=\"l\">{server}</td>")).unwrap();
        let start = table[..at].rfind("<tr").unwrap();
        let end = at + table[at..].find("</tr>").unwrap();
        table[start..end].to_owned()
    };
    let leader_on_replicas = row("replicas", "node1");
    assert!(leader_on_replicas.starts_with(r#"<tr class="role">"#), "{leader_on_replicas}");
    assert!(leader_on_replicas.contains(">leader</td>"), "{leader_on_replicas}");
    assert!(leader_on_replicas.contains("not a replica (role primary)"), "the reason of the latest check");
    assert!(!leader_on_replicas.contains("not checked yet"));
    let replica_on_primary = row("primary", "node2");
    assert!(
        replica_on_primary.contains(">replica</td>") && !replica_on_primary.contains(" fail\""),
        "{replica_on_primary}"
    );
    let broken = row("replicas", "node3");
    assert!(broken.starts_with(r#"<tr class="down">"#), "{broken}");
    assert!(broken.contains(r#"<td class="l chk fail">L7RSP"#), "the failing check stands out: {broken}");
    let (_, json) = get(web, "/status.json", Some(ADMIN)).await;
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let s = &v["listeners"][1]["servers"];
    assert_eq!((s[0]["other_role"].as_bool(), s[0]["failing"].as_bool()), (Some(true), Some(false)));
    assert_eq!((s[2]["other_role"].as_bool(), s[2]["failing"].as_bool()), (Some(false), Some(true)));
    assert_eq!(v["listeners"][0]["servers"][1]["check_failures"], 0, "a replica's 503s to /master are no chkfail");
}

#[tokio::test]
async fn a_leader_change_is_in_the_failover_panel_with_the_sessions_it_cut() {
    let lab = Lab::start(3).await;
    lab.leader(0);
    let pg = start(&lab.config(""));
    let web = pg.web_addr().unwrap();
    let primary = pg.listener_addr("primary").unwrap();
    eventually(LIMIT, "leader up", || pg.shared().runtime().listener("primary").unwrap().servers_up() == 1).await;
    let (_, json) = get(web, "/status.json", Some(ADMIN)).await;
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["failovers"].as_array().map(Vec::len), Some(0), "a leader at start-up is no failover");
    assert_eq!(v["leader_timeline"].as_array().unwrap().last().unwrap()["leader"], "node1");
    let mut writers = Vec::new();
    for _ in 0..2 {
        writers.push(connect(primary).await.unwrap());
    }
    lab.leader(1);
    for w in &mut writers {
        assert!(w.closed_within(LIMIT).await, "sessions on the old leader end");
    }
    // The record settles (5 s after the flip, nobody waiting); the sampler looks every second.
    let failover = || async {
        let (_, json) = get(web, "/status.json", Some(ADMIN)).await;
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        v["failovers"][0].clone()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while failover().await["complete"] != true {
        assert!(tokio::time::Instant::now() < deadline, "the failover never settled: {}", failover().await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let f = failover().await;
    assert_eq!((f["from"].as_str(), f["to"].as_str()), (Some("node1"), Some("node2")), "{f}");
    assert!(f["cut"].as_u64().unwrap() >= 2, "both sessions on node1 counted as cut: {f}");
    assert!(f["flip_at"].as_f64().unwrap() >= f["started_at"].as_f64().unwrap(), "{f}");
    let after = connect(primary).await.unwrap();
    assert_eq!(after.server, "node2");
    let (_, html) = get(web, "/", Some(ADMIN)).await;
    assert!(html.contains(r#"id="failover-0" data-from="node1" data-to="node2""#), "the panel row");
}

/// viewer:look
const VIEWER: &str = "dmlld2VyOmxvb2s=";

/// POSTs a form; returns the status.
async fn post(addr: SocketAddr, auth: &str, body: &str) -> u16 {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "POST /admin HTTP/1.0\r\nHost: x\r\nAuthorization: Basic {auth}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Sends `req` as it is and reads the whole answer.
async fn raw(addr: SocketAddr, req: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    tokio::time::timeout(LIMIT, s.read_to_string(&mut out)).await.expect("no answer").unwrap();
    out
}

#[tokio::test]
async fn admin_requests_out_of_shape_get_the_status_that_says_why() {
    let lab = Lab::start(1).await;
    let pg = start(&lab.config(""));
    let web = pg.web_addr().unwrap();
    let post = |path: &str, length: usize, body: &str| {
        format!("POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Basic {ADMIN}\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n\r\n{body}")
    };
    // Too large: refused unread.
    let answer = raw(web, &post("/api/admin", 100_000, "")).await;
    assert!(answer.starts_with("HTTP/1.1 413 "), "{answer}");
    // A body that stops coming: 408 once the wait is over, not the connection's 30 s.
    let answer = raw(web, &post("/admin", 50, "listener=")).await;
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
    // A cluster nobody has is named as such.
    let body = r#"{"action": "drain", "node": "node1", "cluster": "nope"}"#;
    let answer = raw(web, &post("/api/admin", body.len(), body)).await;
    assert!(answer.starts_with("HTTP/1.1 404 ") && answer.contains(r#"no cluster \"nope\""#), "{answer}");
    // The admin endpoints take POST, and say so.
    let answer = raw(web, &format!("GET /admin HTTP/1.0\r\nAuthorization: Basic {ADMIN}\r\n\r\n")).await;
    assert!(
        answer.contains(" 405 Method Not Allowed\r\n") && answer.to_lowercase().contains("allow: post\r\n"),
        "{answer}"
    );
    // No other site may frame the page with its forms.
    let answer = raw(web, &format!("GET / HTTP/1.0\r\nAuthorization: Basic {ADMIN}\r\n\r\n")).await;
    assert!(answer.to_lowercase().contains("x-frame-options: deny\r\n"), "{answer}");
}

async fn csrf(web: SocketAddr) -> String {
    let (_, html) = get(web, "/", Some(ADMIN)).await;
    let at = html.find("name=\"csrf\" value=\"").expect("admin forms carry the token") + 19;
    html[at..at + 64].to_owned()
}

#[tokio::test]
async fn admin_actions_need_an_admin_and_the_csrf_token() {
    let lab = Lab::start(3).await;
    lab.leader(0);
    let pg = start(&lab.config(""));
    let web = pg.web_addr().unwrap();
    let replicas = pg.listener_addr("replicas").unwrap();
    eventually(LIMIT, "replicas up", || pg.shared().runtime().listener("replicas").unwrap().servers_up() == 2).await;
    let token = csrf(web).await;
    let form = |action: &str, t: &str| format!("listener=replicas&server=node2&action={action}&csrf={t}");

    let (_, page) = get(web, "/", Some(VIEWER)).await;
    assert!(!page.contains("name=\"csrf\""), "read-only users get no forms");
    assert_eq!(post(web, VIEWER, &form("drain", &token)).await, 403, "read-only user");
    assert_eq!(post(web, ADMIN, &form("drain", "")).await, 403, "missing token");
    assert_eq!(post(web, ADMIN, &form("drain", &"0".repeat(64))).await, 403, "wrong token");
    assert_eq!(post(web, "YWRtaW46d3Jvbmc=", &form("drain", &token)).await, 401);
    assert!(connect(replicas).await.is_ok());

    // drain: no new sessions, open ones stay.
    let mut on_node2 = connect_to(replicas, "node2").await;
    assert_eq!(post(web, ADMIN, &form("drain", &token)).await, 303);
    for _ in 0..4 {
        assert_eq!(connect(replicas).await.unwrap().server, "node3");
    }
    on_node2.echo(b"draining, not cut").await.unwrap();
    let (_, csv) = get(web, "/;csv", Some(ADMIN)).await;
    assert!(csv.lines().any(|l| l.starts_with("replicas,node2,") && l.contains(",DRAIN,")), "{csv}");

    // shutdown: its sessions are cut.
    assert_eq!(post(web, ADMIN, &form("shutdown", &token)).await, 303);
    assert!(on_node2.closed_within(LIMIT).await);

    // maint, then ready again.
    assert_eq!(post(web, ADMIN, &form("maint", &token)).await, 303);
    let (_, csv) = get(web, "/;csv", Some(ADMIN)).await;
    assert!(csv.lines().any(|l| l.starts_with("replicas,node2,") && l.contains(",MAINT,")));
    assert_eq!(post(web, ADMIN, &form("ready", &token)).await, 303);
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..4 {
        seen.insert(connect(replicas).await.unwrap().server);
    }
    assert_eq!(seen.len(), 2, "node2 back in rotation");
    let (_, html) = get(web, "/", Some(ADMIN)).await;
    assert!(html.contains("by admin"), "actions are in the transition log with the user");
    assert!(!html.contains("secret") && !html.contains("look"), "no password on the page");
}

/// Connections that began a request and stall (dashboards mid-request), until every main
/// web place is held and the accept loop waits with a quick place for the next one.
async fn hold_every_web_place(pg: &pgfront::app::Pgfront) -> Vec<tokio::net::TcpStream> {
    let web = pg.web_addr().unwrap();
    let shares = &pg.shared().shares;
    let quick = shares.web_quick.available_permits();
    let places = || (shares.web.available_permits(), shares.web_quick.available_permits());
    let mut idle = Vec::new();
    while places() != (0, quick - 1) {
        assert!(idle.len() <= 100, "the web never took every place");
        // One at a time: each accepted connection takes a place and the loop the next.
        // Each sends a part of its request: with TCP_DEFER_ACCEPT one that sends nothing
        // is not accepted.
        let before = places();
        let mut c = tokio::net::TcpStream::connect(web).await.unwrap();
        c.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        idle.push(c);
        eventually(LIMIT, "the connection accepted", || places() != before).await;
    }
    idle
}

#[tokio::test]
async fn health_answers_at_once_while_dashboards_hold_every_web_place() {
    // Pacemaker's monitor GETs /health with a 5 s timeout and restarts pgfront when it
    // fails. Failed before the quick lane: with every place held by idle connections, the
    // GET waited in the backlog for one to time out (10 s).
    let lab = Lab::start(1).await;
    let pg = start(&lab.config(""));
    let web = pg.web_addr().unwrap();
    let idle = hold_every_web_place(&pg).await;
    let (status, body) =
        tokio::time::timeout(Duration::from_secs(5), get(web, "/health", None)).await.expect("/health waited");
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    // The quick lane answers nothing else: the page is asked to come back.
    let (status, body) = tokio::time::timeout(Duration::from_secs(5), get(web, "/status.json", Some(ADMIN)))
        .await
        .expect("the quick lane waited");
    assert_eq!((status, body.as_str()), (503, "busy: try again\n"));
    drop(idle);
    let shares = &pg.shared().shares;
    eventually(LIMIT, "the page is served again", || shares.web.available_permits() > 0).await;
}

/// With every web place held, a crowd in the backlog ahead of the monitor's request:
/// silent connections, ones that send a byte or a /health request line and stall, and ones
/// that ask for the page. /health must answer within Pacemaker's 5 s, and those that asked
/// for something else are told to come back (a 503 and a clean close, not a reset).
async fn health_answers_behind_a_crowd(config: &str) {
    let pg = start(config);
    let web = pg.web_addr().unwrap();
    let _idle = hold_every_web_place(&pg).await;
    let mut stalled = Vec::new();
    let mut asking = Vec::new();
    for i in 0..200 {
        let mut c = tokio::net::TcpStream::connect(web).await.unwrap();
        match i % 5 {
            0 => c.write_all(b"G").await.unwrap(),
            1 => c.write_all(b"GET /health HTTP/1.1\r\n").await.unwrap(),
            2 => {
                c.write_all(b"GET /stats;csv HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
                asking.push(c);
                continue;
            }
            _ => {}
        }
        stalled.push(c);
    }
    let (status, body) =
        tokio::time::timeout(Duration::from_secs(5), get(web, "/health", None)).await.expect("/health waited");
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    // An outer balancer's HEAD is let in too.
    let answer = tokio::time::timeout(Duration::from_secs(5), raw(web, "HEAD /health HTTP/1.0\r\n\r\n"))
        .await
        .expect("HEAD /health waited");
    assert!(answer.starts_with("HTTP/1.0 200 ") && answer.ends_with("\r\n\r\n"), "{answer}");
    for mut c in asking {
        let mut answer = String::new();
        tokio::time::timeout(LIMIT, c.read_to_string(&mut answer)).await.expect("no answer").unwrap();
        assert!(answer.starts_with("HTTP/1.1 503 ") && answer.contains("Retry-After: 1\r\n"), "{answer}");
        assert!(answer.ends_with("\r\n\r\nbusy: try again\n"), "{answer}");
    }
}

#[tokio::test]
async fn health_answers_at_once_behind_a_crowd_of_silent_and_slow_connections() {
    // Failed before the door (16 to 34 s measured: the quick lane took the crowd one by
    // one, each for half a second), and before the door waited for a whole head (a /health
    // request line that stalls held the lane for half a second).
    let lab = Lab::start(1).await;
    health_answers_behind_a_crowd(&lab.config("")).await;
}

#[tokio::test]
async fn health_answers_behind_a_crowd_without_defer_accept_too() {
    // Silent connections are accepted at once here, and each costs the door 50 ms.
    let lab = Lab::start(1).await;
    health_answers_behind_a_crowd(&lab.config("").replace("[global]\n", "[global]\ndefer_accept = false\n")).await;
}

#[tokio::test]
async fn a_leader_whose_answers_stop_has_its_write_gap_from_its_first_failed_answer() {
    // Found by helper-40: when the leader's REST API stopped answering, its claim ended
    // (leader none) before its write check's mark-down, so the panel had no
    // writes_stopped_at and counted the write gap from the claim's end, not from the
    // first failed answer, when new writes were already held (9.7 s shown for about 16 s).
    let lab = Lab::start(3).await;
    lab.leader(0);
    let pg = start(&lab.config(""));
    let web = pg.web_addr().unwrap();
    eventually(LIMIT, "leader up", || pg.shared().runtime().listener("primary").unwrap().servers_up() == 1).await;
    lab.nodes[0].rest.set_all(Some(Answer::Hang));
    eventually(LIMIT, "no leader", || pg.shared().runtime().leadership.leader().is_none()).await;
    lab.leader(1);
    let failover = || async {
        let (_, json) = get(web, "/status.json", Some(ADMIN)).await;
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        v["failovers"].as_array().and_then(|f| f.iter().find(|f| f["to"] == "node2").cloned())
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let f = loop {
        match failover().await {
            Some(f) if f["complete"] == true => break f,
            other => assert!(tokio::time::Instant::now() < deadline, "never settled: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let stopped = f["writes_stopped_at"].as_f64().unwrap_or_else(|| panic!("no writes_stopped_at: {f}"));
    assert!(stopped <= f["flip_at"].as_f64().unwrap(), "{f}");
}

#[tokio::test]
async fn sessions_cut_by_a_mark_down_are_counted_in_the_metrics() {
    // Found by helper-44: the count of sessions a mark-down or an operator cut (HAProxy's
    // "killed") was kept but not exported.
    let lab = Lab::start(3).await;
    lab.leader(0);
    let pg = start(&lab.config(""));
    let web = pg.web_addr().unwrap();
    eventually(LIMIT, "replicas up", || pg.shared().runtime().listener("replicas").unwrap().servers_up() == 2).await;
    let mut reader = connect_to(pg.listener_addr("replicas").unwrap(), "node2").await;
    lab.nodes[1].rest.set_all(Some(Answer::Reset));
    assert!(reader.closed_within(LIMIT).await, "cut at the mark-down");
    let (_, text) = get(web, "/metrics", Some(ADMIN)).await;
    let line = r#"pgfront_server_killed_sessions_total{listener="replicas",server="node2"} 1"#;
    assert!(
        text.lines().any(|l| l == line),
        "{}",
        text.lines().filter(|l| l.contains("killed")).collect::<Vec<_>>().join("\n")
    );
}
