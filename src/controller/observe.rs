//! Observe: read what the world looks like now, for the planner.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use kube::ResourceExt;
use serde_json::Value;

use crate::analysis::check::Check;
use crate::cache::Caches;
use crate::cache::slim::template_hash;
use crate::error::Result;
use crate::mesh::preflight::{self, Snapshot, VsSnapshot};
use crate::mesh::routes::{managed_routes, route_weights, routes_sending_to};
use crate::plan::{DeploymentState, Observed, Problem, ScaleObserved, VersionScale, declared_stable};
use crate::resources::command;
use crate::resources::policy::RolloutPolicy;
use crate::resources::reason::Reason;
use crate::scale::hpa;

pub fn deployment_state(d: &Deployment) -> DeploymentState {
    let replicas = hpa::replica_state(d);
    DeploymentState {
        template_hash: template_hash(d),
        generation_observed: replicas.generation_observed,
        ready_replicas: replicas.ready_replicas,
    }
}

/// The VirtualServices a policy names, with their namespaces resolved.
pub fn vs_refs(policy: &RolloutPolicy) -> Vec<(String, String, Option<Vec<String>>)> {
    let ns = policy.namespace().unwrap_or_default();
    policy
        .spec
        .virtual_services
        .iter()
        .map(|v| {
            (
                v.namespace.clone().unwrap_or_else(|| ns.clone()),
                v.name.clone(),
                v.routes.clone(),
            )
        })
        .collect()
}

/// What the planner needs, plus each Deployment's `version` label (for analysis queries).
pub struct Observation {
    pub observed: Observed,
    pub versions: BTreeMap<String, String>,
}

fn version_label(d: &Deployment) -> Option<(String, String)> {
    let labels = d.spec.template.metadata.as_ref()?.labels.as_ref()?;
    Some((d.name_any(), labels.get("version")?.clone()))
}

/// HPAs and Deployments read fresh from the API, for the one reconcile that records the originals:
/// a cache could still hold bounds canaryd itself set a moment ago.
pub struct Fresh {
    pub hpas: Vec<HorizontalPodAutoscaler>,
    pub deployments: Vec<Deployment>,
}

impl Fresh {
    /// Only when a rollout is wanted and no originals are recorded yet.
    pub async fn read_if_recording(client: &kube::Client, policy: &RolloutPolicy) -> Result<Option<Fresh>> {
        let status = policy.status.as_ref();
        let stable = &status.map_or_else(|| policy.spec.stable.clone(), |s| declared_stable(&policy.spec, s));
        let halted = status
            .and_then(|s| s.canary.as_ref())
            .is_some_and(|c| c.halted.is_some());
        let wanted = !halted && policy.spec.canary.as_ref().is_some_and(|c| c.subset != stable.subset);
        if !policy.spec.scaling.enabled || !wanted || status.is_some_and(|s| s.scaling.is_some()) {
            return Ok(None);
        }
        let ns = policy.namespace().unwrap_or_default();
        let lp = kube::api::ListParams::default();
        let hpas = kube::Api::<HorizontalPodAutoscaler>::namespaced(client.clone(), &ns)
            .list(&lp)
            .await?;
        // The two Deployments by name: a list would read every Deployment of the namespace.
        let api = kube::Api::<Deployment>::namespaced(client.clone(), &ns);
        let mut deployments = Vec::new();
        let canary = policy.spec.canary.as_ref().map(|c| c.deployment.as_str());
        for name in std::iter::once(stable.deployment.as_str()).chain(canary) {
            deployments.extend(api.get_opt(name).await?);
        }
        Ok(Some(Fresh {
            hpas: hpas.items,
            deployments,
        }))
    }
}

/// Reads from the caches (and `fresh`, when given): observing costs no API call otherwise.
pub fn observe(
    caches: &Caches,
    policy: &RolloutPolicy,
    analysis: Option<Check>,
    fresh: Option<Fresh>,
) -> Result<Observation> {
    let ns = policy.namespace().unwrap_or_default();
    let spec = &policy.spec;
    // The stable the planner will use: never one the spec no longer names.
    let stable = policy
        .status
        .as_ref()
        .map_or_else(|| spec.stable.clone(), |s| declared_stable(spec, s));
    let canary = spec.canary.clone().filter(|c| c.subset != stable.subset);

    let service = caches.service(&ns, &spec.service);
    let deployment = |name: &str| match &fresh {
        Some(f) => f
            .deployments
            .iter()
            .find(|d| d.name_any() == name)
            .cloned()
            .map(std::sync::Arc::new),
        None => caches.deployment(&ns, name),
    };
    let stable_dep = deployment(&stable.deployment);
    let canary_dep = canary.as_ref().and_then(|c| deployment(&c.deployment));
    let dr = caches.destination_rule(&ns, &spec.destination_rule);
    let dr = dr.map(|d| d.to_value()).transpose()?;
    let elsewhere = match dr {
        Some(_) => Vec::new(),
        None => caches
            .destination_rules
            .state()
            .iter()
            .filter_map(|d| d.ok())
            .filter(|d| d.metadata.name.as_deref() == Some(spec.destination_rule.as_str()))
            .filter_map(|d| {
                let value = d.to_value().ok()?;
                let host = value.pointer("/spec/host").and_then(Value::as_str).unwrap_or_default();
                Some((d.namespace()?, host.to_string()))
            })
            .collect(),
    };
    let mut vss = Vec::new();
    for (vs_ns, name, routes) in vs_refs(policy) {
        let object = caches.virtual_service(&vs_ns, &name);
        vss.push(VsSnapshot {
            namespace: vs_ns,
            name,
            routes,
            object: object.map(|o| o.to_value()).transpose()?,
        });
    }

    let without_canary = Snapshot {
        namespace: &ns,
        service: service.as_deref(),
        stable: &stable,
        stable_deployment: stable_dep.as_deref(),
        canary: None,
        canary_deployment: None,
        destination_rule: dr.as_ref(),
        destination_rule_elsewhere: elsewhere.clone(),
        virtual_services: &vss,
    };
    let snapshot = Snapshot {
        namespace: &ns,
        service: service.as_deref(),
        stable: &stable,
        stable_deployment: stable_dep.as_deref(),
        canary: canary.as_ref(),
        canary_deployment: canary_dep.as_deref(),
        destination_rule: dr.as_ref(),
        destination_rule_elsewhere: elsewhere,
        virtual_services: &vss,
    };
    let fqdn = spec.service_fqdn(&ns);
    // The problems that only the canary causes say it cannot serve (see `Observed::canary_problems`);
    // the routes are read whenever they can be, so a rollout in trouble still knows its weights.
    let (problems, canary_problems) = match preflight::check(spec, &snapshot) {
        Ok(_) => (Vec::new(), Vec::new()),
        Err(all) => {
            let rest = preflight::check(spec, &without_canary).err().unwrap_or_default();
            let canary_only = all.into_iter().filter(|p| !rest.contains(p)).collect();
            (rest, canary_only)
        }
    };
    let routes = readable_weights(&vss, &fqdn);
    // Commands come as RolloutCommands (set by the controller after admission), never annotations.
    let command = None;
    let command_error = policy.annotations().get(command::LEGACY_ANNOTATION).map(|_| {
        format!(
            "annotation {} is ignored: commands are RolloutCommands now (`canaryd promote` creates one)",
            command::LEGACY_ANNOTATION
        )
    });
    let (scaling, scale_problems) = if spec.scaling.enabled {
        let hpas: Vec<HorizontalPodAutoscaler> = match fresh {
            Some(f) => f.hpas,
            None => caches
                .hpas
                .state()
                .iter()
                .filter_map(|h| h.ok())
                .filter(|h| h.namespace().as_deref() == Some(ns.as_str()))
                .cloned()
                .collect(),
        };
        scale_observed(&hpas, policy, &ns, stable_dep.as_deref(), canary_dep.as_deref())
    } else {
        (ScaleObserved::default(), Vec::new())
    };
    let mut problems = problems;
    problems.extend(scale_problems);
    if let Some(name) = spec.analysis.as_ref().and_then(|a| a.provider.as_deref())
        && let Err(rejected) = caches.provider(name)
    {
        // Never a fallback to another Prometheus: the policy waits for its provider.
        let message = match rejected {
            None => format!("spec.analysis.provider: MetricProvider {name:?} does not exist"),
            Some(why) => {
                format!("spec.analysis.provider: MetricProvider {name:?} is rejected (cannot be decoded: {why})")
            }
        };
        problems.push(Problem {
            reason: Reason::InvalidSpec,
            message,
        });
    }
    let versions = [stable_dep.as_deref(), canary_dep.as_deref()]
        .into_iter()
        .flatten()
        .filter_map(version_label)
        .collect();
    Ok(Observation {
        observed: Observed {
            generation: policy.metadata.generation,
            problems,
            canary_problems,
            canary: canary_dep.as_deref().map(deployment_state),
            stable: stable_dep.as_deref().map(deployment_state),
            routes,
            command,
            command_error,
            analysis,
            scaling,
            old_stable_routes: old_stable_routes(caches, policy, &fqdn),
            hooks: Vec::new(),
        },
        versions,
    })
}

/// The weights of every managed route, or none when a VirtualService or its routes cannot be read.
fn readable_weights(vss: &[VsSnapshot], fqdn: &str) -> Vec<BTreeMap<String, u8>> {
    let managed: Option<Vec<Vec<usize>>> = vss
        .iter()
        .map(|vs| {
            let id = format!("{}/{}", vs.namespace, vs.name);
            let object = vs.object.as_ref()?;
            managed_routes(object, &id, &vs.namespace, fqdn, vs.routes.as_deref()).ok()
        })
        .collect();
    managed.map(|m| current_weights(vss, &m, fqdn)).unwrap_or_default()
}

/// While a scale-down is pending: every route of any cached VirtualService that still sends the
/// old stable's subset of this Service traffic.
fn old_stable_routes(caches: &Caches, policy: &RolloutPolicy, fqdn: &str) -> Vec<String> {
    let pending = policy
        .status
        .as_ref()
        .and_then(|s| s.scaling.as_ref())
        .and_then(|s| s.scale_down.as_ref())
        .and_then(|d| d.subset.clone());
    let Some(subset) = pending else { return Vec::new() };
    let mut out = Vec::new();
    for vs in caches.virtual_services.state() {
        let Some(vs) = vs.ok() else { continue };
        let vs_ns = vs.namespace().unwrap_or_default();
        let Ok(value) = vs.to_value() else { continue };
        for (route, weight) in routes_sending_to(&value, &vs_ns, fqdn, &subset) {
            out.push(format!("VirtualService {vs_ns}/{} {route} ({weight}%)", vs.name_any()));
        }
    }
    out.sort();
    out
}

fn current_weights(vss: &[VsSnapshot], managed: &[Vec<usize>], fqdn: &str) -> Vec<BTreeMap<String, u8>> {
    vss.iter()
        .zip(managed)
        .flat_map(|(vs, indices)| {
            let http = vs
                .object
                .as_ref()
                .and_then(|o| o.pointer("/spec/http"))
                .and_then(Value::as_array);
            indices
                .iter()
                .filter_map(move |&i| http.and_then(|h| h.get(i)))
                .map(|route| route_weights(route, &vs.namespace, fqdn))
        })
        .collect()
}

/// Replicas and HPA of each version, from the cached HPAs of the namespace.
fn scale_observed(
    all: &[HorizontalPodAutoscaler],
    policy: &RolloutPolicy,
    ns: &str,
    stable: Option<&Deployment>,
    canary: Option<&Deployment>,
) -> (ScaleObserved, Vec<Problem>) {
    let scaling = &policy.spec.scaling;
    let named = |deployment: &str| {
        if deployment == policy.spec.stable.deployment {
            scaling.stable_hpa.as_deref()
        } else if policy.spec.canary.as_ref().is_some_and(|c| c.deployment == deployment) {
            scaling.canary_hpa.as_deref()
        } else {
            None
        }
    };
    let mut problems = Vec::new();
    let mut version = |d: &Deployment| {
        let name = d.name_any();
        let found: Vec<&HorizontalPodAutoscaler> = all
            .iter()
            .filter(|h| match named(&name) {
                Some(n) => h.name_any() == n,
                None => hpa::targets_deployment(h, &name),
            })
            .collect();
        match (named(&name), found.len()) {
            (Some(n), 0) => problems.push(Problem {
                reason: Reason::HpaNotFound,
                message: format!("HorizontalPodAutoscaler {ns}/{n} named in spec.scaling not found"),
            }),
            (None, 2..) => problems.push(Problem {
                reason: Reason::AmbiguousHpa,
                message: format!(
                    "HorizontalPodAutoscalers {} all scale Deployment {name}; name one in spec.scaling",
                    found.iter().map(|h| h.name_any()).collect::<Vec<_>>().join(", ")
                ),
            }),
            _ => {}
        }
        let hpa = found.first().map(|h| (h.name_any(), hpa::bounds(h)));
        let state = hpa::replica_state(d);
        VersionScale {
            deployment: name,
            hpa,
            spec_replicas: state.spec_replicas,
            ready_replicas: state.ready_replicas,
        }
    };
    let observed = ScaleObserved {
        stable: stable.map(&mut version),
        canary: canary.map(&mut version),
    };
    (observed, problems)
}
