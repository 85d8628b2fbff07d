//! Ordinary bad days, against scripted REST fakes and echo backends: a REST blip, a
//! rebuilt cluster, reloads mid-flight, a frozen handshake, a stop with sessions held.
//! Each test failed before the fix it guards (see the issue note for their output).

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use pgfront::Config;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const LIMIT: Duration = Duration::from_secs(10);

fn up_count(pg: &pgfront::Pgfront, listener: &str) -> usize {
    pg.shared().runtime().listener(listener).map_or(0, |l| l.servers_up())
}

fn parse(text: &str) -> Config {
    Config::parse(Path::new("faults.toml"), text).unwrap()
}

/// The usual config with the replica listener honouring `pgfront.target` (like 5002).
fn reads_config(lab: &Lab, extra: &str) -> String {
    lab.config(extra).replace(
        "name = \"replicas\"\nbind = \"127.0.0.1:0\"\nbalance = \"roundrobin\"",
        "name = \"replicas\"\nbind = \"127.0.0.1:0\"\nbalance = \"roundrobin\"\nclient_target = true",
    )
}

/// Opens a session asking for the primary; returns it and the backend's name.
async fn primary_session(addr: SocketAddr) -> (TcpStream, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&startup_message(&[("user", "u"), ("options", "-c pgfront.target=primary")])).await.unwrap();
    let mut ok = [0u8; 9];
    s.read_exact(&mut ok).await.unwrap();
    assert_eq!(ok[0], b'R');
    let mut name = Vec::new();
    loop {
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await.unwrap();
        if b[0] == b'\n' {
            return (s, String::from_utf8(name).unwrap());
        }
        name.push(b[0]);
    }
}

async fn still_open(s: &mut TcpStream) -> bool {
    if s.write_all(b"ping").await.is_err() {
        return false;
    }
    let mut b = [0u8; 4];
    matches!(tokio::time::timeout(LIMIT, s.read_exact(&mut b)).await, Ok(Ok(_))) && &b == b"ping"
}

fn failures(pg: &pgfront::Pgfront, listener: &str, server: &str) -> u64 {
    let rt = pg.shared().runtime();
    let l = rt.listener(listener).unwrap();
    l.servers.iter().find(|s| s.name == server).unwrap().check.report().failures
}

#[tokio::test]
async fn a_rest_blip_of_the_leader_cuts_nothing_and_is_no_leader_change() {
    let lab = Lab::start(3).await;
    lab.leader(0);
    // fall 4: a blip of one or two failed probes stays below it.
    let pg = start(&reads_config(&lab, "").replace("fall = 2", "fall = 4"));
    eventually(LIMIT, "all up", || up_count(&pg, "replicas") == 2 && up_count(&pg, "primary") == 1).await;
    let (mut asked, on) = primary_session(pg.listener_addr("replicas").unwrap()).await;
    assert_eq!(on, "node1");
    let mut writer = connect(pg.listener_addr("primary").unwrap()).await.unwrap();
    let changes = pg.shared().runtime().leadership.changes.load(Ordering::SeqCst);

    // The leader's agent stops answering for one probe (busy, or restarting), then is back.
    let before = failures(&pg, "primary", "node1");
    lab.nodes[0].rest.set_all(Some(Answer::Reset));
    eventually(LIMIT, "one probe failed", || failures(&pg, "primary", "node1") > before).await;
    lab.nodes[0].rest.set_all(None);
    eventually(LIMIT, "answering again", || up_count(&pg, "primary") == 1).await;

    assert!(still_open(&mut asked).await, "the session that asked for the primary was cut by a blip");
    writer.echo(b"the writer too").await.unwrap();
    let after = pg.shared().runtime().leadership.changes.load(Ordering::SeqCst);
    assert_eq!(after, changes, "a blip counted as leader changes");

    // Losing the leader for good still ends the term after fall failures.
    lab.nodes[0].rest.set_all(Some(Answer::Reset));
    let mut b = [0u8; 8];
    let r = tokio::time::timeout(LIMIT, asked.read(&mut b)).await.expect("ended after fall");
    assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
}

#[tokio::test]
async fn a_rebuilt_cluster_takes_writes_again_without_a_restart() {
    let lab = Lab::start(3).await;
    let status = |role: &str, tl: u64, id: &str| {
        format!(
            r#"{{"state": "running", "role": "{role}", "timeline": {tl}, "database_system_identifier": "{id}", "xlog": {{"location": 1000}}}}"#
        )
    };
    let play = |leader: usize, tl: u64, id: &str| {
        for (i, n) in lab.nodes.iter().enumerate() {
            n.rest.patroni(if i == leader { "primary" } else { "replica" }, tl);
            n.rest.set_json(&status(if i == leader { "primary" } else { "replica" }, tl, id));
        }
    };
    play(0, 7, "7001");
    let pg = start(&lab.config(""));
    let writes = pg.listener_addr("primary").unwrap();
    eventually(LIMIT, "node1 leads on timeline 7", || up_count(&pg, "primary") == 1).await;
    assert_eq!(connect(writes).await.unwrap().server, "node1");

    // Re-bootstrapped: a new database, timeline 1, node2 leads.
    play(1, 1, "7999");
    eventually(LIMIT, "writes resume on the rebuilt cluster", || {
        let rt = pg.shared().runtime();
        rt.leadership.leader() == Some(1) && up_count(&pg, "primary") == 1
    })
    .await;
    assert_eq!(connect(writes).await.unwrap().server, "node2");
    let (_, metrics) = http_get(pg.web_addr().unwrap(), "/metrics", None).await;
    assert!(metrics.contains("pgfront_cluster_identity_changes_total 1"), "{metrics}");
    assert!(metrics.contains(r#"pgfront_cluster_info{system_identifier="7999"} 1"#));
    let (_, page) = http_get(pg.web_addr().unwrap(), "/", Some("YWRtaW46c2VjcmV0")).await;
    assert!(page.contains("cluster identity changed") && page.contains("7999"), "the page says so");
}

#[tokio::test]
async fn a_reload_that_changes_only_timings_keeps_every_server_up() {
    let lab = Lab::start(3).await;
    lab.leader(0);
    let text = lab.config("");
    let pg = start(&text);
    eventually(LIMIT, "all up", || up_count(&pg, "replicas") == 2 && up_count(&pg, "primary") == 1).await;
    let mut live = connect(pg.listener_addr("replicas").unwrap()).await.unwrap();
    // The check's connect bound is min(timeout_connect, inter): 50ms -> 30ms, and inter too.
    let changed = text
        .replace("timeout_connect = \"500ms\"", "timeout_connect = \"30ms\"")
        .replace("inter = \"50ms\"\nfastinter", "inter = \"60ms\"\nfastinter");
    let downs = |pg: &pgfront::Pgfront| -> u64 {
        let rt = pg.shared().runtime();
        rt.listeners.iter().flat_map(|l| &l.servers).map(|s| s.check.report().downs).sum()
    };
    let downs_before = downs(&pg);
    pg.reload(parse(&changed)).unwrap();
    assert_eq!(up_count(&pg, "replicas"), 2, "a timing change sent the replicas back to DOWN");
    assert_eq!(up_count(&pg, "primary"), 1);
    let rt = pg.shared().runtime();
    let check = &rt.listener("replicas").unwrap().servers[1].check;
    assert_eq!(check.spec.timing.connect_timeout, Duration::from_millis(30), "the new timing applies");
    assert_eq!(check.spec.timing.inter, Duration::from_millis(60));
    drop(rt);
    live.echo(b"still here").await.unwrap();
    assert_eq!(downs(&pg), downs_before);
}

#[tokio::test]
async fn fallback_sessions_end_at_a_failover_after_a_reload_that_changed_the_nodes() {
    let lab = Lab::start(4).await;
    lab.leader(0);
    let text = reads_config(&lab, "");
    let pg = start(&text);
    eventually(LIMIT, "all up", || up_count(&pg, "replicas") == 3 && up_count(&pg, "primary") == 1).await;
    let (mut asked, on) = primary_session(pg.listener_addr("replicas").unwrap()).await;
    assert_eq!(on, "node1");
    // node4 leaves the configuration: a new node list, a rebuilt leadership.
    let node4 = format!(
        "[[node]]\nname = \"node4\"\naddress = \"{}\"\ncheck_address = \"{}\"\n\n",
        lab.nodes[3].backend.addr, lab.nodes[3].rest.addr
    );
    assert!(text.contains(&node4));
    pg.reload(parse(&text.replace(&node4, ""))).unwrap();
    assert!(still_open(&mut asked).await, "the reload itself cuts nothing");
    // A failover after the reload must end the session on the demoted leader.
    lab.leader(2);
    let mut b = [0u8; 8];
    let r = tokio::time::timeout(LIMIT, asked.read(&mut b)).await.expect("the orphaned session was never cut");
    assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
}

#[tokio::test]
async fn a_stop_ends_sessions_still_connecting() {
    // Before: hard_stop_after ended only copying sessions; one still connecting to a
    // server that never answers its startup kept the stop waiting for timeout_connect.
    let lab = Lab::start(1).await;
    lab.leader(0);
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s); // accepted, never answered
        }
    });
    let text = lab
        .config("")
        .replace("timeout_connect = \"500ms\"", "timeout_connect = \"60s\"")
        .replace(&lab.nodes[0].backend.addr.to_string(), &silent_addr.to_string());
    let pg = start(&text);
    eventually(LIMIT, "up", || up_count(&pg, "primary") == 1).await;
    let mut connecting = TcpStream::connect(pg.listener_addr("primary").unwrap()).await.unwrap();
    connecting.write_all(&startup_message(&[("user", "u")])).await.unwrap();
    eventually(LIMIT, "connecting", || pg.shared().runtime().sessions() == 1).await;
    let stopped = tokio::time::timeout(LIMIT, pg.shutdown(Duration::from_millis(100))).await;
    assert!(stopped.is_ok(), "the hard stop waited for a session still connecting");
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(LIMIT, connecting.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the client is closed by the stop");
}

#[tokio::test]
async fn idle_accept_loops_hold_no_global_place() {
    let lab = Lab::start(3).await;
    lab.leader(0);
    let pg = start(&lab.config("").replace("hard_stop_after = \"5s\"", "hard_stop_after = \"5s\"\nmaxconn = 2"));
    eventually(LIMIT, "all up", || up_count(&pg, "replicas") == 2).await;
    let replicas = pg.listener_addr("replicas").unwrap();
    let _one = connect(replicas).await.unwrap();
    // One session of two is open: a second must be served, although the primary
    // listener's accept loop sits idle.
    let two = tokio::time::timeout(LIMIT, connect(replicas)).await;
    assert!(two.is_ok_and(|c| c.is_ok()), "an idle accept loop held the place");
}

#[tokio::test]
async fn drain_and_maint_are_reported_in_server_status() {
    let lab = Lab::start(2).await;
    lab.leader(0);
    let pg = start(&lab.config(""));
    eventually(LIMIT, "up", || up_count(&pg, "primary") == 1 && up_count(&pg, "replicas") == 1).await;
    let rt = pg.shared().runtime();
    rt.listener("primary").unwrap().servers[0].set_admin(pgfront::cluster::AdminState::Drain);
    rt.listener("replicas").unwrap().servers[1].set_admin(pgfront::cluster::AdminState::Maint);
    let (_, m) = http_get(pg.web_addr().unwrap(), "/metrics", None).await;
    for line in [
        r#"pgfront_server_status{listener="primary",server="node1",state="DRAIN"} 1"#,
        r#"pgfront_server_status{listener="primary",server="node1",state="UP"} 0"#,
        r#"pgfront_server_status{listener="replicas",server="node2",state="MAINT"} 1"#,
        r#"pgfront_server_status{listener="replicas",server="node2",state="DOWN"} 0"#,
    ] {
        assert!(m.contains(line), "missing {line}");
    }
}

/// A PostgreSQL stand-in that accepts TLS (answers an SSLRequest `S`) and then waits.
async fn accepts_ssl() -> SocketAddr {
    let socket = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = socket.accept().await {
            tokio::spawn(async move {
                let mut head = [0u8; 8];
                if s.read_exact(&mut head).await.is_ok() {
                    let _ = s.write_all(b"S").await;
                }
                let mut sink = [0u8; 1024];
                while matches!(s.read(&mut sink).await, Ok(n) if n > 0) {}
            });
        }
    });
    addr
}

#[tokio::test]
async fn plain_text_after_the_server_accepted_ssl_is_refused_not_relayed() {
    let lab = Lab::start(1).await;
    lab.leader(0);
    let backend = accepts_ssl().await;
    let text =
        lab.config("timeout_startup = \"200ms\"").replace(&lab.nodes[0].backend.addr.to_string(), &backend.to_string());
    let pg = start(&text);
    eventually(LIMIT, "up", || up_count(&pg, "primary") == 1).await;
    let mut c = TcpStream::connect(pg.listener_addr("primary").unwrap()).await.unwrap();
    c.write_all(&OPENING).await.unwrap();
    let mut s = [0u8; 1];
    c.read_exact(&mut s).await.unwrap();
    assert_eq!(&s, b"S", "the server's answer is relayed");
    // A broken client continues in plain text instead of starting TLS.
    c.write_all(&startup_message(&[("user", "u")])).await.unwrap();
    let mut first = [0u8; 1];
    let r = tokio::time::timeout(LIMIT, c.read_exact(&mut first)).await.expect("the session hung");
    assert!(r.is_ok() && first[0] == b'E', "a readable error: {r:?} {first:?}");
    let fatal = read_error(&mut c).await;
    assert_eq!(fatal.code, "08P01", "{fatal:?}");
    // A client that says nothing at all is closed after timeout_startup.
    let mut quiet = TcpStream::connect(pg.listener_addr("primary").unwrap()).await.unwrap();
    quiet.write_all(&OPENING).await.unwrap();
    quiet.read_exact(&mut s).await.unwrap();
    let mut rest = Vec::new();
    let r = tokio::time::timeout(LIMIT, quiet.read_to_end(&mut rest)).await;
    assert!(r.is_ok(), "a silent client after S hung");
}

#[tokio::test]
async fn connects_in_flight_are_bounded_and_released_at_ready_for_query_or_timeout() {
    let lab = Lab::start(1).await;
    lab.leader(0);
    // One connect at a time; the fake backends never send ReadyForQuery, so each place
    // comes back only after timeout_connect (500ms).
    let pg = start(&lab.config("max_connecting = 1\ntimeout_queue = \"5s\""));
    eventually(LIMIT, "up", || up_count(&pg, "primary") == 1).await;
    let addr = pg.listener_addr("primary").unwrap();
    let (_first, on) = primary_session(addr).await;
    assert_eq!(on, "node1");
    let server =
        || pg.shared().runtime().listener("primary").unwrap().servers[0].stats.connecting.load(Ordering::SeqCst);
    assert_eq!(server(), 1, "the first session is still authenticating");
    // The second waits for the place, then gets it: served, not refused.
    let (_second, on) = tokio::time::timeout(LIMIT, primary_session(addr)).await.expect("never released");
    assert_eq!(on, "node1");
    let queued = pg.shared().runtime().listener("primary").unwrap().stats.queue_max.load(Ordering::SeqCst);
    assert_eq!(queued, 1, "the second session waited in the queue");
}

#[tokio::test]
async fn opaque_sessions_give_their_connect_place_back_once_the_server_answered() {
    // Before: a session opened with an SSLRequest (libpq's default) kept its place among
    // the server's connects in flight for its whole life; after max_connecting of them,
    // every newcomer waited for timeout_queue with the server nearly idle.
    let lab = Lab::start(1).await;
    lab.leader(0);
    let pg = start(&lab.config("max_connecting = 2"));
    eventually(LIMIT, "up", || up_count(&pg, "primary") == 1).await;
    let addr = pg.listener_addr("primary").unwrap();
    let mut held = Vec::new();
    for i in 0..5 {
        let c = tokio::time::timeout(LIMIT, connect(addr)).await;
        held.push(c.unwrap_or_else(|_| panic!("session {i} waited for a connect place")).unwrap());
    }
    let connecting =
        pg.shared().runtime().listener("primary").unwrap().servers[0].stats.connecting.load(Ordering::SeqCst);
    assert_eq!(connecting, 0);
}

#[tokio::test]
async fn a_reload_that_removes_a_node_before_the_leader_changes_nothing_else() {
    // Before: nodes were kept only at the same position, so removing the first node rebuilt
    // every other node's state and checks (DOWN until rise) and counted a leader change.
    let lab = Lab::start(3).await;
    lab.leader(2);
    let text = reads_config(&lab, "");
    let pg = start(&text);
    eventually(LIMIT, "all up", || up_count(&pg, "replicas") == 2 && up_count(&pg, "primary") == 1).await;
    let (mut asked, on) = primary_session(pg.listener_addr("replicas").unwrap()).await;
    assert_eq!(on, "node3");
    let changes = pg.shared().runtime().leadership.changes.load(Ordering::SeqCst);
    let node1 = format!(
        "[[node]]\nname = \"node1\"\naddress = \"{}\"\ncheck_address = \"{}\"\n\n",
        lab.nodes[0].backend.addr, lab.nodes[0].rest.addr
    );
    pg.reload(parse(&text.replace(&node1, ""))).unwrap();
    assert_eq!(up_count(&pg, "primary"), 1, "the leader stays admitted");
    assert_eq!(up_count(&pg, "replicas"), 1, "node2 stays up");
    let rt = pg.shared().runtime();
    assert_eq!(rt.leadership.leader(), Some(1), "node3, now second in the list, still leads");
    drop(rt);
    assert!(still_open(&mut asked).await, "the session sent to the unchanged leader survives");
    // Let a few probes pass: still no change counted.
    let probes = lab.nodes[2].rest.hits("/primary");
    eventually(LIMIT, "probed again", || lab.nodes[2].rest.hits("/primary") > probes + 2).await;
    assert_eq!(pg.shared().runtime().leadership.changes.load(Ordering::SeqCst), changes);
}

#[tokio::test]
async fn sessions_waiting_for_the_primary_go_when_the_leader_answers_again() {
    // A session asking for the primary on a read listener during a REST blip goes as soon
    // as the leader answers again (before, only at the next passing probe of some other
    // server of that listener, up to `inter` later: this test, at inter 50ms, cannot tell).
    let lab = Lab::start(3).await;
    lab.leader(0);
    let pg = start(
        &reads_config(&lab, "")
            .replace("fall = 2", "fall = 4")
            .replace("client_target = true", "client_target = true\ntimeout_queue = \"60s\""),
    );
    eventually(LIMIT, "all up", || up_count(&pg, "replicas") == 2 && up_count(&pg, "primary") == 1).await;
    let before = failures(&pg, "primary", "node1");
    lab.nodes[0].rest.set_all(Some(Answer::Reset));
    eventually(LIMIT, "one probe failed", || failures(&pg, "primary", "node1") > before).await;
    let addr = pg.listener_addr("replicas").unwrap();
    let waiting = tokio::spawn(primary_session(addr));
    let queued = || pg.shared().runtime().listener("replicas").unwrap().stats.queue_cur.load(Ordering::SeqCst);
    eventually(LIMIT, "held while the leader's latest answer failed", || queued() == 1).await;
    lab.nodes[0].rest.set_all(None);
    let (_s, on) =
        tokio::time::timeout(LIMIT, waiting).await.expect("still waiting after the leader answered").unwrap();
    assert_eq!(on, "node1");
}

#[tokio::test]
async fn one_lying_answer_of_a_higher_timeline_does_not_leave_the_cluster_leaderless() {
    // Before: node2's one answer claiming the leader lock on timeline 8, then replica on
    // timeline 1 again, raised the timeline floor for good: node1, the real leader on
    // timeline 1, was refused as stale until pgfront was restarted (57P03 to every writer).
    let lab = Lab::start(3).await;
    lab.leader(0);
    let pg = start(&lab.config(""));
    let leads = |name: &str| {
        let rt = pg.shared().runtime();
        let l = rt.listener("primary").unwrap();
        l.servers_up() == 1 && l.servers.iter().any(|s| s.name == name && s.is_up())
    };
    eventually(LIMIT, "node1 leads", || leads("node1")).await;
    lab.nodes[1].rest.patroni("primary", 8);
    eventually(LIMIT, "node2's claim on timeline 8 is followed", || leads("node2")).await;
    lab.nodes[1].rest.patroni("replica", 1);
    eventually(LIMIT, "node1 leads again: node2 took its timeline back", || leads("node1")).await;
    let mut writer = connect(pg.listener_addr("primary").unwrap()).await.unwrap();
    assert_eq!(writer.server, "node1");
    writer.echo(b"a write").await.unwrap();
}

#[tokio::test]
async fn one_refusal_from_the_leader_cuts_no_session_on_any_listener() {
    // Before: one readable 503 on /primary from the leader (Patroni answers so while its
    // lock looks expired for a moment, its loop held up by a slow etcd) ended the claim at
    // once: the session that asked the read listener for the primary was cut, while the
    // write listener's, checked with `fall`, was kept.
    let lab = Lab::start(3).await;
    lab.leader(0);
    let pg = start(&reads_config(&lab, "").replace("fall = 2", "fall = 4"));
    eventually(LIMIT, "all up", || up_count(&pg, "replicas") == 2 && up_count(&pg, "primary") == 1).await;
    let (mut asked, on) = primary_session(pg.listener_addr("replicas").unwrap()).await;
    assert_eq!(on, "node1");
    let mut writer = connect(pg.listener_addr("primary").unwrap()).await.unwrap();

    let refuse = |code| {
        for path in ["/primary", "/master"] {
            lab.nodes[0].rest.set(path, Answer::Status(code));
        }
    };
    let before = failures(&pg, "primary", "node1");
    let asks = lab.nodes[0].rest.hits("/primary");
    let leads = || pg.shared().runtime().leadership.ready_leader();
    refuse(503);
    eventually(LIMIT, "one refusal read: nobody leads", || {
        failures(&pg, "primary", "node1") > before && lab.nodes[0].rest.hits("/primary") > asks && leads().is_none()
    })
    .await;
    refuse(200);
    eventually(LIMIT, "leading again", || leads() == Some(0)).await;
    let asks = lab.nodes[0].rest.hits("/primary");
    eventually(LIMIT, "the lock confirmed again", || lab.nodes[0].rest.hits("/primary") > asks + 1).await;

    assert!(still_open(&mut asked).await, "the session that asked for the primary was cut by one refusal");
    writer.echo(b"the writer too").await.unwrap();

    // Refusing for good ends both after fall.
    refuse(503);
    for (name, s) in [("asked", &mut asked), ("writer", &mut writer.stream)] {
        let mut b = [0u8; 8];
        let r = tokio::time::timeout(LIMIT, s.read(&mut b)).await.unwrap_or_else(|_| panic!("{name} kept"));
        assert!(matches!(r, Ok(0) | Err(_)), "{name}: {r:?}");
    }
}

#[tokio::test]
async fn the_node_table_shows_an_unreadable_answer_not_the_last_readable_one() {
    // Before: after a 200 whose body was not Patroni's JSON, every listener showed the node
    // DOWN with L7RSP while the node table still said L7OK/200 (the HTTP exchange itself).
    let lab = Lab::start(3).await;
    lab.leader(0);
    let pg = start(&lab.config(""));
    eventually(LIMIT, "node1 leads", || up_count(&pg, "primary") == 1).await;
    let node1 = || pgfront::stats::Snapshot::of(pg.shared()).nodes.into_iter().find(|n| n.name == "node1").unwrap();
    assert!(node1().last_check.starts_with("L7OK"), "{}", node1().last_check);
    lab.nodes[0].rest.set_body("/primary", "<html>not Patroni</html>");
    eventually(LIMIT, "node1 DOWN", || up_count(&pg, "primary") == 0).await;
    let shown = node1().last_check;
    assert!(shown.starts_with("L7RSP"), "{shown}");
}

#[tokio::test]
async fn a_former_leader_has_its_write_sessions_cut_when_its_claim_ends_whatever_on_marked_down_says() {
    // Before: with on_marked_down = "none" (what import-haproxy writes for a haproxy.cfg
    // without shutdown-sessions), a leader whose REST API hung reached DOWN by `fall`, which
    // cut nothing, as asked; when another node then took the lock, forcing the former
    // leader DOWN changed nothing (already DOWN), and its write sessions stayed open on a
    // PostgreSQL that may still accept writes: two primaries written at once. Then (found
    // by helper-44 on the real lab) they were cut only once another node led, a moment
    // after its promotion: writes acknowledged by the old primary in between were lost.
    let lab = Lab::start(3).await;
    lab.leader(0);
    let pg = start(&lab.config("on_marked_down = \"none\""));
    eventually(LIMIT, "all up", || up_count(&pg, "replicas") == 2 && up_count(&pg, "primary") == 1).await;
    let mut writer = connect(pg.listener_addr("primary").unwrap()).await.unwrap();
    writer.echo(b"on the leader").await.unwrap();

    // Its check alone goes DOWN by fall (the claim counts fall 4): "none" keeps the session.
    let text = lab.config("on_marked_down = \"none\"").replace("[[node]]", "[[node]]\n");
    drop(text);
    lab.nodes[0].rest.set_all(Some(Answer::Hang));
    let down = || {
        let rt = pg.shared().runtime();
        let l = rt.listener("primary").unwrap();
        l.servers[0].check.report().machine.status() == pgfront::health::Status::Down
    };
    eventually(LIMIT, "the hung leader's check is DOWN by fall", down).await;
    // Its claim ends with the same fall: nobody vouches for it any more, and a PostgreSQL
    // whose agent died would take writes after a promotion elsewhere (found by helper-44:
    // 42 acknowledged writes lost with "none", kept until another node led).
    assert!(writer.closed_within(LIMIT).await, "the former leader's write session was kept");
    lab.leader(1);
    eventually(LIMIT, "node2 leads", || pg.shared().runtime().leadership.ready_leader() == Some(1)).await;
    let mut second = connect(pg.listener_addr("primary").unwrap()).await.unwrap();
    second.echo(b"on the new leader").await.unwrap();
}

#[tokio::test]
async fn renaming_the_leaders_node_is_no_leader_change_and_cuts_nothing() {
    // Found by helper-41: a reload that only renamed the leader's [[node]] (same address,
    // same REST API) made it a new node: the term ended, so sessions that asked the read
    // listener for the primary were cut (reason leader_changed), and a leader change was
    // counted (a rename storm counted 663).
    let lab = Lab::start(3).await;
    lab.leader(0);
    let text = reads_config(&lab, "");
    let pg = start(&text);
    eventually(LIMIT, "all up", || up_count(&pg, "replicas") == 2 && up_count(&pg, "primary") == 1).await;
    let (mut asked, on) = primary_session(pg.listener_addr("replicas").unwrap()).await;
    assert_eq!(on, "node1");
    let changes = pg.shared().runtime().leadership.changes.load(Ordering::SeqCst);
    let renamed = text.replace("name = \"node1\"", "name = \"first\"");
    assert_ne!(renamed, text);
    pg.reload(parse(&renamed)).unwrap();
    let rt = pg.shared().runtime();
    assert_eq!(rt.leadership.leader(), Some(0), "the renamed node still leads");
    drop(rt);
    let probes = lab.nodes[0].rest.hits("/primary");
    eventually(LIMIT, "probed again", || lab.nodes[0].rest.hits("/primary") > probes + 2).await;
    eventually(LIMIT, "the leader admitted under its new name", || up_count(&pg, "primary") == 1).await;
    assert!(still_open(&mut asked).await, "the session sent to the leader was cut by a rename");
    assert_eq!(
        pg.shared().runtime().leadership.changes.load(Ordering::SeqCst),
        changes,
        "a rename counted as a leader change"
    );
    // The term goes on under the new name: a failover still ends the session.
    lab.leader(1);
    let mut b = [0u8; 8];
    let r = tokio::time::timeout(LIMIT, asked.read(&mut b)).await.expect("the session was never cut at the failover");
    assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
}

#[tokio::test]
async fn sessions_sent_to_a_new_leader_survive_its_replica_check_going_down() {
    // Found by helper-40 on the real lab: after every switchover, the sessions that asked
    // the reads port for the primary went to the new leader, and about 2 s later that
    // port's own /replica check marked the node DOWN ("not a replica") and shutdown-sessions
    // cut them all (19 to 26 sessions per switchover). They end with the leader's term.
    let lab = Lab::start(3).await;
    lab.leader(0);
    let pg = start(&reads_config(&lab, ""));
    eventually(LIMIT, "all up", || up_count(&pg, "replicas") == 2 && up_count(&pg, "primary") == 1).await;
    let replica_up = |name: &str| {
        let rt = pg.shared().runtime();
        rt.listener("replicas").unwrap().servers.iter().any(|s| s.name == name && s.is_up())
    };
    // node2 is promoted; its replica check on the reads port still passes for a while.
    lab.leader(1);
    eventually(LIMIT, "node2 leads", || pg.shared().runtime().leadership.ready_leader() == Some(1)).await;
    let (mut asked, on) = primary_session(pg.listener_addr("replicas").unwrap()).await;
    assert_eq!(on, "node2");
    let mut reader = connect_to(pg.listener_addr("replicas").unwrap(), "node3").await;
    eventually(LIMIT, "node2's replica check DOWN", || !replica_up("node2")).await;
    assert!(still_open(&mut asked).await, "the session sent to the leader was cut by the reads port's replica check");
    reader.echo(b"node3 untouched").await.unwrap();
    // Its term still ends it: another failover.
    lab.leader(2);
    let mut b = [0u8; 8];
    let r = tokio::time::timeout(LIMIT, asked.read(&mut b)).await.expect("kept past its term");
    assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
}

#[tokio::test]
async fn a_lag_bound_that_cannot_be_measured_admits_nobody_and_cuts_nothing() {
    // Found by helper-40 on the real lab: with /replica?lag=16MB, a 12 s stall of the
    // leader's Patroni agent left no leader position to measure against; the lag bound
    // failed closed, every replica went DOWN by fall and shutdown-sessions cut their
    // sessions, though nothing was known against them (Patroni's own lag check, which
    // HAProxy asks, kept answering 200).
    let lab = Lab::start(3).await;
    lab.leader(0);
    let text = lab.config("").replace("path = \"/replica\"", "path = \"/replica?lag=16MB\"");
    assert!(text.contains("lag=16MB"));
    let pg = start(&text);
    eventually(LIMIT, "all up", || up_count(&pg, "replicas") == 2 && up_count(&pg, "primary") == 1).await;
    let mut reader = connect_to(pg.listener_addr("replicas").unwrap(), "node2").await;
    lab.nodes[0].rest.set_all(Some(Answer::Hang));
    eventually(LIMIT, "no new session on the replicas", || up_count(&pg, "replicas") == 0).await;
    let probes = lab.nodes[1].rest.hits("/patroni") + lab.nodes[1].rest.hits("/primary");
    eventually(LIMIT, "probed a few times more", || {
        lab.nodes[1].rest.hits("/patroni") + lab.nodes[1].rest.hits("/primary") > probes + 4
    })
    .await;
    reader.echo(b"still served: nothing is known against node2").await.unwrap();
    let rt = pg.shared().runtime();
    let check = &rt.listener("replicas").unwrap().servers.iter().find(|s| s.name == "node2").unwrap().check;
    assert!(check.report().machine.is_up(), "marked DOWN: {:?}", check.report().reason);
    drop(rt);
    lab.nodes[0].rest.set_all(None);
    eventually(LIMIT, "admitted again", || up_count(&pg, "replicas") == 2).await;
}

#[tokio::test]
async fn a_replica_that_accepts_and_never_answers_hands_its_sessions_to_another() {
    // Found by helper-40 on the real lab: a replica whose postmaster hung (SIGSTOP; its
    // Patroni agent answering, so its check passed) took its round-robin share of new
    // sessions; each waited timeout_connect for the answer to its startup, which spent the
    // hold (timeout_queue), and was refused "no server available" beside a healthy replica.
    let lab = Lab::start(3).await;
    lab.leader(0);
    // Never accepted: the kernel completes connections into its backlog, nothing answers.
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let node2 = format!("address = \"{}\"", lab.nodes[1].backend.addr);
    let text = lab.config("").replace(&node2, &format!("address = \"{}\"", silent.local_addr().unwrap()));
    assert_ne!(text, lab.config(""));
    let pg = start(&text);
    eventually(LIMIT, "all up", || up_count(&pg, "replicas") == 2 && up_count(&pg, "primary") == 1).await;
    let addr = pg.listener_addr("replicas").unwrap();
    for i in 0..4 {
        let c = connect(addr).await.unwrap_or_else(|e| panic!("session {i} refused: {} {}", e.code, e.message));
        assert_eq!(c.server, "node3", "session {i}");
    }
    let rt = pg.shared().runtime();
    let node2 = rt.listener("replicas").unwrap().servers.iter().find(|s| s.name == "node2").unwrap().clone();
    assert!(node2.stats.redispatches.load(Ordering::Relaxed) >= 1, "counted as redispatches");
}

#[tokio::test]
async fn a_reload_that_removes_the_leaders_node_says_the_leader_changed() {
    // Found by helper-40: after such a reload status.json said no leader and writes were
    // held, but no line, no event and no count said the leader had changed.
    let lab = Lab::start(3).await;
    lab.leader(0);
    let text = lab.config("");
    let pg = start(&text);
    eventually(LIMIT, "all up", || up_count(&pg, "replicas") == 2 && up_count(&pg, "primary") == 1).await;
    let changes = pg.shared().runtime().leadership.changes.load(Ordering::SeqCst);
    let node1 = format!(
        "[[node]]\nname = \"node1\"\naddress = \"{}\"\ncheck_address = \"{}\"\n\n",
        lab.nodes[0].backend.addr, lab.nodes[0].rest.addr
    );
    assert!(text.contains(&node1));
    pg.reload(parse(&text.replace(&node1, ""))).unwrap();
    let rt = pg.shared().runtime();
    assert_eq!(rt.leadership.leader(), None);
    assert_eq!(rt.leadership.changes.load(Ordering::SeqCst), changes + 1, "counted");
    assert!(rt.events.recent().iter().any(|e| e.text.contains("node1 -> none")), "an event says so");
}

#[tokio::test]
async fn a_replica_that_says_it_is_no_longer_one_takes_no_new_session_before_fall() {
    // Found by helper-40 on the real lab: a newly promoted node stayed in the read rotation
    // for `fall` answers of "not a replica" (2 s), taking new read sessions that the
    // mark-down then cut. A readable "no" now stops new sessions at once; the mark-down
    // still waits for fall, so sessions already there are not cut by one answer.
    let lab = Lab::start(3).await;
    lab.leader(0);
    let text = lab.config("").replace("fall = 2", "fall = 4").replace("fastinter = \"20ms\"", "fastinter = \"1s\"");
    assert!(text.contains("fall = 4") && text.contains("fastinter = \"1s\""));
    let pg = start(&text);
    eventually(LIMIT, "all up", || up_count(&pg, "replicas") == 2 && up_count(&pg, "primary") == 1).await;
    let addr = pg.listener_addr("replicas").unwrap();
    let mut reader = connect_to(addr, "node2").await;
    let check = || {
        let rt = pg.shared().runtime();
        let s = rt.listener("replicas").unwrap().servers.iter().find(|s| s.name == "node2").unwrap().clone();
        s.check.report()
    };
    let failures = check().failures;
    lab.leader(1);
    eventually(LIMIT, "node2 said it is no replica", || check().failures > failures).await;
    assert!(check().machine.is_up(), "not DOWN yet: fall is 4");
    for i in 0..6 {
        let c = connect(addr).await.unwrap_or_else(|e| panic!("session {i}: {} {}", e.code, e.message));
        assert_ne!(c.server, "node2", "session {i} sent to the node that said it is no replica");
    }
    reader.echo(b"kept until fall").await.unwrap();
}

#[tokio::test]
async fn a_session_asking_for_a_hung_leader_is_refused_at_its_hold_bound_not_redispatched_forever() {
    // Found by review (helper-45): after a server took no session, the redispatch skipped the
    // pause (the only check of the hold bound) whenever another server was up, though the
    // next pick came back to the same one: pgfront.target=primary on a reads port always
    // picks the leader, so a hung leader postmaster held such a session forever.
    let lab = Lab::start(3).await;
    lab.leader(0);
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let node1 = format!("address = \"{}\"", lab.nodes[0].backend.addr);
    // A hold bound the file sets: 500 ms for every session, those asking for the primary too.
    let reads = reads_config(&lab, "timeout_queue = \"500ms\"\n");
    let text = reads.replace(&node1, &format!("address = \"{}\"", silent.local_addr().unwrap()));
    assert_ne!(text, reads);
    let pg = start(&text);
    eventually(LIMIT, "all up", || up_count(&pg, "replicas") == 2 && up_count(&pg, "primary") == 1).await;
    let mut s = TcpStream::connect(pg.listener_addr("replicas").unwrap()).await.unwrap();
    s.write_all(&startup_message(&[("user", "u"), ("options", "-c pgfront.target=primary")])).await.unwrap();
    let mut b = [0u8; 1];
    let r = tokio::time::timeout(LIMIT, s.read(&mut b)).await.expect("held past its hold bound, never refused");
    assert!(matches!(r, Ok(1)) && b[0] == b'E', "{r:?} {b:?}");
    // Told what it asked for (helper-49 saw "no server available for listener" here).
    let fatal = read_error(&mut s).await;
    assert!(fatal.message.contains("asked for the primary"), "{fatal:?}");
}

#[tokio::test]
async fn a_renamed_leader_keeps_its_servers_so_its_write_sessions_end_at_a_failover() {
    // Found by review (helper-45): the renamed node kept its leadership but got new checks
    // (DOWN until rise) and new servers: the operator's MAINT was lost, and the write
    // sessions opened before the rename sat on a retired server that no later mark-down
    // reached, so a failover left them on the former primary.
    let lab = Lab::start(3).await;
    lab.leader(0);
    let text = lab.config("");
    let pg = start(&text);
    eventually(LIMIT, "all up", || up_count(&pg, "replicas") == 2 && up_count(&pg, "primary") == 1).await;
    let mut writer = connect(pg.listener_addr("primary").unwrap()).await.unwrap();
    assert_eq!(writer.server, "node1");
    let node2 = |rt: &pgfront::cluster::Runtime, name: &str| {
        Arc::clone(rt.listener("replicas").unwrap().servers.iter().find(|s| s.name == name).unwrap())
    };
    node2(&pg.shared().runtime(), "node2").set_admin(pgfront::cluster::AdminState::Drain);
    let renamed = text.replace("name = \"node1\"", "name = \"first\"").replace("name = \"node2\"", "name = \"second\"");
    pg.reload(parse(&renamed)).unwrap();
    let rt = pg.shared().runtime();
    assert_eq!(up_count(&pg, "primary"), 1, "the renamed leader's check carried over");
    assert_eq!(node2(&rt, "second").admin(), pgfront::cluster::AdminState::Drain, "the operator's DRAIN carried over");
    assert_eq!(rt.listener("primary").unwrap().servers[0].stats.cur.load(Ordering::SeqCst), 1, "the session counts");
    drop(rt);
    writer.echo(b"after the rename").await.unwrap();
    lab.leader(1);
    assert!(writer.closed_within(LIMIT).await, "a former leader's write session survived the failover");
}

#[tokio::test]
async fn moving_the_leaders_rest_api_by_reload_is_no_leader_change() {
    // Found by review (helper-45): a reload that changed the leader's REST address (same
    // name; a [defaults] check_port change does it to every node) logged "the reload removed
    // the leader's node", counted two leader changes and ended the term, cutting the reads
    // port's primary sessions.
    let lab = Lab::start(3).await;
    lab.leader(0);
    let text = reads_config(&lab, "");
    let pg = start(&text);
    eventually(LIMIT, "all up", || up_count(&pg, "replicas") == 2 && up_count(&pg, "primary") == 1).await;
    let (mut asked, on) = primary_session(pg.listener_addr("replicas").unwrap()).await;
    assert_eq!(on, "node1");
    let changes = pg.shared().runtime().leadership.changes.load(Ordering::SeqCst);
    // node1's Patroni now answers at another address, as the same leader.
    let moved = FakeRest::start().await;
    moved.patroni("primary", 2);
    let old = format!("check_address = \"{}\"", lab.nodes[0].rest.addr);
    assert!(text.contains(&old));
    pg.reload(parse(&text.replace(&old, &format!("check_address = \"{}\"", moved.addr)))).unwrap();
    assert_eq!(pg.shared().runtime().leadership.leader(), Some(0), "still the leader");
    eventually(LIMIT, "checked at its new address", || moved.hits("/primary") > 2).await;
    eventually(LIMIT, "writes admitted", || up_count(&pg, "primary") == 1).await;
    assert!(still_open(&mut asked).await, "the session sent to the leader was cut");
    assert_eq!(pg.shared().runtime().leadership.changes.load(Ordering::SeqCst), changes, "a leader change counted");
}

#[tokio::test]
async fn a_session_asking_for_a_drained_leader_is_told_so() {
    // Found by helper-44: with the leader in DRAIN on the reads port, a session asking for
    // the primary was told the listener "knows no leader", though one leads.
    let lab = Lab::start(3).await;
    lab.leader(0);
    let pg = start(&reads_config(&lab, ""));
    eventually(LIMIT, "all up", || up_count(&pg, "replicas") == 2 && up_count(&pg, "primary") == 1).await;
    let rt = pg.shared().runtime();
    let node1 = rt.listener("replicas").unwrap().servers.iter().find(|s| s.name == "node1").unwrap().clone();
    node1.set_admin(pgfront::cluster::AdminState::Drain);
    drop(rt);
    let mut s = TcpStream::connect(pg.listener_addr("replicas").unwrap()).await.unwrap();
    s.write_all(&startup_message(&[("user", "u"), ("options", "-c pgfront.target=primary")])).await.unwrap();
    let mut b = [0u8; 1];
    s.read_exact(&mut b).await.unwrap();
    assert_eq!(b[0], b'E');
    let fatal = read_error(&mut s).await;
    assert!(fatal.message.contains("DRAIN"), "{}", fatal.message);
}

#[tokio::test]
async fn sessions_cut_when_a_leaders_claim_ends_are_counted_once() {
    // Found by helper-46: with shutdown-sessions, the end of the leader's claim and its
    // check's mark-down (the same answers) each cut and counted the write sessions: 3
    // sessions, sessions_cut=3 twice, killed 6.
    let lab = Lab::start(3).await;
    lab.leader(0);
    let pg = start(&lab.config(""));
    eventually(LIMIT, "all up", || up_count(&pg, "replicas") == 2 && up_count(&pg, "primary") == 1).await;
    let mut writers = Vec::new();
    for _ in 0..3 {
        writers.push(connect(pg.listener_addr("primary").unwrap()).await.unwrap());
    }
    lab.nodes[0].rest.set_all(Some(Answer::Hang));
    for w in &mut writers {
        assert!(w.closed_within(LIMIT).await, "cut");
    }
    eventually(LIMIT, "no leader", || pg.shared().runtime().leadership.leader().is_none()).await;
    let rt = pg.shared().runtime();
    let killed = rt.listener("primary").unwrap().servers[0].stats.killed.load(Ordering::SeqCst);
    assert_eq!(killed, 3, "each cut session counted once");
}

#[tokio::test]
async fn a_session_asking_the_reads_port_for_the_primary_is_held_through_a_failover_like_the_write_port() {
    // Left open by helper-44 (failover runs): a session on the reads port asking for the primary
    // was refused after that port's queue bound (its timeout_connect, 500 ms here, 4 s by
    // default) while the write port held its sessions 30 s and served them on the new leader.
    let lab = Lab::start(3).await;
    lab.leader(0);
    let pg = start(&reads_config(&lab, ""));
    eventually(LIMIT, "all up", || up_count(&pg, "replicas") == 2 && up_count(&pg, "primary") == 1).await;
    for n in &lab.nodes {
        n.rest.patroni("replica", 9);
    }
    eventually(LIMIT, "no leader", || pg.shared().runtime().leadership.leader().is_none()).await;
    let mut s = TcpStream::connect(pg.listener_addr("replicas").unwrap()).await.unwrap();
    s.write_all(&startup_message(&[("user", "u"), ("options", "-c pgfront.target=primary")])).await.unwrap();
    // Three times the reads port's queue bound: still held, nothing answered.
    let mut b = [0u8; 1];
    let early = tokio::time::timeout(Duration::from_millis(1500), s.read_exact(&mut b)).await;
    assert!(early.is_err(), "answered {:?} while no node leads", b[0] as char);
    lab.leader(1);
    let mut ok = [0u8; 9];
    tokio::time::timeout(LIMIT, s.read_exact(&mut ok)).await.expect("served once a node leads").unwrap();
    assert_eq!(ok[0], b'R', "authentication from the new leader");
}

#[tokio::test]
async fn a_replica_that_took_no_session_gets_no_new_one_until_a_later_check_passes() {
    // Found by helper-47 (a frozen replica on the real lab): until fall marked it DOWN, a new
    // session went to the frozen node every few seconds, each waiting timeout_connect (4 s)
    // for an answer to its startup before going to the other replica.
    let lab = Lab::start(3).await;
    lab.leader(0);
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let node2 = format!("address = \"{}\"", lab.nodes[1].backend.addr);
    // A long interval: the shun lasts until a probe begun an interval later passes.
    let text = lab
        .config("")
        .replace("inter = \"50ms\"", "inter = \"5s\"")
        .replace(&node2, &format!("address = \"{}\"", silent.local_addr().unwrap()));
    let pg = start(&text);
    eventually(LIMIT, "all up", || up_count(&pg, "replicas") == 2 && up_count(&pg, "primary") == 1).await;
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counting = Arc::clone(&accepted);
    let frozen = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            counting.fetch_add(1, Ordering::SeqCst);
            held.push(s);
        }
    });
    let addr = pg.listener_addr("replicas").unwrap();
    let mut served = Vec::new();
    for _ in 0..6 {
        let c = connect(addr).await.unwrap();
        assert_eq!(c.server, "node3");
        served.push(c);
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "one session found the frozen node; the others went straight to node3"
    );
    let rt = pg.shared().runtime();
    let node2 = rt.listener("replicas").unwrap().servers.iter().find(|s| s.name == "node2").unwrap().clone();
    assert!(node2.check.report().machine.is_up(), "shunned, not marked down: its REST API still passes");
    assert!(!node2.is_up());
    let reason = node2.check.report().reason;
    assert!(reason.contains("took no session"), "the page and status say why: {reason}");
    eventually(LIMIT, "admitted again by a check begun an interval later", || node2.is_up()).await;
    frozen.abort();
}

#[tokio::test]
async fn a_refusal_counts_the_time_spent_on_a_server_that_took_no_session() {
    // Found by helper-47: a session that spent 4 s on a frozen leader, whose claim then
    // ended, was told "knows no leader ... after waiting 0.0s".
    let lab = Lab::start(3).await;
    lab.leader(0);
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let node1 = format!("address = \"{}\"", lab.nodes[0].backend.addr);
    let reads = reads_config(&lab, "timeout_queue = \"2s\"\n");
    let pg = start(&reads.replace(&node1, &format!("address = \"{}\"", silent.local_addr().unwrap())));
    eventually(LIMIT, "all up", || up_count(&pg, "replicas") == 2 && up_count(&pg, "primary") == 1).await;
    let mut s = TcpStream::connect(pg.listener_addr("replicas").unwrap()).await.unwrap();
    s.write_all(&startup_message(&[("user", "u"), ("options", "-c pgfront.target=primary")])).await.unwrap();
    // On the hung leader (500 ms for an answer): its claim ends meanwhile.
    let (_held, _) = tokio::time::timeout(LIMIT, silent.accept()).await.unwrap().unwrap();
    for n in &lab.nodes {
        n.rest.patroni("replica", 9);
    }
    let fatal = tokio::time::timeout(LIMIT, async {
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await.unwrap();
        assert_eq!(b[0], b'E');
        read_error(&mut s).await
    })
    .await
    .expect("refused at the hold bound");
    assert!(fatal.message.contains("no leader"), "{fatal:?}");
    let waited: f64 = fatal
        .message
        .rsplit("after waiting ")
        .next()
        .and_then(|w| w.trim_end_matches('s').parse().ok())
        .unwrap_or_else(|| panic!("{fatal:?}"));
    assert!(waited >= 1.9, "the whole hold of 2 s, the half second on the hung leader included: {fatal:?}");
}

/// A front for `backend` that closes its first connection at once and passes the others through.
async fn resets_its_first(backend: SocketAddr) -> SocketAddr {
    let front = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = front.local_addr().unwrap();
    tokio::spawn(async move {
        let (first, _) = front.accept().await.unwrap();
        drop(first);
        while let Ok((mut c, _)) = front.accept().await {
            tokio::spawn(async move {
                if let Ok(mut s) = TcpStream::connect(backend).await {
                    let _ = tokio::io::copy_bidirectional(&mut c, &mut s).await;
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn the_only_server_of_a_listener_is_not_shunned_for_a_dropped_connection() {
    // Found by review (helper-50): one reset shunned the server for an interval even where
    // no other server could take the session, so a reads port with one replica refused
    // its sessions (57P03) while PostgreSQL was healthy.
    let lab = Lab::start(2).await;
    lab.leader(0);
    let front = resets_its_first(lab.nodes[1].backend.addr).await;
    let node2 = format!("address = \"{}\"", lab.nodes[1].backend.addr);
    let text = lab
        .config("timeout_queue = \"2s\"\n")
        .replace("inter = \"50ms\"", "inter = \"5s\"")
        .replace(&node2, &format!("address = \"{front}\""));
    let pg = start(&text);
    eventually(LIMIT, "replica up", || up_count(&pg, "replicas") == 1).await;
    let c = connect(pg.listener_addr("replicas").unwrap()).await.expect("served by the replica once it answers");
    assert_eq!(c.server, "node2");
}

/// Opens a plain-text session with a StartupMessage: the backend's name, or the error.
async fn log_in(addr: SocketAddr) -> Result<String, Fatal> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&startup_message(&[("user", "u")])).await.unwrap();
    let mut b = [0u8; 1];
    s.read_exact(&mut b).await.unwrap();
    if b[0] == b'E' {
        return Err(read_error(&mut s).await);
    }
    let mut rest = [0u8; 8];
    s.read_exact(&mut rest).await.unwrap();
    let mut name = Vec::new();
    loop {
        s.read_exact(&mut b).await.unwrap();
        if b[0] == b'\n' {
            return Ok(String::from_utf8(name).unwrap());
        }
        name.push(b[0]);
    }
}

#[tokio::test]
async fn a_replica_out_of_connection_slots_sends_the_session_to_another() {
    // Found by helper-49: PostgreSQL's "sorry, too many clients already" (53300, its first
    // answer, before authentication) reached the client beside a replica with slots free.
    let lab = Lab::start(3).await;
    lab.leader(0);
    let full = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let full_addr = full.local_addr().unwrap();
    let turned_away = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = Arc::clone(&turned_away);
    tokio::spawn(async move {
        while let Ok((mut c, _)) = full.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            let mut startup = [0u8; 256];
            let _ = c.read(&mut startup).await;
            let _ = c.write_all(&pgfront::pg::fatal("53300", "sorry, too many clients already", None)).await;
        }
    });
    let node2 = format!("address = \"{}\"", lab.nodes[1].backend.addr);
    let pg = start(&lab.config("").replace(&node2, &format!("address = \"{full_addr}\"")));
    eventually(LIMIT, "all up", || up_count(&pg, "replicas") == 2).await;
    let addr = pg.listener_addr("replicas").unwrap();
    for _ in 0..4 {
        let server =
            log_in(addr).await.unwrap_or_else(|f| panic!("the full replica's error reached the client: {f:?}"));
        assert_eq!(server, "node3");
    }
    assert!(turned_away.load(Ordering::SeqCst) >= 1, "round robin did try the full replica");
    // With no other replica, the client gets PostgreSQL's own error, as from HAProxy.
    let rt = pg.shared().runtime();
    rt.listener("replicas")
        .unwrap()
        .servers
        .iter()
        .find(|s| s.name == "node3")
        .unwrap()
        .set_admin(pgfront::cluster::AdminState::Maint);
    drop(rt);
    let f = log_in(addr).await.expect_err("no replica with a slot");
    assert_eq!(f.code, "53300", "{f:?}");
}
