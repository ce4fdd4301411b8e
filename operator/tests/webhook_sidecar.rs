//! The proof that injection works end to end: the webhook injects a pod through the real
//! apiserver; this test then does what a kubelet would (files from the ConfigMap and Secrets the
//! sidecar mounts, its command line and env) and runs the real `mailroom-sidecar` binary. Mail sent
//! to it on 127.0.0.1 reaches a TLS+AUTH upstream (aiosmtpd) DKIM-signed, and the signature
//! verifies (dkimpy) against the TXT value the MailDomain publishes.

mod common;

use std::{
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, ensure};
use common::{
    Env,
    sidecar::{
        PEERS, Upstream, collect, free_port, kubelet_files, log_text, secret, send, sidecar_binary,
        wait_listening,
    },
    webhook::{OPTED_IN_RESTRICTED, domain, pod, relay, start_injector},
};
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::{Api, api::PostParams};
use mailroom_test_support::testenv;

#[tokio::test]
async fn injected_sidecar_relays_mail_dkim_signed_with_the_files_a_kubelet_would_mount() -> Result<()> {
    let sidecar_bin = sidecar_binary()?;
    let tmp = tempfile::tempdir()?;
    let upstream = Upstream::start(tmp.path(), "mailer:s3cret")?;
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
        .create(&pp, &secret("upstream-ca", &[("ca.crt", &upstream.ca_pem)]))
        .await?;
    let listen = free_port()?;
    let spec = format!(
        "domains: [shop]\nlistenPort: {listen}\ndelivery:\n  smarthost: {{host: 127.0.0.1, port: {}, tls: starttls, \
         credentialsSecretRef: {{name: creds}}, caSecretRef: {{name: upstream-ca, key: ca.crt}}}}",
        upstream.port
    );
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
    let env_vars = kubelet_files(&env, &ns, &stored, sidecar, &root).await?;
    assert_eq!(
        env_vars.get("SIDECAR_DRAIN_SECONDS").map(String::as_str),
        Some("35")
    );
    let command = sidecar.command.clone().unwrap_or_default();
    ensure!(command == ["mailroom-sidecar"], "unexpected command {command:?}");
    let mut process = Command::new(&sidecar_bin)
        .args(&command[1..])
        .env_clear()
        .envs(&env_vars)
        .stderr(Stdio::piped())
        .spawn()
        .context("starting mailroom-sidecar")?;
    let log = collect(&mut process);
    wait_listening(listen, &mut process, &log)?;

    send(listen)?;
    let eml = upstream.wait_message(&log)?;
    let meta = std::fs::read_to_string(eml.with_extension("json"))?;
    assert!(
        meta.contains("\"tls\": true") && meta.contains("\"authenticated\": true"),
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

    Command::new("kill")
        .arg("-TERM")
        .arg(process.id().to_string())
        .status()?;
    let status = process.wait()?;
    assert_eq!(status.code(), Some(0), "log:\n{}", log_text(&log));
    assert!(log_text(&log).contains("drain complete"), "{}", log_text(&log));
    Ok(())
}
