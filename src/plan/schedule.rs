//! The schedule gate: outside every window or inside a freeze, the canary's weight does not rise.
//! Analysis, rollback, abort, pause and timed pauses go on; only increases wait.

use crate::cron::{Why, WindowState, show, window_state};
use crate::resources::policy::{Phase, VersionRef};
use crate::resources::schedule::{HoldReason, ScheduleStatus};

use super::{Planner, duration_between};

impl Planner<'_> {
    /// Hold before raising the canary to `weight` while the schedule is closed: true when held.
    /// A weight already in place (written before a lost status) is not an increase.
    pub(super) fn held_by_schedule(&mut self, stable: &VersionRef, canary: &VersionRef, weight: u8) -> bool {
        let Some(schedule) = &self.spec.schedule else {
            return false;
        };
        if self.obs.weights_are(&stable.subset, Some(&canary.subset), weight) {
            return false;
        }
        let WindowState::Closed { next_open, why } = window_state(schedule, self.now) else {
            return false;
        };
        self.ensure_current_weights(stable, canary);
        let at = self.st.canary_weight;
        let when = match &next_open {
            Some(z) => format!("until the next window opens at {}", show(z)),
            None => "with no window opening in the next 8 years".into(),
        };
        let (hold, message, frozen_until, freeze_reason) = match why {
            Why::Window => (
                HoldReason::OutsideWindow,
                format!(
                    "outside every schedule window: holding canary {} at {at}% {when}",
                    canary.subset
                ),
                None,
                None,
            ),
            Why::Freeze { until, reason } => {
                let because = reason.as_ref().map(|r| format!(" ({r})")).unwrap_or_default();
                (
                    HoldReason::Frozen,
                    format!(
                        "frozen until {until}{because}: holding canary {} at {at}% {when}",
                        canary.subset
                    ),
                    Some(until),
                    reason,
                )
            }
        };
        self.st.pending_approval = None;
        self.st.schedule = Some(ScheduleStatus {
            hold,
            next_open: next_open.as_ref().map(|z| z.timestamp()),
            time_zone: next_open
                .as_ref()
                .and_then(|z| z.time_zone().iana_name().map(String::from)),
            frozen_until,
            freeze_reason,
        });
        self.transition(Phase::Progressing, hold.reason(), message);
        // Look again when it opens (the controller bounds this by its resync).
        self.requeue = next_open.map(|z| duration_between(self.now, z.timestamp()));
        true
    }
}
