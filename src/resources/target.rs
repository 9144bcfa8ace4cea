//! NotificationTarget: where rollout news goes (Slack, Teams, a JSON webhook) and who may approve
//! from Slack. Cluster-scoped and owned by the platform, like MetricProvider: a policy only names a
//! target. Credentials are Secrets in the daemon's own namespace.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::resources::policy::SecretKeyRef;
use crate::resources::selector::NamespaceSelector;

#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[kube(
    group = "canaryd.io",
    version = "v1alpha1",
    kind = "NotificationTarget",
    shortname = "nt",
    category = "canaryd",
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "(has(self.slack) ? 1 : 0) + (has(self.teams) ? 1 : 0) + (has(self.webhook) ? 1 : 0) == 1",
    "message": "exactly one of slack, teams, webhook"
}]))]
pub struct NotificationTargetSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slack: Option<SlackTarget>,
    /// A Microsoft Teams incoming webhook (Adaptive Card).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub teams: Option<WebhookTarget>,
    /// A generic JSON webhook.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<WebhookTarget>,
    /// The namespaces whose policies may notify this target; `{}` allows every namespace, and
    /// without it no namespace may.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<NamespaceSelector>,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SlackTarget {
    /// Bot token (xoxb-…): one message per rollout, updated in place (chat.postMessage, chat.update).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bot_token: Option<SecretKeyRef>,
    /// An incoming-webhook URL instead of a bot token: new messages only, no buttons.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_url: Option<SecretKeyRef>,
    /// Channel ID for chat.postMessage (with a bot token).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub channel: Option<String>,
    /// The Slack app's signing secret: without it, buttons are not shown and clicks are refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_secret: Option<SecretKeyRef>,
    /// Slack user IDs (U…) allowed to click Approve / Abort on this target's messages.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1000), inner(length(max = 64)))]
    pub allowed_users: Vec<String>,
    /// Slack user-group IDs (S…) whose members may click.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1000), inner(length(max = 64)))]
    pub allowed_groups: Vec<String>,
    /// Slack Web API base URL; tests point it at a local stand-in.
    #[serde(default = "default_slack_api")]
    #[schemars(length(max = 2048), regex(pattern = r"^https?://"))]
    pub api_url: String,
}

pub fn default_slack_api() -> String {
    "https://slack.com/api".into()
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WebhookTarget {
    /// The URL (it often embeds a credential), from a Secret in the daemon's namespace.
    pub url: SecretKeyRef,
}
