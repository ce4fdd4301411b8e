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

#[test]
fn version_and_usage_errors_exit_as_documented() -> Result<()> {
    let bin = env!("CARGO_BIN_EXE_mailroom-operator");
    let version = Command::new(bin).arg("--version").output()?;
    ensure!(version.status.success());
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        format!("mailroom-operator {}", env!("CARGO_PKG_VERSION"))
    );
    let help = Command::new(bin).args(["render", "--help"]).output()?;
    ensure!(help.status.success());
    assert!(String::from_utf8_lossy(&help.stdout).contains("render -f DIR"));
    let bad_yaml = tempfile::tempdir()?;

    std::fs::write(
        bad_yaml.path().join("broken.yaml"),
        "kind: Relay\nspec: [unclosed\n",
    )?;
    let cases: [&[&str]; 5] = [
        &["render"],
        &["render", "-f"],
        &["no-such-command"],
        &["check", "--namespace", "mailroom-system"],
        &["render", "-f", bad_yaml.path().to_str().unwrap_or_default()],
    ];
    for args in cases {
        let out = Command::new(bin).args(args).output()?;
        // BSD EX_USAGE, as the sidecar: the input is wrong, not the program.
        assert_eq!(
            out.status.code(),
            Some(64),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

#[test]
fn render_refuses_a_field_the_crd_does_not_have() -> Result<()> {
    let dir = tempfile::tempdir()?;
    std::fs::write(
        dir.path().join("typo.yaml"),
        "apiVersion: mailroom.dev/v1alpha1\nkind: Relay\nmetadata: {name: typo, namespace: shop}\n\
         spec:\n  domains: [example.com]\n  delivery: {capture: {}}\n  listenPrt: 25\n",
    )?;
    let out = Command::new(env!("CARGO_BIN_EXE_mailroom-operator"))
        .args(["render", "-f"])
        .arg(dir.path())
        .arg("-o")
        .arg(dir.path().join("out"))
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("spec.listenPrt"), "the field is named: {stderr}");
    Ok(())
}
