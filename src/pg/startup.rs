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

    pub fn get(&self, name: &str) -> Option<&str> {
        self.params.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// A setting the client passed either way PostgreSQL accepts: in `options` as
    /// `-c name=value` (libpq, JDBC, psycopg), or as a startup parameter of its own
    /// (asyncpg's `server_settings`).
    pub fn setting(&self, name: &str) -> Option<String> {
        self.option(name).or_else(|| self.get(name).map(str::to_owned))
    }

    /// A setting passed in `options` as `-c name=value` (or `--name=value`), as the server
    /// would read it: words split on spaces, backslash escapes the next character.
    pub fn option(&self, name: &str) -> Option<String> {
        let words = split_options(self.get("options")?);
        let mut found = None;
        let mut i = 0;
        while i < words.len() {
            let w = &words[i];
            let setting = if w == "-c" {
                i += 1;
                words.get(i).cloned()
            } else if let Some(s) = w.strip_prefix("-c") {
                Some(s.to_owned())
            } else {
                w.strip_prefix("--").map(str::to_owned)
            };
            if let Some((k, v)) = setting.as_deref().and_then(|s| s.split_once('=')) {
                // The server treats '-' and '_' alike in names; the last setting wins.
                if k.replace('-', "_") == name.replace('-', "_") {
                    found = Some(v.to_owned());
                }
            }
            i += 1;
        }
        found
    }
}

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
            c if c.is_ascii_whitespace() => {
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
