//! Issue 16, item 4: no failed side effect blocks a safety action, on the bed (real kube-apiserver
//! with its admission, the real controllers and kwok's pods, the daemon with deploy/'s RBAC): a
//! canary HPA deleted or an HPA write refused mid-rollout ends in the progress-deadline rollback,
//! and deleting a policy never sends traffic onto a stable with no Ready pods.

mod fixture;
mod support;

use std::time::Duration;

use anyhow::Result;
use canaryd::resources::policy::{Phase, RolloutPolicy};
use fixture::scaling::{CANARY, Hpas, STABLE, seed_with_pods};
use fixture::{Seed, cli, ensure, start_daemon};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams};
use serde_json::json;

const T: Duration = Duration::from_secs(30);
const VS: &str = "istio-test-vs";
const POLICY: &str = "istio-test";

fn phase(p: &RolloutPolicy) -> Phase {
    p.status.as_ref().map(|s| s.phase).unwrap_or_default()
}

/// The seed policy (10 %, 2 s, 50 %, approval, 100 %) at 50 % waiting for approval.
async fn at_fifty(seed: &Seed) -> Result<()> {
    let text = seed.policy_yaml();
    ensure(
        text.contains("  progressDeadline: 10m"),
        format!("the seed policy changed:\n{text}"),
    )?;
    seed.apply(&text).await?;
    seed.wait_policy(POLICY, "WaitingForApproval", Duration::from_secs(60), |p| {
        phase(p) == Phase::WaitingForApproval
    })
    .await?;
    Ok(())
}

/// Shorten the progress deadline, then `canaryd promote`: 100 % needs the canary's HPA raised.
async fn promote_with_deadline(seed: &Seed, deadline: &str) -> Result<()> {
    let policies: Api<RolloutPolicy> = Api::namespaced(seed.client.clone(), &seed.ns);
    let patch = json!({"spec": {"progressDeadline": deadline}});
    policies
        .patch(POLICY, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    let admin = support::control_plane().await?.kubeconfig_path().to_path_buf();
    let (ok, out) = cli(&admin, &["promote", POLICY, "-n", &seed.ns, "--no-wait"]).await?;
    ensure(ok, format!("promote failed: {out}"))
}

/// Waits for the rollback to finish: all traffic on stable, phase RolledBack for the deadline.
async fn wait_rolled_back(seed: &Seed) -> Result<RolloutPolicy> {
    seed.wait_weights(&seed.vs_ns, VS, 1, &[("v1", 100), ("v2", 0)], Duration::from_secs(60))
        .await?;
    let p = seed
        .wait_policy(POLICY, "RolledBack", T, |p| phase(p) == Phase::RolledBack)
        .await?;
    let message = p.status.as_ref().and_then(|s| s.message.clone()).unwrap_or_default();
    ensure(
        message.contains("side effects failing for") && message.contains("progressDeadline 5s"),
        format!("status message: {message}"),
    )?;
    Ok(p)
}

/// (a) The canary's HPA is deleted mid-rollout: every plan forward fails on its 404, and the
/// progress deadline still rolls the rollout back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_hpa_deleted_mid_rollout_rolls_back_at_the_deadline() -> Result<()> {
    let seed = seed_with_pods("fs-hpadl", Hpas::Both).await?;
    let daemon = start_daemon(&seed.ns).await?;
    let run = async {
        at_fifty(&seed).await?;
        let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(seed.client.clone(), &seed.ns);
        hpas.delete(CANARY, &DeleteParams::default()).await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        promote_with_deadline(&seed, "5s").await?;
        let p = wait_rolled_back(&seed).await?;
        let message = p.status.as_ref().and_then(|s| s.message.clone()).unwrap_or_default();
        ensure(
            message.contains(&format!("HorizontalPodAutoscaler {}/{CANARY}", seed.ns)) && message.contains("404"),
            format!("status message: {message}"),
        )?;
        Ok(())
    };
    run.await.map_err(|e| fixture::fail_with_logs(&daemon, e))
}

/// (b) A ValidatingAdmissionPolicy refuses every HPA update mid-rollout: the step forward fails,
/// the deadline rolls back, the weights go back to stable although restoring the HPAs is refused
/// too, and the rollback finishes (RolledBack) with `Synced` False and an Event naming the refusal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_hpa_writes_do_not_block_the_rollback() -> Result<()> {
    let seed = seed_with_pods("fs-hpavap", Hpas::Both).await?;
    let name = format!("freeze-hpa-{}", seed.ns);
    let vap = format!(
        "apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata: {{name: {name}}}
spec:
  failurePolicy: Fail
  matchConstraints:
    resourceRules:
    - apiGroups: [autoscaling]
      apiVersions: ['*']
      operations: [UPDATE]
      resources: [horizontalpodautoscalers]
    namespaceSelector: {{matchLabels: {{kubernetes.io/metadata.name: {ns}}}}}
  validations:
  - expression: 'false'
    message: autoscalers are frozen for the change window
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata: {{name: {name}}}
spec:
  policyName: {name}
  validationActions: [Deny]
",
        ns = seed.ns
    );
    let daemon = start_daemon(&seed.ns).await?;
    let run = async {
        at_fifty(&seed).await?;
        seed.apply(&vap).await?;
        let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(seed.client.clone(), &seed.ns);
        let label = json!({"metadata": {"labels": {"probe": "x"}}});
        support::wait_until("the admission policy to refuse HPA updates", T, async || {
            let r = hpas.patch(STABLE, &PatchParams::default(), &Patch::Merge(&label)).await;
            Ok(r.is_err().then_some(()))
        })
        .await?;
        let raised = seed.hpa_min(CANARY).await?;
        ensure(raised > 1, format!("canary HPA min not raised at 50%: {raised}"))?;
        promote_with_deadline(&seed, "5s").await?;
        wait_rolled_back(&seed).await?;
        // Reported by a Warning Event (and `Synced` False in the status written with RolledBack,
        // True again as soon as a later pass's effects go through).
        let id = format!("HorizontalPodAutoscaler {}/{CANARY}", seed.ns);
        let notes = seed.events(POLICY, "ActionSkipped").await?;
        ensure(
            notes.iter().any(|n| {
                n.contains(&id)
                    && n.contains("setting minReplicas 1")
                    && n.contains("frozen for the change window")
                    && n.contains("skipped: traffic goes back to stable")
            }),
            format!("ActionSkipped events: {notes:#?}"),
        )?;
        // The refused restore left the canary's raised bound as it was (said, not hidden).
        ensure(seed.hpa_min(CANARY).await? == raised, "the canary HPA changed")?;
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
        Ok(())
    };
    run.await.map_err(|e| fixture::fail_with_logs(&daemon, e))
}

/// (c) The policy is deleted while stable has no Ready pods: the weights stay on the canary that
/// serves them, an Event says so, and the policy still goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_policy_never_sends_traffic_to_a_stable_without_ready_pods() -> Result<()> {
    let seed = seed_with_pods("fs-finstable", Hpas::None).await?;
    let daemon = start_daemon(&seed.ns).await?;
    let run = async {
        at_fifty(&seed).await?;
        let deployments: Api<Deployment> = Api::namespaced(seed.client.clone(), &seed.ns);
        let zero = json!({"spec": {"replicas": 0}});
        deployments
            .patch_scale(STABLE, &PatchParams::default(), &Patch::Merge(&zero))
            .await?;
        seed.wait_ready(STABLE, 0, Duration::from_secs(60)).await?;
        // The daemon's cache sees the Deployment's status a moment after the API does.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let before = seed.weights(&seed.vs_ns, VS, 1).await?;
        ensure(before.get("v2") == Some(&50), format!("weights: {before:?}"))?;
        let policies: Api<RolloutPolicy> = Api::namespaced(seed.client.clone(), &seed.ns);
        policies.delete(POLICY, &DeleteParams::default()).await?;
        support::wait_until("the policy to disappear", T, async || {
            Ok(seed.policy_json(POLICY).await?.is_none().then_some(()))
        })
        .await?;
        let after = seed.weights(&seed.vs_ns, VS, 1).await?;
        ensure(
            after == before,
            format!("traffic moved onto a stable with no Ready pods: {before:?} -> {after:?}"),
        )?;
        let notes = seed.events(POLICY, "TrafficLeftAlone").await?;
        ensure(
            notes
                .iter()
                .any(|n| n.contains(&format!("stable Deployment {STABLE} has no Ready pods")) && n.contains("50%")),
            format!("TrafficLeftAlone events: {notes:#?}"),
        )?;
        Ok(())
    };
    run.await.map_err(|e| fixture::fail_with_logs(&daemon, e))
}
