//! `mailroom-operator render -f examples` works without a cluster: the sidecar accepts the config,
//! and a second run reuses the generated key.

use std::{path::Path, process::Command};

use anyhow::{Result, ensure};
use mailroom_config::Config;

#[test]
fn render_examples_offline_and_reuse_keys() -> Result<()> {
    let out = tempfile::tempdir()?;
    let examples = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples");
    let run = || {
        Command::new(env!("CARGO_BIN_EXE_mailroom-operator"))
            .args(["render", "-f", examples, "-o"])
            .arg(out.path())
            .output()
    };
    let first = run()?;
    ensure!(
        first.status.success(),
        "render failed: {}",
        String::from_utf8_lossy(&first.stderr)
    );
    let config_path = out.path().join("shop-outbound/sidecar.yaml");
    let config = Config::load(&config_path).map_err(|e| anyhow::anyhow!("{e}"))?;
    assert_eq!(config.relay, "shop/outbound");
    let key_file = config.domains[0]
        .dkim
        .as_ref()
        .map(|d| d.key_file.clone())
        .unwrap_or_default();
    assert!(key_file.is_file(), "{}", key_file.display());
    let key = std::fs::read_to_string(&key_file)?;
    let dns = std::fs::read_to_string(out.path().join("example-com.dns.txt"))?;
    assert!(
        dns.contains("mailroom._domainkey.example.com. 300 IN TXT \"v=DKIM1; k=rsa; p="),
        "{dns}"
    );

    let second = run()?;
    ensure!(second.status.success(), "second render failed");
    assert_eq!(std::fs::read_to_string(&key_file)?, key, "the key is reused");
    assert!(Path::new(&config_path).is_file());
    Ok(())
}
