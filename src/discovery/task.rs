//! The discovery task: every `discovery_inter`, ask `GET /cluster` of the first source that
//! answers (the last one that did, then the seeds, then every known node's REST API), admit
//! the members inside `discovery_allow`, and hand the set in use to [`Apply`] when it
//! changed. A member that left keeps its place (as leaving: no new sessions, still probed)
//! while it holds sessions and its check passes.
//!
//! Requests use the probe seam with the probe's bounds (connect and answer timeouts, size
//! caps) and the node's REST settings (`check_tls`, `check_auth`, `source`); a seed gets
//! `[defaults]`' settings.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;

use super::{admit, parse_cluster, Refused};
use crate::cluster::Runtime;
use crate::config::{CheckSpec, CheckTiming, Discovery, Member, Origin};
use crate::health::Probe;
use crate::state::ClusterState;

/// How a running pgfront takes a new member set: merged with the file's nodes and applied
/// through the generation path of a reload. Returns whether the running set changed.
pub trait Apply: Send + Sync + 'static {
    fn members(&self, members: Vec<Member>) -> bool;
}

/// How often a pgfront without discovery looks whether a reload turned it on.
const IDLE: Duration = Duration::from_secs(1);

/// A member an answer leaves out while its own checks still pass stays as it is until
/// answers have left it out this many rounds in a row (30 s at the default
/// `discovery_inter` of 3 s, about Patroni's `ttl`): after an outage of Patroni's store,
/// member keys have expired and `/cluster` lists the members as they register again, one
/// loop at a time (the leader alone first, for a few seconds), and a partial list applied at
/// once removed healthy replicas and reset their health. A member that stopped fails its
/// checks long before its key expires, and goes at once.
const MISSING_ROUNDS: u32 = 10;

/// Runs until `stop`: reads `cluster`'s member list and applies changes to it.
pub async fn run(cluster: Arc<ClusterState>, probe: Arc<dyn Probe>, apply: Arc<dyn Apply>, stop: CancellationToken) {
    let mut round = Round::default();
    loop {
        let started = Instant::now();
        let rt = cluster.runtime();
        let next = match rt.config.global.discovery.clone() {
            None => started + IDLE,
            Some(d) => {
                tokio::select! {
                    () = round.run(&cluster, &rt, &d, probe.as_ref(), apply.as_ref()) => {}
                    () = stop.cancelled() => return,
                }
                started + d.inter
            }
        };
        tokio::select! {
            () = sleep_until(next) => {}
            () = stop.cancelled() => return,
        }
    }
}

/// What the task remembers between rounds.
#[derive(Default)]
struct Round {
    /// The member set last applied (leaving ones included).
    in_use: Vec<Member>,
    /// The source that answered last: asked first next time.
    last_good: Option<String>,
    /// Why the last round failed, while failing (said once, not every round).
    failing: Option<String>,
    /// Refusals already logged (said once while they last).
    refused: BTreeSet<Refused>,
    /// Patroni's scope of the first answer: an answer from another cluster is not used.
    scope: Option<String>,
    /// Members in use that answers have left out while their checks pass: rounds in a row.
    missing: Vec<(String, u32)>,
}

impl Round {
    async fn run(&mut self, cluster: &ClusterState, rt: &Runtime, d: &Discovery, probe: &dyn Probe, apply: &dyn Apply) {
        let stats = &cluster.discovery;
        let mut errors = Vec::new();
        let mut answer = None;
        for source in sources(d, rt, self.last_good.as_deref()) {
            let spec = request(d, rt, &source);
            stats.requests.fetch_add(1, Ordering::Relaxed);
            let r = probe.probe(&source, &spec).await;
            let parsed = match (r.passed(), &r.body) {
                (true, Some(body)) => parse_cluster(body).and_then(|a| self.usable(a, d)),
                (true, None) => Err("no body".to_owned()),
                (false, _) if r.detail.is_empty() => Err(r.summary()),
                (false, _) => Err(format!("{} ({})", r.summary(), r.detail)),
            };
            match parsed {
                Ok(admitted) => {
                    answer = Some((source, admitted));
                    break;
                }
                Err(e) => errors.push(format!("{source}: {e}")),
            }
        }
        let Some((source, (members, refused))) = answer else {
            stats.errors.fetch_add(1, Ordering::Relaxed);
            let why = if errors.is_empty() { "no source to ask".to_owned() } else { errors.join("; ") };
            if self.failing.is_none() {
                tracing::warn!(error = %why, "discovery: no member answered GET /cluster; the member set is unchanged");
                rt.events.push(format!("discovery: no member answered /cluster ({why}); members unchanged"));
            }
            stats.set_last(None, Some(why.clone()));
            self.failing = Some(why);
            return;
        };
        if self.failing.take().is_some() {
            tracing::info!(source = %source, "discovery: GET /cluster answers again");
            rt.events.push(format!("discovery: /cluster answers again (from {source})"));
        }
        stats.set_last(Some(source.clone()), None);
        self.last_good = Some(source);
        for r in refused.iter().filter(|r| !self.refused.contains(r)) {
            tracing::warn!(member = %r.name, why = %r.why, "discovery: member ignored");
            rt.events.push(format!("discovery: member {} ignored: {}", r.name, r.why));
        }
        stats.refused.store(refused.len(), Ordering::Relaxed);
        self.refused = refused.into_iter().collect();
        if self.in_use.is_empty() {
            // The members the generation already serves (those a reload that switched
            // discovery on kept from the file until this answer): the first answer is
            // compared with them, so one it leaves out gets the grace and the LEAVING
            // state like any member, rather than vanishing with its sessions.
            self.in_use = rt.config.nodes.iter().filter(|n| n.origin != Origin::Declared).map(Member::of).collect();
            self.in_use.sort();
        }
        let declared = |name: &str| rt.config.nodes.iter().any(|n| n.name == name && n.origin == Origin::Declared);
        let busy = |name: &str| !declared(name) && holds_sessions(rt, name);
        let kept = self.left_out(rt, &members);
        let mut members = members;
        members.extend(kept);
        let mut next = members.clone();
        next.extend(leaving(&self.in_use, &members, busy));
        next.sort();
        stats.members.store(members.len(), Ordering::Relaxed);
        if next == self.in_use {
            return;
        }
        report(rt, &self.in_use, &next);
        self.in_use = next.clone();
        if apply.members(next) {
            stats.changes.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Round {
    /// Members in use (not leaving) that `listed` leaves out but whose checks still pass,
    /// for fewer than [`MISSING_ROUNDS`] rounds in a row: kept as they are for now.
    fn left_out(&mut self, rt: &Runtime, listed: &[Member]) -> Vec<Member> {
        let answering = |name: &str| rt.checks.iter().any(|c| c.node_name == name && c.report().machine.is_up());
        let mut missing = Vec::new();
        let mut kept = Vec::new();
        // A member listed under another name at the same addresses is that member renamed:
        // kept beside it, one REST API would be two nodes (two claims when it leads).
        let elsewhere =
            |m: &Member| listed.iter().any(|l| l.check_address == m.check_address || l.address == m.address);
        for m in self.in_use.iter().filter(|m| !m.leaving && !listed.iter().any(|l| l.name == m.name) && !elsewhere(m))
        {
            let rounds = self.missing.iter().find(|x| x.0 == m.name).map_or(0, |x| x.1) + 1;
            if rounds < MISSING_ROUNDS && answering(&m.name) {
                if rounds == 1 {
                    tracing::info!(member = %m.name, "discovery: member left out of Patroni's member list while its checks pass; kept for now");
                }
                kept.push(m.clone());
                missing.push((m.name.clone(), rounds));
            }
        }
        self.missing = missing;
        kept
    }

    /// The answer's usable members and refusals; an error for an answer from another
    /// cluster than the first one seen, or one that lists no usable member at all (a
    /// member set never empties on one answer: a cluster always lists the member asked).
    fn usable(&mut self, a: super::Answer, d: &Discovery) -> Result<(Vec<Member>, Vec<Refused>), String> {
        match (&self.scope, &a.scope) {
            (Some(want), Some(got)) if want != got => {
                return Err(format!("an answer from Patroni cluster {got:?}, not {want:?}"));
            }
            (None, Some(got)) => self.scope = Some(got.clone()),
            _ => {}
        }
        let (members, refused) = admit(&a.members, &d.allow);
        if members.is_empty() {
            let why = refused.first().map_or_else(|| "an empty list".to_owned(), |r| format!("{}: {}", r.name, r.why));
            return Err(format!("no usable member in the answer ({why})"));
        }
        Ok((members, refused))
    }
}

/// Members of `before` that `now` no longer lists but that still hold sessions on a server
/// whose check passes: kept, as leaving, until that changes.
pub(super) fn leaving(before: &[Member], now: &[Member], busy: impl Fn(&str) -> bool) -> Vec<Member> {
    before
        .iter()
        .filter(|m| !now.iter().any(|n| n.name == m.name) && busy(&m.name))
        .map(|m| Member { leaving: true, ..m.clone() })
        .collect()
}

/// Whether node `name`'s servers hold sessions while one of its checks still passes.
fn holds_sessions(rt: &Runtime, name: &str) -> bool {
    let servers = rt.listeners.iter().flat_map(|l| &l.servers).filter(|s| s.name == name);
    let (mut open, mut up) = (0, false);
    for s in servers {
        open += s.stats.cur.load(Ordering::Relaxed);
        up |= s.check.is_up();
    }
    open > 0 && up
}

/// Says what changed between two member sets: log line and dashboard event per member.
fn report(rt: &Runtime, before: &[Member], after: &[Member]) {
    for m in after {
        let said = match before.iter().find(|b| b.name == m.name) {
            None => format!("joined ({}, REST {})", m.address, m.check_address),
            Some(b) if b.leaving && !m.leaving => "listed again".to_owned(),
            Some(b) if !b.leaving && m.leaving => {
                "left Patroni's member list; it takes no new sessions and keeps its open ones until its check fails"
                    .to_owned()
            }
            Some(b) if b.address != m.address || b.check_address != m.check_address => {
                format!("moved to {} (REST {})", m.address, m.check_address)
            }
            Some(_) => continue,
        };
        tracing::info!(member = %m.name, address = %m.address, rest = %m.check_address, "discovery: member {said}");
        rt.events.push(format!("discovery: {} {said}", m.name));
    }
    for b in before.iter().filter(|b| !after.iter().any(|m| m.name == b.name)) {
        let said = if b.leaving { "removed: its sessions ended or its check failed" } else { "left: removed" };
        tracing::info!(member = %b.name, address = %b.address, "discovery: member {said}");
        rt.events.push(format!("discovery: {} {said}", b.name));
    }
}

/// Where to ask, in order: the last source that answered, the seeds, every known node's
/// REST API; each once.
fn sources(d: &Discovery, rt: &Runtime, last_good: Option<&str>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let known = rt.config.nodes.iter().map(|n| n.check_address.as_str());
    for s in last_good.into_iter().chain(d.seeds.iter().map(String::as_str)).chain(known) {
        if !out.iter().any(|o| o == s) {
            out.push(s.to_owned());
        }
    }
    out
}

/// `GET /cluster` with the probe's bounds and the REST settings of the node at `source`
/// (`[defaults]`' for a seed that is no known node).
fn request(d: &Discovery, rt: &Runtime, source: &str) -> CheckSpec {
    let node = rt.config.nodes.iter().find(|n| n.check_address == source);
    CheckSpec {
        method: "GET".to_owned(),
        path: "/cluster".to_owned(),
        expect: 200,
        timing: CheckTiming {
            inter: d.inter,
            fastinter: d.inter,
            downinter: d.inter,
            fall: 1,
            rise: 1,
            connect_timeout: d.connect_timeout,
            timeout: d.timeout,
        },
        endpoint: None,
        source: node.map_or(d.source, |n| n.source),
        tls: node.map_or_else(|| d.check_tls.clone(), |n| n.check_tls.clone()),
        auth: node.map_or_else(|| d.check_auth.clone(), |n| n.check_auth.clone()),
    }
}
