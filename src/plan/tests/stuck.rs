//! Side effects that keep failing: the controller writes only `Synced` False (the plan's status is
//! not written), and the progress deadline still rolls the rollout back.

use super::*;

/// What the controller does when a plan's side effect fails: the status it started from, with
/// `Synced` False since `now` (kept when it already was False).
fn failed(sim: &mut Sim, message: &str) {
    let now = sim.now;
    match sim.status.conditions.iter_mut().find(|c| c.type_ == "Synced") {
        Some(c) => {
            if c.status != "False" {
                c.last_transition_time = now;
            }
            c.status = "False".into();
            c.message = message.into();
        }
        None => sim.status.conditions.push(Condition {
            type_: "Synced".into(),
            status: "False".into(),
            reason: "ActionFailed".into(),
            message: message.into(),
            last_transition_time: now,
            observed_generation: Some(1),
        }),
    }
}

const GONE: &str = "setting minReplicas 5 maxReplicas 10 failed on HorizontalPodAutoscaler dev/app-v2: 404 NotFound";

/// The seed scenario at 50 % waiting for approval, then `canaryd promote`, whose plan fails on
/// every reconcile (the canary's HPA is gone) for `secs` seconds, one reconcile every 5 s.
fn promote_failing_for(secs: i64) -> (Sim, Plan) {
    let mut sim = Sim::new();
    sim.settle();
    sim.advance(2);
    sim.settle();
    assert_eq!(sim.status.phase, Phase::WaitingForApproval);
    sim.advance(3600);
    sim.obs.command = cmd("c1", CommandKind::Promote);
    let mut elapsed = 0;
    loop {
        let p = plan(&sim.spec, &sim.status, &sim.obs, sim.now);
        if elapsed >= secs || p.status.phase == Phase::RollingBack {
            return (sim, p);
        }
        failed(&mut sim, GONE);
        sim.advance(5);
        elapsed += 5;
    }
}

#[test]
fn failing_side_effects_roll_back_at_the_progress_deadline() {
    // (seconds of failures, rolled back); the seed spec's progressDeadline is 60 s.
    for (secs, rolled_back) in [(0, false), (55, false), (60, true), (300, true)] {
        let (mut sim, p) = promote_failing_for(secs);
        assert_eq!(
            p.status.phase == Phase::RollingBack,
            rolled_back,
            "{secs}s: {:?}",
            p.status
        );
        if !rolled_back {
            // Still the forward plan, failing again.
            assert_eq!(weight_actions(&p), vec![set("v1", "v2", 100)], "{secs}s");
            continue;
        }
        let cause = p.status.message.clone().unwrap_or_default();
        assert!(
            cause.contains("side effects failing for") && cause.contains("progressDeadline 1m") && cause.contains(GONE),
            "{cause}"
        );
        // The record carries no forward write; the next reconcile sends traffic back to stable.
        assert!(weight_actions(&p).is_empty(), "{:?}", p.actions);
        assert!(
            !p.actions.iter().any(|a| matches!(a, Action::SetHpaBounds { .. })),
            "{:?}",
            p.actions
        );
        sim.status = p.status;
        let p = sim.step();
        assert_eq!(weight_actions(&p), vec![set("v1", "v2", 0)]);
        assert_eq!(sim.status.phase, Phase::RolledBack);
        assert_eq!(sim.canary_weight(), 0);
    }
}

#[test]
fn an_old_failure_does_not_roll_back_what_moved_since() {
    // A rollback whose restore failed (Synced False, long ago), then `canaryd retry`: the retried
    // rollout starts, it is not rolled back by the old failure.
    let mut sim = Sim::new();
    sim.settle();
    failed(&mut sim, GONE);
    sim.obs.command = cmd("a", CommandKind::Abort);
    sim.settle();
    assert_eq!(sim.status.phase, Phase::Aborted);
    failed(&mut sim, GONE);
    sim.advance(3600);
    sim.obs.command = cmd("r", CommandKind::Retry);
    let p = sim.step();
    assert_eq!(p.status.phase, Phase::Progressing, "{:?}", p.status);
    assert_eq!(weight_actions(&p), vec![set("v1", "v2", 10)]);
    // A new canary template starts a new rollout the same way.
    let mut sim = Sim::new();
    sim.settle();
    failed(&mut sim, GONE);
    sim.advance(3600);
    sim.obs.canary = ready("h2");
    let p = sim.settle();
    assert_eq!(sim.status.phase, Phase::Paused, "{:?}", p.status);
    assert_eq!(sim.status.canary_weight, 10);
    // Synced True says nothing failed, however old.
    let mut sim = Sim::new();
    sim.settle();
    failed(&mut sim, GONE);
    if let Some(c) = sim.status.conditions.iter_mut().find(|c| c.type_ == "Synced") {
        c.status = "True".into();
    }
    sim.advance(3600);
    sim.settle();
    assert_eq!(sim.canary_weight(), 50);
}
