//! Progress: which transitions of a policy's history a target was told (`status.notifications`),
//! which rollout a transition belongs to, and the writes that record it.

use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

use super::{Notifier, Stop};
use crate::resources::policy::{NotificationStatus, RolloutPolicy, Transition};

/// How many transitions before `history[i]` share its instant.
pub fn nth_at_that_time(history: &[Transition], i: usize) -> u32 {
    history[..i].iter().filter(|t| t.at == history[i].at).count() as u32
}

fn starts_rollout(t: &Transition) -> bool {
    matches!(t.reason.as_str(), "RolloutStarted" | "CanaryChanged")
}

/// When the rollout of `history[i]` started: its last RolloutStarted or CanaryChanged up to `i`
/// (None when that dropped out of the capped history).
pub fn rollout_start(history: &[Transition], i: usize) -> Option<jiff::Timestamp> {
    history[..=i].iter().rev().find(|t| starts_rollout(t)).map(|t| t.at)
}

/// Indices of the transitions of `history` not yet handled for a target. A target never told
/// anything starts with the current rollout (from its last start), or with the newest transition.
pub fn pending(history: &[Transition], entry: Option<&NotificationStatus>) -> Vec<usize> {
    match entry.and_then(|e| e.sent_until.map(|at| (at, e.sent_at_that_time))) {
        Some((until, count)) => (0..history.len())
            .filter(|&i| {
                let t = &history[i];
                t.at > until || (t.at == until && nth_at_that_time(history, i) >= count)
            })
            .collect(),
        None => {
            let start = history
                .iter()
                .rposition(starts_rollout)
                .unwrap_or(history.len().saturating_sub(1));
            (start..history.len()).collect()
        }
    }
}

/// Record `history[i]` as handled.
pub fn advance(entry: &mut NotificationStatus, history: &[Transition], i: usize) {
    let t = &history[i];
    entry.sent_until = Some(t.at);
    entry.sent_at_that_time = nth_at_that_time(history, i) + 1;
}

impl Notifier {
    /// Write one target's progress into `status.notifications`.
    pub(super) async fn record(
        &self,
        api: &Api<RolloutPolicy>,
        name: &str,
        entry: &NotificationStatus,
    ) -> Result<(), Stop> {
        self.update_entry(api, name, &entry.target, |e| *e = entry.clone())
            .await
    }

    /// Change one target's entry of `status.notifications` (only the notifier writes it; the
    /// planner carries it over). Other targets of the policy write too: one at a time, each into
    /// the list as it is now. Nothing is written when nothing changes.
    pub(super) async fn update_entry(
        &self,
        api: &Api<RolloutPolicy>,
        name: &str,
        target: &str,
        change: impl FnOnce(&mut NotificationStatus),
    ) -> Result<(), Stop> {
        let ns = api.namespace().unwrap_or_default().to_string();
        let lock = self.state().writes.entry((ns, name.to_string())).or_default().clone();
        let _one_at_a_time = lock.lock().await;
        let failed = |e| Stop::Failed(super::NotifyError::Kube(e));
        let Some(policy) = api.get_opt(name).await.map_err(failed)? else {
            return Ok(());
        };
        if !self.leader.may_write() {
            return Err(Stop::NotLeader);
        }
        let before = policy.status.map(|s| s.notifications).unwrap_or_default();
        let mut list = before.clone();
        let i = match list.iter().position(|e| e.target == target) {
            Some(i) => i,
            None => {
                list.push(NotificationStatus {
                    target: target.to_string(),
                    ..Default::default()
                });
                list.len() - 1
            }
        };
        change(&mut list[i]);
        // Targets no longer named are dropped.
        list.retain(|e| policy.spec.notifications.iter().any(|n| n.target == e.target));
        if list == before {
            return Ok(());
        }
        let patch = json!({"status": {"notifications": list}});
        api.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(failed)?;
        Ok(())
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::resources::policy::Phase;
    use jiff::Timestamp;

    pub(in super::super) fn t(secs: i64, reason: &str) -> Transition {
        Transition {
            at: Timestamp::from_second(secs).unwrap_or(Timestamp::UNIX_EPOCH),
            phase: Phase::Progressing,
            step: Some(0),
            canary_weight: 0,
            reason: reason.into(),
            message: String::new(),
            muted: false,
        }
    }

    #[test]
    fn the_cursor_resumes_after_the_last_handled_transition_also_within_one_instant() {
        let history = vec![
            t(1, "NoCanary"),
            t(5, "RolloutStarted"),
            t(5, "WeightChanged"),
            t(6, "Pausing"),
        ];
        // Never told: the current rollout, from its start.
        assert_eq!(pending(&history, None), vec![1, 2, 3]);
        let mut entry = NotificationStatus::default();
        advance(&mut entry, &history, 1);
        assert_eq!(pending(&history, Some(&entry)), vec![2, 3]);
        advance(&mut entry, &history, 2);
        assert_eq!(pending(&history, Some(&entry)), vec![3]);
        advance(&mut entry, &history, 3);
        assert!(pending(&history, Some(&entry)).is_empty());
        // History is capped: older entries dropping out do not move the cursor.
        assert!(pending(&history[2..], Some(&entry)).is_empty());
        let mut more = history.clone();
        more.push(t(9, "WaitingForApproval"));
        assert_eq!(pending(&more, Some(&entry)), vec![4]);
        // No rollout started in the history: only the newest.
        assert_eq!(pending(&[t(1, "NoCanary"), t(2, "InvalidSpec")], None), vec![1]);
    }

    #[test]
    fn a_transition_belongs_to_the_rollout_started_last_before_it() {
        let history = vec![
            t(1, "RolloutStarted"),
            t(2, "WaitingForApproval"),
            t(3, "Aborted"),
            t(4, "RolloutStarted"),
            t(5, "WaitingForApproval"),
            t(6, "CanaryChanged"),
        ];
        let at = |s| Timestamp::from_second(s).ok();
        assert_eq!(rollout_start(&history, 1), at(1));
        assert_eq!(rollout_start(&history, 2), at(1));
        assert_eq!(rollout_start(&history, 4), at(4));
        assert_eq!(rollout_start(&history, 5), at(6));
        // Its start dropped out of the capped history: unknown.
        assert_eq!(rollout_start(&history[1..], 0), None);
    }
}
