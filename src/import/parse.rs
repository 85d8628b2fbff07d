//! haproxy.cfg as HAProxy reads it: sections (`global`, `defaults`, `listen`, `frontend`,
//! `backend`) of directive lines, each split into words, with its line number.

/// One directive line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub number: usize,
    pub words: Vec<String>,
}

impl Line {
    /// The directive's words from `n` on, joined.
    pub fn rest(&self, n: usize) -> String {
        self.words.get(n..).map(|w| w.join(" ")).unwrap_or_default()
    }

    pub fn word(&self, n: usize) -> Option<&str> {
        self.words.get(n).map(String::as_str)
    }
}

/// A section and its lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    /// `global`, `defaults`, `listen`, `frontend`, `backend` (or anything else HAProxy has:
    /// `userlist`, `peers`, `resolvers`, ..., kept to be reported).
    pub kind: String,
    pub name: Option<String>,
    /// For `listen NAME ADDR:PORT` (the old form): the address on the header line.
    pub header_bind: Option<String>,
    pub number: usize,
    pub lines: Vec<Line>,
}

const SECTIONS: &[&str] = &[
    "global",
    "defaults",
    "listen",
    "frontend",
    "backend",
    "userlist",
    "peers",
    "resolvers",
    "cache",
    "program",
    "mailers",
    "ring",
    "http-errors",
];

/// Splits a configuration into sections. Comments (`#` outside quotes) and blank lines are
/// dropped; quotes and backslash escapes are honoured as HAProxy does for simple cases.
pub fn sections(text: &str) -> Vec<Section> {
    let mut out: Vec<Section> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let words = split(raw);
        let Some(first) = words.first() else { continue };
        let number = i + 1;
        if SECTIONS.contains(&first.as_str()) {
            out.push(Section {
                kind: first.clone(),
                name: words.get(1).cloned(),
                header_bind: words.get(2).cloned(),
                number,
                lines: Vec::new(),
            });
            continue;
        }
        match out.last_mut() {
            Some(s) => s.lines.push(Line { number, words }),
            // Directives before any section: kept in a nameless one to be reported.
            None => out.push(Section {
                kind: String::new(),
                name: None,
                header_bind: None,
                number,
                lines: vec![Line { number, words }],
            }),
        }
    }
    out
}

fn split(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut quote: Option<char> = None;
    let mut chars = line.chars();
    let mut started = false;
    while let Some(c) = chars.next() {
        match (quote, c) {
            (None, '#') => break,
            (None, c) if c.is_whitespace() => {
                if started {
                    words.push(std::mem::take(&mut cur));
                    started = false;
                }
            }
            (None, '"' | '\'') => {
                quote = Some(c);
                started = true;
            }
            (Some(q), c) if c == q => quote = None,
            (_, '\\') => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                    started = true;
                }
            }
            (_, c) => {
                cur.push(c);
                started = true;
            }
        }
    }
    if started {
        words.push(cur);
    }
    words
}

/// An HAProxy time: a number with an optional unit (`us`, `ms`, `s`, `m`, `h`, `d`);
/// no unit means milliseconds. Returns it in pgfront's syntax ("4s", "500ms", "30m").
pub fn time(v: &str) -> Option<String> {
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (n, unit) = v.split_at(split);
    let n: u64 = n.parse().ok()?;
    let unit = match unit {
        "" | "ms" => "ms",
        "us" => "us",
        "s" | "m" | "h" | "d" => unit,
        _ => return None,
    };
    // The same value, in the largest unit that divides it, as people write it.
    let ms = match unit {
        "us" => return Some(format!("{n}us")),
        "ms" => n,
        "s" => n * 1000,
        "m" => n * 60_000,
        "h" => n * 3_600_000,
        _ => n * 86_400_000,
    };
    Some(match ms {
        0 => "0ms".to_owned(),
        ms if ms % 86_400_000 == 0 => format!("{}d", ms / 86_400_000),
        ms if ms % 3_600_000 == 0 => format!("{}h", ms / 3_600_000),
        ms if ms % 60_000 == 0 => format!("{}m", ms / 60_000),
        ms if ms % 1000 == 0 => format!("{}s", ms / 1000),
        ms => format!("{ms}ms"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_and_words() {
        let s = sections(
            "global\n  maxconn 100 # comment\n\nlisten primary\n    bind *:5000\n    option httpchk OPTIONS/master\n",
        );
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].kind, "global");
        assert_eq!(s[0].lines[0].words, ["maxconn", "100"]);
        assert_eq!(s[1].name.as_deref(), Some("primary"));
        assert_eq!(s[1].lines[1].number, 6);
        assert_eq!(split(r#"stats auth "admin:se cret""#), ["stats", "auth", "admin:se cret"]);
    }

    #[test]
    fn times_in_haproxy_units() {
        assert_eq!(time("4s").as_deref(), Some("4s"));
        assert_eq!(time("5000").as_deref(), Some("5s"));
        assert_eq!(time("1800000").as_deref(), Some("30m"));
        assert_eq!(time("30m").as_deref(), Some("30m"));
        assert_eq!(time("1500ms").as_deref(), Some("1500ms"));
        assert_eq!(time("1h").as_deref(), Some("1h"));
        assert_eq!(time("4x"), None);
    }
}
