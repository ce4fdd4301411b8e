//! MailDomain reconcile: ensure the DKIM key Secret (create once, never replace), compute the DNS
//! records, check them in live DNS, patch status, and publish events on transitions.

use std::{collections::BTreeMap, sync::Arc};

use k8s_openapi::{ByteString, api::core::v1::Secret};
use kube::{
    Api, ResourceExt,
    api::{ObjectMeta, PostParams},
    runtime::controller::Action,
};

use super::{Context, now};
use crate::{
    Error, Result,
    apply::patch_status,
    conditions::{self, Cond, DKIM_KEY_READY, DNS_VERIFIED, READY},
    crd::{DkimStatus, DnsRecordStatus, MailDomain, MailDomainStatus},
    dkim::{self, KeyPair},
    events::Reason,
    records,
};

/// Label on DKIM key Secrets naming their MailDomain.
pub const KEY_LABEL: &str = "mailroom.dev/mail-domain";
/// Secret key holding the PKCS#8 PEM private key.
pub const PRIVATE_KEY: &str = "private.pem";

/// Name of the key Secret for MailDomain `name` (in the operator's namespace).
pub fn key_secret_name(name: &str) -> String {
    format!("dkim-{name}")
}

/// Reconciles one MailDomain.
pub async fn reconcile(md: Arc<MailDomain>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.start("MailDomain");
    let name = md.name_any();
    let api: Api<MailDomain> = Api::all(ctx.client.clone());
    let old = md.status.clone().unwrap_or_default();
    let mut status = MailDomainStatus {
        conditions: old.conditions.clone(),
        observed_generation: md.metadata.generation,
        dkim: old.dkim.clone(),
        dns_records: old.dns_records.clone(),
    };
    let generation = md.metadata.generation;
    let t = now();
    let action = match ensure_key(&md, &ctx).await {
        Ok((key, generated)) => {
            if generated {
                let note = format!(
                    "generated a {} DKIM key for {}",
                    md.spec.dkim.algorithm.as_str(),
                    md.spec.domain
                );
                ctx.events.normal(&*md, Reason::KeyGenerated, note).await;
            }
            status.dkim = Some(DkimStatus {
                selector: md.spec.dkim.selector.clone(),
                algorithm: md.spec.dkim.algorithm.as_str().into(),
                fingerprint: key.fingerprint(),
                secret_name: key_secret_name(&name),
            });
            let msg = format!(
                "MailDomain {name} has its DKIM key in Secret {}",
                key_secret_name(&name)
            );
            conditions::set(
                &mut status.conditions,
                Cond::yes(DKIM_KEY_READY, Reason::KeyReady, msg),
                generation,
                &t,
            );
            let verified = check_dns(&md, &key, &ctx, &mut status).await;
            let dns = if verified {
                Cond::yes(
                    DNS_VERIFIED,
                    Reason::RecordsVerified,
                    format!("MailDomain {name}: every record is in DNS"),
                )
            } else {
                let msg = format!("MailDomain {name}: publish the records in status.dnsRecords");
                Cond::no(DNS_VERIFIED, Reason::RecordsNotVerified, msg)
            };
            conditions::set(&mut status.conditions, dns, generation, &t);
            let msg = format!("MailDomain {name} is ready for Relays");
            conditions::set(
                &mut status.conditions,
                Cond::yes(READY, Reason::Reconciled, msg),
                generation,
                &t,
            );
            Action::requeue(ctx.settings.dns_recheck)
        }
        Err(e) if e.is_spec_error() || matches!(e, Error::KeyGeneration(_)) => {
            let msg = format!("MailDomain {name}: {e}");
            let no = |t| Cond::no(t, e.reason(), msg.clone());
            conditions::set(&mut status.conditions, no(DKIM_KEY_READY), generation, &t);
            conditions::set(&mut status.conditions, no(READY), generation, &t);
            ctx.metrics.failure("MailDomain", e.metric_label());
            Action::await_change()
        }
        Err(e) => return Err(e),
    };
    publish_transitions(&md, &old, &status, &ctx).await;
    ctx.metrics.set_ready(
        "MailDomain",
        "",
        &name,
        conditions::is_true(&status.conditions, READY),
    );
    let value = serde_json::to_value(&status).map_err(|e| Error::InvalidSpec(e.to_string()))?;
    patch_status(&api, &name, value).await?;
    Ok(action)
}

/// The key pair, and whether it was generated now. Never replaces an existing Secret.
async fn ensure_key(md: &MailDomain, ctx: &Context) -> Result<(KeyPair, bool)> {
    let name = md.name_any();
    let secret_name = key_secret_name(&name);
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ctx.settings.namespace);
    let recorded = md
        .status
        .as_ref()
        .and_then(|s| s.dkim.as_ref())
        .map(|d| d.fingerprint.clone());
    let existing = secrets
        .get_opt(&secret_name)
        .await
        .map_err(Error::kube("get DKIM Secret"))?;
    let (key, generated) = match existing {
        Some(secret) => (read_key(md, &secret, &secret_name)?, false),
        None if recorded.is_some() => {
            return Err(Error::DkimKeyLost {
                name: secret_name,
                fingerprint: recorded.unwrap_or_default(),
            });
        }
        None => {
            let algorithm = md.spec.dkim.algorithm;
            let key = tokio::task::spawn_blocking(move || KeyPair::generate(algorithm))
                .await
                .map_err(|e| Error::KeyGeneration(e.to_string()))??;
            match secrets
                .create(&PostParams::default(), &key_secret(md, &secret_name, &key))
                .await
            {
                Ok(_) => (key, true),
                // Another replica (or an earlier run) won the race: use what is stored.
                Err(kube::Error::Api(s)) if s.code == 409 => {
                    let secret = secrets
                        .get(&secret_name)
                        .await
                        .map_err(Error::kube("get DKIM Secret"))?;
                    (read_key(md, &secret, &secret_name)?, false)
                }
                Err(e) => return Err(Error::kube("create DKIM Secret")(e)),
            }
        }
    };
    if let Some(fp) = recorded
        && fp != key.fingerprint()
    {
        return Err(Error::DkimKeyChanged {
            name: secret_name,
            detail: format!("status records {fp}, the Secret holds {}", key.fingerprint()),
        });
    }
    Ok((key, generated))
}

fn read_key(md: &MailDomain, secret: &Secret, secret_name: &str) -> Result<KeyPair> {
    let pem = secret
        .data
        .as_ref()
        .and_then(|d| d.get(PRIVATE_KEY))
        .and_then(|b| String::from_utf8(b.0.clone()).ok())
        .ok_or_else(|| Error::DkimKeyChanged {
            name: secret_name.into(),
            detail: format!("key {PRIVATE_KEY} is missing or not text"),
        })?;
    KeyPair::from_private_pem(md.spec.dkim.algorithm, &pem).map_err(|e| Error::DkimKeyChanged {
        name: secret_name.into(),
        detail: e.to_string(),
    })
}

fn key_secret(md: &MailDomain, secret_name: &str, key: &KeyPair) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(secret_name.into()),
            labels: Some(BTreeMap::from([(KEY_LABEL.to_string(), md.name_any())])),
            annotations: Some(BTreeMap::from([
                ("mailroom.dev/domain".to_string(), md.spec.domain.clone()),
                (
                    "mailroom.dev/algorithm".to_string(),
                    key.algorithm.as_str().to_string(),
                ),
                ("mailroom.dev/fingerprint".to_string(), key.fingerprint()),
            ])),
            ..Default::default()
        },
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([(
            PRIVATE_KEY.to_string(),
            ByteString(key.private_pem.as_bytes().to_vec()),
        )])),
        ..Default::default()
    }
}

/// Looks every record up and fills `status.dns_records`; true when all match.
async fn check_dns(md: &MailDomain, key: &KeyPair, ctx: &Context, status: &mut MailDomainStatus) -> bool {
    let mut all = true;
    status.dns_records.clear();
    for record in records::desired(&md.spec, &key.txt_value()) {
        let (verified, observed) = match ctx.dns.txt(&record.name).await {
            Ok(observed) => (records::matches(&record, &observed), observed),
            Err(e) => (false, vec![format!("lookup failed: {e}")]),
        };
        ctx.metrics
            .set_dns(&md.spec.domain, record.purpose.as_str(), verified);
        all &= verified;
        status.dns_records.push(DnsRecordStatus {
            purpose: record.purpose.as_str().into(),
            name: record.name.clone(),
            type_: "TXT".into(),
            value: dkim::split_txt(&record.value),
            verified,
            observed,
            last_checked: Some(now()),
        });
    }
    all
}

async fn publish_transitions(md: &MailDomain, old: &MailDomainStatus, new: &MailDomainStatus, ctx: &Context) {
    for type_ in [READY, DNS_VERIFIED] {
        let Some(now) = conditions::get(&new.conditions, type_) else {
            continue;
        };
        let before = conditions::get(&old.conditions, type_);
        if before.is_some_and(|b| b.status == now.status && b.reason == now.reason) {
            continue;
        }
        let reason = Reason::parse(&now.reason).unwrap_or(Reason::ApplyFailed);
        if now.status == "True" {
            ctx.events.normal(md, reason, now.message.clone()).await;
        } else {
            ctx.events.warn(md, reason, now.message.clone()).await;
        }
    }
}
