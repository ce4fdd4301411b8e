//! `kubectl mailroom status`: MailDomains, Relays, DNS and hub state in one view, from the
//! objects' status (what `kubectl get` shows, side by side).

use anyhow::Result;
use kube::{
    Api, Client,
    api::{ApiResource, DynamicObject, GroupVersionKind, ListParams},
};
use serde_json::{Value, json};
use std::fmt::Write as _;

fn resource(kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("mailroom.dev", "v1alpha1", kind), plural)
}

/// The MailDomain API (cluster-scoped).
pub fn mail_domains(client: &Client) -> Api<DynamicObject> {
    Api::all_with(client.clone(), &resource("MailDomain", "maildomains"))
}

/// The Relay API in `ns`, or in every namespace.
pub fn relays(client: &Client, ns: Option<&str>) -> Api<DynamicObject> {
    let ar = resource("Relay", "relays");
    match ns {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
        None => Api::all_with(client.clone(), &ar),
    }
}

/// The status of condition `kind` (`True`, `False`, `Unknown`), or `-`.
fn condition<'a>(obj: &'a Value, kind: &str, field: &str) -> &'a str {
    obj["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == kind))
        .and_then(|c| c[field].as_str())
        .unwrap_or("-")
}

/// Every MailDomain and the Relays in `ns` (every namespace when `None`), as JSON.
pub async fn gather(client: &Client, ns: Option<&str>) -> Result<Value> {
    let lp = ListParams::default();
    let domains = mail_domains(client).list(&lp).await?;
    let relays = relays(client, ns).list(&lp).await?;
    let value = |o: &DynamicObject| serde_json::to_value(o).unwrap_or(Value::Null);
    let domains: Vec<Value> = domains
        .items
        .iter()
        .map(value)
        .map(|d| {
            json!({
                "name": d["metadata"]["name"],
                "domain": d["spec"]["domain"],
                "ready": condition(&d, "Ready", "status"),
                "reason": condition(&d, "Ready", "reason"),
                "dnsVerified": condition(&d, "DnsVerified", "status"),
                "dnsPublished": condition(&d, "DnsPublished", "status"),
                "selector": d["status"]["dkim"]["selector"],
                "rotation": d["status"]["dkim"]["phase"],
                "message": condition(&d, "Ready", "message"),
            })
        })
        .collect();
    let relays: Vec<Value> = relays
        .items
        .iter()
        .map(value)
        .map(|r| {
            json!({
                "namespace": r["metadata"]["namespace"],
                "name": r["metadata"]["name"],
                "mode": r["status"]["mode"],
                "domains": r["spec"]["domains"],
                "ready": condition(&r, "Ready", "status"),
                "reason": condition(&r, "Ready", "reason"),
                "pods": r["status"]["pods"],
                "hub": condition(&r, "HubReady", "status"),
                "message": condition(&r, "Ready", "message"),
            })
        })
        .collect();
    Ok(json!({"mailDomains": domains, "relays": relays}))
}

/// The human view of [`gather`]'s answer.
pub fn text(v: &Value) -> String {
    let s = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    };
    let mut out = format!(
        "{:<24} {:<28} {:<6} {:<5} {:<9} {:<10} {:<9} {}\n",
        "MAILDOMAIN", "DOMAIN", "READY", "DNS", "PUBLISHED", "SELECTOR", "ROTATION", "MESSAGE"
    );
    for d in v["mailDomains"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "{:<24} {:<28} {:<6} {:<5} {:<9} {:<10} {:<9} {}",
            s(&d["name"]),
            s(&d["domain"]),
            s(&d["ready"]),
            s(&d["dnsVerified"]),
            s(&d["dnsPublished"]),
            s(&d["selector"]),
            s(&d["rotation"]),
            s(&d["message"])
        );
    }
    let _ = writeln!(
        out,
        "\n{:<32} {:<10} {:<6} {:<5} {:<6} MESSAGE",
        "RELAY", "MODE", "READY", "PODS", "HUB"
    );
    for r in v["relays"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "{:<32} {:<10} {:<6} {:<5} {:<6} {}",
            format!("{}/{}", s(&r["namespace"]), s(&r["name"])),
            s(&r["mode"]),
            s(&r["ready"]),
            s(&r["pods"]),
            s(&r["hub"]),
            s(&r["message"])
        );
    }
    out
}
