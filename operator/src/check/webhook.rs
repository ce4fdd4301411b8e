//! Every ready webhook replica, reached as the apiserver reaches it: TLS verified by the
//! registration's `caBundle` for `<service>.<namespace>.svc`, then an AdmissionReview of a pod
//! that asks for the temporary Relay, which must come back with the injection patch.

use std::{net::SocketAddr, sync::Arc};

use base64::Engine as _;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use k8s_openapi::api::{
    admissionregistration::v1::MutatingWebhookConfiguration, core::v1::Service, discovery::v1::EndpointSlice,
};
use kube::{Api, Client, api::ListParams};
use rustls::{
    ClientConfig, RootCertStore,
    pki_types::{CertificateDer, ServerName, pem::PemObject},
};
use serde_json::{Value, json};
use tokio_rustls::TlsConnector;

use super::{CheckError, CheckSettings, until};
use crate::webhook::inject::SIDECAR_NAME;

/// Where the apiserver sends admissions, and what it trusts.
struct Target {
    service: String,
    namespace: String,
    path: String,
    port: i32,
    ca: Vec<CertificateDer<'static>>,
}

/// Probes each ready endpoint of the webhook Service; returns how many answered correctly.
pub async fn probe(client: &Client, s: &CheckSettings) -> Result<usize, CheckError> {
    let target = target(client, &s.webhook_config).await?;
    let endpoints = until("a ready webhook endpoint", s.timeout, || async {
        let found = endpoints(client, &target).await?;
        Ok(if found.is_empty() {
            Err(format!(
                "no ready endpoint for Service {}/{}",
                target.namespace, target.service
            ))
        } else {
            Ok(found)
        })
    })
    .await?;
    let tls = tls(&target)?;
    let review = review(s);
    for addr in &endpoints {
        let what = format!("webhook replica {addr} to inject");
        until(&what, s.timeout, || async {
            Ok(ask(&tls, &target, *addr, &review).await)
        })
        .await?;
    }
    Ok(endpoints.len())
}

async fn target(client: &Client, name: &str) -> Result<Target, CheckError> {
    let config = Api::<MutatingWebhookConfiguration>::all(client.clone())
        .get(name)
        .await
        .map_err(CheckError::kube(format!(
            "reading MutatingWebhookConfiguration {name}"
        )))?;
    let hook = config
        .webhooks
        .unwrap_or_default()
        .into_iter()
        .next()
        .ok_or_else(|| CheckError::Webhook(format!("{name} registers no webhook")))?;
    let service = hook
        .client_config
        .service
        .ok_or_else(|| CheckError::Webhook(format!("{name} calls a URL, not a Service")))?;
    let pem = hook.client_config.ca_bundle.map(|b| b.0).unwrap_or_default();
    let ca: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| CheckError::Webhook(format!("{name}: caBundle is not PEM: {e}")))?;
    if ca.is_empty() {
        return Err(CheckError::Webhook(format!(
            "{name} has no caBundle yet: the operator (or cert-manager's cainjector) has not set it"
        )));
    }
    Ok(Target {
        service: service.name,
        namespace: service.namespace,
        path: service.path.unwrap_or_else(|| "/".into()),
        port: service.port.unwrap_or(443),
        ca,
    })
}

/// Ready addresses with the container port behind the registration's Service port.
async fn endpoints(client: &Client, t: &Target) -> Result<Vec<SocketAddr>, CheckError> {
    let svc = Api::<Service>::namespaced(client.clone(), &t.namespace)
        .get(&t.service)
        .await
        .map_err(CheckError::kube(format!("reading Service {}", t.service)))?;
    let port_name = svc
        .spec
        .and_then(|s| s.ports)
        .unwrap_or_default()
        .into_iter()
        .find(|p| p.port == t.port)
        .and_then(|p| p.name);
    let slices = Api::<EndpointSlice>::namespaced(client.clone(), &t.namespace)
        .list(&ListParams::default().labels(&format!("kubernetes.io/service-name={}", t.service)))
        .await
        .map_err(CheckError::kube("listing the webhook's EndpointSlices"))?;
    let mut found = Vec::new();
    for slice in slices.items {
        let port = slice
            .ports
            .unwrap_or_default()
            .into_iter()
            .find(|p| p.name == port_name)
            .and_then(|p| p.port);
        let Some(port) = port.and_then(|p| u16::try_from(p).ok()) else {
            continue;
        };
        for ep in slice.endpoints {
            if ep.conditions.and_then(|c| c.ready) == Some(false) {
                continue;
            }
            found.extend(
                ep.addresses
                    .iter()
                    .filter_map(|a| a.parse().ok())
                    .map(|ip| SocketAddr::new(ip, port)),
            );
        }
    }
    Ok(found)
}

fn tls(t: &Target) -> Result<TlsConnector, CheckError> {
    let mut roots = RootCertStore::empty();
    for cert in &t.ca {
        roots
            .add(cert.clone())
            .map_err(|e| CheckError::Webhook(format!("caBundle certificate rejected: {e}")))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| CheckError::Webhook(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}

/// The AdmissionReview the apiserver would send for a pod asking for the temporary Relay
/// (`dryRun`: nothing is created).
fn review(s: &CheckSettings) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": format!("mailroom-check-{}", std::process::id()),
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "name": s.name,
            "namespace": s.namespace,
            "operation": "CREATE",
            "userInfo": {"username": "mailroom-check"},
            "object": {
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": s.name, "namespace": s.namespace,
                             "labels": {"mailroom.dev/relay": s.name}},
                "spec": {"containers": [{"name": "app", "image": "app"}]},
            },
            "oldObject": null,
            "dryRun": true,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
        },
    })
}

/// One admission over TLS; `Ok(())` when the answer injects the sidecar, else why not.
async fn ask(tls: &TlsConnector, t: &Target, addr: SocketAddr, review: &Value) -> Result<(), String> {
    let host = format!("{}.{}.svc", t.service, t.namespace);
    let name = ServerName::try_from(host.clone()).map_err(|e| e.to_string())?;
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let stream = tls
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS to {addr} as {host}: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP to {addr}: {e}"))?;
    tokio::spawn(conn);
    let request = hyper::Request::post(&t.path)
        .header("host", &host)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(review.to_string())))
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("POST {} to {addr}: {e}", t.path))?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("reading the answer of {addr}: {e}"))?
        .to_bytes();
    if !status.is_success() {
        return Err(format!(
            "{addr} answered {status}: {}",
            String::from_utf8_lossy(&body)
        ));
    }
    let answer: Value = serde_json::from_slice(&body).map_err(|e| format!("{addr}: {e}"))?;
    judge(&answer["response"], &review["request"]["uid"]).map_err(|e| format!("{addr}: {e}"))
}

/// Whether an AdmissionReview response allows the pod with a patch that adds the sidecar.
pub(crate) fn judge(response: &Value, uid: &Value) -> Result<(), String> {
    if &response["uid"] != uid {
        return Err(format!("answer for uid {}, not {uid}", response["uid"]));
    }
    if response["allowed"] != true {
        return Err(format!("denied: {}", response["status"]["message"]));
    }
    // The apiserver reads `patch` as Go's []byte: a base64 string, or an array of byte values
    // (what kube-rs writes).
    let patch: Vec<u8> = match &response["patch"] {
        Value::String(b64) => base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|e| format!("patch is not base64: {e}"))?,
        Value::Array(bytes) => bytes
            .iter()
            .map(|b| b.as_u64().and_then(|b| u8::try_from(b).ok()))
            .collect::<Option<_>>()
            .ok_or("patch is not an array of bytes")?,
        _ => return Err("allowed without a patch".into()),
    };
    let patch = String::from_utf8_lossy(&patch);
    if patch.contains(SIDECAR_NAME) {
        Ok(())
    } else {
        Err(format!("the patch adds no {SIDECAR_NAME}: {patch}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_allowed_answer_for_our_uid_that_adds_the_sidecar_passes() {
        let uid = json!("u1");
        let patch = |p: &str| base64::engine::general_purpose::STANDARD.encode(p);
        let good = json!({"uid": "u1", "allowed": true,
            "patch": patch(r#"[{"op":"add","path":"/spec/initContainers","value":[{"name":"mailroom-sidecar"}]}]"#)});
        assert_eq!(judge(&good, &uid), Ok(()));
        let other = json!({"uid": "u2", "allowed": true, "patch": patch("mailroom-sidecar")});
        assert!(judge(&other, &uid).is_err_and(|e| e.contains("not")));
        let denied = json!({"uid": "u1", "allowed": false, "status": {"message": "Relay x does not exist"}});
        assert!(judge(&denied, &uid).is_err_and(|e| e.contains("does not exist")));
        let skipped = json!({"uid": "u1", "allowed": true});
        assert!(judge(&skipped, &uid).is_err_and(|e| e.contains("without a patch")));
        let foreign = json!({"uid": "u1", "allowed": true, "patch": patch("[]")});
        assert!(judge(&foreign, &uid).is_err_and(|e| e.contains("adds no")));
        // What the operator's own webhook sends: kube-rs serializes the bytes as an array.
        let bytes: Vec<u8> = b"[{\"op\":\"add\",\"value\":{\"name\":\"mailroom-sidecar\"}}]".to_vec();
        let array = json!({"uid": "u1", "allowed": true, "patch": bytes});
        assert_eq!(judge(&array, &uid), Ok(()));
    }
}
