//! DNS checks of the recommended records: the [`DnsCheck`] trait and its hickory-resolver
//! implementation against configurable nameservers (or the system resolver), without caching.

use std::{net::SocketAddr, time::Duration};

use futures::future::BoxFuture;
use hickory_resolver::{
    TokioResolver,
    config::{ConnectionConfig, NameServerConfig, ResolverConfig},
    net::runtime::TokioRuntimeProvider,
    proto::rr::{RData, RecordType},
};

/// Looks up TXT records. `Ok(vec![])` means the name has no TXT records (or does not exist).
pub trait DnsCheck: Send + Sync {
    /// Every TXT record at `name`, each record's character-strings joined.
    fn txt<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Vec<String>, String>>;
}

/// hickory-resolver with caching off, so a recheck always asks the servers.
#[derive(Clone)]
pub struct HickoryDns {
    resolver: TokioResolver,
}

impl std::fmt::Debug for HickoryDns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HickoryDns").finish_non_exhaustive()
    }
}

// === impl HickoryDns ===

impl HickoryDns {
    /// A resolver asking `nameservers` (UDP, then TCP for truncated answers), or the system
    /// resolver when the list is empty.
    pub fn new(nameservers: &[SocketAddr]) -> Result<Self, String> {
        let provider = TokioRuntimeProvider::default();
        let mut builder = if nameservers.is_empty() {
            TokioResolver::builder(provider)
                .map_err(|e| format!("reading the system resolver config: {e}"))?
        } else {
            let servers = nameservers
                .iter()
                .map(|addr| {
                    let mut udp = ConnectionConfig::udp();
                    udp.port = addr.port();
                    let mut tcp = ConnectionConfig::tcp();
                    tcp.port = addr.port();
                    NameServerConfig::new(addr.ip(), true, vec![udp, tcp])
                })
                .collect();
            TokioResolver::builder_with_config(ResolverConfig::from_name_servers(servers), provider)
        };
        let opts = builder.options_mut();
        opts.cache_size = 0;
        opts.timeout = Duration::from_secs(3);
        opts.attempts = 2;
        let resolver = builder
            .build()
            .map_err(|e| format!("building the resolver: {e}"))?;
        Ok(Self { resolver })
    }
}

impl DnsCheck for HickoryDns {
    fn txt<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Vec<String>, String>> {
        Box::pin(async move {
            // A trailing dot: never apply search domains to these names.
            let fqdn = format!("{}.", name.trim_end_matches('.'));
            match self.resolver.lookup(fqdn.as_str(), RecordType::TXT).await {
                Ok(lookup) => Ok(lookup
                    .answers()
                    .iter()
                    .filter_map(|r| match &r.data {
                        RData::TXT(txt) => Some(
                            txt.txt_data
                                .iter()
                                .map(|s| String::from_utf8_lossy(s).into_owned())
                                .collect::<String>(),
                        ),
                        _ => None,
                    })
                    .collect()),
                Err(e) if e.is_no_records_found() || e.is_nx_domain() => Ok(Vec::new()),
                Err(e) => Err(e.to_string()),
            }
        })
    }
}

/// A fixed answer table, for unit tests of the reconcile logic.
#[derive(Debug, Default, Clone)]
pub struct StaticDns(pub std::collections::HashMap<String, Vec<String>>);

impl DnsCheck for StaticDns {
    fn txt<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Vec<String>, String>> {
        Box::pin(async move {
            Ok(self
                .0
                .get(name.trim_end_matches('.'))
                .cloned()
                .unwrap_or_default())
        })
    }
}
