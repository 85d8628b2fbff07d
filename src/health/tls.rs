//! HTTPS for health checks: Patroni's REST API served with `restapi.certfile` (and often
//! `restapi.verify_client: required`), checked as HAProxy's `check-ssl verify required
//! ca-file … crt …` does. Also the probe's basic auth (`restapi.authentication`).
//!
//! One [`CheckTls`] is built per configuration generation and shared by every probe of the
//! nodes it applies to: its `rustls::ClientConfig` holds the session cache, so a probe
//! resumes the previous probe's TLS session instead of paying a full handshake (Patroni
//! closes every connection, so keep-alive cannot spare it).

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use tokio_rustls::TlsConnector;

/// How much of the REST API's certificate is checked (HAProxy's `verify required` is `Full`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verify {
    /// The chain up to `ca`, and the host name (or `server_name`).
    Full,
    /// The chain up to `ca` only: for certificates issued without the node's address.
    Ca,
    /// Nothing: encryption against a passive listener only. Warned about at start.
    None,
}

impl Verify {
    pub fn as_str(self) -> &'static str {
        match self {
            Verify::Full => "full",
            Verify::Ca => "ca",
            Verify::None => "none",
        }
    }
}

/// The `check_tls` settings of one node, with the files' contents (so a reload sees a
/// renewed certificate as a change) and the connector built from them.
#[derive(Clone)]
pub struct CheckTls {
    pub verify: Verify,
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// The name the certificate must carry under `verify = "full"`; default: the host of
    /// the node's REST address.
    pub server_name: Option<String>,
    pems: Vec<Option<Vec<u8>>>,
    connector: TlsConnector,
}

impl PartialEq for CheckTls {
    fn eq(&self, o: &Self) -> bool {
        self.key_fields() == o.key_fields() && self.pems == o.pems
    }
}
impl Eq for CheckTls {}

impl Hash for CheckTls {
    fn hash<H: Hasher>(&self, h: &mut H) {
        self.key_fields().hash(h);
    }
}

impl std::fmt::Debug for CheckTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckTls")
            .field("verify", &self.verify)
            .field("ca", &self.ca)
            .field("cert", &self.cert)
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl CheckTls {
    /// Reads the files and builds the client configuration; the error names what is wrong.
    pub fn load(
        verify: Verify,
        ca: Option<PathBuf>,
        cert: Option<PathBuf>,
        key: Option<PathBuf>,
        server_name: Option<String>,
    ) -> Result<CheckTls, String> {
        if verify != Verify::None && ca.is_none() {
            return Err(format!(
                "verify = \"{}\" needs `ca`, the CA that issued the REST API's certificate",
                verify.as_str()
            ));
        }
        if cert.is_some() != key.is_some() {
            return Err("a client certificate needs both `cert` and `key`".into());
        }
        if let Some(name) = &server_name {
            ServerName::try_from(name.clone()).map_err(|e| format!("server_name {name:?}: {e}"))?;
        }
        let read = |p: &Option<PathBuf>| {
            p.as_deref().map(|p| std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()))).transpose()
        };
        let pems = vec![read(&ca)?, read(&cert)?, read(&key)?];
        let config = client_config(verify, &ca, &cert, &key, &pems)?;
        let connector = TlsConnector::from(Arc::new(config));
        Ok(CheckTls { verify, ca, cert, key, server_name, pems, connector })
    }

    fn key_fields(&self) -> (Verify, &Option<PathBuf>, &Option<PathBuf>, &Option<PathBuf>, &Option<String>) {
        (self.verify, &self.ca, &self.cert, &self.key, &self.server_name)
    }

    pub fn connector(&self) -> &TlsConnector {
        &self.connector
    }

    /// The name presented to the server (SNI for host names) and checked under `Full`.
    pub fn name_for(&self, target: &str) -> Result<ServerName<'static>, String> {
        match &self.server_name {
            Some(n) => ServerName::try_from(n.clone()).map_err(|e| e.to_string()),
            None => crate::tls::server_name(target).map_err(|e| e.to_string()),
        }
    }
}

fn client_config(
    verify: Verify,
    ca: &Option<PathBuf>,
    cert: &Option<PathBuf>,
    key: &Option<PathBuf>,
    pems: &[Option<Vec<u8>>],
) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let verifier: Arc<dyn ServerCertVerifier> = match verify {
        Verify::None => Arc::new(crate::tls::NoVerify),
        Verify::Full | Verify::Ca => {
            let ca_path = ca.as_deref().unwrap_or(Path::new("ca"));
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_slice_iter(pems[0].as_deref().unwrap_or_default()) {
                let c = c.map_err(|e| format!("{}: not a PEM certificate: {e}", ca_path.display()))?;
                roots.add(c).map_err(|e| format!("{}: {e}", ca_path.display()))?;
            }
            if roots.is_empty() {
                return Err(format!("{}: no CA certificate found", ca_path.display()));
            }
            let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| format!("{}: {e}", ca_path.display()))?;
            match verify {
                Verify::Ca => Arc::new(ChainOnly(webpki)),
                _ => webpki,
            }
        }
    };
    let builder = builder.dangerous().with_custom_certificate_verifier(verifier);
    match (cert, key, &pems[1], &pems[2]) {
        (Some(cert), Some(key), Some(cert_pem), Some(key_pem)) => {
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
                .collect::<Result<_, _>>()
                .map_err(|e| format!("{}: not a PEM certificate: {e}", cert.display()))?;
            if chain.is_empty() {
                return Err(format!("{}: no certificate found", cert.display()));
            }
            let key_der = PrivateKeyDer::from_pem_slice(key_pem)
                .map_err(|e| format!("{}: not a PEM private key: {e}", key.display()))?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| format!("{} and {}: {e}", cert.display(), key.display()))
        }
        _ => Ok(builder.with_no_client_auth()),
    }
}

/// `verify = "ca"`: the chain must lead to the CA, whatever names the certificate carries.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.0.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(m, c, d)
    }

    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(m, c, d)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// Why a TLS exchange with a REST API failed, in an operator's words, when `e` carries a
/// TLS error (a handshake, or an alert the server sent after it, as TLS 1.3 servers do
/// when they refuse the client's certificate).
pub fn tls_failure(e: &std::io::Error) -> Option<String> {
    let tls = e.get_ref()?.downcast_ref::<rustls::Error>()?;
    use rustls::AlertDescription as A;
    Some(match tls {
        rustls::Error::InvalidCertificate(c) => match c {
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                format!("SSL handshake failure: certificate expired ({tls})")
            }
            CertificateError::UnknownIssuer => format!("SSL handshake failure: untrusted certificate ({tls})"),
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                format!("SSL handshake failure: name mismatch ({tls})")
            }
            _ => format!("SSL handshake failure: {tls}"),
        },
        rustls::Error::AlertReceived(
            a @ (A::CertificateRequired | A::BadCertificate | A::UnknownCA | A::HandshakeFailure | A::AccessDenied),
        ) => {
            format!(
                "SSL handshake failure: the server sent {a:?}: it wants a client certificate it trusts (`cert`/`key`)"
            )
        }
        other => format!("SSL handshake failure: {other}"),
    })
}

/// The `notAfter` of a DER certificate, in seconds since the Unix epoch.
pub fn not_after(der: &[u8]) -> Option<i64> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    Some(cert.validity().not_after.timestamp())
}

/// Basic auth for probes (Patroni's `restapi.authentication`). The password is read from a
/// file or the environment when the configuration is loaded, and never printed.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct CheckAuth {
    pub user: String,
    /// The ready `Authorization` header value (`Basic …`).
    header: String,
}

impl std::fmt::Debug for CheckAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckAuth").field("user", &self.user).finish_non_exhaustive()
    }
}

impl CheckAuth {
    pub fn new(user: String, password: &str) -> CheckAuth {
        use base64::Engine;
        let header =
            format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}")));
        CheckAuth { user, header }
    }

    pub fn header(&self) -> &str {
        &self.header
    }
}
