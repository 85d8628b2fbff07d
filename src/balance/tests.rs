use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::cluster::Runtime;
use crate::config::Config;
use crate::health::ProbeResult;

fn runtime(nodes: usize, extra: &str, previous: Option<&Runtime>) -> Runtime {
    let maxconn = if extra.contains("maxconn") { "" } else { "maxconn = 1\n" };
    let mut text = format!("[defaults]\n{maxconn}{extra}\n");
    for i in 1..=nodes {
        // Each its own REST API, as Patroni members have (never asked here).
        text += &format!(
            "[[node]]\nname = \"n{i}\"\naddress = \"127.0.0.1:{i}\"\ncheck_address = \"127.0.0.1:{}\"\n",
            8000 + i
        );
    }
    text += "[[listener]]\nname = \"l\"\nbind = \"127.0.0.1:0\"\ncheck = { path = \"/replica\" }\n";
    let config = Config::parse(std::path::Path::new("t.toml"), &text).unwrap();
    Runtime::build_from(Arc::new(config), &CancellationToken::new(), previous)
}

fn up(rt: &Runtime, server: usize) {
    let ok = ProbeResult::answered(true, Duration::ZERO, "");
    rt.listeners[0].servers[server].check.promote(ok, "test".into());
}

async fn until(what: &str, cond: impl Fn() -> bool) {
    for _ in 0..10_000 {
        if cond() {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("never: {what}");
}

fn later() -> Instant {
    Instant::now() + Duration::from_secs(60)
}

#[tokio::test]
async fn the_queue_is_first_come_first_served() {
    // Before: a newcomer took a freed slot ahead of sessions already waiting.
    let rt = runtime(1, "", None);
    up(&rt, 0);
    let l = Arc::clone(&rt.listeners[0]);
    let held = acquire(&l, &[], Target::Listener, later()).await.unwrap();
    let first = tokio::spawn({
        let l = Arc::clone(&l);
        async move { acquire(&l, &[], Target::Listener, later()).await.map(|_| "first") }
    });
    until("first queued", || l.queue.len() == 1).await;
    drop(held);
    // The freed slot went to the waiter, not to whoever asks next.
    assert!(pick(&l, &[], Target::Listener).is_err(), "a newcomer cannot take the waiter's place");
    assert_eq!(first.await.unwrap().unwrap(), "first");
}

#[tokio::test]
async fn a_newcomer_waits_behind_the_queue() {
    let rt = runtime(1, "", None);
    up(&rt, 0);
    let l = Arc::clone(&rt.listeners[0]);
    let held = acquire(&l, &[], Target::Listener, later()).await.unwrap();
    let order = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for name in ["a", "b", "c"] {
        let (mine, order) = (Arc::clone(&l), Arc::clone(&order));
        let n = l.queue.len();
        tasks.push(tokio::spawn(async move {
            let slot = acquire(&mine, &[], Target::Listener, later()).await.unwrap();
            order.lock().unwrap().push(name);
            drop(slot);
        }));
        until("queued", || l.queue.len() == n + 1).await;
    }
    drop(held);
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(*order.lock().unwrap(), ["a", "b", "c"]);
}

#[tokio::test]
async fn one_freed_place_serves_one_waiter() {
    // Before: every release woke every waiter to race for the one place.
    let rt = runtime(1, "", None);
    up(&rt, 0);
    let l = Arc::clone(&rt.listeners[0]);
    let held = acquire(&l, &[], Target::Listener, later()).await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for _ in 0..10 {
        let (l, tx) = (Arc::clone(&l), tx.clone());
        tokio::spawn(async move {
            let slot = acquire(&l, &[], Target::Listener, later()).await.unwrap();
            let _ = tx.send(());
            // Keep the place: nobody else may get one.
            std::future::pending::<()>().await;
            drop(slot);
        });
    }
    until("ten waiting", || l.queue.len() == 10).await;
    drop(held);
    rx.recv().await.unwrap();
    assert_eq!(l.queue.len(), 9, "exactly one waiter served");
    assert_eq!(l.stats.queue_cur.load(std::sync::atomic::Ordering::Relaxed), 9);
}

#[tokio::test]
async fn waiters_are_served_from_the_current_generation() {
    // Before: a queued session kept choosing among the servers of the listener it was
    // accepted with, and a reload that added a server never reached it.
    let old = runtime(1, "", None);
    let l = Arc::clone(&old.listeners[0]);
    let waiter =
        tokio::spawn(async move { acquire(&l, &[], Target::Listener, later()).await.map(|s| s.server().name.clone()) });
    until("queued", || old.listeners[0].queue.len() == 1).await;
    let new = runtime(2, "", Some(&old));
    up(&new, 1);
    new.listeners[0].wake_queue();
    assert_eq!(waiter.await.unwrap().unwrap(), "n2");
}

#[tokio::test]
async fn connects_in_flight_are_bounded_per_server() {
    let rt = runtime(1, "maxconn = 100\nmax_connecting = 2", None);
    up(&rt, 0);
    let l = Arc::clone(&rt.listeners[0]);
    let mut a = acquire(&l, &[], Target::Listener, later()).await.unwrap();
    let _b = acquire(&l, &[], Target::Listener, later()).await.unwrap();
    let third = tokio::spawn({
        let l = Arc::clone(&l);
        async move { acquire(&l, &[], Target::Listener, later()).await.is_ok() }
    });
    until("third queued", || l.queue.len() == 1).await;
    assert_eq!(l.servers[0].stats.connecting.load(std::sync::atomic::Ordering::Relaxed), 2);
    // The first session is established: the next one may connect, and it keeps its slot.
    drop(a.take_connecting());
    assert!(third.await.unwrap());
    assert_eq!(l.servers[0].stats.cur.load(std::sync::atomic::Ordering::Relaxed), 2, "a still holds its slot");
    drop(a);
}

#[tokio::test]
async fn a_waiter_that_gives_up_leaves_the_queue() {
    let rt = runtime(1, "", None);
    let l = Arc::clone(&rt.listeners[0]);
    let r = acquire(&l, &[], Target::Listener, Instant::now() + Duration::from_millis(1)).await;
    assert_eq!(r.err(), Some(NoServer::NoneUp));
    assert!(l.queue.is_empty());
    let waiting = tokio::spawn({
        let l = Arc::clone(&l);
        async move { acquire(&l, &[], Target::Listener, later()).await.is_ok() }
    });
    until("queued", || l.queue.len() == 1).await;
    waiting.abort();
    let _ = waiting.await;
    assert!(l.queue.is_empty());
    assert_eq!(l.stats.queue_cur.load(std::sync::atomic::Ordering::Relaxed), 0);
}

/// Three nodes: n1 leads (not admitted by the replica check), n2 and n3 are replicas as
/// `up` says, having replayed `replayed`.
fn lsn_runtime(extra: &str, up_: [bool; 2], replayed: [u64; 2]) -> Runtime {
    use crate::cluster::{Answer, Claim};
    use crate::health::{NodeStatus, Xlog};
    let rt = runtime(3, &format!("maxconn = 100\n{extra}"), None);
    rt.leadership.decide(&[(0, Claim { timeline: Some(1), system_id: None, ready: true, denied: false })]);
    for (i, (&u, &p)) in up_.iter().zip(&replayed).enumerate() {
        let status = NodeStatus {
            role: "replica".into(),
            timeline: Some(1),
            xlog: Xlog { replayed_location: Some(p), ..Xlog::default() },
            ..NodeStatus::default()
        };
        let ok = ProbeResult::answered(true, Duration::ZERO, "");
        rt.nodes[i + 1].record(ok, Some(status), &Answer::Failed, 3);
        if u {
            up(&rt, i + 1);
        }
    }
    rt
}

/// A case: name, target, min_lsn, n2/n3 up, n2/n3 replayed, the servers picked or the error.
type LsnCase = (&'static str, Target, Option<u64>, [bool; 2], [u64; 2], Result<&'static [&'static str], NoServer>);

#[test]
fn min_lsn_picks_only_servers_that_replayed_it() {
    use NoServer::*;
    let (t, l) = (Target::Listener, Target::Replica);
    #[rustfmt::skip]
    let table: &[LsnCase] = &[
        ("no position: round robin",        t, None,      [true, true],   [0, 0],     Ok(&["n2", "n3"])),
        ("only the one that has it",        t, Some(100), [true, true],   [150, 50],  Ok(&["n2"])),
        ("equal is enough",                 l, Some(100), [true, true],   [99, 100],  Ok(&["n3"])),
        ("both have it",                    t, Some(100), [true, true],   [100, 900], Ok(&["n2", "n3"])),
        ("both behind: wait",               t, Some(100), [true, true],   [50, 99],   Err(Behind)),
        ("prefer-replica waits too",        Target::PreferReplica, Some(100), [true, true], [50, 99], Err(Behind)),
        ("replica-only waits",              l, Some(100), [true, true],   [50, 99],   Err(Behind)),
        ("the one that has it is down",     t, Some(100), [false, true],  [150, 50],  Err(Behind)),
        ("no replica up: the leader now",   t, Some(100), [false, false], [150, 150], Ok(&["n1"])),
        ("replica-only, none up",           l, Some(100), [false, false], [150, 150], Err(NoneUp)),
        ("any: the leader has everything",  Target::Any, Some(100), [true, true], [50, 99], Ok(&["n1"])),
        ("any: replicas that have it too",  Target::Any, Some(100), [true, true], [50, 100], Ok(&["n1", "n3"])),
        ("primary ignores the position",    Target::Primary, Some(100), [true, true], [50, 99], Ok(&["n1"])),
        ("unknown position (0) is behind",  t, Some(1),   [true, true],   [0, 0],     Err(Behind)),
    ];
    for (name, target, lsn, up_, replayed, want) in table {
        let rt = lsn_runtime("", *up_, *replayed);
        let l = &rt.listeners[0];
        let ask = Ask::new(*target, *lsn);
        let mut got: Vec<String> = Vec::new();
        let mut err = None;
        for _ in 0..6 {
            match pick(l, &[], ask) {
                Ok(slot) => got.push(slot.server().name.clone()),
                Err(e) => err = Some(e),
            }
        }
        match want {
            Ok(servers) => {
                assert_eq!(err, None, "{name}");
                got.sort();
                got.dedup();
                assert_eq!(got, *servers, "{name}");
            }
            Err(e) => assert_eq!((err, got.len()), (Some(*e), 0), "{name}"),
        }
    }
}

#[test]
fn who_falls_back_to_the_leader_after_the_wait() {
    for (target, falls_back) in
        [(Target::Listener, true), (Target::PreferReplica, true), (Target::Any, true), (Target::Replica, false)]
    {
        assert_eq!(Ask::new(target, Some(1)).falls_back_to_leader(), falls_back, "{target:?}");
    }
    assert_eq!(Ask::new(Target::Primary, Some(1)).min_lsn, None, "the primary ignores min_lsn");
    for (replayed, leader, lsn, ok) in
        [(None, false, None, true), (Some(5), false, Some(5), true), (Some(4), false, Some(5), false)]
            .into_iter()
            .chain([(None, true, Some(u64::MAX), true), (None, false, Some(0), false)])
    {
        assert_eq!(caught_up(replayed, leader, lsn), ok, "{replayed:?} {leader} {lsn:?}");
    }
}

#[tokio::test]
async fn a_session_waiting_for_a_position_is_served_by_the_answer_that_shows_it() {
    use crate::cluster::Answer;
    use crate::health::{NodeStatus, Xlog};
    let rt = lsn_runtime("", [true, true], [50, 60]);
    let l = Arc::clone(&rt.listeners[0]);
    let waiting = tokio::spawn({
        let l = Arc::clone(&l);
        async move {
            acquire(&l, &[], Ask::new(Target::Listener, Some(100)), later()).await.map(|s| s.server().name.clone())
        }
    });
    until("queued", || l.queue.len() == 1).await;
    assert!(rt.nodes[1].wants_replay() && rt.nodes[2].wants_replay(), "both replicas asked to refresh");
    assert!(!rt.nodes[0].wants_replay(), "not the leader");
    // n3's next answer shows the position; the checker serves the queue after it.
    let status = NodeStatus {
        timeline: Some(1),
        xlog: Xlog { replayed_location: Some(120), ..Xlog::default() },
        ..NodeStatus::default()
    };
    let ok = ProbeResult::answered(true, Duration::ZERO, "");
    rt.nodes[2].record(ok, Some(status), &Answer::Failed, 3);
    assert!(!rt.nodes[2].wants_replay(), "n3 has it: back to its interval");
    assert!(rt.nodes[1].wants_replay(), "n2 still refreshes until the wait ends");
    l.queue.dispatch();
    assert_eq!(waiting.await.unwrap().unwrap(), "n3");
}

#[test]
fn min_lsn_counts_only_a_replay_on_the_leaders_timeline() {
    // A crash failover: the old leader had WAL to 1000 on timeline 5, the new one promoted
    // at 900 onto timeline 6, and the old one came back as a replica without a rewind,
    // diverged, still replaying timeline 5 at 1000. Before: a session that committed at
    // 950 on the new leader counted it as caught up and could read there without its write.
    use crate::cluster::{Answer, Claim};
    use crate::health::{NodeStatus, Xlog};
    let rt = runtime(3, "maxconn = 100", None);
    let lead = |timeline: Option<u64>| {
        rt.leadership.decide(&[(0, Claim { timeline, system_id: None, ready: true, denied: false })]);
    };
    lead(Some(6));
    let replica = |i: usize, timeline: Option<u64>, replayed: u64| {
        let xlog = Xlog { replayed_location: Some(replayed), ..Xlog::default() };
        let status = NodeStatus { role: "replica".into(), timeline, xlog, ..NodeStatus::default() };
        rt.nodes[i].record(ProbeResult::answered(true, Duration::ZERO, ""), Some(status), &Answer::Failed, 3);
        up(&rt, i);
    };
    replica(1, Some(5), 1000);
    replica(2, Some(6), 900);
    let l = Arc::clone(&rt.listeners[0]);
    let at = |lsn: u64| pick(&l, &[], Ask::new(Target::Replica, Some(lsn))).map(|s| s.server().name.clone());
    assert_eq!(at(950), Err(NoServer::Behind), "n2 is past 950 on another timeline: not caught up");
    replica(2, Some(6), 960);
    assert_eq!(at(950).as_deref(), Ok("n3"), "n3 replayed it on the leader's timeline");
    replica(2, None, 2000);
    assert_eq!(at(950), Err(NoServer::Behind), "a replica whose timeline is unknown: fail closed");
    replica(2, Some(6), 2000);
    lead(None);
    assert_eq!(at(950), Err(NoServer::Behind), "the leader's timeline unknown: fail closed");
    lead(Some(6));
    assert_eq!(at(950).as_deref(), Ok("n3"));
}

#[tokio::test]
async fn a_session_whose_position_never_comes_is_behind_at_its_deadline() {
    let rt = lsn_runtime("", [true, true], [50, 60]);
    let l = Arc::clone(&rt.listeners[0]);
    let r = acquire(&l, &[], Ask::new(Target::Listener, Some(100)), Instant::now() + Duration::from_millis(20)).await;
    assert_eq!(r.err(), Some(NoServer::Behind));
    assert!(l.queue.is_empty());
}

#[tokio::test]
async fn a_refusal_says_which_limit_every_server_was_at() {
    // Before: both were "every available server is at its maxconn", which sent operators
    // to raise a maxconn that was nowhere near reached.
    let rt = runtime(1, "maxconn = 100\nmax_connecting = 1", None);
    up(&rt, 0);
    let l = Arc::clone(&rt.listeners[0]);
    let mut connecting = pick(&l, &[], Target::Listener).unwrap();
    assert_eq!(pick(&l, &[], Target::Listener).err(), Some(NoServer::Connecting));
    drop(connecting.take_connecting());
    let rt = runtime(1, "maxconn = 1", None);
    up(&rt, 0);
    let l = Arc::clone(&rt.listeners[0]);
    let mut held = pick(&l, &[], Target::Listener).unwrap();
    drop(held.take_connecting());
    assert_eq!(pick(&l, &[], Target::Listener).err(), Some(NoServer::Full));
    assert_eq!(NoServer::Connecting.as_label(), "max_connecting");
}

/// A two-listener generation on fixed ports: `listeners` as (name, port, path).
fn generation(listeners: &[(&str, u16, &str)], previous: Option<&Runtime>) -> Runtime {
    let mut text = String::from("[[node]]\nname = \"n1\"\naddress = \"127.0.0.1:1\"\n");
    for (name, port, path) in listeners {
        text +=
            &format!("[[listener]]\nname = \"{name}\"\nbind = \"127.0.0.1:{port}\"\ncheck = {{ path = \"{path}\" }}\n");
    }
    let config = Config::parse(std::path::Path::new("t.toml"), &text).unwrap();
    Runtime::build_from(Arc::new(config), &CancellationToken::new(), previous)
}

#[test]
fn clients_waiting_on_a_port_keep_that_ports_rules_across_a_swap_or_a_rename() {
    // Found by a torture run: after a reload that swapped two listeners' addresses, clients
    // queued on the write port were served by the listener of their old name, now the read
    // one: they got replicas. The queue (and the rest of a listener's state) now goes on
    // with the address, whose sockets the reload hands over.
    let queue = |rt: &Runtime, name: &str| Arc::clone(&rt.listener(name).unwrap().queue);
    let first = generation(&[("a", 7001, "/master"), ("b", 7002, "/replica")], None);
    let swapped = generation(&[("b", 7001, "/master"), ("a", 7002, "/replica")], Some(&first));
    assert!(Arc::ptr_eq(&queue(&swapped, "b"), &queue(&first, "a")), "7001's waiters stay on 7001");
    assert!(Arc::ptr_eq(&queue(&swapped, "a"), &queue(&first, "b")), "7002's waiters stay on 7002");
    // A listener moved to a new port leaves its old one's state to the listener there now.
    let moved = generation(&[("c", 7001, "/master"), ("a", 7003, "/replica")], Some(&first));
    assert!(Arc::ptr_eq(&queue(&moved, "c"), &queue(&first, "a")));
    assert!(!Arc::ptr_eq(&queue(&moved, "a"), &queue(&first, "a")), "one successor at most");
    assert!(!Arc::ptr_eq(&queue(&moved, "a"), &queue(&first, "b")));
    // A change of rules on the same address and name goes on as before.
    let same = generation(&[("a", 7001, "/primary"), ("b", 7002, "/replica")], Some(&first));
    assert!(Arc::ptr_eq(&queue(&same, "a"), &queue(&first, "a")));
}
