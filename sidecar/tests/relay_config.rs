//! Start-up, `--check-config` and the environment agree: a config the sidecar would refuse to run
//! is never reported valid, and an environment override cannot bypass validation (it would make
//! the relay listen off loopback without `listen.allowNonLoopback`: an open relay).

use mailroom_test_support::relay::{reserve_port, sidecar_bin};
use std::{
    net::TcpStream,
    path::Path,
    process::{Command, Output},
    time::{Duration, Instant},
};

fn write_config(dir: &Path, key: &Path, password: &Path) -> std::path::PathBuf {
    let path = dir.join("sidecar.yaml");
    let text = format!(
        "apiVersion: mailroom.dev/v1alpha1\nkind: SidecarConfig\ndomains:\n  - domain: example.com\n    dkim:\n      \
         selector: s1\n      algorithm: ed25519-sha256\n      keyFile: {key}\nspool:\n  dir: {spool}\n\
         delivery:\n  smarthost:\n    host: 127.0.0.1\n    port: 2\n    tls: none\n    auth:\n      \
         usernameFile: {user}\n      passwordFile: {password}\n",
        key = key.display(),
        spool = dir.join("spool").display(),
        user = dir.join("username").display(),
        password = password.display(),
    );
    std::fs::write(dir.join("username"), "app").expect("username file");
    std::fs::write(&path, text).expect("config");
    path
}

/// Runs the sidecar with `args` and `env`; it must exit by itself within 20 s.
fn run(args: &[&std::ffi::OsStr], env: &[(&str, String)]) -> Output {
    let mut child = Command::new(sidecar_bin())
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        // Every run here exits before it serves anything; port 0 if it did.
        .env("SIDECAR_ADMIN_ADDR", "127.0.0.1:0")
        .env("SIDECAR_QUEUE_API_ADDR", "127.0.0.1:0")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start mailroom-sidecar");
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "the sidecar did not exit by itself:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().expect("output")
}

fn ed25519_key(path: &Path) {
    let status = Command::new("openssl")
        .args(["genpkey", "-algorithm", "ED25519", "-out"])
        .arg(path)
        .status()
        .expect("the openssl CLI is required (apt-get install openssl)");
    assert!(status.success());
}

#[test]
fn check_config_reports_what_start_up_would_refuse() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (key, password) = (dir.path().join("dkim.pem"), dir.path().join("password"));
    let config = write_config(dir.path(), &key, &password);
    let check = run(&["--check-config".as_ref(), config.as_os_str()], &[]);
    let start = run(&["--config".as_ref(), config.as_os_str()], &[]);
    for (what, out) in [("--check-config", &check), ("start-up", &start)] {
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{what}: {err}");
        for field in ["domains[0].dkim.keyFile", "delivery.smarthost.auth.passwordFile"] {
            assert!(
                err.contains(&format!("  - {field}: cannot read")),
                "{what}: {field} missing from:\n{err}"
            );
        }
    }
    // With the files in place both agree it is valid.
    ed25519_key(&key);
    std::fs::write(&password, "secret").expect("password file");
    let check = run(&["--check-config".as_ref(), config.as_os_str()], &[]);
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    // The document alone never looks at the files (rendered configs name pod paths).
    std::fs::remove_file(&key).expect("remove key");
    let document = run(&["--check-document".as_ref(), config.as_os_str()], &[]);
    assert!(
        document.status.success(),
        "{}",
        String::from_utf8_lossy(&document.stderr)
    );
}

#[test]
fn an_environment_override_cannot_open_the_relay() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (key, password) = (dir.path().join("dkim.pem"), dir.path().join("password"));
    ed25519_key(&key);
    std::fs::write(&password, "secret").expect("password file");
    let config = write_config(dir.path(), &key, &password);
    // Held for the test, so that nothing else listens there either.
    let reserved = reserve_port();
    let port = reserved.port();
    let env = [("SIDECAR_LISTEN_ADDR", format!("0.0.0.0:{port}"))];
    let start = run(&["--config".as_ref(), config.as_os_str()], &env);
    let check = run(&["--check-config".as_ref(), config.as_os_str()], &env);
    for (what, out) in [("start-up", &start), ("--check-config", &check)] {
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{what}: {err}");
        assert!(
            err.contains("  - listen.address: 0.0.0.0:") && err.contains("SIDECAR_LISTEN_ADDR"),
            "{what} must name the field and the variable:\n{err}"
        );
    }
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "nothing may listen on the overridden address"
    );
    // A loopback override is fine.
    let env = [("SIDECAR_LISTEN_ADDR", format!("127.0.0.1:{port}"))];
    let check = run(&["--check-config".as_ref(), config.as_os_str()], &env);
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
}

/// The command line: `--version` and `--help` exit 0; an unknown argument, a missing value or
/// two modes at once exit 64 (EX_USAGE) with a message naming what is wrong, as one JSON object
/// when JSON logs are asked for.
#[test]
fn command_line_errors_exit_64_and_name_the_argument() {
    let version = run(&["--version".as_ref()], &[]);
    assert!(version.status.success());
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        format!("mailroom-sidecar {}", env!("CARGO_PKG_VERSION"))
    );
    let help = run(&["--help".as_ref()], &[]);
    assert!(help.status.success());
    assert!(String::from_utf8_lossy(&help.stdout).contains("--check-document <FILE>"));
    for (args, want) in [
        (&["--bogus"][..], "'--bogus'"),
        (&["--check-config"][..], "--check-config <FILE>"),
        (
            &["--config", "a", "--check-config", "b"][..],
            "cannot be used with",
        ),
    ] {
        let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_ref()).collect();
        let out = run(&args, &[]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: want {want:?} in {err}");
    }
    let out = run(&["--bogus".as_ref()], &[("SIDECAR_LOG_FORMAT", "json".into())]);
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    let line: serde_json::Value = serde_json::from_str(err.trim()).expect("one JSON object");
    assert_eq!(line["level"], "ERROR");
    assert!(
        line["fields"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("--bogus")),
        "{line}"
    );
}
