//! The Istio side effects: reading VirtualServices and DestinationRules, and writing weights.

use kube::Client;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use serde_json::Value;

use super::routes::{managed_routes, weight_patch};
use crate::error::{Error, Result};
use crate::fence::LeaderGuard;
use crate::write::{FIELD_MANAGER, Stop, WriteOutcome, guarded_rmw};

/// Re-read and re-plan this many times when a concurrent edit makes the guarded patch fail.
const WRITE_ATTEMPTS: usize = 8;

pub fn virtual_service_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("networking.istio.io", "v1", "VirtualService"),
        "virtualservices",
    )
}

pub fn destination_rule_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("networking.istio.io", "v1", "DestinationRule"),
        "destinationrules",
    )
}

pub fn virtual_services(client: &Client, namespace: &str) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), namespace, &virtual_service_resource())
}

/// The object as plain JSON, so every field, known or not, survives.
pub fn to_value(obj: &DynamicObject) -> Result<Value> {
    Ok(serde_json::to_value(obj)?)
}

/// Set the weights of the managed routes of one VirtualService.
///
/// The patch carries the resourceVersion and the host/subset of each destination it touches; when
/// someone else edited the object in between, it fails, and we read again and rebuild it, so their
/// edit is kept and ours lands on top.
#[allow(clippy::too_many_arguments)]
pub async fn set_weights(
    client: &Client,
    guard: &LeaderGuard,
    namespace: &str,
    name: &str,
    service_fqdn: &str,
    routes: Option<&[String]>,
    stable: &str,
    canary: Option<&str>,
    canary_weight: u8,
) -> Result<WriteOutcome> {
    let api = virtual_services(client, namespace);
    let id = format!("{namespace}/{name}");
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PatchParams::default()
    };
    let plan = |obj: DynamicObject| -> Result<Option<json_patch::Patch>> {
        let vs = to_value(&obj)?;
        let indices = managed_routes(&vs, &id, namespace, service_fqdn, routes).map_err(|p| Error::Mesh {
            vs: id.clone(),
            message: p.into_iter().map(|p| p.message).collect::<Vec<_>>().join("; "),
        })?;
        weight_patch(&vs, namespace, service_fqdn, &indices, stable, canary, canary_weight)
            .map(serde_json::from_value)
            .transpose()
            .map_err(Error::from)
    };
    let write = |patch: json_patch::Patch| {
        let (api, params) = (&api, &params);
        async move { api.patch(name, params, &Patch::<()>::Json(patch)).await.map(drop) }
    };
    // 409: conflict; 422: a guard (`test` op) failed because the object changed.
    let conflict = |e: &kube::Error| matches!(e, kube::Error::Api(s) if s.code == 409 || s.code == 422);
    match guarded_rmw(guard, WRITE_ATTEMPTS, conflict, || api.get(name), plan, write).await {
        Ok(outcome) => Ok(outcome),
        Err(Stop::NotLeader) => Err(Error::NotLeader),
        Err(Stop::Failed(e)) => Err(e),
        Err(Stop::Exhausted(e)) => Err(e.into()),
    }
}
