//! The analysis side of the planner: fold checks into counters, roll back, hold or pause on them,
//! and gate weight increases on a passing check.

use crate::resources::reason::Reason;
use std::time::Duration;

use super::Planner;
use crate::analysis::judge::aggregate;
use crate::resources::policy::{AnalysisStatus, Phase, ProviderErrorAction, Verdict, VersionRef};

impl Planner<'_> {
    /// Fold the newest check into the counters, once.
    pub(super) fn fold_check(&mut self) {
        if self.spec.analysis.is_none() {
            self.st.analysis = None;
            return;
        }
        let weight = self.st.canary_weight;
        let now = self.now;
        let a = self.st.analysis.get_or_insert_with(AnalysisStatus::default);
        if a.since.is_none() && weight > 0 {
            // Analysis added while the canary has traffic: judge it from now, at this weight too.
            a.since = Some(now);
            a.weight_set_at = Some(now);
        }
        let Some(check) = &self.obs.analysis else { return };
        let fresh = a.since.is_some_and(|s| check.at >= s) && a.last_check.is_none_or(|l| check.at > l);
        if !fresh {
            return;
        }
        let verdict = aggregate(check.results.iter().map(|r| r.verdict));
        a.last_check = Some(check.at);
        a.verdict = Some(verdict);
        a.metrics = check.results.clone();
        match verdict {
            Verdict::Pass => (a.failures, a.inconclusive, a.errors) = (0, 0, 0),
            Verdict::Fail => (a.failures, a.inconclusive, a.errors) = (a.failures + 1, 0, 0),
            Verdict::Inconclusive => (a.inconclusive, a.errors) = (a.inconclusive + 1, 0),
            Verdict::Error => a.errors += 1,
        }
    }

    /// Act on the counters: roll back on an SLO breach, hold on provider errors, pause for a human
    /// after too many inconclusive checks. True when the reconcile ends here.
    pub(super) fn judge_analysis(&mut self, stable: &VersionRef, canary: &VersionRef) -> bool {
        let (Some(spec), Some(a)) = (self.spec.analysis.as_ref(), self.st.analysis.clone()) else {
            return false;
        };
        let detail = |verdict: Verdict| {
            a.metrics
                .iter()
                .filter(|r| r.verdict == verdict)
                .map(|r| format!("{} over {}", r.message, r.window))
                .collect::<Vec<_>>()
                .join("; ")
        };
        if a.failures >= spec.failure_limit {
            self.halt(
                Phase::RolledBack,
                Reason::AnalysisFailed,
                format!(
                    "{} ({} failed check(s) in a row, failureLimit {})",
                    detail(Verdict::Fail),
                    a.failures,
                    spec.failure_limit
                ),
            );
            return true;
        }
        if a.errors >= spec.on_provider_error.after {
            let message = format!(
                "{} provider errors in a row (onProviderError.after {}): {}",
                a.errors,
                spec.on_provider_error.after,
                detail(Verdict::Error)
            );
            if spec.on_provider_error.action == ProviderErrorAction::Rollback {
                self.halt(Phase::RolledBack, Reason::ProviderErrors, message);
            } else {
                self.ensure_current_weights(stable, canary);
                self.st.pending_approval = None;
                self.transition(
                    Phase::Paused,
                    Reason::ProviderErrors,
                    format!("{message}; holding until checks answer"),
                );
            }
            return true;
        }
        if a.inconclusive >= spec.inconclusive_limit && !self.st.paused {
            self.st.paused = true;
            self.st.pending_approval = None;
            self.ensure_current_weights(stable, canary);
            self.transition(
                Phase::Paused,
                Reason::Inconclusive,
                format!(
                    "{} inconclusive checks in a row (inconclusiveLimit {}): {}; `canaryd resume` to go on",
                    a.inconclusive,
                    spec.inconclusive_limit,
                    detail(Verdict::Inconclusive)
                ),
            );
            return true;
        }
        false
    }

    /// With analysis configured, more traffic (or promotion) needs a passing check whose whole window
    /// (every metric's) starts after the current weight was set: a check that ended after the weight
    /// changed but looked back before it mostly saw the previous weight. True when it must wait.
    pub(super) fn waits_for_analysis(&mut self, canary: &VersionRef, next: u8) -> bool {
        let Some(a) = self.st.analysis.as_ref() else {
            return false;
        };
        // The newest check is the one folded into the verdict (each check is folded once, in order).
        let folded = self.obs.analysis.as_ref().filter(|c| a.last_check == Some(c.at));
        let whole_window = folded.is_some_and(|c| a.weight_set_at.is_none_or(|w| c.window_start > w));
        if a.verdict == Some(Verdict::Pass) && whole_window {
            return false;
        }
        let why = match a.verdict {
            Some(Verdict::Pass) | None => "no check yet whose whole window is at this weight".to_string(),
            Some(v) => format!("last check {}", v.as_str()),
        };
        self.st.pending_approval = None;
        self.transition(
            Phase::Progressing,
            Reason::WaitingForAnalysis,
            format!(
                "canary {} at {}%: waiting for a passing analysis check before {next}% ({why})",
                canary.subset, self.st.canary_weight
            ),
        );
        self.requeue = Some(Duration::from_secs(5));
        true
    }
}
