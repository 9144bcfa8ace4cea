//! Capacity writes against the real API server (and, where said, the real HPA and Deployment
//! controllers with kwok's fake node): only the replica bounds change, writes are idempotent and
//! guarded, and a raised minReplicas really becomes Ready pods.
mod support;

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use canaryd::fence::LeaderGuard;
use canaryd::replicas::{Bounds, MaxPolicy, canary_capacity, pin_min, raise_min};
use canaryd::scale::hpa::{self, ScaleError, WriteOutcome};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::Event;
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use serde_json::{Value, json};

fn deployment_yaml(ns: &str, name: &str, replicas: i32) -> String {
    format!(
        "apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}, namespace: {ns}, labels: {{app: {name}}}}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      containers:
      - name: app
        image: example.invalid/{name}:1
        resources: {{requests: {{cpu: 100m}}}}
"
    )
}

/// min 1, max 10, cpu 50 %, with labels, annotations and a behavior that must survive our writes.
fn hpa_yaml(ns: &str, name: &str, target: &str) -> String {
    format!(
        "apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata:
  name: {name}
  namespace: {ns}
  labels: {{app: {target}, team: payments}}
  annotations: {{example.com/owner: payments, example.com/note: kept as is}}
spec:
  scaleTargetRef: {{apiVersion: apps/v1, kind: Deployment, name: {target}}}
  minReplicas: 1
  maxReplicas: 10
  metrics:
  - type: Resource
    resource: {{name: cpu, target: {{type: Utilization, averageUtilization: 50}}}}
  behavior:
    scaleDown: {{stabilizationWindowSeconds: 120}}
"
    )
}

fn bounds(min: Option<i32>, max: i32) -> Bounds {
    Bounds {
        min_replicas: min,
        max_replicas: max,
    }
}

async fn hpa_json(api: &Api<HorizontalPodAutoscaler>, name: &str) -> Result<Value> {
    Ok(serde_json::to_value(api.get(name).await?)?)
}

/// Spec, labels and annotations: what our writes may not touch, beyond the bounds.
fn owned_by_others(hpa: &Value, drop: &[&str]) -> Value {
    let mut spec = hpa["spec"].clone();
    if let Some(spec) = spec.as_object_mut() {
        for field in drop {
            spec.remove(*field);
        }
    }
    json!({"spec": spec, "labels": hpa["metadata"]["labels"], "annotations": hpa["metadata"]["annotations"]})
}

/// The fields the `canaryd` manager owns, from managedFields.
fn canaryd_fields(hpa: &Value) -> Option<Value> {
    hpa["metadata"]["managedFields"]
        .as_array()?
        .iter()
        .find(|m| m["manager"] == "canaryd")
        .map(|m| m["fieldsV1"].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_bounds_changes_only_the_bounds_and_restores_them() -> Result<()> {
    let ns = "scale-bounds";
    support::create_namespace(ns).await?;
    let client = support::client().await?;
    support::apply_yaml(&client, &deployment_yaml(ns, "web", 1)).await?;
    support::apply_yaml(&client, &hpa_yaml(ns, "web", "web")).await?;
    let api: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), ns);
    let before = hpa_json(&api, "web").await?;
    let original = hpa::bounds(&api.get("web").await?);
    assert_eq!(original, bounds(Some(1), 10));

    // The canary needs 3: only minReplicas changes, and canaryd owns only that field.
    let raised = raise_min(original, 3, MaxPolicy::Fail)?;
    assert_eq!(
        hpa::set_bounds(&client, &LeaderGuard::unelected(), ns, "web", raised).await?,
        WriteOutcome::Written
    );
    let after = hpa_json(&api, "web").await?;
    assert_eq!(after["spec"]["minReplicas"], 3);
    assert_eq!(
        owned_by_others(&after, &["minReplicas"]),
        owned_by_others(&before, &["minReplicas"]),
        "more than minReplicas changed"
    );
    assert_eq!(canaryd_fields(&after), Some(json!({"f:spec": {"f:minReplicas": {}}})));
    // Already there: nothing sent.
    assert_eq!(
        hpa::set_bounds(&client, &LeaderGuard::unelected(), ns, "web", raised).await?,
        WriteOutcome::Unchanged
    );

    // Above max with RaiseTemporarily: both bounds, still nothing else.
    let above = raise_min(original, 12, MaxPolicy::RaiseTemporarily)?;
    assert!(matches!(
        raise_min(original, 12, MaxPolicy::Fail),
        Err(canaryd::replicas::CapacityError::AboveMax { required: 12, max: 10 })
    ));
    assert_eq!(
        hpa::set_bounds(&client, &LeaderGuard::unelected(), ns, "web", above).await?,
        WriteOutcome::Written
    );
    let after = hpa_json(&api, "web").await?;
    assert_eq!(
        (&after["spec"]["minReplicas"], &after["spec"]["maxReplicas"]),
        (&json!(12), &json!(12))
    );
    let bounds_fields = ["minReplicas", "maxReplicas"];
    assert_eq!(
        owned_by_others(&after, &bounds_fields),
        owned_by_others(&before, &bounds_fields)
    );

    // Restore exactly: the spec is the original again, field for field.
    assert_eq!(
        hpa::set_bounds(&client, &LeaderGuard::unelected(), ns, "web", original).await?,
        WriteOutcome::Written
    );
    let restored = hpa_json(&api, "web").await?;
    assert_eq!(owned_by_others(&restored, &[]), owned_by_others(&before, &[]));
    assert_eq!(
        hpa::set_bounds(&client, &LeaderGuard::unelected(), ns, "web", original).await?,
        WriteOutcome::Unchanged
    );

    // An absent minReplicas is restored by removing it: the API server defaults it to 1.
    assert_eq!(
        hpa::set_bounds(&client, &LeaderGuard::unelected(), ns, "web", bounds(Some(4), 10)).await?,
        WriteOutcome::Written
    );
    assert_eq!(
        hpa::set_bounds(&client, &LeaderGuard::unelected(), ns, "web", bounds(None, 10)).await?,
        WriteOutcome::Written
    );
    assert_eq!(hpa_json(&api, "web").await?["spec"]["minReplicas"], 1);
    assert_eq!(
        hpa::set_bounds(&client, &LeaderGuard::unelected(), ns, "web", bounds(None, 10)).await?,
        WriteOutcome::Unchanged
    );

    // Invalid bounds are the API server's to refuse, with its message.
    match hpa::set_bounds(&client, &LeaderGuard::unelected(), ns, "web", bounds(Some(5), 2)).await {
        Err(e @ ScaleError::Kube(_)) => assert_eq!(e.category(), "invalid", "{e}"),
        other => bail!("min above max accepted: {other:?}"),
    }
    match hpa::set_bounds(&client, &LeaderGuard::unelected(), ns, "missing", original).await {
        Err(e) => assert_eq!(e.category(), "not_found", "{e}"),
        Ok(o) => bail!("missing HPA written: {o:?}"),
    }
    Ok(())
}

/// The guard the retries rely on: a merge patch carrying an old resourceVersion is refused with 409,
/// on the HPA and on the Deployment's scale subresource.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_resource_version_is_refused() -> Result<()> {
    let ns = "scale-stale";
    support::create_namespace(ns).await?;
    let client = support::client().await?;
    support::apply_yaml(&client, &deployment_yaml(ns, "web", 1)).await?;
    support::apply_yaml(&client, &hpa_yaml(ns, "web", "web")).await?;
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), ns);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let stale_hpa = hpas.get("web").await?.metadata.resource_version;
    let stale_scale = deployments.get_scale("web").await?.metadata.resource_version;
    let touch = json!({"metadata": {"annotations": {"example.com/touched": "yes"}}});
    hpas.patch("web", &PatchParams::default(), &Patch::Merge(&touch))
        .await?;
    deployments
        .patch("web", &PatchParams::default(), &Patch::Merge(&touch))
        .await?;

    let patch = json!({"metadata": {"resourceVersion": stale_hpa}, "spec": {"minReplicas": 2}});
    let refused = hpas.patch("web", &PatchParams::default(), &Patch::Merge(&patch)).await;
    ensure!(
        matches!(&refused, Err(kube::Error::Api(s)) if s.code == 409),
        "stale HPA patch: {refused:?}"
    );
    let patch = json!({"metadata": {"resourceVersion": stale_scale}, "spec": {"replicas": 2}});
    let refused = deployments
        .patch_scale("web", &PatchParams::default(), &Patch::Merge(&patch))
        .await;
    ensure!(
        matches!(&refused, Err(kube::Error::Api(s)) if s.code == 409),
        "stale scale patch: {refused:?}"
    );
    Ok(())
}

/// Another writer edits the HPA all the time: every bounds write lands (re-reading on 409) and none
/// of the other writer's edits is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_edits_are_kept() -> Result<()> {
    let ns = "scale-concurrent";
    support::create_namespace(ns).await?;
    let client = support::client().await?;
    support::apply_yaml(&client, &deployment_yaml(ns, "web", 1)).await?;
    support::apply_yaml(&client, &hpa_yaml(ns, "web", "web")).await?;
    let api: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), ns);
    let writer = {
        let api = api.clone();
        tokio::spawn(async move {
            let mut last = 0;
            for i in 1..=40 {
                let patch = json!({"metadata": {"annotations": {"example.com/counter": i.to_string()}}});
                if api
                    .patch("web", &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .is_ok()
                {
                    last = i;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            last
        })
    };
    for i in 0..10 {
        let min = 2 + i % 3;
        let outcome = hpa::set_bounds(&client, &LeaderGuard::unelected(), ns, "web", bounds(Some(min), 10)).await?;
        ensure!(outcome == WriteOutcome::Written, "write {i}: {outcome:?}");
        ensure!(api.get("web").await?.spec.min_replicas == Some(min), "write {i} lost");
    }
    let last = writer.await?;
    let hpa = hpa_json(&api, "web").await?;
    assert_eq!(last, 40);
    assert_eq!(hpa["metadata"]["annotations"]["example.com/counter"], "40");
    assert_eq!(hpa["metadata"]["annotations"]["example.com/owner"], "payments");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn find_hpa_by_target_or_name() -> Result<()> {
    let ns = "scale-find";
    support::create_namespace(ns).await?;
    let client = support::client().await?;
    for d in ["web", "api", "solo"] {
        support::apply_yaml(&client, &deployment_yaml(ns, d, 1)).await?;
    }
    support::apply_yaml(&client, &hpa_yaml(ns, "web-hpa", "web")).await?;
    support::apply_yaml(&client, &hpa_yaml(ns, "api-hpa", "api")).await?;
    // Same name, other kind: not a match.
    let statefulset = hpa_yaml(ns, "sts-hpa", "solo").replace("kind: Deployment", "kind: StatefulSet");
    support::apply_yaml(&client, &statefulset).await?;

    let name = |h: Option<HorizontalPodAutoscaler>| h.and_then(|h| h.metadata.name);
    assert_eq!(
        name(hpa::find_hpa(&client, ns, "web", None).await?).as_deref(),
        Some("web-hpa")
    );
    assert_eq!(
        name(hpa::find_hpa(&client, ns, "api", None).await?).as_deref(),
        Some("api-hpa")
    );
    assert_eq!(name(hpa::find_hpa(&client, ns, "solo", None).await?), None);
    assert_eq!(
        name(hpa::find_hpa(&client, ns, "web", Some("web-hpa")).await?).as_deref(),
        Some("web-hpa")
    );

    match hpa::find_hpa(&client, ns, "web", Some("nope")).await {
        Err(e @ ScaleError::HpaNotFound { .. }) => assert!(e.to_string().contains("scale-find/nope"), "{e}"),
        other => bail!("missing named HPA: {other:?}"),
    }
    match hpa::find_hpa(&client, ns, "web", Some("api-hpa")).await {
        Err(e @ ScaleError::WrongTarget { .. }) => assert_eq!(
            e.to_string(),
            "HorizontalPodAutoscaler scale-find/api-hpa named in the policy targets apps/v1 Deployment/api, \
             not Deployment web; name the HPA of that Deployment"
        ),
        other => bail!("HPA of another Deployment accepted: {other:?}"),
    }

    support::apply_yaml(&client, &hpa_yaml(ns, "web-extra", "web")).await?;
    match hpa::find_hpa(&client, ns, "web", None).await {
        Err(e @ ScaleError::Ambiguous { .. }) => {
            assert!(e.to_string().contains("web-extra, web-hpa in scale-find"), "{e}");
            assert_eq!(e.category(), "ambiguous_hpa");
        }
        other => bail!("two HPAs for one Deployment: {other:?}"),
    }
    // Naming one resolves the ambiguity.
    let named = hpa::find_hpa(&client, ns, "web", Some("web-extra")).await?;
    assert_eq!(name(named).as_deref(), Some("web-extra"));
    Ok(())
}

async fn wait_ready(client: &Client, ns: &str, deployment: &str, ready: i32, timeout: Duration) -> Result<Duration> {
    let began = Instant::now();
    support::wait_until(&format!("{ns}/{deployment}: {ready} ready"), timeout, async || {
        let state = hpa::replicas(client, ns, deployment).await?;
        Ok((state.generation_observed && state.ready_replicas == ready).then_some(()))
    })
    .await?;
    Ok(began.elapsed())
}

/// The real HPA controller turns a raised minReplicas into Ready pods (no metrics needed: a target
/// below minReplicas is scaled up before metrics are looked at).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hpa_controller_scales_up_to_raised_min() -> Result<()> {
    let cp = support::control_plane_with_nodes().await?;
    let ns = "scale-hpa-live";
    support::create_namespace(ns).await?;
    let client = cp.client().await?;
    support::apply_yaml(&client, &deployment_yaml(ns, "web-v2", 1)).await?;
    support::apply_yaml(&client, &hpa_yaml(ns, "web-v2", "web-v2")).await?;
    let first = wait_ready(&client, ns, "web-v2", 1, Duration::from_secs(60)).await;
    first.map_err(|e| e.context(cp.logs(20)))?;

    // What the rollout would do for the canary: stable had 6 replicas at the start, step 50 %.
    let hpa = hpa::find_hpa(&client, ns, "web-v2", None)
        .await?
        .context("no HPA found")?;
    let original = hpa::bounds(&hpa);
    let required = canary_capacity(6, 50, 1.0);
    assert_eq!(required, 3);
    let raised = raise_min(original, required, MaxPolicy::Fail)?;
    let began = Instant::now();
    assert_eq!(
        hpa::set_bounds(&client, &LeaderGuard::unelected(), ns, "web-v2", raised).await?,
        WriteOutcome::Written
    );
    let scaled = wait_ready(&client, ns, "web-v2", 3, Duration::from_secs(90)).await;
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), ns);
    let scaled = match scaled {
        Ok(_) => began.elapsed(),
        Err(e) => {
            let status = hpas.get("web-v2").await.map(|h| h.status);
            return Err(e.context(format!("HPA status {status:?}\n{}", cp.logs(40))));
        }
    };
    eprintln!("HPA controller: 1 → 3 Ready replicas {scaled:.1?} after minReplicas was raised");
    // It was the HPA controller, for the reason we expect (Events are written asynchronously).
    let events: Api<Event> = Api::namespaced(client.clone(), ns);
    let rescale = support::wait_until(
        "the HPA's SuccessfulRescale Event",
        Duration::from_secs(10),
        async || {
            let list = events
                .list(&ListParams::default().fields("involvedObject.kind=HorizontalPodAutoscaler"))
                .await?;
            Ok(list
                .items
                .into_iter()
                .find(|e| e.reason.as_deref() == Some("SuccessfulRescale")))
        },
    )
    .await?;
    let message = rescale.message.unwrap_or_default();
    eprintln!("HPA Event: {message}");
    ensure!(
        message.contains("New size: 3") && message.contains("below Spec.MinReplicas"),
        "{message}"
    );
    let state = hpa::replicas(&client, ns, "web-v2").await?;
    assert_eq!((state.spec_replicas, state.ready_replicas), (3, 3));

    // The stable's pin, on the same HPA: 3 at the start stays 3, never above max.
    assert_eq!(pin_min(original, 3), bounds(Some(3), 10));
    assert_eq!(pin_min(original, 30), bounds(Some(10), 10));

    // Restoring the original bounds: the spec is back, the controller's status untouched by us.
    assert_eq!(
        hpa::set_bounds(&client, &LeaderGuard::unelected(), ns, "web-v2", original).await?,
        WriteOutcome::Written
    );
    assert_eq!(hpa::bounds(&hpas.get("web-v2").await?), original);
    assert_eq!(
        hpa::set_bounds(&client, &LeaderGuard::unelected(), ns, "web-v2", original).await?,
        WriteOutcome::Unchanged
    );
    hpas.delete("web-v2", &DeleteParams::default()).await?;
    Ok(())
}

/// A Deployment without HPA: canaryd sets its replicas through the scale subresource.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_replicas_without_hpa() -> Result<()> {
    let cp = support::control_plane_with_nodes().await?;
    let ns = "scale-replicas";
    support::create_namespace(ns).await?;
    let client = cp.client().await?;
    support::apply_yaml(&client, &deployment_yaml(ns, "app-v2", 1)).await?;
    assert_eq!(hpa::find_hpa(&client, ns, "app-v2", None).await?, None);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let spec_without_replicas = |d: &Deployment| -> Result<Value> {
        let mut v = serde_json::to_value(&d.spec)?;
        if let Some(spec) = v.as_object_mut() {
            spec.remove("replicas");
        }
        // The Deployment controller (running here) adds its revision annotation whenever it gets to it.
        let mut annotations = d.metadata.annotations.clone().unwrap_or_default();
        annotations.remove("deployment.kubernetes.io/revision");
        Ok(json!({"spec": v, "labels": d.metadata.labels, "annotations": annotations}))
    };
    let before = spec_without_replicas(&deployments.get("app-v2").await?)?;

    assert_eq!(
        hpa::set_replicas(&client, &LeaderGuard::unelected(), ns, "app-v2", 3).await?,
        WriteOutcome::Written
    );
    assert_eq!(
        hpa::set_replicas(&client, &LeaderGuard::unelected(), ns, "app-v2", 3).await?,
        WriteOutcome::Unchanged
    );
    let after = deployments.get("app-v2").await?;
    assert_eq!(after.spec.replicas, Some(3));
    assert_eq!(spec_without_replicas(&after)?, before, "more than replicas changed");
    let waited = wait_ready(&client, ns, "app-v2", 3, Duration::from_secs(60)).await;
    let waited = waited.map_err(|e| e.context(cp.logs(20)))?;
    eprintln!("Deployment: 3 Ready replicas {waited:.1?} after set_replicas");

    // Zero (which Scale leaves out of its spec) is a count like any other.
    assert_eq!(
        hpa::set_replicas(&client, &LeaderGuard::unelected(), ns, "app-v2", 0).await?,
        WriteOutcome::Written
    );
    assert_eq!(
        hpa::set_replicas(&client, &LeaderGuard::unelected(), ns, "app-v2", 0).await?,
        WriteOutcome::Unchanged
    );
    assert_eq!(hpa::replicas(&client, ns, "app-v2").await?.spec_replicas, 0);
    wait_ready(&client, ns, "app-v2", 0, Duration::from_secs(60)).await?;

    match hpa::set_replicas(&client, &LeaderGuard::unelected(), ns, "nope", 2).await {
        Err(e) => assert_eq!(e.category(), "not_found", "{e}"),
        Ok(o) => bail!("missing Deployment scaled: {o:?}"),
    }
    Ok(())
}
