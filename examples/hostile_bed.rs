//! Benchmark: the whole daemon's memory on the bed while every answer it reads is the largest it
//! accepts. The real `canaryd` process (deploy/'s RBAC, the local control plane) runs POLICIES
//! policies (Deployments Ready through their status, no pods). After the idle figure, all of them
//! start a rollout at once, each with a MetricProvider of its own at a hostile Prometheus stand-in:
//! every query is answered with just under MAX_ANSWER_BYTES and MAX_SERIES series, the asking
//! rollout's workloads at MAX_KEPT_PER_WORKLOAD series each with every kept label at its longest.
//! Every transition goes to a Slack bot target whose Web API answers just under the 64 KiB it reads,
//! and every rollout and event hook answers 200 with a 100 MB body (which canaryd must not read).
//! Prints the daemon's idle RSS and its peak (VmHWM in /proc) and fails when the peak reaches half of
//! deploy/'s 256 MiB limit. Run it with `scripts/bench memory` (CANARYD_BIN: another daemon binary).

#[path = "../tests/fixture/mod.rs"]
mod fixture;
#[path = "../tests/support/mod.rs"]
mod support;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use canaryd::prometheus::client::{MAX_ANSWER_BYTES, MAX_KEPT_PER_WORKLOAD, MAX_SERIES};
use futures::{StreamExt, TryStreamExt, stream};
use kube::Client;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use support::ChildProc;

const POLICIES: usize = 50;
/// The longest namespace name: it is in every kept series.
const NS: &str = "tenant-namespace-with-a-name-of-the-longest-length-kubernetes-k";
/// Half of deploy/deployment.yaml's memory limit (256Mi).
const BOUND_MIB: f64 = 128.0;
/// How long the hostile answers flow (several analysis intervals).
const LOAD: Duration = Duration::from_secs(60);
/// The Slack answers canaryd reads up to (notify ANSWER_LIMIT).
const SLACK_LIMIT: usize = 64 * 1024;
/// What a hook announces and would send.
const HOOK_BODY: u64 = 100 * 1024 * 1024;

/// Served by the stand-in, counted.
#[derive(Default)]
struct Served {
    queries: AtomicU64,
    query_bytes: AtomicU64,
    slack: AtomicU64,
    hooks: AtomicU64,
    /// Bytes of hook bodies that left the stand-in before canaryd closed the connection.
    hook_bytes: AtomicU64,
}

struct Answers {
    /// The answer up to the asking rollout's series, its other series and the end.
    head: Vec<u8>,
    tail: Vec<u8>,
    slack: Vec<u8>,
}

fn series(workload: &str, code: &str, le: &str, i: usize) -> String {
    format!(
        r#"{{"metric":{{"destination_workload":"{workload}","destination_workload_namespace":"{NS}","response_code":"{code}","le":"{le}"}},"value":[1717459200.123,"{i}.5"]}}"#
    )
}

/// A kept label value at its longest (253 bytes), distinct per series.
fn long(prefix: &str, i: usize) -> String {
    format!("{prefix}{i:06}{}", "9".repeat(253 - 6 - prefix.len()))
}

/// The asking policy's own series: MAX_KEPT_PER_WORKLOAD per workload, every kept label at its longest.
fn own_series(policy: usize) -> String {
    let mut parts = Vec::with_capacity(2 * MAX_KEPT_PER_WORKLOAD);
    for i in 0..2 * MAX_KEPT_PER_WORKLOAD {
        let version = if i < MAX_KEPT_PER_WORKLOAD { "v2" } else { "v1" };
        parts.push(series(
            &format!("app-{policy}-{version}"),
            &long("", i),
            &long("1", i),
            i,
        ));
    }
    parts.join(",")
}

fn answers() -> Answers {
    let own = own_series(POLICIES - 1); // the longest workload names
    let others = MAX_SERIES - 2 * MAX_KEPT_PER_WORKLOAD;
    let base = series("workload-000000-", "503", "+Inf", 0).len() + 1;
    let pad = (MAX_ANSWER_BYTES - 300 - own.len()) / others - base - 6; // 6: the longest sample number
    let rest: Vec<String> = (0..others)
        .map(|i| series(&format!("workload-{i:06}-{}", "x".repeat(pad)), "503", "+Inf", i))
        .collect();
    let head = br#"{"status":"success","data":{"resultType":"vector","result":["#.to_vec();
    let tail = format!(",{}]}}}}", rest.join(",")).into_bytes();
    let mut slack = br#"{"ok":true,"channel":"C42","ts":"1717459200.000100","pad":""#.to_vec();
    let end = br#""}"#;
    slack.resize(SLACK_LIMIT - end.len(), b'x');
    slack.extend_from_slice(end);
    Answers { head, tail, slack }
}

/// One request on a fresh connection: (method, path); the body is read and dropped.
async fn request(reader: &mut BufReader<TcpStream>) -> Option<(String, String)> {
    let mut line = String::new();
    reader.read_line(&mut line).await.ok()?;
    let mut parts = line.split(' ');
    let (method, path) = (parts.next()?.to_string(), parts.next()?.to_string());
    let mut length = 0usize;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).await.ok()? == 0 {
            return None;
        }
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((k, v)) = header.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            length = v.trim().parse().ok()?;
        }
    }
    let mut body = vec![0; length.min(1 << 20)];
    reader.read_exact(&mut body).await.ok()?;
    Some((method, path))
}

async fn answer(conn: TcpStream, answers: Arc<Answers>, served: Arc<Served>) -> Option<()> {
    let mut reader = BufReader::new(conn);
    let (_, path) = request(&mut reader).await?;
    let mut out = reader.into_inner();
    let head = |len: u64| {
        format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {len}\r\nconnection: close\r\n\r\n"
        )
    };
    if let Some(policy) = path
        .strip_prefix("/p")
        .and_then(|p| p.split('/').next())
        .and_then(|p| p.parse::<usize>().ok())
    {
        let own = own_series(policy);
        let len = answers.head.len() + own.len() + answers.tail.len();
        if len > MAX_ANSWER_BYTES {
            eprintln!("answer of {len} bytes is over the cap");
        }
        out.write_all(head(len as u64).as_bytes()).await.ok()?;
        out.write_all(&answers.head).await.ok()?;
        out.write_all(own.as_bytes()).await.ok()?;
        out.write_all(&answers.tail).await.ok()?;
        served.queries.fetch_add(1, Ordering::Relaxed);
        served.query_bytes.fetch_add(len as u64, Ordering::Relaxed);
    } else if path.starts_with("/slack/") {
        out.write_all(head(answers.slack.len() as u64).as_bytes()).await.ok()?;
        out.write_all(&answers.slack).await.ok()?;
        served.slack.fetch_add(1, Ordering::Relaxed);
    } else {
        // A hook: 200 and a body canaryd must not read; written until it hangs up.
        served.hooks.fetch_add(1, Ordering::Relaxed);
        out.write_all(head(HOOK_BODY).as_bytes()).await.ok()?;
        let chunk = vec![b'x'; 64 * 1024];
        let mut sent = 0;
        while sent < HOOK_BODY {
            out.write_all(&chunk).await.ok()?;
            sent += chunk.len() as u64;
            served.hook_bytes.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        }
    }
    out.shutdown().await.ok()
}

async fn stand_in(served: Arc<Served>) -> Result<String> {
    let answers = Arc::new(answers());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            tokio::spawn(answer(conn, answers.clone(), served.clone()));
        }
    });
    Ok(base)
}

fn app_objects(i: usize) -> Vec<Value> {
    let app = format!("app-{i}");
    let host = format!("{app}.{NS}.svc.cluster.local");
    let deployment = |version: &str| {
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": format!("{app}-{version}"), "namespace": NS, "labels": {"app": app}},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"app": app, "version": version}},
                "template": {
                    "metadata": {"labels": {"app": app, "version": version}},
                    "spec": {"containers": [{"name": "app", "image": format!("registry.example/{app}:{version}")}]},
                },
            },
        })
    };
    vec![
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": app, "namespace": NS},
            "spec": {"selector": {"app": app}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}),
        deployment("v1"),
        deployment("v2"),
        json!({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
            "metadata": {"name": app, "namespace": NS},
            "spec": {"host": host, "subsets": [
                {"name": "v1", "labels": {"version": "v1"}}, {"name": "v2", "labels": {"version": "v2"}}]}}),
        json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": app, "namespace": NS},
            "spec": {"hosts": [host], "http": [{"name": "primary", "route": [
                {"destination": {"host": host, "subset": "v1"}, "weight": 100}]}]}}),
        json!({"apiVersion": "canaryd.io/v1alpha1", "kind": "RolloutPolicy",
        "metadata": {"name": app, "namespace": NS},
        "spec": {
            "service": app,
            "virtualServices": [{"name": app, "routes": ["primary"]}],
            "destinationRule": app,
            "stable": {"subset": "v1", "deployment": format!("{app}-v1")},
            "steps": [{"weight": 10}, {"pause": {}}, {"weight": 100}],
            "progressDeadline": "1h",
        }}),
    ]
}

/// What starts policy `i`'s rollout: its canary, analysis at its own provider, hooks and Slack.
fn rollout_patch(i: usize, base: &str) -> Value {
    let hook = |name: &str, type_: &str| json!({"name": name, "type": type_, "url": format!("{base}/hook/{i}/{name}"), "interval": "1s"});
    json!({"spec": {
        "canary": {"subset": "v2", "deployment": format!("app-{i}-v2")},
        "analysis": {
            "interval": "5s", "startAfter": "0s", "failureLimit": 1000, "inconclusiveLimit": 1000,
            "provider": format!("hostile-{i}"),
            "metrics": [{"name": "success-rate", "template": "istio-request-success-rate", "min": 0, "window": "1m"}],
        },
        "webhooks": [hook("load", "rollout"), hook("news", "event")],
        "notifications": [{"target": "hostile-slack"}],
    }})
}

/// Platform objects: a MetricProvider per policy (so that none shares a query), one Slack target.
fn platform_yaml(base: &str) -> String {
    let mut yaml = format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: hostile-slack, namespace: canaryd-system}}\n\
         stringData: {{token: xoxb-hostile}}\n---\n\
         apiVersion: canaryd.io/v1alpha1\nkind: NotificationTarget\nmetadata: {{name: hostile-slack}}\n\
         spec: {{namespaceSelector: {{}}, slack: {{botToken: {{name: hostile-slack, key: token}}, channel: C42, apiUrl: '{base}/slack/api'}}}}\n"
    );
    for i in 0..POLICIES {
        yaml.push_str(&format!(
            "---\napiVersion: canaryd.io/v1alpha1\nkind: MetricProvider\nmetadata: {{name: hostile-{i}}}\n\
             spec: {{address: '{base}/p{i}', timeout: 30s, namespaceSelector: {{}}}}\n"
        ));
    }
    yaml
}

async fn create_fleet(client: &Client) -> Result<()> {
    let objects: Vec<Value> = (0..POLICIES).flat_map(app_objects).collect();
    stream::iter(objects)
        .map(|obj| async move {
            let yaml = serde_json::to_string(&obj)?;
            support::apply_yaml(client, &yaml).await?;
            if obj["kind"] == "Deployment" {
                let name = obj["metadata"]["name"].as_str().unwrap_or_default();
                fixture::mark_ready(client, NS, name, 1).await?;
            }
            Ok::<_, anyhow::Error>(())
        })
        .buffer_unordered(16)
        .try_collect::<()>()
        .await
}

/// VmRSS and VmHWM of a process, in MiB.
fn memory(pid: u32) -> Option<(f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
    };
    Some((kib("VmRSS:")? as f64 / 1024.0, kib("VmHWM:")? as f64 / 1024.0))
}

async fn metric_lines(addr: &str, prefix: &str) -> Result<Vec<String>> {
    let text = reqwest::get(format!("http://{addr}/metrics")).await?.text().await?;
    Ok(text
        .lines()
        .filter(|l| l.starts_with(prefix))
        .map(str::to_string)
        .collect())
}

#[tokio::main]
async fn main() -> Result<()> {
    let began = Instant::now();
    let client = support::client().await?;
    let kubeconfig = fixture::daemon_kubeconfig().await?;
    support::create_namespace(NS).await?;
    let served = Arc::new(Served::default());
    let base = stand_in(served.clone()).await?;
    support::apply_yaml(&client, &platform_yaml(&base)).await?;
    create_fleet(&client).await?;

    let bin = match std::env::var_os("CANARYD_BIN") {
        Some(p) => PathBuf::from(p),
        None => support::bin_path("canaryd")?,
    };
    let mut cmd = std::process::Command::new(&bin);
    cmd.args(["run", "--listen", "127.0.0.1:0"])
        .env("KUBECONFIG", &kubeconfig)
        .env("RUST_LOG", "info,kube=warn");
    let mut daemon = ChildProc::spawn("canaryd", cmd, &support::scratch_dir("canaryd")?, true)?;
    let addr = daemon.listening_addr(Duration::from_secs(60)).await?;
    let result = measure(&client, &daemon, &addr, &base, &served).await;
    let result = result.map_err(|e| anyhow::anyhow!("{e:#}\n{}", daemon.logs(30)));
    println!(
        "bench time: {:.0} s (daemon {})",
        began.elapsed().as_secs_f64(),
        bin.display()
    );
    result
}

async fn measure(client: &Client, daemon: &ChildProc, addr: &str, base: &str, served: &Served) -> Result<()> {
    let pid = daemon.pid();
    let policies: kube::Api<canaryd::resources::policy::RolloutPolicy> = kube::Api::namespaced(client.clone(), NS);
    support::wait_until("every policy reconciled", Duration::from_secs(120), async || {
        let list = policies.list(&Default::default()).await?;
        let done = list
            .items
            .iter()
            .filter(|p| p.status.as_ref().and_then(|s| s.observed_generation) == p.metadata.generation)
            .count();
        Ok((done == POLICIES).then_some(()))
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (idle, idle_hwm) = memory(pid).context("the daemon is gone")?;

    // Every rollout starts at once.
    stream::iter(0..POLICIES)
        .map(|i| {
            let policies = policies.clone();
            async move {
                let patch = kube::api::Patch::Merge(rollout_patch(i, base));
                policies
                    .patch(&format!("app-{i}"), &Default::default(), &patch)
                    .await
                    .map(|_| ())
            }
        })
        .buffer_unordered(16)
        .try_collect::<()>()
        .await?;
    let started = Instant::now();
    let mut peak_at = Duration::ZERO;
    let mut peak = idle_hwm;
    while started.elapsed() < LOAD {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (_, hwm) = memory(pid).context("the daemon is gone (OOM?)")?;
        if hwm > peak {
            (peak, peak_at) = (hwm, started.elapsed());
        }
    }
    let (now, _) = memory(pid).context("the daemon is gone")?;
    let errors = metric_lines(addr, "canaryd_prometheus_errors_total{").await?;
    let asked = metric_lines(addr, "canaryd_prometheus_queries_total").await?;
    let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
    println!(
        "hostile answers on the bed: {POLICIES} policies, each with its own MetricProvider, for {:.0} s",
        LOAD.as_secs_f64()
    );
    println!(
        "  served: {} Prometheus answers ({:.0} MiB, each ≤ {MAX_ANSWER_BYTES} bytes / {MAX_SERIES} series), {} Slack answers of {SLACK_LIMIT} bytes, {} hook answers announcing {} MiB ({:.1} MiB left the stand-in in all)",
        load(&served.queries),
        load(&served.query_bytes) as f64 / 1048576.0,
        load(&served.slack),
        load(&served.hooks),
        HOOK_BODY / 1048576,
        load(&served.hook_bytes) as f64 / 1048576.0
    );
    println!("  daemon: {asked:?}; errors: {errors:?}");
    println!(
        "  daemon RSS idle {idle:.1} MiB (peak so far {idle_hwm:.1}); under load peak (VmHWM) {peak:.1} MiB at {:.0} s, now {now:.1} MiB; bound {BOUND_MIB:.0} MiB: {}",
        peak_at.as_secs_f64(),
        if peak < BOUND_MIB { "met" } else { "NOT met" }
    );
    if load(&served.queries) < POLICIES as u64 || load(&served.slack) == 0 || load(&served.hooks) == 0 {
        bail!("the hostile answers did not all flow: the figure would mean nothing");
    }
    if peak >= BOUND_MIB {
        bail!("the daemon's peak RSS {peak:.1} MiB is not under {BOUND_MIB} MiB");
    }
    Ok(())
}
