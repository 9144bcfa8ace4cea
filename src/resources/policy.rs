//! The RolloutPolicy resource: spec (owned by Git) and status (owned by canaryd).

use std::time::Duration;

use jiff::Timestamp;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Desired rollout of one Service from its stable version to a canary, along `steps`.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "canaryd.io",
    version = "v1alpha1",
    kind = "RolloutPolicy",
    namespaced,
    status = "RolloutPolicyStatus",
    shortname = "rp",
    category = "canaryd",
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Stable","type":"string","jsonPath":".status.stable.subset"}"#,
    printcolumn = r#"{"name":"Canary","type":"string","jsonPath":".status.canary.subset"}"#,
    printcolumn = r#"{"name":"Weight","type":"integer","jsonPath":".status.canaryWeight"}"#,
    printcolumn = r#"{"name":"Step","type":"integer","jsonPath":".status.step"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RolloutPolicySpec {
    /// The Kubernetes Service (in the policy's namespace); its FQDN is the route host.
    #[schemars(length(min = 1, max = 253))]
    pub service: String,
    /// VirtualServices whose routes carry the Service's traffic; each may live in another namespace.
    #[schemars(length(min = 1, max = 32))]
    pub virtual_services: Vec<VirtualServiceRef>,
    /// The DestinationRule naming one subset per version; must live in the Service's namespace.
    #[schemars(length(min = 1, max = 253))]
    pub destination_rule: String,
    /// The version that holds the traffic before the first rollout.
    pub stable: VersionRef,
    /// The version to roll out. Absent: keep the route as it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<VersionRef>,
    /// Weight changes and pauses, in order. The last weight must be 100.
    #[schemars(length(min = 1, max = 100))]
    pub steps: Vec<Step>,
    /// When traffic may rise: cron windows and freezes. Absent: any time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<crate::resources::schedule::Schedule>,
    /// How long the canary may take to become Ready at a weight step before the rollout fails.
    #[serde(default = "default_progress_deadline", with = "humantime_serde")]
    #[schemars(schema_with = "crate::resources::schema::duration")]
    pub progress_deadline: Duration,
    /// Judge the canary from Prometheus at every interval; roll back on an SLO breach.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<Analysis>,
    /// Webhook gates with Flagger's semantics (confirm-rollout, pre-rollout, rollout, ...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 20))]
    pub webhooks: Vec<crate::resources::webhook::Webhook>,
    /// How each version's capacity follows the traffic it is about to get. On by default.
    #[serde(default)]
    pub scaling: Scaling,
    /// Who is told about this rollout, and who may approve it from Slack.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub notifications: Vec<Notification>,
}

/// One NotificationTarget (cluster-scoped, owned by the platform) and what to send it.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Notification {
    #[schemars(length(min = 1, max = 253))]
    pub target: String,
    /// Which transitions (status reasons, e.g. RolloutStarted, WaitingForApproval, RolledBack,
    /// Promoted); empty: all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(max = 64)))]
    pub events: Vec<String>,
    /// Slack user IDs allowed to approve this policy, on top of the target's list.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100), inner(length(max = 64)))]
    pub approvers: Vec<String>,
}

/// Capacity coordination: before each weight increase the canary gets the replicas for its new share
/// (through its HPA's minReplicas, or `spec.replicas` without an HPA); stable keeps its capacity
/// until the rollout ends; the old stable is scaled to zero after promotion.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Scaling {
    /// Off: canaryd never touches replicas or HPAs.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Spare capacity for the canary: replicas = ceil(stable replicas at start × weight / 100 × headroom).
    #[serde(default = "one_f64")]
    #[schemars(range(min = 1.0, max = 10.0))]
    pub headroom: f64,
    /// How long the old stable keeps running after promotion before it is scaled to zero.
    #[serde(default = "default_scale_down_delay", with = "humantime_serde")]
    #[schemars(schema_with = "crate::resources::schema::duration")]
    pub scale_down_delay: Duration,
    /// When the canary HPA's maxReplicas is below what a step needs: raise it for the rollout (true)
    /// or fail the rollout with a clear reason (false).
    #[serde(default)]
    pub raise_max_replicas: bool,
    /// After a rollback the canary keeps running for inspection; true scales it to zero instead.
    #[serde(default)]
    pub scale_down_canary_on_rollback: bool,
    /// HPA names, when they cannot be found by their scaleTargetRef.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub stable_hpa: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub canary_hpa: Option<String>,
}

impl Default for Scaling {
    fn default() -> Self {
        Self {
            enabled: true,
            headroom: 1.0,
            scale_down_delay: default_scale_down_delay(),
            raise_max_replicas: false,
            scale_down_canary_on_rollback: false,
            stable_hpa: None,
            canary_hpa: None,
        }
    }
}

fn yes() -> bool {
    true
}
fn one_f64() -> f64 {
    1.0
}
fn default_scale_down_delay() -> Duration {
    Duration::from_secs(60)
}

pub fn default_progress_deadline() -> Duration {
    Duration::from_secs(600)
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VirtualServiceRef {
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Defaults to the policy's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    pub namespace: Option<String>,
    /// Names of the http routes to manage. Absent: every route without a `match` that sends traffic
    /// to the Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 100), inner(length(max = 253)))]
    pub routes: Option<Vec<String>>,
}

/// One version of the service: its DestinationRule subset and its Deployment.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VersionRef {
    #[schemars(length(min = 1, max = 253))]
    pub subset: String,
    #[schemars(length(min = 1, max = 253))]
    pub deployment: String,
}

/// Exactly one of `weight` or `pause`.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "has(self.weight) != has(self.pause)",
    "message": "a step has exactly one of weight or pause"
}]))]
pub struct Step {
    /// Percentage of traffic to send to the canary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub weight: Option<u8>,
    /// Hold the current weight: for `duration`, or without one until promoted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause: Option<Pause>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Pause {
    /// Absent: wait for approval (`canaryd promote`).
    #[serde(default, skip_serializing_if = "Option::is_none", with = "humantime_serde")]
    #[schemars(schema_with = "crate::resources::schema::optional_duration")]
    pub duration: Option<Duration>,
}

// Status types live in status.rs; these paths are the ones the rest of the daemon uses.
pub use super::status::{
    AnalysisStatus, CanaryStatus, Condition, NotificationStatus, Phase, RolloutPolicyStatus, ScaleDown, ScalingStatus,
    SlackMessage, Transition, VersionScaling,
};

impl RolloutPolicySpec {
    /// The Service's FQDN, the host every managed route must resolve to.
    pub fn service_fqdn(&self, namespace: &str) -> String {
        format!("{}.{namespace}.svc.cluster.local", self.service)
    }
}

/// Judge the canary from metrics at every interval; roll back on an SLO breach.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "has(self.provider) != has(self.prometheus)",
    "message": "analysis has exactly one of provider or prometheus"
}]))]
pub struct Analysis {
    /// How often every metric is checked (down to 1s).
    #[serde(default = "default_interval", with = "humantime_serde")]
    #[schemars(schema_with = "crate::resources::schema::interval")]
    pub interval: Duration,
    /// No judgement before the canary has served traffic this long.
    #[serde(default, with = "humantime_serde")]
    #[schemars(schema_with = "crate::resources::schema::duration")]
    pub start_after: Duration,
    /// Failed checks in a row that trigger rollback.
    #[serde(default = "one")]
    #[schemars(range(min = 1, max = 1000))]
    pub failure_limit: u32,
    /// Fewer canary requests than this in the window: inconclusive, not failure.
    #[serde(default)]
    #[schemars(range(max = 1_000_000_000))]
    pub min_requests: u64,
    /// Inconclusive checks in a row after which the rollout pauses for a human.
    #[serde(default = "ten")]
    #[schemars(range(min = 1, max = 1000))]
    pub inconclusive_limit: u32,
    #[serde(default)]
    pub on_provider_error: OnProviderError,
    /// A MetricProvider (cluster-scoped, owned by the platform): address and credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub provider: Option<String>,
    /// A Prometheus without credentials, when no provider is named.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus: Option<PrometheusAddress>,
    #[schemars(length(min = 1, max = 50))]
    pub metrics: Vec<MetricCheck>,
}

fn default_interval() -> Duration {
    Duration::from_secs(30)
}
fn one() -> u32 {
    1
}
fn ten() -> u32 {
    10
}
fn five() -> u32 {
    5
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OnProviderError {
    /// Provider errors in a row before `action` is taken.
    #[serde(default = "five")]
    #[schemars(range(min = 1, max = 1000))]
    pub after: u32,
    #[serde(default)]
    pub action: ProviderErrorAction,
}

impl Default for OnProviderError {
    fn default() -> Self {
        Self {
            after: 5,
            action: ProviderErrorAction::Pause,
        }
    }
}

/// Never `promote`: a blind canary is not a healthy one.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum ProviderErrorAction {
    #[default]
    Pause,
    Rollback,
}

/// A Prometheus named by the policy itself: an address only. Credentials and CAs live in a
/// MetricProvider, where only the platform writes.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PrometheusAddress {
    /// Base URL, e.g. http://prometheus.istio-system:9090
    #[schemars(length(min = 1, max = 2048))]
    pub address: String,
    /// Per-query timeout.
    #[serde(
        default = "crate::resources::provider::default_query_timeout",
        with = "humantime_serde"
    )]
    #[schemars(schema_with = "crate::resources::schema::duration")]
    pub timeout: Duration,
}

/// Exactly one of bearer token or basic auth, each read from a Secret in the daemon's namespace.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "has(self.bearerTokenSecret) != has(self.basicAuthSecret)",
    "message": "auth has exactly one of bearerTokenSecret or basicAuthSecret"
}]))]
pub struct PrometheusAuth {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bearer_token_secret: Option<SecretKeyRef>,
    /// A Secret with `username` and `password` keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basic_auth_secret: Option<SecretRef>,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretKeyRef {
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretRef {
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// One metric: a built-in `template` or a custom PromQL `query`, judged by `min`/`max` and/or
/// `relative` to stable.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "has(self.template) != has(self.query)", "message": "a metric has exactly one of template or query"},
    {"rule": "has(self.min) || has(self.max) || has(self.relative)", "message": "a metric needs min, max or relative"}
]))]
pub struct MetricCheck {
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub template: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16384))]
    pub query: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relative: Option<RelativeCheck>,
    /// The query window; defaults to the analysis interval (at least 1m for rate() to have samples).
    #[serde(default, skip_serializing_if = "Option::is_none", with = "humantime_serde")]
    #[schemars(schema_with = "crate::resources::schema::optional_duration")]
    pub window: Option<Duration>,
}

/// Canary compared with stable over the same window.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RelativeCheck {
    /// The canary may be at most this much below stable (for higher-is-better metrics).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_drop_from_stable: Option<f64>,
    /// The canary may be at most this much above stable (for lower-is-better metrics).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_increase_over_stable: Option<f64>,
}

/// Verdict of one check of one metric.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum Verdict {
    Pass,
    Fail,
    /// Too little traffic or no samples: never promotes, never rolls back.
    Inconclusive,
    /// Prometheus unreachable, timeout, bad response, NaN.
    Error,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Pass => "Pass",
            Verdict::Fail => "Fail",
            Verdict::Inconclusive => "Inconclusive",
            Verdict::Error => "Error",
        }
    }
}

/// The last result of one metric.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MetricResult {
    pub name: String,
    pub verdict: Verdict,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable_value: Option<f64>,
    /// What the value was judged against, e.g. ">= 99" or "<= stable + 0.5".
    pub threshold: String,
    /// The query window, e.g. "1m".
    pub window: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    #[schemars(with = "String")]
    pub at: Timestamp,
}
