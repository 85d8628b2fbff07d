//! `pgfront status`: a running pgfront's view of the cluster and its listeners in the
//! terminal, read from its web port (`/status.json`), the way `patronictl list` shows
//! Patroni. A plain HTTP/1.0 GET over a bounded TCP connection: nothing to configure.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::Value;

/// Why the status could not be read (exit code 2).
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("{0} is not a URL pgfront can read (expected http://HOST:PORT)")]
    Url(String),
    #[error("cannot reach pgfront at {url}: {source}")]
    Unreachable {
        url: String,
        #[source]
        source: std::io::Error,
    },
    #[error("pgfront at {0} refused the credentials (HTTP 401): check the user and password")]
    Unauthorized(String),
    #[error("pgfront at {url} answered HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("pgfront at {0} sent an unreadable status: {1}")]
    Garbled(String, String),
    #[error("pgfront at {0} is busy: every web place is held (HTTP 503 until the timeout); try again")]
    Busy(String),
    #[error("no answer from {url} within {after:?}")]
    Timeout { url: String, after: Duration },
    #[error("{url} is not pgfront's web port: {why}")]
    NotPgfront { url: String, why: String },
}

/// Whom to ask, and as whom.
#[derive(Debug, Clone)]
pub struct Source {
    /// `http://host:port`
    pub url: String,
    pub user: Option<String>,
    pub password: Option<String>,
    pub timeout: Duration,
}

/// Reads `/status.json`.
pub fn fetch(src: &Source) -> Result<Value, StatusError> {
    let (status, body) = request(src, "GET", "/status.json", None)?;
    match status {
        // pgfront's status names its version and its listeners: a `{}` from something else
        // must not read as "no leader" (exit 1) to a monitor.
        200 => match serde_json::from_str::<Value>(&body) {
            Ok(v) if v["version"].is_string() && v["listeners"].is_array() => Ok(v),
            Ok(_) => Err(not_pgfront(src, "its /status.json is not pgfront's status")),
            Err(e) => Err(StatusError::Garbled(src.url.clone(), e.to_string())),
        },
        401 => Err(StatusError::Unauthorized(src.url.clone())),
        status => Err(StatusError::Status { url: src.url.clone(), status }),
    }
}

/// `pgfront ctl`: applies an admin action through the JSON admin API. `Ok` with what was
/// done; `Err(Ok(why))` when pgfront refused it (exit 1), `Err(Err(_))` when it could not
/// be asked (exit 2).
pub fn act(
    src: &Source,
    action: &str,
    node: &str,
    listener: Option<&str>,
    cluster: Option<&str>,
) -> Result<Vec<String>, Result<String, StatusError>> {
    let body =
        serde_json::json!({ "action": action, "node": node, "listener": listener, "cluster": cluster }).to_string();
    let (status, body) = request(src, "POST", "/api/admin", Some(&body)).map_err(Err)?;
    let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    // Only pgfront's own answers count: a 200 without its `done` list, or a refusal without
    // its `error`, came from something else, and nothing was done (exit 2, not 0 or 1).
    match (status, v["done"].as_array(), v["error"].as_str()) {
        (200, Some(done), _) if !done.is_empty() => {
            Ok(done.iter().map(|x| format!("{}/{}: {}", s(&x["listener"]), s(&x["server"]), s(&x["result"]))).collect())
        }
        (200, ..) => Err(Err(not_pgfront(src, "its answer to the admin action is not pgfront's"))),
        (401, ..) => Err(Ok("pgfront refused the credentials (HTTP 401): check the user and password".into())),
        (_, _, Some(error)) => Err(Ok(format!("refused (HTTP {status}): {error}"))),
        _ => Err(Err(StatusError::Status { url: src.url.clone(), status })),
    }
}

fn not_pgfront(src: &Source, why: &str) -> StatusError {
    StatusError::NotPgfront { url: src.url.clone(), why: why.to_owned() }
}

/// Waits between two tries when a 503 asks to retry at once (`Retry-After: 0`).
const RETRY_AT_LEAST: Duration = Duration::from_millis(100);

/// One request to the web port: the status code and the body, all within the timeout. A
/// busy pgfront's 503 (every web place held by dashboards: the request turned away
/// unhandled, so asking again is safe) is tried again after its Retry-After, for as long as
/// the timeout allows; then it is [`StatusError::Busy`].
fn request(src: &Source, method: &str, path: &str, body: Option<&str>) -> Result<(u16, String), StatusError> {
    let deadline = Instant::now() + src.timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let (status, retry_after, answer) = exchange(src, left.max(RETRY_AT_LEAST), method, path, body)?;
        // Only pgfront's own answer: a proxy in between may have passed the request on.
        let busy = status == 503 && answer == crate::web::BUSY_BODY;
        let Some(secs) = retry_after.filter(|_| busy) else { return Ok((status, answer)) };
        let wait = Duration::from_secs(secs.min(3600)).max(RETRY_AT_LEAST);
        if wait >= deadline.saturating_duration_since(Instant::now()) {
            return Err(StatusError::Busy(src.url.clone()));
        }
        std::thread::sleep(wait);
    }
}

/// One HTTP/1.0 exchange with the web port: the status code, Retry-After and the body.
fn exchange(
    src: &Source,
    timeout: Duration,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Result<(u16, Option<u64>, String), StatusError> {
    let rest = src.url.strip_prefix("http://").ok_or_else(|| StatusError::Url(src.url.clone()))?;
    let host = rest.trim_end_matches('/');
    if host.is_empty() || host.contains('/') {
        return Err(StatusError::Url(src.url.clone()));
    }
    let unreachable = |source| StatusError::Unreachable { url: src.url.clone(), source };
    let addr = host
        .to_socket_addrs()
        .map_err(unreachable)?
        .next()
        .ok_or_else(|| unreachable(std::io::ErrorKind::NotFound.into()))?;
    let deadline = Instant::now() + timeout;
    let timed_out = || StatusError::Timeout { url: src.url.clone(), after: src.timeout };
    let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(unreachable)?;
    s.set_write_timeout(Some(timeout)).map_err(unreachable)?;
    let auth = match (&src.user, &src.password) {
        (Some(u), Some(p)) => {
            format!("Authorization: Basic {}\r\n", base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}")))
        }
        _ => String::new(),
    };
    let payload = body
        .map_or(String::new(), |b| format!("Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{b}", b.len()));
    let end = if body.is_some() { "" } else { "\r\n" };
    // One write: a busy pgfront answers what it has read and closes, and a part sent after
    // that would be answered with a reset instead of its 503.
    let request = format!("{method} {path} HTTP/1.0\r\nHost: {host}\r\n{auth}Connection: close\r\n{payload}{end}");
    s.write_all(request.as_bytes()).map_err(unreachable)?;
    // Within the timeout as a whole: a read timeout bounds each read only, and a server
    // that trickles a byte now and then kept `status` waiting for as long as it liked.
    let mut answer = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(timed_out());
        }
        s.set_read_timeout(Some(left)).map_err(unreachable)?;
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) if answer.len() + n > 16 << 20 => return Err(not_pgfront(src, "its answer is over 16 MiB")),
            Ok(n) => answer.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                return Err(timed_out())
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(unreachable(e)),
        }
    }
    let text = String::from_utf8_lossy(&answer);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status: u16 = match head.strip_prefix("HTTP/1.").and_then(|h| h.split_whitespace().nth(1)) {
        Some(code) => code.parse().map_err(|_| not_pgfront(src, "its answer has no HTTP status"))?,
        None => return Err(not_pgfront(src, "it did not answer HTTP (is it HTTPS, or another service?)")),
    };
    let retry_after = head.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.trim().eq_ignore_ascii_case("retry-after").then(|| value.trim().parse().ok())?
    });
    Ok((status, retry_after, body.to_owned()))
}

/// Whether a leader is admitted: some write listener has a server up (or, with none, the
/// cluster has a leader). The exit code of `pgfront status`.
/// With `[[cluster]]` tables: in every cluster.
pub fn leader_admitted(v: &Value) -> bool {
    if let Some(all) = v["clusters"].as_array().filter(|a| !a.is_empty()) {
        return all.iter().all(leader_admitted);
    }
    let listeners = v["listeners"].as_array().cloned().unwrap_or_default();
    let writes: Vec<&Value> = listeners.iter().filter(|l| l["writes"] == true).collect();
    if writes.is_empty() {
        return v["leader"].is_string();
    }
    writes.iter().any(|l| l["servers_up"].as_u64().unwrap_or(0) > 0)
}

fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A table of rows, columns padded to their widest cell, with `+---+` rules as
/// `patronictl list` draws them.
fn table(out: &mut String, header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let rule: String = widths.iter().map(|w| format!("+{}", "-".repeat(w + 2))).collect::<String>() + "+\n";
    let line = |cells: Vec<String>| -> String {
        let mut l: String = cells.iter().zip(&widths).map(|(c, w)| format!("| {c:<w$} ")).collect();
        l.push_str("|\n");
        l
    };
    out.push_str(&rule);
    out.push_str(&line(header.iter().map(|h| h.to_string()).collect()));
    out.push_str(&rule);
    for r in rows {
        out.push_str(&line(r.clone()));
    }
    out.push_str(&rule);
}

fn ago(secs: u64) -> String {
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s => format!("{}h{}m", s / 3600, s % 3600 / 60),
    }
}

/// The status as a person reads it: with `[[cluster]]` tables, one part per cluster; then
/// what belongs to the process.
pub fn render(url: &str, v: &Value) -> String {
    let mut out = match v["clusters"].as_array().filter(|a| !a.is_empty()) {
        None => render_cluster(url, v),
        Some(all) => {
            let mut out = String::new();
            for c in all {
                let _ = writeln!(out, "== cluster {} ==", s(&c["cluster"]));
                out.push_str(&render_cluster(url, c));
                out.push('\n');
            }
            out
        }
    };
    render_process(&mut out, v);
    out
}

/// Global maxconn, and the sessions on what a reload took away: they hold places that no
/// listener above shows.
fn render_process(out: &mut String, v: &Value) {
    if let (Some(held), Some(max)) = (v["global_sessions"].as_u64(), v["global_maxconn"].as_u64()) {
        let _ = writeln!(out, "global maxconn {max}: {held} places held");
    }
    let retired = v["retired"].as_array().cloned().unwrap_or_default();
    if retired.is_empty() {
        return;
    }
    let total: u64 = retired.iter().filter_map(|r| r["sessions"].as_u64()).sum();
    let _ = writeln!(out, "{total} sessions on listeners or servers a reload removed (they run to their end):");
    let rows: Vec<Vec<String>> =
        retired.iter().map(|r| vec![s(&r["cluster"]), s(&r["listener"]), s(&r["server"]), s(&r["sessions"])]).collect();
    table(out, &["Cluster", "Listener", "Server", "Sessions"], &rows);
}

/// One cluster's status.
fn render_cluster(url: &str, v: &Value) -> String {
    let mut out = String::new();
    let leader = match (&v["leader"], v["leader_conflict"] == true) {
        (_, true) => "CONFLICT: several nodes claim leadership; writes are held".to_owned(),
        (Value::String(l), _) => format!(
            "leader {l} for {} ({} leader changes)",
            ago(v["leader_since_secs"].as_u64().unwrap_or(0)),
            v["leader_changes"].as_u64().unwrap_or(0)
        ),
        _ => {
            format!("NO LEADER for {}: new write sessions are held", ago(v["leader_since_secs"].as_u64().unwrap_or(0)))
        }
    };
    let _ = writeln!(
        out,
        "pgfront {} at {url}: {leader}; {} sessions open, {} held",
        s(&v["version"]),
        v["sessions"].as_u64().unwrap_or(0),
        v["sessions_held"].as_u64().unwrap_or(0)
    );
    if let Some(id) = v["system_identifier"].as_str() {
        let _ = writeln!(out, "cluster system identifier {id}");
    }
    if v["discovery"].is_object() {
        let d = &v["discovery"];
        let _ = writeln!(
            out,
            "nodes from Patroni: {} members in use, {} ignored, {} changes, from {}{}",
            d["members"].as_u64().unwrap_or(0),
            d["refused"].as_u64().unwrap_or(0),
            d["changes"].as_u64().unwrap_or(0),
            d["source"].as_str().unwrap_or("no answer yet"),
            d["error"].as_str().map_or_else(String::new, |e| format!("; FAILING: {e}"))
        );
    }
    let nodes: Vec<Vec<String>> = v["nodes"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|n| {
                    let role = match (s(&n["role"]), n["is_leader"] == true) {
                        (r, true) => format!("{r} (leader)"),
                        (r, false) => r,
                    };
                    vec![
                        s(&n["name"]),
                        role,
                        s(&n["state"]),
                        s(&n["timeline"]),
                        n["lag_bytes"].as_u64().map_or("-".into(), |b| b.to_string()),
                        s(&n["rest"]),
                        s(&n["last_check"]),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    table(&mut out, &["Node", "Role", "State", "TL", "Lag (B)", "REST", "Last answer"], &nodes);
    for l in v["listeners"].as_array().cloned().unwrap_or_default() {
        let _ = writeln!(
            out,
            "listener {} on {} ({}, {}): {}/{} up, queue {}, refused {}",
            s(&l["name"]),
            s(&l["bind"]),
            s(&l["balance"]),
            s(&l["check"]),
            l["servers_up"].as_u64().unwrap_or(0),
            l["servers"].as_array().map_or(0, Vec::len),
            l["queue_cur"].as_u64().unwrap_or(0),
            l["refused"].as_u64().unwrap_or(0),
        );
        let rows: Vec<Vec<String>> = l["servers"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|sv| {
                        vec![
                            s(&sv["name"]),
                            s(&sv["status"]),
                            ago(sv["last_change_secs"].as_u64().unwrap_or(0)),
                            format!("{}/{}", sv["cur"].as_u64().unwrap_or(0), sv["limit"].as_u64().unwrap_or(0)),
                            s(&sv["total"]),
                            s(&sv["last_check"]),
                            s(&sv["reason"]),
                        ]
                    })
                    .collect()
            })
            .unwrap_or_default();
        table(&mut out, &["Server", "Status", "Since", "Sessions", "Total", "Last check", "Reason"], &rows);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A web port that answers `busy` 503s with `Retry-After: 0` and `body`, then one 200:
    /// how many requests it had once it answered 200.
    fn busy_web(busy: usize, body: &'static str) -> (Source, std::thread::JoinHandle<usize>) {
        let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", socket.local_addr().unwrap());
        let server = std::thread::spawn(move || {
            for (asked, conn) in socket.incoming().enumerate() {
                let mut conn = conn.unwrap();
                let mut req = Vec::new();
                let mut buf = [0u8; 1024];
                while !req.ends_with(b"\r\n\r\n") {
                    match conn.read(&mut buf) {
                        Ok(n) if n > 0 => req.extend_from_slice(&buf[..n]),
                        _ => break,
                    }
                }
                if asked < busy {
                    let head = "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 0\r\n\r\n";
                    let _ = conn.write_all(format!("{head}{body}").as_bytes());
                } else {
                    let _ = conn.write_all(
                        b"HTTP/1.1 200 OK\r\n\r\n{\"version\": \"0\", \"listeners\": [], \"leader\": \"a\"}",
                    );
                    return asked + 1;
                }
            }
            0
        });
        (Source { url, user: None, password: None, timeout: Duration::from_secs(5) }, server)
    }

    /// Something on a port that reads a request and sends `reply` in `parts` pieces,
    /// `gap` apart (bounded: at most 50 pieces).
    fn not_quite(reply: &'static [u8], parts: usize, gap: Duration) -> Source {
        let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", socket.local_addr().unwrap());
        std::thread::spawn(move || {
            let Ok((mut conn, _)) = socket.accept() else { return };
            let mut buf = [0u8; 1024];
            let _ = conn.read(&mut buf);
            let size = reply.len().div_ceil(parts.clamp(1, 50));
            for piece in reply.chunks(size) {
                if conn.write_all(piece).is_err() {
                    return;
                }
                std::thread::sleep(gap);
            }
        });
        Source { url, user: Some("admin".into()), password: Some("x".into()), timeout: Duration::from_millis(500) }
    }

    #[test]
    fn an_answer_that_trickles_past_the_timeout_is_a_timeout() {
        // Before: each read had the timeout, not the whole answer, so a server sending a
        // header line every 2 s kept status and ctl waiting (30 s and more).
        let head: &[u8] =
            b"HTTP/1.0 200 OK\r\nX-A: 1\r\nX-B: 2\r\nX-C: 3\r\nX-D: 4\r\nX-E: 5\r\nX-F: 6\r\nX-G: 7\r\n\r\n{}";
        let got = fetch(&not_quite(head, 40, Duration::from_millis(100)));
        assert!(matches!(got, Err(StatusError::Timeout { .. })), "{got:?}");
    }

    #[test]
    fn what_is_not_pgfront_is_said_so_and_nothing_is_reported_done() {
        // Before: ctl exited 0 ("done") on any 200, and status read `{}` as "no leader".
        let quick = Duration::from_millis(1);
        let html: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n\r\n<html>hello</html>";
        let empty: &[u8] = b"HTTP/1.1 200 OK\r\n\r\n{}";
        let ssh: &[u8] = b"SSH-2.0-OpenSSH_9.2\r\n";
        for reply in [html, empty, ssh] {
            let acted = act(&not_quite(reply, 1, quick), "drain", "node2", None, None);
            assert!(matches!(acted, Err(Err(StatusError::NotPgfront { .. }))), "{acted:?}");
        }
        for reply in [empty, ssh] {
            let got = fetch(&not_quite(reply, 1, quick));
            assert!(matches!(got, Err(StatusError::NotPgfront { .. })), "{got:?}");
        }
        // A refusal without pgfront's `error` is not pgfront refusing (exit 2, not 1)...
        let acted = act(&not_quite(b"HTTP/1.1 404 Not Found\r\n\r\nnope", 1, quick), "drain", "n", None, None);
        assert!(matches!(acted, Err(Err(StatusError::Status { status: 404, .. }))), "{acted:?}");
        // ...and pgfront's own refusal and answer read as before.
        let refused: &[u8] = b"HTTP/1.1 404 Not Found\r\n\r\n{\"error\": \"no listener has a server \\\"n\\\"\"}";
        assert!(matches!(act(&not_quite(refused, 1, quick), "drain", "n", None, None), Err(Ok(_))));
        let done: &[u8] = b"HTTP/1.1 200 OK\r\n\r\n{\"ok\": true, \"done\": [{\"listener\": \"l\", \"server\": \"n\", \"result\": \"DRAIN\"}]}";
        assert_eq!(act(&not_quite(done, 1, quick), "drain", "n", None, None).unwrap(), ["l/n: DRAIN"]);
    }

    #[test]
    fn a_busy_web_port_is_asked_again() {
        let (src, server) = busy_web(2, crate::web::BUSY_BODY);
        assert_eq!(fetch(&src).unwrap()["leader"], "a");
        assert_eq!(server.join().unwrap(), 3, "two 503s, then the answer");
    }

    #[test]
    fn a_web_port_busy_until_the_timeout_is_busy_not_refused() {
        // Tries 100 ms apart within 450 ms: at most 5, all answered 503.
        let src = Source { timeout: Duration::from_millis(450), ..busy_web(5, crate::web::BUSY_BODY).0 };
        let got = fetch(&src);
        assert!(matches!(got, Err(StatusError::Busy(_))), "{got:?}");
    }

    #[test]
    fn a_503_not_from_a_busy_pgfront_is_not_asked_again() {
        // A proxy in between may have passed the request on: its 503 is the answer.
        let (src, _server) = busy_web(1, "upstream down\n");
        assert!(matches!(fetch(&src), Err(StatusError::Status { status: 503, .. })));
    }

    #[test]
    fn renders_the_cluster_and_the_listeners() {
        let v: Value = serde_json::from_str(
            r#"{"version":"0.1.0","leader":"node1","leader_since_secs":300,"leader_changes":2,"leader_conflict":false,
            "sessions":3,"sessions_held":0,"system_identifier":"7001",
            "nodes":[{"name":"node1","role":"primary","is_leader":true,"state":"running","timeline":2,"rest":"127.0.0.11:8008","last_check":"L7OK/200 in 1ms"}],
            "listeners":[{"name":"primary","bind":"127.0.0.1:5000","balance":"first","check":"OPTIONS /master -> 200","writes":true,"servers_up":1,"queue_cur":0,"refused":0,
              "servers":[{"name":"node1","status":"UP","last_change_secs":61,"cur":3,"limit":100,"total":9,"last_check":"L7OK/200 in 1ms","reason":"ok"}]}]}"#,
        )
        .unwrap();
        let text = render("http://x:7000", &v);
        assert!(text.contains("leader node1 for 5m (2 leader changes)"), "{text}");
        assert!(text.contains("| node1 | primary (leader) |"), "{text}");
        assert!(text.contains("listener primary on 127.0.0.1:5000"), "{text}");
        assert!(text.contains("| 3/100 "), "{text}");
        assert!(leader_admitted(&v));
        let mut none = v.clone();
        none["listeners"][0]["servers_up"] = 0.into();
        assert!(!leader_admitted(&none));
    }

    #[test]
    fn renders_discovery_when_on() {
        let v: Value = serde_json::from_str(
            r#"{"leader":"node1","discovery":{"members":3,"refused":1,"changes":4,"errors":0,"requests":9,"source":"10.0.0.1:8008","error":null}}"#,
        )
        .unwrap();
        let text = render("http://x:7000", &v);
        assert!(
            text.contains("nodes from Patroni: 3 members in use, 1 ignored, 4 changes, from 10.0.0.1:8008\n"),
            "{text}"
        );
        assert!(!render("http://x:7000", &serde_json::json!({"leader": "n"})).contains("Patroni"));
    }

    #[test]
    fn renders_global_places_and_sessions_on_removed_listeners() {
        let v = serde_json::json!({"leader": "n", "global_sessions": 5, "global_maxconn": 8,
            "retired": [{"cluster": "", "listener": "old", "server": "node2", "sessions": 3}]});
        let text = render("http://x:7000", &v);
        assert!(text.contains("global maxconn 8: 5 places held\n"), "{text}");
        assert!(text.contains("3 sessions on listeners or servers a reload removed"), "{text}");
        assert!(text.contains("| old      | node2  | 3        |"), "{text}");
        let quiet = render("http://x:7000", &serde_json::json!({"leader": "n", "retired": []}));
        assert!(!quiet.contains("removed"), "{quiet}");
    }
}
