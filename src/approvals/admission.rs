//! Command admission: each RolloutCommand is bound to the canary and step it was given for and
//! expires; [`admit`] decides, before the planner sees it, whether it may act at all.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::{Resource, ResourceExt};

use crate::resources::command::RolloutCommandSpec;
use crate::resources::policy::{Phase, RolloutPolicy, RolloutPolicyStatus};

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
    use crate::resources::command::CommandKind;
    use crate::resources::policy::CanaryStatus;

    fn status(phase: Phase, hash: Option<&str>, step: Option<u32>) -> RolloutPolicyStatus {
        RolloutPolicyStatus {
            phase,
            canary: hash.map(|h| CanaryStatus {
                subset: "v2".into(),
                deployment: "app-v2".into(),
                template_hash: h.into(),
                halted: None,
                ..Default::default()
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
