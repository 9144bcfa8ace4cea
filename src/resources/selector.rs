//! Which namespaces may use a platform object (MetricProvider, NotificationTarget, webhook-token
//! Secret): a Kubernetes label selector over the namespace's labels. As in Kubernetes, an empty
//! selector selects every namespace and no selector selects none: a platform object serves a
//! namespace only when the platform said so. Bounded in the CRD schema; anything malformed
//! (an unknown operator stored past the schema, `In` without values) selects nothing.

use std::borrow::Cow;
use std::collections::BTreeMap;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

/// Annotation on a webhook-token Secret: the namespaces whose policies' hooks may carry its token,
/// as a label selector in kubectl's syntax (`team=payments`, `env in (prod,staging)`, `!legacy`).
/// `kubernetes.io/metadata.name in (a,b)` names namespaces; `""` allows every namespace; without
/// the annotation the token goes to no namespace.
pub const WEBHOOK_NAMESPACES_ANNOTATION: &str = "canaryd.io/webhook-namespaces";

/// The bounds, the same in the CRD schema and in the annotation parser.
pub const MAX_LABELS: usize = 16;
pub const MAX_EXPRESSIONS: usize = 16;
pub const MAX_VALUES: usize = 64;
/// A label key: an optional DNS-subdomain prefix (253), a slash, a name (63).
pub const MAX_KEY_LENGTH: usize = 317;
pub const MAX_VALUE_LENGTH: usize = 63;
/// The longest annotation value the parser reads.
pub const MAX_ANNOTATION_LENGTH: usize = 4096;

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NamespaceSelector {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<Requirement>,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Requirement {
    pub key: String,
    /// A string, not an enum: an unknown operator (stored past the schema) must not break the
    /// watch of the whole kind; it selects nothing instead.
    pub operator: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

impl JsonSchema for NamespaceSelector {
    fn schema_name() -> Cow<'static, str> {
        "NamespaceSelector".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "The namespaces whose policies may use this object, by their labels (a Kubernetes label selector). {} selects every namespace; without it, no namespace may use the object.",
            "type": "object",
            "properties": {
                "matchLabels": {
                    "type": "object",
                    "maxProperties": MAX_LABELS,
                    "additionalProperties": {"type": "string", "maxLength": MAX_VALUE_LENGTH},
                    "x-kubernetes-validations": [{
                        "rule": format!("self.all(k, size(k) <= {MAX_KEY_LENGTH})"),
                        "message": format!("a label key is at most {MAX_KEY_LENGTH} characters"),
                    }],
                },
                "matchExpressions": {
                    "type": "array",
                    "maxItems": MAX_EXPRESSIONS,
                    "items": {
                        "type": "object",
                        "required": ["key", "operator"],
                        "properties": {
                            "key": {"type": "string", "minLength": 1, "maxLength": MAX_KEY_LENGTH},
                            "operator": {"type": "string", "enum": ["In", "NotIn", "Exists", "DoesNotExist"]},
                            "values": {
                                "type": "array",
                                "maxItems": MAX_VALUES,
                                "items": {"type": "string", "maxLength": MAX_VALUE_LENGTH},
                            },
                        },
                    },
                },
            },
        })
    }
}

/// Why a selector selects nothing at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    #[error("unknown operator {0:?} (In, NotIn, Exists, DoesNotExist)")]
    UnknownOperator(String),
    #[error("{0} of key {1:?} needs values")]
    NoValues(&'static str, String),
    #[error("{0} of key {1:?} takes no values")]
    Values(&'static str, String),
    #[error("more than {0} {1}")]
    TooMany(usize, &'static str),
    #[error("cannot parse {0:?}")]
    Syntax(String),
}

/// Whether a namespace may use an object, with the words for a refusal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    Allowed,
    /// The object has no selector: it serves no namespace.
    NoSelector,
    /// The namespace is not in the cache (yet): refused until it is.
    UnknownNamespace,
    NotSelected,
    Malformed(SelectorError),
}

impl Access {
    /// `subject` names the object and where its selector is, e.g. `MetricProvider "prom" (spec.namespaceSelector)`.
    pub fn refusal(&self, subject: &str, ns: &str) -> Option<String> {
        Some(match self {
            Access::Allowed => return None,
            Access::NoSelector => format!("{subject} has no namespace selector: no namespace may use it, nor {ns:?}"),
            Access::UnknownNamespace => format!("{subject} cannot be checked: namespace {ns:?} is not known yet"),
            Access::NotSelected => format!("{subject} does not select namespace {ns:?}"),
            Access::Malformed(e) => format!("{subject} is malformed and selects no namespace, nor {ns:?}: {e}"),
        })
    }
}

impl NamespaceSelector {
    /// Everything the operators mean; an error makes the whole selector select nothing.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> Result<bool, SelectorError> {
        if self.match_labels.len() > MAX_LABELS {
            return Err(SelectorError::TooMany(MAX_LABELS, "matchLabels"));
        }
        if self.match_expressions.len() > MAX_EXPRESSIONS {
            return Err(SelectorError::TooMany(MAX_EXPRESSIONS, "matchExpressions"));
        }
        let mut all = self.match_labels.iter().all(|(k, v)| labels.get(k) == Some(v));
        // Every requirement is checked, also after a mismatch: a malformed one is never hidden.
        for r in &self.match_expressions {
            all &= r.matches(labels)?;
        }
        Ok(all)
    }
}

impl Requirement {
    fn matches(&self, labels: &BTreeMap<String, String>) -> Result<bool, SelectorError> {
        if self.values.len() > MAX_VALUES {
            return Err(SelectorError::TooMany(MAX_VALUES, "values"));
        }
        let value = labels.get(&self.key);
        let needs_values = |op: &'static str| {
            if self.values.is_empty() {
                Err(SelectorError::NoValues(op, self.key.clone()))
            } else {
                Ok(())
            }
        };
        let no_values = |op: &'static str| {
            if self.values.is_empty() {
                Ok(())
            } else {
                Err(SelectorError::Values(op, self.key.clone()))
            }
        };
        match self.operator.as_str() {
            "In" => needs_values("In").map(|()| value.is_some_and(|v| self.values.contains(v))),
            "NotIn" => needs_values("NotIn").map(|()| value.is_none_or(|v| !self.values.contains(v))),
            "Exists" => no_values("Exists").map(|()| value.is_some()),
            "DoesNotExist" => no_values("DoesNotExist").map(|()| value.is_none()),
            other => Err(SelectorError::UnknownOperator(other.chars().take(64).collect())),
        }
    }
}

/// May namespace `labels` (None: not known) use an object with `selector`?
pub fn access(selector: Option<&NamespaceSelector>, labels: Option<&BTreeMap<String, String>>) -> Access {
    let Some(selector) = selector else {
        return Access::NoSelector;
    };
    let Some(labels) = labels else {
        return Access::UnknownNamespace;
    };
    match selector.matches(labels) {
        Ok(true) => Access::Allowed,
        Ok(false) => Access::NotSelected,
        Err(e) => Access::Malformed(e),
    }
}

/// A label selector in kubectl's syntax: comma-separated `k=v`, `k==v`, `k!=v`, `k in (a,b)`,
/// `k notin (a,b)`, `k`, `!k`. The empty text selects everything.
pub fn parse(text: &str) -> Result<NamespaceSelector, SelectorError> {
    if text.len() > MAX_ANNOTATION_LENGTH {
        return Err(SelectorError::TooMany(MAX_ANNOTATION_LENGTH, "characters"));
    }
    let mut out = NamespaceSelector::default();
    for part in split_top_level(text)? {
        let part = part.trim();
        if part.is_empty() {
            if text.trim().is_empty() {
                continue;
            }
            return Err(SelectorError::Syntax(text.chars().take(64).collect()));
        }
        if out.match_expressions.len() == MAX_EXPRESSIONS {
            return Err(SelectorError::TooMany(MAX_EXPRESSIONS, "requirements"));
        }
        out.match_expressions.push(requirement(part)?);
    }
    Ok(out)
}

/// Split at the commas outside parentheses.
fn split_top_level(text: &str) -> Result<Vec<&str>, SelectorError> {
    let (mut parts, mut depth, mut start) = (Vec::new(), 0u8, 0);
    for (i, c) in text.char_indices() {
        match c {
            '(' if depth == 0 => depth = 1,
            ')' if depth == 1 => depth = 0,
            '(' | ')' => return Err(SelectorError::Syntax(text.chars().take(64).collect())),
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err(SelectorError::Syntax(text.chars().take(64).collect()));
    }
    parts.push(&text[start..]);
    Ok(parts)
}

fn requirement(part: &str) -> Result<Requirement, SelectorError> {
    let syntax = || SelectorError::Syntax(part.chars().take(64).collect());
    let word = |s: &str, max: usize| {
        let s = s.trim();
        let ok = !s.is_empty() && s.len() <= max && !s.contains(|c: char| c.is_whitespace() || "=!(),".contains(c));
        if ok { Ok(s.to_string()) } else { Err(syntax()) }
    };
    let req = |key: &str, operator: &str, values: Vec<String>| -> Result<Requirement, SelectorError> {
        Ok(Requirement {
            key: word(key, MAX_KEY_LENGTH)?,
            operator: operator.into(),
            values,
        })
    };
    if let Some(key) = part.strip_prefix('!') {
        return req(key, "DoesNotExist", Vec::new());
    }
    if let Some((head, rest)) = part.split_once('(') {
        let inner = rest.strip_suffix(')').ok_or_else(syntax)?;
        let mut head = head.split_whitespace();
        let (Some(key), Some(op), None) = (head.next(), head.next(), head.next()) else {
            return Err(syntax());
        };
        let operator = match op {
            "in" => "In",
            "notin" => "NotIn",
            _ => return Err(syntax()),
        };
        let values: Vec<String> = inner
            .split(',')
            .map(|v| word(v, MAX_VALUE_LENGTH))
            .collect::<Result<_, _>>()?;
        if values.len() > MAX_VALUES {
            return Err(SelectorError::TooMany(MAX_VALUES, "values"));
        }
        return req(key, operator, values);
    }
    for (sep, operator) in [("!=", "NotIn"), ("==", "In"), ("=", "In")] {
        if let Some((key, value)) = part.split_once(sep) {
            return req(key, operator, vec![word(value, MAX_VALUE_LENGTH)?]);
        }
    }
    req(part, "Exists", Vec::new())
}

#[cfg(test)]
#[path = "selector_tests.rs"]
mod tests;
