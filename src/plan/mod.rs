//! The rollout decision: a pure function of (spec, status, observations, now) with no client and no
//! clock. It returns the next status and the few side effects the controller must carry out first.

use crate::resources::reason::Reason;
use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;

use crate::analysis::check::Check;
use crate::policy::validate::validate_spec;
use crate::resources::command::Command;
use crate::resources::policy::{
    AnalysisStatus, CanaryStatus, Condition, Phase, RolloutPolicySpec, RolloutPolicyStatus, Transition, VersionRef,
};
use crate::resources::webhook::{GateStatus, HookAnswer, HookCall};

mod analysis;
mod capacity;
mod commands;
mod declared;
mod finalize;
mod hooks;
mod schedule;
mod stuck;

pub use capacity::{ScaleObserved, VersionScale};
pub use declared::declared_stable;
#[cfg(test)]
mod declared_tests;
pub use finalize::{Cleanup, finalize};
#[cfg(test)]
mod tests;

/// How many transitions `status.history` keeps.
pub const HISTORY_LIMIT: usize = 20;
/// How often to look again while waiting for the canary to become Ready.
pub const READY_POLL: Duration = Duration::from_secs(2);
/// How often to look again while a problem holds the rollout: not every object preflight reads is watched.
pub const INVALID_POLL: Duration = Duration::from_secs(10);

/// A problem found before any traffic moves (preflight), with a condition reason and a message that
/// says what to fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub reason: Reason,
    pub message: String,
}

/// The canary Deployment as observed now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeploymentState {
    /// Stable hash of `.spec.template`: a change restarts the rollout.
    pub template_hash: String,
    /// `.status.observedGeneration >= .metadata.generation`.
    pub generation_observed: bool,
    pub ready_replicas: i32,
}

impl DeploymentState {
    pub fn is_ready(&self) -> bool {
        self.generation_observed && self.ready_replicas >= 1
    }

    /// It has pods that can take traffic now (whatever generation they run).
    pub fn serves(&self) -> bool {
        self.ready_replicas >= 1
    }
}

/// What the world looks like now, as gathered by the controller.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    pub generation: Option<i64>,
    /// Preflight problems other than `canary_problems`: they stop a rollout before it starts and hold
    /// one in progress at its weights (abort and the progress deadline still work; an `Invalid` policy
    /// gets no new analysis checks and calls no hook).
    pub problems: Vec<Problem>,
    /// Preflight problems that say the canary cannot serve (its Deployment missing, its subset gone or
    /// selecting none of its pods): a canary with traffic loses it.
    pub canary_problems: Vec<Problem>,
    /// The Deployment named by `spec.canary`, if it exists.
    pub canary: Option<DeploymentState>,
    /// The stable Deployment, if it exists: no traffic moves toward it while it has no Ready pods.
    pub stable: Option<DeploymentState>,
    /// Replicas and HPAs of both versions (empty when scaling is off).
    pub scaling: ScaleObserved,
    /// Weights by subset, one map per managed route (a destination that is absent weighs 0). Empty when
    /// they could not be read: weights are then unknown, never "as wanted".
    pub routes: Vec<BTreeMap<String, u8>>,
    /// The command in the annotations, if any (handled once per id).
    pub command: Option<Command>,
    /// An annotation that is not a valid command, to report.
    pub command_error: Option<String>,
    /// The newest analysis check of this policy's canary, if any.
    pub analysis: Option<Check>,
    /// While a promotion's scale-down is pending: the routes of any VirtualService on the Service's
    /// host that still send the old stable's subset traffic ("VirtualService ns/name http[0] (100%)").
    pub old_stable_routes: Vec<String>,
    /// The newest answer of each webhook (see `HookAnswer::binding`).
    pub hooks: Vec<HookAnswer>,
}

impl Observed {
    /// True when every managed route sends `canary_weight` to `canary` and the rest to `stable`; false
    /// when the routes are unknown.
    fn weights_are(&self, stable: &str, canary: Option<&str>, canary_weight: u8) -> bool {
        !self.routes.is_empty()
            && self.routes.iter().all(|route| {
                route.iter().all(|(subset, &w)| {
                    if Some(subset.as_str()) == canary {
                        w == canary_weight
                    } else if subset == stable {
                        w == 100 - canary_weight
                    } else {
                        w == 0
                    }
                }) && route.contains_key(stable)
                    && (canary_weight == 0 || canary.is_some_and(|c| route.contains_key(c)))
            })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Normal,
    Warning,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// In every managed route: `canary` gets `canary_weight`, `stable` the rest, any other subset of
    /// the Service 0.
    SetWeights {
        stable: String,
        canary: Option<String>,
        canary_weight: u8,
    },
    Event {
        type_: EventType,
        reason: String,
        message: String,
    },
    /// Set an HPA's minReplicas/maxReplicas (nothing else of it).
    SetHpaBounds {
        hpa: String,
        bounds: crate::replicas::Bounds,
    },
    /// Set a Deployment's replicas (versions without an HPA; the old stable after promotion).
    SetReplicas { deployment: String, replicas: i32 },
}

impl Action {
    /// Everything but an Event changes what the cluster runs or routes (and is undone on deletion).
    pub fn changes_cluster(&self) -> bool {
        !matches!(self, Action::Event { .. })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub status: RolloutPolicyStatus,
    /// Carried out in order, before the status is written.
    pub actions: Vec<Action>,
    /// When to look again even if nothing changes.
    pub requeue: Option<Duration>,
    /// The webhooks to keep asking (replaces what was wanted before).
    pub hooks: Vec<HookCall>,
    /// Fire-and-forget calls (event, post-rollout), in order, once the status is written.
    pub fire: Vec<HookCall>,
}

/// Decide the next step of the rollout.
pub fn plan(spec: &RolloutPolicySpec, current: &RolloutPolicyStatus, obs: &Observed, now: Timestamp) -> Plan {
    let mut p = Planner {
        spec,
        obs,
        now,
        st: current.clone(),
        actions: Vec::new(),
        requeue: None,
        input_scaling: current.scaling.is_some(),
        halted_now: false,
        prior_gate: None,
        wanted_hooks: Vec::new(),
        fire: Vec::new(),
    };
    p.run();
    if p.st.phase == Phase::Invalid {
        // A refused spec (or one naming what its namespace may not use) calls no hook at all.
        p.wanted_hooks.clear();
        p.fire.clear();
    }
    let hooks = p.wanted_calls();
    Plan {
        status: p.st,
        actions: p.actions,
        requeue: p.requeue,
        hooks,
        fire: p.fire,
    }
}

/// What to undo when the policy is deleted: traffic back to stable if a rollout is in progress,
/// and every HPA and replica count canaryd changed back to what it was.
pub fn cleanup(spec: &RolloutPolicySpec, current: &RolloutPolicyStatus, now: Timestamp) -> Vec<Action> {
    cleanup_observed(spec, current, &Observed::default(), now)
}

/// [`cleanup`] given what is left: an HPA already gone has nothing to restore, and a bound someone
/// changed during the rollout is left alone.
pub fn cleanup_observed(
    spec: &RolloutPolicySpec,
    current: &RolloutPolicyStatus,
    obs: &Observed,
    now: Timestamp,
) -> Vec<Action> {
    let mut p = Planner {
        spec,
        obs,
        now,
        st: current.clone(),
        actions: Vec::new(),
        requeue: None,
        input_scaling: current.scaling.is_some(),
        halted_now: false,
        prior_gate: None,
        wanted_hooks: Vec::new(),
        fire: Vec::new(),
    };
    // Only to a version the spec names (see `declared_stable`).
    let stable = declared_stable(spec, current);
    let undeclared = current.stable.as_ref().is_some_and(|s| *s != stable);
    // A rollback recorded as RollingBack may not have moved the weights yet.
    let in_progress =
        current.canary.as_ref().is_some_and(|c| c.halted.is_none()) || current.phase == Phase::RollingBack;
    // Whether the declared stable can take the traffic is `finalize`'s rule, not this one's.
    if in_progress || (undeclared && !obs.weights_are(&stable.subset, None, 0)) {
        p.send_all_to_stable(&stable);
    }
    p.cleanup_scaling();
    p.actions
}

struct Planner<'a> {
    spec: &'a RolloutPolicySpec,
    obs: &'a Observed,
    now: Timestamp,
    st: RolloutPolicyStatus,
    actions: Vec<Action>,
    requeue: Option<Duration>,
    /// Scaling was recorded in the status this reconcile started from.
    input_scaling: bool,
    /// A rollback or abort was decided in this reconcile: it ends with the record, no traffic moves.
    halted_now: bool,
    /// `status.gate` as this reconcile found it (to keep its `since`).
    prior_gate: Option<GateStatus>,
    wanted_hooks: Vec<hooks::Wanted>,
    fire: Vec<HookCall>,
}

/// Whether the step walk goes on in this reconcile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    Continue,
    Stop,
}

/// Reasons whose Events are Warnings whatever the phase.
const WARNING_REASONS: [Reason; 2] = [Reason::StableNotReady, Reason::CanaryUnavailable];

impl Planner<'_> {
    fn run(&mut self) {
        self.st.observed_generation = self.obs.generation;
        self.st.schedule = None; // set again by a schedule hold in this pass
        self.prior_gate = self.st.gate.take();
        let stable = declared_stable(self.spec, &self.st);
        if let Some(err) = &self.obs.command_error {
            self.event(EventType::Warning, "InvalidCommand", err.clone());
        }
        if let Some(recorded) = self.st.stable.clone()
            && recorded != stable
        {
            return self.change_stable(&recorded, &stable);
        }
        self.st.stable = Some(stable.clone());

        let desired = self.spec.canary.clone().filter(|c| c.subset != stable.subset);
        let (problems, canary_problems) = self.problems(desired.as_ref());
        if !problems.is_empty() || !canary_problems.is_empty() {
            return match desired.filter(|d| self.is_ongoing(d)) {
                Some(canary) => self.troubled(&stable, &canary, &problems, &canary_problems),
                None => self.invalid(&[problems, canary_problems].concat()),
            };
        }
        self.set_condition("Ready", true, "PreflightPassed", "all preflight checks pass");

        let Some(desired) = desired else {
            return self.steady(&stable);
        };
        let Some(dep) = self.obs.canary.clone() else {
            return; // `problems` reports a missing canary Deployment
        };
        let identity = identity(&desired, &dep);
        let restarted = !self.is_current(&identity);
        if restarted {
            let previous = self.st.canary.clone();
            self.start(&stable, identity.clone(), previous);
        }

        let promote = self.apply_command(&stable, &identity, None);
        if self.halted_now {
            return;
        }
        if let Some(halted) = self.halted() {
            return self.keep_halted(&stable, &desired, halted);
        }
        if !restarted && self.canary_has_traffic() && !dep.serves() {
            return self.halt(
                Phase::RolledBack,
                Reason::CanaryUnavailable,
                format!(
                    "canary Deployment {} has no Ready pods while it has {}% of the traffic",
                    desired.deployment,
                    self.observed_canary_weight().max(self.st.canary_weight)
                ),
            );
        }
        if self.failing_past_deadline() {
            return;
        }
        self.fold_check();
        if self.judge_analysis(&stable, &desired) || self.watch_hooks() {
            return;
        }
        if self.st.paused && promote.is_none() {
            return self.hold_paused(&stable, &desired);
        }
        self.walk(&stable, &desired, &dep, promote);
    }

    /// Spec errors and preflight problems, split into (the rest, those saying the canary cannot serve).
    fn problems(&self, desired: Option<&VersionRef>) -> (Vec<Problem>, Vec<Problem>) {
        let problems = self.spec_and_preflight_problems();
        let mut canary = self.obs.canary_problems.clone();
        if let Some(d) = desired
            && self.obs.canary.is_none()
            && canary.is_empty()
        {
            // Preflight names a missing Deployment; this guards against an incomplete observation.
            canary.push(Problem {
                reason: Reason::CanaryDeploymentNotFound,
                message: format!("canary Deployment {} not found", d.deployment),
            });
        }
        (problems, canary)
    }

    /// Spec errors and the preflight problems observed (not those saying the canary cannot serve).
    fn spec_and_preflight_problems(&self) -> Vec<Problem> {
        let mut problems: Vec<Problem> = validate_spec(self.spec)
            .into_iter()
            .map(|e| Problem {
                reason: Reason::InvalidSpec,
                message: e.to_string(),
            })
            .collect();
        problems.extend(self.obs.problems.iter().cloned());
        problems
    }

    /// The canary in status is the one the spec names (its template may have changed since).
    fn is_ongoing(&self, desired: &VersionRef) -> bool {
        self.st
            .canary
            .as_ref()
            .is_some_and(|c| c.subset == desired.subset && c.deployment == desired.deployment)
    }

    fn is_current(&self, identity: &CanaryStatus) -> bool {
        self.st.canary.as_ref().is_some_and(|c| {
            c.subset == identity.subset
                && c.deployment == identity.deployment
                && c.template_hash == identity.template_hash
        })
    }

    /// A rollout in progress meets a problem. Abort, a check already in and the progress deadline
    /// still work; a canary that cannot serve loses its traffic; anything else holds the weights where they are.
    fn troubled(
        &mut self,
        stable: &VersionRef,
        canary: &VersionRef,
        problems: &[Problem],
        canary_problems: &[Problem],
    ) {
        let all = [canary_problems, problems].concat();
        let (reason, message) = summary(&all);
        self.set_condition("Ready", false, reason.as_str(), &message);
        if let Some(dep) = self.obs.canary.clone() {
            let identity = identity(canary, &dep);
            if !self.is_current(&identity) {
                // A new pod template is a new canary: its predecessor's traffic goes back first.
                let previous = self.st.canary.clone();
                self.start(stable, identity, previous);
                return self.invalid(&all);
            }
        }
        let Some(mut identity) = self.st.canary.clone() else {
            return;
        };
        identity.halted = None; // what `retry` starts again
        self.apply_command(stable, &identity, Some(&message));
        if self.halted_now {
            return;
        }
        if let Some(halted) = self.halted() {
            return self.keep_halted(stable, canary, halted);
        }
        if !canary_problems.is_empty() && self.canary_has_traffic() {
            let (_, why) = summary(canary_problems);
            return self.halt(
                Phase::RolledBack,
                Reason::CanaryUnavailable,
                format!("canary {} cannot serve: {why}", canary.subset),
            );
        }
        self.fold_check();
        if self.judge_analysis(stable, canary) {
            return;
        }
        // Stuck since the later of the step's start and the problem's appearance.
        let ready_false_since = self
            .st
            .conditions
            .iter()
            .find(|c| c.type_ == "Ready")
            .map(|c| c.last_transition_time)
            .unwrap_or(self.now);
        let since = self
            .st
            .step_started_at
            .map_or(ready_false_since, |s| s.max(ready_false_since));
        let stuck = duration_between(since, self.now);
        if stuck >= self.spec.progress_deadline {
            return self.halt(
                Phase::RolledBack,
                Reason::ProgressDeadlineExceeded,
                format!(
                    "rollout held by a problem for {} (progressDeadline {}): {message}",
                    humantime::format_duration(stuck),
                    humantime::format_duration(self.spec.progress_deadline)
                ),
            );
        }
        self.st.pending_approval = None;
        self.transition(
            Phase::Invalid,
            reason,
            format!(
                "{message}; holding canary {} at {}%",
                canary.subset, self.st.canary_weight
            ),
        );
        self.requeue = Some(INVALID_POLL.min(self.spec.progress_deadline.saturating_sub(stuck)));
    }

    /// `canaryd pause` (or too many inconclusive checks): hold at the current weight.
    fn hold_paused(&mut self, stable: &VersionRef, canary: &VersionRef) {
        self.ensure_current_weights(stable, canary);
        self.st.pending_approval = None;
        // A pause for too many inconclusive checks keeps saying why.
        if self.st.history.last().is_none_or(|t| t.reason != "Inconclusive") {
            self.transition(
                Phase::Paused,
                Reason::Paused,
                "paused by command; `canaryd resume` to go on".into(),
            );
        }
    }

    /// A halted canary gets no traffic. A rollback recorded as `RollingBack` moves the weights now and
    /// then takes its final phase; traffic someone puts back on the canary later returns to stable.
    fn keep_halted(&mut self, stable: &VersionRef, canary: &VersionRef, halted: Phase) {
        self.clear_progressing();
        let rolling_back = self.st.phase == Phase::RollingBack;
        let on_stable = self.obs.weights_are(&stable.subset, Some(&canary.subset), 0);
        if !on_stable && !self.stable_serves() {
            // Sending traffic to zero pods is a certain outage: hold until stable has Ready pods.
            self.requeue = Some(READY_POLL);
            return self.transition(
                Phase::RollingBack,
                Reason::StableNotReady,
                format!(
                    "{halted} recorded, but stable Deployment {} has no Ready pods: canary {} keeps its traffic \
                         until stable has Ready pods (sending traffic to zero pods is a certain outage)",
                    stable.deployment, canary.subset
                ),
            );
        }
        // Finishing a recorded rollback always writes the weights (a no-op when already there).
        if !on_stable || rolling_back {
            self.send_all_to_stable(stable);
        }
        if !rolling_back {
            self.st.phase = halted;
            return;
        }
        // The weights are on stable (or written before this status): finish the recorded rollback.
        let (reason, cause) = self
            .st
            .conditions
            .iter()
            .find(|c| c.type_ == "Progressing")
            .map(|c| (c.reason.clone(), c.message.clone()))
            .unwrap_or_else(|| (halted.as_str().into(), String::new()));
        let canary_gone = self.obs.canary.is_none();
        if canary_gone && let Some(sc) = self.st.scaling.as_mut() {
            // No Deployment left to give its replicas back to (its HPA, if any, is still restored).
            sc.canary = sc.canary.take().filter(|c| c.hpa.is_some());
        }
        self.restore_scaling();
        if halted == Phase::RolledBack
            && !canary_gone
            && self.spec.scaling.enabled
            && self.spec.scaling.scale_down_canary_on_rollback
        {
            self.actions.push(Action::SetReplicas {
                deployment: canary.deployment.clone(),
                replicas: 0,
            });
        }
        self.record(
            halted,
            &reason,
            format!("{cause}; all traffic on stable {}", stable.subset),
        );
    }

    /// Go through the steps from the current one as far as time, readiness and approvals allow.
    fn walk(
        &mut self,
        stable: &VersionRef,
        canary: &VersionRef,
        dep: &DeploymentState,
        mut promote: Option<(bool, String)>,
    ) {
        self.pin_stable();
        if let Some((true, by)) = &promote {
            self.request_full_promotion(by);
            promote = None;
        }
        loop {
            let index = self.st.step.unwrap_or(0) as usize;
            // Past the last step (or steps shortened under us) comes a weight step of 100.
            let weight = match self.spec.steps.get(index) {
                Some(step) => step.weight,
                None => Some(100),
            };
            let flow = match weight {
                Some(weight) => self.weight_step(stable, canary, dep, index, weight),
                None => self.pause_step(stable, canary, index, &mut promote),
            };
            if flow == Flow::Stop {
                return;
            }
        }
    }

    /// `promote --full`: skip the pauses, approvals, the analysis gate and the remaining steps, but not
    /// the canary's capacity and readiness for 100 %. Recorded in status, so it survives waiting.
    fn request_full_promotion(&mut self, by: &str) {
        self.event(
            EventType::Normal,
            "PromotedFull",
            format!("full promotion requested{by}"),
        );
        self.st.paused = false;
        self.st.promote_full = true;
        let end = self.spec.steps.len() as u32;
        if self.st.step.is_none_or(|s| s < end) {
            self.st.step = Some(end);
            self.st.step_started_at = Some(self.now);
        }
    }

    /// A weight step: analysis, capacity and readiness gates, then one weight change per reconcile.
    fn weight_step(
        &mut self,
        stable: &VersionRef,
        canary: &VersionRef,
        dep: &DeploymentState,
        index: usize,
        weight: u8,
    ) -> Flow {
        let last = index >= self.spec.steps.len();
        if last && self.st.canary_weight == 100 && self.obs.weights_are(&stable.subset, Some(&canary.subset), 100) {
            if !self.st.promote_full && self.waits_for_analysis(canary, 100) {
                return Flow::Stop;
            }
            self.succeed(canary);
            return Flow::Stop;
        }
        // The schedule speaks first: it outlasts any wait for a check.
        if weight > self.st.canary_weight && !self.st.promote_full && self.held_by_schedule(stable, canary, weight) {
            return Flow::Stop;
        }
        if weight > self.st.canary_weight
            && self.st.canary_weight > 0
            && !self.st.promote_full
            && self.waits_for_analysis(canary, weight)
        {
            return Flow::Stop;
        }
        if weight > self.st.canary_weight && self.waits_for_hooks(canary, weight) {
            return Flow::Stop;
        }
        if self.record_scaling() {
            return Flow::Stop;
        }
        self.pin_stable();
        let (has_capacity, required) = match self.ensure_capacity(weight) {
            Ok(c) => c,
            Err(message) => {
                self.halt(Phase::RolledBack, Reason::CapacityUnavailable, message);
                return Flow::Stop;
            }
        };
        if !dep.is_ready() || !has_capacity {
            self.wait_for_canary(canary, dep, weight, required);
            return Flow::Stop;
        }
        let already = self.obs.weights_are(&stable.subset, Some(&canary.subset), weight);
        if !already && self.stable_would_gain(&stable.subset, 100 - weight) && !self.stable_serves() {
            self.hold_for_stable(stable, canary, weight);
            return Flow::Stop;
        }
        if !last {
            self.next_step(index);
        }
        self.st.pending_approval = None;
        if already {
            // Already there (a write whose status was lost): record it, and judge from now.
            self.record_weight(weight);
            return Flow::Continue;
        }
        self.set_weights(stable, Some(canary), weight);
        let which = if last {
            "end of steps".to_string()
        } else {
            format!("step {}", index + 1)
        };
        self.transition(
            Phase::Progressing,
            Reason::WeightChanged,
            format!("{which}: canary {} at {weight}%", canary.subset),
        );
        // One weight change per reconcile: look again at once to go on.
        self.requeue = Some(Duration::ZERO);
        Flow::Stop
    }

    /// Wait for the canary's Ready replicas until the progress deadline, then roll back.
    fn wait_for_canary(&mut self, canary: &VersionRef, dep: &DeploymentState, weight: u8, required: i32) {
        let started = self.st.step_started_at.unwrap_or(self.now);
        let waited = duration_between(started, self.now);
        if waited >= self.spec.progress_deadline {
            return self.halt(
                Phase::RolledBack,
                Reason::ProgressDeadlineExceeded,
                format!(
                    "canary Deployment {} not Ready with {required} replicas after {} (progressDeadline {})",
                    canary.deployment,
                    humantime::format_duration(waited),
                    humantime::format_duration(self.spec.progress_deadline)
                ),
            );
        }
        self.st.pending_approval = None;
        self.transition(
            Phase::Progressing,
            Reason::WaitingForCanary,
            format!(
                "waiting for canary Deployment {} to have {required} Ready replicas ({} ready) before weight {weight}",
                canary.deployment, dep.ready_replicas
            ),
        );
        self.requeue = Some(READY_POLL.min(self.spec.progress_deadline.saturating_sub(waited)));
    }

    /// Stable has no Ready pods: no weight change that gives it more traffic.
    fn hold_for_stable(&mut self, stable: &VersionRef, canary: &VersionRef, weight: u8) {
        self.st.pending_approval = None;
        self.transition(
            Phase::Progressing,
            Reason::StableNotReady,
            format!(
                "stable Deployment {} has no Ready pods: holding before canary {} at {weight}% (stable {} at {}%) \
                 until it has",
                stable.deployment,
                canary.subset,
                stable.subset,
                100 - weight
            ),
        );
        self.requeue = Some(READY_POLL);
    }

    /// A pause step: by time, or until `canaryd promote`.
    fn pause_step(
        &mut self,
        stable: &VersionRef,
        canary: &VersionRef,
        index: usize,
        promote: &mut Option<(bool, String)>,
    ) -> Flow {
        if let Some((_, by)) = promote.take() {
            self.event(EventType::Normal, "Promoted", format!("step {} passed{by}", index + 1));
            self.next_step(index);
            return Flow::Continue;
        }
        let started = self.st.step_started_at.unwrap_or(self.now);
        let duration = self.spec.steps[index].pause.as_ref().and_then(|p| p.duration);
        if duration.is_some_and(|d| duration_between(started, self.now) >= d) {
            self.next_step(index);
            return Flow::Continue;
        }
        // Only a pause that holds puts back drifted weights: one that is over may find the next
        // step's weight already written (a status write lost to a crash or a conflict).
        self.ensure_current_weights(stable, canary);
        match duration {
            Some(d) => {
                let elapsed = duration_between(started, self.now);
                self.st.pending_approval = None;
                self.transition(
                    Phase::Paused,
                    Reason::Pausing,
                    format!(
                        "step {}: holding canary {} at {}% for {}",
                        index + 1,
                        canary.subset,
                        self.st.canary_weight,
                        humantime::format_duration(d)
                    ),
                );
                self.requeue = Some(d - elapsed);
            }
            None => {
                let next = self.spec.steps[index..].iter().find_map(|s| s.weight).unwrap_or(100);
                self.st.pending_approval = Some(format!(
                    "step {}: `canaryd promote` to go from {}% to {next}%",
                    index + 1,
                    self.st.canary_weight
                ));
                self.transition(
                    Phase::WaitingForApproval,
                    Reason::WaitingForApproval,
                    format!(
                        "step {}: canary {} at {}% waits for approval",
                        index + 1,
                        canary.subset,
                        self.st.canary_weight
                    ),
                );
            }
        }
        Flow::Stop
    }

    fn next_step(&mut self, index: usize) {
        self.st.step = Some(index as u32 + 1);
        self.st.step_started_at = Some(self.now);
    }

    /// Begin (or restart) a rollout of `identity`, returning traffic from any previous canary first.
    fn start(&mut self, stable: &VersionRef, identity: CanaryStatus, previous: Option<CanaryStatus>) {
        let reason = match &previous {
            Some(prev) if prev.halted.is_none() => {
                if !self.obs.weights_are(&stable.subset, Some(&prev.subset), 0) && self.stable_serves() {
                    self.actions.push(Action::SetWeights {
                        stable: stable.subset.clone(),
                        canary: Some(prev.subset.clone()),
                        canary_weight: 0,
                    });
                }
                Reason::CanaryChanged
            }
            _ => Reason::RolloutStarted,
        };
        let message = match &previous {
            Some(prev) if prev.halted.is_none() => format!(
                "canary changed ({} → {} template {}); traffic back on stable {}, restarting from step 1",
                prev.subset, identity.subset, identity.template_hash, stable.subset
            ),
            _ => format!(
                "rolling out {} (Deployment {}) against stable {}",
                identity.subset, identity.deployment, stable.subset
            ),
        };
        self.restore_scaling();
        self.st.canary = Some(identity);
        self.st.analysis = self.spec.analysis.as_ref().map(|_| AnalysisStatus::default());
        self.st.canary_weight = 0;
        self.st.stable_weight = 100;
        self.st.step = Some(0);
        self.st.step_started_at = Some(self.now);
        self.st.paused = false;
        self.st.promote_full = false;
        self.st.pending_approval = None;
        self.transition(Phase::Progressing, reason, message);
        self.set_condition("Progressing", true, reason.as_str(), "rollout in progress");
    }

    fn succeed(&mut self, canary: &VersionRef) {
        let previous = self.st.stable.clone();
        if let Some(old) = &previous {
            self.after_promotion(old);
        }
        self.st.stable = Some(canary.clone());
        self.st.canary = None;
        self.st.step = None;
        self.st.step_started_at = None;
        self.st.stable_weight = 100;
        self.st.canary_weight = 0;
        self.st.pending_approval = None;
        self.st.paused = false;
        self.st.promote_full = false;
        let from = previous.map(|p| p.subset).unwrap_or_default();
        self.transition(
            Phase::Succeeded,
            Reason::Promoted,
            format!("{} promoted: it is the new stable (was {from})", canary.subset),
        );
        self.set_condition("Progressing", false, "Promoted", "rollout finished");
    }

    /// No canary to roll out: keep the route as it is, after taking traffic back from an abandoned one.
    fn steady(&mut self, stable: &VersionRef) {
        self.finish_scale_down(false);
        if let Some(old) = self.st.canary.clone() {
            if !self.obs.weights_are(&stable.subset, Some(&old.subset), 0) {
                if !self.stable_serves() {
                    self.requeue = Some(READY_POLL);
                    return self.transition(
                        Phase::Progressing,
                        Reason::StableNotReady,
                        format!(
                            "spec.canary no longer names {} but stable Deployment {} has no Ready pods: {} keeps its \
                             traffic until stable has Ready pods",
                            old.subset, stable.deployment, old.subset
                        ),
                    );
                }
                self.send_all_to_stable(stable);
            }
            self.restore_scaling();
            self.st.canary = None;
            self.st.step = None;
            self.st.step_started_at = None;
            self.st.pending_approval = None;
            self.st.paused = false;
            self.st.promote_full = false;
            self.transition(
                Phase::Healthy,
                Reason::CanaryRemoved,
                format!(
                    "spec.canary no longer names {}; all traffic on stable {}",
                    old.subset, stable.subset
                ),
            );
            self.set_condition("Progressing", false, "CanaryRemoved", "no rollout in progress");
        }
        if let Some(cmd) = self.new_command() {
            self.st.last_command_id = Some(cmd.id.clone());
            self.event(
                EventType::Normal,
                "CommandIgnored",
                format!("{}: no rollout in progress", cmd.kind.as_str()),
            );
        }
        // Report what the route carries now; without a canary nothing else is ours to say.
        self.st.stable_weight = self
            .obs
            .routes
            .first()
            .and_then(|r| r.get(&stable.subset).copied())
            .unwrap_or(100);
        self.st.canary_weight = 0;
        if self.st.phase != Phase::Succeeded {
            self.transition(
                Phase::Healthy,
                Reason::NoCanary,
                format!("stable {} holds the traffic", stable.subset),
            );
        }
    }

    fn invalid(&mut self, problems: &[Problem]) {
        let (reason, message) = summary(problems);
        self.set_condition("Ready", false, reason.as_str(), &message);
        self.transition(Phase::Invalid, reason, message);
        // Objects that preflight reads are not all watched: look again soon.
        self.requeue = Some(INVALID_POLL);
    }

    /// Record a rollback or abort: phase `RollingBack`, the canary halted, the cause in the Progressing
    /// condition. No traffic moves in this reconcile: the next one, starting from this record, sends
    /// all traffic to stable and sets the final phase, so a crash in between never undoes the verdict.
    fn halt(&mut self, phase: Phase, reason: Reason, cause: String) {
        if let Some(c) = self.st.canary.as_mut() {
            c.halted = Some(phase);
        }
        self.halted_now = true;
        self.clear_progressing();
        self.set_condition("Progressing", false, reason.as_str(), &cause);
        let stable = self.st.stable.as_ref().map(|s| s.subset.clone()).unwrap_or_default();
        self.transition(
            Phase::RollingBack,
            reason,
            format!("{cause}; sending all traffic to stable {stable}"),
        );
        self.requeue = Some(Duration::ZERO);
    }

    fn clear_progressing(&mut self) {
        self.st.step = None;
        self.st.step_started_at = None;
        self.st.pending_approval = None;
        self.st.paused = false;
        self.st.promote_full = false;
    }

    fn halted(&self) -> Option<Phase> {
        self.st.canary.as_ref().and_then(|c| c.halted)
    }

    fn new_command(&self) -> Option<Command> {
        self.obs
            .command
            .clone()
            .filter(|c| self.st.last_command_id.as_deref() != Some(c.id.as_str()))
    }

    /// Stable has Ready pods to take traffic.
    fn stable_serves(&self) -> bool {
        self.obs.stable.as_ref().is_some_and(DeploymentState::serves)
    }

    /// Whether giving stable `weight` raises its share in some route (or the routes are unknown).
    fn stable_would_gain(&self, stable: &str, weight: u8) -> bool {
        self.obs.routes.is_empty()
            || self
                .obs
                .routes
                .iter()
                .any(|r| r.get(stable).copied().unwrap_or(0) < weight)
    }

    /// The canary's largest observed weight in any managed route.
    fn observed_canary_weight(&self) -> u8 {
        let subset = self.st.canary.as_ref().map(|c| c.subset.as_str()).unwrap_or_default();
        self.obs
            .routes
            .iter()
            .filter_map(|r| r.get(subset).copied())
            .max()
            .unwrap_or(0)
    }

    fn canary_has_traffic(&self) -> bool {
        self.st.canary_weight > 0 || self.observed_canary_weight() > 0
    }

    fn send_all_to_stable(&mut self, stable: &VersionRef) {
        let canary = self.st.canary.as_ref().map(|c| c.subset.clone());
        self.actions.push(Action::SetWeights {
            stable: stable.subset.clone(),
            canary,
            canary_weight: 0,
        });
        self.st.canary_weight = 0;
        self.st.stable_weight = 100;
    }

    fn set_weights(&mut self, stable: &VersionRef, canary: Option<&VersionRef>, weight: u8) {
        self.actions.push(Action::SetWeights {
            stable: stable.subset.clone(),
            canary: canary.map(|c| c.subset.clone()),
            canary_weight: weight,
        });
        self.record_weight(weight);
    }

    /// The canary now has `weight`, written by us or found in place: a changed weight is judged anew.
    fn record_weight(&mut self, weight: u8) {
        if weight != self.st.canary_weight
            && let Some(a) = self.st.analysis.as_mut()
        {
            a.weight_set_at = Some(self.now);
            if weight > 0 && a.since.is_none() {
                a.since = Some(self.now);
            }
        }
        self.st.canary_weight = weight;
        self.st.stable_weight = 100 - weight;
    }

    /// Put back the weight of the step in progress if someone moved it (never toward a stable with no
    /// Ready pods).
    fn ensure_current_weights(&mut self, stable: &VersionRef, canary: &VersionRef) {
        let w = self.st.canary_weight;
        if self.obs.weights_are(&stable.subset, Some(&canary.subset), w) {
            return;
        }
        if self.stable_would_gain(&stable.subset, 100 - w) && !self.stable_serves() {
            return;
        }
        self.set_weights(stable, Some(canary), w);
    }

    fn event(&mut self, type_: EventType, reason: &str, message: String) {
        self.actions.push(Action::Event {
            type_,
            reason: reason.into(),
            message,
        });
    }

    /// Record a phase change (or a new reason) in history, message and an Event; a repeat is silent.
    fn transition(&mut self, phase: Phase, reason: Reason, message: String) {
        self.record(phase, reason.as_str(), message);
    }

    /// [`Self::transition`] with a reason read back from status (a recorded rollback's).
    fn record(&mut self, phase: Phase, reason: &str, message: String) {
        let first = self.st.history.is_empty();
        let last = self.st.history.last();
        let repeat = self.st.phase == phase
            && last.is_some_and(|t| t.reason == reason && t.step == self.st.step && t.message == message);
        self.st.phase = phase;
        self.st.message = Some(message.clone());
        if repeat {
            return;
        }
        self.st.history.push(Transition {
            at: self.now,
            phase,
            step: self.st.step,
            canary_weight: self.st.canary_weight,
            reason: reason.into(),
            message: message.clone(),
            muted: false,
        });
        let excess = self.st.history.len().saturating_sub(HISTORY_LIMIT);
        self.st.history.drain(..excess);
        let type_ = match phase {
            Phase::RolledBack | Phase::Aborted | Phase::Invalid | Phase::RollingBack => EventType::Warning,
            _ if WARNING_REASONS.iter().any(|r| r.as_str() == reason) => EventType::Warning,
            _ => EventType::Normal,
        };
        // A policy first seen at rest changed nothing: status and history say so. An Event for it
        // would be one more API write per policy whenever many appear at once (canaryd installed
        // into a cluster whose Git already holds its policies).
        if !(first && phase == Phase::Healthy) {
            self.event(type_, reason, message);
        }
        self.fire_hooks(phase, type_);
    }

    fn set_condition(&mut self, type_: &str, status: bool, reason: &str, message: &str) {
        let status = if status { "True" } else { "False" };
        let generation = self.obs.generation;
        match self.st.conditions.iter_mut().find(|c| c.type_ == type_) {
            Some(c) => {
                if c.status != status {
                    c.last_transition_time = self.now;
                }
                c.status = status.into();
                c.reason = reason.into();
                c.message = message.into();
                c.observed_generation = generation;
            }
            None => self.st.conditions.push(Condition {
                type_: type_.into(),
                status: status.into(),
                reason: reason.into(),
                message: message.into(),
                last_transition_time: self.now,
                observed_generation: generation,
            }),
        }
    }
}

/// `now - since`, zero when the clock went backwards.
pub fn duration_between(since: Timestamp, now: Timestamp) -> Duration {
    let nanos = now.as_nanosecond() - since.as_nanosecond();
    if nanos <= 0 {
        Duration::ZERO
    } else {
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }
}

/// The canary's identity in status: subset, Deployment and the pod template it is rolled out for.
fn identity(canary: &VersionRef, dep: &DeploymentState) -> CanaryStatus {
    CanaryStatus {
        subset: canary.subset.clone(),
        deployment: canary.deployment.clone(),
        template_hash: dep.template_hash.clone(),
        halted: None,
        ..Default::default()
    }
}

/// The first problem's reason and every problem's message.
fn summary(problems: &[Problem]) -> (Reason, String) {
    let message = problems
        .iter()
        .map(|p| p.message.as_str())
        .collect::<Vec<_>>()
        .join("; ");
    let reason = problems.first().map_or(Reason::InvalidSpec, |p| p.reason);
    (reason, message)
}
