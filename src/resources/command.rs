//! RolloutCommand: people steer a rollout by creating one, a namespaced, create-only resource, so
//! that approving needs only `create rolloutcommands`, never a write to the policy that Git owns.
//! Admission (deploy/admission.yaml) makes `spec.requestedBy` the authenticated creator.

use jiff::Timestamp;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The annotation of the retired annotation channel; a policy carrying it gets a Warning Event.
pub const LEGACY_ANNOTATION: &str = "canaryd.io/command";

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum CommandKind {
    /// Pass the current pause or approval gate.
    Promote,
    /// Go to 100 % now, skipping the remaining steps.
    PromoteFull,
    /// Traffic to stable now; the rollout stays `Aborted` until retried.
    Abort,
    Pause,
    Resume,
    /// Start a rolled-back or aborted canary again from the first step.
    Retry,
}

impl CommandKind {
    pub const ALL: [CommandKind; 6] = [
        CommandKind::Promote,
        CommandKind::PromoteFull,
        CommandKind::Abort,
        CommandKind::Pause,
        CommandKind::Resume,
        CommandKind::Retry,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CommandKind::Promote => "promote",
            CommandKind::PromoteFull => "promote-full",
            CommandKind::Abort => "abort",
            CommandKind::Pause => "pause",
            CommandKind::Resume => "resume",
            CommandKind::Retry => "retry",
        }
    }

    /// Promotions pass one gate, so they are bound to the step too; the others only to the canary
    /// (an abort must work whatever step the rollout has reached meanwhile).
    pub fn bound_to_step(self) -> bool {
        matches!(self, CommandKind::Promote | CommandKind::PromoteFull)
    }
}

/// One command for one RolloutPolicy of the same namespace. Create-only: `spec` never changes.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "canaryd.io",
    version = "v1alpha1",
    kind = "RolloutCommand",
    namespaced,
    status = "RolloutCommandStatus",
    shortname = "rcmd",
    category = "canaryd",
    printcolumn = r#"{"name":"Policy","type":"string","jsonPath":".spec.policy"}"#,
    printcolumn = r#"{"name":"Command","type":"string","jsonPath":".spec.command"}"#,
    printcolumn = r#"{"name":"By","type":"string","jsonPath":".spec.requestedBy"}"#,
    printcolumn = r#"{"name":"Outcome","type":"string","jsonPath":".status.outcome"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.reason"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "self == oldSelf",
    "message": "spec is immutable: create a new RolloutCommand"
}]))]
pub struct RolloutCommandSpec {
    /// The RolloutPolicy, in the command's namespace.
    #[schemars(length(min = 1, max = 253))]
    pub policy: String,
    pub command: CommandKind,
    /// `status.canary.templateHash` of the policy when the command was given.
    #[schemars(length(min = 1, max = 64))]
    pub canary: String,
    /// `status.step` of the policy when the command was given (promotions must match it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<u32>,
    /// The Kubernetes user who created the command; admission refuses any other value.
    #[schemars(length(min = 1, max = 512))]
    pub requested_by: String,
    /// The person the daemon's approvals listener acted for (`slack:U123 (name)`, or the Kubernetes
    /// user of an approval API call); admission allows it only from the daemon's ServiceAccount.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 512))]
    pub on_behalf_of: Option<String>,
}

/// Bounds of a command's strings: a Kubernetes object name, a template hash, a user name.
pub const MAX_NAME: usize = 253;
pub const MAX_HASH: usize = 64;
pub const MAX_USER: usize = 512;

impl RolloutCommandSpec {
    /// The CRD's bounds, for commands stored before the CRD stated them.
    pub fn check(&self) -> Result<(), String> {
        let long = |field: &str, value: &str, max: usize| {
            (value.len() > max).then(|| format!("spec.{field}: {} characters, at most {max}", value.len()))
        };
        let problem = long("policy", &self.policy, MAX_NAME)
            .or_else(|| long("canary", &self.canary, MAX_HASH))
            .or_else(|| long("requestedBy", &self.requested_by, MAX_USER))
            .or_else(|| long("onBehalfOf", self.on_behalf_of.as_deref().unwrap_or_default(), MAX_USER));
        problem.map_or(Ok(()), Err)
    }

    /// Who the command is from, as Events and outcomes name them.
    pub fn by(&self) -> String {
        match &self.on_behalf_of {
            Some(person) => format!("{person} via {}", self.requested_by),
            None => self.requested_by.clone(),
        }
    }
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum Outcome {
    Acted,
    Refused,
}

/// Written once by the daemon: what became of the command.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutCommandStatus {
    pub outcome: Outcome,
    pub reason: String,
    pub message: String,
    #[schemars(with = "String")]
    pub at: Timestamp,
}

/// An admitted command, as the planner sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// The RolloutCommand's uid: recorded in `status.lastCommandId` with the command's effect.
    pub id: String,
    pub kind: CommandKind,
    /// `spec.requestedBy`, checked by admission.
    pub by: Option<String>,
}
