//! Admission: the apiserver rejects invalid MailDomains and Relays with a message naming the field
//! (schema + CEL rules in crds/crds.yaml), and accepts the examples in examples/.

use mailroom_test_support::operator as common;

use anyhow::Result;
use kube::{
    Api,
    api::{DynamicObject, Patch, PatchParams, PostParams},
    core::{ApiResource, GroupVersionKind},
};
use mailroom_test_support::ControlPlane;

struct Case {
    name: &'static str,
    kind: &'static str,
    spec: &'static str,
    want: &'static str,
}

const CASES: &[Case] = &[
    Case {
        name: "uppercase domain",
        kind: "MailDomain",
        spec: "domain: Example.COM",
        want: "spec.domain must be a lowercase DNS name",
    },
    Case {
        name: "single label domain",
        kind: "MailDomain",
        spec: "domain: localhost",
        want: "spec.domain must be a lowercase DNS name",
    },
    Case {
        name: "unknown algorithm",
        kind: "MailDomain",
        spec: "domain: a.example.com\ndkim: {algorithm: rsa-1024}",
        want: "spec.dkim.algorithm",
    },
    Case {
        name: "bad selector",
        kind: "MailDomain",
        spec: "domain: a.example.com\ndkim: {selector: 'Bad_Selector'}",
        want: "spec.dkim.selector must be a lowercase DNS label",
    },
    Case {
        name: "zero rotation period",
        kind: "MailDomain",
        spec: "domain: a.example.com\ndkim: {rotation: {periodSeconds: 0}}",
        want: "spec.dkim.rotation.periodSeconds",
    },
    Case {
        name: "rotation without a period",
        kind: "MailDomain",
        spec: "domain: a.example.com\ndkim: {rotation: {graceSeconds: 60}}",
        want: "spec.dkim.rotation.periodSeconds: Required value",
    },
    Case {
        name: "zero grace",
        kind: "MailDomain",
        spec: "domain: a.example.com\ndkim: {rotation: {periodSeconds: 60, graceSeconds: 0}}",
        want: "spec.dkim.rotation.graceSeconds",
    },
    Case {
        name: "bad spf include",
        kind: "MailDomain",
        spec: "domain: a.example.com\nspf: {includes: ['not a domain']}",
        want: "spec.spf.includes[0]",
    },
    Case {
        name: "bad dmarc policy",
        kind: "MailDomain",
        spec: "domain: a.example.com\ndmarc: {policy: block}",
        want: "spec.dmarc.policy",
    },
    Case {
        name: "bad dmarc email",
        kind: "MailDomain",
        spec: "domain: a.example.com\ndmarc: {reportEmail: nobody}",
        want: "spec.dmarc.reportEmail must be an email address",
    },
    Case {
        name: "bad namespace name",
        kind: "MailDomain",
        spec: "domain: a.example.com\nallowedNamespaces: {names: [Not_A_Namespace]}",
        want: "spec.allowedNamespaces.names[0]",
    },
    Case {
        name: "no delivery mode",
        kind: "Relay",
        spec: "domains: [a]\ndelivery: {}",
        want: "spec.delivery must set exactly one of smarthost, direct or capture",
    },
    Case {
        name: "two delivery modes",
        kind: "Relay",
        spec: "domains: [a]\ndelivery: {capture: {}, smarthost: {host: smtp.example.net}}",
        want: "spec.delivery must set exactly one of smarthost, direct or capture",
    },
    Case {
        name: "direct and capture together",
        kind: "Relay",
        spec: "domains: [a]\ndelivery: {capture: {}, direct: {}}",
        want: "spec.delivery must set exactly one of smarthost, direct or capture",
    },
    Case {
        name: "unknown direct TLS policy",
        kind: "Relay",
        spec: "domains: [a]\ndelivery: {direct: {tls: sometimes}}",
        want: "spec.delivery.direct.tls",
    },
    Case {
        name: "unknown DANE mode",
        kind: "Relay",
        spec: "domains: [a]\ndelivery: {direct: {dane: mandatory}}",
        want: "spec.delivery.direct.dane",
    },
    Case {
        name: "no domains",
        kind: "Relay",
        spec: "domains: []\ndelivery: {capture: {}}",
        want: "spec.domains",
    },
    Case {
        name: "duplicate domain",
        kind: "Relay",
        spec: "domains: [a, a]\ndelivery: {capture: {}}",
        want: "spec.domains[1]: Duplicate value",
    },
    Case {
        name: "bad host",
        kind: "Relay",
        spec: "domains: [a]\ndelivery: {smarthost: {host: 'smtp host'}}",
        want: "spec.delivery.smarthost.host must be a host name or IP address",
    },
    Case {
        name: "port zero",
        kind: "Relay",
        spec: "domains: [a]\ndelivery: {smarthost: {host: smtp.example.net, port: 0}}",
        want: "spec.delivery.smarthost.port",
    },
    Case {
        name: "port too big",
        kind: "Relay",
        spec: "domains: [a]\ndelivery: {smarthost: {host: smtp.example.net, port: 70000}}",
        want: "spec.delivery.smarthost.port",
    },
    Case {
        name: "bad tls",
        kind: "Relay",
        spec: "domains: [a]\ndelivery: {smarthost: {host: smtp.example.net, tls: ssl}}",
        want: "spec.delivery.smarthost.tls",
    },
    Case {
        name: "backup host",
        kind: "Relay",
        spec: "domains: [a]\ndelivery: {smarthost: {host: smtp.example.net, backup: {host: 'bad host'}}}",
        want: "spec.delivery.smarthost.backup.host must be a host name or IP address",
    },
    Case {
        name: "backup credentials in plain text",
        kind: "Relay",
        spec: "domains: [a]\ndelivery: {smarthost: {host: smtp.example.net, backup: {host: b.example.net, tls: none, credentialsSecretRef: {name: c}}}}",
        want: "spec.delivery.smarthost.backup.credentialsSecretRef needs tls starttls or implicit",
    },
    Case {
        name: "shaping domain not lower case",
        kind: "Relay",
        spec: "domains: [a]\ndelivery: {capture: {}}\nshaping: {domains: {Gmail.com: {concurrency: 2}}}",
        want: "spec.shaping.domains keys must be lower-case domain names",
    },
    Case {
        name: "shaping concurrency zero",
        kind: "Relay",
        spec: "domains: [a]\ndelivery: {capture: {}}\nshaping: {default: {concurrency: 0}}",
        want: "spec.shaping.default.concurrency",
    },
    Case {
        name: "credentials in plain text",
        kind: "Relay",
        spec: "domains: [a]\ndelivery: {smarthost: {host: smtp.example.net, tls: none, credentialsSecretRef: {name: c}}}",
        want: "credentialsSecretRef needs tls starttls or implicit",
    },
    Case {
        name: "zero retry",
        kind: "Relay",
        spec: "domains: [a]\ndelivery: {capture: {}}\nretry: {initialSeconds: 0}",
        want: "spec.retry.initialSeconds",
    },
    Case {
        name: "max below initial",
        kind: "Relay",
        spec: "domains: [a]\ndelivery: {capture: {}}\nretry: {initialSeconds: 600, maxSeconds: 60}",
        want: "spec.retry.maxSeconds must be at least spec.retry.initialSeconds",
    },
    Case {
        name: "zero recipients",
        kind: "Relay",
        spec: "domains: [a]\ndelivery: {capture: {}}\nlimits: {maxRecipients: 0}",
        want: "spec.limits.maxRecipients",
    },
    Case {
        name: "listen port zero",
        kind: "Relay",
        spec: "domains: [a]\ndelivery: {capture: {}}\nlistenPort: 0",
        want: "spec.listenPort",
    },
    Case {
        name: "AUTH mechanism without credentials",
        kind: "Relay",
        spec: "domains: [a]\ndelivery: {smarthost: {host: smtp.example.net, authMechanism: login}}",
        want: "spec.delivery.smarthost.authMechanism needs credentialsSecretRef",
    },
    Case {
        name: "unknown AUTH mechanism",
        kind: "Relay",
        spec: "domains: [a]\ndelivery: {smarthost: {host: smtp.example.net, credentialsSecretRef: {name: c}, authMechanism: cram-md5}}",
        want: "spec.delivery.smarthost.authMechanism",
    },
    Case {
        name: "smarthost connections zero",
        kind: "Relay",
        spec: "domains: [a]\ndelivery: {smarthost: {host: smtp.example.net, maxConnections: 0}}",
        want: "spec.delivery.smarthost.maxConnections",
    },
    Case {
        name: "per-domain connections over 100",
        kind: "Relay",
        spec: "domains: [a]\ndelivery: {direct: {maxConnectionsPerDomain: 101}}",
        want: "spec.delivery.direct.maxConnectionsPerDomain",
    },
    Case {
        name: "EHLO name that is an address",
        kind: "Relay",
        spec: "domains: [a]\ndelivery: {capture: {}}\nehloName: 192.0.2.1",
        want: "spec.ehloName must be a host name",
    },
    Case {
        name: "EHLO name with a space",
        kind: "Relay",
        spec: "domains: [a]\ndelivery: {capture: {}}\nehloName: 'mail host'",
        want: "spec.ehloName must be a host name",
    },
    Case {
        name: "retry multiplier below 1",
        kind: "Relay",
        spec: "domains: [a]\ndelivery: {capture: {}}\nretry: {multiplier: 0.5}",
        want: "spec.retry.multiplier",
    },
    Case {
        name: "delay notice too soon",
        kind: "Relay",
        spec: "domains: [a]\ndelivery: {capture: {}}\nbounces: {delayNoticeAfterSeconds: 5}",
        want: "spec.bounces.delayNoticeAfterSeconds",
    },
    Case {
        name: "spool smaller than 16 MiB",
        kind: "Relay",
        spec: "domains: [a]\ndelivery: {capture: {}}\nlimits: {spoolMaxBytes: 1024}",
        want: "spec.limits.spoolMaxBytes",
    },
];

/// Every field of the Relay set to a valid value is accepted: the rules above refuse only what
/// they name.
#[tokio::test]
async fn a_relay_with_every_tuning_field_is_accepted() -> Result<()> {
    let cp = ControlPlane::shared().await?;
    let client = cp.client().await?;
    common::install_crds(&client).await?;
    let ns = cp.new_namespace().await?;
    let spec = "domains: [a]\nehloName: mail.example.com\n\
        delivery: {smarthost: {host: smtp.example.net, credentialsSecretRef: {name: c}, authMechanism: xoauth2, maxConnections: 16}}\n\
        retry: {initialSeconds: 30, multiplier: 1.5, maxSeconds: 600}\n\
        bounces: {delayNoticeAfterSeconds: 14400}\n\
        limits: {spoolMaxBytes: 268435456, spoolMaxMessages: 20000}";
    api(client, "Relay", &ns)
        .create(&PostParams::default(), &object("Relay", "tuned", spec)?)
        .await?;
    Ok(())
}

fn api(client: kube::Client, kind: &str, ns: &str) -> Api<DynamicObject> {
    let ar = ApiResource::from_gvk(&GroupVersionKind::gvk("mailroom.dev", "v1alpha1", kind));
    if kind == "Relay" {
        Api::namespaced_with(client, ns, &ar)
    } else {
        Api::all_with(client, &ar)
    }
}

fn object(kind: &str, name: &str, spec: &str) -> Result<DynamicObject> {
    let spec: serde_json::Value = serde_yaml_ng::from_str(spec)?;
    Ok(serde_json::from_value(serde_json::json!({
        "apiVersion": "mailroom.dev/v1alpha1", "kind": kind, "metadata": {"name": name}, "spec": spec,
    }))?)
}

#[tokio::test]
async fn invalid_objects_are_rejected_with_a_message_naming_the_field() -> Result<()> {
    let cp = ControlPlane::shared().await?;
    let client = cp.client().await?;
    common::install_crds(&client).await?;
    let ns = cp.new_namespace().await?;
    let mut failures = Vec::new();
    for (i, case) in CASES.iter().enumerate() {
        let obj = object(case.kind, &format!("invalid-{i}"), case.spec)?;
        match api(client.clone(), case.kind, &ns)
            .create(&PostParams::default(), &obj)
            .await
        {
            Ok(_) => failures.push(format!("{}: accepted", case.name)),
            Err(kube::Error::Api(e)) if e.code == 422 && e.message.contains(case.want) => {}
            Err(e) => failures.push(format!("{}: want {:?}, got {e}", case.name, case.want)),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        CASES.len(),
        failures.join("\n")
    );
    Ok(())
}

#[tokio::test]
async fn domain_and_algorithm_are_immutable() -> Result<()> {
    let cp = ControlPlane::shared().await?;
    let client = cp.client().await?;
    common::install_crds(&client).await?;
    let api = api(client, "MailDomain", "");
    api.create(
        &PostParams::default(),
        &object("MailDomain", "immutable", "domain: a.example.com")?,
    )
    .await?;
    for (patch, want) in [
        (
            serde_json::json!({"spec": {"domain": "b.example.com"}}),
            "spec.domain is immutable",
        ),
        (
            serde_json::json!({"spec": {"dkim": {"algorithm": "ed25519"}}}),
            "spec.dkim.algorithm is immutable",
        ),
    ] {
        let err = api
            .patch("immutable", &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .expect_err("immutable");
        assert!(err.to_string().contains(want), "{err}");
    }
    Ok(())
}

#[tokio::test]
async fn examples_are_accepted() -> Result<()> {
    let cp = ControlPlane::shared().await?;
    let client = cp.client().await?;
    common::install_crds(&client).await?;
    let ns = cp.new_namespace().await?;
    for text in [
        include_str!("../../examples/maildomain.yaml"),
        include_str!("../../examples/relay.yaml"),
        include_str!("../../examples/relay-direct.yaml"),
    ] {
        for doc in serde_yaml_ng::Deserializer::from_str(text) {
            let value = <serde_json::Value as serde::Deserialize>::deserialize(doc)?;
            let mut obj: DynamicObject = serde_json::from_value(value)?;
            let kind = obj.types.as_ref().map(|t| t.kind.clone()).unwrap_or_default();
            obj.metadata.namespace = None;
            api(client.clone(), &kind, &ns)
                .create(&PostParams::default(), &obj)
                .await?;
        }
    }
    Ok(())
}
