//! What the controller adds to the planner's webhook calls: the policy's name and namespace, the
//! versions' `version` labels, and bearer tokens, which the pure planner does not know. A token
//! comes only from a Secret in the daemon's own namespace, and only for URLs the platform listed
//! on that Secret (`canaryd.io/webhook-urls`): a policy author cannot send it anywhere else. Nor
//! from a namespace the Secret's `canaryd.io/webhook-namespaces` does not select (see `tenancy`).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;

use crate::plan::Plan;
use crate::resources::policy::{RolloutPolicy, SecretKeyRef};
use crate::resources::selector::WEBHOOK_NAMESPACES_ANNOTATION;
use crate::resources::webhook::{ALLOWED_URLS_ANNOTATION, Bearer, Credential, HookCall, PayloadVersion, url_allowed};

use super::tenancy::{Tokens, token_access};

/// The plan's wanted and fire-and-forget calls, addressed to this policy; `labels` are its
/// namespace's (None: not known, so no token).
pub fn addressed(
    tokens: &Tokens,
    labels: Option<&BTreeMap<String, String>>,
    secrets_namespace: &str,
    policy: &RolloutPolicy,
    versions: &BTreeMap<String, String>,
    plan: &mut Plan,
) -> (Vec<HookCall>, Vec<HookCall>) {
    let mut out = (Vec::new(), Vec::new());
    for (call, fire) in std::mem::take(&mut plan.hooks)
        .into_iter()
        .map(|c| (c, false))
        .chain(std::mem::take(&mut plan.fire).into_iter().map(|c| (c, true)))
    {
        let mut call = fill(policy, versions, call);
        if let Some(r) = call.hook.bearer_token_secret.clone() {
            call.credential = match tokens.0.get(&r.name) {
                // A token goes only where the server's certificate is verified.
                _ if call.hook.disable_tls => Credential::Refused(format!(
                    "bearer token Secret {}: not sent to a hook with disableTLS",
                    r.name
                )),
                Some(Ok(secret)) => {
                    let policy_ns = call.payload.namespace.clone();
                    credential(secret, &r, &call.hook.url, secrets_namespace, (&policy_ns, labels))
                }
                Some(Err(e)) => Credential::Refused(format!("bearer token Secret {}: {e}", r.name)),
                None => Credential::Refused(format!("bearer token Secret {}: not read", r.name)),
            };
        }
        if fire { &mut out.1 } else { &mut out.0 }.push(call);
    }
    out
}

fn fill(policy: &RolloutPolicy, versions: &BTreeMap<String, String>, mut call: HookCall) -> HookCall {
    call.payload.name = policy.name_any();
    call.payload.namespace = policy.namespace().unwrap_or_default();
    let label = |v: &mut PayloadVersion| {
        if let Some(version) = versions.get(&v.deployment) {
            v.version = version.clone();
        }
    };
    label(&mut call.payload.stable);
    if let Some(c) = call.payload.canary.as_mut() {
        label(c);
    }
    call
}

/// The token, if the Secret allows this URL and this namespace, and has the key.
fn credential(
    secret: &Secret,
    r: &SecretKeyRef,
    url: &str,
    ns: &str,
    (policy_ns, labels): (&str, Option<&BTreeMap<String, String>>),
) -> Credential {
    let refused = |why: &str| Credential::Refused(format!("bearer token Secret {ns}/{}: {why}", r.name));
    let subject = format!("its {WEBHOOK_NAMESPACES_ANNOTATION} annotation");
    if let Some(why) = token_access(secret, labels).refusal(&subject, policy_ns) {
        return refused(&why);
    }
    let allowed = secret.annotations().get(ALLOWED_URLS_ANNOTATION);
    if !allowed.is_some_and(|a| url_allowed(a, url)) {
        return refused(&format!(
            "its {ALLOWED_URLS_ANNOTATION} annotation does not allow this URL"
        ));
    }
    let value = crate::secrets::secret_bytes(secret, &r.key);
    match value.map(String::from_utf8) {
        Some(Ok(token)) => Credential::Bearer(Bearer(token.trim().to_string())),
        Some(Err(_)) => refused(&format!("key {:?} is not UTF-8", r.key)),
        None => refused(&format!("no key {:?}", r.key)),
    }
}
