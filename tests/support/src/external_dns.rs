//! Real DNS publishing peers: Debian's BIND (`named`) serving one zone on loopback that accepts
//! TSIG-signed updates and transfers (RFC 2136, RFC 8945), and external-dns (built by
//! tests/env/prepare.sh from its Go module) publishing DNSEndpoints into it with its RFC 2136
//! provider, as docs/dns.md tells users to run it.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context, Result, bail};
use base64::Engine as _;

use crate::{
    ports::Reservation,
    stack::{Proc, eventually},
    testenv,
};

/// The TSIG key both sides share.
pub const TSIG_KEY: &str = "mailroom-test";

/// `named` serving `zone` from a zone file in its own directory, on 127.0.0.1.
#[derive(Debug)]
pub struct Bind {
    /// The process (foreground, logging to `named.log`).
    pub proc: Proc,
    /// UDP and TCP port on 127.0.0.1.
    pub port: u16,
    /// The zone, without a trailing dot.
    pub zone: String,
    /// The TSIG secret (base64, HMAC-SHA256).
    pub secret: String,
    _port: Reservation,
}

// === impl Bind ===

impl Bind {
    /// Starts named for `zone` (only SOA and NS records) and waits until it answers.
    pub fn start(dir: &Path, zone: &str) -> Result<Self> {
        let named = named()?;
        let dir = dir.join("bind");
        std::fs::create_dir_all(&dir)?;
        // named binds the port with SO_REUSEPORT, so it takes the reserved port beside the
        // reservation (see crate::ports).
        let port = Reservation::on([127, 0, 0, 1].into())?;
        let secret = base64::engine::general_purpose::STANDARD.encode(rand_bytes()?);
        let d = dir.display();
        std::fs::write(
            dir.join("named.conf"),
            format!(
                r#"options {{
    directory "{d}";
    pid-file "{d}/named.pid";
    session-keyfile "{d}/session.key";
    managed-keys-directory "{d}";
    listen-on port {p} {{ 127.0.0.1; }};
    listen-on-v6 {{ none; }};
    recursion no;
    dnssec-validation no;
    notify no;
}};
controls {{ }};
key "{TSIG_KEY}" {{ algorithm hmac-sha256; secret "{secret}"; }};
zone "{zone}" {{
    type primary;
    file "{d}/{zone}.zone";
    allow-update {{ key "{TSIG_KEY}"; }};
    allow-transfer {{ key "{TSIG_KEY}"; }};
}};
"#,
                p = port.port()
            ),
        )?;
        std::fs::write(
            dir.join(format!("{zone}.zone")),
            format!(
                "$TTL 60\n@ IN SOA ns.{zone}. hostmaster.{zone}. 1 60 60 600 60\n@ IN NS ns.{zone}.\nns IN A 127.0.0.1\n"
            ),
        )?;
        let mut cmd = Command::new(named);
        // -g: foreground, log to stderr; -4: IPv4 only; -n 1: one worker thread.
        cmd.args(["-g", "-4", "-n", "1", "-c"])
            .arg(dir.join("named.conf"));
        let proc = Proc::spawn("named", &mut cmd, &dir)?;
        let mut bind = Self {
            proc,
            port: port.port(),
            zone: zone.into(),
            secret,
            _port: port,
        };
        eventually("named to answer for its zone", Duration::from_secs(30), || {
            bind.proc.check_running()?;
            Ok(bind.serial().ok())
        })?;
        Ok(bind)
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The TXT records at `name`, each as its character-strings, asked over TCP (dnspython).
    pub fn txt(&self, name: &str) -> Result<Vec<Vec<String>>> {
        let out = self.query(name, "TXT")?;
        Ok(serde_json::from_str(&out)?)
    }

    /// The zone's SOA serial.
    pub fn serial(&self) -> Result<u32> {
        let out = self.query(&self.zone, "SOA")?;
        let rows: Vec<Vec<String>> = serde_json::from_str(&out)?;
        let row = rows.first().context("no SOA record")?;
        row.first()
            .context("empty SOA")?
            .split_whitespace()
            .nth(2)
            .context("SOA has no serial")?
            .parse()
            .context("SOA serial")
    }

    fn query(&self, name: &str, rtype: &str) -> Result<String> {
        let out = Command::new(testenv::python()?)
            .args(["-c", QUERY, name, rtype, &self.port.to_string()])
            .output()?;
        if !out.status.success() {
            bail!(
                "query {name} {rtype} at {}: {}",
                self.addr(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8(out.stdout)?)
    }
}

/// Prints the answer's records as a JSON list: each TXT record as its strings, any other record
/// as one element holding its text form. NXDOMAIN and no data print `[]`.
const QUERY: &str = r#"
import json, sys, dns.message, dns.query, dns.rcode, dns.rdatatype
name, rtype, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
r = dns.query.tcp(dns.message.make_query(name, rtype), "127.0.0.1", port=port, timeout=3)
if r.rcode() not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
    sys.exit("rcode " + dns.rcode.to_text(r.rcode()))
out = []
for rrset in r.answer:
    for rd in rrset:
        if rd.rdtype == dns.rdatatype.TXT:
            out.append([s.decode() for s in rd.strings])
        else:
            out.append([rd.to_text()])
print(json.dumps(out))
"#;

fn named() -> Result<PathBuf> {
    let path = PathBuf::from("/usr/sbin/named");
    if path.exists() {
        return Ok(path);
    }
    bail!("/usr/sbin/named not found: run `bash tests/env/prepare.sh` (it installs Debian's bind9)")
}

fn rand_bytes() -> Result<[u8; 32]> {
    let mut b = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
        .context("reading /dev/urandom")?;
    Ok(b)
}

/// The external-dns flags docs/dns.md asks for, for the RFC 2136 provider and `bind`: the CRD
/// source in `namespace`, TXT records managed, ownership records under a templated prefix that
/// ends in a dot (so the apex's lands inside the zone), `--policy=sync`.
pub fn external_dns_args(bind: &Bind, namespace: &str, owner: &str, interval: &str) -> Vec<String> {
    let mut args: Vec<String> = [
        "--source=crd",
        "--crd-source-apiversion=externaldns.k8s.io/v1alpha1",
        "--crd-source-kind=DNSEndpoint",
        "--provider=rfc2136",
        "--rfc2136-host=127.0.0.1",
        "--rfc2136-tsig-secret-alg=hmac-sha256",
        "--rfc2136-axfr",
        "--registry=txt",
        "--txt-prefix=extdns-%{record_type}.",
        "--managed-record-types=A",
        "--managed-record-types=AAAA",
        "--managed-record-types=CNAME",
        "--managed-record-types=TXT",
        "--policy=sync",
        "--events",
        "--metrics-address=127.0.0.1:0",
        "--log-level=debug",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend([
        format!("--namespace={namespace}"),
        format!("--rfc2136-port={}", bind.port),
        format!("--rfc2136-zone={}", bind.zone),
        format!("--rfc2136-tsig-keyname={TSIG_KEY}"),
        format!("--rfc2136-tsig-secret={}", bind.secret),
        format!("--txt-owner-id={owner}"),
        format!("--interval={interval}"),
        format!("--domain-filter={}", bind.zone),
    ]);
    args
}

/// Starts external-dns with `kubeconfig` (a ServiceAccount with the RBAC docs/dns.md lists).
pub fn start_external_dns(dir: &Path, kubeconfig: &Path, args: &[String]) -> Result<Proc> {
    let mut cmd = testenv::command("external-dns")?;
    cmd.arg(format!("--kubeconfig={}", kubeconfig.display()))
        .args(args);
    Proc::spawn("external-dns", &mut cmd, dir)
}
