//! Which platform objects a policy's namespace may use: a MetricProvider or NotificationTarget
//! through its `namespaceSelector`, a webhook-token Secret through its
//! `canaryd.io/webhook-namespaces` annotation. Without a selector an object serves no namespace.
//! A policy naming one it may not use is `Invalid`, naming the object; the analysis, the notifier
//! and the webhook runner also refuse it on their own (no credential ever leaves for it).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::{Client, ResourceExt};

use crate::cache::Caches;
use crate::plan::Problem;
use crate::resources::policy::RolloutPolicy;
use crate::resources::provider::MetricProvider;
use crate::resources::reason::Reason;
use crate::resources::selector::{self, Access, WEBHOOK_NAMESPACES_ANNOTATION};

pub const PROVIDER_NOT_ALLOWED: Reason = Reason::ProviderNotAllowed;
pub const TARGET_NOT_ALLOWED: Reason = Reason::TargetNotAllowed;
pub const TOKEN_NOT_ALLOWED: Reason = Reason::WebhookTokenNotAllowed;

/// May namespace `ns` use `provider`?
pub fn provider_access(caches: &Caches, provider: &MetricProvider, ns: &str) -> Access {
    let labels = caches.namespace_labels(ns);
    selector::access(provider.spec.namespace_selector.as_ref(), labels.as_ref())
}

/// May a policy of namespace `labels` (None: unknown) send this Secret's token?
pub fn token_access(secret: &Secret, labels: Option<&BTreeMap<String, String>>) -> Access {
    match secret.annotations().get(WEBHOOK_NAMESPACES_ANNOTATION) {
        None => Access::NoSelector,
        Some(text) => match selector::parse(text) {
            Ok(s) => selector::access(Some(&s), labels),
            Err(e) => Access::Malformed(e),
        },
    }
}

/// The webhook-token Secrets a policy's hooks name, read once per reconcile (the daemon may `get`
/// Secrets of its own namespace, never list or watch them): by name, the Secret or why not.
pub struct Tokens(pub BTreeMap<String, Result<Secret, String>>);

impl Tokens {
    pub async fn read(client: &Client, secrets_namespace: &str, policy: &RolloutPolicy) -> Tokens {
        let api: Api<Secret> = Api::namespaced(client.clone(), secrets_namespace);
        let mut out = BTreeMap::new();
        for hook in &policy.spec.webhooks {
            let Some(r) = &hook.bearer_token_secret else { continue };
            if !out.contains_key(&r.name) {
                let got = api.get(&r.name).await.map_err(|e| e.to_string());
                out.insert(r.name.clone(), got);
            }
        }
        Tokens(out)
    }
}

/// Every platform object the policy names that its namespace may not use. A provider or target
/// that does not exist is reported elsewhere; a token Secret that cannot be read refuses its
/// calls when they are made.
pub fn problems(caches: &Caches, policy: &RolloutPolicy, tokens: &Tokens, secrets_namespace: &str) -> Vec<Problem> {
    let ns = policy.namespace().unwrap_or_default();
    let labels = caches.namespace_labels(&ns);
    let mut out = Vec::new();
    let mut refuse = |reason: Reason, field: String, access: Access, subject: String| {
        if let Some(why) = access.refusal(&subject, &ns) {
            out.push(Problem {
                reason,
                message: format!("{field}: {why}"),
            });
        }
    };
    if let Some(name) = policy.spec.analysis.as_ref().and_then(|a| a.provider.as_deref())
        && let Ok(provider) = caches.provider(name)
    {
        let access = selector::access(provider.spec.namespace_selector.as_ref(), labels.as_ref());
        let subject = format!("MetricProvider {name:?} (spec.namespaceSelector)");
        refuse(PROVIDER_NOT_ALLOWED, "spec.analysis.provider".into(), access, subject);
    }
    for (i, n) in policy.spec.notifications.iter().enumerate() {
        let cached = caches.targets.get(&kube::runtime::reflector::ObjectRef::new(&n.target));
        if let Some(target) = cached.and_then(crate::cache::ok) {
            let access = selector::access(target.spec.namespace_selector.as_ref(), labels.as_ref());
            let subject = format!("NotificationTarget {:?} (spec.namespaceSelector)", n.target);
            refuse(
                TARGET_NOT_ALLOWED,
                format!("spec.notifications[{i}].target"),
                access,
                subject,
            );
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    for (i, hook) in policy.spec.webhooks.iter().enumerate() {
        let Some(r) = &hook.bearer_token_secret else { continue };
        let Some(Ok(secret)) = tokens.0.get(&r.name) else {
            continue;
        };
        if !seen.insert(r.name.as_str()) {
            continue;
        }
        let subject = format!(
            "bearer token Secret {secrets_namespace}/{} (annotation {WEBHOOK_NAMESPACES_ANNOTATION})",
            r.name
        );
        let field = format!("spec.webhooks[{i}].bearerTokenSecret");
        refuse(TOKEN_NOT_ALLOWED, field, token_access(secret, labels.as_ref()), subject);
    }
    out
}
