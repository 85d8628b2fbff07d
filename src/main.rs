//! The `pgfront` binary: parses the command line and hands a validated configuration and
//! bound sockets to the library.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use pgfront::config::LogFormat;
use pgfront::{app, Bound, Config, Pgfront, Workers};
use sd_notify::NotifyState;

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
    /// Convert an haproxy.cfg for a Patroni cluster into a pgfront configuration (on
    /// stdout); what could not be carried over is listed on stderr. Exit code 0: complete;
    /// 1: written, but some directives were not carried over; 2: nothing could be converted.
    ImportHaproxy {
        /// The haproxy.cfg to convert.
        file: PathBuf,
        /// Store `stats auth` passwords as Argon2 hashes instead of in clear.
        #[arg(long)]
        hash_passwords: bool,
    },
    /// Show a running pgfront's view of the cluster and its listeners, read from its web
    /// port. Exit code 0: a leader is admitted; 1: none is; 2: pgfront cannot be read.
    Status {
        #[command(flatten)]
        remote: Remote,
        /// Print the status JSON as pgfront serves it, for scripts.
        #[arg(long)]
        json: bool,
        /// Refresh every SECONDS until interrupted.
        #[arg(long, value_name = "SECONDS", num_args = 0..=1, default_missing_value = "2")]
        watch: Option<u64>,
    },
    /// Apply an admin action to a node through a running pgfront's JSON admin API (an admin
    /// user): drain (no new sessions), ready, maint (no new sessions, health ignored) or
    /// kill-sessions. Exit code 0: done; 1: refused; 2: pgfront cannot be reached.
    Ctl {
        #[arg(value_parser = ["drain", "ready", "maint", "kill-sessions"])]
        action: String,
        /// The node, as named in the configuration.
        node: String,
        /// Only on this listener (default: every listener that has the node).
        #[arg(long)]
        listener: Option<String>,
        /// The node's cluster (a `[[cluster]]` name), when several clusters have a node of
        /// that name.
        #[arg(long)]
        cluster: Option<String>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Print a manual page (roff), generated from this command line's own help: pgfront(1),
    /// or pgfront-SUBCOMMAND(1) for a subcommand.
    #[command(hide = true)]
    Man { subcommand: Option<String> },
}

/// Which running pgfront `status` and `ctl` ask, and as whom.
#[derive(Args)]
struct Remote {
    /// The web port of the pgfront to ask.
    #[arg(long, default_value = "http://127.0.0.1:7000")]
    url: String,
    /// A user of the stats page (`[[web.user]]`).
    #[arg(long, env = "PGFRONT_USER")]
    user: Option<String>,
    /// Its password; better from the environment or a file (never echoed).
    #[arg(long, env = "PGFRONT_PASSWORD", hide_env_values = true)]
    password: Option<String>,
    /// A file holding the password (its first line).
    #[arg(long, conflicts_with = "password")]
    password_file: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Run { .. }) {
        // The commands that print end as other Unix tools do when their reader goes away
        // (`pgfront check ... | head -1`): by SIGPIPE, not a panic of `print!` on EPIPE.
        // `run` keeps Rust's default (ignored): its sockets report a closed peer as errors.
        // SAFETY: setting a signal's disposition before any thread is started.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    match cli.command {
        Command::Check { config } => match Config::load(&config) {
            Ok(c) => {
                for w in c.warnings() {
                    eprintln!("pgfront: {}: warning: {w}", c.path.display());
                }
                print!("{}", summary(&c));
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("pgfront: {e}");
                ExitCode::from(2)
            }
        },
        Command::Run { config } => {
            // A SIGHUP before the handlers are in place must not end the process (its
            // default action), nor the re-exec below (an ignored signal stays ignored across
            // exec); `run` installs the handler that reloads.
            // SAFETY: SIG_IGN is a valid disposition for SIGHUP, set before any thread starts.
            unsafe { libc::signal(libc::SIGHUP, libc::SIG_IGN) };
            // Memory freed by ended sessions goes back to the system only without glibc's
            // per-thread cache (see pgfront::malloc): this starts pgfront again without it.
            // A failure is logged once logging is set up (in the operator's log format).
            let restart = pgfront::malloc::restart_without_tcache();
            run(config, restart)
        }
        Command::ImportHaproxy { file, hash_passwords } => import_haproxy(&file, hash_passwords),
        Command::Status { remote, json, watch } => match source(remote) {
            Ok(src) => status(&src, json, watch),
            Err(code) => code,
        },
        Command::Ctl { action, node, listener, cluster, remote } => {
            let src = match source(remote) {
                Ok(src) => src,
                Err(code) => return code,
            };
            match pgfront::status::act(&src, &action, &node, listener.as_deref(), cluster.as_deref()) {
                Ok(done) => {
                    for d in done {
                        println!("{d}");
                    }
                    ExitCode::SUCCESS
                }
                Err(Ok(refused)) => {
                    eprintln!("pgfront: {refused}");
                    ExitCode::from(1)
                }
                Err(Err(e)) => {
                    eprintln!("pgfront: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Man { subcommand } => {
            use clap::CommandFactory;
            let top = Cli::command();
            let page = match &subcommand {
                None => top,
                Some(name) => match top.find_subcommand(name) {
                    Some(sub) => sub.clone().name(Box::leak(format!("pgfront-{name}").into_boxed_str()) as &str),
                    None => {
                        eprintln!("pgfront: no subcommand {name:?}");
                        return ExitCode::from(2);
                    }
                },
            };
            let mut out = Vec::new();
            match clap_mangen::Man::new(page).render(&mut out) {
                Ok(()) => {
                    use std::io::Write;
                    let _ = std::io::stdout().write_all(&out);
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("pgfront: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// Where `status` and `ctl` ask, and as whom; the password from a file wins (never echoed).
fn source(remote: Remote) -> Result<pgfront::status::Source, ExitCode> {
    let Remote { url, user, password, password_file } = remote;
    let password = match password_file {
        Some(f) => match std::fs::read_to_string(&f) {
            Ok(t) => Some(t.lines().next().unwrap_or_default().to_owned()),
            Err(e) => {
                eprintln!("pgfront: cannot read {}: {e}", f.display());
                return Err(ExitCode::from(2));
            }
        },
        None => password,
    };
    if user.is_some() && password.is_none() {
        // Sent without credentials, it came back as "refused the credentials".
        eprintln!("pgfront: --user needs a password: PGFRONT_PASSWORD, --password-file or --password");
        return Err(ExitCode::from(2));
    }
    Ok(pgfront::status::Source { url, user, password, timeout: std::time::Duration::from_secs(5) })
}

fn status(src: &pgfront::status::Source, json: bool, watch: Option<u64>) -> ExitCode {
    use pgfront::status::{fetch, leader_admitted, render};
    loop {
        let code = match fetch(src) {
            Ok(v) => {
                if watch.is_some() {
                    print!("\x1b[2J\x1b[H");
                }
                if json {
                    println!("{v}");
                } else {
                    print!("{}", render(&src.url, &v));
                }
                if leader_admitted(&v) {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(1)
                }
            }
            Err(e) => {
                eprintln!("pgfront: {e}");
                ExitCode::from(2)
            }
        };
        match watch {
            Some(secs) => std::thread::sleep(std::time::Duration::from_secs(secs.max(1))),
            None => return code,
        }
    }
}

fn import_haproxy(file: &Path, hash_passwords: bool) -> ExitCode {
    use pgfront::import::{import, NoteKind, Options};
    // Any file (a pipe too), at most as large as a configuration may be, and not
    // necessarily UTF-8: a Latin-1 comment must not make the whole file unreadable.
    let text = match std::fs::File::open(file).and_then(pgfront::config::read_capped) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) => {
            eprintln!("pgfront: cannot read {}: {e}", file.display());
            return ExitCode::from(2);
        }
    };
    let shown = file.display().to_string();
    let say = |notes: &[pgfront::import::Note]| {
        for n in notes {
            let kind = match n.kind {
                NoteKind::Explained => "note",
                NoteKind::Unmapped => "not carried over",
            };
            eprintln!("{shown}:{}: {kind}: `{}`: {}", n.line, n.directive, n.text);
        }
    };
    let imported = match import(&shown, &text, Options { hash_passwords }) {
        Ok(i) => i,
        Err(e) => {
            // What was noted says why (every server left out, for example).
            let pgfront::import::ImportError::NothingToImport { notes } = &e;
            say(notes);
            eprintln!("pgfront: {shown}: {e}");
            return ExitCode::from(2);
        }
    };
    print!("{}", imported.toml);
    say(&imported.notes);
    if imported.complete() {
        eprintln!("pgfront: {shown}: converted completely");
        ExitCode::SUCCESS
    } else {
        let n = imported.notes.iter().filter(|n| n.kind == NoteKind::Unmapped).count();
        eprintln!("pgfront: {shown}: converted, but {n} directive(s) were not carried over (listed above)");
        ExitCode::from(1)
    }
}

fn run(path: PathBuf, restart_failed: Option<std::io::Error>) -> ExitCode {
    use std::io::IsTerminal;
    // The control runtime (checkers, web surface, signals, reloads) on this thread; the
    // sessions on one current-thread runtime per worker thread.
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("pgfront: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // A SIGHUP is caught from here on: one that comes while pgfront starts reloads once it
    // serves (the file may have changed after it was read).
    let hup = rt.block_on(async { tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) });
    // The file first: it says how to log (an invalid one is reported on stderr as is).
    let config = match Config::load(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("pgfront: {e}");
            return ExitCode::from(2);
        }
    };
    // SIGTERM and SIGINT from here on stop gracefully once pgfront serves (before, while it
    // reads its file, they end it as they would any process).
    let signals = hup.and_then(|hup| rt.block_on(async { Signals::new(hup) }));
    // Logs go to stderr (the journal under systemd) through a non-blocking writer: a slow
    // reader (journald under load) never stalls a worker thread serving sessions; lines
    // are dropped, not waited for, if its buffer fills. The guard flushes at exit.
    let (writer, _flush) = tracing_appender::non_blocking(std::io::stderr());
    let logs = tracing_subscriber::fmt()
        .with_writer(writer)
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()));
    match config.global.log_format {
        // One JSON object per line, fields as keys: for log pipelines.
        LogFormat::Json => logs.json().with_current_span(false).init(),
        // Colour codes only on a terminal: journald and log files get plain text.
        LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).init(),
    }
    if let Some(e) = restart_failed {
        tracing::warn!(error = %e,
            "cannot start again with glibc's per-thread malloc cache off; memory freed by ended sessions may stay resident");
    }
    // Two descriptors per session: take what the hard limit allows before anything is
    // bound; global.maxconn is then held to what that limit can serve (see pgfront::fds).
    let limit = pgfront::fds::raise_limit();
    tracing::debug!(descriptor_limit = limit, "descriptor limit");
    let workers = match workers::start(config.global.threads) {
        Ok(w) => w,
        Err(e) => {
            eprintln!("pgfront: cannot start the worker threads: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = rt.block_on(async {
        let bound = match Bound::bind_for(&config, workers.handles.len()) {
            Ok(b) => b,
            Err(e) => {
                eprintln!("pgfront: {e}");
                return ExitCode::FAILURE;
            }
        };
        tracing::info!(config = %path.display(), version = env!("CARGO_PKG_VERSION"), "pgfront starting");
        for w in config.warnings() {
            tracing::warn!("{w}");
        }
        let pgfront = app::start_on(config, bound, Workers::new(workers.handles.clone()));
        systemd::notify(&[NotifyState::Ready, NotifyState::Status("serving")]);
        systemd::spawn_watchdog();
        let mut signals = match signals {
            Ok(mut signals) => {
                serve_signals(&pgfront, &path, &mut signals).await;
                Some(signals)
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot install signal handlers; stopping");
                None
            }
        };
        systemd::notify(&[NotifyState::Stopping, NotifyState::Status("draining sessions")]);
        let grace = pgfront.shared().runtime().config.global.hard_stop_after;
        let hurry = async {
            match signals.as_mut() {
                Some(s) => s.hurry().await,
                None => std::future::pending().await,
            }
        };
        pgfront.shutdown_or(grace, hurry).await;
        ExitCode::SUCCESS
    });
    workers.stop();
    code
}

/// The worker threads: each runs a current-thread runtime until told to stop.
mod workers {
    use tokio::runtime::Handle;
    use tokio_util::sync::CancellationToken;

    pub struct Running {
        pub handles: Vec<Handle>,
        threads: Vec<std::thread::JoinHandle<()>>,
        stop: CancellationToken,
    }

    pub fn start(n: usize) -> std::io::Result<Running> {
        let stop = CancellationToken::new();
        let (mut handles, mut threads) = (Vec::with_capacity(n), Vec::with_capacity(n));
        for i in 0..n {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            handles.push(rt.handle().clone());
            let stop = stop.clone();
            threads.push(std::thread::Builder::new().name(format!("pgfront-w{i}")).spawn(move || {
                rt.block_on(stop.cancelled());
            })?);
        }
        Ok(Running { handles, threads, stop })
    }

    impl Running {
        /// Stops every worker (after the graceful stop drained their sessions) and waits.
        pub fn stop(self) {
            self.stop.cancel();
            for t in self.threads {
                let _ = t.join();
            }
        }
    }
}

/// Reloads on SIGHUP; returns on SIGTERM or SIGINT, at once, even while a reload reads its
/// files (a hung mount or a FIFO must not keep pgfront serving after it was told to stop).
async fn serve_signals(pgfront: &Pgfront, path: &Path, signals: &mut Signals) {
    let Signals { term, int, hup } = signals;
    // The reload reading its files, when one is; a SIGHUP meanwhile asks for one more after it.
    let mut loading: Option<Loading> = None;
    let mut again = false;
    loop {
        tokio::select! {
            _ = term.recv() => { tracing::info!("SIGTERM received: stopping"); return }
            _ = int.recv() => { tracing::info!("SIGINT received: stopping"); return }
            _ = hup.recv() => {
                if loading.is_some() {
                    tracing::info!(config = %path.display(), "SIGHUP received while a reload reads its files: reloading again after it");
                    again = true;
                } else {
                    loading = Some(Loading::start(path));
                }
            }
            () = tokio::time::sleep_until(loading.as_ref().map_or_else(tokio::time::Instant::now, |l| l.slow_at)),
                if loading.as_ref().is_some_and(|l| !l.said_slow) =>
            {
                if let Some(l) = loading.as_mut() {
                    l.said_slow = true;
                }
                tracing::warn!(config = %path.display(), after = ?RELOAD_SLOW,
                    "the reload is still reading its files (a hung mount?): the running configuration serves meanwhile");
            }
            loaded = async { (&mut loading.as_mut().expect("guarded").done).await }, if loading.is_some() => {
                loading = None;
                match loaded {
                    Ok(Ok(config)) => {
                        let _ = pgfront.reload(config);
                    }
                    Ok(Err(e)) => pgfront.reload_failed(&e.into()),
                    Err(_) => tracing::error!("reload task failed; the running configuration is unchanged"),
                }
                systemd::notify(&[NotifyState::Ready, NotifyState::Status("serving")]);
                if std::mem::take(&mut again) {
                    loading = Some(Loading::start(path));
                }
            }
        }
    }
}

/// The signals `run` acts on, caught from its start.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    /// Within the control runtime, with the SIGHUP stream made earlier.
    fn new(hup: tokio::signal::unix::Signal) -> std::io::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals { term: signal(SignalKind::terminate())?, int: signal(SignalKind::interrupt())?, hup })
    }

    /// While pgfront drains: completes on a second SIGTERM or SIGINT, which ends the grace
    /// period at once (an operator who asks twice does not want to wait `hard_stop_after`);
    /// a SIGHUP is answered with a line saying it changes nothing now.
    async fn hurry(&mut self) {
        loop {
            tokio::select! {
                _ = self.term.recv() => break tracing::warn!("SIGTERM received again while draining: closing the remaining sessions now"),
                _ = self.int.recv() => break tracing::warn!("SIGINT received again while draining: closing the remaining sessions now"),
                _ = self.hup.recv() => tracing::info!("SIGHUP received while stopping: not reloading"),
            }
        }
    }
}

/// How long a reload may read its files before a WARN line says it still does.
const RELOAD_SLOW: std::time::Duration = std::time::Duration::from_secs(10);

/// A reload reading its files on a thread of its own: reading, resolving names and loading
/// TLS files block, so not on a runtime thread, and not on tokio's blocking pool either,
/// whose shutdown would wait for a read that never returns.
struct Loading {
    done: tokio::sync::oneshot::Receiver<Result<Config, pgfront::config::ConfigError>>,
    slow_at: tokio::time::Instant,
    said_slow: bool,
}

impl Loading {
    fn start(path: &Path) -> Loading {
        tracing::info!(config = %path.display(), "SIGHUP received: reloading");
        let mut states = vec![NotifyState::Reloading];
        if let Ok(now) = NotifyState::monotonic_usec_now() {
            states.push(now);
        }
        systemd::notify(&states);
        let (tx, done) = tokio::sync::oneshot::channel();
        let file = path.to_owned();
        // A thread that cannot start drops `tx`: the reload fails and says so.
        let _ = std::thread::Builder::new().name("pgfront-reload".into()).spawn(move || {
            let _ = tx.send(Config::load(&file));
        });
        Loading { done, slow_at: tokio::time::Instant::now() + RELOAD_SLOW, said_slow: false }
    }
}

/// systemd integration: readiness, reload and stop notifications, and the watchdog.
/// Every call is a no-op when not started by systemd (NOTIFY_SOCKET unset).
mod systemd {
    use std::time::Duration;

    use sd_notify::NotifyState;

    pub fn notify(states: &[NotifyState]) {
        if let Err(e) = sd_notify::notify(false, states) {
            tracing::warn!(error = %e, "sd_notify failed");
        }
    }

    /// Pings the watchdog at half its interval while the runtime is responsive.
    pub fn spawn_watchdog() {
        let mut usec = 0;
        if sd_notify::watchdog_enabled(false, &mut usec) && usec > 0 {
            let every = Duration::from_micros(usec / 2);
            tokio::spawn(async move {
                loop {
                    notify(&[NotifyState::Watchdog]);
                    tokio::time::sleep(every).await;
                }
            });
        }
    }
}

fn summary(c: &Config) -> String {
    use std::fmt::Write;
    let mut s = format!("{}: OK\n", c.path.display());
    let _ = writeln!(s, "global: maxconn {}, hard_stop_after {:?}", c.global.maxconn, c.global.hard_stop_after);
    for view in c.views() {
        if !view.cluster.is_empty() {
            let _ = writeln!(s, "cluster {:?}:", view.cluster);
        }
        cluster_summary(&mut s, &view);
    }
    match &c.web {
        Some(w) => {
            let _ = writeln!(s, "web: {} ({} users)", w.bind, w.users.len());
        }
        None => s.push_str("web: disabled\n"),
    }
    s
}

/// One cluster's part of `pgfront check`'s summary.
fn cluster_summary(s: &mut String, c: &Config) {
    use std::fmt::Write;
    let _ = writeln!(s, "nodes:");
    for n in &c.nodes {
        let scheme = match &n.check_tls {
            Some(t) => {
                format!("https, verify {}{}", t.verify.as_str(), if t.cert.is_some() { ", client cert" } else { "" })
            }
            None => "http".to_owned(),
        };
        let auth = n.check_auth.as_ref().map(|a| format!(", basic auth as {:?}", a.user)).unwrap_or_default();
        let _ = writeln!(s, "  {:<16} postgres {:<24} check {} ({scheme}{auth})", n.name, n.address, n.check_address);
    }
    if let Some(d) = &c.global.discovery {
        let allow: Vec<String> = d.allow.iter().map(ToString::to_string).collect();
        let _ = writeln!(
            s,
            "discovery: patroni, GET /cluster every {:?} from {} (then any known node), members inside {} added to listeners without servers",
            d.inter,
            d.seeds.join(","),
            allow.join(",")
        );
    }
    let _ = writeln!(s, "listeners:");
    for l in &c.listeners {
        let names: Vec<&str> = l.servers.iter().map(|&i| c.nodes[i].name.as_str()).collect();
        let t = &l.check.timing;
        let _ = writeln!(
            s,
            "  {:<10} {:<22} balance {:<10} check {} {} -> {} (inter {:?} fastinter {:?} downinter {:?} fall {} rise {} timeout {:?}) servers {} maxconn {} queue {:?} tls {}",
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
            if l.every_node && c.global.discovery.is_some() {
                format!("{}+discovered", names.join(","))
            } else {
                names.join(",")
            },
            l.maxconn,
            l.timeout_queue,
            match &l.tls {
                None => "pass-through".to_owned(),
                Some(t) => format!("terminated (to servers: {:?})", t.server).to_lowercase(),
            },
        );
    }
}
