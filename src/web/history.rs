//! The page's view of the past: the failover panel (one row per leader change, the last
//! fifty), the leader timeline, and the sparklines beside the cluster and the listeners.

use std::fmt::Write;
use std::time::{Duration, UNIX_EPOCH};

use super::page::esc;
use super::svg;
use crate::history::{Failover, Series};
use crate::stats::Snapshot;

/// Sparkline size on the page.
const SPARK_W: u32 = 110;
const SPARK_H: u32 = 22;

/// `21:02:13.412` (UTC), and the full RFC 3339 time for the title.
fn clock(unix: f64) -> (String, String) {
    let at = UNIX_EPOCH + Duration::from_millis((unix.max(0.0) * 1000.0) as u64);
    let full = humantime::format_rfc3339_millis(at).to_string();
    let time = full.get(11..23).unwrap_or(&full).to_owned();
    (time, full)
}

fn secs(v: Option<f64>) -> String {
    v.map_or_else(|| "&ndash;".to_owned(), |s| format!("{s:.2}s"))
}

/// The failover panel: what each leader change cost, newest first, and the medians to
/// compare the latest with.
pub fn failovers(h: &mut String, list: &[Failover]) {
    h.push_str(r#"<h2 id="failovers">Failovers</h2>
<p class="muted">Each leader change pgfront saw (the last 50): how long writes had no target (from the old leader's last write admission) and nobody held the leader lock, when Patroni's flip reached pgfront, how long until the first session went to the new leader, and the sessions held in a queue, cut on the old leader (closed by PostgreSQL as it demoted, or by pgfront) and refused meanwhile.</p>
"#);
    if list.is_empty() {
        h.push_str("<p class=\"muted\" id=\"no-failovers\">No leader change since pgfront started.</p>\n");
        return;
    }
    h.push_str(r#"<div class="wrap"><table class="failovers"><tr><th class="l">old leader ended</th><th class="l">old &rarr; new</th><th title="from the old leader's last write admission to the flip">write gap</th><th title="nobody held the leader lock">no leader</th><th class="l">flip seen</th><th>first session</th><th>held</th><th>cut</th><th>refused</th><th>longest hold</th><th class="l"></th></tr>
"#);
    for (i, f) in list.iter().enumerate() {
        let (start, start_full) = clock(f.started_at);
        let (flip, flip_full) = f.flip_at.map(clock).unwrap_or_else(|| ("&ndash;".into(), String::new()));
        let name = |n: &Option<String>| n.as_deref().map_or_else(|| "none".to_owned(), esc);
        let _ = writeln!(
            h,
            r#"<tr class="fo{cls}" id="failover-{i}" data-from="{from}" data-to="{to}" data-started="{sa}" data-writes-stopped="{ws}" data-flip="{fa}" data-no-leader="{nl}" data-first-session="{fs}" data-held="{held}" data-cut="{cut}" data-refused="{refused}" data-longest-hold="{lh}" data-complete="{complete}"><td class="l" title="{start_full}">{start}</td><td class="l">{from} &rarr; {to}</td><td>{wgs}</td><td>{nls}</td><td class="l" title="{flip_full}">{flip}</td><td>{fss}</td><td>{held}</td><td>{cut}</td><td>{refused}</td><td>{lhs}</td><td class="l">{state}</td></tr>"#,
            cls = if f.complete { "" } else { " open" },
            from = name(&f.from),
            to = name(&f.to),
            sa = f.started_at,
            fa = f.flip_at.map_or(String::new(), |v| v.to_string()),
            nl = f.no_leader_secs.map_or(String::new(), |v| v.to_string()),
            fs = f.first_session_secs.map_or(String::new(), |v| v.to_string()),
            nls = secs(f.no_leader_secs),
            wgs = secs(f.write_gap_secs),
            ws = f.writes_stopped_at.map_or(String::new(), |v| v.to_string()),
            fss = secs(f.first_session_secs),
            held = f.held,
            cut = f.cut,
            refused = f.refused,
            lh = f.longest_hold_secs,
            lhs = secs(Some(f.longest_hold_secs)),
            complete = f.complete,
            state = match (f.complete, &f.to) {
                (true, _) => "",
                (false, None) => "<b>no leader yet</b>",
                (false, Some(_)) => "counting",
            },
        );
    }
    let done: Vec<&Failover> = list.iter().filter(|f| f.complete).collect();
    if done.len() >= 2 {
        let median = |f: fn(&Failover) -> Option<f64>| {
            let mut v: Vec<f64> = done.iter().filter_map(|x| f(x)).collect();
            v.sort_by(f64::total_cmp);
            v.get(v.len() / 2).copied()
        };
        let _ = writeln!(
            h,
            r#"<tr class="median"><td class="l" colspan="2">median of {}</td><td>{}</td><td>{}</td><td></td><td>{}</td><td colspan="3"></td><td>{}</td><td></td></tr>"#,
            done.len(),
            secs(median(|f| f.write_gap_secs)),
            secs(median(|f| f.no_leader_secs)),
            secs(median(|f| f.first_session_secs)),
            secs(median(|f| Some(f.longest_hold_secs))),
        );
    }
    h.push_str("</table></div>\n");
}

/// The leader timeline of the last hour.
pub fn timeline(h: &mut String, s: &Snapshot, now: f64) {
    h.push_str("<h2 id=\"timeline\">Leader, last hour</h2>\n");
    h.push_str(&svg::timeline(&s.leader_timeline, now));
    h.push('\n');
}

/// A labelled sparkline: `label` then the line, with the latest value.
pub fn spark(values: Option<&Vec<Option<f64>>>, label: &str, unit: &str) -> String {
    let empty = Vec::new();
    let values = values.unwrap_or(&empty);
    let latest = values.iter().rev().flatten().next().map_or_else(|| "&ndash;".to_owned(), |v| svg::num(*v));
    format!(
        r#"<span class="sl">{label} {}<b>{latest}</b>{}</span>"#,
        svg::sparkline(values, SPARK_W, SPARK_H, unit),
        if unit.is_empty() { String::new() } else { format!("&thinsp;{unit}") }
    )
}

/// The three lines of a listener: sessions, new sessions per second, queue depth.
pub fn listener_sparks(series: &Series, name: &str) -> String {
    let l = series.listeners.get(name);
    format!(
        r#"<div class="sparks">{}{}{}</div>"#,
        spark(l.map(|l| &l.sessions), "sessions", ""),
        spark(l.map(|l| &l.new_per_sec), "new/s", ""),
        spark(l.map(|l| &l.queue), "queue", ""),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failover(complete: bool) -> Failover {
        Failover {
            from: Some("node1".into()),
            to: complete.then(|| "node2".into()),
            started_at: 1_000.25,
            flip_at: complete.then_some(1_002.75),
            writes_stopped_at: None,
            no_leader_secs: complete.then_some(2.5),
            write_gap_secs: complete.then_some(2.5),
            first_session_secs: complete.then_some(0.3),
            held: 5,
            cut: 3,
            refused: 1,
            longest_hold_secs: 2.4,
            complete,
        }
    }

    #[test]
    fn the_panel_shows_each_failover_with_its_figures() {
        let mut h = String::new();
        failovers(&mut h, &[failover(false), failover(true), failover(true)]);
        assert!(h.contains(r#"id="failover-0""#));
        assert!(h.contains("node1 &rarr; none"), "in progress, no leader yet");
        assert!(h.contains("no leader yet"));
        assert!(h.contains(r#"data-held="5" data-cut="3" data-refused="1""#), "{h}");
        assert!(h.contains("<td>2.50s</td>"));
        assert!(h.contains("00:16:42.750"), "the flip's time of day");
        assert!(h.contains("median of 2"));
        let mut none = String::new();
        failovers(&mut none, &[]);
        assert!(none.contains("No leader change"));
    }
}
