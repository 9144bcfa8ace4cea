//! A RolloutPolicy as the caches keep it: metadata, and spec and status as the JSON text the API
//! served. It is decoded for each reconcile, so that one policy we cannot decode is reported on
//! its own instead of stopping the watch of all of them.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

use super::{meta, namespaced_resource};
use crate::resources::policy::RolloutPolicy;

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(from = "Wire")]
pub struct SlimPolicy {
    pub metadata: ObjectMeta,
    #[serde(skip_serializing_if = "Option::is_none")]
    spec: Option<Box<RawValue>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<Box<RawValue>>,
    /// Read once on the way in, for the lookups that run over every policy.
    #[serde(skip)]
    deployments: Vec<String>,
    #[serde(skip)]
    notifies: bool,
}

namespaced_resource!(
    SlimPolicy,
    RolloutPolicy::group(&()),
    RolloutPolicy::version(&()),
    RolloutPolicy::kind(&()),
    RolloutPolicy::plural(&())
);

#[derive(Deserialize)]
struct Wire {
    metadata: ObjectMeta,
    #[serde(default)]
    spec: Option<Box<RawValue>>,
    #[serde(default)]
    status: Option<Box<RawValue>>,
}

impl From<Wire> for SlimPolicy {
    fn from(mut w: Wire) -> Self {
        meta(&mut w.metadata);
        let parse = |raw: &Option<Box<RawValue>>| {
            raw.as_ref()
                .and_then(|r| serde_json::from_str::<Value>(r.get()).ok())
                .unwrap_or(Value::Null)
        };
        // Pointers, not a typed decode: they work on a policy that cannot be decoded too.
        let (spec, status) = (parse(&w.spec), parse(&w.status));
        let mut deployments = Vec::new();
        for name in [
            spec.pointer("/stable/deployment"),
            spec.pointer("/canary/deployment"),
            status.pointer("/stable/deployment"),
        ]
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        {
            if !deployments.iter().any(|d| d == name) {
                deployments.push(name.to_string());
            }
        }
        SlimPolicy {
            metadata: w.metadata,
            notifies: spec.pointer("/notifications/0").is_some(),
            spec: w.spec,
            status: w.status,
            deployments,
        }
    }
}

impl SlimPolicy {
    /// The whole object as plain JSON (what [`crate::cache::slim::decode`] decodes).
    pub fn to_value(&self) -> serde_json::Result<Value> {
        Ok(serde_json::json!({
            "apiVersion": RolloutPolicy::api_version(&()),
            "kind": RolloutPolicy::kind(&()),
            "metadata": serde_json::to_value(&self.metadata)?,
            "spec": self.spec_value()?,
            "status": self.status_value()?,
        }))
    }

    /// The same object as JSON text, without building a tree of it.
    pub fn to_json_text(&self) -> serde_json::Result<String> {
        let raw = |r: &Option<Box<RawValue>>| r.as_ref().map_or("null", |r| r.get()).to_string();
        Ok(format!(
            r#"{{"apiVersion":{},"kind":{},"metadata":{},"spec":{},"status":{}}}"#,
            serde_json::to_string(&RolloutPolicy::api_version(&()))?,
            serde_json::to_string(&RolloutPolicy::kind(&()))?,
            serde_json::to_string(&self.metadata)?,
            raw(&self.spec),
            raw(&self.status),
        ))
    }

    pub fn spec_value(&self) -> serde_json::Result<Value> {
        raw_value(&self.spec)
    }

    pub fn status_value(&self) -> serde_json::Result<Value> {
        raw_value(&self.status)
    }

    /// The policy names this Deployment (stable, canary, or the stable it recorded).
    pub fn names_deployment(&self, name: &str) -> bool {
        self.deployments.iter().any(|d| d == name)
    }

    /// The policy has at least one notification target.
    pub fn notifies(&self) -> bool {
        self.notifies
    }
}

fn raw_value(raw: &Option<Box<RawValue>>) -> serde_json::Result<Value> {
    match raw {
        Some(r) => serde_json::from_str(r.get()),
        None => Ok(Value::Null),
    }
}

/// Why a stored policy cannot be decoded, naming the field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    pub field: String,
    pub message: String,
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// The typed policy, or the field that keeps it from being one.
pub fn decode(obj: &SlimPolicy) -> Result<RolloutPolicy, DecodeError> {
    // Straight from the text, as every resync does; the slower path below only names the field.
    if let Ok(policy) = obj.to_json_text().and_then(|t| serde_json::from_str(&t)) {
        return Ok(policy);
    }
    let value = obj.to_value().map_err(|e| DecodeError {
        field: ".".into(),
        message: e.to_string(),
    })?;
    serde_path_to_error::deserialize::<_, RolloutPolicy>(value).map_err(|e| DecodeError {
        field: e.path().to_string(),
        message: e.inner().to_string(),
    })
}

#[cfg(test)]
pub(crate) fn from_json(v: Value) -> SlimPolicy {
    serde_json::from_value(v).unwrap_or_else(|e| panic!("{e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_raw_policy_answers_the_lookups_also_when_it_cannot_be_decoded() {
        let p = from_json(json!({
            "apiVersion": "canaryd.io/v1alpha1", "kind": "RolloutPolicy",
            "metadata": {"name": "p", "namespace": "dev", "managedFields": super::super::managed_fields_json()},
            "spec": {"stable": {"deployment": "app-v1"}, "canary": {"deployment": "app-v2"},
                     "steps": "not a list", "notifications": [{"target": "t"}]},
            "status": {"stable": {"deployment": "app-v0"}, "phase": "Progressing"},
        }));
        assert!(p.names_deployment("app-v0") && p.names_deployment("app-v1") && p.names_deployment("app-v2"));
        assert!(!p.names_deployment("app-v3"));
        assert!(p.notifies());
        assert_eq!(p.metadata.managed_fields, None);
        let value = p.to_value().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(value.pointer("/spec/steps"), Some(&json!("not a list")));
        assert_eq!(value.pointer("/status/phase"), Some(&json!("Progressing")));
        assert_eq!(value["kind"], "RolloutPolicy");
        let text = p.to_json_text().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(serde_json::from_str::<Value>(&text).ok(), Some(value));
    }
}
