//! `canaryd validate` on the platform's own objects: a MetricProvider or NotificationTarget must
//! say which namespaces may use it (without `namespaceSelector` none may), and a webhook-token
//! Secret which namespaces its token serves (`canaryd.io/webhook-namespaces`).

use std::collections::BTreeMap;

use serde_json::Value;

use crate::resources::provider::MetricProviderSpec;
use crate::resources::selector::{self, NamespaceSelector, WEBHOOK_NAMESPACES_ANNOTATION};
use crate::resources::target::NotificationTargetSpec;
use crate::resources::webhook::ALLOWED_URLS_ANNOTATION;

/// The errors of one document of a kind this checks; None for other kinds.
pub fn validate(doc: &Value) -> Option<Vec<String>> {
    let kind = doc.get("kind").and_then(Value::as_str)?;
    let name = doc.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("");
    let spec = doc.get("spec").cloned().unwrap_or(Value::Null);
    let selector = match kind {
        "MetricProvider" => serde_path_to_error::deserialize::<_, MetricProviderSpec>(spec)
            .map(|s| s.namespace_selector)
            .map_err(|e| format!("spec.{}: {}", e.path(), e.inner())),
        "NotificationTarget" => serde_path_to_error::deserialize::<_, NotificationTargetSpec>(spec)
            .map(|s| s.namespace_selector)
            .map_err(|e| format!("spec.{}: {}", e.path(), e.inner())),
        "Secret" => return token_secret(doc, name),
        _ => return None,
    };
    let prefix = format!("{kind} {name}");
    Some(match selector {
        Err(e) => vec![format!("{prefix}: {e}")],
        Ok(None) => vec![format!(
            "{prefix}: spec.namespaceSelector: absent, so no namespace may use it \
             (`namespaceSelector: {{}}` allows every namespace)"
        )],
        Ok(Some(s)) => malformed(&s)
            .map(|e| vec![format!("{prefix}: spec.namespaceSelector: {e}")])
            .unwrap_or_default(),
    })
}

fn malformed(s: &NamespaceSelector) -> Option<selector::SelectorError> {
    s.matches(&BTreeMap::new()).err()
}

/// A Secret that allows webhook URLs is a token Secret: it must name its namespaces too.
fn token_secret(doc: &Value, name: &str) -> Option<Vec<String>> {
    let annotations = doc.pointer("/metadata/annotations")?;
    annotations.get(ALLOWED_URLS_ANNOTATION)?;
    let prefix = format!("Secret {name}: metadata.annotations.{WEBHOOK_NAMESPACES_ANNOTATION}");
    Some(
        match annotations.get(WEBHOOK_NAMESPACES_ANNOTATION).map(Value::as_str) {
            None => vec![format!(
                "{prefix}: absent, so the token goes to no namespace's hooks (\"\" allows every namespace)"
            )],
            Some(None) => vec![format!("{prefix}: not a string")],
            Some(Some(text)) => match selector::parse(text).map(|s| malformed(&s)) {
                Err(e) | Ok(Some(e)) => vec![format!("{prefix}: {e}")],
                Ok(None) => Vec::new(),
            },
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(yaml: &str) -> Value {
        serde_saphyr::from_str(yaml).unwrap_or_default()
    }

    #[test]
    fn platform_objects_must_say_which_namespaces_may_use_them() {
        let provider = "kind: MetricProvider\nmetadata: {name: prom}\nspec: {address: 'http://p:9090'";
        let target = "kind: NotificationTarget\nmetadata: {name: t}\nspec: {webhook: {url: {name: s, key: k}}";
        let secret = "kind: Secret\nmetadata: {name: tok, annotations: {canaryd.io/webhook-urls: 'http://x/'";
        let cases = [
            (
                format!("{provider}}}"),
                Some("MetricProvider prom: spec.namespaceSelector: absent"),
            ),
            (format!("{provider}, namespaceSelector: {{}}}}"), None),
            (
                format!("{provider}, namespaceSelector: {{matchExpressions: [{{key: a, operator: Like}}]}}}}"),
                Some("unknown operator \"Like\""),
            ),
            (
                format!("{target}}}"),
                Some("NotificationTarget t: spec.namespaceSelector: absent"),
            ),
            (
                format!("{target}, namespaceSelector: {{matchLabels: {{team: a}}}}}}"),
                None,
            ),
            (format!("{secret}}}}}"), Some("webhook-namespaces: absent")),
            (format!("{secret}, canaryd.io/webhook-namespaces: ''}}}}"), None),
            (
                format!("{secret}, canaryd.io/webhook-namespaces: 'team in (a'}}}}"),
                Some("cannot parse"),
            ),
        ];
        for (yaml, want) in cases {
            let errors = validate(&doc(&yaml)).unwrap_or_else(|| panic!("not checked: {yaml}"));
            match want {
                None => assert!(errors.is_empty(), "{yaml}: {errors:?}"),
                Some(w) => assert!(errors.iter().any(|e| e.contains(w)), "{yaml}: {errors:?}"),
            }
        }
        assert!(validate(&doc("kind: Secret\nmetadata: {name: plain}")).is_none());
        assert!(validate(&doc("kind: Service\nmetadata: {name: s}")).is_none());
    }
}
