//! [`StaticResolver`]: an [`MxResolver`] answering from zone-file text, for unit tests
//! (KumoMTA `TestResolver::with_zone`).

use super::{DnsError, MxHost, MxResolver, Secured, Tlsa};
use std::{collections::BTreeSet, net::IpAddr};

/// Answers from master-file lines `name [ttl] [IN] TYPE rdata` (MX, A, AAAA, TXT, TLSA).
/// Absent names are NXDOMAIN; `; SERVFAIL name` fails every query for `name`; `; SECURE name`
/// marks its MX, address and TLSA answers as DNSSEC-validated.
#[derive(Debug, Clone, Default)]
pub struct StaticResolver {
    records: Vec<(String, String, String)>,
    servfail: BTreeSet<String>,
    secure: BTreeSet<String>,
}

fn norm(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

impl StaticResolver {
    /// Parses `zone`; panics on a line it cannot read (test input).
    pub fn from_zone(zone: &str) -> Self {
        let mut r = Self::default();
        for line in zone.lines().map(str::trim).filter(|l| !l.is_empty()) {
            if let Some(rest) = line.strip_prefix(';') {
                let words: Vec<&str> = rest.split_whitespace().collect();
                match words.as_slice() {
                    ["SERVFAIL", name] => drop(r.servfail.insert(norm(name))),
                    ["SECURE", name] => drop(r.secure.insert(norm(name))),
                    _ => {}
                }
                continue;
            }
            let mut words = line.split_whitespace().peekable();
            let name = norm(words.next().expect("owner name"));
            if words.peek().is_some_and(|w| w.parse::<u32>().is_ok()) {
                words.next();
            }
            if words.peek() == Some(&"IN") {
                words.next();
            }
            let rtype = words.next().expect("record type").to_ascii_uppercase();
            let rdata = words.collect::<Vec<_>>().join(" ");
            r.records.push((name, rtype, rdata));
        }
        r
    }

    fn answer(&self, name: &str, rtype: &str) -> Result<Vec<&str>, DnsError> {
        let name = norm(name);
        if self.servfail.contains(&name) {
            return Err(DnsError::Temporary("SERVFAIL".into()));
        }
        let mut exists = false;
        let mut out = Vec::new();
        for (n, t, d) in &self.records {
            if *n == name {
                exists = true;
                if t == rtype {
                    out.push(d.as_str());
                }
            }
        }
        if exists { Ok(out) } else { Err(DnsError::NxDomain) }
    }
}

impl MxResolver for StaticResolver {
    async fn mx(&self, domain: &str) -> Result<Secured<Vec<MxHost>>, DnsError> {
        let value = self
            .answer(domain, "MX")?
            .iter()
            .filter_map(|d| {
                let (pref, exchange) = d.split_once(' ')?;
                Some(MxHost::new(pref.parse().ok()?, exchange.trim()))
            })
            .collect();
        Ok(self.secured(domain, value))
    }

    async fn ips(&self, host: &str) -> Result<Secured<Vec<IpAddr>>, DnsError> {
        let a = self.answer(host, "A")?;
        let aaaa = self.answer(host, "AAAA")?;
        let value = a.iter().chain(&aaaa).filter_map(|d| d.parse().ok()).collect();
        Ok(self.secured(host, value))
    }

    async fn txt(&self, name: &str) -> Result<Vec<String>, DnsError> {
        Ok(self
            .answer(name, "TXT")?
            .iter()
            .map(|d| d.split('"').skip(1).step_by(2).collect())
            .collect())
    }

    async fn tlsa(&self, name: &str) -> Result<Secured<Vec<Tlsa>>, DnsError> {
        let value = match self.answer(name, "TLSA") {
            Ok(v) => v.iter().filter_map(|d| parse_tlsa(d)).collect(),
            Err(DnsError::NxDomain) => Vec::new(),
            Err(e) => return Err(e),
        };
        Ok(self.secured(name, value))
    }
}

impl StaticResolver {
    fn secured<T>(&self, name: &str, value: T) -> Secured<T> {
        Secured {
            value,
            secure: self.secure.contains(&norm(name)),
        }
    }
}

fn parse_tlsa(d: &str) -> Option<Tlsa> {
    let mut w = d.split_whitespace();
    let (usage, selector, matching) = (
        w.next()?.parse().ok()?,
        w.next()?.parse().ok()?,
        w.next()?.parse().ok()?,
    );
    let hex: String = w.collect();
    let data = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect::<Option<Vec<u8>>>()?;
    Some(Tlsa {
        usage,
        selector,
        matching,
        data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn zone_text_answers_like_a_server() {
        let r = StaticResolver::from_zone(
            "example.net. 300 IN MX 10 mx.example.net.
             mx.example.net. A 192.0.2.1
             mx.example.net. AAAA 2001:db8::1
             _mta-sts.example.net. TXT \"v=STSv1; \" \"id=1\"
             _25._tcp.mx.example.net. TLSA 3 1 1 0aff
             ; SERVFAIL broken.example
             ; SECURE _25._tcp.mx.example.net",
        );
        assert_eq!(
            r.mx("EXAMPLE.net").await.map(|s| s.value),
            Ok(vec![MxHost::new(10, "mx.example.net.")])
        );
        assert_eq!(r.ips("mx.example.net").await.map(|v| v.value.len()), Ok(2));
        assert_eq!(
            r.mx("mx.example.net").await.map(|s| s.value),
            Ok(vec![]),
            "NODATA"
        );
        assert_eq!(r.mx("nowhere.example").await, Err(DnsError::NxDomain));
        assert!(matches!(
            r.mx("broken.example").await,
            Err(DnsError::Temporary(_))
        ));
        assert_eq!(
            r.txt("_mta-sts.example.net").await,
            Ok(vec!["v=STSv1; id=1".into()])
        );
        let tlsa = r.tlsa("_25._tcp.mx.example.net").await.expect("tlsa");
        assert!(tlsa.secure);
        assert_eq!(tlsa.value[0].data, [0x0a, 0xff]);
    }
}
