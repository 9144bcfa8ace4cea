//! Webhook gates with Flagger's semantics: the policy's `spec.webhooks`, the JSON payload they are
//! sent, and their answers as plain data. The planner reads answers and says which hooks it wants
//! asked; the runner (src/hooks/runner.rs) makes the calls off the reconcile path.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::resources::policy::SecretKeyRef;

/// One webhook: when it is called (`type`), where, and how patiently.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Webhook {
    /// Unique within the policy; named in status, Events and rollback reasons.
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
    /// Optional, as in Flagger: a hook without a type is a `rollout` hook.
    #[serde(rename = "type", default = "rollout")]
    pub type_: HookType,
    /// http:// or https:// (no credentials in it: it is shown in status and logs).
    #[schemars(length(min = 1, max = 2048), regex(pattern = r"^https?://"))]
    pub url: String,
    /// How long one call may take; a call that takes longer is a failed answer.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    #[schemars(schema_with = "crate::resources::schema::duration")]
    pub timeout: Duration,
    /// Flagger's meaning: HTTP retries within one call (after a connection error, a timeout, 429 or
    /// a 5xx other than 501), 1 s, 2 s, 4 s … apart; only then is the call a failed answer.
    #[serde(default)]
    #[schemars(range(max = 10))]
    pub retries: u32,
    /// How often a hook that said no (or a rollout/rollback hook) is asked again.
    #[serde(default = "default_interval", with = "humantime_serde")]
    #[schemars(schema_with = "crate::resources::schema::interval")]
    pub interval: Duration,
    /// Sent as is in the payload's `metadata`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 32, "additionalProperties" = {"type": "string", "maxLength": 1024}))]
    pub metadata: BTreeMap<String, String>,
    /// A bearer token from a Secret in the daemon's namespace. Sent only if the platform allowed
    /// this URL: the Secret's `canaryd.io/webhook-urls` annotation lists URL prefixes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bearer_token_secret: Option<SecretKeyRef>,
    /// Flagger's meaning: while this confirm hook holds the rollout, notification targets are not
    /// told (`WaitingForWebhook`); Events and event hooks still are.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub mute_alert: bool,
    /// Flagger's meaning: an https URL's certificate is not verified. A bearer token is never sent
    /// to such a hook (the call is refused instead).
    #[serde(default, rename = "disableTLS", skip_serializing_if = "std::ops::Not::not")]
    pub disable_tls: bool,
}

/// The Secret annotation listing (comma-separated) the URL prefixes a token may be sent to.
pub const ALLOWED_URLS_ANNOTATION: &str = "canaryd.io/webhook-urls";

/// A bearer token; never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Bearer(pub String);

impl std::fmt::Debug for Bearer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Bearer(<redacted>)")
    }
}

/// A hook's credential as the controller resolved it: the token, or why it is not sent (then the
/// call is not made and counts as a failed answer).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Credential {
    None,
    Bearer(Bearer),
    Refused(String),
}

/// Whether `url` is under one of the prefixes in the annotation's value.
pub fn url_allowed(annotation: &str, url: &str) -> bool {
    annotation
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .any(|prefix| {
            url.starts_with(prefix)
                && (prefix.ends_with('/') || url.len() == prefix.len() || url[prefix.len()..].starts_with('/'))
        })
}

/// When a hook is called (Flagger's names).
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum HookType {
    /// Before the canary is scaled up or gets traffic; the rollout waits for a 2xx.
    ConfirmRollout,
    /// Before the first weight; a failed call counts against the analysis failure limit.
    PreRollout,
    /// While the canary has traffic, every interval, like a metric; a failed call counts too.
    Rollout,
    /// Before each weight increase; the rollout waits for a 2xx.
    ConfirmTrafficIncrease,
    /// Before the move to 100 %; analysis and rollback hooks keep working while it waits.
    ConfirmPromotion,
    /// After promotion or rollback; failures are only logged.
    PostRollout,
    /// Asked every interval while the rollout is in progress; a 2xx rolls back.
    Rollback,
    /// Every transition, fire-and-forget.
    Event,
}

impl HookType {
    pub fn as_str(self) -> &'static str {
        match self {
            HookType::ConfirmRollout => "confirm-rollout",
            HookType::PreRollout => "pre-rollout",
            HookType::Rollout => "rollout",
            HookType::ConfirmTrafficIncrease => "confirm-traffic-increase",
            HookType::ConfirmPromotion => "confirm-promotion",
            HookType::PostRollout => "post-rollout",
            HookType::Rollback => "rollback",
            HookType::Event => "event",
        }
    }
}

impl std::fmt::Display for HookType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

pub fn default_timeout() -> Duration {
    Duration::from_secs(10)
}
fn rollout() -> HookType {
    HookType::Rollout
}
pub fn default_interval() -> Duration {
    Duration::from_secs(10)
}

pub const MAX_HOOKS: usize = 20;
pub const MAX_TIMEOUT: Duration = Duration::from_secs(5 * 60);
pub const MAX_RETRIES: u32 = 10;
pub const MAX_INTERVAL: Duration = Duration::from_secs(3600);
pub const MAX_METADATA: usize = 32;

/// `status.gate`: the webhook the rollout waits for, since when, and its newest answer.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GateStatus {
    pub hook: String,
    #[serde(rename = "type")]
    pub type_: HookType,
    /// The step the gate is at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<u32>,
    #[schemars(with = "String")]
    pub since: Timestamp,
    /// E.g. "HTTP 403 (2 failed in a row)"; absent until it answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_answer: Option<String>,
}

/// A version as the payload shows it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PayloadVersion {
    pub subset: String,
    pub deployment: String,
    /// The Deployment's pod `version` label (filled in by the controller); empty if none.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub version: String,
    /// The canary's pod-template hash the rollout is for (canary only).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub template_hash: String,
}

/// The JSON body POSTed to a hook. `name`, `namespace`, `phase`, `checksum` and `metadata` are
/// Flagger's; event hooks also get Flagger's `eventMessage`, `eventType` and `timestamp` in `metadata`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Payload {
    /// The RolloutPolicy's name and namespace (filled in by the controller).
    pub name: String,
    pub namespace: String,
    /// The hook's own `name` and `type`.
    pub hook: String,
    #[serde(rename = "type")]
    pub type_: String,
    /// `status.phase` when the call was decided.
    pub phase: String,
    /// Flagger's field: identifies the configuration rolled out. Here the pod-template hash of the
    /// canary (or, with no rollout in progress, of the stable Deployment).
    pub checksum: String,
    /// Index into spec.steps of the step in progress (absent: no rollout in progress).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<u32>,
    pub stable_weight: u8,
    pub canary_weight: u8,
    pub stable: PayloadVersion,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<PayloadVersion>,
    /// The reason and message of the newest transition.
    pub reason: String,
    pub message: String,
    /// When the call was decided.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub timestamp: String,
    pub metadata: BTreeMap<String, String>,
}

/// One call the planner wants made.
#[derive(Clone, Debug, PartialEq)]
pub struct HookCall {
    pub hook: Webhook,
    /// What the answer is for (canary template hash, step, the step's start): an answer for another
    /// binding never counts for this gate.
    pub binding: String,
    /// Asked again every interval even after a 2xx (rollout and rollback hooks).
    pub repeat: bool,
    pub payload: Payload,
    /// Filled in by the controller.
    pub credential: Credential,
}

/// The newest answer of one hook, for one binding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HookAnswer {
    pub hook: String,
    pub binding: String,
    /// 2xx.
    pub ok: bool,
    /// "HTTP 200", "HTTP 503", "timed out after 2s", "connection refused".
    pub detail: String,
    /// Failed answers in a row for this binding (0 after a 2xx).
    pub failures: u32,
    pub at: Timestamp,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_goes_only_under_an_allowed_prefix() {
        let allowed = "https://gate.tools.svc/, http://loadtester.test";
        assert!(url_allowed(allowed, "https://gate.tools.svc/approve"));
        assert!(url_allowed(allowed, "http://loadtester.test"));
        assert!(url_allowed(allowed, "http://loadtester.test/run"));
        assert!(!url_allowed(allowed, "http://loadtester.test.evil.com/"));
        assert!(
            !url_allowed(allowed, "http://gate.tools.svc/approve"),
            "not over plain http"
        );
        assert!(!url_allowed("", "http://x/"));
        assert_eq!(format!("{:?}", Bearer("s3cret".into())), "Bearer(<redacted>)");
    }

    #[test]
    fn an_unknown_type_names_the_field() {
        let value = serde_json::json!([{"name": "x", "type": "pre-rollout", "url": "http://x/"},
                                       {"name": "y", "type": "before-rollout", "url": "http://x/"}]);
        let err = serde_path_to_error::deserialize::<_, Vec<Webhook>>(value).err();
        let path = err.as_ref().map(|e| e.path().to_string());
        assert_eq!(path.as_deref(), Some("[1].type"), "{err:?}");
        assert!(err.is_some_and(|e| e.to_string().contains("confirm-rollout")));
    }

    #[test]
    fn flaggers_fields_decode_with_flaggers_defaults_and_wrong_types_name_the_field() {
        let decode = |v: serde_json::Value| serde_path_to_error::deserialize::<_, Vec<Webhook>>(v);
        let hooks = decode(serde_json::json!([
            {"name": "load", "url": "http://x/"},
            {"name": "gate", "type": "confirm-rollout", "url": "https://x/", "muteAlert": true,
             "disableTLS": true, "retries": 3}
        ]));
        let hooks = hooks.ok().unwrap_or_default();
        let got: Vec<_> = hooks
            .iter()
            .map(|h| (h.type_, h.retries, h.mute_alert, h.disable_tls))
            .collect();
        assert_eq!(
            got,
            vec![
                (HookType::Rollout, 0, false, false),
                (HookType::ConfirmRollout, 3, true, true)
            ]
        );
        for (field, value) in [
            ("muteAlert", serde_json::json!("yes")),
            ("disableTLS", serde_json::json!(1)),
            ("retries", serde_json::json!(-1)),
            ("retries", serde_json::json!(4_294_967_296u64)),
            ("disableTls", serde_json::json!(true)),
        ] {
            let mut hook = serde_json::json!({"name": "x", "url": "http://x/"});
            hook[field] = value;
            let err = decode(serde_json::json!([hook])).err();
            let path = err.as_ref().map(|e| e.path().to_string());
            assert_eq!(path, Some(format!("[0].{field}")), "{field}: {err:?}");
        }
    }
}
