//! A Deployment as the caches keep it: about half a kilobyte, whatever the pod template holds.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStatus};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;
use serde::Deserialize;

use super::{bare_meta, namespaced_resource};

/// Where [`SlimDeployment::to_deployment`] puts the hash of the pod template it does not hold.
pub const TEMPLATE_HASH: &str = "canaryd.io/cached-template-hash";

/// Replicas, the pod template's labels and hash (the template itself is only ever hashed, so it
/// is hashed on the way in and dropped), and the replica counts of the status.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(from = "Wire")]
pub struct SlimDeployment {
    pub metadata: ObjectMeta,
    replicas: Option<i32>,
    template_labels: Option<BTreeMap<String, String>>,
    template_hash: String,
    status: Option<Counts>,
}

namespaced_resource!(SlimDeployment, "apps", "v1", "Deployment", "deployments");

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Counts {
    observed_generation: Option<i64>,
    replicas: Option<i32>,
    ready_replicas: Option<i32>,
    available_replicas: Option<i32>,
    updated_replicas: Option<i32>,
}

/// The Deployment as the API serves it, decoded only as far as the cache needs.
#[derive(Deserialize)]
struct Wire {
    metadata: ObjectMeta,
    #[serde(default)]
    spec: Option<WireSpec>,
    #[serde(default)]
    status: Option<Counts>,
}

#[derive(Deserialize)]
struct WireSpec {
    replicas: Option<i32>,
    #[serde(default)]
    template: PodTemplateSpec,
}

impl From<Wire> for SlimDeployment {
    fn from(w: Wire) -> Self {
        let (replicas, template) = w.spec.map(|s| (s.replicas, s.template)).unwrap_or_default();
        SlimDeployment {
            metadata: bare_meta(w.metadata),
            replicas,
            template_hash: hash_template(&template),
            template_labels: template.metadata.and_then(|m| m.labels),
            status: w.status,
        }
    }
}

impl SlimDeployment {
    /// The Deployment a reconcile reads: what the cache holds, the template's hash as an annotation
    /// (see [`template_hash`]).
    pub fn to_deployment(&self) -> Deployment {
        let mut metadata = self.metadata.clone();
        metadata.annotations = Some([(TEMPLATE_HASH.to_string(), self.template_hash.clone())].into());
        Deployment {
            metadata,
            spec: DeploymentSpec {
                replicas: self.replicas,
                template: PodTemplateSpec {
                    metadata: Some(ObjectMeta {
                        labels: self.template_labels.clone(),
                        ..ObjectMeta::default()
                    }),
                    spec: None,
                },
                ..DeploymentSpec::default()
            },
            status: self.status.as_ref().map(|s| DeploymentStatus {
                observed_generation: s.observed_generation,
                replicas: s.replicas,
                ready_replicas: s.ready_replicas,
                available_replicas: s.available_replicas,
                updated_replicas: s.updated_replicas,
                ..DeploymentStatus::default()
            }),
        }
    }
}

/// FNV-1a over the pod template's JSON: stable across daemon versions and restarts, unlike
/// `DefaultHasher`, because it is recorded in status. A cached Deployment holds the hash instead
/// of the template (see [`SlimDeployment`]); a real one always has a pod spec.
pub fn template_hash(d: &Deployment) -> String {
    let template = &d.spec.template;
    if template.spec.is_none()
        && let Some(hash) = d.annotations().get(TEMPLATE_HASH)
    {
        return hash.clone();
    }
    hash_template(template)
}

/// The hash of a pod template (see [`template_hash`]).
pub fn hash_template(template: &PodTemplateSpec) -> String {
    let hash = crate::hash::fnv1a64(serde_json::to_vec(template).unwrap_or_default());
    format!("{hash:016x}")
}

#[cfg(test)]
mod tests {
    use super::template_hash;
    use super::*;
    use serde_json::json;

    fn served() -> serde_json::Value {
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {
                "name": "app-v1", "namespace": "shop", "uid": "u1", "resourceVersion": "7", "generation": 3,
                "labels": {"app": "app"}, "managedFields": super::super::managed_fields_json(),
                "annotations": {super::super::LAST_APPLIED: "{\"huge\": true}", "deployment.kubernetes.io/revision": "2"},
            },
            "spec": {
                "replicas": 4,
                "selector": {"matchLabels": {"app": "app", "version": "v1"}},
                "template": {
                    "metadata": {"labels": {"app": "app", "version": "v1"}},
                    "spec": {"containers": [{"name": "app", "image": "app:1", "env": [{"name": "A", "value": "b"}]}]},
                },
            },
            "status": {"observedGeneration": 3, "replicas": 4, "readyReplicas": 3,
                       "conditions": [{"type": "Available", "status": "True", "message": "long text"}]},
        })
    }

    fn decode<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
        serde_json::from_value(v).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn cached_deployments_read_as_the_served_object_in_everything_a_reconcile_reads() {
        let full: Deployment = decode(served());
        let slim: SlimDeployment = decode(served());
        let read = slim.to_deployment();
        assert_eq!(template_hash(&read), template_hash(&full));
        assert_eq!(
            crate::scale::hpa::replica_state(&read),
            crate::scale::hpa::replica_state(&full)
        );
        let labels = |d: &Deployment| d.spec.template.metadata.clone().and_then(|m| m.labels);
        assert_eq!(labels(&read), labels(&full));
        assert_eq!(read.metadata.name.as_deref(), Some("app-v1"));
        assert_eq!(read.metadata.resource_version.as_deref(), Some("7"));
        // Nothing else is kept: no managedFields, labels, user annotations or pod spec.
        let value = serde_json::to_value(&read).unwrap_or_default();
        assert!(value.pointer("/metadata/managedFields").is_none(), "{value}");
        assert!(value.pointer("/metadata/labels").is_none(), "{value}");
        assert!(value.pointer("/spec/template/spec").is_none(), "{value}");
        assert!(value.pointer("/status/conditions").is_none(), "{value}");
        assert_eq!(
            value
                .pointer("/metadata/annotations")
                .and_then(|a| a.as_object())
                .map(|a| a.len()),
            Some(1),
            "{value}"
        );
    }

    #[test]
    fn a_forged_hash_annotation_never_stands_for_the_template() {
        let mut forged = served();
        forged["metadata"]["annotations"][TEMPLATE_HASH] = json!("forged");
        let slim: SlimDeployment = decode(forged);
        let full: Deployment = decode(served());
        assert_eq!(template_hash(&slim.to_deployment()), template_hash(&full));
        assert_ne!(template_hash(&full), "forged");
    }

    #[test]
    fn a_changed_template_changes_the_cached_hash() {
        let mut changed = served();
        changed["spec"]["template"]["spec"]["containers"][0]["image"] = json!("app:2");
        let before: SlimDeployment = decode(served());
        let after: SlimDeployment = decode(changed);
        assert_ne!(
            template_hash(&before.to_deployment()),
            template_hash(&after.to_deployment())
        );
    }
}
