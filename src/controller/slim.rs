//! What the caches keep of each object: only the fields a reconcile reads, trimmed on the way into
//! the reflector stores, so that memory follows the policies and not the cluster (a cluster has many
//! more Deployments and Services than rollouts, and `managedFields` or kubectl's last-applied copy
//! are often larger than the object itself). Writes never start from a cached object.

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStatus};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{PodTemplateSpec, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::DynamicObject;

/// Where a cached Deployment keeps the hash of the pod template it no longer holds.
pub const TEMPLATE_HASH: &str = "canaryd.io/cached-template-hash";

const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Drops what no reconcile reads from any kind's metadata: managedFields and kubectl's copy of the
/// last applied object. Other annotations stay (a policy's are read).
pub fn meta(m: &mut ObjectMeta) {
    m.managed_fields = None;
    if let Some(a) = m.annotations.as_mut() {
        a.remove(LAST_APPLIED);
        if a.is_empty() {
            m.annotations = None;
        }
    }
}

/// Identity, generation and resourceVersion only: labels, annotations and owners of the workload
/// kinds are not read.
fn bare_meta(m: &mut ObjectMeta) {
    *m = ObjectMeta {
        name: m.name.take(),
        namespace: m.namespace.take(),
        uid: m.uid.take(),
        resource_version: m.resource_version.take(),
        generation: m.generation.take(),
        deletion_timestamp: m.deletion_timestamp.take(),
        ..ObjectMeta::default()
    };
}

/// A Deployment as the daemon reads it: replicas, the pod template's labels and hash (the template
/// itself is dropped: it is only hashed), and the replica counts of its status.
pub fn deployment(d: &mut Deployment) {
    let hash = crate::controller::observe::template_hash(d);
    bare_meta(&mut d.metadata);
    d.metadata.annotations = Some([(TEMPLATE_HASH.to_string(), hash)].into());
    let spec = std::mem::take(&mut d.spec);
    let labels = spec.template.metadata.and_then(|m| m.labels);
    d.spec = DeploymentSpec {
        replicas: spec.replicas,
        template: PodTemplateSpec {
            metadata: Some(ObjectMeta {
                labels,
                ..ObjectMeta::default()
            }),
            spec: None,
        },
        ..DeploymentSpec::default()
    };
    d.status = d.status.take().map(|s| DeploymentStatus {
        observed_generation: s.observed_generation,
        replicas: s.replicas,
        ready_replicas: s.ready_replicas,
        available_replicas: s.available_replicas,
        updated_replicas: s.updated_replicas,
        ..DeploymentStatus::default()
    });
}

/// A Service as preflight reads it: its spec (the selector); no status.
pub fn service(s: &mut Service) {
    bare_meta(&mut s.metadata);
    s.status = None;
}

/// An HPA keeps spec and status (bounds, target, replica counts), not its conditions' messages.
pub fn hpa(h: &mut HorizontalPodAutoscaler) {
    meta(&mut h.metadata);
    if let Some(status) = h.status.as_mut() {
        status.conditions = None;
    }
}

/// VirtualServices, DestinationRules and policies: the body is read, the metadata trimmed.
pub fn dynamic(o: &mut DynamicObject) {
    meta(&mut o.metadata);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn managed() -> serde_json::Value {
        json!([{"manager": "kubectl", "operation": "Apply", "apiVersion": "v1", "fieldsType": "FieldsV1",
                "fieldsV1": {"f:spec": {"f:replicas": {}}}}])
    }

    fn deployment_json() -> Deployment {
        serde_json::from_value(json!({
            "metadata": {
                "name": "app-v1", "namespace": "shop", "uid": "u1", "resourceVersion": "7", "generation": 3,
                "labels": {"app": "app"}, "managedFields": managed(),
                "annotations": {LAST_APPLIED: "{\"huge\": true}", "deployment.kubernetes.io/revision": "2"},
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
        }))
        .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn cached_deployments_keep_what_a_reconcile_reads_and_nothing_else() {
        let full = deployment_json();
        let mut slim = full.clone();
        deployment(&mut slim);
        let value = serde_json::to_value(&slim).unwrap_or_default();
        assert!(value.pointer("/metadata/managedFields").is_none(), "{value}");
        assert!(value.pointer("/metadata/labels").is_none(), "{value}");
        assert!(value.pointer("/spec/template/spec").is_none(), "{value}");
        assert!(value.pointer("/status/conditions").is_none(), "{value}");
        let annotations = value.pointer("/metadata/annotations").cloned().unwrap_or_default();
        assert_eq!(annotations.as_object().map(|a| a.len()), Some(1), "{value}");
        // What observe reads is unchanged.
        use crate::controller::observe::{deployment_state, template_hash};
        assert_eq!(template_hash(&slim), template_hash(&full));
        assert_eq!(deployment_state(&slim), deployment_state(&full));
        let labels = |d: &Deployment| d.spec.template.metadata.clone().and_then(|m| m.labels);
        assert_eq!(labels(&slim), labels(&full));
        assert_eq!(slim.metadata.name.as_deref(), Some("app-v1"));
        assert_eq!(slim.metadata.resource_version.as_deref(), Some("7"));
        // Trimming twice changes nothing (a relist hands the same object again).
        let mut again = slim.clone();
        deployment(&mut again);
        assert_eq!(again, slim);
        // Much smaller than the object as the API serves it.
        let size = |d: &Deployment| serde_json::to_vec(d).map(|v| v.len()).unwrap_or(0);
        assert!(size(&slim) * 2 < size(&full), "{} vs {}", size(&slim), size(&full));
    }

    #[test]
    fn a_template_changed_under_a_stale_hash_annotation_is_hashed_afresh() {
        // The annotation a user might copy onto a Deployment never stands for the template.
        let mut d = deployment_json();
        d.metadata.annotations = Some([(TEMPLATE_HASH.to_string(), "forged".to_string())].into());
        let expected = {
            let mut plain = deployment_json();
            deployment(&mut plain);
            crate::controller::observe::template_hash(&plain)
        };
        deployment(&mut d);
        assert_eq!(crate::controller::observe::template_hash(&d), expected);
        assert_ne!(expected, "forged");
    }

    #[test]
    fn metadata_loses_managed_fields_and_the_last_applied_copy_only() {
        let mut o: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": "vs", "namespace": "shop", "managedFields": managed(),
                         "annotations": {LAST_APPLIED: "{}", "keep": "me"}},
            "spec": {"hosts": ["app"]},
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        dynamic(&mut o);
        assert_eq!(o.metadata.managed_fields, None);
        assert_eq!(
            o.metadata.annotations,
            Some([("keep".to_string(), "me".to_string())].into())
        );
        assert_eq!(o.data.pointer("/spec/hosts/0").and_then(|h| h.as_str()), Some("app"));

        let mut s: Service = serde_json::from_value(json!({
            "metadata": {"name": "app", "namespace": "shop", "managedFields": managed(),
                         "annotations": {LAST_APPLIED: "{}"}},
            "spec": {"selector": {"app": "app"}},
            "status": {"loadBalancer": {}},
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        service(&mut s);
        assert_eq!(s.metadata.managed_fields, None);
        assert_eq!(s.metadata.annotations, None);
        assert_eq!(
            s.spec.and_then(|s| s.selector),
            Some([("app".to_string(), "app".to_string())].into())
        );
    }
}
