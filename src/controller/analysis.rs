//! What the analysis engine must check for a policy, from its spec and the status just written.
//! Credentials come from Kubernetes Secrets and stay out of logs (`Credentials` redacts itself).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::{Client, ResourceExt};

use crate::analysis::engine::Request;
use crate::analysis::prometheus::Credentials;
use crate::analysis::templates::{Vars, VersionVars};
use crate::error::{Error, Result};
use crate::policy::types::{RolloutPolicy, RolloutPolicyStatus, SecretKeyRef, VersionRef};

fn version_vars(v: &VersionRef, versions: &BTreeMap<String, String>) -> VersionVars {
    VersionVars {
        subset: v.subset.clone(),
        deployment: v.deployment.clone(),
        version: versions.get(&v.deployment).cloned().unwrap_or_else(|| v.subset.clone()),
    }
}

/// None when nothing is to be judged: no analysis, no canary in progress, or no traffic on it yet.
pub async fn request(
    client: &Client,
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
    if canary.halted.is_some() {
        return Ok(None);
    }
    let ns = policy.namespace().unwrap_or_default();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let prom = &analysis.prometheus;
    let credentials = match &prom.auth {
        None => None,
        Some(auth) => match (&auth.bearer_token_secret, &auth.basic_auth_secret) {
            (Some(r), _) => Some(Credentials::Bearer(secret_value(&secrets, r).await?)),
            (None, Some(r)) => {
                let key = |key: &str| SecretKeyRef {
                    name: r.name.clone(),
                    key: key.into(),
                };
                let username = secret_value(&secrets, &key("username")).await?;
                let password = secret_value(&secrets, &key("password")).await?;
                Some(Credentials::Basic { username, password })
            }
            (None, None) => None,
        },
    };
    let ca_pem = match &prom.ca_secret {
        Some(r) => Some(secret_value(&secrets, r).await?.into_bytes()),
        None => None,
    };
    let canary_ref = VersionRef {
        subset: canary.subset.clone(),
        deployment: canary.deployment.clone(),
    };
    Ok(Some(Request {
        vars: Vars {
            namespace: ns,
            service: policy.spec.service.clone(),
            window: String::new(),
            stable: version_vars(stable, versions),
            canary: version_vars(&canary_ref, versions),
        },
        analysis,
        since,
        credentials,
        ca_pem,
    }))
}

async fn secret_value(secrets: &Api<Secret>, r: &SecretKeyRef) -> Result<String> {
    let secret = secrets.get(&r.name).await?;
    let bytes = secret
        .data
        .as_ref()
        .and_then(|d| d.get(&r.key))
        .map(|b| b.0.clone())
        .or_else(|| {
            secret
                .string_data
                .as_ref()
                .and_then(|d| d.get(&r.key))
                .map(|s| s.clone().into_bytes())
        })
        .ok_or_else(|| Error::Secret(format!("Secret {} has no key {:?}", r.name, r.key)))?;
    String::from_utf8(bytes).map_err(|_| Error::Secret(format!("Secret {} key {:?} is not UTF-8", r.name, r.key)))
}
