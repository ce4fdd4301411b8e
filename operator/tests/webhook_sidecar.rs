//! The proof that injection works end to end: the webhook injects a pod through the real
//! apiserver; this test then does what a kubelet would (files from the ConfigMap and Secrets the
//! sidecar mounts, its command line and env) and runs the real `mailroom-sidecar` binary. Mail sent
//! to it on 127.0.0.1 reaches a TLS+AUTH upstream (aiosmtpd) DKIM-signed, and the signature
//! verifies (dkimpy) against the TXT value the MailDomain publishes.

use mailroom_test_support::operator as common;

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, ensure};
use common::{
    Env, secret,
    webhook::{OPTED_IN_RESTRICTED, domain, pod, relay, start_injector},
};
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::{Api, api::PostParams};
use mailroom_test_support::{kubelet::PodContainer, peers::Upstream, stack::Proc, testenv};

const PEERS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/peers");
const MESSAGE: &str = "From: app@shop.example.com\r\nTo: someone@example.net\r\nSubject: injected\r\n\
                       Message-ID: <1@shop.example.com>\r\n\r\nhello from an injected pod\r\n";

#[tokio::test]
async fn injected_sidecar_relays_mail_dkim_signed_with_the_files_a_kubelet_would_mount() -> Result<()> {
    let bin = sidecar_bin_dir()?;
    let tmp = tempfile::tempdir()?;
    let mut upstream = Upstream::starttls_with_auth(tmp.path(), "mailer", "s3cret")?;
    let env = Env::start(&[("OPERATOR_DNS_NAMESERVERS", "127.0.0.1:9")]).await?;
    let ns = env.cp.new_namespace_with_labels(OPTED_IN_RESTRICTED).await?;
    let allowed = format!(
        "domain: shop.example.com\ndkim: {{algorithm: ed25519}}\nallowedNamespaces: {{names: [{ns}]}}"
    );
    let md = domain(&env, "shop", &allowed).await?;
    let secrets: Api<Secret> = Api::namespaced(env.admin.clone(), &ns);
    let pp = PostParams::default();
    secrets
        .create(
            &pp,
            &secret("creds", &[("username", "mailer"), ("password", "s3cret")]),
        )
        .await?;
    secrets
        .create(
            &pp,
            &secret(
                "upstream-ca",
                &[("ca.crt", upstream.ca_pem.as_deref().unwrap_or_default())],
            ),
        )
        .await?;
    // The port inside the pod; the process below gets one of its own on this machine.
    let listen = 2525;
    let spec = common::starttls_relay_spec(listen, upstream.port);
    relay(&env, &ns, "outbound", &spec, "Reconciled").await?;
    let _injector = start_injector(&env, &[], |_| {}).await?;

    let mut app = pod("app", Some("outbound"), false)?;
    app.spec
        .as_mut()
        .context("spec")?
        .termination_grace_period_seconds = Some(40);
    let pods: Api<Pod> = Api::namespaced(env.admin.clone(), &ns);
    pods.create(&pp, &app).await?;
    let stored = pods.get("app").await?;
    let spec = stored.spec.clone().context("spec")?;
    let sidecar = spec
        .init_containers
        .iter()
        .flatten()
        .find(|c| c.name == "mailroom-sidecar")
        .context("sidecar")?;
    let app_env = |k: &str| {
        spec.containers[0]
            .env
            .iter()
            .flatten()
            .find(|e| e.name == k)
            .and_then(|e| e.value.clone())
    };
    assert_eq!(app_env("SMTP_PORT"), Some(listen.to_string()));

    let root = tmp.path().join("pod");
    let mut container = PodContainer::materialize(&env.admin, &stored, "mailroom-sidecar", &root).await?;
    assert_eq!(
        container.env.get("SIDECAR_DRAIN_SECONDS").map(String::as_str),
        Some("35")
    );
    let command = sidecar.command.clone().unwrap_or_default();
    ensure!(command == ["mailroom-sidecar"], "unexpected command {command:?}");
    assert_eq!(
        container.env.get("SIDECAR_LISTEN_ADDR").map(String::as_str),
        Some(format!("127.0.0.1:{listen}").as_str()),
        "the sidecar listens where the app sends"
    );
    // A real pod has its own network namespace; here the sidecar takes free loopback ports
    // (port 0) and reports them.
    for var in [
        "SIDECAR_LISTEN_ADDR",
        "SIDECAR_ADMIN_ADDR",
        "SIDECAR_QUEUE_API_ADDR",
    ] {
        container.env.insert(var.into(), "127.0.0.1:0".into());
    }
    let mut process = Proc::spawn("sidecar", &mut container.command(&bin)?, tmp.path())?;
    let (smtp, _admin) = process.sidecar_addrs()?;

    send(smtp.port())?;
    let eml = upstream.wait_messages(1, &mut process)?.remove(0);
    let text = std::fs::read_to_string(&eml)?;
    ensure!(
        text.contains("DKIM-Signature:") && text.contains("d=shop.example.com"),
        "unsigned:\n{text}"
    );
    let meta = Upstream::envelope(&eml)?;
    assert_eq!(
        (&meta["tls"], &meta["authenticated"]),
        (&true.into(), &true.into()),
        "{meta}"
    );
    let records = md.status.map(|s| s.dns_records).unwrap_or_default();
    let txt = records
        .iter()
        .find(|r| r.name == "mailroom._domainkey.shop.example.com")
        .context("DKIM record")?;
    let verify = Command::new(testenv::python()?)
        .arg(Path::new(PEERS).join("dkim_verify.py"))
        .arg(&eml)
        .arg(txt.value.concat())
        .output()?;
    assert!(
        verify.status.success(),
        "dkim_verify: {}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );

    let status = process.terminate()?;
    assert_eq!(status.code(), Some(0), "{}", process.log());
    assert!(process.log().contains("drain complete"), "{}", process.log());
    Ok(())
}

/// Sends [`MESSAGE`] with Python's smtplib (a client we did not write).
fn send(port: u16) -> Result<()> {
    let script = "import smtplib, sys\n\
                  with smtplib.SMTP('127.0.0.1', int(sys.argv[1])) as s:\n\
                  \x20   s.sendmail('app@shop.example.com', ['someone@example.net'], sys.stdin.buffer.read())\n";
    let mut child = Command::new(testenv::python()?)
        .args(["-c", script, &port.to_string()])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    std::io::Write::write_all(&mut child.stdin.take().context("stdin")?, MESSAGE.as_bytes())?;
    let out = child.wait_with_output()?;
    ensure!(
        out.status.success(),
        "smtplib: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// `target/debug`, where `mailroom-sidecar` is built (the image's `PATH` in this test).
fn sidecar_bin_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().and_then(Path::parent).context("target directory")?;
    ensure!(
        dir.join("mailroom-sidecar").is_file(),
        "{} not found: build it with `cargo build -p mailroom-sidecar` (make test does)",
        dir.join("mailroom-sidecar").display()
    );
    Ok(dir.to_path_buf())
}
