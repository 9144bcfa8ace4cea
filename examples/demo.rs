//! The demo: the local control plane, the seed app from policies/, the mesh simulator scraped by the
//! real Prometheus, and canaryd walking istio-test from v1 to v2 while `canaryd status --watch` shows
//! the weights move. Run it with `scripts/demo`.

#[path = "../tests/fixture/mod.rs"]
mod fixture;
#[path = "../tests/support/mod.rs"]
mod support;

use std::process::{Child, Command};
use std::time::Duration;

use anyhow::{Context, Result};
use canaryd::resources::policy::Phase;
use k8s_openapi::api::apps::v1::Deployment;
use kube::Api;

const NS: &str = "dev";
const VS_NS: &str = "default";
const T: Duration = Duration::from_secs(60);

fn banner(text: &str) {
    println!("\n=== {text}");
}

/// Per-version request rate and success rate, as Prometheus reports them.
async fn traffic(prom: &support::Prometheus) -> Result<()> {
    let sel = format!("reporter=\"destination\",destination_service_namespace=\"{NS}\"");
    let rates = prom
        .query(&format!(
            "sum by (destination_version) (rate(istio_requests_total{{{sel}}}[10s]))"
        ))
        .await?;
    let success = prom
        .query(&format!(
            "sum by (destination_version) (rate(istio_requests_total{{{sel},response_code!~\"5.*\"}}[10s])) \
             / sum by (destination_version) (rate(istio_requests_total{{{sel}}}[10s])) * 100"
        ))
        .await?;
    println!("   {:<8} {:>10} {:>10}", "version", "req/s", "success");
    let mut rows: Vec<_> = rates.iter().collect();
    rows.sort_by(|a, b| a.0.get("destination_version").cmp(&b.0.get("destination_version")));
    for (labels, rate) in rows {
        let version = labels.get("destination_version").cloned().unwrap_or_default();
        let ok = success
            .iter()
            .find(|(l, _)| l.get("destination_version") == Some(&version))
            .filter(|(_, v)| v.is_finite())
            .map(|(_, v)| format!("{v:.1}%"))
            .unwrap_or_else(|| "-".into());
        println!("   {version:<8} {rate:>10.1} {ok:>10}");
    }
    Ok(())
}

fn watch_status(kubeconfig: &std::path::Path) -> Result<Child> {
    let bin = support::bin_path("canaryd")?;
    Command::new(bin)
        .args(["status", "istio-test", "-n", NS, "--watch", "--watch-for", "10m"])
        .env("KUBECONFIG", kubeconfig)
        .spawn()
        .context("starting canaryd status --watch")
}

#[tokio::main]
async fn main() -> Result<()> {
    banner("1. Local control plane: etcd, kube-apiserver, kube-controller-manager, kwok; Istio's CRDs");
    let cp = support::control_plane_with_nodes().await?;
    println!("   ready in {:.1?} at {}", cp.startup_time(), cp.server_url());
    let client = support::client().await?;

    banner("2. The seed app from policies/istio-test: Service, Deployments v1 and v2, DestinationRule, VirtualService");
    support::apply_yaml(&client, &fixture::seed_yaml("app.yaml", NS, VS_NS)).await?;
    support::apply_yaml(&client, &fixture::seed_yaml("istio.yaml", NS, VS_NS)).await?;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NS);
    for name in ["istio-test-v1", "istio-test-v2"] {
        support::wait_until(&format!("{name} Ready"), T, async || {
            let d = deployments.get(name).await?;
            Ok((d.status.and_then(|s| s.ready_replicas).unwrap_or(0) >= 1).then_some(()))
        })
        .await?;
        println!("   {name}: Ready (pods on kwok's simulated node)");
    }

    banner("3. The mesh simulator follows the VirtualService; the real Prometheus scrapes it");
    let admin = cp.kubeconfig_path().to_string_lossy().into_owned();
    let mut mesh = support::spawn_bin(
        "meshsim",
        &[
            "--namespace=default",
            "--virtual-service=istio-test-vs",
            "--service-host=istio-test.dev.svc.cluster.local",
            "--route=primary",
            "--subset=v1=istio-test-v1",
            "--subset=v2=istio-test-v2",
            "--subset=v3=istio-test-v3",
            "--rps=200",
        ],
        &[("KUBECONFIG", &admin)],
    )?;
    let addr = mesh.listening_addr(T).await?;
    let prom = support::Prometheus::start().await?;
    prom.add_target(&addr).await?;
    println!("   meshsim at {addr}, Prometheus at {}", prom.base_url());
    tokio::time::sleep(Duration::from_secs(12)).await;
    traffic(&prom).await?;

    banner("4. canaryd (with the RBAC of deploy/) and the RolloutPolicy: 10% → 2s → 50% → approval → 100%");
    let daemon = fixture::start_daemon(NS).await?;
    let mut watch = watch_status(cp.kubeconfig_path())?;
    let seed = fixture::Seed {
        ns: NS.into(),
        vs_ns: VS_NS.into(),
        client: client.clone(),
    };
    seed.apply(&seed.policy_yaml()).await?;
    let result = async {
        seed.wait_policy("istio-test", "WaitingForApproval", T, |p| {
            p.status.as_ref().is_some_and(|s| s.phase == Phase::WaitingForApproval)
        })
        .await?;
        tokio::time::sleep(Duration::from_secs(12)).await;
        banner("Traffic at 50/50, as Prometheus sees it");
        traffic(&prom).await?;

        banner("5. A person approves: canaryd promote istio-test -n dev");
        let (_, out) = fixture::cli(cp.kubeconfig_path(), &["promote", "istio-test", "-n", NS]).await?;
        print!("{out}");
        seed.wait_policy("istio-test", "Succeeded", T, |p| {
            p.status.as_ref().is_some_and(|s| s.phase == Phase::Succeeded)
        })
        .await?;
        tokio::time::sleep(Duration::from_secs(12)).await;
        banner("Traffic after promotion");
        traffic(&prom).await?;
        let (_, out) = fixture::cli(cp.kubeconfig_path(), &["status", "-n", NS]).await?;
        print!("\n{out}");

        banner("6. The next release, v3, answers 20% of its requests with 500s; Prometheus judges it");
        support::apply_yaml(&client, &fixture::seed_yaml("v3.yaml", NS, VS_NS)).await?;
        support::wait_until("istio-test-v3 Ready", T, async || {
            let d = deployments.get("istio-test-v3").await?;
            Ok((d.status.and_then(|s| s.ready_replicas).unwrap_or(0) >= 1).then_some(()))
        })
        .await?;
        let admin = reqwest::Client::new();
        admin
            .put(format!("http://{addr}/subsets/v3"))
            .json(&serde_json::json!({"successRatio": 0.8}))
            .send()
            .await?
            .error_for_status()?;
        // What Git would say next: stable v2, canary v3, with analysis (faster timings for the demo).
        let policy = std::fs::read_to_string(fixture::repo().join("policies/analysis/rolloutpolicy.yaml"))?
            .replace("http://prometheus.istio-system:9090", prom.base_url())
            .replace("interval: 10s", "interval: 2s")
            .replace("startAfter: 10s", "startAfter: 4s")
            .replace("duration: 30s", "duration: 10s");
        seed.apply(&policy).await?;
        let p = seed
            .wait_policy("istio-test", "RolledBack", T, |p| {
                p.status.as_ref().is_some_and(|s| s.phase == Phase::RolledBack)
            })
            .await?;
        let status = p.status.unwrap_or_default();
        println!("\n   v3 rolled back: {}", status.message.unwrap_or_default());
        tokio::time::sleep(Duration::from_secs(3)).await;
        let (_, out) = fixture::cli(cp.kubeconfig_path(), &["status", "-n", NS]).await?;
        print!("\n{out}");
        tokio::time::sleep(Duration::from_secs(10)).await;
        banner("Traffic after the rollback");
        traffic(&prom).await?;
        anyhow::Ok(())
    }
    .await;
    let _ = watch.kill();
    let _ = watch.wait();
    let result = result.map_err(|e| fixture::fail_with_logs(&daemon, e));
    mesh.terminate(Duration::from_secs(5)).await?;
    banner(if result.is_ok() {
        "Demo finished; stopping every process it started"
    } else {
        "Demo failed"
    });
    result
}
