//! Controller glue: watch RolloutPolicies (and the Deployments they name), and run the pipeline
//! observe → plan → act → status for each.

mod act;
mod analysis;
mod commands;
mod hooks;
pub mod leader;
pub mod observe;
mod superseded;
pub mod tenancy;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::channel::mpsc::{UnboundedReceiver, UnboundedSender};
use jiff::Timestamp;
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Patch, PatchParams};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{Action as Requeue, Controller};
use kube::runtime::events::{Event as KubeEvent, EventType as KubeEventType, Recorder, Reporter};
use kube::runtime::finalizer::{Error as FinalizerError, Event as FinalizerEvent, finalizer};
use kube::runtime::reflector::{self, ObjectRef, store::Writer};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::{Value, json};
use tracing::{Instrument, info_span, warn};

use crate::cache::slim::{DecodeError, SlimPolicy, decode};
use crate::cache::{self, Caches};
use crate::error::{Error, Result};
use crate::fence::LeaderGuard;
use crate::health::{Health, RESYNC};
use crate::hooks::runner::Runner;
use crate::metrics::Metrics;
use crate::plan::{Action, plan};
use crate::prometheus::engine::{Engine, Key};
use crate::resources::policy::Phase;
use crate::resources::policy::RolloutPolicy;

const ERROR_BACKOFF: Duration = Duration::from_secs(5);

/// When the cached policy is one this daemon already wrote over: look again if the watch is slow.
const STALE_RETRY: Duration = Duration::from_secs(2);

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
    pub caches: Caches,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    pub engine: Arc<Engine>,
    /// Calls the policies' webhooks.
    pub hooks: Arc<Runner>,
    /// Checked before every write: false once this replica may have lost the Lease.
    pub leader: LeaderGuard,
    pub health: Arc<Health>,
    /// Policy versions this daemon wrote over, until the cache catches up.
    pub superseded: superseded::Superseded,
}

/// Wakes a policy out of turn: the analysis engine when a check of it is done, the command cache
/// when a command for it arrives.
pub fn wake_channel() -> (UnboundedSender<Key>, UnboundedReceiver<Key>) {
    futures::channel::mpsc::unbounded()
}

/// What the daemon starts before it leads: caches fill on a standby too, so it takes over warm.
pub struct Parts {
    /// Started by [`cache::Caches::start`] with `wake`.
    pub caches: Caches,
    pub wake: UnboundedSender<Key>,
    pub woken: UnboundedReceiver<Key>,
    /// Every write is checked against it.
    pub leader: LeaderGuard,
    pub health: Arc<Health>,
    /// For every request but the policy watch: each has a timeout shorter than the margin the
    /// renew deadline leaves, so no write lands once a standby may lead.
    pub api: Client,
    /// That timeout; also bounds how long a webhook call may take to be sent.
    pub request_timeout: Duration,
    /// The policy cache this controller fills; `main` hands its reader to the notifier.
    pub policies: Writer<SlimPolicy>,
}

/// Who writes canaryd's Events (the pod, when it has a name).
pub fn reporter() -> Reporter {
    Reporter {
        controller: "canaryd".into(),
        instance: std::env::var("POD_NAME").ok(),
    }
}

/// How long after a Deployment's change its policies are woken again, for the object cache's lag.
const CACHE_LAG: Duration = Duration::from_secs(1);

/// Run the controller until SIGTERM/SIGINT, over all namespaces or just one.
pub async fn run(client: Client, metrics: Arc<Metrics>, options: Options, parts: Parts) -> Result<()> {
    let Parts {
        caches,
        wake,
        woken,
        leader,
        health,
        api,
        request_timeout,
        policies: policies_cache,
    } = parts;
    // The policies are listed while the other caches fill; reconciles and the notifier wait for those.
    let namespace = options.namespace.as_deref();
    let (policies, deployments): (Api<SlimPolicy>, Api<PartialObjectMeta<Deployment>>) = match namespace {
        Some(ns) => (Api::namespaced(client.clone(), ns), Api::namespaced(client.clone(), ns)),
        None => (Api::all(client.clone()), Api::all(client.clone())),
    };
    let reporter = reporter();
    let hooks = Arc::new(Runner::new(wake.clone(), leader.clone(), request_timeout)?);
    tokio::spawn(hooks.clone().run());
    let rewake = wake.clone();
    let engine = Arc::new(Engine::new(wake, metrics.clone()));
    tokio::spawn(engine.clone().run());
    let ctx = Arc::new(Context {
        client: api.clone(),
        options: options.clone(),
        caches,
        recorder: Recorder::new(api, reporter.clone()),
        metrics,
        engine,
        hooks,
        leader,
        health: health.clone(),
        superseded: superseded::Superseded::default(),
    });
    // Objects the caches rejected: an Event each (and a refused command), while leading.
    tokio::spawn(ctx.caches.rejections.clone().report(
        ctx.client.clone(),
        Recorder::new(ctx.client.clone(), reporter.clone()),
        ctx.leader.clone(),
    ));
    let store = policies_cache.as_reader();
    let seen = ctx.clone();
    let policy_stream = reflector::reflector(
        policies_cache,
        watcher(policies, watcher::Config::default().any_semantic())
            .backoff(cache::WatchBackoff::default())
            .inspect(move |item| policy_event_seen(&seen, item)),
    )
    .applied_objects();
    spawn_idle_beat(store.clone(), health.clone());
    health.loop_beat();
    let controller = Controller::for_stream(policy_stream, store.clone())
        .with_config(kube::runtime::controller::Config::default().concurrency(CONCURRENCY));
    controller
        // Only the name is read: the metadata of Deployments, not their bodies.
        .watches_stream(
            watcher(deployments, watcher::Config::default().any_semantic())
                .backoff(cache::WatchBackoff::default())
                .filter_map(after_first_list),
            wakes_for_deployment(store, rewake),
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

/// A policy watch event: the watch's health, and what a deleted policy leaves behind.
fn policy_event_seen(ctx: &Context, item: &std::result::Result<watcher::Event<SlimPolicy>, watcher::Error>) {
    ctx.health.watch_item("rolloutpolicies", item);
    // A policy deleted without the finalizer (it never changed anything) is not reconciled
    // again: its series and records go here.
    if let Ok(watcher::Event::Delete(p)) = item {
        let key = (p.namespace().unwrap_or_default(), p.name_any());
        ctx.metrics.forget_policy(&key.0, &key.1);
        ctx.superseded.forget(&key);
    }
}

/// With no policy there is nothing to reconcile: the loop is idle, not stuck.
fn spawn_idle_beat(store: reflector::Store<SlimPolicy>, health: Arc<Health>) {
    tokio::spawn(async move {
        loop {
            if store.is_empty() {
                health.loop_beat();
            }
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
    });
}

/// A Deployment change wakes the policies that name it, and once more after the object cache's lag.
fn wakes_for_deployment(
    store: reflector::Store<SlimPolicy>,
    rewake: UnboundedSender<Key>,
) -> impl Fn(PartialObjectMeta<Deployment>) -> Vec<ObjectRef<SlimPolicy>> {
    move |d: PartialObjectMeta<Deployment>| {
        // A Deployment change wakes the policies that name it.
        let ns = d.namespace();
        let name = d.name_any();
        let refs = store
            .state()
            .into_iter()
            .filter(|p| p.namespace() == ns && p.names_deployment(&name))
            .map(|p| ObjectRef::from_obj(&*p))
            .collect::<Vec<_>>();
        // The reconcile reads the object cache, a watch of its own that may not hold this
        // change yet: look once more when it has had time to (reconciles are idempotent).
        for r in &refs {
            let (tx, key) = (rewake.clone(), (ns.clone().unwrap_or_default(), r.name.clone()));
            tokio::spawn(async move {
                tokio::time::sleep(CACHE_LAG).await;
                let _ = tx.unbounded_send(key);
            });
        }
        refs
    }
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

/// Removed only after the policy's changes are undone (traffic to stable, HPAs restored).
pub const FINALIZER: &str = "canaryd.io/cleanup";

async fn reconcile(obj: Arc<SlimPolicy>, ctx: Arc<Context>) -> Result<Requeue> {
    // Observing reads the caches: nothing is decided before their first list.
    ctx.caches.ready().await?;
    let ns = obj.namespace().unwrap_or_default();
    let key: Key = (ns.clone(), obj.name_any());
    if ctx.superseded.is_stale(&key, obj.metadata.resource_version.as_deref()) {
        // The watch brings the newer object, and a reconcile with it; this one is only a fallback.
        return Ok(Requeue::requeue(STALE_RETRY));
    }
    let span = info_span!("reconcile", policy = %obj.name_any(), namespace = %ns);
    async move {
        let _running = ctx.health.reconcile_started();
        let started = std::time::Instant::now();
        ctx.leader.check()?;
        if !obj.finalizers().iter().any(|f| f == FINALIZER) && obj.metadata.deletion_timestamp.is_none() {
            // Nothing of ours to undo yet: the pass adds the finalizer before its first change.
            let result = match decode(&obj) {
                Ok(p) => p.reconcile(&ctx, false).await,
                Err(e) => report_undecodable(&obj, &ctx, &e).await,
            };
            ctx.metrics
                .observe_reconcile(started.elapsed(), result.as_ref().err().map(Error::category));
            return result;
        }
        // With the finalizer: the helper runs cleanup on deletion, then removes it.
        let api: Api<SlimPolicy> = Api::namespaced(ctx.client.clone(), &ns);
        let result = finalizer(&api, FINALIZER, obj, |event| async {
            match event {
                FinalizerEvent::Apply(o) => match decode(&o) {
                    Ok(p) => p.reconcile(&ctx, true).await,
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

/// Adds the finalizer before the first change canaryd makes for a policy (a policy at rest has
/// nothing to undo, and a fleet of them created at once costs one write each, not two). The JSON
/// patch's test makes a stale cached policy fail (422) rather than drop someone else's finalizer;
/// it is retried at once.
async fn add_finalizer(ctx: &Context, policy: &RolloutPolicy) -> Result<()> {
    let finalizers = policy.finalizers();
    let patch = if finalizers.is_empty() {
        json!([{"op": "test", "path": "/metadata/finalizers", "value": null},
               {"op": "add", "path": "/metadata/finalizers", "value": [FINALIZER]}])
    } else {
        json!([{"op": "test", "path": "/metadata/finalizers", "value": finalizers},
               {"op": "add", "path": "/metadata/finalizers/-", "value": FINALIZER}])
    };
    let patch: json_patch::Patch = serde_json::from_value(patch)?;
    let key = (policy.namespace().unwrap_or_default(), policy.name_any());
    let api: Api<SlimPolicy> = Api::namespaced(ctx.client.clone(), &key.0);
    ctx.leader.check()?;
    match api
        .patch(&key.1, &PatchParams::default(), &Patch::Json::<()>(patch))
        .await
    {
        Ok(_) => {
            ctx.superseded.record(&key, policy.metadata.resource_version.as_deref());
            Ok(())
        }
        Err(kube::Error::Api(s))
            if s.code == 409 || (s.code == 422 && s.details.as_ref().is_none_or(|d| d.causes.is_empty())) =>
        {
            Err(Error::Conflict(s.message))
        }
        Err(e) => Err(e.into()),
    }
}

/// A policy that cannot be decoded: phase Invalid with the field, one Warning Event; others go on.
async fn report_undecodable(obj: &SlimPolicy, ctx: &Context, e: &DecodeError) -> Result<Requeue> {
    // Nothing of what it asked for before runs on: no query, no hook.
    let key = (obj.namespace().unwrap_or_default(), obj.name_any());
    ctx.engine.want(key.clone(), None);
    ctx.hooks.want(key, Vec::new());
    let message = format!("the policy cannot be read: {e}");
    // A status that is not JSON we can read counts as none (it is replaced below).
    let status = obj.status_value().ok().filter(|s| !s.is_null());
    let status = status.as_ref();
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
    let api: Api<SlimPolicy> = Api::namespaced(ctx.client.clone(), &obj.namespace().unwrap_or_default());
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
    if let Err(e) = ctx.recorder.publish(&event, &obj.object_ref(&())).await {
        warn!(error = %e, "could not publish event");
    }
    Ok(Requeue::requeue(RESYNC))
}

fn error_policy(policy: Arc<SlimPolicy>, error: &Error, _ctx: Arc<Context>) -> Requeue {
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
        let cleanup = crate::plan::finalize(&self.spec, &status, &seen.observed, Timestamp::now());
        if let Some(left) = &cleanup.left_alone {
            // Said by an Event among the actions too, before the finalizer goes.
            warn!("policy deleted: {left}");
        }
        match act::carry_out(self, ctx, &cleanup.actions, act::Mode::Cleanup).await {
            Ok(skipped) => act::report_cleanup_skipped(self, ctx, &skipped).await,
            Err(act::Stopped::NotLeader) => return Err(Error::NotLeader),
            Err(act::Stopped::Failed(failure)) => {
                act::report_failure(self, ctx, &status, &failure).await?;
                return Err(Error::Action(failure.message()));
            }
        }
        let key = (self.namespace().unwrap_or_default(), self.name_any());
        ctx.hooks.forget(&key);
        ctx.superseded.forget(&key);
        ctx.metrics.forget_policy(&key.0, &key.1);
        ctx.engine.want(key, None);
        match cleanup.left_alone {
            None => tracing::info!("policy deleted: traffic and scaling restored"),
            Some(_) => tracing::info!("policy deleted: scaling restored, traffic left as it was"),
        }
        crate::failpoint!("after-cleanup");
        Ok(Requeue::await_change())
    }

    /// One pass of the pipeline. Idempotent: every step can be repeated after a crash at any point.
    /// `finalized`: the policy carries the finalizer, so the pass may change the cluster.
    async fn reconcile(&self, ctx: &Context, finalized: bool) -> Result<Requeue> {
        let key: Key = (self.namespace().unwrap_or_default(), self.name_any());
        let fresh = observe::Fresh::read_if_recording(&ctx.client, self).await?;
        let command = commands::next(ctx, self).await?;
        let tokens = tenancy::Tokens::read(&ctx.client, &ctx.options.secrets_namespace, self).await;
        let mut seen = observe::observe(&ctx.caches, self, ctx.engine.latest(&key), fresh)?;
        let refused = tenancy::problems(&ctx.caches, self, &tokens, &ctx.options.secrets_namespace);
        seen.observed.problems.extend(refused);
        seen.observed.command = command.as_ref().map(|c| c.command.clone());
        seen.observed.hooks = ctx.hooks.latest(&key);
        let current = self.status.clone().unwrap_or_default();
        let mut plan = plan(&self.spec, &current, &seen.observed, Timestamp::now());
        if !finalized && plan.actions.iter().any(Action::changes_cluster) {
            add_finalizer(ctx, self).await?;
            // The next pass, from the object with the finalizer, plans again and acts.
            return Ok(Requeue::requeue(Duration::from_millis(50)));
        }
        match act::carry_out(self, ctx, &plan.actions, act::Mode::for_plan(&plan.status)).await {
            Ok(skipped) if skipped.is_empty() => act::mark_synced(&mut plan.status, self.metadata.generation),
            // A rollback went on without refused capacity writes: said in the status it writes.
            Ok(skipped) => act::report_skipped(self, ctx, &mut plan.status, &skipped).await,
            Err(act::Stopped::NotLeader) => return Err(Error::NotLeader),
            Err(act::Stopped::Failed(failure)) => {
                // The plan did not happen: say what failed, keep the status it started from, retry later.
                act::report_failure(self, ctx, &current, &failure).await?;
                return Err(Error::Action(failure.message()));
            }
        }
        let (wanted, fire) = hooks::addressed(
            &tokens,
            ctx.caches.namespace_labels(&key.0).as_ref(),
            &ctx.options.secrets_namespace,
            self,
            &seen.versions,
            &mut plan,
        );
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

    fn object(progress_deadline: &str) -> SlimPolicy {
        crate::cache::slim::policy_from_json(json!({
            "apiVersion": "canaryd.io/v1alpha1", "kind": "RolloutPolicy",
            "metadata": {"name": "p", "namespace": "dev", "resourceVersion": "1"},
            "spec": {
                "service": "app", "virtualServices": [{"name": "app"}], "destinationRule": "app",
                "stable": {"subset": "v1", "deployment": "app-v1"},
                "steps": [{"weight": 100}], "progressDeadline": progress_deadline,
            },
            "status": {"phase": "Progressing"},
        }))
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
        assert!(p.names_deployment("app-v1"));
        assert!(!p.names_deployment("app-v2"));
    }
}
