//! `Config::validate()`: every semantic problem at once, each with its field path.

use super::*;

/// Smallest `spool.reserveBytes`: room for about 3,000 completion records.
pub const MIN_RESERVE_BYTES: u64 = 64 << 10;

// === impl Config ===

impl Config {
    /// Every semantic problem in the document, each with its field path.
    pub fn validate(&self) -> Vec<Problem> {
        let mut p = Vec::new();
        let mut bad = |field: &str, message: String| {
            p.push(Problem {
                field: field.into(),
                message,
            })
        };
        if self.api_version != API_VERSION {
            bad(
                "apiVersion",
                format!(
                    "unsupported apiVersion {:?}; this build reads {API_VERSION:?}",
                    self.api_version
                ),
            );
        }
        if self.kind != KIND {
            bad("kind", format!("must be {KIND:?}, not {:?}", self.kind));
        }
        if !is_hostname(&self.hostname) {
            bad(
                "hostname",
                format!("{:?} is not a valid host name", self.hostname),
            );
        }
        if !self.listen.address.ip().is_loopback() && !self.listen.allow_non_loopback {
            bad(
                "listen.address",
                format!(
                    "{} is not a loopback address; set listen.allowNonLoopback: true to expose the relay",
                    self.listen.address
                ),
            );
        }
        if !self.admin.queue_api_address.ip().is_loopback() {
            bad(
                "admin.queueApiAddress",
                format!(
                    "{} is not a loopback address; the queue API can read envelopes and delete mail, so it only listens on loopback (use kubectl exec)",
                    self.admin.queue_api_address
                ),
            );
        }
        if self.listen.auth.is_some() && self.listen.tls.is_none() {
            bad(
                "listen.auth",
                "needs listen.tls: a credential is never accepted in clear text (RFC 4954 4)".into(),
            );
        }
        if let Some(h) = &self.handoff {
            if self.listen.auth.is_some() {
                bad(
                    "handoff",
                    "a hub (listen.auth set) keeps its mail on its own volume and hands off to no one".into(),
                );
            }
            if !is_hostname(&h.host) && h.host.parse::<std::net::IpAddr>().is_err() {
                bad(
                    "handoff.host",
                    format!("{:?} is not a host name or IP address", h.host),
                );
            }
            if h.port == 0 {
                bad("handoff.port", "must be greater than 0".into());
            }
            if h.max_connections == 0 {
                bad("handoff.maxConnections", "must be greater than 0".into());
            }
            if let Some(sh) = &h.shadows {
                if sh.hosts.is_empty() {
                    bad("handoff.shadows.hosts", "must name at least one hub pod".into());
                }
                for (i, host) in sh.hosts.iter().enumerate() {
                    if !is_hostname(host) && host.parse::<std::net::IpAddr>().is_err() {
                        bad(
                            &format!("handoff.shadows.hosts[{i}]"),
                            format!("{host:?} is not a host name or IP address"),
                        );
                    }
                }
                if sh.max_connections == 0 {
                    bad("handoff.shadows.maxConnections", "must be greater than 0".into());
                }
            }
            if h.after_parked_seconds == Some(0) {
                bad(
                    "handoff.afterParkedSeconds",
                    "must be greater than 0 (leave it out to hand off only when draining)".into(),
                );
            }
        }
        if let Some(o) = &self.shadows {
            if self.listen.auth.is_none() {
                bad(
                    "shadows",
                    "only a hub (listen.auth set) holds shadow copies".into(),
                );
            }
            if o.namespace.is_empty() {
                bad("shadows.namespace", "must not be empty".into());
            }
            if o.pod_selector.is_empty() {
                bad(
                    "shadows.podSelector",
                    "must not be empty: an empty selector would judge every pod".into(),
                );
            }
            if o.check_seconds == 0 {
                bad("shadows.checkSeconds", "must be greater than 0".into());
            }
        }
        let l = &self.limits;
        if l.max_message_bytes == 0 {
            bad("limits.maxMessageBytes", "must be greater than 0".into());
        }
        if l.max_recipients == 0 {
            bad("limits.maxRecipients", "must be greater than 0".into());
        }
        if l.max_connections == 0 {
            bad("limits.maxConnections", "must be greater than 0".into());
        }
        if l.max_line_bytes < 512 {
            bad(
                "limits.maxLineBytes",
                "must be at least 512 (RFC 5321 4.5.3.1.4)".into(),
            );
        }
        if l.idle_timeout_seconds == 0 {
            bad("limits.idleTimeoutSeconds", "must be greater than 0".into());
        }
        if l.data_timeout_seconds == 0 {
            bad("limits.dataTimeoutSeconds", "must be greater than 0".into());
        }
        for (field, value) in [
            ("limits.commandDeadlineSeconds", l.command_deadline_seconds),
            ("limits.dataDeadlineFloorSeconds", l.data_deadline_floor_seconds),
            ("limits.dataMinBytesPerSecond", l.data_min_bytes_per_second),
        ] {
            if value == 0 {
                bad(field, "must be greater than 0".into());
            }
        }
        if l.rate_per_minute == Some(0) {
            bad(
                "limits.ratePerMinute",
                "must be greater than 0 (leave it out for no limit)".into(),
            );
        }
        // An empty list is allowed: every message is refused (`550 5.7.1`). The operator renders
        // one when every domain of a Relay is withdrawn from its namespace, and running sidecars
        // must take that config rather than keep sending as the withdrawn domains.
        for (i, d) in self.domains.iter().enumerate() {
            if !is_hostname(&d.domain) || d.domain.to_ascii_lowercase() != d.domain {
                bad(
                    &format!("domains[{i}].domain"),
                    format!("{:?} is not a lowercase domain name", d.domain),
                );
            }
            if self.domains[..i].iter().any(|o| o.domain == d.domain) {
                bad(
                    &format!("domains[{i}].domain"),
                    format!("{:?} is listed twice", d.domain),
                );
            }
            if let Some(dkim) = &d.dkim
                && !is_label(&dkim.selector)
            {
                bad(
                    &format!("domains[{i}].dkim.selector"),
                    format!("{:?} is not a DNS label", dkim.selector),
                );
            }
        }
        if let Some(address) = &self.postmaster {
            match address::Mailbox::parse(address) {
                // ASCII only: a client that writes to <postmaster> without SMTPUTF8 must still
                // be able to send (RFC 6531 3.4).
                // Direct delivery does not route address literals (docs/security.md).
                Ok(m) if m.literal.is_some() && matches!(self.delivery, Delivery::Direct(_)) => bad(
                    "postmaster",
                    format!("{address:?} is an address literal, which direct delivery does not route"),
                ),
                Ok(m) if m.text.is_ascii() => {}
                Ok(_) => bad("postmaster", format!("{address:?} must be an ASCII address")),
                Err(e) => bad("postmaster", format!("{address:?} is not a mailbox: {e}")),
            }
        }
        if self.spool.max_bytes == 0 {
            bad("spool.maxBytes", "must be greater than 0".into());
        }
        if self.spool.max_messages == 0 {
            bad("spool.maxMessages", "must be greater than 0".into());
        }
        if self.spool.reserve_bytes < MIN_RESERVE_BYTES {
            bad(
                "spool.reserveBytes",
                format!("must be at least {MIN_RESERVE_BYTES} (64 KiB)"),
            );
        }
        if let Delivery::Smarthost(s) = &self.delivery {
            smarthost_problems(s, "delivery.smarthost", &mut bad);
            if let Some(b) = &s.backup {
                smarthost_problems(b, "delivery.smarthost.backup", &mut bad);
                if b.backup.is_some() {
                    bad(
                        "delivery.smarthost.backup.backup",
                        "a backup smarthost has no backup of its own".into(),
                    );
                }
            }
        }
        let limits = std::iter::once(("shaping.default".to_owned(), &self.shaping.default)).chain(
            self.shaping
                .domains
                .iter()
                .map(|(d, l)| (format!("shaping.domains.{d}"), l)),
        );
        for (at, l) in limits {
            if l.concurrency == Some(0) {
                bad(&format!("{at}.concurrency"), "must be greater than 0".into());
            }
            if l.rate_per_minute == Some(0) {
                bad(&format!("{at}.ratePerMinute"), "must be greater than 0".into());
            }
        }
        for d in self.shaping.domains.keys() {
            if !is_hostname(d) || d.to_ascii_lowercase() != *d {
                bad(
                    &format!("shaping.domains.{d}"),
                    format!("{d:?} is not a lower-case domain name"),
                );
            }
        }
        let r = &self.retry;
        if r.initial_seconds == 0 {
            bad("retry.initialSeconds", "must be greater than 0".into());
        }
        if !(r.multiplier >= 1.0 && r.multiplier <= 100.0) {
            bad("retry.multiplier", "must be between 1 and 100".into());
        }
        if r.max_seconds < r.initial_seconds {
            bad("retry.maxSeconds", "must be at least retry.initialSeconds".into());
        }
        if r.max_age_seconds == 0 {
            bad("retry.maxAgeSeconds", "must be greater than 0".into());
        }
        if let Delivery::Direct(d) = &self.delivery {
            d.validate(&mut p);
        }
        p
    }
}

fn is_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// RFC 1123 host name (also used for domains): dot-separated labels, at most 253 octets.
pub fn is_hostname(s: &str) -> bool {
    let s = s.strip_suffix('.').unwrap_or(s);
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_label)
}

impl Config {
    /// Every file the config names, with its field path: DKIM keys, smarthost credentials and
    /// CA bundles, the DNSSEC trust anchor.
    pub fn files(&self) -> Vec<(String, &Path)> {
        let mut files = Vec::new();
        for (i, d) in self.domains.iter().enumerate() {
            if let Some(dkim) = &d.dkim {
                files.push((format!("domains[{i}].dkim.keyFile"), dkim.key_file.as_path()));
            }
        }
        match &self.delivery {
            Delivery::Smarthost(s) => {
                let backup = s.backup.as_deref().map(|b| (b, "delivery.smarthost.backup"));
                for (s, at) in std::iter::once((s, "delivery.smarthost")).chain(backup) {
                    if let Some(ca) = &s.ca_file {
                        files.push((format!("{at}.caFile"), ca.as_path()));
                    }
                    if let Some(auth) = &s.auth {
                        files.push((format!("{at}.auth.usernameFile"), auth.username_file.as_path()));
                        files.push((format!("{at}.auth.passwordFile"), auth.password_file.as_path()));
                    }
                }
            }
            Delivery::Direct(d) => {
                if let Some(ca) = &d.ca_file {
                    files.push(("delivery.direct.caFile".into(), ca.as_path()));
                }
                if let Some(anchor) = &d.dnssec_trust_anchor_file {
                    files.push(("delivery.direct.dnssecTrustAnchorFile".into(), anchor.as_path()));
                }
            }
            Delivery::Capture(_) => {}
        }
        files
    }

    /// Problems with the files the config names: each must be a file this process can read.
    /// Unlike [`Config::validate`] this does I/O, so the operator (which renders paths that exist
    /// only in the pod) never calls it; the sidecar does at start-up and in `--check-config`, so
    /// that a config it would refuse to run is never reported valid.
    pub fn check_files(&self) -> Vec<Problem> {
        self.files()
            .into_iter()
            .filter_map(|(field, path)| {
                let problem = match std::fs::File::open(path) {
                    Ok(f) => match f.metadata() {
                        Ok(m) if m.is_file() => return None,
                        Ok(_) => format!("{} is not a file", path.display()),
                        Err(e) => format!("cannot read {}: {e}", path.display()),
                    },
                    Err(e) => format!("cannot read {}: {e}", path.display()),
                };
                Some(Problem {
                    field,
                    message: problem,
                })
            })
            .collect()
    }
}

/// The problems of one smarthost's settings, under field path `at`.
fn smarthost_problems(s: &Smarthost, at: &str, bad: &mut impl FnMut(&str, String)) {
    if s.host.parse::<std::net::IpAddr>().is_err() && !is_hostname(&s.host) {
        bad(
            &format!("{at}.host"),
            format!("{:?} is not a host name or IP address", s.host),
        );
    }
    if s.port == 0 {
        bad(&format!("{at}.port"), "must be between 1 and 65535".into());
    }
    for (field, value) in [
        ("connectTimeoutSeconds", s.connect_timeout_seconds),
        ("commandTimeoutSeconds", s.command_timeout_seconds),
        ("maxConnections", s.max_connections as u64),
    ] {
        if value == 0 {
            bad(&format!("{at}.{field}"), "must be greater than 0".into());
        }
    }
}
