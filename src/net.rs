//! Outgoing connections, made in one place so that every connection pgfront opens to a
//! node (PostgreSQL sessions, cancels, REST probes) leaves from the configured `source`
//! address, as HAProxy's `source` does. An operator (or a fault test) can then tell the
//! balancer's traffic from replication and Patroni's own calls, e.g. to firewall it.

use std::io;
use std::net::{IpAddr, SocketAddr};

use tokio::net::{lookup_host, TcpSocket, TcpStream};

use crate::fds::Lent;

/// Connects to `address` (`host:port`, resolved now), from `source` when given. With
/// several resolved addresses each is tried in turn, and the last error is returned.
pub async fn connect(address: &str, source: Option<IpAddr>) -> io::Result<TcpStream> {
    let Some(source) = source else {
        return TcpStream::connect(address).await;
    };
    let mut last = None;
    for addr in lookup_host(address).await? {
        match connect_from(addr, source).await {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("{address} resolves to nothing"))))
}

/// Why a connect with a spare socket failed.
#[derive(Debug)]
pub enum SpareError {
    /// Before anything reached the node: the name did not resolve, no address of the
    /// socket's family, the source not bindable, or other addresses left untried. Says
    /// nothing about the node.
    Local(io::Error),
    /// The connect itself failed.
    Connect(io::Error),
}

/// Connects to `address` with `spare`, an unconnected socket made earlier (a health
/// checker's, for when no new descriptor can be had): to the resolved address of the
/// socket's family, from `source` when given. A name that cannot be looked up while the
/// process is still out of descriptors (the lookup needs one too) is taken to be where
/// the checks last connected, if they did: that address is returned with the stream.
pub async fn connect_using(
    address: &str,
    source: Option<IpAddr>,
    spare: Lent,
) -> Result<(TcpStream, Option<SocketAddr>), SpareError> {
    let Lent { socket, known } = spare;
    // An unbound socket's name is its family's any-address.
    let v4 = socket.local_addr().map_or(true, |a| a.is_ipv4());
    let (found, fallback): (Vec<SocketAddr>, _) = match lookup_host(address).await {
        Ok(addrs) => (addrs.collect(), None),
        // The spare is still held, so a socket made now tells whether the shortage lasts.
        Err(e) if crate::fds::short_now() => {
            let known = known.ok_or(SpareError::Local(e))?;
            (vec![known], Some(known))
        }
        // A name that does not resolve although descriptors are free: the node's fault,
        // as on the usual path.
        Err(e) => return Err(SpareError::Connect(e)),
    };
    let mut addrs = found.into_iter().filter(|a| a.is_ipv4() == v4);
    let addr = addrs.next().ok_or_else(|| {
        SpareError::Local(io::Error::new(
            io::ErrorKind::NotFound,
            format!("{address} has no address of the spare socket's family"),
        ))
    })?;
    if let Some(source) = source {
        socket.bind(SocketAddr::new(source, 0)).map_err(SpareError::Local)?;
    }
    let untried = addrs.next().is_some();
    let stream =
        socket.connect(addr).await.map_err(|e| if untried { SpareError::Local(e) } else { SpareError::Connect(e) })?;
    Ok((stream, fallback))
}

async fn connect_from(addr: SocketAddr, source: IpAddr) -> io::Result<TcpStream> {
    if addr.is_ipv4() != source.is_ipv4() {
        return Err(io::Error::new(
            io::ErrorKind::AddrNotAvailable,
            format!("source {source} cannot reach {addr} (another address family)"),
        ));
    }
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.bind(SocketAddr::new(source, 0))?;
    socket.connect(addr).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn connections_leave_from_the_source_address() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let source: IpAddr = "127.0.0.2".parse().unwrap();
        let (client, accepted) = tokio::join!(connect(&addr, Some(source)), listener.accept());
        let _client = client.unwrap();
        assert_eq!(accepted.unwrap().1.ip(), source);
        let (client, accepted) = tokio::join!(connect(&addr, None), listener.accept());
        let _client = client.unwrap();
        assert_eq!(accepted.unwrap().1.ip(), "127.0.0.1".parse::<IpAddr>().unwrap());
    }

    #[tokio::test]
    async fn a_spare_socket_connects_from_the_source_address_too() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let source: IpAddr = "127.0.0.2".parse().unwrap();
        let spare = Lent { socket: TcpSocket::new_v4().unwrap(), known: None };
        let (client, accepted) = tokio::join!(connect_using(&addr, Some(source), spare), listener.accept());
        let _client = client.map_err(|e| format!("{e:?}")).unwrap();
        assert_eq!(accepted.unwrap().1.ip(), source);
        // A spare of the other family finds no address to connect to.
        if let Ok(v6) = TcpSocket::new_v6() {
            let spare = Lent { socket: v6, known: None };
            assert!(matches!(connect_using(&addr, None, spare).await, Err(SpareError::Local(_))));
        }
    }

    #[tokio::test]
    async fn a_name_that_does_not_resolve_while_descriptors_are_free_is_the_nodes_failure() {
        // (Where the checks last went is used only while pgfront is short of descriptors:
        // tests/binary.rs makes that shortage in a process of its own.)
        let known = "127.0.0.1:9".parse().unwrap();
        let spare = Lent { socket: TcpSocket::new_v4().unwrap(), known: Some(known) };
        // A port out of range: the lookup fails without asking a resolver.
        assert!(matches!(connect_using("localhost:99999", None, spare).await, Err(SpareError::Connect(_))));
    }
}
