//! Where one domain's mail goes: MX lookup, implicit MX (RFC 5321 5.1), null MX (RFC 7505),
//! NXDOMAIN and temporary failures, then the capped list of addresses to try.

use super::{
    mx::{DnsError, MxResolver},
    route::{self, Hop, MxHost, MxPlan},
};
use crate::outbound::{Outcome, RcptResult, ReplyClass};
use std::net::IpAddr;

/// The `result` label of `mx_lookups_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MxResult {
    /// MX records found.
    Ok,
    /// No MX records; the domain's own addresses are used (RFC 5321 5.1).
    Implicit,
    /// Null MX (RFC 7505).
    Null,
    /// The domain does not exist.
    NxDomain,
    /// SERVFAIL, timeout or another temporary failure.
    Servfail,
}

impl MxResult {
    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Implicit => "implicit",
            Self::Null => "null",
            Self::NxDomain => "nxdomain",
            Self::Servfail => "servfail",
        }
    }
}

fn result(outcome: Outcome, diagnostic: String) -> RcptResult {
    RcptResult {
        outcome,
        class: match outcome {
            Outcome::Bounced => ReplyClass::Permanent,
            _ => ReplyClass::Dns,
        },
        diagnostic,
        next_hop_dsn: false,
        remote: None,
    }
}

fn temporary(what: &str, e: &DnsError) -> RcptResult {
    result(
        Outcome::Deferred,
        format!("451 4.4.3 DNS lookup of {what} failed: {e}"),
    )
}

/// Resolves `domain` into at most `max` hops; the error applies to all its recipients.
pub async fn resolve<R: MxResolver>(
    resolver: &R,
    domain: &str,
    max: usize,
) -> (MxResult, Result<Vec<Hop>, RcptResult>) {
    let mx = match resolver.mx(domain).await {
        Ok(r) => r,
        Err(DnsError::NxDomain) => {
            let msg = format!("550 5.1.2 recipient domain {domain} does not exist (NXDOMAIN)");
            return (MxResult::NxDomain, Err(result(Outcome::Bounced, msg)));
        }
        Err(e) => return (MxResult::Servfail, Err(temporary(domain, &e))),
    };
    // RFC 7672 2.2.1: DANE needs a secure MX answer (for implicit MX, a secure denial).
    let (records, secure) = (mx.value, mx.secure);
    if records.is_empty() {
        // RFC 5321 5.1: no MX records, so the domain itself is the only host, preference 0.
        let hosts = vec![MxHost::new(0, domain)];
        return (
            MxResult::Implicit,
            addresses(resolver, domain, &hosts, max, secure).await,
        );
    }
    // ThreadRng is not Send: use it in a statement of its own, before the next await.
    let plan = route::order(records, &mut rand::rng());
    match plan {
        MxPlan::Null => {
            let msg = format!("556 5.1.10 recipient domain {domain} accepts no mail (null MX, RFC 7505)");
            (MxResult::Null, Err(result(Outcome::Bounced, msg)))
        }
        MxPlan::Hosts(hosts) => (
            MxResult::Ok,
            addresses(resolver, domain, &hosts, max, secure).await,
        ),
    }
}

/// Looks up hosts in order until `max` addresses are known. Permanent failure only when every
/// host is known not to have an address; any temporary failure defers. `mx_secure`: the MX
/// answer was DNSSEC-secure, so hosts with secure addresses may use DANE.
async fn addresses<R: MxResolver>(
    resolver: &R,
    domain: &str,
    hosts: &[MxHost],
    max: usize,
    mx_secure: bool,
) -> Result<Vec<Hop>, RcptResult> {
    let mut found: Vec<(String, Vec<IpAddr>, bool)> = Vec::new();
    let mut count = 0;
    let mut temp = None;
    for h in hosts {
        if count >= max {
            break;
        }
        match resolver.ips(&h.name).await {
            Ok(ips) if !ips.value.is_empty() => {
                count += ips.value.len();
                found.push((h.name.clone(), ips.value, mx_secure && ips.secure));
            }
            Ok(_) | Err(DnsError::NxDomain) => {}
            Err(e) => temp = Some(temporary(&h.name, &e)),
        }
    }
    let hops = route::cap(&found, max);
    match (hops.is_empty(), temp) {
        (false, _) => Ok(hops),
        (true, Some(t)) => Err(t),
        (true, None) => Err(result(
            Outcome::Bounced,
            format!("550 5.4.4 no mail exchanger of {domain} has an address (RFC 5321 5.1)"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbound::direct::mx::StaticResolver;

    const ZONE: &str = "
        ok.example. MX 20 mx2.ok.example.
        ok.example. MX 10 mx1.ok.example.
        mx1.ok.example. A 127.0.0.2
        mx1.ok.example. AAAA ::1
        mx2.ok.example. A 127.0.0.3
        implicit.example. A 127.0.0.4
        bare.example. TXT \"nothing here\"
        null.example. MX 0 .
        lame.example. MX 10 missing.lame.example.
        flaky.example. MX 10 mx.flaky.example.
        ; SERVFAIL broken.example
        ; SERVFAIL mx.flaky.example
    ";

    #[tokio::test]
    async fn each_dns_answer_maps_to_hops_or_one_outcome() {
        struct Case {
            domain: &'static str,
            want: MxResult,
            hops: Result<Vec<&'static str>, (Outcome, &'static str)>,
        }
        let cases = [
            Case {
                domain: "ok.example",
                want: MxResult::Ok,
                hops: Ok(vec![
                    "mx1.ok.example/127.0.0.2",
                    "mx1.ok.example/::1",
                    "mx2.ok.example/127.0.0.3",
                ]),
            },
            Case {
                domain: "implicit.example",
                want: MxResult::Implicit,
                hops: Ok(vec!["implicit.example/127.0.0.4"]),
            },
            Case {
                domain: "bare.example",
                want: MxResult::Implicit,
                hops: Err((Outcome::Bounced, "550 5.4.4")),
            },
            Case {
                domain: "null.example",
                want: MxResult::Null,
                hops: Err((Outcome::Bounced, "556 5.1.10")),
            },
            Case {
                domain: "nowhere.example",
                want: MxResult::NxDomain,
                hops: Err((Outcome::Bounced, "550 5.1.2")),
            },
            Case {
                domain: "broken.example",
                want: MxResult::Servfail,
                hops: Err((Outcome::Deferred, "451 4.4.3")),
            },
            Case {
                domain: "lame.example",
                want: MxResult::Ok,
                hops: Err((Outcome::Bounced, "550 5.4.4")),
            },
            Case {
                domain: "flaky.example",
                want: MxResult::Ok,
                hops: Err((Outcome::Deferred, "451 4.4.3")),
            },
        ];
        let r = StaticResolver::from_zone(ZONE);
        for c in cases {
            let (got, hops) = resolve(&r, c.domain, 5).await;
            assert_eq!(got, c.want, "{}", c.domain);
            let hops = hops
                .map(|h| {
                    h.iter()
                        .map(|h| format!("{}/{}", h.host, h.ip))
                        .collect::<Vec<_>>()
                })
                .map_err(|r| (r.outcome, r.diagnostic));
            match (hops, c.hops) {
                (Ok(h), Ok(want)) => assert_eq!(h, want, "{}", c.domain),
                (Err((o, d)), Err((want_o, prefix))) => {
                    assert_eq!(o, want_o, "{}", c.domain);
                    assert!(d.starts_with(prefix), "{}: {d}", c.domain);
                }
                (got, want) => panic!("{}: got {got:?}, want {want:?}", c.domain),
            }
        }
    }

    #[tokio::test]
    async fn dane_needs_secure_mx_and_secure_addresses() {
        let r = StaticResolver::from_zone(
            "s.example. MX 10 mx.s.example.
             s.example. MX 20 mx.other.example.
             mx.s.example. A 127.0.0.2
             mx.other.example. A 127.0.0.3
             i.example. MX 10 mx.s.example.
             ; SECURE s.example
             ; SECURE mx.s.example",
        );
        let secure = |d| {
            let r = r.clone();
            async move {
                let (_, hops) = resolve(&r, d, 5).await;
                hops.expect("hops")
                    .iter()
                    .map(|h| (h.host.clone(), h.dnssec))
                    .collect::<Vec<_>>()
            }
        };
        assert_eq!(
            secure("s.example").await,
            [
                ("mx.s.example".to_string(), true),
                ("mx.other.example".to_string(), false)
            ],
            "insecure address answer"
        );
        assert_eq!(
            secure("i.example").await,
            [("mx.s.example".to_string(), false)],
            "insecure MX answer"
        );
    }

    #[tokio::test]
    async fn address_cap_limits_hops_across_hosts() {
        let r = StaticResolver::from_zone(ZONE);
        let (_, hops) = resolve(&r, "ok.example", 1).await;
        assert_eq!(hops.expect("hops").len(), 1);
    }
}
