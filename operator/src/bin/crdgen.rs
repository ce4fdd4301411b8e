//! Writes every CRD as YAML: `cargo run -p mailroom-operator --bin crdgen > crds/crds.yaml`.

fn main() -> anyhow::Result<()> {
    print!("{}", mailroom_operator::crd::yaml()?);
    Ok(())
}
