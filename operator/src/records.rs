//! Pure DNS record plan for a MailDomain: which TXT records to publish (DKIM, SPF, DMARC) and
//! whether what live DNS returned matches them.

use crate::crd::{DmarcPolicy, DmarcSpec, MailDomainSpec, SpfAll, SpfSpec};

/// What a record is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Purpose {
    /// The DKIM public key (RFC 6376 3.6.2.1).
    Dkim,
    /// The SPF policy (RFC 7208).
    Spf,
    /// The DMARC policy (RFC 7489 6.1).
    Dmarc,
}

/// One TXT record to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// What it is for.
    pub purpose: Purpose,
    /// Owner name, without a trailing dot.
    pub name: String,
    /// The full value (split into character-strings only when published).
    pub value: String,
}

impl Purpose {
    /// `dkim`, `spf` or `dmarc` (status field and metric label).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Dkim => "dkim",
            Self::Spf => "spf",
            Self::Dmarc => "dmarc",
        }
    }
}

/// The records for `spec`, given the DKIM TXT value of its key (published under
/// `spec.dkim.selector`).
pub fn desired(spec: &MailDomainSpec, dkim_value: &str) -> Vec<Record> {
    let mut out = vec![dkim(&spec.domain, &spec.dkim.selector, dkim_value)];
    out.extend(policies(spec));
    out
}

/// The DKIM record of one key (RFC 6376 3.6.2.1: `<selector>._domainkey.<domain>`).
pub fn dkim(domain: &str, selector: &str, value: &str) -> Record {
    Record {
        purpose: Purpose::Dkim,
        name: format!("{selector}._domainkey.{domain}"),
        value: value.to_string(),
    }
}

/// The SPF and DMARC records `spec` asks for.
pub fn policies(spec: &MailDomainSpec) -> Vec<Record> {
    let mut out = Vec::new();
    if let Some(spf) = &spec.spf {
        out.push(Record {
            purpose: Purpose::Spf,
            name: spec.domain.clone(),
            value: spf_value(spf),
        });
    }
    if let Some(dmarc) = &spec.dmarc {
        out.push(Record {
            purpose: Purpose::Dmarc,
            name: format!("_dmarc.{}", spec.domain),
            value: dmarc_value(dmarc),
        });
    }
    out
}

/// `v=spf1 include:<a> include:<b> ~all`.
pub fn spf_value(spf: &SpfSpec) -> String {
    let mut parts = vec!["v=spf1".to_string()];
    parts.extend(spf.includes.iter().map(|d| format!("include:{d}")));
    parts.push(
        match spf.all {
            SpfAll::Softfail => "~all",
            SpfAll::Fail => "-all",
            SpfAll::Neutral => "?all",
        }
        .to_string(),
    );
    parts.join(" ")
}

/// `v=DMARC1; p=<policy>[; rua=mailto:<address>]`.
pub fn dmarc_value(dmarc: &DmarcSpec) -> String {
    let policy = match dmarc.policy {
        DmarcPolicy::None => "none",
        DmarcPolicy::Quarantine => "quarantine",
        DmarcPolicy::Reject => "reject",
    };
    match &dmarc.report_email {
        Some(rua) => format!("v=DMARC1; p={policy}; rua=mailto:{rua}"),
        None => format!("v=DMARC1; p={policy}"),
    }
}

/// Whether the TXT records observed at the record's name (each with its character-strings
/// already joined) satisfy it.
///
/// - DKIM: some record has the same `p=` key and key type (`k=`, default `rsa`).
/// - SPF and DMARC: exactly one record of that kind exists (RFC 7208 4.5 and RFC 7489 6.6.3 treat
///   several as an error) and it equals the recommendation up to whitespace and tag order.
pub fn matches(record: &Record, observed: &[String]) -> bool {
    match record.purpose {
        Purpose::Dkim => {
            let want = tags(&record.value);
            observed.iter().any(|o| {
                let got = tags(o);
                got.p.is_some() && got.p == want.p && got.k == want.k
            })
        }
        Purpose::Spf | Purpose::Dmarc => {
            let prefix = if record.purpose == Purpose::Spf {
                "v=spf1"
            } else {
                "v=DMARC1"
            };
            let same_kind: Vec<&String> = observed
                .iter()
                .filter(|o| {
                    o.trim_start()
                        .to_ascii_lowercase()
                        .starts_with(&prefix.to_ascii_lowercase())
                })
                .collect();
            same_kind.len() == 1
                && normalize(same_kind[0], record.purpose) == normalize(&record.value, record.purpose)
        }
    }
}

struct DkimTags {
    k: String,
    p: Option<String>,
}

fn tags(value: &str) -> DkimTags {
    let mut out = DkimTags {
        k: "rsa".into(),
        p: None,
    };
    for tag in value.split(';') {
        let Some((name, val)) = tag.split_once('=') else {
            continue;
        };
        let val: String = val.chars().filter(|c| !c.is_whitespace()).collect();
        match name.trim() {
            "k" => out.k = val.to_ascii_lowercase(),
            "p" => out.p = Some(val),
            _ => {}
        }
    }
    out
}

fn normalize(value: &str, purpose: Purpose) -> Vec<String> {
    let sep = if purpose == Purpose::Spf { ' ' } else { ';' };
    let mut parts: Vec<String> = value
        .split(sep)
        .map(|p| p.split_whitespace().collect::<String>().to_ascii_lowercase())
        .filter(|p| !p.is_empty())
        .collect();
    // The version tag stays first; the rest may come in any order.
    if parts.len() > 1 {
        parts[1..].sort();
    }
    parts
}

#[cfg(test)]
mod tests;
