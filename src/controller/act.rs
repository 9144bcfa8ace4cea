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
use crate::resources::policy::{Condition, Phase, RolloutPolicy, RolloutPolicyStatus};
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
    /// The API answered no (a 4xx: gone, forbidden, conflicting, refused by admission): the same
    /// write will not go through until someone changes something. Otherwise (5xx, timeout, no
    /// answer) it may on the next attempt.
    pub refused: bool,
}

impl Failure {
    fn new(action: String, object: String, error: &Error) -> Self {
        let (answer, gone) = answer(error);
        Failure {
            action,
            object,
            answer: truncate(&answer, 300),
            gone,
            refused: refused(error),
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

/// Whether the API refused the write (see [`Failure::refused`]). 408 and 429 say "later", not no.
fn refused(error: &Error) -> bool {
    match error {
        Error::Kube(kube::Error::Api(s)) | Error::Scale(ScaleError::Kube(kube::Error::Api(s))) => {
            (400..500).contains(&s.code) && !matches!(s.code, 408 | 429)
        }
        Error::Scale(ScaleError::Kube(_)) => false,
        // Gave up after conflicts, an HPA missing or scaling something else: answers, not outages.
        Error::Scale(_) => true,
        _ => false,
    }
}

/// Why the actions are carried out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A step forward: the first failure stops the rest (later actions assume the earlier ones
    /// happened) and the plan's status is not written.
    Reconcile,
    /// A plan that sends traffic back to stable (rollback, abort, progress deadline): a capacity
    /// write the API refuses is reported and skipped, so it can block neither the weights nor the
    /// record of the rollback. A failed weight write still stops it: the status stays `RollingBack`
    /// (written by the pass before) and the next reconcile tries again.
    Safety,
    /// The finalizer: an object that is gone has nothing to restore; a refused capacity write is
    /// reported and skipped as in `Safety`.
    Cleanup,
}

impl Mode {
    /// The mode for a plan whose next status is `status`: a halted canary (`RollingBack`, then
    /// `RolledBack`/`Aborted`) means the plan moves traffic toward safety.
    pub fn for_plan(status: &RolloutPolicyStatus) -> Mode {
        let halted = status.canary.as_ref().is_some_and(|c| c.halted.is_some());
        if halted || status.phase == Phase::RollingBack {
            Mode::Safety
        } else {
            Mode::Reconcile
        }
    }
}

/// What a failed side effect does to the rest of the plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// Nothing was there to change (cleanup of a gone object): go on, nothing to report.
    Ignore,
    /// Report it and go on with the rest of the plan.
    Skip,
    /// Stop here: the plan did not happen.
    Stop,
}

/// Which failures may be skipped. Only capacity writes (HPA bounds, replicas), only when refused,
/// and only in a plan toward safety: traffic going back to stable does not need them, and a
/// transient failure is retried with the whole plan instead (a skipped restore is not retried).
fn verdict(mode: Mode, capacity: bool, failure: &Failure) -> Verdict {
    match mode {
        Mode::Cleanup if failure.gone => Verdict::Ignore,
        Mode::Safety | Mode::Cleanup if capacity && failure.refused => Verdict::Skip,
        _ => Verdict::Stop,
    }
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

/// Carry out the planner's actions in order. A failure stops the rest unless [`verdict`] lets it
/// be skipped: later actions (HPA changes, a scale-down, Events that announce a step) assume the
/// earlier ones happened. A weight write goes on to the other VirtualServices first, so traffic
/// moves where it can. Events are best effort: a lost Event must not stop traffic from moving back
/// to stable. Ok: the failures skipped, to report.
pub async fn carry_out(
    policy: &RolloutPolicy,
    ctx: &Context,
    actions: &[Action],
    mode: Mode,
) -> Result<Vec<Failure>, Stopped> {
    let ns = policy.namespace().unwrap_or_default();
    let fqdn = policy.spec.service_fqdn(&ns);
    let mut skipped = Vec::new();
    let mut tolerate = |f: Failure, capacity: bool| -> Result<(), Failure> {
        match verdict(mode, capacity, &f) {
            Verdict::Ignore => {
                info!(object = %f.object, answer = %f.answer, "nothing to restore: {}", f.action);
                Ok(())
            }
            Verdict::Skip => {
                warn!(object = %f.object, answer = %f.answer, "skipped, the rest goes on: {}", f.action);
                skipped.push(f);
                Ok(())
            }
            Verdict::Stop => Err(f),
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
                        &ctx.leader,
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
                        Err(Error::NotLeader) => return Err(Stopped::NotLeader),
                        Err(e) => {
                            let what = match canary {
                                Some(c) => format!(
                                    "setting weights {stable} {}% / {c} {canary_weight}%",
                                    100 - canary_weight
                                ),
                                None => format!("setting weights {stable} 100%"),
                            };
                            let f = Failure::new(what, format!("VirtualService {vs_ns}/{name}"), &e);
                            if let Err(f) = tolerate(f, false) {
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
                match crate::scale::hpa::set_bounds(&ctx.client, &ctx.leader, &ns, hpa, *bounds).await {
                    Ok(WriteOutcome::Written) => {
                        info!(hpa = %hpa, min = ?bounds.min_replicas, max = bounds.max_replicas, "HPA bounds set")
                    }
                    Ok(WriteOutcome::Unchanged) => {}
                    Err(ScaleError::NotLeader) => return Err(Stopped::NotLeader),
                    Err(e) => tolerate(
                        Failure::new(
                            format!(
                                "setting minReplicas {} maxReplicas {}",
                                bounds.effective_min(),
                                bounds.max_replicas
                            ),
                            format!("HorizontalPodAutoscaler {ns}/{hpa}"),
                            &Error::Scale(e),
                        ),
                        true,
                    )?,
                }
                crate::failpoint!(
                    "after-hpa-bounds",
                    format!("{hpa}/{}", bounds.min_replicas.unwrap_or(1))
                );
            }
            Action::SetReplicas { deployment, replicas } => {
                crate::failpoint!("before-replicas", format!("{deployment}/{replicas}"));
                match crate::scale::hpa::set_replicas(&ctx.client, &ctx.leader, &ns, deployment, *replicas).await {
                    Ok(WriteOutcome::Written) => info!(deployment = %deployment, replicas, "replicas set"),
                    Ok(WriteOutcome::Unchanged) => {}
                    Err(ScaleError::NotLeader) => return Err(Stopped::NotLeader),
                    Err(e) => tolerate(
                        Failure::new(
                            format!("setting replicas {replicas}"),
                            format!("Deployment {ns}/{deployment}"),
                            &Error::Scale(e),
                        ),
                        true,
                    )?,
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
    Ok(skipped)
}

async fn publish(policy: &RolloutPolicy, ctx: &Context, type_: KubeEventType, reason: &str, message: &str) {
    if !ctx.leader.may_write() {
        return;
    }
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

/// Capacity writes refused in a plan toward safety, which went on without them: `Synced` False
/// (`ActionFailed`) in the status about to be written, and a Warning Event (`ActionSkipped`: the
/// recorder folds repeats of one reason into the first Event's note) once per distinct failure.
/// The restore they would have made is not retried: the Event says what to fix by hand.
pub async fn report_skipped(
    policy: &RolloutPolicy,
    ctx: &Context,
    status: &mut RolloutPolicyStatus,
    skipped: &[Failure],
) {
    let failed: Vec<String> = skipped.iter().map(Failure::message).collect();
    let message = format!("{}; skipped: traffic goes back to stable without it", failed.join("; "));
    warn!(policy = %policy.name_any(), "{message}");
    if set_synced(status, false, "ActionFailed", &message, policy.metadata.generation) {
        publish(policy, ctx, KubeEventType::Warning, "ActionSkipped", &message).await;
    }
}

/// Capacity writes refused while a deleted policy is cleaned up: one Warning Event naming them
/// (the policy and its status go with the finalizer, the Event stays).
pub async fn report_cleanup_skipped(policy: &RolloutPolicy, ctx: &Context, skipped: &[Failure]) {
    if skipped.is_empty() {
        return;
    }
    let failed: Vec<String> = skipped.iter().map(Failure::message).collect();
    let message = format!("{}; skipped: the policy is deleted without it", failed.join("; "));
    warn!(policy = %policy.name_any(), "{message}");
    publish(policy, ctx, KubeEventType::Warning, "ActionSkipped", &message).await;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::policy::CanaryStatus;

    fn api(code: u16) -> Error {
        Error::Kube(kube::Error::Api(
            kube::core::Status::failure("no", "Refused").with_code(code).boxed(),
        ))
    }

    fn scale_api(code: u16) -> Error {
        Error::Scale(ScaleError::Kube(kube::Error::Api(
            kube::core::Status::failure("no", "Refused").with_code(code).boxed(),
        )))
    }

    fn failure(error: &Error) -> Failure {
        Failure::new(
            "setting minReplicas 1 maxReplicas 10".into(),
            "HPA dev/app".into(),
            error,
        )
    }

    #[test]
    fn refused_means_the_api_answered_no() {
        for code in [400, 403, 404, 409, 422] {
            assert!(failure(&api(code)).refused, "{code}");
            assert!(failure(&scale_api(code)).refused, "{code}");
        }
        for code in [408, 429, 500, 503] {
            assert!(!failure(&api(code)).refused, "{code}");
            assert!(!failure(&scale_api(code)).refused, "{code}");
        }
        let gave_up = Error::Scale(ScaleError::Conflict {
            kind: "HorizontalPodAutoscaler",
            namespace: "dev".into(),
            name: "app".into(),
            attempts: 5,
        });
        assert!(failure(&gave_up).refused);
        assert!(!failure(&Error::NotLeader).refused);
        assert!(failure(&api(404)).gone && !failure(&api(403)).gone);
    }

    #[test]
    fn only_refused_capacity_writes_are_skipped_and_only_toward_safety() {
        use Verdict::*;
        let gone = failure(&api(404));
        let forbidden = failure(&api(403));
        let admission = failure(&api(422));
        let outage = failure(&api(503));
        // (mode, capacity write, failure, verdict)
        let rows = [
            (Mode::Reconcile, true, &gone, Stop),
            (Mode::Reconcile, true, &forbidden, Stop),
            (Mode::Reconcile, false, &admission, Stop),
            (Mode::Safety, true, &gone, Skip),
            (Mode::Safety, true, &forbidden, Skip),
            (Mode::Safety, true, &admission, Skip),
            (Mode::Safety, true, &outage, Stop),
            // A weight write toward stable that fails keeps RollingBack, retried.
            (Mode::Safety, false, &forbidden, Stop),
            (Mode::Safety, false, &gone, Stop),
            (Mode::Cleanup, true, &gone, Ignore),
            (Mode::Cleanup, false, &gone, Ignore),
            (Mode::Cleanup, true, &admission, Skip),
            (Mode::Cleanup, true, &outage, Stop),
            (Mode::Cleanup, false, &forbidden, Stop),
        ];
        for (mode, capacity, f, want) in rows {
            assert_eq!(
                verdict(mode, capacity, f),
                want,
                "{mode:?} capacity={capacity} {}",
                f.answer
            );
        }
    }

    #[test]
    fn a_halted_canary_makes_a_plan_toward_safety() {
        let mut status = RolloutPolicyStatus {
            phase: Phase::Progressing,
            canary: Some(CanaryStatus {
                subset: "v2".into(),
                deployment: "app-v2".into(),
                template_hash: "h".into(),
                halted: None,
                ..Default::default()
            }),
            ..RolloutPolicyStatus::default()
        };
        assert_eq!(Mode::for_plan(&status), Mode::Reconcile);
        for (phase, halted) in [
            (Phase::RollingBack, Phase::RolledBack),
            (Phase::RollingBack, Phase::Aborted),
            (Phase::RolledBack, Phase::RolledBack),
            (Phase::Aborted, Phase::Aborted),
        ] {
            status.phase = phase;
            if let Some(c) = status.canary.as_mut() {
                c.halted = Some(halted);
            }
            assert_eq!(Mode::for_plan(&status), Mode::Safety, "{phase:?}");
        }
        status.canary = None;
        status.phase = Phase::Healthy;
        assert_eq!(Mode::for_plan(&status), Mode::Reconcile);
    }
}
