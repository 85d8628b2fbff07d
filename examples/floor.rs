//! The floor for scripts/perf-bench: the best bare TCP forwarder measured on this kind of
//! machine (shared/REFERENCE.md): one current-thread tokio runtime per core, each accepting
//! on its own SO_REUSEPORT socket and copying with `copy_bidirectional`. No health checks,
//! no PostgreSQL awareness, no limits: what a forwarder costs and nothing more.
//!
//! usage: floor LISTEN_ADDR UPSTREAM_ADDR [THREADS]

use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpListener, TcpStream};

fn listener(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(1024)?;
    Ok(s.into())
}

async fn serve(socket: std::net::TcpListener, upstream: SocketAddr) {
    let socket = TcpListener::from_std(socket).expect("register the listener");
    loop {
        let Ok((mut client, _)) = socket.accept().await else { continue };
        tokio::spawn(async move {
            let _ = client.set_nodelay(true);
            if let Ok(mut server) = TcpStream::connect(upstream).await {
                let _ = server.set_nodelay(true);
                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
            }
        });
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: floor LISTEN_ADDR UPSTREAM_ADDR [THREADS]");
        std::process::exit(2);
    }
    let listen: SocketAddr = args[1].parse().expect("LISTEN_ADDR is ip:port");
    let upstream: SocketAddr = args[2].parse().expect("UPSTREAM_ADDR is ip:port");
    let threads = args
        .get(3)
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let socket = listener(listen).expect("bind LISTEN_ADDR");
            std::thread::spawn(move || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime")
                    .block_on(serve(socket, upstream));
            })
        })
        .collect();
    for w in workers {
        let _ = w.join();
    }
}
