//! Pure admission decisions: which Relay a pod asks for, and the answer once the Relay was looked
//! up (inject, deny naming the Relay and its Ready reason, or admit unchanged with a warning).

use k8s_openapi::api::core::v1::Pod;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, Operation};

use super::inject;
use crate::{
    conditions::READY,
    crd::Relay,
    settings::{MissingRelay, WebhookSettings},
};

/// How an admission request ended; the `result` label of the admission metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The sidecar was injected.
    Injected,
    /// The pod already had the sidecar; admitted unchanged.
    AlreadyInjected,
    /// Not a pod creation, or the pod did not ask; admitted unchanged.
    Skipped,
    /// Rejected (missing or not-Ready Relay under `deny`, or a pod we cannot inject).
    Denied,
    /// The Relay is missing or not Ready and the policy is `allow`: admitted without a sidecar.
    AllowedWithoutSidecar,
    /// The request could not be read, or the Relay could not be looked up.
    Error,
}

/// What a request needs before it can be answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wanted {
    /// Answer without looking anything up.
    Answer(Outcome),
    /// The pod asks for the label but names no Relay.
    NoName,
    /// Look up this Relay in the pod's namespace.
    Relay {
        /// The pod's namespace (from the request: a pod being created may not carry it).
        namespace: String,
        /// The Relay's name.
        name: String,
    },
}

// === impl Outcome ===

impl Outcome {
    /// The bounded metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Injected => "injected",
            Self::AlreadyInjected => "already_injected",
            Self::Skipped => "skipped",
            Self::Denied => "denied",
            Self::AllowedWithoutSidecar => "allowed_without_sidecar",
            Self::Error => "error",
        }
    }
}

/// What `req` needs: nothing (skip, already injected) or a Relay lookup.
pub fn wanted(req: &AdmissionRequest<Pod>) -> Wanted {
    let Some(pod) = req.object.as_ref().filter(|_| req.operation == Operation::Create) else {
        return Wanted::Answer(Outcome::Skipped);
    };
    if !pod
        .metadata
        .labels
        .as_ref()
        .is_some_and(|l| l.contains_key(inject::RELAY_LABEL))
    {
        // The objectSelector keeps these away; a misconfigured webhook must still not inject.
        return Wanted::Answer(Outcome::Skipped);
    }
    if inject::is_injected(pod) {
        return Wanted::Answer(Outcome::AlreadyInjected);
    }
    let namespace = req.namespace.clone().or_else(|| pod.metadata.namespace.clone());
    match (inject::relay_name(pod), namespace) {
        (Some(name), Some(namespace)) => Wanted::Relay { namespace, name },
        _ => Wanted::NoName,
    }
}

/// The answer for `req` given what [`wanted`] asked for and the Relay found (if any).
pub fn answer(
    req: &AdmissionRequest<Pod>,
    wanted: &Wanted,
    relay: Option<&Relay>,
    settings: &WebhookSettings,
) -> (AdmissionResponse, Outcome) {
    let response = AdmissionResponse::from(req);
    let (namespace, name) = match wanted {
        Wanted::Answer(outcome) => return (response, *outcome),
        Wanted::NoName => {
            let msg = format!(
                "mailroom: pod {} has label {} but names no Relay (set the label's value, or the \
                 annotation {} when the label is empty)",
                pod_name(req),
                inject::RELAY_LABEL,
                inject::RELAY_ANNOTATION
            );
            return unusable(response, msg, settings);
        }
        Wanted::Relay { namespace, name } => (namespace, name),
    };
    let Some(relay) = relay else {
        let msg = format!(
            "mailroom: pod {} asks for Relay {namespace}/{name} (label {}), which does not exist",
            pod_name(req),
            inject::RELAY_LABEL
        );
        return unusable(response, msg, settings);
    };
    if let Some(reason) = not_ready(relay) {
        let msg = format!(
            "mailroom: pod {} asks for Relay {namespace}/{name}, which is not Ready ({reason})",
            pod_name(req)
        );
        return unusable(response, msg, settings);
    }
    let Some(pod) = req.object.as_ref() else {
        return (response, Outcome::Skipped);
    };
    match inject::patch(pod, relay, settings) {
        Ok(ops) if ops.is_empty() => (response, Outcome::AlreadyInjected),
        Ok(ops) => match response.clone().with_patch(json_patch::Patch(ops)) {
            Ok(r) => (r, Outcome::Injected),
            Err(e) => (response.deny(format!("mailroom: {e}")), Outcome::Error),
        },
        Err(e) => (
            response.deny(format!("mailroom: cannot inject pod {}: {e}", pod_name(req))),
            Outcome::Denied,
        ),
    }
}

/// The response when the Relay cannot be used (`msg` says why), by policy.
pub fn unusable(
    response: AdmissionResponse,
    msg: String,
    settings: &WebhookSettings,
) -> (AdmissionResponse, Outcome) {
    match settings.on_missing_relay {
        MissingRelay::Deny => (response.deny(msg), Outcome::Denied),
        MissingRelay::Allow => {
            let mut r = response;
            r.warnings = Some(vec![format!("{msg}; admitted without the sidecar")]);
            (r, Outcome::AllowedWithoutSidecar)
        }
    }
}

/// Whether the Relay's Ready condition is True.
pub fn is_ready(relay: &Relay) -> bool {
    not_ready(relay).is_none()
}

/// `None` when the Relay's Ready condition is True; else `Reason: message` (or why unknown).
fn not_ready(relay: &Relay) -> Option<String> {
    let conditions = relay
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    match conditions.iter().find(|c| c.type_ == READY) {
        Some(c) if c.status == "True" => None,
        Some(c) => Some(format!("{}: {}", c.reason, c.message)),
        None => Some("NotReconciled: the operator has not reconciled it yet".into()),
    }
}

/// `namespace/name`, or `namespace/<generateName>*` for pods named by the apiserver.
fn pod_name(req: &AdmissionRequest<Pod>) -> String {
    let meta = req.object.as_ref().map(|p| &p.metadata);
    let name = meta
        .and_then(|m| m.name.clone())
        .or_else(|| {
            meta.and_then(|m| m.generate_name.clone())
                .map(|g| format!("{g}*"))
        })
        .unwrap_or_else(|| req.name.clone());
    format!("{}/{name}", req.namespace.clone().unwrap_or_default())
}

#[cfg(test)]
mod tests;
