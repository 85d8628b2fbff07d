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
    /// `listen NAME from DEFAULTS` (HAProxy 2.4+): the named `defaults` section it takes.
    pub from: Option<String>,
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
/// dropped; quotes and backslash escapes are honoured as HAProxy does for simple cases. A
/// leading UTF-8 byte order mark (written by some Windows editors) is not part of the first
/// word: left there, it hid the first section's header and so the whole section.
pub fn sections(text: &str) -> Vec<Section> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut out: Vec<Section> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let words = split(raw);
        let Some(first) = words.first() else { continue };
        let number = i + 1;
        if SECTIONS.contains(&first.as_str()) {
            // `KIND [NAME] [from DEFAULTS]`, or the old `listen NAME ADDR:PORT`.
            let (header_bind, from) = match (words.get(2).map(String::as_str), words.get(3)) {
                (Some("from"), from) => (None, from.cloned()),
                (bind, _) => (bind.map(str::to_owned), None),
            };
            // `defaults from X` (no name) is allowed too.
            let (name, from) = match (words.get(1).map(String::as_str), from) {
                (Some("from"), None) => (None, words.get(2).cloned()),
                (name, from) => (name.map(str::to_owned), from),
            };
            out.push(Section { kind: first.clone(), name, header_bind, from, number, lines: Vec::new() });
            continue;
        }
        match out.last_mut() {
            Some(s) => s.lines.push(Line { number, words }),
            // Directives before any section: kept in a nameless one to be reported.
            None => out.push(Section {
                kind: String::new(),
                name: None,
                header_bind: None,
                from: None,
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

/// The longest time HAProxy accepts, and pgfront too (its `MAX_DURATION`): 2^31 - 1 ms.
const LONGEST_MS: u64 = i32::MAX as u64;

/// An HAProxy time: a number with an optional unit (`us`, `ms`, `s`, `m`, `h`, `d`);
/// no unit means milliseconds. Returns it in pgfront's syntax ("4s", "500ms", "30m"), or why
/// it cannot be read. A value longer than HAProxy's (and pgfront's) limit of 2^31 - 1 ms is
/// refused here rather than computed: a huge number of days overflowed the multiplication.
pub fn time(v: &str) -> Result<String, String> {
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (n, unit) = v.split_at(split);
    if v.is_empty() {
        return Err("no value".into());
    }
    let n: u64 =
        n.parse().map_err(|_| format!("{v:?} is not a time (a whole number with a unit: us, ms, s, m, h, d)"))?;
    let per_unit: u64 = match unit {
        "" | "ms" => 1,
        "us" => {
            return if n / 1000 > LONGEST_MS { Err(too_long(v)) } else { Ok(format!("{n}us")) };
        }
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(format!("{v:?} is not a time (a whole number with a unit: us, ms, s, m, h, d)")),
    };
    let ms = n.checked_mul(per_unit).filter(|ms| *ms <= LONGEST_MS);
    let Some(ms) = ms else { return Err(too_long(v)) };
    // The same value, in the largest unit that divides it, as people write it.
    Ok(match ms {
        0 => "0ms".to_owned(),
        ms if ms % 86_400_000 == 0 => format!("{}d", ms / 86_400_000),
        ms if ms % 3_600_000 == 0 => format!("{}h", ms / 3_600_000),
        ms if ms % 60_000 == 0 => format!("{}m", ms / 60_000),
        ms if ms % 1000 == 0 => format!("{}s", ms / 1000),
        ms => format!("{ms}ms"),
    })
}

fn too_long(v: &str) -> String {
    format!("{v} is longer than the longest time HAProxy and pgfront accept (2^31 - 1 ms, about 24.8 days)")
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
        assert_eq!(time("4s").as_deref(), Ok("4s"));
        assert_eq!(time("5000").as_deref(), Ok("5s"));
        assert_eq!(time("1800000").as_deref(), Ok("30m"));
        assert_eq!(time("30m").as_deref(), Ok("30m"));
        assert_eq!(time("1500ms").as_deref(), Ok("1500ms"));
        assert_eq!(time("1h").as_deref(), Ok("1h"));
        assert!(time("4x").is_err());
        assert!(time("").is_err());
    }

    #[test]
    fn an_overflowing_time_is_refused_not_a_panic() {
        assert!(time("999999999999999d").unwrap_err().contains("longest"));
        assert!(time("99999999999999999h").is_err());
        assert!(time("18446744073709551615d").is_err());
        assert!(time("25d").is_err(), "past 2^31 ms");
        assert_eq!(time("24d").as_deref(), Ok("24d"));
    }

    #[test]
    fn a_byte_order_mark_does_not_hide_the_first_section() {
        let s = sections("\u{feff}global\r\n    maxconn 50\r\n");
        assert_eq!((s[0].kind.as_str(), s[0].lines.len()), ("global", 1));
    }

    #[test]
    fn named_defaults_are_read_from_the_header() {
        let s = sections("defaults tcp\nlisten primary from tcp\nlisten old 0.0.0.0:5000\ndefaults from tcp\n");
        assert_eq!((s[0].name.as_deref(), s[0].from.as_deref()), (Some("tcp"), None));
        assert_eq!((s[1].from.as_deref(), s[1].header_bind.as_deref()), (Some("tcp"), None));
        assert_eq!((s[2].from.as_deref(), s[2].header_bind.as_deref()), (None, Some("0.0.0.0:5000")));
        assert_eq!((s[3].name.as_deref(), s[3].from.as_deref()), (None, Some("tcp")));
    }
}
