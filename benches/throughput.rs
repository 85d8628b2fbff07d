//! Loopback throughput and round-trip latency through pgfront versus a direct connection,
//! in the same run, against an echo backend: 1 and 64 concurrent sessions, 64-byte and
//! 64 KiB messages. Prints MB/s and p50/p99 round trip.
//! Run: cargo bench --bench throughput   (PGFRONT_BENCH_SECS sets seconds per cell, default 3)

#[path = "../tests/support/mod.rs"]
mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use support::{connect, eventually, Lab};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Cell {
    bytes: u64,
    rtts: Vec<Duration>,
    elapsed: Duration,
}

async fn run(addr: SocketAddr, sessions: usize, size: usize, secs: u64) -> Cell {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..sessions {
        tasks.push(tokio::spawn(async move {
            let mut c = connect(addr).await.unwrap();
            let msg = vec![0x5au8; size];
            let mut back = vec![0u8; size];
            let mut rtts = Vec::new();
            let mut bytes = 0u64;
            while Instant::now() < deadline {
                let t = Instant::now();
                c.stream.write_all(&msg).await.unwrap();
                c.stream.read_exact(&mut back).await.unwrap();
                rtts.push(t.elapsed());
                bytes += 2 * size as u64;
            }
            (bytes, rtts)
        }));
    }
    let mut cell = Cell { bytes: 0, rtts: Vec::new(), elapsed: Duration::ZERO };
    for t in tasks {
        let (b, r) = t.await.unwrap();
        cell.bytes += b;
        cell.rtts.extend(r);
    }
    cell.elapsed = started.elapsed();
    cell.rtts.sort();
    cell
}

/// Resident memory of this process, in KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Memory held per idle session: open `n` sessions, each having exchanged one message,
/// and compare the growth with the same sessions opened directly (which counts the
/// client and the echo backend, leaving pgfront's share).
async fn idle_memory(addr: SocketAddr, n: usize) -> (u64, Vec<support::Client>) {
    let before = rss_kib();
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        let mut c = connect(addr).await.unwrap();
        c.echo(b"ping").await.unwrap();
        held.push(c);
    }
    (rss_kib().saturating_sub(before), held)
}

fn pct(v: &[Duration], p: f64) -> Duration {
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    // Benches are built but not run by `cargo test`; the harness passes --bench when run.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let secs: u64 = std::env::var("PGFRONT_BENCH_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(3);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let lab = Lab::start(1).await;
        lab.leader(0);
        let pg = support::start(&lab.config("maxconn = 5000"));
        eventually(Duration::from_secs(10), "leader up", || {
            pg.shared().runtime().listener("primary").unwrap().servers_up() == 1
        })
        .await;
        let via = pg.listener_addr("primary").unwrap();
        let direct = lab.nodes[0].backend.addr;
        println!("{:<8} {:>8} {:>7} {:>10} {:>10} {:>10}", "path", "sessions", "size", "MB/s", "p50 rtt", "p99 rtt");
        for sessions in [1usize, 64] {
            for size in [64usize, 64 * 1024] {
                for (name, addr) in [("direct", direct), ("pgfront", via)] {
                    let c = run(addr, sessions, size, secs).await;
                    println!(
                        "{:<8} {:>8} {:>7} {:>10.1} {:>8.1}µs {:>8.1}µs",
                        name,
                        sessions,
                        size,
                        c.bytes as f64 / c.elapsed.as_secs_f64() / 1e6,
                        pct(&c.rtts, 0.5).as_secs_f64() * 1e6,
                        pct(&c.rtts, 0.99).as_secs_f64() * 1e6,
                    );
                }
            }
        }
        let n = 2000;
        let (direct_kib, held) = idle_memory(direct, n).await;
        drop(held);
        let (via_kib, held) = idle_memory(via, n).await;
        let per = (via_kib as f64 - direct_kib as f64) / n as f64;
        println!("idle sessions: {n} direct grew RSS {direct_kib} KiB, through pgfront {via_kib} KiB: pgfront holds about {per:.1} KiB per idle session");
        drop(held);
    });
}
