//! Test support: a throwaway Kubernetes control plane (etcd + kube-apiserver + kube-controller-manager)
//! for apiserver-layer and end-to-end tests, the tools cached beside it by `tests/env/prepare.sh`, and
//! the end-to-end pieces: the chart's release with the operator as a process (`release`), an injected
//! container run as a kubelet would (`kubelet`), the SMTP, DNS and HTTPS peers (`peers`, with their
//! certificates from `certs`), Prometheus configured from the chart's monitors (`prometheus`), and
//! the sidecar binary as a process for the sidecar's own scenarios (`relay`).
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use mailroom_test_support::ControlPlane;
//! let cp = ControlPlane::shared().await?; // one per test binary
//! let client = cp.client().await?; // cluster-admin
//! let ns = cp.new_namespace().await?; // every test gets its own namespace
//! # let _ = (client, ns); Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

pub mod admission;
pub mod certs;
mod control_plane;
pub mod external_dns;
mod flags;
pub mod hub;
pub mod image;
mod janitor;
mod kubeconfig;
pub mod kubelet;
mod namespace;
pub mod node;
#[cfg(feature = "operator")]
pub mod operator;
pub mod peers;
mod pki;
pub mod ports;
mod process;
pub mod prometheus;
pub mod relay;
pub mod release;
pub mod stack;
pub mod testenv;

pub use control_plane::{Component, ControlPlane, Options};
