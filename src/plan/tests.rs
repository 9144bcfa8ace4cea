//! Table tests of the planner: no client, no clock; time is an input.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};

use super::*;
use crate::policy::types::{Pause, Step, VirtualServiceRef};

fn t(secs: i64) -> Timestamp {
    Timestamp::from_second(1_700_000_000 + secs).unwrap()
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

fn v(subset: &str) -> VersionRef {
    VersionRef {
        subset: subset.into(),
        deployment: format!("app-{subset}"),
    }
}

/// The seed scenario: 10 → pause 2s → 50 → pause {} → 100.
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
        steps: vec![w(10), pause(Some(2)), w(50), pause(None), w(100)],
        progress_deadline: Duration::from_secs(60),
    }
}

fn ready(hash: &str) -> Option<DeploymentState> {
    Some(DeploymentState {
        template_hash: hash.into(),
        generation_observed: true,
        ready_replicas: 1,
    })
}

fn routes(pairs: &[(&str, u8)]) -> Vec<BTreeMap<String, u8>> {
    vec![pairs.iter().map(|(s, w)| (s.to_string(), *w)).collect()]
}

fn obs(weights: &[(&str, u8)]) -> Observed {
    Observed {
        generation: Some(1),
        canary: ready("h1"),
        routes: routes(weights),
        ..Observed::default()
    }
}

fn cmd(id: &str, kind: CommandKind) -> Option<Command> {
    Some(Command {
        id: id.into(),
        kind,
        by: Some("alice".into()),
    })
}

fn set(stable: &str, canary: &str, weight: u8) -> Action {
    Action::SetWeights {
        stable: stable.into(),
        canary: Some(canary.into()),
        canary_weight: weight,
    }
}

fn weight_actions(p: &Plan) -> Vec<Action> {
    p.actions
        .iter()
        .filter(|a| matches!(a, Action::SetWeights { .. }))
        .cloned()
        .collect()
}

/// Drive the planner like the controller does: apply SetWeights to the observed routes, feed the
/// status back, and step the clock.
struct Sim {
    spec: RolloutPolicySpec,
    status: RolloutPolicyStatus,
    obs: Observed,
    now: Timestamp,
}

impl Sim {
    fn new() -> Self {
        Sim {
            spec: spec(),
            status: RolloutPolicyStatus::default(),
            obs: obs(&[("v1", 100)]),
            now: t(0),
        }
    }

    fn step(&mut self) -> Plan {
        let p = plan(&self.spec, &self.status, &self.obs, self.now);
        for a in &p.actions {
            if let Action::SetWeights {
                stable,
                canary,
                canary_weight,
            } = a
            {
                for route in &mut self.obs.routes {
                    for (subset, weight) in route.iter_mut() {
                        *weight = 0;
                        if subset == stable {
                            *weight = 100 - canary_weight;
                        }
                    }
                    route.insert(stable.clone(), 100 - canary_weight);
                    if let Some(c) = canary {
                        route.insert(c.clone(), *canary_weight);
                    }
                }
            }
        }
        self.status = p.status.clone();
        p
    }

    /// Reconcile until nothing is asked to happen at once.
    fn settle(&mut self) -> Plan {
        for _ in 0..20 {
            let p = self.step();
            if p.requeue != Some(Duration::ZERO) {
                return p;
            }
        }
        panic!("planner did not settle: {:?}", self.status);
    }

    fn advance(&mut self, secs: i64) {
        self.now = self.now.checked_add(SignedDuration::from_secs(secs)).unwrap();
    }

    fn canary_weight(&self) -> u8 {
        self.obs.routes[0].get("v2").copied().unwrap_or(0)
    }
}

#[test]
fn seed_scenario_walks_the_steps() {
    let mut sim = Sim::new();
    let p = sim.settle();
    assert_eq!(sim.canary_weight(), 10);
    assert_eq!(sim.status.phase, Phase::Paused);
    assert_eq!(p.requeue, Some(Duration::from_secs(2)));
    // Time passes less than the pause: nothing moves.
    sim.advance(1);
    assert!(weight_actions(&sim.settle()).is_empty());
    assert_eq!(sim.canary_weight(), 10);
    sim.advance(1);
    sim.settle();
    assert_eq!(sim.canary_weight(), 50);
    assert_eq!(sim.status.phase, Phase::WaitingForApproval);
    assert!(
        sim.status
            .pending_approval
            .as_deref()
            .unwrap_or("")
            .contains("50% to 100%")
    );
    // An approval gate never passes by time alone.
    sim.advance(3600);
    sim.settle();
    assert_eq!(sim.status.phase, Phase::WaitingForApproval);
    sim.obs.command = cmd("c1", CommandKind::Promote);
    sim.settle();
    assert_eq!(sim.canary_weight(), 100);
    assert_eq!(sim.status.phase, Phase::Succeeded);
    assert_eq!(sim.status.stable, Some(v("v2")));
    assert_eq!(sim.status.canary, None);
    assert_eq!(sim.obs.routes[0].get("v1"), Some(&0));
    // Succeeded is stable: further reconciles change nothing.
    let before = sim.status.clone();
    let p = sim.settle();
    assert!(p.actions.is_empty(), "{:?}", p.actions);
    assert_eq!(sim.status, before);
}

#[test]
fn restart_resumes_without_restarting_the_pause() {
    let mut sim = Sim::new();
    sim.settle();
    sim.advance(1);
    // A restart is a fresh planner with the same status: the pause has 1 s left, not 2.
    let p = plan(&sim.spec, &sim.status.clone(), &sim.obs, sim.now);
    assert_eq!(p.requeue, Some(Duration::from_secs(1)));
    assert!(weight_actions(&p).is_empty());
}

#[test]
fn crash_after_weight_write_before_status_is_idempotent() {
    let mut sim = Sim::new();
    let status0 = sim.status.clone();
    let p = sim.step(); // the weights were written, then the daemon died before the status write
    assert_eq!(weight_actions(&p), vec![set("v1", "v2", 10)]);
    sim.status = status0;
    let p = sim.step();
    assert!(weight_actions(&p).is_empty(), "no second write: {:?}", p.actions);
    assert_eq!(sim.status.canary_weight, 10);
    assert_eq!(sim.status.step, Some(1));
}

#[test]
fn waits_for_a_ready_canary_then_fails_after_the_deadline() {
    let mut sim = Sim::new();
    sim.obs.canary = Some(DeploymentState {
        template_hash: "h1".into(),
        generation_observed: true,
        ready_replicas: 0,
    });
    let p = sim.settle();
    assert!(weight_actions(&p).is_empty());
    assert_eq!(sim.status.phase, Phase::Progressing);
    assert!(sim.status.message.as_deref().unwrap_or("").contains("to be Ready"));
    sim.advance(61);
    let p = sim.settle();
    assert_eq!(sim.status.phase, Phase::RolledBack);
    assert_eq!(weight_actions(&p), vec![set("v1", "v2", 0)]);
    assert!(sim.status.message.as_deref().unwrap_or("").contains("progressDeadline"));
    // A generation not yet observed is not ready either.
    let mut sim = Sim::new();
    sim.obs.canary = Some(DeploymentState {
        template_hash: "h1".into(),
        generation_observed: false,
        ready_replicas: 3,
    });
    sim.settle();
    assert_eq!(sim.canary_weight(), 0);
}

#[test]
fn commands_table() {
    struct Case {
        name: &'static str,
        kind: CommandKind,
        /// Seconds into the seed scenario before the command.
        at: i64,
        want_phase: Phase,
        want_weight: u8,
    }
    let cases = [
        Case {
            name: "abort in a pause",
            kind: CommandKind::Abort,
            at: 0,
            want_phase: Phase::Aborted,
            want_weight: 0,
        },
        Case {
            name: "abort at approval",
            kind: CommandKind::Abort,
            at: 2,
            want_phase: Phase::Aborted,
            want_weight: 0,
        },
        Case {
            name: "promote skips a timed pause",
            kind: CommandKind::Promote,
            at: 0,
            want_phase: Phase::WaitingForApproval,
            want_weight: 50,
        },
        Case {
            name: "promote --full",
            kind: CommandKind::PromoteFull,
            at: 0,
            want_phase: Phase::Succeeded,
            want_weight: 100,
        },
        Case {
            name: "pause holds",
            kind: CommandKind::Pause,
            at: 0,
            want_phase: Phase::Paused,
            want_weight: 10,
        },
        Case {
            name: "retry without a halt is ignored",
            kind: CommandKind::Retry,
            at: 0,
            want_phase: Phase::Paused,
            want_weight: 10,
        },
    ];
    for c in cases {
        let mut sim = Sim::new();
        sim.settle();
        sim.advance(c.at);
        sim.settle();
        sim.obs.command = cmd("c1", c.kind);
        sim.settle();
        assert_eq!(sim.status.phase, c.want_phase, "{}", c.name);
        assert_eq!(sim.canary_weight(), c.want_weight, "{}", c.name);
        assert_eq!(sim.status.last_command_id.as_deref(), Some("c1"), "{}", c.name);
        // The same command id is handled once.
        let before = sim.status.clone();
        sim.settle();
        assert_eq!(sim.status.last_command_id, before.last_command_id, "{}", c.name);
    }
}

#[test]
fn manual_pause_outlasts_the_timed_pause_until_resume() {
    let mut sim = Sim::new();
    sim.settle();
    sim.obs.command = cmd("p", CommandKind::Pause);
    sim.settle();
    sim.advance(30);
    sim.settle();
    assert_eq!(sim.canary_weight(), 10);
    assert_eq!(sim.status.phase, Phase::Paused);
    sim.obs.command = cmd("r", CommandKind::Resume);
    sim.settle();
    assert_eq!(sim.canary_weight(), 50);
    assert_eq!(sim.status.phase, Phase::WaitingForApproval);
}

#[test]
fn abort_then_retry_starts_from_step_one() {
    let mut sim = Sim::new();
    sim.settle();
    sim.obs.command = cmd("a", CommandKind::Abort);
    sim.settle();
    assert_eq!((sim.status.phase, sim.canary_weight()), (Phase::Aborted, 0));
    // Aborted stays aborted, and traffic someone puts back on the canary returns to stable.
    sim.obs.routes = routes(&[("v1", 70), ("v2", 30)]);
    let p = sim.settle();
    assert_eq!(weight_actions(&p), vec![set("v1", "v2", 0)]);
    assert_eq!(sim.status.phase, Phase::Aborted);
    sim.obs.command = cmd("r", CommandKind::Retry);
    sim.settle();
    assert_eq!(sim.canary_weight(), 10);
    assert_eq!(sim.status.step, Some(1));
    assert_eq!(sim.status.phase, Phase::Paused);
}

#[test]
fn new_canary_template_restarts_from_the_first_step() {
    let mut sim = Sim::new();
    sim.settle();
    sim.advance(2);
    sim.settle();
    assert_eq!(sim.canary_weight(), 50);
    sim.obs.canary = ready("h2");
    let p = sim.step();
    // Traffic goes back to stable first, then the rollout begins again.
    assert_eq!(weight_actions(&p)[0], set("v1", "v2", 0));
    assert_eq!(sim.status.canary.as_ref().map(|c| c.template_hash.as_str()), Some("h2"));
    sim.settle();
    assert_eq!(sim.canary_weight(), 10);
    assert_eq!(sim.status.step, Some(1));
}

#[test]
fn changed_canary_version_returns_traffic_then_restarts() {
    let mut sim = Sim::new();
    sim.settle();
    sim.spec.canary = Some(v("v3"));
    let p = sim.step();
    assert_eq!(weight_actions(&p)[0], set("v1", "v2", 0));
    sim.settle();
    assert_eq!(sim.obs.routes[0].get("v3"), Some(&10));
    assert_eq!(sim.obs.routes[0].get("v2"), Some(&0));
}

#[test]
fn rolled_back_canary_is_not_retried_until_it_changes() {
    let mut sim = Sim::new();
    sim.obs.canary = Some(DeploymentState {
        template_hash: "h1".into(),
        generation_observed: true,
        ready_replicas: 0,
    });
    sim.settle();
    sim.advance(120);
    sim.settle();
    assert_eq!(sim.status.phase, Phase::RolledBack);
    sim.obs.canary = ready("h1");
    sim.advance(10);
    sim.settle();
    assert_eq!((sim.status.phase, sim.canary_weight()), (Phase::RolledBack, 0));
    sim.obs.canary = ready("h2");
    sim.settle();
    assert_eq!(sim.status.phase, Phase::Paused);
    assert_eq!(sim.canary_weight(), 10);
}

#[test]
fn no_canary_keeps_the_route_and_reports_healthy() {
    let mut sim = Sim::new();
    sim.spec.canary = None;
    sim.obs.routes = routes(&[("v1", 100)]);
    let p = sim.settle();
    assert!(weight_actions(&p).is_empty());
    assert_eq!(sim.status.phase, Phase::Healthy);
    // Removing the canary mid-rollout returns its traffic.
    let mut sim = Sim::new();
    sim.settle();
    sim.spec.canary = None;
    let p = sim.settle();
    assert_eq!(
        weight_actions(&p),
        vec![Action::SetWeights {
            stable: "v1".into(),
            canary: Some("v2".into()),
            canary_weight: 0
        }]
    );
    assert_eq!(sim.status.phase, Phase::Healthy);
}

#[test]
fn preflight_problem_changes_nothing() {
    let mut sim = Sim::new();
    sim.obs.problems = vec![Problem {
        reason: "DestinationRuleInWrongNamespace".into(),
        message: "move it".into(),
    }];
    let p = sim.settle();
    assert!(weight_actions(&p).is_empty());
    assert_eq!(sim.status.phase, Phase::Invalid);
    let ready = sim.status.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "DestinationRuleInWrongNamespace")
    );
    assert!(p.actions.iter().any(|a| matches!(
        a,
        Action::Event {
            type_: EventType::Warning,
            ..
        }
    )));
    // Problem fixed: the rollout starts.
    sim.obs.problems.clear();
    sim.settle();
    assert_eq!(sim.canary_weight(), 10);
}

#[test]
fn drifted_weights_are_put_back() {
    let mut sim = Sim::new();
    sim.settle();
    sim.obs.routes = routes(&[("v1", 100), ("v2", 0)]);
    let p = sim.settle();
    assert_eq!(weight_actions(&p), vec![set("v1", "v2", 10)]);
}

#[test]
fn history_is_bounded_and_events_follow_transitions() {
    let mut sim = Sim::new();
    for i in 0..30 {
        sim.obs.command = cmd(
            &format!("c{i}"),
            if i % 2 == 0 {
                CommandKind::Abort
            } else {
                CommandKind::Retry
            },
        );
        sim.settle();
    }
    assert!(sim.status.history.len() <= HISTORY_LIMIT);
    let p = sim.settle();
    assert!(
        p.actions.is_empty(),
        "a repeat reconcile emits nothing: {:?}",
        p.actions
    );
}
