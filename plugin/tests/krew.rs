//! The plugin installs the way kubectl plugins do: krew's own `validate-krew-manifest` accepts the
//! manifest `plugin/krew/package.sh` writes, and `krew install` installs the plugin from it and
//! its archive (checking the sha256), into a krew root of the test's own.

use mailroom_test_support::{relay::run_ok as run, testenv};
use std::{path::Path, process::Command};

fn package(out: &Path) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/krew/package.sh");
    run(
        Command::new("bash")
            .arg(script)
            .arg(format!("v{}", env!("CARGO_PKG_VERSION")))
            .arg(out)
            .arg(env!("CARGO_BIN_EXE_kubectl-mailroom")),
        "package.sh",
    );
}

fn krew(root: &Path) -> Command {
    let bin = testenv::bin("krew").unwrap_or_else(|e| panic!("{e:#}"));
    let mut cmd = Command::new(bin);
    cmd.env("KREW_ROOT", root).env("HOME", root);
    cmd
}

#[test]
fn krew_validates_the_manifest_and_installs_the_plugin_from_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dist = dir.path().join("dist");
    package(&dist);
    let manifest = dist.join("mailroom.yaml");
    let validate = testenv::bin("validate-krew-manifest").unwrap_or_else(|e| panic!("{e:#}"));
    run(
        Command::new(validate)
            .arg("-manifest")
            .arg(&manifest)
            .arg("-skip-install"),
        "validate-krew-manifest",
    );

    let root = dir.path().join("krew");
    run(
        krew(&root)
            .arg("install")
            .arg(format!("--manifest={}", manifest.display()))
            .arg(format!(
                "--archive={}",
                dist.join("kubectl-mailroom_linux_amd64.tar.gz").display()
            )),
        "krew install",
    );
    let installed = root.join("bin/kubectl-mailroom");
    let version = run(Command::new(&installed).arg("--version"), "--version");
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        format!("kubectl mailroom {}", env!("CARGO_PKG_VERSION"))
    );
    let help = run(Command::new(&installed).arg("--help"), "--help");
    let help = String::from_utf8_lossy(&help.stdout);
    for command in ["queue", "flush", "status", "dns", "test-send"] {
        assert!(help.contains(command), "{command} in --help:\n{help}");
    }
}

/// The manifest's sha256 is the archive's: krew refuses an archive that differs by one byte.
#[test]
fn krew_refuses_an_archive_that_is_not_the_one_the_manifest_names() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dist = dir.path().join("dist");
    package(&dist);
    let archive = dist.join("kubectl-mailroom_linux_amd64.tar.gz");
    let mut bytes = std::fs::read(&archive).expect("archive");
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&archive, bytes).expect("write");
    let out = krew(&dir.path().join("krew"))
        .arg("install")
        .arg(format!("--manifest={}", dist.join("mailroom.yaml").display()))
        .arg(format!("--archive={}", archive.display()))
        .output()
        .expect("krew");
    assert!(!out.status.success(), "krew installed a tampered archive");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("checksum does not match"), "{err}");
}
