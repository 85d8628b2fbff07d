//! Test support: scripted Patroni REST fakes, identifying echo backends, a PostgreSQL-ish
//! client opening, and a poll-with-deadline helper. Everything runs on 127.0.0.1:0.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pgfront::{Bound, Config, Pgfront};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// An SSLRequest: a valid first packet that every test client sends.
pub const OPENING: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

/// Polls `cond` every 10 ms until it holds or `limit` passes (then panics with `what`).
pub async fn eventually<F: FnMut() -> bool>(limit: Duration, what: &str, mut cond: F) {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if cond() {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("not true within {limit:?}: {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// How a fake REST endpoint answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    Status(u16),
    /// Accept and never answer.
    Hang,
    /// Not HTTP at all.
    Garbage,
    /// A status line followed by headers that never end.
    EndlessHeader,
    /// Close without a word.
    Reset,
    /// A 200 with a body larger than any check reads (for GET).
    HugeBody,
}

/// A scripted Patroni REST API: per path, an answer that tests change on cue.
#[derive(Clone)]
pub struct FakeRest {
    pub addr: SocketAddr,
    answers: Arc<Mutex<HashMap<String, Answer>>>,
    /// When set, the answer to every path (an agent that hangs or resets whatever it is asked).
    all: Arc<Mutex<Option<Answer>>>,
    /// The status JSON sent with every GET answer, as Patroni does.
    json: Arc<Mutex<String>>,
    /// Per path, a GET body in place of the status JSON (`/cluster`'s member list).
    bodies: Arc<Mutex<HashMap<String, String>>>,
    hits: Arc<Mutex<HashMap<String, u64>>>,
}

impl FakeRest {
    /// Starts a fake answering 503 to every path until told otherwise.
    pub async fn start() -> FakeRest {
        let socket = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let fake = FakeRest {
            addr: socket.local_addr().unwrap(),
            answers: Arc::default(),
            all: Arc::default(),
            json: Arc::new(Mutex::new(r#"{"state": "running", "role": "replica", "timeline": 1}"#.to_owned())),
            bodies: Arc::default(),
            hits: Arc::default(),
        };
        let f = fake.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = socket.accept().await {
                tokio::spawn(f.clone().answer(stream));
            }
        });
        fake
    }

    pub fn set(&self, path: &str, answer: Answer) {
        self.answers.lock().unwrap().insert(path.to_owned(), answer);
    }

    /// Answers every path with `answer` (None: back to the per-path answers).
    pub fn set_all(&self, answer: Option<Answer>) {
        *self.all.lock().unwrap() = answer;
    }

    /// Sets the status JSON of GET answers.
    pub fn set_json(&self, json: &str) {
        *self.json.lock().unwrap() = json.to_owned();
    }

    /// Plays a Patroni node: `role` "primary" or "replica" on `timeline`, answering
    /// /primary, /master, /replica, /read-only and /health as Patroni does.
    pub fn patroni(&self, role: &str, timeline: u64) {
        let primary = role == "primary";
        let code = |yes: bool| Answer::Status(if yes { 200 } else { 503 });
        self.set("/primary", code(primary));
        self.set("/master", code(primary));
        self.set("/replica", code(!primary));
        self.set("/read-only", Answer::Status(200));
        self.set("/health", Answer::Status(200));
        let xlog =
            if primary { r#"{"location": 1000}"# } else { r#"{"received_location": 1000, "replayed_location": 1000}"# };
        self.set_json(&format!(r#"{{"state": "running", "role": "{role}", "timeline": {timeline}, "xlog": {xlog}}}"#));
    }

    /// Answers GET `path` with 200 and `body` (e.g. Patroni's `/cluster` member list).
    pub fn set_body(&self, path: &str, body: &str) {
        self.bodies.lock().unwrap().insert(path.to_owned(), body.to_owned());
        self.set(path, Answer::Status(200));
    }

    pub fn hits(&self, path: &str) -> u64 {
        self.hits.lock().unwrap().get(path).copied().unwrap_or(0)
    }

    async fn answer(self, mut stream: TcpStream) {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 1024];
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let line = String::from_utf8_lossy(&buf).lines().next().unwrap_or_default().to_owned();
        let get = line.starts_with("GET ");
        let path = line.split_whitespace().nth(1).unwrap_or("/").to_owned();
        *self.hits.lock().unwrap().entry(path.clone()).or_default() += 1;
        let all = *self.all.lock().unwrap();
        let answer = all.or_else(|| self.answers.lock().unwrap().get(&path).copied()).unwrap_or(Answer::Status(503));
        match answer {
            Answer::Status(code) => {
                let reason = if code == 200 { "OK" } else { "Service Unavailable" };
                // What Patroni sends: to OPTIONS no headers and no body; to GET the status
                // JSON without Content-Length, ended by closing.
                let reply = if get {
                    let body = self.bodies.lock().unwrap().get(&path).cloned();
                    format!(
                        "HTTP/1.0 {code} {reason}\r\nContent-Type: application/json\r\n\r\n{}",
                        body.unwrap_or_else(|| self.json.lock().unwrap().clone())
                    )
                } else {
                    format!("HTTP/1.0 {code} {reason}\r\n\r\n")
                };
                drop(stream.write_all(reply.as_bytes()).await)
            }
            Answer::Hang => std::future::pending::<()>().await,
            Answer::Garbage => drop(stream.write_all(b"\x00\x01 this is not http \xff\r\n\r\n").await),
            Answer::EndlessHeader => {
                // One header line that never ends.
                let _ = stream.write_all(b"HTTP/1.0 200 OK\r\nX-Filler: ").await;
                while stream.write_all(&[b'a'; 1024]).await.is_ok() {}
            }
            Answer::Reset => {
                let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
                drop(stream);
            }
            Answer::HugeBody => {
                let _ = stream.write_all(b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n").await;
                let block = vec![b' '; 64 * 1024];
                for _ in 0..64 {
                    if stream.write_all(&block).await.is_err() {
                        return;
                    }
                }
            }
        }
    }
}

/// A PostgreSQL stand-in: announces its name on connect, then echoes everything.
#[derive(Clone)]
pub struct Backend {
    pub name: String,
    pub addr: SocketAddr,
    pub accepted: Arc<AtomicUsize>,
    pub open: Arc<AtomicUsize>,
    pub bytes: Arc<AtomicU64>,
    /// The last StartupMessage received, as received.
    pub last_startup: Arc<Mutex<Vec<u8>>>,
}

impl Backend {
    pub async fn start(name: &str) -> Backend {
        let socket = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let b = Backend {
            name: name.to_owned(),
            addr: socket.local_addr().unwrap(),
            accepted: Arc::default(),
            open: Arc::default(),
            bytes: Arc::default(),
            last_startup: Arc::default(),
        };
        let me = b.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = socket.accept().await {
                // Like PostgreSQL: no Nagle delay on small replies.
                let _ = stream.set_nodelay(true);
                let me = me.clone();
                me.accepted.fetch_add(1, Ordering::SeqCst);
                me.open.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    // A StartupMessage gets AuthenticationOk, as from a trusting PostgreSQL,
                    // then the name; any other opening is echoed after the name.
                    let mut head = [0u8; 8];
                    if stream.read_exact(&mut head).await.is_ok() {
                        me.bytes.fetch_add(8, Ordering::SeqCst);
                        let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
                        let code = u32::from_be_bytes([head[4], head[5], head[6], head[7]]);
                        if code >> 16 == 3 && (9..=10_000).contains(&len) {
                            let mut rest = vec![0u8; len - 8];
                            let _ = stream.read_exact(&mut rest).await;
                            *me.last_startup.lock().unwrap() = [head.to_vec(), rest].concat();
                            let _ = stream.write_all(&[b'R', 0, 0, 0, 8, 0, 0, 0, 0]).await;
                            let _ = stream.write_all(format!("{}\n", me.name).as_bytes()).await;
                        } else {
                            let _ = stream.write_all(format!("{}\n", me.name).as_bytes()).await;
                            let _ = stream.write_all(&head).await;
                        }
                    }
                    let mut buf = [0u8; 16 * 1024];
                    loop {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                me.bytes.fetch_add(n as u64, Ordering::SeqCst);
                                if stream.write_all(&buf[..n]).await.is_err() {
                                    break;
                                }
                            }
                        }
                    }
                    me.open.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        b
    }
}

/// One node of the fake cluster: its REST fake and its backend.
#[derive(Clone)]
pub struct FakeNode {
    pub rest: FakeRest,
    pub backend: Backend,
}

/// Three (or `n`) fake nodes and a config in front of them.
pub struct Lab {
    pub nodes: Vec<FakeNode>,
    /// Each new leader promotes onto a new timeline, as PostgreSQL does.
    timeline: AtomicU64,
}

/// Fast check timing for tests: real clock, polled with deadlines.
pub const FAST: &str = r#"
[global]
hard_stop_after = "5s"

[defaults]
inter = "50ms"
fastinter = "20ms"
downinter = "50ms"
fall = 2
rise = 2
timeout_check = "300ms"
timeout_connect = "500ms"
"#;

impl Lab {
    pub async fn start(n: usize) -> Lab {
        let mut nodes = Vec::new();
        for i in 1..=n {
            nodes.push(FakeNode { rest: FakeRest::start().await, backend: Backend::start(&format!("node{i}")).await });
        }
        Lab { nodes, timeline: AtomicU64::new(1) }
    }

    /// Makes node `i` (0-based) the leader and the others replicas.
    pub fn leader(&self, i: usize) {
        let timeline = self.timeline.fetch_add(1, Ordering::SeqCst) + 1;
        for (j, n) in self.nodes.iter().enumerate() {
            n.rest.patroni(if i == j { "primary" } else { "replica" }, timeline);
        }
    }

    /// `[[node]]` tables for every fake node.
    pub fn nodes_toml(&self) -> String {
        self.nodes
            .iter()
            .enumerate()
            .map(|(i, n)| {
                format!(
                    "[[node]]\nname = \"node{}\"\naddress = \"{}\"\ncheck_address = \"{}\"\n\n",
                    i + 1,
                    n.backend.addr,
                    n.rest.addr
                )
            })
            .collect()
    }

    /// The usual three listeners on port 0, with `extra` appended to the defaults.
    pub fn config(&self, extra: &str) -> String {
        format!(
            "{FAST}{extra}\n{}\n{}",
            self.nodes_toml(),
            r#"
[[listener]]
name = "primary"
bind = "127.0.0.1:0"
balance = "first"
check = { method = "OPTIONS", path = "/master", expect = 200 }

[[listener]]
name = "replicas"
bind = "127.0.0.1:0"
balance = "roundrobin"
check = { method = "OPTIONS", path = "/replica", expect = 200 }

[web]
bind = "127.0.0.1:0"
[[web.user]]
name = "admin"
password = "secret"
role = "admin"

[[web.user]]
name = "viewer"
password = "look"
"#
        )
    }
}

/// Starts pgfront in-process on `text`.
pub fn start(text: &str) -> Pgfront {
    let config = Config::parse(Path::new("test.toml"), text).unwrap_or_else(|e| panic!("{e}"));
    let bound = Bound::bind(&config).unwrap();
    pgfront::app::start(config, bound)
}

/// A connected test client that has sent its opening and read the backend's name.
pub struct Client {
    pub stream: TcpStream,
    pub server: String,
}

/// What a refused client was told.
#[derive(Debug)]
pub struct Fatal {
    pub code: String,
    pub message: String,
}

/// Connects through pgfront: Ok with the backend's name, or the FATAL pgfront sent.
pub async fn connect(addr: SocketAddr) -> Result<Client, Fatal> {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let _ = stream.set_nodelay(true);
    stream.write_all(&OPENING).await.unwrap();
    let mut first = [0u8; 1];
    if stream.read_exact(&mut first).await.is_err() {
        return Err(Fatal { code: String::new(), message: "closed without a word".into() });
    }
    if first[0] == b'N' {
        // pgfront refuses an SSLRequest client in plain text, as libpq reads errors best:
        // "no encryption", then the error after the StartupMessage.
        stream.write_all(&startup_message(&[("user", "test")])).await.unwrap();
        stream.read_exact(&mut first).await.unwrap();
    }
    if first[0] == b'E' {
        return Err(read_error(&mut stream).await);
    }
    let mut name = vec![first[0]];
    loop {
        let mut b = [0u8; 1];
        stream.read_exact(&mut b).await.unwrap();
        if b[0] == b'\n' {
            break;
        }
        name.push(b[0]);
    }
    // The backend echoes the opening back.
    let mut echo = [0u8; 8];
    stream.read_exact(&mut echo).await.unwrap();
    assert_eq!(echo, OPENING);
    Ok(Client { stream, server: String::from_utf8(name).unwrap() })
}

pub use pgfront::pg::startup_message;

/// Connect-to-first-byte latency through pgfront, `n` times: (median, p99) in µs. For the
/// ignored measurement tests (costs belong in measurements, not assertions).
pub async fn connect_latency(addr: SocketAddr, n: usize) -> (u128, u128) {
    let mut us = Vec::with_capacity(n);
    for _ in 0..n {
        let t = std::time::Instant::now();
        let c = connect(addr).await.unwrap();
        us.push(t.elapsed().as_micros());
        drop(c);
    }
    us.sort_unstable();
    (us[n / 2], us[n * 99 / 100])
}

/// Connects through pgfront until round robin hands out a session on `server`.
pub async fn connect_to(addr: SocketAddr, server: &str) -> Client {
    for _ in 0..100 {
        let c = connect(addr).await.unwrap();
        if c.server == server {
            return c;
        }
    }
    panic!("no session reached {server} in 100 tries");
}

/// Reads the rest of an ErrorResponse whose type byte was consumed.
pub async fn read_error(stream: &mut TcpStream) -> Fatal {
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).await.unwrap();
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize - 4];
    stream.read_exact(&mut body).await.unwrap();
    let mut fatal = Fatal { code: String::new(), message: String::new() };
    for field in body.split(|b| *b == 0).filter(|f| !f.is_empty()) {
        let value = String::from_utf8_lossy(&field[1..]).into_owned();
        match field[0] {
            b'C' => fatal.code = value,
            b'M' => fatal.message = value,
            _ => {}
        }
    }
    fatal
}

impl Client {
    /// Sends `data` and reads its echo.
    pub async fn echo(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(data).await?;
        let mut back = vec![0u8; data.len()];
        self.stream.read_exact(&mut back).await?;
        assert_eq!(back, data);
        Ok(())
    }

    /// True once the session has been closed by pgfront (EOF or reset).
    pub async fn closed_within(&mut self, limit: Duration) -> bool {
        let mut b = [0u8; 64];
        matches!(tokio::time::timeout(limit, self.stream.read(&mut b)).await, Ok(Ok(0)) | Ok(Err(_)))
    }
}

/// A minimal HTTP/1.0 GET with optional basic-auth credentials (base64); returns the
/// status and the body.
pub async fn http_get(addr: SocketAddr, path: &str, auth: Option<&str>) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let auth = auth.map(|a| format!("Authorization: Basic {a}\r\n")).unwrap_or_default();
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n{auth}\r\n").as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let status = out.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, out.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default())
}

/// A free port on 127.0.0.1 (for configs that must name their port in advance), below the
/// kernel's ephemeral range: a port the kernel handed out for `:0` could be handed out
/// again to any outgoing connection (a fake backend's, pgfront's own) before pgfront bound
/// it, and CI saw "cannot bind ... Address already in use". Below that range only a bind
/// naming the port takes it; each call moves on, from a start that differs per process
/// (test binaries run in parallel).
#[allow(dead_code)]
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let low: u32 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768);
    let (from, span) = (20_000, low.saturating_sub(20_000).max(1000));
    let start = std::process::id() * 211 % span;
    for _ in 0..span {
        let port = from + (start + NEXT.fetch_add(1, Ordering::Relaxed)) % span;
        if std::net::TcpListener::bind(("127.0.0.1", port as u16)).is_ok() {
            return port as u16;
        }
    }
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `text` with its first two `127.0.0.1:0` binds on fixed free ports: the text and the ports.
#[allow(dead_code)]
pub fn on_two_free_ports(text: &str) -> (String, u16, u16) {
    let (p1, p2) = (free_port(), free_port());
    let text = text.replacen("bind = \"127.0.0.1:0\"", &format!("bind = \"127.0.0.1:{p1}\""), 1).replacen(
        "bind = \"127.0.0.1:0\"",
        &format!("bind = \"127.0.0.1:{p2}\""),
        1,
    );
    (text, p1, p2)
}
