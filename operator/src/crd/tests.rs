use super::*;

#[test]
fn crds_yaml_is_up_to_date() {
    let want = yaml().expect("serialize CRDs");
    let have = include_str!("../../../crds/crds.yaml");
    assert!(
        want == have,
        "crds/crds.yaml is stale: run `cargo run -p mailroom-operator --bin crdgen > crds/crds.yaml`"
    );
}

#[test]
fn conditions_are_a_list_map_keyed_by_type() {
    let crd = serde_json::to_value(Relay::crd()).expect("json");
    let conditions = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
        ["conditions"];
    assert_eq!(conditions["x-kubernetes-list-type"], "map");
    assert_eq!(conditions["x-kubernetes-list-map-keys"][0], "type");
}

#[test]
fn every_spec_field_has_a_description() {
    fn walk(path: &str, schema: &serde_json::Value, missing: &mut Vec<String>) {
        if let Some(props) = schema.get("properties").and_then(|p| p.as_object()) {
            for (name, prop) in props {
                let here = format!("{path}.{name}");
                if prop.get("description").is_none()
                    && name != "metadata"
                    && name != "apiVersion"
                    && name != "kind"
                {
                    missing.push(here.clone());
                }
                walk(&here, prop, missing);
            }
        }
        if let Some(items) = schema.get("items") {
            walk(&format!("{path}[]"), items, missing);
        }
    }
    let mut missing = Vec::new();
    for crd in all() {
        let v = serde_json::to_value(&crd).expect("json");
        let root = &v["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
        walk(&crd.spec.names.kind, root, &mut missing);
    }
    assert!(missing.is_empty(), "fields without a description: {missing:?}");
}

#[test]
fn crds_yaml_has_no_yaml11_boolean_lookalikes() {
    // kubectl and Helm read YAML 1.1, where a plain on/off/yes/no is a boolean: an enum value
    // spelled like that would turn into `false` and the apiserver would reject the CRD.
    let have = include_str!("../../../crds/crds.yaml");
    let bad: Vec<&str> = have
        .lines()
        .filter(|l| {
            let v = l
                .trim()
                .trim_start_matches("- ")
                .rsplit(": ")
                .next()
                .unwrap_or("");
            matches!(
                v.to_ascii_lowercase().as_str(),
                "on" | "off" | "yes" | "no" | "y" | "n"
            )
        })
        .collect();
    assert!(bad.is_empty(), "YAML 1.1 booleans in crds/crds.yaml: {bad:?}");
}

/// `kubectl explain relay` and `maildomain` start with our own words, not kube-derive's
/// placeholder; `kubectl get mailroom` lists both kinds; both have a short name.
#[test]
fn both_kinds_have_a_description_a_category_and_a_short_name() {
    for crd in all() {
        let v = serde_json::to_value(&crd).expect("json");
        let kind = v["spec"]["names"]["kind"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let description = v["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["description"]
            .as_str()
            .unwrap_or_default();
        assert!(
            description.len() > 80 && !description.contains("Auto-generated"),
            "{kind}: {description:?}"
        );
        assert_eq!(
            v["spec"]["names"]["categories"],
            serde_json::json!(["mailroom"]),
            "{kind}"
        );
        assert_eq!(
            v["spec"]["names"]["shortNames"].as_array().map(Vec::len),
            Some(1),
            "{kind}"
        );
    }
}
