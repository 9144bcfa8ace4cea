//! Analysis against the real Prometheus scraping the mesh simulator: the daemon judges the canary
//! from Istio's telemetry and rolls back on an SLO breach.

mod fixture;
mod support;

use std::time::Duration;

use anyhow::{Context, Result};
use canaryd::resources::policy::{Phase, RolloutPolicy};
use fixture::analysis::{
    POLICY, SUCCESS_AND_LATENCY, VS, breach_to_rollback, mesh, message, phase, policy, set_subset,
};
use fixture::{ensure, seed, start_daemon};
use serde_json::json;
use support::Prometheus;

const T: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthy_canary_walks_to_100_and_is_promoted() -> Result<()> {
    let seed = seed("an-healthy").await?;
    let prom = Prometheus::start().await?;
    let (_mesh, _) = mesh(&seed, &prom, 400).await?;
    let daemon = start_daemon(&seed.ns).await?;
    let run = async {
        let steps = "    - weight: 10\n    - weight: 50\n    - weight: 100\n";
        seed.apply(&policy(&seed, &prom, steps, SUCCESS_AND_LATENCY)?).await?;
        let mut seen = Vec::new();
        let done = support::wait_until("Succeeded", T, async || {
            let p = seed.policy(POLICY).await?;
            let w = p.status.as_ref().map(|s| s.canary_weight).unwrap_or(0);
            if seen.last() != Some(&w) && phase(&p) != Phase::Succeeded {
                seen.push(w);
            }
            Ok((phase(&p) == Phase::Succeeded).then_some(p))
        })
        .await?;
        ensure(seen.ends_with(&[10, 50, 100]), format!("weights seen: {seen:?}"))?;
        seed.wait_weights(&seed.vs_ns, VS, 1, &[("v1", 0), ("v2", 100)], T)
            .await?;
        let a = done.status.and_then(|s| s.analysis).context("analysis status")?;
        ensure(
            a.metrics.len() == 2 && a.metrics.iter().all(|m| m.value.is_some()),
            format!("{a:?}"),
        )?;
        Ok(())
    };
    run.await.map_err(|e| fixture::fail_with_logs(&daemon, e))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_canary_is_rolled_back_within_one_interval_of_the_breach() -> Result<()> {
    let latency = breach_to_rollback("an-bad").await?;
    eprintln!("breach → rollback: {latency:?}");
    // One interval (1 s) plus 1 s.
    ensure(
        latency <= Duration::from_secs(2),
        format!("rollback took {latency:?} after the breach"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_canary_is_rolled_back_on_latency_alone() -> Result<()> {
    let seed = seed("an-slow").await?;
    let prom = Prometheus::start().await?;
    let (_mesh, addr) = mesh(&seed, &prom, 400).await?;
    set_subset(&addr, "v2", json!({"latencyMs": {"p50": 300, "p99": 1500}})).await?;
    let daemon = start_daemon(&seed.ns).await?;
    let run = async {
        let steps = "    - weight: 10\n    - pause: {}\n    - weight: 100\n";
        seed.apply(&policy(&seed, &prom, steps, SUCCESS_AND_LATENCY)?).await?;
        let p = seed
            .wait_policy(POLICY, "RolledBack", T, |p| phase(p) == Phase::RolledBack)
            .await?;
        seed.wait_weights(&seed.vs_ns, VS, 1, &[("v1", 100), ("v2", 0)], T)
            .await?;
        let m = message(&p);
        ensure(
            m.contains("latency-p99") && !m.contains("success-rate"),
            format!("message: {m}"),
        )?;
        let results = p.status.and_then(|s| s.analysis).map(|a| a.metrics).unwrap_or_default();
        let verdict = |name: &str| results.iter().find(|r| r.name == name).map(|r| r.verdict);
        use canaryd::resources::policy::Verdict;
        ensure(
            verdict("latency-p99") == Some(Verdict::Fail) && verdict("success-rate") == Some(Verdict::Pass),
            format!("{results:?}"),
        )?;
        Ok(())
    };
    run.await.map_err(|e| fixture::fail_with_logs(&daemon, e))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_traffic_is_inconclusive_and_pauses_after_the_limit() -> Result<()> {
    let seed = seed("an-idle").await?;
    let prom = Prometheus::start().await?;
    let (_mesh, _) = mesh(&seed, &prom, 0).await?;
    let daemon = start_daemon(&seed.ns).await?;
    let run = async {
        let steps = "    - weight: 10\n    - weight: 100\n";
        let analysis = SUCCESS_AND_LATENCY.replace("inconclusiveLimit: 30", "inconclusiveLimit: 3");
        seed.apply(&policy(&seed, &prom, steps, &analysis)?).await?;
        let mut weights_seen = std::collections::BTreeSet::new();
        let p = support::wait_until("paused for inconclusive checks", T, async || {
            let p = seed.policy(POLICY).await?;
            weights_seen.insert(p.status.as_ref().map(|s| s.canary_weight).unwrap_or(0));
            anyhow::ensure!(
                phase(&p) != Phase::RolledBack,
                "rolled back on no traffic: {}",
                message(&p)
            );
            Ok((phase(&p) == Phase::Paused).then_some(p))
        })
        .await?;
        let m = message(&p);
        ensure(
            m.contains("inconclusive") && m.contains("inconclusiveLimit 3"),
            format!("message: {m}"),
        )?;
        ensure(
            weights_seen.iter().all(|w| *w <= 10),
            format!("advanced on no traffic: {weights_seen:?}"),
        )?;
        seed.wait_weights(&seed.vs_ns, VS, 1, &[("v1", 90), ("v2", 10)], T)
            .await?;
        Ok(())
    };
    run.await.map_err(|e| fixture::fail_with_logs(&daemon, e))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_down_blocks_promotion_then_analysis_goes_on() -> Result<()> {
    let seed = seed("an-down").await?;
    let mut prom = Prometheus::start().await?;
    let (_mesh, _) = mesh(&seed, &prom, 400).await?;
    let daemon = start_daemon(&seed.ns).await?;
    let run = async {
        let steps = "    - weight: 10\n    - weight: 100\n";
        let analysis = SUCCESS_AND_LATENCY
            .replace("startAfter: 2s", "startAfter: 30s")
            .replace(
                "    prometheus:",
                "    onProviderError: {after: 3, action: pause}\n    prometheus:",
            );
        seed.apply(&policy(&seed, &prom, steps, &analysis)?).await?;
        seed.wait_weights(&seed.vs_ns, VS, 1, &[("v1", 90), ("v2", 10)], T)
            .await?;
        prom.stop().await?;
        // The checks start (startAfter) while Prometheus is down: errors, never a promotion.
        let p = seed
            .wait_policy(POLICY, "held on provider errors", T, |p| {
                p.status
                    .as_ref()
                    .is_some_and(|s| s.history.last().is_some_and(|t| t.reason == "ProviderErrors"))
            })
            .await?;
        ensure(
            phase(&p) == Phase::Paused && message(&p).contains("provider errors"),
            message(&p),
        )?;
        seed.wait_weights(&seed.vs_ns, VS, 1, &[("v1", 90), ("v2", 10)], T)
            .await?;
        prom.restart().await?;
        seed.wait_policy(POLICY, "Succeeded after Prometheus is back", T, |p| {
            phase(p) == Phase::Succeeded
        })
        .await?;
        Ok(())
    };
    run.await.map_err(|e| fixture::fail_with_logs(&daemon, e))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relative_check_fails_when_the_canary_is_worse_than_stable() -> Result<()> {
    let seed = seed("an-relative").await?;
    let prom = Prometheus::start().await?;
    let (_mesh, addr) = mesh(&seed, &prom, 400).await?;
    set_subset(&addr, "v2", json!({"successRatio": 0.98})).await?;
    let daemon = start_daemon(&seed.ns).await?;
    let run = async {
        let steps = "    - weight: 50\n    - pause: {}\n    - weight: 100\n";
        let analysis = "  analysis:
    interval: 1s
    startAfter: 2s
    failureLimit: 2
    minRequests: 10
    prometheus: {address: PROMETHEUS}
    metrics:
      - {name: success-rate, template: istio-request-success-rate, min: 95, window: 5s}
      - name: vs-stable
        template: istio-request-success-rate
        relative: {maxDropFromStable: 0.5}
        window: 5s
";
        seed.apply(&policy(&seed, &prom, steps, analysis)?).await?;
        let p = seed
            .wait_policy(POLICY, "RolledBack", T, |p| phase(p) == Phase::RolledBack)
            .await?;
        let m = message(&p);
        ensure(
            m.contains("vs-stable") && !m.contains("success-rate "),
            format!("message: {m}"),
        )?;
        let results = p.status.and_then(|s| s.analysis).map(|a| a.metrics).unwrap_or_default();
        let rel = results.iter().find(|r| r.name == "vs-stable").context("vs-stable")?;
        ensure(
            rel.value.is_some_and(|v| v > 95.0 && v < 99.0) && rel.stable_value.is_some_and(|v| v > 99.5),
            format!("{rel:?}"),
        )?;
        Ok(())
    };
    run.await.map_err(|e| fixture::fail_with_logs(&daemon, e))
}

/// Prometheus load does not grow with the number of rollouts: 50 rollouts with the same two
/// (template, window) pairs cost two queries per tick.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_rollouts_share_one_query_per_template_and_window() -> Result<()> {
    let client = support::client().await?;
    let ns = "an-fifty";
    support::create_namespace(ns).await?;
    let prom = Prometheus::start().await?;
    // Prometheus' own request counter, to check canaryd's count from the other side.
    prom.add_target(prom.base_url().trim_start_matches("http://")).await?;
    let mut yaml = String::new();
    for i in 0..50 {
        let app = format!("app-{i}");
        yaml.push_str(&format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {app}, namespace: {ns}}}\nspec:\n  selector: {{app: {app}}}\n  ports: [{{port: 80}}]\n---\n"
        ));
        for v in ["v1", "v2"] {
            yaml.push_str(&format!(
                "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: {app}-{v}, namespace: {ns}}}\nspec:\n  replicas: 1\n  selector: {{matchLabels: {{app: {app}, version: {v}}}}}\n  template:\n    metadata: {{labels: {{app: {app}, version: {v}}}}}\n    spec: {{containers: [{{name: app, image: example.invalid/app:1}}]}}\n---\n"
            ));
        }
        let host = format!("{app}.{ns}.svc.cluster.local");
        yaml.push_str(&format!(
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: {app}, namespace: {ns}}}\nspec:\n  host: {host}\n  subsets: [{{name: v1, labels: {{version: v1}}}}, {{name: v2, labels: {{version: v2}}}}]\n---\n\
             apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: {app}, namespace: {ns}}}\nspec:\n  hosts: [{host}]\n  http: [{{route: [{{destination: {{host: {host}, subset: v1}}}}]}}]\n---\n\
             apiVersion: canaryd.io/v1alpha1\nkind: RolloutPolicy\nmetadata: {{name: {app}, namespace: {ns}}}\nspec:\n  service: {app}\n  virtualServices: [{{name: {app}}}]\n  destinationRule: {app}\n  stable: {{subset: v1, deployment: {app}-v1}}\n  canary: {{subset: v2, deployment: {app}-v2}}\n  steps: [{{weight: 10}}, {{weight: 100}}]\n  analysis:\n    interval: 1s\n    inconclusiveLimit: 1000\n    prometheus: {{address: {}}}\n    metrics:\n    - {{name: success-rate, template: istio-request-success-rate, min: 99, window: 10s}}\n    - {{name: latency, template: istio-request-duration-p99, max: 500, window: 10s}}\n---\n",
            prom.base_url()
        ));
    }
    let (objects, policies): (Vec<&str>, Vec<&str>) = yaml.split("---\n").partition(|d| !d.contains("RolloutPolicy"));
    support::apply_yaml(&client, &objects.join("---\n")).await?;
    for i in 0..50 {
        for v in ["v1", "v2"] {
            fixture::mark_ready(&client, ns, &format!("app-{i}-{v}"), 1).await?;
        }
    }
    let mut daemon = support::spawn_bin(
        "canaryd",
        &["run", "--listen", "127.0.0.1:0", "--namespace", ns],
        &[("KUBECONFIG", &fixture::daemon_kubeconfig().await?.to_string_lossy())],
    )?;
    let addr = daemon.listening_addr(T).await?;
    let run = async {
        support::apply_yaml(&client, &policies.join("---\n")).await?;
        let api: kube::Api<RolloutPolicy> = kube::Api::namespaced(client.clone(), ns);
        support::wait_until("50 rollouts at 10%", T, async || {
            let list = api.list(&Default::default()).await?;
            let at_ten = list
                .items
                .iter()
                .filter(|p| p.status.as_ref().is_some_and(|s| s.canary_weight == 10))
                .count();
            Ok((at_ten == 50).then_some(()))
        })
        .await?;
        // Let every policy settle on the interval grid, then measure.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let http = reqwest::Client::new();
        let counters = async || -> Result<(f64, f64, f64)> {
            let text = http.get(format!("http://{addr}/metrics")).send().await?.text().await?;
            if std::env::var_os("DEBUG_METRICS").is_some() {
                eprintln!("{text}");
            }
            let read = |name: &str| {
                text.lines()
                    .find(|l| l.starts_with(name))
                    .and_then(|l| l.rsplit(' ').next())
                    .and_then(|v| v.parse::<f64>().ok())
                    .unwrap_or(0.0)
            };
            let served = prom
                .query("sum(prometheus_http_requests_total{handler=\"/api/v1/query\"})")
                .await?
                .first()
                .map(|s| s.1)
                .unwrap_or(0.0);
            Ok((
                read("canaryd_analysis_ticks_total"),
                read("canaryd_prometheus_queries_total"),
                served,
            ))
        };
        let (ticks0, queries0, served0) = counters().await?;
        tokio::time::sleep(Duration::from_secs(10)).await;
        let (ticks1, queries1, served1) = counters().await?;
        let (ticks, queries, served) = (ticks1 - ticks0, queries1 - queries0, served1 - served0);
        eprintln!("50 rollouts, 10 s: {ticks} ticks, {queries} queries by canaryd, {served} served by Prometheus");
        ensure(ticks >= 8.0, format!("only {ticks} ticks in 10 s"))?;
        ensure(
            queries == 2.0 * ticks,
            format!("{queries} queries in {ticks} ticks: want 2 per tick"),
        )?;
        // Prometheus' own count, read from its 1 s scrapes: canaryd's queries, plus this test's
        // counter queries, give or take one tick (2 queries) of scrape timing at each end.
        ensure(
            (served - queries).abs() <= 6.0,
            format!("Prometheus served {served} queries, canaryd asked {queries}"),
        )?;
        Ok(())
    };
    run.await.map_err(|e| fixture::fail_with_logs(&daemon, e))?;
    daemon.kill()?;
    Ok(())
}
