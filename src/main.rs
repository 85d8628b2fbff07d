//! The `pgfront` binary: parses the command line and hands a validated configuration and
//! bound sockets to the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use pgfront::{app, Bound, Config};

#[derive(Parser)]
#[command(name = "pgfront", version, about = "A PostgreSQL-aware TCP load balancer for Patroni clusters")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the configured listeners until SIGTERM or SIGINT.
    Run {
        #[arg(long, short, default_value = "/etc/pgfront/pgfront.toml")]
        config: PathBuf,
    },
    /// Validate a configuration file and print a summary.
    Check {
        #[arg(long, short, default_value = "/etc/pgfront/pgfront.toml")]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => match Config::load(&config) {
            Ok(c) => {
                print!("{}", summary(&c));
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("pgfront: {e}");
                ExitCode::from(2)
            }
        },
        Command::Run { config } => run(config),
    }
}

fn run(path: PathBuf) -> ExitCode {
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        // Colour codes only on a terminal: journald and log files get plain text.
        .with_ansi(std::io::stdout().is_terminal())
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let config = match Config::load(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("pgfront: {e}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("pgfront: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async {
        let bound = match Bound::bind(&config) {
            Ok(b) => b,
            Err(e) => {
                eprintln!("pgfront: {e}");
                return ExitCode::FAILURE;
            }
        };
        tracing::info!(config = %path.display(), version = env!("CARGO_PKG_VERSION"), "pgfront starting");
        app::start(config, bound).run_until(stop_signal()).await;
        ExitCode::SUCCESS
    })
}

/// Completes on SIGTERM or SIGINT.
async fn stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
}

fn summary(c: &Config) -> String {
    use std::fmt::Write;
    let mut s = format!("{}: OK\n", c.path.display());
    let _ = writeln!(s, "global: maxconn {}, hard_stop_after {:?}", c.global.maxconn, c.global.hard_stop_after);
    let _ = writeln!(s, "nodes:");
    for n in &c.nodes {
        let _ = writeln!(s, "  {:<16} postgres {:<24} check {}", n.name, n.address, n.check_address);
    }
    let _ = writeln!(s, "listeners:");
    for l in &c.listeners {
        let names: Vec<&str> = l.servers.iter().map(|&i| c.nodes[i].name.as_str()).collect();
        let t = &l.check.timing;
        let _ = writeln!(
            s,
            "  {:<10} {:<22} balance {:<10} check {} {} -> {} (inter {:?} fastinter {:?} downinter {:?} fall {} rise {} timeout {:?}) servers {} maxconn {} queue {:?}",
            l.name,
            l.bind,
            l.balance.as_str(),
            l.check.method,
            l.check.path,
            l.check.expect,
            t.inter,
            t.fastinter,
            t.downinter,
            t.fall,
            t.rise,
            t.timeout,
            names.join(","),
            l.maxconn,
            l.timeout_queue,
        );
    }
    match &c.web {
        Some(w) => {
            let _ = writeln!(s, "web: {} ({} users)", w.bind, w.users.len());
        }
        None => s.push_str("web: disabled\n"),
    }
    s
}
