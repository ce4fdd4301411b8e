//! The newcomer's first command, `make demo` (examples/demo.sh), keeps working: it renders the
//! examples offline with `mailroom-operator render`, runs the staging Relay's sidecar, sends a
//! message with curl, and shows it captured and DKIM-signed; dkimpy verifies the signature with
//! the DNS records the demo tells the user to publish, served by a real DNS server.

use std::process::Command;

use anyhow::{Context, Result, ensure};
use mailroom_test_support::{
    peers::{self, DnsServer},
    stack::{self, repo},
};

#[test]
fn make_demo_shows_a_captured_dkim_signed_message_and_its_metrics() -> Result<()> {
    let bin = stack::build_binaries()?;
    let out = Command::new("bash")
        .arg(repo().join("examples/demo.sh"))
        .env("MAILROOM_BIN", &bin)
        // Any free ports: the script reads the ones the sidecar got from its log.
        .env("SIDECAR_LISTEN_ADDR", "127.0.0.1:0")
        .env("SIDECAR_ADMIN_ADDR", "127.0.0.1:0")
        .env("SIDECAR_QUEUE_API_ADDR", "127.0.0.1:0")
        .output()
        .context("running examples/demo.sh (needs bash, curl and openssl)")?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(out.status.success(), "demo.sh failed:\n{text}");
    let work = text
        .lines()
        .find_map(|l| l.strip_prefix("demo files kept in "))
        .context("demo.sh names its directory")?;
    let work = std::path::PathBuf::from(work.trim());
    let result = check(&work, &text);
    std::fs::remove_dir_all(&work)?;
    result
}

fn check(work: &std::path::Path, text: &str) -> Result<()> {
    for want in [
        "wrote ",
        "DKIM-Signature:",
        "Subject: Hello from mailroom",
        "mailroom._domainkey.example.com. 300 IN TXT",
        "mailroom_sidecar_messages_delivered_total{",
        "mailroom_sidecar_dkim_signatures_total{",
    ] {
        ensure!(text.contains(want), "the demo output lacks {want:?}:\n{text}");
    }
    let capture = work.join("rendered/shop-staging/capture");
    let eml = std::fs::read_dir(&capture)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "eml"))
        .context("a captured message")?;
    let dir = tempfile::tempdir()?;
    let dns = DnsServer::start(dir.path())?;
    let zone = std::fs::read_to_string(work.join("rendered/example-com.dns.txt"))?;
    dns.serve(&zone.lines().map(String::from).collect::<Vec<_>>())?;
    assert_eq!(
        peers::dkim_verify_dns(&eml, dns.port)?,
        "d=example.com s=mailroom"
    );
    Ok(())
}
