//! Admin actions on a server: ready, drain, maint, and shutting its sessions down.
//! POST only, form-encoded, with the page's CSRF token; every action is logged with the
//! user who made it.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::{Request, StatusCode};

use super::{auth, text, Reply};
use crate::cluster::AdminState;
use crate::state::Shared;

/// Form bodies are a few fields; anything bigger is refused unread.
const MAX_FORM: usize = 4096;
/// How long a body may take to arrive once its headers did (they send it at once).
const BODY_WAIT: Duration = Duration::from_secs(5);

/// Reads a request's body of at most MAX_FORM bytes within BODY_WAIT, or says why not
/// with the status that tells it: 413 too large, 408 too slow, 400 cut short.
async fn body(req: Request<Incoming>) -> Result<Bytes, (StatusCode, &'static str)> {
    let too_large = (StatusCode::PAYLOAD_TOO_LARGE, "body too large");
    let declared = req.headers().get(hyper::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_FORM as u64) {
        return Err(too_large);
    }
    match tokio::time::timeout(BODY_WAIT, Limited::new(req.into_body(), MAX_FORM).collect()).await {
        Ok(Ok(b)) => Ok(b.to_bytes()),
        Ok(Err(e)) if e.is::<LengthLimitError>() => Err(too_large),
        Ok(Err(_)) => Err((StatusCode::BAD_REQUEST, "body unreadable")),
        Err(_) => Err((StatusCode::REQUEST_TIMEOUT, "body not sent in time")),
    }
}

pub async fn act(shared: &Shared, user: &str, csrf: &str, req: Request<Incoming>) -> Reply {
    let bad = |why: &str| text(StatusCode::BAD_REQUEST, "text/plain; charset=utf-8", format!("{why}\n"));
    let body = match body(req).await {
        Ok(b) => b,
        Err((status, why)) => return text(status, "text/plain; charset=utf-8", format!("{why}\n")),
    };
    let form = form(&body);
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
        "shutdown" | "kill-sessions" => format!("shut down {} sessions", s.cut_all_sessions()),
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
    let body = match body(req).await {
        Ok(b) => b,
        Err((status, why)) => return error(status, why.into()),
    };
    let a: ApiAction = match serde_json::from_slice(&body) {
        Ok(a) => a,
        Err(e) => {
            return error(StatusCode::BAD_REQUEST, format!("expected {{\"action\", \"node\", \"listener\"?}}: {e}"))
        }
    };
    if let Some(c) = a.cluster.as_ref().filter(|c| !shared.runtimes().iter().any(|rt| &rt.config.cluster == *c)) {
        return error(StatusCode::NOT_FOUND, format!("no cluster {c:?}"));
    }
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
fn form(body: &[u8]) -> HashMap<String, String> {
    form_urlencoded::parse(body).into_owned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_forms() {
        let f = form(b"listener=primary&server=node%31&action=drain&csrf=ab+c&x=%zz&y=%4&z=%+3&server=node%32");
        assert_eq!(f["server"], "node2", "the last of a repeated key");
        assert_eq!(f["csrf"], "ab c");
        assert_eq!(f["x"], "%zz");
        assert_eq!(f["y"], "%4");
        assert_eq!(f["z"], "% 3", "not a hex escape");
    }
}
