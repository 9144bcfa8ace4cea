//! Table tests of the planner: no client, no clock; time is an input.

use crate::resources::reason::Reason;
use std::collections::BTreeMap;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};

use super::*;
use crate::resources::command::CommandKind;
use crate::resources::policy::{Pause, Step, VirtualServiceRef};

mod schedule;
mod stuck;

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
        schedule: None,
        progress_deadline: Duration::from_secs(60),
        analysis: None,
        webhooks: Vec::new(),
        scaling: Default::default(),
        notifications: Vec::new(),
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
        stable: ready("s1"),
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
fn a_policy_first_seen_at_rest_is_recorded_without_an_event_and_later_transitions_have_one() {
    let mut sim = Sim::new();
    sim.spec.canary = None;
    sim.obs.routes = routes(&[("v1", 100)]);
    let p = sim.step();
    let events = |p: &Plan| p.actions.iter().filter(|a| matches!(a, Action::Event { .. })).count();
    assert_eq!(events(&p), 0, "{:?}", p.actions);
    assert_eq!(sim.status.phase, Phase::Healthy);
    assert_eq!(sim.status.history.len(), 1);
    // A canary appears: its transitions are announced.
    sim.spec.canary = Some(v("v2"));
    let p = sim.step();
    assert!(events(&p) > 0, "{:?}", p.actions);
}

#[test]
fn preflight_problem_changes_nothing() {
    let mut sim = Sim::new();
    sim.obs.problems = vec![Problem {
        reason: Reason::DestinationRuleInWrongNamespace,
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
fn an_ended_pause_does_not_undo_the_next_weight_written_before_a_lost_status() {
    let mut sim = Sim::new();
    sim.settle(); // 10 %, holding for 2 s
    sim.advance(3);
    let before = sim.status.clone();
    let p = sim.step(); // the pause ends and 50 % is written; the status write is lost
    assert_eq!(weight_actions(&p), vec![set("v1", "v2", 50)]);
    sim.status = before;
    let p = sim.step();
    assert!(
        weight_actions(&p).is_empty(),
        "the canary went back to 10 % before 50 %: {:?}",
        p.actions
    );
    assert_eq!(sim.status.canary_weight, 50);
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
    use crate::analysis::check::Check;
    use crate::resources::policy::{
        Analysis, MetricCheck, MetricResult, OnProviderError, PrometheusAddress, ProviderErrorAction, Verdict,
    };

    pub(super) fn analysis(failure_limit: u32, inconclusive_limit: u32, on_error: ProviderErrorAction) -> Analysis {
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
        check_from(sim, verdict, 0);
    }

    /// A check taken now whose widest window reaches `window` seconds back.
    fn check_from(sim: &mut Sim, verdict: Verdict, window: i64) {
        let value = if verdict == Verdict::Fail {
            Some(90.0)
        } else {
            Some(100.0)
        };
        sim.obs.analysis = Some(Check {
            at: sim.now,
            window_start: sim.now.checked_sub(SignedDuration::from_secs(window)).unwrap(),
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
        // The verdict is recorded first (RollingBack), the weights go back in the very next reconcile.
        let p = sim.step();
        assert!(weight_actions(&p).is_empty(), "{:?}", p.actions);
        assert_eq!(
            (sim.status.phase, p.requeue),
            (Phase::RollingBack, Some(Duration::ZERO))
        );
        let p = sim.step();
        assert_eq!(weight_actions(&p), vec![set("v1", "v2", 0)]);
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
            window_start: t(-160),
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
    use crate::replicas::Bounds;

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
        assert!(
            p.actions.iter().all(|a| matches!(a, Action::Event { .. })),
            "{:?}",
            p.actions
        );
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

    /// A deleted canary Deployment is rolled back without writes to it (they would fail with 404).
    #[test]
    fn a_deleted_canary_is_rolled_back_without_touching_its_replicas() {
        let mut sim = sim();
        sim.obs.scaling.canary = Some(version("app-v2", None, 1, 1));
        while sim.canary_weight() < 50 {
            let p = sim.step();
            apply(&mut sim, &p, 10);
        }
        sim.obs.canary = None;
        sim.obs.scaling.canary = None;
        sim.obs.canary_problems = vec![Problem {
            reason: Reason::DeploymentNotFound,
            message: "canary Deployment app-v2 not found".into(),
        }];
        let mut actions = Vec::new();
        for _ in 0..3 {
            actions.extend(sim.step().actions);
        }
        assert!(
            !actions
                .iter()
                .any(|a| matches!(a, Action::SetReplicas { deployment, .. } if deployment == "app-v2")),
            "{actions:?}"
        );
        assert_eq!((sim.status.phase, sim.canary_weight()), (Phase::RolledBack, 0));
    }

    /// `promote --full` skips the approval but not the capacity: 100 % only with 4 Ready replicas.
    #[test]
    fn promote_full_waits_for_the_capacity_of_one_hundred_percent() {
        let mut sim = sim();
        sim.spec.steps = vec![w(10), pause(None), w(100)];
        for _ in 0..10 {
            let p = sim.step();
            apply(&mut sim, &p, 10);
        }
        assert_eq!((sim.canary_weight(), sim.status.phase), (10, Phase::WaitingForApproval));
        sim.obs.command = cmd("f", CommandKind::PromoteFull);
        let mut waited = false;
        let mut cap = sim.obs.scaling.canary.as_ref().unwrap().ready_replicas;
        for _ in 0..20 {
            let p = sim.step();
            apply(&mut sim, &p, cap);
            let canary = sim.obs.scaling.canary.clone().unwrap();
            if sim.canary_weight() == 100 {
                assert!(canary.ready_replicas >= 4, "100% with {} Ready", canary.ready_replicas);
            }
            waited |= sim
                .status
                .history
                .last()
                .is_some_and(|t| t.reason == "WaitingForCanary");
            // Pods become Ready one reconcile after the HPA asks for them.
            cap = canary.spec_replicas;
            if sim.status.phase == Phase::Succeeded {
                break;
            }
        }
        assert!(waited, "it waited for the canary's capacity");
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

/// Issue 8: the planner's trust defects. Each table row is a situation a crash, a conflict or a
/// person's edit can leave behind.
mod trust {
    use super::*;
    use crate::analysis::check::Check;
    use crate::resources::policy::{Analysis, MetricResult, ProviderErrorAction, Verdict};

    fn analysis() -> Analysis {
        Analysis {
            interval: Duration::from_secs(10),
            ..super::analysis::analysis(1, 10, ProviderErrorAction::Pause)
        }
    }

    /// A check judged now over a window of `window` seconds.
    fn check(sim: &mut Sim, verdict: Verdict, window: i64) {
        sim.obs.analysis = Some(Check {
            at: sim.now,
            window_start: sim.now.checked_sub(SignedDuration::from_secs(window)).unwrap(),
            results: vec![MetricResult {
                name: "success-rate".into(),
                verdict,
                value: Some(if verdict == Verdict::Fail { 90.0 } else { 100.0 }),
                stable_value: None,
                threshold: ">= 99".into(),
                window: format!("{window}s"),
                message: format!("success-rate {verdict:?}"),
                at: sim.now,
            }],
        });
    }

    fn problem(reason: Reason) -> Problem {
        Problem {
            reason,
            message: format!("{reason} message"),
        }
    }

    fn unready(hash: &str) -> Option<DeploymentState> {
        Some(DeploymentState {
            template_hash: hash.into(),
            generation_observed: true,
            ready_replicas: 0,
        })
    }

    /// 10 → 50 (approval) with the canary at 50 %.
    fn at_fifty() -> Sim {
        let mut sim = Sim::new();
        sim.spec.steps = vec![w(10), w(50), pause(None), w(100)];
        sim.settle();
        assert_eq!((sim.canary_weight(), sim.status.phase), (50, Phase::WaitingForApproval));
        sim
    }

    fn events(p: &Plan, reason: &str) -> Vec<(EventType, String)> {
        p.actions
            .iter()
            .filter_map(|a| match a {
                Action::Event {
                    type_,
                    reason: r,
                    message,
                } if r == reason => Some((*type_, message.clone())),
                _ => None,
            })
            .collect()
    }

    fn gives_canary_traffic(p: &Plan) -> bool {
        p.actions
            .iter()
            .any(|a| matches!(a, Action::SetWeights { canary_weight, .. } if *canary_weight > 0))
    }

    /// Every way a rollout halts: the deciding reconcile only records it; the next one moves traffic.
    #[test]
    fn a_halt_is_recorded_before_traffic_moves() {
        struct Case {
            name: &'static str,
            cause: fn(&mut Sim),
            phase: Phase,
            reason: &'static str,
        }
        let cases = [
            Case {
                name: "abort",
                cause: |sim| sim.obs.command = cmd("a", CommandKind::Abort),
                phase: Phase::Aborted,
                reason: "Aborted",
            },
            Case {
                name: "analysis breach",
                cause: |sim| {
                    sim.spec.analysis = Some(analysis());
                    sim.advance(1);
                    check(sim, Verdict::Fail, 0);
                },
                phase: Phase::RolledBack,
                reason: "AnalysisFailed",
            },
            Case {
                name: "canary lost its pods",
                cause: |sim| sim.obs.canary = unready("h1"),
                phase: Phase::RolledBack,
                reason: "CanaryUnavailable",
            },
            Case {
                name: "canary subset deleted",
                cause: |sim| sim.obs.canary_problems = vec![problem(Reason::SubsetNotFound)],
                phase: Phase::RolledBack,
                reason: "CanaryUnavailable",
            },
            Case {
                name: "canary Deployment deleted",
                cause: |sim| {
                    sim.obs.canary = None;
                    sim.obs.canary_problems = vec![problem(Reason::DeploymentNotFound)];
                },
                phase: Phase::RolledBack,
                reason: "CanaryUnavailable",
            },
        ];
        for c in cases {
            let mut sim = at_fifty();
            (c.cause)(&mut sim);
            let decided = sim.step();
            assert!(weight_actions(&decided).is_empty(), "{}: {:?}", c.name, decided.actions);
            assert_eq!(sim.status.phase, Phase::RollingBack, "{}", c.name);
            assert_eq!(
                sim.status.canary.as_ref().and_then(|x| x.halted),
                Some(c.phase),
                "{}",
                c.name
            );
            assert_eq!(decided.requeue, Some(Duration::ZERO), "{}", c.name);
            assert_eq!(sim.history_reason(), c.reason, "{}", c.name);
            if c.phase == Phase::Aborted {
                assert_eq!(sim.status.last_command_id.as_deref(), Some("a"), "{}", c.name);
            }
            let recorded = sim.status.clone();
            let moved = sim.step();
            assert_eq!(weight_actions(&moved), vec![set("v1", "v2", 0)], "{}", c.name);
            assert_eq!(sim.status.phase, c.phase, "{}", c.name);
            assert_eq!(sim.history_reason(), c.reason, "{}", c.name);
            assert!(
                sim.status
                    .message
                    .as_deref()
                    .unwrap_or("")
                    .contains("all traffic on stable v1"),
                "{}: {:?}",
                c.name,
                sim.status.message
            );

            // A crash after the weight write, before the status write: the next daemon starts from the
            // recorded RollingBack with the weights already on stable, and only finishes the record.
            sim.status = recorded.clone();
            let p = sim.step();
            assert!(!gives_canary_traffic(&p), "{}: {:?}", c.name, p.actions);
            assert_eq!(sim.status.phase, c.phase, "{}", c.name);

            // A crash before the weight write: whatever happens next (time, passing checks, promote
            // commands, the canary back), the canary never gets traffic again.
            let mut sim2 = at_fifty();
            (c.cause)(&mut sim2);
            sim2.status = recorded;
            sim2.obs.canary = ready("h1");
            sim2.obs.canary_problems.clear();
            for (i, kind) in [CommandKind::Promote, CommandKind::PromoteFull, CommandKind::Resume]
                .into_iter()
                .enumerate()
            {
                sim2.advance(30);
                if sim2.spec.analysis.is_some() {
                    check(&mut sim2, Verdict::Pass, 0);
                }
                sim2.obs.command = cmd(&format!("x{i}"), kind);
                for _ in 0..3 {
                    let p = sim2.step();
                    assert!(!gives_canary_traffic(&p), "{}: {:?}", c.name, p.actions);
                }
                assert_eq!(sim2.canary_weight(), 0, "{}", c.name);
                assert_eq!(sim2.status.phase, c.phase, "{}", c.name);
            }
        }
    }

    #[test]
    fn a_halted_canary_gets_no_traffic_even_when_routes_are_unknown() {
        let mut sim = at_fifty();
        sim.obs.command = cmd("a", CommandKind::Abort);
        sim.settle();
        assert_eq!(sim.status.phase, Phase::Aborted);
        // The routes could not be read: "all weights as wanted" is not assumed.
        sim.obs.routes.clear();
        let p = sim.step();
        assert_eq!(weight_actions(&p), vec![set("v1", "v2", 0)]);
        // Same while a problem holds the policy.
        sim.obs.problems = vec![problem(Reason::ServiceNotFound)];
        let p = sim.step();
        assert_eq!(weight_actions(&p), vec![set("v1", "v2", 0)]);
        assert_eq!(sim.status.phase, Phase::Aborted);
        // `retry` while the problem lasts starts over, held at 0 % until it is fixed.
        sim.obs.routes = routes(&[("v1", 100), ("v2", 0)]);
        sim.obs.command = cmd("r", CommandKind::Retry);
        let p = sim.settle();
        assert!(!gives_canary_traffic(&p), "{:?}", p.actions);
        assert_eq!(sim.status.canary.as_ref().and_then(|c| c.halted), None);
        assert_eq!((sim.status.phase, sim.canary_weight()), (Phase::Invalid, 0));
        sim.obs.problems.clear();
        sim.settle();
        assert_eq!((sim.status.phase, sim.canary_weight()), (Phase::WaitingForApproval, 50));
    }

    /// The weight is found in place (written before a crash or a lost status write): the canary is
    /// judged at it anyway, and the next weight waits for a check at it.
    #[test]
    fn a_weight_found_in_place_is_judged() {
        let mut sim = Sim::new();
        sim.spec.steps = vec![w(10), w(50), w(100)];
        sim.spec.analysis = Some(analysis());
        let start = sim.status.clone();
        let p = sim.step();
        assert_eq!(weight_actions(&p), vec![set("v1", "v2", 10)]);
        // The status write after that weight was lost (a crash or a 409): start again from before.
        sim.status = start;
        sim.advance(5);
        let p = sim.step();
        assert!(weight_actions(&p).is_empty(), "{:?}", p.actions);
        let a = sim.status.analysis.clone().unwrap();
        assert_eq!((a.since, a.weight_set_at), (Some(sim.now), Some(sim.now)));
        assert_eq!(sim.status.canary_weight, 10);
        assert_eq!(sim.status.reason(), "WaitingForAnalysis");
        // A failing check at that weight rolls back; a passing one lets it go on.
        let mut fail = Sim {
            spec: sim.spec.clone(),
            status: sim.status.clone(),
            obs: sim.obs.clone(),
            now: sim.now,
        };
        fail.advance(11);
        check(&mut fail, Verdict::Fail, 10);
        fail.settle();
        assert_eq!((fail.status.phase, fail.canary_weight()), (Phase::RolledBack, 0));
        sim.advance(11);
        check(&mut sim, Verdict::Pass, 10);
        sim.settle();
        assert_eq!(sim.canary_weight(), 50);
    }

    #[test]
    fn analysis_added_mid_rollout_judges_the_current_weight() {
        let mut sim = Sim::new();
        sim.settle();
        assert_eq!((sim.canary_weight(), sim.status.phase), (10, Phase::Paused));
        assert_eq!(sim.status.analysis, None);
        sim.spec.analysis = Some(analysis());
        sim.step();
        let a = sim.status.analysis.clone().unwrap();
        assert_eq!((a.since, a.weight_set_at), (Some(sim.now), Some(sim.now)));
        // The pause ends, but 50 % waits for a check at 10 %.
        sim.advance(5);
        sim.settle();
        assert_eq!(sim.canary_weight(), 10);
        assert_eq!(sim.status.reason(), "WaitingForAnalysis");
        sim.advance(15);
        check(&mut sim, Verdict::Fail, 10);
        sim.settle();
        assert_eq!((sim.status.phase, sim.canary_weight()), (Phase::RolledBack, 0));
    }

    /// Only a check whose whole window lies after the weight was set raises the weight or promotes.
    #[test]
    fn the_gate_needs_a_whole_window_at_the_weight() {
        let cases = [
            // (seconds after the weight was set, window seconds, raises)
            (5, 60, false),
            (59, 60, false),
            (60, 60, false),
            (61, 60, true),
            (90, 60, true),
            (31, 30, true),
            (31, 31, false),
        ];
        for (after, window, raises) in cases {
            let mut sim = Sim::new();
            sim.spec.steps = vec![w(10), w(50), w(100)];
            sim.spec.analysis = Some(analysis());
            sim.settle();
            assert_eq!(sim.canary_weight(), 10);
            sim.advance(after);
            check(&mut sim, Verdict::Pass, window);
            sim.settle();
            let want = if raises { 50 } else { 10 };
            assert_eq!(sim.canary_weight(), want, "check {after}s after over {window}s");
        }
        // Promotion too: at 100 % a check straddling the change does not promote.
        let mut sim = Sim::new();
        sim.spec.steps = vec![w(100)];
        sim.spec.analysis = Some(analysis());
        sim.settle();
        assert_eq!(sim.canary_weight(), 100);
        sim.advance(60);
        check(&mut sim, Verdict::Pass, 60);
        sim.settle();
        assert_ne!(sim.status.phase, Phase::Succeeded);
        sim.advance(1);
        check(&mut sim, Verdict::Pass, 60);
        sim.settle();
        assert_eq!(sim.status.phase, Phase::Succeeded);
    }

    /// A problem that is not the canary's holds the weights, but abort, analysis rollback and the
    /// progress deadline still work, and a promotion is refused.
    #[test]
    fn other_problems_hold_but_abort_rollback_and_deadline_work() {
        // Holds.
        let mut sim = at_fifty();
        sim.obs.problems = vec![problem(Reason::AmbiguousHpa)];
        sim.advance(5);
        let p = sim.step();
        assert!(weight_actions(&p).is_empty(), "{:?}", p.actions);
        assert_eq!(
            (sim.status.phase, sim.canary_weight(), sim.status.step),
            (Phase::Invalid, 50, Some(2))
        );
        assert!(
            sim.status
                .message
                .as_deref()
                .unwrap_or("")
                .contains("holding canary v2 at 50%")
        );
        // Promote is refused and said so.
        sim.obs.command = cmd("p", CommandKind::PromoteFull);
        let p = sim.step();
        assert!(weight_actions(&p).is_empty());
        assert_eq!(events(&p, "CommandIgnored").len(), 1, "{:?}", p.actions);
        assert_eq!(sim.canary_weight(), 50);
        // Abort works.
        sim.obs.command = cmd("a", CommandKind::Abort);
        sim.settle();
        assert_eq!((sim.status.phase, sim.canary_weight()), (Phase::Aborted, 0));

        // An analysis breach rolls back.
        let mut sim = at_fifty();
        sim.spec.analysis = Some(analysis());
        sim.step();
        sim.obs.problems = vec![problem(Reason::AmbiguousHpa)];
        sim.advance(20);
        check(&mut sim, Verdict::Fail, 10);
        sim.settle();
        assert_eq!((sim.status.phase, sim.canary_weight()), (Phase::RolledBack, 0));
        assert_eq!(sim.history_reason(), "AnalysisFailed");

        // The progress deadline (60 s) counts from when the problem appeared.
        let mut sim = at_fifty();
        sim.advance(100);
        sim.obs.problems = vec![problem(Reason::DestinationRuleHostMismatch)];
        sim.settle();
        assert_eq!(sim.status.phase, Phase::Invalid);
        sim.advance(59);
        sim.settle();
        assert_eq!((sim.status.phase, sim.canary_weight()), (Phase::Invalid, 50));
        sim.advance(1);
        sim.settle();
        assert_eq!((sim.status.phase, sim.canary_weight()), (Phase::RolledBack, 0));
        assert_eq!(sim.history_reason(), "ProgressDeadlineExceeded");
        assert!(
            sim.status
                .message
                .as_deref()
                .unwrap_or("")
                .contains("DestinationRuleHostMismatch message")
        );

        // Fixed in time: the rollout goes on where it was.
        let mut sim = at_fifty();
        sim.obs.problems = vec![problem(Reason::AmbiguousHpa)];
        sim.settle();
        sim.obs.problems.clear();
        sim.obs.command = cmd("p", CommandKind::Promote);
        sim.settle();
        assert_eq!(sim.status.phase, Phase::Succeeded);
    }

    /// A canary problem before it has traffic is only reported (the rollout has not begun).
    #[test]
    fn canary_problems_before_traffic_only_hold() {
        let mut sim = Sim::new();
        sim.obs.canary = unready("h1");
        sim.settle();
        assert_eq!(sim.status.reason(), "WaitingForCanary");
        sim.obs.canary_problems = vec![problem(Reason::SubsetSelectsNoPods)];
        let p = sim.settle();
        assert!(weight_actions(&p).is_empty(), "{:?}", p.actions);
        assert_eq!((sim.status.phase, sim.canary_weight()), (Phase::Invalid, 0));
        // Before any rollout, a problem is a plain Invalid.
        let mut sim = Sim::new();
        sim.obs.canary_problems = vec![problem(Reason::SubsetNotFound)];
        sim.settle();
        assert_eq!((sim.status.phase, sim.status.canary.clone()), (Phase::Invalid, None));
    }

    /// A policy recreated after a promotion whose old stable was scaled to zero: no traffic goes to it.
    #[test]
    fn no_traffic_moves_to_a_stable_without_ready_pods() {
        let mut sim = Sim::new();
        sim.obs.routes = routes(&[("v1", 0), ("v2", 100)]);
        sim.obs.stable = Some(DeploymentState {
            template_hash: "s1".into(),
            generation_observed: true,
            ready_replicas: 0,
        });
        let mut warned = false;
        for _ in 0..5 {
            let p = sim.step();
            assert!(weight_actions(&p).is_empty(), "{:?}", p.actions);
            warned |= events(&p, "StableNotReady")
                .iter()
                .any(|(t, m)| *t == EventType::Warning && m.contains("app-v1"));
        }
        assert!(warned);
        assert_eq!(sim.status.reason(), "StableNotReady");
        assert_eq!(sim.obs.routes[0].get("v2"), Some(&100));
        // Stable has pods again: the rollout begins.
        sim.obs.stable = ready("s1");
        sim.settle();
        assert_eq!(sim.canary_weight(), 10);
    }

    /// Rolling back to a stable with no Ready pods would be a certain outage: the rollback is recorded
    /// and said loudly, and the traffic moves once stable has Ready pods.
    #[test]
    fn a_rollback_waits_for_a_stable_with_ready_pods() {
        let mut sim = at_fifty();
        sim.obs.stable = Some(DeploymentState {
            template_hash: "s1".into(),
            generation_observed: true,
            ready_replicas: 0,
        });
        sim.obs.command = cmd("a", CommandKind::Abort);
        let mut warned = false;
        for _ in 0..4 {
            let p = sim.step();
            assert!(weight_actions(&p).is_empty(), "{:?}", p.actions);
            warned |= events(&p, "StableNotReady")
                .iter()
                .any(|(t, _)| *t == EventType::Warning);
        }
        assert!(warned);
        assert_eq!((sim.status.phase, sim.canary_weight()), (Phase::RollingBack, 50));
        assert!(sim.status.message.as_deref().unwrap_or("").contains("certain outage"));
        sim.obs.stable = ready("s1");
        let p = sim.settle();
        assert_eq!(weight_actions(&p), vec![set("v1", "v2", 0)]);
        assert_eq!(sim.status.phase, Phase::Aborted);
    }

    /// Steps shortened under a rollout end with the canary at 100 %, through the same gates.
    #[test]
    fn shortened_steps_end_at_one_hundred_percent() {
        let mut sim = at_fifty();
        sim.spec.steps = vec![w(10), w(100)];
        let p = sim.step();
        assert_eq!(weight_actions(&p), vec![set("v1", "v2", 100)]);
        assert_ne!(sim.status.phase, Phase::Succeeded);
        sim.settle();
        assert_eq!(
            (sim.status.phase, sim.obs.routes[0].get("v2")),
            (Phase::Succeeded, Some(&100))
        );

        // With analysis: 100 % waits for a check at 50 %, success for one at 100 %.
        let mut sim = at_fifty();
        sim.spec.analysis = Some(analysis());
        sim.step();
        sim.spec.steps = vec![w(10), w(100)];
        sim.settle();
        assert_eq!(
            (sim.canary_weight(), sim.status.reason()),
            (50, "WaitingForAnalysis".into())
        );
        sim.advance(11);
        check(&mut sim, Verdict::Pass, 10);
        sim.settle();
        assert_eq!((sim.canary_weight(), sim.status.phase), (100, Phase::Progressing));
        sim.advance(11);
        check(&mut sim, Verdict::Pass, 10);
        sim.settle();
        assert_eq!(sim.status.phase, Phase::Succeeded);

        // And an unready canary is not given 100 %.
        let mut sim = at_fifty();
        sim.spec.steps = vec![w(10), w(100)];
        sim.obs.canary = Some(DeploymentState {
            template_hash: "h1".into(),
            generation_observed: false,
            ready_replicas: 1,
        });
        sim.settle();
        assert_eq!(
            (sim.canary_weight(), sim.status.reason()),
            (50, "WaitingForCanary".into())
        );
    }

    impl Sim {
        fn history_reason(&self) -> String {
            self.status.reason()
        }
    }

    impl RolloutPolicyStatus {
        fn reason(&self) -> String {
            self.history.last().map(|t| t.reason.clone()).unwrap_or_default()
        }
    }
}

#[path = "hooks_tests.rs"]
mod hooks;
