//! What the analysis engine must check for a policy, from its spec and the status just written.
//! Credentials come only from a MetricProvider, whose Secrets are read in the daemon's own namespace,
//! and stay out of logs (`Credentials` redacts itself). A policy's plain address gets none.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::{Client, ResourceExt};

use crate::analysis::templates::{Vars, VersionVars};
use crate::error::Result;
use crate::prometheus::client::Credentials;
use crate::prometheus::engine::Request;
use crate::resources::policy::{
    Phase, PrometheusAddress, RolloutPolicy, RolloutPolicyStatus, SecretKeyRef, VersionRef,
};
use crate::resources::provider::MetricProvider;
use crate::resources::selector::Access;
use crate::secrets::secret_value;

use crate::cache::Caches;

fn version_vars(v: &VersionRef, versions: &BTreeMap<String, String>) -> VersionVars {
    VersionVars {
        subset: v.subset.clone(),
        deployment: v.deployment.clone(),
        version: versions.get(&v.deployment).cloned().unwrap_or_else(|| v.subset.clone()),
    }
}

/// None when nothing is to be judged: no analysis, no canary in progress, or no traffic on it yet,
/// a provider that does not exist or that the policy's namespace may not use (observe reports
/// both), or a policy that is `Invalid` (its spec, or what it names, is refused: no query runs).
pub async fn request(
    client: &Client,
    caches: &Caches,
    secrets_namespace: &str,
    policy: &RolloutPolicy,
    status: &RolloutPolicyStatus,
    versions: &BTreeMap<String, String>,
) -> Result<Option<Request>> {
    let Some(analysis) = policy.spec.analysis.clone() else {
        return Ok(None);
    };
    let (Some(canary), Some(stable)) = (status.canary.as_ref(), status.stable.as_ref()) else {
        return Ok(None);
    };
    let Some(since) = status.analysis.as_ref().and_then(|a| a.since) else {
        return Ok(None);
    };
    if canary.halted.is_some() || status.phase == Phase::Invalid {
        return Ok(None);
    }
    let (prometheus, credentials, ca_pem) = match (&analysis.provider, &analysis.prometheus) {
        (Some(name), _) => match caches.provider(name) {
            Ok(provider) => {
                let ns = policy.namespace().unwrap_or_default();
                if super::tenancy::provider_access(caches, &provider, &ns) != Access::Allowed {
                    return Ok(None);
                }
                let secrets: Api<Secret> = Api::namespaced(client.clone(), secrets_namespace);
                resolve(&secrets, &provider).await?
            }
            // Missing or rejected: observe makes the policy Invalid, naming it.
            Err(_) => return Ok(None),
        },
        (None, Some(plain)) => (plain.clone(), None, None),
        (None, None) => return Ok(None),
    };
    let canary_ref = VersionRef {
        subset: canary.subset.clone(),
        deployment: canary.deployment.clone(),
    };
    Ok(Some(Request {
        vars: Vars {
            namespace: policy.namespace().unwrap_or_default(),
            service: policy.spec.service.clone(),
            window: String::new(),
            stable: version_vars(stable, versions),
            canary: version_vars(&canary_ref, versions),
        },
        analysis,
        since,
        prometheus,
        credentials,
        ca_pem,
    }))
}

type Resolved = (PrometheusAddress, Option<Credentials>, Option<Vec<u8>>);

/// A provider's address with the credentials and CA its Secrets hold.
async fn resolve(secrets: &Api<Secret>, provider: &MetricProvider) -> Result<Resolved> {
    let spec = &provider.spec;
    let credentials = match &spec.auth {
        None => None,
        Some(auth) => match (&auth.bearer_token_secret, &auth.basic_auth_secret) {
            (Some(r), _) => Some(Credentials::Bearer(secret_value(secrets, r).await?)),
            (None, Some(r)) => {
                let key = |key: &str| SecretKeyRef {
                    name: r.name.clone(),
                    key: key.into(),
                };
                let username = secret_value(secrets, &key("username")).await?;
                let password = secret_value(secrets, &key("password")).await?;
                Some(Credentials::Basic { username, password })
            }
            (None, None) => None,
        },
    };
    let ca_pem = match &spec.ca_secret {
        Some(r) => Some(secret_value(secrets, r).await?.into_bytes()),
        None => None,
    };
    let address = PrometheusAddress {
        address: spec.address.clone(),
        timeout: spec.timeout,
    };
    Ok((address, credentials, ca_pem))
}
