//! Table tests of the webhook gates: the planner reads answers (bound to the step) and says which
//! hooks it wants asked; what each hook type's answer does to the rollout.

use super::analysis::analysis;
use super::*;
use crate::analysis::check::Check;
use crate::resources::policy::{MetricResult, ProviderErrorAction, Verdict};
use crate::resources::reason::Reason;
use crate::resources::webhook::{HookAnswer, HookType, Webhook};

fn hook(name: &str, type_: HookType, retries: u32) -> Webhook {
    Webhook {
        name: name.into(),
        type_,
        url: format!("http://{name}.test/"),
        timeout: Duration::from_secs(10),
        retries,
        interval: Duration::from_secs(5),
        metadata: [("cmd".to_string(), "smoke".to_string())].into(),
        bearer_token_secret: None,
        mute_alert: false,
        disable_tls: false,
    }
}

fn with(hooks: Vec<Webhook>, steps: Vec<Step>) -> Sim {
    let mut sim = Sim::new();
    sim.spec.steps = steps;
    sim.spec.webhooks = hooks;
    sim
}

impl Sim {
    /// `name` answers for the gate the rollout is at now.
    fn answer(&mut self, name: &str, ok: bool, failures: u32) {
        let binding = super::super::hooks::binding(&self.status);
        self.answer_for(name, ok, failures, &binding);
    }

    fn answer_for(&mut self, name: &str, ok: bool, failures: u32, binding: &str) {
        self.obs.hooks.retain(|a| a.hook != name);
        self.obs.hooks.push(HookAnswer {
            hook: name.into(),
            binding: binding.into(),
            ok,
            detail: if ok { "HTTP 200".into() } else { "HTTP 503".into() },
            failures,
            at: self.now,
        });
    }

    fn gate(&self) -> Option<(String, Timestamp, Option<String>)> {
        self.status
            .gate
            .as_ref()
            .map(|g| (g.hook.clone(), g.since, g.last_answer.clone()))
    }

    fn check(&mut self, verdict: Verdict) {
        self.advance(1);
        self.obs.analysis = Some(Check {
            at: self.now,
            window_start: self.now,
            results: vec![MetricResult {
                name: "success-rate".into(),
                verdict,
                value: Some(if verdict == Verdict::Fail { 90.0 } else { 100.0 }),
                stable_value: None,
                threshold: ">= 99".into(),
                window: "1s".into(),
                message: format!("success-rate {verdict:?}"),
                at: self.now,
            }],
        });
    }
}

fn wanted(p: &Plan) -> Vec<(String, bool)> {
    p.hooks.iter().map(|c| (c.hook.name.clone(), c.repeat)).collect()
}

#[test]
fn confirm_rollout_waits_for_a_yes_for_this_rollout_before_any_traffic() {
    let mut sim = with(
        vec![hook("gate", HookType::ConfirmRollout, 0)],
        vec![w(10), pause(None), w(100)],
    );
    let p = sim.settle();
    assert_eq!(sim.canary_weight(), 0);
    assert_eq!(reason(&sim.status), "WaitingForWebhook");
    assert_eq!(wanted(&p), vec![("gate".to_string(), false)]);
    assert_eq!(
        p.hooks[0].payload.metadata.get("cmd").map(String::as_str),
        Some("smoke")
    );
    assert_eq!(sim.gate(), Some(("gate".into(), t(0), None)));
    // No, then time passes: still waiting, since the first reconcile, with the answer shown.
    sim.answer("gate", false, 3);
    sim.advance(600);
    let p = sim.settle();
    assert!(weight_actions(&p).is_empty());
    assert_eq!(
        sim.gate(),
        Some(("gate".into(), t(0), Some("HTTP 503 (3 failed in a row)".into())))
    );
    // A yes for another rollout (an old template) does not count.
    sim.answer_for("gate", true, 0, "old-hash/0/x");
    sim.settle();
    assert_eq!(sim.canary_weight(), 0);
    sim.answer("gate", true, 0);
    let p = sim.settle();
    assert_eq!(sim.canary_weight(), 10);
    assert_eq!(sim.status.gate, None);
    assert!(p.hooks.is_empty(), "nothing left to ask: {:?}", wanted(&p));
}

#[test]
fn pre_rollout_failures_count_against_the_failure_limit_and_roll_back_naming_the_hook() {
    // (analysis failureLimit, failed answers before the rollback): Flagger's threshold, default 1.
    for (limit, fails) in [(None, 1), (Some(1), 1), (Some(3), 3)] {
        let mut sim = with(vec![hook("smoke", HookType::PreRollout, 1)], vec![w(10), w(100)]);
        sim.spec.analysis = limit.map(|l| analysis(l, 10, ProviderErrorAction::Pause));
        sim.settle();
        for n in 1..fails {
            sim.advance(5);
            sim.answer("smoke", false, n);
            sim.settle();
            sim.settle(); // an answer counts once
            assert_eq!(
                (sim.status.phase, sim.canary_weight()),
                (Phase::Progressing, 0),
                "{limit:?}"
            );
            let counted = sim.status.canary.as_ref().map(|c| c.webhook_failures);
            assert_eq!(counted, Some(n), "{limit:?}");
        }
        sim.advance(5);
        sim.answer("smoke", false, fails);
        let p = sim.step();
        assert_eq!(
            sim.status.phase,
            Phase::RollingBack,
            "{limit:?}: recorded before traffic moves"
        );
        assert!(weight_actions(&p).is_empty());
        assert_eq!(reason(&sim.status), "WebhookFailed");
        let message = sim.status.message.clone().unwrap_or_default();
        let want = format!("pre-rollout webhook smoke failed: HTTP 503; {fails} failed webhook call(s)");
        assert!(message.contains(&want), "{message}");
        sim.settle();
        assert_eq!(sim.status.phase, Phase::RolledBack);
    }
}

#[test]
fn confirm_hook_failures_never_count() {
    for type_ in [
        HookType::ConfirmRollout,
        HookType::ConfirmPromotion,
        HookType::ConfirmTrafficIncrease,
    ] {
        let mut sim = with(vec![hook("gate", type_, 0)], vec![w(10), w(50), w(100)]);
        for n in 1..5 {
            sim.settle();
            sim.advance(5);
            sim.answer("gate", false, n);
        }
        sim.settle();
        assert_eq!(sim.status.phase, Phase::Progressing, "{type_}");
        assert_eq!(
            sim.status.canary.as_ref().map(|c| c.webhook_failures),
            Some(0),
            "{type_}"
        );
    }
}

#[test]
fn a_rollback_yes_rolls_back_in_the_next_reconcile_whatever_the_step() {
    for steps in [vec![w(10), pause(None), w(100)], vec![w(10), pause(Some(60)), w(100)]] {
        let mut sim = with(vec![hook("stop", HookType::Rollback, 0)], steps);
        let p = sim.settle();
        assert_eq!(sim.canary_weight(), 10);
        assert_eq!(
            wanted(&p),
            vec![("stop".to_string(), true)],
            "asked while progressing/waiting"
        );
        sim.answer("stop", false, 1);
        sim.settle();
        assert_eq!(sim.canary_weight(), 10, "a no changes nothing");
        sim.answer("stop", true, 0);
        sim.step();
        assert_eq!(
            (sim.status.phase, reason(&sim.status)),
            (Phase::RollingBack, "WebhookRollback".into())
        );
        sim.settle();
        assert_eq!((sim.status.phase, sim.canary_weight()), (Phase::RolledBack, 0));
        assert!(sim.settle().hooks.is_empty(), "not asked once rolled back");
    }
}

#[test]
fn a_confirm_traffic_increase_no_blocks_neither_an_analysis_rollback_nor_an_abort() {
    for abort in [false, true] {
        let mut sim = with(
            vec![hook("ok", HookType::ConfirmTrafficIncrease, 0)],
            vec![w(10), w(50), w(100)],
        );
        sim.spec.analysis = Some(analysis(1, 10, ProviderErrorAction::Pause));
        sim.settle();
        sim.answer("ok", true, 0);
        sim.settle();
        assert_eq!(sim.canary_weight(), 10);
        sim.check(Verdict::Pass);
        sim.settle();
        assert_eq!(
            reason(&sim.status),
            "WaitingForWebhook",
            "passing analysis, hook not asked yet"
        );
        sim.answer("ok", false, 1);
        sim.settle();
        assert_eq!(sim.canary_weight(), 10);
        if abort {
            sim.obs.command = cmd("a1", CommandKind::Abort);
        } else {
            sim.check(Verdict::Fail);
        }
        sim.settle();
        let want = if abort { Phase::Aborted } else { Phase::RolledBack };
        assert_eq!((sim.status.phase, sim.canary_weight()), (want, 0));
    }
}

#[test]
fn confirm_promotion_holds_before_100_while_analysis_still_rolls_back() {
    let mut sim = with(vec![hook("cab", HookType::ConfirmPromotion, 0)], vec![w(10), w(100)]);
    sim.spec.analysis = Some(analysis(1, 10, ProviderErrorAction::Pause));
    sim.settle();
    assert_eq!(
        sim.canary_weight(),
        10,
        "confirm-promotion does not gate the first weights"
    );
    sim.check(Verdict::Pass);
    sim.settle();
    assert_eq!(
        (sim.canary_weight(), reason(&sim.status)),
        (10, "WaitingForWebhook".into())
    );
    sim.check(Verdict::Fail);
    sim.settle();
    assert_eq!((sim.status.phase, sim.canary_weight()), (Phase::RolledBack, 0));

    // And with a yes it is promoted.
    let mut sim = with(vec![hook("cab", HookType::ConfirmPromotion, 0)], vec![w(10), w(100)]);
    sim.settle();
    sim.answer("cab", true, 0);
    sim.settle();
    assert_eq!(sim.status.phase, Phase::Succeeded);
}

#[test]
fn rollout_hooks_gate_increases_like_a_check_and_one_failure_rolls_back_by_default() {
    let mut sim = with(vec![hook("load", HookType::Rollout, 1)], vec![w(10), w(50), w(100)]);
    let p = sim.settle();
    assert_eq!(sim.canary_weight(), 10);
    assert!(wanted(&p).contains(&("load".to_string(), true)));
    // No answer yet: the increase waits for one.
    sim.advance(20);
    sim.settle();
    assert_eq!(
        (sim.canary_weight(), reason(&sim.status)),
        (10, "WaitingForWebhook".into())
    );
    sim.answer("load", true, 0);
    sim.settle();
    assert_eq!(sim.canary_weight(), 50);
    sim.advance(5);
    sim.answer("load", false, 1);
    sim.settle();
    assert_eq!((sim.status.phase, sim.canary_weight()), (Phase::RolledBack, 0));
    assert!(sim.status.history.iter().any(|t| t.reason == "WebhookFailed"));
}

#[test]
fn rollout_hook_failures_and_failed_checks_add_up_to_the_failure_limit() {
    let mut sim = with(vec![hook("load", HookType::Rollout, 0)], vec![w(10), w(50), w(100)]);
    sim.spec.analysis = Some(analysis(2, 10, ProviderErrorAction::Pause));
    sim.settle();
    assert_eq!(sim.canary_weight(), 10);
    sim.advance(1);
    sim.answer("load", false, 1);
    sim.settle();
    sim.settle();
    assert_eq!(sim.status.canary.as_ref().map(|c| c.webhook_failures), Some(1));
    // A yes and a passing check move on; the failed call still counts (as in Flagger).
    sim.answer("load", true, 0);
    sim.check(Verdict::Pass);
    sim.settle();
    assert_eq!((sim.status.phase, sim.canary_weight()), (Phase::Progressing, 50));
    sim.check(Verdict::Fail);
    sim.settle();
    assert_eq!((sim.status.phase, sim.canary_weight()), (Phase::RolledBack, 0));
    let rollback = sim.status.history.iter().find(|t| t.reason == "WebhookFailed");
    assert!(
        rollback.is_some_and(|t| t
            .message
            .contains("1 failed webhook call(s) and 1 failed check(s) reach failureLimit 2")),
        "{:?}",
        sim.status.history
    );
}

#[test]
fn post_rollout_and_event_hooks_never_change_the_outcome() {
    let hooks = vec![hook("after", HookType::PostRollout, 0), hook("log", HookType::Event, 0)];
    let mut sim = with(hooks, vec![w(10), w(100)]);
    let mut fired = Vec::new();
    for _ in 0..10 {
        let p = sim.step();
        fired.extend(p.fire.iter().map(|c| (c.hook.name.clone(), c.payload.reason.clone())));
    }
    assert_eq!(sim.status.phase, Phase::Succeeded);
    let events: Vec<&str> = fired
        .iter()
        .filter(|(h, _)| h == "log")
        .map(|(_, r)| r.as_str())
        .collect();
    let history: Vec<&str> = sim.status.history.iter().map(|t| t.reason.as_str()).collect();
    assert_eq!(events, history, "every transition, in order");
    let post: Vec<&str> = fired
        .iter()
        .filter(|(h, _)| h == "after")
        .map(|(_, r)| r.as_str())
        .collect();
    assert_eq!(post, vec!["Promoted"]);
    // Their failures are only logged: the outcome stands.
    sim.answer("after", false, 5);
    sim.answer("log", false, 5);
    let before = sim.status.clone();
    let p = sim.settle();
    assert_eq!(sim.status, before);
    assert!(p.fire.is_empty() && p.hooks.is_empty());
}

#[test]
fn post_rollout_is_told_of_an_abort_once() {
    let mut sim = with(
        vec![hook("after", HookType::PostRollout, 0)],
        vec![w(10), pause(None), w(100)],
    );
    sim.settle();
    sim.obs.command = cmd("a1", CommandKind::Abort);
    let mut fired = Vec::new();
    for _ in 0..5 {
        let p = sim.step();
        fired.extend(p.fire.iter().map(|c| c.payload.phase.clone()));
    }
    assert_eq!(sim.status.phase, Phase::Aborted);
    assert_eq!(fired, vec!["Aborted".to_string()]);
}

fn reason(st: &RolloutPolicyStatus) -> String {
    st.history.last().map(|t| t.reason.clone()).unwrap_or_default()
}

#[test]
fn promote_full_does_not_skip_a_webhook_gate() {
    let mut sim = with(
        vec![hook("cab", HookType::ConfirmPromotion, 0)],
        vec![w(10), pause(None), w(100)],
    );
    sim.settle();
    assert_eq!((sim.canary_weight(), sim.status.phase), (10, Phase::WaitingForApproval));
    sim.obs.command = cmd("p1", CommandKind::PromoteFull);
    sim.settle();
    assert_eq!(
        (sim.canary_weight(), reason(&sim.status)),
        (10, "WaitingForWebhook".into())
    );
    sim.answer("cab", true, 0);
    sim.settle();
    assert_eq!(sim.status.phase, Phase::Succeeded);
}

#[test]
fn an_invalid_policy_calls_no_hook_neither_wanted_nor_fired() {
    let hooks = vec![hook("stop", HookType::Rollback, 0), hook("news", HookType::Event, 0)];
    let mut sim = with(hooks.clone(), vec![w(10), pause(None), w(100)]);
    let p = sim.settle();
    assert_eq!(sim.canary_weight(), 10);
    assert_eq!(wanted(&p), vec![("stop".to_string(), true)]);
    // Mid-rollout, the namespace loses its provider: Invalid, holding, and no hook of any type.
    sim.obs.problems.push(Problem {
        reason: Reason::ProviderNotAllowed,
        message: "spec.analysis.provider: MetricProvider \"prom\" does not select namespace \"b\"".into(),
    });
    let p = sim.step();
    assert_eq!(sim.status.phase, Phase::Invalid);
    assert!(p.hooks.is_empty() && p.fire.is_empty(), "{:?} {:?}", p.hooks, p.fire);
    sim.advance(10);
    let p = sim.step();
    assert!(p.hooks.is_empty() && p.fire.is_empty(), "{:?} {:?}", p.hooks, p.fire);
    // A new policy that is Invalid from the start announces nothing either.
    let mut fresh = with(hooks, vec![w(10), w(100)]);
    fresh.spec.steps[0] = w(100);
    fresh.spec.steps[1] = w(10); // weights must grow: a validation failure
    let p = fresh.step();
    assert_eq!(fresh.status.phase, Phase::Invalid);
    assert!(p.hooks.is_empty() && p.fire.is_empty(), "{:?} {:?}", p.hooks, p.fire);
}

#[test]
fn event_hooks_get_flaggers_event_fields_and_every_hook_a_checksum() {
    let mut log = hook("log", HookType::Event, 0);
    log.metadata.insert("eventType".into(), "mine".into());
    let mut sim = with(vec![log], vec![w(10), w(100)]);
    let mut fired = Vec::new();
    for _ in 0..10 {
        fired.extend(sim.step().fire);
    }
    assert_eq!(sim.status.phase, Phase::Succeeded);
    let started = fired.first().map(|c| c.payload.clone()).unwrap_or_default();
    let hash = sim
        .obs
        .canary
        .as_ref()
        .map(|d| d.template_hash.clone())
        .unwrap_or_default();
    assert!(!hash.is_empty());
    assert_eq!(started.checksum, hash, "the canary's template hash during a rollout");
    let promoted = fired.last().map(|c| c.payload.clone()).unwrap_or_default();
    assert_eq!(promoted.reason, "Promoted");
    assert_eq!(
        promoted.checksum, hash,
        "the promoted (now stable) version's hash after it"
    );
    let meta = |k: &str| promoted.metadata.get(k).cloned().unwrap_or_default();
    assert_eq!(meta("eventType"), "Normal", "Flagger's fields win over the hook's own");
    assert_eq!(meta("eventMessage"), promoted.message);
    assert_eq!(meta("timestamp"), sim.now.as_millisecond().to_string());
    assert_eq!(meta("cmd"), "smoke", "the hook's own metadata is kept");
}

#[test]
fn a_muted_gate_is_not_for_notification_targets() {
    for mute in [false, true] {
        let mut gate = hook("gate", HookType::ConfirmRollout, 0);
        gate.mute_alert = mute;
        let mut sim = with(vec![gate], vec![w(10), w(100)]);
        sim.settle();
        let waits: Vec<bool> = sim
            .status
            .history
            .iter()
            .filter(|t| t.reason == "WaitingForWebhook")
            .map(|t| t.muted)
            .collect();
        assert_eq!(waits, vec![mute]);
        assert!(
            sim.status
                .history
                .iter()
                .filter(|t| t.reason != "WaitingForWebhook")
                .all(|t| !t.muted)
        );
    }
}
