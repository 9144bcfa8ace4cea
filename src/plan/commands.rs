//! The planner's handling of people's commands (promote, abort, pause, resume, retry): each
//! command id acts once and is recorded in status.

use super::{EventType, Planner};
use crate::gates::commands::CommandKind;
use crate::policy::types::{CanaryStatus, Phase, VersionRef};

impl Planner<'_> {
    /// Act on a new command; returns a promotion to carry out in the step walk, `(full, by)`.
    pub(super) fn apply_command(&mut self, stable: &VersionRef, identity: &CanaryStatus) -> Option<(bool, String)> {
        let mut promote = None;
        if let Some(cmd) = self.new_command() {
            self.st.last_command_id = Some(cmd.id.clone());
            let by = cmd.by.as_deref().map(|b| format!(" by {b}")).unwrap_or_default();
            match cmd.kind {
                CommandKind::Abort => {
                    if self.halted().is_none() {
                        self.send_all_to_stable(stable);
                        self.halt(
                            Phase::Aborted,
                            "Aborted",
                            format!("rollout aborted{by}; all traffic on stable"),
                        );
                    }
                }
                CommandKind::Retry => {
                    if self.halted().is_some() {
                        self.event(EventType::Normal, "Retry", format!("retry requested{by}"));
                        self.start(stable, identity.clone(), None);
                    } else {
                        self.event(
                            EventType::Normal,
                            "CommandIgnored",
                            format!("retry{by}: nothing to retry"),
                        );
                    }
                }
                CommandKind::Pause => {
                    self.st.paused = true;
                    self.event(EventType::Normal, "PauseRequested", format!("rollout paused{by}"));
                }
                CommandKind::Resume => {
                    self.st.paused = false;
                    if let Some(a) = self.st.analysis.as_mut() {
                        a.inconclusive = 0;
                        a.errors = 0;
                    }
                    self.event(EventType::Normal, "ResumeRequested", format!("rollout resumed{by}"));
                }
                CommandKind::Promote => promote = Some((false, by)),
                CommandKind::PromoteFull => promote = Some((true, by)),
            }
        }
        promote
    }
}
