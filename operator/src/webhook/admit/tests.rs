use std::collections::HashMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::core::admission::AdmissionReview;
use serde_json::json;

use super::*;
use crate::{
    crd::RelayStatus,
    settings::{ENV_INJECT_ON_MISSING_RELAY, Settings},
};

fn settings(policy: &str) -> WebhookSettings {
    let env = HashMap::from([(ENV_INJECT_ON_MISSING_RELAY, policy)]);
    Settings::parse(&env).expect("settings").webhook
}

fn request(operation: &str, pod: serde_json::Value) -> AdmissionRequest<Pod> {
    let review = json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "u-1",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "shop",
            "operation": operation,
            "userInfo": {"username": "test"},
            "object": pod,
        }
    });
    let review: AdmissionReview<Pod> = serde_json::from_value(review).expect("review");
    review.try_into().expect("request")
}

fn app(labels: serde_json::Value) -> serde_json::Value {
    json!({
        "metadata": {"generateName": "app-", "labels": labels},
        "spec": {"containers": [{"name": "app", "image": "app"}]}
    })
}

fn relay(ready: Option<(&str, &str)>) -> Relay {
    let mut relay = Relay::test("shop", "outbound", &["shop"]);
    relay.status = ready.map(|(status, reason)| RelayStatus {
        conditions: vec![Condition {
            type_: "Ready".into(),
            status: status.into(),
            reason: reason.into(),
            message: format!("Relay shop/outbound: {reason}"),
            last_transition_time: Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
            observed_generation: None,
        }],
        ..Default::default()
    });
    relay
}

fn decide(req: &AdmissionRequest<Pod>, found: Option<&Relay>, policy: &str) -> (AdmissionResponse, Outcome) {
    let wanted = wanted(req);
    answer(req, &wanted, found, &settings(policy))
}

#[test]
fn requests_that_do_not_ask_are_skipped_without_a_lookup() {
    let update = request("UPDATE", app(json!({"mailroom.dev/relay": "outbound"})));
    assert_eq!(wanted(&update), Wanted::Answer(Outcome::Skipped));
    let unlabelled = request("CREATE", app(json!({"app": "x"})));
    assert_eq!(wanted(&unlabelled), Wanted::Answer(Outcome::Skipped));
    let (r, outcome) = decide(&unlabelled, None, "deny");
    assert!(r.allowed && r.patch.is_none());
    assert_eq!(outcome, Outcome::Skipped);
}

#[test]
fn ready_relay_injects_with_a_json_patch() {
    let req = request("CREATE", app(json!({"mailroom.dev/relay": "outbound"})));
    assert_eq!(
        wanted(&req),
        Wanted::Relay {
            namespace: "shop".into(),
            name: "outbound".into()
        }
    );
    let (r, outcome) = decide(&req, Some(&relay(Some(("True", "Reconciled")))), "deny");
    assert_eq!(outcome, Outcome::Injected);
    assert!(r.allowed);
    let patch: serde_json::Value = serde_json::from_slice(&r.patch.expect("patch")).expect("json");
    assert!(patch.to_string().contains("mailroom-sidecar"));
}

#[test]
fn missing_or_unready_relay_is_denied_naming_it_and_its_reason() {
    let req = request("CREATE", app(json!({"mailroom.dev/relay": "outbound"})));
    let (r, outcome) = decide(&req, None, "deny");
    assert_eq!(outcome, Outcome::Denied);
    assert!(!r.allowed);
    assert!(
        r.result.message.contains("Relay shop/outbound"),
        "{}",
        r.result.message
    );
    assert!(
        r.result.message.contains("does not exist"),
        "{}",
        r.result.message
    );
    assert!(r.result.message.contains("shop/app-*"), "{}", r.result.message);

    let (r, outcome) = decide(&req, Some(&relay(Some(("False", "DomainNotReady")))), "deny");
    assert_eq!(outcome, Outcome::Denied);
    assert!(
        r.result.message.contains("not Ready (DomainNotReady: "),
        "{}",
        r.result.message
    );

    let (r, _) = decide(&req, Some(&relay(None)), "deny");
    assert!(r.result.message.contains("NotReconciled"), "{}", r.result.message);
}

#[test]
fn allow_policy_admits_unchanged_with_a_warning() {
    let req = request("CREATE", app(json!({"mailroom.dev/relay": "outbound"})));
    let (r, outcome) = decide(&req, None, "allow");
    assert_eq!(outcome, Outcome::AllowedWithoutSidecar);
    assert!(r.allowed && r.patch.is_none());
    let warnings = r.warnings.unwrap_or_default();
    assert!(warnings[0].contains("Relay shop/outbound"), "{warnings:?}");
}

#[test]
fn empty_label_without_annotation_names_no_relay() {
    let req = request("CREATE", app(json!({"mailroom.dev/relay": ""})));
    assert_eq!(wanted(&req), Wanted::NoName);
    let (r, outcome) = decide(&req, None, "deny");
    assert_eq!(outcome, Outcome::Denied);
    assert!(
        r.result.message.contains("names no Relay"),
        "{}",
        r.result.message
    );
}

#[test]
fn an_injected_pod_is_admitted_unchanged() {
    let mut pod = app(json!({"mailroom.dev/relay": "outbound"}));
    pod["spec"]["initContainers"] = json!([{"name": "mailroom-sidecar", "image": "x"}]);
    let req = request("CREATE", pod);
    assert_eq!(wanted(&req), Wanted::Answer(Outcome::AlreadyInjected));
    let (r, _) = decide(&req, None, "deny");
    assert!(r.allowed && r.patch.is_none());
}

/// What `mailroom-operator check` (helm test) accepts is what this webhook sends, as it goes
/// over the wire; and a skipped pod does not pass for an injected one.
#[test]
fn the_helm_test_check_accepts_this_webhooks_injection_and_only_that() {
    let req = request("CREATE", app(json!({"mailroom.dev/relay": "outbound"})));
    let (r, _) = decide(&req, Some(&relay(Some(("True", "Reconciled")))), "deny");
    let wire = serde_json::to_value(r.into_review()).expect("json");
    assert_eq!(
        crate::check::webhook::judge(&wire["response"], &json!("u-1")),
        Ok(())
    );
    let skipped = request("CREATE", app(json!({"app": "x"})));
    let (r, _) = decide(&skipped, None, "deny");
    let wire = serde_json::to_value(r.into_review()).expect("json");
    assert!(crate::check::webhook::judge(&wire["response"], &json!("u-1")).is_err());
}
