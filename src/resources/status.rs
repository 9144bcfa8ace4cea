//! RolloutPolicy status: the phase, the rollout's recorded state, history and conditions (what a
//! restart resumes from), notification progress and scaling records.

use jiff::Timestamp;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::policy::{MetricResult, Verdict, VersionRef};

#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum Phase {
    #[default]
    Healthy,
    Progressing,
    Paused,
    WaitingForApproval,
    Succeeded,
    RollingBack,
    RolledBack,
    Aborted,
    Invalid,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Healthy => "Healthy",
            Phase::Progressing => "Progressing",
            Phase::Paused => "Paused",
            Phase::WaitingForApproval => "WaitingForApproval",
            Phase::Succeeded => "Succeeded",
            Phase::RollingBack => "RollingBack",
            Phase::RolledBack => "RolledBack",
            Phase::Aborted => "Aborted",
            Phase::Invalid => "Invalid",
        }
    }

    pub const ALL: [Phase; 9] = [
        Phase::Healthy,
        Phase::Progressing,
        Phase::Paused,
        Phase::WaitingForApproval,
        Phase::Succeeded,
        Phase::RollingBack,
        Phase::RolledBack,
        Phase::Aborted,
        Phase::Invalid,
    ];
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Everything a restarted daemon needs to resume exactly where it was.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutPolicyStatus {
    #[serde(default)]
    pub phase: Phase,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The version holding the traffic (spec.stable until a canary is promoted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable: Option<VersionRef>,
    /// The canary being rolled out, with the pod template it was started for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<CanaryStatus>,
    /// Index into spec.steps of the step in progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub step_started_at: Option<Timestamp>,
    #[serde(default)]
    pub stable_weight: u8,
    #[serde(default)]
    pub canary_weight: u8,
    /// What a person must approve before the rollout goes on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_approval: Option<String>,
    /// Paused by `canaryd pause` until `canaryd resume`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub paused: bool,
    /// `canaryd promote --full` was asked: to 100 % without the remaining steps, pauses or analysis
    /// gate, once the canary has the Ready replicas for it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub promote_full: bool,
    /// The uid of the last RolloutCommand handled, written with its effect: a command acts once,
    /// also across a crash.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_command_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The last transitions, newest last.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<Transition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<AnalysisStatus>,
    /// The webhook gate the rollout waits at, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate: Option<crate::resources::webhook::GateStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scaling: Option<ScalingStatus>,
    /// Present while `spec.schedule` holds the rollout: why, and when traffic may rise again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<crate::resources::schedule::ScheduleStatus>,
    /// How far each notification target has been told (written by the notifier, kept by the planner).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notifications: Vec<NotificationStatus>,
}

/// The transitions of `history` one target was sent, and the Slack message of the current rollout.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NotificationStatus {
    pub target: String,
    /// The time of the newest transition handled (sent, or left out by `events`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub sent_until: Option<Timestamp>,
    /// How many transitions at exactly `sentUntil` were handled: several can share one instant.
    #[serde(default)]
    pub sent_at_that_time: u32,
    /// The Slack message this rollout's transitions update (bot token only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slack: Option<SlackMessage>,
    /// Why the last delivery failed, until one succeeds (a permanent error is not retried until
    /// the target or its Secret changes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 512))]
    pub last_error: Option<String>,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SlackMessage {
    /// The channel ID Slack answered with.
    pub channel: String,
    /// The message's timestamp: its ID for chat.update and the thread's parent.
    pub ts: String,
    /// The rollout the message is about: when it started (its RolloutStarted or CanaryChanged).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub rollout: Option<String>,
}

/// What canaryd changed in each version's scaling, recorded before the first change so that it is
/// restored exactly, also after a restart, an abort or the policy's deletion.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScalingStatus {
    /// Stable's replicas when the rollout started: the canary's capacity is computed from it.
    pub stable_replicas_at_start: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable: Option<VersionScaling>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<VersionScaling>,
    /// After promotion: the old stable to scale to zero, and when.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_down: Option<ScaleDown>,
}

/// One version's scaling as it was before canaryd changed it.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VersionScaling {
    pub deployment: String,
    /// The HPA and its original bounds; absent when the Deployment has no HPA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hpa: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_bounds: Option<crate::resources::bounds::Bounds>,
    /// `spec.replicas` before canaryd changed it (Deployments without an HPA).
    pub original_replicas: i32,
    /// The HPA bounds canaryd last set (written with the plan that set them): on restore, a field
    /// whose value is no longer canaryd's was changed by someone else and is left alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set_bounds: Option<crate::resources::bounds::Bounds>,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScaleDown {
    pub deployment: String,
    /// The old stable's subset: not scaled down while any route still sends it traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subset: Option<String>,
    #[schemars(with = "String")]
    pub at: Timestamp,
    /// Why the scale-down is held back (routes that still send the old stable traffic).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocked: Option<String>,
}

/// Where the analysis of the current canary stands.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisStatus {
    /// When the canary first received traffic in this rollout (`startAfter` counts from here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub since: Option<Timestamp>,
    /// When the current canary weight was set: a weight increase needs a passing check after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub weight_set_at: Option<Timestamp>,
    /// The newest check folded into the counters below.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub last_check: Option<Timestamp>,
    /// The verdict of that check over all metrics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<Verdict>,
    /// Checks in a row with a failed metric.
    #[serde(default)]
    pub failures: u32,
    #[serde(default)]
    pub inconclusive: u32,
    /// Checks in a row where the provider could not answer.
    #[serde(default)]
    pub errors: u32,
    /// The last result of every metric.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub metrics: Vec<MetricResult>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CanaryStatus {
    pub subset: String,
    pub deployment: String,
    /// Hash of the canary Deployment's pod template when this rollout started.
    pub template_hash: String,
    /// Set when this canary was rolled back or aborted: it is not retried until its template or
    /// `spec.canary` changes, or `canaryd retry`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub halted: Option<Phase>,
    /// Failed pre-rollout and rollout webhook calls in this rollout: with failed checks, they count
    /// against `analysis.failureLimit`, as Flagger counts them.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub webhook_failures: u32,
    /// When the newest failed call counted above was answered (each answer counts once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub webhook_failure_at: Option<Timestamp>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// A Kubernetes-style condition.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    /// "True", "False" or "Unknown".
    pub status: String,
    pub reason: String,
    pub message: String,
    #[schemars(with = "String")]
    pub last_transition_time: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Transition {
    #[schemars(with = "String")]
    pub at: Timestamp,
    pub phase: Phase,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<u32>,
    pub canary_weight: u8,
    pub reason: String,
    pub message: String,
    /// Not for notification targets: a wait for a webhook with `muteAlert` (Flagger's meaning).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub muted: bool,
}
