//! People steer a rollout by creating a RolloutCommand: a namespaced, create-only resource, so that
//! approving needs only `create rolloutcommands`, never a write to the policy that Git owns.
//! Admission (deploy/admission.yaml) makes `spec.requestedBy` the authenticated creator. Each
//! command is bound to the canary and step it was given for and expires: [`admit`] decides, before
//! the planner sees it, whether it may act at all.

use std::time::Duration;

use jiff::Timestamp;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::{Resource, ResourceExt};

use crate::policy::types::{Phase, RolloutPolicy, RolloutPolicyStatus};

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

/// Why a command does nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("expired: created {age}s ago, commands act within {ttl}s; send it again")]
    Expired { age: i64, ttl: u64 },
    #[error("the policy is Invalid; fix it, then promote again (abort, pause, resume and retry still work)")]
    PolicyInvalid,
    #[error("no rollout in progress")]
    NoRollout,
    #[error("given for canary {given}, but the rollout is now at canary {current}")]
    WrongCanary { given: String, current: String },
    #[error("given at step {given}, but the rollout is now at step {current}")]
    WrongStep { given: String, current: String },
}

impl Refusal {
    /// The Event reason and `status.reason` of the command.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::Expired { .. } => "Expired",
            Refusal::PolicyInvalid => "PolicyInvalid",
            Refusal::NoRollout => "NoRollout",
            Refusal::WrongCanary { .. } => "WrongCanary",
            Refusal::WrongStep { .. } => "WrongStep",
        }
    }
}

fn step_name(step: Option<u32>) -> String {
    step.map_or_else(|| "none".into(), |s| s.to_string())
}

/// May `command`, created at `created`, act on a policy with `status` at `now`? Pure.
pub fn admit(
    command: &RolloutCommandSpec,
    created: Timestamp,
    status: &RolloutPolicyStatus,
    now: Timestamp,
    ttl: Duration,
) -> Result<(), Refusal> {
    let age = now.as_second() - created.as_second();
    if age > i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX) {
        return Err(Refusal::Expired {
            age,
            ttl: ttl.as_secs(),
        });
    }
    // A promotion of a policy in trouble could act later, once fixed, on a gate nobody meant to pass;
    // abort, pause, resume and retry stay bound to this canary and must work whatever is wrong.
    if status.phase == Phase::Invalid && command.command.bound_to_step() {
        return Err(Refusal::PolicyInvalid);
    }
    let Some(canary) = &status.canary else {
        return Err(Refusal::NoRollout);
    };
    if canary.template_hash != command.canary {
        return Err(Refusal::WrongCanary {
            given: command.canary.clone(),
            current: canary.template_hash.clone(),
        });
    }
    if command.command.bound_to_step() && command.step != status.step {
        return Err(Refusal::WrongStep {
            given: step_name(command.step),
            current: step_name(status.step),
        });
    }
    Ok(())
}

/// A command is owned by its policy: it goes when the policy goes.
pub fn owned_by(policy: &RolloutPolicy) -> OwnerReference {
    OwnerReference {
        api_version: RolloutPolicy::api_version(&()).into_owned(),
        kind: RolloutPolicy::kind(&()).into_owned(),
        name: policy.name_any(),
        uid: policy.uid().unwrap_or_default(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::types::CanaryStatus;

    fn status(phase: Phase, hash: Option<&str>, step: Option<u32>) -> RolloutPolicyStatus {
        RolloutPolicyStatus {
            phase,
            canary: hash.map(|h| CanaryStatus {
                subset: "v2".into(),
                deployment: "app-v2".into(),
                template_hash: h.into(),
                halted: None,
            }),
            step,
            ..Default::default()
        }
    }

    fn cmd(kind: CommandKind, hash: &str, step: Option<u32>) -> RolloutCommandSpec {
        RolloutCommandSpec {
            policy: "app".into(),
            command: kind,
            canary: hash.into(),
            step,
            requested_by: "alice".into(),
            on_behalf_of: None,
        }
    }

    /// (name, command, policy status, seconds since the command was created, refusal reason).
    type Case<'a> = (
        &'a str,
        RolloutCommandSpec,
        &'a RolloutPolicyStatus,
        i64,
        Result<(), &'a str>,
    );

    #[test]
    fn admission_table() {
        let t0: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let ttl = Duration::from_secs(300);
        let at = |s: i64| t0 + jiff::SignedDuration::from_secs(s);
        let waiting = status(Phase::WaitingForApproval, Some("aaa"), Some(3));
        use CommandKind::*;
        let cases: Vec<Case> = vec![
            (
                "promote at its gate",
                cmd(Promote, "aaa", Some(3)),
                &waiting,
                10,
                Ok(()),
            ),
            (
                "promote at the ttl",
                cmd(Promote, "aaa", Some(3)),
                &waiting,
                300,
                Ok(()),
            ),
            ("expired", cmd(Promote, "aaa", Some(3)), &waiting, 301, Err("Expired")),
            (
                "expired abort too",
                cmd(Abort, "aaa", None),
                &waiting,
                3600,
                Err("Expired"),
            ),
            (
                "previous rollout",
                cmd(Promote, "old", Some(3)),
                &waiting,
                1,
                Err("WrongCanary"),
            ),
            (
                "abort of another canary",
                cmd(Abort, "old", None),
                &waiting,
                1,
                Err("WrongCanary"),
            ),
            (
                "promote of a passed gate",
                cmd(Promote, "aaa", Some(1)),
                &waiting,
                1,
                Err("WrongStep"),
            ),
            (
                "promote-full without step",
                cmd(PromoteFull, "aaa", None),
                &waiting,
                1,
                Err("WrongStep"),
            ),
            ("abort at any step", cmd(Abort, "aaa", Some(1)), &waiting, 1, Ok(())),
            ("pause at any step", cmd(Pause, "aaa", None), &waiting, 1, Ok(())),
        ];
        let invalid = status(Phase::Invalid, Some("aaa"), Some(3));
        let steady = status(Phase::Healthy, None, None);
        let aborted = status(Phase::Aborted, Some("aaa"), None);
        let more: Vec<Case> = vec![
            (
                "while Invalid",
                cmd(Promote, "aaa", Some(3)),
                &invalid,
                1,
                Err("PolicyInvalid"),
            ),
            ("abort while Invalid", cmd(Abort, "aaa", None), &invalid, 1, Ok(())),
            ("no canary", cmd(Pause, "aaa", None), &steady, 1, Err("NoRollout")),
            (
                "retry of the aborted canary",
                cmd(Retry, "aaa", None),
                &aborted,
                1,
                Ok(()),
            ),
            (
                "retry of another canary",
                cmd(Retry, "bbb", None),
                &aborted,
                1,
                Err("WrongCanary"),
            ),
        ];
        for (name, command, st, secs, want) in cases.into_iter().chain(more) {
            let got = admit(&command, t0, st, at(secs), ttl).map_err(|r| r.reason());
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn by_names_the_person_and_the_creator() {
        let mut c = cmd(CommandKind::Promote, "aaa", Some(1));
        assert_eq!(c.by(), "alice");
        c.on_behalf_of = Some("slack:U1 (bob)".into());
        assert_eq!(c.by(), "slack:U1 (bob) via alice");
    }

    #[test]
    fn refusals_say_why() {
        let r = Refusal::WrongCanary {
            given: "old".into(),
            current: "new".into(),
        };
        assert_eq!(
            r.to_string(),
            "given for canary old, but the rollout is now at canary new"
        );
        assert!(
            Refusal::Expired { age: 400, ttl: 300 }
                .to_string()
                .contains("created 400s ago")
        );
    }

    #[test]
    fn kinds_serialize_as_the_cli_names_them() {
        for kind in CommandKind::ALL {
            assert_eq!(serde_json::to_value(kind).unwrap(), kind.as_str());
        }
    }
}
