//! VirtualService routes: which ones canaryd manages, their current weights, and the guarded JSON
//! Patch that changes those weights and nothing else.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::plan::Problem;
use crate::resources::reason::Reason;

/// How Istio resolves a destination host written in a VirtualService of `namespace`: a name without
/// a dot is short for `<name>.<namespace>.svc.cluster.local`; anything with a dot is taken as is.
pub fn resolve_host(host: &str, namespace: &str) -> String {
    if host.contains('.') || host == "*" {
        host.to_string()
    } else {
        format!("{host}.{namespace}.svc.cluster.local")
    }
}

fn problem(reason: Reason, message: String) -> Problem {
    Problem { reason, message }
}

fn http_routes(vs: &Value) -> &[Value] {
    vs.pointer("/spec/http")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

fn destinations(route: &Value) -> &[Value] {
    route
        .get("route")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

fn dest_host(d: &Value) -> &str {
    d.pointer("/destination/host").and_then(Value::as_str).unwrap_or("")
}

fn dest_subset(d: &Value) -> &str {
    d.pointer("/destination/subset").and_then(Value::as_str).unwrap_or("")
}

fn has_match(route: &Value) -> bool {
    route
        .get("match")
        .and_then(Value::as_array)
        .is_some_and(|m| !m.is_empty())
}

fn route_label(route: &Value, index: usize) -> String {
    match route.get("name").and_then(Value::as_str) {
        Some(name) => format!("route {name:?}"),
        None => format!("http[{index}]"),
    }
}

/// The indices of the http routes canaryd manages in this VirtualService.
///
/// `names` given: exactly those routes. Otherwise every route without a `match` that sends traffic to
/// the Service. A route that would qualify but for a host resolving elsewhere is the short-name trap:
/// it is reported with the FQDN to write instead.
pub fn managed_routes(
    vs: &Value,
    vs_id: &str,
    vs_namespace: &str,
    service_fqdn: &str,
    names: Option<&[String]>,
) -> Result<Vec<usize>, Vec<Problem>> {
    let routes = http_routes(vs);
    let mut problems = Vec::new();
    let sends_to_service = |route: &Value| {
        destinations(route)
            .iter()
            .any(|d| resolve_host(dest_host(d), vs_namespace) == service_fqdn)
    };
    let service_name = service_fqdn.split('.').next().unwrap_or_default();
    // The short-name trap: `host: app` in a VirtualService of another namespace.
    let trap = |route: &Value, index: usize| {
        destinations(route).iter().find_map(|d| {
            let host = dest_host(d);
            let resolved = resolve_host(host, vs_namespace);
            let looks_like_service = host == service_name || host.split('.').next() == Some(service_name);
            (resolved != service_fqdn && looks_like_service).then(|| {
                problem(Reason::HostResolvesElsewhere,
                    format!(
                        "VirtualService {vs_id} {}: host {host:?} resolves to {resolved}, not the Service {service_fqdn}; \
                         write the FQDN `host: {service_fqdn}`",
                        route_label(route, index)
                    ),
                )
            })
        })
    };
    let indices: Vec<usize> = match names {
        Some(names) => {
            let mut out = Vec::new();
            for name in names {
                let found = routes
                    .iter()
                    .position(|r| r.get("name").and_then(Value::as_str) == Some(name.as_str()));
                match found {
                    Some(i) if sends_to_service(&routes[i]) => out.push(i),
                    Some(i) => problems.push(trap(&routes[i], i).unwrap_or_else(|| {
                        problem(Reason::RouteNotToService,
                            format!(
                                "VirtualService {vs_id} route {name:?} has no destination for the Service {service_fqdn}"
                            ),
                        )
                    })),
                    None => {
                        let known: Vec<String> =
                            routes.iter().enumerate().map(|(i, r)| route_label(r, i)).collect();
                        problems.push(problem(Reason::RouteNotFound,
                            format!(
                                "VirtualService {vs_id} has no http route named {name:?} (it has: {})",
                                if known.is_empty() { "none".to_string() } else { known.join(", ") }
                            ),
                        ));
                    }
                }
            }
            out
        }
        None => {
            let out: Vec<usize> = (0..routes.len())
                .filter(|&i| !has_match(&routes[i]) && sends_to_service(&routes[i]))
                .collect();
            if out.is_empty() {
                let hint = (0..routes.len())
                    .filter(|&i| !has_match(&routes[i]))
                    .find_map(|i| trap(&routes[i], i));
                problems.push(hint.unwrap_or_else(|| {
                    problem(Reason::NoManagedRoute,
                        format!(
                            "VirtualService {vs_id} has no http route without a match that sends traffic to {service_fqdn}; \
                             add one or name the routes in spec.virtualServices[].routes"
                        ),
                    )
                }));
            }
            out
        }
    };
    if problems.is_empty() {
        Ok(indices)
    } else {
        Err(problems)
    }
}

/// Weights by subset of the Service's destinations in one route. A lone destination without a
/// weight carries all traffic, as in Istio.
pub fn route_weights(route: &Value, vs_namespace: &str, service_fqdn: &str) -> BTreeMap<String, u8> {
    let all = destinations(route);
    all.iter()
        .filter(|d| resolve_host(dest_host(d), vs_namespace) == service_fqdn)
        .map(|d| {
            let weight = match d.get("weight").and_then(Value::as_u64) {
                Some(w) => u8::try_from(w.min(100)).unwrap_or(100),
                None if all.len() == 1 => 100,
                None => 0,
            };
            (dest_subset(d).to_string(), weight)
        })
        .collect()
}

/// The http routes of a VirtualService that send `subset` of the Service traffic (a weight above
/// 0, or the only destination, without a weight), as "route \"name\"" or "http[i]" with the weight.
pub fn routes_sending_to(vs: &Value, vs_namespace: &str, service_fqdn: &str, subset: &str) -> Vec<(String, u8)> {
    http_routes(vs)
        .iter()
        .enumerate()
        .filter_map(|(i, route)| {
            let weight = route_weights(route, vs_namespace, service_fqdn).get(subset).copied()?;
            (weight > 0).then(|| (route_label(route, i), weight))
        })
        .collect()
}

/// Checks on a managed route that must hold before canaryd writes weights into it.
pub fn check_route(
    vs: &Value,
    vs_id: &str,
    vs_namespace: &str,
    service_fqdn: &str,
    index: usize,
    stable: &str,
) -> Option<Problem> {
    let route = http_routes(vs).get(index)?;
    let label = route_label(route, index);
    let others: u64 = destinations(route)
        .iter()
        .filter(|d| resolve_host(dest_host(d), vs_namespace) != service_fqdn)
        .filter_map(|d| d.get("weight").and_then(Value::as_u64))
        .sum();
    if others > 0 {
        return Some(problem(
            Reason::ForeignDestination,
            format!(
                "VirtualService {vs_id} {label} sends {others}% to hosts other than {service_fqdn}; \
                 canaryd only manages routes whose weighted traffic all goes to the Service"
            ),
        ));
    }
    if !route_weights(route, vs_namespace, service_fqdn).contains_key(stable) {
        return Some(problem(
            Reason::StableDestinationMissing,
            format!("VirtualService {vs_id} {label} has no destination for the stable subset {stable:?}"),
        ));
    }
    None
}

/// The JSON Patch that sets the weights of the managed routes, or None when they already are.
///
/// Every write is guarded: the resourceVersion, and for each touched destination its host and subset,
/// so a concurrent edit or a reordered route makes the patch fail instead of writing the wrong weight.
pub fn weight_patch(
    vs: &Value,
    vs_namespace: &str,
    service_fqdn: &str,
    indices: &[usize],
    stable: &str,
    canary: Option<&str>,
    canary_weight: u8,
) -> Option<Value> {
    let routes = http_routes(vs);
    let mut ops = Vec::new();
    for &i in indices {
        let Some(route) = routes.get(i) else { continue };
        let all = destinations(route);
        let mut canary_seen = false;
        let mut stable_dest = None;
        for (j, d) in all.iter().enumerate() {
            let host = dest_host(d);
            if resolve_host(host, vs_namespace) != service_fqdn {
                continue;
            }
            let subset = dest_subset(d);
            let want = if Some(subset) == canary {
                canary_seen = true;
                canary_weight
            } else if subset == stable {
                stable_dest = Some(d);
                100 - canary_weight
            } else {
                0
            };
            let current = d.get("weight").and_then(Value::as_u64);
            let implicit = current.is_none() && all.len() == 1 && want == 100;
            if current == Some(u64::from(want)) || implicit {
                continue;
            }
            if current.is_none() && want == 0 {
                continue;
            }
            let base = format!("/spec/http/{i}/route/{j}");
            ops.push(json!({"op": "test", "path": format!("{base}/destination/host"), "value": host}));
            ops.push(json!({"op": "test", "path": format!("{base}/destination/subset"), "value": subset}));
            ops.push(json!({"op": "add", "path": format!("{base}/weight"), "value": want}));
        }
        if let (Some(canary), false, Some(stable_dest)) = (canary, canary_seen, stable_dest) {
            // Users may keep a plain 100 %-to-stable route in Git: add the canary next to stable,
            // at the same host and port (a gateway or multi-port route names the port).
            let mut destination = json!({"host": dest_host(stable_dest), "subset": canary});
            if let Some(port) = stable_dest.pointer("/destination/port") {
                destination["port"] = port.clone();
            }
            ops.push(json!({
                "op": "add",
                "path": format!("/spec/http/{i}/route/-"),
                "value": {"destination": destination, "weight": canary_weight}
            }));
        }
    }
    if ops.is_empty() {
        return None;
    }
    let rv = vs.pointer("/metadata/resourceVersion").cloned().unwrap_or(Value::Null);
    let mut patch = vec![json!({"op": "test", "path": "/metadata/resourceVersion", "value": rv})];
    patch.extend(ops);
    Some(Value::Array(patch))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FQDN: &str = "istio-test.dev.svc.cluster.local";

    fn apply(doc: &mut Value, patch: Value) -> Result<(), json_patch::PatchError> {
        let patch: json_patch::Patch = serde_json::from_value(patch).unwrap();
        json_patch::patch(doc, &patch)
    }

    fn seed_vs() -> Value {
        json!({
            "metadata": {"name": "istio-test-vs", "namespace": "default", "resourceVersion": "7"},
            "spec": {
                "hosts": ["istio-test.dev.svc.cluster.local"],
                "http": [
                    {"match": [{"headers": {"user": {"exact": "zhj1"}}}],
                     "route": [{"destination": {"host": FQDN, "subset": "v1"}}],
                     "retries": {"attempts": 3, "perTryTimeout": "2s"}},
                    {"name": "primary",
                     "route": [{"destination": {"host": FQDN, "subset": "v1"}}],
                     "timeout": "10s"}
                ]
            }
        })
    }

    #[test]
    fn host_resolution_follows_istio() {
        let cases = [
            ("istio-test", "default", "istio-test.default.svc.cluster.local"),
            ("istio-test", "dev", "istio-test.dev.svc.cluster.local"),
            (
                "istio-test.dev.svc.cluster.local",
                "default",
                "istio-test.dev.svc.cluster.local",
            ),
            ("istio-test.dev", "default", "istio-test.dev"),
            ("*", "default", "*"),
        ];
        for (host, ns, want) in cases {
            assert_eq!(resolve_host(host, ns), want, "{host} in {ns}");
        }
    }

    #[test]
    fn selects_unmatched_routes_to_the_service() {
        assert_eq!(
            managed_routes(&seed_vs(), "default/vs", "default", FQDN, None),
            Ok(vec![1])
        );
        assert_eq!(
            managed_routes(
                &seed_vs(),
                "default/vs",
                "default",
                FQDN,
                Some(&["primary".to_string()])
            ),
            Ok(vec![1])
        );
        let err = managed_routes(&seed_vs(), "default/vs", "default", FQDN, Some(&["nope".to_string()])).unwrap_err();
        assert_eq!(err[0].reason, "RouteNotFound");
        assert!(err[0].message.contains("route \"primary\""), "{}", err[0].message);
    }

    #[test]
    fn short_host_in_another_namespace_is_the_trap() {
        let mut vs = seed_vs();
        vs["spec"]["http"][1]["route"][0]["destination"]["host"] = json!("istio-test");
        let err = managed_routes(&vs, "default/vs", "default", FQDN, None).unwrap_err();
        assert_eq!(err[0].reason, "HostResolvesElsewhere");
        assert!(err[0].message.contains("istio-test.default.svc.cluster.local"));
        assert!(err[0].message.contains("host: istio-test.dev.svc.cluster.local"));
    }

    #[test]
    fn patch_adds_the_canary_and_touches_only_weights() {
        let vs = seed_vs();
        let patch = weight_patch(&vs, "default", FQDN, &[1], "v1", Some("v2"), 10).unwrap();
        let mut patched = vs.clone();
        apply(&mut patched, patch).unwrap();
        let route = &patched["spec"]["http"][1];
        assert_eq!(
            route_weights(route, "default", FQDN),
            BTreeMap::from([("v1".into(), 90), ("v2".into(), 10)])
        );
        assert_eq!(route["timeout"], "10s");
        assert_eq!(patched["spec"]["http"][0], vs["spec"]["http"][0]);
        // Applying the same weights again is a no-op.
        assert_eq!(
            weight_patch(&patched, "default", FQDN, &[1], "v1", Some("v2"), 10),
            None
        );
        // Back to stable keeps the canary destination at 0.
        let back = weight_patch(&patched, "default", FQDN, &[1], "v1", Some("v2"), 0).unwrap();
        apply(&mut patched, back).unwrap();
        assert_eq!(
            route_weights(&patched["spec"]["http"][1], "default", FQDN),
            BTreeMap::from([("v1".into(), 100), ("v2".into(), 0)])
        );
    }

    #[test]
    fn added_canary_copies_the_stable_port() {
        let mut vs = seed_vs();
        vs["spec"]["http"][1]["route"][0]["destination"]["port"] = json!({"number": 8080});
        let patch = weight_patch(&vs, "default", FQDN, &[1], "v1", Some("v2"), 10).unwrap();
        let mut patched = vs.clone();
        apply(&mut patched, patch).unwrap();
        let added = &patched["spec"]["http"][1]["route"][1];
        assert_eq!(
            added["destination"],
            json!({"host": FQDN, "subset": "v2", "port": {"number": 8080}})
        );
        assert_eq!(added["weight"], 10);
        // Without a port on stable, none is invented.
        let patch = weight_patch(&seed_vs(), "default", FQDN, &[1], "v1", Some("v2"), 10).unwrap();
        let mut patched = seed_vs();
        apply(&mut patched, patch).unwrap();
        assert_eq!(
            patched["spec"]["http"][1]["route"][1]["destination"],
            json!({"host": FQDN, "subset": "v2"})
        );
    }

    #[test]
    fn routes_still_sending_to_a_subset() {
        let mut vs = seed_vs();
        // After a promotion: primary sends all to v2, the header route still all to v1.
        vs["spec"]["http"][1]["route"] = json!([
            {"destination": {"host": FQDN, "subset": "v1"}, "weight": 0},
            {"destination": {"host": FQDN, "subset": "v2"}, "weight": 100}
        ]);
        assert_eq!(
            routes_sending_to(&vs, "default", FQDN, "v1"),
            vec![("http[0]".to_string(), 100)]
        );
        assert_eq!(
            routes_sending_to(&vs, "default", FQDN, "v2"),
            vec![("route \"primary\"".to_string(), 100)]
        );
        // Another Service's v1 is not ours.
        assert!(routes_sending_to(&vs, "default", "other.dev.svc.cluster.local", "v1").is_empty());
        vs["spec"]["http"][0]["route"][0]["destination"]["subset"] = json!("v2");
        assert!(routes_sending_to(&vs, "default", FQDN, "v1").is_empty());
    }

    #[test]
    fn patch_is_guarded() {
        let vs = seed_vs();
        let patch = weight_patch(&vs, "default", FQDN, &[1], "v1", Some("v2"), 50).unwrap();
        // Someone reordered the route's destinations: the guard fails instead of writing a wrong weight.
        let mut edited = vs.clone();
        edited["spec"]["http"][1]["route"][0]["destination"]["subset"] = json!("v9");
        assert!(apply(&mut edited, patch.clone()).is_err());
        // A newer resourceVersion fails the guard too.
        let mut newer = vs.clone();
        newer["metadata"]["resourceVersion"] = json!("8");
        assert!(apply(&mut newer, patch).is_err());
    }

    #[test]
    fn foreign_weighted_destination_is_refused() {
        let mut vs = seed_vs();
        vs["spec"]["http"][1]["route"] = json!([
            {"destination": {"host": FQDN, "subset": "v1"}, "weight": 80},
            {"destination": {"host": "other.dev.svc.cluster.local"}, "weight": 20}
        ]);
        assert_eq!(
            check_route(&vs, "default/vs", "default", FQDN, 1, "v1").unwrap().reason,
            "ForeignDestination"
        );
        assert_eq!(check_route(&seed_vs(), "default/vs", "default", FQDN, 1, "v1"), None);
        assert_eq!(
            check_route(&seed_vs(), "default/vs", "default", FQDN, 1, "v3")
                .unwrap()
                .reason,
            "StableDestinationMissing"
        );
    }
}
