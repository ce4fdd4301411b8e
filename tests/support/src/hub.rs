//! The process harness of the hub's tests (docs/hub.md): a hub's and an app sidecar's config,
//! the Relay's credential as files, and the Python peers that send and check bulk mail
//! (bulk_send.py with smtplib, bulk_check.py with dkimpy, hub_probe.py with ssl).

use crate::{
    certs::{self, TestCa},
    relay::{self, Sidecar, dkim_key, run_ok},
    stack,
};
use serde_json::Value;
use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

/// The hub's credential and another Relay's, as files (what the operator's Secrets hold).
#[derive(Debug)]
pub struct Credentials {
    pub user: PathBuf,
    pub password: PathBuf,
}

/// Writes a user and password file named after `name` into `dir`.
pub fn credentials(dir: &Path, name: &str, user: &str, password: &str) -> Credentials {
    std::fs::create_dir_all(dir).expect("credentials dir");
    let (u, p) = (
        dir.join(format!("{name}-user")),
        dir.join(format!("{name}-password")),
    );
    std::fs::write(&u, format!("{user}\n")).expect("user file");
    std::fs::write(&p, password).expect("password file");
    Credentials { user: u, password: p }
}

/// The `domains:` list of both configs: example.com signed with `key`.
pub fn domains(key: &Path) -> String {
    format!(
        "  - domain: example.com\n    dkim:\n      selector: s1\n      algorithm: rsa-sha256\n      keyFile: {}",
        key.display()
    )
}

/// A hub: TLS from the first byte with `ca`'s server certificate, AUTH with `creds`, relaying
/// to `127.0.0.1:<smarthost>` with the same domain and key as its sidecars.
pub fn hub_config(smarthost: u16, ca: &TestCa, creds: &Credentials, key: &Path) -> String {
    format!(
        "apiVersion: mailroom.dev/v1alpha1
kind: SidecarConfig
relay: shop/outbound
hostname: hub.test
listen:
  address: 127.0.0.1:2465
  tls:
    certFile: {cert}
    keyFile: {key_file}
  auth:
    usernameFile: {user}
    passwordFile: {password}
{common}",
        cert = ca.cert.display(),
        key_file = ca.key.display(),
        user = creds.user.display(),
        password = creds.password.display(),
        common = common(smarthost, key),
    )
}

/// What a hub and its sidecars share: the sender domain and key, the spool under `{dir}`, the
/// route to `127.0.0.1:<smarthost>` and fast retries.
fn common(smarthost: u16, key: &Path) -> String {
    format!(
        "domains:
{domains}
spool:
  dir: {{dir}}/spool
delivery:
  smarthost:
    host: 127.0.0.1
    port: {smarthost}
    tls: none
    connectTimeoutSeconds: 2
    commandTimeoutSeconds: 10
retry:
  initialSeconds: 1
  multiplier: 1.5
  maxSeconds: 2
  maxAgeSeconds: 600
",
        domains = domains(key),
    )
}

/// An app pod's sidecar relaying to `127.0.0.1:<smarthost>`, handing off to the hub on
/// `localhost:<hub>` (the name in the hub's certificate).
pub fn app_config(
    smarthost: u16,
    hub: u16,
    ca: &TestCa,
    creds: &Credentials,
    key: &Path,
    extra: &str,
) -> String {
    format!(
        "apiVersion: mailroom.dev/v1alpha1
kind: SidecarConfig
relay: shop/outbound
hostname: app.test
{common}handoff:
  host: localhost
  port: {hub}
  caFile: {ca}
  usernameFile: {user}
  passwordFile: {password}
{extra}",
        common = common(smarthost, key),
        ca = ca.ca.display(),
        user = creds.user.display(),
        password = creds.password.display(),
    )
}

/// Sends `count` numbered messages through `smtp` on one connection (bulk_send.py) and asserts
/// each got `250`.
pub fn bulk_send(smtp: std::net::SocketAddr, count: usize) {
    bulk_send_on(smtp, count, 1);
}

/// As [`bulk_send`], over `connections` connections at once.
pub fn bulk_send_on(smtp: std::net::SocketAddr, count: usize, connections: usize) {
    let out = run_ok(
        Command::new(relay::python())
            .arg(relay::peer("bulk_send.py"))
            .args([smtp.ip().to_string(), smtp.port().to_string(), count.to_string()])
            .args(["app@example.com", "rcpt@example.net"])
            .arg(connections.to_string()),
        "bulk_send.py",
    );
    let acked: usize = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("count");
    assert_eq!(acked, count, "every message was acknowledged by the sidecar");
}

/// Checks the upstream's maildir with bulk_check.py (dkimpy): missing, duplicated, altered or
/// unverifiable messages, as JSON.
pub fn bulk_check(maildir: &Path, count: usize, txt: &str) -> Value {
    let out = run_ok(
        Command::new(relay::python())
            .arg(relay::peer("bulk_check.py"))
            .arg(maildir)
            .arg(count.to_string())
            .arg(txt),
        "bulk_check.py (needs dkimpy: make test sets up the venv)",
    );
    serde_json::from_slice(&out.stdout).expect("bulk_check.py JSON")
}

/// Runs one hub_probe.py scenario (`mode`) against `hub`; its replies as JSON.
pub fn probe(hub: &Sidecar, ca: &TestCa, mode: &str, login: Option<(&str, &str)>) -> Value {
    let mut cmd = Command::new(relay::python());
    cmd.arg(relay::peer("hub_probe.py"))
        .args(["localhost", &hub.smtp.port().to_string()])
        .arg(&ca.ca)
        .arg(mode);
    if let Some((user, password)) = login {
        cmd.args([user, password]);
    }
    let out = run_ok(&mut cmd, "hub_probe.py");
    serde_json::from_slice(&out.stdout).expect("hub_probe.py JSON")
}

/// Polls `f` every 50 ms until it holds, for up to `limit`; panics naming `what`.
pub fn within<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    stack::eventually(what, limit, || Ok(f())).unwrap_or_else(|e| panic!("{e:#}"))
}

/// The drain report line of a sidecar's log.
pub fn drain_line(log: &str) -> String {
    log.lines()
        .rfind(|l| l.contains("drain complete") || l.contains("drain ended"))
        .unwrap_or_else(|| panic!("no drain report in the log:\n{log}"))
        .to_owned()
}

#[derive(Debug)]
/// A test's directory, CA, credential and DKIM key.
pub struct Setup {
    pub dir: tempfile::TempDir,
    pub ca: TestCa,
    pub creds: Credentials,
    pub key: PathBuf,
    pub txt: String,
}

/// A fresh [`Setup`].
pub fn setup() -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = certs::test_ca(&dir.path().join("ca"));
    let creds = credentials(
        &dir.path().join("secret"),
        "hub",
        "shop-outbound",
        "correct horse battery",
    );
    let (key, txt) = dkim_key(dir.path(), "dkim", "rsa");
    std::fs::create_dir_all(dir.path().join("hub")).expect("hub dir");
    std::fs::create_dir_all(dir.path().join("app")).expect("app dir");
    Setup {
        dir,
        ca,
        creds,
        key,
        txt,
    }
}

/// Waits (up to `limit`) until `up` holds `count` messages, then checks them with bulk_check.py:
/// none missing, bytes intact, each with exactly the sidecar's one DKIM signature, verified.
/// Returns the check (for its `duplicates`).
pub fn all_arrived_intact(up: &crate::peers::Upstream, count: usize, txt: &str, limit: Duration) -> Value {
    within(limit, "every message at the upstream", || {
        let n = up.messages().expect("maildir").len();
        (n >= count).then_some(n)
    });
    let check = bulk_check(&up.maildir, count, txt);
    assert_eq!(check["missing"], 0, "nothing lost: {check}");
    assert_eq!(check["bad_body"], 0, "bytes intact: {check}");
    assert_eq!(check["dkim_fail"], 0, "the sidecar's signature verifies: {check}");
    assert_eq!(
        check["max_signatures"], 1,
        "signed once, never by the hub: {check}"
    );
    check
}
