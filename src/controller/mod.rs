//! Controller glue: watch RolloutPolicies (and the Deployments they name), and run the pipeline
//! observe → plan → act → status for each.

mod act;
mod analysis;
// Secrets of the daemon's namespace, read the same way for the approvals listener.
pub(crate) use analysis::secret_value;
pub mod cache;
mod commands;
mod hooks;
pub mod leader;
pub mod observe;
pub mod slim;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::channel::mpsc::{UnboundedReceiver, UnboundedSender};
use jiff::Timestamp;
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{ApiResource, DynamicObject, Patch, PatchParams};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{Action as Requeue, Controller};
use kube::runtime::events::{Event as KubeEvent, EventType as KubeEventType, Recorder, Reporter};
use kube::runtime::finalizer::{Error as FinalizerError, Event as FinalizerEvent, finalizer};
use kube::runtime::reflector::{self, ObjectRef, store::Writer};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::{Value, json};
use tracing::{Instrument, info_span, warn};

use crate::analysis::engine::{Engine, Key};
use crate::error::{Error, Result};
use crate::gates::runner::Runner;
use crate::http::{Health, RESYNC};
use crate::metrics::Metrics;
use crate::plan::plan;
use crate::policy::types::Phase;
use crate::policy::types::RolloutPolicy;
use leader::LeaderGuard;

const ERROR_BACKOFF: Duration = Duration::from_secs(5);

/// Reconciles in flight at once. Unbounded, a start with thousands of policies opens a connection
/// (and a TLS handshake) per reconcile and floods the API server; a few dozen keep it busy.
const CONCURRENCY: u16 = 32;

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
    /// Calls the policies' webhooks.
    pub hooks: Arc<Runner>,
    /// Checked before every write: false once this replica may have lost the Lease.
    pub leader: LeaderGuard,
    pub health: Arc<Health>,
    policy_resource: ApiResource,
}

/// The RolloutPolicy kind, read as untyped objects: one policy that cannot be decoded must not
/// fail the list (and so the watch) of all the others.
fn policy_resource() -> ApiResource {
    ApiResource::erase::<RolloutPolicy>(&())
}

/// Wakes a policy out of turn: the analysis engine when a check of it is done, the command cache
/// when a command for it arrives.
pub fn wake_channel() -> (UnboundedSender<Key>, UnboundedReceiver<Key>) {
    futures::channel::mpsc::unbounded()
}

/// What the daemon starts before it leads: caches fill on a standby too, so it takes over warm.
pub struct Parts {
    /// Started by [`cache::Caches::start`] with `wake`.
    pub caches: cache::Caches,
    pub wake: UnboundedSender<Key>,
    pub woken: UnboundedReceiver<Key>,
    /// Every write is checked against it.
    pub leader: LeaderGuard,
    pub health: Arc<Health>,
}

/// Run the controller until SIGTERM/SIGINT, over all namespaces or just one.
pub async fn run(client: Client, metrics: Arc<Metrics>, options: Options, parts: Parts) -> Result<()> {
    let Parts {
        caches,
        wake,
        woken,
        leader,
        health,
    } = parts;
    caches.ready().await?;
    let namespace = options.namespace.as_deref();
    let resource = policy_resource();
    let (policies, deployments): (Api<DynamicObject>, Api<PartialObjectMeta<Deployment>>) = match namespace {
        Some(ns) => (
            Api::namespaced_with(client.clone(), ns, &resource),
            Api::namespaced(client.clone(), ns),
        ),
        None => (Api::all_with(client.clone(), &resource), Api::all(client.clone())),
    };
    let reporter = Reporter {
        controller: "canaryd".into(),
        instance: std::env::var("POD_NAME").ok(),
    };
    let hooks = Arc::new(Runner::new(wake.clone())?);
    tokio::spawn(hooks.clone().run());
    let engine = Arc::new(Engine::new(wake, metrics.clone()));
    tokio::spawn(engine.clone().run());
    let ctx = Arc::new(Context {
        client: client.clone(),
        options: options.clone(),
        caches,
        recorder: Recorder::new(client, reporter.clone()),
        metrics,
        engine,
        hooks,
        leader,
        health: health.clone(),
        policy_resource: resource.clone(),
    });
    let writer = Writer::new(resource.clone());
    let store = writer.as_reader();
    // Notifications run beside the reconciles, never inside them: a slow receiver cannot hold one.
    match crate::gates::notify::Notifier::new(
        ctx.client.clone(),
        store.clone(),
        ctx.caches.targets.clone(),
        options.secrets_namespace.clone(),
        ctx.leader.clone(),
        Recorder::new(ctx.client.clone(), reporter),
    ) {
        Ok(notifier) => {
            tokio::spawn(Arc::new(notifier).run());
        }
        Err(e) => warn!(error = %e, "notifications are off: no HTTP client"),
    }
    let watch_health = health.clone();
    let policy_stream = reflector::reflector(
        writer,
        watcher(policies, watcher::Config::default().any_semantic())
            .modify(slim::dynamic)
            .backoff(cache::WatchBackoff::default())
            .inspect(move |item| watch_health.watch_item("rolloutpolicies", item)),
    )
    .applied_objects();
    // With no policy there is nothing to reconcile: the loop is idle, not stuck.
    let idle_store = store.clone();
    let idle_health = health.clone();
    tokio::spawn(async move {
        loop {
            if idle_store.is_empty() {
                idle_health.loop_beat();
            }
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
    });
    health.loop_beat();
    let controller = Controller::for_stream_with(policy_stream, store.clone(), resource.clone())
        .with_config(kube::runtime::controller::Config::default().concurrency(CONCURRENCY));
    controller
        // Only the name is read: the metadata of Deployments, not their bodies.
        .watches_stream(
            watcher(deployments, watcher::Config::default().any_semantic())
                .backoff(cache::WatchBackoff::default())
                .filter_map(after_first_list),
            move |d: PartialObjectMeta<Deployment>| {
                // A Deployment change wakes the policies that name it.
                let ns = d.namespace();
                let name = d.name_any();
                store
                    .state()
                    .into_iter()
                    .filter(|p| p.namespace() == ns && names_deployment(p, &name))
                    .map(|p| ObjectRef::from_obj_with(&*p, resource.clone()))
                    .collect::<Vec<_>>()
            },
        )
        .reconcile_on(woken.map({
            let resource = policy_resource();
            move |(ns, name)| ObjectRef::new_with(&name, resource.clone()).within(&ns)
        }))
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

/// The Deployments changed after the daemon's first list: every policy is reconciled at the start
/// anyway, and mapping each Deployment of the cluster to its policies then costs O(Deployments ×
/// policies). Later relists do wake (they may hold changes a broken watch missed).
fn after_first_list<K>(
    event: std::result::Result<watcher::Event<K>, watcher::Error>,
) -> futures::future::Ready<Option<std::result::Result<K, watcher::Error>>> {
    use std::sync::atomic::{AtomicBool, Ordering};
    static LISTED: AtomicBool = AtomicBool::new(false);
    futures::future::ready(match event {
        Ok(watcher::Event::Apply(o) | watcher::Event::Delete(o)) => Some(Ok(o)),
        Ok(watcher::Event::InitApply(o)) if LISTED.load(Ordering::Relaxed) => Some(Ok(o)),
        Ok(watcher::Event::InitDone) => {
            LISTED.store(true, Ordering::Relaxed);
            None
        }
        Ok(_) => None,
        Err(e) => Some(Err(e)),
    })
}

/// Read from the raw object, so that it works for a policy that cannot be decoded too.
fn names_deployment(p: &DynamicObject, name: &str) -> bool {
    [
        "/spec/stable/deployment",
        "/spec/canary/deployment",
        "/status/stable/deployment",
    ]
    .iter()
    .any(|path| p.data.pointer(path).and_then(Value::as_str) == Some(name))
}

/// Why a stored policy cannot be decoded, naming the field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    pub field: String,
    pub message: String,
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// The typed policy, or the field that keeps it from being one.
pub fn decode(obj: &DynamicObject) -> std::result::Result<RolloutPolicy, DecodeError> {
    let value = serde_json::to_value(obj).map_err(|e| DecodeError {
        field: ".".into(),
        message: e.to_string(),
    })?;
    serde_path_to_error::deserialize::<_, RolloutPolicy>(value).map_err(|e| DecodeError {
        field: e.path().to_string(),
        message: e.inner().to_string(),
    })
}

/// Removed only after the policy's changes are undone (traffic to stable, HPAs restored).
pub const FINALIZER: &str = "canaryd.io/cleanup";

async fn reconcile(obj: Arc<DynamicObject>, ctx: Arc<Context>) -> Result<Requeue> {
    let ns = obj.namespace().unwrap_or_default();
    let span = info_span!("reconcile", policy = %obj.name_any(), namespace = %ns);
    async move {
        let _running = ctx.health.reconcile_started();
        let started = std::time::Instant::now();
        // The finalizer helper patches the policy first (adding or removing the finalizer).
        ctx.leader.check()?;
        let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), &ns, &ctx.policy_resource);
        let result = finalizer(&api, FINALIZER, obj, |event| async {
            match event {
                FinalizerEvent::Apply(o) => match decode(&o) {
                    Ok(p) => p.reconcile(&ctx).await,
                    Err(e) => report_undecodable(&o, &ctx, &e).await,
                },
                FinalizerEvent::Cleanup(o) => {
                    let done = match decode(&o) {
                        Ok(p) => p.cleanup(&ctx).await,
                        Err(e) => {
                            // Nothing it describes can be restored; do not keep it Terminating forever.
                            warn!(error = %e, "deleting a policy that cannot be read: nothing restored");
                            Ok(Requeue::await_change())
                        }
                    };
                    ctx.leader.check()?;
                    done
                }
            }
        })
        .await
        .map_err(|e| match e {
            FinalizerError::ApplyFailed(e) | FinalizerError::CleanupFailed(e) => e,
            // 422: the JSON patch's test saw other finalizers than the cached policy: a stale
            // cache (the policy changed meanwhile), retried at once like a conflict.
            FinalizerError::AddFinalizer(kube::Error::Api(s))
            | FinalizerError::RemoveFinalizer(kube::Error::Api(s))
                if s.code == 422 && s.details.as_ref().is_none_or(|d| d.causes.is_empty()) =>
            {
                Error::Conflict(s.message)
            }
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

/// A policy that cannot be decoded: phase Invalid with the field, one Warning Event; others go on.
async fn report_undecodable(obj: &DynamicObject, ctx: &Context, e: &DecodeError) -> Result<Requeue> {
    let message = format!("the policy cannot be read: {e}");
    let status = obj.data.get("status");
    let current = |key: &str| status.and_then(|s| s.get(key)).and_then(Value::as_str);
    if current("phase") == Some(Phase::Invalid.as_str()) && current("message") == Some(message.as_str()) {
        return Ok(Requeue::requeue(RESYNC));
    }
    warn!(error = %e, "policy cannot be read");
    let now = serde_json::to_value(Timestamp::now())?;
    let mut conditions: Vec<Value> = status
        .and_then(|s| s.get("conditions"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    conditions.retain(|c| c.get("type").and_then(Value::as_str) != Some("Ready"));
    conditions.push(json!({
        "type": "Ready", "status": "False", "reason": "InvalidSpec", "message": message,
        "lastTransitionTime": now, "observedGeneration": obj.metadata.generation,
    }));
    let patch = json!({
        "metadata": {"resourceVersion": obj.resource_version()},
        "status": {
            "phase": Phase::Invalid.as_str(),
            "message": message,
            "observedGeneration": obj.metadata.generation,
            "conditions": conditions,
        }
    });
    ctx.leader.check()?;
    let api: Api<DynamicObject> = Api::namespaced_with(
        ctx.client.clone(),
        &obj.namespace().unwrap_or_default(),
        &ctx.policy_resource,
    );
    match api
        .patch_status(&obj.name_any(), &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => return Err(Error::Conflict(obj.name_any())),
        Err(e) => return Err(e.into()),
    }
    ctx.leader.check()?;
    let event = KubeEvent {
        type_: KubeEventType::Warning,
        reason: "InvalidSpec".into(),
        note: Some(message.chars().take(1000).collect()),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(e) = ctx
        .recorder
        .publish(&event, &obj.object_ref(&ctx.policy_resource))
        .await
    {
        warn!(error = %e, "could not publish event");
    }
    Ok(Requeue::requeue(RESYNC))
}

fn error_policy(policy: Arc<DynamicObject>, error: &Error, _ctx: Arc<Context>) -> Requeue {
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
        crate::failpoint!("before-cleanup");
        let status = self.status.clone().unwrap_or_default();
        // What is left: objects already gone have nothing to restore.
        let seen = observe::observe(&ctx.caches, self, None, None)?;
        let actions = crate::plan::cleanup_observed(&self.spec, &status, &seen.observed, Timestamp::now());
        match act::carry_out(self, ctx, &actions, act::Mode::Cleanup).await {
            Ok(()) => {}
            Err(act::Stopped::NotLeader) => return Err(Error::NotLeader),
            Err(act::Stopped::Failed(failure)) => {
                act::report_failure(self, ctx, &status, &failure).await?;
                return Err(Error::Action(failure.message()));
            }
        }
        let key = (self.namespace().unwrap_or_default(), self.name_any());
        ctx.hooks.forget(&key);
        ctx.engine.want(key, None);
        tracing::info!("policy deleted: traffic and scaling restored");
        crate::failpoint!("after-cleanup");
        Ok(Requeue::await_change())
    }

    /// One pass of the pipeline. Idempotent: every step can be repeated after a crash at any point.
    async fn reconcile(&self, ctx: &Context) -> Result<Requeue> {
        let key: Key = (self.namespace().unwrap_or_default(), self.name_any());
        let fresh = observe::Fresh::read_if_recording(&ctx.client, self).await?;
        let command = commands::next(ctx, self).await?;
        let mut seen = observe::observe(&ctx.caches, self, ctx.engine.latest(&key), fresh)?;
        seen.observed.command = command.as_ref().map(|c| c.command.clone());
        seen.observed.hooks = ctx.hooks.latest(&key);
        let current = self.status.clone().unwrap_or_default();
        let mut plan = plan(&self.spec, &current, &seen.observed, Timestamp::now());
        match act::carry_out(self, ctx, &plan.actions, act::Mode::Reconcile).await {
            Ok(()) => {}
            Err(act::Stopped::NotLeader) => return Err(Error::NotLeader),
            Err(act::Stopped::Failed(failure)) => {
                // The plan did not happen: say what failed, keep the status it started from, retry later.
                act::report_failure(self, ctx, &current, &failure).await?;
                return Err(Error::Action(failure.message()));
            }
        }
        act::mark_synced(&mut plan.status, self.metadata.generation);
        let (wanted, fire) = hooks::addressed(
            &ctx.client,
            &ctx.options.secrets_namespace,
            self,
            &seen.versions,
            &mut plan,
        )
        .await;
        if plan.status != current {
            act::write_status(self, ctx, &plan.status).await?;
            // Only transitions that are recorded are announced.
            ctx.hooks.fire(&key, fire);
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
        ctx.hooks.want(key.clone(), wanted);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn object(progress_deadline: &str) -> DynamicObject {
        serde_json::from_value(json!({
            "apiVersion": "canaryd.io/v1alpha1", "kind": "RolloutPolicy",
            "metadata": {"name": "p", "namespace": "dev", "resourceVersion": "1"},
            "spec": {
                "service": "app", "virtualServices": [{"name": "app"}], "destinationRule": "app",
                "stable": {"subset": "v1", "deployment": "app-v1"},
                "steps": [{"weight": 100}], "progressDeadline": progress_deadline,
            },
            "status": {"phase": "Progressing"},
        }))
        .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn decode_names_the_field_that_keeps_a_policy_unreadable() {
        let good = decode(&object("10m")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(good.spec.progress_deadline, Duration::from_secs(600));
        assert_eq!(good.status.map(|s| s.phase), Some(Phase::Progressing));
        let bad = decode(&object("99999999999999999999s")).err();
        assert!(
            bad.as_ref().is_some_and(|e| e.field == "spec.progressDeadline"),
            "{bad:?}"
        );
    }

    #[test]
    fn deployments_are_matched_on_the_raw_object() {
        let p = object("10m");
        assert!(names_deployment(&p, "app-v1"));
        assert!(!names_deployment(&p, "app-v2"));
    }
}
