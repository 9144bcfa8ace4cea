//! The value of the Approve / Abort buttons on a rollout's Slack message: which policy, rollout
//! (canary template hash), step and gate occurrence the click is about, so that a click on an old
//! message does nothing and a new occurrence of the same gate gets buttons that act.

use serde::{Deserialize, Serialize};

/// `action_id` of the Approve button (the same command as `canaryd promote`).
pub const PROMOTE_ACTION: &str = "canaryd:promote";
/// `action_id` of the Abort button (the same command as `canaryd abort`).
pub const ABORT_ACTION: &str = "canaryd:abort";

/// The button's `value`: compact JSON, well under Slack's 2000-character limit.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ButtonValue {
    /// The policy's namespace.
    pub ns: String,
    pub policy: String,
    /// `status.canary.templateHash` of the rollout the message is about.
    pub canary: String,
    /// `status.step` when the message was sent.
    pub step: u32,
    /// The NotificationTarget whose message carries the button (its signing secret and allow-lists).
    pub target: String,
    /// The gate occurrence: when the step's wait began (`status.stepStartedAt`, Unix ms). A retry or
    /// a redeploy reaching the same step again is another occurrence. Absent on older messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<i64>,
}

impl ButtonValue {
    pub fn encode(&self) -> String {
        // A struct of strings and a number always serializes.
        serde_json::to_string(self).unwrap_or_default()
    }

    pub fn decode(value: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_round_trips_and_is_compact() {
        let v = ButtonValue {
            ns: "dev".into(),
            policy: "istio-test".into(),
            canary: "5d8f9c".into(),
            step: 3,
            target: "team-slack".into(),
            at: Some(1_700_000_000_123),
        };
        let text = v.encode();
        assert_eq!(
            text,
            r#"{"ns":"dev","policy":"istio-test","canary":"5d8f9c","step":3,"target":"team-slack","at":1700000000123}"#
        );
        assert_eq!(ButtonValue::decode(&text).ok(), Some(v.clone()));
        // A message sent before occurrences were named still decodes.
        let old = ButtonValue::decode(
            r#"{"ns":"dev","policy":"istio-test","canary":"5d8f9c","step":3,"target":"team-slack"}"#,
        );
        assert_eq!(old.ok(), Some(ButtonValue { at: None, ..v }));
    }

    #[test]
    fn unknown_or_missing_fields_are_refused() {
        assert!(ButtonValue::decode(r#"{"ns":"a","policy":"b","canary":"c","step":1,"target":"t","x":1}"#).is_err());
        assert!(ButtonValue::decode(r#"{"ns":"a","policy":"b","canary":"c","target":"t"}"#).is_err());
        assert!(ButtonValue::decode(r#"{"ns":"a","policy":"b","canary":"c","step":"1","target":"t"}"#).is_err());
    }
}
