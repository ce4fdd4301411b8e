use super::*;
use crate::crd::{AllowedNamespaces, DkimSpec};

fn spec() -> MailDomainSpec {
    MailDomainSpec {
        domain: "example.com".into(),
        dkim: DkimSpec::default(),
        spf: Some(SpfSpec {
            includes: vec!["spf.provider.net".into()],
            all: SpfAll::Fail,
        }),
        dmarc: Some(DmarcSpec {
            policy: DmarcPolicy::Quarantine,
            report_email: Some("dmarc@example.com".into()),
        }),
        allowed_namespaces: AllowedNamespaces::default(),
        dns: None,
    }
}

#[test]
fn desired_records_cover_dkim_spf_and_dmarc() {
    let records = desired(&spec(), "v=DKIM1; k=ed25519; p=AAAA");
    let got: Vec<(&str, &str, &str)> = records
        .iter()
        .map(|r| (r.purpose.as_str(), r.name.as_str(), r.value.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            (
                "dkim",
                "mailroom._domainkey.example.com",
                "v=DKIM1; k=ed25519; p=AAAA"
            ),
            ("spf", "example.com", "v=spf1 include:spf.provider.net -all"),
            (
                "dmarc",
                "_dmarc.example.com",
                "v=DMARC1; p=quarantine; rua=mailto:dmarc@example.com"
            ),
        ]
    );
}

#[test]
fn spf_and_dmarc_are_optional() {
    let mut s = spec();
    s.spf = None;
    s.dmarc = None;
    assert_eq!(desired(&s, "v=DKIM1; p=x").len(), 1);
}

#[test]
fn matching_follows_each_record_kind() {
    struct Case {
        purpose: Purpose,
        want: &'static str,
        observed: &'static [&'static str],
        ok: bool,
    }
    let cases = [
        Case {
            purpose: Purpose::Dkim,
            want: "v=DKIM1; k=rsa; p=ABC",
            observed: &["v=DKIM1; k=rsa; p=ABC"],
            ok: true,
        },
        Case {
            purpose: Purpose::Dkim,
            want: "v=DKIM1; k=rsa; p=ABC",
            observed: &["v=DKIM1;p=A B C"],
            ok: true,
        },
        Case {
            purpose: Purpose::Dkim,
            want: "v=DKIM1; k=rsa; p=ABC",
            observed: &["v=DKIM1; k=rsa; p=XYZ"],
            ok: false,
        },
        Case {
            purpose: Purpose::Dkim,
            want: "v=DKIM1; k=ed25519; p=ABC",
            observed: &["v=DKIM1; p=ABC"],
            ok: false,
        },
        Case {
            purpose: Purpose::Dkim,
            want: "v=DKIM1; k=rsa; p=ABC",
            observed: &[],
            ok: false,
        },
        Case {
            purpose: Purpose::Spf,
            want: "v=spf1 include:a.net -all",
            observed: &["v=spf1  include:a.net -all", "google-site=1"],
            ok: true,
        },
        Case {
            purpose: Purpose::Spf,
            want: "v=spf1 include:a.net -all",
            observed: &["v=spf1 include:a.net -all", "v=spf1 -all"],
            ok: false,
        },
        Case {
            purpose: Purpose::Spf,
            want: "v=spf1 include:a.net -all",
            observed: &["v=spf1 ~all"],
            ok: false,
        },
        Case {
            purpose: Purpose::Dmarc,
            want: "v=DMARC1; p=none; rua=mailto:x@y.z",
            observed: &["v=DMARC1;rua=mailto:x@y.z; p=none"],
            ok: true,
        },
        Case {
            purpose: Purpose::Dmarc,
            want: "v=DMARC1; p=reject",
            observed: &["v=DMARC1; p=none"],
            ok: false,
        },
    ];
    for (i, c) in cases.iter().enumerate() {
        let record = Record {
            purpose: c.purpose,
            name: "n".into(),
            value: c.want.into(),
        };
        let observed: Vec<String> = c.observed.iter().map(|s| s.to_string()).collect();
        assert_eq!(matches(&record, &observed), c.ok, "case {i}: {:?}", c.observed);
    }
}
