//! The planner's handling of people's commands (promote, abort, pause, resume, retry): each
//! command id acts once and is recorded in status.

use super::{EventType, Planner};
use crate::resources::command::CommandKind;
use crate::resources::policy::{CanaryStatus, Phase, VersionRef};
use crate::resources::reason::Reason;

impl Planner<'_> {
    /// Act on a new command; returns a promotion to carry out in the step walk, `(full, by)`. While
    /// `held` (a problem holds the rollout) a promotion is refused with that reason; abort, pause,
    /// resume and retry work as ever. An abort is recorded with its command id and moves no traffic
    /// in this reconcile (see `halt`).
    pub(super) fn apply_command(
        &mut self,
        stable: &VersionRef,
        identity: &CanaryStatus,
        held: Option<&str>,
    ) -> Option<(bool, String)> {
        let mut promote = None;
        if let Some(cmd) = self.new_command() {
            self.st.last_command_id = Some(cmd.id.clone());
            let by = cmd.by.as_deref().map(|b| format!(" by {b}")).unwrap_or_default();
            match cmd.kind {
                CommandKind::Abort => {
                    if self.halted().is_none() {
                        self.halt(Phase::Aborted, Reason::Aborted, format!("rollout aborted{by}"));
                    }
                }
                CommandKind::Promote | CommandKind::PromoteFull if held.is_some() => {
                    let why = held.unwrap_or_default();
                    self.event(
                        EventType::Warning,
                        "CommandIgnored",
                        format!("{}{by}: the rollout is held: {why}", cmd.kind.as_str()),
                    );
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
