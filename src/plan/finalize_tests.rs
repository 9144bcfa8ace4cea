//! Table tests of the finalizer's decision: what a deleted policy undoes, and what it leaves alone.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;

use super::finalize;
use crate::plan::{Action, DeploymentState, EventType, Observed, ScaleObserved, VersionScale};
use crate::replicas::Bounds;
use crate::resources::policy::{
    CanaryStatus, Phase, RolloutPolicySpec, RolloutPolicyStatus, ScalingStatus, Step, VersionRef, VersionScaling,
    VirtualServiceRef,
};

fn b(min: i32, max: i32) -> Bounds {
    Bounds {
        min_replicas: Some(min),
        max_replicas: max,
    }
}

fn v(subset: &str) -> VersionRef {
    VersionRef {
        subset: subset.into(),
        deployment: format!("app-{subset}"),
    }
}

fn spec() -> RolloutPolicySpec {
    RolloutPolicySpec {
        service: "app".into(),
        virtual_services: vec![VirtualServiceRef {
            name: "app".into(),
            namespace: None,
            routes: None,
        }],
        destination_rule: "app".into(),
        stable: v("v1"),
        canary: Some(v("v2")),
        steps: [10, 50, 100]
            .map(|w| Step {
                weight: Some(w),
                pause: None,
            })
            .to_vec(),
        schedule: None,
        progress_deadline: Duration::from_secs(600),
        analysis: None,
        webhooks: Vec::new(),
        scaling: Default::default(),
        notifications: Vec::new(),
    }
}

fn rec(deployment: &str, hpa: bool, original: Bounds, set: Bounds) -> VersionScaling {
    VersionScaling {
        deployment: deployment.into(),
        hpa: hpa.then(|| format!("{deployment}-hpa")),
        original_bounds: hpa.then_some(original),
        original_replicas: 1,
        set_bounds: hpa.then_some(set),
    }
}

/// Canary v2 at 50 %, stable pinned at min 4, the canary's HPA (or replicas) raised to 3.
fn status(phase: Phase, halted: Option<Phase>, canary_hpa: bool) -> RolloutPolicyStatus {
    RolloutPolicyStatus {
        phase,
        stable: Some(v("v1")),
        canary: Some(CanaryStatus {
            subset: "v2".into(),
            deployment: "app-v2".into(),
            template_hash: "h1".into(),
            halted,
            ..Default::default()
        }),
        stable_weight: 50,
        canary_weight: 50,
        scaling: Some(ScalingStatus {
            stable_replicas_at_start: 4,
            stable: Some(rec("app-v1", true, b(2, 10), b(4, 10))),
            canary: Some(rec("app-v2", canary_hpa, b(1, 10), b(3, 10))),
            scale_down: None,
        }),
        ..RolloutPolicyStatus::default()
    }
}

fn dep(ready: i32) -> Option<DeploymentState> {
    Some(DeploymentState {
        template_hash: "h".into(),
        generation_observed: true,
        ready_replicas: ready,
    })
}

fn scale(deployment: &str, hpa: Option<Bounds>, replicas: i32) -> VersionScale {
    VersionScale {
        deployment: deployment.into(),
        hpa: hpa.map(|b| (format!("{deployment}-hpa"), b)),
        spec_replicas: replicas,
        ready_replicas: replicas,
    }
}

/// Stable with `stable_ready` Ready pods (None: its Deployment is gone), the canary with
/// `canary_ready`, the route as given (empty: unreadable).
fn observed(stable_ready: Option<i32>, canary_ready: Option<i32>, route: &[(&str, u8)], canary_hpa: bool) -> Observed {
    let routes = if route.is_empty() {
        Vec::new()
    } else {
        vec![
            route
                .iter()
                .map(|(s, w)| (s.to_string(), *w))
                .collect::<BTreeMap<_, _>>(),
        ]
    };
    Observed {
        generation: Some(1),
        stable: stable_ready.and_then(dep),
        canary: canary_ready.and_then(dep),
        routes,
        scaling: ScaleObserved {
            stable: stable_ready.map(|r| scale("app-v1", Some(b(4, 10)), r)),
            canary: canary_ready.map(|r| scale("app-v2", canary_hpa.then_some(b(3, 10)), 3.max(r))),
        },
        ..Observed::default()
    }
}

fn weights(actions: &[Action]) -> usize {
    actions
        .iter()
        .filter(|a| matches!(a, Action::SetWeights { .. }))
        .count()
}

/// Writes of the canary's capacity (its HPA bounds or its replicas).
fn canary_capacity(actions: &[Action]) -> usize {
    actions
        .iter()
        .filter(|a| match a {
            Action::SetHpaBounds { hpa, .. } => hpa == "app-v2-hpa",
            Action::SetReplicas { deployment, .. } => deployment == "app-v2",
            _ => false,
        })
        .count()
}

fn stable_restored(actions: &[Action]) -> bool {
    actions
        .iter()
        .any(|a| matches!(a, Action::SetHpaBounds { hpa, bounds } if hpa == "app-v1-hpa" && *bounds == b(2, 10)))
}

fn warning(actions: &[Action]) -> Option<String> {
    actions.iter().find_map(|a| match a {
        Action::Event {
            type_: EventType::Warning,
            reason,
            message,
        } if reason == "TrafficLeftAlone" => Some(message.clone()),
        _ => None,
    })
}

#[test]
fn traffic_never_moves_onto_a_stable_without_ready_pods_while_the_canary_serves() {
    let now = Timestamp::from_second(1_700_000_000).unwrap();
    let rolling = Phase::WaitingForApproval;
    let split = [("v1", 50), ("v2", 50)];
    // (case, status, observed, traffic moves to stable, canary capacity restored)
    let rows: Vec<(&str, RolloutPolicyStatus, Observed, bool, bool)> = vec![
        (
            "stable serves",
            status(rolling, None, true),
            observed(Some(4), Some(3), &split, true),
            true,
            true,
        ),
        (
            "stable without Ready pods, canary serves",
            status(rolling, None, true),
            observed(Some(0), Some(3), &split, true),
            false,
            false,
        ),
        (
            "canary without an HPA: its replicas stay too",
            status(rolling, None, false),
            observed(Some(0), Some(3), &split, false),
            false,
            false,
        ),
        (
            "stable Deployment gone, canary serves",
            status(rolling, None, true),
            observed(None, Some(3), &split, true),
            false,
            false,
        ),
        (
            "routes unreadable, stable without Ready pods",
            status(rolling, None, true),
            observed(Some(0), Some(3), &[], true),
            false,
            false,
        ),
        (
            "a recorded rollback, stable without Ready pods",
            status(Phase::RollingBack, Some(Phase::RolledBack), true),
            observed(Some(0), Some(3), &split, true),
            false,
            false,
        ),
        (
            "neither serves (namespace going): back to stable as declared",
            status(rolling, None, true),
            observed(None, None, &split, true),
            true,
            true, // recorded bounds put back (a 404 there is nothing to restore)
        ),
    ];
    for (case, st, obs, moves, canary_restored) in rows {
        let c = finalize(&spec(), &st, &obs, now);
        assert_eq!(weights(&c.actions) == 1, moves, "{case}: {:?}", c.actions);
        assert_eq!(
            canary_capacity(&c.actions) > 0,
            canary_restored,
            "{case}: {:?}",
            c.actions
        );
        assert_eq!(c.left_alone.is_some(), !moves, "{case}: {c:?}");
        assert_eq!(warning(&c.actions), c.left_alone, "{case}: {:?}", c.actions);
        if obs.stable.is_some() {
            assert!(
                stable_restored(&c.actions),
                "{case}: stable's pin stays: {:?}",
                c.actions
            );
        }
        if let Some(message) = &c.left_alone {
            assert!(
                message.contains("stable Deployment app-v1 has no Ready pods") && message.contains("canary v2 keeps"),
                "{case}: {message}"
            );
        }
    }
}

#[test]
fn nothing_is_said_when_there_is_no_traffic_to_move() {
    let now = Timestamp::from_second(1_700_000_000).unwrap();
    // Already on stable (the canary at 0 %), or a finished rollback: no weight write is planned.
    let rows = [
        (
            status(Phase::Progressing, None, true),
            observed(Some(0), Some(3), &[("v1", 100), ("v2", 0)], true),
        ),
        (
            status(Phase::RolledBack, Some(Phase::RolledBack), true),
            observed(Some(0), Some(3), &[("v1", 50), ("v2", 50)], true),
        ),
    ];
    for (st, obs) in rows {
        let c = finalize(&spec(), &st, &obs, now);
        assert_eq!(c.left_alone, None, "{c:?}");
        assert_eq!(c.actions, crate::plan::cleanup_observed(&spec(), &st, &obs, now));
    }
}

#[test]
fn the_message_says_how_much_the_canary_keeps() {
    let now = Timestamp::from_second(1_700_000_000).unwrap();
    let c = finalize(
        &spec(),
        &status(Phase::WaitingForApproval, None, true),
        &observed(Some(0), Some(3), &[("v1", 50), ("v2", 50)], true),
        now,
    );
    assert!(c.left_alone.is_some_and(|m| m.contains("keeps 50%")));
    let c = finalize(
        &spec(),
        &status(Phase::WaitingForApproval, None, true),
        &observed(Some(0), Some(3), &[], true),
        now,
    );
    assert!(c.left_alone.is_some_and(|m| m.contains("keeps the traffic it has")));
}
