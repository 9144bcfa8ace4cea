//! The rollout decision: a pure function of (spec, status, observations, now) with no client and no
//! clock. It returns the next status and the few side effects the controller must carry out first.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;

use crate::analysis::engine::Check;
use crate::gates::commands::Command;
use crate::policy::types::{
    AnalysisStatus, CanaryStatus, Condition, Phase, RolloutPolicySpec, RolloutPolicyStatus, Transition, VersionRef,
};
use crate::policy::validate::validate_spec;

mod analysis;
mod capacity;
mod commands;

pub use capacity::{ScaleObserved, VersionScale};
#[cfg(test)]
mod tests;

/// How many transitions `status.history` keeps.
pub const HISTORY_LIMIT: usize = 20;
/// How often to look again while waiting for the canary to become Ready.
pub const READY_POLL: Duration = Duration::from_secs(2);

/// A problem found before any traffic moves (preflight), with a condition reason and a message that
/// says what to fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub reason: String,
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
}

/// What the world looks like now, as gathered by the controller.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    pub generation: Option<i64>,
    /// Preflight problems; any of them stops the rollout where it is (no traffic change).
    pub problems: Vec<Problem>,
    /// The Deployment named by `spec.canary`, if it exists.
    pub canary: Option<DeploymentState>,
    /// Replicas and HPAs of both versions (empty when scaling is off).
    pub scaling: ScaleObserved,
    /// Weights by subset, one map per managed route (a destination that is absent weighs 0).
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
}

impl Observed {
    /// True when every managed route sends `canary_weight` to `canary` and the rest to `stable`.
    fn weights_are(&self, stable: &str, canary: Option<&str>, canary_weight: u8) -> bool {
        self.routes.iter().all(|route| {
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
        bounds: crate::scale::capacity::Bounds,
    },
    /// Set a Deployment's replicas (versions without an HPA; the old stable after promotion).
    SetReplicas { deployment: String, replicas: i32 },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub status: RolloutPolicyStatus,
    /// Carried out in order, before the status is written.
    pub actions: Vec<Action>,
    /// When to look again even if nothing changes.
    pub requeue: Option<Duration>,
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
    };
    p.run();
    Plan {
        status: p.st,
        actions: p.actions,
        requeue: p.requeue,
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
    };
    let stable = current.stable.clone().unwrap_or_else(|| spec.stable.clone());
    if current.canary.as_ref().is_some_and(|c| c.halted.is_none()) {
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
}

impl Planner<'_> {
    fn run(&mut self) {
        self.st.observed_generation = self.obs.generation;
        let stable = self.st.stable.clone().unwrap_or_else(|| self.spec.stable.clone());
        self.st.stable = Some(stable.clone());

        if let Some(err) = &self.obs.command_error {
            self.event(EventType::Warning, "InvalidCommand", err.clone());
        }
        let mut problems: Vec<Problem> = validate_spec(self.spec)
            .into_iter()
            .map(|e| Problem {
                reason: "InvalidSpec".into(),
                message: e.to_string(),
            })
            .collect();
        problems.extend(self.obs.problems.iter().cloned());
        if !problems.is_empty() {
            return self.invalid(&problems);
        }
        self.set_condition("Ready", true, "PreflightPassed", "all preflight checks pass");

        let desired = self.spec.canary.clone().filter(|c| c.subset != stable.subset);
        let Some(desired) = desired else {
            return self.steady(&stable);
        };
        let Some(dep) = self.obs.canary.clone() else {
            // Preflight reports a missing Deployment; this only guards against an incomplete observation.
            return self.invalid(&[Problem {
                reason: "CanaryDeploymentNotFound".into(),
                message: format!("Deployment {} not found", desired.deployment),
            }]);
        };

        let identity = CanaryStatus {
            subset: desired.subset.clone(),
            deployment: desired.deployment.clone(),
            template_hash: dep.template_hash.clone(),
            halted: None,
        };
        let same = self.st.canary.as_ref().is_some_and(|c| {
            c.subset == identity.subset
                && c.deployment == identity.deployment
                && c.template_hash == identity.template_hash
        });
        if !same {
            let previous = self.st.canary.clone();
            self.start(&stable, identity.clone(), previous);
        }

        let promote = self.apply_command(&stable, &identity);

        if let Some(halted) = self.halted() {
            // Keep all traffic on stable while the canary stays halted.
            if !self.obs.weights_are(&stable.subset, Some(&desired.subset), 0) {
                self.send_all_to_stable(&stable);
            }
            self.st.phase = halted;
            self.clear_progressing();
            return;
        }
        self.fold_check();
        if self.judge_analysis(&stable, &desired) {
            return;
        }
        if self.st.paused && promote.is_none() {
            self.ensure_current_weights(&stable, &desired);
            self.st.pending_approval = None;
            // A pause for too many inconclusive checks keeps saying why.
            if self.st.history.last().is_none_or(|t| t.reason != "Inconclusive") {
                self.transition(
                    Phase::Paused,
                    "Paused",
                    "paused by command; `canaryd resume` to go on".into(),
                );
            }
            return;
        }
        self.walk(&stable, &desired, &dep, promote);
    }

    /// Go through the steps from the current one as far as time, readiness and approvals allow.
    fn walk(
        &mut self,
        stable: &VersionRef,
        canary: &VersionRef,
        dep: &DeploymentState,
        mut promote: Option<(bool, String)>,
    ) {
        let steps = &self.spec.steps;
        self.pin_stable();
        if let Some((true, by)) = &promote
            && dep.is_ready()
        {
            // promote --full: 100 % now and done, skipping pauses and the analysis gate.
            self.st.paused = false;
            self.event(
                EventType::Normal,
                "PromotedFull",
                format!("full promotion requested{by}"),
            );
            if !self.obs.weights_are(&stable.subset, Some(&canary.subset), 100) || self.st.canary_weight != 100 {
                self.set_weights(stable, Some(canary), 100);
            }
            return self.succeed(canary);
        }
        loop {
            let index = self.st.step.unwrap_or(0) as usize;
            let Some(step) = steps.get(index) else {
                if self.waits_for_analysis(canary, 100) {
                    return;
                }
                return self.succeed(canary);
            };
            let started = self.st.step_started_at.unwrap_or(self.now);
            if let Some(weight) = step.weight {
                if weight > self.st.canary_weight
                    && self.st.canary_weight > 0
                    && self.waits_for_analysis(canary, weight)
                {
                    return;
                }
                if self.record_scaling() {
                    return;
                }
                self.pin_stable();
                let (has_capacity, required) = match self.ensure_capacity(weight) {
                    Ok(c) => c,
                    Err(message) => {
                        self.send_all_to_stable(stable);
                        return self.halt(Phase::RolledBack, "CapacityUnavailable", message);
                    }
                };
                if !dep.is_ready() || !has_capacity {
                    let waited = duration_between(started, self.now);
                    if waited >= self.spec.progress_deadline {
                        self.send_all_to_stable(stable);
                        return self.halt(
                            Phase::RolledBack,
                            "ProgressDeadlineExceeded",
                            format!(
                                "canary Deployment {} not Ready with {required} replicas after {} (progressDeadline {}); all traffic on stable",
                                canary.deployment,
                                humantime::format_duration(waited),
                                humantime::format_duration(self.spec.progress_deadline)
                            ),
                        );
                    }
                    self.st.pending_approval = None;
                    self.transition(
                        Phase::Progressing,
                        "WaitingForCanary",
                        format!(
                            "waiting for canary Deployment {} to have {required} Ready replicas ({} ready) before weight {weight}",
                            canary.deployment, dep.ready_replicas
                        ),
                    );
                    self.requeue = Some(READY_POLL.min(self.spec.progress_deadline.saturating_sub(waited)));
                    return;
                }
                self.st.step = Some(index as u32 + 1);
                self.st.step_started_at = Some(self.now);
                self.st.pending_approval = None;
                if self.obs.weights_are(&stable.subset, Some(&canary.subset), weight) {
                    // Already there (a write whose status was lost in a crash): just record it.
                    self.st.canary_weight = weight;
                    self.st.stable_weight = 100 - weight;
                } else {
                    self.set_weights(stable, Some(canary), weight);
                    self.transition(
                        Phase::Progressing,
                        "WeightChanged",
                        format!("step {}: canary {} at {weight}%", index + 1, canary.subset),
                    );
                    // One weight change per reconcile: look again at once to go on.
                    self.requeue = Some(Duration::ZERO);
                    return;
                }
                continue;
            }
            // A pause step.
            self.ensure_current_weights(stable, canary);
            let duration = step.pause.as_ref().and_then(|p| p.duration);
            if let Some((_, by)) = promote.take() {
                self.event(EventType::Normal, "Promoted", format!("step {} passed{by}", index + 1));
                self.next_step(index);
                continue;
            }
            match duration {
                Some(d) => {
                    let elapsed = duration_between(started, self.now);
                    if elapsed >= d {
                        self.next_step(index);
                        continue;
                    }
                    self.st.pending_approval = None;
                    let left = d - elapsed;
                    self.transition(
                        Phase::Paused,
                        "Pausing",
                        format!(
                            "step {}: holding canary {} at {}% for {}",
                            index + 1,
                            canary.subset,
                            self.st.canary_weight,
                            humantime::format_duration(d)
                        ),
                    );
                    self.requeue = Some(left);
                    return;
                }
                None => {
                    let next = steps[index..].iter().find_map(|s| s.weight).unwrap_or(100);
                    self.st.pending_approval = Some(format!(
                        "step {}: `canaryd promote` to go from {}% to {next}%",
                        index + 1,
                        self.st.canary_weight
                    ));
                    self.transition(
                        Phase::WaitingForApproval,
                        "WaitingForApproval",
                        format!(
                            "step {}: canary {} at {}% waits for approval",
                            index + 1,
                            canary.subset,
                            self.st.canary_weight
                        ),
                    );
                    return;
                }
            }
        }
    }

    fn next_step(&mut self, index: usize) {
        self.st.step = Some(index as u32 + 1);
        self.st.step_started_at = Some(self.now);
    }

    /// Begin (or restart) a rollout of `identity`, returning traffic from any previous canary first.
    fn start(&mut self, stable: &VersionRef, identity: CanaryStatus, previous: Option<CanaryStatus>) {
        let reason = match &previous {
            Some(prev) if prev.halted.is_none() => {
                if !self.obs.weights_are(&stable.subset, Some(&prev.subset), 0) {
                    self.actions.push(Action::SetWeights {
                        stable: stable.subset.clone(),
                        canary: Some(prev.subset.clone()),
                        canary_weight: 0,
                    });
                }
                "CanaryChanged"
            }
            _ => "RolloutStarted",
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
        self.st.pending_approval = None;
        self.transition(Phase::Progressing, reason, message);
        self.set_condition("Progressing", true, reason, "rollout in progress");
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
        let from = previous.map(|p| p.subset).unwrap_or_default();
        self.transition(
            Phase::Succeeded,
            "Promoted",
            format!("{} promoted: it is the new stable (was {from})", canary.subset),
        );
        self.set_condition("Progressing", false, "Promoted", "rollout finished");
    }

    /// No canary to roll out: keep the route as it is, after taking traffic back from an abandoned one.
    fn steady(&mut self, stable: &VersionRef) {
        self.finish_scale_down(false);
        if let Some(old) = self.st.canary.clone() {
            if !self.obs.weights_are(&stable.subset, Some(&old.subset), 0) {
                self.send_all_to_stable(stable);
            }
            self.restore_scaling();
            self.st.canary = None;
            self.st.step = None;
            self.st.step_started_at = None;
            self.st.pending_approval = None;
            self.st.paused = false;
            self.transition(
                Phase::Healthy,
                "CanaryRemoved",
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
                "NoCanary",
                format!("stable {} holds the traffic", stable.subset),
            );
        }
    }

    fn invalid(&mut self, problems: &[Problem]) {
        let message = problems
            .iter()
            .map(|p| p.message.as_str())
            .collect::<Vec<_>>()
            .join("; ");
        let reason = problems.first().map(|p| p.reason.clone()).unwrap_or_default();
        self.set_condition("Ready", false, &reason, &message);
        self.transition(Phase::Invalid, &reason, message);
        // Objects that preflight reads are not all watched: look again soon.
        self.requeue = Some(Duration::from_secs(10));
    }

    fn halt(&mut self, phase: Phase, reason: &str, message: String) {
        self.restore_scaling();
        if phase == Phase::RolledBack
            && self.spec.scaling.enabled
            && self.spec.scaling.scale_down_canary_on_rollback
            && let Some(c) = &self.st.canary
        {
            self.actions.push(Action::SetReplicas {
                deployment: c.deployment.clone(),
                replicas: 0,
            });
        }
        if let Some(c) = self.st.canary.as_mut() {
            c.halted = Some(phase);
        }
        self.clear_progressing();
        self.transition(phase, reason, message);
        self.set_condition("Progressing", false, reason, "rollout halted");
    }

    fn clear_progressing(&mut self) {
        self.st.step = None;
        self.st.step_started_at = None;
        self.st.pending_approval = None;
        self.st.paused = false;
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

    /// Put back the weight of the step in progress if someone moved it.
    fn ensure_current_weights(&mut self, stable: &VersionRef, canary: &VersionRef) {
        let w = self.st.canary_weight;
        if !self.obs.weights_are(&stable.subset, Some(&canary.subset), w) {
            self.set_weights(stable, Some(canary), w);
        }
    }

    fn event(&mut self, type_: EventType, reason: &str, message: String) {
        self.actions.push(Action::Event {
            type_,
            reason: reason.into(),
            message,
        });
    }

    /// Record a phase change (or a new reason) in history, message and an Event; a repeat is silent.
    fn transition(&mut self, phase: Phase, reason: &str, message: String) {
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
        });
        let excess = self.st.history.len().saturating_sub(HISTORY_LIMIT);
        self.st.history.drain(..excess);
        let type_ = match phase {
            Phase::RolledBack | Phase::Aborted | Phase::Invalid | Phase::RollingBack => EventType::Warning,
            _ => EventType::Normal,
        };
        self.event(type_, reason, message);
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
