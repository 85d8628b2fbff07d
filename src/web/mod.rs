//! The operator's surface on :7000: an HTML page that refreshes itself, HAProxy-style CSV,
//! JSON and Prometheus metrics, all rendered from one [`Snapshot`]; basic auth with
//! read-only and admin users; admin actions as CSRF-protected POSTs.

mod admin;
mod auth;
mod history;
mod metrics;
mod page;
mod svg;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE, WWW_AUTHENTICATE};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::Role;
use crate::state::Shared;
use crate::stats::{self, Snapshot};

type Reply = Response<Full<Bytes>>;

/// How long one web connection may stay open (many requests over keep-alive, or one answer
/// read slowly): its place under the web's descriptor share (`fds::Shares`) comes back.
const WEB_CONN_LIMIT: Duration = Duration::from_secs(30);
/// How long a connection closing (at WEB_CONN_LIMIT or a stop) may take to finish its answer.
const WEB_DRAIN: Duration = Duration::from_secs(5);
/// How long a connection of the quick lane may take, its request and answer in all.
const WEB_QUICK_LIMIT: Duration = Duration::from_secs(2);
/// Below this many free places, new web connections are not kept alive.
const WEB_SPARE_PLACES: usize = 4;

/// What the web surface keeps for its whole life.
struct Web {
    shared: Arc<Shared>,
    verified: auth::Verified,
    csrf: String,
}

/// Serves the web surface until `stop` is cancelled.
pub async fn serve(shared: Arc<Shared>, socket: TcpListener, stop: CancellationToken) {
    let web = Arc::new(Web { shared, verified: auth::Verified::default(), csrf: auth::csrf_token() });
    let share = Arc::clone(&web.shared.shares.web);
    let quick_share = Arc::clone(&web.shared.shares.web_quick);
    loop {
        // Bounded (see `fds::Shares`): more wait in the backlog, and an idle keep-alive
        // connection gives its place back after `header_read_timeout`. With every place
        // taken, the quick lane serves one short request per connection.
        let (place, quick) = tokio::select! {
            biased;
            p = Arc::clone(&share).acquire_owned() => (p, false),
            p = Arc::clone(&quick_share).acquire_owned() => (p, true),
            () = stop.cancelled() => return,
        };
        let Ok(place) = place else { return };
        let (stream, _) = tokio::select! {
            r = socket.accept() => match r {
                Ok(v) => v,
                Err(e) => {
                    // Out of descriptors (the proxy's sessions come first): back off, don't spin.
                    tracing::debug!(error = %e, "web accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = stop.cancelled() => return,
        };
        let web = Arc::clone(&web);
        let stop = stop.clone();
        // With its share nearly taken, a connection serves one request and closes, so a
        // dashboard refreshing faster than the idle timeout does not keep its place.
        let keep_alive = !quick && share.available_permits() >= WEB_SPARE_PLACES;
        let (read_limit, conn_limit) =
            if quick { (WEB_QUICK_LIMIT, WEB_QUICK_LIMIT) } else { (Duration::from_secs(10), WEB_CONN_LIMIT) };
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let web = Arc::clone(&web);
                async move { Ok::<_, Infallible>(web.handle(req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                // A client that never finishes its headers cannot hold a task forever.
                .header_read_timeout(read_limit)
                .keep_alive(keep_alive)
                .serve_connection(TokioIo::new(stream), svc);
            // Owned, so that it is closed before its place is given back.
            let mut conn = Box::pin(conn);
            // A connection's place is bounded in time too: one that keeps asking, or that
            // never reads a large answer, gives it back after WEB_CONN_LIMIT.
            let ended = tokio::select! {
                _ = conn.as_mut() => true,
                () = tokio::time::sleep(conn_limit) => false,
                () = stop.cancelled() => false,
            };
            if !ended {
                // The request in flight, if any, is answered; then the connection closes.
                conn.as_mut().graceful_shutdown();
                let _ = tokio::time::timeout(WEB_DRAIN, conn.as_mut()).await;
            }
            drop(conn);
            drop(place);
        });
    }
}

impl Web {
    async fn handle(&self, req: Request<Incoming>) -> Reply {
        let path = req.uri().path().to_owned();
        if path == "/metrics" {
            // Numbers only, no secrets: scraped without credentials, like /health.
            let body = metrics::render(&Snapshot::of(&self.shared));
            return text(StatusCode::OK, "text/plain; version=0.0.4; charset=utf-8", body);
        }
        if path == "/health" {
            // For Pacemaker or an outer balancer: the process is up and serving.
            return text(StatusCode::OK, "text/plain; charset=utf-8", "ok\n".into());
        }
        let runtime = self.shared.runtime();
        let users = runtime.config.web.as_ref().map(|w| w.users.as_slice()).unwrap_or_default();
        let Some(user) = self.verified.user(req.headers(), users).await else {
            let mut r = text(StatusCode::UNAUTHORIZED, "text/plain; charset=utf-8", "authentication required\n".into());
            r.headers_mut()
                .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"pgfront\", charset=\"UTF-8\""));
            return r;
        };
        let (user, role) = (user.name.clone(), user.role);
        drop(runtime);
        if req.method() == Method::POST && path == "/admin" {
            if role != Role::Admin {
                tracing::warn!(user = %user, "admin action refused: read-only user");
                return text(StatusCode::FORBIDDEN, "text/plain; charset=utf-8", "admin role required\n".into());
            }
            return admin::act(&self.shared, &user, &self.csrf, req).await;
        }
        if req.method() == Method::POST && path == "/api/admin" {
            if role != Role::Admin {
                tracing::warn!(user = %user, "admin action refused: read-only user");
                let body = "{\"error\": \"admin role required\"}\n".to_owned();
                return text(StatusCode::FORBIDDEN, "application/json", body);
            }
            return admin::api(&self.shared, &user, req).await;
        }
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return text(StatusCode::METHOD_NOT_ALLOWED, "text/plain; charset=utf-8", "GET only\n".into());
        }
        let snap = Snapshot::of(&self.shared);
        let query = req.uri().query().unwrap_or("");
        match path.as_str() {
            "/" | "/stats" if query == "csv" => text(StatusCode::OK, "text/csv; charset=utf-8", stats::csv(&snap)),
            "/;csv" | "/stats;csv" | "/stats.csv" => text(StatusCode::OK, "text/csv; charset=utf-8", stats::csv(&snap)),
            "/status.json" | "/stats.json" => match serde_json::to_string_pretty(&snap) {
                Ok(body) => text(StatusCode::OK, "application/json", body),
                Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, "text/plain; charset=utf-8", format!("{e}\n")),
            },
            "/" | "/stats" => {
                let refresh = self.shared.runtime().config.web.as_ref().map_or(5, |w| w.refresh.as_secs().max(1));
                let csrf = (role == Role::Admin).then_some(self.csrf.as_str());
                text(StatusCode::OK, "text/html; charset=utf-8", page::render(&snap, refresh, csrf))
            }
            _ => text(StatusCode::NOT_FOUND, "text/plain; charset=utf-8", "not found\n".into()),
        }
    }
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Reply {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}
