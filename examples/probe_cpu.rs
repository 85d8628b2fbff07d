//! What a health check costs the REST API it asks, with TLS sessions resumed (as pgfront
//! probes) and with a full handshake every time (a new session cache per probe).
//!
//! ```text
//! cargo run --release --example probe_cpu -- HOST:PORT PID CA CERT KEY [COUNT]
//! ```
//! PID is the Patroni process serving HOST:PORT; its CPU time (utime + stime from
//! /proc/PID/stat) is read before and after COUNT probes (`GET /patroni`) of each kind,
//! interleaved in rounds so drift hits both alike. Prints µs of REST API CPU per check.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use pgfront::config::{CheckSpec, CheckTiming};
use pgfront::health::{CheckTls, HttpProbe, Probe, Verify};

fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("the REST API's process");
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

fn spec(tls: CheckTls) -> CheckSpec {
    CheckSpec {
        method: "GET".into(),
        path: "/patroni".into(),
        expect: 200,
        timing: CheckTiming {
            inter: Duration::from_secs(1),
            fastinter: Duration::from_secs(1),
            downinter: Duration::from_secs(1),
            fall: 3,
            rise: 2,
            connect_timeout: Duration::from_secs(2),
            timeout: Duration::from_secs(5),
        },
        endpoint: None,
        source: None,
        tls: Some(Arc::new(tls)),
        auth: None,
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let a: Vec<String> = std::env::args().skip(1).collect();
    if a.len() < 5 {
        eprintln!("usage: probe_cpu HOST:PORT PID CA CERT KEY [COUNT]");
        std::process::exit(2);
    }
    let (target, pid) = (a[0].as_str(), a[1].parse::<u32>().expect("PID"));
    let count: u32 = a.get(5).map_or(200, |c| c.parse().expect("COUNT"));
    let load = || {
        CheckTls::load(
            Verify::Full,
            Some(PathBuf::from(&a[2])),
            Some(PathBuf::from(&a[3])),
            Some(PathBuf::from(&a[4])),
            None,
        )
        .expect("check_tls")
    };
    let hz = 100.0; // USER_HZ on Linux
    let resumed = spec(load());
    // Show that the server resumes: two probes, then a third connection's handshake kind.
    let tls = resumed.tls.clone().unwrap();
    for _ in 0..2 {
        HttpProbe.probe(target, &resumed).await;
    }
    let tcp = tokio::net::TcpStream::connect(target).await.expect("connect");
    let s = tls.connector().connect(tls.name_for(target).unwrap(), tcp).await.expect("handshake");
    println!("a third connection's handshake: {:?}", s.get_ref().1.handshake_kind());
    drop(s);
    let (mut t_resumed, mut t_full) = (0u64, 0u64);
    let rounds = 5;
    for round in 0..rounds {
        for resume in [round % 2 == 0, round % 2 != 0] {
            let before = cpu_ticks(pid);
            for _ in 0..count / rounds {
                let s = if resume { None } else { Some(spec(load())) };
                let r = HttpProbe.probe(target, s.as_ref().unwrap_or(&resumed)).await;
                assert!(r.status.is_some(), "probe failed: {} {}", r.summary(), r.detail);
            }
            let used = cpu_ticks(pid) - before;
            if resume {
                t_resumed += used;
            } else {
                t_full += used;
            }
        }
    }
    let per = |ticks: u64| ticks as f64 / hz / f64::from(count / rounds * rounds) * 1e6;
    println!(
        "REST API CPU per check over {count} checks each: resumed {:.0} µs, full handshake {:.0} µs",
        per(t_resumed),
        per(t_full)
    );
}
