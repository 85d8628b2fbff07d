//! Check timing on tokio's paused clock with a scripted probe: inter, fastinter,
//! downinter, fall and rise, with no sockets and no waiting.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pgfront::cluster::spawn_checkers;
use pgfront::cluster::Runtime;
use pgfront::config::{CheckSpec, Config};
use pgfront::health::{CheckCode, Probe, ProbeResult};
use pgfront::proxy::Reactor;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Answers from a script per target (then keeps the last answer), recording when each
/// probe was made.
#[derive(Default)]
struct Scripted {
    script: Mutex<HashMap<String, VecDeque<bool>>>,
    calls: Mutex<Vec<(String, String, Instant)>>,
}

impl Scripted {
    fn set(&self, target: &str, path: &str, results: &[bool]) {
        self.script.lock().unwrap().insert(format!("{target}{path}"), results.iter().copied().collect());
    }

    /// Milliseconds after `start` of each probe of `path` on `target`.
    fn times(&self, target: &str, path: &str, start: Instant) -> Vec<u64> {
        let calls = self.calls.lock().unwrap();
        calls.iter().filter(|c| c.0 == target && c.1 == path).map(|c| (c.2 - start).as_millis() as u64).collect()
    }
}

impl Probe for Scripted {
    fn probe<'a>(
        &'a self,
        target: &'a str,
        spec: &'a CheckSpec,
    ) -> Pin<Box<dyn Future<Output = ProbeResult> + Send + 'a>> {
        Box::pin(async move {
            self.calls.lock().unwrap().push((target.to_owned(), spec.path.clone(), Instant::now()));
            let passed = {
                let mut s = self.script.lock().unwrap();
                let q = s.entry(format!("{target}{}", spec.path)).or_default();
                if q.len() > 1 {
                    q.pop_front().unwrap()
                } else {
                    q.front().copied().unwrap_or(false)
                }
            };
            ProbeResult::answered(passed, Duration::ZERO, "")
        })
    }
}

const CONFIG: &str = r#"
[global]
check_mode = "http"
hunt_inter = "1h"

[defaults]
inter = "3s"
fastinter = "1s"
downinter = "5s"
fall = 3
rise = 2

[[node]]
name = "a"
address = "127.0.0.1:1"
check_address = "a:8008"

[[node]]
name = "b"
address = "127.0.0.1:2"
check_address = "b:8008"

[[listener]]
name = "primary"
bind = "127.0.0.1:0"
check = { path = "/master" }

[[listener]]
name = "replicas"
bind = "127.0.0.1:0"
check = { path = "/replica" }

[[listener]]
name = "reads"
bind = "127.0.0.1:0"
check = { path = "/replica" }
"#;

fn runtime() -> Arc<Runtime> {
    runtime_of(CONFIG)
}

fn runtime_of(text: &str) -> Arc<Runtime> {
    let config = Config::parse(Path::new("t.toml"), text).unwrap();
    Arc::new(Runtime::build(Arc::new(config), &CancellationToken::new()))
}

fn up(rt: &Runtime, listener: &str, server: &str) -> bool {
    rt.listener(listener).unwrap().servers.iter().any(|s| s.name == server && s.is_up())
}

/// Whether the server's check is UP (marked so by rise, not yet DOWN by fall), whether or
/// not its latest answer lets it take new sessions.
fn marked_up(rt: &Runtime, listener: &str, server: &str) -> bool {
    rt.listener(listener).unwrap().servers.iter().any(|s| s.name == server && s.check.report().machine.is_up())
}

/// Advances the paused clock in small steps so every timer that falls due runs.
async fn advance_to(start: Instant, ms: u64) {
    while Instant::now() < start + Duration::from_millis(ms) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(start_paused = true)]
async fn intervals_follow_haproxy_semantics() {
    let rt = runtime();
    let probe = Arc::new(Scripted::default());
    // pass, pass (UP), pass, fail, fail, fail (DOWN), then failing.
    probe.set("a:8008", "/master", &[true, true, true, false, false, false, false]);
    probe.set("b:8008", "/master", &[false]);
    let stop = CancellationToken::new();
    let start = Instant::now();
    spawn_checkers(&rt, probe.clone(), Arc::new(Reactor), &TaskTracker::new(), &stop);

    advance_to(start, 500).await;
    assert!(!up(&rt, "primary", "a"), "a server starts DOWN before its checks pass");
    advance_to(start, 1_500).await;
    assert!(up(&rt, "primary", "a"), "UP after rise=2 passes (fastinter in between)");
    advance_to(start, 8_500).await;
    let a = rt.listener("primary").unwrap().servers[0].check.report();
    assert_eq!(a.machine.label(), "UP 2/3", "two failures of fall=3: still UP, sessions not cut");
    assert!(!up(&rt, "primary", "a"), "but a leader check admits no new session after a failed answer");
    advance_to(start, 15_000).await;
    assert!(!up(&rt, "primary", "a"));
    stop.cancel();

    // Probes of a's /master check: at 0 (start), +1s (DOWN 1/2: fastinter), +3s (UP: inter),
    // +3s (first failure), +1s, +1s (UP 1/3, UP 2/3: fastinter), then DOWN: downinter 5s.
    assert_eq!(probe.times("a:8008", "/master", start), vec![0, 1_000, 4_000, 7_000, 8_000, 9_000, 14_000]);
    // A node that never passes is probed every downinter.
    assert_eq!(probe.times("b:8008", "/master", start), vec![0, 5_000, 10_000]);
    assert!(!up(&rt, "primary", "b"));
}

#[tokio::test(start_paused = true)]
async fn identical_checks_are_probed_once_per_interval() {
    let rt = runtime();
    // Two nodes, two distinct requests (/master, /replica): four checks, not six, although
    // three listeners use them.
    assert_eq!(rt.checks.len(), 4);
    let probe = Arc::new(Scripted::default());
    for target in ["a:8008", "b:8008"] {
        for path in ["/master", "/replica"] {
            probe.set(target, path, &[true]);
        }
    }
    let stop = CancellationToken::new();
    let start = Instant::now();
    spawn_checkers(&rt, probe.clone(), Arc::new(Reactor), &TaskTracker::new(), &stop);
    advance_to(start, 30_500).await;
    stop.cancel();
    let replica_a = probe.times("a:8008", "/replica", start).len();
    // 0, 1s (fastinter while rising), then every 3s up to 30s: 0,1,4,...,28 = 11 probes.
    assert_eq!(replica_a, 11, "one probe per interval for both listeners using /replica");
    assert!(up(&rt, "replicas", "a") && up(&rt, "reads", "a"), "both listeners see the shared check");
}

#[tokio::test(start_paused = true)]
async fn a_kick_probes_early_but_not_in_a_storm() {
    let rt = runtime();
    let probe = Arc::new(Scripted::default());
    for target in ["a:8008", "b:8008"] {
        for path in ["/master", "/replica"] {
            probe.set(target, path, &[true]);
        }
    }
    let stop = CancellationToken::new();
    let start = Instant::now();
    spawn_checkers(&rt, probe.clone(), Arc::new(Reactor), &TaskTracker::new(), &stop);
    advance_to(start, 2_000).await;
    let check = rt.listener("primary").unwrap().servers[0].check.clone();
    for _ in 0..100 {
        check.kick();
    }
    advance_to(start, 2_600).await;
    stop.cancel();
    let n = probe.times("a:8008", "/master", start).len();
    // 0 and 1s on schedule, then the 100 kicks made one early probe, not 100.
    assert_eq!(n, 3);
}

/// A Patroni agent per target: GET /primary answers 200 on the leader, with status JSON.
#[derive(Default)]
struct Agents {
    leader: Mutex<Option<String>>,
    timeline: Mutex<u64>,
    calls: Mutex<Vec<(String, String, Instant)>>,
    /// Targets whose REST API does not answer.
    silent: Mutex<Vec<String>>,
}

impl Probe for Agents {
    fn probe<'a>(
        &'a self,
        target: &'a str,
        spec: &'a CheckSpec,
    ) -> Pin<Box<dyn Future<Output = ProbeResult> + Send + 'a>> {
        Box::pin(async move {
            self.calls.lock().unwrap().push((
                target.to_owned(),
                format!("{} {}", spec.method, spec.path),
                Instant::now(),
            ));
            if self.silent.lock().unwrap().iter().any(|t| t == target) {
                return ProbeResult {
                    code: CheckCode::L4Con,
                    status: None,
                    ..ProbeResult::answered(false, Duration::ZERO, "refused")
                };
            }
            let leader = self.leader.lock().unwrap().as_deref() == Some(target);
            let role = if leader { "primary" } else { "replica" };
            let tl = *self.timeline.lock().unwrap();
            ProbeResult {
                body: Some(format!(r#"{{"state": "running", "role": "{role}", "timeline": {tl}}}"#).into_bytes()),
                ..ProbeResult::answered(leader, Duration::ZERO, "")
            }
        })
    }
}

const PATRONI: &str = r#"
[global]
hunt_inter = "200ms"

[defaults]
inter = "3s"
fastinter = "1s"
fall = 3
rise = 2

[[node]]
name = "a"
address = "127.0.0.1:1"
check_address = "a:8008"

[[node]]
name = "b"
address = "127.0.0.1:2"
check_address = "b:8008"

[[listener]]
name = "primary"
bind = "127.0.0.1:0"
check = { method = "OPTIONS", path = "/master" }

[[listener]]
name = "replicas"
bind = "127.0.0.1:0"
check = { method = "OPTIONS", path = "/replica" }

[[listener]]
name = "reads"
bind = "127.0.0.1:0"
check = { path = "/read-only" }
"#;

#[tokio::test(start_paused = true)]
async fn patroni_mode_makes_one_request_per_node_per_interval() {
    let rt = runtime_of(PATRONI);
    let agents = Arc::new(Agents::default());
    *agents.leader.lock().unwrap() = Some("a:8008".into());
    let stop = CancellationToken::new();
    let start = Instant::now();
    spawn_checkers(&rt, agents.clone(), Arc::new(Reactor), &TaskTracker::new(), &stop);
    advance_to(start, 2_000).await;
    assert!(up(&rt, "primary", "a") && !up(&rt, "primary", "b"));
    assert!(up(&rt, "replicas", "b") && !up(&rt, "replicas", "a"));
    assert!(up(&rt, "reads", "a") && up(&rt, "reads", "b"));
    let before = agents.calls.lock().unwrap().len();
    advance_to(start, 32_000).await;
    stop.cancel();
    let calls = agents.calls.lock().unwrap();
    assert!(calls.iter().all(|c| c.1 == "GET /primary"), "one kind of request");
    // Steady state: 30 s at inter 3s is 10 requests per node, 20 in all, for 3 listeners.
    assert_eq!(calls.len() - before, 20);
}

#[tokio::test(start_paused = true)]
async fn a_new_leader_demotes_the_old_at_once_and_hunting_finds_it_fast() {
    let rt = runtime_of(PATRONI);
    let agents = Arc::new(Agents::default());
    *agents.leader.lock().unwrap() = Some("a:8008".into());
    *agents.timeline.lock().unwrap() = 1;
    let stop = CancellationToken::new();
    let start = Instant::now();
    spawn_checkers(&rt, agents.clone(), Arc::new(Reactor), &TaskTracker::new(), &stop);
    advance_to(start, 2_000).await;
    assert!(up(&rt, "primary", "a"));

    // Switchover at 2.5 s: a stops claiming; b promotes onto timeline 2 at 4 s.
    advance_to(start, 2_500).await;
    *agents.leader.lock().unwrap() = None;
    *agents.timeline.lock().unwrap() = 2;
    advance_to(start, 4_000).await;
    let lost_at = start + Duration::from_millis(4_000);
    assert!(!up(&rt, "primary", "a"), "a leader check that fails once admits no new session");
    assert!(rt.leader_lost());
    *agents.leader.lock().unwrap() = Some("b:8008".into());
    // Hunting (200 ms) finds b, and the first authoritative answer admits it: a leader
    // found during a failover does not wait for rise.
    advance_to(start, 4_250).await;
    assert!(up(&rt, "primary", "b"), "new leader admitted within one hunting interval of its first 200");
    assert!(!up(&rt, "primary", "a"));
    let hunting = agents
        .calls
        .lock()
        .unwrap()
        .iter()
        .filter(|c| c.2 >= lost_at - Duration::from_millis(1_000) && c.2 <= lost_at)
        .count();
    assert!(hunting >= 4, "every node probed at the hunting interval while no leader: {hunting}");
    stop.cancel();
}

#[tokio::test(start_paused = true)]
async fn a_stale_claim_on_an_older_timeline_loses_and_is_cut() {
    let rt = runtime_of(PATRONI);
    let agents = Arc::new(StaleAgents::default());
    let stop = CancellationToken::new();
    let start = Instant::now();
    spawn_checkers(&rt, agents.clone(), Arc::new(Reactor), &TaskTracker::new(), &stop);
    advance_to(start, 2_000).await;
    assert!(up(&rt, "primary", "a"));
    // b claims on a newer timeline while a (stale) still claims its old one.
    agents.both.store(true, std::sync::atomic::Ordering::SeqCst);
    advance_to(start, 6_000).await;
    assert!(up(&rt, "primary", "b"));
    assert!(!up(&rt, "primary", "a"), "the stale claimant is demoted without waiting for fall");
    let a = &rt.listener("primary").unwrap().servers[0];
    assert_eq!(a.check.report().machine.label(), "DOWN");
    assert_eq!(rt.leadership.leader(), Some(1));
    // Same timeline on both: nobody leads, loudly.
    agents.same_timeline.store(true, std::sync::atomic::Ordering::SeqCst);
    advance_to(start, 10_000).await;
    assert!(rt.leadership.conflict());
    assert_eq!(rt.listener("primary").unwrap().servers_up(), 0);
    stop.cancel();
}

/// a leads on timeline 1; once `both` is set, b also claims on timeline 2.
#[derive(Default)]
struct StaleAgents {
    both: std::sync::atomic::AtomicBool,
    same_timeline: std::sync::atomic::AtomicBool,
}

impl Probe for StaleAgents {
    fn probe<'a>(
        &'a self,
        target: &'a str,
        _: &'a CheckSpec,
    ) -> Pin<Box<dyn Future<Output = ProbeResult> + Send + 'a>> {
        Box::pin(async move {
            use std::sync::atomic::Ordering::SeqCst;
            let same = self.same_timeline.load(SeqCst);
            let (claims, tl) = match target {
                "a:8008" => (true, if same { 2 } else { 1 }),
                _ => (self.both.load(SeqCst), 2),
            };
            ProbeResult {
                body: Some(
                    format!(
                        r#"{{"state": "running", "role": "{}", "timeline": {tl}}}"#,
                        if claims { "primary" } else { "replica" }
                    )
                    .into_bytes(),
                ),
                ..ProbeResult::answered(claims, Duration::ZERO, "")
            }
        })
    }
}

/// What a probe gets when the process has no descriptor for it.
fn no_descriptor() -> ProbeResult {
    ProbeResult {
        code: CheckCode::SockErr,
        status: None,
        ..ProbeResult::answered(false, Duration::ZERO, "Too many open files")
    }
}

/// A process out of descriptors: every probe finds none (SOCKERR), and one made with the
/// checker's spare socket answers `answer` (or finds none either, when None).
struct Short {
    answer: Mutex<Option<bool>>,
    spared: std::sync::atomic::AtomicUsize,
}

impl Probe for Short {
    fn probe<'a>(
        &'a self,
        _target: &'a str,
        _spec: &'a CheckSpec,
    ) -> Pin<Box<dyn Future<Output = ProbeResult> + Send + 'a>> {
        Box::pin(async { no_descriptor() })
    }

    fn probe_with<'a>(
        &'a self,
        target: &'a str,
        spec: &'a CheckSpec,
        _spare: pgfront::fds::Lent,
    ) -> Pin<Box<dyn Future<Output = ProbeResult> + Send + 'a>> {
        self.spared.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        match *self.answer.lock().unwrap() {
            Some(passed) => Box::pin(async move { ProbeResult::answered(passed, Duration::ZERO, "") }),
            None => self.probe(target, spec),
        }
    }
}

#[tokio::test(start_paused = true)]
async fn out_of_descriptors_checks_are_made_with_the_spare_socket_or_give_no_verdict() {
    let rt = runtime();
    let probe = Arc::new(Short { answer: Mutex::new(Some(true)), spared: Default::default() });
    let stop = CancellationToken::new();
    let start = Instant::now();
    spawn_checkers(&rt, probe.clone(), Arc::new(Reactor), &TaskTracker::new(), &stop);
    advance_to(start, 2_500).await;
    assert!(up(&rt, "primary", "a"), "rise=2 reached with checks made on the spare socket");
    // The spare cannot be used either: no verdict, the state stays.
    *probe.answer.lock().unwrap() = None;
    advance_to(start, 30_000).await;
    assert!(up(&rt, "primary", "a"), "no check made is no verdict: still UP");
    // The spare works again and the node has failed meanwhile: DOWN after fall=3.
    *probe.answer.lock().unwrap() = Some(false);
    advance_to(start, 45_000).await;
    assert!(!up(&rt, "primary", "a"), "found out with the spare socket");
    assert!(probe.spared.load(std::sync::atomic::Ordering::SeqCst) > 5);
    stop.cancel();
}

/// Answers every probe (from `addr`) until `short`; then finds no descriptor, and notes
/// where each check made with the spare socket was told the node's checks last went.
#[derive(Default)]
struct Remembering {
    short: std::sync::atomic::AtomicBool,
    lent: Mutex<Vec<Option<std::net::SocketAddr>>>,
}

const REMEMBERED: &str = "10.9.8.7:8008";

impl Probe for Remembering {
    fn probe<'a>(
        &'a self,
        _target: &'a str,
        _spec: &'a CheckSpec,
    ) -> Pin<Box<dyn Future<Output = ProbeResult> + Send + 'a>> {
        Box::pin(async {
            if self.short.load(std::sync::atomic::Ordering::SeqCst) {
                return no_descriptor();
            }
            ProbeResult { peer: Some(REMEMBERED.parse().unwrap()), ..ProbeResult::answered(true, Duration::ZERO, "") }
        })
    }

    fn probe_with<'a>(
        &'a self,
        _target: &'a str,
        _spec: &'a CheckSpec,
        spare: pgfront::fds::Lent,
    ) -> Pin<Box<dyn Future<Output = ProbeResult> + Send + 'a>> {
        self.lent.lock().unwrap().push(spare.known);
        Box::pin(async { ProbeResult::answered(true, Duration::ZERO, "") })
    }
}

#[tokio::test(start_paused = true)]
async fn a_new_checker_lends_its_spare_with_where_the_nodes_checks_last_went() {
    // Before: a reload's or a discovery change's new checkers knew no address until their
    // own first check connected, so one started during a shortage could not check a node
    // named by a host name at all.
    let rt = runtime();
    let probe = Arc::new(Remembering::default());
    let start = Instant::now();
    let first = CancellationToken::new();
    spawn_checkers(&rt, probe.clone(), Arc::new(Reactor), &TaskTracker::new(), &first);
    advance_to(start, 1_000).await;
    first.cancel();
    probe.short.store(true, std::sync::atomic::Ordering::SeqCst);
    let second = CancellationToken::new();
    spawn_checkers(&rt, probe.clone(), Arc::new(Reactor), &TaskTracker::new(), &second);
    advance_to(start, 3_000).await;
    let lent = probe.lent.lock().unwrap().clone();
    assert!(!lent.is_empty(), "checks were made with the spare");
    assert!(lent.iter().all(|known| *known == Some(REMEMBERED.parse().unwrap())), "{lent:?}");
    second.cancel();
}

#[tokio::test(start_paused = true)]
async fn a_burst_of_reloads_does_not_count_fall_at_the_reload_rate() {
    // Found by a torture run: three reloads within a 0.6 s REST blip marked a server DOWN
    // (fall = 3) and cut its sessions, because each reload's new checker probed at once.
    // Failed before: the burst below made five probes, each a failure.
    let probe = Arc::new(Scripted::default());
    // a's /master passes twice (UP at 1 s), then fails from its third probe (at 4 s) on.
    probe.set("a:8008", "/master", &[true, true, false]);
    for (target, path) in [("a:8008", "/replica"), ("b:8008", "/master"), ("b:8008", "/replica")] {
        probe.set(target, path, &[true]);
    }
    let label = |rt: &Runtime| rt.listener("primary").unwrap().servers[0].check.report().machine.label();
    let start = Instant::now();
    let mut rt = runtime();
    let mut stop = CancellationToken::new();
    spawn_checkers(&rt, probe.clone(), Arc::new(Reactor), &TaskTracker::new(), &stop);
    advance_to(start, 4_100).await;
    assert_eq!(label(&rt), "UP 1/3");
    // Five reloads 50 ms apart, each changing the timings: a new checker each.
    for i in 1..=5u64 {
        let text = CONFIG.replace("\ninter = \"3s\"", &format!("\ninter = \"{}s\"", 3 + i));
        let config = Config::parse(Path::new("t.toml"), &text).unwrap();
        let next = Arc::new(Runtime::build_from(Arc::new(config), &CancellationToken::new(), Some(&rt)));
        stop.cancel();
        stop = CancellationToken::new();
        spawn_checkers(&next, probe.clone(), Arc::new(Reactor), &TaskTracker::new(), &stop);
        rt = next;
        advance_to(start, 4_100 + 50 * i).await;
    }
    assert_eq!(label(&rt), "UP 1/3", "the reloads made no probe");
    // The schedule goes on: failures at fastinter (1 s), DOWN at the third.
    advance_to(start, 6_100).await;
    stop.cancel();
    assert_eq!(probe.times("a:8008", "/master", start), vec![0, 1_000, 4_000, 5_000, 6_000]);
    assert_eq!(label(&rt), "DOWN");
}

#[tokio::test(start_paused = true)]
async fn two_listeners_asking_one_path_with_different_falls_keep_their_own_counts_across_a_reload() {
    // Found by review (helper-42): "replicas" and "reads" both ask /replica, with fall 3 and
    // fall 4: two checks. A reload matched both to the first old check, so they shared one
    // machine and each probe was counted twice: DOWN at the second failed probe, both.
    let text = CONFIG
        .replace("name = \"reads\"\nbind = \"127.0.0.1:0\"", "name = \"reads\"\nbind = \"127.0.0.1:0\"\nfall = 4");
    let probe = Arc::new(Scripted::default());
    for (target, path) in [("a:8008", "/master"), ("a:8008", "/replica"), ("b:8008", "/master"), ("b:8008", "/replica")]
    {
        probe.set(target, path, &[path == "/replica"]);
    }
    let start = Instant::now();
    let rt = runtime_of(&text);
    let stop = CancellationToken::new();
    spawn_checkers(&rt, probe.clone(), Arc::new(Reactor), &TaskTracker::new(), &stop);
    advance_to(start, 4_100).await;
    assert!(marked_up(&rt, "replicas", "b") && marked_up(&rt, "reads", "b"));
    // The same file again: nothing changes.
    let config = Config::parse(Path::new("t.toml"), &text).unwrap();
    let next = Arc::new(Runtime::build_from(Arc::new(config), &CancellationToken::new(), Some(&rt)));
    stop.cancel();
    let stop = CancellationToken::new();
    spawn_checkers(&next, probe.clone(), Arc::new(Reactor), &TaskTracker::new(), &stop);
    let rt = next;
    let checks = |rt: &Runtime| {
        let of = |l: &str| Arc::clone(&rt.listener(l).unwrap().servers.iter().find(|s| s.name == "b").unwrap().check);
        (of("replicas"), of("reads"))
    };
    let (replicas, reads) = checks(&rt);
    assert!(!Arc::ptr_eq(&replicas, &reads));
    // b's REST API fails from now on: probes at 7 s, 8 s (fastinter), 9 s, 10 s.
    probe.set("b:8008", "/replica", &[false]);
    advance_to(start, 8_100).await;
    assert!(marked_up(&rt, "replicas", "b") && marked_up(&rt, "reads", "b"), "two failed probes marked b DOWN");
    assert_eq!(replicas.report().failures, 2, "each probe counted once");
    advance_to(start, 9_100).await;
    assert!(!marked_up(&rt, "replicas", "b") && marked_up(&rt, "reads", "b"), "fall 3 and fall 4 apart");
    advance_to(start, 10_100).await;
    assert!(!marked_up(&rt, "reads", "b"));
    stop.cancel();
}

#[tokio::test(start_paused = true)]
async fn a_reload_that_gives_one_of_two_listeners_its_own_fall_keeps_both_up_and_apart() {
    // One check served both /replica listeners; a reload gives "reads" fall 4: each goes on
    // with the old check's health (UP, no new rise), and counts on its own.
    let probe = Arc::new(Scripted::default());
    for (target, path) in [("a:8008", "/master"), ("a:8008", "/replica"), ("b:8008", "/master"), ("b:8008", "/replica")]
    {
        probe.set(target, path, &[path == "/replica"]);
    }
    let start = Instant::now();
    let rt = runtime();
    let stop = CancellationToken::new();
    spawn_checkers(&rt, probe.clone(), Arc::new(Reactor), &TaskTracker::new(), &stop);
    advance_to(start, 4_100).await;
    let text = CONFIG
        .replace("name = \"reads\"\nbind = \"127.0.0.1:0\"", "name = \"reads\"\nbind = \"127.0.0.1:0\"\nfall = 4");
    let config = Config::parse(Path::new("t.toml"), &text).unwrap();
    let next = Arc::new(Runtime::build_from(Arc::new(config), &CancellationToken::new(), Some(&rt)));
    stop.cancel();
    let stop = CancellationToken::new();
    spawn_checkers(&next, probe.clone(), Arc::new(Reactor), &TaskTracker::new(), &stop);
    let rt = next;
    assert!(marked_up(&rt, "replicas", "b") && marked_up(&rt, "reads", "b"), "health carried over to both");
    probe.set("b:8008", "/replica", &[false]);
    advance_to(start, 9_100).await;
    assert!(!marked_up(&rt, "replicas", "b") && marked_up(&rt, "reads", "b"), "fall 3 and fall 4 apart");
    advance_to(start, 10_100).await;
    assert!(!marked_up(&rt, "reads", "b"));
    stop.cancel();
}

#[tokio::test(start_paused = true)]
async fn probes_made_early_on_demand_do_not_count_fall_at_their_own_pace() {
    // Found by review (helper-42): kicks, min_lsn waits and hunting probe up to ten times a
    // second, and each failure counted towards `fall`: a REST API down for 0.3 s marked a
    // replica DOWN (its sessions cut) and ended the leader's claim (no leader, 5002's
    // primary sessions cut). With fastinter 1 s and fall 3, HAProxy needs 2 s.
    let rt = runtime_of(PATRONI);
    let agents = Arc::new(Agents::default());
    *agents.leader.lock().unwrap() = Some("a:8008".into());
    *agents.timeline.lock().unwrap() = 1;
    let stop = CancellationToken::new();
    let start = Instant::now();
    spawn_checkers(&rt, agents.clone(), Arc::new(Reactor), &TaskTracker::new(), &stop);
    advance_to(start, 3_500).await;
    assert!(up(&rt, "primary", "a") && up(&rt, "replicas", "b"));
    *agents.silent.lock().unwrap() = vec!["a:8008".into(), "b:8008".into()];
    let silent_at = Instant::now();
    // Sessions ask for early probes all along (as min_lsn waits do).
    while Instant::now() < silent_at + Duration::from_millis(1_500) {
        rt.nodes[0].kick();
        rt.nodes[1].kick();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let probes = agents.calls.lock().unwrap().iter().filter(|c| c.2 >= silent_at).count();
    assert!(probes >= 10, "early probes were made: {probes}");
    assert!(up(&rt, "replicas", "b"), "b DOWN within 1.5 s of failures made early");
    assert_eq!(rt.leadership.leader(), Some(0), "a's claim ended within 1.5 s");
    // On HAProxy's pace, fall is reached: DOWN, and the claim over.
    advance_to(start, 3_500 + 2_600).await;
    assert!(!up(&rt, "replicas", "b"));
    assert_eq!(rt.leadership.leader(), None);
    stop.cancel();
}

#[tokio::test(start_paused = true)]
async fn the_leader_in_maintenance_is_no_failover_to_hunt_for() {
    // Found by review (helper-42): with the leader in MAINT (or DRAIN) on the write port,
    // no server of it was up, so checkers hunted: every node probed every 200 ms, for as
    // long as the maintenance lasted, instead of once per inter.
    let rt = runtime_of(PATRONI);
    let agents = Arc::new(Agents::default());
    *agents.leader.lock().unwrap() = Some("a:8008".into());
    let stop = CancellationToken::new();
    let start = Instant::now();
    spawn_checkers(&rt, agents.clone(), Arc::new(Reactor), &TaskTracker::new(), &stop);
    advance_to(start, 2_000).await;
    assert!(up(&rt, "primary", "a"));
    rt.listener("primary").unwrap().servers[0].set_admin(pgfront::cluster::AdminState::Maint);
    let before = agents.calls.lock().unwrap().len();
    advance_to(start, 32_000).await;
    stop.cancel();
    assert_eq!(agents.calls.lock().unwrap().len() - before, 20, "one request per node per inter");
}

#[tokio::test(start_paused = true)]
async fn hunting_ends_a_minute_after_the_leader_is_lost_unless_a_client_waits_for_one() {
    // Left by helper-42: a standby cluster behind a /master listener (no node ever answers
    // it), or a cluster down for the night, had every node probed every hunt_inter for as
    // long as it lasted.
    let rt = runtime_of(PATRONI);
    let agents = Arc::new(Agents::default());
    *agents.timeline.lock().unwrap() = 1;
    let stop = CancellationToken::new();
    let start = Instant::now();
    spawn_checkers(&rt, agents.clone(), Arc::new(Reactor), &TaskTracker::new(), &stop);
    let probes = |from: u64, to: u64| {
        let calls = agents.calls.lock().unwrap();
        calls.iter().filter(|c| (from..to).contains(&((c.2 - start).as_millis() as u64))).count()
    };
    advance_to(start, 100_000).await;
    // Two nodes: hunting is 10 probes a second, the interval (3 s) two in three seconds.
    assert!(probes(10_000, 20_000) >= 80, "hunting at first: {}", probes(10_000, 20_000));
    assert!(probes(70_000, 100_000) <= 22, "back to inter once the hunt is over: {}", probes(70_000, 100_000));
    // A client now waits for a leader on the write port: hunting again, within an interval.
    let primary = Arc::clone(rt.listener("primary").unwrap());
    let deadline = Instant::now() + Duration::from_secs(30);
    let waiting = tokio::spawn(async move {
        pgfront::balance::acquire(&primary, &[], pgfront::config::Target::Listener, deadline).await.is_ok()
    });
    advance_to(start, 115_000).await;
    // Both nodes looked at once (helper-50: after the hunt, the next probe came at inter).
    assert!(probes(100_000, 100_500) >= 2, "probed when the client began to wait: {}", probes(100_000, 100_500));
    assert!(probes(104_000, 114_000) >= 80, "hunting while a client waits: {}", probes(104_000, 114_000));
    *agents.leader.lock().unwrap() = Some("b:8008".into());
    advance_to(start, 116_000).await;
    assert!(waiting.await.unwrap(), "the waiting client gets the leader hunting found");
    stop.cancel();
}

#[tokio::test(start_paused = true)]
async fn a_failover_is_hunted_for_even_where_a_leader_listener_never_admits() {
    // Found by review (helper-50): a /standby-leader listener beside /primary never admits
    // in a primary cluster, so the leader counted as lost from start-up and hunting, bounded
    // to a minute from then, was over before any real failover.
    let text = format!(
        "{PATRONI}\n[[listener]]\nname = \"standby\"\nbind = \"127.0.0.1:0\"\ncheck = {{ method = \"OPTIONS\", path = \"/standby-leader\" }}\n"
    );
    let rt = runtime_of(&text);
    let agents = Arc::new(Agents::default());
    *agents.leader.lock().unwrap() = Some("a:8008".into());
    *agents.timeline.lock().unwrap() = 1;
    let stop = CancellationToken::new();
    let start = Instant::now();
    spawn_checkers(&rt, agents.clone(), Arc::new(Reactor), &TaskTracker::new(), &stop);
    advance_to(start, 100_000).await;
    assert!(up(&rt, "primary", "a"));
    *agents.leader.lock().unwrap() = None;
    advance_to(start, 120_000).await;
    assert!(!up(&rt, "primary", "a"));
    let calls = agents.calls.lock().unwrap();
    let hunting = calls.iter().filter(|c| c.2 >= start + Duration::from_secs(110)).count();
    assert!(hunting >= 80, "every node probed at the hunting interval after the leader was lost: {hunting}");
    drop(calls);
    stop.cancel();
}
