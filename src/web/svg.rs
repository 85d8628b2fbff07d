//! Inline SVG drawn by pgfront itself (no JavaScript, nothing fetched): sparklines for the
//! last hour and the leader timeline. Plain string building over numbers, tested on its
//! output.

use std::fmt::Write;

use crate::history::{Segment, POINTS};

/// A sparkline of up to an hour of points, newest at the right edge, so an hour always
/// spans the same width and a young process shows a short line at the right. Gaps
/// (`None`) break the line. The title carries the latest and the highest value.
pub fn sparkline(values: &[Option<f64>], width: u32, height: u32, unit: &str) -> String {
    let max = values.iter().flatten().copied().fold(0.0_f64, f64::max);
    let latest = values.iter().rev().flatten().next().copied();
    let scale = if max > 0.0 { f64::from(height - 2) / max } else { 0.0 };
    let step = f64::from(width) / (POINTS - 1) as f64;
    let n = values.len();
    let mut lines = String::new();
    let mut run = String::new();
    for (i, v) in values.iter().enumerate() {
        match v {
            Some(v) => {
                let x = f64::from(width) - (n - 1 - i) as f64 * step;
                let y = f64::from(height) - 1.0 - v * scale;
                let _ = write!(run, "{x:.1},{y:.1} ");
            }
            None => flush(&mut lines, &mut run),
        }
    }
    flush(&mut lines, &mut run);
    let title = match latest {
        Some(l) => format!("now {} {unit}, highest {} {unit} (last hour)", num(l), num(max)),
        None => "no data yet".to_owned(),
    };
    format!(
        r#"<svg class="spark" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img"><title>{title}</title><line x1="0" y1="{base}" x2="{width}" y2="{base}" class="axis"/>{lines}</svg>"#,
        base = height - 1,
    )
}

fn flush(lines: &mut String, run: &mut String) {
    match run.matches(' ').count() {
        0 => {}
        // A lone point is a dot, or it would not show.
        1 => {
            let (x, y) = run.trim().split_once(',').unwrap_or(("0", "0"));
            let _ = write!(lines, r#"<circle cx="{x}" cy="{y}" r="1.2"/>"#);
        }
        _ => {
            let _ = write!(lines, r#"<polyline points="{}"/>"#, run.trim_end());
        }
    }
    run.clear();
}

/// A compact number: `3`, `2.5`, `1.2k`, `3.4M`.
pub fn num(v: f64) -> String {
    let a = v.abs();
    if a >= 1e9 {
        format!("{:.1}G", v / 1e9)
    } else if a >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if a >= 1e4 {
        format!("{:.1}k", v / 1e3)
    } else if a == a.trunc() || a >= 10.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// Fill colours for leaders, picked by name so a node keeps its colour between renders.
const PALETTE: [&str; 6] = ["#7fb3d5", "#82c99a", "#c3a6dd", "#e8b87a", "#8fd0c8", "#d9a3b5"];

fn colour(name: &str) -> &'static str {
    let h = name.bytes().fold(0usize, |h, b| h.wrapping_mul(31).wrapping_add(b as usize));
    PALETTE[h % PALETTE.len()]
}

/// Who led when over the hour before `now` (Unix seconds): one band per term, gaps with no
/// leader in hatched red. Scales to the width of its container.
pub fn timeline(segments: &[Segment], now: f64) -> String {
    const W: f64 = 1000.0;
    const SPAN: f64 = 3600.0;
    let start = now - SPAN;
    let x = |t: f64| ((t.max(start) - start) / SPAN * W).clamp(0.0, W);
    let mut h = String::from(
        r##"<svg class="timeline" width="100%" height="46" viewBox="0 0 1000 46" preserveAspectRatio="none" role="img"><defs><pattern id="gap" width="6" height="6" patternUnits="userSpaceOnUse" patternTransform="rotate(45)"><rect width="6" height="6" fill="#fbe3e3"/><line x1="0" y1="0" x2="0" y2="6" stroke="#d33" stroke-width="2"/></pattern></defs><title>leader over the last hour</title>"##,
    );
    for s in segments {
        let end = s.to.unwrap_or(now);
        if end < start {
            continue;
        }
        let (x0, x1) = (x(s.from), x(end));
        let w = (x1 - x0).max(0.8);
        let (fill, label) = match &s.leader {
            Some(l) => (colour(l), l.as_str()),
            None => ("url(#gap)", "no leader"),
        };
        let dur = end - s.from.max(start);
        let _ = write!(
            h,
            r#"<rect x="{x0:.1}" y="2" width="{w:.1}" height="26" fill="{fill}"><title>{} for {:.1}s</title></rect>"#,
            super::page::esc(label),
            dur
        );
        // Names only where they fit (about 7 units per character at this size).
        if s.leader.is_some() && w > 8.0 * label.len() as f64 {
            let _ = write!(h, r#"<text x="{:.1}" y="20" class="tl">{}</text>"#, x0 + 4.0, super::page::esc(label));
        }
    }
    for (i, label) in ["-60m", "-45m", "-30m", "-15m", "now"].iter().enumerate() {
        let tx = i as f64 * W / 4.0;
        let anchor = match i {
            0 => "start",
            4 => "end",
            _ => "middle",
        };
        let _ = write!(
            h,
            r#"<line x1="{tx:.0}" y1="28" x2="{tx:.0}" y2="32" class="axis"/><text x="{tx:.0}" y="44" text-anchor="{anchor}" class="tick">{label}</text>"#
        );
    }
    h.push_str("</svg>");
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sparkline_breaks_at_gaps_and_scales_to_its_height() {
        let s = sparkline(&[Some(0.0), Some(10.0), None, Some(5.0), Some(5.0)], 120, 20, "ms");
        assert_eq!(s.matches("<polyline").count(), 2, "{s}");
        assert!(s.contains("now 5 ms, highest 10 ms"), "{s}");
        // The highest point touches the top (y = 1), the newest sits at the right edge.
        assert!(s.contains("119.0,1.0"), "{s}");
        assert!(s.contains("120.0,10.0"), "{s}");
        let one = sparkline(&[None, Some(3.0)], 120, 20, "");
        assert!(one.contains("<circle"), "a lone point shows: {one}");
        assert!(sparkline(&[], 120, 20, "").contains("no data yet"));
    }

    #[test]
    fn numbers_are_short() {
        assert_eq!(num(3.0), "3");
        assert_eq!(num(2.54), "2.5");
        assert_eq!(num(12_345.0), "12.3k");
        assert_eq!(num(3_400_000.0), "3.4M");
    }

    #[test]
    fn the_timeline_draws_terms_and_gaps_within_the_hour() {
        let segs = vec![
            Segment { leader: Some("node1".into()), from: 0.0, to: Some(1_800.0) },
            Segment { leader: None, from: 1_800.0, to: Some(1_803.0) },
            Segment { leader: Some("node<2>".into()), from: 1_803.0, to: None },
        ];
        let svg = timeline(&segs, 3_600.0);
        assert_eq!(svg.matches("<rect x=").count(), 3, "{svg}");
        assert!(svg.contains("url(#gap)"), "the gap is drawn");
        assert!(svg.contains("no leader for 3.0s"));
        assert!(svg.contains("node&lt;2&gt;"), "names are escaped");
        assert!(!svg.contains("node<2>"));
        assert!(svg.contains(r#"<rect x="500.0""#), "half an hour ago is the middle: {svg}");
    }
}
