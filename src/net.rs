//! Outgoing connections, made in one place so that every connection pgfront opens to a
//! node (PostgreSQL sessions, cancels, REST probes) leaves from the configured `source`
//! address, as HAProxy's `source` does. An operator (or a fault test) can then tell the
//! balancer's traffic from replication and Patroni's own calls, e.g. to firewall it.

use std::io;
use std::net::{IpAddr, SocketAddr};

use tokio::net::{lookup_host, TcpSocket, TcpStream};

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
}
