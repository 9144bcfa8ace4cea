//! Benchmark: N live policies on one daemon, on the bed (real kube-apiserver + etcd, the daemon as
//! a real process with deploy/'s RBAC, real Prometheus, meshsim). Run it with `scripts/bench scale`.
//!
//! Each policy has its own Service, two Deployments (Ready through their status subresource; no
//! pods), DestinationRule and VirtualService. All start Healthy; after the idle measurement a small
//! slice becomes a canary at 10 % with analysis every 30 s against Prometheus, each fed by a meshsim
//! (the first also exports the series of SCALE_MESH_BACKGROUND unrelated services).
//!
//! Environment: SCALE_N (policies, default 100), SCALE_UNRELATED (Deployments no policy names,
//! default 0), SCALE_MESH_BACKGROUND (default 1000), SCALE_IDLE_SECS (default 60),
//! SCALE_ANALYSIS_SECS (default 90), CANARYD_BIN (another daemon binary, for before/after figures).

#[path = "../tests/fixture/mod.rs"]
mod fixture;
#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

use support::{ChildProc, Prometheus};

const NS: &str = "scale";
/// Requests in flight while creating the fleet.
const IN_FLIGHT: usize = 32;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

struct Opts {
    n: usize,
    progressing: usize,
    unrelated: usize,
    mesh_background: u64,
    idle: Duration,
    analysis: Duration,
    sample: usize,
}

#[tokio::main]
async fn main() -> Result<()> {
    let n = env("SCALE_N", 100) as usize;
    let opts = Opts {
        n,
        // A small slice: 1 %, at least 2, at most 10 (one meshsim process each).
        progressing: (n / 100).clamp(2, 10).min(n),
        unrelated: env("SCALE_UNRELATED", 0) as usize,
        mesh_background: env("SCALE_MESH_BACKGROUND", 1000),
        idle: Duration::from_secs(env("SCALE_IDLE_SECS", 60)),
        analysis: Duration::from_secs(env("SCALE_ANALYSIS_SECS", 90)),
        sample: n.min(50),
    };
    let began = Instant::now();
    let row = run(&opts).await?;
    println!("{row}");
    println!("total bench time: {:.0} s", began.elapsed().as_secs_f64());
    Ok(())
}

fn policy_resource() -> ApiResource {
    ApiResource::erase::<canaryd::resources::policy::RolloutPolicy>(&())
}

fn dyn_api(client: &Client, ar: &ApiResource) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), NS, ar)
}

fn deployment(name: &str, app: &str, version: &str) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": NS, "labels": {"app": app}},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": app, "version": version}},
            "template": {
                "metadata": {"labels": {"app": app, "version": version}},
                "spec": {"containers": [{
                    "name": "app", "image": format!("registry.example/{app}:{version}"),
                    "ports": [{"containerPort": 8080}],
                    "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}},
                    "env": [{"name": "APP", "value": app}, {"name": "VERSION", "value": version}],
                }]},
            },
        },
    })
}

fn app_objects(i: usize) -> Vec<(&'static str, Value)> {
    let app = format!("app-{i}");
    let host = format!("{app}.{NS}.svc.cluster.local");
    vec![
        (
            "service",
            json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": app, "namespace": NS},
                "spec": {"selector": {"app": app}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]},
            }),
        ),
        ("deployment", deployment(&format!("{app}-v1"), &app, "v1")),
        ("deployment", deployment(&format!("{app}-v2"), &app, "v2")),
        (
            "destinationrule",
            json!({
                "apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
                "metadata": {"name": app, "namespace": NS},
                "spec": {"host": host, "subsets": [
                    {"name": "v1", "labels": {"version": "v1"}},
                    {"name": "v2", "labels": {"version": "v2"}},
                ]},
            }),
        ),
        (
            "virtualservice",
            json!({
                "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
                "metadata": {"name": app, "namespace": NS},
                "spec": {"hosts": [host], "http": [{"name": "primary", "route": [
                    {"destination": {"host": host, "subset": "v1"}, "weight": 100},
                ]}]},
            }),
        ),
        (
            "rolloutpolicy",
            json!({
                "apiVersion": "canaryd.io/v1alpha1", "kind": "RolloutPolicy",
                "metadata": {"name": app, "namespace": NS},
                "spec": {
                    "service": app,
                    "virtualServices": [{"name": app, "routes": ["primary"]}],
                    "destinationRule": app,
                    "stable": {"subset": "v1", "deployment": format!("{app}-v1")},
                    "steps": [{"weight": 10}, {"pause": {}}, {"weight": 100}],
                    "progressDeadline": "1h",
                },
            }),
        ),
    ]
}

/// Create one object (plain create; Deployments then get a Ready status).
async fn create(client: &Client, kind: &str, obj: Value) -> Result<()> {
    let ar = match kind {
        "service" => ApiResource::erase::<Service>(&()),
        "deployment" => ApiResource::erase::<Deployment>(&()),
        "destinationrule" => canaryd::mesh::istio::destination_rule_resource(),
        "virtualservice" => canaryd::mesh::istio::virtual_service_resource(),
        _ => policy_resource(),
    };
    let obj: DynamicObject = serde_json::from_value(obj)?;
    let name = obj.name_any();
    let api = dyn_api(client, &ar);
    api.create(&PostParams::default(), &obj)
        .await
        .with_context(|| format!("creating {kind} {name}"))?;
    if kind == "deployment" {
        let status = json!({"status": {"observedGeneration": 1, "replicas": 1, "updatedReplicas": 1,
            "readyReplicas": 1, "availableReplicas": 1}});
        Api::<Deployment>::namespaced(client.clone(), NS)
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(status))
            .await
            .with_context(|| format!("marking {name} Ready"))?;
    }
    Ok(())
}

async fn create_all(client: &Client, objects: Vec<(&'static str, Value)>) -> Result<()> {
    stream::iter(objects)
        .map(|(kind, obj)| create(client, kind, obj))
        .buffer_unordered(IN_FLIGHT)
        .try_collect::<()>()
        .await
}

/// /proc figures of one process: (VmRSS KiB, VmHWM KiB, utime+stime seconds).
fn proc_figures(pid: u32) -> Option<(u64, u64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces): state is field 3, utime 14, stime 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Some((kib("VmRSS:")?, kib("VmHWM:")?, ticks as f64 / hz))
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Sum of a Prometheus-text counter's samples by the values of `keys`, for lines matching `filter`.
fn counter_by(text: &str, metric: &str, keys: &[&str], filter: impl Fn(&str) -> bool) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(metric) else {
            continue;
        };
        if !(rest.starts_with('{') || rest.starts_with(' ')) || !filter(line) {
            continue;
        }
        let Some(value) = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) else {
            continue;
        };
        let key: Vec<String> = keys
            .iter()
            .map(|k| {
                let pat = format!("{k}=\"");
                label_at(line, &pat)
                    .map(|at| {
                        let v = &line[at + pat.len()..];
                        v[..v.find('"').unwrap_or(0)].to_string()
                    })
                    .unwrap_or_default()
            })
            .collect();
        *out.entry(key.join(" ")).or_insert(0.0) += value;
    }
    out
}

/// Where label `pat` (`name="`) starts, not inside a longer name (`resource` in `subresource`).
fn label_at(line: &str, pat: &str) -> Option<usize> {
    line.match_indices(pat)
        .map(|(at, _)| at)
        .find(|&at| at > 0 && matches!(line.as_bytes()[at - 1], b'{' | b','))
}

async fn apiserver_metrics(client: &Client) -> Result<String> {
    let req = http::Request::get("/metrics").body(Vec::new())?;
    Ok(client.request_text(req).await?)
}

async fn http_text(url: String) -> Result<String> {
    Ok(reqwest::get(&url).await?.error_for_status()?.text().await?)
}

fn diff(after: &BTreeMap<String, f64>, before: &BTreeMap<String, f64>) -> BTreeMap<String, f64> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0.0)))
        .filter(|(_, v)| *v > 0.0)
        .collect()
}

const WRITES: [&str; 5] = ["POST", "PUT", "PATCH", "DELETE", "APPLY"];

fn canary_patch(prom: &Prometheus) -> Value {
    json!({"spec": {
        "canary": {"subset": "v2", "deployment": "DEPLOYMENT"},
        "analysis": {
            "interval": "30s", "startAfter": "0s", "failureLimit": 1000, "inconclusiveLimit": 1000,
            "minRequests": 1,
            "prometheus": {"address": prom.base_url(), "timeout": "5s"},
            "metrics": [
                {"name": "success-rate", "template": "istio-request-success-rate", "min": 90, "window": "1m"},
                {"name": "latency-p99", "template": "istio-request-duration-p99", "max": 5000, "window": "1m"},
            ],
        },
    }})
}

async fn run(o: &Opts) -> Result<String> {
    let cp = support::control_plane().await?;
    let client = support::client().await?;
    let kubeconfig = fixture::daemon_kubeconfig().await?;
    support::create_namespace(NS).await?;
    let prom = Prometheus::start().await?;

    // The fleet, created before the daemon starts.
    let t = Instant::now();
    let mut objects: Vec<(&'static str, Value)> = (0..o.n).flat_map(app_objects).collect();
    objects.extend((0..o.unrelated).map(|i| {
        (
            "deployment",
            deployment(&format!("other-{i}"), &format!("other-{i}"), "v1"),
        )
    }));
    let count = objects.len();
    create_all(&client, objects).await?;
    let create_secs = t.elapsed().as_secs_f64();
    eprintln!(
        "created {count} objects ({} policies, {} unrelated Deployments) in {create_secs:.1} s, {IN_FLIGHT} in flight",
        o.n, o.unrelated
    );

    // The meshsims of the slice that will progress (traffic follows their VirtualServices).
    let mut meshes: Vec<ChildProc> = Vec::new();
    let admin_kubeconfig = cp.kubeconfig_path().to_string_lossy().into_owned();
    for i in 0..o.progressing {
        let app = format!("app-{i}");
        let args = [
            format!("--namespace={NS}"),
            format!("--virtual-service={app}"),
            format!("--service-host={app}.{NS}.svc.cluster.local"),
            "--route=primary".into(),
            format!("--subset=v1={app}-v1"),
            format!("--subset=v2={app}-v2"),
            "--rps=50".into(),
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut mesh = support::spawn_bin("meshsim", &args, &[("KUBECONFIG", &admin_kubeconfig)])?;
        let addr = mesh.listening_addr(Duration::from_secs(60)).await?;
        prom.add_target(&addr).await?;
        meshes.push(mesh);
    }

    // The rest of the mesh: series of services no policy names, in a process of their own
    // (a large scrape, every 5 s).
    if o.mesh_background > 0 {
        let args = [
            format!("--namespace={NS}"),
            "--virtual-service=no-such-vs".into(),
            format!("--service-host=no-such-vs.{NS}.svc.cluster.local"),
            format!("--background-services={}", o.mesh_background),
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut mesh = support::spawn_bin("meshsim", &args, &[("KUBECONFIG", &admin_kubeconfig)])?;
        let addr = mesh.listening_addr(Duration::from_secs(60)).await?;
        prom.add_target_with_labels(&addr, &[("__scrape_interval__", "5s"), ("__scrape_timeout__", "5s")])
            .await?;
        meshes.push(mesh);
    }

    // The daemon, as deployed: all namespaces, deploy/'s RBAC.
    let bin = match std::env::var_os("CANARYD_BIN") {
        Some(p) => PathBuf::from(p),
        None => support::bin_path("canaryd")?,
    };
    let mut cmd = std::process::Command::new(&bin);
    cmd.args(["run", "--listen", "127.0.0.1:0"])
        .env("KUBECONFIG", &kubeconfig)
        .env("RUST_LOG", "info,kube=warn");
    let started = Instant::now();
    let mut daemon = ChildProc::spawn("canaryd", cmd, &support::scratch_dir("canaryd")?, true)?;
    let pid = daemon.pid();
    let samples: Arc<Mutex<Vec<(u64, u64, f64)>>> = Arc::default();
    let sampler = {
        let samples = samples.clone();
        tokio::spawn(async move {
            while let Some(f) = proc_figures(pid) {
                samples.lock().map(|mut s| s.push(f)).ok();
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    };
    let daemon_addr = daemon.listening_addr(Duration::from_secs(60)).await?;
    let policies = dyn_api(&client, &policy_resource());
    // One watch (not repeated lists, which would load the API server we measure) records when each
    // policy's status first shows its generation observed.
    let seen: Arc<Mutex<HashMap<String, (i64, Instant)>>> = Arc::default();
    let watch = {
        let seen = seen.clone();
        let stream = watcher(policies.clone(), watcher::Config::default()).applied_objects();
        tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(Ok(p)) = stream.next().await {
                let observed = p.data.pointer("/status/observedGeneration").and_then(Value::as_i64);
                if let Some(g) = observed.filter(|g| Some(*g) == p.metadata.generation)
                    && let Ok(mut seen) = seen.lock()
                {
                    let e = seen.entry(p.name_any()).or_insert((g, Instant::now()));
                    if g > e.0 {
                        *e = (g, Instant::now());
                    }
                }
            }
        })
    };
    let all_reconciled = support::wait_until("every policy reconciled once", Duration::from_secs(1800), async || {
        let seen = seen.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
        Ok((seen.len() == o.n).then(|| seen.values().map(|(_, t)| t.saturating_duration_since(started)).max()))
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e:#}\n{}", daemon.logs(40)))?
    .unwrap_or_default();
    eprintln!(
        "all {} policies reconciled {:.1} s after start",
        o.n,
        all_reconciled.as_secs_f64()
    );
    let phase = |name: &str| {
        if let Some((rss, hwm, cpu)) = proc_figures(pid) {
            eprintln!(
                "[{name}] RSS {:.1} MiB, VmHWM {:.1} MiB, CPU {cpu:.1} s",
                mib(rss),
                mib(hwm)
            );
        }
    };
    phase("reconciled");

    // Idle fleet: nothing changes; count the API requests and CPU.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let api_before = apiserver_metrics(&client).await?;
    let cpu_before = proc_figures(pid).context("daemon gone")?.2;
    tokio::time::sleep(o.idle).await;
    let api_after = apiserver_metrics(&client).await?;
    let (rss_idle, _, cpu_after) = proc_figures(pid).context("daemon gone")?;
    let per_min = 60.0 / o.idle.as_secs_f64();
    let requests = |text: &str| {
        counter_by(
            text,
            "apiserver_request_total",
            &["verb", "resource", "subresource"],
            |l| !l.contains(",resource=\"\"") && !l.contains("{resource=\"\""),
        )
    };
    let idle_requests = diff(&requests(&api_after), &requests(&api_before));
    let idle_total: f64 = idle_requests.values().fold(0.0, |a, b| a + b) * per_min;
    let idle_writes: f64 = idle_requests
        .iter()
        .filter(|(k, _)| WRITES.iter().any(|w| k.starts_with(w)))
        .fold(0.0, |a, (_, v)| a + v)
        * per_min;
    let idle_cpu = (cpu_after - cpu_before) * per_min;
    eprintln!("idle requests by verb/resource over {:?}: {idle_requests:?}", o.idle);
    phase("idle");

    // Reconcile latency after a spec change: a step weight on a sample of Healthy policies.
    let sample: Vec<String> = (o.progressing..o.n)
        .take(o.sample)
        .map(|i| format!("app-{i}"))
        .collect();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let patched: Vec<(String, i64, Instant)> = stream::iter(sample.iter().cloned())
        .map(|name| {
            let policies = policies.clone();
            async move {
                let patch = json!({"spec": {"steps": [{"weight": 20}, {"pause": {}}, {"weight": 100}]}});
                let p = policies
                    .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
                    .await?;
                Ok::<_, anyhow::Error>((name, p.metadata.generation.unwrap_or(0), Instant::now()))
            }
        })
        .buffer_unordered(8)
        .try_collect()
        .await?;
    let mut latencies = support::wait_until("the sample reconciled", Duration::from_secs(300), async || {
        let seen = seen.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
        let lat: Option<Vec<Duration>> = patched
            .iter()
            .map(|(name, g, at)| {
                seen.get(name)
                    .filter(|(sg, _)| sg >= g)
                    .map(|(_, t)| t.saturating_duration_since(*at))
            })
            .collect();
        Ok(lat)
    })
    .await?;
    watch.abort();
    phase("spec change");
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p).round() as usize].as_secs_f64() * 1000.0;
    let (p50, p99) = (pct(0.5), pct(0.99));

    // A slice progressing: canary at 10 % with analysis every 30 s.
    for i in 0..o.progressing {
        let mut patch = canary_patch(&prom);
        patch["spec"]["canary"]["deployment"] = json!(format!("app-{i}-v2"));
        policies
            .patch(&format!("app-{i}"), &PatchParams::default(), &Patch::Merge(patch))
            .await?;
    }
    let checked = |p: &DynamicObject| {
        p.data
            .pointer("/status/analysis/metrics")
            .and_then(Value::as_array)
            .is_some_and(|m| !m.is_empty())
    };
    support::wait_until(
        "a first check of every progressing policy",
        Duration::from_secs(120),
        async || {
            let mut done = 0;
            for i in 0..o.progressing {
                done += usize::from(checked(&policies.get(&format!("app-{i}")).await?));
            }
            Ok((done == o.progressing).then_some(()))
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e:#}\n{}", daemon.logs(40)))?;
    phase("first checks");
    let prom_metrics = || http_text(format!("{}/metrics", prom.base_url()));
    let daemon_metrics = || http_text(format!("http://{daemon_addr}/metrics"));
    let query_filter = |l: &str| l.contains("handler=\"/api/v1/query\"");
    let (pb, db) = (prom_metrics().await?, daemon_metrics().await?);
    tokio::time::sleep(o.analysis).await;
    let (pa, da) = (prom_metrics().await?, daemon_metrics().await?);
    let sum = |text: &str, metric: &str| counter_by(text, metric, &[], query_filter).values().sum::<f64>();
    let ticks = counter_by(&da, "canaryd_analysis_ticks_total", &[], |_| true)
        .values()
        .sum::<f64>()
        - counter_by(&db, "canaryd_analysis_ticks_total", &[], |_| true)
            .values()
            .sum::<f64>();
    let queries = sum(&pa, "prometheus_http_requests_total") - sum(&pb, "prometheus_http_requests_total");
    let bytes =
        sum(&pa, "prometheus_http_response_size_bytes_sum") - sum(&pb, "prometheus_http_response_size_bytes_sum");
    let ticks = ticks.max(1.0);
    let series = Prometheus::query(&prom, "count({__name__=~\"istio_request.*\"})")
        .await?
        .first()
        .map(|(_, v)| *v)
        .unwrap_or(0.0);

    let (rss_end, hwm, _) = proc_figures(pid).context("daemon gone")?;
    let peak_sampled = samples
        .lock()
        .map(|s| s.iter().map(|f| f.0).max().unwrap_or(0))
        .unwrap_or(0);
    sampler.abort();
    if let Some(status) = daemon.try_wait()? {
        bail!("the daemon exited ({status})\n{}", daemon.logs(40));
    }
    drop(meshes);
    if let Some(dir) = std::env::var_os("SCALE_LOG_DIR") {
        let _ = std::fs::copy(
            daemon.stderr_log(),
            PathBuf::from(dir).join(format!("canaryd-{}.log", o.n)),
        );
    }
    Ok(format!(
        "| N | unrelated Deployments | create (objects, s) | RSS idle MiB | RSS end MiB | RSS peak (VmHWM) MiB | CPU s/min idle | start → all reconciled s | spec change p50 / p99 ms | API req/min idle | writes/min idle | Prometheus queries/tick | response bytes/tick | istio series in Prometheus |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n\
         | {} | {} | {count} in {create_secs:.0} | {:.1} | {:.1} | {:.1} (sampled {:.1}) | {idle_cpu:.2} | {:.1} | {p50:.0} / {p99:.0} | {idle_total:.1} | {idle_writes:.1} | {:.1} | {:.0} | {series:.0} |",
        o.n,
        o.unrelated,
        mib(rss_idle),
        mib(rss_end),
        mib(hwm),
        mib(peak_sampled),
        all_reconciled.as_secs_f64(),
        queries / ticks,
        bytes / ticks,
    ))
}
