//! The policy fetch (RFC 8461 3.3) against a TLS server on loopback that answers as scripted:
//! what counts as a complete policy, and what does not.

use std::{path::Path, sync::Arc};

use rustls::{
    ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
};
use tokio::{io::AsyncWriteExt, net::TcpListener};
use tokio_rustls::TlsAcceptor;

use super::*;
use crate::outbound::direct::mx::StaticResolver;

const POLICY: &str = "version: STSv1\nmode: enforce\nmx: mx.example.test\nmax_age: 86400\n";

/// How the scripted server ends its answer.
#[derive(Clone, Copy)]
enum End {
    /// TLS close_notify, then the TCP close.
    Clean,
    /// The TCP close alone (many real servers do this).
    Abrupt,
}

/// Serves one connection: reads the request head, writes `answer`, ends as `end`.
async fn serve_once(dir: &Path, answer: Vec<u8>, end: End) -> (u16, Arc<RootCertStore>) {
    let ca = mailroom_test_support::certs::test_ca_for(dir, "DNS:mta-sts.example.test");
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&ca.cert)
        .expect("cert")
        .collect::<Result<_, _>>()
        .expect("certs");
    let key = PrivateKeyDer::from_pem_file(&ca.key).expect("key");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("server config");
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(&ca.ca).expect("ca") {
        roots.add(c.expect("ca cert")).expect("root");
    }
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.expect("accept");
        let mut tls = acceptor.accept(tcp).await.expect("handshake");
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8; 1];
            if tokio::io::AsyncReadExt::read(&mut tls, &mut byte)
                .await
                .expect("read")
                == 0
            {
                return;
            }
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head);
        assert!(
            head.starts_with("GET /.well-known/mta-sts.txt HTTP/1.1\r\n"),
            "{head}"
        );
        assert!(
            head.to_ascii_lowercase()
                .contains("host: mta-sts.example.test\r\n"),
            "{head}"
        );
        tls.write_all(&answer).await.expect("write");
        tls.flush().await.expect("flush");
        match end {
            End::Clean => tls.shutdown().await.expect("close_notify"),
            // Drop the TCP stream under TLS: no close_notify.
            End::Abrupt => drop(tls.into_inner().0),
        }
    });
    (port, Arc::new(roots))
}

async fn fetch(answer: &str, end: End) -> Result<Option<Policy>, FetchError> {
    let dir = tempfile::tempdir().expect("dir");
    let (port, roots) = serve_once(dir.path(), answer.as_bytes().to_vec(), end).await;
    let resolver = StaticResolver::from_zone(
        "_mta-sts.example.test TXT \"v=STSv1; id=1\"\nmta-sts.example.test A 127.0.0.1",
    );
    Cache::new(roots, port, Duration::from_secs(10))
        .policy(&resolver, "example.test")
        .await
}

fn ok(body: &str, headers: &str) -> String {
    format!("HTTP/1.1 200 OK\r\n{headers}\r\n{body}")
}

#[tokio::test]
async fn a_policy_with_a_length_is_complete_even_without_close_notify() {
    let answer = ok(POLICY, &format!("Content-Length: {}\r\n", POLICY.len()));
    let p = fetch(&answer, End::Abrupt)
        .await
        .expect("fetched")
        .expect("policy");
    assert_eq!(
        (p.mode, p.mx.as_slice(), p.max_age),
        (Mode::Enforce, &["mx.example.test".to_string()][..], 86400)
    );
}

#[tokio::test]
async fn a_chunked_policy_is_read_to_its_last_chunk() {
    let (a, b) = POLICY.split_at(20);
    let body = format!("{:x}\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\n\r\n", a.len(), b.len());
    let answer = ok(&body, "Transfer-Encoding: chunked\r\n");
    let p = fetch(&answer, End::Abrupt)
        .await
        .expect("fetched")
        .expect("policy");
    assert_eq!(p.mx, ["mx.example.test"]);
}

#[tokio::test]
async fn a_body_ended_by_the_connection_needs_close_notify() {
    // HTTP/1.0 style: no length, the end of the connection ends the body.
    let answer = format!("HTTP/1.0 200 OK\r\n\r\n{POLICY}");
    let p = fetch(&answer, End::Clean)
        .await
        .expect("fetched")
        .expect("policy");
    assert_eq!(p.mx, ["mx.example.test"]);
    // Without close_notify the end could be an attacker's truncation (losing `mx` lines).
    let e = fetch(&answer, End::Abrupt)
        .await
        .expect_err("truncation not ruled out");
    assert!(e.contains("reading the policy"), "{e}");
}

#[tokio::test]
async fn only_200_counts_and_redirects_are_not_followed() {
    for status in ["404 Not Found", "301 Moved Permanently"] {
        let answer = format!(
            "HTTP/1.1 {status}\r\nLocation: https://elsewhere.example/\r\nContent-Length: {}\r\n\r\n{POLICY}",
            POLICY.len()
        );
        let e = fetch(&answer, End::Clean).await.expect_err(status);
        assert!(e.contains(&format!("answered HTTP {}", &status[..3])), "{e}");
    }
}

#[tokio::test]
async fn a_policy_over_64_kib_or_not_utf8_is_refused() {
    let big = format!("{POLICY}{}", "#".repeat(MAX_POLICY_BYTES));
    let answer = ok(&big, &format!("Content-Length: {}\r\n", big.len()));
    let e = fetch(&answer, End::Clean).await.expect_err("too big");
    assert!(e.contains("reading the policy"), "{e}");
    // "ÿþ" is four bytes of UTF-8; the first three are not.
    let answer = "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n\u{ff}\u{fe}";
    let e = fetch(answer, End::Clean).await.expect_err("not UTF-8");
    assert!(e.contains("not UTF-8"), "{e}");
}
