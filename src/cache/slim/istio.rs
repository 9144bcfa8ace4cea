//! VirtualServices and DestinationRules as the caches keep them: identity, and the spec as the
//! JSON text the API served (preflight reads any field of it, known to us or not).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;

use super::{bare_meta, namespaced_resource};

#[derive(Deserialize)]
struct Wire {
    metadata: ObjectMeta,
    #[serde(default)]
    spec: Option<Box<RawValue>>,
}

macro_rules! istio_kind {
    ($ty:ident, $kind:expr, $plural:expr) => {
        #[derive(Clone, Debug, Deserialize)]
        #[serde(from = "Wire")]
        pub struct $ty {
            pub metadata: ObjectMeta,
            spec: Option<Box<RawValue>>,
        }

        namespaced_resource!($ty, "networking.istio.io", "v1", $kind, $plural);

        impl From<Wire> for $ty {
            fn from(w: Wire) -> Self {
                $ty {
                    metadata: bare_meta(w.metadata),
                    spec: w.spec,
                }
            }
        }

        impl $ty {
            /// The object as plain JSON, as preflight and the route readers take it.
            pub fn to_value(&self) -> serde_json::Result<Value> {
                let spec = match &self.spec {
                    Some(raw) => serde_json::from_str(raw.get())?,
                    None => Value::Null,
                };
                Ok(serde_json::json!({
                    "apiVersion": "networking.istio.io/v1",
                    "kind": $kind,
                    "metadata": serde_json::to_value(&self.metadata)?,
                    "spec": spec,
                }))
            }
        }
    };
}

istio_kind!(SlimVirtualService, "VirtualService", "virtualservices");
istio_kind!(SlimDestinationRule, "DestinationRule", "destinationrules");

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_spec_reads_back_whole_and_the_metadata_trimmed() {
        let spec = json!({"hosts": ["app"], "http": [{"route": [
            {"destination": {"host": "app", "subset": "v1"}, "weight": 90},
            {"destination": {"host": "app", "subset": "v2"}, "weight": 10}]}],
            "unknownToUs": {"kept": true}});
        let vs: SlimVirtualService = serde_json::from_value(json!({
            "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": "vs", "namespace": "shop", "resourceVersion": "9",
                         "managedFields": super::super::managed_fields_json(),
                         "annotations": {super::super::LAST_APPLIED: "{}"}},
            "spec": spec,
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        let value = vs.to_value().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(value["spec"], spec);
        assert_eq!(value["kind"], "VirtualService");
        assert_eq!(value.pointer("/metadata/resourceVersion"), Some(&json!("9")));
        assert!(value.pointer("/metadata/managedFields").is_none(), "{value}");
        assert!(value.pointer("/metadata/annotations").is_none(), "{value}");
    }
}
