//! The operator's surface on :7000: an HTML page that refreshes itself, HAProxy-style CSV,
//! JSON and Prometheus metrics, all rendered from one [`Snapshot`]; basic auth with
//! read-only and admin users; admin actions as CSRF-protected POSTs.

mod admin;
mod auth;
mod history;
mod metrics;
mod page;
mod quick;
mod svg;
mod tally;

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
use tokio_util::task::TaskTracker;

use crate::config::Role;
use crate::state::Shared;
use crate::stats::{self, Snapshot};
use tally::Tally;

pub use quick::BUSY_BODY;

type Reply = Response<Full<Bytes>>;

/// How long one web connection may stay open (many requests over keep-alive, or one answer
/// read slowly): its place under the web's descriptor share (`fds::Shares`) comes back.
const WEB_CONN_LIMIT: Duration = Duration::from_secs(30);
/// How long a connection closing (at WEB_CONN_LIMIT or a stop) may take to finish its answer.
const WEB_DRAIN: Duration = Duration::from_secs(5);
/// How long a connection of the quick lane may take to send its request (curl and the
/// OCF agent send theirs at once)...
const WEB_QUICK_READ: Duration = Duration::from_millis(100);
/// ...and its request and answer in all, and to finish it once that passed.
const WEB_QUICK_LIMIT: Duration = Duration::from_secs(1);
const WEB_QUICK_DRAIN: Duration = Duration::from_millis(500);
/// Below this many free places, new web connections are not kept alive.
const WEB_SPARE_PLACES: usize = 4;

/// What the web surface keeps for its whole life.
struct Web {
    shared: Arc<Shared>,
    verified: auth::Verified,
    csrf: String,
    /// The web socket has TCP_DEFER_ACCEPT (`global.defer_accept` when it was bound).
    deferred: bool,
    turned_away: Tally,
    /// Requests whose credentials were refused.
    refused_logins: Tally,
}

/// Serves the web surface until `stop` is cancelled, then lets the connections open
/// finish their answers (each within its drain) before returning.
pub async fn serve(shared: Arc<Shared>, socket: TcpListener, stop: CancellationToken) {
    let deferred = crate::proxy::defers_accept(&socket);
    let web = Arc::new(Web {
        shared,
        verified: auth::Verified::default(),
        csrf: auth::csrf_token(),
        deferred,
        turned_away: Tally::default(),
        refused_logins: Tally::default(),
    });
    let conns = TaskTracker::new();
    conns.spawn(flush_tallies(Arc::clone(&web), stop.clone()));
    accept_loop(&web, &socket, &stop, &conns).await;
    drop(socket);
    conns.close();
    conns.wait().await;
}

/// Writes the tail of a crowd of refusals (see `tally`).
async fn flush_tallies(web: Arc<Web>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => return,
        }
        if let Some(n) = web.turned_away.flush() {
            tracing::warn!(turned_away = n, "web port busy: {n} more connections turned away");
        }
        if let Some(n) = web.refused_logins.flush() {
            tracing::warn!(refused = n, "{n} more web logins refused");
        }
    }
}

/// Which share a connection's place is from.
#[derive(Clone, Copy)]
enum Lane {
    Main,
    /// The main share was taken: one quick GET /health (see `fds::Shares::web_quick`).
    Quick,
}

async fn accept_loop(web: &Arc<Web>, socket: &TcpListener, stop: &CancellationToken, conns: &TaskTracker) {
    let share = Arc::clone(&web.shared.shares.web);
    let quick_share = Arc::clone(&web.shared.shares.web_quick);
    loop {
        // Bounded (see `fds::Shares`): more wait in the backlog, and an idle keep-alive
        // connection gives its place back after `header_read_timeout`. With every place
        // taken, the quick lane serves one GET /health per connection.
        let (place, mut lane) = tokio::select! {
            biased;
            p = Arc::clone(&share).acquire_owned() => (p, Lane::Main),
            p = Arc::clone(&quick_share).acquire_owned() => (p, Lane::Quick),
            () = stop.cancelled() => return,
        };
        let Ok(mut place) = place else { return };
        let (stream, peer) = tokio::select! {
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
        // A main place freed while this one waited: the connection gets it instead.
        if let (Lane::Quick, Ok(p)) = (lane, Arc::clone(&share).try_acquire_owned()) {
            (place, lane) = (p, Lane::Main);
        }
        // With its share nearly taken, a connection serves one request and closes, so a
        // dashboard refreshing faster than the idle timeout does not keep its place.
        let keep_alive = matches!(lane, Lane::Main) && share.available_permits() >= WEB_SPARE_PLACES;
        let (read_limit, conn_limit, drain) = match lane {
            Lane::Main => (Duration::from_secs(10), WEB_CONN_LIMIT, WEB_DRAIN),
            Lane::Quick => (WEB_QUICK_READ, WEB_QUICK_LIMIT, WEB_QUICK_DRAIN),
        };
        let web = Arc::clone(web);
        let stop = stop.clone();
        conns.spawn(async move {
            // The quick lane lets in only /health, and turns the rest away at once.
            if matches!(lane, Lane::Quick) && quick::door(&stream, web.deferred).await != quick::Door::Health {
                drop(stream);
                drop(place);
                if let Some(n) = web.turned_away.count() {
                    tracing::warn!(
                        turned_away = n,
                        "web port busy: every place is held, connections that do not ask for /health are turned away"
                    );
                }
                return;
            }
            let svc = service_fn(move |req| {
                let web = Arc::clone(&web);
                async move {
                    Ok::<_, Infallible>(match lane {
                        Lane::Main => web.handle(req, peer).await,
                        Lane::Quick => web.quick(),
                    })
                }
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
            // never reads a large answer, gives it back after its limit and drain.
            let ended = tokio::select! {
                _ = conn.as_mut() => true,
                () = tokio::time::sleep(conn_limit) => false,
                () = stop.cancelled() => false,
            };
            if !ended {
                // The request in flight, if any, is answered; then the connection closes.
                conn.as_mut().graceful_shutdown();
                let _ = tokio::time::timeout(drain, conn.as_mut()).await;
            }
            drop(conn);
            drop(place);
        });
    }
}

impl Web {
    /// The quick lane's one answer: the door let in only requests for /health, what
    /// Pacemaker's monitor asks (the dashboards hold every other place).
    fn quick(&self) -> Reply {
        let mut r = self.health();
        r.headers_mut().insert(hyper::header::CONNECTION, HeaderValue::from_static("close"));
        r
    }

    /// For Pacemaker or an outer balancer: 200 while the process serves; 503 once it
    /// drains for a stop (it accepts no new session, so nothing should be sent to it).
    fn health(&self) -> Reply {
        if self.shared.tokens.accept.is_cancelled() {
            return text(StatusCode::SERVICE_UNAVAILABLE, "text/plain; charset=utf-8", "stopping\n".into());
        }
        text(StatusCode::OK, "text/plain; charset=utf-8", "ok\n".into())
    }

    async fn handle(&self, req: Request<Incoming>, peer: std::net::SocketAddr) -> Reply {
        let path = req.uri().path().to_owned();
        if path == "/metrics" {
            // Numbers only, no secrets: scraped without credentials, like /health.
            let body = metrics::render(&Snapshot::of(&self.shared));
            return text(StatusCode::OK, "text/plain; version=0.0.4; charset=utf-8", body);
        }
        if path == "/health" {
            return self.health();
        }
        let runtime = self.shared.runtime();
        let users = runtime.config.web.as_ref().map(|w| w.users.as_slice()).unwrap_or_default();
        let Some(user) = self.verified.user(req.headers(), users).await else {
            // Wrong credentials, for a log watcher (fail2ban) to see; a browser's first
            // request without any is not one.
            if req.headers().contains_key(hyper::header::AUTHORIZATION) {
                if let Some(n) = self.refused_logins.count() {
                    let user = auth::claimed_user(req.headers()).unwrap_or_default();
                    tracing::warn!(%peer, user = ?user, refused = n, "web login refused: wrong user name or password");
                }
            }
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
        if path == "/admin" || path == "/api/admin" {
            let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "text/plain; charset=utf-8", "POST only\n".into());
            r.headers_mut().insert(hyper::header::ALLOW, HeaderValue::from_static("POST"));
            return r;
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
    // The page has admin forms: no other site may frame it to trick a click, nor a browser
    // guess a type other than the one given.
    r.headers_mut().insert(hyper::header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    r.headers_mut().insert(hyper::header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    r
}
