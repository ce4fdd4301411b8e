//! The Helm chart (`charts/mailroom`) with the real tools: generated files in sync, `helm lint
//! --strict`, `helm template` with defaults and with every toggle on, the values schema rejecting
//! typos, contradictory toggles failing, and the rendered manifests applied with server-side
//! dry-run, then installed and upgraded on a real kube-apiserver.

use mailroom_e2e as common;

use std::{collections::BTreeSet, process::Command};

use anyhow::{Context, Result, ensure};
use base64::Engine as _;
use common::{ALL_ON, chart, documents, find, repo, run, run_fails, template};
use k8s_openapi::{
    api::{
        admissionregistration::v1::MutatingWebhookConfiguration,
        apps::v1::Deployment,
        rbac::v1::{ClusterRole, PolicyRule, Role},
    },
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{
    Api,
    api::{ListParams, Patch, PatchParams},
};
use mailroom_test_support::{ControlPlane, testenv};
use serde_json::Value;

/// `hack/generate.py --check`: values.schema.json matches values.yaml's hints, and the copies of
/// the CRDs, the RBAC rules and the webhook configuration equal their sources.
#[test]
fn generated_chart_files_are_up_to_date() -> Result<()> {
    run(Command::new(testenv::python()?)
        .arg(chart().join("hack/generate.py"))
        .arg("--check"))?;
    for (copy, source) in [
        ("files/crds.yaml", "crds/crds.yaml"),
        ("files/rbac-rules.yaml", "operator/rbac/rules.yaml"),
        (
            "files/rbac-namespace-rules.yaml",
            "operator/rbac/namespace-rules.yaml",
        ),
        (
            "files/mutatingwebhookconfiguration.yaml",
            "operator/webhook/mutatingwebhookconfiguration.yaml",
        ),
    ] {
        let want =
            std::fs::read_to_string(repo().join(source)).with_context(|| format!("reading {source}"))?;
        let got = std::fs::read_to_string(chart().join(copy))?;
        ensure!(
            got == want,
            "charts/mailroom/{copy} differs from {source}: run hack/generate.py"
        );
    }
    Ok(())
}

/// The chart's README is what helm-docs writes from values.yaml's comments and README.md.gotmpl:
/// every value documented, none stale (`make chart-docs` regenerates it).
#[test]
fn chart_readme_is_what_helm_docs_writes() -> Result<()> {
    let out = run(Command::new(testenv::bin("helm-docs")?)
        .args(["--chart-search-root"])
        .arg(chart())
        .args(["--dry-run", "--skip-version-footer", "--log-level", "error"]))?;
    let committed = std::fs::read_to_string(chart().join("README.md"))?;
    ensure!(
        out.trim_end() == committed.trim_end(),
        "charts/mailroom/README.md is stale: run `make chart-docs` and commit it"
    );
    let values = std::fs::read_to_string(chart().join("values.yaml"))?;
    for key in [
        "sidecar.imagePullSecrets",
        "networkPolicy.enabled",
        "commonLabels",
    ] {
        ensure!(
            committed.contains(&format!("| {key} |")),
            "{key} missing from the README"
        );
    }
    ensure!(
        !committed.contains("@schema") && values.contains("@schema"),
        "schema hints stay out of the README"
    );
    Ok(())
}

#[test]
fn lint_is_clean_with_defaults_and_with_every_toggle_on() -> Result<()> {
    let home = tempfile::tempdir()?;
    for set in [None, Some(ALL_ON)] {
        let mut cmd = common::helm(home.path())?;
        cmd.args(["lint", "--strict"]).arg(chart());
        if let Some(set) = set {
            cmd.args(["--set", set]);
        }
        let out = run(&mut cmd)?;
        ensure!(out.contains("0 chart(s) failed"), "{out}");
        ensure!(!out.contains("[WARNING]") && !out.contains("[ERROR]"), "{out}");
    }
    Ok(())
}

/// The chart as a dependency of an umbrella chart (`condition: mailroom.enabled`), as platform
/// teams consume it: Helm passes `global` and `enabled` down, and the strict schema takes both.
/// Enabled, it renders the operator under the umbrella's release; disabled, nothing of it.
#[test]
fn the_chart_works_as_a_dependency_of_an_umbrella_chart() -> Result<()> {
    let home = tempfile::tempdir()?;
    let umbrella = home.path().join("platform");
    std::fs::create_dir_all(umbrella.join("charts"))?;
    std::fs::write(
        umbrella.join("Chart.yaml"),
        format!(
            "apiVersion: v2\nname: platform\nversion: 1.0.0\ndependencies:\n  - name: mailroom\n    version: \">=0.0.0-0\"\n    repository: file://{}\n    condition: mailroom.enabled\n",
            chart().display()
        ),
    )?;
    std::fs::write(
        umbrella.join("values.yaml"),
        "global:\n  imageRegistry: registry.example\nmailroom:\n  enabled: true\n",
    )?;
    run(common::helm(home.path())?
        .args(["dependency", "update"])
        .arg(&umbrella))?;
    let lint = run(common::helm(home.path())?
        .args(["lint", "--strict", "--with-subcharts"])
        .arg(&umbrella))?;
    ensure!(lint.contains("0 chart(s) failed"), "{lint}");
    let render = |enabled: &str| -> Result<Vec<Value>> {
        documents(&run(common::helm(home.path())?
            .args(["template", "platform"])
            .arg(&umbrella)
            .args([
                "--namespace",
                "platform",
                "--set",
                &format!("mailroom.enabled={enabled}"),
            ]))?)
    };
    let on = render("true")?;
    let deployment = find(&on, "Deployment", None)?;
    ensure!(
        deployment["metadata"]["name"]
            .as_str()
            .is_some_and(|n| n.starts_with("platform")),
        "named after the umbrella's release: {deployment}"
    );
    let off = render("false")?;
    ensure!(
        off.iter().all(|d| d["kind"] != "Deployment"),
        "mailroom.enabled=false renders none of it: {off:?}"
    );
    Ok(())
}

/// The default render is the operator alone; every toggle adds exactly its objects.
#[test]
fn template_renders_defaults_and_every_toggle() -> Result<()> {
    let kinds = |docs: &[Value]| -> BTreeSet<String> {
        docs.iter()
            .map(|d| d["kind"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    let defaults = documents(&template("mailroom", "mailroom-system", &[])?)?;
    let want: BTreeSet<String> = [
        "ClusterRole",
        "ClusterRoleBinding",
        "CustomResourceDefinition",
        "Deployment",
        "MutatingWebhookConfiguration",
        // The `helm test` pod (a hook: created by `helm test`, not by install).
        "Pod",
        "PodDisruptionBudget",
        "Role",
        "RoleBinding",
        "Service",
        "ServiceAccount",
    ]
    .map(String::from)
    .into();
    assert_eq!(kinds(&defaults), want);

    let all = documents(&template("mailroom", "mailroom-system", &["--set", ALL_ON])?)?;
    let extra: BTreeSet<String> = kinds(&all).difference(&want).cloned().collect();
    let want_extra: BTreeSet<String> = [
        "Certificate",
        "ConfigMap",
        "Issuer",
        "NetworkPolicy",
        "PodMonitor",
        "PrometheusRule",
        "ServiceMonitor",
    ]
    .map(String::from)
    .into();
    assert_eq!(extra, want_extra);

    // The Deployment: 2 replicas, leader election on, restricted security context, probes.
    let deploy = find(&defaults, "Deployment", None)?;
    assert_eq!(deploy["spec"]["replicas"], 2);
    let pod = &deploy["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault");
    let container = &pod["containers"][0];
    assert_eq!(container["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(container["securityContext"]["capabilities"]["drop"][0], "ALL");
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/livez");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    let env = env_map(container);
    assert_eq!(
        env.get("OPERATOR_LEADER_ELECTION").map(String::as_str),
        Some("true")
    );
    assert_eq!(
        env.get("OPERATOR_WEBHOOK_CERT_MODE").map(String::as_str),
        Some("self")
    );
    assert!(pod["affinity"]["podAntiAffinity"].is_object(), "{pod}");
    let all_env = env_map(&find(&all, "Deployment", None)?["spec"]["template"]["spec"]["containers"][0]);
    assert_eq!(
        all_env.get("OPERATOR_WEBHOOK_CERT_MODE").map(String::as_str),
        Some("external")
    );

    // The CRDs are the generated ones, kept on uninstall.
    for crd in defaults
        .iter()
        .filter(|d| d["kind"] == "CustomResourceDefinition")
    {
        assert_eq!(crd["metadata"]["annotations"]["helm.sh/resource-policy"], "keep");
    }
    let without = documents(&template(
        "mailroom",
        "mailroom-system",
        &["--set", "crds.enabled=false"],
    )?)?;
    assert!(!without.iter().any(|d| d["kind"] == "CustomResourceDefinition"));

    // The dashboard ConfigMap carries the Grafana sidecar's label and valid JSON.
    let cm = find(&all, "ConfigMap", None)?;
    assert_eq!(cm["metadata"]["labels"]["grafana_dashboard"], "1");
    let json = cm["data"]["mailroom.json"].as_str().context("dashboard JSON")?;
    let dashboard: Value = serde_json::from_str(json)?;
    assert_eq!(dashboard["uid"], "mailroom-overview");
    Ok(())
}

/// The knobs platform teams ask for reach the objects: a registry mirror for every image, labels
/// on every object, the revision history, security contexts without a fixed UID (OpenShift's
/// restricted-v2 assigns one), and the injected sidecar's pull policy, pull secrets and security
/// context (passed to the webhook, which puts them on each pod).
#[test]
fn knobs_reach_the_objects() -> Result<()> {
    let chart_yaml: Value = serde_yaml_ng::from_str(&std::fs::read_to_string(chart().join("Chart.yaml"))?)?;
    let version = chart_yaml["appVersion"].as_str().context("appVersion")?;
    let image = |name: &str| format!("{name}:{version}");
    let defaults = documents(&template("mailroom", "mailroom-system", &[])?)?;
    let deploy = find(&defaults, "Deployment", None)?;
    let container = &deploy["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        container["image"].as_str(),
        Some(image("ghcr.io/mailroom-dev/mailroom-operator").as_str())
    );
    let env = env_map(container);
    assert_eq!(
        env.get("OPERATOR_SIDECAR_IMAGE").map(String::as_str),
        Some(image("ghcr.io/mailroom-dev/mailroom-sidecar").as_str()),
        "the same default as the operator's own (operator/src/settings/webhook.rs)"
    );
    let sc: Value = serde_json::from_str(&env["OPERATOR_SIDECAR_SECURITY_CONTEXT"])?;
    assert_eq!(sc["runAsUser"], 65532);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(
        env.get("OPERATOR_SIDECAR_SESSION_THREADS"),
        None,
        "unset leaves the sidecar's own default"
    );

    let set = [
        "--set",
        "global.imageRegistry=mirror.example:5000,commonLabels.team=mail,operator.revisionHistoryLimit=3",
        "--set",
        "operator.podSecurityContext.runAsUser=null,operator.podSecurityContext.runAsGroup=null",
        "--set",
        "sidecar.securityContext.runAsUser=null,sidecar.securityContext.runAsGroup=null",
        "--set",
        "sidecar.image.pullPolicy=Always,sidecar.imagePullSecrets[0].name=regcred,sidecar.imagePullSecrets[1].name=mirror",
        "--set",
        "sidecar.sessionThreads=0",
    ];
    let docs = documents(&template("mailroom", "mailroom-system", &set)?)?;
    for doc in &docs {
        assert_eq!(doc["metadata"]["labels"]["team"], "mail", "{}", doc["kind"]);
    }
    let deploy = find(&docs, "Deployment", None)?;
    assert_eq!(deploy["spec"]["revisionHistoryLimit"], 3);
    let pod = &deploy["spec"]["template"];
    assert_eq!(pod["metadata"]["labels"]["team"], "mail");
    assert_eq!(
        deploy["spec"]["selector"]["matchLabels"].get("team"),
        None,
        "selectors never change"
    );
    let ctx = &pod["spec"]["securityContext"];
    assert_eq!(
        (ctx.get("runAsUser"), ctx.get("runAsGroup")),
        (None, None),
        "{ctx}"
    );
    assert_eq!(ctx["runAsNonRoot"], true);
    let container = &pod["spec"]["containers"][0];
    assert_eq!(
        container["image"].as_str(),
        Some(image("mirror.example:5000/mailroom-dev/mailroom-operator").as_str())
    );
    let env = env_map(container);
    assert_eq!(
        env.get("OPERATOR_SIDECAR_IMAGE").map(String::as_str),
        Some(image("mirror.example:5000/mailroom-dev/mailroom-sidecar").as_str())
    );
    assert_eq!(
        env.get("OPERATOR_SIDECAR_PULL_POLICY").map(String::as_str),
        Some("Always")
    );
    assert_eq!(
        env.get("OPERATOR_SIDECAR_IMAGE_PULL_SECRETS").map(String::as_str),
        Some("regcred,mirror")
    );
    assert_eq!(
        env.get("OPERATOR_SIDECAR_SESSION_THREADS").map(String::as_str),
        Some("0"),
        "0 is a value (one per CPU), not unset"
    );
    let sc: Value = serde_json::from_str(&env["OPERATOR_SIDECAR_SECURITY_CONTEXT"])?;
    assert_eq!((sc.get("runAsUser"), sc.get("runAsGroup")), (None, None), "{sc}");
    assert_eq!(sc["runAsNonRoot"], true);

    // An empty registry leaves the repository as the whole name (a local or private reference).
    let local = documents(&template(
        "mailroom",
        "mailroom-system",
        &[
            "--set",
            "operator.image.registry=,operator.image.repository=localhost/op",
        ],
    )?)?;
    let local = &find(&local, "Deployment", None)?["spec"]["template"]["spec"]["containers"][0]["image"];
    assert_eq!(local.as_str(), Some(image("localhost/op").as_str()));
    Ok(())
}

/// The NetworkPolicy admits the webhook and admin ports (from the configured peers) and lets the
/// operator reach only the apiserver ports and DNS.
#[test]
fn network_policy_admits_the_webhook_and_metrics_and_reaches_the_apiserver_and_dns() -> Result<()> {
    let set = [
        "--set",
        "networkPolicy.enabled=true,networkPolicy.apiServerPorts={6443}",
        "--set-json",
        r#"networkPolicy.metricsFrom=[{"namespaceSelector":{"matchLabels":{"kubernetes.io/metadata.name":"monitoring"}}}]"#,
    ];
    let docs = documents(&template("mailroom", "mailroom-system", &set)?)?;
    let np = find(&docs, "NetworkPolicy", None)?;
    let spec = &np["spec"];
    assert_eq!(
        spec["podSelector"]["matchLabels"]["app.kubernetes.io/component"],
        "operator"
    );
    assert_eq!(spec["policyTypes"], serde_json::json!(["Ingress", "Egress"]));
    let ingress = spec["ingress"].as_array().context("ingress")?;
    assert_eq!(ingress[0]["ports"][0]["port"], "https-webhook");
    assert_eq!(ingress[0].get("from"), None, "the apiserver calls from anywhere");
    assert_eq!(ingress[1]["ports"][0]["port"], "http-admin");
    assert_eq!(
        ingress[1]["from"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
        "monitoring"
    );
    let egress = spec["egress"].as_array().context("egress")?;
    assert_eq!(
        egress[0]["ports"],
        serde_json::json!([{"port": 6443, "protocol": "TCP"}])
    );
    assert_eq!(
        egress[1]["ports"],
        serde_json::json!([{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}])
    );
    assert_eq!(egress.len(), 2);
    Ok(())
}

/// The chart's ClusterRole grants exactly `operator/rbac/rules.yaml`, and its Role in the release
/// namespace exactly `operator/rbac/namespace-rules.yaml`.
#[test]
fn cluster_role_is_exactly_the_operator_rules() -> Result<()> {
    let docs = documents(&template("mailroom", "mailroom-system", &[])?)?;
    let role: ClusterRole = serde_json::from_value(find(&docs, "ClusterRole", Some("mailroom"))?.clone())?;
    let want: Vec<PolicyRule> =
        serde_yaml_ng::from_str(&std::fs::read_to_string(repo().join("operator/rbac/rules.yaml"))?)?;
    assert_eq!(role.rules, Some(want));
    let role: Role = serde_json::from_value(find(&docs, "Role", Some("mailroom"))?.clone())?;
    let want: Vec<PolicyRule> = serde_yaml_ng::from_str(&std::fs::read_to_string(
        repo().join("operator/rbac/namespace-rules.yaml"),
    )?)?;
    assert_eq!(role.rules, Some(want));
    assert_eq!(role.metadata.namespace.as_deref(), Some("mailroom-system"));
    Ok(())
}

/// `values.schema.json` has `additionalProperties: false` everywhere: a typo is an error, not a
/// silently ignored value; so are wrong types and values outside an enum.
#[test]
fn schema_rejects_typos_wrong_types_and_unknown_enum_values() -> Result<()> {
    let home = tempfile::tempdir()?;
    struct Case {
        set: &'static str,
        want: &'static str,
    }
    let cases = [
        Case {
            set: "operator.replica=3",
            want: "additional properties 'replica' not allowed",
        },
        Case {
            set: "podMonitor.enable=true",
            want: "additional properties 'enable' not allowed",
        },
        Case {
            set: "webhookk.port=1",
            want: "additional properties 'webhookk' not allowed",
        },
        Case {
            set: "operator.replicas=two",
            want: "replicas",
        },
        Case {
            set: "webhook.failurePolicy=Sometimes",
            want: "failurePolicy",
        },
        Case {
            set: "webhook.injectOnMissingRelay=maybe",
            want: "injectOnMissingRelay",
        },
        Case {
            set: "sidecar.image.pullPolicy=Sometimes",
            want: "pullPolicy",
        },
        Case {
            set: "sidecar.sessionThreads=2000",
            want: "sessionThreads",
        },
        Case {
            set: "global.imageRegistry=1",
            want: "imageRegistry",
        },
    ];
    for case in cases {
        let out = run_fails(
            common::helm(home.path())?
                .args(["template", "x"])
                .arg(chart())
                .args(["--set", case.set]),
        )?;
        ensure!(
            out.contains("values don't meet the specifications of the schema"),
            "{}: {out}",
            case.set
        );
        ensure!(
            out.contains(case.want),
            "{}: want {:?} in {out}",
            case.set,
            case.want
        );
    }
    Ok(())
}

/// Contradictory settings stop the render with a sentence that says what to change.
#[test]
fn conflicting_settings_fail_with_a_sentence() -> Result<()> {
    struct Case {
        set: &'static str,
        want: &'static str,
    }
    let cases = [
        Case {
            set: "operator.leaderElection.enabled=false",
            want: "operator.replicas > 1 needs operator.leaderElection.enabled=true",
        },
        Case {
            set: "serviceMonitor.enabled=true,operator.metricsService.enabled=false",
            want: "serviceMonitor.enabled=true needs operator.metricsService.enabled=true",
        },
        Case {
            set: "operator.replicas=1",
            want: "operator.replicas is 1 and the PodDisruptionBudget keeps 1 available, so no node running the operator could ever be drained: set operator.replicas to 2 or more",
        },
    ];
    let home = tempfile::tempdir()?;
    for case in cases {
        let out = run_fails(
            common::helm(home.path())?
                .args(["template", "x"])
                .arg(chart())
                .args(["--set", case.set]),
        )?;
        ensure!(
            out.contains(case.want),
            "{}: want {:?} in {out}",
            case.set,
            case.want
        );
    }
    // One replica is fine once the PDB is off.
    template(
        "x",
        "default",
        &[
            "--set",
            "operator.replicas=1,operator.podDisruptionBudget.enabled=false",
        ],
    )?;
    Ok(())
}

/// The rendered manifests pass the apiserver's validation (server-side dry-run), then `helm
/// install` creates them and `helm upgrade` with changed values updates them in place.
#[tokio::test]
async fn chart_dry_runs_installs_and_upgrades_on_a_real_apiserver() -> Result<()> {
    let cp = ControlPlane::shared().await?;
    let client = cp.client().await?;
    let ns = cp.new_namespace().await?;
    common::install_foreign_crds(&client).await?;

    for set in [vec![], vec!["--set", ALL_ON]] {
        let docs = documents(&template("dry", &ns, &set)?)?;
        // The apiserver refuses a pod whose ServiceAccount does not exist, even in a dry run:
        // create them first, as helm does (the test pod's with hook weight -1).
        let accounts: Vec<Value> = docs
            .iter()
            .filter(|d| d["kind"] == "ServiceAccount")
            .cloned()
            .collect();
        common::apply(&client, &accounts).await?;
        common::dry_run_apply(&client, &docs).await?;
    }

    let release = "mailroom";
    run(cp
        .helm()?
        .args(["install", release])
        .arg(chart())
        .args(["--namespace", &ns]))?;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for name in ["maildomains.mailroom.dev", "relays.mailroom.dev"] {
        common::wait_established(&crds, name).await?;
    }
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let deploy = deployments.get(release).await?;
    assert_eq!(deploy.spec.as_ref().and_then(|s| s.replicas), Some(2));
    let hooks: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let hook = hooks.get("mailroom-sidecar-injector").await?;
    let webhook = &hook.webhooks.unwrap_or_default()[0];
    assert_eq!(webhook.failure_policy.as_deref(), Some("Fail"));
    let service = webhook
        .client_config
        .service
        .as_ref()
        .context("service reference")?;
    assert_eq!(
        (service.name.as_str(), service.namespace.as_str()),
        ("mailroom-webhook", ns.as_str())
    );

    // The operator (self mode) patches caBundle in; an upgrade must leave it alone.
    let ca = base64::engine::general_purpose::STANDARD.encode(cp.ca_pem());
    let patch = serde_json::json!({"webhooks": [{"name": webhook.name, "clientConfig": {"caBundle": ca}}]});
    hooks
        .patch(
            "mailroom-sidecar-injector",
            &PatchParams::default(),
            &Patch::Strategic(&patch),
        )
        .await?;

    run(cp.helm()?.args(["upgrade", release]).arg(chart()).args([
        "--namespace",
        &ns,
        "--set",
        "operator.replicas=3,webhook.failurePolicy=Ignore,operator.logLevel=debug,prometheusRule.enabled=false",
    ]))?;
    let deploy = deployments.get(release).await?;
    assert_eq!(deploy.spec.as_ref().and_then(|s| s.replicas), Some(3));
    let env = env_map(&serde_json::to_value(&deploy)?["spec"]["template"]["spec"]["containers"][0]);
    assert_eq!(env.get("RUST_LOG").map(String::as_str), Some("debug"));
    let hook = hooks.get("mailroom-sidecar-injector").await?;
    let webhook = &hook.webhooks.unwrap_or_default()[0];
    assert_eq!(webhook.failure_policy.as_deref(), Some("Ignore"));
    let kept = webhook
        .client_config
        .ca_bundle
        .as_ref()
        .map(|b| base64::engine::general_purpose::STANDARD.encode(&b.0));
    assert_eq!(
        kept,
        Some(ca),
        "helm upgrade must not reset the caBundle the operator patched in"
    );
    let history = run(cp
        .helm()?
        .args(["history", release, "--namespace", &ns, "-o", "json"]))?;
    let history: Value = serde_json::from_str(&history)?;
    assert_eq!(history.as_array().map(Vec::len), Some(2), "{history}");

    // Uninstall keeps the CRDs (crds.keep) and removes the rest.
    run(cp.helm()?.args(["uninstall", release, "--namespace", &ns]))?;
    for name in ["maildomains.mailroom.dev", "relays.mailroom.dev"] {
        crds.get(name)
            .await
            .with_context(|| format!("{name} kept after uninstall"))?;
    }
    let left = deployments.list(&ListParams::default()).await?;
    assert!(left.items.is_empty(), "the Deployment is gone after uninstall");
    Ok(())
}

fn env_map(container: &Value) -> std::collections::BTreeMap<String, String> {
    container["env"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| Some((e["name"].as_str()?.to_string(), e["value"].as_str()?.to_string())))
        .collect()
}

/// The Dockerfiles (which no test can build here: there is no container daemon) stay in line
/// with what the chart and the webhook assume: a `scratch` final stage running as UID/GID 65532
/// (the chart's and the injected sidecar's `runAsUser`/`runAsGroup`), with the binary the
/// Deployment runs and the webhook injects (`command: [mailroom-sidecar]`) on `PATH`.
#[test]
fn dockerfiles_match_the_user_and_binaries_the_chart_expects() -> Result<()> {
    let docs = documents(&template("mailroom", "mailroom-system", &[])?)?;
    let pod = &find(&docs, "Deployment", None)?["spec"]["template"]["spec"];
    let uid = pod["securityContext"]["runAsUser"]
        .as_i64()
        .context("runAsUser")?;
    let gid = pod["securityContext"]["runAsGroup"]
        .as_i64()
        .context("runAsGroup")?;
    for bin in ["operator", "sidecar"] {
        let text = std::fs::read_to_string(repo().join(bin).join("Dockerfile"))?;
        let final_stage = text.rsplit("\nFROM ").next().unwrap_or_default();
        ensure!(
            final_stage.starts_with("scratch"),
            "{bin}: the final stage is not scratch"
        );
        ensure!(
            final_stage.contains(&format!("\nUSER {uid}:{gid}\n")),
            "{bin}/Dockerfile must run as {uid}:{gid}"
        );
        let program = format!("/usr/local/bin/mailroom-{bin}");
        ensure!(
            final_stage.contains(&format!("ENTRYPOINT [\"{program}\"]"))
                && final_stage.contains("ENV PATH=/usr/local/bin"),
            "{bin}/Dockerfile must run {program} and have it on PATH"
        );
        ensure!(
            text.contains(&format!("cargo build --locked --release --bin mailroom-{bin}")),
            "{bin}/Dockerfile builds another binary"
        );
    }
    Ok(())
}
