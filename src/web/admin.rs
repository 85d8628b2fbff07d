//! Admin actions on a server: ready, drain, maint, and shutting its sessions down.
//! POST only, form-encoded, with the page's CSRF token; every action is logged with the
//! user who made it.

use std::collections::HashMap;

use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::{Request, StatusCode};

use super::{auth, text, Reply};
use crate::cluster::AdminState;
use crate::state::Shared;

/// Form bodies are a few fields; anything bigger is refused unread.
const MAX_FORM: usize = 4096;

pub async fn act(shared: &Shared, user: &str, csrf: &str, req: Request<Incoming>) -> Reply {
    let bad = |why: &str| text(StatusCode::BAD_REQUEST, "text/plain; charset=utf-8", format!("{why}\n"));
    let body = match Limited::new(req.into_body(), MAX_FORM).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return bad("form too large or unreadable"),
    };
    let form: HashMap<String, String> = form_urlencoded(&body);
    let token = form.get("csrf").map(String::as_str).unwrap_or_default();
    if !auth::constant_time_eq(token.as_bytes(), csrf.as_bytes()) {
        tracing::warn!(user, "admin action refused: missing or wrong CSRF token");
        return text(StatusCode::FORBIDDEN, "text/plain; charset=utf-8", "missing or wrong CSRF token\n".into());
    }
    let (Some(listener), Some(server), Some(action)) = (form.get("listener"), form.get("server"), form.get("action"))
    else {
        return bad("listener, server and action are required");
    };
    let done = match apply(shared, user, listener, server, action) {
        Ok(done) => done,
        Err((status, why)) => return text(status, "text/plain; charset=utf-8", format!("{why}\n")),
    };
    // Back to the page, as a form post from it expects.
    let mut r = text(StatusCode::SEE_OTHER, "text/plain; charset=utf-8", format!("{done}\n"));
    r.headers_mut().insert(hyper::header::LOCATION, hyper::header::HeaderValue::from_static("/"));
    r
}

/// Applies `action` (`ready`, `drain`, `maint`, `shutdown` or `kill-sessions`) to `server` of
/// `listener`, logged with `user`. Shared by the page's forms and the JSON API.
pub fn apply(
    shared: &Shared,
    user: &str,
    listener: &str,
    server: &str,
    action: &str,
) -> Result<String, (StatusCode, String)> {
    // Listener names are unique across clusters: the listener names its cluster.
    let rt = shared
        .clusters
        .load()
        .iter()
        .map(|c| c.runtime())
        .find(|rt| rt.listener(listener).is_some())
        .unwrap_or_else(|| shared.runtime());
    let Some(s) = rt.listener(listener).and_then(|l| l.servers.iter().find(|s| s.name == server)) else {
        return Err((StatusCode::NOT_FOUND, format!("no server {server:?} on listener {listener:?}")));
    };
    let done = match action {
        "ready" | "drain" | "maint" => {
            let state = match action {
                "ready" => AdminState::Ready,
                "drain" => AdminState::Drain,
                _ => AdminState::Maint,
            };
            s.set_admin(state);
            if state == AdminState::Ready {
                if let Some(l) = rt.listener(listener) {
                    l.wake_queue();
                }
            }
            format!("set {}", state.as_str())
        }
        "shutdown" | "kill-sessions" => format!("shut down {} sessions", s.cut_sessions()),
        other => return Err((StatusCode::BAD_REQUEST, format!("unknown action {other:?}"))),
    };
    tracing::warn!(user, listener = %listener, server = %server, action = %action, "admin action: {done}");
    rt.events.push(format!("{listener}/{server}: {done} by {user}"));
    Ok(done)
}

/// What `POST /api/admin` takes.
#[derive(Debug, serde::Deserialize)]
struct ApiAction {
    action: String,
    /// The node (server) to act on.
    node: String,
    /// One listener; all listeners that have the node when absent.
    listener: Option<String>,
    /// The cluster of the node (`[[cluster]]` name); needed only when several clusters
    /// have a node of that name and no listener is given.
    cluster: Option<String>,
}

/// The JSON admin API for `pgfront ctl` and scripts: basic auth and the admin role, as the
/// page; no cookies are involved, so no CSRF token. A body must be `application/json`, which
/// a cross-site form cannot send.
pub async fn api(shared: &Shared, user: &str, req: Request<Incoming>) -> Reply {
    let json = |status: StatusCode, v: serde_json::Value| text(status, "application/json", format!("{v}\n"));
    let error = |status: StatusCode, why: String| json(status, serde_json::json!({ "error": why }));
    let is_json = req
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(';').next().is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json")));
    if !is_json {
        return error(StatusCode::UNSUPPORTED_MEDIA_TYPE, "Content-Type must be application/json".into());
    }
    let body = match Limited::new(req.into_body(), MAX_FORM).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return error(StatusCode::BAD_REQUEST, "body too large or unreadable".into()),
    };
    let a: ApiAction = match serde_json::from_slice(&body) {
        Ok(a) => a,
        Err(e) => {
            return error(StatusCode::BAD_REQUEST, format!("expected {{\"action\", \"node\", \"listener\"?}}: {e}"))
        }
    };
    let listeners: Vec<String> = match &a.listener {
        Some(l) => vec![l.clone()],
        None => {
            let runtimes: Vec<_> = shared
                .runtimes()
                .into_iter()
                .filter(|rt| a.cluster.as_ref().is_none_or(|c| &rt.config.cluster == c))
                .filter(|rt| rt.listeners.iter().any(|l| l.servers.iter().any(|s| s.name == a.node)))
                .collect();
            if runtimes.len() > 1 {
                let names: Vec<&str> = runtimes.iter().map(|rt| rt.config.cluster.as_str()).collect();
                let why = format!("node {:?} is in clusters {names:?}: say which with \"cluster\"", a.node);
                return error(StatusCode::CONFLICT, why);
            }
            runtimes
                .iter()
                .flat_map(|rt| rt.listeners.iter())
                .filter(|l| l.servers.iter().any(|s| s.name == a.node))
                .map(|l| l.config.name.clone())
                .collect()
        }
    };
    if listeners.is_empty() {
        return error(StatusCode::NOT_FOUND, format!("no listener has a server {:?}", a.node));
    }
    let mut done = Vec::new();
    for l in &listeners {
        match apply(shared, user, l, &a.node, &a.action) {
            Ok(result) => done.push(serde_json::json!({ "listener": l, "server": a.node, "result": result })),
            Err((status, why)) => return error(status, why),
        }
    }
    json(StatusCode::OK, serde_json::json!({ "ok": true, "done": done }))
}

/// Decodes `application/x-www-form-urlencoded` (the last value of a repeated key wins).
fn form_urlencoded(body: &[u8]) -> HashMap<String, String> {
    let text = String::from_utf8_lossy(body);
    text.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match u8::from_str_radix(std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz"), 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_forms() {
        let f = form_urlencoded(b"listener=primary&server=node%31&action=drain&csrf=ab+c&x=%zz&y=%4");
        assert_eq!(f["server"], "node1");
        assert_eq!(f["csrf"], "ab c");
        assert_eq!(f["x"], "%zz");
        assert_eq!(f["y"], "%4");
    }
}
