//! Webhook gates in the planner: which hooks the current state wants asked, and what their newest
//! answers (observed, bound to this rollout's step) mean. No HTTP here: the runner makes the calls.

use super::{EventType, Planner};
use crate::resources::policy::{Phase, RolloutPolicyStatus, VersionRef};
use crate::resources::reason::Reason;
use crate::resources::webhook::{
    Credential, GateStatus, HookAnswer, HookCall, HookType, Payload, PayloadVersion, Webhook,
};

pub(super) const WAITING_FOR_WEBHOOK: Reason = Reason::WaitingForWebhook;
pub(super) const WEBHOOK_ROLLBACK: Reason = Reason::WebhookRollback;
pub(super) const WEBHOOK_FAILED: Reason = Reason::WebhookFailed;

/// A hook the planner wants asked: the hook, the binding its answer must have, whether to repeat.
pub(super) type Wanted = (Webhook, String, bool);

impl Planner<'_> {
    fn hooks_of(&self, type_: HookType) -> Vec<Webhook> {
        self.spec
            .webhooks
            .iter()
            .filter(|h| h.type_ == type_)
            .cloned()
            .collect()
    }

    /// What an answer must be for to count now: this canary template, this step, this step's start
    /// (a retry or a new template starts over, so an old answer never passes a new gate).
    fn binding(&self) -> String {
        binding(&self.st)
    }

    fn answer(&self, hook: &Webhook, binding: &str) -> Option<&HookAnswer> {
        self.obs
            .hooks
            .iter()
            .find(|a| a.hook == hook.name && a.binding == binding)
    }

    fn want(&mut self, hook: &Webhook, binding: &str, repeat: bool) {
        self.wanted_hooks.push((hook.clone(), binding.to_string(), repeat));
    }

    /// While a rollout is in progress: rollback hooks are asked every interval (a 2xx rolls back),
    /// and rollout hooks while the canary has traffic; failed pre-rollout and rollout calls count
    /// against the failure limit. True when a rollback was decided.
    pub(super) fn watch_hooks(&mut self) -> bool {
        let binding = self.binding();
        if self.count_hook_failures(&binding) {
            return true;
        }
        for hook in self.hooks_of(HookType::Rollback) {
            self.want(&hook, &binding, true);
            if let Some(a) = self.answer(&hook, &binding).filter(|a| a.ok) {
                let cause = format!("rollback webhook {} answered {}", hook.name, a.detail);
                self.halt(Phase::RolledBack, WEBHOOK_ROLLBACK, cause);
                return true;
            }
        }
        if self.st.canary_weight == 0 {
            return false;
        }
        for hook in self.hooks_of(HookType::Rollout) {
            self.want(&hook, &binding, true);
        }
        false
    }

    /// Counts each new failed answer of a pre-rollout or rollout hook once (in status), as Flagger
    /// counts them with failed checks against the analysis threshold; rolls back at the limit
    /// (`spec.analysis.failureLimit`, or 1 without analysis, Flagger's default).
    fn count_hook_failures(&mut self, binding: &str) -> bool {
        let Some(counted) = self.st.canary.as_ref().map(|c| c.webhook_failure_at) else {
            return false;
        };
        let mut newest: Option<(Webhook, HookAnswer)> = None;
        let mut new_failures = 0;
        for hook in self.spec.webhooks.iter().filter(|h| counts_failures(h.type_)) {
            let Some(a) = self
                .answer(hook, binding)
                .filter(|a| !a.ok && counted.is_none_or(|c| a.at > c))
            else {
                continue;
            };
            new_failures += 1;
            if newest.as_ref().is_none_or(|(_, n)| a.at > n.at) {
                newest = Some((hook.clone(), a.clone()));
            }
        }
        let Some(c) = self.st.canary.as_mut() else {
            return false;
        };
        if let Some((_, a)) = &newest {
            c.webhook_failures = c.webhook_failures.saturating_add(new_failures);
            c.webhook_failure_at = Some(a.at);
        }
        let hooks = c.webhook_failures;
        let checks = self.st.analysis.as_ref().map_or(0, |a| a.failures);
        let limit = self.spec.analysis.as_ref().map_or(1, |a| a.failure_limit);
        if hooks == 0 || hooks.saturating_add(checks) < limit {
            return false;
        }
        let last = newest.map_or_else(String::new, |(h, a)| {
            format!("{} webhook {} failed: {}; ", h.type_, h.name, a.detail)
        });
        let cause =
            format!("{last}{hooks} failed webhook call(s) and {checks} failed check(s) reach failureLimit {limit}");
        self.halt(Phase::RolledBack, WEBHOOK_FAILED, cause);
        true
    }

    /// Before raising the canary to `weight`, the gates in Flagger's order: confirm-rollout and
    /// pre-rollout before the first traffic (and before any scale-up), the rollout hooks' newest
    /// answer at this weight, confirm-traffic-increase, and confirm-promotion before 100 %. A hook
    /// type is asked only once every hook of the types before it said yes. True when it waits (or
    /// a pre-rollout hook failed too often and the rollout is rolled back).
    pub(super) fn waits_for_hooks(&mut self, canary: &VersionRef, weight: u8) -> bool {
        if self.spec.webhooks.is_empty() {
            return false;
        }
        let mut types = Vec::new();
        if self.st.canary_weight == 0 {
            types.extend([HookType::ConfirmRollout, HookType::PreRollout]);
        } else {
            types.push(HookType::Rollout);
        }
        types.push(HookType::ConfirmTrafficIncrease);
        if weight == 100 {
            types.push(HookType::ConfirmPromotion);
        }
        let binding = self.binding();
        for type_ in types {
            let mut waiting: Option<(Webhook, Option<HookAnswer>)> = None;
            for hook in self.hooks_of(type_) {
                if type_ != HookType::Rollout {
                    self.want(&hook, &binding, false);
                }
                let answer = self.answer(&hook, &binding).cloned();
                match answer {
                    Some(a) if a.ok => {}
                    a => {
                        if waiting.is_none() {
                            waiting = Some((hook, a));
                        }
                    }
                }
            }
            if let Some((hook, answer)) = waiting {
                self.wait_for_hook(canary, &hook, answer.as_ref(), weight);
                return true;
            }
        }
        false
    }

    fn wait_for_hook(&mut self, canary: &VersionRef, hook: &Webhook, answer: Option<&HookAnswer>, weight: u8) {
        let last_answer = answer.map(|a| match a.failures {
            0 => a.detail.clone(),
            n => format!("{} ({n} failed in a row)", a.detail),
        });
        let since = match &self.prior_gate {
            Some(g) if g.hook == hook.name && g.step == self.st.step => g.since,
            _ => self.now,
        };
        self.st.gate = Some(GateStatus {
            hook: hook.name.clone(),
            type_: hook.type_,
            step: self.st.step,
            since,
            last_answer,
        });
        self.st.pending_approval = None;
        self.transition(
            Phase::Progressing,
            WAITING_FOR_WEBHOOK,
            format!(
                "canary {} at {}%: waiting for {} webhook {} before {weight}%",
                canary.subset, self.st.canary_weight, hook.type_, hook.name
            ),
        );
        if let Some(t) = self.st.history.last_mut().filter(|t| t.reason == WAITING_FOR_WEBHOOK) {
            t.muted = hook.mute_alert;
        }
        self.requeue = Some(hook.interval);
    }

    /// `event` hooks on every transition (with Flagger's event fields in `metadata`);
    /// `post-rollout` hooks when a rollout ends.
    pub(super) fn fire_hooks(&mut self, phase: Phase, event_type: EventType) {
        let end = matches!(phase, Phase::Succeeded | Phase::RolledBack | Phase::Aborted);
        let binding = format!("{}/{}", self.binding(), self.st.history.len());
        for hook in &self.spec.webhooks {
            if hook.type_ == HookType::Event || (end && hook.type_ == HookType::PostRollout) {
                let mut payload = self.payload(hook);
                if hook.type_ == HookType::Event {
                    event_fields(&mut payload, event_type, self.now);
                }
                self.fire.push(HookCall {
                    hook: hook.clone(),
                    binding: binding.clone(),
                    repeat: false,
                    payload,
                    credential: Credential::None,
                });
            }
        }
    }

    /// The payload from the status as it stands (name, namespace and versions are the
    /// controller's to fill in).
    pub(super) fn payload(&self, hook: &Webhook) -> Payload {
        let stable = self.st.stable.clone().unwrap_or_else(|| self.spec.stable.clone());
        Payload {
            hook: hook.name.clone(),
            type_: hook.type_.as_str().into(),
            phase: self.st.phase.as_str().into(),
            checksum: self.checksum(),
            step: self.st.step,
            stable_weight: self.st.stable_weight,
            canary_weight: self.st.canary_weight,
            stable: PayloadVersion {
                subset: stable.subset,
                deployment: stable.deployment,
                ..Default::default()
            },
            canary: self.st.canary.as_ref().map(|c| PayloadVersion {
                subset: c.subset.clone(),
                deployment: c.deployment.clone(),
                template_hash: c.template_hash.clone(),
                ..Default::default()
            }),
            reason: self.st.history.last().map(|t| t.reason.clone()).unwrap_or_default(),
            message: self.st.message.clone().unwrap_or_default(),
            timestamp: self.now.to_string(),
            metadata: hook.metadata.clone(),
            ..Default::default()
        }
    }

    /// The canary's pod-template hash; with no rollout in progress, the stable Deployment's.
    fn checksum(&self) -> String {
        if let Some(c) = &self.st.canary {
            return c.template_hash.clone();
        }
        let stable = self.st.stable.as_ref().unwrap_or(&self.spec.stable);
        let promoted = self
            .spec
            .canary
            .as_ref()
            .is_some_and(|c| c.deployment == stable.deployment);
        let dep = if promoted { &self.obs.canary } else { &self.obs.stable };
        dep.as_ref().map(|d| d.template_hash.clone()).unwrap_or_default()
    }

    /// The wanted hooks as calls, with the payload of the status this reconcile ends with.
    pub(super) fn wanted_calls(&self) -> Vec<HookCall> {
        if self.halted_now {
            return Vec::new();
        }
        self.wanted_hooks
            .iter()
            .map(|(hook, binding, repeat)| HookCall {
                hook: hook.clone(),
                binding: binding.clone(),
                repeat: *repeat,
                payload: self.payload(hook),
                credential: Credential::None,
            })
            .collect()
    }
}

pub(super) fn binding(st: &RolloutPolicyStatus) -> String {
    let hash = st.canary.as_ref().map(|c| c.template_hash.as_str()).unwrap_or_default();
    let step = st.step.map(|s| s.to_string()).unwrap_or_default();
    let started = st.step_started_at.map(|t| t.to_string()).unwrap_or_default();
    format!("{hash}/{step}/{started}")
}

/// The hook types whose failed calls Flagger counts as failed checks (its scheduler's
/// runPreRolloutHooks and runAnalysis); confirm hooks only wait, post-rollout and event only log.
pub fn counts_failures(type_: HookType) -> bool {
    matches!(type_, HookType::PreRollout | HookType::Rollout)
}

/// Flagger's event fields, which take precedence over the hook's own `metadata` keys.
fn event_fields(payload: &mut Payload, event_type: EventType, now: jiff::Timestamp) {
    let kind = match event_type {
        EventType::Normal => "Normal",
        EventType::Warning => "Warning",
    };
    payload.metadata.insert("eventMessage".into(), payload.message.clone());
    payload.metadata.insert("eventType".into(), kind.into());
    payload
        .metadata
        .insert("timestamp".into(), now.as_millisecond().to_string());
}
