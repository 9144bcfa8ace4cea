//! Declared versions only: traffic goes to the versions the spec names. When the spec no longer names
//! the recorded stable, the declared stable takes over (or traffic holds where it is, with a reason).

use crate::resources::reason::Reason;
use std::time::Duration;

use super::{Action, EventType, INVALID_POLL, Planner, READY_POLL, summary};
use crate::resources::policy::{Phase, RolloutPolicySpec, RolloutPolicyStatus, VersionRef};

/// The stable traffic falls back to: the recorded one while the spec still names it (as stable, or as
/// the canary it promoted), else the spec's stable. A canary in progress that the spec now calls
/// stable is adopted (Git moved on before canaryd finished the promotion).
pub fn declared_stable(spec: &RolloutPolicySpec, status: &RolloutPolicyStatus) -> VersionRef {
    let adopt = status.canary.as_ref().is_some_and(|c| {
        c.halted.is_none() && c.subset == spec.stable.subset && c.deployment == spec.stable.deployment
    });
    match &status.stable {
        Some(s) if !adopt && (*s == spec.stable || spec.canary.as_ref() == Some(s)) => s.clone(),
        _ => spec.stable.clone(),
    }
}

impl Planner<'_> {
    /// The spec no longer names the recorded stable: move all traffic to the declared one and record
    /// it (`StableChanged`); a declared canary starts against it from step 1 on the next pass. No
    /// weight moves toward a stable that cannot serve or while a problem holds: traffic stays put.
    pub(super) fn change_stable(&mut self, recorded: &VersionRef, declared: &VersionRef) {
        let on_declared = self.obs.weights_are(&declared.subset, None, 0);
        let problems = self.spec_and_preflight_problems();
        if !on_declared && !problems.is_empty() {
            let (reason, message) = summary(&problems);
            return self.hold_undeclared(recorded, declared, reason, message, INVALID_POLL);
        }
        if !on_declared && !self.stable_serves() {
            let why = format!("stable Deployment {} has no Ready pods", declared.deployment);
            return self.hold_undeclared(recorded, declared, Reason::StableNotReady, why, READY_POLL);
        }
        let adopted =
            self.st.canary.as_ref().is_some_and(|c| {
                c.halted.is_none() && c.subset == declared.subset && c.deployment == declared.deployment
            });
        if !on_declared {
            self.actions.push(Action::SetWeights {
                stable: declared.subset.clone(),
                canary: None,
                canary_weight: 0,
            });
        }
        if adopted {
            // A promotion done by Git: the old stable's bounds back, its scale-down after the delay.
            self.after_promotion(recorded);
        } else if !self.cancel_scale_down_of(declared) {
            self.restore_scaling();
        }
        self.st.stable = Some(declared.clone());
        self.st.canary = None;
        self.st.analysis = None;
        self.clear_progressing();
        self.st.canary_weight = 0;
        self.st.stable_weight = 100;
        let how = if adopted {
            "canary adopted as stable"
        } else {
            "declared stable"
        };
        let message = format!(
            "spec.stable names {} ({how}); {} is no longer named: all traffic on {}",
            declared.subset, recorded.subset, declared.subset
        );
        self.set_condition("Ready", true, "PreflightPassed", "all preflight checks pass");
        self.set_condition("Progressing", false, "StableChanged", &message);
        self.transition(Phase::Healthy, Reason::StableChanged, message);
        self.requeue = Some(Duration::ZERO);
    }

    /// The declared stable is the old stable of a promotion whose scale-down is pending: it takes the
    /// traffic back, so it is not scaled down; the promoted version's HPA gets its own bounds back.
    fn cancel_scale_down_of(&mut self, declared: &VersionRef) -> bool {
        let Some(sc) = self.st.scaling.clone() else {
            return false;
        };
        if sc
            .scale_down
            .as_ref()
            .is_none_or(|d| d.deployment != declared.deployment)
        {
            return false;
        }
        if let Some(promoted) = &sc.canary {
            self.restore(&sc, promoted, false);
        }
        self.st.scaling = None;
        self.event(
            EventType::Normal,
            "ScaleDownCancelled",
            format!("{} is the declared stable again: not scaled down", declared.deployment),
        );
        true
    }

    /// The declared stable cannot take the traffic yet: no weight changes, the recorded stable stays
    /// recorded, and the reason says what the rollout waits for.
    fn hold_undeclared(
        &mut self,
        recorded: &VersionRef,
        declared: &VersionRef,
        reason: Reason,
        why: String,
        poll: Duration,
    ) {
        let message = format!(
            "spec.stable names {} but {why}: traffic stays where it is (recorded stable {} is no longer named) \
             until {} can take it",
            declared.subset, recorded.subset, declared.subset
        );
        self.set_condition("Ready", false, reason.as_str(), &message);
        let phase = self.st.phase;
        self.transition(phase, reason, message);
        self.requeue = Some(poll);
    }
}
