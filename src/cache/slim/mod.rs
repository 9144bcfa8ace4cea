//! What the caches keep of each object: only the fields a reconcile reads, so that memory follows
//! the policies and not the cluster (a cluster has many more Deployments and Services than
//! rollouts, and `managedFields` or kubectl's last-applied copy are often larger than the object).
//!
//! The workload kinds are decoded straight into small types of their own (serde skips the rest
//! while parsing); VirtualServices, DestinationRules and policies keep their body as JSON text,
//! parsed when a reconcile reads it, because a tree of `serde_json::Value`s costs several times
//! the text. Writes never start from a cached object.

mod decoded;
mod deployment;
mod istio;
mod policy;
mod service;

pub use decoded::{Decoded, Rejected};
pub use deployment::{SlimDeployment, TEMPLATE_HASH, hash_template, template_hash};
pub use istio::{SlimDestinationRule, SlimVirtualService};
#[cfg(test)]
pub(crate) use policy::from_json as policy_from_json;
pub use policy::{DecodeError, SlimPolicy, decode};
pub use service::SlimService;

use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

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

/// Identity, generation and resourceVersion only: labels, annotations, owners and the uid of the
/// workload kinds are not read.
fn bare_meta(m: ObjectMeta) -> ObjectMeta {
    ObjectMeta {
        name: m.name,
        namespace: m.namespace,
        resource_version: m.resource_version,
        generation: m.generation,
        deletion_timestamp: m.deletion_timestamp,
        ..ObjectMeta::default()
    }
}

/// An HPA keeps spec and status (bounds, target, replica counts), not its conditions' messages.
pub fn hpa(h: &mut HorizontalPodAutoscaler) {
    meta(&mut h.metadata);
    if let Some(status) = h.status.as_mut() {
        status.conditions = None;
    }
}

/// `kube::Resource` for a cache type that stands for a namespaced kind of the API.
macro_rules! namespaced_resource {
    ($ty:ty, $group:expr, $version:expr, $kind:expr, $plural:expr) => {
        impl kube::Resource for $ty {
            type DynamicType = ();
            type Scope = k8s_openapi::NamespaceResourceScope;

            fn kind(_: &()) -> std::borrow::Cow<'_, str> {
                $kind.into()
            }
            fn group(_: &()) -> std::borrow::Cow<'_, str> {
                $group.into()
            }
            fn version(_: &()) -> std::borrow::Cow<'_, str> {
                $version.into()
            }
            fn plural(_: &()) -> std::borrow::Cow<'_, str> {
                $plural.into()
            }
            fn meta(&self) -> &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                &self.metadata
            }
            fn meta_mut(&mut self) -> &mut k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                &mut self.metadata
            }
        }
    };
}
use namespaced_resource;

#[cfg(test)]
pub(crate) fn managed_fields_json() -> serde_json::Value {
    serde_json::json!([{"manager": "kubectl", "operation": "Apply", "apiVersion": "v1", "fieldsType": "FieldsV1",
            "fieldsV1": {"f:spec": {"f:replicas": {}}}}])
}
