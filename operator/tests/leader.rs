//! Leader election with two real operator processes on one Lease: only the holder reconciles,
//! killing it hands over to the other, and SIGTERM releases the Lease.

mod common;

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use common::{install_crds, ready, wait_for};
use k8s_openapi::api::coordination::v1::Lease;
use kube::{Api, api::PostParams};
use mailroom_operator::crd::{MailDomain, MailDomainSpec};
use mailroom_test_support::ControlPlane;

struct Operator {
    child: Child,
    identity: &'static str,
    admin_port: u16,
}

impl Operator {
    fn spawn(cp: &ControlPlane, ns: &str, identity: &'static str) -> Result<Self> {
        let admin_port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let log = std::fs::File::create(cp.logs_dir().join(format!("operator-{identity}.log")))?;
        let child = Command::new(env!("CARGO_BIN_EXE_mailroom-operator"))
            .env("KUBECONFIG", cp.kubeconfig_path())
            .env("OPERATOR_NAMESPACE", ns)
            .env("OPERATOR_IDENTITY", identity)
            .env("OPERATOR_LEASE_DURATION_SECONDS", "3")
            .env("OPERATOR_ADMIN_ADDR", format!("127.0.0.1:{admin_port}"))
            // Every replica serves the webhook, leader or not; two on one host need two ports.
            .env("OPERATOR_WEBHOOK_ADDR", "127.0.0.1:0")
            .env("OPERATOR_DNS_NAMESERVERS", "127.0.0.1:9")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        Ok(Self {
            child,
            identity,
            admin_port,
        })
    }

    /// Reconciles this process has run, from its /metrics.
    fn reconciles(&self) -> Result<u64> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.admin_port))?;
        stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
        let mut body = String::new();
        stream.read_to_string(&mut body)?;
        Ok(body
            .lines()
            .filter(|l| l.starts_with("mailroom_operator_reconcile_runs_total"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum())
    }

    fn signal(&self, signal: &str) -> Result<()> {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()?;
        anyhow::ensure!(status.success(), "kill {signal} failed");
        Ok(())
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn holder(api: &Api<Lease>, want: impl Fn(Option<&str>) -> bool) -> Result<Option<String>> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let h = api
            .get_opt("mailroom-operator")
            .await?
            .and_then(|l| l.spec?.holder_identity);
        if want(h.as_deref()) {
            return Ok(h);
        }
        if Instant::now() > deadline {
            bail!("lease holder is {h:?} after 60 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn create_ready(api: &Api<MailDomain>, name: &str) -> Result<()> {
    let spec: MailDomainSpec = serde_yaml::from_str(&format!(
        "domain: {name}.example.com\ndkim: {{algorithm: ed25519}}"
    ))?;
    api.create(&PostParams::default(), &MailDomain::new(name, spec))
        .await?;
    wait_for(api, name, |md| {
        md.status
            .as_ref()
            .is_some_and(|s| ready(&s.conditions, "Ready").0 == "True")
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn only_the_leader_reconciles_and_killing_it_hands_over() -> Result<()> {
    let cp = ControlPlane::start().await?;
    let admin = cp.client().await?;
    install_crds(&admin).await?;
    let ns = cp.new_namespace().await?;
    let leases: Api<Lease> = Api::namespaced(admin.clone(), &ns);
    let domains: Api<MailDomain> = Api::all(admin);
    let mut ops = vec![
        Operator::spawn(&cp, &ns, "op-a")?,
        Operator::spawn(&cp, &ns, "op-b")?,
    ];

    let first = holder(&leases, |h| h.is_some()).await?.context("holder")?;
    create_ready(&domains, "one").await?;
    let (leader, follower) = if ops[0].identity == first { (0, 1) } else { (1, 0) };
    assert!(ops[leader].reconciles()? > 0, "the leader reconciles");
    assert_eq!(ops[follower].reconciles()?, 0, "the follower does not");

    // SIGKILL: no release; the follower takes over once the lease expires unrenewed.
    ops[leader].child.kill()?;
    ops[leader].child.wait()?;
    let second = ops[follower].identity;
    holder(&leases, |h| h == Some(second)).await?;
    create_ready(&domains, "two").await?;
    assert!(ops[follower].reconciles()? > 0, "the new leader reconciles");

    // SIGTERM: the leader stops its controllers and releases the lease at once.
    ops[follower].signal("-TERM")?;
    holder(&leases, |h| h.is_none()).await?;
    let status = ops[follower].child.wait()?;
    assert!(status.success(), "graceful exit, got {status}");
    ops.clear();
    Ok(())
}
