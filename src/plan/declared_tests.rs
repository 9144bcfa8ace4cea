//! Declared versions only: every phase × every kind of change of `spec.stable`/`spec.canary`. Each
//! weight write may only give traffic to a version the spec names and that serves.

use crate::resources::reason::Reason;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};

use super::*;
use crate::resources::command::CommandKind;
use crate::resources::policy::{Pause, Step, VirtualServiceRef};

fn v(subset: &str) -> VersionRef {
    VersionRef {
        subset: subset.into(),
        deployment: format!("app-{subset}"),
    }
}

fn w(weight: u8) -> Step {
    Step {
        weight: Some(weight),
        pause: None,
    }
}

fn pause(secs: Option<u64>) -> Step {
    Step {
        weight: None,
        pause: Some(Pause {
            duration: secs.map(Duration::from_secs),
        }),
    }
}

fn spec(stable: &str, canary: Option<&str>) -> RolloutPolicySpec {
    RolloutPolicySpec {
        service: "app".into(),
        virtual_services: vec![VirtualServiceRef {
            name: "app".into(),
            namespace: None,
            routes: None,
        }],
        destination_rule: "app".into(),
        stable: v(stable),
        canary: canary.map(v),
        steps: vec![w(10), pause(Some(2)), w(50), pause(None), w(100), pause(Some(3600))],
        schedule: None,
        progress_deadline: Duration::from_secs(600),
        analysis: None,
        webhooks: Vec::new(),
        scaling: Default::default(),
        notifications: Vec::new(),
    }
}

/// Observes like the controller (`observe`): the stable is `declared_stable`, the canary is the
/// spec's; SetWeights are applied to the route; every weight write is checked.
struct Sim {
    spec: RolloutPolicySpec,
    status: RolloutPolicyStatus,
    route: BTreeMap<String, u8>,
    /// Ready pods by subset (a missing subset has none).
    ready: BTreeMap<String, i32>,
    problems: Vec<Problem>,
    command: Option<Command>,
    now: Timestamp,
    log: Vec<Plan>,
}

impl Sim {
    fn new() -> Self {
        let ready = ["v1", "v2", "v3", "v4"].iter().map(|s| (s.to_string(), 2)).collect();
        Sim {
            spec: spec("v1", Some("v2")),
            status: RolloutPolicyStatus::default(),
            route: [("v1".to_string(), 100)].into(),
            ready,
            problems: Vec::new(),
            command: None,
            now: Timestamp::from_second(1_700_000_000).unwrap(),
            log: Vec::new(),
        }
    }

    fn dep(&self, version: &VersionRef) -> Option<DeploymentState> {
        Some(DeploymentState {
            template_hash: format!("h-{}", version.subset),
            generation_observed: true,
            ready_replicas: self.ready.get(&version.subset).copied().unwrap_or(0),
        })
    }

    fn observe(&self) -> Observed {
        let stable = declared_stable(&self.spec, &self.status);
        let canary = self.spec.canary.clone().filter(|c| c.subset != stable.subset);
        Observed {
            generation: Some(1),
            problems: self.problems.clone(),
            canary: canary.as_ref().and_then(|c| self.dep(c)),
            stable: self.dep(&stable),
            routes: vec![self.route.clone()],
            command: self.command.clone(),
            ..Observed::default()
        }
    }

    fn step(&mut self) -> Plan {
        let p = plan(&self.spec, &self.status, &self.observe(), self.now);
        for a in &p.actions {
            if let Action::SetWeights {
                stable,
                canary,
                canary_weight,
            } = a
            {
                let mut next: BTreeMap<String, u8> = self.route.keys().map(|k| (k.clone(), 0)).collect();
                next.insert(stable.clone(), 100 - canary_weight);
                if let Some(c) = canary {
                    next.insert(c.clone(), *canary_weight);
                }
                self.check(&next, a);
                self.route = next;
            }
        }
        self.status = p.status.clone();
        self.log.push(p.clone());
        p
    }

    /// The invariant: a version gaining traffic is named by the spec and has Ready pods.
    fn check(&self, next: &BTreeMap<String, u8>, action: &Action) {
        let named: BTreeSet<&str> = std::iter::once(&self.spec.stable)
            .chain(self.spec.canary.as_ref())
            .map(|v| v.subset.as_str())
            .collect();
        for (subset, &weight) in next {
            let before = self.route.get(subset).copied().unwrap_or(0);
            if weight > 0 {
                assert!(
                    named.contains(subset.as_str()),
                    "{action:?} gives {weight}% to {subset}, which the spec {named:?} does not name (route was {:?})",
                    self.route
                );
            }
            if weight > before {
                assert!(
                    self.ready.get(subset).copied().unwrap_or(0) > 0,
                    "{action:?} gives more traffic to {subset}, which has no Ready pods"
                );
            }
        }
    }

    fn settle(&mut self) {
        for _ in 0..30 {
            if self.step().requeue != Some(Duration::ZERO) {
                return;
            }
        }
        panic!("planner did not settle: {:?}", self.status);
    }

    fn advance(&mut self, secs: i64) {
        self.now = self.now.checked_add(SignedDuration::from_secs(secs)).unwrap();
    }

    fn command(&mut self, id: &str, kind: CommandKind) {
        self.command = Some(Command {
            id: id.into(),
            kind,
            by: None,
        });
    }

    fn weight(&self, subset: &str) -> u8 {
        self.route.get(subset).copied().unwrap_or(0)
    }

    fn reasons(&self) -> Vec<String> {
        self.status.history.iter().map(|t| t.reason.clone()).collect()
    }
}

/// Every phase a rollout of v2 against v1 can be in when the spec changes.
const PHASES: [&str; 12] = [
    "Healthy",
    "Paused",
    "WaitingForApproval",
    "PausedByCommand",
    "ProgressingAt100",
    "JudgedAt100",
    "Succeeded",
    "RollingBack",
    "Aborted",
    "RolledBack",
    "Invalid",
    "WaitingForCanary",
];

fn at(phase: &str) -> Sim {
    let mut s = Sim::new();
    if phase == "Healthy" {
        s.spec = spec("v1", None);
        s.settle();
        return s;
    }
    s.settle(); // v2 at 10 %, timed pause
    match phase {
        "Paused" => return s,
        "Invalid" => {
            s.problems = vec![Problem {
                reason: Reason::SubsetNotFound,
                message: "DestinationRule app has no subset".into(),
            }];
            s.settle();
            return s;
        }
        "WaitingForCanary" => {
            s.ready.insert("v2".into(), 0);
            s.advance(3);
            s.settle();
            s.ready.insert("v2".into(), 2);
            return s;
        }
        _ => {}
    }
    s.advance(3);
    s.settle(); // 50 %, waits for approval
    match phase {
        "WaitingForApproval" => return s,
        "PausedByCommand" => {
            s.command("c-pause", CommandKind::Pause);
            s.settle();
            return s;
        }
        "RollingBack" => {
            s.command("c-abort", CommandKind::Abort);
            s.step();
            return s;
        }
        "Aborted" => {
            s.command("c-abort", CommandKind::Abort);
            s.settle();
            return s;
        }
        "RolledBack" => {
            s.ready.insert("v2".into(), 0); // canary loses its pods: CanaryUnavailable
            s.settle();
            s.ready.insert("v2".into(), 2);
            return s;
        }
        _ => {}
    }
    s.command("c-promote", CommandKind::Promote);
    s.step(); // 100 % written, not yet recorded as reached
    if phase == "ProgressingAt100" {
        return s;
    }
    s.settle(); // 100 %, held by the last (long) pause: judged at 100 %
    if phase == "JudgedAt100" {
        return s;
    }
    s.advance(3600);
    s.settle();
    assert_eq!(s.status.phase, Phase::Succeeded, "{phase}");
    s
}

/// Every kind of change: (name, spec.stable, spec.canary).
const CHANGES: [(&str, &str, Option<&str>); 8] = [
    ("stable changed", "v4", Some("v2")),
    ("canary changed", "v1", Some("v3")),
    ("both changed", "v2", Some("v3")),
    ("both changed to new versions", "v4", Some("v3")),
    ("canary removed", "v1", None),
    ("stable set to the current canary", "v2", None),
    ("canary set to the recorded stable", "v2", Some("v1")),
    (
        "stable removed from the spec (v2 now stable, v1 gone)",
        "v2",
        Some("v2"),
    ),
];

#[test]
fn every_phase_and_every_change_only_sends_traffic_to_declared_serving_versions() {
    for phase in PHASES {
        for (change, stable, canary) in CHANGES {
            let mut s = at(phase);
            let expected = s.status.phase;
            assert!(
                phase.starts_with("Paused")
                    || phase.ends_with(&format!("{expected:?}"))
                    || phase == "ProgressingAt100"
                    || phase == "JudgedAt100"
                    || phase == "PausedByCommand"
                    || phase == "WaitingForCanary",
                "{phase}: built {expected:?}"
            );
            s.problems.clear();
            s.command = None;
            s.spec = spec(stable, canary);
            // Walk on through pauses and approvals: every write is checked by the simulator.
            for round in 0..6 {
                s.settle();
                s.advance(3601);
                s.command(&format!("c-go-{round}"), CommandKind::Promote);
            }
            let named: BTreeSet<&str> = [Some(stable), canary].into_iter().flatten().collect();
            for (subset, weight) in &s.route {
                assert!(
                    *weight == 0 || named.contains(subset.as_str()),
                    "{phase} / {change}: {subset} ends with {weight}% ({:?})",
                    s.route
                );
            }
            let recorded = s.status.stable.as_ref().map(|v| v.subset.as_str()).unwrap_or_default();
            assert!(named.contains(recorded), "{phase} / {change}: status.stable {recorded}");
        }
    }
}

#[test]
fn a_declared_stable_without_ready_pods_holds_every_phase_where_it_is() {
    for phase in PHASES {
        let mut s = at(phase);
        let before = s.route.clone();
        let recorded = s.status.stable.clone();
        s.problems.clear();
        s.command = None;
        s.ready.insert("v4".into(), 0);
        s.spec = spec("v4", Some("v3"));
        for _ in 0..3 {
            let p = s.step();
            assert_eq!(weight_writes(&p), 0, "{phase}: {:?}", p.actions);
            assert_eq!(p.requeue, Some(READY_POLL), "{phase}");
        }
        assert_eq!(s.route, before, "{phase}");
        assert_eq!(
            s.status.stable, recorded,
            "{phase}: the old stable stays recorded while held"
        );
        assert_eq!(
            s.reasons().last().map(String::as_str),
            Some("StableNotReady"),
            "{phase}"
        );
        let ready = s.status.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "StableNotReady"),
            "{phase}"
        );
        // Once it has Ready pods, all traffic goes to it and v3 starts against it.
        s.ready.insert("v4".into(), 2);
        s.settle();
        assert_eq!(s.weight("v1"), 0, "{phase}");
        assert_eq!(s.weight("v2"), 0, "{phase}");
        assert_eq!((s.weight("v4"), s.weight("v3")), (90, 10), "{phase}");
        assert_eq!(s.status.stable, Some(v("v4")), "{phase}");
        assert!(s.reasons().contains(&"StableChanged".to_string()), "{phase}");
    }
}

fn weight_writes(p: &Plan) -> usize {
    p.actions
        .iter()
        .filter(|a| matches!(a, Action::SetWeights { .. }))
        .count()
}

/// The reported case: v2 at 100 % and judged there; Git then says stable v2, canary v3.
#[test]
fn git_moving_on_mid_judgement_adopts_the_canary_and_starts_the_next_against_it() {
    for phase in ["ProgressingAt100", "JudgedAt100"] {
        let mut s = at(phase);
        assert_eq!((s.weight("v1"), s.weight("v2")), (0, 100), "{phase}");
        assert_ne!(s.status.phase, Phase::Succeeded, "{phase}");
        s.spec = spec("v2", Some("v3"));
        let p = s.step();
        assert_eq!(
            weight_writes(&p),
            0,
            "{phase}: v2 already holds all traffic: {:?}",
            p.actions
        );
        assert_eq!(s.status.stable, Some(v("v2")), "{phase}");
        assert!(s.status.canary.is_none(), "{phase}");
        assert_eq!(s.reasons().last().map(String::as_str), Some("StableChanged"), "{phase}");
        let p = s.step();
        assert_eq!(
            s.status.canary.as_ref().map(|c| c.subset.as_str()),
            Some("v3"),
            "{phase}: {:?}",
            p.actions
        );
        assert!(
            s.reasons()
                .ends_with(&["RolloutStarted".into(), "WeightChanged".into()]),
            "{phase}"
        );
        let started = s.status.history.iter().rfind(|t| t.reason == "RolloutStarted").unwrap();
        assert!(started.message.contains("against stable v2"), "{}", started.message);
        s.settle();
        assert_eq!((s.weight("v1"), s.weight("v2"), s.weight("v3")), (0, 90, 10), "{phase}");
    }
}

/// A rollback in progress whose target the spec no longer names goes to the declared stable.
#[test]
fn a_rollback_in_progress_does_not_resurrect_an_undeclared_stable() {
    let mut s = at("RollingBack");
    assert_eq!((s.weight("v1"), s.weight("v2")), (50, 50));
    s.spec = spec("v2", Some("v3"));
    s.settle();
    assert_eq!(s.weight("v1"), 0, "{:?}", s.reasons());
    assert_eq!(s.status.stable, Some(v("v2")));
    // Stable changed to a new version: the halted canary loses its traffic to it, not to v1.
    let mut s = at("RollingBack");
    s.spec = spec("v4", Some("v2"));
    let p = s.step();
    assert_eq!(
        p.actions.iter().find(|a| matches!(a, Action::SetWeights { .. })),
        Some(&Action::SetWeights {
            stable: "v4".into(),
            canary: None,
            canary_weight: 0
        })
    );
    assert_eq!((s.weight("v1"), s.weight("v2"), s.weight("v4")), (0, 0, 100));
}

/// The ordinary cases keep their behaviour: a new canary against the same stable returns traffic to
/// it; after a promotion, the spec catching up (stable: v2) changes nothing.
#[test]
fn ordinary_changes_keep_their_behaviour() {
    let mut s = at("WaitingForApproval");
    s.spec = spec("v1", Some("v3"));
    s.step();
    assert!(s.reasons().ends_with(&["CanaryChanged".into(), "WeightChanged".into()]));
    assert_eq!((s.weight("v1"), s.weight("v2"), s.weight("v3")), (90, 0, 10));
    let mut s = at("Succeeded");
    assert_eq!(s.status.stable, Some(v("v2")));
    s.spec = spec("v2", None);
    let p = s.step();
    assert_eq!(weight_writes(&p), 0, "{:?}", p.actions);
    assert_eq!(s.status.stable, Some(v("v2")));
    assert!(!s.reasons().contains(&"StableChanged".to_string()));
}

/// Deleting the policy (the finalizer's `cleanup`) also sends traffic only to the declared stable,
/// and never to one without Ready pods.
#[test]
fn cleanup_only_sends_traffic_to_a_declared_serving_stable() {
    let mut s = at("JudgedAt100");
    s.spec = spec("v2", Some("v3"));
    let actions = cleanup_observed(&s.spec, &s.status, &s.observe(), s.now);
    for a in &actions {
        if let Action::SetWeights { stable, .. } = a {
            assert_eq!(stable, "v2", "{actions:?}");
        }
    }
    let mut s = at("WaitingForApproval");
    s.spec = spec("v4", Some("v3"));
    s.ready.insert("v4".into(), 0);
    let actions = super::finalize(&s.spec, &s.status, &s.observe(), s.now).actions;
    assert!(
        !actions.iter().any(|a| matches!(a, Action::SetWeights { .. })),
        "{actions:?}"
    );
    assert!(
        actions
            .iter()
            .any(|a| matches!(a, Action::Event { reason, .. } if reason == "TrafficLeftAlone"))
    );
    s.ready.insert("v4".into(), 2);
    let actions = super::finalize(&s.spec, &s.status, &s.observe(), s.now).actions;
    assert_eq!(
        actions.iter().find(|a| matches!(a, Action::SetWeights { .. })),
        Some(&Action::SetWeights {
            stable: "v4".into(),
            canary: Some("v2".into()),
            canary_weight: 0
        })
    );
}
