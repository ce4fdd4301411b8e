//! `ControlPlane`: etcd + kube-apiserver (+ kube-controller-manager) on loopback with a throwaway PKI,
//! shared by every test of a test binary (`shared()`) or owned by one test (`start()`).

use std::{
    fmt,
    net::TcpListener,
    path::{Path, PathBuf},
    process::Command,
    sync::{Mutex, Once},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow, bail};
use k8s_openapi::api::{
    authentication::v1::{TokenRequest, TokenRequestSpec},
    core::v1::ServiceAccount,
};
use kube::{
    Api, Client, Config,
    api::PostParams,
    config::{KubeConfigOptions, Kubeconfig},
};
use tokio::sync::OnceCell;

use crate::{
    flags::{self, Ports},
    janitor::{self, Janitor},
    kubeconfig::{self, Credentials},
    pki,
    process::Proc,
    testenv::{self, ENV_KEEP_LOGS},
};

/// How to start a control plane. `Options::default()` is what `shared()` uses.
#[derive(Debug, Clone)]
pub struct Options {
    /// Also run kube-controller-manager (garbage collection, namespace deletion, ServiceAccounts).
    /// Default: true.
    pub controller_manager: bool,
    /// The controllers kube-controller-manager runs (its `--controllers`). Default: garbage collector,
    /// namespace, serviceaccount and root CA publisher; there is no kubelet or scheduler, so workload
    /// controllers would only create Pods that never run.
    pub controllers: Vec<String>,
    /// Extra kube-apiserver flags, e.g. `--feature-gates=...` (a repeated flag overrides ours).
    pub apiserver_args: Vec<String>,
    /// Also run kube-scheduler (for a test node: Deployments' pods get bound to it). Default: false.
    pub scheduler: bool,
    /// How long to wait for `/readyz`. Default: 60 s (it is ready in a few seconds when idle).
    pub ready_timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        let controllers = [
            "garbage-collector-controller",
            "namespace-controller",
            "serviceaccount-controller",
            "root-ca-certificate-publisher-controller",
        ];
        Self {
            controller_manager: true,
            controllers: controllers.map(String::from).to_vec(),
            apiserver_args: Vec::new(),
            scheduler: false,
            ready_timeout: Duration::from_secs(60),
        }
    }
}

/// A control-plane process a test may crash and restart (see [`ControlPlane::restart`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Component {
    /// etcd: its data directory survives the restart, as a crashed member's disk would.
    Etcd,
    /// kube-apiserver: every watch breaks and every client must reconnect.
    Apiserver,
}

impl Component {
    fn process_name(self) -> &'static str {
        match self {
            Self::Etcd => "etcd",
            Self::Apiserver => "kube-apiserver",
        }
    }
}

/// A running control plane. Dropping it kills its processes and removes its directory (keeping
/// `logs/` if the dropping thread is panicking); the shared one is cleaned up when the test process ends.
pub struct ControlPlane {
    dir: PathBuf,
    server: String,
    ca_pem: String,
    admin: Kubeconfig,
    node: pki::ClientCert,
    startup: Duration,
    // Stopped in reverse start order on drop: controller-manager, apiserver, etcd.
    procs: Vec<Proc>,
    janitor: Janitor,
}

/// Directories of live control planes, so that a failing test anywhere keeps their logs.
static LIVE: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
static SHARED: OnceCell<Result<ControlPlane, String>> = OnceCell::const_new();

// === impl ControlPlane ===

impl ControlPlane {
    /// The control plane shared by every test in this test binary, started on first use with
    /// `Options::default()`. Tests share it, so each should work in its own `new_namespace()`.
    pub async fn shared() -> Result<&'static Self> {
        let started = SHARED
            .get_or_init(|| async { Self::start().await.map_err(|e| format!("{e:#}")) })
            .await;
        started
            .as_ref()
            .map_err(|e| anyhow!("the shared control plane failed to start: {e}"))
    }

    /// Starts a control plane owned by the caller, with `Options::default()`.
    pub async fn start() -> Result<Self> {
        Self::start_with(Options::default()).await
    }

    /// Starts a control plane owned by the caller.
    pub async fn start_with(options: Options) -> Result<Self> {
        // The ports are chosen free and then released for etcd and the apiserver to bind; in
        // between, another test's outgoing connection can take one as its ephemeral port.
        // That race is retried with new ports; anything else is an error at once.
        let mut attempts = 0;
        loop {
            match Self::start_once(&options).await {
                Err(e) if attempts < 3 && format!("{e:#}").contains("address already in use") => {
                    attempts += 1;
                    eprintln!(
                        "mailroom-test-support: a control plane port was taken; retrying with new ports"
                    );
                }
                started => return started,
            }
        }
    }

    async fn start_once(options: &Options) -> Result<Self> {
        let t0 = Instant::now();
        let (etcd_bin, apiserver_bin) = (testenv::bin("etcd")?, testenv::bin("kube-apiserver")?);
        let dir = tempfile::Builder::new().prefix("mailroom-cp-").tempdir()?.keep();
        // From here on the janitor owns the directory: it removes it however we exit.
        let janitor = Janitor::spawn(&dir)?;
        install_panic_hook();
        LIVE.lock().unwrap_or_else(|e| e.into_inner()).push(dir.clone());
        if keep_logs_requested() {
            mark_keep_logs(&dir);
        }

        let pki = pki::generate(&dir.join("pki"))?;
        let logs = dir.join("logs");
        std::fs::create_dir_all(&logs)?;
        let [apiserver, etcd_client, etcd_peer] = free_ports()?;
        let ports = Ports {
            apiserver,
            etcd_client,
            etcd_peer,
        };
        let server = format!("https://127.0.0.1:{apiserver}");
        let admin_doc = kubeconfig::document(&server, &pki.ca_pem, "admin", Credentials::Cert(&pki.admin));
        kubeconfig::write(&admin_doc, &dir.join("kubeconfig"))?;

        let mut cp = Self {
            server,
            ca_pem: pki.ca_pem,
            admin: kubeconfig::parse(&admin_doc)?,
            node: pki.node,
            startup: Duration::ZERO,
            procs: Vec::new(),
            janitor,
            dir,
        };
        cp.spawn("etcd", &etcd_bin, &flags::etcd(&cp.dir, &ports))?;
        let mut args = flags::apiserver(&cp.dir, &ports);
        args.extend(options.apiserver_args.iter().cloned());
        cp.spawn("kube-apiserver", &apiserver_bin, &args)?;
        cp.wait_ready(options.ready_timeout).await?;
        if options.controller_manager {
            let kcm = testenv::bin("kube-controller-manager")?;
            let args = flags::controller_manager(&cp.dir, &options.controllers);
            cp.spawn("kube-controller-manager", &kcm, &args)?;
        }
        if options.scheduler {
            let scheduler = testenv::bin("kube-scheduler")?;
            cp.spawn("kube-scheduler", &scheduler, &flags::scheduler(&cp.dir))?;
        }
        cp.startup = t0.elapsed();
        eprintln!(
            "mailroom-test-support: control plane {} ready in {:.1?} (logs: {})",
            cp.server,
            cp.startup,
            cp.logs_dir().display()
        );
        Ok(cp)
    }

    /// A new cluster-admin client. Make one per test: a `kube::Client` is bound to the tokio runtime it
    /// was made on, and each `#[tokio::test]` has its own.
    pub async fn client(&self) -> Result<Client> {
        client_from(self.admin.clone()).await
    }

    /// A client authenticated as ServiceAccount `namespace/name` (which must exist) with a fresh token
    /// from the TokenRequest API, so RBAC applies exactly as it would to a pod using that account.
    pub async fn client_for_service_account(&self, namespace: &str, name: &str) -> Result<Client> {
        let doc = self.service_account_document(namespace, name).await?;
        client_from(kubeconfig::parse(&doc)?).await
    }

    /// Writes a kubeconfig for ServiceAccount `namespace/name` (a fresh token, valid one hour) to
    /// `path`, for a process that should run with exactly that account's RBAC (e.g. the operator
    /// binary started with the chart's ServiceAccount).
    pub async fn write_service_account_kubeconfig(
        &self,
        namespace: &str,
        name: &str,
        path: &Path,
    ) -> Result<()> {
        kubeconfig::write(&self.service_account_document(namespace, name).await?, path)
    }

    async fn service_account_document(&self, namespace: &str, name: &str) -> Result<serde_json::Value> {
        let accounts: Api<ServiceAccount> = Api::namespaced(self.client().await?, namespace);
        let request = TokenRequest {
            spec: TokenRequestSpec {
                expiration_seconds: Some(3600),
                ..Default::default()
            },
            ..Default::default()
        };
        let token = accounts
            .create_token_request(name, &PostParams::default(), &request)
            .await
            .with_context(|| format!("requesting a token for ServiceAccount {namespace}/{name}"))?
            .status
            .context("TokenRequest returned no status")?
            .token;
        let user = format!("system:serviceaccount:{namespace}:{name}");
        Ok(kubeconfig::document(
            &self.server,
            &self.ca_pem,
            &user,
            Credentials::Token(&token),
        ))
    }

    /// Writes the test node's kubeconfig (its kubelet's client certificate) to `path`.
    pub(crate) fn write_node_kubeconfig(&self, path: &Path) -> Result<()> {
        let user = format!("system:node:{}", pki::NODE_NAME);
        let doc = kubeconfig::document(&self.server, &self.ca_pem, &user, Credentials::Cert(&self.node));
        kubeconfig::write(&doc, path)
    }

    /// A `helm` command pointed at this control plane (`KUBECONFIG`), with helm's cache, config and
    /// data directories inside the control plane directory so that tests never touch `~/.config/helm`.
    pub fn helm(&self) -> Result<Command> {
        let mut helm = testenv::command("helm")?;
        let home = self.dir.join("helm");
        helm.env("KUBECONFIG", self.kubeconfig_path())
            .env("HELM_CACHE_HOME", home.join("cache"))
            .env("HELM_CONFIG_HOME", home.join("config"))
            .env("HELM_DATA_HOME", home.join("data"));
        Ok(helm)
    }

    /// The apiserver URL, `https://127.0.0.1:<port>`.
    pub fn server_url(&self) -> &str {
        &self.server
    }

    /// PEM of the CA that signed the apiserver certificate and the admin client certificate.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// A cluster-admin kubeconfig file (client certificate), e.g. for `helm` or a spawned operator.
    pub fn kubeconfig_path(&self) -> PathBuf {
        self.dir.join("kubeconfig")
    }

    /// Where etcd, kube-apiserver and kube-controller-manager write their logs.
    pub fn logs_dir(&self) -> PathBuf {
        self.dir.join("logs")
    }

    /// How long `start` took until `/readyz` answered and the controller-manager was launched.
    pub fn startup_time(&self) -> Duration {
        self.startup
    }

    /// Crashes `component` (SIGKILL), keeps it down for `downtime`, starts it again with the same
    /// flags, ports and data, and waits until the apiserver answers `/readyz` again. Only for an
    /// owned control plane (`start()`): the shared one belongs to every test of the binary.
    pub async fn restart(&mut self, component: Component, downtime: Duration) -> Result<()> {
        let name = component.process_name();
        let proc = self
            .procs
            .iter_mut()
            .find(|p| p.name == name)
            .with_context(|| format!("no {name} process"))?;
        proc.kill();
        tokio::time::sleep(downtime).await;
        proc.respawn()?;
        let pid = proc.pid();
        self.janitor.watch(pid)?;
        self.wait_ready(Duration::from_secs(60)).await
    }

    fn spawn(&mut self, name: &'static str, program: &Path, args: &[String]) -> Result<()> {
        let proc = Proc::spawn(name, program, args, &self.logs_dir())?;
        self.janitor.watch(proc.pid())?;
        self.procs.push(proc);
        Ok(())
    }

    /// Polls `/readyz` until it answers `ok`; fails early with the log tail if a process exits.
    async fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let client = self.client().await?;
        let deadline = Instant::now() + timeout;
        loop {
            for proc in &mut self.procs {
                if let Some(status) = proc.exited()? {
                    bail!(
                        "{} exited ({status}) during start-up\n{}",
                        proc.name,
                        proc.log_tail(40)
                    );
                }
            }
            let request = http::Request::get("/readyz").body(Vec::new())?;
            let last = match client.request_text(request).await {
                Ok(body) if body.trim() == "ok" => return Ok(()),
                Ok(body) => body,
                Err(e) => e.to_string(),
            };
            if Instant::now() > deadline {
                let apiserver = self.procs.iter().find(|p| p.name == "kube-apiserver");
                let tail = apiserver.map(|p| p.log_tail(40)).unwrap_or_default();
                bail!("kube-apiserver not ready after {timeout:?}: {last}\n{tail}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        if std::thread::panicking() {
            mark_keep_logs(&self.dir);
        }
        while let Some(mut proc) = self.procs.pop() {
            proc.stop();
        }
        LIVE.lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|d| d != &self.dir);
        self.janitor.finish();
    }
}

impl fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ControlPlane")
            .field("server", &self.server)
            .field("dir", &self.dir)
            .field("procs", &self.procs)
            .finish_non_exhaustive()
    }
}

async fn client_from(kubeconfig: Kubeconfig) -> Result<Client> {
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
    Ok(Client::try_from(config)?)
}

/// `N` distinct loopback ports that were free a moment ago (all held open while choosing, so they
/// differ). Another process may take one before ours binds it; start-up then fails with "address
/// already in use" in the log tail, which is rare enough on a test machine.
fn free_ports<const N: usize>() -> Result<[u16; N]> {
    let listeners = (0..N)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()?;
    let mut ports = [0; N];
    for (port, listener) in ports.iter_mut().zip(&listeners) {
        *port = listener.local_addr()?.port();
    }
    Ok(ports)
}

/// `MAILROOM_TESTENV_KEEP_LOGS=1` keeps logs even when every test passed.
fn keep_logs_requested() -> bool {
    std::env::var_os(ENV_KEEP_LOGS).is_some_and(|v| !v.is_empty() && v != "0")
}

fn mark_keep_logs(dir: &Path) {
    let _ = std::fs::write(dir.join(janitor::KEEP_LOGS), b"");
}

/// On any panic (a failing test), mark every live control plane to keep its logs and say where they are.
fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            previous(info);
            for dir in LIVE.lock().unwrap_or_else(|e| e.into_inner()).iter() {
                mark_keep_logs(dir);
                eprintln!(
                    "mailroom-test-support: control plane logs: {}",
                    dir.join("logs").display()
                );
            }
        }));
    });
}
