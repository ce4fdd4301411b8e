//! `mailroom-operator check`: what `helm test` runs after an install (as cert-manager's
//! startupapicheck does for its webhook). It proves the parts work together, not only that pods
//! are Ready:
//!
//! 1. a temporary MailDomain and a capture Relay become Ready, and the sidecar config the leader
//!    renders for the Relay passes the sidecar's own validation ([`relay`]);
//! 2. every ready webhook replica behind the Service answers over TLS with a certificate that the
//!    MutatingWebhookConfiguration's `caBundle` verifies for the Service's name, and injects the
//!    sidecar into a pod that asks for that Relay ([`webhook`]);
//! 3. the temporary objects are deleted, whatever happened.

mod relay;
pub(crate) mod webhook;

use std::time::Duration;

use kube::Client;

/// What the check needs to know about the installation.
#[derive(Debug, Clone)]
pub struct CheckSettings {
    /// Namespace of the temporary Relay (the release namespace: the test pod's RBAC is there).
    pub namespace: String,
    /// Name of the temporary MailDomain and Relay.
    pub name: String,
    /// The MutatingWebhookConfiguration to probe.
    pub webhook_config: String,
    /// How long each step may take.
    pub timeout: Duration,
}

/// Why the installation does not work.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// An apiserver call failed.
    #[error("{what}: {source}")]
    Kube {
        /// The call.
        what: String,
        /// The client's error.
        #[source]
        source: kube::Error,
    },
    /// A step did not finish in time; the last thing seen says why.
    #[error("{what} within {seconds} s; last seen: {last}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// The deadline.
        seconds: u64,
        /// The last state or error observed.
        last: String,
    },
    /// The rendered sidecar config is invalid.
    #[error("the config rendered for Relay {relay} is invalid: {problem}")]
    Rendered {
        /// The Relay.
        relay: String,
        /// The sidecar's validation error.
        problem: String,
    },
    /// The webhook registration or a replica is wrong.
    #[error("webhook: {0}")]
    Webhook(String),
}

impl CheckError {
    fn kube(what: impl Into<String>) -> impl FnOnce(kube::Error) -> Self {
        let what = what.into();
        move |source| Self::Kube { what, source }
    }
}

/// Runs every step; each success is reported through `report` as it happens. The temporary
/// objects are removed whether the steps passed or not.
pub async fn run(
    client: &Client,
    settings: &CheckSettings,
    report: &mut dyn FnMut(String),
) -> Result<(), CheckError> {
    let outcome = steps(client, settings, report).await;
    let cleanup = relay::remove(client, settings).await;
    match (outcome, cleanup) {
        (Err(e), _) | (Ok(()), Err(e)) => Err(e),
        (Ok(()), Ok(())) => {
            report(format!(
                "ok   removed the temporary MailDomain and Relay {}",
                settings.name
            ));
            Ok(())
        }
    }
}

async fn steps(
    client: &Client,
    settings: &CheckSettings,
    report: &mut dyn FnMut(String),
) -> Result<(), CheckError> {
    let rendered = relay::create_and_render(client, settings).await?;
    report(format!(
        "ok   Relay {}/{} is Ready and its rendered config ({} bytes) is a valid sidecar config",
        settings.namespace, settings.name, rendered
    ));
    let answered = webhook::probe(client, settings).await?;
    report(format!(
        "ok   webhook: {answered} replica(s) answer over TLS, verified by the caBundle, and inject the sidecar"
    ));
    Ok(())
}

/// Polls `attempt` every half second until it returns `Ok(Some(_))`, or fails with the last
/// `Ok(None)` reason or error once `timeout` has passed.
async fn until<T, F, Fut>(what: &str, timeout: Duration, mut attempt: F) -> Result<T, CheckError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Result<T, String>, CheckError>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let last = match attempt().await {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(reason)) => reason,
            Err(e) => e.to_string(),
        };
        if tokio::time::Instant::now() >= deadline {
            return Err(CheckError::Timeout {
                what: what.to_string(),
                seconds: timeout.as_secs(),
                last,
            });
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
