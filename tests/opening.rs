//! The client's opening read in one read: what a client sends behind it reaches the chosen
//! server once, and a client that leaves right after it is seen leaving.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const LIMIT: Duration = Duration::from_secs(10);

fn refused(pg: &pgfront::Pgfront, l: &str) -> u64 {
    pg.shared().runtime().listener(l).unwrap().stats.refused.load(Ordering::SeqCst)
}

/// A client sends its StartupMessage and its FIN at once while no leader is known: the
/// session must end as client_gone (long before timeout_queue) and take no server later.
/// Also with a reset instead of a FIN.
#[tokio::test]
async fn a_client_that_sends_its_startup_and_fin_at_once_leaves_the_queue() {
    let lab = Lab::start(1).await;
    lab.nodes[0].rest.patroni("replica", 1);
    let pg = start(&lab.config("timeout_queue = \"60s\""));
    let addr = pg.listener_addr("primary").unwrap();
    let startup = startup_message(&[("user", "u"), ("database", "d")]);

    // FIN right behind the startup.
    let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
    c.write_all(&startup).await.unwrap();
    c.shutdown().await.unwrap();
    eventually(LIMIT, "refused as gone (FIN)", || refused(&pg, "primary") == 1).await;
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(LIMIT, c.read_to_end(&mut rest)).await.unwrap();
    assert!(rest.is_empty(), "no answer to a client that left: {rest:?}");

    // A reset right behind the startup.
    let c = tokio::net::TcpStream::connect(addr).await.unwrap();
    let std = c.into_std().unwrap();
    std::io::Write::write_all(&mut &std, &startup).unwrap();
    socket2::SockRef::from(&std).set_linger(Some(Duration::ZERO)).unwrap();
    drop(std);
    eventually(LIMIT, "refused as gone (RST)", || refused(&pg, "primary") == 2).await;

    lab.leader(0);
    eventually(LIMIT, "leader up", || pg.shared().runtime().listener("primary").unwrap().servers_up() == 1).await;
    let queued = pg.shared().runtime().listener("primary").unwrap().stats.queue_cur.load(Ordering::SeqCst);
    assert_eq!(queued, 0);
    assert_eq!(lab.nodes[0].backend.accepted.load(Ordering::SeqCst), 0, "no server for clients that left");
}

/// A PostgreSQL that accepts and reads but is slow to answer (a backend slow to start):
/// counts the connections that received `marker`.
struct SlowServer {
    addr: std::net::SocketAddr,
    accepted: Arc<AtomicUsize>,
    closed: Arc<AtomicUsize>,
    with_marker: Arc<AtomicUsize>,
}

async fn slow_server(marker: &'static [u8]) -> SlowServer {
    let socket = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let s = SlowServer {
        addr: socket.local_addr().unwrap(),
        accepted: Arc::default(),
        closed: Arc::default(),
        with_marker: Arc::default(),
    };
    let (accepted, closed, with_marker) = (s.accepted.clone(), s.closed.clone(), s.with_marker.clone());
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = socket.accept().await {
            accepted.fetch_add(1, Ordering::SeqCst);
            let (closed, with_marker) = (closed.clone(), with_marker.clone());
            tokio::spawn(async move {
                let mut all = Vec::new();
                let _ = stream.read_to_end(&mut all).await;
                if all.windows(marker.len()).any(|w| w == marker) {
                    with_marker.fetch_add(1, Ordering::SeqCst);
                }
                closed.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    s
}

/// Bytes a client sent behind its StartupMessage are part of the prelude, which is written
/// again to every server connection a retry makes: a server slow to answer the startup
/// (timeout_connect) gets the pipelined query once per attempt. A real PostgreSQL that
/// read it would run it on each connection once its backend started.
#[tokio::test]
async fn bytes_behind_the_startup_reach_one_server_connection_only() {
    const MARKER: &[u8] = b"INSERT INTO t VALUES (1)";
    let lab = Lab::start(1).await;
    lab.leader(0);
    let slow = slow_server(MARKER).await;
    let text =
        lab.config("timeout_queue = \"2s\"").replace(&lab.nodes[0].backend.addr.to_string(), &slow.addr.to_string());
    let pg = start(&text);
    let addr = pg.listener_addr("primary").unwrap();
    eventually(LIMIT, "up", || pg.shared().runtime().listener("primary").unwrap().servers_up() == 1).await;

    let mut q = vec![b'Q'];
    q.extend_from_slice(&((4 + MARKER.len() + 1) as u32).to_be_bytes());
    q.extend_from_slice(MARKER);
    q.push(0);
    let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
    c.write_all(&[startup_message(&[("user", "u"), ("database", "d")]), q].concat()).await.unwrap();
    // pgfront gives up after the hold bound and closes.
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(LIMIT, c.read_to_end(&mut answer)).await.unwrap();
    eventually(LIMIT, "every server connection closed", || {
        slow.closed.load(Ordering::SeqCst) == slow.accepted.load(Ordering::SeqCst)
    })
    .await;
    let (conns, marked) = (slow.accepted.load(Ordering::SeqCst), slow.with_marker.load(Ordering::SeqCst));
    println!("server connections: {conns}, of which received the pipelined query: {marked}");
    assert!(marked <= 1, "the pipelined query reached {marked} server connections (of {conns})");
}
