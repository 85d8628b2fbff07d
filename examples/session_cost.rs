//! Deterministic costs of a session, for issue 9: bytes allocated and held per idle session
//! after a PostgreSQL startup, and (under callgrind) instructions per new connection.
//!
//! pgfront runs in-process on one current-thread runtime on its own thread (as one
//! production worker does), against a fake PostgreSQL (the messages of
//! `scripts/lib/perf_fake_pg.py`: AuthenticationOk, six ParameterStatus, BackendKeyData
//! with a distinct key per session, ReadyForQuery, then an echo; Terminate closes) whose
//! side, with the clients, runs on the main thread. A counting allocator counts what the
//! pgfront thread allocates and frees.
//!
//! ```text
//! cargo run --release --example session_cost -- mem [SESSIONS]        # default 2000
//! cargo run --release --example session_cost -- cycles [N] [CLIENTS]  # default 1000, 8
//! valgrind --tool=callgrind --separate-threads=yes target/release/examples/session_cost cycles 1000
//! ```
//! `mem` opens SESSIONS sessions (startup through ReadyForQuery) and holds them, then echoes
//! 128 KiB on every one, then closes them all, printing the pgfront thread's live heap
//! per session at each step and which allocation sizes an idle session holds.
//! `cycles` runs N connect / startup / one query / Terminate cycles, CLIENTS at a time, like
//! `pgbench -C`; instructions per connection are the difference of the pgfront thread's
//! totals between two values of N, divided by their difference.
//! `PGFRONT_COST_TLS=1` gives the listener a `tls` table (terminating, plain text to the
//! server) as conf/local.toml does; the clients stay plain text.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

// --- counting allocator ------------------------------------------------------------------------

struct Counting;

thread_local! {
    static TRACKED: Cell<bool> = const { Cell::new(false) };
}

/// Live bytes and blocks allocated by tracked threads (frees counted where they happen).
static LIVE: AtomicI64 = AtomicI64::new(0);
static BLOCKS: AtomicI64 = AtomicI64::new(0);
static CALLS: AtomicU64 = AtomicU64::new(0);
/// Live blocks per size class (16-byte steps up to 8 KiB, then one bin), tracked threads.
const BINS: usize = 513;
static SIZES: [AtomicI64; BINS] = [const { AtomicI64::new(0) }; BINS];

fn bin(size: usize) -> usize {
    (size.div_ceil(16)).min(BINS - 1)
}

fn tracked() -> bool {
    TRACKED.try_with(Cell::get).unwrap_or(false)
}

fn count(size: usize, sign: i64) {
    LIVE.fetch_add(sign * size as i64, Ordering::Relaxed);
    BLOCKS.fetch_add(sign, Ordering::Relaxed);
    SIZES[bin(size)].fetch_add(sign, Ordering::Relaxed);
    if sign > 0 {
        CALLS.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: forwards every call to the system allocator unchanged; only counts beside it.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if tracked() {
            count(layout.size(), 1);
        }
        // SAFETY: the caller's contract is passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if tracked() {
            count(layout.size(), 1);
        }
        // SAFETY: the caller's contract is passed on.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if tracked() {
            count(layout.size(), -1);
        }
        // SAFETY: the caller's contract is passed on.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if tracked() {
            count(layout.size(), -1);
            count(new_size, 1);
        }
        // SAFETY: the caller's contract is passed on.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

#[derive(Clone)]
struct Snap {
    live: i64,
    blocks: i64,
    calls: u64,
    sizes: Vec<i64>,
}

fn snap() -> Snap {
    Snap {
        live: LIVE.load(Ordering::SeqCst),
        blocks: BLOCKS.load(Ordering::SeqCst),
        calls: CALLS.load(Ordering::SeqCst),
        sizes: SIZES.iter().map(|s| s.load(Ordering::SeqCst)).collect(),
    }
}

// --- fake PostgreSQL ---------------------------------------------------------------------------

fn msg(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![kind];
    m.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    m.extend_from_slice(body);
    m
}

fn startup_reply(key: u32) -> Vec<u8> {
    let mut r = msg(b'R', &0u32.to_be_bytes());
    for (k, v) in [
        ("server_version", "15.0"),
        ("server_encoding", "UTF8"),
        ("client_encoding", "UTF8"),
        ("DateStyle", "ISO, MDY"),
        ("integer_datetimes", "on"),
        ("standard_conforming_strings", "on"),
    ] {
        r.extend(msg(b'S', format!("{k}\0{v}\0").as_bytes()));
    }
    let mut kd = (100_000 + key % 1_000_000).to_be_bytes().to_vec();
    kd.extend_from_slice(&key.to_be_bytes());
    r.extend(msg(b'K', &kd));
    r.extend(msg(b'Z', b"I"));
    r
}

const TERMINATE: [u8; 5] = [b'X', 0, 0, 0, 4];

async fn fake_pg(socket: TcpListener) {
    let keys = Arc::new(AtomicU64::new(1));
    while let Ok((mut s, _)) = socket.accept().await {
        let _ = s.set_nodelay(true);
        let keys = Arc::clone(&keys);
        tokio::spawn(async move {
            let mut head = [0u8; 8];
            if s.read_exact(&mut head).await.is_err() {
                return;
            }
            let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
            let mut rest = vec![0u8; len.saturating_sub(8)];
            if s.read_exact(&mut rest).await.is_err() {
                return;
            }
            let key = keys.fetch_add(1, Ordering::Relaxed) as u32;
            if s.write_all(&startup_reply(key)).await.is_err() {
                return;
            }
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        // Like PostgreSQL: Terminate ends the session without an answer.
                        if buf[..n].ends_with(&TERMINATE) {
                            return;
                        }
                        if s.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                }
            }
        });
    }
}

/// Answers every check with 200.
async fn fake_rest(socket: TcpListener) {
    while let Ok((mut s, _)) = socket.accept().await {
        tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            let mut seen = Vec::new();
            while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => seen.extend_from_slice(&buf[..n]),
                }
            }
            let _ = s.write_all(b"HTTP/1.0 200 OK\r\n\r\n").await;
        });
    }
}

// --- clients -----------------------------------------------------------------------------------

fn startup() -> Vec<u8> {
    pgfront::pg::startup_message(&[("user", "postgres"), ("database", "postgres")])
}

/// Connects and completes the startup (through ReadyForQuery).
async fn open(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let mut s = TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    s.write_all(&startup()).await?;
    loop {
        let mut head = [0u8; 5];
        s.read_exact(&mut head).await?;
        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        let mut body = vec![0u8; len - 4];
        s.read_exact(&mut body).await?;
        match head[0] {
            b'Z' => return Ok(s),
            b'E' => return Err(std::io::Error::other(String::from_utf8_lossy(&body).into_owned())),
            _ => {}
        }
    }
}

/// One `pgbench -C`-like cycle: connect, startup, a query and its answer, Terminate, close.
async fn cycle(addr: SocketAddr) -> std::io::Result<()> {
    let mut s = open(addr).await?;
    let query = msg(b'Q', b"SELECT abalance FROM pgbench_accounts WHERE aid = 4242;\0");
    s.write_all(&query).await?;
    let mut back = vec![0u8; query.len()];
    s.read_exact(&mut back).await?;
    s.write_all(&TERMINATE).await?;
    // Wait for the close to travel back, as the session's end on pgfront's side.
    let mut b = [0u8; 16];
    while s.read(&mut b).await? > 0 {}
    Ok(())
}

// --- pgfront -----------------------------------------------------------------------------------

fn config(backend: SocketAddr, rest: SocketAddr, maxconn: usize) -> String {
    let tls = if std::env::var_os("PGFRONT_COST_TLS").is_some() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/lab/tls");
        format!("tls = {{ cert = \"{dir}/pgfront.crt\", key = \"{dir}/pgfront.key\", server = \"disable\" }}\n")
    } else {
        String::new()
    };
    format!(
        "[global]\nmaxconn = {maxconn}\ncheck_mode = \"http\"\nhard_stop_after = \"5s\"\n\n\
         [defaults]\nmaxconn = {maxconn}\ntimeout_connect = \"4s\"\ntimeout_queue = \"60s\"\n\
         timeout_client = \"30m\"\ntimeout_server = \"30m\"\ninter = \"1h\"\nrise = 1\n\n\
         [[node]]\nname = \"fake\"\naddress = \"{backend}\"\ncheck_address = \"{rest}\"\n\n\
         [[listener]]\nname = \"fake\"\nbind = \"127.0.0.1:0\"\nbalance = \"roundrobin\"\n\
         check = {{ method = \"GET\", path = \"/health\", expect = 200 }}\n{tls}"
    )
}

/// The pgfront thread's CPU clock (user + system).
static CPU_CLOCK: std::sync::OnceLock<libc::clockid_t> = std::sync::OnceLock::new();

/// CPU time of the pgfront thread so far, in microseconds.
fn pgfront_cpu_us() -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime on a valid clock id and a local struct.
    unsafe { libc::clock_gettime(*CPU_CLOCK.get().unwrap(), &mut ts) };
    ts.tv_sec as f64 * 1e6 + ts.tv_nsec as f64 / 1e3
}

/// Starts pgfront on its own (tracked) thread; returns its listener's address.
fn start_pgfront(text: String) -> SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    let handle = std::thread::Builder::new()
        .name("pgfront".into())
        .spawn(move || {
            TRACKED.with(|t| t.set(true));
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                let config = pgfront::Config::parse(Path::new("session_cost.toml"), &text).unwrap();
                let bound = pgfront::Bound::bind(&config).unwrap();
                let p = pgfront::app::start(config, bound);
                let addr = p.listener_addr("fake").unwrap();
                std::mem::forget(p);
                tx.send(addr).unwrap();
                std::future::pending::<()>().await;
            });
        })
        .unwrap();
    let mut clock: libc::clockid_t = 0;
    // SAFETY: the thread is alive (it never returns); its pthread id is valid.
    unsafe { libc::pthread_getcpuclockid(std::os::unix::thread::JoinHandleExt::as_pthread_t(&handle), &mut clock) };
    CPU_CLOCK.set(clock).unwrap();
    std::mem::forget(handle);
    rx.recv().unwrap()
}

fn raise_fd_limit() {
    // SAFETY: plain getrlimit/setrlimit on a local struct.
    unsafe {
        let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

async fn settle() {
    tokio::time::sleep(Duration::from_millis(500)).await;
}

fn per(a: &Snap, b: &Snap, n: usize) -> String {
    format!(
        "{:.1} B/session in {:.2} blocks/session",
        (b.live - a.live) as f64 / n as f64,
        (b.blocks - a.blocks) as f64 / n as f64
    )
}

async fn mem(addr: SocketAddr, n: usize) {
    // Warm up: one session through, so one-time allocations (pools, caches) are not counted.
    for _ in 0..4 {
        drop(open(addr).await.unwrap());
    }
    settle().await;
    let before = snap();
    let mut sessions = Vec::with_capacity(n);
    for chunk in 0..n.div_ceil(64) {
        let k = 64.min(n - chunk * 64);
        let opened = futures_join((0..k).map(|_| open(addr))).await;
        sessions.extend(opened.into_iter().map(|r| r.unwrap()));
    }
    settle().await;
    let idle = snap();
    println!("sessions: {n}");
    println!(
        "idle:        {}  (allocation calls {:.1}/session)",
        per(&before, &idle, n),
        (idle.calls - before.calls) as f64 / n as f64
    );
    println!("  live blocks per session by size (bytes requested, rounded up to 16):");
    for (i, (a, b)) in before.sizes.iter().zip(&idle.sizes).enumerate() {
        let d = (b - a) as f64 / n as f64;
        if d.abs() >= 0.05 {
            let size = if i == BINS - 1 { ">8192".to_owned() } else { format!("{}", i * 16) };
            println!("    {size:>6}: {d:+.2}");
        }
    }
    // 128 KiB through every session, 64 at a time.
    let block = vec![0xa5u8; 128 * 1024];
    for chunk in sessions.chunks_mut(64) {
        let echoes = chunk.iter_mut().map(|s| {
            let block = &block;
            async move {
                let (mut r, mut w) = s.split();
                let mut back = vec![0u8; block.len()];
                let (a, b) = tokio::join!(w.write_all(block), r.read_exact(&mut back));
                a.unwrap();
                b.unwrap();
            }
        });
        futures_join(echoes).await;
    }
    settle().await;
    let burst = snap();
    println!("after burst: {}", per(&before, &burst, n));
    drop(sessions);
    settle().await;
    settle().await;
    let closed = snap();
    println!("after close: {} (left behind)", per(&before, &closed, n));
    println!("  live blocks left behind by size (bytes requested, rounded up to 16):");
    for (i, (a, b)) in before.sizes.iter().zip(&closed.sizes).enumerate() {
        if a != b {
            let size = if i == BINS - 1 { ">8192".to_owned() } else { format!("{}", i * 16) };
            println!("    {size:>6}: {:+}", b - a);
        }
    }
}

async fn cycles(addr: SocketAddr, n: usize, clients: usize) {
    let before = snap();
    let cpu = pgfront_cpu_us();
    let t = std::time::Instant::now();
    let per_client = n / clients;
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            tokio::spawn(async move {
                for _ in 0..per_client {
                    cycle(addr).await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let elapsed = t.elapsed().as_secs_f64();
    let cpu = pgfront_cpu_us() - cpu;
    settle().await;
    let after = snap();
    let done = per_client * clients;
    println!(
        "cycles: {done} in {elapsed:.2}s; pgfront thread: {:.1} µs CPU/connection (user+system, timed), {:.1} allocation calls/connection, {:.1} B left/connection",
        cpu / done as f64,
        (after.calls - before.calls) as f64 / done as f64,
        (after.live - before.live) as f64 / done as f64
    );
}

/// Joins futures on this task (no extra dependency).
async fn futures_join<F: std::future::Future>(futs: impl Iterator<Item = F>) -> Vec<F::Output> {
    let mut set: Vec<std::pin::Pin<Box<F>>> = futs.map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = set.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in set.iter_mut().enumerate() {
            if out[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => out[i] = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().map(Option::unwrap).collect()
}

fn main() {
    raise_fd_limit();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mode = args.first().map(String::as_str).unwrap_or("mem");
    let num = |i: usize, d: usize| args.get(i).and_then(|a| a.parse().ok()).unwrap_or(d);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let pg = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let rest = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (pg_addr, rest_addr) = (pg.local_addr().unwrap(), rest.local_addr().unwrap());
        tokio::spawn(fake_pg(pg));
        tokio::spawn(fake_rest(rest));
        let sessions = num(1, 2000);
        let addr = start_pgfront(config(pg_addr, rest_addr, sessions + 100));
        // Until the first check admitted the server.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while open(addr).await.is_err() {
            assert!(std::time::Instant::now() < deadline, "no session through pgfront");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        match mode {
            "mem" => mem(addr, sessions).await,
            "cycles" => cycles(addr, num(1, 1000), num(2, 8)).await,
            other => panic!("unknown mode {other}: mem or cycles"),
        }
    });
}
