//! A Service as the caches keep it: its selector, the only field preflight reads.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Service, ServiceSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Deserialize;

use super::{bare_meta, namespaced_resource};

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(from = "Wire")]
pub struct SlimService {
    pub metadata: ObjectMeta,
    selector: Option<BTreeMap<String, String>>,
}

namespaced_resource!(SlimService, "", "v1", "Service", "services");

#[derive(Deserialize)]
struct Wire {
    metadata: ObjectMeta,
    #[serde(default)]
    spec: Option<WireSpec>,
}

#[derive(Deserialize)]
struct WireSpec {
    selector: Option<BTreeMap<String, String>>,
}

impl From<Wire> for SlimService {
    fn from(w: Wire) -> Self {
        SlimService {
            metadata: bare_meta(w.metadata),
            selector: w.spec.and_then(|s| s.selector),
        }
    }
}

impl SlimService {
    /// The Service a reconcile reads.
    pub fn to_service(&self) -> Service {
        Service {
            metadata: self.metadata.clone(),
            spec: Some(ServiceSpec {
                selector: self.selector.clone(),
                ..ServiceSpec::default()
            }),
            status: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_cached_service_keeps_its_selector_and_identity_only() {
        let slim: SlimService = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "app", "namespace": "shop", "resourceVersion": "3",
                         "managedFields": super::super::managed_fields_json(),
                         "annotations": {super::super::LAST_APPLIED: "{}"}},
            "spec": {"selector": {"app": "app"}, "ports": [{"port": 80}], "clusterIP": "10.0.0.1"},
            "status": {"loadBalancer": {}},
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        let s = slim.to_service();
        assert_eq!(s.metadata.name.as_deref(), Some("app"));
        assert_eq!(s.metadata.managed_fields, None);
        assert_eq!(s.metadata.annotations, None);
        assert_eq!(
            s.spec.and_then(|s| s.selector),
            Some([("app".to_string(), "app".to_string())].into())
        );
    }
}
