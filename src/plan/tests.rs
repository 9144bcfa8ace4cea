//! Table tests of the planner: no client, no clock; time is an input.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};

use super::*;
use crate::gates::commands::CommandKind;
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
        analysis: None,
        scaling: Default::default(),
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
    assert!(sim.status.message.as_deref().unwrap_or("").contains("Ready replicas"));
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

mod analysis {
    use super::*;
    use crate::analysis::engine::Check;
    use crate::policy::types::{
        Analysis, MetricCheck, MetricResult, OnProviderError, PrometheusAddress, ProviderErrorAction, Verdict,
    };

    fn analysis(failure_limit: u32, inconclusive_limit: u32, on_error: ProviderErrorAction) -> Analysis {
        Analysis {
            interval: Duration::from_secs(1),
            start_after: Duration::ZERO,
            failure_limit,
            min_requests: 0,
            inconclusive_limit,
            on_provider_error: OnProviderError {
                after: 2,
                action: on_error,
            },
            provider: None,
            prometheus: Some(PrometheusAddress {
                address: "http://prometheus:9090".into(),
                timeout: Duration::from_secs(5),
            }),
            metrics: vec![MetricCheck {
                name: "success-rate".into(),
                template: Some("istio-request-success-rate".into()),
                query: None,
                min: Some(99.0),
                max: None,
                relative: None,
                window: None,
            }],
        }
    }

    fn sim(failure_limit: u32, inconclusive_limit: u32, on_error: ProviderErrorAction) -> Sim {
        let mut sim = Sim::new();
        sim.spec.steps = vec![w(10), w(50), w(100)];
        sim.spec.analysis = Some(analysis(failure_limit, inconclusive_limit, on_error));
        sim
    }

    fn check(sim: &mut Sim, verdict: Verdict) {
        sim.advance(1);
        let value = if verdict == Verdict::Fail {
            Some(90.0)
        } else {
            Some(100.0)
        };
        sim.obs.analysis = Some(Check {
            at: sim.now,
            results: vec![MetricResult {
                name: "success-rate".into(),
                verdict,
                value,
                stable_value: None,
                threshold: ">= 99".into(),
                window: "1m".into(),
                message: format!("success-rate {:?}", verdict),
                at: sim.now,
            }],
        });
    }

    #[test]
    fn weight_increases_wait_for_a_passing_check_at_the_current_weight() {
        let mut sim = sim(1, 10, ProviderErrorAction::Pause);
        sim.settle();
        assert_eq!(sim.canary_weight(), 10);
        assert_eq!(
            sim.status
                .message
                .as_deref()
                .map(|m| m.contains("waiting for a passing")),
            Some(true)
        );
        // Inconclusive neither advances nor rolls back.
        check(&mut sim, Verdict::Inconclusive);
        sim.settle();
        assert_eq!((sim.canary_weight(), sim.status.phase), (10, Phase::Progressing));
        check(&mut sim, Verdict::Pass);
        sim.settle();
        assert_eq!(sim.canary_weight(), 50);
        // The pass at 10 % does not count for 50 %.
        sim.settle();
        assert_eq!(sim.canary_weight(), 50);
        check(&mut sim, Verdict::Pass);
        sim.settle();
        assert_eq!(sim.canary_weight(), 100);
        assert_eq!(sim.status.phase, Phase::Progressing, "promotion needs a check at 100 %");
        check(&mut sim, Verdict::Pass);
        sim.settle();
        assert_eq!(sim.status.phase, Phase::Succeeded);
    }

    #[test]
    fn failure_limit_rolls_back_at_once_and_names_the_metric() {
        let mut sim = sim(2, 10, ProviderErrorAction::Pause);
        sim.settle();
        check(&mut sim, Verdict::Fail);
        sim.settle();
        assert_eq!((sim.canary_weight(), sim.status.phase), (10, Phase::Progressing));
        check(&mut sim, Verdict::Fail);
        let p = sim.step();
        assert_eq!(weight_actions(&p), vec![set("v1", "v2", 0)], "in the same reconcile");
        assert_eq!(sim.status.phase, Phase::RolledBack);
        let message = sim.status.message.clone().unwrap_or_default();
        assert!(
            message.contains("success-rate") && message.contains("over 1m"),
            "{message}"
        );
        assert!(message.contains("failureLimit 2"), "{message}");
        // A pass between two failures resets the count.
        let mut sim = super::analysis::sim(2, 10, ProviderErrorAction::Pause);
        sim.settle();
        for v in [Verdict::Fail, Verdict::Pass, Verdict::Fail] {
            check(&mut sim, v);
            sim.settle();
        }
        assert_ne!(sim.status.phase, Phase::RolledBack);
    }

    #[test]
    fn a_breach_during_an_approval_pause_still_rolls_back() {
        let mut sim = sim(1, 10, ProviderErrorAction::Pause);
        sim.spec.steps = vec![w(10), pause(None), w(100)];
        sim.settle();
        assert_eq!(sim.status.phase, Phase::WaitingForApproval);
        check(&mut sim, Verdict::Fail);
        sim.settle();
        assert_eq!((sim.canary_weight(), sim.status.phase), (0, Phase::RolledBack));
    }

    #[test]
    fn too_many_inconclusive_checks_pause_for_a_human() {
        let mut sim = sim(1, 3, ProviderErrorAction::Pause);
        sim.settle();
        for _ in 0..3 {
            check(&mut sim, Verdict::Inconclusive);
            sim.settle();
        }
        assert_eq!((sim.canary_weight(), sim.status.phase), (10, Phase::Paused));
        assert!(sim.status.paused);
        assert!(
            sim.status
                .message
                .as_deref()
                .unwrap_or("")
                .contains("inconclusiveLimit 3")
        );
        // Passing checks alone do not lift a pause for a human.
        check(&mut sim, Verdict::Pass);
        sim.settle();
        assert_eq!(sim.status.phase, Phase::Paused);
        sim.obs.command = cmd("r", CommandKind::Resume);
        check(&mut sim, Verdict::Pass);
        sim.settle();
        assert_eq!(sim.canary_weight(), 50);
    }

    #[test]
    fn provider_errors_hold_then_go_on_or_roll_back_by_policy() {
        let mut sim = sim(1, 10, ProviderErrorAction::Pause);
        sim.settle();
        for _ in 0..2 {
            check(&mut sim, Verdict::Error);
            sim.settle();
        }
        assert_eq!((sim.canary_weight(), sim.status.phase), (10, Phase::Paused));
        assert!(sim.status.message.as_deref().unwrap_or("").contains("provider errors"));
        // Prometheus answers again: analysis goes on.
        check(&mut sim, Verdict::Pass);
        sim.settle();
        assert_eq!(sim.canary_weight(), 50);

        let mut sim = super::analysis::sim(1, 10, ProviderErrorAction::Rollback);
        sim.settle();
        for _ in 0..2 {
            check(&mut sim, Verdict::Error);
            sim.settle();
        }
        assert_eq!((sim.canary_weight(), sim.status.phase), (0, Phase::RolledBack));
    }

    #[test]
    fn promote_full_overrides_the_gate_but_a_stale_check_is_ignored() {
        let mut sim = sim(1, 10, ProviderErrorAction::Pause);
        sim.settle();
        // A check from before the canary got traffic does not count.
        sim.obs.analysis = Some(Check {
            at: t(-100),
            results: vec![],
        });
        sim.settle();
        assert_eq!(sim.status.analysis.as_ref().and_then(|a| a.last_check), None);
        sim.obs.command = cmd("full", CommandKind::PromoteFull);
        sim.settle();
        assert_eq!(sim.status.phase, Phase::Succeeded);
    }
}

mod scaling {
    use super::*;
    use crate::plan::{ScaleObserved, VersionScale};
    use crate::scale::capacity::Bounds;

    fn bounds(min: i32, max: i32) -> Bounds {
        Bounds {
            min_replicas: Some(min),
            max_replicas: max,
        }
    }

    fn version(deployment: &str, hpa_min: Option<i32>, replicas: i32, ready: i32) -> VersionScale {
        VersionScale {
            deployment: deployment.into(),
            hpa: hpa_min.map(|m| (format!("{deployment}-hpa"), bounds(m, 10))),
            spec_replicas: replicas,
            ready_replicas: ready,
        }
    }

    /// Stable at 4 replicas with an HPA (min 2), canary HPA min 1; steps 10 → 50 → 100.
    fn sim() -> Sim {
        let mut sim = Sim::new();
        sim.spec.steps = vec![w(10), w(50), w(100)];
        sim.obs.scaling = ScaleObserved {
            stable: Some(version("app-v1", Some(2), 4, 4)),
            canary: Some(version("app-v2", Some(1), 1, 1)),
        };
        sim
    }

    /// Apply HPA/replica actions to the observation; the HPA controller and kubelet are instant
    /// unless `ready_cap` holds the canary back.
    fn apply(sim: &mut Sim, p: &Plan, ready_cap: i32) {
        for a in &p.actions {
            match a {
                Action::SetHpaBounds { hpa, bounds } => {
                    for v in [&mut sim.obs.scaling.stable, &mut sim.obs.scaling.canary]
                        .into_iter()
                        .flatten()
                    {
                        if let Some((name, b)) = v.hpa.as_mut()
                            && name == hpa
                        {
                            *b = *bounds;
                            v.spec_replicas = v.spec_replicas.max(bounds.effective_min());
                        }
                    }
                }
                Action::SetReplicas { deployment, replicas } => {
                    for v in [&mut sim.obs.scaling.stable, &mut sim.obs.scaling.canary]
                        .into_iter()
                        .flatten()
                    {
                        if &v.deployment == deployment {
                            v.spec_replicas = *replicas;
                        }
                    }
                }
                _ => {}
            }
        }
        if let Some(c) = sim.obs.scaling.canary.as_mut() {
            c.ready_replicas = c.spec_replicas.min(ready_cap);
        }
    }

    fn hpa_actions(p: &Plan) -> Vec<(String, Option<i32>)> {
        p.actions
            .iter()
            .filter_map(|a| match a {
                Action::SetHpaBounds { hpa, bounds } => Some((hpa.clone(), bounds.min_replicas)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn originals_are_recorded_before_any_change() {
        let mut sim = sim();
        let p = sim.step();
        assert!(
            hpa_actions(&p).is_empty() && weight_actions(&p).is_empty(),
            "{:?}",
            p.actions
        );
        let sc = sim.status.scaling.clone().unwrap();
        assert_eq!(sc.stable_replicas_at_start, 4);
        assert_eq!(sc.canary.unwrap().original_bounds, Some(bounds(1, 10)));
        assert_eq!(sc.stable.unwrap().original_bounds, Some(bounds(2, 10)));
    }

    #[test]
    fn the_canary_gets_its_share_before_the_weight_moves() {
        let mut sim = sim();
        let mut trace = Vec::new();
        let mut cap = 1;
        for _ in 0..30 {
            let p = sim.step();
            apply(&mut sim, &p, cap);
            let canary = sim.obs.scaling.canary.clone().unwrap();
            let min = canary.hpa.map(|(_, b)| b.effective_min()).unwrap();
            trace.push((min, canary.ready_replicas, sim.canary_weight()));
            // Readiness comes one step behind the HPA: the weight must wait for it.
            cap = canary.spec_replicas;
            if sim.status.phase == Phase::Succeeded {
                break;
            }
        }
        for (min, ready, weight) in &trace {
            let needed = match weight {
                0 => 0,
                10 => 1,
                50 => 2,
                _ => 4,
            };
            assert!(
                *ready >= needed && *min >= needed,
                "weight {weight} with min {min}, ready {ready}: {trace:?}"
            );
        }
        assert!(trace.contains(&(2, 1, 10)), "50% waited for 2 Ready: {trace:?}");
        assert!(trace.contains(&(4, 2, 50)), "100% waited for 4 Ready: {trace:?}");
        assert_eq!(sim.status.phase, Phase::Succeeded);
        // Stable stayed pinned at 4 during the rollout, and got its original bounds back on promotion.
        let stable = sim.obs.scaling.stable.clone().unwrap();
        assert_eq!(stable.hpa.map(|(_, b)| b), Some(bounds(2, 10)));
    }

    #[test]
    fn rollback_moves_weights_before_restoring_hpas() {
        let mut sim = sim();
        while sim.canary_weight() < 50 {
            let p = sim.step();
            apply(&mut sim, &p, 10);
        }
        sim.obs.command = cmd("a", CommandKind::Abort);
        let p = sim.step();
        let first_weight = p
            .actions
            .iter()
            .position(|a| matches!(a, Action::SetWeights { .. }))
            .unwrap();
        let first_hpa = p
            .actions
            .iter()
            .position(|a| matches!(a, Action::SetHpaBounds { .. }))
            .unwrap();
        assert!(first_weight < first_hpa, "{:?}", p.actions);
        assert_eq!(
            hpa_actions(&p),
            vec![("app-v2-hpa".to_string(), Some(1)), ("app-v1-hpa".to_string(), Some(2))]
        );
        assert_eq!(sim.status.scaling, None);
    }

    #[test]
    fn old_stable_goes_to_zero_after_the_delay() {
        let mut sim = sim();
        sim.spec.scaling.scale_down_delay = Duration::from_secs(60);
        for _ in 0..12 {
            let p = sim.step();
            apply(&mut sim, &p, 10);
        }
        assert_eq!(sim.status.phase, Phase::Succeeded);
        let down = sim.status.scaling.as_ref().and_then(|s| s.scale_down.clone()).unwrap();
        assert_eq!(down.deployment, "app-v1");
        sim.advance(30);
        let p = sim.step();
        assert!(
            !p.actions.iter().any(|a| matches!(a, Action::SetReplicas { .. })),
            "too early: {:?}",
            p.actions
        );
        sim.advance(31);
        let p = sim.step();
        assert!(p.actions.contains(&Action::SetReplicas {
            deployment: "app-v1".into(),
            replicas: 0
        }));
        assert_eq!(hpa_actions(&p), vec![("app-v2-hpa".to_string(), Some(1))]);
        assert_eq!(sim.status.scaling, None);
    }

    #[test]
    fn max_below_the_need_fails_or_is_raised_by_policy() {
        let mut sim = sim();
        sim.obs.scaling.canary = Some(VersionScale {
            hpa: Some(("app-v2-hpa".into(), bounds(1, 3))),
            ..version("app-v2", None, 1, 1)
        });
        for _ in 0..12 {
            let p = sim.step();
            apply(&mut sim, &p, 10);
        }
        assert_eq!(sim.status.phase, Phase::RolledBack);
        assert!(
            sim.status.message.as_deref().unwrap_or("").contains("maxReplicas 3"),
            "{:?}",
            sim.status.message
        );

        let mut sim = super::scaling::sim();
        sim.spec.scaling.raise_max_replicas = true;
        sim.obs.scaling.canary = Some(VersionScale {
            hpa: Some(("app-v2-hpa".into(), bounds(1, 3))),
            ..version("app-v2", None, 1, 1)
        });
        for _ in 0..12 {
            let p = sim.step();
            apply(&mut sim, &p, 10);
        }
        assert_eq!(sim.status.phase, Phase::Succeeded);
    }

    #[test]
    fn a_canary_without_hpa_is_scaled_through_replicas() {
        let mut sim = sim();
        sim.obs.scaling.canary = Some(version("app-v2", None, 1, 1));
        let mut replicas = Vec::new();
        for _ in 0..12 {
            let p = sim.step();
            for a in &p.actions {
                if let Action::SetReplicas { replicas: r, .. } = a {
                    replicas.push(*r);
                }
            }
            apply(&mut sim, &p, 10);
        }
        assert_eq!(replicas, vec![2, 4]);
        assert_eq!(sim.status.phase, Phase::Succeeded);
    }

    #[test]
    fn deleting_mid_rollout_returns_traffic_and_restores_everything() {
        let mut sim = sim();
        while sim.canary_weight() < 50 {
            let p = sim.step();
            apply(&mut sim, &p, 10);
        }
        let actions = crate::plan::cleanup(&sim.spec, &sim.status, sim.now);
        assert!(
            matches!(actions[0], Action::SetWeights { canary_weight: 0, .. }),
            "{actions:?}"
        );
        assert_eq!(actions.len(), 3, "{actions:?}");
    }
}
