use super::*;

const DAY: Duration = Duration::from_secs(24 * 3600);
const NOW: i64 = 1_900_000_000;

fn names() -> Vec<String> {
    super::names("mailroom-webhook", "mailroom-system", &["127.0.0.1".into()])
}

fn write(plan: Plan) -> (Material, bool) {
    match plan {
        Plan::Write { material, new_ca } => (material, new_ca),
        Plan::Keep => panic!("expected a write"),
    }
}

fn first() -> Material {
    write(plan(None, &names(), NOW, DAY, 10 * DAY).expect("plan")).0
}

#[test]
fn nothing_yet_issues_a_ca_and_a_serving_certificate_for_every_name() {
    let (m, new_ca) = write(plan(None, &names(), NOW, DAY, 10 * DAY).expect("plan"));
    assert!(new_ca);
    assert_eq!(pems(&m.ca_bundle).len(), 1);
    let serving = &pems(&m.cert)[0];
    assert!(covers(serving, &names()));
    assert_eq!(m.not_after(), Some(NOW + 24 * 3600));
    assert_eq!(Material::from_data(&m.to_data()), Some(m));
}

#[test]
fn fresh_material_is_kept() {
    let m = first();
    assert!(matches!(
        plan(Some(&m), &names(), NOW + 3600, DAY, 10 * DAY),
        Ok(Plan::Keep)
    ));
}

#[test]
fn serving_certificate_is_renewed_with_the_same_ca_after_two_thirds() {
    let m = first();
    let later = NOW + 17 * 3600;
    let (renewed, new_ca) = write(plan(Some(&m), &names(), later, DAY, 10 * DAY).expect("plan"));
    assert!(!new_ca);
    assert_eq!(renewed.ca_bundle, m.ca_bundle, "caBundle stays the same");
    assert_ne!(renewed.cert, m.cert);
    assert_eq!(renewed.not_after(), Some(later + 24 * 3600));
}

#[test]
fn expiring_ca_is_replaced_and_the_old_one_stays_in_the_bundle() {
    let m = first();
    let later = NOW + 7 * 24 * 3600;
    let (renewed, new_ca) = write(plan(Some(&m), &names(), later, DAY, 10 * DAY).expect("plan"));
    assert!(new_ca);
    let bundle = pems(&renewed.ca_bundle);
    assert_eq!(bundle.len(), 2);
    assert_eq!(pem_text(&bundle[1]), m.ca_bundle, "previous CA kept second");
    assert_ne!(renewed.ca_key, m.ca_key);
}

#[test]
fn a_new_name_or_a_missing_ca_key_forces_a_new_certificate() {
    let m = first();
    let mut more = names();
    more.push("other.example".into());
    let (renewed, new_ca) = write(plan(Some(&m), &more, NOW, DAY, 10 * DAY).expect("plan"));
    assert!(!new_ca);
    assert!(covers(&pems(&renewed.cert)[0], &more));

    // External material (no CA key) cannot be renewed by us; self mode starts a new CA.
    let external = Material { ca_key: None, ..m };
    assert!(write(plan(Some(&external), &names(), NOW, DAY, 10 * DAY).expect("plan")).1);
}

#[test]
fn renewal_is_due_in_the_last_third() {
    struct Case {
        now: i64,
        want: bool,
    }
    for Case { now, want } in [
        Case { now: 0, want: false },
        Case {
            now: 199,
            want: false,
        },
        Case { now: 201, want: true },
        Case { now: 400, want: true },
    ] {
        // Issued at 0 for 300 s, so notBefore is backdated to -60.
        assert_eq!(renewal_due(-60, 300, now), want, "now {now}");
    }
}
