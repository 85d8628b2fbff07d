//! The HTML stats page: server-rendered, refreshes itself, readable without JavaScript.
//! It fits a 1366-pixel-wide window with every column, the reason and the admin buttons
//! (narrower windows scroll inside each table, not the page); a node answering a role
//! check with the other role reads as that role, and real failures stand out.

use std::fmt::Write;

use super::history;
use crate::stats::{ListenerSnap, ServerSnap, Snapshot};

/// Escapes text for HTML element and attribute content.
pub(super) fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `1h02m`, `3m05s`, `12s`: time in state as HAProxy shows it.
fn ago(secs: u64) -> String {
    match secs {
        s if s >= 86_400 => format!("{}d{:02}h", s / 86_400, s % 86_400 / 3600),
        s if s >= 3600 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        s if s >= 60 => format!("{}m{:02}s", s / 60, s % 60),
        s => format!("{s}s"),
    }
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i < UNITS.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

/// The page's style: compact enough that a listener's table with its reason and admin
/// buttons fits 1366 pixels; wide tables scroll inside `.wrap`, never the page.
const STYLE: &str = r#"
*{box-sizing:border-box}
body{font:12px/1.35 system-ui,sans-serif;margin:8px 14px;color:#222}
h1{font-size:19px;margin:.2em 0} h2{font-size:15px;margin:.9em 0 .2em}
.wrap{max-width:100%;overflow-x:auto}
table{border-collapse:collapse;margin:.2em 0 .6em}
th,td{border:1px solid #c4c4cc;padding:2px 4px;text-align:right;white-space:nowrap;vertical-align:middle}
th{background:#e8e8f0;font-weight:600;white-space:normal}
.l{text-align:left}
td.reason{white-space:normal;min-width:12em;max-width:24em;text-align:left}
tr.up td.st{background:#b7f0b7} tr.down td.st{background:#f3b0b0;font-weight:bold}
tr.goingdown td.st{background:#f5e08a} tr.goingup td.st{background:#c6e5ff}
tr.admin td.st{background:#f0d8a8}
tr.role td.st{background:#ececf2;color:#444} tr.role td.chk,tr.role td.reason{color:#777}
td.fail{background:#f3b0b0;color:#600;font-weight:bold}
tr.leader td{font-weight:bold}
.muted{color:#666} .banner{padding:.4em .8em;margin:.4em 0;border-radius:4px;background:#e8f4e8}
.alert{background:#f8d7d7}
td.act{white-space:nowrap} form.act{display:inline;margin:0}
button{font:11px system-ui,sans-serif;padding:0 3px;margin:0 1px}
.sparks{display:flex;flex-wrap:wrap;gap:2px 18px;margin:.2em 0 .3em}
.sl{display:inline-flex;align-items:center;gap:4px}
svg.spark{display:inline-block;vertical-align:middle}
svg.spark polyline{fill:none;stroke:#2a62c9;stroke-width:1.3} svg.spark circle{fill:#2a62c9}
svg .axis{stroke:#c8c8d0;stroke-width:1}
svg.timeline{display:block;max-width:100%} svg.timeline text.tl{font-size:13px;fill:#123}
svg.timeline text.tick{font-size:11px;fill:#666}
tr.fo.open td{background:#fff6d8} tr.median td{color:#555;font-style:italic}
ol.events{font-family:monospace;font-size:11.5px;padding-left:2.5em;overflow-wrap:anywhere}
code{overflow-wrap:anywhere}
"#;

/// Renders the page; `csrf` is given to admin users, who get the action forms.
pub fn render(s: &Snapshot, refresh_secs: u64, csrf: Option<&str>) -> String {
    let mut h = String::with_capacity(48 * 1024);
    let _ = write!(
        h,
        r##"<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta http-equiv="refresh" content="{refresh_secs}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>pgfront statistics</title>
<style>{STYLE}</style></head><body>
<h1>pgfront <span class="muted">{}</span></h1>
<p class="muted">uptime {} &middot; {} sessions open &middot; global maxconn {}: {} places held &middot; refreshes every {refresh_secs}s &middot;
<a href="/;csv">CSV</a> &middot; <a href="/status.json">JSON</a> &middot; <a href="#failovers">failovers</a></p>
"##,
        esc(s.version),
        ago(s.uptime_secs),
        s.each().map(|c| c.sessions).sum::<usize>() + s.retired.iter().map(|r| r.sessions).sum::<usize>(),
        s.global_maxconn,
        s.global_sessions,
    );
    if !s.retired.is_empty() {
        // Not in any listener's table below, but holding places under global maxconn.
        h.push_str(r#"<p class="banner">Sessions on listeners or servers a reload removed run to their end:"#);
        for r in &s.retired {
            let cluster = if r.cluster.is_empty() { String::new() } else { format!("{} / ", esc(&r.cluster)) };
            let _ = write!(h, " {cluster}{} / {}: {}", esc(&r.listener), esc(&r.server), r.sessions);
        }
        h.push_str("</p>\n");
    }
    if let Some(e) = &s.reload_error {
        let _ = write!(
            h,
            r#"<p class="banner alert">The last reload was refused; the running configuration is unchanged: {}</p>"#,
            esc(e)
        );
    }
    // One section per cluster: the page as it always was for a file without [[cluster]].
    for c in s.each() {
        section(&mut h, c, csrf);
    }
    let _ = write!(
        h,
        "<p class=\"muted\">reloads: {} ok, {} refused</p>\n</body></html>\n",
        s.reloads_ok, s.reloads_failed
    );
    h
}

/// One cluster: its leader, Patroni's view of its nodes, its listeners, failovers and
/// transitions. A named cluster (`[[cluster]]`) gets a heading.
fn section(h: &mut String, s: &Snapshot, csrf: Option<&str>) {
    if !s.cluster.is_empty() {
        let _ = write!(
            h,
            r#"<h2 class="cl" id="cluster-{0}" style="font-size:17px;border-top:2px solid #99a;padding-top:.3em">Cluster {0}</h2>"#,
            esc(&s.cluster)
        );
        h.push('\n');
    }
    match (&s.leader, s.leader_conflict) {
        (_, true) => h.push_str(r#"<p class="banner alert">Several nodes claim leadership and no timeline tells the newest: writes are held until one remains.</p>"#),
        (Some(l), _) => {
            let _ = write!(h, r#"<p class="banner">Leader: <b>{}</b> for {} ({} leader changes)</p>"#, esc(l), ago(s.leader_since_secs), s.leader_changes);
        }
        (None, _) => {
            let _ = write!(h, r#"<p class="banner alert">No leader for {}: new write sessions are held ({} waiting)</p>"#, ago(s.leader_since_secs), s.sessions_held);
        }
    }
    if let Some(id) = &s.system_identifier {
        let _ = write!(h, r#"<p class="muted">cluster system identifier {}"#, esc(id));
        if s.identity_changes > 0 {
            let _ = write!(
                h,
                r#" &middot; <b>changed {} times</b>: the cluster was rebuilt, and its timelines started over (see the transitions below)"#,
                s.identity_changes
            );
        }
        h.push_str("</p>\n");
    }
    if let Some(d) = &s.discovery {
        let _ = write!(
            h,
            r#"<p class="muted">nodes from Patroni: {} members in use{}, {} changes, from {}</p>"#,
            d.members,
            if d.refused > 0 { format!(" ({} ignored, see the transitions)", d.refused) } else { String::new() },
            d.changes,
            esc(d.source.as_deref().unwrap_or("no answer yet"))
        );
        if let Some(e) = &d.error {
            let _ = write!(
                h,
                r#"<p class="banner alert">Discovery: no member answered /cluster; the member set is unchanged: {}</p>"#,
                esc(e)
            );
        }
    }
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
    history::timeline(h, s, now);
    cluster(h, s);
    for l in &s.listeners {
        listener(h, s, l, csrf);
    }
    history::failovers(h, &s.failovers);
    h.push_str("<h2>Recent transitions</h2>\n<ol class=\"events\">\n");
    for e in s.events.iter().take(30) {
        let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(e.at);
        let _ = writeln!(h, "<li>{} {}</li>", humantime::format_rfc3339_seconds(at), esc(&e.text));
    }
    h.push_str("</ol>\n");
}

/// The cluster as Patroni describes it, with each node's last hour of check latency and
/// replication lag.
fn cluster(h: &mut String, s: &Snapshot) {
    h.push_str(r#"<h2 id="cluster">Cluster</h2>
<div class="wrap"><table><tr><th class="l">node</th><th class="l">role</th><th class="l">state</th><th>timeline</th><th class="l">replication</th><th>lag</th><th class="l">lag, last hour</th><th class="l">check latency, last hour</th><th class="l">tags</th><th class="l">REST</th><th class="l">last answer</th></tr>
"#);
    for n in &s.nodes {
        let tags: Vec<String> = n.tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let series = s.history.nodes.get(&n.name);
        let _ = writeln!(
            h,
            r#"<tr class="{class}"><td class="l">{name}</td><td class="l">{role}</td><td class="l">{state}</td><td>{tl}</td><td class="l">{repl}</td><td>{lag}</td><td class="l">{lag_spark}</td><td class="l">{chk_spark}</td><td class="l">{tags}</td><td class="l">{rest}</td><td class="l">{last}</td></tr>"#,
            class = if n.is_leader { "leader" } else { "" },
            name = esc(&n.name),
            role = esc(&match (&n.role, n.is_leader) {
                (Some(r), true) => format!("{r} (leader)"),
                (Some(r), false) => r.clone(),
                (None, _) => "unknown".to_owned(),
            }),
            state = esc(n.state.as_deref().unwrap_or("-")),
            tl = n.timeline.map_or("-".to_owned(), |t| t.to_string()),
            repl = esc(n.replication_state.as_deref().unwrap_or("-")),
            lag = n.lag_bytes.map_or("-".to_owned(), bytes),
            lag_spark = history::spark(series.map(|n| &n.lag_bytes), "", "B"),
            chk_spark = history::spark(series.map(|n| &n.check_ms), "", "ms"),
            tags = esc(&tags.join(" ")),
            rest = esc(&n.rest),
            last = esc(&n.last_check),
        );
    }
    h.push_str("</table></div>\n");
}

fn listener(h: &mut String, s: &Snapshot, l: &ListenerSnap, csrf: Option<&str>) {
    let _ = write!(
        h,
        r#"<h2 id="l-{name}">{name}</h2>
<p class="muted">bind {bind} &middot; balance {balance} &middot; check <code>{check}</code> &middot; {up}/{all} servers up &middot;
queue {qcur} (max {qmax}) &middot; accepted {acc} &middot; refused {refused}</p>
{sparks}
<div class="wrap"><table class="servers"><tr><th class="l">server</th><th class="l">address</th><th>status</th><th>since</th><th class="l">last check</th>
<th>chk fail</th><th>downs</th><th>down time</th><th>cur</th><th>max</th><th>limit</th><th>total</th>
<th>bytes in</th><th>bytes out</th><th>conn err</th><th>retries</th><th>redisp</th><th class="l">reason</th>{admin_th}</tr>
"#,
        name = esc(&l.name),
        bind = esc(&l.bind),
        balance = l.balance,
        check = esc(&l.check),
        up = l.servers_up,
        all = l.servers.len(),
        qcur = l.queue_cur,
        qmax = l.queue_max,
        acc = l.accepted,
        refused = l.refused,
        sparks = history::listener_sparks(&s.history, &l.name),
        admin_th = if csrf.is_some() { "<th class=\"l\">actions</th>" } else { "" },
    );
    for v in &l.servers {
        server(h, v);
        if let Some(token) = csrf {
            actions(h, &l.name, &v.name, token);
        }
        h.push_str("</tr>\n");
    }
    h.push_str("</table></div>\n");
}

/// The row's class and the status text: a node answering with the other role shows that
/// role in neutral colours; DRAIN and MAINT are the operator's; the rest is HAProxy's.
fn status(v: &ServerSnap) -> (&'static str, String, String) {
    if v.admin != "READY" {
        return ("admin", v.status.clone(), format!("set by an operator; latest check: {}", v.reason));
    }
    if v.other_role && !v.up {
        let role = v.node_role.clone().unwrap_or_default();
        let title = format!("{} on this listener: it answers as the {role}, as expected", v.status);
        return ("role", role, title);
    }
    let class = match (v.up, v.status.contains('/')) {
        (true, false) => "up",
        (true, true) => "goingdown",
        (false, true) => "goingup",
        (false, false) => "down",
    };
    (class, v.status.clone(), format!("since: {}", v.change_reason))
}

fn server(h: &mut String, v: &ServerSnap) {
    let (class, status, title) = status(v);
    let leader = if v.node_role.as_deref() == Some("leader") && v.up { " leader" } else { "" };
    let _ = write!(
        h,
        r#"<tr class="{class}{leader}"><td class="l">{name}</td><td class="l">{addr}</td><td class="st" title="{title}">{status}</td><td title="{change}">{since}</td><td class="l chk{fail}">{check}</td><td>{chkfail}</td><td>{downs}</td><td>{downtime}</td><td>{cur}</td><td>{max}</td><td>{limit}</td><td>{total}</td><td>{bin}</td><td>{bout}</td><td{econ_title}>{econ}</td><td>{wretr}</td><td>{wredis}</td><td class="reason" title="status changed: {change}">{reason}</td>"#,
        name = esc(&v.name),
        addr = esc(&v.address),
        title = esc(&title),
        status = esc(&status),
        change = esc(&v.change_reason),
        since = ago(v.last_change_secs),
        fail = if v.failing { " fail" } else { "" },
        check = esc(&v.last_check),
        chkfail = v.check_failures,
        downs = v.downs,
        downtime = ago(v.downtime_secs),
        cur = v.cur,
        max = v.max,
        limit = v.limit,
        total = v.total,
        bin = bytes(v.bytes_in),
        bout = bytes(v.bytes_out),
        econ = v.conn_errors,
        econ_title = v.last_error.as_ref().map_or(String::new(), |e| format!(r#" title="last: {}""#, esc(e))),
        wretr = v.retries,
        wredis = v.redispatches,
        reason = esc(&v.reason),
    );
}

/// Admin buttons: plain forms, so they work without JavaScript; POST with the CSRF token.
fn actions(h: &mut String, listener: &str, server: &str, csrf: &str) {
    h.push_str("<td class=\"act\">");
    for (action, label) in [("ready", "ready"), ("drain", "drain"), ("maint", "maint"), ("shutdown", "kill sessions")] {
        let _ = write!(
            h,
            r#"<form method="post" action="/admin" class="act"><input type="hidden" name="listener" value="{l}"><input type="hidden" name="server" value="{s}"><input type="hidden" name="action" value="{action}"><input type="hidden" name="csrf" value="{csrf}"><button>{label}</button></form>"#,
            l = esc(listener),
            s = esc(server),
        );
    }
    h.push_str("</td>");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup() {
        assert_eq!(esc("<a href='x'>&"), "&lt;a href=&#39;x&#39;&gt;&amp;");
    }

    #[test]
    fn formats_durations_and_sizes() {
        assert_eq!(ago(5), "5s");
        assert_eq!(ago(65), "1m05s");
        assert_eq!(ago(3720), "1h02m");
        assert_eq!(bytes(10), "10 B");
        assert_eq!(bytes(2048), "2.0 KiB");
    }
}
