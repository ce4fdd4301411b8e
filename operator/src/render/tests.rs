use super::*;
use crate::crd::{
    BackupSmarthostSpec, BouncesSpec, CredentialsSecretRef, Delivery, LimitsSpec, RetrySpec, SecretKeyRef,
    SmarthostAuth, SmarthostSpec,
};

/// The Relay behind `tests/fixtures/sidecar-config/rendered-relay.yaml`.
fn golden_input() -> (Relay, Vec<MailDomain>) {
    let mut relay = Relay::test("shop", "outbound", &["shop", "news"]);
    relay.spec.delivery = Delivery {
        smarthost: Some(SmarthostSpec {
            host: "smtp.relay.example.net".into(),
            port: 587,
            tls: SmarthostTls::Starttls,
            credentials_secret_ref: Some(CredentialsSecretRef {
                name: "smarthost-credentials".into(),
                username_key: "username".into(),
                password_key: "password".into(),
            }),
            ca_secret_ref: Some(SecretKeyRef {
                name: "smarthost-ca".into(),
                key: "ca.crt".into(),
            }),
            auth_mechanism: Some(SmarthostAuth::Login),
            max_connections: Some(8),
            backup: Some(BackupSmarthostSpec {
                host: "smtp.backup.example.org".into(),
                port: 465,
                tls: SmarthostTls::Implicit,
                credentials_secret_ref: Some(CredentialsSecretRef {
                    name: "backup-credentials".into(),
                    username_key: "username".into(),
                    password_key: "password".into(),
                }),
                ca_secret_ref: None,
                auth_mechanism: None,
                max_connections: None,
            }),
        }),
        ..Default::default()
    };
    relay.spec.limits = Some(LimitsSpec {
        max_message_bytes: Some(10 * 1024 * 1024),
        max_recipients: Some(50),
        rate_per_minute: Some(600),
        spool_max_bytes: Some(256 * 1024 * 1024),
        spool_max_messages: Some(20_000),
    });
    relay.spec.retry = Some(RetrySpec {
        initial_seconds: Some(30),
        max_seconds: Some(1800),
        max_age_seconds: Some(86400),
        multiplier: Some(1.5),
    });
    relay.spec.ehlo_name = Some("mail.shop.example.com".into());
    relay.spec.shaping = Some(crate::crd::ShapingSpec {
        default: Some(crate::crd::DestinationLimitsSpec {
            concurrency: Some(3),
            rate_per_minute: None,
        }),
        domains: [(
            "gmail.com".to_string(),
            crate::crd::DestinationLimitsSpec {
                concurrency: Some(20),
                rate_per_minute: Some(600),
            },
        )]
        .into(),
    });
    relay.spec.bounces = Some(BouncesSpec {
        delay_notice_after_seconds: Some(14400),
    });
    let domains = vec![
        MailDomain::test("shop", "shop.example.com").with_dkim("mailroom-2026", DkimAlgorithm::Rsa2048),
        MailDomain::test("news", "news.example.com").with_dkim("mailroom-ed", DkimAlgorithm::Ed25519),
    ];
    (relay, domains)
}

#[test]
fn render_matches_the_golden_file() {
    let (relay, domains) = golden_input();
    let config = sidecar_config(&relay, &domains).expect("render");
    let text = to_yaml(&relay, &config).expect("yaml");
    let golden = include_str!("../../../tests/fixtures/sidecar-config/rendered-relay.yaml");
    if text != golden && std::env::var_os("MAILROOM_UPDATE_GOLDEN").is_some() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/fixtures/sidecar-config/rendered-relay.yaml"
        );
        std::fs::write(path, &text).expect("write golden");
    }
    assert_eq!(
        text, golden,
        "rerun with MAILROOM_UPDATE_GOLDEN=1 to update the golden file"
    );
}

#[test]
fn rendered_config_parses_back_with_the_sidecar_parser() {
    let (relay, domains) = golden_input();
    let config = sidecar_config(&relay, &domains).expect("render");
    let text = to_yaml(&relay, &config).expect("yaml");
    let parsed = Config::parse(std::path::Path::new("rendered.yaml"), &text).expect("sidecar accepts it");
    assert_eq!(parsed, config);
}

#[test]
fn capture_relay_renders_capture_delivery_and_paths_only() {
    let relay = Relay::test("ns", "r", &["d"]);
    let domains = vec![MailDomain::test("d", "example.org")];
    let config = sidecar_config(&relay, &domains).expect("render");
    assert_eq!(config.relay, "ns/r");
    assert_eq!(config.listen.address.to_string(), "127.0.0.1:25");
    assert!(matches!(config.delivery, sc::Delivery::Capture(_)));
    let key_file = config.domains[0].dkim.as_ref().map(|d| d.key_file.clone());
    assert_eq!(
        key_file,
        Some(PathBuf::from("/etc/mailroom/dkim/example.org.mailroom.key"))
    );
}

#[test]
fn settings_the_sidecar_rejects_become_invalid_spec() {
    let mut relay = Relay::test("ns", "r", &["d"]);
    // CEL accepts this (maxSeconds unset), but the sidecar default maxSeconds (3600) is smaller.
    relay.spec.retry = Some(RetrySpec {
        initial_seconds: Some(7200),
        ..Default::default()
    });
    let err = sidecar_config(&relay, &[MailDomain::test("d", "example.org")]).expect_err("invalid");
    assert!(matches!(err, Error::InvalidSpec(_)), "{err}");
    assert!(err.to_string().contains("retry.maxSeconds"), "{err}");
}

#[test]
fn no_delivery_mode_is_invalid_spec() {
    let mut relay = Relay::test("ns", "r", &["d"]);
    relay.spec.delivery.capture = None;
    let err = sidecar_config(&relay, &[MailDomain::test("d", "example.org")]).expect_err("invalid");
    assert_eq!(err.reason(), crate::events::Reason::InvalidSpec);
}

#[test]
fn direct_relay_renders_mx_delivery_with_its_tls_policy() {
    use crate::crd::{Dane, DirectSpec, DirectTls, MtaSts};
    let mut relay = Relay::test("ns", "r", &["d"]);
    relay.spec.delivery = Delivery {
        direct: Some(DirectSpec {
            tls: DirectTls::Require,
            mta_sts: MtaSts::Enforce,
            dane: Dane::default(),
            max_connections_per_domain: Some(2),
        }),
        ..Default::default()
    };
    let domains = vec![MailDomain::test("d", "example.org")];
    let config = sidecar_config(&relay, &domains).expect("render");
    let sc::Delivery::Direct(direct) = &config.delivery else {
        panic!("direct expected: {config:?}")
    };
    assert_eq!(direct.tls, sc::DirectTls::Require);
    assert_eq!(direct.mta_sts, sc::MtaStsMode::Enforce);
    assert_eq!(
        direct.dane,
        sc::DaneMode::On,
        "DANE is on unless a Relay opts out"
    );
    assert_eq!(direct.dnssec_trust_anchor_file, None, "the IANA root anchors");
    assert_eq!(direct.port, 25);
    assert_eq!(direct.max_connections_per_domain, 2);
    assert!(
        direct.resolvers.is_empty(),
        "the pod's resolver (cluster DNS) is used"
    );
    assert!(config.validate().is_empty());

    relay.spec.delivery.direct.as_mut().expect("direct").dane = Dane::None;
    let config = sidecar_config(&relay, &domains).expect("render");
    let sc::Delivery::Direct(direct) = &config.delivery else {
        panic!("direct expected: {config:?}")
    };
    assert_eq!(direct.dane, sc::DaneMode::Off);
}

#[test]
fn a_rotated_domain_signs_with_the_active_selector_from_status() {
    let relay = Relay::test("ns", "r", &["d"]);
    let mut md = MailDomain::test("d", "example.org");
    md.status = Some(crate::crd::MailDomainStatus {
        dkim: Some(crate::crd::DkimStatus {
            selector: "mailroom-20260401-010203".into(),
            ..Default::default()
        }),
        ..Default::default()
    });
    let config = sidecar_config(&relay, &[md]).expect("render");
    let dkim = config.domains[0].dkim.clone().expect("dkim");
    assert_eq!(dkim.selector, "mailroom-20260401-010203");
    assert_eq!(
        dkim.key_file,
        PathBuf::from("/etc/mailroom/dkim/example.org.mailroom-20260401-010203.key")
    );
}

#[test]
fn a_relay_wide_rate_is_shared_by_its_pods_and_never_exceeded() {
    assert_eq!(rate_share(None, 3), None);
    assert_eq!(rate_share(Some(600), 0), Some(600), "the first pod gets it all");
    assert_eq!(rate_share(Some(600), 1), Some(600));
    assert_eq!(rate_share(Some(600), 7), Some(85), "7 x 85 = 595 <= 600");
    assert_eq!(rate_share(Some(5), 10), Some(1), "at least one a minute");
    for pods in 1..50u32 {
        for budget in [1u32, 7, 60, 600, 1_000_000] {
            let share = rate_share(Some(budget), pods).expect("share");
            assert!(share * pods <= budget.max(pods), "{budget}/{pods}: {share}");
        }
    }
}
