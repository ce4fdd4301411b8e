//! Test support: a throwaway Kubernetes control plane (etcd + kube-apiserver + kube-controller-manager)
//! for apiserver-layer and end-to-end tests, and the tools cached beside it by `tests/env/prepare.sh`.
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

mod control_plane;
mod flags;
mod janitor;
mod kubeconfig;
mod namespace;
mod pki;
mod process;
pub mod testenv;

pub use control_plane::{Component, ControlPlane, Options};
