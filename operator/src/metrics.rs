//! Operator metrics (`mailroom_operator_*`) in one `prometheus` registry; label values are
//! bounded (kind, error label, record purpose) plus object names, which the user controls.

use std::time::Instant;

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry};

use crate::crd::RotationPhase;

/// All operator metrics.
#[derive(Debug, Clone)]
pub struct Metrics {
    /// The registry `/metrics` serves.
    pub registry: Registry,
    runs: IntCounterVec,
    failures: IntCounterVec,
    duration: HistogramVec,
    ready: IntGaugeVec,
    hub_ready: IntGaugeVec,
    dns: IntGaugeVec,
    leader: IntGaugeVec,
    admissions: IntCounterVec,
    admission_duration: prometheus::Histogram,
    cert_expiry: prometheus::IntGauge,
    rotation: Rotation,
}

/// DKIM rotation gauges, per MailDomain (`name`) and its `domain`.
#[derive(Debug, Clone)]
struct Rotation {
    phase: IntGaugeVec,
    active_since: IntGaugeVec,
    pending_since: IntGaugeVec,
}

/// Observes a reconcile's duration when dropped.
#[derive(Debug)]
pub struct Timer {
    histogram: prometheus::Histogram,
    start: Instant,
}

impl Drop for Timer {
    fn drop(&mut self) {
        self.histogram.observe(self.start.elapsed().as_secs_f64());
    }
}

// === impl Metrics ===

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let registry = Registry::new();
        let runs = IntCounterVec::new(
            Opts::new(
                "mailroom_operator_reconcile_runs_total",
                "Reconciles started, by kind.",
            ),
            &["kind"],
        )
        .expect("valid metric");
        let failures = IntCounterVec::new(
            Opts::new(
                "mailroom_operator_reconcile_failures_total",
                "Reconciles that failed, by kind and reason.",
            ),
            &["kind", "reason"],
        )
        .expect("valid metric");
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "mailroom_operator_reconcile_duration_seconds",
                "Reconcile duration, by kind.",
            )
            .buckets(vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
            &["kind"],
        )
        .expect("valid metric");
        let ready = IntGaugeVec::new(
            Opts::new(
                "mailroom_operator_object_ready",
                "1 if the object's Ready condition is True, else 0.",
            ),
            &["kind", "namespace", "name"],
        )
        .expect("valid metric");
        let hub_ready = IntGaugeVec::new(
            Opts::new(
                "mailroom_operator_hub_ready_replicas",
                "Ready pods of a Relay's hub (spec.hub), from its StatefulSet; absent without a hub.",
            ),
            &["namespace", "name"],
        )
        .expect("valid metric");
        let dns = IntGaugeVec::new(
            Opts::new(
                "mailroom_operator_dns_record_verified",
                "1 if live DNS serves the record, else 0.",
            ),
            &["domain", "purpose"],
        )
        .expect("valid metric");
        let leader = IntGaugeVec::new(
            Opts::new(
                "mailroom_operator_leader",
                "1 while this replica holds the Lease.",
            ),
            &["lease"],
        )
        .expect("valid metric");
        let admissions = IntCounterVec::new(
            Opts::new(
                "mailroom_operator_webhook_admissions_total",
                "Pod admission requests answered by the injection webhook, by result: injected, \
                 already_injected, skipped, denied, allowed_without_sidecar, error.",
            ),
            &["result"],
        )
        .expect("valid metric");
        let admission_duration = prometheus::Histogram::with_opts(
            HistogramOpts::new(
                "mailroom_operator_webhook_admission_duration_seconds",
                "Time from receiving an admission request to sending the answer.",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ]),
        )
        .expect("valid metric");
        let cert_expiry = prometheus::IntGauge::new(
            "mailroom_operator_webhook_certificate_expiry_timestamp_seconds",
            "Unix time when the serving certificate this replica uses expires.",
        )
        .expect("valid metric");
        let rotation = Rotation::new();
        for m in [
            Box::new(rotation.phase.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(rotation.active_since.clone()),
            Box::new(rotation.pending_since.clone()),
            Box::new(runs.clone()),
            Box::new(failures.clone()),
            Box::new(duration.clone()),
            Box::new(ready.clone()),
            Box::new(hub_ready.clone()),
            Box::new(dns.clone()),
            Box::new(leader.clone()),
            Box::new(admissions.clone()),
            Box::new(admission_duration.clone()),
            Box::new(cert_expiry.clone()),
        ] {
            registry.register(m).expect("metric registered once");
        }
        Self {
            registry,
            runs,
            failures,
            duration,
            ready,
            hub_ready,
            dns,
            leader,
            admissions,
            admission_duration,
            cert_expiry,
            rotation,
        }
    }

    /// Counts a reconcile of `kind` and times it until the guard drops.
    pub fn start(&self, kind: &str) -> Timer {
        self.runs.with_label_values(&[kind]).inc();
        Timer {
            histogram: self.duration.with_label_values(&[kind]),
            start: Instant::now(),
        }
    }

    /// Counts a failure with its bounded label.
    pub fn failure(&self, kind: &str, label: &'static str) {
        self.failures.with_label_values(&[kind, label]).inc();
    }

    /// Records an object's Ready state.
    pub fn set_ready(&self, kind: &str, namespace: &str, name: &str, ready: bool) {
        self.ready
            .with_label_values(&[kind, namespace, name])
            .set(i64::from(ready));
    }

    /// Records the Ready pods of a Relay's hub, or forgets the series when it has none.
    pub fn set_hub_ready(&self, namespace: &str, name: &str, ready: Option<u32>) {
        match ready {
            Some(n) => self
                .hub_ready
                .with_label_values(&[namespace, name])
                .set(i64::from(n)),
            None => {
                let _ = self.hub_ready.remove_label_values(&[namespace, name]);
            }
        }
    }

    /// Records a DNS finding.
    pub fn set_dns(&self, domain: &str, purpose: &str, verified: bool) {
        self.dns
            .with_label_values(&[domain, purpose])
            .set(i64::from(verified));
    }

    /// Records whether this replica leads.
    pub fn set_leader(&self, lease: &str, leading: bool) {
        self.leader.with_label_values(&[lease]).set(i64::from(leading));
    }

    /// Counts one admission answer with its bounded `result` and observes its duration.
    pub fn admission(&self, result: &'static str, started: Instant) {
        self.admissions.with_label_values(&[result]).inc();
        self.admission_duration.observe(started.elapsed().as_secs_f64());
    }

    /// Records when the serving certificate in use expires.
    pub fn set_certificate_expiry(&self, unix_seconds: i64) {
        self.cert_expiry.set(unix_seconds);
    }

    /// Records a MailDomain's DKIM rotation: its phase, when the signing key started signing,
    /// and when the pending key was created (the series exists only while one is pending).
    pub fn set_rotation(
        &self,
        name: &str,
        domain: &str,
        phase: RotationPhase,
        active_since: i64,
        pending_since: Option<i64>,
    ) {
        for p in RotationPhase::ALL {
            self.rotation
                .phase
                .with_label_values(&[name, domain, p.label()])
                .set(i64::from(p == phase));
        }
        self.rotation
            .active_since
            .with_label_values(&[name, domain])
            .set(active_since);
        match pending_since {
            Some(t) => self
                .rotation
                .pending_since
                .with_label_values(&[name, domain])
                .set(t),
            None => {
                // Absent, not zero: `time() - 0` would look like a rotation stuck since 1970.
                let _ = self.rotation.pending_since.remove_label_values(&[name, domain]);
            }
        }
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let encoder = prometheus::TextEncoder::new();
        encoder
            .encode_to_string(&self.registry.gather())
            .unwrap_or_default()
    }
}

// === impl Rotation ===

impl Rotation {
    fn new() -> Self {
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric")
        };
        Self {
            phase: gauge(
                "mailroom_operator_dkim_rotation_phase",
                "1 for the DKIM rotation phase a MailDomain is in (stable, pending, retiring), else 0.",
                &["name", "domain", "phase"],
            ),
            active_since: gauge(
                "mailroom_operator_dkim_key_active_since_timestamp_seconds",
                "Unix time when a MailDomain's signing DKIM key started signing.",
                &["name", "domain"],
            ),
            pending_since: gauge(
                "mailroom_operator_dkim_rotation_pending_since_timestamp_seconds",
                "Unix time when the pending DKIM key of a rotation was created; absent when none is pending.",
                &["name", "domain"],
            ),
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_gauges_show_one_phase_and_pending_since_only_while_pending() {
        let m = Metrics::new();
        m.set_rotation("shop", "shop.example.com", RotationPhase::Pending, 100, Some(200));
        let text = m.render();
        assert!(text.contains(
            r#"mailroom_operator_dkim_rotation_phase{domain="shop.example.com",name="shop",phase="pending"} 1"#
        ));
        assert!(text.contains(
            r#"mailroom_operator_dkim_rotation_phase{domain="shop.example.com",name="shop",phase="stable"} 0"#
        ));
        assert!(text.contains(
            r#"mailroom_operator_dkim_rotation_pending_since_timestamp_seconds{domain="shop.example.com",name="shop"} 200"#
        ));
        m.set_rotation("shop", "shop.example.com", RotationPhase::Retiring, 300, None);
        let text = m.render();
        assert!(!text.contains("mailroom_operator_dkim_rotation_pending_since_timestamp_seconds{"));
        assert!(text.contains(
            r#"mailroom_operator_dkim_key_active_since_timestamp_seconds{domain="shop.example.com",name="shop"} 300"#
        ));
    }
}
