//! Query cancels. A CancelRequest arrives on a new connection carrying the key of the
//! session to cancel, and round robin would send it to any server: 0 of 10 cancels reached
//! the right server through HAProxy's replica port. pgfront sends it to the server that
//! issued the key when it saw the key (sessions it can read), and otherwise to every server
//! of the listener: PostgreSQL acts only where the key matches and ignores it elsewhere, so
//! this works even for sessions encrypted end to end.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::io::AsyncWriteExt;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::timeout;

use crate::cluster::ListenerState;
use crate::state::Shared;

/// Forwards a CancelRequest packet to every server of `listener`, whatever its health:
/// the query to cancel may be running on a server that was just marked down.
pub async fn forward(shared: &Shared, listener: &ListenerState, packet: &[u8], peer: SocketAddr) {
    let known = packet.get(8..).and_then(|key| shared.cancel_keys.lookup(key));
    let source_of = |address: &str| listener.servers.iter().find(|s| s.address == address).and_then(|s| s.source);
    let targets: Vec<(String, Option<std::net::IpAddr>)> = match &known {
        Some(address) => vec![(address.clone(), source_of(address))],
        // Servers that are up first: when the fan-out goes one at a time (its share is
        // taken), a node that does not answer must not hold up the rest by its timeout.
        // Then the servers a reload took away that still hold this listener's sessions.
        None => {
            let (up, down): (Vec<_>, Vec<_>) = listener.servers.iter().partition(|s| s.is_up());
            let mut targets: Vec<_> = up.into_iter().chain(down).map(|s| (s.address.clone(), s.source)).collect();
            for t in shared.retired.holding(&listener.config.name) {
                if !targets.contains(&t) {
                    targets.push(t);
                }
            }
            targets
        }
    };
    let limit = listener.config.timeout_connect;
    let delivered = fan_out(targets, &shared.shares.fanout, |(address, source)| {
        let packet = packet.to_vec();
        async move {
            timeout(limit, async {
                let mut s = crate::net::connect(&address, source).await?;
                s.write_all(&packet).await?;
                s.shutdown().await
            })
            .await
            .is_ok_and(|r| r.is_ok())
        }
    })
    .await;
    listener.stats.cancels.fetch_add(1, Ordering::Relaxed);
    tracing::info!(listener = %listener.config.name, client = %peer, servers = delivered, key_known = known.is_some(),
        "cancel request forwarded");
}

/// Runs `send` for every target and returns how many succeeded. A cancel request holds
/// one place under maxconn, which counts two descriptors (its client and one server), so
/// one send at a time is its own; more run at once only with a place from `extra`, the
/// process's share for fan-outs, taken when free and never waited for. Without the share,
/// a storm of cancels with unknown keys towards a node that does not answer (each connect
/// held for `timeout_connect`) would take a descriptor per server per cancel.
async fn fan_out<T, F, Fut>(targets: Vec<T>, extra: &Arc<Semaphore>, send: F) -> usize
where
    F: Fn(T) -> Fut,
    Fut: Future<Output = bool> + Send + 'static,
{
    let mut targets = targets.into_iter().peekable();
    let mut sends = JoinSet::new();
    let mut own_free = true;
    let mut delivered = 0;
    loop {
        while targets.peek().is_some() {
            let place = if own_free {
                None
            } else {
                match Arc::clone(extra).try_acquire_owned() {
                    Ok(p) => Some(p),
                    Err(_) => break,
                }
            };
            own_free &= place.is_some();
            let sent = send(targets.next().expect("peeked"));
            sends.spawn(async move {
                let ok = sent.await;
                (ok, place.is_none())
            });
        }
        match sends.join_next().await {
            Some(Ok((ok, own))) => {
                delivered += usize::from(ok);
                own_free |= own;
            }
            // A send that panicked: which place it held is unknown, so the own one stays
            // taken (at worst the targets left are not sent to; none is sent twice).
            Some(Err(_)) => {}
            None => return delivered,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// The most sends at once, with `extra` places free, and how many were delivered.
    async fn run(extra: usize, targets: Vec<bool>) -> (usize, usize) {
        let share = Arc::new(Semaphore::new(extra));
        let (now, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let delivered = fan_out(targets, &share, |ok| {
            let (now, most) = (Arc::clone(&now), Arc::clone(&most));
            async move {
                most.fetch_max(now.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
                // A connect that takes a while: the other sends get to run meanwhile.
                for _ in 0..10 {
                    tokio::task::yield_now().await;
                }
                now.fetch_sub(1, Ordering::SeqCst);
                ok
            }
        })
        .await;
        assert_eq!(share.available_permits(), extra, "every place of the share is given back");
        (most.load(Ordering::SeqCst), delivered)
    }

    #[tokio::test]
    async fn a_fan_out_goes_one_at_a_time_unless_the_share_has_places() {
        // Failed before: every server was connected at once, whatever the share.
        assert_eq!(run(0, vec![true, false, true]).await, (1, 2));
        assert_eq!(run(1, vec![true, true, true]).await, (2, 3));
        assert_eq!(run(25, vec![true, true, true]).await, (3, 3));
        assert_eq!(run(0, vec![]).await, (0, 0));
    }
}
