//! The Patroni HTTP probe against REST endpoints that answer, refuse, hang, lie and reset.

mod support;

use std::time::Duration;

use pgfront::config::{CheckSpec, CheckTiming};
use pgfront::health::{CheckCode, HttpProbe, Probe};
use support::{Answer, FakeRest};

fn spec(method: &str, path: &str) -> CheckSpec {
    CheckSpec {
        method: method.into(),
        path: path.into(),
        expect: 200,
        timing: CheckTiming {
            inter: Duration::from_secs(1),
            fastinter: Duration::from_secs(1),
            downinter: Duration::from_secs(1),
            fall: 3,
            rise: 2,
            connect_timeout: Duration::from_millis(500),
            timeout: Duration::from_millis(300),
        },
        endpoint: None,
        source: None,
        tls: None,
        auth: None,
    }
}

async fn probe(answer: Answer, method: &str) -> pgfront::health::ProbeResult {
    let rest = FakeRest::start().await;
    rest.set("/master", answer);
    let s = spec(method, "/master");
    // Bounded whatever the endpoint does: the outer timeout is a liveness guard only.
    tokio::time::timeout(Duration::from_secs(10), HttpProbe.probe(&rest.addr.to_string(), &s))
        .await
        .expect("probe finished")
}

#[tokio::test]
async fn patroni_200_passes() {
    let r = probe(Answer::Status(200), "OPTIONS").await;
    assert_eq!((r.code, r.status), (CheckCode::L7Ok, Some(200)));
    assert!(r.passed());
    assert!(r.summary().starts_with("L7OK/200 in "), "{}", r.summary());
}

#[tokio::test]
async fn patroni_503_fails_with_l7sts() {
    let r = probe(Answer::Status(503), "OPTIONS").await;
    assert_eq!((r.code, r.status), (CheckCode::L7Sts, Some(503)));
    assert!(!r.passed());
}

#[tokio::test]
async fn a_hung_endpoint_times_out() {
    let r = probe(Answer::Hang, "OPTIONS").await;
    assert_eq!(r.code, CheckCode::L7Tout);
}

#[tokio::test]
async fn garbage_is_l7rsp() {
    assert_eq!(probe(Answer::Garbage, "OPTIONS").await.code, CheckCode::L7Rsp);
}

#[tokio::test]
async fn an_endless_header_is_cut_off() {
    let r = probe(Answer::EndlessHeader, "OPTIONS").await;
    assert_eq!(r.code, CheckCode::L7Rsp, "{r:?}");
    assert!(r.detail.contains("headers exceed"), "{r:?}");
}

#[tokio::test]
async fn a_reset_is_a_failed_check() {
    let r = probe(Answer::Reset, "OPTIONS").await;
    assert_eq!(r.code, CheckCode::L7Rsp, "{r:?}");
}

#[tokio::test]
async fn a_huge_body_is_refused_not_buffered() {
    let r = probe(Answer::HugeBody, "GET").await;
    assert_eq!(r.code, CheckCode::L7Rsp, "{r:?}");
    assert!(r.detail.contains("body exceeds"), "{r:?}");
}

#[tokio::test]
async fn a_closed_port_is_l4con() {
    let socket = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    drop(socket);
    let r = HttpProbe.probe(&addr.to_string(), &spec("OPTIONS", "/master")).await;
    assert_eq!(r.code, CheckCode::L4Con);
}

/// A GET probe of an endpoint that answers `raw` and closes.
async fn raw(raw: &'static [u8]) -> pgfront::health::ProbeResult {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let socket = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (mut s, _) = socket.accept().await.unwrap();
        let mut request = Vec::new();
        let mut b = [0u8; 512];
        while !request.windows(4).any(|w| w == b"\r\n\r\n") {
            match s.read(&mut b).await {
                Ok(0) | Err(_) => return,
                Ok(n) => request.extend_from_slice(&b[..n]),
            }
        }
        let _ = s.write_all(raw).await;
    });
    let r = tokio::time::timeout(Duration::from_secs(10), HttpProbe.probe(&addr.to_string(), &spec("GET", "/primary")))
        .await
        .expect("probe finished");
    server.await.unwrap();
    r
}

#[tokio::test]
async fn a_body_is_framed_one_way_or_the_answer_fails() {
    // Before: a body cut short of its Content-Length, lengths that disagree or do not
    // parse, and a chunked body were all read up to the close as if framed by it.
    let failed = [
        (
            &b"HTTP/1.0 200 OK\r\nContent-Length: 100\r\n\r\n{\"state\": \"running\"}"[..],
            "closed after 20 of 100 body bytes",
        ),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\nContent-Length: 20\r\n\r\n{}", "Content-Length given twice"),
        (b"HTTP/1.0 200 OK\r\nContent-Length: +2\r\n\r\n{}", "is not a length"),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 99999999999999999999999\r\n\r\n{}", "is not a length"),
        (b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n", "chunked"),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 70000\r\n\r\n{}", "body exceeds"),
    ];
    for (answer, why) in failed {
        let r = raw(answer).await;
        assert_eq!(r.code, CheckCode::L7Rsp, "{}: {r:?}", String::from_utf8_lossy(answer));
        assert!(r.detail.contains(why), "{}: {r:?}", String::from_utf8_lossy(answer));
    }
    // Well framed: the declared length (said twice alike), or the close.
    let passed = [
        (&b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n{}and more"[..], &b"{}"[..]),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\ncontent-length: 2\r\n\r\n{}", b"{}"),
        (b"HTTP/1.0 200 OK\r\n\r\n{\"a\": 1}", b"{\"a\": 1}"),
    ];
    for (answer, body) in passed {
        let r = raw(answer).await;
        assert_eq!((r.code, r.body.as_deref()), (CheckCode::L7Ok, Some(body)), "{}", String::from_utf8_lossy(answer));
    }
}
