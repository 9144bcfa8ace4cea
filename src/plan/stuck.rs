//! A rollout whose side effects keep failing is stuck as surely as one held by a problem: at the
//! progress deadline it is rolled back. The failed plans never wrote their status (so the step's
//! clock restarts with each of them); the `Synced` condition the controller writes on a failure
//! is what keeps the time.

use super::{Planner, duration_between};
use crate::resources::policy::Phase;
use crate::resources::reason::Reason;

/// The condition the controller sets False (reason `ActionFailed`) when a plan's side effect fails.
const SYNCED: &str = "Synced";

impl Planner<'_> {
    /// Record a rollback when the side effects have failed for the progress deadline since the
    /// rollout last moved (its last recorded transition or step). True when it did.
    pub(super) fn failing_past_deadline(&mut self) -> bool {
        let Some(synced) = self
            .st
            .conditions
            .iter()
            .find(|c| c.type_ == SYNCED && c.status == "False")
        else {
            return false;
        };
        let moved = self.st.history.last().map(|t| t.at);
        let since = [moved, self.st.step_started_at]
            .into_iter()
            .flatten()
            .fold(synced.last_transition_time, |a, b| a.max(b));
        let stuck = duration_between(since, self.now);
        if stuck < self.spec.progress_deadline {
            return false;
        }
        let message = format!(
            "side effects failing for {} (progressDeadline {}): {}",
            humantime::format_duration(stuck),
            humantime::format_duration(self.spec.progress_deadline),
            synced.message
        );
        self.halt(Phase::RolledBack, Reason::ProgressDeadlineExceeded, message);
        true
    }
}
