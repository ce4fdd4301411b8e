//! Pure routing for direct delivery: recipients grouped by domain, MX hosts in preference order
//! with equal preferences shuffled (RFC 5321 5.1), null MX (RFC 7505) and the cap on addresses.

use rand::{Rng, seq::SliceRandom};
use std::net::IpAddr;

/// The recipients of one message that share a domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainGroup {
    /// The domain, lowercased (DNS names compare case-insensitively, RFC 4343).
    pub domain: String,
    /// Positions of its recipients in the list given to [`group_by_domain`], in order.
    pub indices: Vec<usize>,
}

/// Groups `recipients` by domain, in order of first appearance.
pub fn group_by_domain(recipients: &[&str]) -> Vec<DomainGroup> {
    let mut groups: Vec<DomainGroup> = Vec::new();
    for (i, rcpt) in recipients.iter().enumerate() {
        let domain = crate::message::domain_of(rcpt)
            .trim_end_matches('.')
            .to_ascii_lowercase();
        match groups.iter_mut().find(|g| g.domain == domain) {
            Some(g) => g.indices.push(i),
            None => groups.push(DomainGroup {
                domain,
                indices: vec![i],
            }),
        }
    }
    groups
}

/// One MX record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MxHost {
    /// Lower is preferred (RFC 5321 5.1).
    pub preference: u16,
    /// The exchange, lowercase, without the trailing dot; empty for the null MX `.`.
    pub name: String,
}

impl MxHost {
    /// A record from `preference` and an exchange as DNS spells it (`mx.example.net.`).
    pub fn new(preference: u16, exchange: &str) -> Self {
        Self {
            preference,
            name: exchange.trim_end_matches('.').to_ascii_lowercase(),
        }
    }
}

/// What the MX records of a domain say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MxPlan {
    /// Deliver to these hosts, in this order.
    Hosts(Vec<MxHost>),
    /// RFC 7505 3: the domain accepts no mail.
    Null,
}

/// Orders MX records: by preference, equal preferences in random order (RFC 5321 5.1). A lone
/// null MX, or only null MX records, mean the domain takes no mail (RFC 7505 3); a `.` mixed
/// with real hosts is a misconfiguration (RFC 7505 4.1) and is skipped.
pub fn order(mut records: Vec<MxHost>, rng: &mut impl Rng) -> MxPlan {
    if !records.is_empty() && records.iter().all(|r| r.name.is_empty()) {
        return MxPlan::Null;
    }
    records.retain(|r| !r.name.is_empty());
    records.shuffle(rng);
    // A stable sort keeps the shuffled order within each preference.
    records.sort_by_key(|r| r.preference);
    records.dedup_by(|a, b| a.name == b.name);
    MxPlan::Hosts(records)
}

/// One address to try.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Hop {
    /// The MX host name (TLS server name, MTA-STS and DANE matching).
    pub host: String,
    /// One of its addresses.
    pub ip: IpAddr,
    /// The MX lookup and this host's address lookup were both DNSSEC-secure, so its TLSA
    /// records may be used (RFC 7672 2.2.1, 2.2.2).
    pub dnssec: bool,
}

/// Flattens hosts with their addresses and DNSSEC status into at most `max` hops, in order;
/// IPv4 before IPv6 within a host, because pods often have no IPv6 route.
pub fn cap(hosts: &[(String, Vec<IpAddr>, bool)], max: usize) -> Vec<Hop> {
    let mut hops = Vec::new();
    for (host, ips, dnssec) in hosts {
        let (v4, v6): (Vec<IpAddr>, Vec<IpAddr>) = ips.iter().partition(|ip| ip.is_ipv4());
        for ip in v4.into_iter().chain(v6) {
            if hops.len() == max {
                return hops;
            }
            let hop = Hop {
                host: host.clone(),
                ip,
                dnssec: *dnssec,
            };
            if !hops.contains(&hop) {
                hops.push(hop);
            }
        }
    }
    hops
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{SeedableRng, rngs::StdRng};

    fn names(plan: &MxPlan) -> Vec<&str> {
        match plan {
            MxPlan::Hosts(h) => h.iter().map(|h| h.name.as_str()).collect(),
            MxPlan::Null => vec!["<null>"],
        }
    }

    #[test]
    fn recipients_group_by_lowercased_domain_in_first_seen_order() {
        let rcpts = [
            "a@B.example",
            "c@a.example",
            "\"e@c.example\"@b.example.",
            "d@b.EXAMPLE.",
        ];
        let groups = group_by_domain(&rcpts);
        assert_eq!(
            groups,
            [
                DomainGroup {
                    domain: "b.example".into(),
                    indices: vec![0, 2, 3]
                },
                DomainGroup {
                    domain: "a.example".into(),
                    indices: vec![1]
                },
            ]
        );
    }

    #[test]
    fn mx_records_order_by_preference_and_null_mx_is_recognised() {
        struct Case {
            input: Vec<MxHost>,
            want: Vec<&'static str>,
        }
        let cases = [
            Case {
                input: vec![MxHost::new(20, "b.example."), MxHost::new(10, "A.example.")],
                want: vec!["a.example", "b.example"],
            },
            Case {
                input: vec![MxHost::new(0, ".")],
                want: vec!["<null>"],
            },
            Case {
                input: vec![MxHost::new(0, "."), MxHost::new(10, "mx.example.")],
                want: vec!["mx.example"],
            },
            Case {
                input: vec![MxHost::new(10, "mx.example."), MxHost::new(10, "MX.example")],
                want: vec!["mx.example"],
            },
            Case {
                input: vec![],
                want: vec![],
            },
        ];
        let mut rng = StdRng::seed_from_u64(1);
        for c in cases {
            assert_eq!(names(&order(c.input.clone(), &mut rng)), c.want, "{:?}", c.input);
        }
    }

    #[test]
    fn equal_preferences_are_shuffled_but_stay_behind_better_ones() {
        let input = vec![
            MxHost::new(20, "last."),
            MxHost::new(10, "x."),
            MxHost::new(10, "y."),
            MxHost::new(10, "z."),
        ];
        let mut firsts = std::collections::BTreeSet::new();
        let mut rng = StdRng::seed_from_u64(7);
        for _ in 0..64 {
            let got = order(input.clone(), &mut rng);
            let n = names(&got);
            assert_eq!(n[3], "last");
            firsts.insert(n[0].to_owned());
        }
        assert_eq!(
            firsts.len(),
            3,
            "every equal-preference host comes first sometimes"
        );
    }

    #[test]
    fn hops_are_capped_in_order_with_ipv4_first() {
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        let hosts = vec![
            (
                "a".to_string(),
                vec![ip("::1"), ip("127.0.0.2"), ip("127.0.0.3")],
                false,
            ),
            ("b".to_string(), vec![ip("127.0.0.4"), ip("127.0.0.5")], true),
        ];
        let got: Vec<String> = cap(&hosts, 4)
            .iter()
            .map(|h| format!("{}/{}", h.host, h.ip))
            .collect();
        assert_eq!(got, ["a/127.0.0.2", "a/127.0.0.3", "a/::1", "b/127.0.0.4"]);
        assert!(cap(&hosts, 4).iter().all(|h| h.dnssec == (h.host == "b")));
        assert!(cap(&hosts, 0).is_empty());
    }
}
