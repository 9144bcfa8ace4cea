//! A local etcd + kube-apiserver, started once per test binary and shared by all its tests.
use super::k8s::install_crds;
use super::{ChildProc, free_port, scratch_dir, wait_until};
use anyhow::{Context, Result, anyhow, bail};
use k8s_openapi::api::core::v1::{Node, Pod, ServiceAccount};
use kube::api::{Api, ListParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::sync::OnceCell;

const STARTUP_TIMEOUT: Duration = Duration::from_secs(180);
const SA_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
/// The node kwok simulates when the controllers are started; every pod is bound to it.
pub const FAKE_NODE: &str = "kwok-node-0";
const KWOK_ANNOTATION: &str = "kwok.x-k8s.io/node";
const KWOK_STAGES: &str = include_str!("kwok-stages.yaml");

pub struct ControlPlane {
    dir: PathBuf,
    bin_dir: PathBuf,
    kubeconfig: PathBuf,
    server: String,
    config: kube::Config,
    startup: Duration,
    // Never dropped (the value lives in a static): the exit hook and PDEATHSIG end them.
    procs: Mutex<Vec<ChildProc>>,
    nodes: OnceCell<Result<(), String>>,
}

// Failures are cached too, so that later tests fail fast instead of retrying a slow start.
static CONTROL_PLANE: OnceCell<Result<ControlPlane, String>> = OnceCell::const_new();

/// The shared control plane (etcd + kube-apiserver + CRDs), started on first use.
pub async fn control_plane() -> Result<&'static ControlPlane> {
    let started = CONTROL_PLANE
        .get_or_init(|| async { ControlPlane::start().await.map_err(|e| format!("{e:#}")) })
        .await;
    started
        .as_ref()
        .map_err(|e| anyhow!("control plane failed to start: {e}"))
}

/// The shared control plane plus kube-controller-manager and kwok with one fake node, so that
/// Deployments get ReplicaSets and Pods that become Running and Ready.
pub async fn control_plane_with_nodes() -> Result<&'static ControlPlane> {
    let cp = control_plane().await?;
    let started = cp
        .nodes
        .get_or_init(|| async { cp.start_nodes().await.map_err(|e| format!("{e:#}")) })
        .await;
    started
        .as_ref()
        .map_err(|e| anyhow!("controller-manager/kwok failed to start: {e}"))?;
    Ok(cp)
}

/// A fresh admin client for the shared control plane, bound to the caller's runtime.
pub async fn client() -> Result<kube::Client> {
    control_plane().await?.client().await
}

impl ControlPlane {
    /// A fresh admin client; call it from the runtime that will use it.
    pub async fn client(&self) -> Result<kube::Client> {
        kube::Client::try_from(self.config.clone()).context("building a kube client")
    }

    pub fn config(&self) -> &kube::Config {
        &self.config
    }

    /// Admin kubeconfig, for `KUBECONFIG` of child processes.
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// `https://127.0.0.1:PORT`
    pub fn server_url(&self) -> &str {
        &self.server
    }

    /// Scratch directory holding logs, certificates and keys.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The API server's audit log (JSON lines): Secret reads, NotificationTarget reads, TokenReviews
    /// and SubjectAccessReviews, the latter two with their request bodies.
    pub fn audit_log(&self) -> PathBuf {
        self.dir.join("audit.log")
    }

    /// How long the start (binaries, etcd, apiserver, CRDs) took.
    pub fn startup_time(&self) -> Duration {
        self.startup
    }

    /// Tails of all control-plane logs, for failure messages.
    pub fn logs(&self, lines: usize) -> String {
        let procs = self
            .procs
            .lock()
            .map(|p| p.iter().map(|c| c.logs(lines)).collect::<Vec<_>>());
        procs.map(|l| l.join("\n")).unwrap_or_default()
    }

    async fn start() -> Result<Self> {
        let began = Instant::now();
        let bin_dir = binaries_dir()?;
        let dir = scratch_dir("controlplane")?;
        let (etcd_port, peer_port, api_port) = (free_port()?, free_port()?, free_port()?);
        let (etcd_url, peer_url) = (
            format!("http://127.0.0.1:{etcd_port}"),
            format!("http://127.0.0.1:{peer_port}"),
        );
        let http = http_client()?;

        let mut etcd = Command::new(bin_dir.join("etcd"));
        etcd.args(["--name=default", "--unsafe-no-fsync", "--initial-cluster-state=new"])
            .arg(format!("--data-dir={}", dir.join("etcd").display()))
            .arg(format!("--listen-client-urls={etcd_url}"))
            .arg(format!("--advertise-client-urls={etcd_url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=default={peer_url}"));
        let mut etcd = ChildProc::spawn("etcd", etcd, &dir, false)?;
        let health = format!("{etcd_url}/health");
        wait_until("etcd /health", STARTUP_TIMEOUT, async || {
            exited(&mut etcd)?;
            let resp = http.get(&health).send().await?;
            Ok(resp.status().is_success().then_some(()))
        })
        .await
        .with_context(|| etcd.logs(20))?;

        openssl(
            &["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out"],
            &dir.join("sa.key"),
        )?;
        let sa_key = dir.join("sa.key").display().to_string();
        openssl(&["ec", "-in", &sa_key, "-pubout", "-out"], &dir.join("sa.pub"))?;
        let token = random_token()?;
        let tokens = dir.join("tokens.csv");
        std::fs::write(&tokens, format!("{token},admin,admin,\"system:masters\"\n")).context("writing tokens.csv")?;
        std::fs::write(dir.join("audit-policy.yaml"), AUDIT_POLICY).context("writing audit-policy.yaml")?;

        let mut api = Command::new(bin_dir.join("kube-apiserver"));
        api.args(apiserver_flags(&dir, &etcd_url, api_port));
        let mut api = ChildProc::spawn("kube-apiserver", api, &dir, false)?;
        let server = format!("https://127.0.0.1:{api_port}");
        let readyz = format!("{server}/readyz");
        wait_until("kube-apiserver /readyz", STARTUP_TIMEOUT, async || {
            exited(&mut api)?;
            let resp = http.get(&readyz).bearer_auth(&token).send().await?;
            Ok(resp.status().is_success().then_some(()))
        })
        .await
        .with_context(|| format!("{}\n{}", api.logs(40), etcd.logs(10)))?;

        let kubeconfig = dir.join("kubeconfig");
        let kubeconfig_text = kubeconfig_yaml(&server, &token);
        std::fs::write(&kubeconfig, &kubeconfig_text).context("writing kubeconfig")?;
        let parsed = Kubeconfig::from_yaml(&kubeconfig_text).context("parsing our kubeconfig")?;
        let config = kube::Config::from_custom_kubeconfig(parsed, &KubeConfigOptions::default())
            .await
            .context("loading our kubeconfig")?;

        let cp = ControlPlane {
            dir,
            bin_dir,
            kubeconfig,
            server,
            config,
            startup: Duration::ZERO,
            procs: Mutex::new(vec![etcd, api]),
            nodes: OnceCell::new(),
        };
        let client = cp.client().await?;
        for file in crd_files()? {
            let yaml = std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
            install_crds(&client, &yaml, STARTUP_TIMEOUT)
                .await
                .with_context(|| format!("installing CRDs from {}\n{}", file.display(), cp.logs(20)))?;
        }
        let startup = began.elapsed();
        eprintln!(
            "control plane ready at {} in {startup:.1?} (dir {})",
            cp.server,
            cp.dir.display()
        );
        Ok(ControlPlane { startup, ..cp })
    }

    async fn start_nodes(&self) -> Result<()> {
        let began = Instant::now();
        let kubeconfig = format!("--kubeconfig={}", self.kubeconfig.display());
        let mut kcm = Command::new(self.bin_dir.join("kube-controller-manager"));
        kcm.arg(&kubeconfig).args([
            // No kubelet heartbeats here: the node lifecycle controller would taint the node.
            "--controllers=*,-node-lifecycle-controller",
            "--use-service-account-credentials=false",
            "--leader-elect=false",
            "--secure-port=0",
        ]);
        kcm.arg(format!(
            "--service-account-private-key-file={}",
            self.dir.join("sa.key").display()
        ));
        let kcm = ChildProc::spawn("kube-controller-manager", kcm, &self.dir, false)?;

        let kwok_config = self.dir.join("kwok.yaml");
        std::fs::write(&kwok_config, KWOK_STAGES).context("writing kwok.yaml")?;
        let mut kwok = Command::new(self.bin_dir.join("kwok"));
        kwok.arg(&kubeconfig)
            .arg(format!("--config={}", kwok_config.display()))
            .arg(format!(
                "--manage-nodes-with-annotation-selector={KWOK_ANNOTATION}=fake"
            ))
            .args(["--node-ip=127.0.0.1", "--cidr=10.244.0.0/16"]);
        let kwok = ChildProc::spawn("kwok", kwok, &self.dir, false)?;
        if let Ok(mut procs) = self.procs.lock() {
            procs.extend([kcm, kwok]);
        }

        let client = self.client().await?;
        let node = format!(
            "apiVersion: v1
kind: Node
metadata:
  name: {FAKE_NODE}
  annotations: {{{KWOK_ANNOTATION}: fake}}
  labels: {{kubernetes.io/hostname: {FAKE_NODE}, kubernetes.io/os: linux, type: kwok}}
status:
  allocatable: {{cpu: '64', memory: 256Gi, pods: '1000'}}
  capacity: {{cpu: '64', memory: 256Gi, pods: '1000'}}
"
        );
        super::apply_yaml(&client, &node)
            .await
            .context("creating the fake node")?;
        let nodes: Api<Node> = Api::all(client.clone());
        let accounts: Api<ServiceAccount> = Api::namespaced(client, "default");
        wait_until(
            "the fake node to be Ready and kcm to create SAs",
            STARTUP_TIMEOUT,
            async || {
                self.check_running()?;
                let node = nodes.get(FAKE_NODE).await?;
                let conditions = node.status.and_then(|s| s.conditions).unwrap_or_default();
                let ready = conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True");
                Ok((ready && accounts.get_opt("default").await?.is_some()).then_some(()))
            },
        )
        .await
        .with_context(|| self.logs(30))?;
        start_binder(self.config.clone())?;
        eprintln!("kube-controller-manager and kwok ready in {:.1?}", began.elapsed());
        Ok(())
    }

    /// Holds back the pods of namespace `ns` that are not bound yet: the fake scheduler stops binding
    /// them, so kwok never makes them Running or Ready (they stay Pending, counted in a Deployment's
    /// `replicas` but not in its `readyReplicas`). Pods already bound are not touched, and other
    /// namespaces go on as usual, so tests running in parallel are not slowed down.
    pub fn hold_pods(&self, ns: &str) {
        if let Ok(mut held) = HELD_NAMESPACES.lock() {
            held.insert(ns.to_string(), 0);
        }
    }

    /// While `ns` is held: lets `n` more of its pods be bound (and so become Ready), oldest first
    /// as the list returns them; the rest stay held.
    pub fn admit_pods(&self, ns: &str, n: usize) {
        if let Ok(mut held) = HELD_NAMESPACES.lock()
            && let Some(budget) = held.get_mut(ns)
        {
            *budget += n;
        }
    }

    /// Undoes [`ControlPlane::hold_pods`]: the held pods are bound at the next round (200 ms) and
    /// become Ready right after.
    pub fn release_pods(&self, ns: &str) {
        if let Ok(mut held) = HELD_NAMESPACES.lock() {
            held.remove(ns);
        }
    }

    /// Fails if any control-plane process has exited.
    fn check_running(&self) -> Result<()> {
        let mut procs = self.procs.lock().map_err(|_| anyhow!("process list poisoned"))?;
        procs.iter_mut().try_for_each(exited)
    }
}

/// Namespaces whose pods the fake scheduler leaves unbound, each with how many it may still bind
/// (see [`ControlPlane::hold_pods`] and [`ControlPlane::admit_pods`]).
static HELD_NAMESPACES: Mutex<BTreeMap<String, usize>> = Mutex::new(BTreeMap::new());

/// Whether a pod of `ns` may be bound now; takes one from the namespace's budget if it is held.
fn may_bind(ns: &str) -> bool {
    let Ok(mut held) = HELD_NAMESPACES.lock() else {
        return true;
    };
    match held.get_mut(ns) {
        None => true,
        Some(0) => false,
        Some(budget) => {
            *budget -= 1;
            true
        }
    }
}

/// Gives back a budget taken by [`may_bind`] when the binding failed.
fn unbound(ns: &str) {
    if let Ok(mut held) = HELD_NAMESPACES.lock()
        && let Some(budget) = held.get_mut(ns)
    {
        *budget += 1;
    }
}

/// Stands in for kube-scheduler (not built here): binds every unscheduled pod to the fake
/// node, from a thread with its own runtime so that it outlives any test's runtime.
fn start_binder(config: kube::Config) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the binder runtime")?;
    let client = {
        let _guard = runtime.enter();
        kube::Client::try_from(config).context("building the binder client")?
    };
    std::thread::Builder::new()
        .name("fake-scheduler".into())
        .spawn(move || runtime.block_on(bind_pods_forever(client)))
        .context("starting the binder thread")?;
    Ok(())
}

async fn bind_pods_forever(client: kube::Client) {
    let pending = ListParams::default().fields("spec.nodeName=");
    let all: Api<Pod> = Api::all(client.clone());
    loop {
        for pod in all.list(&pending).await.map(|l| l.items).unwrap_or_default() {
            let (Some(ns), Some(name)) = (pod.metadata.namespace, pod.metadata.name) else {
                continue;
            };
            if !may_bind(&ns) {
                continue;
            }
            let binding = serde_json::json!({
                "apiVersion": "v1",
                "kind": "Binding",
                "metadata": { "name": name },
                "target": { "apiVersion": "v1", "kind": "Node", "name": FAKE_NODE },
            });
            let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
            // Losing a race with a deletion is fine: the next round sees the current state.
            let bound = pods
                .create_subresource::<_, serde_json::Value>("binding", &name, &PostParams::default(), &binding)
                .await;
            if bound.is_err() {
                unbound(&ns);
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn apiserver_flags(dir: &Path, etcd_url: &str, port: u16) -> Vec<String> {
    let path = |name: &str| dir.join(name).display().to_string();
    vec![
        format!("--etcd-servers={etcd_url}"),
        "--bind-address=127.0.0.1".into(),
        "--advertise-address=127.0.0.1".into(),
        format!("--secure-port={port}"),
        format!("--cert-dir={}", path("certs")),
        format!("--token-auth-file={}", path("tokens.csv")),
        "--authorization-mode=RBAC".into(),
        format!("--service-account-key-file={}", path("sa.pub")),
        format!("--service-account-signing-key-file={}", path("sa.key")),
        format!("--service-account-issuer={SA_ISSUER}"),
        "--service-cluster-ip-range=10.96.0.0/16".into(),
        // Fewer moving parts, faster start: no APF, no token-controller dependency for pods,
        // no reconciling of the `kubernetes` Service endpoints.
        "--enable-priority-and-fairness=false".into(),
        "--disable-admission-plugins=ServiceAccount".into(),
        "--endpoint-reconciler-type=none".into(),
        "--profiling=false".into(),
        format!("--audit-policy-file={}", path("audit-policy.yaml")),
        format!("--audit-log-path={}", path("audit.log")),
        "--audit-log-format=json".into(),
    ]
}

/// What the audit log records: only the requests whose cost tests count (credential reads, token
/// and access reviews, target lists), so that it stays small.
const AUDIT_POLICY: &str = "apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: Request
    resources:
      - {group: authentication.k8s.io, resources: [tokenreviews]}
      - {group: authorization.k8s.io, resources: [subjectaccessreviews]}
  - level: Metadata
    resources:
      - {group: \"\", resources: [secrets]}
      - {group: canaryd.io, resources: [notificationtargets]}
  - level: None
";

fn kubeconfig_yaml(server: &str, token: &str) -> String {
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: local
  cluster:
    server: {server}
    insecure-skip-tls-verify: true
users:
- name: admin
  user:
    token: {token}
contexts:
- name: local
  context:
    cluster: local
    user: admin
    namespace: default
current-context: local
"
    )
}

/// Directory with etcd, kube-apiserver, kube-controller-manager and kwok: `$CANARYD_CONTROLPLANE_BIN`
/// if set, else the last stdout line of build.sh (instant when the binaries are cached).
fn binaries_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("CANARYD_CONTROLPLANE_BIN") {
        return Ok(dir.into());
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/controlplane/build.sh");
    let out = Command::new(&script)
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !out.status.success() {
        bail!(
            "{} failed ({}):\n{}",
            script.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let dir = stdout
        .lines()
        .last()
        .map(str::trim)
        .context("build.sh printed nothing")?;
    Ok(PathBuf::from(dir))
}

/// The Istio networking CRDs and every `deploy/crds/*.yaml` of this crate (sorted).
fn crd_files() -> Result<Vec<PathBuf>> {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = vec![repo.join("../shared/crds/istio-networking.yaml")];
    let own = repo.join("deploy/crds");
    if own.is_dir() {
        let mut found = Vec::new();
        for entry in std::fs::read_dir(&own).with_context(|| format!("listing {}", own.display()))? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "yaml") {
                found.push(path);
            }
        }
        found.sort();
        files.extend(found);
    }
    Ok(files)
}

/// Fails if the process already exited (so waits fail fast, with its logs).
fn exited(proc: &mut ChildProc) -> Result<()> {
    match proc.try_wait()? {
        Some(status) => bail!("{} exited early ({status})", proc.name()),
        None => Ok(()),
    }
}

fn openssl(args: &[&str], out: &Path) -> Result<()> {
    let output = Command::new("openssl")
        .args(args)
        .arg(out)
        .output()
        .context("running openssl")?;
    if !output.status.success() {
        bail!("openssl {args:?} failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    Ok(())
}

fn random_token() -> Result<String> {
    let mut bytes = [0u8; 16];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut bytes).context("reading /dev/urandom")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Loopback-only HTTP client: no proxies, and the apiserver's self-signed certificate accepted.
pub(crate) fn http_client() -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .no_proxy()
        .tls_danger_accept_invalid_certs(true)
        .timeout(Duration::from_secs(5))
        .build()
        .context("building an HTTP client")
}
