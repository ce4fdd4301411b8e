//! Process settings from `SIDECAR_*` environment variables, read through the [`Strings`] trait
//! so tests pass a map instead of touching the process environment. Every bad variable is
//! reported at once.

use std::{collections::HashMap, net::SocketAddr, path::PathBuf, time::Duration};

/// Path of the config file.
pub const ENV_CONFIG_PATH: &str = "SIDECAR_CONFIG_PATH";
/// Overrides `listen.address` from the config file.
pub const ENV_LISTEN_ADDR: &str = "SIDECAR_LISTEN_ADDR";
/// Overrides `admin.address` from the config file.
pub const ENV_ADMIN_ADDR: &str = "SIDECAR_ADMIN_ADDR";
/// Overrides `admin.queueApiAddress` from the config file (still loopback only).
pub const ENV_QUEUE_API_ADDR: &str = "SIDECAR_QUEUE_API_ADDR";
/// How long to keep delivering after SIGTERM before exiting.
pub const ENV_DRAIN_SECONDS: &str = "SIDECAR_DRAIN_SECONDS";
/// How often to look for a changed config file.
pub const ENV_RELOAD_INTERVAL_SECONDS: &str = "SIDECAR_RELOAD_INTERVAL_SECONDS";
/// `json` for JSON logs; anything else is plain text.
pub const ENV_LOG_FORMAT: &str = "SIDECAR_LOG_FORMAT";
/// The nice value of the delivery threads, 0 (the sessions' own priority) to 19 (the lowest).
pub const ENV_DELIVERY_NICE: &str = "SIDECAR_DELIVERY_NICE";
/// How many threads run the SMTP sessions (and the admin and queue APIs): a number, or `0` for
/// one per CPU the process may use.
pub const ENV_SESSION_THREADS: &str = "SIDECAR_SESSION_THREADS";
/// The pod's name (the webhook sets it from the downward API): the owner of its shadow copies.
pub const ENV_POD_NAME: &str = "SIDECAR_POD_NAME";
/// The pod's UID (downward API), see [`ENV_POD_NAME`].
pub const ENV_POD_UID: &str = "SIDECAR_POD_UID";

/// Default config path (where the operator's ConfigMap is mounted).
pub const DEFAULT_CONFIG_PATH: &str = "/etc/mailroom/sidecar.yaml";
/// Default drain deadline.
pub const DEFAULT_DRAIN_SECONDS: u64 = 25;
/// Default reload poll interval.
pub const DEFAULT_RELOAD_INTERVAL_SECONDS: u64 = 2;
/// Default nice value of the delivery threads: a client waiting for its `250` runs first.
pub const DEFAULT_DELIVERY_NICE: i32 = 5;

/// Default number of session threads. One: a sidecar's sessions spend their time waiting for
/// their client's next command and for the spool's fsync, and a second thread mostly adds
/// hand-offs between the two (docs/benchmarks.md, "One thread for the sessions").
pub const DEFAULT_SESSION_THREADS: usize = 1;
/// The most session threads a setting may ask for.
pub const MAX_SESSION_THREADS: usize = 1024;

/// A session thread count as [`ENV_SESSION_THREADS`] takes it; the error says what is expected.
/// The operator checks its own setting and the pod annotation with it, so that a value it
/// injects is one the sidecar starts with.
pub fn session_threads(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(n) if n <= MAX_SESSION_THREADS => Ok(n),
        _ => Err(format!(
            "expected a number of threads up to {MAX_SESSION_THREADS}, or 0 for one per CPU"
        )),
    }
}

/// A source of named strings (the environment, or a map in tests).
pub trait Strings {
    /// The value of `name`, if set.
    fn get(&self, name: &str) -> Option<String>;
}

/// The process environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct Env;

impl Strings for Env {
    fn get(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl Strings for HashMap<&str, &str> {
    fn get(&self, name: &str) -> Option<String> {
        HashMap::get(self, name).map(|v| v.to_string())
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Plain,
    /// One JSON object per line.
    Json,
}

/// Process settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Config file path.
    pub config_path: PathBuf,
    /// Listen address override.
    pub listen_addr: Option<SocketAddr>,
    /// Admin address override.
    pub admin_addr: Option<SocketAddr>,
    /// Queue API address override.
    pub queue_api_addr: Option<SocketAddr>,
    /// Drain deadline after SIGTERM.
    pub drain: Duration,
    /// Config reload poll interval.
    pub reload_interval: Duration,
    /// Log format.
    pub log_format: LogFormat,
    /// Nice value of the delivery threads (0 to 19).
    pub delivery_nice: i32,
    /// Threads for the SMTP sessions; `0` is one per CPU the process may use.
    pub session_threads: usize,
}

/// Every invalid variable, with its name and value.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid environment: {}", .0.join("; "))]
pub struct Error(pub Vec<String>);

impl Settings {
    /// Finishes a parsed config for this process: applies the environment's address overrides
    /// (`SIDECAR_LISTEN_ADDR`, `SIDECAR_ADMIN_ADDR`), validates the result again (an override is
    /// held to the same rules as the file: no non-loopback listener without
    /// `listen.allowNonLoopback`), and checks that every file it names can be read. At start-up,
    /// in `--check-config` and on every reload, so none of them accepts what another refuses.
    pub fn finish(
        &self,
        path: &std::path::Path,
        mut cfg: crate::Config,
    ) -> Result<crate::Config, crate::Error> {
        if let Some(a) = self.listen_addr {
            cfg.listen.address = a;
        }
        if let Some(a) = self.admin_addr {
            cfg.admin.address = a;
        }
        if let Some(a) = self.queue_api_addr {
            cfg.admin.queue_api_address = a;
        }
        let mut problems = cfg.validate();
        for p in &mut problems {
            let set_by = match p.field.as_str() {
                f if f.starts_with("listen.") && self.listen_addr.is_some() => Some(ENV_LISTEN_ADDR),
                "admin.queueApiAddress" if self.queue_api_addr.is_some() => Some(ENV_QUEUE_API_ADDR),
                "admin.address" if self.admin_addr.is_some() => Some(ENV_ADMIN_ADDR),
                _ => None,
            };
            if let Some(var) = set_by {
                p.message = format!("{} (the address comes from {var})", p.message);
            }
        }
        problems.extend(cfg.check_files());
        if problems.is_empty() {
            Ok(cfg)
        } else {
            Err(crate::Error::Invalid {
                path: path.to_owned(),
                problems,
            })
        }
    }

    /// Reads every setting; reports all invalid ones together.
    pub fn parse(env: &impl Strings) -> Result<Self, Error> {
        let mut errors = Vec::new();
        let mut addr = |name: &str| {
            let v = env.get(name)?;
            v.parse::<SocketAddr>()
                .map_err(|e| {
                    errors.push(format!(
                        "{name}={v:?}: {e} (expected host:port, e.g. 127.0.0.1:2525)"
                    ))
                })
                .ok()
        };
        let listen_addr = addr(ENV_LISTEN_ADDR);
        let admin_addr = addr(ENV_ADMIN_ADDR);
        let queue_api_addr = addr(ENV_QUEUE_API_ADDR);
        let mut secs = |name: &str, default: u64| match env.get(name) {
            None => Duration::from_secs(default),
            Some(v) => match v.parse::<u64>() {
                Ok(n) if n > 0 || name == ENV_DRAIN_SECONDS => Duration::from_secs(n),
                _ => {
                    errors.push(format!("{name}={v:?}: expected a whole number of seconds"));
                    Duration::from_secs(default)
                }
            },
        };
        let drain = secs(ENV_DRAIN_SECONDS, DEFAULT_DRAIN_SECONDS);
        let reload_interval = secs(ENV_RELOAD_INTERVAL_SECONDS, DEFAULT_RELOAD_INTERVAL_SECONDS);
        let log_format = match env.get(ENV_LOG_FORMAT).as_deref() {
            None | Some("plain") | Some("text") => LogFormat::Plain,
            Some("json") => LogFormat::Json,
            Some(other) => {
                errors.push(format!("{ENV_LOG_FORMAT}={other:?}: expected json or plain"));
                LogFormat::Plain
            }
        };
        let delivery_nice = match env.get(ENV_DELIVERY_NICE) {
            None => DEFAULT_DELIVERY_NICE,
            Some(v) => match v.parse::<i32>() {
                Ok(n) if (0..=19).contains(&n) => n,
                _ => {
                    errors.push(format!(
                        "{ENV_DELIVERY_NICE}={v:?}: expected a nice value from 0 (the sessions' own priority) to 19"
                    ));
                    DEFAULT_DELIVERY_NICE
                }
            },
        };
        let session_threads = match env.get(ENV_SESSION_THREADS) {
            None => DEFAULT_SESSION_THREADS,
            Some(v) => session_threads(&v).unwrap_or_else(|e| {
                errors.push(format!("{ENV_SESSION_THREADS}={v:?}: {e}"));
                DEFAULT_SESSION_THREADS
            }),
        };
        let config_path = env
            .get(ENV_CONFIG_PATH)
            .unwrap_or_else(|| DEFAULT_CONFIG_PATH.into())
            .into();
        if errors.is_empty() {
            Ok(Self {
                config_path,
                listen_addr,
                admin_addr,
                queue_api_addr,
                drain,
                reload_interval,
                log_format,
                delivery_nice,
                session_threads,
            })
        } else {
            Err(Error(errors))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_apply_when_nothing_is_set() {
        let s = Settings::parse(&HashMap::new()).expect("valid");
        assert_eq!(s.config_path, PathBuf::from(DEFAULT_CONFIG_PATH));
        assert_eq!(s.listen_addr, None);
        assert_eq!(s.drain, Duration::from_secs(DEFAULT_DRAIN_SECONDS));
        assert_eq!(s.log_format, LogFormat::Plain);
        assert_eq!(s.delivery_nice, DEFAULT_DELIVERY_NICE);
        assert_eq!(s.session_threads, 1);
    }

    #[test]
    fn session_threads_take_a_count_or_zero_for_one_per_cpu() {
        for (v, want) in [("0", 0), ("1", 1), ("8", 8)] {
            let s = Settings::parse(&HashMap::from([(ENV_SESSION_THREADS, v)])).expect("valid");
            assert_eq!(s.session_threads, want, "{v}");
        }
        for v in ["-1", "two", "1025", ""] {
            let Error(errors) = Settings::parse(&HashMap::from([(ENV_SESSION_THREADS, v)])).expect_err(v);
            assert_eq!(
                errors,
                [format!(
                    "SIDECAR_SESSION_THREADS={v:?}: expected a number of threads up to 1024, or 0 for one per CPU"
                )]
            );
        }
    }

    #[test]
    fn every_bad_variable_is_reported() {
        let env = HashMap::from([
            (ENV_LISTEN_ADDR, "localhost"),
            (ENV_ADMIN_ADDR, "127.0.0.1:9465"),
            (ENV_DRAIN_SECONDS, "soon"),
            (ENV_LOG_FORMAT, "xml"),
            (ENV_DELIVERY_NICE, "-5"),
        ]);
        let Error(errors) = Settings::parse(&env).expect_err("invalid");
        assert_eq!(errors.len(), 4, "{errors:?}");
        assert!(errors[0].starts_with("SIDECAR_LISTEN_ADDR="));
        assert!(errors[1].starts_with("SIDECAR_DRAIN_SECONDS="));
        assert!(errors[2].starts_with("SIDECAR_LOG_FORMAT="));
        assert!(errors[3].starts_with("SIDECAR_DELIVERY_NICE=\"-5\": expected a nice value"));
    }
}
