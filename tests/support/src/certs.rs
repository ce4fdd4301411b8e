//! Certificates for the SMTP and HTTPS test peers, made with the openssl CLI (independent of the
//! rustls and rcgen code under test): a CA with a server certificate, chains for DANE-TA, and the
//! TLSA `x 1 1` digest of a certificate.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

/// Runs `openssl` with `args` in `dir`; fails the test with a clear message if it is missing.
pub fn openssl(dir: &Path, args: &[&str]) -> Vec<u8> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run the openssl CLI (install openssl; make test needs it): {e}"));
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A CA and a server certificate for 127.0.0.1 and localhost, signed by it.
#[derive(Debug)]
pub struct TestCa {
    /// CA certificate (PEM): what the sidecar trusts.
    pub ca: PathBuf,
    /// Server certificate (PEM).
    pub cert: PathBuf,
    /// Server key (PEM).
    pub key: PathBuf,
}

/// Makes a fresh CA and server certificate in `dir` (EC P-256 keys: fast to generate).
pub fn test_ca(dir: &Path) -> TestCa {
    test_ca_for(dir, "IP:127.0.0.1,DNS:localhost")
}

/// As [`test_ca`], with the server certificate's subjectAltName set to `san`
/// (`DNS:mx.example.test,...`).
pub fn test_ca_for(dir: &Path, san: &str) -> TestCa {
    std::fs::create_dir_all(dir).expect("ca dir");
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
    let mut ca = vec![
        "req",
        "-x509",
        "-days",
        "2",
        "-subj",
        "/CN=mailroom test CA",
        "-keyout",
        "ca.key",
    ];
    ca.extend(ec);
    ca.extend(["-out", "ca.pem"]);
    openssl(dir, &ca);
    let mut csr = vec![
        "req",
        "-subj",
        "/CN=localhost",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ];
    csr.extend(ec);
    openssl(dir, &csr);
    std::fs::write(
        dir.join("ext.cnf"),
        format!(
            "subjectAltName={san}\nbasicConstraints=CA:FALSE\n\
             keyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n"
        ),
    )
    .expect("ext file");
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
            "-out",
            "server.pem",
        ],
    );
    TestCa {
        ca: dir.join("ca.pem"),
        cert: dir.join("server.pem"),
        key: dir.join("server.key"),
    }
}

impl TestCa {
    /// The server certificate followed by the CA certificate, as a server presents them when
    /// DANE-TA needs the trust anchor in the chain (RFC 7671 5.2.2).
    pub fn chain(&self) -> PathBuf {
        let path = self.cert.with_file_name("chain.pem");
        let mut pem = std::fs::read(&self.cert).expect("server cert");
        pem.extend(std::fs::read(&self.ca).expect("ca cert"));
        std::fs::write(&path, pem).expect("chain file");
        path
    }
}

/// The TLSA `x 1 1` association data of a PEM certificate: SHA-256 of its SubjectPublicKeyInfo
/// in hex, computed by the openssl CLI (independent of the sidecar's own DER parsing).
pub fn spki_sha256(cert: &Path) -> String {
    let dir = cert.parent().expect("cert dir");
    let name = cert
        .file_name()
        .expect("file name")
        .to_string_lossy()
        .into_owned();
    openssl(
        dir,
        &[
            "x509",
            "-in",
            &name,
            "-noout",
            "-pubkey",
            "-out",
            &format!("{name}.pub"),
        ],
    );
    openssl(
        dir,
        &[
            "pkey",
            "-pubin",
            "-in",
            &format!("{name}.pub"),
            "-outform",
            "DER",
            "-out",
            &format!("{name}.spki"),
        ],
    );
    let out = openssl(dir, &["dgst", "-sha256", "-r", &format!("{name}.spki")]);
    String::from_utf8_lossy(&out)
        .split_whitespace()
        .next()
        .expect("digest")
        .to_owned()
}
