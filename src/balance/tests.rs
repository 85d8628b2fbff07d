use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::cluster::Runtime;
use crate::config::Config;
use crate::health::{CheckCode, ProbeResult};

fn runtime(nodes: usize, extra: &str, previous: Option<&Runtime>) -> Runtime {
    let maxconn = if extra.contains("maxconn") { "" } else { "maxconn = 1\n" };
    let mut text = format!("[defaults]\n{maxconn}{extra}\n");
    for i in 1..=nodes {
        text += &format!("[[node]]\nname = \"n{i}\"\naddress = \"127.0.0.1:{i}\"\n");
    }
    text += "[[listener]]\nname = \"l\"\nbind = \"127.0.0.1:0\"\ncheck = { path = \"/replica\" }\n";
    let config = Config::parse(std::path::Path::new("t.toml"), &text).unwrap();
    Runtime::build_from(Arc::new(config), &CancellationToken::new(), previous)
}

fn up(rt: &Runtime, server: usize) {
    let ok = ProbeResult {
        code: CheckCode::L7Ok,
        status: Some(200),
        duration: Duration::ZERO,
        detail: String::new(),
        body: None,
        cert_not_after: None,
    };
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
