use super::*;
use crate::crd::MailDomain;

fn keys(names: &[&str]) -> BTreeMap<String, ByteString> {
    names
        .iter()
        .map(|n| (n.to_string(), ByteString(n.as_bytes().to_vec())))
        .collect()
}

fn granted(domains: &[&str], keys: &[&str]) -> Granted {
    Granted {
        domains: domains.iter().map(|d| d.to_string()).collect(),
        keys: keys.iter().map(|k| k.to_string()).collect(),
    }
}

#[test]
fn only_the_granted_domains_and_their_exact_keys_stay() {
    let domains = [
        MailDomain::test("shop", "shop.example"),
        MailDomain::test("eu", "eu.shop.example"),
        // A domain whose name extends another's: its key names start with the other's.
        MailDomain::test("long", "shop.example.org"),
    ];
    let relay = Relay::test("ns", "outbound", &["shop", "eu", "long"]);
    let mut config = render::sidecar_config(&relay, &domains).expect("renders");
    let mut secret = keys(&[
        "shop.example.mailroom.key",
        "shop.example.next.key",
        "eu.shop.example.mailroom.key",
        "shop.example.org.mailroom.key",
    ]);
    // `shop` keeps its active and pending keys; `eu` and `long` lost their grant.
    let grant = granted(
        &["shop.example"],
        &["shop.example.mailroom.key", "shop.example.next.key"],
    );
    let withdrawn = strip(&mut config, &mut secret, &grant);
    assert_eq!(withdrawn, ["eu.shop.example", "shop.example.org"]);
    let left: Vec<&str> = config.domains.iter().map(|d| d.domain.as_str()).collect();
    assert_eq!(left, ["shop.example"]);
    assert_eq!(
        secret.keys().map(String::as_str).collect::<Vec<_>>(),
        ["shop.example.mailroom.key", "shop.example.next.key"]
    );
    assert!(config.validate().is_empty(), "still a valid config");

    // Nothing granted: no domain and no key is left, and the config is still one a sidecar takes
    // (it then refuses every message).
    let withdrawn = strip(&mut config, &mut secret, &Granted::default());
    assert_eq!(withdrawn, ["shop.example"]);
    assert!(config.domains.is_empty() && secret.is_empty());
    assert!(config.validate().is_empty(), "{:?}", config.validate());
    let text = render::to_yaml(&relay, &config).expect("yaml");
    mailroom_config::Config::parse(std::path::Path::new("sidecar.yaml"), &text)
        .expect("the sidecar takes it");
}

#[test]
fn children_within_the_grant_are_left_alone() {
    let relay = Relay::test("ns", "outbound", &["shop"]);
    let mut config =
        render::sidecar_config(&relay, &[MailDomain::test("shop", "shop.example")]).expect("renders");
    let before = config.clone();
    let mut secret = keys(&["shop.example.mailroom.key"]);
    let grant = granted(&["shop.example"], &["shop.example.mailroom.key"]);
    assert!(strip(&mut config, &mut secret, &grant).is_empty());
    assert_eq!(config, before);
    assert_eq!(secret.len(), 1);
}
