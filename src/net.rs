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
/// socket's family, from `source` when given. A name that cannot be looked up (no
/// descriptor for it either) is taken to be where the checks last connected, if they did.
pub async fn connect_using(address: &str, source: Option<IpAddr>, spare: Lent) -> Result<TcpStream, SpareError> {
    let Lent { socket, known } = spare;
    // An unbound socket's name is its family's any-address.
    let v4 = socket.local_addr().map_or(true, |a| a.is_ipv4());
    let found: Vec<SocketAddr> = match lookup_host(address).await {
        Ok(addrs) => addrs.collect(),
        Err(e) => vec![known.ok_or(SpareError::Local(e))?],
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
    socket.connect(addr).await.map_err(|e| if untried { SpareError::Local(e) } else { SpareError::Connect(e) })
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
    async fn a_spare_socket_goes_where_the_checks_last_went_when_the_name_cannot_be_looked_up() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let known = listener.local_addr().unwrap();
        // A port out of range: the lookup fails without asking a resolver.
        let spare = Lent { socket: TcpSocket::new_v4().unwrap(), known: Some(known) };
        let (client, accepted) = tokio::join!(connect_using("localhost:99999", None, spare), listener.accept());
        client.map_err(|e| format!("{e:?}")).unwrap();
        assert_eq!(accepted.unwrap().0.local_addr().unwrap(), known);
        // Never seen connecting: no verdict.
        let spare = Lent { socket: TcpSocket::new_v4().unwrap(), known: None };
        assert!(matches!(connect_using("localhost:99999", None, spare).await, Err(SpareError::Local(_))));
    }
}
