//! Server selection and the health state machine: the per-session and per-check costs.
//! Run: cargo bench --bench select

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use pgfront::balance;
use pgfront::cluster::Runtime;
use pgfront::config::Config;
use pgfront::health::{Machine, ProbeResult};
use tokio_util::sync::CancellationToken;

fn runtime(balance: &str) -> Runtime {
    let text = format!(
        r#"
[[node]]
name = "n1"
address = "127.0.0.1:1"
check_address = "127.0.0.1:8001"
[[node]]
name = "n2"
address = "127.0.0.1:2"
check_address = "127.0.0.1:8002"
[[node]]
name = "n3"
address = "127.0.0.1:3"
check_address = "127.0.0.1:8003"
[[listener]]
name = "l"
bind = "127.0.0.1:0"
balance = "{balance}"
check = {{ path = "/replica" }}
"#
    );
    let rt = Runtime::build(Arc::new(Config::parse(Path::new("b.toml"), &text).unwrap()), &CancellationToken::new());
    let pass = ProbeResult::answered(true, Duration::ZERO, "");
    // n1 down, n2 and n3 up: the scan has to skip one.
    for check in &rt.checks[1..] {
        check.record(pass.clone());
        check.record(pass.clone());
    }
    rt
}

fn selection(c: &mut Criterion) {
    let _guard = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let _enter = _guard.enter();
    for b in ["first", "roundrobin", "leastconn"] {
        let rt = runtime(b);
        let l = &rt.listeners[0];
        c.bench_function(&format!("pick/{b}/3 servers, 1 down"), |bench| {
            bench.iter(|| {
                let slot = balance::pick(black_box(l), &[], balance::Target::Listener).unwrap();
                black_box(&slot);
            })
        });
    }
}

/// What `pgfront.min_lsn` adds to a new session before its server is chosen: reading the
/// setting from `options` and parsing it, and the pick among replicas by their positions
/// (both replicas have the position: no wait).
fn min_lsn(c: &mut Criterion) {
    let _guard = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let _enter = _guard.enter();
    let packet = pgfront::pg::startup_message(&[
        ("user", "app"),
        ("database", "app"),
        ("application_name", "orders"),
        ("options", "-c statement_timeout=5s -c pgfront.min_lsn=16/B374D848"),
    ]);
    let startup = pgfront::pg::Startup::parse(&packet).unwrap();
    c.bench_function("min_lsn/read and parse the setting", |bench| {
        bench.iter(|| {
            let text = black_box(&startup).setting("pgfront.min_lsn").unwrap();
            black_box(pgfront::pg::parse_lsn(&text))
        })
    });
    c.bench_function("min_lsn/absent: look for the setting", |bench| {
        let plain = pgfront::pg::Startup::parse(&pgfront::pg::startup_message(&[("user", "app")])).unwrap();
        bench.iter(|| black_box(black_box(&plain).setting("pgfront.min_lsn")))
    });
    let rt = runtime("roundrobin");
    let l = &rt.listeners[0];
    for (name, lsn) in [("pick/roundrobin without min_lsn", None), ("pick/roundrobin with min_lsn 0/0", Some(0))] {
        c.bench_function(name, |bench| {
            let ask = balance::Ask::new(balance::Target::Listener, lsn);
            bench.iter(|| black_box(balance::pick(black_box(l), &[], ask).unwrap()))
        });
    }
}

fn state_machine(c: &mut Criterion) {
    c.bench_function("machine/observe 1000 results", |bench| {
        bench.iter(|| {
            let mut m = Machine::new(2, 3);
            for i in 0..1000u32 {
                black_box(m.observe(black_box(i % 7 != 0)));
            }
            m
        })
    });
}

criterion_group!(benches, selection, min_lsn, state_machine);
criterion_main!(benches);
