//! The canaryd binary: the daemon (`run`) and the CLI. Errors become anyhow here, at the edge.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use canaryd::cache::Caches;
use canaryd::cli::{self, status, validate};
use canaryd::controller::leader::{self, Elector};
use canaryd::controller::{Options, Parts};
use canaryd::fence::LeaderGuard;
use canaryd::health::{Health, Role};
use canaryd::resources::command::{CommandKind, Outcome};
use canaryd::telemetry::{self, LogFormat};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "canaryd", version, about = "Progressive delivery for Kubernetes and Istio")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
struct Target {
    /// The RolloutPolicy.
    name: String,
    /// Namespace (default: the kubeconfig's).
    #[arg(short, long)]
    namespace: Option<String>,
    /// Do not wait for the daemon to acknowledge the command.
    #[arg(long)]
    no_wait: bool,
    /// Act only if the rollout is still at this canary (`status.canary.templateHash`, as printed).
    #[arg(long)]
    canary: Option<String>,
    /// Act only if the rollout is still at this step (`status.step`, as printed).
    #[arg(long)]
    step: Option<u32>,
}

#[derive(clap::Args)]
struct Election {
    /// Run the controller only while holding a Lease (for more than one replica).
    #[arg(long, env = "CANARYD_LEADER_ELECT")]
    leader_elect: bool,
    #[arg(long, default_value = "canaryd")]
    lease_name: String,
    /// Namespace of the Lease (default: $POD_NAMESPACE, else canaryd-system).
    #[arg(long, env = "POD_NAMESPACE", default_value = "canaryd-system")]
    lease_namespace: String,
    /// How long a Lease lasts without renewal: a standby takes over after at most this.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    lease_duration: Duration,
    /// The leader stops writing (and exits) when it could not renew the Lease for this long;
    /// shorter than --lease-duration, so it has stopped before a standby can take over
    /// (default: two thirds of the lease duration).
    #[arg(long, value_parser = humantime::parse_duration)]
    renew_deadline: Option<Duration>,
    /// Timeout of every API request the controller makes (writes included), and of sending a
    /// webhook; must be shorter than --lease-duration minus --renew-deadline, so that no write lands
    /// once a standby may lead (default: half that margin).
    #[arg(long, value_parser = humantime::parse_duration)]
    api_timeout: Option<Duration>,
}

impl Election {
    fn renew_deadline(&self) -> Duration {
        self.renew_deadline.unwrap_or(self.lease_duration * 2 / 3)
    }
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum CrdKind {
    #[value(name = "rolloutpolicy")]
    RolloutPolicy,
    #[value(name = "metricprovider")]
    MetricProvider,
    #[value(name = "rolloutcommand")]
    RolloutCommand,
    #[value(name = "notificationtarget")]
    NotificationTarget,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon.
    Run {
        /// Address of /metrics, /healthz and /readyz.
        #[arg(long, default_value = "0.0.0.0:8080", env = "CANARYD_LISTEN")]
        listen: SocketAddr,
        /// Address of the approvals listener (the approval API and Slack's interactivity endpoint),
        /// the only one to expose through an Ingress; off when absent.
        #[arg(long, env = "CANARYD_APPROVALS_LISTEN")]
        approvals_listen: Option<SocketAddr>,
        #[arg(long, value_enum, default_value_t, env = "CANARYD_LOG_FORMAT")]
        log_format: LogFormat,
        /// Watch RolloutPolicies in this namespace only (default: all).
        #[arg(long, env = "CANARYD_NAMESPACE")]
        namespace: Option<String>,
        /// /healthz fails when a watch has failed, or a reconcile has run, for longer than this.
        #[arg(long, default_value = "2m", env = "CANARYD_STUCK_TIMEOUT", value_parser = humantime::parse_duration)]
        stuck_timeout: Duration,
        /// The daemon's own namespace: the only one where it reads Secrets (MetricProviders').
        #[arg(long, env = "POD_NAMESPACE", default_value = "canaryd-system")]
        secrets_namespace: String,
        /// A RolloutCommand older than this does nothing (e.g. re-applied from Git or a backup).
        #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
        command_ttl: Duration,
        #[command(flatten)]
        election: Election,
    },
    /// Print a CRD (YAML): RolloutPolicy by default.
    Crd {
        #[arg(value_enum, default_value = "rolloutpolicy")]
        kind: CrdKind,
    },
    /// Pass the current pause or approval gate.
    Promote {
        #[command(flatten)]
        target: Target,
        /// Go to 100 % now, skipping the remaining steps.
        #[arg(long)]
        full: bool,
    },
    /// Send all traffic to stable now; the rollout stays Aborted until retried.
    Abort {
        #[command(flatten)]
        target: Target,
    },
    /// Hold the rollout where it is.
    Pause {
        #[command(flatten)]
        target: Target,
    },
    /// Continue a paused rollout.
    Resume {
        #[command(flatten)]
        target: Target,
    },
    /// Start a rolled-back or aborted canary again from the first step.
    Retry {
        #[command(flatten)]
        target: Target,
    },
    /// Show rollouts.
    Status {
        name: Option<String>,
        #[arg(short, long)]
        namespace: Option<String>,
        /// All namespaces.
        #[arg(short = 'A', long)]
        all_namespaces: bool,
        /// Live view with a weight bar per version.
        #[arg(short, long)]
        watch: bool,
        /// Stop watching after this long (e.g. 2m).
        #[arg(long, value_parser = humantime::parse_duration)]
        watch_for: Option<Duration>,
    },
    /// Lint RolloutPolicy YAML files without a cluster (for GitOps CI).
    Validate { path: PathBuf },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match &cli.command {
        Command::Run { log_format, .. } => telemetry::init(*log_format, "info,kube=warn"),
        _ => telemetry::init(LogFormat::Text, "error"),
    }
    match dispatch(cli.command).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn client() -> anyhow::Result<kube::Client> {
    kube::Client::try_default()
        .await
        .context("connecting to Kubernetes (KUBECONFIG or in-cluster)")
}

/// The client of the controller's requests: every request, writes included, is given up after
/// `timeout`, and is never retried by the client itself (canaryd's own retries check leadership).
async fn api_client(timeout: Duration) -> anyhow::Result<kube::Client> {
    let mut config = kube::Config::infer()
        .await
        .context("connecting to Kubernetes (KUBECONFIG or in-cluster)")?;
    config.connect_timeout = Some(timeout);
    config.read_timeout = Some(timeout);
    config.write_timeout = Some(timeout);
    config.reset_reader_on_write = true;
    config.default_retry = false;
    Ok(kube::client::ClientBuilder::try_from(config)?
        .with_layer(&tower::timeout::TimeoutLayer::new(timeout))
        .build())
}

async fn dispatch(command: Command) -> anyhow::Result<ExitCode> {
    let (target, kind) = match command {
        Command::Run {
            listen,
            approvals_listen,
            namespace,
            secrets_namespace,
            command_ttl,
            election,
            stuck_timeout,
            ..
        } => {
            let options = Options {
                namespace,
                secrets_namespace,
                command_ttl,
            };
            return run(listen, approvals_listen, options, election, stuck_timeout)
                .await
                .map(|_| ExitCode::SUCCESS);
        }
        Command::Crd { kind } => {
            let yaml = match kind {
                CrdKind::RolloutPolicy => canaryd::resources::crd::crd_yaml()?,
                CrdKind::MetricProvider => canaryd::resources::crd::provider_crd_yaml()?,
                CrdKind::RolloutCommand => canaryd::resources::crd::command_crd_yaml()?,
                CrdKind::NotificationTarget => canaryd::resources::crd::target_crd_yaml()?,
            };
            print!("{yaml}");
            return Ok(ExitCode::SUCCESS);
        }
        Command::Validate { path } => return validate_cmd(&path),
        Command::Status {
            name,
            namespace,
            all_namespaces,
            watch,
            watch_for,
        } => {
            let client = client().await?;
            let ns = if all_namespaces {
                None
            } else {
                Some(namespace.unwrap_or_else(|| client.default_namespace().to_string()))
            };
            if watch {
                status::watch(&client, ns.as_deref(), name.as_deref(), watch_for).await?;
            } else {
                print!("{}", status::show(&client, ns.as_deref(), name.as_deref()).await?);
            }
            return Ok(ExitCode::SUCCESS);
        }
        Command::Promote { target, full } => (
            target,
            if full {
                CommandKind::PromoteFull
            } else {
                CommandKind::Promote
            },
        ),
        Command::Abort { target } => (target, CommandKind::Abort),
        Command::Pause { target } => (target, CommandKind::Pause),
        Command::Resume { target } => (target, CommandKind::Resume),
        Command::Retry { target } => (target, CommandKind::Retry),
    };
    steer(target, kind).await
}

/// `promote`, `abort`, …: a RolloutCommand bound to the rollout as it is (or as pinned), then its outcome.
async fn steer(target: Target, kind: CommandKind) -> anyhow::Result<ExitCode> {
    let client = client().await?;
    let ns = target
        .namespace
        .unwrap_or_else(|| client.default_namespace().to_string());
    let pin = canaryd::approvals::api::Pin {
        canary: target.canary,
        step: target.step,
    };
    let (command, bound) = cli::send(&client, &ns, &target.name, kind, &pin)
        .await
        .with_context(|| format!("sending {} to RolloutPolicy {ns}/{}", kind.as_str(), target.name))?;
    println!(
        "{} sent to {ns}/{} at {bound} (RolloutCommand {command})",
        kind.as_str(),
        target.name
    );
    if !target.no_wait {
        match cli::wait_handled(&client, &ns, &command, Duration::from_secs(30)).await? {
            Some(s) if s.outcome == Outcome::Acted => println!("{}", s.message),
            Some(s) => {
                println!("refused ({}): {}", s.reason, s.message);
                return Ok(ExitCode::FAILURE);
            }
            None => println!("not handled yet: is canaryd running?"),
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn validate_cmd(path: &std::path::Path) -> anyhow::Result<ExitCode> {
    let reports =
        validate::validate_path(path, jiff::Timestamp::now()).with_context(|| format!("reading {}", path.display()))?;
    let mut failed = 0;
    let mut policies = 0;
    for r in &reports {
        policies += r.policies;
        for line in &r.openings {
            println!("{}: {line}", r.path.display());
        }
        if r.errors.is_empty() {
            continue;
        }
        failed += 1;
        for e in &r.errors {
            println!("{}: {e}", r.path.display());
        }
    }
    println!("{} files, {policies} policies, {failed} with errors", reports.len());
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn run(
    listen: SocketAddr,
    approvals_listen: Option<SocketAddr>,
    options: Options,
    election: Election,
    stuck_timeout: Duration,
) -> anyhow::Result<()> {
    // Refused before anything starts: a write could otherwise land after a standby took over.
    let request_timeout =
        leader::request_timeout(election.lease_duration, election.renew_deadline(), election.api_timeout)?;
    let client = client().await?;
    let api = api_client(request_timeout).await?;
    let metrics = Arc::new(canaryd::metrics::Metrics::default());
    let health = Arc::new(Health::new(stuck_timeout));
    let server = serve_health(listen, &metrics, &health).await?;
    // A standby fills its caches too: it is ready, and takes over without a cold start.
    let (wake, woken) = canaryd::controller::wake_channel();
    let caches = Caches::start(
        &client,
        options.namespace.as_deref(),
        &health,
        metrics.clone(),
        wake.clone(),
    );
    // Both replicas serve approvals: they only create commands, which the leader carries out.
    let approvals = match approvals_listen {
        Some(addr) => Some(serve_approvals(&client, addr, &options, &caches).await?),
        None => None,
    };
    // The policy cache is filled by the controller; the notifier reads it, beside the reconciles.
    let policies = kube::runtime::reflector::store::Writer::default();
    let notify = Notify {
        api: api.clone(),
        policies: policies.as_reader(),
        caches: caches.clone(),
        secrets_namespace: options.secrets_namespace.clone(),
        metrics: metrics.clone(),
    };
    let parts = |leader| Parts {
        caches,
        policies,
        wake,
        woken,
        leader,
        health: health.clone(),
        api,
        request_timeout,
    };
    let result = if election.leader_elect {
        let elector = become_leader(&client, &election, &health).await?;
        notify.start(elector.guard());
        let controller = canaryd::controller::run(client, metrics, options, parts(elector.guard()));
        let result = tokio::select! {
            done = controller => done.map_err(anyhow::Error::from),
            () = elector.hold() => Err(anyhow::anyhow!("lost the lease; exiting so that only one daemon writes")),
        };
        if result.is_ok() {
            elector.release().await;
        }
        result
    } else {
        notify.start(LeaderGuard::unelected());
        canaryd::controller::run(client, metrics, options, parts(LeaderGuard::unelected()))
            .await
            .map_err(anyhow::Error::from)
    };
    server.abort();
    if let Some(approvals) = approvals {
        approvals.abort();
    }
    result
}

/// Waits (as a ready standby) until this replica holds the Lease.
async fn become_leader(client: &kube::Client, election: &Election, health: &Health) -> anyhow::Result<Elector> {
    let identity = std::env::var("POD_NAME").unwrap_or_else(|_| format!("canaryd-{}", std::process::id()));
    let elector = Elector::new(
        client.clone(),
        leader::Election {
            namespace: election.lease_namespace.clone(),
            name: election.lease_name.clone(),
            identity: identity.clone(),
            lease_duration: election.lease_duration,
            renew_deadline: election.renew_deadline(),
        },
    )?;
    health.set_role(Role::Standby);
    tracing::info!(lease = %election.lease_name, %identity, "waiting for the lease");
    elector.acquire().await?;
    health.set_role(Role::Leader);
    tracing::info!(lease = %election.lease_name, %identity, "leading");
    Ok(elector)
}

/// What the notifier needs; it starts once this replica leads and the caches are filled.
struct Notify {
    api: kube::Client,
    policies: kube::runtime::reflector::Store<canaryd::cache::slim::SlimPolicy>,
    caches: Caches,
    secrets_namespace: String,
    metrics: Arc<canaryd::metrics::Metrics>,
}

impl Notify {
    /// Notifications run beside the reconciles, never inside them: a slow receiver cannot hold one.
    fn start(self, leader: LeaderGuard) {
        let recorder = kube::runtime::events::Recorder::new(self.api.clone(), canaryd::controller::reporter());
        let targets = (self.caches.targets.clone(), self.caches.namespaces.clone());
        match canaryd::notify::Notifier::new(
            self.api,
            self.policies,
            targets,
            self.secrets_namespace,
            leader,
            (recorder, self.metrics),
        ) {
            Ok(notifier) => {
                let caches = self.caches;
                tokio::spawn(async move {
                    if caches.ready().await.is_ok() {
                        Arc::new(notifier).run().await;
                    }
                });
            }
            Err(e) => tracing::warn!(error = %e, "notifications are off: no HTTP client"),
        }
    }
}

/// `/metrics`, `/healthz`, `/readyz` on `listen`.
async fn serve_health(
    listen: SocketAddr,
    metrics: &Arc<canaryd::metrics::Metrics>,
    health: &Arc<Health>,
) -> anyhow::Result<tokio::task::JoinHandle<std::io::Result<()>>> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "serving /metrics /healthz /readyz");
    // First line on stdout: where to scrape (scripts and tests read it when --listen ends in :0).
    println!("listening on {addr}");
    let app = canaryd::health::router(metrics.clone(), health.clone());
    Ok(tokio::spawn(async move { axum::serve(listener, app).await }))
}

async fn serve_approvals(
    client: &kube::Client,
    addr: SocketAddr,
    options: &Options,
    caches: &Caches,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let identity = cli::whoami(client)
        .await
        .context("the approvals listener needs the daemon's own user name (SelfSubjectReview)")?;
    // Signing secrets from memory: a forged click costs the API server nothing.
    let keys = canaryd::approvals::keys::SlackKeys::start(client, &options.secrets_namespace, caches.targets.clone());
    let approvals =
        canaryd::approvals::listener::Approvals::new(client.clone(), identity, options.namespace.clone(), keys)?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "serving the approval API and /slack/interactivity");
    let app = canaryd::approvals::listener::router(approvals);
    Ok(tokio::spawn(canaryd::approvals::listener::serve(listener, app)))
}
