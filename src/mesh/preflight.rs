//! Preflight: the Istio traps users meet, caught before any traffic moves. Pure: it reads a snapshot
//! of the objects and returns problems that say what to fix.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use serde_json::Value;

use super::routes::{check_route, managed_routes, resolve_host};
use crate::plan::Problem;
use crate::resources::policy::{RolloutPolicySpec, VersionRef};
use crate::resources::reason::Reason;

/// One VirtualService named by the policy, as read (None: not found).
pub struct VsSnapshot {
    pub namespace: String,
    pub name: String,
    pub routes: Option<Vec<String>>,
    pub object: Option<Value>,
}

/// What preflight looks at.
pub struct Snapshot<'a> {
    pub namespace: &'a str,
    pub service: Option<&'a Service>,
    pub stable: &'a VersionRef,
    pub stable_deployment: Option<&'a Deployment>,
    pub canary: Option<&'a VersionRef>,
    pub canary_deployment: Option<&'a Deployment>,
    /// The DestinationRule in the Service's namespace.
    pub destination_rule: Option<&'a Value>,
    /// DestinationRules of that name in other namespaces (the 503 trap): (namespace, spec.host).
    pub destination_rule_elsewhere: Vec<(String, String)>,
    pub virtual_services: &'a [VsSnapshot],
}

/// The managed routes of each VirtualService (same order as the snapshot), when preflight passes.
pub type ManagedRoutes = Vec<Vec<usize>>;

fn problem(reason: Reason, message: String) -> Problem {
    Problem { reason, message }
}

fn template_labels(d: &Deployment) -> BTreeMap<String, String> {
    d.spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default()
}

fn missing_labels(want: &BTreeMap<String, String>, have: &BTreeMap<String, String>) -> Vec<String> {
    want.iter()
        .filter(|(k, v)| have.get(*k) != Some(*v))
        .map(|(k, v)| format!("{k}={v}"))
        .collect()
}

pub fn check(spec: &RolloutPolicySpec, snap: &Snapshot<'_>) -> Result<ManagedRoutes, Vec<Problem>> {
    let ns = snap.namespace;
    let fqdn = spec.service_fqdn(ns);
    let mut problems = Vec::new();

    let selector = match snap.service {
        None => {
            problems.push(problem(
                Reason::ServiceNotFound,
                format!("Service {ns}/{} not found (spec.service)", spec.service),
            ));
            None
        }
        Some(svc) => svc.spec.as_ref().and_then(|s| s.selector.clone()),
    };

    let versions = [
        ("stable", Some(snap.stable), snap.stable_deployment),
        ("canary", snap.canary, snap.canary_deployment),
    ];
    for (role, version, deployment) in versions {
        let Some(version) = version else { continue };
        match deployment {
            None => problems.push(problem(
                Reason::DeploymentNotFound,
                format!(
                    "{role} Deployment {ns}/{} not found (spec.{role}.deployment)",
                    version.deployment
                ),
            )),
            Some(d) => {
                if let Some(selector) = &selector {
                    let missing = missing_labels(selector, &template_labels(d));
                    if !missing.is_empty() {
                        problems.push(problem(Reason::ServiceSelectsNoPods,
                            format!(
                                "Service {ns}/{} does not select the pods of {role} Deployment {}: its pod template lacks {}",
                                spec.service,
                                version.deployment,
                                missing.join(", ")
                            ),
                        ));
                    }
                }
            }
        }
    }

    let misplaced = misplaced_destination_rules(snap, &fqdn);
    match snap.destination_rule {
        None if !misplaced.is_empty() => problems.push(problem(
            Reason::DestinationRuleInWrongNamespace,
            format!(
                "DestinationRule {} is in namespace {} but must be in the Service's namespace {ns} \
                 (Istio ignores it there and requests to the subsets fail with 503); move it to {ns}",
                spec.destination_rule,
                misplaced.join(", ")
            ),
        )),
        None => problems.push(problem(
            Reason::DestinationRuleNotFound,
            format!(
                "DestinationRule {ns}/{} not found (spec.destinationRule)",
                spec.destination_rule
            ),
        )),
        Some(dr) => problems.extend(check_destination_rule(spec, snap, dr, &fqdn)),
    }

    let mut managed = Vec::new();
    for vs in snap.virtual_services {
        let id = format!("{}/{}", vs.namespace, vs.name);
        let Some(object) = &vs.object else {
            problems.push(problem(
                Reason::VirtualServiceNotFound,
                format!("VirtualService {id} not found (spec.virtualServices)"),
            ));
            managed.push(Vec::new());
            continue;
        };
        match managed_routes(object, &id, &vs.namespace, &fqdn, vs.routes.as_deref()) {
            Ok(indices) => {
                problems.extend(
                    indices
                        .iter()
                        .filter_map(|&i| check_route(object, &id, &vs.namespace, &fqdn, i, &snap.stable.subset)),
                );
                managed.push(indices);
            }
            Err(p) => {
                problems.extend(p);
                managed.push(Vec::new());
            }
        }
    }
    if problems.is_empty() {
        Ok(managed)
    } else {
        Err(problems)
    }
}

/// The namespaces of the same-named DestinationRules elsewhere that were meant for this Service:
/// one next to a VirtualService of the policy, or one whose host resolves to the Service. Another
/// team's rule of the same name is none of our business.
fn misplaced_destination_rules(snap: &Snapshot<'_>, fqdn: &str) -> Vec<String> {
    let mut out: Vec<String> = snap
        .destination_rule_elsewhere
        .iter()
        .filter(|(dr_ns, host)| {
            snap.virtual_services.iter().any(|vs| &vs.namespace == dr_ns) || resolve_host(host, dr_ns) == fqdn
        })
        .map(|(dr_ns, _)| dr_ns.clone())
        .collect();
    out.sort();
    out.dedup();
    out
}

fn check_destination_rule(spec: &RolloutPolicySpec, snap: &Snapshot<'_>, dr: &Value, fqdn: &str) -> Vec<Problem> {
    let ns = snap.namespace;
    let id = format!("{ns}/{}", spec.destination_rule);
    let mut problems = Vec::new();
    let host = dr.pointer("/spec/host").and_then(Value::as_str).unwrap_or("");
    let resolved = resolve_host(host, ns);
    if resolved != fqdn {
        problems.push(problem(Reason::DestinationRuleHostMismatch,
            format!("DestinationRule {id} host {host:?} resolves to {resolved}, not the Service {fqdn}; write `host: {fqdn}`"),
        ));
    }
    let subsets = dr
        .pointer("/spec/subsets")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    let versions = [
        ("stable", Some(snap.stable), snap.stable_deployment),
        ("canary", snap.canary, snap.canary_deployment),
    ];
    for (role, version, deployment) in versions {
        let Some(version) = version else { continue };
        let found = subsets
            .iter()
            .find(|s| s.get("name").and_then(Value::as_str) == Some(version.subset.as_str()));
        let Some(subset) = found else {
            let names: Vec<&str> = subsets
                .iter()
                .filter_map(|s| s.get("name").and_then(Value::as_str))
                .collect();
            problems.push(problem(
                Reason::SubsetNotFound,
                format!(
                    "DestinationRule {id} has no subset {:?} for the {role} (it has: {})",
                    version.subset,
                    if names.is_empty() {
                        "none".to_string()
                    } else {
                        names.join(", ")
                    }
                ),
            ));
            continue;
        };
        let labels: BTreeMap<String, String> = subset
            .get("labels")
            .and_then(|l| serde_json::from_value(l.clone()).ok())
            .unwrap_or_default();
        if let Some(d) = deployment {
            let missing = missing_labels(&labels, &template_labels(d));
            if !missing.is_empty() {
                problems.push(problem(
                    Reason::SubsetSelectsNoPods,
                    format!(
                        "DestinationRule {id} subset {:?} selects {} but the pods of {role} Deployment {} lack {}",
                        version.subset,
                        labels
                            .iter()
                            .map(|(k, v)| format!("{k}={v}"))
                            .collect::<Vec<_>>()
                            .join(","),
                        version.deployment,
                        missing.join(", ")
                    ),
                ));
            }
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::policy::VirtualServiceRef;

    fn v(subset: &str) -> VersionRef {
        VersionRef {
            subset: subset.into(),
            deployment: format!("app-{subset}"),
        }
    }

    fn spec() -> RolloutPolicySpec {
        RolloutPolicySpec {
            service: "app".into(),
            virtual_services: vec![VirtualServiceRef {
                name: "app".into(),
                namespace: Some("gw".into()),
                routes: None,
            }],
            destination_rule: "app-dr".into(),
            stable: v("v1"),
            canary: None,
            steps: Vec::new(),
            schedule: None,
            progress_deadline: std::time::Duration::from_secs(60),
            analysis: None,
            webhooks: Vec::new(),
            scaling: Default::default(),
            notifications: Vec::new(),
        }
    }

    /// The DestinationRule problem reported for DestinationRules of the same name elsewhere.
    fn dr_problem(elsewhere: &[(&str, &str)]) -> Problem {
        let spec = spec();
        let vss = [VsSnapshot {
            namespace: "gw".into(),
            name: "app".into(),
            routes: None,
            object: None,
        }];
        let snap = Snapshot {
            namespace: "dev",
            service: None,
            stable: &spec.stable,
            stable_deployment: None,
            canary: None,
            canary_deployment: None,
            destination_rule: None,
            destination_rule_elsewhere: elsewhere
                .iter()
                .map(|(ns, host)| (ns.to_string(), host.to_string()))
                .collect(),
            virtual_services: &vss,
        };
        let problems = check(&spec, &snap).unwrap_err();
        problems
            .into_iter()
            .find(|p| p.reason.as_str().starts_with("DestinationRule"))
            .unwrap()
    }

    #[test]
    fn wrong_namespace_names_only_the_rule_that_applies() {
        const FQDN: &str = "app.dev.svc.cluster.local";
        type Case<'a> = (&'a [(&'a str, &'a str)], &'a str, &'a [&'a str], &'a [&'a str]);
        let cases: [Case; 5] = [
            // Next to the VirtualService: meant for us.
            (
                &[("gw", "app")],
                "DestinationRuleInWrongNamespace",
                &["namespace gw "],
                &[],
            ),
            // Another team's rule of the same name, for their own `app`: not ours to name.
            (
                &[("gw", "app"), ("team-b", "app")],
                "DestinationRuleInWrongNamespace",
                &["namespace gw "],
                &["team-b"],
            ),
            // Host resolves to our Service from wherever it is.
            (
                &[("ops", FQDN), ("team-b", "app")],
                "DestinationRuleInWrongNamespace",
                &["namespace ops "],
                &["team-b"],
            ),
            (
                &[("team-b", "app"), ("team-c", "other.team-c.svc.cluster.local")],
                "DestinationRuleNotFound",
                &["dev/app-dr"],
                &["team-b", "team-c"],
            ),
            (&[], "DestinationRuleNotFound", &["dev/app-dr"], &[]),
        ];
        for (elsewhere, reason, has, lacks) in cases {
            let p = dr_problem(elsewhere);
            assert_eq!(p.reason, reason, "{elsewhere:?}: {}", p.message);
            for s in has {
                assert!(p.message.contains(s), "{elsewhere:?}: {} lacks {s}", p.message);
            }
            for s in lacks {
                assert!(!p.message.contains(s), "{elsewhere:?}: {} names {s}", p.message);
            }
        }
    }
}
