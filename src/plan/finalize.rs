//! What the finalizer does when a policy is deleted: undo the rollout's changes, with the rule a
//! rollout obeys: traffic never moves onto a stable that has no Ready pods while the canary serves.

use jiff::Timestamp;

use super::{Action, DeploymentState, EventType, Observed, cleanup_observed, declared_stable};
use crate::resources::policy::{RolloutPolicySpec, RolloutPolicyStatus};

/// The finalizer's actions, and what it leaves alone.
#[derive(Debug, Clone, PartialEq)]
pub struct Cleanup {
    pub actions: Vec<Action>,
    /// Why the traffic was left as it is (also an Event among `actions`); None when all is undone.
    pub left_alone: Option<String>,
}

/// [`cleanup_observed`], unless it would send traffic to a stable with no Ready pods while the
/// canary has some: then the weights stay as they are, and so does the canary's scaling (it
/// carries the traffic). The deletion still completes: a finalizer that waited for stable to
/// recover could hold the policy in Terminating for ever, and canaryd no longer owns the rollout.
/// When neither version serves, traffic goes back to stable as declared (no worse, and nothing
/// better to do: the namespace may be going away).
pub fn finalize(spec: &RolloutPolicySpec, current: &RolloutPolicyStatus, obs: &Observed, now: Timestamp) -> Cleanup {
    let mut actions = cleanup_observed(spec, current, obs, now);
    // The stable the spec declares (see `declared_stable`); `obs.stable` is that one's Deployment.
    let stable = declared_stable(spec, current);
    let moves = actions.iter().any(|a| matches!(a, Action::SetWeights { .. }));
    let stable_serves = obs.stable.as_ref().is_some_and(DeploymentState::serves);
    let canary_serves = obs.canary.as_ref().is_some_and(DeploymentState::serves);
    let canary = current.canary.as_ref();
    // Neither version of a rollout serves (its namespace may be going away): nothing better to do.
    let neither = canary.is_some() && !canary_serves;
    let on_stable = match canary {
        Some(c) => obs.weights_are(&stable.subset, Some(&c.subset), 0),
        None => obs.weights_are(&stable.subset, None, 0),
    };
    if !moves || stable_serves || neither || on_stable {
        return Cleanup {
            actions,
            left_alone: None,
        };
    }
    let canary_hpa = current
        .scaling
        .as_ref()
        .and_then(|s| s.canary.as_ref())
        .and_then(|c| c.hpa.as_deref());
    let canary_deployment = canary.map(|c| c.deployment.as_str());
    actions.retain(|a| match a {
        Action::SetWeights { .. } => false,
        Action::SetReplicas { deployment, .. } => Some(deployment.as_str()) != canary_deployment,
        Action::SetHpaBounds { hpa, .. } => canary_hpa.is_none() || Some(hpa.as_str()) != canary_hpa,
        Action::Event { .. } => true,
    });
    let holds = match canary {
        Some(c) => {
            let w = obs.routes.iter().filter_map(|r| r.get(&c.subset).copied()).max();
            let w = w.map_or("the traffic it has".to_string(), |w| format!("{w}%"));
            format!("canary {} keeps {w}", c.subset)
        }
        None => "the version that has it keeps it".to_string(),
    };
    let message = format!(
        "policy deleted while stable Deployment {} has no Ready pods: traffic left as it is ({holds}) \
         and so is the canary's scaling; sending traffic to zero pods is a certain outage. Move the traffic once \
         stable {} has Ready pods",
        stable.deployment, stable.subset
    );
    actions.push(Action::Event {
        type_: EventType::Warning,
        reason: "TrafficLeftAlone".into(),
        message: message.clone(),
    });
    Cleanup {
        actions,
        left_alone: Some(message),
    }
}

#[cfg(test)]
#[path = "finalize_tests.rs"]
mod tests;
