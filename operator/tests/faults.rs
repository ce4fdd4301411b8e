//! The operator under faults against a real control plane: SIGKILL at random points while Relays
//! are created, edited and deleted; etcd and kube-apiserver crashing mid-reconcile; another field
//! manager overwriting the operator's ConfigMap; rapid spec edits. Each test ends in the same
//! check: every Relay Ready for its current generation, with exactly one ConfigMap and one DKIM
//! Secret, owned by it, holding its current spec, and no child without its Relay.

use mailroom_test_support::operator as common;

use std::{
    collections::BTreeMap,
    path::Path,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context as _, Result, bail};
use common::{install_crds, process::OperatorProcess, ready, wait_for};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
};
use mailroom_operator::crd::{MailDomain, MailDomainSpec, Relay, RelaySpec};
use mailroom_test_support::{Component, ControlPlane};

const RELAY_LABEL: &str = "mailroom.dev/relay";

/// Proves crash safety of reconciliation: the operator is SIGKILLed and restarted at random
/// points while 24 Relays are created, some edited and some deleted. It converges: every Relay
/// is Ready for its latest generation with one ConfigMap and one Secret holding its latest spec,
/// and the deleted Relays' children are garbage-collected.
#[tokio::test]
async fn operator_killed_at_random_points_converges_without_duplicate_or_orphaned_children() -> Result<()> {
    let c = Cluster::start().await?;
    let mut op = OperatorProcess::spawn(&c.cp, &c.op_ns, "op")?;
    let mut rng = Rng::seeded();
    eprintln!(
        "kill points from seed {} (MAILROOM_FAULT_SEED to repeat)",
        rng.seed
    );
    let mut want = BTreeMap::new();
    let mut kills = 0;
    for i in 0..24u32 {
        let name = format!("r{i}");
        c.create(&name, i + 1).await?;
        want.insert(name, i + 1);
        if i % 5 == 4 {
            // Edit an earlier Relay that still exists (r7 and r15 are deleted on the way): its
            // generation moves on while the operator may be down.
            let newest = format!("r{i}");
            let live: Vec<String> = want.keys().filter(|n| **n != newest).cloned().collect();
            let edited = live[rng.below(live.len() as u32) as usize].clone();
            c.edit(&edited, 100 + i).await?;
            want.insert(edited, 100 + i);
        }
        if i == 9 || i == 17 {
            let gone = format!("r{}", i - 2);
            c.relays.delete(&gone, &DeleteParams::default()).await?;
            want.remove(&gone);
        }
        if rng.below(3) == 0 {
            tokio::time::sleep(Duration::from_millis(rng.below(400).into())).await;
            op.kill9()?;
            kills += 1;
            op = OperatorProcess::spawn(&c.cp, &c.op_ns, "op")?;
        }
    }
    eprintln!("operator killed {kills} times while 24 Relays were created");
    c.converged(&want).await?;
    drop(op);
    Ok(())
}

/// Proves the operator rides out control-plane crashes: kube-apiserver and then etcd are killed
/// (SIGKILL) and restarted while Relays are being created and edited; every watch breaks and the
/// Lease cannot be renewed for a while, and still everything converges.
#[tokio::test]
async fn apiserver_and_etcd_restarts_mid_reconcile_converge() -> Result<()> {
    let mut c = Cluster::start().await?;
    let op = OperatorProcess::spawn(&c.cp, &c.op_ns, "op")?;
    let mut want = BTreeMap::new();
    for (component, batch) in [(Component::Apiserver, 0..8u32), (Component::Etcd, 8..14)] {
        for i in batch.clone() {
            c.create(&format!("r{i}"), i + 1).await?;
            want.insert(format!("r{i}"), i + 1);
        }
        // Mid-reconcile: the batch was just created and is being worked on.
        c.edit(&format!("r{}", batch.start), 50).await?;
        want.insert(format!("r{}", batch.start), 50);
        c.cp.restart(component, Duration::from_secs(2)).await?;
    }
    c.admin = c.cp.client().await?;
    c.relays = Api::namespaced(c.admin.clone(), &c.ns);
    c.create("after", 7).await?;
    want.insert("after".into(), 7);
    if let Err(e) = c.converged(&want).await {
        let log = op.log_text().unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        eprintln!(
            "OPLOG:\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
        return Err(e);
    }
    drop(op);
    Ok(())
}

/// Proves the operator owns its fields: another field manager overwriting the rendered config
/// (server-side apply with force, and a plain merge patch) is undone, and the other manager's own
/// extra key is left alone. Then twelve spec edits in a row: the final status is for the final
/// generation and the ConfigMap holds the final spec.
#[tokio::test]
async fn conflicting_edits_converge_to_the_latest_spec() -> Result<()> {
    let c = Cluster::start().await?;
    let op = OperatorProcess::spawn(&c.cp, &c.op_ns, "op")?;
    c.create("edited", 5).await?;
    c.converged(&BTreeMap::from([("edited".to_string(), 5)])).await?;
    let cms: Api<ConfigMap> = Api::namespaced(c.admin.clone(), &c.ns);
    let original = config_text(&cms.get("edited-sidecar").await?)?;

    let intruder = serde_json::json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "edited-sidecar"},
        "data": {"sidecar.yaml": "tampered", "note": "kept"},
    });
    cms.patch(
        "edited-sidecar",
        &PatchParams::apply("intruder").force(),
        &Patch::Apply(&intruder),
    )
    .await?;
    let restored = wait_for(&cms, "edited-sidecar", |cm: &ConfigMap| {
        config_text(cm).is_ok_and(|t| t == original)
    })
    .await?;
    let data = restored.data.unwrap_or_default();
    assert_eq!(data.get("note").map(String::as_str), Some("kept"));

    let merge = serde_json::json!({"data": {"sidecar.yaml": "edited by hand"}});
    cms.patch("edited-sidecar", &PatchParams::default(), &Patch::Merge(&merge))
        .await?;
    wait_for(&cms, "edited-sidecar", |cm: &ConfigMap| {
        config_text(cm).is_ok_and(|t| t == original)
    })
    .await?;

    for n in 1..=12 {
        c.edit("edited", n).await?;
    }
    c.converged(&BTreeMap::from([("edited".to_string(), 12)])).await?;
    drop(op);
    Ok(())
}

/// An owned control plane with the CRDs, the operator's namespace, a workload namespace and one
/// Ready-able MailDomain (`shop`) allowing it.
struct Cluster {
    cp: ControlPlane,
    admin: Client,
    op_ns: String,
    ns: String,
    relays: Api<Relay>,
}

impl Cluster {
    async fn start() -> Result<Self> {
        let cp = ControlPlane::start().await?;
        let admin = cp.client().await?;
        install_crds(&admin).await?;
        let op_ns = cp.new_namespace().await?;
        let ns = cp.new_namespace().await?;
        let spec: MailDomainSpec = serde_yaml_ng::from_str(&format!(
            "domain: shop.example.com\ndkim: {{algorithm: ed25519}}\nallowedNamespaces: {{names: [{ns}]}}"
        ))?;
        Api::<MailDomain>::all(admin.clone())
            .create(&PostParams::default(), &MailDomain::new("shop", spec))
            .await?;
        let relays = Api::namespaced(admin.clone(), &ns);
        Ok(Self {
            cp,
            admin,
            op_ns,
            ns,
            relays,
        })
    }

    async fn create(&self, name: &str, max_recipients: u32) -> Result<()> {
        let spec: RelaySpec = serde_yaml_ng::from_str(&format!(
            "domains: [shop]\ndelivery: {{capture: {{}}}}\nlimits: {{maxRecipients: {max_recipients}}}"
        ))?;
        self.relays
            .create(&PostParams::default(), &Relay::new(name, spec))
            .await?;
        Ok(())
    }

    async fn edit(&self, name: &str, max_recipients: u32) -> Result<()> {
        let patch = serde_json::json!({"spec": {"limits": {"maxRecipients": max_recipients}}});
        self.relays
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        Ok(())
    }

    /// Polls (120 s) until the namespace holds exactly the Relays in `want` (name ->
    /// maxRecipients), each converged, and nothing else labelled as a Relay child.
    async fn converged(&self, want: &BTreeMap<String, u32>) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let problem = match self.problems(want).await {
                Ok(None) => return Ok(()),
                Ok(Some(p)) => p,
                // The apiserver may still be settling after a restart.
                Err(e) => format!("{e:#}"),
            };
            if Instant::now() > deadline {
                bail!("not converged after 120 s: {problem}");
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// The first way the namespace differs from `want`, if any.
    async fn problems(&self, want: &BTreeMap<String, u32>) -> Result<Option<String>> {
        let relays = self.relays.list(&ListParams::default()).await?.items;
        let names: Vec<String> = relays.iter().map(ResourceExt::name_any).collect();
        let wanted: Vec<&String> = want.keys().collect();
        if names.iter().collect::<Vec<_>>() != wanted {
            return Ok(Some(format!("relays {names:?}, want {wanted:?}")));
        }
        let children = ListParams::default().labels(RELAY_LABEL);
        let cms = Api::<ConfigMap>::namespaced(self.admin.clone(), &self.ns)
            .list(&children)
            .await?
            .items;
        let secrets = Api::<Secret>::namespaced(self.admin.clone(), &self.ns)
            .list(&children)
            .await?
            .items;
        for r in &relays {
            let name = r.name_any();
            let status = r.status.clone().unwrap_or_default();
            let (is_ready, reason) = ready(&status.conditions, "Ready");
            if is_ready != "True" || status.observed_generation != r.metadata.generation {
                return Ok(Some(format!(
                    "{name}: Ready={is_ready} ({reason}), observed {:?} of {:?}",
                    status.observed_generation, r.metadata.generation
                )));
            }
            let cm: Vec<&ConfigMap> = cms.iter().filter(|c| owned_by(*c, r)).collect();
            let sec: Vec<&Secret> = secrets.iter().filter(|s| owned_by(*s, r)).collect();
            if cm.len() != 1 || sec.len() != 1 {
                return Ok(Some(format!(
                    "{name}: {} ConfigMaps and {} Secrets",
                    cm.len(),
                    sec.len()
                )));
            }
            let text = config_text(cm[0])?;
            let config = mailroom_config::Config::parse(Path::new("sidecar.yaml"), &text)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            if config.limits.max_recipients != want[&name] as usize {
                return Ok(Some(format!(
                    "{name}: ConfigMap has maxRecipients {}, want {}",
                    config.limits.max_recipients, want[&name]
                )));
            }
        }
        let orphans: Vec<String> = cms
            .iter()
            .map(|c| (c.name_any(), relays.iter().any(|r| owned_by(c, r))))
            .chain(
                secrets
                    .iter()
                    .map(|s| (s.name_any(), relays.iter().any(|r| owned_by(s, r)))),
            )
            .filter(|(_, owned)| !owned)
            .map(|(n, _)| n)
            .collect();
        if !orphans.is_empty() {
            return Ok(Some(format!("children without their Relay: {orphans:?}")));
        }
        Ok(None)
    }
}

/// Whether `child` has exactly one owner reference, a controller reference to `relay` (by UID)
/// and the matching label.
fn owned_by<K: ResourceExt>(child: &K, relay: &Relay) -> bool {
    let refs = child.owner_references();
    refs.len() == 1
        && refs[0].kind == "Relay"
        && refs[0].controller == Some(true)
        && Some(&refs[0].uid) == relay.metadata.uid.as_ref()
        && child.labels().get(RELAY_LABEL) == Some(&relay.name_any())
}

fn config_text(cm: &ConfigMap) -> Result<String> {
    cm.data
        .as_ref()
        .and_then(|d| d.get("sidecar.yaml"))
        .cloned()
        .context("sidecar.yaml")
}

/// xorshift64: random kill points, reproducible from the printed seed.
struct Rng {
    seed: u64,
    state: u64,
}

impl Rng {
    fn seeded() -> Self {
        let seed = std::env::var("MAILROOM_FAULT_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64)
            })
            | 1;
        Self { seed, state: seed }
    }

    fn below(&mut self, n: u32) -> u32 {
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        (self.state % u64::from(n.max(1))) as u32
    }
}
