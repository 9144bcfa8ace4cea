//! MetricProvider: a Prometheus endpoint with its credentials, owned by the platform. Cluster-scoped,
//! so only cluster admins write it; a policy only names it (`spec.analysis.provider`). Its Secrets
//! live in the daemon's own namespace, the only one where the daemon may read Secrets.

use std::time::Duration;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::policy::{PrometheusAuth, SecretKeyRef};
use super::selector::NamespaceSelector;

#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[kube(
    group = "canaryd.io",
    version = "v1alpha1",
    kind = "MetricProvider",
    shortname = "mp",
    category = "canaryd",
    printcolumn = r#"{"name":"Address","type":"string","jsonPath":".spec.address"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MetricProviderSpec {
    /// Base URL of Prometheus, e.g. https://prometheus.monitoring:9090. Credentials go only here;
    /// redirects are not followed.
    #[schemars(length(min = 1, max = 2048), regex(pattern = r"^https?://"))]
    pub address: String,
    /// Secrets in the daemon's namespace (canaryd-system).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<PrometheusAuth>,
    /// A CA bundle (PEM) to trust for an https address, from a Secret in the daemon's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret: Option<SecretKeyRef>,
    /// Per-query timeout.
    #[serde(default = "default_query_timeout", with = "humantime_serde")]
    #[schemars(schema_with = "crate::resources::schema::duration")]
    pub timeout: Duration,
    /// The namespaces whose policies may use this provider (and so its credentials); `{}` allows
    /// every namespace, and without it no namespace may.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<NamespaceSelector>,
}

pub fn default_query_timeout() -> Duration {
    Duration::from_secs(5)
}
