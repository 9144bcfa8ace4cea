//! Kubernetes helpers on top of the shared control plane.
use super::{control_plane, wait_until};
use anyhow::{Context, Result, bail};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::GroupVersionKind;
use kube::discovery::{Scope, pinned_kind};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use std::time::Duration;

pub const FIELD_MANAGER: &str = "canaryd-tests";

/// Server-side applies every document of a multi-document YAML text (forcing conflicts, as
/// tests own their fixtures); namespaced objects without a namespace go to `default`.
pub async fn apply_yaml(client: &Client, yaml: &str) -> Result<Vec<DynamicObject>> {
    let docs: Vec<Value> = serde_saphyr::from_multiple(yaml).context("parsing YAML")?;
    let mut applied = Vec::new();
    for doc in docs.into_iter().filter(|d| !d.is_null()) {
        let obj: DynamicObject = serde_json::from_value(doc.clone()).context("not a Kubernetes object")?;
        let types = obj.types.as_ref().context("document without apiVersion/kind")?;
        let gvk = GroupVersionKind::try_from(types).context("bad apiVersion")?;
        let name = obj.metadata.name.clone().context("document without metadata.name")?;
        let what = format!("{} {name}", gvk.kind);
        let (resource, caps) = pinned_kind(client, &gvk)
            .await
            .with_context(|| format!("discovering {}/{}", gvk.api_version(), gvk.kind))?;
        let api: Api<DynamicObject> = match caps.scope {
            Scope::Namespaced => {
                let ns = obj.metadata.namespace.as_deref().unwrap_or("default");
                Api::namespaced_with(client.clone(), ns, &resource)
            }
            Scope::Cluster => Api::all_with(client.clone(), &resource),
        };
        let params = PatchParams::apply(FIELD_MANAGER).force();
        let result = api.patch(&name, &params, &Patch::Apply(&doc)).await;
        applied.push(result.with_context(|| format!("applying {what}"))?);
    }
    Ok(applied)
}

/// Applies the CustomResourceDefinitions in `yaml` and waits until each is established and
/// served through discovery.
pub(crate) async fn install_crds(client: &Client, yaml: &str, timeout: Duration) -> Result<()> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for obj in apply_yaml(client, yaml).await? {
        if obj.types.as_ref().is_none_or(|t| t.kind != "CustomResourceDefinition") {
            continue;
        }
        let name = obj.name_any();
        let crd = wait_until(&format!("CRD {name} to be established"), timeout, async || {
            let crd = crds.get(&name).await?;
            let established = crd
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Established" && c.status == "True"));
            Ok(established.then_some(crd))
        })
        .await?;
        for version in crd.spec.versions.iter().filter(|v| v.served) {
            let gvk = GroupVersionKind::gvk(&crd.spec.group, &version.name, &crd.spec.names.kind);
            let what = format!("{}/{} in discovery", gvk.api_version(), gvk.kind);
            wait_until(&what, timeout, async || Ok(Some(pinned_kind(client, &gvk).await?))).await?;
        }
    }
    Ok(())
}

/// Creates the namespace if it does not exist (idempotent).
pub async fn create_namespace(name: &str) -> Result<()> {
    let api: Api<Namespace> = Api::all(control_plane().await?.client().await?);
    let ns = json!({ "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": name } });
    api.patch(name, &PatchParams::apply(FIELD_MANAGER), &Patch::Apply(&ns))
        .await
        .with_context(|| format!("creating namespace {name}"))?;
    Ok(())
}

/// A bearer token for `ns/service_account` (both created if needed), valid for an hour.
pub async fn token_for(ns: &str, service_account: &str) -> Result<String> {
    create_namespace(ns).await?;
    let api: Api<ServiceAccount> = Api::namespaced(control_plane().await?.client().await?, ns);
    let sa = json!({ "apiVersion": "v1", "kind": "ServiceAccount", "metadata": { "name": service_account } });
    api.patch(service_account, &PatchParams::apply(FIELD_MANAGER), &Patch::Apply(&sa))
        .await
        .with_context(|| format!("creating service account {ns}/{service_account}"))?;
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            expiration_seconds: Some(3600),
            ..Default::default()
        }),
        ..Default::default()
    };
    let response = api
        .create_token_request(service_account, &PostParams::default(), &request)
        .await
        .with_context(|| format!("requesting a token for {ns}/{service_account}"))?;
    match response.status.and_then(|s| s.token) {
        Some(token) if !token.is_empty() => Ok(token),
        _ => bail!("TokenRequest for {ns}/{service_account} returned no token"),
    }
}

/// A client for the shared control plane authenticating with `token` only (no admin rights).
pub async fn client_with_token(token: &str) -> Result<Client> {
    let mut config = control_plane().await?.config().clone();
    config.auth_info = serde_json::from_value(json!({ "token": token })).context("building auth info")?;
    Client::try_from(config).context("building a kube client")
}
