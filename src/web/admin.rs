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
    let rt = shared.runtime.load();
    let Some(s) = rt.listener(listener).and_then(|l| l.servers.iter().find(|s| &s.name == server)) else {
        return text(StatusCode::NOT_FOUND, "text/plain; charset=utf-8", "no such listener or server\n".into());
    };
    let done = match action.as_str() {
        "ready" | "drain" | "maint" => {
            let state = match action.as_str() {
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
        "shutdown" => format!("shut down {} sessions", s.cut_sessions()),
        other => return bad(&format!("unknown action {other:?}")),
    };
    tracing::warn!(user, listener = %listener, server = %server, action = %action, "admin action: {done}");
    rt.events.push(format!("{listener}/{server}: {done} by {user}"));
    // Back to the page, as a form post from it expects.
    let mut r = text(StatusCode::SEE_OTHER, "text/plain; charset=utf-8", format!("{done}\n"));
    r.headers_mut().insert(hyper::header::LOCATION, hyper::header::HeaderValue::from_static("/"));
    r
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
