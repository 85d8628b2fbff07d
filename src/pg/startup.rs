//! The StartupMessage and the server's first answer: parsed only as far as routing and
//! failover need, and never past the startup phase, so nothing is paid per query.

use super::BadOpening;

/// A parsed StartupMessage.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Startup {
    pub minor: u16,
    /// Parameters in the order sent (`user`, `database`, `options`, `application_name`, ...).
    pub params: Vec<(String, String)>,
}

impl Startup {
    /// Parses a whole StartupMessage, length word included.
    pub fn parse(packet: &[u8]) -> Result<Startup, BadOpening> {
        let bad = || BadOpening::Malformed;
        if packet.len() < 9 {
            return Err(bad());
        }
        let code = u32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]);
        let mut rest = &packet[8..];
        let mut params = Vec::new();
        loop {
            let end = rest.iter().position(|b| *b == 0).ok_or_else(bad)?;
            if end == 0 {
                // The terminating NUL must end the packet.
                return if rest.len() == 1 {
                    Ok(Startup { minor: (code & 0xffff) as u16, params })
                } else {
                    Err(bad())
                };
            }
            let name = std::str::from_utf8(&rest[..end]).map_err(|_| bad())?.to_owned();
            rest = &rest[end + 1..];
            let vend = rest.iter().position(|b| *b == 0).ok_or_else(bad)?;
            let value = String::from_utf8_lossy(&rest[..vend]).into_owned();
            rest = &rest[vend + 1..];
            params.push((name, value));
        }
    }

    /// A parameter as PostgreSQL keeps it: `user`, `database` and `options` by their exact
    /// names, and the last one sent wins (a startup with `user` twice logs in as the second:
    /// routes matched the first).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.params.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// A setting (a GUC) as the server ends up with it, which is what routing must read: a
    /// session routed on another reading than PostgreSQL's lands on one role while
    /// `current_setting` says it asked for another. PostgreSQL applies `options` first
    /// (`-c name=value`, `--name=value`: libpq, JDBC, psycopg), then the other startup
    /// parameters in the order sent (asyncpg's `server_settings`); the last one wins, and
    /// names are compared without case (and, in `options`, with '-' read as '_').
    pub fn setting(&self, name: &str) -> Option<String> {
        let guc = |k: &str| k.eq_ignore_ascii_case(name) && !RESERVED.contains(&k) && !k.starts_with("_pq_.");
        match self.params.iter().rev().find(|(k, _)| guc(k)) {
            Some((_, v)) => Some(v.clone()),
            None => self.option(name),
        }
    }

    /// A setting passed in `options`, read as the server reads its command-line switches
    /// (`pg_split_opts`, then getopt over `process_postgres_switches`' letters): words split
    /// on C whitespace (`\v` and `\f` too), a backslash escapes the next character, and
    /// flags run together (`-ec name=value` is `-e` then `-c name=value`). The last wins.
    pub fn option(&self, name: &str) -> Option<String> {
        let words = split_options(self.get("options")?);
        let wanted = name.replace('-', "_");
        let mut found = None;
        let mut i = 0;
        'words: while i < words.len() {
            let w = &words[i];
            i += 1;
            let Some(flags) = w.strip_prefix('-').filter(|f| !f.is_empty()) else {
                // Not a switch: the server refuses the login ("invalid command-line
                // argument"); nothing after it is read.
                break;
            };
            if flags == "-" {
                break; // "--": the end of the switches.
            }
            for (at, c) in flags.char_indices() {
                if !TAKES_VALUE.contains(c) {
                    continue;
                }
                // The rest of the word, or the next word, is the switch's value.
                let rest = &flags[at + c.len_utf8()..];
                let value = if rest.is_empty() {
                    let Some(v) = words.get(i) else { break 'words };
                    i += 1;
                    v.clone()
                } else {
                    rest.to_owned()
                };
                if matches!(c, 'c' | '-') {
                    if let Some((k, v)) = value.split_once('=') {
                        if k.replace('-', "_").eq_ignore_ascii_case(&wanted) {
                            found = Some(v.to_owned());
                        }
                    }
                }
                continue 'words;
            }
        }
        found
    }
}

/// Startup parameters PostgreSQL takes as the session's own, not as settings.
const RESERVED: [&str; 4] = ["user", "database", "options", "replication"];

/// The switches of `process_postgres_switches` that take a value
/// ("B:bC:c:D:d:EeFf:h:ijk:lN:nOPp:r:S:sTt:v:W:-:").
const TAKES_VALUE: &str = "BCcDdfhkNprStvW-";

fn split_options(s: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            // C's isspace: space, \t, \n, \v, \f, \r (Rust's ASCII whitespace leaves out \v).
            ' ' | '\t' | '\n' | '\x0b' | '\x0c' | '\r' => {
                if !cur.is_empty() {
                    words.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        words.push(cur);
    }
    words
}

/// Builds a protocol 3.0 StartupMessage with `params` (for clients pgfront itself plays:
/// tests, benchmarks, the fuzz corpus).
pub fn startup_message(params: &[(&str, &str)]) -> Vec<u8> {
    let mut body = 196_608u32.to_be_bytes().to_vec();
    for (k, v) in params {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut p = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    p.extend(body);
    p
}

/// The SQLSTATE of an ErrorResponse body (the bytes after type and length).
pub fn sqlstate(body: &[u8]) -> Option<&str> {
    body.split(|b| *b == 0).find(|f| f.first() == Some(&b'C')).and_then(|f| std::str::from_utf8(&f[1..]).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(params: &[(&str, &str)]) -> Vec<u8> {
        startup_message(params)
    }

    #[test]
    fn parses_parameters() {
        let s = Startup::parse(&packet(&[("user", "app"), ("database", "db"), ("application_name", "psql")])).unwrap();
        assert_eq!(s.get("user"), Some("app"));
        assert_eq!(s.get("database"), Some("db"));
        assert_eq!(s.minor, 0);
    }

    #[test]
    fn reads_options_like_the_server() {
        let s = Startup::parse(&packet(&[("user", "u"), ("options", "-c pgfront.target=primary")])).unwrap();
        assert_eq!(s.option("pgfront.target").as_deref(), Some("primary"));
        let s = Startup::parse(&packet(&[("options", "-cstatement_timeout=5 --pgfront.target=replica")])).unwrap();
        assert_eq!(s.option("pgfront.target").as_deref(), Some("replica"));
        assert_eq!(s.option("statement_timeout").as_deref(), Some("5"));
        let s = Startup::parse(&packet(&[("options", r"-c search_path=a\ b -c pgfront.target=any")])).unwrap();
        assert_eq!(s.option("search_path").as_deref(), Some("a b"));
        assert_eq!(s.option("pgfront.target").as_deref(), Some("any"));
        assert_eq!(Startup::parse(&packet(&[("user", "u")])).unwrap().option("pgfront.target"), None);
    }

    #[test]
    fn settings_come_from_options_or_their_own_parameter() {
        let s = Startup::parse(&packet(&[("user", "u"), ("options", "-c pgfront.min_lsn=0/3000060")])).unwrap();
        assert_eq!(s.setting("pgfront.min_lsn").as_deref(), Some("0/3000060"));
        let s = Startup::parse(&packet(&[("user", "u"), ("pgfront.min_lsn", "0/5")])).unwrap();
        assert_eq!(s.setting("pgfront.min_lsn").as_deref(), Some("0/5"));
        assert_eq!(s.setting("pgfront.target"), None);
    }

    #[test]
    fn settings_are_read_as_the_server_reads_them() {
        // Before, each of these was routed on another value than the one the session got
        // (helper-36 saw the leader port's sessions land on replicas and back).
        let read = |params: &[(&str, &str)]| Startup::parse(&packet(params)).unwrap().setting("pgfront.target");
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[("options", "-c PGFRONT.TARGET=primary")], "primary"),
            (&[("options", "--Pgfront.Target=primary")], "primary"),
            (&[("PGFRONT.TARGET", "primary")], "primary"),
            // Startup parameters come after `options`; the last of each wins.
            (&[("options", "-c pgfront.target=replica"), ("pgfront.target", "primary")], "primary"),
            (&[("pgfront.target", "replica"), ("pgfront.target", "primary")], "primary"),
            (&[("pgfront.target", "primary"), ("pgfront.target", "replica")], "replica"),
            (&[("options", "-c pgfront.target=replica"), ("options", "-c pgfront.target=primary")], "primary"),
            // C whitespace, and flags run together as getopt reads them.
            (&[("options", "-c\x0bpgfront.target=primary")], "primary"),
            (&[("options", "-ec pgfront.target=primary")], "primary"),
            (&[("options", "-ecpgfront.target=primary")], "primary"),
        ];
        for (params, want) in cases {
            assert_eq!(read(params).as_deref(), Some(*want), "{params:?}");
        }
        // Not this setting: '-' is read as '_' (pgfront_target), `-p` takes the next word as
        // its value, and "--" ends the switches.
        assert_eq!(read(&[("options", "-c pgfront-target=primary")]), None);
        assert_eq!(read(&[("options", "-p -cpgfront.target=primary")]), None);
        assert_eq!(read(&[("options", "-- -c pgfront.target=primary")]), None);
        // The last `user` is the one that logs in.
        let s = Startup::parse(&packet(&[("user", "nobody"), ("user", "postgres")])).unwrap();
        assert_eq!(s.get("user"), Some("postgres"));
    }

    #[test]
    fn refuses_malformed_packets() {
        let mut p = packet(&[("user", "u")]);
        p.pop();
        assert!(Startup::parse(&p).is_err(), "missing terminator");
        let mut p = packet(&[("user", "u")]);
        p.push(b'x');
        assert!(Startup::parse(&p).is_err(), "trailing bytes");
        assert!(Startup::parse(&[0, 0, 0, 8, 0, 3, 0, 0]).is_err());
    }

    #[test]
    fn finds_the_sqlstate() {
        assert_eq!(sqlstate(b"SFATAL\0C57P03\0Mthe database system is shutting down\0\0"), Some("57P03"));
        assert_eq!(sqlstate(b"SFATAL\0\0"), None);
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(bytes: Vec<u8>) {
            let _ = Startup::parse(&bytes);
        }

        #[test]
        fn round_trips(params in proptest::collection::vec(("[a-z_.]{1,12}", "[ -~&&[^\\\\]]{0,20}"), 0..6)) {
            let refs: Vec<(&str, &str)> = params.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let s = Startup::parse(&packet(&refs)).unwrap();
            let back: Vec<(String, String)> = params.clone();
            proptest::prop_assert_eq!(s.params, back);
        }
    }
}
