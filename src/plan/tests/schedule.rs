//! The schedule gate in the planner: weights hold while closed; everything else goes on.

use super::*;
use crate::analysis::check::Check;
use crate::resources::policy::{MetricResult, ProviderErrorAction, Verdict};
use crate::resources::schedule::{Freeze, HoldReason, Schedule, Window};

fn ts(s: &str) -> Timestamp {
    s.parse().unwrap()
}

fn window(cron: &str, duration: u64, tz: &str) -> Window {
    Window {
        cron: cron.into(),
        duration: Duration::from_secs(duration),
        time_zone: tz.into(),
    }
}

/// The seed scenario with a schedule, at `now`.
fn sim(schedule: Schedule, now: &str) -> Sim {
    let mut sim = Sim::new();
    sim.spec.schedule = Some(schedule);
    sim.now = ts(now);
    sim
}

/// Weekdays 09:00-10:00 in Berlin.
fn berlin_nine() -> Schedule {
    Schedule {
        windows: vec![window("0 9 * * 1-5", 3600, "Europe/Berlin")],
        freezes: vec![],
    }
}

fn reason(sim: &Sim) -> String {
    sim.status.history.last().map(|t| t.reason.clone()).unwrap_or_default()
}

fn hold(sim: &Sim) -> Option<HoldReason> {
    sim.status.schedule.as_ref().map(|s| s.hold)
}

fn raises_canary(p: &Plan) -> bool {
    p.actions
        .iter()
        .any(|a| matches!(a, Action::SetWeights { canary_weight, .. } if *canary_weight > 0))
}

#[test]
fn weights_hold_while_closed_and_rise_at_the_next_opening() {
    // Friday 2026-11-27 08:00 CET: the window opens at 09:00 CET (08:00Z).
    let mut sim = sim(berlin_nine(), "2026-11-27T07:00:00Z");
    let p = sim.settle();
    assert!(!raises_canary(&p), "{:?}", p.actions);
    assert_eq!(sim.canary_weight(), 0);
    assert_eq!(sim.status.phase, Phase::Progressing);
    assert_eq!(reason(&sim), "OutsideWindow");
    assert_eq!(
        sim.status.message.as_deref(),
        Some(
            "outside every schedule window: holding canary v2 at 0% until the next window opens at 2026-11-27T09:00:00+01:00 (Europe/Berlin)"
        )
    );
    let st = sim.status.schedule.clone().unwrap();
    assert_eq!(st.next_open, Some(ts("2026-11-27T08:00:00Z")));
    assert_eq!(st.time_zone.as_deref(), Some("Europe/Berlin"));
    assert_eq!(p.requeue, Some(Duration::from_secs(3600)));
    // Nothing moves until then, and a repeat adds no history.
    let history = sim.status.history.len();
    sim.advance(3599);
    assert!(!raises_canary(&sim.settle()));
    assert_eq!(sim.status.history.len(), history);

    // At the opening the first weight goes in, and the timed pause runs.
    sim.advance(1);
    sim.settle();
    assert_eq!(sim.canary_weight(), 10);
    assert_eq!(sim.status.phase, Phase::Paused);
    assert_eq!(hold(&sim), None);

    // The window closes (10:00 CET) with the pause long over: held at 10 % over the weekend.
    sim.now = ts("2026-11-27T09:00:00Z");
    let p = sim.settle();
    assert!(!raises_canary(&p));
    assert_eq!(sim.canary_weight(), 10);
    assert_eq!(sim.status.step, Some(2), "the timed pause ran while closed");
    assert_eq!(reason(&sim), "OutsideWindow");
    assert_eq!(
        sim.status.schedule.as_ref().and_then(|s| s.next_open),
        Some(ts("2026-11-30T08:00:00Z")),
        "Monday 09:00 CET"
    );
    assert!(
        sim.status.message.as_deref().unwrap().contains(
            "holding canary v2 at 10% until the next window opens at 2026-11-30T09:00:00+01:00 (Europe/Berlin)"
        )
    );

    sim.now = ts("2026-11-30T08:00:00Z");
    sim.settle();
    assert_eq!(sim.canary_weight(), 50);
    assert_eq!(sim.status.phase, Phase::WaitingForApproval);
}

#[test]
fn a_freeze_inside_a_window_holds_until_it_ends() {
    let s = Schedule {
        windows: vec![window("0 9 * * *", 8 * 3600, "UTC")],
        freezes: vec![Freeze {
            from: ts("2026-11-27T10:00:00Z"),
            to: ts("2026-11-27T11:00:00Z"),
            reason: Some("release train".into()),
        }],
    };
    let mut sim = sim(s, "2026-11-27T10:30:00Z");
    let p = sim.settle();
    assert!(!raises_canary(&p));
    assert_eq!(reason(&sim), "Frozen");
    let st = sim.status.schedule.clone().unwrap();
    assert_eq!(st.hold, HoldReason::Frozen);
    assert_eq!(st.frozen_until, Some(ts("2026-11-27T11:00:00Z")));
    assert_eq!(st.freeze_reason.as_deref(), Some("release train"));
    assert_eq!(st.next_open, Some(ts("2026-11-27T11:00:00Z")));
    assert!(
        sim.status
            .message
            .as_deref()
            .unwrap()
            .starts_with("frozen until 2026-11-27T11:00:00Z (release train): holding canary v2 at 0%")
    );
    sim.now = ts("2026-11-27T11:00:00Z");
    sim.settle();
    assert_eq!(sim.canary_weight(), 10);
}

/// At 10 % with the window closed.
fn held_at_ten() -> Sim {
    let mut sim = sim(berlin_nine(), "2026-11-27T08:00:00Z");
    sim.spec.steps = vec![w(10), w(50), w(100)];
    sim.spec.analysis = Some(super::analysis::analysis(1, 10, ProviderErrorAction::Pause));
    sim.settle();
    assert_eq!(sim.canary_weight(), 10);
    sim.now = ts("2026-11-27T09:00:00Z");
    check(&mut sim, Verdict::Pass);
    sim.settle();
    assert_eq!(sim.canary_weight(), 10, "a passing check does not open the window");
    assert_eq!(reason(&sim), "OutsideWindow");
    sim
}

fn check(sim: &mut Sim, verdict: Verdict) {
    sim.advance(1);
    sim.obs.analysis = Some(Check {
        at: sim.now,
        window_start: sim.now,
        results: vec![MetricResult {
            name: "success-rate".into(),
            verdict,
            value: Some(if verdict == Verdict::Fail { 90.0 } else { 100.0 }),
            stable_value: None,
            threshold: ">= 99".into(),
            window: "1m".into(),
            message: format!("success-rate {verdict:?}"),
            at: sim.now,
        }],
    });
}

#[test]
fn analysis_rolls_back_while_closed() {
    let mut sim = held_at_ten();
    check(&mut sim, Verdict::Fail);
    sim.settle();
    assert_eq!(sim.status.phase, Phase::RolledBack);
    assert_eq!(sim.canary_weight(), 0);
    assert_eq!(hold(&sim), None);
}

#[test]
fn abort_pause_and_resume_work_while_closed() {
    let mut sim = held_at_ten();
    sim.obs.command = cmd("c1", CommandKind::Pause);
    sim.settle();
    assert_eq!(sim.status.phase, Phase::Paused);
    sim.obs.command = cmd("c2", CommandKind::Resume);
    sim.settle();
    assert_eq!(reason(&sim), "OutsideWindow");
    assert_eq!(sim.canary_weight(), 10);
    sim.obs.command = cmd("c3", CommandKind::Abort);
    sim.settle();
    assert_eq!(sim.status.phase, Phase::Aborted);
    assert_eq!(sim.canary_weight(), 0);
}

#[test]
fn promote_passes_a_pause_but_not_the_window_and_promote_full_passes_both() {
    // The seed scenario: at 50 % waiting for approval when the window closes.
    let mut sim = sim(berlin_nine(), "2026-11-27T08:00:00Z");
    sim.settle();
    sim.advance(2);
    sim.settle();
    assert_eq!(sim.canary_weight(), 50);
    assert_eq!(sim.status.phase, Phase::WaitingForApproval);
    sim.now = ts("2026-11-27T09:30:00Z");
    sim.obs.command = cmd("c1", CommandKind::Promote);
    let p = sim.settle();
    assert!(!raises_canary(&p));
    assert_eq!(sim.canary_weight(), 50);
    assert_eq!(reason(&sim), "OutsideWindow");
    // A person's explicit full promotion is not an automated increase: it goes through.
    sim.obs.command = cmd("c2", CommandKind::PromoteFull);
    sim.settle();
    assert_eq!(sim.canary_weight(), 100);
    assert_eq!(sim.status.phase, Phase::Succeeded);
    assert_eq!(hold(&sim), None);
}

#[test]
fn drifted_weights_are_put_back_while_held() {
    let mut sim = held_at_ten();
    sim.obs.routes = routes(&[("v1", 70), ("v2", 30)]);
    let p = sim.settle();
    assert_eq!(weight_actions(&p), vec![set("v1", "v2", 10)]);
    assert_eq!(sim.canary_weight(), 10);
}

#[test]
fn a_bad_schedule_is_invalid_and_moves_nothing() {
    let mut bad = berlin_nine();
    bad.windows[0].cron = "0 9 * *".into();
    let mut sim = sim(bad.clone(), "2026-11-27T08:30:00Z");
    let p = sim.settle();
    assert!(weight_actions(&p).is_empty(), "{:?}", p.actions);
    assert_eq!(sim.status.phase, Phase::Invalid);
    assert!(
        sim.status
            .message
            .as_deref()
            .unwrap()
            .starts_with("spec.schedule.windows[0].cron: \"0 9 * *\" has 4 fields"),
        "{:?}",
        sim.status.message
    );
    // Mid-rollout, a schedule broken by an edit holds the weight where it is.
    let mut sim = sim_at_ten_in_window();
    sim.spec.schedule = Some(bad);
    let p = sim.settle();
    assert!(weight_actions(&p).is_empty(), "{:?}", p.actions);
    assert_eq!(sim.status.phase, Phase::Invalid);
    assert_eq!(sim.canary_weight(), 10);
}

fn sim_at_ten_in_window() -> Sim {
    let mut sim = sim(berlin_nine(), "2026-11-27T08:00:00Z");
    sim.settle();
    assert_eq!(sim.canary_weight(), 10);
    sim
}
