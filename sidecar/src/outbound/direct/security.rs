//! The TLS demand per destination: the configured level (RFC 7435 opportunistic or required),
//! raised by MTA-STS (RFC 8461 5) or DANE (RFC 7672 2.2, which takes precedence), and the
//! STARTTLS step that meets it.

use super::Settings;
use crate::{
    config::{self, DaneMode, DirectTls, MtaStsMode},
    metrics::Metrics,
    outbound::{
        Outcome, RcptResult, ReplyClass,
        direct::{
            dane,
            mta_sts::{self, Mode},
            mx::{MxResolver, Tlsa},
            route::Hop,
        },
        starttls::{self, Opened},
        tls::TlsConfigs,
    },
};
use lettre::transport::smtp::extension::Extension;
use rustls::RootCertStore;
use std::{sync::Arc, time::Duration};

/// What a connection to one host must achieve.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Security {
    /// STARTTLS when offered, certificate not verified (RFC 7435 3); plain text otherwise.
    Opportunistic,
    /// STARTTLS required, certificate not verified (`tls: require`).
    Encrypted,
    /// MTA-STS `testing`: as the configured level; violations are logged and counted only.
    StsTesting {
        /// `tls: require` is configured.
        required: bool,
    },
    /// MTA-STS `enforce`: STARTTLS with a WebPKI-valid certificate for the MX host name.
    StsEnforce,
    /// MTA-STS `enforce`, and the host matches no `mx` pattern: only DANE can make it usable.
    StsMismatch,
    /// DANE: STARTTLS with a certificate matching one of these DANE-EE or DANE-TA records.
    Dane(Vec<Tlsa>),
}

impl Security {
    /// The `policy` label.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Opportunistic => "opportunistic",
            Self::Encrypted => "require",
            Self::StsTesting { .. } => "mta_sts_testing",
            Self::StsEnforce | Self::StsMismatch => "mta_sts",
            Self::Dane(_) => "dane",
        }
    }

    pub(crate) fn required(&self) -> bool {
        !matches!(self, Self::Opportunistic | Self::StsTesting { required: false })
    }
}

/// What securing one connection gave: the result and the metric labels.
#[derive(Debug)]
pub(crate) struct TlsOutcome {
    pub result: Result<(), RcptResult>,
    pub version: &'static str,
    pub outcome: &'static str,
}

/// A deferral for a TLS policy failure.
pub(crate) fn failure(diagnostic: String) -> RcptResult {
    RcptResult {
        outcome: Outcome::Deferred,
        class: ReplyClass::Tls,
        diagnostic,
        next_hop_dsn: false,
        remote: None,
    }
}

/// The configured modes and the MTA-STS cache.
#[derive(Debug)]
pub(crate) struct Policy {
    tls: DirectTls,
    mta_sts: MtaStsMode,
    dane: DaneMode,
    port: u16,
    cache: mta_sts::Cache,
}

impl Policy {
    pub fn new(cfg: &config::Direct, roots: Arc<RootCertStore>) -> Self {
        let timeout = Duration::from_secs(cfg.connect_timeout_seconds.min(60));
        Self {
            tls: cfg.tls,
            mta_sts: cfg.mta_sts,
            dane: cfg.dane,
            port: cfg.port,
            cache: mta_sts::Cache::new(roots, cfg.mta_sts_port, timeout),
        }
    }

    /// The hops allowed by the domain's MTA-STS policy and the demand for each.
    pub async fn for_domain<R: MxResolver>(
        &self,
        resolver: &R,
        domain: &str,
        hops: Vec<Hop>,
        metrics: &Metrics,
    ) -> Result<Vec<(Hop, Security)>, RcptResult> {
        let base = match self.tls {
            DirectTls::Opportunistic => Security::Opportunistic,
            DirectTls::Require => Security::Encrypted,
        };
        let with = |hops: Vec<Hop>, s: Security| hops.into_iter().map(|h| (h, s.clone())).collect();
        if self.mta_sts == MtaStsMode::Off {
            return Ok(with(hops, base));
        }
        let policy = self.cache.policy(resolver, domain).await;
        let label = match &policy {
            Ok(None) => "none",
            Ok(Some(p)) if p.mode == Mode::Enforce => "enforce",
            Ok(Some(p)) if p.mode == Mode::Testing => "testing",
            Ok(Some(_)) => "policy_none",
            Err(_) => "error",
        };
        metrics.mta_sts.with_label_values(&[label]).inc();
        let policy = match policy {
            Ok(Some(p)) if p.mode != Mode::None => p,
            Ok(_) => return Ok(with(hops, base)),
            Err(e) => {
                // RFC 8461 5: without a valid policy, deliver as if none were published.
                tracing::info!(domain, error = %e, "mta-sts policy unavailable");
                return Ok(with(hops, base));
            }
        };
        if policy.mode == Mode::Enforce && self.mta_sts == MtaStsMode::Enforce {
            // RFC 8461 2: DANE, where it applies, takes precedence; hosts outside the policy stay
            // candidates when DANE may vouch for them, and are refused in for_host otherwise.
            if self.dane == DaneMode::On && hops.iter().any(|h| h.dnssec) {
                return Ok(hops
                    .into_iter()
                    .map(|h| {
                        let s = if policy.matches(&h.host) {
                            Security::StsEnforce
                        } else {
                            Security::StsMismatch
                        };
                        (h, s)
                    })
                    .collect());
            }
            let allowed: Vec<Hop> = hops.into_iter().filter(|h| policy.matches(&h.host)).collect();
            if allowed.is_empty() {
                return Err(failure(format!(
                    "451 4.7.5 no MX host of {domain} matches its MTA-STS policy (RFC 8461 4.1)"
                )));
            }
            return Ok(with(allowed, Security::StsEnforce));
        }
        for h in hops.iter().filter(|h| !policy.matches(&h.host)) {
            tracing::warn!(domain, host = %h.host, "mx host does not match the mta-sts policy (testing: delivering anyway)");
        }
        let required = self.tls == DirectTls::Require;
        Ok(with(hops, Security::StsTesting { required }))
    }

    /// RFC 7672 2.2: secure TLSA records for the host override MTA-STS (RFC 8461 2). `Err`: the
    /// host must not be used this attempt (its TLSA lookup failed although its MX and address
    /// answers were secure, so an attacker may be hiding the records).
    pub async fn for_host<R: MxResolver>(
        &self,
        resolver: &R,
        hop: &Hop,
        base: Security,
        metrics: &Metrics,
    ) -> Result<Security, RcptResult> {
        let host = hop.host.clone();
        let count = |result: &str| metrics.dane.with_label_values(&[result]).inc();
        match self.dane_for_host(resolver, hop, base, &count).await? {
            Security::StsMismatch => Err(failure(format!(
                "451 4.7.5 MX host {host} matches no mx pattern of the recipient domain's MTA-STS \
                 policy and has no DANE TLSA records (RFC 8461 4.1)"
            ))),
            s => Ok(s),
        }
    }

    /// The host's DANE demand on top of `base`; `count` records the TLSA outcome.
    async fn dane_for_host<R: MxResolver>(
        &self,
        resolver: &R,
        hop: &Hop,
        base: Security,
        count: &(dyn Fn(&str) + Sync),
    ) -> Result<Security, RcptResult> {
        if self.dane == DaneMode::Off {
            return Ok(base);
        }
        // RFC 7672 2.2.1, 2.2.2: without a secure MX and address answer there is no secure
        // binding from the domain to this host, so its TLSA records prove nothing.
        if !hop.dnssec {
            count("insecure");
            return Ok(base);
        }
        let name = format!("_{}._tcp.{}", self.port, hop.host);
        match resolver.tlsa(&name).await {
            Ok(t) if t.secure && !t.value.is_empty() => {
                let usable = dane::usable(&t.value);
                if usable.is_empty() {
                    // RFC 7672 2.2: secure but unusable records still make TLS mandatory; they
                    // authenticate nothing, so a stronger demand (MTA-STS) stays as it is.
                    count("unusable");
                    Ok(match base {
                        Security::Opportunistic | Security::StsTesting { .. } => Security::Encrypted,
                        other => other,
                    })
                } else {
                    count("usable");
                    Ok(Security::Dane(usable))
                }
            }
            Ok(t) if t.secure || t.value.is_empty() => {
                count("absent");
                Ok(base)
            }
            // Records from an unsigned zone below a signed one: DANE does not apply (2.2).
            Ok(_) => {
                count("insecure");
                Ok(base)
            }
            Err(e) => {
                count("failed");
                Err(failure(format!(
                    "451 4.7.5 TLSA lookup of {name} failed ({e}); the host is not used (RFC 7672 2.2)"
                )))
            }
        }
    }

    /// STARTTLS as `security` demands, on a connection that has just said EHLO.
    pub async fn secure(
        &self,
        opened: &mut Opened,
        hop: &Hop,
        security: &Security,
        tls: &TlsConfigs,
        s: &Settings,
    ) -> TlsOutcome {
        let done = |result, version, outcome| TlsOutcome {
            result,
            version,
            outcome,
        };
        if !opened.info.supports_feature(Extension::StartTls) {
            if security.required() {
                let why = format!(
                    "{} does not offer STARTTLS and the {} policy requires TLS (RFC 3207)",
                    hop.host,
                    security.label()
                );
                return done(Err(failure(why)), "none", "not_offered");
            }
            return done(Ok(()), "none", "plaintext");
        }
        let config = match security {
            Security::Opportunistic | Security::Encrypted | Security::StsTesting { .. } => {
                tls.unverified.clone()
            }
            Security::StsEnforce | Security::StsMismatch => tls.verified.clone(),
            Security::Dane(records) => match tls.dane(records.clone()) {
                Ok(c) => c,
                Err(e) => return done(Err(failure(e.to_string())), "none", "handshake_failed"),
            },
        };
        match starttls::upgrade(opened, config, &hop.host, &s.client_id, s.command_timeout).await {
            Ok((version, chain)) => {
                let mut outcome = "ok";
                if matches!(security, Security::StsTesting { .. }) && !tls.verify(&chain, &hop.host) {
                    tracing::warn!(host = %hop.host, "certificate not valid for the mta-sts policy (testing: delivering anyway)");
                    outcome = "testing_violation";
                }
                done(Ok(()), version.as_str(), outcome)
            }
            Err(mut r) => {
                let outcome = if r.diagnostic.contains("certificate") || r.diagnostic.contains("TLSA") {
                    "verify_failed"
                } else {
                    "handshake_failed"
                };
                // Name the policy that refused the host, with the code RFC 3463 gives for it.
                let policy = match security {
                    Security::Dane(_) => Some("DANE (RFC 7672 3)"),
                    Security::StsEnforce | Security::StsMismatch => Some("MTA-STS (RFC 8461 4.2)"),
                    _ => None,
                };
                if let (Some(policy), "verify_failed") = (policy, outcome) {
                    r.diagnostic = format!(
                        "451 4.7.5 {} failed {policy} authentication: {}",
                        hop.host, r.diagnostic
                    );
                }
                done(Err(r), "none", outcome)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbound::direct::mx::StaticResolver;

    #[tokio::test]
    async fn dane_decides_per_host_and_overrides_only_what_it_authenticates() {
        let cfg = config::Direct {
            dane: DaneMode::On,
            ..config::Direct::default()
        };
        let policy = Policy::new(&cfg, Arc::new(RootCertStore::empty()));
        let metrics = Metrics::new();
        let r = StaticResolver::from_zone(
            "_25._tcp.ee.example. TLSA 3 1 1 00ff
             _25._tcp.pkix.example. TLSA 1 1 1 00ff
             ; SECURE _25._tcp.ee.example
             ; SECURE _25._tcp.pkix.example
             ; SERVFAIL _25._tcp.broken.example",
        );
        let hop = |host: &str, dnssec| Hop {
            host: host.into(),
            ip: "127.0.0.2".parse().expect("ip"),
            dnssec,
        };
        let decide = |host: &'static str, dnssec, base| {
            let (policy, r, metrics) = (&policy, &r, &metrics);
            async move { policy.for_host(r, &hop(host, dnssec), base, metrics).await }
        };
        use Security::*;
        assert!(matches!(
            decide("ee.example", true, StsMismatch).await,
            Ok(Dane(_))
        ));
        assert_eq!(
            decide("ee.example", false, Opportunistic).await,
            Ok(Opportunistic),
            "insecure MX"
        );
        assert_eq!(decide("pkix.example", true, Opportunistic).await, Ok(Encrypted));
        let refused = decide("pkix.example", true, StsMismatch)
            .await
            .expect_err("not in policy");
        assert!(refused.diagnostic.contains("MTA-STS"), "{}", refused.diagnostic);
        assert_eq!(
            decide("none.example", true, StsEnforce).await,
            Ok(StsEnforce),
            "no records"
        );
        let failed = decide("broken.example", true, Opportunistic)
            .await
            .expect_err("servfail");
        assert!(
            failed.diagnostic.starts_with("451 4.7.5 TLSA lookup"),
            "{}",
            failed.diagnostic
        );
        assert_eq!(
            metrics.dane.with_label_values(&["failed"]).get(),
            1,
            "every decision is counted"
        );
    }
}
