//! The API side of capacity: find a version's HorizontalPodAutoscaler, change only its replica
//! bounds, scale Deployments without one, and read replica counts.
//!
//! Writes are JSON merge patches of the touched fields only, carrying the resourceVersion just read:
//! a concurrent edit makes the write fail with 409, and we read again, so nobody's change is lost.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v1::Scale;
use k8s_openapi::api::autoscaling::v2::{CrossVersionObjectReference, HorizontalPodAutoscaler};
use kube::Client;
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde_json::{Map, Value, json};

use crate::fence::LeaderGuard;
use crate::replicas::{Bounds, CapacityError};
use crate::write::{Stop, guarded_rmw};

/// Same manager as canaryd's weight writes, so `managedFields` show who set the bounds.
pub use crate::write::{FIELD_MANAGER, WriteOutcome};
/// Read again and retry this many times when the object changes between our read and our write.
const WRITE_ATTEMPTS: usize = 5;

/// A Deployment's replicas as observed now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaState {
    pub spec_replicas: i32,
    pub ready_replicas: i32,
    /// `.status.observedGeneration >= .metadata.generation`: the counts reflect the current spec.
    pub generation_observed: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ScaleError {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error(
        "HorizontalPodAutoscalers {} in {namespace} all target Deployment {deployment}, so they fight over its \
         replicas; delete all but one, or name the one to use in the policy",
        hpas.join(", ")
    )]
    Ambiguous {
        namespace: String,
        deployment: String,
        hpas: Vec<String>,
    },
    #[error("HorizontalPodAutoscaler {namespace}/{name} named in the policy does not exist")]
    HpaNotFound { namespace: String, name: String },
    #[error(
        "HorizontalPodAutoscaler {namespace}/{name} named in the policy targets {target}, not Deployment \
         {deployment}; name the HPA of that Deployment"
    )]
    WrongTarget {
        namespace: String,
        name: String,
        target: String,
        deployment: String,
    },
    #[error("{kind} {namespace}/{name} kept changing while we wrote it; gave up after {attempts} attempts")]
    Conflict {
        kind: &'static str,
        namespace: String,
        name: String,
        attempts: usize,
    },
    #[error(transparent)]
    Capacity(#[from] CapacityError),
    /// The renew deadline passed: this replica must not write, and sent nothing more.
    #[error("not the leader (the lease was not renewed within the renew deadline); write skipped")]
    NotLeader,
}

impl ScaleError {
    /// A small fixed set of values, safe as a metric label.
    pub fn category(&self) -> &'static str {
        match self {
            ScaleError::Kube(kube::Error::Api(s)) => match s.code {
                403 => "forbidden",
                404 => "not_found",
                409 => "conflict",
                422 => "invalid",
                _ => "kube",
            },
            ScaleError::Kube(_) => "kube",
            ScaleError::Ambiguous { .. } => "ambiguous_hpa",
            ScaleError::HpaNotFound { .. } => "not_found",
            ScaleError::WrongTarget { .. } => "invalid_spec",
            ScaleError::Conflict { .. } => "conflict",
            ScaleError::Capacity(e) => e.category(),
            ScaleError::NotLeader => "not_leader",
        }
    }
}

fn params() -> PatchParams {
    PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PatchParams::default()
    }
}

fn is_conflict(err: &kube::Error) -> bool {
    matches!(err, kube::Error::Api(s) if s.code == 409)
}

/// True when the HPA scales `Deployment/deployment` of group `apps`. Like the HPA controller, only
/// the group of `apiVersion` counts, not its version.
pub fn targets_deployment(hpa: &HorizontalPodAutoscaler, deployment: &str) -> bool {
    let target = &hpa.spec.scale_target_ref;
    let group = match target.api_version.as_deref().unwrap_or("").split_once('/') {
        Some((group, _version)) => group,
        None => "", // "v1" alone is the core group, which has no Deployments
    };
    target.kind == "Deployment" && target.name == deployment && group == "apps"
}

fn describe(target: &CrossVersionObjectReference) -> String {
    let api_version = target.api_version.as_deref().unwrap_or("");
    format!("{} {}/{}", api_version, target.kind, target.name)
        .trim_start()
        .to_string()
}

/// The HPA of `deployment`: the one `named` in the policy (an error if it is missing or scales
/// something else), else the only one in the namespace whose `scaleTargetRef` is the Deployment.
/// `None` when no HPA scales it (canaryd then sets `spec.replicas` itself).
pub async fn find_hpa(
    client: &Client,
    namespace: &str,
    deployment: &str,
    named: Option<&str>,
) -> Result<Option<HorizontalPodAutoscaler>, ScaleError> {
    let api: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), namespace);
    if let Some(name) = named {
        let hpa = api.get_opt(name).await?.ok_or_else(|| ScaleError::HpaNotFound {
            namespace: namespace.into(),
            name: name.into(),
        })?;
        if !targets_deployment(&hpa, deployment) {
            return Err(ScaleError::WrongTarget {
                namespace: namespace.into(),
                name: name.into(),
                target: describe(&hpa.spec.scale_target_ref),
                deployment: deployment.into(),
            });
        }
        return Ok(Some(hpa));
    }
    let mut matching: Vec<_> = api
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|hpa| targets_deployment(hpa, deployment))
        .collect();
    if matching.len() > 1 {
        let mut hpas: Vec<String> = matching.iter().filter_map(|h| h.metadata.name.clone()).collect();
        hpas.sort();
        return Err(ScaleError::Ambiguous {
            namespace: namespace.into(),
            deployment: deployment.into(),
            hpas,
        });
    }
    Ok(matching.pop())
}

/// The HPA's replica bounds as they are now.
pub fn bounds(hpa: &HorizontalPodAutoscaler) -> Bounds {
    Bounds {
        min_replicas: hpa.spec.min_replicas,
        max_replicas: hpa.spec.max_replicas,
    }
}

/// The merge patch taking `hpa` to `wanted`: only the bound that differs, plus the resourceVersion
/// read as precondition; `None` when the HPA already behaves as asked (absent min = 1).
pub fn bounds_patch(hpa: &HorizontalPodAutoscaler, wanted: Bounds) -> Option<Value> {
    let current = bounds(hpa);
    let mut spec = Map::new();
    if current.effective_min() != wanted.effective_min() {
        // null removes the field: the API server defaults it to 1, as it was before.
        spec.insert(
            "minReplicas".into(),
            wanted.min_replicas.map_or(Value::Null, Value::from),
        );
    }
    if current.max_replicas != wanted.max_replicas {
        spec.insert("maxReplicas".into(), wanted.max_replicas.into());
    }
    if spec.is_empty() {
        return None;
    }
    Some(json!({
        "metadata": { "resourceVersion": hpa.metadata.resource_version },
        "spec": spec,
    }))
}

/// Set `minReplicas`/`maxReplicas` of HPA `namespace/name`, and nothing else.
pub async fn set_bounds(
    client: &Client,
    guard: &LeaderGuard,
    namespace: &str,
    name: &str,
    bounds: Bounds,
) -> Result<WriteOutcome, ScaleError> {
    let api: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), namespace);
    let plan = |hpa: HorizontalPodAutoscaler| Ok(bounds_patch(&hpa, bounds));
    let write = |patch: Value| {
        let api = &api;
        async move { api.patch(name, &params(), &Patch::Merge(&patch)).await.map(drop) }
    };
    let written = guarded_rmw(guard, WRITE_ATTEMPTS, is_conflict, || api.get(name), plan, write).await;
    settled(written, "HorizontalPodAutoscaler", namespace, name)
}

/// Set `spec.replicas` of a Deployment without an HPA (with one, the HPA would undo it), through
/// the `scale` subresource: it can change the replica count and nothing else of the Deployment.
pub async fn set_replicas(
    client: &Client,
    guard: &LeaderGuard,
    namespace: &str,
    deployment: &str,
    replicas: i32,
) -> Result<WriteOutcome, ScaleError> {
    let api: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    let plan = |scale: Scale| {
        // Scale omits `replicas` when it is 0.
        if scale.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0) == replicas {
            return Ok(None);
        }
        Ok(Some(json!({
            "metadata": { "resourceVersion": scale.metadata.resource_version },
            "spec": { "replicas": replicas },
        })))
    };
    let write = |patch: Value| {
        let api = &api;
        async move {
            api.patch_scale(deployment, &params(), &Patch::Merge(&patch))
                .await
                .map(drop)
        }
    };
    let written = guarded_rmw(
        guard,
        WRITE_ATTEMPTS,
        is_conflict,
        || api.get_scale(deployment),
        plan,
        write,
    )
    .await;
    settled(written, "Deployment", namespace, deployment)
}

fn settled(
    written: Result<WriteOutcome, Stop<ScaleError>>,
    kind: &'static str,
    namespace: &str,
    name: &str,
) -> Result<WriteOutcome, ScaleError> {
    match written {
        Ok(outcome) => Ok(outcome),
        Err(Stop::NotLeader) => Err(ScaleError::NotLeader),
        Err(Stop::Failed(e)) => Err(e),
        Err(Stop::Exhausted(_)) => Err(ScaleError::Conflict {
            kind,
            namespace: namespace.into(),
            name: name.into(),
            attempts: WRITE_ATTEMPTS,
        }),
    }
}

/// Desired and ready replicas of a Deployment, and whether its controller has seen the current spec.
pub async fn replicas(client: &Client, namespace: &str, deployment: &str) -> Result<ReplicaState, ScaleError> {
    let api: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    Ok(replica_state(&api.get(deployment).await?))
}

/// [`replicas`] of a Deployment already read (e.g. from a cache).
pub fn replica_state(d: &Deployment) -> ReplicaState {
    let status = d.status.as_ref();
    ReplicaState {
        // The API server defaults an absent count to 1.
        spec_replicas: d.spec.replicas.unwrap_or(1),
        ready_replicas: status.and_then(|s| s.ready_replicas).unwrap_or(0),
        generation_observed: status.and_then(|s| s.observed_generation).unwrap_or(0)
            >= d.metadata.generation.unwrap_or(0),
    }
}

#[cfg(test)]
mod fence_tests;

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscalerSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn hpa(
        name: &str,
        api_version: Option<&str>,
        kind: &str,
        target: &str,
        min: Option<i32>,
        max: i32,
    ) -> HorizontalPodAutoscaler {
        HorizontalPodAutoscaler {
            metadata: ObjectMeta {
                name: Some(name.into()),
                resource_version: Some("42".into()),
                ..ObjectMeta::default()
            },
            spec: HorizontalPodAutoscalerSpec {
                scale_target_ref: CrossVersionObjectReference {
                    api_version: api_version.map(Into::into),
                    kind: kind.into(),
                    name: target.into(),
                },
                min_replicas: min,
                max_replicas: max,
                ..HorizontalPodAutoscalerSpec::default()
            },
            status: None,
        }
    }

    fn b(min: Option<i32>, max: i32) -> Bounds {
        Bounds {
            min_replicas: min,
            max_replicas: max,
        }
    }

    #[test]
    fn target_matching() {
        #[rustfmt::skip]
        let cases: &[(Option<&str>, &str, &str, bool)] = &[
            (Some("apps/v1"), "Deployment", "app-v2", true),
            (Some("apps/v1beta2"), "Deployment", "app-v2", true), // the controller ignores the version
            (Some("apps/v1"), "Deployment", "app-v1", false),
            (Some("apps/v1"), "StatefulSet", "app-v2", false),
            (Some("v1"), "Deployment", "app-v2", false),
            (None, "Deployment", "app-v2", false),
            (Some("example.com/v1"), "Deployment", "app-v2", false),
        ];
        for &(api_version, kind, target, expected) in cases {
            let h = hpa("h", api_version, kind, target, None, 3);
            assert_eq!(
                targets_deployment(&h, "app-v2"),
                expected,
                "{api_version:?} {kind} {target}"
            );
        }
    }

    #[test]
    fn patch_touches_only_what_differs() {
        let h = hpa("h", Some("apps/v1"), "Deployment", "d", Some(1), 10);
        assert_eq!(bounds(&h), b(Some(1), 10));
        assert_eq!(bounds_patch(&h, b(Some(1), 10)), None);
        assert_eq!(bounds_patch(&h, b(None, 10)), None); // absent min behaves as 1
        assert_eq!(
            bounds_patch(&h, b(Some(3), 10)),
            Some(json!({"metadata": {"resourceVersion": "42"}, "spec": {"minReplicas": 3}}))
        );
        assert_eq!(
            bounds_patch(&h, b(Some(12), 12)),
            Some(json!({"metadata": {"resourceVersion": "42"}, "spec": {"minReplicas": 12, "maxReplicas": 12}}))
        );
        let raised = hpa("h", Some("apps/v1"), "Deployment", "d", Some(4), 10);
        assert_eq!(
            bounds_patch(&raised, b(None, 10)),
            Some(json!({"metadata": {"resourceVersion": "42"}, "spec": {"minReplicas": null}}))
        );
    }

    #[test]
    fn replica_state_from_deployment() {
        let mut d: Deployment = serde_json::from_value(json!({
            "metadata": {"name": "d", "generation": 3},
            "spec": {"replicas": 4, "selector": {}, "template": {}},
            "status": {"observedGeneration": 2, "readyReplicas": 2},
        }))
        .unwrap();
        assert_eq!(
            replica_state(&d),
            ReplicaState {
                spec_replicas: 4,
                ready_replicas: 2,
                generation_observed: false
            }
        );
        d.status = None;
        d.spec.replicas = None;
        d.metadata.generation = None;
        assert_eq!(
            replica_state(&d),
            ReplicaState {
                spec_replicas: 1,
                ready_replicas: 0,
                generation_observed: true
            }
        );
    }

    #[test]
    fn messages_and_categories() {
        let err = ScaleError::Ambiguous {
            namespace: "dev".into(),
            deployment: "app-v2".into(),
            hpas: vec!["a".into(), "b".into()],
        };
        assert!(
            err.to_string().contains("a, b in dev all target Deployment app-v2"),
            "{err}"
        );
        assert_eq!(err.category(), "ambiguous_hpa");
        let conflict = kube::Error::Api(
            kube::core::Status::failure("changed", "Conflict")
                .with_code(409)
                .boxed(),
        );
        assert_eq!(ScaleError::from(conflict).category(), "conflict");
        let capacity = ScaleError::from(CapacityError::AboveMax { required: 4, max: 3 });
        assert_eq!(capacity.category(), "hpa_max_too_low");
        assert!(
            capacity
                .to_string()
                .starts_with("canary HPA maxReplicas 3 is below the 4 replicas")
        );
        let h = hpa("h", Some("apps/v1"), "StatefulSet", "db", None, 3);
        assert_eq!(describe(&h.spec.scale_target_ref), "apps/v1 StatefulSet/db");
    }
}
