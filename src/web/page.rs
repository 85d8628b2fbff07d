//! The HTML stats page: server-rendered, refreshes itself, readable without JavaScript.

use std::fmt::Write;

use crate::stats::{ListenerSnap, NodeSnap, ServerSnap, Snapshot};

/// Escapes text for HTML element and attribute content.
fn esc(s: &str) -> String {
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

/// Renders the page; `csrf` is given to admin users, who get the action forms.
pub fn render(s: &Snapshot, refresh_secs: u64, csrf: Option<&str>) -> String {
    let mut h = String::with_capacity(16 * 1024);
    let _ = write!(
        h,
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta http-equiv="refresh" content="{refresh_secs}">
<title>pgfront statistics</title>
<style>
body{{font:13px/1.4 system-ui,sans-serif;margin:1em 2em;color:#222}}
table{{border-collapse:collapse;margin:.4em 0 1.6em}}
th,td{{border:1px solid #bbb;padding:2px 7px;text-align:right;white-space:nowrap}}
th{{background:#e8e8f0}} td.l{{text-align:left}}
tr.up td.st{{background:#b7f0b7}} tr.down td.st{{background:#f3b0b0}} tr.goingdown td.st{{background:#f5e08a}} tr.goingup td.st{{background:#c6e5ff}}
h2{{margin:.2em 0}} .muted{{color:#666}}
tr.replica td.st{{background:#e4e4ea}} tr.leader td{{font-weight:bold}}
.banner{{padding:.5em 1em;margin:.5em 0;border-radius:4px;background:#e8f4e8}} .alert{{background:#f8d7d7}}
ol.events{{font-family:monospace;font-size:12px}}
</style></head><body>
<h1>pgfront <span class="muted">{}</span></h1>
<p class="muted">uptime {} &middot; {} sessions open &middot; refreshes every {refresh_secs}s &middot;
<a href="/;csv">CSV</a> &middot; <a href="/status.json">JSON</a></p>
"#,
        esc(s.version),
        ago(s.uptime_secs),
        s.sessions,
    );
    match (&s.leader, s.leader_conflict) {
        (_, true) => h.push_str(r#"<p class="banner alert">Several nodes claim leadership on the same timeline: writes are held until one remains.</p>"#),
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
    if let Some(e) = &s.reload_error {
        let _ = write!(
            h,
            r#"<p class="banner alert">The last reload was refused; the running configuration is unchanged: {}</p>"#,
            esc(e)
        );
    }
    cluster(&mut h, &s.nodes);
    for l in &s.listeners {
        listener(&mut h, l, csrf);
    }
    h.push_str("<h2>Recent transitions</h2>\n<ol class=\"events\">\n");
    for e in s.events.iter().take(30) {
        let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(e.at);
        let _ = writeln!(h, "<li>{} {}</li>", humantime::format_rfc3339_seconds(at), esc(&e.text));
    }
    let _ = write!(
        h,
        "</ol>\n<p class=\"muted\">reloads: {} ok, {} refused</p>\n</body></html>\n",
        s.reloads_ok, s.reloads_failed
    );
    h
}

/// The cluster as Patroni describes it.
fn cluster(h: &mut String, nodes: &[NodeSnap]) {
    h.push_str(r#"<h2 id="cluster">Cluster</h2>
<table><tr><th class="l">node</th><th class="l">role</th><th class="l">state</th><th>timeline</th><th class="l">replication</th><th>lag</th><th class="l">tags</th><th class="l">REST</th><th class="l">last answer</th></tr>
"#);
    for n in nodes {
        let tags: Vec<String> = n.tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let _ = writeln!(
            h,
            r#"<tr class="{class}"><td class="l">{name}</td><td class="l">{role}</td><td class="l">{state}</td><td>{tl}</td><td class="l">{repl}</td><td>{lag}</td><td class="l">{tags}</td><td class="l">{rest}</td><td class="l">{last}</td></tr>"#,
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
            tags = esc(&tags.join(" ")),
            rest = esc(&n.rest),
            last = esc(&n.last_check),
        );
    }
    h.push_str("</table>\n");
}

fn listener(h: &mut String, l: &ListenerSnap, csrf: Option<&str>) {
    let _ = write!(
        h,
        r#"<h2 id="l-{name}">{name}</h2>
<p class="muted">bind {bind} &middot; balance {balance} &middot; check <code>{check}</code> &middot; {up}/{all} servers up &middot;
queue {qcur} (max {qmax}) &middot; accepted {acc} &middot; refused {refused}</p>
<table><tr><th class="l">server</th><th class="l">address</th><th>status</th><th>since</th><th class="l">last check</th>
<th>chk fail</th><th>downs</th><th>downtime</th><th>cur</th><th>max</th><th>limit</th><th>total</th>
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
        admin_th = if csrf.is_some() { "<th class=\"l\">actions</th>" } else { "" },
    );
    for v in &l.servers {
        server(h, v, l.writes);
        if let Some(token) = csrf {
            actions(h, &l.name, &v.name, token);
        }
        h.push_str("</tr>\n");
    }
    h.push_str("</table>\n");
}

fn server(h: &mut String, v: &ServerSnap, writes: bool) {
    // On a write listener a healthy replica is not a failure: say what it is.
    let replica = writes && !v.up && v.role.as_deref() == Some("replica");
    let class = match (v.up, v.status.contains('/')) {
        _ if replica => "replica",
        (true, false) => "up",
        (true, true) => "goingdown",
        (false, true) => "goingup",
        (false, false) => "down",
    };
    let status = if replica { "replica, not eligible for writes".to_owned() } else { v.status.clone() };
    let _ = write!(
        h,
        r#"<tr class="{class}"><td class="l">{name}</td><td class="l">{addr}</td><td class="st">{status}</td><td>{since}</td><td class="l">{check}</td><td>{chkfail}</td><td>{downs}</td><td>{downtime}</td><td>{cur}</td><td>{max}</td><td>{limit}</td><td>{total}</td><td>{bin}</td><td>{bout}</td><td{econ_title}>{econ}</td><td>{wretr}</td><td>{wredis}</td><td class="l">{reason}</td>"#,
        name = esc(&v.name),
        addr = esc(&v.address),
        status = esc(&status),
        since = ago(v.last_change_secs),
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
    h.push_str("<td class=\"l\">");
    for (action, label) in [("ready", "ready"), ("drain", "drain"), ("maint", "maint"), ("shutdown", "kill sessions")] {
        let _ = write!(
            h,
            r#"<form method="post" action="/admin" style="display:inline"><input type="hidden" name="listener" value="{l}"><input type="hidden" name="server" value="{s}"><input type="hidden" name="action" value="{action}"><input type="hidden" name="csrf" value="{csrf}"><button>{label}</button></form>"#,
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
