//! The health probe over HTTPS against fake REST APIs with real TLS: each verify mode, an
//! expired, untrusted or misnamed certificate, a server that requires a client certificate,
//! session resumption, and basic auth. (The real Patroni with a TLS REST API is in the
//! end-to-end tests.)

mod support;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pgfront::config::{CheckSpec, CheckTiming};
use pgfront::health::{CheckAuth, CheckCode, CheckTls, HttpProbe, Probe, ProbeResult, Verify};
use rcgen::{
    date_time_ymd, BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A directory of PEM files, removed on drop.
struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> Dir {
        let p = std::env::temp_dir().join(format!("pgfront-probe-tls-{}-{tag}", std::process::id()));
        std::fs::create_dir_all(&p).unwrap();
        Dir(p)
    }
    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A test CA that issues server and client certificates.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate and its key, as PEM.
struct Issued {
    cert: String,
    key: String,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, name);
        Ca { issuer: CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap() }
    }

    fn pem(&self) -> String {
        self.issuer.as_ref().pem()
    }

    fn issue(&self, names: &[&str], eku: ExtendedKeyUsagePurpose, not_after: (i32, u8, u8)) -> Issued {
        let mut p = CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        p.extended_key_usages = vec![eku];
        p.not_before = date_time_ymd(2020, 1, 1);
        p.not_after = date_time_ymd(not_after.0, not_after.1, not_after.2);
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &self.issuer).unwrap();
        Issued { cert: cert.pem(), key: key.serialize_pem() }
    }

    fn server(&self, names: &[&str]) -> Issued {
        self.issue(names, ExtendedKeyUsagePurpose::ServerAuth, (2040, 1, 1))
    }
}

/// What the fake REST API demands and has seen.
#[derive(Default)]
struct Seen {
    full: AtomicU64,
    resumed: AtomicU64,
}

/// A REST API over TLS that answers like Patroni: HTTP/1.0, a JSON body, and a close
/// without TLS's close_notify (as Python's ssl servers do).
struct TlsRest {
    addr: String,
    seen: Arc<Seen>,
}

impl TlsRest {
    async fn start(server: &Issued, client_ca: Option<&Ca>, basic: Option<&str>) -> TlsRest {
        let chain = vec![CertificateDer::from_pem_slice(server.cert.as_bytes()).unwrap()];
        let key = PrivateKeyDer::from_pem_slice(server.key.as_bytes()).unwrap();
        let builder = rustls::ServerConfig::builder();
        let builder = match client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                roots.add(CertificateDer::from_pem_slice(ca.pem().as_bytes()).unwrap()).unwrap();
                let v = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots)).build().unwrap();
                builder.with_client_cert_verifier(v)
            }
        };
        let config = Arc::new(builder.with_single_cert(chain, key).unwrap());
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let seen = Arc::new(Seen::default());
        let want = basic.map(|b| format!("authorization: {b}"));
        let s = Arc::clone(&seen);
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else { return };
                let (acceptor, s, want) = (acceptor.clone(), Arc::clone(&s), want.clone());
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                    let counter = match tls.get_ref().1.handshake_kind() {
                        Some(rustls::HandshakeKind::Resumed) => &s.resumed,
                        _ => &s.full,
                    };
                    counter.fetch_add(1, Ordering::SeqCst);
                    let mut req = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !req.ends_with(b"\r\n\r\n") {
                        match tls.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => req.extend_from_slice(&buf[..n]),
                        }
                    }
                    let head = String::from_utf8_lossy(&req).to_lowercase();
                    let answer = match &want {
                        Some(w) if !head.contains(&w.to_lowercase()) => "HTTP/1.0 401 Unauthorized\r\n\r\n".to_owned(),
                        _ => "HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n{\"role\": \"primary\"}"
                            .to_owned(),
                    };
                    let _ = tls.write_all(answer.as_bytes()).await;
                    let _ = tls.flush().await;
                    // Dropped without shutdown: no close_notify, like Patroni.
                });
            }
        });
        TlsRest { addr, seen }
    }
}

fn spec(method: &str, tls: Option<CheckTls>, auth: Option<CheckAuth>) -> CheckSpec {
    CheckSpec {
        method: method.into(),
        path: "/primary".into(),
        expect: 200,
        timing: CheckTiming {
            inter: Duration::from_secs(1),
            fastinter: Duration::from_secs(1),
            downinter: Duration::from_secs(1),
            fall: 3,
            rise: 2,
            connect_timeout: Duration::from_secs(2),
            timeout: Duration::from_secs(2),
        },
        endpoint: None,
        source: None,
        tls: tls.map(Arc::new),
        auth: auth.map(Arc::new),
    }
}

async fn probe(addr: &str, spec: &CheckSpec) -> ProbeResult {
    // The outer timeout is a liveness guard only: the probe bounds itself.
    tokio::time::timeout(Duration::from_secs(10), HttpProbe.probe(addr, spec)).await.expect("probe finished")
}

struct Files {
    _dir: Dir,
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

/// The CA's file and a client certificate of the same CA.
fn files(tag: &str, ca: &Ca) -> Files {
    let dir = Dir::new(tag);
    let client = ca.issue(&["pgfront-probe"], ExtendedKeyUsagePurpose::ClientAuth, (2040, 1, 1));
    Files {
        ca: dir.write("ca.crt", &ca.pem()),
        cert: dir.write("client.crt", &client.cert),
        key: dir.write("client.key", &client.key),
        _dir: dir,
    }
}

fn tls(verify: Verify, ca: Option<&Path>, client: Option<(&Path, &Path)>, name: Option<&str>) -> CheckTls {
    CheckTls::load(
        verify,
        ca.map(Path::to_owned),
        client.map(|c| c.0.to_owned()),
        client.map(|c| c.1.to_owned()),
        name.map(str::to_owned),
    )
    .unwrap()
}

#[tokio::test]
async fn verify_full_passes_reads_the_body_and_the_expiry() {
    let ca = Ca::new("lab");
    let f = files("full", &ca);
    let rest = TlsRest::start(&ca.server(&["127.0.0.1"]), None, None).await;
    let r = probe(&rest.addr, &spec("GET", Some(tls(Verify::Full, Some(&f.ca), None, None)), None)).await;
    assert_eq!((r.code, r.status), (CheckCode::L7Ok, Some(200)), "{r:?}");
    // The body ends at the close, which carries no close_notify.
    assert_eq!(r.body.as_deref(), Some(&b"{\"role\": \"primary\"}"[..]));
    assert_eq!(r.cert_not_after, Some(2208988800), "2040-01-01T00:00:00Z");
}

#[tokio::test]
async fn the_second_probe_resumes_the_tls_session() {
    let ca = Ca::new("lab");
    let f = files("resume", &ca);
    let rest = TlsRest::start(&ca.server(&["127.0.0.1"]), Some(&ca), None).await;
    let shared = spec("OPTIONS", Some(tls(Verify::Full, Some(&f.ca), Some((&f.cert, &f.key)), None)), None);
    for _ in 0..3 {
        assert_eq!(probe(&rest.addr, &shared).await.code, CheckCode::L7Ok);
    }
    assert_eq!((rest.seen.full.load(Ordering::SeqCst), rest.seen.resumed.load(Ordering::SeqCst)), (1, 2));
    // The control: settings loaded anew (a new session cache) pay a full handshake.
    let fresh = spec("OPTIONS", Some(tls(Verify::Full, Some(&f.ca), Some((&f.cert, &f.key)), None)), None);
    assert_eq!(probe(&rest.addr, &fresh).await.code, CheckCode::L7Ok);
    assert_eq!(rest.seen.full.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_name_mismatch_fails_full_but_passes_ca_and_server_name() {
    let ca = Ca::new("lab");
    let f = files("name", &ca);
    let rest = TlsRest::start(&ca.server(&["patroni.example"]), None, None).await;
    let r = probe(&rest.addr, &spec("OPTIONS", Some(tls(Verify::Full, Some(&f.ca), None, None)), None)).await;
    assert_eq!(r.code, CheckCode::L6Rsp, "{r:?}");
    assert!(r.detail.contains("name mismatch"), "{}", r.detail);
    assert!(r.summary().starts_with("L6RSP in "), "{}", r.summary());
    let r = probe(&rest.addr, &spec("OPTIONS", Some(tls(Verify::Ca, Some(&f.ca), None, None)), None)).await;
    assert_eq!(r.code, CheckCode::L7Ok, "verify = ca checks the chain only: {r:?}");
    let named = tls(Verify::Full, Some(&f.ca), None, Some("patroni.example"));
    assert_eq!(probe(&rest.addr, &spec("OPTIONS", Some(named), None)).await.code, CheckCode::L7Ok);
}

#[tokio::test]
async fn an_untrusted_certificate_fails_full_and_ca_and_passes_none() {
    let (ca, other) = (Ca::new("lab"), Ca::new("someone else"));
    let f = files("untrusted", &ca);
    let rest = TlsRest::start(&other.server(&["127.0.0.1"]), None, None).await;
    for verify in [Verify::Full, Verify::Ca] {
        let r = probe(&rest.addr, &spec("OPTIONS", Some(tls(verify, Some(&f.ca), None, None)), None)).await;
        assert_eq!(r.code, CheckCode::L6Rsp, "{verify:?}: {r:?}");
        assert!(r.detail.contains("untrusted certificate"), "{}", r.detail);
    }
    let r = probe(&rest.addr, &spec("OPTIONS", Some(tls(Verify::None, None, None, None)), None)).await;
    assert_eq!(r.code, CheckCode::L7Ok, "{r:?}");
}

#[tokio::test]
async fn an_expired_certificate_fails() {
    let ca = Ca::new("lab");
    let f = files("expired", &ca);
    let old = ca.issue(&["127.0.0.1"], ExtendedKeyUsagePurpose::ServerAuth, (2021, 1, 1));
    let rest = TlsRest::start(&old, None, None).await;
    let r = probe(&rest.addr, &spec("OPTIONS", Some(tls(Verify::Full, Some(&f.ca), None, None)), None)).await;
    assert_eq!(r.code, CheckCode::L6Rsp, "{r:?}");
    assert!(r.detail.contains("certificate expired"), "{}", r.detail);
}

#[tokio::test]
async fn a_server_that_requires_a_client_certificate_refuses_a_probe_without_one() {
    let ca = Ca::new("lab");
    let f = files("client", &ca);
    let rest = TlsRest::start(&ca.server(&["127.0.0.1"]), Some(&ca), None).await;
    let r = probe(&rest.addr, &spec("GET", Some(tls(Verify::Full, Some(&f.ca), None, None)), None)).await;
    assert_eq!(r.code, CheckCode::L6Rsp, "{r:?}");
    assert!(r.detail.contains("client certificate"), "{}", r.detail);
    let with = tls(Verify::Full, Some(&f.ca), Some((&f.cert, &f.key)), None);
    assert_eq!(probe(&rest.addr, &spec("GET", Some(with), None)).await.code, CheckCode::L7Ok);
}

#[tokio::test]
async fn basic_auth_is_sent_and_a_refusal_says_so() {
    let ca = Ca::new("lab");
    let f = files("auth", &ca);
    let good = CheckAuth::new("patroni".into(), "s3cret:with colon");
    let header = good.header().to_owned();
    let rest = TlsRest::start(&ca.server(&["127.0.0.1"]), None, Some(&header)).await;
    let t = || Some(tls(Verify::Full, Some(&f.ca), None, None));
    let r = probe(&rest.addr, &spec("OPTIONS", t(), None)).await;
    assert_eq!((r.code, r.status), (CheckCode::L7Sts, Some(401)), "{r:?}");
    assert!(r.detail.contains("wants credentials"), "{}", r.detail);
    let r = probe(&rest.addr, &spec("OPTIONS", t(), Some(CheckAuth::new("patroni".into(), "wrong")))).await;
    assert_eq!(r.status, Some(401));
    assert!(r.detail.contains("refused user \"patroni\""), "{}", r.detail);
    assert!(!r.detail.contains("wrong"), "the password is never shown: {}", r.detail);
    assert_eq!(probe(&rest.addr, &spec("OPTIONS", t(), Some(good.clone()))).await.code, CheckCode::L7Ok);
    assert!(!format!("{good:?}").contains("s3cret"), "{good:?}");
}

#[tokio::test]
async fn a_server_that_never_answers_the_handshake_is_l6tout() {
    let ca = Ca::new("lab");
    let f = files("silent", &ca);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let mut s = spec("OPTIONS", Some(tls(Verify::Full, Some(&f.ca), None, None)), None);
    s.timing.timeout = Duration::from_millis(300);
    let r = probe(&addr, &s).await;
    assert_eq!(r.code, CheckCode::L6Tout, "{r:?}");
    hold.abort();
}

#[test]
fn settings_that_cannot_work_are_refused() {
    let ca = Ca::new("lab");
    let f = files("settings", &ca);
    let e = CheckTls::load(Verify::Full, None, None, None, None).unwrap_err();
    assert!(e.contains("needs `ca`"), "{e}");
    let e = CheckTls::load(Verify::Full, Some(f.ca.clone()), Some(f.cert.clone()), None, None).unwrap_err();
    assert!(e.contains("both `cert` and `key`"), "{e}");
    let e = CheckTls::load(Verify::Ca, Some(f.ca.with_file_name("missing.crt")), None, None, None).unwrap_err();
    assert!(e.contains("missing.crt"), "{e}");
    let e = CheckTls::load(Verify::Full, Some(f.key.clone()), None, None, None).unwrap_err();
    assert!(e.contains("client.key"), "a key is not a CA: {e}");
}

mod config {
    use super::*;
    use pgfront::config::Config;

    const BASE: &str = r#"
[defaults]
check_tls = { ca = "ca.crt", cert = "client.crt", key = "client.key" }
check_auth = { user = "patroni", password_env = "PGFRONT_TEST_REST_PASSWORD" }

[[node]]
name = "n1"
address = "127.0.0.11:5432"

[[node]]
name = "n2"
address = "127.0.0.12:5432"
check_tls = { verify = "ca", server_name = "n2.example" }

[[listener]]
name = "primary"
bind = "127.0.0.1:0"
check = { path = "/primary" }
"#;

    fn parse(f: &Files, text: &str) -> Result<Config, pgfront::config::ConfigError> {
        Config::parse(&f.ca.with_file_name("pgfront.toml"), text)
    }

    #[test]
    fn node_tables_lie_over_defaults_key_by_key_and_paths_are_relative_to_the_file() {
        let ca = Ca::new("lab");
        let f = files("config", &ca);
        std::env::set_var("PGFRONT_TEST_REST_PASSWORD", "pw");
        let c = parse(&f, BASE).unwrap();
        let (n1, n2) = (c.nodes[0].check_tls.as_ref().unwrap(), c.nodes[1].check_tls.as_ref().unwrap());
        assert_eq!((n1.verify, n1.ca.as_deref(), n1.cert.as_deref()), (Verify::Full, Some(&*f.ca), Some(&*f.cert)));
        assert_eq!(
            (n2.verify, n2.server_name.as_deref(), n2.key.as_deref()),
            (Verify::Ca, Some("n2.example"), Some(&*f.key))
        );
        assert_eq!(c.nodes[1].check_auth.as_ref().unwrap().user, "patroni");
        assert!(c.warnings().is_empty(), "{:?}", c.warnings());
        let none = BASE.replace("verify = \"ca\"", "verify = \"none\"");
        let w = parse(&f, &none).unwrap().warnings();
        assert!(w.iter().any(|w| w.contains("node \"n2\"") && w.contains("not checked")), "{w:?}");
    }

    #[test]
    fn bad_tables_name_the_file_line_and_key() {
        let ca = Ca::new("lab");
        let f = files("config-bad", &ca);
        std::env::set_var("PGFRONT_TEST_REST_PASSWORD", "pw");
        let cases = [
            (BASE.replace("verify = \"ca\"", "verify = \"sometimes\""), "check_tls.verify", "unknown verify mode"),
            (BASE.replace("ca = \"ca.crt\"", "ca = \"nope.crt\""), "check_tls", "nope.crt"),
            (BASE.replace("PGFRONT_TEST_REST_PASSWORD", "PGFRONT_TEST_UNSET_VARIABLE"), "check_auth", "is not set"),
            (
                BASE.replace(
                    "check = { path = \"/primary\" }",
                    "check = { path = \"/primary\" }\ncheck_tls = { verify = \"none\" }",
                ),
                "listener.check_tls",
                "belong to [defaults] or a [[node]]",
            ),
        ];
        for (text, key, what) in cases {
            let e = parse(&f, &text).unwrap_err().to_string();
            assert!(e.contains("pgfront.toml:") && e.contains(key) && e.contains(what), "{e}");
        }
    }

    #[test]
    fn a_password_file_is_read_without_its_newline() {
        let ca = Ca::new("lab");
        let f = files("config-pwfile", &ca);
        let pw = f.ca.with_file_name("rest.pass");
        std::fs::write(&pw, "pw\n").unwrap();
        let text = BASE.replace("password_env = \"PGFRONT_TEST_REST_PASSWORD\"", "password_file = \"rest.pass\"");
        let c = parse(&f, &text).unwrap();
        assert_eq!(c.nodes[0].check_auth.as_deref(), Some(&CheckAuth::new("patroni".into(), "pw")));
    }
}

/// A renewed CA file is read again on reload: the checks that failed on the old one pass.
#[tokio::test]
async fn a_reload_rereads_the_certificates() {
    let (old, new) = (Ca::new("old"), Ca::new("renewed"));
    let f = files("reload", &old);
    let rest = TlsRest::start(&new.server(&["127.0.0.1"]), None, None).await;
    let backend = support::Backend::start("node1").await;
    let text = format!(
        r#"
[global]
check_mode = "http"
hard_stop_after = "5s"

[defaults]
inter = "50ms"
fall = 2
rise = 1
timeout_check = "2s"
timeout_connect = "2s"
check_tls = {{ ca = "ca.crt" }}

[[node]]
name = "node1"
address = "{pg}"
check_address = "{rest}"

[[listener]]
name = "primary"
bind = "127.0.0.1:0"
check = {{ method = "OPTIONS", path = "/master" }}
"#,
        pg = backend.addr,
        rest = rest.addr,
    );
    let path = f.ca.with_file_name("pgfront.toml");
    let parse = || pgfront::Config::parse(&path, &text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let bound = pgfront::Bound::bind(&parse()).unwrap();
    let pg = pgfront::app::start(parse(), bound);
    let server = |pg: &pgfront::Pgfront| Arc::clone(&pg.shared().runtime().listener("primary").unwrap().servers[0]);
    support::eventually(Duration::from_secs(10), "the check fails on the old CA", || {
        server(&pg).check.report().last.is_some_and(|r| r.code == CheckCode::L6Rsp)
    })
    .await;
    assert!(!server(&pg).is_up());
    std::fs::write(&f.ca, new.pem()).unwrap();
    pg.reload(parse()).unwrap();
    support::eventually(Duration::from_secs(10), "the renewed CA is used", || server(&pg).is_up()).await;
    pg.shutdown(Duration::from_secs(5)).await;
}
