//! Test builders for our kinds: `Relay::test("ns", "name")`, `MailDomain::test("name", "example.com")`.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::crd::{
    AllowedNamespaces, CaptureSpec, Delivery, DkimAlgorithm, DkimSpec, MailDomain, MailDomainSpec, Relay,
    RelaySpec,
};

impl MailDomain {
    /// A MailDomain `name` for `domain` with an RSA key, allowing no namespace.
    pub fn test(name: &str, domain: &str) -> Self {
        let spec = MailDomainSpec {
            domain: domain.into(),
            dkim: DkimSpec::default(),
            spf: None,
            dmarc: None,
            allowed_namespaces: AllowedNamespaces::default(),
            dns: None,
        };
        let mut md = MailDomain::new(name, spec);
        md.metadata.uid = Some(format!("uid-{name}"));
        md
    }

    /// With this selector and algorithm.
    pub fn with_dkim(mut self, selector: &str, algorithm: DkimAlgorithm) -> Self {
        self.spec.dkim = DkimSpec {
            selector: selector.into(),
            algorithm,
            rotation: None,
        };
        self
    }

    /// Publishing its records through external-dns.
    pub fn publishing(mut self) -> Self {
        self.spec.dns = Some(crate::crd::DnsSpec {
            publish: Some(crate::crd::DnsPublishSpec {
                mode: crate::crd::DnsPublishMode::ExternalDns,
                ttl_seconds: crate::crd::DEFAULT_PUBLISH_TTL,
                labels: Default::default(),
                annotations: Default::default(),
            }),
        });
        self
    }

    /// Allowing these namespaces by name.
    pub fn allowing(mut self, namespaces: &[&str]) -> Self {
        self.spec.allowed_namespaces.names = namespaces.iter().map(|n| n.to_string()).collect();
        self
    }
}

impl Relay {
    /// A capture Relay `namespace/name` sending as `domains`.
    pub fn test(namespace: &str, name: &str, domains: &[&str]) -> Self {
        let spec = RelaySpec {
            domains: domains.iter().map(|d| d.to_string()).collect(),
            delivery: Delivery {
                capture: Some(CaptureSpec {}),
                ..Default::default()
            },
            retry: None,
            limits: None,
            listen_port: 25,
            hub: None,
            ehlo_name: None,
            bounces: None,
            shaping: None,
        };
        Relay {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(namespace.into()),
                uid: Some(format!("uid-{name}")),
                generation: Some(1),
                ..Default::default()
            },
            spec,
            status: None,
        }
    }

    /// `shop/outbound` through a STARTTLS smarthost with credentials (keys `user`, `pass` of
    /// Secret `creds`) and a CA (key `ca.pem` of Secret `ca`).
    pub fn smarthost_test() -> Self {
        let mut relay = Self::test("shop", "outbound", &["shop"]);
        relay.spec.delivery.capture = None;
        relay.spec.delivery.smarthost = Some(crate::crd::SmarthostSpec {
            host: "smtp.example.net".into(),
            port: 587,
            tls: crate::crd::SmarthostTls::Starttls,
            credentials_secret_ref: Some(crate::crd::CredentialsSecretRef {
                name: "creds".into(),
                username_key: "user".into(),
                password_key: "pass".into(),
            }),
            auth_mechanism: None,
            max_connections: None,
            ca_secret_ref: Some(crate::crd::SecretKeyRef {
                name: "ca".into(),
                key: "ca.pem".into(),
            }),
            backup: None,
        });
        relay
    }
}
