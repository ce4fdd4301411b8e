//! DKIM key Secrets in the operator's namespace, one per key, labelled with their MailDomain:
//! created once and never replaced, read back, listed for recovery, deleted only on retirement.

use std::collections::BTreeMap;

use k8s_openapi::{ByteString, api::core::v1::Secret, jiff::Timestamp};
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, ListParams, ObjectMeta, PostParams},
};

use super::super::Context;
use crate::{Error, Result, crd::MailDomain, dkim::KeyPair, rotation};

/// Label on DKIM key Secrets naming their MailDomain.
pub const KEY_LABEL: &str = "mailroom.dev/mail-domain";
/// Secret key holding the PKCS#8 PEM private key.
pub const PRIVATE_KEY: &str = "private.pem";
/// Annotation on a rotated key's Secret: its selector.
pub const SELECTOR_ANNOTATION: &str = "mailroom.dev/selector";
/// Annotation on a key Secret: when the key was created (RFC 3339).
pub const CREATED_ANNOTATION: &str = "mailroom.dev/created-at";
const FINGERPRINT_ANNOTATION: &str = "mailroom.dev/fingerprint";

/// Name of the first key's Secret for MailDomain `name`.
pub fn key_secret_name(name: &str) -> String {
    format!("dkim-{name}")
}

fn api(ctx: &Context) -> Api<Secret> {
    Api::namespaced(ctx.client.clone(), &ctx.settings.namespace)
}

/// The signing key, when it was created, and whether it was generated now. Never replaces an
/// existing Secret; a Secret lost after its key was recorded is an error.
pub async fn ensure_active(md: &MailDomain, ctx: &Context) -> Result<(KeyPair, Timestamp, bool)> {
    let recorded = md.status.as_ref().and_then(|s| s.dkim.as_ref());
    let secret_name = recorded.map_or_else(|| key_secret_name(&md.name_any()), |d| d.secret_name.clone());
    let existing = api(ctx)
        .get_opt(&secret_name)
        .await
        .map_err(Error::kube("get DKIM Secret"))?;
    let (key, created, generated) = match existing {
        Some(secret) => (read_key(md, &secret, &secret_name)?, created(&secret), false),
        None if recorded.is_some() => {
            return Err(Error::DkimKeyLost {
                name: secret_name,
                fingerprint: recorded.map(|d| d.fingerprint.clone()).unwrap_or_default(),
            });
        }
        None => {
            let (key, created, made) = create(md, ctx, &secret_name, None).await?;
            (key, created, made)
        }
    };
    if let Some(d) = recorded
        && d.fingerprint != key.fingerprint()
    {
        return Err(Error::DkimKeyChanged {
            name: secret_name,
            detail: format!(
                "status records {}, the Secret holds {}",
                d.fingerprint,
                key.fingerprint()
            ),
        });
    }
    Ok((key, created, generated))
}

/// Generates the key of a rotation into its Secret; if the Secret already exists (an earlier run
/// or another replica), uses what it holds.
pub async fn create_rotated(md: &MailDomain, ctx: &Context, key: &rotation::Key) -> Result<KeyPair> {
    let (pair, _, _) = create(md, ctx, &key.secret_name, Some(&key.selector)).await?;
    Ok(pair)
}

async fn create(
    md: &MailDomain,
    ctx: &Context,
    secret_name: &str,
    selector: Option<&str>,
) -> Result<(KeyPair, Timestamp, bool)> {
    let algorithm = md.spec.dkim.algorithm;
    let key = tokio::task::spawn_blocking(move || KeyPair::generate(algorithm))
        .await
        .map_err(|e| Error::KeyGeneration(e.to_string()))??;
    let now = Timestamp::now();
    let secret = key_secret(md, secret_name, selector, &key, now);
    match api(ctx).create(&PostParams::default(), &secret).await {
        Ok(_) => Ok((key, now, true)),
        // Another replica (or an earlier run) won the race: use what is stored.
        Err(kube::Error::Api(s)) if s.code == 409 => {
            let secret = api(ctx)
                .get(secret_name)
                .await
                .map_err(Error::kube("get DKIM Secret"))?;
            Ok((read_key(md, &secret, secret_name)?, created(&secret), false))
        }
        Err(e) => Err(Error::kube("create DKIM Secret")(e)),
    }
}

/// The key in Secret `name`, or `None` when the Secret is gone or does not hold a readable key.
pub async fn read_opt(md: &MailDomain, ctx: &Context, name: &str) -> Result<Option<KeyPair>> {
    let secret = api(ctx)
        .get_opt(name)
        .await
        .map_err(Error::kube("get DKIM Secret"))?;
    Ok(secret.and_then(|s| read(md, &s)))
}

/// The key in `secret`, or `None` (logged) when it does not hold a readable one.
pub fn read(md: &MailDomain, secret: &Secret) -> Option<KeyPair> {
    let name = secret.name_any();
    match read_key(md, secret, &name) {
        Ok(k) => Some(k),
        Err(error) => {
            tracing::warn!(secret = name, %error, "unreadable DKIM key Secret");
            None
        }
    }
}

/// Rotated key Secrets of `md` that are none of `known`, each with the key it describes (its
/// selector comes from the annotation; Secrets without one are not ours to resume).
pub async fn unknown(md: &MailDomain, ctx: &Context, known: &[&str]) -> Result<Vec<(rotation::Key, Secret)>> {
    let selector = format!("{KEY_LABEL}={}", md.name_any());
    let list = api(ctx)
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(Error::kube("list DKIM Secrets"))?;
    Ok(list
        .items
        .into_iter()
        .filter(|s| !known.contains(&s.name_any().as_str()))
        .filter_map(|s| {
            let a = s.annotations();
            let key = rotation::Key {
                selector: a.get(SELECTOR_ANNOTATION)?.clone(),
                fingerprint: a.get(FINGERPRINT_ANNOTATION).cloned().unwrap_or_default(),
                created: created(&s),
                secret_name: s.name_any(),
            };
            Some((key, s))
        })
        .collect())
}

/// Deletes a retired or cancelled key's Secret; already gone is fine.
pub async fn delete(ctx: &Context, name: &str) -> Result<()> {
    match api(ctx).delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(Error::kube("delete DKIM Secret")(e)),
    }
}

/// When the key in `secret` was created: the annotation, else the Secret's creation time.
pub fn created(secret: &Secret) -> Timestamp {
    secret
        .annotations()
        .get(CREATED_ANNOTATION)
        .and_then(|t| t.parse().ok())
        .or(secret.metadata.creation_timestamp.as_ref().map(|t| t.0))
        .unwrap_or_else(Timestamp::now)
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

fn key_secret(
    md: &MailDomain,
    secret_name: &str,
    selector: Option<&str>,
    key: &KeyPair,
    created: Timestamp,
) -> Secret {
    let mut annotations = BTreeMap::from([
        ("mailroom.dev/domain".to_string(), md.spec.domain.clone()),
        (
            "mailroom.dev/algorithm".to_string(),
            key.algorithm.as_str().to_string(),
        ),
        (FINGERPRINT_ANNOTATION.to_string(), key.fingerprint()),
        (CREATED_ANNOTATION.to_string(), created.to_string()),
    ]);
    if let Some(s) = selector {
        annotations.insert(SELECTOR_ANNOTATION.to_string(), s.to_string());
    }
    Secret {
        metadata: ObjectMeta {
            name: Some(secret_name.into()),
            labels: Some(BTreeMap::from([(KEY_LABEL.to_string(), md.name_any())])),
            annotations: Some(annotations),
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
