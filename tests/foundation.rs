//! The foundation: the real control plane with Istio's schemas, least-privilege RBAC from deploy/,
//! and the mesh simulator's traffic as the real Prometheus sees it.
mod fixture;
mod support;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Api;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, PostParams};
use std::time::Duration;

const VALID: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
  namespace: smoke
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews, subset: stable}
      weight: 90
    - destination: {host: reviews, subset: canary}
      weight: 10
"#;

const MALFORMED: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: broken
  namespace: smoke
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews, subset: stable}
      weight: "ten"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_plane_serves_istio_crds() -> anyhow::Result<()> {
    let cp = support::control_plane().await?;
    eprintln!("control plane started in {:.1?}", cp.startup_time());
    let client = support::client().await?;

    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let vs = crds.get("virtualservices.networking.istio.io").await?;
    let conditions = vs.status.and_then(|s| s.conditions).unwrap_or_default();
    assert!(
        conditions
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True"),
        "VirtualService CRD not established: {conditions:?}"
    );

    support::create_namespace("smoke").await?;
    support::create_namespace("smoke").await?; // idempotent
    let applied = support::apply_yaml(&client, VALID).await?;
    assert_eq!(applied.len(), 1);
    assert_eq!(applied[0].data["spec"]["http"][0]["route"][1]["weight"], 10);

    // Rejected both on create (422 from schema validation) and on server-side apply (the typed
    // patch cannot be built).
    let malformed: DynamicObject = serde_saphyr::from_str(MALFORMED)?;
    let ar = ApiResource::from_gvk(&GroupVersionKind::gvk("networking.istio.io", "v1", "VirtualService"));
    let vss: Api<DynamicObject> = Api::namespaced_with(client.clone(), "smoke", &ar);
    match vss.create(&PostParams::default(), &malformed).await {
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 422, "{status:?}");
            assert!(
                status.message.contains("weight"),
                "rejection does not mention weight: {status:?}"
            );
        }
        other => panic!("malformed VirtualService not rejected: {other:?}"),
    }
    let err = support::apply_yaml(&client, MALFORMED)
        .await
        .expect_err("malformed weight applied");
    assert!(
        format!("{err:#}").contains("weight"),
        "rejection does not mention weight: {err:#}"
    );

    // A service-account token authenticates but carries no admin rights.
    let token = support::token_for("smoke", "viewer").await?;
    let limited = support::client_with_token(&token).await?;
    let denied = Api::<CustomResourceDefinition>::all(limited)
        .list(&Default::default())
        .await;
    assert!(
        matches!(&denied, Err(kube::Error::Api(status)) if status.code == 403),
        "expected 403 Forbidden, got {denied:?}"
    );
    assert!(cp.kubeconfig_path().is_file());
    Ok(())
}

#[tokio::test]
async fn prometheus_scrapes_added_targets() -> anyhow::Result<()> {
    let prom = support::Prometheus::start().await?;
    let own_addr = prom.base_url().trim_start_matches("http://").to_string();
    prom.add_target(&own_addr).await?;
    let up = prom
        .wait_for("up", |s| s.iter().any(|(_, v)| *v == 1.0), Duration::from_secs(30))
        .await?;
    assert_eq!(up[0].0.get("job").map(String::as_str), Some("tests"), "{up:?}");
    assert_eq!(up[0].0.get("instance"), Some(&own_addr));
    let scalar = prom.query("scalar(vector(2))").await?;
    assert_eq!(scalar.len(), 1);
    assert_eq!(scalar[0].1, 2.0);
    Ok(())
}

#[tokio::test]
async fn deployments_become_ready_on_the_fake_node() -> anyhow::Result<()> {
    let cp = support::control_plane_with_nodes().await?;
    support::create_namespace("nodes").await?;
    let client = support::client().await?;
    let deployment = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: nodes}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: web, image: example.invalid/web:1}]
"#;
    support::apply_yaml(&client, deployment).await?;
    let deployments: Api<Deployment> = Api::namespaced(client, "nodes");
    let ready = support::wait_until("2 ready replicas", Duration::from_secs(60), async || {
        let status = deployments.get("web").await?.status.unwrap_or_default();
        Ok((status.ready_replicas == Some(2)).then_some(()))
    })
    .await;
    ready.map_err(|e| e.context(cp.logs(20)))?;
    Ok(())
}

#[tokio::test]
async fn spawned_binaries_report_their_first_line() -> anyhow::Result<()> {
    let mut help = support::spawn_bin("meshsim", &["--help"], &[])?;
    let first = help.first_line(Duration::from_secs(10)).await?;
    assert!(first.contains("Istio"), "unexpected first line {first:?}");
    let status = help.wait(Duration::from_secs(10)).await?;
    assert!(status.success(), "meshsim --help: {status}\n{}", help.logs(20));

    // A long-running child: the address it prints is scrapeable, and SIGTERM ends it.
    let cp = support::control_plane().await?;
    support::create_namespace("smoke-bin").await?;
    let vs = VALID.replace("namespace: smoke", "namespace: smoke-bin");
    support::apply_yaml(&support::client().await?, &vs).await?;
    let kubeconfig = cp.kubeconfig_path().to_string_lossy().into_owned();
    let args = [
        "--namespace=smoke-bin",
        "--virtual-service=reviews",
        "--service-host=reviews.smoke-bin.svc.cluster.local",
    ];
    let mut mesh = support::spawn_bin("meshsim", &args, &[("KUBECONFIG", &kubeconfig)])?;
    let addr = mesh.listening_addr(Duration::from_secs(30)).await?;
    let prom = support::Prometheus::start().await?;
    prom.add_target(&addr).await?;
    let query = format!("up{{instance=\"{addr}\"}}");
    let scraped = prom.wait_for(&query, |s| s.iter().any(|(_, v)| *v == 1.0), Duration::from_secs(30));
    scraped.await.map_err(|e| e.context(mesh.logs(20)))?;
    let status = mesh.terminate(Duration::from_secs(10)).await?;
    eprintln!("meshsim exited with {status}");
    Ok(())
}

/// The daemon's ServiceAccount, bound by exactly deploy/rbac.yaml, may patch VirtualServices and
/// nothing it does not need.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_rbac_is_least_privilege() -> anyhow::Result<()> {
    use k8s_openapi::api::core::v1::Secret;
    use kube::api::{DeleteParams, Patch, PatchParams};

    let seed = fixture::seed("rbac").await?;
    let kubeconfig = fixture::daemon_kubeconfig().await?;
    let config =
        kube::Config::from_custom_kubeconfig(kube::config::Kubeconfig::read_from(&kubeconfig)?, &Default::default())
            .await?;
    let daemon = kube::Client::try_from(config)?;
    let ar = canaryd::mesh::istio::virtual_service_resource();
    let vss: Api<DynamicObject> = Api::namespaced_with(daemon.clone(), &seed.vs_ns, &ar);
    let patch = serde_json::json!([{"op": "add", "path": "/spec/http/1/route/0/weight", "value": 100}]);
    vss.patch(
        "istio-test-vs",
        &PatchParams::default(),
        &Patch::<()>::Json(serde_json::from_value(patch)?),
    )
    .await?;

    let forbidden = |r: Result<(), kube::Error>, what: &str| match r {
        Err(kube::Error::Api(s)) if s.code == 403 => Ok(()),
        other => Err(anyhow::anyhow!("{what}: expected 403, got {other:?}")),
    };
    let deployments: Api<Deployment> = Api::namespaced(daemon.clone(), &seed.ns);
    forbidden(
        deployments
            .delete("istio-test-v1", &DeleteParams::default())
            .await
            .map(|_| ()),
        "delete a Deployment",
    )?;
    let mut vs = vss.get("istio-test-vs").await?;
    vs.metadata.managed_fields = None;
    forbidden(
        vss.replace("istio-test-vs", &PostParams::default(), &vs)
            .await
            .map(|_| ()),
        "replace a whole VirtualService",
    )?;
    let secrets: Api<Secret> = Api::namespaced(daemon.clone(), &seed.ns);
    forbidden(secrets.list(&Default::default()).await.map(|_| ()), "list Secrets")?;
    // Notification targets: read (the notifier sends to them), never written (a daemon that could
    // would redirect a team's messages and credentials).
    let targets: Api<canaryd::resources::target::NotificationTarget> = Api::all(daemon.clone());
    targets.list(&Default::default()).await?;
    forbidden(
        targets.delete("anything", &DeleteParams::default()).await.map(|_| ()),
        "delete a NotificationTarget",
    )?;
    let policies: Api<canaryd::resources::policy::RolloutPolicy> = Api::namespaced(daemon, &seed.ns);
    forbidden(
        policies.delete("anything", &DeleteParams::default()).await.map(|_| ()),
        "delete a RolloutPolicy",
    )?;
    Ok(())
}

/// Weights in the VirtualService are followed by the mesh simulator, and the real Prometheus shows
/// the split and the success rate with Istio's own metric names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_sees_the_mesh_follow_the_weights() -> anyhow::Result<()> {
    use kube::api::{Patch, PatchParams};

    let seed = fixture::seed("mesh").await?;
    let ar = canaryd::mesh::istio::virtual_service_resource();
    let vss: Api<DynamicObject> = Api::namespaced_with(seed.client.clone(), &seed.vs_ns, &ar);
    let split = serde_json::json!([
        {"op": "add", "path": "/spec/http/1/route/0/weight", "value": 90},
        {"op": "add", "path": "/spec/http/1/route/-",
         "value": {"destination": {"host": format!("istio-test.{}.svc.cluster.local", seed.ns), "subset": "v2"}, "weight": 10}}
    ]);
    vss.patch(
        "istio-test-vs",
        &PatchParams::default(),
        &Patch::<()>::Json(serde_json::from_value(split)?),
    )
    .await?;

    let cp = support::control_plane().await?;
    let kubeconfig = cp.kubeconfig_path().to_string_lossy().into_owned();
    let host = format!("--service-host=istio-test.{}.svc.cluster.local", seed.ns);
    let ns_arg = format!("--namespace={}", seed.vs_ns);
    let args = [
        ns_arg.as_str(),
        "--virtual-service=istio-test-vs",
        host.as_str(),
        "--route=primary",
        "--subset=v1=istio-test-v1",
        "--subset=v2=istio-test-v2",
        "--rps=400",
    ];
    let mut mesh = support::spawn_bin("meshsim", &args, &[("KUBECONFIG", &kubeconfig)])?;
    let addr = mesh.listening_addr(Duration::from_secs(30)).await?;
    let prom = support::Prometheus::start().await?;
    prom.add_target(&addr).await?;

    let ns = seed.ns.clone();
    let rate = |version: &str, extra: &str, window: &str| {
        format!(
            "sum(rate(istio_requests_total{{reporter=\"destination\",destination_workload_namespace=\"{ns}\",destination_version=\"{version}\"{extra}}}[{window}]))"
        )
    };
    let ratio = format!("{} / {}", rate("v1", "", "10s"), rate("v2", "", "10s"));
    let run = async {
        let seen = prom
            .wait_for(
                &ratio,
                |s| s.first().is_some_and(|(_, v)| (*v - 9.0).abs() < 9.0 * 0.03),
                Duration::from_secs(60),
            )
            .await?;
        eprintln!(
            "v1:v2 request rate ratio in Prometheus: {:.3} (first within 3 %)",
            seen[0].1
        );
        // Once the window holds only the split, it stays there.
        tokio::time::sleep(Duration::from_secs(5)).await;
        let settled = prom.query(&ratio).await?.first().map(|s| s.1).unwrap_or(f64::NAN);
        eprintln!("v1:v2 request rate ratio in Prometheus, settled: {settled:.3}");
        anyhow::ensure!((settled - 9.0).abs() < 9.0 * 0.03, "ratio drifted to {settled}");

        let http = reqwest::Client::new();
        let resp = http
            .put(format!("http://{addr}/subsets/v2"))
            .json(&serde_json::json!({"successRatio": 0.8}))
            .send()
            .await?;
        anyhow::ensure!(resp.status().is_success(), "meshsim admin: {}", resp.status());
        // Istio's success rate, as Flagger computes it: non-5xx over all, in percent.
        let success = format!(
            "{} / {} * 100",
            rate("v2", ",response_code!~\"5.*\"", "5s"),
            rate("v2", "", "5s")
        );
        let seen = prom
            .wait_for(
                &success,
                |s| s.first().is_some_and(|(_, v)| (*v - 80.0).abs() < 80.0 * 0.03),
                Duration::from_secs(60),
            )
            .await?;
        eprintln!("v2 success rate in Prometheus: {:.2}% (first within 3 %)", seen[0].1);
        tokio::time::sleep(Duration::from_secs(6)).await;
        let settled = prom.query(&success).await?.first().map(|s| s.1).unwrap_or(f64::NAN);
        eprintln!("v2 success rate in Prometheus, settled: {settled:.2}%");
        anyhow::ensure!(
            (settled - 80.0).abs() < 80.0 * 0.03,
            "success rate drifted to {settled}"
        );
        anyhow::Ok(())
    };
    let result = run.await.map_err(|e| e.context(mesh.logs(20)).context(prom.logs(10)));
    mesh.terminate(Duration::from_secs(10)).await?;
    result
}

/// Schema-level errors in a RolloutPolicy are refused by the API server itself (OpenAPI + CEL).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_crd_refuses_malformed_policies() -> anyhow::Result<()> {
    let client = support::client().await?;
    support::create_namespace("crd-refuses").await?;
    let base = fixture::seed_yaml("rolloutpolicy.yaml", "crd-refuses", "crd-refuses");
    support::apply_yaml(&client, &base).await?;
    let cases = [
        (
            "    - weight: 10\n",
            "    - weight: 10\n      pause: {}\n",
            "exactly one of weight or pause",
        ),
        ("duration: 2s", "duration: soon", "duration"),
        ("    - weight: 50\n", "    - weight: 150\n", "weight"),
        ("  destinationRule: istio-test-dr\n", "", "destinationRule"),
    ];
    for (from, to, mention) in cases {
        let broken = base.replace(from, to);
        anyhow::ensure!(broken != base, "case {mention}: nothing replaced");
        let err = support::apply_yaml(&client, &broken)
            .await
            .expect_err("malformed policy accepted");
        let text = format!("{err:#}");
        anyhow::ensure!(
            text.contains(mention),
            "case {mention}: rejection does not say so: {text}"
        );
    }
    Ok(())
}

/// The user the test's client authenticates as (admission makes it a command's `requestedBy`).
async fn whoami(client: &kube::Client) -> anyhow::Result<String> {
    use k8s_openapi::api::authentication::v1::SelfSubjectReview;
    let api: Api<SelfSubjectReview> = Api::all(client.clone());
    let review = api
        .create(&PostParams::default(), &SelfSubjectReview::default())
        .await?;
    let user = review.status.and_then(|s| s.user_info).and_then(|u| u.username);
    user.ok_or_else(|| anyhow::anyhow!("no username in the SelfSubjectReview"))
}

/// The CRDs refuse what the daemon cannot decode or would refuse (issue 16): a step past u32 and a
/// 70,000-character canary in a RolloutCommand, over-long strings and lists in the other kinds.
/// Values at the bounds are stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_crds_refuse_what_the_daemon_cannot_decode() -> anyhow::Result<()> {
    let client = support::client().await?;
    let ns = "crd-bounds";
    support::create_namespace(ns).await?;
    let me = whoami(&client).await?;
    let command = |name: &str, step: &str, canary: &str| {
        format!(
            "apiVersion: canaryd.io/v1alpha1\nkind: RolloutCommand\nmetadata: {{name: {name}, namespace: {ns}}}\n\
             spec: {{policy: app, command: promote, canary: {canary}, step: {step}, requestedBy: \"{me}\"}}\n"
        )
    };
    let provider = |address: &str| {
        format!(
            "apiVersion: canaryd.io/v1alpha1\nkind: MetricProvider\nmetadata: {{name: crd-bounds}}\nspec: {{address: \"{address}\"}}\n"
        )
    };
    let target = |users: usize| {
        let users = vec!["U1"; users].join(", ");
        format!(
            "apiVersion: canaryd.io/v1alpha1\nkind: NotificationTarget\nmetadata: {{name: crd-bounds}}\n\
             spec: {{slack: {{channel: C1, allowedUsers: [{users}]}}}}\n"
        )
    };
    // A platform object's namespace selector: each of its lists and strings is bounded too.
    let labels = |n: usize| {
        format!(
            "{{{}}}",
            (0..n).map(|i| format!("l{i}: v")).collect::<Vec<_>>().join(", ")
        )
    };
    let selector_provider = |match_labels: &str, exprs: &str| {
        format!(
            "apiVersion: canaryd.io/v1alpha1\nkind: MetricProvider\nmetadata: {{name: crd-bounds-selector}}\n\
             spec: {{address: \"http://p\", namespaceSelector: {{matchLabels: {match_labels}, matchExpressions: {exprs}}}}}\n"
        )
    };
    support::apply_yaml(&client, &selector_provider(&labels(16), "[]")).await?;
    let policy = fixture::seed_yaml("rolloutpolicy.yaml", ns, ns);
    let long_service = policy.replace("service: istio-test", &format!("service: {}", "s".repeat(254)));
    let hook = "  webhooks:\n  - {name: h, type: pre-rollout, url: \"http://h\", retries: 4294967296}\n";
    let overflowing_hook = policy.replace("  progressDeadline: 10m\n", &format!("  progressDeadline: 10m\n{hook}"));

    // At the bounds: stored.
    support::apply_yaml(&client, &command("at-bounds", "4294967295", &"a".repeat(64))).await?;
    support::apply_yaml(&client, &provider(&format!("http://{}", "p".repeat(2041)))).await?;
    support::apply_yaml(&client, &target(1000)).await?;

    let cases = [
        (command("step", "4294967296", "abc"), "spec.step"),
        (command("canary", "1", &"a".repeat(70_000)), "spec.canary"),
        (provider(&format!("http://{}", "p".repeat(2042))), "spec.address"),
        (target(1001), "spec.slack.allowedUsers"),
        (long_service, "spec.service"),
        (overflowing_hook, "spec.webhooks[0].retries"),
        (
            selector_provider(&labels(17), "[]"),
            "spec.namespaceSelector.matchLabels",
        ),
        (
            selector_provider(
                "{}",
                &format!("[{{key: team, operator: In, values: [{}]}}]", "v".repeat(64)),
            ),
            "spec.namespaceSelector.matchExpressions[0].values[0]",
        ),
        (
            selector_provider("{}", "[{key: team, operator: Matches}]"),
            "spec.namespaceSelector.matchExpressions[0].operator",
        ),
    ];
    for (yaml, field) in cases {
        let err = support::apply_yaml(&client, &yaml)
            .await
            .expect_err("the API server stored a value past the bound");
        let text = format!("{err:#}");
        anyhow::ensure!(text.contains(field), "case {field}: rejection does not name it: {text}");
    }
    Ok(())
}
