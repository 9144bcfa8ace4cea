//! Act: carry out the planner's side effects, then write status. Each write is optimistic.

use kube::api::{Api, PostParams};
use kube::runtime::events::{Event, EventType as KubeEventType};
use kube::{Resource, ResourceExt};
use tracing::{info, warn};

use super::Context;
use super::observe::vs_refs;
use crate::error::{Error, Result};
use crate::mesh::istio::set_weights;
use crate::plan::{Action, EventType};
use crate::policy::types::{Condition, RolloutPolicy, RolloutPolicyStatus};
use crate::scale::hpa::ScaleError;
use crate::write::WriteOutcome;

/// A side effect the API refused: which action, on which object, and the API's answer (its code,
/// reason and message: no request, no credentials).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub action: String,
    pub object: String,
    pub answer: String,
    /// The object is gone (404), or no longer has what canaryd manages in it.
    pub gone: bool,
}

impl Failure {
    fn new(action: String, object: String, error: &Error) -> Self {
        let (answer, gone) = answer(error);
        Failure {
            action,
            object,
            answer: truncate(&answer, 300),
            gone,
        }
    }

    pub fn message(&self) -> String {
        format!("{} failed on {}: {}", self.action, self.object, self.answer)
    }
}

/// The API's answer, short; and whether it says the object (or what we manage in it) is gone.
fn answer(error: &Error) -> (String, bool) {
    let api = match error {
        Error::Kube(kube::Error::Api(s)) => Some(s),
        Error::Scale(ScaleError::Kube(kube::Error::Api(s))) => Some(s),
        _ => None,
    };
    match api {
        Some(s) => (format!("{} {}: {}", s.code, s.reason, s.message), s.code == 404),
        None => (error.to_string(), matches!(error, Error::Mesh { .. })),
    }
}

/// Why the actions are carried out: a reconcile stops at the first failure; the finalizer takes
/// an object that is gone as nothing to restore and goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Reconcile,
    Cleanup,
}

/// Why `carry_out` stopped before the end.
#[derive(Debug)]
pub enum Stopped {
    /// This replica's renew deadline passed: it must not write (nothing to report, it is not leading).
    NotLeader,
    /// The API refused a side effect: reported in status and an Event.
    Failed(Failure),
}

impl From<Failure> for Stopped {
    fn from(f: Failure) -> Self {
        Stopped::Failed(f)
    }
}

/// Carry out the planner's actions in order. The first failure stops the rest: later actions
/// (HPA changes, a scale-down, Events that announce a step) assume the earlier ones happened. Only
/// a weight write goes on to the other VirtualServices first, so traffic moves where it can.
/// Events are best effort: a lost Event must not stop traffic from moving back to stable.
pub async fn carry_out(policy: &RolloutPolicy, ctx: &Context, actions: &[Action], mode: Mode) -> Result<(), Stopped> {
    let ns = policy.namespace().unwrap_or_default();
    let fqdn = policy.spec.service_fqdn(&ns);
    // In cleanup, a gone object has nothing to restore.
    let tolerate = |f: Failure| -> Result<(), Failure> {
        if mode == Mode::Cleanup && f.gone {
            info!(object = %f.object, answer = %f.answer, "nothing to restore: {}", f.action);
            Ok(())
        } else {
            Err(f)
        }
    };
    for action in actions {
        if !ctx.leader.may_write() {
            return Err(Stopped::NotLeader);
        }
        match action {
            Action::SetWeights {
                stable,
                canary,
                canary_weight,
            } => {
                let mut failed = None;
                for (vs_ns, name, routes) in vs_refs(policy) {
                    crate::failpoint!("before-weights", canary_weight);
                    let outcome = set_weights(
                        &ctx.client,
                        &vs_ns,
                        &name,
                        &fqdn,
                        routes.as_deref(),
                        stable,
                        canary.as_deref(),
                        *canary_weight,
                    )
                    .await;
                    crate::failpoint!("after-weights", canary_weight);
                    match outcome {
                        Ok(WriteOutcome::Written) => {
                            info!(vs = %format!("{vs_ns}/{name}"), stable = %stable, canary = ?canary, canary_weight, "weights set");
                            ctx.metrics.weight_changes.inc();
                        }
                        Ok(WriteOutcome::Unchanged) => {}
                        Err(e) => {
                            let what = match canary {
                                Some(c) => format!(
                                    "setting weights {stable} {}% / {c} {canary_weight}%",
                                    100 - canary_weight
                                ),
                                None => format!("setting weights {stable} 100%"),
                            };
                            let f = Failure::new(what, format!("VirtualService {vs_ns}/{name}"), &e);
                            if let Err(f) = tolerate(f) {
                                failed.get_or_insert(f);
                            }
                        }
                    }
                }
                if let Some(f) = failed {
                    return Err(Stopped::Failed(f));
                }
            }
            Action::SetHpaBounds { hpa, bounds } => {
                crate::failpoint!(
                    "before-hpa-bounds",
                    format!("{hpa}/{}", bounds.min_replicas.unwrap_or(1))
                );
                match crate::scale::hpa::set_bounds(&ctx.client, &ns, hpa, *bounds).await {
                    Ok(WriteOutcome::Written) => {
                        info!(hpa = %hpa, min = ?bounds.min_replicas, max = bounds.max_replicas, "HPA bounds set")
                    }
                    Ok(WriteOutcome::Unchanged) => {}
                    Err(e) => tolerate(Failure::new(
                        format!(
                            "setting minReplicas {} maxReplicas {}",
                            bounds.effective_min(),
                            bounds.max_replicas
                        ),
                        format!("HorizontalPodAutoscaler {ns}/{hpa}"),
                        &Error::Scale(e),
                    ))?,
                }
                crate::failpoint!(
                    "after-hpa-bounds",
                    format!("{hpa}/{}", bounds.min_replicas.unwrap_or(1))
                );
            }
            Action::SetReplicas { deployment, replicas } => {
                crate::failpoint!("before-replicas", format!("{deployment}/{replicas}"));
                match crate::scale::hpa::set_replicas(&ctx.client, &ns, deployment, *replicas).await {
                    Ok(WriteOutcome::Written) => info!(deployment = %deployment, replicas, "replicas set"),
                    Ok(WriteOutcome::Unchanged) => {}
                    Err(e) => tolerate(Failure::new(
                        format!("setting replicas {replicas}"),
                        format!("Deployment {ns}/{deployment}"),
                        &Error::Scale(e),
                    ))?,
                }
                crate::failpoint!("after-replicas", format!("{deployment}/{replicas}"));
            }
            Action::Event { type_, reason, message } => {
                let type_ = match type_ {
                    EventType::Normal => KubeEventType::Normal,
                    EventType::Warning => KubeEventType::Warning,
                };
                crate::failpoint!("before-event", reason);
                publish(policy, ctx, type_, reason, message).await;
                crate::failpoint!("after-event", reason);
            }
        }
    }
    Ok(())
}

async fn publish(policy: &RolloutPolicy, ctx: &Context, type_: KubeEventType, reason: &str, message: &str) {
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(truncate(message, 1000)),
        action: "Reconcile".into(),
        secondary: None,
    };
    info!(reason = %reason, "{message}");
    if let Err(e) = ctx.recorder.publish(&event, &policy.object_ref(&())).await {
        warn!(error = %e, reason = %reason, "could not publish event");
    }
}

/// The condition that says whether the last side effects went through.
pub const SYNCED: &str = "Synced";

/// Say what failed: the `Synced` condition (False, `ActionFailed`) in status and a Warning Event,
/// once per distinct failure. The rest of the status stays as it was: the plan did not happen.
pub async fn report_failure(
    policy: &RolloutPolicy,
    ctx: &Context,
    current: &RolloutPolicyStatus,
    failure: &Failure,
) -> Result<()> {
    let message = failure.message();
    warn!(policy = %policy.name_any(), "{message}");
    let mut status = current.clone();
    if !set_synced(&mut status, false, "ActionFailed", &message, policy.metadata.generation) {
        return Ok(());
    }
    write_status(policy, ctx, &status).await?;
    publish(policy, ctx, KubeEventType::Warning, "ActionFailed", &message).await;
    Ok(())
}

/// After a reconcile whose side effects all went through: a `Synced` False becomes True.
pub fn mark_synced(status: &mut RolloutPolicyStatus, generation: Option<i64>) {
    if status
        .conditions
        .iter()
        .any(|c| c.type_ == SYNCED && c.status != "True")
    {
        set_synced(
            status,
            true,
            "ActionsApplied",
            "the last side effects went through",
            generation,
        );
    }
}

/// Set the `Synced` condition; false when it already says exactly that.
fn set_synced(
    status: &mut RolloutPolicyStatus,
    ok: bool,
    reason: &str,
    message: &str,
    generation: Option<i64>,
) -> bool {
    let value = if ok { "True" } else { "False" };
    let now = jiff::Timestamp::now();
    match status.conditions.iter_mut().find(|c| c.type_ == SYNCED) {
        Some(c) if c.status == value && c.reason == reason && c.message == message => false,
        Some(c) => {
            if c.status != value {
                c.last_transition_time = now;
            }
            c.status = value.into();
            c.reason = reason.into();
            c.message = message.into();
            c.observed_generation = generation;
            true
        }
        None => {
            status.conditions.push(Condition {
                type_: SYNCED.into(),
                status: value.into(),
                reason: reason.into(),
                message: message.into(),
                last_transition_time: now,
                observed_generation: generation,
            });
            true
        }
    }
}

/// Replace the status subresource, conditional on the resourceVersion we read: a concurrent change
/// (a command, a spec edit) makes this fail, and the next reconcile starts from the fresh object.
pub async fn write_status(policy: &RolloutPolicy, ctx: &Context, status: &RolloutPolicyStatus) -> Result<()> {
    ctx.leader.check()?;
    let ns = policy.namespace().unwrap_or_default();
    let api: Api<RolloutPolicy> = Api::namespaced(ctx.client.clone(), &ns);
    let mut updated = policy.clone();
    updated.metadata.managed_fields = None;
    updated.status = Some(status.clone());
    crate::failpoint!(
        "before-status",
        format!("{}/{}", status.phase.as_str(), status.canary_weight)
    );
    match api
        .replace_status(&policy.name_any(), &PostParams::default(), &updated)
        .await
    {
        Ok(_) => {
            let key = (ns, policy.name_any());
            ctx.superseded.record(&key, policy.metadata.resource_version.as_deref());
            crate::failpoint!(
                "after-status",
                format!("{}/{}", status.phase.as_str(), status.canary_weight)
            );
            Ok(())
        }
        Err(kube::Error::Api(s)) if s.code == 409 => Err(Error::Conflict(policy.name_any())),
        Err(e) => Err(e.into()),
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}
