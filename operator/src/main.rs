//! mailroom operator entry point (reconciles MailDomain and Relay; see issue #4).

fn main() -> anyhow::Result<()> {
    anyhow::bail!("the operator is not built yet; see docs/ for the sidecar")
}
