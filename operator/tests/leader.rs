//! Leader election with two real operator processes on one Lease: only the holder reconciles,
//! killing it hands over to the other, and SIGTERM releases the Lease.

use mailroom_test_support::operator as common;

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use common::{install_crds, process::OperatorProcess as Operator, ready, wait_for};
use k8s_openapi::api::coordination::v1::Lease;
use kube::{Api, api::PostParams};
use mailroom_operator::crd::{MailDomain, MailDomainSpec};
use mailroom_test_support::ControlPlane;

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
    let spec: MailDomainSpec = serde_yaml_ng::from_str(&format!(
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
