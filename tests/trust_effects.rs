//! Side effects at the edges, on the bed (real kube-apiserver 1.37 with its admission, the real
//! controllers and kwok's node, the daemon as a real process with exactly the RBAC of deploy/):
//! a write the API refuses is reported, the finalizer finishes when what it would restore is gone,
//! an added canary destination keeps the route's port, a still-routed old stable is not scaled down,
//! a person's change of an HPA bound survives the restore.

mod fixture;
mod support;

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use canaryd::resources::policy::{Phase, RolloutPolicy};
use fixture::scaling::{CANARY, Hpas, STABLE, STABLE_REPLICAS, seed_with_pods};
use fixture::{Seed, cli, ensure, start_daemon};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(30);
const VS: &str = "istio-test-vs";
const POLICY: &str = "istio-test";

fn phase(p: &RolloutPolicy) -> Phase {
    p.status.as_ref().map(|s| s.phase).unwrap_or_default()
}

/// The seed policy with `second_pause` between 50 and 100 and `scaleDownDelay`.
fn policy(seed: &Seed, second_pause: &str, scale_down_delay: &str) -> Result<String> {
    let text = seed.policy_yaml();
    ensure(
        text.contains("    - pause: {}\n") && text.contains("  progressDeadline: 10m"),
        format!("the seed policy changed:\n{text}"),
    )?;
    Ok(text
        .replace("    - pause: {}\n", &format!("    - pause: {second_pause}\n"))
        .replace(
            "  progressDeadline: 10m",
            &format!("  scaling:\n    scaleDownDelay: {scale_down_delay}\n  progressDeadline: 10m"),
        ))
}

async fn admin_kubeconfig() -> Result<std::path::PathBuf> {
    Ok(support::control_plane().await?.kubeconfig_path().to_path_buf())
}

fn vs_api(seed: &Seed) -> Api<DynamicObject> {
    Api::namespaced_with(
        seed.client.clone(),
        &seed.vs_ns,
        &canaryd::mesh::istio::virtual_service_resource(),
    )
}

/// (type, reason, note) of every Event about the policy.
async fn events(seed: &Seed) -> Result<Vec<(String, String, String)>> {
    let api: Api<Event> = Api::namespaced(seed.client.clone(), &seed.ns);
    Ok(api
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(POLICY))
        .map(|e| {
            (
                e.type_.unwrap_or_default(),
                e.reason.unwrap_or_default(),
                e.note.unwrap_or_default(),
            )
        })
        .collect())
}

/// Waits for a Warning Event about the policy whose note contains every one of `words`.
async fn wait_warning(seed: &Seed, reason: Option<&str>, words: &[&str]) -> Result<String> {
    let mut last = Vec::new();
    let what = format!("a Warning Event {reason:?} saying {words:?}");
    let result = support::wait_until(&what, T, async || {
        last = events(seed).await?;
        Ok(last
            .iter()
            .find(|(t, r, note)| {
                t == "Warning" && reason.is_none_or(|want| r == want) && words.iter().all(|w| note.contains(w))
            })
            .map(|(_, _, note)| note.clone()))
    })
    .await;
    result.with_context(|| format!("events: {last:#?}"))
}

/// Every condition message and the status message, as one text.
fn status_text(p: &RolloutPolicy) -> String {
    let Some(s) = p.status.as_ref() else {
        return String::new();
    };
    let mut text = s.message.clone().unwrap_or_default();
    for c in &s.conditions {
        text.push_str(&format!("\n{} {} {}: {}", c.type_, c.status, c.reason, c.message));
    }
    text
}

async fn delete_policy_and_wait_gone(seed: &Seed, within: Duration) -> Result<Duration> {
    let policies: Api<RolloutPolicy> = Api::namespaced(seed.client.clone(), &seed.ns);
    let began = Instant::now();
    policies.delete(POLICY, &DeleteParams::default()).await?;
    support::wait_until("the policy to disappear", within, async || {
        Ok(seed.policy_json(POLICY).await?.is_none().then_some(()))
    })
    .await?;
    Ok(began.elapsed())
}

// ---------------------------------------------------------------------------------------------
// 5. Failing side effects, and a finalizer that finishes.

/// The VirtualService is deleted mid-rollout: status and an Event say so; deleting the policy then
/// finishes at once (nothing left to restore) instead of hanging in Terminating.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_virtual_service_is_reported_and_the_policy_still_goes() -> Result<()> {
    let seed = seed_with_pods("fx-vsgone", Hpas::None).await?;
    let daemon = start_daemon(&seed.ns).await?;
    let run = async {
        seed.apply(&policy(&seed, "{}", "2s")?).await?;
        seed.wait_policy(POLICY, "WaitingForApproval", T, |p| {
            phase(p) == Phase::WaitingForApproval
        })
        .await?;
        vs_api(&seed).delete(VS, &DeleteParams::default()).await?;
        let id = format!("VirtualService {}/{VS}", seed.vs_ns);
        // VirtualServices do not wake a policy: the 30 s resync notices the deletion.
        let resync = Duration::from_secs(45);
        seed.wait_policy(POLICY, "status naming the missing VirtualService", resync, |p| {
            let text = status_text(p);
            text.contains(&id) && text.contains("not found")
        })
        .await?;
        wait_warning(&seed, None, &[&id, "not found"]).await?;
        let took = delete_policy_and_wait_gone(&seed, Duration::from_secs(5)).await?;
        eprintln!("policy gone {took:?} after its deletion (its VirtualService deleted before)");
        Ok(())
    };
    run.await.map_err(|e| fixture::fail_with_logs(&daemon, e))
}

/// Deleting the namespace of a policy mid-rollout: the namespace goes (its Deployments may be gone
/// before the policy's cleanup runs), and traffic is back on stable in the VirtualService elsewhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_deleted_mid_rollout_goes() -> Result<()> {
    let seed = seed_with_pods("fx-nsdel", Hpas::Both).await?;
    let daemon = start_daemon(&seed.ns).await?;
    let run = async {
        seed.apply(&policy(&seed, "{}", "2s")?).await?;
        seed.wait_policy(POLICY, "WaitingForApproval", T, |p| {
            phase(p) == Phase::WaitingForApproval
        })
        .await?;
        let namespaces: Api<Namespace> = Api::all(seed.client.clone());
        let began = Instant::now();
        namespaces.delete(&seed.ns, &DeleteParams::default()).await?;
        let mut last = None;
        let gone = support::wait_until("the namespace to be gone", Duration::from_secs(60), async || {
            let ns = namespaces.get_opt(&seed.ns).await?;
            last = ns.as_ref().map(|n| n.status.clone());
            Ok(ns.is_none().then_some(()))
        })
        .await;
        gone.with_context(|| format!("namespace status: {last:#?}"))?;
        eprintln!("namespace gone {:?} after its deletion", began.elapsed());
        seed.wait_weights(&seed.vs_ns, VS, 1, &[("v1", 100), ("v2", 0)], T)
            .await?;
        Ok(())
    };
    run.await.map_err(|e| fixture::fail_with_logs(&daemon, e))
}

/// An HPA deleted mid-rollout: the next bounds write fails with 404, which status and an Event
/// name; deleting the policy then finishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_hpa_is_reported_and_the_policy_still_goes() -> Result<()> {
    let seed = seed_with_pods("fx-hpagone", Hpas::Both).await?;
    let daemon = start_daemon(&seed.ns).await?;
    let run = async {
        seed.apply(&policy(&seed, "{}", "2s")?).await?;
        seed.wait_policy(POLICY, "WaitingForApproval", T, |p| {
            phase(p) == Phase::WaitingForApproval
        })
        .await?;
        let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(seed.client.clone(), &seed.ns);
        hpas.delete(CANARY, &DeleteParams::default()).await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        // 100 % needs the canary's HPA raised: that write finds it gone.
        let (ok, out) = cli(&admin_kubeconfig().await?, &["promote", POLICY, "-n", &seed.ns]).await?;
        ensure(ok, format!("promote failed: {out}"))?;
        let id = format!("HorizontalPodAutoscaler {}/{CANARY}", seed.ns);
        let p = seed
            .wait_policy(POLICY, "status naming the missing HPA", T, |p| {
                let text = status_text(p);
                text.contains(&id) && text.contains("404")
            })
            .await?;
        ensure(
            phase(&p) == Phase::WaitingForApproval,
            format!("the failed step was recorded as done: {:?}", p.status),
        )?;
        let note = wait_warning(&seed, Some("ActionFailed"), &[&id, "404", "setting minReplicas"]).await?;
        eprintln!("event: {note}");
        let w = seed.weights(&seed.vs_ns, VS, 1).await?;
        ensure(
            w.get("v2") == Some(&50),
            format!("weights moved though the canary's capacity write failed: {w:?}"),
        )?;
        delete_policy_and_wait_gone(&seed, Duration::from_secs(5)).await?;
        seed.wait_weights(&seed.vs_ns, VS, 1, &[("v1", 100), ("v2", 0)], T)
            .await?;
        Ok(())
    };
    run.await.map_err(|e| fixture::fail_with_logs(&daemon, e))
}

/// A ValidatingAdmissionPolicy that refuses updates of the VirtualService: the weight write fails,
/// and status and a Warning Event name the action, the object and the API's answer. Once the
/// refusal is lifted the rollout goes on and `Synced` turns True.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_refusal_is_reported_and_the_rollout_resumes() -> Result<()> {
    let seed = seed_with_pods("fx-vap", Hpas::None).await?;
    let name = format!("freeze-{}", seed.vs_ns);
    let vap = format!(
        "apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata: {{name: {name}}}
spec:
  failurePolicy: Fail
  matchConstraints:
    resourceRules:
    - apiGroups: [networking.istio.io]
      apiVersions: ['*']
      operations: [UPDATE]
      resources: [virtualservices]
    namespaceSelector: {{matchLabels: {{kubernetes.io/metadata.name: {vs_ns}}}}}
  validations:
  - expression: 'false'
    message: virtual services are frozen for the change window
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata: {{name: {name}}}
spec:
  policyName: {name}
  validationActions: [Deny]
",
        vs_ns = seed.vs_ns
    );
    seed.apply(&vap).await?;
    // Wait until the API server enforces it.
    let label = json!({"metadata": {"labels": {"probe": "x"}}});
    support::wait_until("the admission policy to refuse updates", T, async || {
        let r = vs_api(&seed)
            .patch(VS, &PatchParams::default(), &Patch::Merge(&label))
            .await;
        Ok(r.is_err().then_some(()))
    })
    .await?;
    let daemon = start_daemon(&seed.ns).await?;
    let run = async {
        seed.apply(&policy(&seed, "{}", "2s")?).await?;
        let id = format!("VirtualService {}/{VS}", seed.vs_ns);
        let p = seed
            .wait_policy(POLICY, "Synced False naming the refusal", T, |p| {
                p.status.as_ref().is_some_and(|s| {
                    s.conditions.iter().any(|c| {
                        c.type_ == "Synced"
                            && c.status == "False"
                            && c.reason == "ActionFailed"
                            && c.message.contains(&id)
                            && c.message.contains("frozen for the change window")
                            && c.message.contains("setting weights")
                    })
                })
            })
            .await?;
        eprintln!("status: {}", status_text(&p));
        wait_warning(
            &seed,
            Some("ActionFailed"),
            &[&id, "frozen for the change window", &name],
        )
        .await?;
        let w = seed.weights(&seed.vs_ns, VS, 1).await?;
        ensure(!w.contains_key("v2"), format!("weights changed: {w:?}"))?;
        // Lifted: the rollout goes on and the condition says the effects went through.
        let bindings: Api<DynamicObject> = Api::all_with(
            seed.client.clone(),
            &kube::api::ApiResource::from_gvk_with_plural(
                &kube::api::GroupVersionKind::gvk(
                    "admissionregistration.k8s.io",
                    "v1",
                    "ValidatingAdmissionPolicyBinding",
                ),
                "validatingadmissionpolicybindings",
            ),
        );
        bindings.delete(&name, &DeleteParams::default()).await?;
        seed.wait_weights(&seed.vs_ns, VS, 1, &[("v1", 90), ("v2", 10)], T)
            .await?;
        seed.wait_policy(POLICY, "Synced True", T, |p| {
            p.status
                .as_ref()
                .is_some_and(|s| s.conditions.iter().any(|c| c.type_ == "Synced" && c.status == "True"))
        })
        .await?;
        Ok(())
    };
    run.await.map_err(|e| fixture::fail_with_logs(&daemon, e))
}

// ---------------------------------------------------------------------------------------------
// 6. The added canary destination keeps the port.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn added_canary_destination_keeps_the_port() -> Result<()> {
    let seed = seed_with_pods("fx-port", Hpas::None).await?;
    let port = json!([
        {"op": "test", "path": "/spec/http/1/name", "value": "primary"},
        {"op": "add", "path": "/spec/http/1/route/0/destination/port", "value": {"number": 8080}}
    ]);
    let port: json_patch::Patch = serde_json::from_value(port)?;
    vs_api(&seed)
        .patch(VS, &PatchParams::default(), &Patch::<()>::Json(port))
        .await?;
    let daemon = start_daemon(&seed.ns).await?;
    let run = async {
        seed.apply(&policy(&seed, "{}", "2s")?).await?;
        seed.wait_weights(&seed.vs_ns, VS, 1, &[("v1", 90), ("v2", 10)], T)
            .await?;
        let vs = seed.vs(&seed.vs_ns, VS).await?;
        let route = vs["spec"]["http"][1]["route"].clone();
        let canary = route
            .as_array()
            .and_then(|r| r.iter().find(|d| d["destination"]["subset"] == "v2"))
            .cloned()
            .unwrap_or(Value::Null);
        ensure(
            canary["destination"]["port"] == json!({"number": 8080})
                && canary["destination"]["host"] == route[0]["destination"]["host"],
            format!("added canary destination: {canary}"),
        )?;
        Ok(())
    };
    run.await.map_err(|e| fixture::fail_with_logs(&daemon, e))
}

// ---------------------------------------------------------------------------------------------
// 7. A still-routed old stable is not scaled down.

/// The seed's header route `user: zhj1 → v1` still sends v1 traffic after promotion: v1 keeps its
/// pods, status and a Warning Event say why, and once the route moves to v2 the scale-down happens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routed_old_stable_is_not_scaled_down_until_unused() -> Result<()> {
    let seed = seed_with_pods("fx-routed", Hpas::None).await?;
    let daemon = start_daemon(&seed.ns).await?;
    let run = async {
        seed.apply(&policy(&seed, "{duration: 1s}", "2s")?).await?;
        seed.wait_policy(POLICY, "Succeeded", T, |p| phase(p) == Phase::Succeeded)
            .await?;
        let note = wait_warning(&seed, Some("ScaleDownBlocked"), &[STABLE, VS, "http[0]"]).await?;
        eprintln!("event: {note}");
        let p = seed.policy_json(POLICY).await?.context("policy gone")?;
        let blocked = p["status"]["scaling"]["scaleDown"]["blocked"]
            .as_str()
            .unwrap_or_default();
        ensure(
            blocked.contains(VS) && blocked.contains("http[0]"),
            format!("status.scaling: {}", p["status"]["scaling"]),
        )?;
        // Well past the delay: v1 still serves the header route.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let r = seed.replicas(STABLE).await?;
        ensure(
            r.spec == STABLE_REPLICAS && r.ready == STABLE_REPLICAS,
            format!("routed old stable scaled: {r:?}"),
        )?;
        // The header route follows the promotion: now v1 goes.
        let follow = json!([
            {"op": "test", "path": "/spec/http/0/route/0/destination/subset", "value": "v1"},
            {"op": "replace", "path": "/spec/http/0/route/0/destination/subset", "value": "v2"}
        ]);
        let follow: json_patch::Patch = serde_json::from_value(follow)?;
        vs_api(&seed)
            .patch(VS, &PatchParams::default(), &Patch::<()>::Json(follow))
            .await?;
        seed.wait_ready(STABLE, 0, T).await?;
        let p = seed.policy_json(POLICY).await?.context("policy gone")?;
        ensure(
            p["status"]["scaling"].is_null(),
            format!("status.scaling: {}", p["status"]["scaling"]),
        )?;
        Ok(())
    };
    run.await.map_err(|e| fixture::fail_with_logs(&daemon, e))
}

// ---------------------------------------------------------------------------------------------
// 9. Restoring HPA bounds keeps a person's change.

/// During the rollout someone raises stable's maxReplicas for an incident. On promotion canaryd
/// puts back the minReplicas it pinned and leaves maxReplicas as the person set it, with an Event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incident_bump_of_max_replicas_survives_the_restore() -> Result<()> {
    let seed = seed_with_pods("fx-bump", Hpas::Both).await?;
    let daemon = start_daemon(&seed.ns).await?;
    let run = async {
        seed.apply(&policy(&seed, "{}", "1h")?).await?;
        seed.wait_policy(POLICY, "WaitingForApproval", T, |p| {
            phase(p) == Phase::WaitingForApproval
        })
        .await?;
        support::wait_until("stable pinned", T, async || {
            Ok((seed.hpa_min(STABLE).await? == STABLE_REPLICAS).then_some(()))
        })
        .await?;
        let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(seed.client.clone(), &seed.ns);
        let bump = json!({"spec": {"maxReplicas": 20}});
        hpas.patch(STABLE, &PatchParams::default(), &Patch::Merge(&bump))
            .await?;
        // A few reconciles later it is still the person's.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (ok, out) = cli(&admin_kubeconfig().await?, &["promote", POLICY, "-n", &seed.ns]).await?;
        ensure(ok, format!("promote failed: {out}"))?;
        seed.wait_policy(POLICY, "Succeeded", T, |p| phase(p) == Phase::Succeeded)
            .await?;
        let mut last = None;
        support::wait_until("stable's min restored", T, async || {
            let h = seed.hpa(STABLE).await?;
            last = Some((h.spec.min_replicas, h.spec.max_replicas));
            Ok((h.spec.min_replicas == Some(1)).then_some(()))
        })
        .await
        .with_context(|| format!("last (min, max): {last:?}"))?;
        let h = seed.hpa(STABLE).await?;
        ensure(
            h.spec.max_replicas == 20,
            format!("the person's maxReplicas was undone: {:?}", h.spec),
        )?;
        wait_warning(&seed, Some("HpaBoundLeftAlone"), &[STABLE, "maxReplicas is 20"]).await?;
        Ok(())
    };
    run.await.map_err(|e| fixture::fail_with_logs(&daemon, e))
}

// ---------------------------------------------------------------------------------------------
// 12. DestinationRuleInWrongNamespace names only the rule that applies.

/// Another team has a DestinationRule of the same name for its own Service: it is not named. The
/// one placed next to the VirtualService is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_namespace_names_only_the_rule_that_applies() -> Result<()> {
    let seed = seed_with_pods("fx-dr", Hpas::None).await?;
    let other = format!("{}-team-b", seed.ns);
    support::create_namespace(&other).await?;
    let theirs = format!(
        "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: istio-test-dr, namespace: {other}}}
spec:
  host: istio-test
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
"
    );
    seed.apply(&theirs).await?;
    // Ours moves next to the VirtualService (the trap).
    let drs: Api<DynamicObject> = Api::namespaced_with(
        seed.client.clone(),
        &seed.ns,
        &canaryd::mesh::istio::destination_rule_resource(),
    );
    let mut ours = serde_json::to_value(drs.get("istio-test-dr").await?)?;
    drs.delete("istio-test-dr", &DeleteParams::default()).await?;
    ours["metadata"] = json!({"name": "istio-test-dr", "namespace": seed.vs_ns});
    seed.apply(&serde_json::to_string(&ours)?).await?;
    let daemon = start_daemon(&seed.ns).await?;
    let run = async {
        seed.apply(&policy(&seed, "{}", "2s")?).await?;
        let p = seed
            .wait_policy(POLICY, "DestinationRuleInWrongNamespace", T, |p| {
                p.status.as_ref().is_some_and(|s| {
                    s.conditions
                        .iter()
                        .any(|c| c.reason == "DestinationRuleInWrongNamespace")
                })
            })
            .await?;
        let text = status_text(&p);
        ensure(
            text.contains(&format!("namespace {} ", seed.vs_ns)) && !text.contains(&other),
            format!("status: {text}"),
        )?;
        // Ours gone too: only theirs is left, which is not ours to name.
        let gw: Api<DynamicObject> = Api::namespaced_with(
            seed.client.clone(),
            &seed.vs_ns,
            &canaryd::mesh::istio::destination_rule_resource(),
        );
        gw.delete("istio-test-dr", &DeleteParams::default()).await?;
        let p = seed
            .wait_policy(POLICY, "DestinationRuleNotFound", T, |p| {
                p.status
                    .as_ref()
                    .is_some_and(|s| s.conditions.iter().any(|c| c.reason == "DestinationRuleNotFound"))
            })
            .await?;
        let text = status_text(&p);
        ensure(!text.contains(&other), format!("status names team-b: {text}"))?;
        Ok(())
    };
    run.await.map_err(|e| fixture::fail_with_logs(&daemon, e))
}
