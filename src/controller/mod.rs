//! Controller glue: watch RolloutPolicies (and the Deployments they name), and run the pipeline
//! observe → plan → act → status for each.

mod act;
mod analysis;
pub mod cache;
mod commands;
pub mod leader;
pub mod observe;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::apps::v1::Deployment;
use kube::runtime::controller::{Action as Requeue, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::finalizer::{Error as FinalizerError, Event as FinalizerEvent, finalizer};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use tracing::{Instrument, info_span, warn};

use crate::analysis::engine::{Engine, Key};
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::plan::plan;
use crate::policy::types::Phase;
use crate::policy::types::RolloutPolicy;

/// Look again this often even when nothing changes: catches drift in objects we do not watch.
const RESYNC: Duration = Duration::from_secs(30);
const ERROR_BACKOFF: Duration = Duration::from_secs(5);

/// How the daemon runs.
#[derive(Clone, Debug)]
pub struct Options {
    /// Watch RolloutPolicies (and RolloutCommands) in this namespace only; None: all.
    pub namespace: Option<String>,
    /// The daemon's own namespace: the only one where it reads Secrets (MetricProviders').
    pub secrets_namespace: String,
    /// A RolloutCommand older than this does nothing.
    pub command_ttl: Duration,
}

pub struct Context {
    pub client: Client,
    pub options: Options,
    pub caches: cache::Caches,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    pub engine: Arc<Engine>,
}

/// Run the controller until SIGTERM/SIGINT, over all namespaces or just one.
pub async fn run(client: Client, metrics: Arc<Metrics>, options: Options) -> Result<()> {
    let namespace = options.namespace.as_deref();
    // The analysis engine wakes a policy when a check of it is done, the command cache when a
    // command for it arrives.
    let (wake, woken) = futures::channel::mpsc::unbounded::<Key>();
    let caches = cache::Caches::start(&client, namespace, wake.clone()).await?;
    let (policies, deployments): (Api<RolloutPolicy>, Api<Deployment>) = match namespace {
        Some(ns) => (Api::namespaced(client.clone(), ns), Api::namespaced(client.clone(), ns)),
        None => (Api::all(client.clone()), Api::all(client.clone())),
    };
    let reporter = Reporter {
        controller: "canaryd".into(),
        instance: std::env::var("POD_NAME").ok(),
    };
    let engine = Arc::new(Engine::new(wake, metrics.clone()));
    tokio::spawn(engine.clone().run());
    let ctx = Arc::new(Context {
        client: client.clone(),
        options: options.clone(),
        caches,
        recorder: Recorder::new(client, reporter),
        metrics,
        engine,
    });
    let controller = Controller::new(policies, watcher::Config::default().any_semantic());
    let store = controller.store();
    controller
        .watches(
            deployments,
            watcher::Config::default().any_semantic(),
            move |d: Deployment| {
                // A Deployment change wakes the policies that name it.
                let ns = d.namespace();
                let name = d.name_any();
                store
                    .state()
                    .into_iter()
                    .filter(|p| p.namespace() == ns && names_deployment(p, &name))
                    .map(|p| ObjectRef::from_obj(&*p))
                    .collect::<Vec<_>>()
            },
        )
        .reconcile_on(woken.map(|(ns, name)| ObjectRef::new(&name).within(&ns)))
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                tracing::debug!(error = %e, "reconcile failed");
            }
        })
        .await;
    Ok(())
}

fn names_deployment(p: &RolloutPolicy, name: &str) -> bool {
    p.spec.stable.deployment == name
        || p.spec.canary.as_ref().is_some_and(|c| c.deployment == name)
        || p.status
            .as_ref()
            .and_then(|s| s.stable.as_ref())
            .is_some_and(|s| s.deployment == name)
}

/// Removed only after the policy's changes are undone (traffic to stable, HPAs restored).
pub const FINALIZER: &str = "canaryd.io/cleanup";

async fn reconcile(policy: Arc<RolloutPolicy>, ctx: Arc<Context>) -> Result<Requeue> {
    let ns = policy.namespace().unwrap_or_default();
    let span = info_span!("reconcile", policy = %policy.name_any(), namespace = %ns);
    async move {
        let started = std::time::Instant::now();
        let api: Api<RolloutPolicy> = Api::namespaced(ctx.client.clone(), &ns);
        let result = finalizer(&api, FINALIZER, policy, |event| async {
            match event {
                FinalizerEvent::Apply(p) => p.reconcile(&ctx).await,
                FinalizerEvent::Cleanup(p) => p.cleanup(&ctx).await,
            }
        })
        .await
        .map_err(|e| match e {
            FinalizerError::ApplyFailed(e) | FinalizerError::CleanupFailed(e) => e,
            FinalizerError::AddFinalizer(e) | FinalizerError::RemoveFinalizer(e) => Error::Kube(e),
            FinalizerError::UnnamedObject | FinalizerError::InvalidFinalizer => Error::MissingField("metadata.name"),
        });
        ctx.metrics
            .observe_reconcile(started.elapsed(), result.as_ref().err().map(Error::category));
        result
    }
    .instrument(span)
    .await
}

fn error_policy(policy: Arc<RolloutPolicy>, error: &Error, _ctx: Arc<Context>) -> Requeue {
    match error {
        Error::Conflict(_) => Requeue::requeue(Duration::from_millis(100)),
        _ => {
            warn!(policy = %policy.name_any(), error = %error, "reconcile failed");
            Requeue::requeue(ERROR_BACKOFF)
        }
    }
}

impl RolloutPolicy {
    /// The policy is being deleted: undo what it changed, then let it go.
    async fn cleanup(&self, ctx: &Context) -> Result<Requeue> {
        let status = self.status.clone().unwrap_or_default();
        let actions = crate::plan::cleanup(&self.spec, &status, Timestamp::now());
        act::carry_out(self, ctx, &actions).await?;
        ctx.engine
            .want((self.namespace().unwrap_or_default(), self.name_any()), None);
        tracing::info!("policy deleted: traffic and scaling restored");
        Ok(Requeue::await_change())
    }

    /// One pass of the pipeline. Idempotent: every step can be repeated after a crash at any point.
    async fn reconcile(&self, ctx: &Context) -> Result<Requeue> {
        let key: Key = (self.namespace().unwrap_or_default(), self.name_any());
        let fresh = observe::Fresh::read_if_recording(&ctx.client, self).await?;
        let command = commands::next(ctx, self).await?;
        let mut seen = observe::observe(&ctx.caches, self, ctx.engine.latest(&key), fresh)?;
        seen.observed.command = command.as_ref().map(|c| c.command.clone());
        let current = self.status.clone().unwrap_or_default();
        let plan = plan(&self.spec, &current, &seen.observed, Timestamp::now());
        act::carry_out(self, ctx, &plan.actions).await?;
        if plan.status != current {
            act::write_status(self, ctx, &plan.status).await?;
            if let Some(command) = &command {
                commands::finish(ctx, self, command, &plan.status).await?;
            }
            if plan.status.phase != current.phase {
                match plan.status.phase {
                    Phase::RolledBack => ctx.metrics.rollbacks.inc(),
                    Phase::Succeeded => ctx.metrics.promotions.inc(),
                    _ => 0,
                };
            }
        }
        let request = analysis::request(
            &ctx.client,
            &ctx.caches,
            &ctx.options.secrets_namespace,
            self,
            &plan.status,
            &seen.versions,
        )
        .await?;
        ctx.engine.want(key, request);
        ctx.metrics.record_policy(self, &plan.status);
        Ok(match plan.requeue {
            Some(d) if d.is_zero() => Requeue::requeue(Duration::from_millis(50)),
            Some(d) => Requeue::requeue(d.min(RESYNC)),
            None => Requeue::requeue(RESYNC),
        })
    }
}
