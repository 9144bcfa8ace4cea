//! What one notification says: a transition of one policy with the versions, weights and analysis
//! results around it. Built from the policy as stored; every channel renders it its own way.

use jiff::Timestamp;
use kube::ResourceExt;

use crate::approvals::button::ButtonValue;
use crate::resources::policy::{MetricResult, Phase, RolloutPolicy, Transition, Verdict, VersionRef};

#[derive(Clone, Debug, PartialEq)]
pub struct Message {
    pub namespace: String,
    pub policy: String,
    pub service: String,
    pub at: Timestamp,
    pub phase: Phase,
    pub reason: String,
    pub text: String,
    /// Index into spec.steps, when a rollout is in progress.
    pub step: Option<u32>,
    pub steps: usize,
    pub canary_weight: u8,
    pub stable: Option<VersionRef>,
    pub canary: Option<VersionRef>,
    /// `status.canary.templateHash`: the rollout the message is about.
    pub canary_hash: Option<String>,
    /// The last result of every metric (empty without analysis).
    pub analysis: Vec<MetricResult>,
    /// A unique, stable id of the transition (for a receiver to drop a repeat after a crash).
    pub id: String,
    /// When the gate's wait began (`status.stepStartedAt` at the transition's step): the gate
    /// occurrence the buttons act on.
    pub gate_at: Timestamp,
    /// When the rollout the transition belongs to started (its RolloutStarted or CanaryChanged);
    /// None when that dropped out of the capped history.
    pub rollout: Option<Timestamp>,
}

impl Message {
    /// Transition `history[i]` of `policy`, with the versions and analysis of its current status.
    pub fn new(policy: &RolloutPolicy, history: &[Transition], i: usize) -> Self {
        let transition = &history[i];
        let nth_at_that_time = super::progress::nth_at_that_time(history, i);
        let status = policy.status.clone().unwrap_or_default();
        let gate_at = status
            .step_started_at
            .filter(|_| status.step == transition.step)
            .unwrap_or(transition.at);
        let namespace = policy.namespace().unwrap_or_default();
        let name = policy.name_any();
        let canary = status
            .canary
            .as_ref()
            .map(|c| VersionRef {
                subset: c.subset.clone(),
                deployment: c.deployment.clone(),
            })
            .or_else(|| policy.spec.canary.clone());
        Message {
            id: format!("{namespace}/{name}/{}/{nth_at_that_time}", transition.at),
            namespace,
            policy: name,
            service: policy.spec.service.clone(),
            at: transition.at,
            phase: transition.phase,
            reason: transition.reason.clone(),
            text: transition.message.clone(),
            step: transition.step,
            steps: policy.spec.steps.len(),
            canary_weight: transition.canary_weight,
            stable: status.stable.clone().or_else(|| Some(policy.spec.stable.clone())),
            canary,
            canary_hash: status.canary.as_ref().map(|c| c.template_hash.clone()),
            analysis: status.analysis.map(|a| a.metrics).unwrap_or_default(),
            gate_at,
            rollout: super::progress::rollout_start(history, i),
        }
    }

    /// `ns/name`.
    pub fn title(&self) -> String {
        format!("{}/{}", self.namespace, self.policy)
    }

    pub fn stable_subset(&self) -> &str {
        self.stable.as_ref().map(|v| v.subset.as_str()).unwrap_or("-")
    }

    pub fn canary_subset(&self) -> &str {
        self.canary.as_ref().map(|v| v.subset.as_str()).unwrap_or("-")
    }

    /// "step 3 of 5" (1-based), when a rollout is in progress.
    pub fn step_text(&self) -> Option<String> {
        self.step.map(|s| format!("step {} of {}", s + 1, self.steps))
    }

    /// Metrics whose last check failed, with how far they are past their threshold.
    pub fn failed_metrics(&self) -> Vec<String> {
        if !matches!(self.phase, Phase::RollingBack | Phase::RolledBack) {
            return Vec::new();
        }
        self.analysis
            .iter()
            .filter(|m| m.verdict == Verdict::Fail)
            .map(|m| {
                let value = m.value.map(number).unwrap_or_else(|| "no value".into());
                let by = m
                    .value
                    .and_then(|v| miss(v, m.stable_value, &m.threshold))
                    .map(|d| format!(", off by {}", number(d)))
                    .unwrap_or_default();
                format!(
                    "{} = {value} (threshold {}{by}, window {})",
                    m.name, m.threshold, m.window
                )
            })
            .collect()
    }

    /// The Approve / Abort buttons this transition's message carries: both while waiting for
    /// approval, Abort alone while progressing, none otherwise.
    pub fn buttons(&self, target: &str) -> Option<(ButtonValue, bool)> {
        let approve = match self.phase {
            Phase::WaitingForApproval => true,
            Phase::Progressing => false,
            _ => return None,
        };
        let value = ButtonValue {
            ns: self.namespace.clone(),
            policy: self.policy.clone(),
            canary: self.canary_hash.clone()?,
            step: self.step?,
            target: target.to_string(),
            at: Some(self.gate_at.as_millisecond()),
        };
        Some((value, approve))
    }
}

/// Weights as a bar of ten cells: `▓▓▓▓▓░░░░░ 50%` (the canary's share filled).
pub fn bar(canary_weight: u8) -> String {
    let w = canary_weight.min(100);
    let filled = usize::from((w + 5) / 10);
    format!("{}{} {w}%", "▓".repeat(filled), "░".repeat(10 - filled))
}

/// A number without noise: `5`, `0.25`, `99.95`.
pub fn number(v: f64) -> String {
    if !v.is_finite() {
        return v.to_string();
    }
    let s = format!("{v:.4}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    s.to_string()
}

/// How far `value` is past the judge's `threshold` (e.g. ">= 99, <= stable + 0.5"); None when it is
/// within it or the threshold cannot be read.
pub fn miss(value: f64, stable: Option<f64>, threshold: &str) -> Option<f64> {
    let mut worst: Option<f64> = None;
    for part in threshold.split(',').map(str::trim) {
        let (op, rest) = if let Some(r) = part.strip_prefix(">=") {
            (">=", r.trim())
        } else if let Some(r) = part.strip_prefix("<=") {
            ("<=", r.trim())
        } else {
            continue;
        };
        let bound = if let Some(d) = rest.strip_prefix("stable - ") {
            stable? - d.trim().parse::<f64>().ok()?
        } else if let Some(d) = rest.strip_prefix("stable + ") {
            stable? + d.trim().parse::<f64>().ok()?
        } else {
            rest.parse::<f64>().ok()?
        };
        let off = if op == ">=" { bound - value } else { value - bound };
        if off > 0.0 && worst.is_none_or(|w| off > w) {
            worst = Some(off);
        }
    }
    worst
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bar_fills_one_cell_per_ten_percent() {
        assert_eq!(bar(0), "░░░░░░░░░░ 0%");
        assert_eq!(bar(10), "▓░░░░░░░░░ 10%");
        assert_eq!(bar(50), "▓▓▓▓▓░░░░░ 50%");
        assert_eq!(bar(100), "▓▓▓▓▓▓▓▓▓▓ 100%");
        assert_eq!(bar(200), "▓▓▓▓▓▓▓▓▓▓ 100%");
    }

    #[test]
    fn miss_says_how_far_past_the_threshold() {
        assert_eq!(miss(95.0, None, ">= 99"), Some(4.0));
        assert_eq!(miss(99.5, None, ">= 99"), None);
        assert_eq!(miss(7.0, None, "<= 5"), Some(2.0));
        assert_eq!(miss(3.0, Some(1.0), "<= stable + 0.5"), Some(1.5));
        assert_eq!(miss(3.0, None, "<= stable + 0.5"), None);
        assert_eq!(miss(80.0, None, ">= 90, <= 100"), Some(10.0));
        assert_eq!(miss(1.0, None, "nonsense"), None);
        assert_eq!(number(1.5), "1.5");
        assert_eq!(number(4.0), "4");
    }
}
