//! Prometheus metrics of the sidecar. Every label value comes from a bounded set (an enum or the
//! configured sender domains); never addresses, recipient domains, IPs or reply text.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

const NS: &str = "mailroom_sidecar";

/// Why a message (or a whole transaction) was refused at the door.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    /// Over `limits.maxMessageBytes` (declared or actual).
    Size,
    /// MAIL FROM domain not configured.
    SenderDomain,
    /// Header From: domain not configured, or no From: header.
    HeaderFrom,
    /// Bare CR or LF in DATA.
    BareLineEnding,
    /// NUL octet in DATA.
    Nul,
    /// A line over 998 octets in DATA.
    LineTooLong,
    /// Spool full or disk full.
    SpoolFull,
    /// Spool write failed.
    SpoolError,
    /// Over `limits.ratePerMinute`.
    RateLimited,
    /// Malformed message (e.g. no header section).
    Malformed,
    /// A hand-off whose key another connection is committing (a hub).
    HandoffInProgress,
    /// No hub took the shadow copy (`durability: replicated`).
    ShadowFailed,
}

impl RejectReason {
    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Size => "size",
            Self::SenderDomain => "sender_domain",
            Self::HeaderFrom => "header_from",
            Self::BareLineEnding => "bare_line_ending",
            Self::Nul => "nul",
            Self::LineTooLong => "line_too_long",
            Self::SpoolFull => "spool_full",
            Self::SpoolError => "spool_error",
            Self::RateLimited => "rate_limited",
            Self::Malformed => "malformed",
            Self::HandoffInProgress => "handoff_in_progress",
            Self::ShadowFailed => "shadow_failed",
        }
    }
}

/// How an inbound session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionEnd {
    /// Client sent QUIT.
    Quit,
    /// Client went idle or too slow; got `421`.
    Timeout,
    /// Too many bad commands or an unrecoverable protocol error.
    ProtocolError,
    /// Client closed the connection without QUIT.
    Disconnected,
    /// The sidecar is shutting down; got `421`.
    Shutdown,
    /// Connection limit reached; got `421` at once.
    Overloaded,
}

impl SessionEnd {
    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Quit => "quit",
            Self::Timeout => "timeout",
            Self::ProtocolError => "protocol_error",
            Self::Disconnected => "disconnected",
            Self::Shutdown => "shutdown",
            Self::Overloaded => "overloaded",
        }
    }
}

/// All sidecar metrics, registered in their own registry.
#[derive(Debug, Clone)]
pub struct Metrics {
    /// The registry `/metrics` encodes.
    pub registry: Registry,
    /// `sessions_total{end}`.
    pub sessions: IntCounterVec,
    /// `sessions_active`.
    pub sessions_active: IntGauge,
    /// `messages_received_total{result, reason}`; result is accepted|rejected.
    pub received: IntCounterVec,
    /// `messages_delivered_total{route, sender_domain, reply_class}` (one per recipient).
    pub delivered: IntCounterVec,
    /// `messages_deferred_total{route, sender_domain, reply_class}` (one per recipient attempt).
    pub deferred: IntCounterVec,
    /// `messages_bounced_total{route, sender_domain, reply_class}` (one per recipient).
    pub bounced: IntCounterVec,
    /// `dsn_sent_total{kind}`; kind is failure|delay|success.
    pub dsn_sent: IntCounterVec,
    /// `dkim_signatures_total{domain, algorithm, result}`.
    pub dkim: IntCounterVec,
    /// `queue_admin_actions_total{action, result}`: queue API mutations (docs/operations.md).
    pub queue_admin: IntCounterVec,
    /// `queue_messages{state}`; state is ready|deferred|held.
    pub queue_messages: IntGaugeVec,
    /// `queue_bytes{state}`.
    pub queue_bytes: IntGaugeVec,
    /// `queue_oldest_message_age_seconds`.
    pub oldest_age: IntGauge,
    /// `drain_undelivered_messages`: messages left in the spool when the last drain ended.
    pub drain_undelivered: IntGauge,
    /// `accept_duration_seconds`: end of DATA to `250`.
    pub accept_duration: Histogram,
    /// `delivery_duration_seconds{route, outcome}`: one delivery attempt (one transaction).
    pub delivery_duration: HistogramVec,
    /// `message_size_bytes`: accepted messages.
    pub message_size: Histogram,
    /// `config_reloads_total`.
    pub config_reloads: IntCounter,
    /// `config_reload_failures_total`.
    pub config_reload_failures: IntCounter,
    /// `spool_quarantined_total`: spool records found corrupt at start-up.
    pub spool_quarantined: IntCounter,
    /// `spool_commit_batch_size`: messages made durable by one fsync.
    pub spool_batch: Histogram,
    /// `spool_fsync_duration_seconds`: one group commit's fdatasync (and the directory's, when a
    /// new segment began): the disk's part of every accept.
    pub spool_fsync_duration: Histogram,
    /// `spool_disk_full`: 0 normally; 1 while the disk reserve holds delivery records (new mail
    /// gets `452`); 2 once the reserve is spent too (deliveries paused).
    pub spool_disk_full: IntGauge,
    /// `spool_limit_bytes`: the spool's size limit in effect (`spool.maxBytes`).
    pub spool_limit_bytes: IntGauge,
    /// `spool_limit_messages`: the spool's message limit in effect (`spool.maxMessages`).
    pub spool_limit_messages: IntGauge,
    /// `route_parked{route}`: 1 while a route is parked after connection failures.
    pub route_parked: IntGaugeVec,
    /// `route_failures_total{route}`: connection-level failures (refused, TLS, timeout) that count
    /// towards parking.
    pub route_failures: IntCounterVec,
    /// `route_probes_total{route}`: single attempts let through when a parking period ends.
    pub route_probes: IntCounterVec,
    /// `mx_lookups_total{result}`: direct delivery's MX lookups, one per domain and attempt.
    pub mx_lookups: IntCounterVec,
    /// `outbound_tls_total{policy, version, outcome}`: direct delivery's TLS decisions, one per
    /// connection opened.
    pub outbound_tls: IntCounterVec,
    /// `mta_sts_policies_total{result}`: MTA-STS policy lookups (cache hits included).
    pub mta_sts: IntCounterVec,
    /// `dane_lookups_total{result}`: DANE decisions per MX host tried (`dane: on`).
    pub dane: IntCounterVec,
    /// `auth_failures_total`: AUTH attempts with a wrong credential (a hub's listener).
    pub auth_failures: IntCounter,
    /// `handoff_messages_total{result}`: messages a sidecar offered its hub; result is
    /// accepted|refused|failed.
    pub handoff: IntCounterVec,
    /// `handoff_received_total{result}`: hand-offs a hub took; result is queued|duplicate.
    pub handoff_received: IntCounterVec,
    /// `shadow_copies_total{result}`: shadow copies a sidecar stored on its hub before `250`;
    /// result is stored|failed (the app got `451` instead).
    pub shadow_copies: IntCounterVec,
    /// `shadow_releases_pending`: releases a sidecar has not yet delivered to its hub.
    pub shadow_releases_pending: IntGauge,
    /// `shadows_held`: shadow copies a hub holds for live pods.
    pub shadows_held: IntGauge,
    /// `shadows_total{event}`: what became of shadow copies on a hub; event is
    /// stored|released|replaced|promoted.
    pub shadows: IntCounterVec,
    /// `shadow_owner_checks_total{result}`: a hub's checks of its owner pods; result is ok|error.
    pub shadow_owner_checks: IntCounterVec,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let registry = Registry::new();
        let reg = |c: Box<dyn prometheus::core::Collector>| {
            registry.register(c).expect("metric names are unique constants");
        };
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            let m = IntCounterVec::new(Opts::new(name, help).namespace(NS), labels).expect("valid metric");
            reg(Box::new(m.clone()));
            m
        };
        let outcome_labels = &["route", "sender_domain", "reply_class"];
        let sessions = counter_vec(
            "sessions_total",
            "Inbound SMTP sessions by how they ended.",
            &["end"],
        );
        let received = counter_vec(
            "messages_received_total",
            "Messages offered by clients, by result (accepted|rejected) and reject reason.",
            &["result", "reason"],
        );
        let delivered = counter_vec(
            "messages_delivered_total",
            "Recipients accepted by the next hop.",
            outcome_labels,
        );
        let deferred = counter_vec(
            "messages_deferred_total",
            "Recipient delivery attempts that failed temporarily and will be retried.",
            outcome_labels,
        );
        let bounced = counter_vec(
            "messages_bounced_total",
            "Recipients that failed permanently or expired.",
            outcome_labels,
        );
        let dsn_sent = counter_vec(
            "dsn_sent_total",
            "Delivery status notifications generated.",
            &["kind"],
        );
        let dkim = counter_vec(
            "dkim_signatures_total",
            "DKIM signing attempts by sender domain, algorithm and result.",
            &["domain", "algorithm", "result"],
        );
        let mx_lookups = counter_vec(
            "mx_lookups_total",
            "MX lookups of direct delivery by result (ok|implicit|null|nxdomain|servfail).",
            &["result"],
        );
        let outbound_tls = counter_vec(
            "outbound_tls_total",
            "Connections opened by direct delivery, by TLS policy, negotiated version and outcome.",
            &["policy", "version", "outcome"],
        );
        let route_failures = counter_vec(
            "route_failures_total",
            "Connection-level delivery failures (refused, TLS, timeout) by route; they park it.",
            &["route"],
        );
        let route_probes = counter_vec(
            "route_probes_total",
            "Probe attempts by route: one each time a parking period ends.",
            &["route"],
        );
        let mta_sts = counter_vec(
            "mta_sts_policies_total",
            "MTA-STS policy lookups by result (none|enforce|testing|policy_none|error).",
            &["result"],
        );
        let dane = counter_vec(
            "dane_lookups_total",
            "DANE decisions per MX host by result (usable|unusable|absent|insecure|failed).",
            &["result"],
        );
        let gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            let m = IntGaugeVec::new(Opts::new(name, help).namespace(NS), labels).expect("valid metric");
            reg(Box::new(m.clone()));
            m
        };
        let queue_admin = counter_vec(
            "queue_admin_actions_total",
            "Queue API mutations by action (flush, retry, hold, release, delete_bounce, delete_silent, quarantine_release) and result (ok, refused).",
            &["action", "result"],
        );
        let queue_messages = gauge_vec("queue_messages", "Messages in the queue by state.", &["state"]);
        let queue_bytes = gauge_vec(
            "queue_bytes",
            "Bytes of messages in the queue by state.",
            &["state"],
        );
        let route_parked = gauge_vec(
            "route_parked",
            "1 while a route is parked after connection failures.",
            &["route"],
        );
        let gauge = |name: &str, help: &str| {
            let m = IntGauge::with_opts(Opts::new(name, help).namespace(NS)).expect("valid metric");
            reg(Box::new(m.clone()));
            m
        };
        let sessions_active = gauge("sessions_active", "Inbound SMTP sessions now open.");
        let oldest_age = gauge(
            "queue_oldest_message_age_seconds",
            "Age of the oldest message in the queue; 0 when empty.",
        );
        let drain_undelivered = gauge(
            "drain_undelivered_messages",
            "Messages still in the spool when the drain after SIGTERM ended; 0 until then.",
        );
        let handoff = counter_vec(
            "handoff_messages_total",
            "Messages this sidecar offered its Relay's hub, by result: accepted (the hub's 250; gone from this spool), refused (the hub answered otherwise), failed (no answer: connection, TLS or timeout).",
            &["result"],
        );
        let handoff_received = counter_vec(
            "handoff_received_total",
            "Hand-offs this hub took, by result: queued, or duplicate (a key it already holds or delivered; answered 250 without a second copy).",
            &["result"],
        );
        let shadow_copies = counter_vec(
            "shadow_copies_total",
            "Shadow copies this sidecar stored on its Relay's hub before answering 250 (durability: replicated), by result: stored, or failed (the app got 451 and the message was not kept).",
            &["result"],
        );
        let shadows = counter_vec(
            "shadows_total",
            "Shadow copies on this hub, by event: stored, released (their pod was done with them), replaced (by a hand-off of the same message), promoted (their pod is gone: queued for delivery).",
            &["event"],
        );
        let shadow_releases_pending = gauge(
            "shadow_releases_pending",
            "Shadow copies this sidecar is done with whose release has not yet reached the hub.",
        );
        let shadows_held = gauge(
            "shadows_held",
            "Shadow copies this hub holds, undelivered, for pods that are alive.",
        );
        let shadow_owner_checks = counter_vec(
            "shadow_owner_checks_total",
            "This hub's checks of the pods it holds shadow copies for, by result: ok, or error (the apiserver could not be asked; copies wait).",
            &["result"],
        );
        let spool_disk_full = gauge(
            "spool_disk_full",
            "0 normally; 1 while the spool's disk is full and its reserve holds delivery records (new mail gets 452); 2 once the reserve is spent too (deliveries paused).",
        );
        let spool_limit_bytes = gauge(
            "spool_limit_bytes",
            "The spool's size limit in effect (spool.maxBytes); over it new mail gets 452.",
        );
        let spool_limit_messages = gauge(
            "spool_limit_messages",
            "The spool's message limit in effect (spool.maxMessages); over it new mail gets 452.",
        );
        let counter = |name: &str, help: &str| {
            let m = IntCounter::with_opts(Opts::new(name, help).namespace(NS)).expect("valid metric");
            reg(Box::new(m.clone()));
            m
        };
        let config_reloads = counter("config_reloads_total", "Config file changes applied.");
        let auth_failures = counter(
            "auth_failures_total",
            "AUTH attempts refused for a wrong credential on a hub's listener.",
        );
        let config_reload_failures = counter(
            "config_reload_failures_total",
            "Config file changes rejected as invalid.",
        );
        let spool_quarantined = counter(
            "spool_quarantined_total",
            "Corrupt spool records and messages set aside in the quarantine.",
        );
        let histogram = |name: &str, help: &str, buckets: Vec<f64>| {
            let m = Histogram::with_opts(HistogramOpts::new(name, help).namespace(NS).buckets(buckets))
                .expect("valid metric");
            reg(Box::new(m.clone()));
            m
        };
        let accept_duration = histogram(
            "accept_duration_seconds",
            "Time from the end of DATA to the 250 reply (spool write and fsync).",
            prometheus::exponential_buckets(0.0005, 2.0, 14).expect("valid buckets"),
        );
        let message_size = histogram(
            "message_size_bytes",
            "Size of accepted messages.",
            prometheus::exponential_buckets(1024.0, 4.0, 10).expect("valid buckets"),
        );
        let spool_batch = histogram(
            "spool_commit_batch_size",
            "Messages made durable by one spool fsync (group commit).",
            prometheus::exponential_buckets(1.0, 2.0, 10).expect("valid buckets"),
        );
        let spool_fsync_duration = histogram(
            "spool_fsync_duration_seconds",
            "One spool group commit's fsync: the disk's part of every accept.",
            prometheus::exponential_buckets(0.000_125, 2.0, 14).expect("valid buckets"),
        );
        let delivery_duration = HistogramVec::new(
            HistogramOpts::new(
                "delivery_duration_seconds",
                "Duration of one delivery attempt (one transaction).",
            )
            .namespace(NS)
            .buckets(prometheus::exponential_buckets(0.005, 2.0, 14).expect("valid buckets")),
            &["route", "outcome"],
        )
        .expect("valid metric");
        reg(Box::new(delivery_duration.clone()));
        let build_info = IntGaugeVec::new(
            Opts::new("build_info", "Always 1; labels say which build runs.").namespace(NS),
            &["version"],
        )
        .expect("valid metric");
        reg(Box::new(build_info.clone()));
        build_info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        Self {
            registry,
            sessions,
            sessions_active,
            received,
            delivered,
            deferred,
            bounced,
            dsn_sent,
            dkim,
            queue_admin,
            queue_messages,
            queue_bytes,
            oldest_age,
            drain_undelivered,
            accept_duration,
            delivery_duration,
            message_size,
            config_reloads,
            config_reload_failures,
            spool_quarantined,
            spool_batch,
            spool_fsync_duration,
            spool_disk_full,
            spool_limit_bytes,
            spool_limit_messages,
            route_parked,
            route_failures,
            route_probes,
            mx_lookups,
            outbound_tls,
            mta_sts,
            dane,
            auth_failures,
            handoff,
            handoff_received,
            shadow_copies,
            shadow_releases_pending,
            shadows_held,
            shadows,
            shadow_owner_checks,
        }
    }

    /// Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut buf = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metrics.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }

    /// Counts a message refused at the door.
    pub fn rejected(&self, reason: RejectReason) {
        self.received
            .with_label_values(&["rejected", reason.as_str()])
            .inc();
    }

    /// Counts an accepted message of `size` bytes.
    pub fn accepted(&self, size: u64) {
        self.received.with_label_values(&["accepted", "none"]).inc();
        self.message_size.observe(size as f64);
    }
}
