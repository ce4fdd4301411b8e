//! Config hot reload: polls the file (Kubernetes swaps mounted ConfigMaps through a symlink,
//! which inotify on the file itself misses) and applies a valid new version to new sessions and
//! to delivery; an invalid one is logged, counted, and ignored.

use crate::{
    config::Config, inbound::policy::RateLimit, metrics::Metrics, queue::delivery::Delivery,
    settings::Settings, spool::Spool,
};
use std::sync::Arc;
use tokio::sync::watch;

/// Watches `settings.config_path` until aborted.
pub async fn watch(
    settings: Settings,
    config_tx: watch::Sender<Arc<Config>>,
    delivery_tx: watch::Sender<Arc<Delivery>>,
    spool: Spool,
    rate: RateLimit,
    metrics: Metrics,
) {
    let path = settings.config_path.clone();
    // Not the file as read now: it may already differ from what the sidecar started with (a
    // change right after start). The first read is parsed and compared with the config in effect.
    let mut last: Option<Vec<u8>> = None;
    let mut tick = tokio::time::interval(settings.reload_interval);
    loop {
        tick.tick().await;
        let Ok(bytes) = tokio::fs::read(&path).await else {
            continue;
        };
        if last.as_ref() == Some(&bytes) {
            continue;
        }
        last = Some(bytes.clone());
        let text = String::from_utf8_lossy(&bytes);
        match Config::parse(&path, &text).and_then(|c| settings.finish(&path, c)) {
            Err(e) => {
                metrics.config_reload_failures.inc();
                tracing::error!(error = %e, "config change rejected; keeping the current config");
            }
            Ok(new) if *config_tx.borrow().as_ref() == new => {}
            Ok(new) => apply(new, &config_tx, &delivery_tx, &spool, &rate, &metrics),
        }
    }
}

fn apply(
    new: Config,
    config_tx: &watch::Sender<Arc<Config>>,
    delivery_tx: &watch::Sender<Arc<Delivery>>,
    spool: &Spool,
    rate: &RateLimit,
    metrics: &Metrics,
) {
    let old = config_tx.borrow().clone();
    if new.listen != old.listen || new.admin != old.admin || new.spool.dir != old.spool.dir {
        tracing::warn!("listen, admin and spool.dir changes take effect after a restart");
    }
    let delivery_changed = new.delivery != old.delivery
        || new.domains != old.domains
        || new.retry != old.retry
        || new.bounces != old.bounces
        || new.hostname != old.hostname
        || new.handoff != old.handoff;
    if delivery_changed {
        match Delivery::build(&new, metrics) {
            Ok(d) => {
                delivery_tx.send_replace(Arc::new(d));
            }
            Err(e) => {
                metrics.config_reload_failures.inc();
                tracing::error!(error = %e, "config change rejected; keeping the current config");
                return;
            }
        }
    }
    spool.set_limits(&new.spool);
    rate.set(new.limits.rate_per_minute);
    warn_if_no_domains(&new);
    config_tx.send_replace(Arc::new(new));
    metrics.config_reloads.inc();
    tracing::info!("config reloaded");
}

/// A config without sender domains refuses every message (the operator renders one when every
/// domain of a Relay is withdrawn from its namespace): said once per start or reload.
pub(crate) fn warn_if_no_domains(config: &Config) {
    if config.domains.is_empty() {
        tracing::warn!("no sender domains: every message is refused with 550 5.7.1");
    }
}
