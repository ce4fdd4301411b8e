//! The injection webhook against a real kube-apiserver that calls it over TLS (registered from the
//! file the chart ships): what opted-in pods get and everything else does not, PodSecurity
//! `restricted` on the result, Relay problems denied (or allowed), idempotency, and certificate
//! rotation under load.

use mailroom_test_support::operator as common;

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use common::{
    Env,
    webhook::{OPTED_IN_RESTRICTED, domain, init_names, pod, relay, start_injector},
};
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::{
    Api, ResourceExt,
    api::{ObjectMeta, PostParams},
};

const DNS: (&str, &str) = ("OPERATOR_DNS_NAMESERVERS", "127.0.0.1:9");

/// MailDomain `shop` allowing `namespaces`, and a Ready capture Relay `outbound` in each.
async fn ready_relays(env: &Env, namespaces: &[&str]) -> Result<()> {
    let allowed = format!(
        "domain: shop.example.com\ndkim: {{algorithm: ed25519}}\nallowedNamespaces: {{names: [{}]}}",
        namespaces.join(", ")
    );
    domain(env, "shop", &allowed).await?;
    for ns in namespaces {
        relay(
            env,
            ns,
            "outbound",
            "domains: [shop]\ndelivery: {capture: {}}",
            "Reconciled",
        )
        .await?;
    }
    Ok(())
}

fn denial(result: Result<Pod, kube::Error>) -> String {
    match result {
        Ok(pod) => panic!("pod {} was admitted", pod.name_any()),
        Err(kube::Error::Api(e)) => e.message,
        Err(e) => panic!("unexpected error {e}"),
    }
}

fn env_of(pod: &Pod, name: &str) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    let env = spec.containers[0].env.as_ref()?;
    env.iter().find(|e| e.name == name).and_then(|e| e.value.clone())
}

fn metric(text: &str, result: &str) -> u64 {
    let prefix = format!("mailroom_operator_webhook_admissions_total{{result=\"{result}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn opted_in_pods_get_a_sidecar_that_passes_pod_security_restricted_and_nothing_else_changes()
-> Result<()> {
    let env = Env::start(&[DNS]).await?;
    let on = env.cp.new_namespace_with_labels(OPTED_IN_RESTRICTED).await?;
    let off = env
        .cp
        .new_namespace_with_labels(&[("pod-security.kubernetes.io/enforce", "restricted")])
        .await?;
    ready_relays(&env, &[&on, &off]).await?;
    let injector = start_injector(&env, &[], |_| {}).await?;
    let pods: Api<Pod> = Api::namespaced(env.admin.clone(), &on);
    let pp = PostParams::default();

    pods.create(&pp, &pod("app", Some("outbound"), false)?).await?;
    let stored = pods.get("app").await?;
    assert_eq!(init_names(&stored), ["mailroom-sidecar"]);
    let spec = stored.spec.clone().context("spec")?;
    let sidecar = &spec.init_containers.as_ref().context("init")?[0];
    assert_eq!(sidecar.restart_policy.as_deref(), Some("Always"));
    let volumes: Vec<_> = spec.volumes.iter().flatten().map(|v| v.name.as_str()).collect();
    for want in [
        "mailroom-config",
        "mailroom-dkim",
        "mailroom-spool",
        "mailroom-capture",
    ] {
        assert!(volumes.contains(&want), "{want} missing from {volumes:?}");
    }
    assert_eq!(env_of(&stored, "SMTP_HOST").as_deref(), Some("127.0.0.1"));
    assert_eq!(env_of(&stored, "SMTP_PORT").as_deref(), Some("25"));
    let sysctls = spec.security_context.and_then(|c| c.sysctls).unwrap_or_default();
    assert_eq!(sysctls[0].name, "net.ipv4.ip_unprivileged_port_start");
    assert_eq!(
        stored.labels().get("mailroom.dev/injected").map(String::as_str),
        Some("true")
    );

    // Without the label, outside an opted-in namespace, or with only the annotation: untouched.
    let plain = pods.create(&pp, &pod("plain", None, false)?).await?;
    assert!(init_names(&plain).is_empty());
    let outside = Api::<Pod>::namespaced(env.admin.clone(), &off)
        .create(&pp, &pod("app", Some("outbound"), false)?)
        .await?;
    assert!(init_names(&outside).is_empty() && env_of(&outside, "SMTP_HOST").is_none());
    let mut annotated = pod("annotated", None, false)?;
    annotated.metadata.annotations = Some([("mailroom.dev/relay".into(), "outbound".into())].into());
    assert!(init_names(&pods.create(&pp, &annotated).await?).is_empty());

    // PodSecurity really enforces `restricted` here: a privileged app is still refused.
    let refused = denial(
        pods.create(&pp, &pod("privileged", Some("outbound"), true)?)
            .await,
    );
    assert!(refused.contains("restricted"), "{refused}");

    // Re-creating the injected pod as stored (a copied manifest) changes nothing.
    let copy = Pod {
        metadata: ObjectMeta {
            name: Some("again".into()),
            labels: stored.metadata.labels.clone(),
            annotations: stored.metadata.annotations.clone(),
            ..Default::default()
        },
        spec: stored.spec.clone(),
        ..Default::default()
    };
    let again = pods.create(&pp, &copy).await?;
    assert_eq!(again.spec, stored.spec, "re-injection is idempotent");
    let text = injector.metrics.render();
    assert_eq!(metric(&text, "already_injected"), 1, "{text}");
    assert!(metric(&text, "injected") >= 1, "{text}");
    Ok(())
}

/// The chart's sidecar knobs, as the operator reads them from its environment, reach the pod the
/// apiserver stores: the pull policy, pull secrets added beside the pod's own, and a security
/// context without a fixed UID (OpenShift's restricted-v2 assigns one) that Pod Security
/// `restricted` still admits; and the session threads, from the setting or the pod's annotation.
#[tokio::test]
async fn the_sidecar_pull_settings_security_context_and_session_threads_reach_the_stored_pod() -> Result<()> {
    let env = Env::start(&[DNS]).await?;
    let ns = env.cp.new_namespace_with_labels(OPTED_IN_RESTRICTED).await?;
    ready_relays(&env, &[&ns]).await?;
    let vars = [
        ("OPERATOR_SIDECAR_PULL_POLICY", "Always"),
        ("OPERATOR_SIDECAR_IMAGE_PULL_SECRETS", "regcred,mirror"),
        (
            "OPERATOR_SIDECAR_SECURITY_CONTEXT",
            r#"{"runAsNonRoot":true,"allowPrivilegeEscalation":false,"capabilities":{"drop":["ALL"]},"seccompProfile":{"type":"RuntimeDefault"}}"#,
        ),
        ("OPERATOR_SIDECAR_SESSION_THREADS", "0"),
    ];
    let _injector = start_injector(&env, &vars, |_| {}).await?;
    let pods: Api<Pod> = Api::namespaced(env.admin.clone(), &ns);
    let mut app = pod("app", Some("outbound"), false)?;
    let spec = app.spec.as_mut().context("spec")?;
    spec.image_pull_secrets = Some(vec![k8s_openapi::api::core::v1::LocalObjectReference {
        name: "app-creds".into(),
    }]);
    let stored = pods.create(&PostParams::default(), &app).await?;
    let spec = stored.spec.context("spec")?;
    let secrets: Vec<String> = spec
        .image_pull_secrets
        .unwrap_or_default()
        .into_iter()
        .map(|r| r.name)
        .collect();
    assert_eq!(secrets, ["app-creds", "regcred", "mirror"]);
    let sidecar = &spec.init_containers.context("init")?[0];
    assert_eq!(sidecar.image_pull_policy.as_deref(), Some("Always"));
    let ctx = sidecar.security_context.clone().context("security context")?;
    assert_eq!(ctx.run_as_user, None);
    assert_eq!(ctx.run_as_non_root, Some(true));
    let threads = |c: &k8s_openapi::api::core::v1::Container| {
        let env = c.env.iter().flatten();
        env.filter(|e| e.name == "SIDECAR_SESSION_THREADS")
            .map(|e| e.value.clone().unwrap_or_default())
            .collect::<Vec<_>>()
    };
    assert_eq!(threads(sidecar), ["0"], "the setting");

    // A pod's annotation wins over the setting; one the sidecar would refuse refuses the pod.
    let annotated = |name: &str, v: &str| -> Result<Pod> {
        let mut p = pod(name, Some("outbound"), false)?;
        p.annotations_mut()
            .insert("mailroom.dev/session-threads".into(), v.into());
        Ok(p)
    };
    let stored = pods
        .create(&PostParams::default(), &annotated("two-threads", "2")?)
        .await?;
    let init = stored.spec.and_then(|s| s.init_containers).context("init")?;
    assert_eq!(threads(&init[0]), ["2"], "the annotation");
    let refused = denial(
        pods.create(&PostParams::default(), &annotated("many-threads", "many")?)
            .await,
    );
    assert_eq!(
        refused,
        format!(
            "admission webhook \"sidecar-injector.mailroom.dev\" denied the request: mailroom: cannot inject pod {ns}/many-threads: \
             pod annotation mailroom.dev/session-threads=\"many\": expected a number of threads up to 1024, or 0 for one per CPU"
        )
    );
    Ok(())
}

#[tokio::test]
async fn missing_or_unready_relay_is_denied_with_its_reason_unless_allowed() -> Result<()> {
    let env = Env::start(&[DNS]).await?;
    let ns = env.cp.new_namespace_with_labels(OPTED_IN_RESTRICTED).await?;
    let allowed = format!(
        "domain: shop.example.com\ndkim: {{algorithm: ed25519}}\nallowedNamespaces: {{names: [{ns}]}}"
    );
    domain(&env, "shop", &allowed).await?;
    relay(
        &env,
        &ns,
        "broken",
        "domains: [nope]\ndelivery: {capture: {}}",
        "DomainNotFound",
    )
    .await?;
    let pods: Api<Pod> = Api::namespaced(env.admin.clone(), &ns);
    let pp = PostParams::default();

    let injector = start_injector(&env, &[], |_| {}).await?;
    let missing = denial(pods.create(&pp, &pod("a", Some("nope"), false)?).await);
    assert!(
        missing.contains(&format!("Relay {ns}/nope")) && missing.contains("does not exist"),
        "{missing}"
    );
    let unready = denial(pods.create(&pp, &pod("b", Some("broken"), false)?).await);
    assert!(unready.contains(&format!("Relay {ns}/broken")), "{unready}");
    assert!(unready.contains("not Ready (DomainNotFound: "), "{unready}");
    drop(injector);

    let _allow = start_injector(&env, &[("OPERATOR_INJECT_ON_MISSING_RELAY", "allow")], |_| {}).await?;
    let admitted = pods.create(&pp, &pod("c", Some("nope"), false)?).await?;
    assert!(init_names(&admitted).is_empty(), "admitted without a sidecar");
    Ok(())
}

#[tokio::test]
async fn certificate_rotation_keeps_admissions_working() -> Result<()> {
    let env = Env::start(&[DNS]).await?;
    let ns = env.cp.new_namespace_with_labels(OPTED_IN_RESTRICTED).await?;
    ready_relays(&env, &[&ns]).await?;
    let injector = start_injector(&env, &[], |s| {
        s.webhook.cert_validity = Duration::from_secs(6);
        s.webhook.ca_validity = Duration::from_secs(15);
    })
    .await?;
    let secrets: Api<Secret> = Api::namespaced(env.admin.clone(), &env.operator_ns);
    let pods: Api<Pod> = Api::namespaced(env.admin.clone(), &ns);
    let dry_run = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let (mut serving, mut cas) = (BTreeSet::new(), BTreeSet::new());
    let start = Instant::now();
    let mut admitted = 0;
    while start.elapsed() < Duration::from_secs(25) {
        let created = pods
            .create(&dry_run, &pod(&format!("p{admitted}"), Some("outbound"), false)?)
            .await
            .with_context(|| format!("admission {admitted} at {:?}", start.elapsed()))?;
        assert_eq!(init_names(&created), ["mailroom-sidecar"]);
        admitted += 1;
        let data = secrets
            .get(&injector.settings.webhook.secret)
            .await?
            .data
            .unwrap_or_default();
        let text = |k: &str| data.get(k).map(|v| String::from_utf8_lossy(&v.0).into_owned());
        serving.insert(text("tls.crt").context("tls.crt")?);
        let ca = text("ca.crt").context("ca.crt")?;
        cas.insert(ca.split("-----END").next().unwrap_or_default().to_string());
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert!(serving.len() >= 4, "serving certificates seen: {}", serving.len());
    assert!(cas.len() >= 2, "CAs seen: {}", cas.len());
    eprintln!(
        "{admitted} admissions across {} serving certificates and {} CAs",
        serving.len(),
        cas.len()
    );
    Ok(())
}

/// 300 admissions in a row are all injected and every one is timed by the webhook's histogram.
/// The latencies are printed for reference only: speed is judged by benchmarks, never by timed
/// assertions on a shared machine.
#[tokio::test]
async fn repeated_admissions_are_all_injected_and_timed_by_the_histogram() -> Result<()> {
    let env = Env::start(&[DNS]).await?;
    let ns = env.cp.new_namespace_with_labels(OPTED_IN_RESTRICTED).await?;
    ready_relays(&env, &[&ns]).await?;
    let injector = start_injector(&env, &[], |_| {}).await?;
    let pods: Api<Pod> = Api::namespaced(env.admin.clone(), &ns);
    let dry_run = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let before = injector.metrics.render();
    // `make bench-webhook` asks for 1,000 (issue #8's figure); the suite's 300 keep it quick.
    let n: usize = std::env::var("MAILROOM_BENCH_ADMISSIONS").map_or(Ok(300), |v| v.parse())?;
    let mut client_side = Vec::new();
    for i in 0..n {
        let t = Instant::now();
        let created = pods
            .create(&dry_run, &pod(&format!("l{i}"), Some("outbound"), false)?)
            .await?;
        client_side.push(t.elapsed());
        assert_eq!(init_names(&created), ["mailroom-sidecar"]);
    }
    client_side.sort();
    let q = |p: f64| client_side[((client_side.len() as f64 * p) as usize).min(client_side.len() - 1)];
    let after = injector.metrics.render();
    let webhook_p99 = histogram_quantile(&before, &after, 0.99);
    eprintln!(
        "admission through the apiserver ({n} pods): p50 {:?}, p99 {:?}; at the webhook: p99 <= {webhook_p99} s",
        q(0.5),
        q(0.99)
    );
    let count = |text: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix("mailroom_operator_webhook_admission_duration_seconds_count "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    };
    assert_eq!(
        count(&after) - count(&before),
        n as f64,
        "every admission is observed once"
    );
    Ok(())
}

/// The upper bound of the bucket holding quantile `q` of the observations between two scrapes.
fn histogram_quantile(before: &str, after: &str, q: f64) -> f64 {
    let buckets = |text: &str| -> Vec<(f64, f64)> {
        text.lines()
            .filter_map(|l| {
                l.strip_prefix("mailroom_operator_webhook_admission_duration_seconds_bucket{le=\"")
            })
            .filter_map(|l| {
                let (le, count) = l.split_once("\"} ")?;
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().ok()?
                };
                Some((le, count.parse().ok()?))
            })
            .collect()
    };
    let (b, a) = (buckets(before), buckets(after));
    let delta: Vec<(f64, f64)> = a
        .iter()
        .map(|(le, n)| (*le, n - b.iter().find(|(l, _)| l == le).map_or(0.0, |x| x.1)))
        .collect();
    let total = delta.last().map_or(0.0, |x| x.1);
    delta
        .iter()
        .find(|(_, n)| *n >= total * q)
        .map_or(f64::INFINITY, |x| x.0)
}

/// `GET /readyz` on the operator's admin port, as the kubelet's probe does: status and body.
async fn readyz(addr: std::net::SocketAddr) -> Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(b"GET /readyz HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .await?;
    let mut text = String::new();
    s.read_to_string(&mut text).await?;
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("status line")?;
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default().to_string();
    Ok((status, body))
}

/// A replica whose webhook has no certificate yet (external mode, the Secret not written) is not
/// Ready, so the webhook Service sends it no admissions; once cert-manager (here: the test)
/// writes the Secret, it loads the certificate and turns Ready.
#[tokio::test]
async fn the_operator_is_not_ready_until_its_webhook_has_a_certificate() -> Result<()> {
    use mailroom_operator::{
        admin,
        webhook::certs::{self, Plan},
    };
    let env = Env::start(&[DNS]).await?;
    let (webhook, settings, metrics) =
        common::webhook::bind_webhook(&env, &[("OPERATOR_WEBHOOK_CERT_MODE", "external")], |_| {}).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let admin_addr = listener.local_addr()?;
    let router = admin::router(metrics.clone(), vec![webhook.readiness()]);
    let admin_task = tokio::spawn(async move { axum::serve(listener, router).await });
    let webhook_task = tokio::spawn(webhook.run());

    let (status, body) = readyz(admin_addr).await?;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("webhook certificate"), "{body}");

    let names = certs::names(&settings.webhook.service, &env.operator_ns, &[]);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs() as i64;
    let Plan::Write { material, .. } = certs::plan(
        None,
        &names,
        now,
        Duration::from_secs(3600),
        Duration::from_secs(7200),
    )?
    else {
        anyhow::bail!("a first plan always writes")
    };
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(settings.webhook.secret.clone()),
            ..Default::default()
        },
        data: Some(material.to_data()),
        ..Default::default()
    };
    Api::<Secret>::namespaced(env.admin.clone(), &env.operator_ns)
        .create(&PostParams::default(), &secret)
        .await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = readyz(admin_addr).await?;
        if status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still not ready 30 s after the Secret: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        metrics.render().lines().any(|l| l
            .starts_with("mailroom_operator_webhook_certificate_expiry_timestamp_seconds ")
            && !l.ends_with(" 0")),
        "the certificate it turned Ready with is the one loaded"
    );
    admin_task.abort();
    webhook_task.abort();
    Ok(())
}
