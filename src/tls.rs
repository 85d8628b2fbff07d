//! TLS termination for listeners that must read what TLS clients send (their startup
//! parameters), and TLS towards PostgreSQL on their behalf. Listeners without a `tls`
//! table pass TLS through end to end and never see inside it.

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// ALPN PostgreSQL 17 clients offer, and require back for direct TLS.
const ALPN: &[u8] = b"postgresql";

/// How pgfront talks to PostgreSQL for a TLS-terminating listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerTls {
    /// Plain text to the server (a trusted network).
    Disable,
    /// Encrypted, the server's certificate not checked (libpq's sslmode=require).
    Require,
    /// Encrypted, the certificate checked against `server_ca` and the node's address.
    VerifyFull,
}

/// A listener's `tls` table, as read: paths and the files' contents (so a reload sees a
/// renewed certificate as a change), and the acceptor and connector built from them.
#[derive(Debug, Clone)]
pub struct TlsSettings {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub server: ServerTls,
    pub server_ca: Option<PathBuf>,
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    ca_pem: Option<Vec<u8>>,
    pub context: Option<TlsContext>,
}

impl PartialEq for TlsSettings {
    fn eq(&self, o: &Self) -> bool {
        (&self.cert, &self.key, self.server, &self.server_ca, &self.cert_pem, &self.key_pem, &self.ca_pem)
            == (&o.cert, &o.key, o.server, &o.server_ca, &o.cert_pem, &o.key_pem, &o.ca_pem)
    }
}

/// Ready-to-use TLS for one listener.
#[derive(Clone)]
pub struct TlsContext {
    pub acceptor: TlsAcceptor,
    /// `None` when the server side is plain text.
    pub connector: Option<TlsConnector>,
}

impl std::fmt::Debug for TlsContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsContext").field("server_tls", &self.connector.is_some()).finish()
    }
}

impl TlsSettings {
    /// Reads the files and checks they make a working configuration.
    pub fn load(
        cert: PathBuf,
        key: PathBuf,
        server: ServerTls,
        server_ca: Option<PathBuf>,
    ) -> Result<TlsSettings, String> {
        let read = |p: &Path| std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()));
        let mut s = TlsSettings {
            context: None,
            cert_pem: read(&cert)?,
            key_pem: read(&key)?,
            ca_pem: server_ca.as_deref().map(read).transpose()?,
            cert,
            key,
            server,
            server_ca,
        };
        if server == ServerTls::VerifyFull && s.ca_pem.is_none() {
            return Err("server = \"verify-full\" needs server_ca".into());
        }
        s.context = Some(s.build()?);
        Ok(s)
    }

    /// The acceptor and connector (built when the settings were loaded).
    pub fn context(&self) -> &TlsContext {
        self.context.as_ref().expect("TlsSettings are only made by load(), which builds the context")
    }

    fn build(&self) -> Result<TlsContext, String> {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&self.cert_pem)
            .collect::<Result<_, _>>()
            .map_err(|e| format!("{}: not a PEM certificate: {e}", self.cert.display()))?;
        if certs.is_empty() {
            return Err(format!("{}: no certificate found", self.cert.display()));
        }
        let key = PrivateKeyDer::from_pem_slice(&self.key_pem)
            .map_err(|e| format!("{}: not a PEM private key: {e}", self.key.display()))?;
        let mut server = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| format!("{} and {}: {e}", self.cert.display(), self.key.display()))?;
        server.alpn_protocols = vec![ALPN.to_vec()];
        let connector = match self.server {
            ServerTls::Disable => None,
            ServerTls::Require => Some(client_config_without_verification()),
            ServerTls::VerifyFull => {
                let mut roots = rustls::RootCertStore::empty();
                let pem = self.ca_pem.as_deref().unwrap_or_default();
                for c in CertificateDer::pem_slice_iter(pem) {
                    let c = c.map_err(|e| format!("server_ca: not a PEM certificate: {e}"))?;
                    roots.add(c).map_err(|e| format!("server_ca: {e}"))?;
                }
                Some(rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth())
            }
        };
        Ok(TlsContext {
            acceptor: TlsAcceptor::from(Arc::new(server)),
            connector: connector.map(|c| TlsConnector::from(Arc::new(c))),
        })
    }
}

/// The name a server's certificate must carry: the host of its `host:port` address.
pub fn server_name(address: &str) -> io::Result<ServerName<'static>> {
    let host = address.rsplit_once(':').map_or(address, |(h, _)| h).trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_owned()).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
}

/// A client configuration that encrypts without checking the peer's certificate
/// (libpq's sslmode=require), for pgfront's side towards PostgreSQL and for tests.
pub fn client_config_without_verification() -> rustls::ClientConfig {
    rustls::ClientConfig::builder()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(NoVerify))
        .with_no_client_auth()
}

/// sslmode=require towards PostgreSQL: encryption without checking who answers.
#[derive(Debug)]
pub(crate) struct NoVerify;

impl rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        let algs = rustls::crypto::ring::default_provider().signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(m, c, d, &algs)
    }

    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        let algs = rustls::crypto::ring::default_provider().signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(m, c, d, &algs)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::ring::default_provider().signature_verification_algorithms.supported_schemes()
    }
}

/// A stream that first yields bytes already read from it (the eight bytes pgfront read
/// to classify a direct-TLS ClientHello), then the rest.
#[derive(Debug)]
pub struct Rewind<S> {
    prefix: Vec<u8>,
    at: usize,
    inner: S,
}

impl<S> Rewind<S> {
    pub fn new(prefix: Vec<u8>, inner: S) -> Rewind<S> {
        Rewind { prefix, at: 0, inner }
    }

    pub fn inner(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if self.at < self.prefix.len() {
            let n = (self.prefix.len() - self.at).min(buf.remaining());
            let at = self.at;
            buf.put_slice(&self.prefix[at..at + n]);
            self.at += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn rewind_yields_the_prefix_first() {
        let (mut a, b) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut a, b"world").await.unwrap();
        drop(a);
        let mut r = Rewind::new(b"hello ".to_vec(), b);
        let mut out = String::new();
        r.read_to_string(&mut out).await.unwrap();
        assert_eq!(out, "hello world");
    }

    #[test]
    fn server_names_from_addresses() {
        assert!(server_name("127.0.0.11:5432").is_ok());
        assert!(server_name("db1.example:5432").is_ok());
        assert!(server_name("[::1]:5432").is_ok());
    }
}
