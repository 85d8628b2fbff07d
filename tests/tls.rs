//! A listener that terminates TLS: it answers the SSLRequest itself, reads the client's
//! startup parameters inside TLS (routing by `pgfront.target`), and forwards them to the
//! server unchanged.

mod support;

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use support::*;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

const LIMIT: Duration = Duration::from_secs(10);

/// A self-signed certificate for 127.0.0.1 and localhost, written to a temp dir.
fn cert() -> (tempdir::Dir, String, String) {
    let c = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    let dir = tempdir::Dir::new();
    let (cert, key) = (dir.path.join("cert.pem"), dir.path.join("key.pem"));
    std::fs::write(&cert, c.cert.pem()).unwrap();
    std::fs::write(&key, c.signing_key.serialize_pem()).unwrap();
    (dir, cert.display().to_string(), key.display().to_string())
}

mod tempdir {
    /// A directory removed on drop.
    pub struct Dir {
        pub path: std::path::PathBuf,
    }
    impl Dir {
        pub fn new() -> Dir {
            let path = std::env::temp_dir().join(format!(
                "pgfront-tls-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            std::fs::create_dir_all(&path).unwrap();
            Dir { path }
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

fn connector(alpn: bool) -> tokio_rustls::TlsConnector {
    let mut c = pgfront::tls::client_config_without_verification();
    if alpn {
        c.alpn_protocols = vec![b"postgresql".to_vec()];
    }
    tokio_rustls::TlsConnector::from(Arc::new(c))
}

/// Reads AuthenticationOk then the backend's name line.
async fn server_name<S: AsyncRead + Unpin>(s: &mut S) -> String {
    let mut ok = [0u8; 9];
    s.read_exact(&mut ok).await.unwrap();
    assert_eq!(ok, [b'R', 0, 0, 0, 8, 0, 0, 0, 0], "AuthenticationOk forwarded unchanged");
    let mut name = Vec::new();
    loop {
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await.unwrap();
        if b[0] == b'\n' {
            return String::from_utf8(name).unwrap();
        }
        name.push(b[0]);
    }
}

async fn echo<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, data: &[u8]) {
    s.write_all(data).await.unwrap();
    let mut back = vec![0u8; data.len()];
    s.read_exact(&mut back).await.unwrap();
    assert_eq!(back, data);
}

fn config(lab: &Lab, cert: &str, key: &str) -> String {
    lab.config("").replace(
        "name = \"replicas\"\nbind = \"127.0.0.1:0\"\nbalance = \"roundrobin\"",
        &format!(
            "name = \"replicas\"\nbind = \"127.0.0.1:0\"\nbalance = \"roundrobin\"\nclient_target = true\ntls = {{ cert = \"{cert}\", key = \"{key}\", server = \"disable\" }}"
        ),
    )
}

#[tokio::test]
async fn tls_clients_are_routed_by_their_startup_parameters() {
    let lab = Lab::start(3).await;
    lab.leader(0);
    let (_dir, cert, key) = cert();
    let pg = start(&config(&lab, &cert, &key));
    let addr = pg.listener_addr("replicas").unwrap();
    eventually(LIMIT, "all up", || pg.shared().runtime().listener("replicas").unwrap().servers_up() == 2).await;
    for (options, want) in [("-c pgfront.target=primary", Some("node1")), ("", None)] {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(&OPENING).await.unwrap();
        let mut s = [0u8; 1];
        tcp.read_exact(&mut s).await.unwrap();
        assert_eq!(s[0], b'S', "pgfront answers the SSLRequest itself");
        let mut tls = connector(true).connect(ServerName::try_from("127.0.0.1").unwrap(), tcp).await.unwrap();
        let startup = startup_message(&[("user", "app"), ("options", options)]);
        tls.write_all(&startup).await.unwrap();
        let server = server_name(&mut tls).await;
        match want {
            Some(w) => assert_eq!(server, w, "pgfront.target=primary read inside TLS"),
            None => assert_ne!(server, "node1", "no target: a replica"),
        }
        echo(&mut tls, b"through TLS both ways").await;
        let node = lab.nodes.iter().find(|n| n.backend.name == server).unwrap();
        assert_eq!(
            *node.backend.last_startup.lock().unwrap(),
            startup,
            "the StartupMessage reaches the server unchanged"
        );
    }
}

#[tokio::test]
async fn direct_tls_clients_are_accepted() {
    let lab = Lab::start(2).await;
    lab.leader(0);
    let (_dir, cert, key) = cert();
    let pg = start(&config(&lab, &cert, &key));
    let addr = pg.listener_addr("replicas").unwrap();
    eventually(LIMIT, "replica up", || pg.shared().runtime().listener("replicas").unwrap().servers_up() == 1).await;
    // PostgreSQL 17's sslnegotiation=direct: a ClientHello straight away, ALPN postgresql.
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut tls = connector(true).connect(ServerName::try_from("localhost").unwrap(), tcp).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"postgresql"[..]));
    tls.write_all(&startup_message(&[("user", "app")])).await.unwrap();
    assert_eq!(server_name(&mut tls).await, "node2");
    echo(&mut tls, b"direct").await;
    // Without ALPN, a direct ClientHello could come from a client of another protocol:
    // PostgreSQL 17 closes it, and so does pgfront, before any startup is relayed.
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut tls = connector(false).connect(ServerName::try_from("localhost").unwrap(), tcp).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), None);
    let _ = tls.write_all(&startup_message(&[("user", "app")])).await;
    let mut rest = Vec::new();
    let r = tokio::time::timeout(LIMIT, tls.read_to_end(&mut rest)).await.expect("closed in time");
    assert!(r.is_err() || rest.is_empty(), "closed without an answer, got {rest:?}");
    // After an SSLRequest ALPN stays optional, as in PostgreSQL (older clients send none).
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(&OPENING).await.unwrap();
    let mut s = [0u8; 1];
    tcp.read_exact(&mut s).await.unwrap();
    let mut tls = connector(false).connect(ServerName::try_from("localhost").unwrap(), tcp).await.unwrap();
    tls.write_all(&startup_message(&[("user", "app")])).await.unwrap();
    assert_eq!(server_name(&mut tls).await, "node2");
}

#[tokio::test]
async fn plain_clients_still_work_and_a_bad_handshake_is_closed() {
    let lab = Lab::start(2).await;
    lab.leader(0);
    let (_dir, cert, key) = cert();
    let pg = start(&config(&lab, &cert, &key));
    let addr = pg.listener_addr("replicas").unwrap();
    eventually(LIMIT, "replica up", || pg.shared().runtime().listener("replicas").unwrap().servers_up() == 1).await;
    let mut plain = TcpStream::connect(addr).await.unwrap();
    plain.write_all(&startup_message(&[("user", "app")])).await.unwrap();
    assert_eq!(server_name(&mut plain).await, "node2");
    // Garbage after "S": the handshake fails and the socket closes, nothing else happens.
    let mut bad = TcpStream::connect(addr).await.unwrap();
    bad.write_all(&OPENING).await.unwrap();
    let mut s = [0u8; 1];
    bad.read_exact(&mut s).await.unwrap();
    bad.write_all(b"this is not a ClientHello at all, just bytes\r\n\r\n").await.unwrap();
    let mut rest = Vec::new();
    let r = tokio::time::timeout(LIMIT, bad.read_to_end(&mut rest)).await.expect("closed in time");
    assert!(r.is_err() || rest.is_empty() || rest[0] == 0x15, "closed, at most with a TLS alert");
}

#[test]
fn a_missing_certificate_is_a_config_error_with_its_line() {
    let text = "[[node]]\nname = \"n\"\naddress = \"127.0.0.1:5432\"\n[[listener]]\nname = \"l\"\nbind = \"127.0.0.1:0\"\ncheck = { path = \"/replica\" }\ntls = { cert = \"/nonexistent/c.pem\", key = \"/nonexistent/k.pem\" }\n";
    let e = pgfront::Config::parse(std::path::Path::new("t.toml"), text).unwrap_err().to_string();
    assert!(e.starts_with("t.toml:8:") && e.contains("listener.tls") && e.contains("/nonexistent/c.pem"), "{e}");
}

#[tokio::test]
async fn a_failed_tls_handshake_towards_the_server_is_08006_at_once_not_a_hold() {
    // Before: held for the whole timeout_queue and then refused as 57P03, like a failover.
    let lab = Lab::start(2).await;
    lab.leader(0);
    let (_dir, cert, key) = cert();
    // TLS towards servers that do not speak it (the echo backends answer the SSLRequest
    // with their name); a 30 s queue on the read listener.
    let text =
        config(&lab, &cert, &key).replace("server = \"disable\" }", "server = \"require\" }\ntimeout_queue = \"30s\"");
    let pg = start(&text);
    let addr = pg.listener_addr("replicas").unwrap();
    eventually(LIMIT, "replica up", || pg.shared().runtime().listener("replicas").unwrap().servers_up() == 1).await;
    let mut plain = TcpStream::connect(addr).await.unwrap();
    plain.write_all(&startup_message(&[("user", "app")])).await.unwrap();
    let mut first = [0u8; 1];
    tokio::time::timeout(LIMIT, plain.read_exact(&mut first)).await.expect("answered before the hold bound").unwrap();
    assert_eq!(first[0], b'E');
    let fatal = read_error(&mut plain).await;
    assert_eq!(fatal.code, "08006", "{fatal:?}");
    assert!(fatal.message.contains("TLS with node2"), "{}", fatal.message);
    let (_, page) = http_get(pg.web_addr().unwrap(), "/", Some("YWRtaW46c2VjcmV0")).await;
    assert!(page.contains("does not accept TLS"), "the page shows the reason");
    let rt = pg.shared().runtime();
    let node2 = &rt.listener("replicas").unwrap().servers[1];
    assert_eq!(node2.stats.cur.load(std::sync::atomic::Ordering::SeqCst), 0, "the slot is released");
}

#[tokio::test]
async fn a_tls_client_that_gives_up_while_queued_leaves_the_queue() {
    // Before: a TLS client's close was never noticed while it waited.
    let lab = Lab::start(1).await;
    lab.leader(0); // node1 leads: the replica listener has nobody
    let (_dir, cert, key) = cert();
    let text =
        config(&lab, &cert, &key).replace("server = \"disable\" }", "server = \"disable\" }\ntimeout_queue = \"30s\"");
    let pg = start(&text);
    let addr = pg.listener_addr("replicas").unwrap();
    let queued = || {
        pg.shared().runtime().listener("replicas").unwrap().stats.queue_cur.load(std::sync::atomic::Ordering::SeqCst)
    };
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(&OPENING).await.unwrap();
    let mut s = [0u8; 1];
    tcp.read_exact(&mut s).await.unwrap();
    let mut tls = connector(true).connect(ServerName::try_from("127.0.0.1").unwrap(), tcp).await.unwrap();
    tls.write_all(&startup_message(&[("user", "app")])).await.unwrap();
    tls.flush().await.unwrap();
    eventually(LIMIT, "queued", || queued() == 1).await;
    tls.shutdown().await.unwrap();
    drop(tls);
    eventually(LIMIT, "the client that left is out of the queue", || queued() == 0).await;
}

#[tokio::test]
async fn an_encrypted_cancel_request_is_closed_with_a_close_notify() {
    let lab = Lab::start(2).await;
    lab.leader(0);
    let (_dir, cert, key) = cert();
    let pg = start(&config(&lab, &cert, &key));
    let addr = pg.listener_addr("replicas").unwrap();
    eventually(LIMIT, "up", || pg.shared().runtime().listener("replicas").unwrap().servers_up() == 1).await;
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(&OPENING).await.unwrap();
    let mut s = [0u8; 1];
    tcp.read_exact(&mut s).await.unwrap();
    assert_eq!(s[0], b'S');
    let mut tls = connector(false).connect(ServerName::try_from("127.0.0.1").unwrap(), tcp).await.unwrap();
    // CancelRequest: length 16, code 80877102, process ID, secret key.
    let mut cancel = Vec::from(16u32.to_be_bytes());
    cancel.extend_from_slice(&80877102u32.to_be_bytes());
    cancel.extend_from_slice(&[0, 0, 0, 7, 1, 2, 3, 4]);
    tls.write_all(&cancel).await.unwrap();
    // libpq 17+ reads until the close and counts an EOF without close_notify as a failure.
    let mut rest = Vec::new();
    let r = tokio::time::timeout(LIMIT, tls.read_to_end(&mut rest)).await.expect("closed in time");
    assert!(r.is_ok(), "a clean TLS close, not {r:?}");
    assert!(rest.is_empty());
    eventually(LIMIT, "the cancel was forwarded", || {
        pg.shared().runtime().listener("replicas").unwrap().stats.cancels.load(std::sync::atomic::Ordering::SeqCst) == 1
    })
    .await;
}
